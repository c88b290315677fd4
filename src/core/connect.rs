//! Connecting and disconnecting: authorization-code consents (PKCE S256, `state`, a time to
//! live), client credentials, and RFC 7009 revocation on disconnect.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::refresh::TokenWriteExtras;
use super::{Core, CoreError, status_of};
use crate::api::pb;
use crate::api::pb::profile_event::Kind;
use crate::clock::UnixMillis;
use crate::crypto::Purpose;
use crate::profile;
use crate::provider::ProviderError;
use crate::store::{ConnectionRecord, ConnectionWrite, ConsentRecord};

/// What `Connect` started.
#[derive(Debug)]
pub struct ConnectStart {
    /// Status after the call.
    pub status: pb::Status,
    /// Authorization code grant: the URL to open.
    pub authorization_url: String,
    /// Authorization code grant: the consent's state.
    pub state: String,
    /// When the pending consent expires (0: none pending).
    pub expires_at_ms: UnixMillis,
    /// Device grant: what the user must do.
    pub device: Option<DeviceInstructions>,
}

/// Device grant: where the user goes and what they type.
#[derive(Debug, Clone)]
pub struct DeviceInstructions {
    /// Where the user goes.
    pub verification_uri: String,
    /// The same with the code filled in, where offered.
    pub verification_uri_complete: String,
    /// The code the user types.
    pub user_code: String,
    /// How often tokend polls.
    pub interval: std::time::Duration,
}

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

/// The store key of a consent: a hash of its state, so the store never holds a usable state.
fn consent_key(state: &str) -> Vec<u8> {
    Sha256::digest(state.as_bytes()).to_vec()
}

impl Core {
    /// Starts the profile's grant.
    pub async fn connect(self: &Arc<Self>, name: &str) -> Result<ConnectStart, CoreError> {
        let (profile, before) = self.load(name)?;
        let settings = self.settings_of(&profile)?;
        self.stop_device_poll(name);
        match profile::grant(&profile) {
            pb::Grant::ClientCredentials => {
                let tokens = self.provider.client_credentials(&settings).await.map_err(CoreError::Provider)?;
                let extras = TokenWriteExtras { remove_consent: non_empty(&before.pending_consent), connected: true };
                let stored = self.store_tokens(&profile, before, tokens, extras, Kind::StatusChanged).await?;
                Ok(ConnectStart {
                    status: status_of(&stored),
                    authorization_url: String::new(),
                    state: String::new(),
                    expires_at_ms: 0,
                    device: None,
                })
            }
            pb::Grant::DeviceCode => self.start_device(&profile, before, settings).await,
            _ => self.start_consent(&profile, before, &settings),
        }
    }

    fn start_consent(
        &self,
        profile: &crate::store::ProfileRecord,
        before: ConnectionRecord,
        settings: &crate::provider::ProviderSettings,
    ) -> Result<ConnectStart, CoreError> {
        let name = profile.name.as_str();
        let state = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let start = self.provider.authorization_url(settings, &state).map_err(|e| match e {
            ProviderError::Config(m) => CoreError::FailedPrecondition(format!("profile {name:?}: {m}")),
            other => CoreError::Provider(other),
        })?;
        let now = self.clock.now_ms();
        let expires_at = now + self.settings.consent_ttl.as_millis() as i64;
        let key = consent_key(&state);
        let consent = ConsentRecord {
            profile: name.to_owned(),
            pkce_verifier_sealed: self.keys.seal_secret(Purpose::PkceVerifier, name, &start.pkce_verifier),
            redirect_uri: settings.redirect_uri.as_ref().map(|u| u.to_string()).unwrap_or_default(),
            created_at_ms: now,
            expires_at_ms: expires_at,
            grant: pb::Grant::AuthorizationCode as i32,
        };
        let stored = self.write(&before, pending_consent_write(name, &before, key, consent), Kind::Updated)?;
        tracing::info!(profile = name, "consent started");
        Ok(ConnectStart {
            status: status_of(&stored),
            authorization_url: start.url.to_string(),
            state,
            expires_at_ms: expires_at,
            device: None,
        })
    }

    fn stop_device_poll(&self, name: &str) {
        if let Some((_, poll)) = self.device_polls.remove(name) {
            poll.cancel();
        }
    }

    /// Starts a device authorization and a poller that finishes the connection when the user
    /// approves. The device code lives only in the poller's memory: after a restart the consent
    /// simply expires.
    async fn start_device(
        self: &Arc<Self>,
        profile: &crate::store::ProfileRecord,
        before: ConnectionRecord,
        settings: crate::provider::ProviderSettings,
    ) -> Result<ConnectStart, CoreError> {
        let name = profile.name.clone();
        let start = self.provider.device_authorization(&settings).await.map_err(|e| match e {
            ProviderError::Config(m) => CoreError::FailedPrecondition(format!("profile {name:?}: {m}")),
            other => CoreError::Provider(other),
        })?;
        let now = self.clock.now_ms();
        let expires_at = now + start.expires_in.as_millis() as i64;
        let key = rand::random::<[u8; 32]>().to_vec();
        let consent = ConsentRecord {
            profile: name.clone(),
            pkce_verifier_sealed: Vec::new(),
            redirect_uri: String::new(),
            created_at_ms: now,
            expires_at_ms: expires_at,
            grant: pb::Grant::DeviceCode as i32,
        };
        let stored = self.write(&before, pending_consent_write(&name, &before, key.clone(), consent), Kind::Updated)?;
        let cancel = tokio_util::sync::CancellationToken::new();
        self.device_polls.insert(name.clone(), cancel.clone());
        let core = Arc::clone(self);
        let details = start.details;
        let poll_name = name.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                result = core.provider.poll_device(&settings, &details) => {
                    let result = match result {
                        Ok(tokens) => Ok(core.provider.with_account(&settings, tokens).await),
                        failed => failed,
                    };
                    core.finish_device(&poll_name, &key, result).await;
                }
            }
        });
        tracing::info!(profile = %name, "device authorization started");
        Ok(ConnectStart {
            status: status_of(&stored),
            authorization_url: String::new(),
            state: String::new(),
            expires_at_ms: expires_at,
            device: Some(DeviceInstructions {
                verification_uri: start.verification_uri,
                verification_uri_complete: start.verification_uri_complete.unwrap_or_default(),
                user_code: start.user_code,
                interval: start.interval,
            }),
        })
    }

    /// Stores the outcome of a device poll, if its consent is still the pending one.
    async fn finish_device(&self, name: &str, key: &[u8], result: Result<crate::provider::TokenSet, ProviderError>) {
        self.device_polls.remove(name);
        let Ok((profile, before)) = self.load(name) else { return };
        if before.pending_consent != key {
            return;
        }
        let outcome = match result {
            Ok(tokens) => {
                let extras = TokenWriteExtras { remove_consent: Some(key.to_vec()), connected: true };
                self.store_tokens(&profile, before, tokens, extras, Kind::StatusChanged).await.map(|_| ())
            }
            Err(e) => {
                let message = match &e {
                    ProviderError::Rejected { error, .. } if error == "access_denied" => {
                        "consent failed: the user denied the device authorization".to_owned()
                    }
                    ProviderError::Rejected { error, .. } if error == "expired_token" => {
                        "consent failed: the user code expired before it was approved; Connect again".to_owned()
                    }
                    other => format!("consent failed: {other}"),
                };
                let mut claimed = before.clone();
                claimed.pending_consent.clear();
                let claim = ConnectionWrite {
                    name: name.to_owned(),
                    expected_version: before.version,
                    record: claimed,
                    put_consent: None,
                    remove_consent: Some(key.to_vec()),
                };
                match self.store.write_connection(claim) {
                    Ok(claimed) => self.fail_consent(name, claimed, message),
                    Err(e) => Err(e.into()),
                }
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(profile = name, error = %e, "finishing a device authorization failed");
        }
    }

    /// Finishes a consent from the provider's redirect: the code and state, or the error it
    /// reported. A wrong, replayed or expired state is refused and changes nothing.
    pub async fn complete_consent(
        self: &Arc<Self>,
        state: &str,
        code: Option<SecretString>,
        provider_error: Option<(String, String)>,
    ) -> Result<String, CoreError> {
        let key = consent_key(state);
        let refused =
            || CoreError::FailedPrecondition("unknown, used or expired consent state; start again with Connect".into());
        let consent = self.store.consent(&key)?.ok_or_else(refused)?;
        let name = consent.profile.clone();
        let (profile, before) = self.load(&name)?;
        if before.pending_consent != key {
            return Err(refused());
        }
        let now = self.clock.now_ms();
        // Claim the consent first (version-guarded), so a replay racing this one is refused.
        let mut claimed = before.clone();
        claimed.pending_consent.clear();
        let claim = ConnectionWrite {
            name: name.clone(),
            expected_version: before.version,
            record: claimed,
            put_consent: None,
            remove_consent: Some(key.clone()),
        };
        let claimed = self.store.write_connection(claim).map_err(|_| refused())?;
        if consent.expires_at_ms <= now {
            self.fail_consent(&name, claimed, "the consent expired before it was completed".into())?;
            return Err(refused());
        }
        let outcome = match (code, provider_error) {
            (_, Some((error, description))) => Err(format!(
                "the provider reported {}{}",
                crate::provider::sanitize_text(&error),
                if description.is_empty() {
                    String::new()
                } else {
                    format!(": {}", crate::provider::sanitize_text(&description))
                }
            )),
            (None, None) => Err("the redirect carried no code".to_owned()),
            (Some(code), None) => {
                let verifier = self
                    .keys
                    .open_secret(Purpose::PkceVerifier, &name, &consent.pkce_verifier_sealed)
                    .map_err(|_| CoreError::Sealed(name.clone()))?;
                let settings = self.settings_of(&profile)?;
                match self.provider.exchange_code(&settings, &code, &verifier).await {
                    Ok(tokens) => Ok(self.provider.with_account(&settings, tokens).await),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match outcome {
            Ok(tokens) => {
                let extras = TokenWriteExtras { remove_consent: None, connected: true };
                self.store_tokens(&profile, claimed, tokens, extras, Kind::StatusChanged).await?;
                tracing::info!(profile = %name, "connected");
                Ok(name)
            }
            Err(message) => {
                let message = format!("consent failed: {message}");
                self.fail_consent(&name, claimed, message.clone())?;
                Err(CoreError::FailedPrecondition(format!("profile {name:?}: {message}")))
            }
        }
    }

    /// Puts a connection back to where it was before a consent that failed, with the reason.
    fn fail_consent(&self, name: &str, before: ConnectionRecord, message: String) -> Result<(), CoreError> {
        let mut record = before.clone();
        if status_of(&before) == pb::Status::Connecting {
            record.status = match before.status_before_consent {
                0 => pb::Status::NotConnected as i32,
                s => s,
            };
        }
        record.last_error = message;
        let write = ConnectionWrite {
            name: name.to_owned(),
            expected_version: before.version,
            record,
            put_consent: None,
            remove_consent: None,
        };
        self.write(&before, write, Kind::Updated).map(|_| ())
    }

    /// Drops consents past their time to live (after a restart, too).
    pub fn expire_consents(&self) -> Result<usize, CoreError> {
        let now = self.clock.now_ms();
        let mut dropped = 0;
        for (key, consent) in self.store.consents()? {
            if consent.expires_at_ms > now {
                continue;
            }
            let before = self.store.connection(&consent.profile)?.unwrap_or_default();
            if before.pending_consent == key {
                let mut record = before.clone();
                record.pending_consent.clear();
                if status_of(&before) == pb::Status::Connecting {
                    record.status = match before.status_before_consent {
                        0 => pb::Status::NotConnected as i32,
                        s => s,
                    };
                    record.last_error = "the consent expired before it was completed".into();
                }
                let write = ConnectionWrite {
                    name: consent.profile.clone(),
                    expected_version: before.version,
                    record,
                    put_consent: None,
                    remove_consent: Some(key),
                };
                if self.write(&before, write, Kind::Updated).is_ok() {
                    dropped += 1;
                }
            } else {
                // An orphan (its profile moved on): remove it with an empty no-op write.
                let write = ConnectionWrite {
                    name: consent.profile.clone(),
                    expected_version: before.version,
                    record: before.clone(),
                    put_consent: None,
                    remove_consent: Some(key),
                };
                let _ = self.store.write_connection(write);
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Revokes the profile's tokens at the provider where it has an endpoint (the refresh token,
    /// else the access token), then deletes them even if revocation failed.
    pub async fn disconnect(self: &Arc<Self>, name: &str) -> Result<Revocation, CoreError> {
        let (profile, before) = self.load(name)?;
        self.stop_device_poll(name);
        let revocation = self.revoke(&profile, &before).await;
        let mut record =
            ConnectionRecord { version: before.version, token_version: before.token_version, ..Default::default() };
        record.status = pb::Status::NotConnected as i32;
        if let Revocation::Failed(detail) = &revocation {
            record.last_error = format!("disconnected; revocation at the provider failed: {detail}");
        }
        let write = ConnectionWrite {
            name: name.to_owned(),
            expected_version: before.version,
            record,
            put_consent: None,
            remove_consent: non_empty(&before.pending_consent),
        };
        self.write(&before, write, Kind::Updated)?;
        self.flush().await?;
        tracing::info!(profile = name, revocation = ?revocation, "disconnected");
        Ok(revocation)
    }

    async fn revoke(&self, profile: &crate::store::ProfileRecord, c: &ConnectionRecord) -> Revocation {
        let name = profile.name.as_str();
        let (sealed, purpose, hint) = if !c.refresh_token_sealed.is_empty() {
            (&c.refresh_token_sealed, Purpose::RefreshToken, "refresh_token")
        } else if !c.access_token_sealed.is_empty() && c.expires_at_ms > self.clock.now_ms() {
            (&c.access_token_sealed, Purpose::AccessToken, "access_token")
        } else {
            return Revocation::NothingToRevoke;
        };
        let settings = match self.settings_of(profile) {
            Ok(s) => s,
            Err(e) => return Revocation::Failed(e.to_string()),
        };
        if settings.revocation_endpoint.is_none() {
            return Revocation::NotSupported;
        }
        let token = match self.keys.open_secret(purpose, name, sealed) {
            Ok(t) => t,
            Err(e) => return Revocation::Failed(format!("stored token does not open: {e}")),
        };
        match self.provider.revoke(&settings, &token, hint).await {
            Ok(()) => Revocation::Revoked,
            Err(e) => Revocation::Failed(e.to_string()),
        }
    }
}

/// The write that opens a consent: it replaces any pending one (one per profile), and a profile
/// without tokens shows CONNECTING; a connected one keeps serving its token meanwhile.
fn pending_consent_write(
    name: &str,
    before: &ConnectionRecord,
    key: Vec<u8>,
    consent: ConsentRecord,
) -> ConnectionWrite {
    let mut record = before.clone();
    if before.access_token_sealed.is_empty() {
        if status_of(before) != pb::Status::Connecting {
            record.status_before_consent = before.status;
        }
        record.status = pb::Status::Connecting as i32;
        // A new attempt: the last one's error no longer describes the connection.
        record.last_error.clear();
    }
    record.pending_consent = key.clone();
    ConnectionWrite {
        name: name.to_owned(),
        expected_version: before.version,
        record,
        put_consent: Some((key, consent)),
        remove_consent: non_empty(&before.pending_consent),
    }
}

fn non_empty(key: &[u8]) -> Option<Vec<u8>> {
    (!key.is_empty()).then(|| key.to_vec())
}
