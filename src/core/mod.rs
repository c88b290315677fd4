//! The daemon's state and operations behind the gRPC surface: profiles, consents, the token
//! cache and the refresh engine. gRPC handlers and the HTTP callback call into [`Core`]; nothing
//! here knows about gRPC.

mod cache;
mod connect;
mod error;
mod group_flush;
mod profiles;
mod ratelimit;
mod refresh;
mod rekey;
mod schedule;
mod scheduler;
mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, broadcast};

pub use cache::{HotToken, SlotState, TokenCache};
pub use connect::{ConnectStart, DeviceInstructions, Revocation};
pub use error::CoreError;
pub use profiles::ManagedChange;
pub use rekey::{KeyReloadError, KeyUsage, ResealReport};
pub use schedule::RefreshPolicy;
pub use scheduler::Scheduler;
pub use tokens::Handout;

use crate::api::pb;
use crate::clock::{Clock, Jitter};
use crate::crypto::{KeyRing, Purpose};
use crate::provider::Provider;
use crate::store::{ConnectionRecord, ProfileRecord, Store};

/// A change to a profile, published to `WatchProfiles` and `WatchAccessToken` streams.
#[derive(Debug, Clone)]
pub struct ProfileChange {
    /// The profile.
    pub name: String,
    /// What happened.
    pub kind: pb::profile_event::Kind,
    /// The status before the change.
    pub previous_status: pb::Status,
    /// The status after it.
    pub status: pb::Status,
}

/// Settings of the core that come from the configuration.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// Redirect URI for profiles that name none.
    pub callback_url: String,
    /// Allow plain-http provider endpoints off loopback.
    pub allow_insecure_http: bool,
    /// Lifetime of a started consent.
    pub consent_ttl: Duration,
    /// Refresh policy defaults.
    pub refresh: RefreshPolicy,
    /// Refreshes running at once.
    pub max_concurrent_refreshes: usize,
    /// After this long without an answer a refresh shows `REFRESH_FAILING` (and keeps waiting
    /// until the HTTP client's hard timeout).
    pub soft_timeout: Duration,
    /// Token requests per second to one provider (token endpoint host).
    pub provider_rate: f64,
    /// Requests one provider may get in a burst.
    pub provider_burst: u32,
}

/// The daemon's state. Cheap to share (`Arc<Core>`).
pub struct Core {
    store: Arc<dyn Store>,
    keys: Arc<KeyRing>,
    provider: Provider,
    clock: Arc<dyn Clock>,
    jitter: Arc<dyn Jitter>,
    settings: CoreSettings,
    cache: TokenCache,
    /// Every profile change, for watch streams; lagging receivers skip ahead.
    events: broadcast::Sender<ProfileChange>,
    /// Wakes the scheduler when a write makes a refresh due earlier than it planned for.
    wake: Notify,
    /// Bounds refreshes running at once (scheduled and on-demand alike).
    refresh_permits: Semaphore,
    /// Device-grant pollers by profile, cancelled on disconnect, deletion, a new Connect or
    /// shutdown.
    device_polls: dashmap::DashMap<String, tokio_util::sync::CancellationToken>,
    /// Counters for `/metrics`.
    metrics: crate::metrics::EngineMetrics,
    /// Rate limits by token endpoint host.
    provider_limits: dashmap::DashMap<String, Arc<ratelimit::RateLimiter>>,
    /// Flushes shared by concurrent writers (group commit).
    flushes: Arc<group_flush::GroupFlush>,
    /// The background warm-up of the cache has not finished: a missing slot may just not be
    /// loaded yet.
    warming: AtomicBool,
    /// Shutdown began: background work stops early.
    stopping: AtomicBool,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("profiles", &self.cache.len()).finish_non_exhaustive()
    }
}

impl Core {
    /// A core over an opened store and key ring. Call [`Core::spawn_warm_up`] when serving starts.
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<KeyRing>,
        provider: Provider,
        clock: Arc<dyn Clock>,
        jitter: Arc<dyn Jitter>,
        settings: CoreSettings,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        let permits = settings.max_concurrent_refreshes.max(1);
        Arc::new(Self {
            flushes: group_flush::GroupFlush::new(Arc::clone(&store)),
            warming: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            store,
            keys,
            provider,
            clock,
            jitter,
            settings,
            cache: TokenCache::default(),
            events,
            wake: Notify::new(),
            refresh_permits: Semaphore::new(permits),
            device_polls: dashmap::DashMap::new(),
            metrics: crate::metrics::EngineMetrics::default(),
            provider_limits: dashmap::DashMap::new(),
        })
    }

    /// Loads every stored connection into the cache in the background (decrypting each access
    /// token once, there, so the hot path never does) and returns at once: the daemon serves
    /// meanwhile, and a profile the warm-up has not reached yet is loaded on its first use
    /// ([`Core::slot`]). Start-up time no longer grows with the number of profiles.
    pub fn spawn_warm_up(self: &Arc<Self>) -> tokio::task::JoinHandle<usize> {
        let core = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut loaded = 0usize;
            let result = core.store.for_each_connection_name(&mut |name| {
                if core.cache.get_or_load(name, || core.load_slot(name)).is_some() {
                    loaded += 1;
                }
                !core.stopping.load(Ordering::Relaxed)
            });
            core.warming.store(false, Ordering::Release);
            match result {
                Ok(()) => {
                    tracing::info!(profiles = loaded, ms = started.elapsed().as_millis() as u64, "token cache warm")
                }
                Err(e) => tracing::error!(error = %e, "token cache warm-up stopped; profiles load on first use"),
            }
            loaded
        })
    }

    /// A profile's cache slot. While the warm-up runs, a profile it has not reached yet is
    /// loaded from the store now (after it, a missing slot means no such profile).
    fn slot(&self, name: &str) -> Option<Arc<cache::Slot>> {
        match self.cache.get(name) {
            Some(slot) => Some(slot),
            None if self.warming.load(Ordering::Acquire) => self.cache.get_or_load(name, || self.load_slot(name)),
            None => None,
        }
    }

    /// The slot state of a stored connection, read now (None: no such profile).
    fn load_slot(&self, name: &str) -> Option<SlotState> {
        match self.store.connection(name) {
            Ok(Some(connection)) => Some(self.slot_state(name, &connection)),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(profile = name, error = %e, "reading a connection for the cache failed");
                None
            }
        }
    }

    /// The slot state a stored connection stands for.
    fn slot_state(&self, name: &str, c: &ConnectionRecord) -> SlotState {
        let token = if c.access_token_sealed.is_empty() {
            None
        } else {
            match self.keys.open_secret(Purpose::AccessToken, name, &c.access_token_sealed) {
                Ok(access_token) => Some(Arc::new(HotToken {
                    access_token,
                    token_type: c.token_type.clone(),
                    expires_at_ms: c.expires_at_ms,
                    scopes: c.scopes.clone().into(),
                    token_version: c.token_version,
                })),
                Err(e) => {
                    tracing::error!(profile = name, error = %e, "stored access token does not open");
                    None
                }
            }
        };
        let backoff_until_ms = if status_of(c) == pb::Status::RefreshFailing { c.next_refresh_at_ms } else { 0 };
        SlotState { token, status: status_of(c), backoff_until_ms }
    }

    /// Waits for a turn at the provider serving `endpoint`.
    async fn provider_turn(&self, endpoint: &url::Url) {
        let host = endpoint.host_str().unwrap_or_default().to_owned();
        let limiter = match self.provider_limits.get(&host) {
            Some(limiter) => Arc::clone(&limiter),
            None => Arc::clone(&self.provider_limits.entry(host).or_insert_with(|| {
                Arc::new(ratelimit::RateLimiter::new(self.settings.provider_rate, self.settings.provider_burst))
            })),
        };
        limiter.acquire().await;
    }

    /// How many profiles are in each status (from the cache).
    pub fn status_counts(&self) -> std::collections::HashMap<pb::Status, usize> {
        self.cache.status_counts()
    }

    /// The engine's counters.
    pub fn metrics(&self) -> &crate::metrics::EngineMetrics {
        &self.metrics
    }

    /// (profile, expiry) of held tokens, the first `limit` by name.
    pub fn token_expiries(&self, limit: usize) -> Vec<(String, i64)> {
        self.cache.token_expiries(limit)
    }

    /// Subscribes to profile changes.
    pub fn subscribe(&self) -> broadcast::Receiver<ProfileChange> {
        self.events.subscribe()
    }

    /// The cached state of a profile (None: no such profile).
    pub fn cached(&self, name: &str) -> Option<Arc<SlotState>> {
        self.slot(name).map(|slot| slot.state.load_full())
    }

    /// Stops every background poller (device grants) and the cache warm-up; for shutdown.
    pub fn stop_background(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        for poll in self.device_polls.iter() {
            poll.value().cancel();
        }
        self.device_polls.clear();
    }

    /// Wakes the refresh scheduler to look at the index now (tests that move the clock use it).
    pub fn wake_scheduler(&self) {
        self.wake.notify_one();
    }

    /// The clock the core reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The settings.
    pub fn settings(&self) -> &CoreSettings {
        &self.settings
    }

    fn publish(&self, name: &str, kind: pb::profile_event::Kind, previous: pb::Status, status: pb::Status) {
        let kind = if kind == pb::profile_event::Kind::Updated && previous != status {
            pb::profile_event::Kind::StatusChanged
        } else {
            kind
        };
        if previous != status {
            tracing::info!(profile = name, from = previous.as_str_name(), to = status.as_str_name(), "status changed");
            let transition = crate::metrics::TransitionLabel {
                from: crate::metrics::status_label(previous),
                to: crate::metrics::status_label(status),
            };
            self.metrics.status_changes.get_or_create(&transition).inc();
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(ProfileChange { name: name.to_owned(), kind, previous_status: previous, status });
    }

    fn load(&self, name: &str) -> Result<(ProfileRecord, ConnectionRecord), CoreError> {
        let profile = self.store.profile(name)?.ok_or_else(|| CoreError::NotFound(name.to_owned()))?;
        let connection = self.store.connection(name)?.unwrap_or_default();
        Ok((profile, connection))
    }

    /// Shows a stored connection to the cache, the scheduler and watchers.
    fn after_write(
        &self,
        name: &str,
        before: &ConnectionRecord,
        stored: &ConnectionRecord,
        kind: pb::profile_event::Kind,
    ) {
        self.cache.set(name, self.slot_state(name, stored));
        if stored.next_refresh_at_ms > 0
            && (before.next_refresh_at_ms == 0 || stored.next_refresh_at_ms < before.next_refresh_at_ms)
        {
            self.wake.notify_one();
        }
        self.publish(name, kind, status_of(before), status_of(stored));
    }

    /// Writes a connection (version-guarded), then shows it (see [`Core::after_write`]).
    fn write(
        &self,
        before: &ConnectionRecord,
        write: crate::store::ConnectionWrite,
        kind: pb::profile_event::Kind,
    ) -> Result<ConnectionRecord, CoreError> {
        let name = write.name.clone();
        let stored = self.store.write_connection(write)?;
        self.after_write(&name, before, &stored, kind);
        Ok(stored)
    }

    /// Makes every write so far durable, off the async runtime; concurrent writers share one
    /// flush (group commit).
    async fn flush(&self) -> Result<(), CoreError> {
        self.flushes.flush().await.map_err(CoreError::Storage)
    }
}

/// The status of a stored connection (unset reads as not connected).
pub fn status_of(c: &ConnectionRecord) -> pb::Status {
    match pb::Status::try_from(c.status) {
        Ok(pb::Status::Unspecified) | Err(_) => pb::Status::NotConnected,
        Ok(s) => s,
    }
}
