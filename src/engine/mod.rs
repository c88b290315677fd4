//! The refresh engine: the token cache, the hand-out path and the refresh path, owned by one
//! [`Engine`]. Two data paths read top to bottom in this folder:
//!
//! - **Hand-out** ([`handout`]): request → cache slot → reply; on a stale token, join the one
//!   refresh in flight ([`refresh`]).
//! - **Refresh** ([`scheduler`] → [`refresh`] → [`write`]): due in the index → provider (rate
//!   limited, one flight per connection, in its own task) → version-guarded write, flushed when
//!   it rotated ([`group_flush`]) → published to the cache and to watchers.
//!
//! Administration ([`crate::admin`]) writes connections through the same [`Engine::write`] and
//! [`Engine::store_tokens`], so every write goes through one publish step. Nothing here knows
//! about gRPC or HTTP.

mod cache;
mod coherence;
mod error;
mod group_flush;
mod handout;
mod lease;
mod metrics;
mod policy;
mod ratelimit;
mod refresh;
mod scheduler;
mod watch;
mod write;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, broadcast};

pub use cache::{HotToken, SlotState, WireReply};
pub use error::EngineError;
pub use handout::Handout;
pub use metrics::{EngineMetrics, EngineSnapshot, OutcomeLabel, TransitionLabel, status_label};
pub use policy::RefreshPolicy;
pub use scheduler::{Chore, Scheduler, SchedulerError};
pub use watch::{MissedEvents, TokenUpdate, TokenWatch};
pub use write::TokenWriteExtras;

use crate::api::pb;
use crate::clock::{Clock, Jitter};
use crate::crypto::{KeyRing, Purpose};
use crate::provider::{Provider, ProviderSettings};
use crate::store::{ConnectionRecord, ProfileRecord, Store};
use cache::TokenCache;
use secrecy::SecretString;

/// Profile changes a watcher may fall behind by before it misses some ([`MissedEvents`]).
const EVENT_CAPACITY: usize = 1024;

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

/// Settings of the engine that come from the configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Redirect URI for profiles that name none.
    pub callback_url: String,
    /// Allow plain-http provider endpoints off loopback.
    pub allow_insecure_http: bool,
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
    /// How long a refresh lease lasts (processes sharing one store): longer than the longest a
    /// refresh can take (the provider's hard timeout, twice with the one retry), so a live holder
    /// never loses it, and a dead holder's lease lapses after this.
    pub lease: Duration,
}

/// The engine's state. Cheap to share (`Arc<Engine>`).
pub struct Engine {
    store: Arc<dyn Store>,
    keys: Arc<KeyRing>,
    provider: Provider,
    clock: Arc<dyn Clock>,
    jitter: Arc<dyn Jitter>,
    settings: EngineSettings,
    /// What the hand-out path reads: one slot per profile.
    cache: TokenCache,
    /// Every profile change, for `WatchProfiles` (a receiver that falls behind is told).
    events: broadcast::Sender<ProfileChange>,
    /// Token watchers by profile: woken by any change to that profile only.
    token_watchers: dashmap::DashMap<String, tokio::sync::watch::Sender<()>>,
    /// Wakes the scheduler when a write makes a refresh due earlier than it planned for.
    wake: Notify,
    /// Bounds refreshes running at once (scheduled and on-demand alike).
    refresh_permits: Arc<Semaphore>,
    /// Counters for `/metrics`.
    metrics: EngineMetrics,
    /// Rate limits by token endpoint host.
    provider_limits: dashmap::DashMap<String, Arc<ratelimit::RateLimiter>>,
    /// Flushes shared by concurrent writers (group commit).
    flushes: Arc<group_flush::GroupFlush>,
    /// The background warm-up of the cache has not finished: a missing slot may just not be
    /// loaded yet.
    warming: AtomicBool,
    /// Shutdown began: background work stops early and no new refresh starts.
    stopping: AtomicBool,
    /// Refresh tasks running (each may hold a rotated token not yet stored); shutdown waits
    /// for them before the final flush.
    inflight: AtomicUsize,
    /// Notified when the last refresh task in flight ends.
    idle: Notify,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("profiles", &self.cache.len()).finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over an opened store and key ring. Call [`Engine::spawn_warm_up`] when serving
    /// starts.
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<KeyRing>,
        provider: Provider,
        clock: Arc<dyn Clock>,
        jitter: Arc<dyn Jitter>,
        settings: EngineSettings,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let permits = settings.max_concurrent_refreshes.max(1);
        let metrics = EngineMetrics::default();
        let refresh_permits = Arc::new(Semaphore::new(permits));
        Arc::new(Self {
            flushes: group_flush::GroupFlush::new(
                Arc::clone(&store),
                group_flush::RunningRefreshes { permits: Arc::clone(&refresh_permits), total: permits },
                metrics.clone(),
            ),
            warming: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            store,
            keys,
            provider,
            clock,
            jitter,
            settings,
            cache: TokenCache::default(),
            events,
            token_watchers: dashmap::DashMap::new(),
            wake: Notify::new(),
            refresh_permits,
            metrics,
            provider_limits: dashmap::DashMap::new(),
        })
    }

    /// Loads every stored connection into the cache in the background (decrypting each access
    /// token once, there, so the hot path never does) and returns at once: the daemon serves
    /// meanwhile, and a profile the warm-up has not reached yet is loaded on its first use
    /// ([`Engine::slot`]). Start-up time does not grow with the number of profiles.
    pub fn spawn_warm_up(self: &Arc<Self>) -> tokio::task::JoinHandle<usize> {
        let engine = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut loaded = 0usize;
            let result = engine.store.for_each_connection_name(&mut |name| {
                if engine.cache.get_or_load(name, || engine.load_slot(name)).is_some() {
                    loaded += 1;
                }
                !engine.stopping.load(Ordering::Relaxed)
            });
            engine.warming.store(false, Ordering::Release);
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

    /// The slot state a stored connection stands for (its access token opened from the record).
    fn slot_state(&self, name: &str, c: &ConnectionRecord) -> SlotState {
        let token = if c.access_token_sealed.is_empty() {
            None
        } else {
            match self.keys.open_secret(Purpose::AccessToken, name, &c.access_token_sealed) {
                Ok(access_token) => Some(access_token),
                Err(e) => {
                    tracing::error!(profile = name, error = %e, "stored access token does not open");
                    None
                }
            }
        };
        Self::slot_state_holding(c, token)
    }

    /// The slot state of a stored connection whose access token is `token` (already open: a
    /// write that has just sealed it need not open it again).
    fn slot_state_holding(c: &ConnectionRecord, token: Option<SecretString>) -> SlotState {
        let token = token.map(|access_token| {
            Arc::new(HotToken {
                access_token,
                token_type: c.token_type.clone(),
                expires_at_ms: c.expires_at_ms,
                issued_at_ms: c.last_refreshed_at_ms,
                scopes: c.scopes.clone().into(),
                token_version: c.token_version,
                wire: OnceLock::new(),
            })
        });
        let status = status_of(c);
        let backoff_until_ms = if status == pb::Status::RefreshFailing { c.next_refresh_at_ms } else { 0 };
        SlotState { token, status, backoff_until_ms, renewable: !c.not_renewable, version: c.version }
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

    /// The engine's counters, registered once by `/metrics`.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// What `/metrics` reads at scrape time: status counts, the first `expiry_limit` token
    /// expiries by name, the store's size. The scrape never holds the engine.
    pub fn snapshot(&self, expiry_limit: usize) -> EngineSnapshot {
        EngineSnapshot {
            status_counts: self.cache.status_counts(),
            token_expiries: self.cache.token_expiries(expiry_limit),
            now_ms: self.clock.now_ms(),
            store_bytes: self.store.size_on_disk().ok(),
        }
    }

    /// Subscribes to profile changes.
    pub fn subscribe(&self) -> broadcast::Receiver<ProfileChange> {
        self.events.subscribe()
    }

    /// The cached state of a profile (None: no such profile).
    pub fn cached(&self, name: &str) -> Option<Arc<SlotState>> {
        self.slot(name).map(|slot| slot.state.load_full())
    }

    /// Stops background work (the cache warm-up) and starting refreshes; for shutdown. Callers
    /// then get the held token (or `UNAVAILABLE` once it expired); refreshes already sent run on
    /// ([`Engine::drain_refreshes`]).
    pub fn stop_background(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Waits until no refresh task runs, at most `deadline`; returns whether none does. A refresh
    /// already sent may come back with a rotated refresh token, which must be stored before the
    /// store closes.
    pub async fn drain_refreshes(&self, deadline: Duration) -> bool {
        let idle = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.inflight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(deadline, idle).await.is_ok()
    }

    /// Wakes the refresh scheduler to look at the index now (tests that move the clock use it).
    pub fn wake_scheduler(&self) {
        self.wake.notify_one();
    }

    /// The clock the engine reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The key ring sealing every secret at rest.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The OAuth protocol client.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// The settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The resolved provider settings of a profile (preset, discovery and overrides applied,
    /// client secret opened). A secret that does not open is [`EngineError::Sealed`]; anything
    /// else unusable is a precondition an admin must fix.
    pub fn provider_settings(&self, profile: &ProfileRecord) -> Result<ProviderSettings, EngineError> {
        crate::profile::resolve(profile, &self.keys, &self.settings.callback_url, self.settings.allow_insecure_http)
            .map_err(|e| {
                if e.field == "client_secret" {
                    EngineError::Sealed(profile.name.clone())
                } else {
                    EngineError::FailedPrecondition(format!("profile {:?} cannot be used: {e}", profile.name))
                }
            })
    }

    /// A profile and its connection, read from the store now.
    pub fn load(&self, name: &str) -> Result<(ProfileRecord, ConnectionRecord), EngineError> {
        let profile = self.store.profile(name)?.ok_or_else(|| EngineError::NotFound(name.to_owned()))?;
        let connection = self.store.connection(name)?.unwrap_or_default();
        Ok((profile, connection))
    }

    /// Announces a profile change to watchers (and logs and counts a status change).
    pub fn publish(&self, name: &str, kind: pb::profile_event::Kind, previous: pb::Status, status: pb::Status) {
        let kind = if kind == pb::profile_event::Kind::Updated && previous != status {
            pb::profile_event::Kind::StatusChanged
        } else {
            kind
        };
        if previous != status {
            tracing::info!(profile = name, from = previous.as_str_name(), to = status.as_str_name(), "status changed");
            self.metrics.count_transition(previous, status);
        }
        self.wake_token_watchers(name);
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(ProfileChange { name: name.to_owned(), kind, previous_status: previous, status });
    }

    /// Shows a newly created profile (not connected) to the cache and watchers.
    pub fn created(&self, name: &str) {
        self.cache.set(name, SlotState::default());
        self.publish(name, pb::profile_event::Kind::Updated, pb::Status::NotConnected, pb::Status::NotConnected);
    }

    /// Forgets a deleted profile and tells watchers.
    pub fn deleted(&self, name: &str, previous: pb::Status) {
        self.cache.remove(name);
        self.publish(name, pb::profile_event::Kind::Deleted, previous, pb::Status::NotConnected);
    }
}

/// The status of a stored connection (unset reads as not connected).
pub fn status_of(c: &ConnectionRecord) -> pb::Status {
    c.status()
}

#[cfg(test)]
mod tests;
