//! Creating, updating, deleting, reading and listing profiles.

use std::borrow::Cow;
use std::sync::Arc;

use prost_types::FieldMask;

use super::{Admin, AdminError, Revocation};
use crate::api::pb;
use crate::crypto::Purpose;
use crate::engine::EngineError;
use crate::engine::status_of;
use crate::profile::{self, FieldError, HeldTokens};
use crate::store::{ConnectionRecord, ConnectionWrite, ProfileRecord};

/// A profile as admins see it: its record, its connection as `GetAccessToken` serves it, and
/// the refresh-token warning due now. Holds sealed bytes only, never an opened secret.
#[derive(Debug, Clone)]
pub struct ProfileView {
    /// The profile.
    pub profile: ProfileRecord,
    /// Its connection, as published to the token cache (see [`Admin::published`]).
    pub connection: ConnectionRecord,
    /// Why an admin must act soon, if so.
    pub warning: Option<String>,
}

/// A declared profile's record, validated and ready to store ([`Admin::plan_managed`]).
#[derive(Debug)]
pub struct ManagedChange {
    record: ProfileRecord,
    created: bool,
    changed: bool,
    /// What becomes of the tokens held ([`profile::check_redirect`]).
    held: HeldTokens,
}

/// Largest page of `ListProfiles`.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Page size when the request names none.
pub const DEFAULT_PAGE_SIZE: usize = 100;

impl Admin {
    /// Creates a profile from admin input. A profile naming an issuer gets the endpoints it
    /// does not set from the issuer's metadata (fetched now; nothing is stored if that fails).
    pub async fn create_profile(&self, input: &pb::Profile) -> Result<ProfileView, AdminError> {
        profile::validate_name(&input.name)?;
        let now = self.engine.clock().now_ms();
        let mut record =
            ProfileRecord { name: input.name.clone(), create_time_ms: now, update_time_ms: now, ..Default::default() };
        let secret = profile::apply_input(&mut record, input, None)?;
        if let Some(secret) = &secret {
            record.client_secret_sealed = self.engine.seal(Purpose::ClientSecret, &record.name, secret)?;
        }
        self.prepare(&mut record, true).await?;
        let connection = ConnectionRecord { status: pb::Status::NotConnected as i32, ..Default::default() };
        self.engine.store().insert_profile(&record, &connection)?;
        self.engine.created(&record.name);
        tracing::info!(profile = %record.name, provider = %record.provider, "profile created");
        Ok(self.view(&record, &connection))
    }

    /// Checks a profile about to be written: fetches its issuer's metadata when it has none for
    /// that issuer or `rediscover` asks for it, then validates it, refusing endpoints whose
    /// literal address is in the deny-list.
    async fn prepare(&self, record: &mut ProfileRecord, rediscover: bool) -> Result<(), AdminError> {
        let insecure = self.engine.settings().allow_insecure_http;
        if record.issuer.trim().is_empty() {
            record.issuer.clear();
            record.discovered = None;
        } else if profile::wants_discovery(record, rediscover) {
            record.issuer = record.issuer.trim().to_owned();
            let found = self.engine.provider().discover(&record.issuer, insecure).await.map_err(|e| {
                if e.is_transient() {
                    EngineError::Unavailable(format!("profile {:?}: {e}", record.name)).into()
                } else {
                    AdminError::InvalidArgument(FieldError { field: "issuer".into(), message: e.to_string() })
                }
            })?;
            tracing::info!(profile = %record.name, metadata = %found.metadata_url, "issuer metadata discovered");
            record.discovered = Some(profile::discovered_record(found, self.engine.clock().now_ms()));
        }
        profile::validate_record(record, insecure)?;
        let settings = profile::resolve(record, self.engine.keys(), &self.engine.settings().callback_url, insecure)?;
        let endpoints = [
            ("token_endpoint", Some(&settings.token_endpoint)),
            ("revocation_endpoint", settings.revocation_endpoint.as_ref()),
            ("device_authorization_endpoint", settings.device_authorization_endpoint.as_ref()),
        ];
        for (field, url) in endpoints {
            if let Some(Err(denied)) = url.map(|u| self.engine.provider().check_endpoint(u)) {
                return Err(FieldError { field: field.into(), message: denied.to_string() }.into());
            }
        }
        Ok(())
    }

    /// How admins see a profile: as published, with the warning due now, if any.
    fn view(&self, record: &ProfileRecord, connection: &ConnectionRecord) -> ProfileView {
        let policy = self.engine.settings().refresh.for_profile(record);
        ProfileView {
            profile: record.clone(),
            connection: self.published(&record.name, connection).into_owned(),
            warning: policy.warning(connection, self.engine.clock().now_ms()),
        }
    }

    /// The connection as `GetAccessToken` sees it. A new token set is written, flushed, then
    /// published to the cache; between the write and the publish the store already holds it
    /// while `GetAccessToken` still serves the previous state. Admin views show the published
    /// status and expiry then, so a profile never reads CONNECTED before its token can be fetched.
    fn published<'a>(&self, name: &str, connection: &'a ConnectionRecord) -> Cow<'a, ConnectionRecord> {
        let Some(slot) = self.engine.cached(name) else { return Cow::Borrowed(connection) };
        let cached_version = slot.token.as_ref().map_or(0, |t| t.token_version);
        if connection.access_token_sealed.is_empty() || connection.token_version <= cached_version {
            return Cow::Borrowed(connection);
        }
        let mut shown = connection.clone();
        shown.status = slot.status as i32;
        shown.expires_at_ms = slot.token.as_ref().map_or(0, |t| t.expires_at_ms);
        if slot.token.is_none() {
            shown.access_token_sealed.clear();
        }
        Cow::Owned(shown)
    }

    /// Updates the fields named in `mask` (all writable fields when empty). An update naming
    /// the issuer discovers its metadata again. An update that changes where the stored client
    /// secret goes must supply the secret again, and tokens issued by a server at another
    /// origin are deleted locally ([`profile::check_redirect`]).
    pub async fn update_profile(
        &self,
        input: &pb::Profile,
        mask: Option<&FieldMask>,
    ) -> Result<ProfileView, AdminError> {
        profile::validate_name(&input.name)?;
        let (mut record, connection) = self.engine.load(&input.name)?;
        if record.managed {
            return Err(AdminError::precondition(format!(
                "profile {:?} is managed by the configuration file; edit it there",
                record.name
            )));
        }
        let before = record.clone();
        let secret = profile::apply_input(&mut record, input, mask)?;
        // Checked before discovery too: a refused edit fetches nothing from a new issuer.
        profile::check_redirect(&before, &record, secret.is_some())?;
        if let Some(secret) = &secret {
            record.client_secret_sealed = self.engine.seal(Purpose::ClientSecret, &record.name, secret)?;
        }
        record.update_time_ms = self.engine.clock().now_ms();
        self.prepare(&mut record, profile::names_issuer(mask)).await?;
        // Tokens go before the profile changes, so no refresh sends them to the new origin.
        let connection = match profile::check_redirect(&before, &record, secret.is_some())? {
            HeldTokens::Drop => self.drop_foreign_tokens(&record.name, connection).await?,
            HeldTokens::Keep => connection,
        };
        self.engine.store().replace_profile(&record)?;
        let status = status_of(&connection);
        self.engine.publish(&record.name, pb::profile_event::Kind::Updated, status, status);
        tracing::info!(profile = %record.name, "profile updated");
        let connection = self.resume_refreshing(&record.name, connection);
        Ok(self.view(&record, &connection))
    }

    /// After a profile edit, a connection that stopped refreshing although it still holds its
    /// refresh token (the provider refused the client credentials, say) is tried again at once:
    /// the edit may have fixed it, and no new consent is needed if so.
    fn resume_refreshing(&self, name: &str, before: ConnectionRecord) -> ConnectionRecord {
        if status_of(&before) != pb::Status::NeedsReauthorization || before.refresh_token_sealed.is_empty() {
            return before;
        }
        let mut record = before.clone();
        record.status = pb::Status::RefreshFailing as i32;
        record.last_error = "profile updated; retrying the refresh with the held refresh token".into();
        record.next_refresh_at_ms = self.engine.clock().now_ms();
        let write = ConnectionWrite::replacing(name, &before, record);
        match self.engine.write(&before, write, pb::profile_event::Kind::Updated) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(profile = name, error = %e, "scheduling a retry after the update failed");
                before
            }
        }
    }

    /// Disconnects (revoking where possible), then deletes the profile.
    pub async fn delete_profile(self: &Arc<Self>, name: &str) -> Result<Revocation, AdminError> {
        profile::validate_name(name)?;
        let (record, connection) = self.engine.load(name)?;
        if record.managed {
            return Err(AdminError::precondition(format!(
                "profile {name:?} is managed by the configuration file; remove it there"
            )));
        }
        let revocation = self.disconnect(name).await?;
        self.engine.store().remove_profile(name)?;
        self.engine.deleted(name, status_of(&connection));
        tracing::info!(profile = name, "profile deleted");
        Ok(revocation)
    }

    /// Works out (without writing anything) what a profile declared in the configuration
    /// changes: the record to store, marked managed, validated. An empty client secret leaves
    /// the stored one. Issuer metadata is fetched only for a new or changed issuer, so a restart
    /// does not depend on the issuer. Reconciling plans every declared profile before applying
    /// any, so one bad entry changes nothing. The rule of [`profile::check_redirect`] holds here
    /// too: a declared profile with a `client_secret_file` supplies its secret on every
    /// reconcile; one without it may not move a secret stored earlier to a new destination.
    pub async fn plan_managed(&self, input: &pb::Profile) -> Result<ManagedChange, AdminError> {
        profile::validate_name(&input.name)?;
        let now = self.engine.clock().now_ms();
        let existing = self.engine.store().profile(&input.name)?;
        let created = existing.is_none();
        let mut record = existing.unwrap_or_else(|| ProfileRecord {
            name: input.name.clone(),
            create_time_ms: now,
            ..Default::default()
        });
        let before = record.clone();
        let secret = profile::apply_input(&mut record, input, None)?;
        if let Some(secret) = &secret {
            let keys = self.engine.keys();
            let unchanged =
                keys.open_secret(Purpose::ClientSecret, &record.name, &record.client_secret_sealed).is_ok_and(|old| {
                    secrecy::ExposeSecret::expose_secret(&old) == secrecy::ExposeSecret::expose_secret(secret)
                });
            if !unchanged {
                record.client_secret_sealed = self.engine.seal(Purpose::ClientSecret, &record.name, secret)?;
            }
        }
        record.managed = true;
        self.prepare(&mut record, false).await?;
        let held =
            if created { HeldTokens::Keep } else { profile::check_redirect(&before, &record, secret.is_some())? };
        let changed = created || record != before;
        if changed {
            record.update_time_ms = now;
        }
        Ok(ManagedChange { record, created, changed, held })
    }

    /// Stores a planned declared profile; tokens issued at another origin than the one the
    /// profile now sends them to are deleted first, as for [`Admin::update_profile`]. Returns
    /// whether it was created.
    pub async fn apply_managed(&self, change: ManagedChange) -> Result<bool, AdminError> {
        let ManagedChange { record, created, changed, held } = change;
        if held == HeldTokens::Drop {
            let (_, connection) = self.engine.load(&record.name)?;
            self.drop_foreign_tokens(&record.name, connection).await?;
        }
        if created {
            let connection = ConnectionRecord { status: pb::Status::NotConnected as i32, ..Default::default() };
            match self.engine.store().insert_profile(&record, &connection) {
                Ok(()) => self.engine.created(&record.name),
                // Another replica on the same database, starting at the same moment from the same
                // configuration, created it first: ours is the same declaration.
                Err(crate::store::StoreError::AlreadyExists(_)) => {
                    self.engine.store().replace_profile(&record)?;
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        } else if changed {
            self.engine.store().replace_profile(&record)?;
            let status = self.engine.cached(&record.name).map(|s| s.status).unwrap_or(pb::Status::NotConnected);
            self.engine.publish(&record.name, pb::profile_event::Kind::Updated, status, status);
        }
        Ok(created)
    }

    /// Names of the profiles declared in the configuration.
    pub fn managed_profiles(&self) -> Result<Vec<String>, AdminError> {
        let mut names = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.engine.store().profiles_after(&after, MAX_PAGE_SIZE)?;
            let Some((last, _)) = page.last() else { break };
            after = last.name.clone();
            names.extend(page.iter().filter(|(p, _)| p.managed).map(|(p, _)| p.name.clone()));
        }
        Ok(names)
    }

    /// Deletes a managed profile no longer declared (disconnecting it first).
    pub async fn delete_managed(self: &Arc<Self>, name: &str) -> Result<(), AdminError> {
        let (_, connection) = self.engine.load(name)?;
        self.disconnect(name).await?;
        self.engine.store().remove_profile(name)?;
        self.engine.deleted(name, status_of(&connection));
        Ok(())
    }

    /// One profile with its connection state.
    pub fn get_profile(&self, name: &str) -> Result<ProfileView, AdminError> {
        profile::validate_name(name)?;
        let (record, connection) = self.engine.load(name)?;
        Ok(self.view(&record, &connection))
    }

    /// A page of profiles in name order, and the token of the next page ("" on the last).
    pub fn list_profiles(&self, page_size: i32, page_token: &str) -> Result<(Vec<ProfileView>, String), AdminError> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                return Err(FieldError { field: "page_size".into(), message: "must not be negative".into() }.into());
            }
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        if !page_token.is_empty() && profile::validate_name(page_token).is_err() {
            return Err(
                FieldError { field: "page_token".into(), message: "not a token from a previous page".into() }.into()
            );
        }
        // One extra tells whether another page follows.
        let mut rows = self.engine.store().profiles_after(page_token, size + 1)?;
        let next = if rows.len() > size {
            rows.truncate(size);
            rows.last().map(|(p, _)| p.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((rows.iter().map(|(p, c)| self.view(p, c)).collect(), next))
    }
}
