//! What watchers see: every change published by the write step ([`Engine::changes`]), and the
//! newest token of one profile ([`Engine::token_updates`]). Both read a broadcast channel of
//! bounded size; a watcher that falls behind by more than that loses events, and each stream
//! here says what that means for it instead of skipping silently: the token stream catches up
//! from the cache (it only ever needs the newest token), the change stream reports the gap.

use std::sync::Arc;

use futures::Stream;
use tokio::sync::broadcast;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::cache::HotToken;
use super::{Engine, ProfileChange};
use crate::api::pb::profile_event::Kind;

/// Events a watcher of [`Engine::changes`] fell behind by and will never see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this watcher fell behind and missed {0} profile events")]
pub struct MissedEvents(pub u64);

/// The next thing a watcher of one profile's token is told.
#[derive(Debug, Clone)]
pub enum TokenUpdate {
    /// A token newer than any handed to this watcher before.
    Token(Arc<HotToken>),
    /// The profile was deleted; nothing will follow.
    Deleted,
}

impl Engine {
    /// The changes published from `subscription` on (take it with [`Engine::subscribe`] before
    /// reading the state the changes apply to, so none falls in between). A gap is reported as
    /// [`MissedEvents`]: the watcher's picture is no longer complete, and it should read the
    /// state again.
    pub fn changes(
        subscription: broadcast::Receiver<ProfileChange>,
    ) -> impl Stream<Item = Result<ProfileChange, MissedEvents>> + Send + 'static {
        BroadcastStream::new(subscription)
            .map(|change| change.map_err(|BroadcastStreamRecvError::Lagged(n)| MissedEvents(n)))
    }

    /// The tokens of `name` newer than `after_version`, each as soon as it is published, from
    /// `subscription` on (take it before reading the first token, so a refresh in between is
    /// not lost). Tokens only: a watcher needs the newest, not every step to it, so events missed
    /// by falling behind are made up for by reading the cache.
    pub fn token_updates(
        self: &Arc<Self>,
        name: String,
        after_version: u64,
        subscription: broadcast::Receiver<ProfileChange>,
    ) -> impl Stream<Item = TokenUpdate> + Send + 'static {
        let engine = Arc::clone(self);
        let mut last_version = after_version;
        let mut deleted = false;
        Self::changes(subscription).filter_map(move |change| {
            if deleted {
                return None;
            }
            match change {
                Ok(change) if change.name != name => return None,
                Ok(change) if change.kind == Kind::Deleted => {
                    deleted = true;
                    return Some(TokenUpdate::Deleted);
                }
                // This profile changed, or an unknown number of events (this profile's among
                // them, perhaps) went by: the cache has the newest token either way.
                Ok(_) | Err(MissedEvents(_)) => {}
            }
            let Some(state) = engine.cached(&name) else {
                deleted = true;
                return Some(TokenUpdate::Deleted);
            };
            let token = state.token.as_ref()?;
            if token.token_version <= last_version {
                return None;
            }
            last_version = token.token_version;
            Some(TokenUpdate::Token(Arc::clone(token)))
        })
    }
}
