//! Starting a connection: the authorization-code consent (PKCE S256, a random `state` stored
//! only as its hash, a time to live), the device grant ([`super::device`]) and client
//! credentials (connected at once).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::{Admin, AdminError};
use crate::api::pb;
use crate::api::pb::profile_event::Kind;
use crate::clock::UnixMillis;
use crate::crypto::Purpose;
use crate::engine::{EngineError, TokenWriteExtras, status_of};
use crate::profile;
use crate::provider::{ProviderError, ProviderSettings};
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

/// The store key of a consent: a hash of its state, so the store never holds a usable state.
pub(super) fn consent_key(state: &str) -> Vec<u8> {
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
            pkce_verifier_sealed: self.engine.seal(Purpose::PkceVerifier, name, &start.pkce_verifier)?,
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

    /// Cancels the profile's device-grant poller, if one runs.
    pub(super) fn stop_device_poll(&self, name: &str) {
        if let Some((_, poll)) = self.device_polls.remove(name) {
            poll.cancel();
        }
    }
}

/// The write that opens a consent: it replaces any pending one (one per profile), and a profile
/// without tokens shows CONNECTING; a connected one keeps serving its token meanwhile.
pub(super) fn pending_consent_write(
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

/// The key, unless empty (an empty key names no consent).
pub(super) fn non_empty(key: &[u8]) -> Option<Vec<u8>> {
    (!key.is_empty()).then(|| key.to_vec())
}
