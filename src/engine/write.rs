//! The write step every path ends in: a version-guarded write of the connection, made durable
//! when it carries a rotated refresh token, and only then published to the token cache, the
//! scheduler and watchers ("durability before publish"). Refreshes, consents, disconnects and
//! key rotation all write through here.

use super::{Engine, EngineError, SlotState, status_of};
use crate::api::pb;
use crate::api::pb::profile_event::Kind;
use crate::crypto::Purpose;
use crate::provider::TokenSet;
use crate::store::{ConnectionRecord, ConnectionWrite, ProfileRecord, StoreError};
use secrecy::SecretString;

/// How often a token write retries onto a newer version before giving up.
const WRITE_ATTEMPTS: usize = 3;
/// How long a rotated token's write waits before trying an unreachable database again.
const UNAVAILABLE_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// What goes with storing a token set besides the tokens: the consent it finishes (deleted in
/// the same transaction) and whether it is a new connection (a consent or client credentials)
/// rather than a refresh.
#[derive(Debug, Default)]
pub struct TokenWriteExtras {
    /// The consent to delete with this write.
    pub remove_consent: Option<Vec<u8>>,
    /// A new connection: sets the connected time and account, clears the pending consent.
    pub connected: bool,
}

impl Engine {
    /// Writes a connection (version-guarded), then shows it (see [`Engine::after_write`]).
    /// Not flushed: callers that need durability call [`Engine::flush`] before they answer.
    pub fn write(
        &self,
        before: &ConnectionRecord,
        write: ConnectionWrite,
        kind: Kind,
    ) -> Result<ConnectionRecord, EngineError> {
        let name = write.name.clone();
        let stored = self.store.write_connection(write)?;
        self.after_write(&name, before, &stored, kind);
        Ok(stored)
    }

    /// Shows a stored connection to the cache, the scheduler and watchers.
    pub(super) fn after_write(&self, name: &str, before: &ConnectionRecord, stored: &ConnectionRecord, kind: Kind) {
        self.show_written(name, before, stored, self.slot_state(name, stored), kind);
    }

    /// [`Engine::after_write`] for a write of a new token set: the cache takes the access token
    /// as the provider sent it, not opened again from the record just sealed.
    fn after_token_write(
        &self,
        name: &str,
        before: &ConnectionRecord,
        stored: &ConnectionRecord,
        access_token: SecretString,
        kind: Kind,
    ) {
        let state = Self::slot_state_holding(stored, Some(access_token));
        self.show_written(name, before, stored, state, kind);
    }

    /// Puts `state` in the cache, wakes the scheduler when the connection falls due sooner, and
    /// tells watchers.
    fn show_written(
        &self,
        name: &str,
        before: &ConnectionRecord,
        stored: &ConnectionRecord,
        state: SlotState,
        kind: Kind,
    ) {
        self.cache.set(name, state);
        if stored.next_refresh_at_ms > 0
            && (before.next_refresh_at_ms == 0 || stored.next_refresh_at_ms < before.next_refresh_at_ms)
        {
            self.wake.notify_one();
        }
        self.publish(name, kind, status_of(before), status_of(stored));
    }

    /// Seals a secret of profile `name` under the active key; a failure is an error that stops
    /// the write (an empty value would read as "no secret held").
    pub fn seal(&self, purpose: Purpose, name: &str, secret: &SecretString) -> Result<Vec<u8>, EngineError> {
        self.keys.seal_secret(purpose, name, secret).map_err(|e| {
            tracing::error!(profile = name, error = %e, "sealing a secret failed");
            EngineError::SealFailed(name.to_owned())
        })
    }

    /// Makes every write so far durable, off the async runtime; concurrent writers share one
    /// flush (group commit).
    pub async fn flush(&self) -> Result<(), EngineError> {
        self.flushes.flush().await.map_err(EngineError::Storage)
    }

    /// Stores a fresh token set over `before` (retrying onto newer versions that kept the same
    /// refresh token), durably when it carries a new refresh token, and only then shows the new
    /// access token to callers.
    pub async fn store_tokens(
        &self,
        profile: &ProfileRecord,
        mut before: ConnectionRecord,
        tokens: TokenSet,
        extras: TokenWriteExtras,
        kind: Kind,
    ) -> Result<ConnectionRecord, EngineError> {
        let name = profile.name.as_str();
        let rotated = tokens.refresh_token.is_some();
        let mut conflicts = 0;
        // A rotated refresh token exists only in this answer until it is stored: when the
        // database is briefly unreachable, keep trying (within half the refresh lease, which this
        // process holds meanwhile) rather than lose the connection.
        let hold_until = tokio::time::Instant::now() + self.settings.lease / 2;
        while conflicts < WRITE_ATTEMPTS {
            let record = self.token_record(profile, &before, &tokens, extras.connected)?;
            let write =
                ConnectionWrite::replacing(name, &before, record).removing_consent(extras.remove_consent.clone());
            match self.store.write_connection(write) {
                Ok(stored) => {
                    if rotated {
                        self.flush().await?;
                    }
                    self.after_token_write(name, &before, &stored, tokens.access_token, kind);
                    self.warn_refresh_token_expiry(profile, &stored);
                    return Ok(stored);
                }
                Err(StoreError::Unavailable(why)) if rotated && tokio::time::Instant::now() < hold_until => {
                    tracing::warn!(profile = name, error = %why, "storing a rotated token: database unavailable; retrying");
                    tokio::time::sleep(UNAVAILABLE_RETRY).await;
                }
                Err(StoreError::Conflict { .. }) => {
                    conflicts += 1;
                    let current = self.store.connection(name)?.unwrap_or_default();
                    // A new consent replaces whatever is there. A refresh gives way when another
                    // writer stored a new token set or disconnected meanwhile (their state wins);
                    // any other change (a status, a re-seal under a new key) it writes over.
                    let moved_on = current.token_version != before.token_version
                        || current.access_token_sealed.is_empty() != before.access_token_sealed.is_empty();
                    if moved_on && !extras.connected {
                        return Err(EngineError::Aborted(name.to_owned()));
                    }
                    before = current;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Aborted(name.to_owned()))
    }

    /// The connection record for a fresh token set.
    fn token_record(
        &self,
        profile: &ProfileRecord,
        before: &ConnectionRecord,
        tokens: &TokenSet,
        connected: bool,
    ) -> Result<ConnectionRecord, EngineError> {
        let name = profile.name.as_str();
        let now = self.clock.now_ms();
        let policy = self.settings.refresh.for_profile(profile);
        if tokens.raw_expires_in.is_some_and(|s| s <= 0 || s as u64 > crate::provider::MAX_LIFETIME.as_secs()) {
            tracing::warn!(
                profile = name,
                expires_in = tokens.raw_expires_in,
                "provider sent an unusable expires_in; clamped"
            );
        }
        let lifetime = tokens.expires_in.unwrap_or(policy.default_lifetime);
        let expires_at = now + lifetime.as_millis() as i64;
        let mut record = before.clone();
        record.status = pb::Status::Connected as i32;
        record.access_token_sealed = self.seal(Purpose::AccessToken, name, &tokens.access_token)?;
        self.set_refresh_token(&mut record, profile, tokens, connected, now)?;
        record.token_type = tokens.token_type.clone();
        if let Some(scopes) = &tokens.scopes {
            record.scopes = scopes.clone();
        } else if connected {
            record.scopes = profile.scopes.clone();
        }
        record.expires_at_ms = expires_at;
        record.last_refreshed_at_ms = now;
        // Without a refresh token (and not client credentials) no refresh can renew the token:
        // nothing is scheduled but a look at expiry, when the profile needs a new consent.
        record.not_renewable =
            record.refresh_token_sealed.is_empty() && crate::profile::grant(profile) != pb::Grant::ClientCredentials;
        record.next_refresh_at_ms = if record.not_renewable {
            expires_at
        } else {
            policy.next_refresh_at(now, expires_at, record.refresh_token_expires_at_ms, self.jitter.fraction())
        };
        record.last_error.clear();
        record.consecutive_failures = 0;
        record.token_version += 1;
        if connected {
            record.connected_at_ms = now;
            record.pending_consent.clear();
            record.connected_account = tokens.account.clone().unwrap_or_default();
        }
        if connected || !tokens.metadata.is_empty() {
            record.token_metadata = tokens.metadata.clone();
        }
        Ok(record)
    }

    /// The refresh token part of a fresh token set: the new one, or (a refresh reply without
    /// one) the stored one, or (a new consent without one) none; and its expected expiry.
    fn set_refresh_token(
        &self,
        record: &mut ConnectionRecord,
        profile: &ProfileRecord,
        tokens: &TokenSet,
        connected: bool,
        now: crate::clock::UnixMillis,
    ) -> Result<(), EngineError> {
        let previous_expiry = record.refresh_token_expires_at_ms;
        match (&tokens.refresh_token, connected) {
            (Some(refresh), _) => {
                record.refresh_token_sealed = self.seal(Purpose::RefreshToken, &profile.name, refresh)?;
            }
            // A new consent replaces the token set whole: the previous grant's refresh token
            // would refresh into the account that was connected before.
            (None, true) => record.refresh_token_sealed.clear(),
            // A refresh reply without a refresh token keeps the stored one (RFC 6749 §6).
            (None, false) => {}
        }
        record.refresh_token_expires_at_ms = if record.refresh_token_sealed.is_empty() {
            0
        } else {
            let rotated = tokens.refresh_token.is_some();
            let policy = self.settings.refresh.for_profile(profile);
            policy.refresh_token_expiry(now, rotated, tokens.refresh_token_expires_in, previous_expiry)
        };
        Ok(())
    }

    /// Logs a warning when the refresh token is expected to die soon with nothing planned to
    /// renew it, or when there is none to renew the access token with (see
    /// [`super::RefreshPolicy::warning`]); `GetProfile` shows it too.
    pub(super) fn warn_refresh_token_expiry(&self, profile: &ProfileRecord, stored: &ConnectionRecord) {
        let policy = self.settings.refresh.for_profile(profile);
        if let Some(warning) = policy.warning(stored, self.clock.now_ms()) {
            tracing::warn!(profile = %profile.name, expires_at_ms = stored.refresh_token_expires_at_ms, "{warning}");
        }
    }
}
