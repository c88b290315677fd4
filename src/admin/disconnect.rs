//! Disconnecting: revoke at the provider (RFC 7009) where it has an endpoint, then delete the
//! tokens even when revocation failed, and say which happened.

use std::sync::Arc;

use super::connect::non_empty;
use super::{Admin, AdminError};
use crate::api::pb;
use crate::api::pb::profile_event::Kind;
use crate::crypto::Purpose;
use crate::store::{ConnectionRecord, ConnectionWrite, ProfileRecord};

/// What revocation at the provider did on disconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked.
    Revoked,
    /// Refused or unreachable (detail); tokens deleted anyway.
    Failed(String),
    /// No revocation endpoint; tokens deleted locally.
    NotSupported,
    /// No tokens were held.
    NothingToRevoke,
}

impl Admin {
    /// Revokes the profile's tokens at the provider where it has an endpoint (the refresh token,
    /// else the access token), then deletes them even if revocation failed.
    pub async fn disconnect(self: &Arc<Self>, name: &str) -> Result<Revocation, AdminError> {
        let (profile, before) = self.engine.load(name)?;
        self.stop_device_poll(name);
        let revocation = self.revoke(&profile, &before).await;
        let last_error = match &revocation {
            Revocation::Failed(detail) => format!("disconnected; revocation at the provider failed: {detail}"),
            _ => String::new(),
        };
        self.forget(name, &before, last_error).await?;
        tracing::info!(profile = name, revocation = ?revocation, "disconnected");
        Ok(revocation)
    }

    /// Deletes the tokens of a profile whose edit sends them to a server at another origin than
    /// the one that issued them ([`crate::profile::HeldTokens::Drop`]), without revoking them:
    /// revocation would send the refresh token there too. A connection holding nothing is
    /// left as it is. Returns the connection as written.
    pub(super) async fn drop_foreign_tokens(
        &self,
        name: &str,
        before: ConnectionRecord,
    ) -> Result<ConnectionRecord, AdminError> {
        let holds = !before.access_token_sealed.is_empty()
            || !before.refresh_token_sealed.is_empty()
            || !before.pending_consent.is_empty();
        if !holds {
            return Ok(before);
        }
        self.stop_device_poll(name);
        let why = "disconnected locally: the token endpoint moved to another origin, and the tokens held were \
                   issued by the previous server (not revoked there; they expire on their own); Connect again";
        let stored = self.forget(name, &before, why.to_owned()).await?;
        tracing::warn!(profile = name, "token endpoint moved to another origin; held tokens deleted locally");
        Ok(stored)
    }

    /// Deletes the connection's tokens and any pending consent, durably, noting `last_error`.
    async fn forget(
        &self,
        name: &str,
        before: &ConnectionRecord,
        last_error: String,
    ) -> Result<ConnectionRecord, AdminError> {
        let record = ConnectionRecord {
            version: before.version,
            token_version: before.token_version,
            status: pb::Status::NotConnected as i32,
            last_error,
            ..Default::default()
        };
        let write =
            ConnectionWrite::replacing(name, before, record).removing_consent(non_empty(&before.pending_consent));
        let stored = self.engine.write(before, write, Kind::Updated)?;
        self.engine.flush().await?;
        Ok(stored)
    }

    async fn revoke(&self, profile: &ProfileRecord, c: &ConnectionRecord) -> Revocation {
        let name = profile.name.as_str();
        let (sealed, purpose, hint) = if !c.refresh_token_sealed.is_empty() {
            (&c.refresh_token_sealed, Purpose::RefreshToken, "refresh_token")
        } else if !c.access_token_sealed.is_empty() && c.expires_at_ms > self.engine.clock().now_ms() {
            (&c.access_token_sealed, Purpose::AccessToken, "access_token")
        } else {
            return Revocation::NothingToRevoke;
        };
        let settings = match self.engine.provider_settings(profile) {
            Ok(s) => s,
            Err(e) => return Revocation::Failed(e.to_string()),
        };
        if settings.revocation_endpoint.is_none() {
            return Revocation::NotSupported;
        }
        let token = match self.engine.keys().open_secret(purpose, name, sealed) {
            Ok(t) => t,
            Err(e) => return Revocation::Failed(format!("stored token does not open: {e}")),
        };
        match self.engine.provider().revoke(&settings, &token, hint).await {
            Ok(()) => Revocation::Revoked,
            Err(e) => Revocation::Failed(e.to_string()),
        }
    }
}
