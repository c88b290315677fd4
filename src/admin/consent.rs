//! Finishing a consent: the provider's redirect (through tokend's callback, or pasted by an
//! admin) is checked against the stored consent, claimed once, and its code exchanged; a
//! failed or expired consent puts the connection back as it was, with the reason.

use std::sync::Arc;

use secrecy::SecretString;

use super::connect::consent_key;
use super::{Admin, AdminError};
use crate::api::pb;
use crate::api::pb::profile_event::Kind;
use crate::crypto::Purpose;
use crate::engine::{EngineError, TokenWriteExtras, status_of};
use crate::provider::TokenSet;
use crate::store::{ConnectionRecord, ConnectionWrite, ConsentRecord, ProfileRecord};

impl Admin {
    /// Finishes a consent from the provider's redirect: the code and state, or the error it
    /// reported. A wrong, replayed or expired state is refused and changes nothing.
    ///
    /// Runs in a task of its own: once the code is sent, a caller that gives up (a deadline, a
    /// closed browser tab) must not cancel the exchange, or the new tokens are lost and the code
    /// is spent.
    pub async fn complete_consent(
        self: &Arc<Self>,
        state: &str,
        code: Option<SecretString>,
        provider_error: Option<(String, String)>,
    ) -> Result<String, AdminError> {
        let admin = Arc::clone(self);
        let state = state.to_owned();
        tokio::spawn(async move { admin.finish_consent(&state, code, provider_error).await })
            .await
            .map_err(|e| EngineError::Unavailable(format!("the consent task failed: {e}")))?
    }

    async fn finish_consent(
        &self,
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
        let outcome = self.redeem(&profile, &consent, code, provider_error).await?;
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

    /// What the provider's redirect is worth: the token set for its code (PKCE verifier from the
    /// consent), or why the consent failed, for the admin to read. Errors only when the profile
    /// itself is unusable.
    async fn redeem(
        &self,
        profile: &ProfileRecord,
        consent: &ConsentRecord,
        code: Option<SecretString>,
        provider_error: Option<(String, String)>,
    ) -> Result<Result<TokenSet, String>, AdminError> {
        let name = &profile.name;
        Ok(match (code, provider_error) {
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
                    .open_secret(Purpose::PkceVerifier, name, &consent.pkce_verifier_sealed)
                    .map_err(|_| EngineError::Sealed(name.clone()))?;
                let settings = self.engine.provider_settings(profile)?;
                match self.engine.provider().exchange_code(&settings, &code, &verifier).await {
                    Ok(tokens) => Ok(self.engine.provider().with_account(&settings, tokens).await),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
    }

    /// Puts a connection back to where it was before a consent that failed, with the reason.
    pub(super) fn fail_consent(&self, name: &str, before: ConnectionRecord, message: String) -> Result<(), AdminError> {
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
}
