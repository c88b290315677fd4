//! The refresh procedure and its single flight: at most one refresh per connection runs, in its
//! own task, and every caller who needs it waits on that one. A caller that gives up never
//! cancels a refresh already sent, so a rotated refresh token in its answer is never lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use secrecy::SecretString;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::cache::FlightOutcome;
use super::lease::Claim;
use super::write::TokenWriteExtras;
use super::{Engine, EngineError, status_of};
use crate::api::pb;
use crate::api::pb::profile_event::Kind;
use crate::crypto::Purpose;
use crate::profile;
use crate::provider::{ProviderError, ProviderSettings, TokenSet};
use crate::store::{ConnectionRecord, ConnectionWrite, ProfileRecord, StoreError};

impl Engine {
    /// Joins the refresh of `name` in flight, or starts one, and waits for its outcome.
    pub async fn refresh_shared(self: &Arc<Self>, name: &str) -> FlightOutcome {
        let slot = self.slot(name).ok_or_else(|| Arc::new(EngineError::NotFound(name.to_owned())))?;
        let mut receiver = {
            let mut flight = slot.flight.lock().await;
            match &*flight {
                Some(receiver) => receiver.clone(),
                None => {
                    if self.stopping.load(Ordering::SeqCst) {
                        return Err(Arc::new(EngineError::Unavailable("tokend is shutting down; retry".into())));
                    }
                    let (sender, receiver) = watch::channel(None);
                    *flight = Some(receiver.clone());
                    let engine = Arc::clone(self);
                    let name = name.to_owned();
                    let slot = Arc::clone(&slot);
                    self.inflight.fetch_add(1, Ordering::SeqCst);
                    // Its own task: callers that stop waiting do not cancel it, and shutdown
                    // waits for it (`drain_refreshes`).
                    tokio::spawn(async move {
                        let outcome = engine.refresh_once(&name).await.map_err(Arc::new);
                        // The flight leaves the slot before its outcome goes out, under the
                        // slot's lock: a caller who comes after the outcome starts a refresh
                        // of its own instead of joining this finished one.
                        {
                            let mut flight = slot.flight.lock().await;
                            *flight = None;
                            let _ = sender.send(Some(outcome));
                        }
                        if engine.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
                            engine.idle.notify_waiters();
                        }
                    });
                    receiver
                }
            }
        };
        let done = receiver.wait_for(Option::is_some).await;
        match done.as_deref() {
            Ok(Some(outcome)) => outcome.clone(),
            _ => Err(Arc::new(EngineError::Unavailable("refresh task ended without an outcome".into()))),
        }
    }

    /// One refresh: call the provider, then store the outcome.
    async fn refresh_once(self: &Arc<Self>, name: &str) -> Result<(), EngineError> {
        let _permit = self.refresh_permits.acquire().await;
        let (profile, connection) = self.load(name)?;
        match status_of(&connection) {
            pb::Status::NeedsReauthorization => return Err(needs_reauthorization(name, &connection)),
            _ if connection.access_token_sealed.is_empty() && connection.refresh_token_sealed.is_empty() => {
                return Err(not_connected(name));
            }
            _ => {}
        }
        if connection.refresh_token_sealed.is_empty() && profile::grant(&profile) != pb::Grant::ClientCredentials {
            return Err(self.expire_unrenewable(name, connection));
        }
        // One process at a time calls the provider for a connection (several replicas on one
        // store): the lease is taken over the version read, so the refresh token used is current.
        let connection = match self.claim_refresh(name, connection).await? {
            Claim::Held(connection) => *connection,
            Claim::Settled => return Ok(()),
        };
        let result = self.refresh_leased(name, &profile, connection).await;
        self.release_refresh(name);
        result
    }

    /// A refresh under the lease: open the secrets, call the provider, store the outcome.
    async fn refresh_leased(
        self: &Arc<Self>,
        name: &str,
        profile: &ProfileRecord,
        connection: ConnectionRecord,
    ) -> Result<(), EngineError> {
        // A profile that cannot be used (its client secret does not open, an endpoint was made
        // unusable) is a failure like any other: recorded, backed off, shown; never a due entry
        // the timer would find again at once.
        let settings = match self.provider_settings(profile) {
            Ok(settings) => settings,
            Err(e) => return Err(self.record_unusable(profile, connection, e)),
        };
        let refresh_token = if connection.refresh_token_sealed.is_empty() {
            None
        } else {
            match self.keys.open_secret(Purpose::RefreshToken, name, &connection.refresh_token_sealed) {
                Ok(token) => Some(token),
                Err(_) => return Err(self.record_unusable(profile, connection, EngineError::Sealed(name.to_owned()))),
            }
        };
        let span = tracing::info_span!("refresh", profile = name);
        self.call_provider(name, profile, connection, settings, refresh_token).instrument(span).await
    }

    async fn call_provider(
        self: &Arc<Self>,
        name: &str,
        profile: &ProfileRecord,
        connection: ConnectionRecord,
        settings: ProviderSettings,
        refresh_token: Option<SecretString>,
    ) -> Result<(), EngineError> {
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
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_permanent() => "permanent",
            Err(_) => "transient",
        };
        self.metrics.count_refresh(outcome, elapsed);
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
        settings: &ProviderSettings,
        refresh_token: Option<&SecretString>,
    ) -> Option<Result<TokenSet, ProviderError>> {
        match (refresh_token, profile::grant(profile)) {
            (Some(token), _) => Some(match self.provider.refresh(settings, token).await {
                // The answer may have been lost, or not be readable, after the provider rotated:
                // ask once more with the same token (providers with a reuse grace window answer
                // it), after waiting a turn at the provider like any request.
                Err(e) if e.maybe_sent() => {
                    tracing::warn!(profile = name, error = %e, "refresh may have been lost; retrying once with the same token");
                    self.provider_turn(&settings.token_endpoint).await;
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
        match self.write(&before, ConnectionWrite::replacing(name, &before, record), Kind::Updated) {
            Ok(stored) => stored,
            Err(_) => before,
        }
    }

    /// A connection no refresh can renew (no refresh token, not client credentials): marked so
    /// the hand-out path stops asking, and looked at again only when its access token expires,
    /// when it becomes `NEEDS_REAUTHORIZATION`. Returns the error for waiting callers.
    fn expire_unrenewable(&self, name: &str, before: ConnectionRecord) -> EngineError {
        let now = self.clock.now_ms();
        let mut record = before.clone();
        record.not_renewable = true;
        let error = if before.expires_at_ms <= now {
            record.status = pb::Status::NeedsReauthorization as i32;
            record.last_error =
                "the provider granted no refresh token and the access token expired; an admin must Connect the \
                 profile again"
                    .into();
            record.next_refresh_at_ms = 0;
            not_renewable(name)
        } else {
            record.next_refresh_at_ms = before.expires_at_ms;
            EngineError::FailedPrecondition(format!(
                "profile {name:?} cannot be refreshed: the provider granted no refresh token; the access token serves \
                 until it expires"
            ))
        };
        self.write_outcome(name, &before, record);
        error
    }

    /// Records a refresh that could not be tried (the profile cannot be used as it is): backs off
    /// like a transient failure, so the index entry moves on and the profile shows why.
    fn record_unusable(&self, profile: &ProfileRecord, before: ConnectionRecord, error: EngineError) -> EngineError {
        let now = self.clock.now_ms();
        let mut record = before.clone();
        record.consecutive_failures = before.consecutive_failures.saturating_add(1);
        let wait = self.settings.refresh.for_profile(profile).backoff(
            record.consecutive_failures,
            self.jitter.fraction(),
            None,
        );
        record.status = pb::Status::RefreshFailing as i32;
        record.last_error = format!("refresh failing ({} in a row): {error}", record.consecutive_failures);
        record.next_refresh_at_ms = now + wait.as_millis() as i64;
        tracing::warn!(profile = %profile.name, error = %error, "refresh not attempted");
        self.write_outcome(&profile.name, &before, record);
        error
    }

    /// Writes the outcome of a refresh that stored no tokens; a concurrent writer's state wins.
    fn write_outcome(&self, name: &str, before: &ConnectionRecord, record: ConnectionRecord) {
        if &record == before {
            return;
        }
        match self.store.write_connection(ConnectionWrite::replacing(name, before, record)) {
            Ok(stored) => self.after_write(name, before, &stored, Kind::Updated),
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => tracing::error!(profile = name, error = %e, "recording a refresh outcome failed"),
        }
    }

    /// Records a failed refresh: backs off after transient failures (the held token keeps being
    /// served), stops refreshing after permanent ones. Returns the error for waiting callers.
    async fn record_failure(
        &self,
        profile: &ProfileRecord,
        before: ConnectionRecord,
        error: ProviderError,
    ) -> EngineError {
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
            // Only `invalid_grant` means the refresh token is gone. After `invalid_client` (a
            // client secret rotated at the provider) or a refused request the token is still
            // good: kept, so fixing the profile resumes refreshing without a new consent.
            if matches!(error, ProviderError::InvalidGrant { .. }) {
                record.refresh_token_sealed.clear();
            }
            record.next_refresh_at_ms = 0;
            EngineError::FailedPrecondition(format!("profile {name:?} needs reauthorization: {}", record.last_error))
        } else {
            let policy = self.settings.refresh.for_profile(profile);
            let wait = policy.backoff(record.consecutive_failures, self.jitter.fraction(), error.retry_after());
            record.status = pb::Status::RefreshFailing as i32;
            record.last_error = format!("refresh failing ({} in a row): {error}", record.consecutive_failures);
            record.next_refresh_at_ms = now + wait.as_millis() as i64;
            EngineError::Unavailable(format!("provider unavailable for profile {name:?}: {error}"))
        };
        match self.store.write_connection(ConnectionWrite::replacing(name, &before, record)) {
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
}

fn reauthorization_message(error: &ProviderError, hint: Option<String>) -> String {
    match (error, hint) {
        (ProviderError::InvalidGrant { .. }, Some(hint)) => {
            format!("{error}; {hint}; an admin must Connect the profile again")
        }
        (ProviderError::InvalidGrant { .. }, None) => {
            format!("{error}; the refresh token is no longer valid, an admin must Connect the profile again")
        }
        (ProviderError::InvalidClient { .. }, _) => format!(
            "{error}; the provider refused the client credentials: update client_id or client_secret (UpdateProfile) \
             and refreshing resumes with the held refresh token, no new consent needed"
        ),
        _ => format!("{error}; fix the profile (UpdateProfile) and refreshing resumes with the held refresh token"),
    }
}

/// The caller-facing error for a profile whose access token expired and cannot be renewed.
pub(crate) fn not_renewable(name: &str) -> EngineError {
    EngineError::FailedPrecondition(format!(
        "profile {name:?} needs reauthorization: the provider granted no refresh token and the access token \
         expired; an admin must Connect it again"
    ))
}

/// The caller-facing error for a profile with no tokens.
pub(crate) fn not_connected(name: &str) -> EngineError {
    EngineError::FailedPrecondition(format!("profile {name:?} is not connected; an admin must Connect it"))
}

/// The caller-facing error for a profile whose grant died.
pub(crate) fn needs_reauthorization(name: &str, c: &ConnectionRecord) -> EngineError {
    let detail = if c.last_error.is_empty() { String::new() } else { format!(" ({})", c.last_error) };
    EngineError::FailedPrecondition(format!(
        "profile {name:?} needs reauthorization; an admin must Connect it again{detail}"
    ))
}
