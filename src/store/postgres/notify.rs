//! The change feed over `LISTEN/NOTIFY`: every write sends `pg_notify(channel, payload)` in its
//! transaction (delivered at commit); one listener connection per process turns them into
//! [`StoreChange`]s. A lost listener connection loses notifications, so after reconnecting the
//! feed says [`StoreChange::Resync`] and the engine reloads everything before trusting its cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::store::{ChangeFeed, StoreChange};

/// The payload that asks every listener to reload everything (sent by a restore).
pub const RESYNC_PAYLOAD: &str = "*";

/// How long the listener waits before reconnecting after a failure.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// The payload of a change written by process `origin`: `<origin>|<version>:<name>`, with `-`
/// for the version when no connection version was written (a profile edit or delete).
pub fn payload(origin: &str, name: &str, version: Option<u64>) -> String {
    match version {
        Some(v) => format!("{origin}|{v}:{name}"),
        None => format!("{origin}|-:{name}"),
    }
}

/// The writer and the change a payload stands for (`None`: not one of ours). A resync has no
/// writer.
pub fn parse(payload: &str) -> Option<(Option<&str>, StoreChange)> {
    if payload == RESYNC_PAYLOAD {
        return Some((None, StoreChange::Resync));
    }
    let (origin, rest) = payload.split_once('|')?;
    let (version, name) = rest.split_once(':')?;
    let version = if version == "-" { None } else { Some(version.parse().ok()?) };
    Some((Some(origin), StoreChange::Changed { name: name.to_owned(), version }))
}

/// A process-unique lease holder id: host name (for people reading the table) and random bits.
pub fn holder_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let random: u64 = rand::random();
    format!("{}{}{random:016x}", host.chars().take(40).collect::<String>(), if host.is_empty() { "" } else { "/" })
}

/// The running listener task.
pub struct FeedState {
    connected: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FeedState {
    /// Whether the listener is connected (its cache-coherence promise holds).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Stops the listener.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Starts the listener on `handle` (the store's runtime); changes this process (`own`) wrote are
/// left out (it showed them when it wrote them).
pub fn start(handle: &Handle, pool: PgPool, channel: String, own: String) -> (FeedState, ChangeFeed) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let connected = Arc::new(AtomicBool::new(false));
    let task = handle.spawn(listen(pool, channel, own, sender, Arc::clone(&connected)));
    (FeedState { connected, task }, receiver)
}

async fn listen(
    pool: PgPool,
    channel: String,
    own: String,
    sender: mpsc::UnboundedSender<StoreChange>,
    connected: Arc<AtomicBool>,
) {
    let mut first = true;
    loop {
        let mut listener = match subscribe(&pool, &channel).await {
            Ok(listener) => listener,
            Err(e) => {
                if connected.swap(false, Ordering::AcqRel) || first {
                    tracing::warn!(error = %crate::store::postgres::pool::db(e), "change feed: cannot listen; retrying");
                    first = false;
                }
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        // Whatever was written while no listener was connected went unheard: reload all.
        if !first && sender.send(StoreChange::Resync).is_err() {
            return;
        }
        first = false;
        connected.store(true, Ordering::Release);
        tracing::info!(channel, "change feed listening");
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let Some((origin, change)) = parse(notification.payload()) else { continue };
                    if origin != Some(own.as_str()) && sender.send(change).is_err() {
                        return;
                    }
                }
                // Reconnected already (eager reconnect), but notifications may have been lost.
                Ok(None) => {
                    if sender.send(StoreChange::Resync).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    connected.store(false, Ordering::Release);
                    tracing::warn!(error = %crate::store::postgres::pool::db(e), "change feed lost its connection; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

async fn subscribe(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Payloads parse back to the change they stand for; names may hold colons.
    #[test]
    fn payloads_round_trip() {
        let seven = payload("host/1", "a:b", Some(7));
        assert_eq!(
            parse(&seven),
            Some((Some("host/1"), StoreChange::Changed { name: "a:b".into(), version: Some(7) }))
        );
        let edit = payload("h", "x", None);
        assert_eq!(parse(&edit), Some((Some("h"), StoreChange::Changed { name: "x".into(), version: None })));
        assert_eq!(parse(RESYNC_PAYLOAD), Some((None, StoreChange::Resync)));
        assert_eq!(parse("junk"), None);
    }
}
