//! The device authorization grant (RFC 8628): the user approves on another device while a
//! poller, started here and cancelled by disconnect, deletion, a new Connect or shutdown, waits
//! for the provider's answer and stores it.

use std::sync::Arc;

use super::connect::{ConnectStart, DeviceInstructions, pending_consent_write};
use super::{Admin, AdminError};
use crate::api::pb;
use crate::api::pb::profile_event::Kind;
use crate::engine::{EngineError, TokenWriteExtras, status_of};
use crate::provider::{ProviderError, ProviderSettings, TokenSet};
use crate::store::{ConnectionRecord, ConnectionWrite, ConsentRecord, ProfileRecord};

impl Admin {
    /// Starts a device authorization and a poller that finishes the connection when the user
    /// approves. The device code lives only in the poller's memory: after a restart the consent
    /// simply expires.
    pub(super) async fn start_device(
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
}
