//! The hand-out path (`GetAccessToken`): the hot path reads the cache slot only; the slow path
//! joins the one refresh in flight ([`super::refresh`]) and still answers with the freshest
//! unexpired token when that refresh fails.

use std::sync::Arc;
use std::time::Duration;

use super::cache::{HotToken, SlotState};
use super::refresh::{needs_reauthorization, not_connected, not_renewable};
use super::{Engine, EngineError};
use crate::api::pb;
use crate::clock::UnixMillis;

/// A token handed out, and the clock reading it was judged against (callers reuse it for the
/// audit tally instead of reading the clock again).
#[derive(Debug, Clone)]
pub struct Handout {
    /// The cached token itself, shared: handing it out copies nothing.
    pub token: Arc<HotToken>,
    /// When it was handed out.
    pub at_ms: UnixMillis,
}

/// Whether `token` serves a caller asking for `min_ms` of validity at `now`. A caller may ask for
/// more than the provider grants (24 h of a one-hour token); refreshing cannot meet that, so it
/// counts at most half the token's lifetime: such callers cause one refresh per half lifetime,
/// not one per call.
fn fresh_enough(token: &HotToken, now: UnixMillis, min_ms: i64) -> bool {
    let lifetime = token.expires_at_ms - token.issued_at_ms;
    let min_ms = if token.issued_at_ms > 0 && lifetime > 0 { min_ms.min(lifetime / 2) } else { min_ms };
    token.expires_at_ms - now >= min_ms
}

/// The held token if it has not expired at `now`.
fn unexpired(state: &SlotState, now: UnixMillis) -> Option<Arc<HotToken>> {
    state.token.as_ref().filter(|t| t.expires_at_ms > now).cloned()
}

impl Engine {
    /// A token valid for at least `min_valid_for` (the policy default when `None`). When the
    /// held token is too old, joins or starts the one refresh; when that fails, or the
    /// connection is backing off, still answers with the freshest unexpired token. Errors only
    /// when no unexpired token is at hand.
    pub async fn access_token(
        self: &Arc<Self>,
        name: &str,
        min_valid_for: Option<Duration>,
    ) -> Result<Handout, EngineError> {
        let slot = self.slot(name).ok_or_else(|| EngineError::NotFound(name.to_owned()))?;
        let min_ms = min_valid_for.unwrap_or(self.settings.refresh.min_valid_for).as_millis() as i64;
        let now = self.clock.now_ms();
        let state = slot.state.load();
        if let Some(token) = &state.token
            && fresh_enough(token, now, min_ms)
        {
            self.metrics.handouts.inc();
            return Ok(Handout { token: Arc::clone(token), at_ms: now });
        }
        match state.status {
            // No refresh can help: the held token until it expires, then a new consent.
            _ if !state.renewable && state.token.is_some() => {
                return match unexpired(&state, now) {
                    Some(token) => Ok(Handout { token, at_ms: now }),
                    None => Err(not_renewable(name)),
                };
            }
            pb::Status::NeedsReauthorization => {
                return match unexpired(&state, now) {
                    Some(token) => Ok(Handout { token, at_ms: now }),
                    None => {
                        let connection = self.store.connection(name)?.unwrap_or_default();
                        Err(needs_reauthorization(name, &connection))
                    }
                };
            }
            pb::Status::NotConnected | pb::Status::Connecting | pb::Status::Unspecified if state.token.is_none() => {
                return Err(not_connected(name));
            }
            pb::Status::RefreshFailing if now < state.backoff_until_ms => {
                return unexpired(&state, now).map(|token| Handout { token, at_ms: now }).ok_or_else(|| {
                    EngineError::Unavailable(format!(
                        "provider unavailable for profile {name:?} and the token has expired; retry later"
                    ))
                });
            }
            _ => {}
        }
        drop(state);
        let outcome = self.refresh_shared(name).await;
        let now = self.clock.now_ms();
        if let Some(token) = unexpired(&slot.state.load(), now) {
            self.metrics.handouts.inc();
            return Ok(Handout { token, at_ms: now });
        }
        match outcome {
            Err(e) => Err(match &*e {
                EngineError::FailedPrecondition(m) => EngineError::FailedPrecondition(m.clone()),
                EngineError::NotFound(n) => EngineError::NotFound(n.clone()),
                other => EngineError::Unavailable(other.to_string()),
            }),
            Ok(()) => Err(EngineError::Unavailable(format!("no valid token for profile {name:?} yet; retry"))),
        }
    }
}
