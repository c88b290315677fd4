//! What watchers see: every change published by the write step ([`Engine::changes`]), and the
//! newest token of one profile ([`Engine::watch_token`]). The change channel is a broadcast of
//! bounded size: a watcher that falls behind by more than that loses events, and is told
//! ([`MissedEvents`]) instead of skipping silently. Token watchers wait on a channel of their
//! profile only, which holds no backlog: woken, they read the newest token from the cache.

use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::cache::HotToken;
use super::{Engine, ProfileChange};

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

    /// Starts watching the token of `name`: take it before reading the first token, so a
    /// refresh in between is not lost; then [`TokenWatch::updates`]. Only changes to this
    /// profile wake its watchers (not every profile's, as the change channel would): ten
    /// thousand streams on one profile cost nothing when the others refresh.
    pub fn watch_token(self: &Arc<Self>, name: &str) -> TokenWatch {
        let changed = self.token_watchers.entry(name.to_owned()).or_insert_with(|| watch::channel(()).0).subscribe();
        TokenWatch { engine: Arc::clone(self), name: name.to_owned(), changed }
    }

    /// Wakes the token watchers of `name` (a publish of any change to it).
    pub(super) fn wake_token_watchers(&self, name: &str) {
        if let Some(watchers) = self.token_watchers.get(name) {
            watchers.send_replace(());
        }
    }
}

/// A watcher of one profile's token ([`Engine::watch_token`]).
pub struct TokenWatch {
    engine: Arc<Engine>,
    name: String,
    changed: watch::Receiver<()>,
}

impl std::fmt::Debug for TokenWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenWatch").field("name", &self.name).finish_non_exhaustive()
    }
}

impl TokenWatch {
    /// The tokens newer than `after_version`, each as soon as it is published, then
    /// [`TokenUpdate::Deleted`] if the profile is deleted. A watcher needs the newest token, not
    /// every step to it: it reads the cache when woken, so it never falls behind.
    pub fn updates(self, after_version: u64) -> impl Stream<Item = TokenUpdate> + Send + 'static {
        futures::stream::unfold(Some((self, after_version)), |state| async move {
            let (mut watch, mut last_version) = state?;
            loop {
                // The sender lives in the engine's map while any receiver does.
                watch.changed.changed().await.ok()?;
                let Some(slot) = watch.engine.cached(&watch.name) else {
                    return Some((TokenUpdate::Deleted, None));
                };
                if let Some(token) = slot.token.as_ref().filter(|t| t.token_version > last_version) {
                    last_version = token.token_version;
                    let token = Arc::clone(token);
                    return Some((TokenUpdate::Token(token), Some((watch, last_version))));
                }
            }
        })
    }
}

impl Drop for TokenWatch {
    fn drop(&mut self) {
        // The last watcher of a profile takes its channel out of the map (under the map's lock,
        // so a watcher subscribing meanwhile either finds the channel or makes a new one).
        self.engine.token_watchers.remove_if(&self.name, |_, sender| sender.receiver_count() <= 1);
    }
}
