//! The refresh procedure and its single flight: at most one refresh per connection runs, in its
//! own task, and every caller who needs it waits on that one. A caller that gives up never
//! cancels a refresh already sent, so a rotated refresh token in its answer is never lost.

use std::sync::Arc;

use secrecy::SecretString;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::cache::FlightOutcome;
use super::{Core, CoreError, status_of};
use crate::api::pb;
use crate::api::pb::profile_event::Kind;
use crate::crypto::Purpose;
use crate::profile;
use crate::provider::{ProviderError, TokenSet};
use crate::store::{ConnectionRecord, ConnectionWrite, ProfileRecord, StoreError};

/// How often a token write retries onto a newer version before giving up.
const WRITE_ATTEMPTS: usize = 3;

/// The consent changes that go with storing a token set (code exchange clears the consent).
#[derive(Debug, Default)]
pub(super) struct TokenWriteExtras {
    pub remove_consent: Option<Vec<u8>>,
    pub connected: bool,
}

impl Core {
    /// Joins the refresh of `name` in flight, or starts one, and waits for its outcome.
    pub async fn refresh_shared(self: &Arc<Self>, name: &str) -> FlightOutcome {
        let slot = self.slot(name).ok_or_else(|| Arc::new(CoreError::NotFound(name.to_owned())))?;
        let mut receiver = {
            let mut flight = slot.flight.lock().await;
            match &*flight {
                Some(receiver) => receiver.clone(),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    *flight = Some(receiver.clone());
                    let core = Arc::clone(self);
                    let name = name.to_owned();
                    let slot = Arc::clone(&slot);
                    // Its own task: callers that stop waiting do not cancel it.
                    tokio::spawn(async move {
                        let outcome = core.refresh_once(&name).await.map_err(Arc::new);
                        let _ = sender.send(Some(outcome));
                        *slot.flight.lock().await = None;
                    });
                    receiver
                }
            }
        };
        let done = receiver.wait_for(Option::is_some).await;
        match done.as_deref() {
            Ok(Some(outcome)) => outcome.clone(),
            _ => Err(Arc::new(CoreError::Unavailable("refresh task ended without an outcome".into()))),
        }
    }

    /// One refresh: call the provider, then store the outcome.
    async fn refresh_once(self: &Arc<Self>, name: &str) -> Result<(), CoreError> {
        let _permit = self.refresh_permits.acquire().await;
        let (profile, connection) = self.load(name)?;
        match status_of(&connection) {
            pb::Status::NeedsReauthorization => return Err(needs_reauthorization(name, &connection)),
            _ if connection.access_token_sealed.is_empty() && connection.refresh_token_sealed.is_empty() => {
                return Err(not_connected(name));
            }
            _ => {}
        }
        let settings = self.settings_of(&profile)?;
        let refresh_token = if connection.refresh_token_sealed.is_empty() {
            None
        } else {
            Some(
                self.keys
                    .open_secret(Purpose::RefreshToken, name, &connection.refresh_token_sealed)
                    .map_err(|_| CoreError::Sealed(name.to_owned()))?,
            )
        };
        let span = tracing::info_span!("refresh", profile = name);
        self.call_provider(name, &profile, connection, settings, refresh_token).instrument(span).await
    }

    async fn call_provider(
        self: &Arc<Self>,
        name: &str,
        profile: &ProfileRecord,
        connection: ConnectionRecord,
        settings: crate::provider::ProviderSettings,
        refresh_token: Option<SecretString>,
    ) -> Result<(), CoreError> {
        self.provider_turn(&settings.token_endpoint).await;
        let started = std::time::Instant::now();
        let mut connection = connection;
        let exchange = self.exchange(name, profile, &settings, refresh_token.as_ref());
        tokio::pin!(exchange);
        let result = tokio::select! {
            biased;
            result = &mut exchange => result,
            _ = tokio::time::sleep(self.settings.soft_timeout) => {
                // Slow, not failed: show it, keep serving the held token, keep waiting for the
                // answer (it may carry a rotated refresh token) until the hard timeout.
                connection = self.mark_slow(name, connection);
                exchange.await
            }
        };
        let result = match result {
            Some(result) => result,
            None => return Err(needs_reauthorization(name, &connection)),
        };
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_millis() as u64;
        self.metrics.refresh_seconds.observe(elapsed.as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_permanent() => "permanent",
            Err(_) => "transient",
        };
        self.metrics.refreshes.get_or_create(&crate::metrics::OutcomeLabel { outcome }).inc();
        match result {
            Ok(tokens) => {
                tracing::info!(profile = name, elapsed_ms, rotated = tokens.refresh_token.is_some(), "refreshed");
                self.store_tokens(profile, connection, tokens, TokenWriteExtras::default(), Kind::Refreshed)
                    .await
                    .map(|_| ())
            }
            Err(e) => {
                tracing::warn!(profile = name, elapsed_ms, error = %e, "refresh failed");
                Err(self.record_failure(profile, connection, e).await)
            }
        }
    }

    /// The provider exchange of a refresh: the refresh token grant (retried once with the same
    /// token when the answer may have been lost), or client credentials. `None`: neither applies.
    async fn exchange(
        &self,
        name: &str,
        profile: &ProfileRecord,
        settings: &crate::provider::ProviderSettings,
        refresh_token: Option<&SecretString>,
    ) -> Option<Result<TokenSet, ProviderError>> {
        match (refresh_token, profile::grant(profile)) {
            (Some(token), _) => Some(match self.provider.refresh(settings, token).await {
                // The answer may have been lost after the provider rotated: ask once more with
                // the same token (providers with a reuse grace window answer it).
                Err(e @ ProviderError::Transient { maybe_sent: true, .. }) => {
                    tracing::warn!(profile = name, error = %e, "refresh may have been lost; retrying once with the same token");
                    self.provider.refresh(settings, token).await
                }
                other => other,
            }),
            (None, pb::Grant::ClientCredentials) => Some(self.provider.client_credentials(settings).await),
            (None, _) => None,
        }
    }

    /// Marks a connected profile `REFRESH_FAILING` while its refresh is slow; returns the
    /// record to write the outcome over.
    fn mark_slow(&self, name: &str, before: ConnectionRecord) -> ConnectionRecord {
        if status_of(&before) != pb::Status::Connected {
            return before;
        }
        let mut record = before.clone();
        record.status = pb::Status::RefreshFailing as i32;
        record.last_error = format!("provider slow: no answer after {:?}; still waiting", self.settings.soft_timeout);
        let write = ConnectionWrite {
            name: name.to_owned(),
            expected_version: before.version,
            record,
            put_consent: None,
            remove_consent: None,
        };
        match self.write(&before, write, Kind::Updated) {
            Ok(stored) => stored,
            Err(_) => before,
        }
    }

    /// The provider settings of a profile.
    pub(super) fn settings_of(&self, profile: &ProfileRecord) -> Result<crate::provider::ProviderSettings, CoreError> {
        profile::resolve(profile, &self.keys, &self.settings.callback_url, self.settings.allow_insecure_http).map_err(
            |e| {
                if e.field == "client_secret" {
                    CoreError::Sealed(profile.name.clone())
                } else {
                    CoreError::FailedPrecondition(format!("profile {:?} cannot be used: {e}", profile.name))
                }
            },
        )
    }

    /// Stores a fresh token set over `before` (retrying onto newer versions that kept the same
    /// refresh token), durably when it carries a new refresh token, and only then shows the new
    /// access token to callers.
    pub(super) async fn store_tokens(
        &self,
        profile: &ProfileRecord,
        mut before: ConnectionRecord,
        tokens: TokenSet,
        extras: TokenWriteExtras,
        kind: Kind,
    ) -> Result<ConnectionRecord, CoreError> {
        let name = profile.name.as_str();
        let rotated = tokens.refresh_token.is_some();
        for _ in 0..WRITE_ATTEMPTS {
            let record = self.token_record(profile, &before, &tokens, extras.connected);
            let write = ConnectionWrite {
                name: name.to_owned(),
                expected_version: before.version,
                record,
                put_consent: None,
                remove_consent: extras.remove_consent.clone(),
            };
            match self.store.write_connection(write) {
                Ok(stored) => {
                    if rotated {
                        self.flush().await?;
                    }
                    self.after_write(name, &before, &stored, kind);
                    self.warn_refresh_token_expiry(profile, &stored);
                    return Ok(stored);
                }
                Err(StoreError::Conflict { .. }) => {
                    let current = self.store.connection(name)?.unwrap_or_default();
                    // Another writer rotated or disconnected meanwhile: its state wins.
                    if current.refresh_token_sealed != before.refresh_token_sealed
                        || current.access_token_sealed.is_empty() != before.access_token_sealed.is_empty()
                    {
                        return Err(CoreError::Aborted(name.to_owned()));
                    }
                    before = current;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Aborted(name.to_owned()))
    }

    /// The connection record for a fresh token set.
    fn token_record(
        &self,
        profile: &ProfileRecord,
        before: &ConnectionRecord,
        tokens: &TokenSet,
        connected: bool,
    ) -> ConnectionRecord {
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
        record.access_token_sealed = self.keys.seal_secret(Purpose::AccessToken, name, &tokens.access_token);
        // A reply without a refresh token keeps the stored one (RFC 6749 §6).
        if let Some(refresh) = &tokens.refresh_token {
            record.refresh_token_sealed = self.keys.seal_secret(Purpose::RefreshToken, name, refresh);
        }
        record.refresh_token_expires_at_ms = if record.refresh_token_sealed.is_empty() {
            0
        } else {
            let rotated = tokens.refresh_token.is_some();
            policy.refresh_token_expiry(
                now,
                rotated,
                tokens.refresh_token_expires_in,
                before.refresh_token_expires_at_ms,
            )
        };
        record.token_type = tokens.token_type.clone();
        if let Some(scopes) = &tokens.scopes {
            record.scopes = scopes.clone();
        } else if connected {
            record.scopes = profile.scopes.clone();
        }
        record.expires_at_ms = expires_at;
        record.last_refreshed_at_ms = now;
        record.next_refresh_at_ms =
            policy.next_refresh_at(now, expires_at, record.refresh_token_expires_at_ms, self.jitter.fraction());
        record.last_error.clear();
        record.consecutive_failures = 0;
        record.token_version += 1;
        if connected {
            record.connected_at_ms = now;
            record.pending_consent.clear();
            record.connected_account = tokens.account.clone().unwrap_or_default();
        }
        if !tokens.metadata.is_empty() {
            record.token_metadata = tokens.metadata.clone();
        }
        record
    }

    /// Records a failed refresh: backs off after transient failures (the held token keeps being
    /// served), stops refreshing after permanent ones. Returns the error for waiting callers.
    async fn record_failure(
        &self,
        profile: &ProfileRecord,
        before: ConnectionRecord,
        error: ProviderError,
    ) -> CoreError {
        let name = profile.name.as_str();
        let now = self.clock.now_ms();
        let mut record = before.clone();
        record.consecutive_failures = before.consecutive_failures.saturating_add(1);
        let outcome = if error.is_permanent() {
            record.status = pb::Status::NeedsReauthorization as i32;
            let since_consent = std::time::Duration::from_millis((now - before.connected_at_ms).max(0) as u64);
            let hint = match &error {
                ProviderError::InvalidGrant { .. } if before.connected_at_ms > 0 => {
                    crate::provider::invalid_grant_hint(&profile.provider, since_consent)
                }
                _ => None,
            };
            record.last_error = reauthorization_message(&error, hint);
            record.refresh_token_sealed.clear();
            record.next_refresh_at_ms = 0;
            CoreError::FailedPrecondition(format!("profile {name:?} needs reauthorization: {}", record.last_error))
        } else {
            let policy = self.settings.refresh.for_profile(profile);
            let wait = policy.backoff(record.consecutive_failures, self.jitter.fraction(), error.retry_after());
            record.status = pb::Status::RefreshFailing as i32;
            record.last_error = format!("refresh failing ({} in a row): {error}", record.consecutive_failures);
            record.next_refresh_at_ms = now + wait.as_millis() as i64;
            CoreError::Unavailable(format!("provider unavailable for profile {name:?}: {error}"))
        };
        let write = ConnectionWrite {
            name: name.to_owned(),
            expected_version: before.version,
            record,
            put_consent: None,
            remove_consent: None,
        };
        match self.store.write_connection(write) {
            Ok(stored) => {
                self.after_write(name, &before, &stored, Kind::Updated);
                self.warn_refresh_token_expiry(profile, &stored);
            }
            // Someone else wrote meanwhile (a new consent, a disconnect): their state stands.
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return e.into(),
        }
        outcome
    }

    /// Logs a warning when the refresh token is expected to die soon with nothing planned to
    /// renew it (see [`super::RefreshPolicy::refresh_token_warning`]); `GetProfile` shows it too.
    fn warn_refresh_token_expiry(&self, profile: &ProfileRecord, stored: &ConnectionRecord) {
        let policy = self.settings.refresh.for_profile(profile);
        if let Some(warning) = policy.refresh_token_warning(stored, self.clock.now_ms()) {
            tracing::warn!(profile = %profile.name, expires_at_ms = stored.refresh_token_expires_at_ms, "{warning}");
        }
    }
}

fn reauthorization_message(error: &ProviderError, hint: Option<String>) -> String {
    match (error, hint) {
        (ProviderError::InvalidGrant { .. }, Some(hint)) => {
            format!("{error}; {hint}; an admin must Connect the profile again")
        }
        (ProviderError::InvalidGrant { .. }, None) => {
            format!("{error}; the refresh token is no longer valid, an admin must Connect the profile again")
        }
        (ProviderError::InvalidClient { .. }, _) => {
            format!("{error}; check client_id and client_secret (UpdateProfile), then Connect again")
        }
        _ => format!("{error}; fix the profile, then Connect again"),
    }
}

/// The caller-facing error for a profile with no tokens.
pub(super) fn not_connected(name: &str) -> CoreError {
    CoreError::FailedPrecondition(format!("profile {name:?} is not connected; an admin must Connect it"))
}

/// The caller-facing error for a profile whose grant died.
pub(super) fn needs_reauthorization(name: &str, c: &ConnectionRecord) -> CoreError {
    let detail = if c.last_error.is_empty() { String::new() } else { format!(" ({})", c.last_error) };
    CoreError::FailedPrecondition(format!(
        "profile {name:?} needs reauthorization; an admin must Connect it again{detail}"
    ))
}
