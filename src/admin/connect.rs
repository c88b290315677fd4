//! Connecting and disconnecting: authorization-code consents (PKCE S256, `state`, a time to
//! live), client credentials, and RFC 7009 revocation on disconnect.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::{Admin, AdminError};
use crate::api::pb;
use crate::api::pb::profile_event::Kind;
use crate::clock::UnixMillis;
use crate::crypto::Purpose;
use crate::engine::{EngineError, TokenWriteExtras, status_of};
use crate::profile;
use crate::provider::{ProviderError, ProviderSettings, TokenSet};
use crate::store::{ConnectionRecord, ConnectionWrite, ConsentRecord, ProfileRecord};

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

impl Admin {
    /// Starts the profile's grant.
    pub async fn connect(self: &Arc<Self>, name: &str) -> Result<ConnectStart, AdminError> {
        let (profile, before) = self.engine.load(name)?;
        let settings = self.engine.provider_settings(&profile)?;
        self.stop_device_poll(name);
        match profile::grant(&profile) {
            pb::Grant::ClientCredentials => {
                let tokens =
                    self.engine.provider().client_credentials(&settings).await.map_err(EngineError::Provider)?;
                let extras = TokenWriteExtras { remove_consent: non_empty(&before.pending_consent), connected: true };
                let stored = self.engine.store_tokens(&profile, before, tokens, extras, Kind::StatusChanged).await?;
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
        profile: &ProfileRecord,
        before: ConnectionRecord,
        settings: &ProviderSettings,
    ) -> Result<ConnectStart, AdminError> {
        let name = profile.name.as_str();
        let state = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let start = self.engine.provider().authorization_url(settings, &state).map_err(|e| match e {
            ProviderError::Config(m) => AdminError::precondition(format!("profile {name:?}: {m}")),
            other => EngineError::Provider(other).into(),
        })?;
        let now = self.engine.clock().now_ms();
        let expires_at = now + self.consent_ttl.as_millis() as i64;
        let key = consent_key(&state);
        let consent = ConsentRecord {
            profile: name.to_owned(),
            pkce_verifier_sealed: self.engine.keys().seal_secret(Purpose::PkceVerifier, name, &start.pkce_verifier),
            redirect_uri: settings.redirect_uri.as_ref().map(|u| u.to_string()).unwrap_or_default(),
            created_at_ms: now,
            expires_at_ms: expires_at,
            grant: pb::Grant::AuthorizationCode as i32,
        };
        let stored = self.engine.write(&before, pending_consent_write(name, &before, key, consent), Kind::Updated)?;
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
        profile: &ProfileRecord,
        before: ConnectionRecord,
        settings: ProviderSettings,
    ) -> Result<ConnectStart, AdminError> {
        let name = profile.name.clone();
        let start = self.engine.provider().device_authorization(&settings).await.map_err(|e| match e {
            ProviderError::Config(m) => AdminError::precondition(format!("profile {name:?}: {m}")),
            other => EngineError::Provider(other).into(),
        })?;
        let now = self.engine.clock().now_ms();
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
        let stored =
            self.engine.write(&before, pending_consent_write(&name, &before, key.clone(), consent), Kind::Updated)?;
        let cancel = tokio_util::sync::CancellationToken::new();
        self.device_polls.insert(name.clone(), cancel.clone());
        let admin = Arc::clone(self);
        let details = start.details;
        let poll_name = name.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                result = admin.engine.provider().poll_device(&settings, &details) => {
                    let result = match result {
                        Ok(tokens) => Ok(admin.engine.provider().with_account(&settings, tokens).await),
                        failed => failed,
                    };
                    admin.finish_device(&poll_name, &key, result).await;
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
    async fn finish_device(&self, name: &str, key: &[u8], result: Result<TokenSet, ProviderError>) {
        self.device_polls.remove(name);
        let Ok((profile, before)) = self.engine.load(name) else { return };
        if before.pending_consent != key {
            return;
        }
        let outcome = match result {
            Ok(tokens) => {
                let extras = TokenWriteExtras { remove_consent: Some(key.to_vec()), connected: true };
                self.engine
                    .store_tokens(&profile, before, tokens, extras, Kind::StatusChanged)
                    .await
                    .map(|_| ())
                    .map_err(AdminError::from)
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
                let claim = ConnectionWrite::replacing(name, &before, claimed).removing_consent(Some(key.to_vec()));
                match self.engine.store().write_connection(claim) {
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
    ) -> Result<String, AdminError> {
        let key = consent_key(state);
        let refused = || AdminError::precondition("unknown, used or expired consent state; start again with Connect");
        let consent = self.engine.store().consent(&key)?.ok_or_else(refused)?;
        let name = consent.profile.clone();
        let (profile, before) = self.engine.load(&name)?;
        if before.pending_consent != key {
            return Err(refused());
        }
        let now = self.engine.clock().now_ms();
        // Claim the consent first (version-guarded), so a replay racing this one is refused.
        let mut claimed = before.clone();
        claimed.pending_consent.clear();
        let claim = ConnectionWrite::replacing(&name, &before, claimed).removing_consent(Some(key.clone()));
        let claimed = self.engine.store().write_connection(claim).map_err(|_| refused())?;
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
                    .engine
                    .keys()
                    .open_secret(Purpose::PkceVerifier, &name, &consent.pkce_verifier_sealed)
                    .map_err(|_| EngineError::Sealed(name.clone()))?;
                let settings = self.engine.provider_settings(&profile)?;
                match self.engine.provider().exchange_code(&settings, &code, &verifier).await {
                    Ok(tokens) => Ok(self.engine.provider().with_account(&settings, tokens).await),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match outcome {
            Ok(tokens) => {
                let extras = TokenWriteExtras { remove_consent: None, connected: true };
                self.engine.store_tokens(&profile, claimed, tokens, extras, Kind::StatusChanged).await?;
                tracing::info!(profile = %name, "connected");
                Ok(name)
            }
            Err(message) => {
                let message = format!("consent failed: {message}");
                self.fail_consent(&name, claimed, message.clone())?;
                Err(AdminError::precondition(format!("profile {name:?}: {message}")))
            }
        }
    }

    /// Puts a connection back to where it was before a consent that failed, with the reason.
    fn fail_consent(&self, name: &str, before: ConnectionRecord, message: String) -> Result<(), AdminError> {
        let mut record = before.clone();
        if status_of(&before) == pb::Status::Connecting {
            record.status = match before.status_before_consent {
                0 => pb::Status::NotConnected as i32,
                s => s,
            };
        }
        record.last_error = message;
        self.engine.write(&before, ConnectionWrite::replacing(name, &before, record), Kind::Updated)?;
        Ok(())
    }

    /// Drops consents past their time to live (after a restart, too).
    pub fn expire_consents(&self) -> Result<usize, AdminError> {
        let now = self.engine.clock().now_ms();
        let mut dropped = 0;
        for (key, consent) in self.engine.store().consents()? {
            if consent.expires_at_ms > now {
                continue;
            }
            let before = self.engine.store().connection(&consent.profile)?.unwrap_or_default();
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
                let write = ConnectionWrite::replacing(&consent.profile, &before, record).removing_consent(Some(key));
                if self.engine.write(&before, write, Kind::Updated).is_ok() {
                    dropped += 1;
                }
            } else {
                // An orphan (its profile moved on): remove it with an empty no-op write.
                let write =
                    ConnectionWrite::replacing(&consent.profile, &before, before.clone()).removing_consent(Some(key));
                let _ = self.engine.store().write_connection(write);
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Revokes the profile's tokens at the provider where it has an endpoint (the refresh token,
    /// else the access token), then deletes them even if revocation failed.
    pub async fn disconnect(self: &Arc<Self>, name: &str) -> Result<Revocation, AdminError> {
        let (profile, before) = self.engine.load(name)?;
        self.stop_device_poll(name);
        let revocation = self.revoke(&profile, &before).await;
        let mut record =
            ConnectionRecord { version: before.version, token_version: before.token_version, ..Default::default() };
        record.status = pb::Status::NotConnected as i32;
        if let Revocation::Failed(detail) = &revocation {
            record.last_error = format!("disconnected; revocation at the provider failed: {detail}");
        }
        let write =
            ConnectionWrite::replacing(name, &before, record).removing_consent(non_empty(&before.pending_consent));
        self.engine.write(&before, write, Kind::Updated)?;
        self.engine.flush().await?;
        tracing::info!(profile = name, revocation = ?revocation, "disconnected");
        Ok(revocation)
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
    ConnectionWrite::replacing(name, before, record)
        .putting_consent(key, consent)
        .removing_consent(non_empty(&before.pending_consent))
}

fn non_empty(key: &[u8]) -> Option<Vec<u8>> {
    (!key.is_empty()).then(|| key.to_vec())
}
