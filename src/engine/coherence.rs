//! Cache coherence across processes sharing one store (several replicas on PostgreSQL): the
//! store's change feed ([`crate::store::Store::changes`]) names each profile another process
//! wrote; the engine reloads it from the store into its cache, wakes the scheduler, and tells its
//! own watch streams. After a `Resync` (the feed lost its connection and may have missed changes)
//! every profile is reloaded and profiles gone from the store are dropped. sled has no feed, so
//! none of this runs there. The engine stays free of SQL: it only reads through [`Store`].
//!
//! [`Store`]: crate::store::Store

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use super::{Engine, status_of};
use crate::api::pb;
use crate::api::pb::profile_event::Kind;
use crate::store::{ChangeFeed, ConnectionRecord, StoreChange, StoreError};

impl Engine {
    /// Follows the store's change feed, if it has one, in a task that ends with the feed (or
    /// when the engine is dropped: the task holds it weakly, so it never keeps the store open).
    pub fn spawn_change_feed(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let feed = self.store.changes()?;
        Some(tokio::spawn(follow(Arc::downgrade(self), feed)))
    }

    /// Reloads one profile another process changed. `version`: the connection version it wrote,
    /// skipped when the cache already shows it (or a newer one).
    async fn reload_changed(self: &Arc<Self>, name: String, version: Option<u64>) {
        if let (Some(version), Some(slot)) = (version, self.cache.get(&name))
            && slot.state.load().version >= version
        {
            return;
        }
        let engine = Arc::clone(self);
        let key = name.clone();
        match tokio::task::spawn_blocking(move || engine.store.connection(&key)).await {
            Ok(Ok(found)) => self.show_remote(&name, found),
            Ok(Err(e)) => tracing::warn!(profile = %name, error = %e, "reloading a changed profile failed"),
            Err(e) => tracing::warn!(profile = %name, error = %e, "reloading a changed profile failed"),
        }
    }

    /// Shows a connection read after another process changed it (`None`: the profile is gone):
    /// in the cache, and to this process's watchers. Every path that learns of another process's
    /// write goes through here, so watchers never miss one.
    pub(super) fn show_remote(&self, name: &str, found: Option<ConnectionRecord>) {
        let previous = self.cache.get(name).map(|slot| Arc::clone(&slot.state.load()));
        match found {
            None => {
                if let Some(previous) = previous {
                    self.deleted(name, previous.status);
                }
            }
            Some(connection) => {
                let state = self.slot_state(name, &connection);
                let refreshed = match (&previous, &state.token) {
                    (Some(p), Some(t)) => p.token.as_ref().is_none_or(|old| old.token_version != t.token_version),
                    _ => false,
                };
                let previous_status = previous.as_ref().map_or(pb::Status::NotConnected, |p| p.status);
                self.cache.set(name, state);
                if connection.next_refresh_at_ms > 0 {
                    self.wake.notify_one();
                }
                let kind = if refreshed { Kind::Refreshed } else { Kind::Updated };
                self.publish(name, kind, previous_status, status_of(&connection));
            }
        }
    }

    /// Reloads every profile (the feed may have missed changes) and drops the ones gone.
    async fn resync(self: &Arc<Self>) -> Result<usize, StoreError> {
        let engine = Arc::clone(self);
        let loaded = tokio::task::spawn_blocking(move || engine.store.connections())
            .await
            .map_err(|e| StoreError::Engine(format!("resync task: {e}")))??;
        let present: HashSet<String> = loaded.iter().map(|(name, _)| name.clone()).collect();
        let count = loaded.len();
        for (name, connection) in loaded {
            let cached = self.cache.get(&name).map(|slot| slot.state.load().version);
            if cached != Some(connection.version) {
                self.show_remote(&name, Some(connection));
            }
        }
        for name in self.cache.names() {
            if !present.contains(&name) {
                self.show_remote(&name, None);
            }
        }
        Ok(count)
    }
}

async fn follow(engine: Weak<Engine>, mut feed: ChangeFeed) {
    while let Some(change) = feed.recv().await {
        let Some(engine) = engine.upgrade() else { return };
        match change {
            StoreChange::Changed { name, version } => engine.reload_changed(name, version).await,
            StoreChange::Resync => match engine.resync().await {
                Ok(count) => {
                    tracing::info!(profiles = count, "reloaded every profile after the change feed reconnected")
                }
                Err(e) => tracing::error!(error = %e, "reloading after the change feed reconnected failed"),
            },
        }
    }
}
