//! The backend-neutral seam for several processes on one store: a feed of changes written by
//! others (so each process keeps its in-memory cache coherent) and refresh leases (so exactly one
//! process calls the provider for a connection at a time). The engine sees only these types; how
//! a backend produces them (PostgreSQL: `LISTEN/NOTIFY` and a lease column) stays in the backend.

use tokio::sync::mpsc;

/// One change another process (or this one) wrote to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// A profile or its connection changed (written, created or deleted): reload it. `version` is
    /// the connection version written, when the change was a connection write, so a cache already
    /// at that version skips the reload.
    Changed {
        /// The profile.
        name: String,
        /// The connection version now stored, if the change wrote one.
        version: Option<u64>,
    },
    /// The feed lost changes (its database connection dropped and came back): everything cached
    /// may be stale and must be reloaded before it is trusted again.
    Resync,
}

/// The receiving end of a store's change feed.
pub type ChangeFeed = mpsc::UnboundedReceiver<StoreChange>;

/// The answer to [`super::Store::take_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// This process holds the lease: it may call the provider.
    Granted,
    /// Another process holds an unexpired lease, for about `remaining_ms` more: wait for its
    /// write (or for the lease to lapse) instead of calling the provider.
    HeldElsewhere {
        /// How long the lease has left, by the database's clock.
        remaining_ms: i64,
    },
    /// The connection is no longer at the version read (someone wrote it meanwhile): reload it
    /// before deciding whether a refresh is still needed.
    Moved,
}
