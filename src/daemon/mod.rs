//! Starting and stopping the daemon: the one entry point the `tokend` binary and the integration
//! tests both call. Listeners are bound before anything is announced, so tests can ask for port 0.

pub mod backup;
mod bootstrap;
mod listeners;
mod runtime;
pub mod signals;
mod start;
mod systemd;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::access::Callers;
use crate::admin::Admin;
use crate::clock::{Clock, Jitter, RandomJitter, SystemClock};
use crate::config::Config;
use crate::engine::{Engine, Scheduler};

pub use bootstrap::ensure_data_dir;
pub use runtime::{LIFO_SLOT_DISABLED, build_runtime};
use start::{ListenerTls, bind, caller_configs, grpc_tls, http_tls, open_storage, serve, start_engine};

/// Why the daemon could not start. Each kind has its own exit code, so systemd can tell a
/// retry (locked) from a fix (configuration, data, key).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The data directory or store is unusable.
    #[error("data: {0}")]
    Data(String),
    /// The key is missing or wrong.
    #[error("key: {0}")]
    Key(String),
    /// Another process holds the data directory.
    #[error("{0}")]
    Locked(String),
    /// A listener could not be bound.
    #[error("listen: {0}")]
    Listen(String),
    /// The database (`store.backend = "postgres"`) cannot be reached now; retry.
    #[error("database: {0}")]
    Database(String),
}

impl StartError {
    /// The process exit code (sysexits.h).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => 78,                     // EX_CONFIG
            Self::Data(_) | Self::Key(_) => 65,        // EX_DATAERR
            Self::Locked(_) | Self::Database(_) => 75, // EX_TEMPFAIL
            Self::Listen(_) => 69,                     // EX_UNAVAILABLE
        }
    }
}

/// What tests may swap: the clock, the jitter source, the key from the environment.
pub struct StartOptions {
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
    /// The jitter source.
    pub jitter: Arc<dyn Jitter>,
    /// The key itself (what `TOKEND_KEY` holds), overriding the key file.
    pub env_key: Option<Zeroizing<String>>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self { clock: Arc::new(SystemClock), jitter: Arc::new(RandomJitter), env_key: None }
    }
}

/// A running daemon.
pub struct Daemon {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// The Unix socket gRPC also listens on, if any.
    pub unix_socket: Option<std::path::PathBuf>,
    /// Administration, and through it the engine.
    admin: Arc<Admin>,
    callers: Callers,
    tls: Option<crate::grpc::tls::SharedTlsConfig>,
    /// The HTTP listener's TLS configuration (`http.tls`), reloaded like gRPC's.
    http_tls: Option<crate::grpc::tls::SharedTlsConfig>,
    env_key: Option<Zeroizing<String>>,
    shutdown: CancellationToken,
    ready: Arc<AtomicBool>,
    health: tonic_health::server::HealthReporter,
    scheduler: Scheduler,
    /// How long shutdown waits for refreshes already sent.
    refresh_drain: Duration,
    grpc_tasks: Vec<listeners::ServeTask>,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// How long shutdown waits for connections and refreshes to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Daemon {
    /// Opens the data directory, binds both listeners and starts serving.
    pub async fn start(config: Config, options: StartOptions) -> Result<Self, StartError> {
        let env_key = options.env_key.clone();
        let (store, keys) = open_storage(&config, &options)?;
        let callers = Callers::new(&caller_configs(&config)?);
        let tls = grpc_tls(&config)?;
        let web_tls = http_tls(&config)?;
        let bound = bind(&config).await?;
        let admin = start_engine(&config, store, keys, options.clock, options.jitter, bound.http_addr).await?;
        let engine = Arc::clone(admin.engine());
        let shutdown = CancellationToken::new();
        let chore_admin = Arc::downgrade(&admin);
        let expire_consents: crate::engine::Chore = Arc::new(move || {
            if let Some(admin) = chore_admin.upgrade()
                && let Err(e) = admin.expire_consents()
            {
                tracing::warn!(error = %e, "dropping expired consents failed");
            }
        });
        let scheduler =
            Scheduler::start(Arc::clone(&engine), &config.refresh.sweep_cron, vec![expire_consents], shutdown.clone())
                .await
                .map_err(|e| StartError::Config(format!("refresh.sweep_cron: {e}")))?;
        let serving = serve(
            &config,
            &admin,
            &callers,
            ListenerTls { grpc: tls.clone(), http: web_tls.clone() },
            bound,
            &scheduler,
            &shutdown,
        )
        .await?;
        serving.ready.store(true, Ordering::Relaxed);
        let (grpc_addr, http_addr) = (serving.grpc_addr, serving.http_addr);
        tracing::info!(grpc = %grpc_addr, http = %http_addr, "tokend serving");
        systemd::ready(&format!("serving; gRPC {grpc_addr}, HTTP {http_addr}"));
        systemd::spawn_watchdog(Arc::clone(&scheduler.last_sweep_ms), Arc::clone(engine.clock()), shutdown.clone());
        Ok(Self {
            grpc_addr,
            http_addr,
            unix_socket: serving.unix_socket,
            admin,
            callers,
            tls,
            http_tls: web_tls,
            env_key,
            shutdown,
            ready: serving.ready,
            health: serving.health,
            scheduler,
            refresh_drain: refresh_drain(&config),
            grpc_tasks: serving.grpc_tasks,
            http_task: serving.http_task,
        })
    }

    /// The refresh engine (tests look inside: the cache, the store, the scheduler).
    pub fn engine(&self) -> &Arc<Engine> {
        self.admin.engine()
    }

    /// A handle that applies reloaded configurations (SIGHUP) while the daemon runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            callers: self.callers.clone(),
            tls: self.tls.clone(),
            http_tls: self.http_tls.clone(),
            env_key: self.env_key.clone(),
            admin: Arc::downgrade(&self.admin),
        }
    }

    /// A token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the shutdown token fires, then stops, in this order: health goes
    /// not-serving; no new refresh starts (scheduler stopped, callers get the held token); the
    /// connections drain (within [`SHUTDOWN_GRACE`]) while the refreshes already sent finish
    /// (within the refresh drain: twice the provider's request timeout, for the lost-reply
    /// retry, plus a margin), so a rotated refresh token in their answers is stored; then the
    /// final flush; then the store closes.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        tracing::info!("shutting down");
        systemd::stopping();
        self.ready.store(false, Ordering::Relaxed);
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        self.admin.stop_background();
        self.admin.engine().stop_background();
        self.scheduler.shutdown().await;
        let engine = Arc::clone(self.admin.engine());
        let connections = async {
            let drain = async {
                for task in &mut self.grpc_tasks {
                    let _ = task.await;
                }
                let _ = (&mut self.http_task).await;
            };
            if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
                tracing::warn!("connections did not close within {SHUTDOWN_GRACE:?}; stopping anyway");
                for task in &self.grpc_tasks {
                    task.abort();
                }
                self.http_task.abort();
            }
        };
        let (_, drained) = tokio::join!(connections, engine.drain_refreshes(self.refresh_drain));
        if !drained {
            tracing::error!(
                limit = ?self.refresh_drain,
                "refreshes still in flight at shutdown; a refresh token they rotate may be lost"
            );
        }
        let store = Arc::clone(engine.store());
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => tracing::info!("store flushed"),
            Ok(Err(e)) => tracing::error!(error = %e, "final flush failed"),
            Err(e) => tracing::error!(error = %e, "final flush task failed"),
        }
        drop(engine);
        // The tasks that ended above (refreshes, device polls, streams) release their
        // references to the engine, and with it the store's lock, a moment later; wait for that
        // briefly so a restart in the same process finds the directory free.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let busy = |admin: &Arc<Admin>| Arc::strong_count(admin) > 1 || Arc::strong_count(admin.engine()) > 1;
        while busy(&self.admin) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!("stopped");
    }

    /// Stops the daemon and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// How long shutdown waits for refreshes already sent: a provider request may take the request
/// timeout, twice with the lost-reply retry; five seconds more cover the rate limiter's turn
/// and the write.
fn refresh_drain(config: &Config) -> Duration {
    Duration::from_secs(2 * config.provider.request_timeout_secs + 5)
}

/// Applies reloaded configurations to a running daemon.
#[derive(Clone)]
pub struct ReloadHandle {
    callers: Callers,
    tls: Option<crate::grpc::tls::SharedTlsConfig>,
    http_tls: Option<crate::grpc::tls::SharedTlsConfig>,
    /// The key given in `TOKEND_KEY` at start, if any: it stays the active key across reloads.
    env_key: Option<Zeroizing<String>>,
    /// Weak: a handle kept by a signal task must not keep administration (and the store's
    /// lock) alive past shutdown.
    admin: std::sync::Weak<Admin>,
}

impl ReloadHandle {
    /// Applies what a reloaded configuration may change without a restart: the callers, the
    /// TLS certificates (gRPC's and HTTP's) and the key ring (a new active key; previous keys kept or, once nothing
    /// is sealed under them, dropped). Hand-out tallies gathered so far are written first.
    /// Anything else in the configuration takes a restart. Declared profiles are reconciled. On
    /// error nothing changes.
    pub async fn reload(&self, config: &Config) -> Result<(), StartError> {
        let admin = self.admin.upgrade().ok_or_else(|| StartError::Config("the daemon is shutting down".into()))?;
        let callers = caller_configs(config)?;
        let tls = match (&self.tls, config.grpc.tls.enabled()) {
            (Some(_), true) => Some(crate::grpc::tls::load(&config.grpc.tls).map_err(StartError::Config)?),
            (None, false) => None,
            _ => return Err(StartError::Config("turning TLS on or off takes a restart".into())),
        };
        let http_tls = match (&self.http_tls, config.http.tls.enabled()) {
            (Some(_), true) => Some(crate::grpc::tls::load_http(&config.http.tls).map_err(StartError::Config)?),
            (None, false) => None,
            _ => return Err(StartError::Config("turning http.tls on or off takes a restart".into())),
        };
        let ring = bootstrap::reload_keys(config, self.env_key.as_ref())?;
        admin.check_keys(&ring).await.map_err(|e| StartError::Key(e.to_string()))?;
        crate::declared::reconcile(&admin, config)
            .await
            .map_err(|e| StartError::Config(format!("declared profiles: {e}")))?;
        self.callers.write_handouts();
        admin.install_keys(ring);
        self.callers.replace(&callers);
        if let (Some(shared), Some(tls)) = (&self.tls, tls) {
            shared.store(Arc::new(tls));
        }
        if let (Some(shared), Some(tls)) = (&self.http_tls, http_tls) {
            shared.store(Arc::new(tls));
        }
        tracing::info!(callers = callers.len(), tls = self.tls.is_some(), "configuration reloaded");
        Ok(())
    }
}
