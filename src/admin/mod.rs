//! Administration: profiles (create, update, delete, read, list, declared in the file),
//! consents (authorization code with PKCE, device grant, client credentials), disconnects with
//! revocation, and key rotation. [`Admin`] stands on the [`Engine`]: it writes connections only
//! through the engine's write step, so the token cache and watchers always see what it did.
//! Its results are its own types ([`ProfileView`], [`ConnectStart`], [`Revocation`]); the gRPC
//! service and the landing page turn them into their replies.

mod connect;
mod consent;
mod device;
mod disconnect;
mod error;
mod profiles;
mod rekey;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

pub use connect::{ConnectStart, DeviceInstructions};
pub use disconnect::Revocation;
pub use error::AdminError;
pub use profiles::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ManagedChange, ProfileView};
pub use rekey::{KeyReloadError, KeyUsage, ResealReport};

use crate::engine::Engine;

/// Profile administration, consents and key rotation over one [`Engine`]. Cheap to share
/// (`Arc<Admin>`).
pub struct Admin {
    engine: Arc<Engine>,
    /// Lifetime of a started consent.
    consent_ttl: Duration,
    /// Device-grant pollers by profile, cancelled on disconnect, deletion, a new Connect or
    /// shutdown.
    device_polls: DashMap<String, CancellationToken>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("device_polls", &self.device_polls.len()).finish_non_exhaustive()
    }
}

impl Admin {
    /// Administration over `engine`; consents started here live `consent_ttl`.
    pub fn new(engine: Arc<Engine>, consent_ttl: Duration) -> Arc<Self> {
        Arc::new(Self { engine, consent_ttl, device_polls: DashMap::new() })
    }

    /// The engine this administers.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stops every device-grant poller; for shutdown.
    pub fn stop_background(&self) {
        for poll in self.device_polls.iter() {
            poll.value().cancel();
        }
        self.device_polls.clear();
    }
}
