//! Refresh leases: before calling the provider, a refresh takes the connection's lease from the
//! store, so among processes sharing one store exactly one calls the provider for a connection at
//! a time (a second call with the same refresh token would be refresh-token reuse, which
//! providers with rotation answer by revoking the grant). A process that finds the lease held
//! waits for the holder's write (or for the lease to lapse: a holder that died) and never calls
//! the provider itself meanwhile. With sled the lease is always granted (one process).

use std::time::Duration;

use super::{Engine, EngineError};
use crate::store::{ConnectionRecord, LeaseOutcome};

/// How often a process waiting on another's refresh looks at the store.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// What taking the lease came to.
pub(super) enum Claim {
    /// This process holds the lease; refresh over this record.
    Held(Box<ConnectionRecord>),
    /// Another process wrote the connection meanwhile (its refresh, most likely): now cached;
    /// nothing to do.
    Settled,
}

impl Engine {
    /// Takes the refresh lease of `name` over `connection`, waiting while another process holds
    /// it. Gives up with `Unavailable` after about two lease times.
    pub(super) async fn claim_refresh(&self, name: &str, connection: ConnectionRecord) -> Result<Claim, EngineError> {
        let lease = self.settings.lease;
        let give_up = tokio::time::Instant::now() + lease * 2;
        loop {
            match self.store.take_lease(name, connection.version, lease)? {
                LeaseOutcome::Granted => return Ok(Claim::Held(Box::new(connection))),
                LeaseOutcome::Moved => {
                    self.show_current(name)?;
                    return Ok(Claim::Settled);
                }
                LeaseOutcome::HeldElsewhere { remaining_ms } => {
                    tracing::debug!(profile = name, remaining_ms, "another replica is refreshing; waiting for it");
                    let until = tokio::time::Instant::now()
                        + Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0)).max(WAIT_POLL);
                    while tokio::time::Instant::now() < until {
                        tokio::time::sleep(WAIT_POLL).await;
                        let current = self.store.connection(name)?;
                        if current.as_ref().is_none_or(|c| c.version != connection.version) {
                            // Shown to this process's watchers too: the change feed's notice of
                            // the same write will find the cache at its version and say nothing.
                            self.show_remote(name, current);
                            return Ok(Claim::Settled);
                        }
                    }
                    if tokio::time::Instant::now() >= give_up {
                        return Err(EngineError::Unavailable(format!(
                            "profile {name:?} is being refreshed by another replica; retry"
                        )));
                    }
                    // The lease lapsed without a write: its holder died. Take it over.
                }
            }
        }
    }

    /// Gives the lease back after a refresh (it lapses on its own if this fails).
    pub(super) fn release_refresh(&self, name: &str) {
        if let Err(e) = self.store.release_lease(name) {
            tracing::warn!(profile = name, error = %e, "releasing a refresh lease failed; it lapses on its own");
        }
    }

    /// Reads the connection now and shows it in the cache and to watchers.
    fn show_current(&self, name: &str) -> Result<(), EngineError> {
        let current = self.store.connection(name)?;
        self.show_remote(name, current);
        Ok(())
    }
}
