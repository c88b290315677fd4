//! Starting and stopping the daemon: the one entry point the `tokend` binary and the integration
//! tests both call. Listeners are bound before anything is announced, so tests can ask for port 0.

pub mod backup;
mod bootstrap;
mod listeners;
pub mod signals;
mod systemd;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::clock::{Clock, Jitter, RandomJitter, SystemClock};
use crate::config::{CallerConfig, Config};
use crate::core::{Core, CoreSettings, RefreshPolicy, Scheduler};
use crate::grpc::auth::Callers;
use crate::metrics::Metrics;
use crate::provider::{HttpOptions, Provider, ProviderHttp};

pub use bootstrap::ensure_data_dir;

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
}

impl StartError {
    /// The process exit code (sysexits.h).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => 78,              // EX_CONFIG
            Self::Data(_) | Self::Key(_) => 65, // EX_DATAERR
            Self::Locked(_) => 75,              // EX_TEMPFAIL
            Self::Listen(_) => 69,              // EX_UNAVAILABLE
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
    /// The core, for tests that look inside.
    pub core: Arc<Core>,
    callers: Callers,
    tls: Option<crate::grpc::tls::SharedTlsConfig>,
    env_key: Option<Zeroizing<String>>,
    shutdown: CancellationToken,
    ready: Arc<AtomicBool>,
    health: tonic_health::server::HealthReporter,
    scheduler: Scheduler,
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
        ensure_data_dir(&config.data_dir)?;
        let store = Arc::new(bootstrap::open_store(&config)?);
        upgrade::upgrade(
            store.as_ref(),
            crate::store::SCHEMA_VERSION,
            upgrade::MIGRATIONS,
            &config.data_dir,
            options.clock.now_ms(),
        )?;
        let env_key = options.env_key.clone();
        let keys = bootstrap::open_keys(&config, store.as_ref(), options.env_key)?;
        let callers = Callers::new(&caller_configs(&config)?);
        let tls = match config.grpc.tls.enabled() {
            true => Some(Arc::new(ArcSwap::from_pointee(
                crate::grpc::tls::load(&config.grpc.tls).map_err(StartError::Config)?,
            ))),
            false => None,
        };
        if !config.grpc.listen.ip().is_loopback() && tls.is_none() {
            tracing::warn!(listen = %config.grpc.listen, "serving plain gRPC (no TLS) off loopback: bearer tokens travel in clear text");
        }
        let grpc_listener = TcpListener::bind(config.grpc.listen)
            .await
            .map_err(|e| StartError::Listen(format!("gRPC on {}: {e}", config.grpc.listen)))?;
        let http_listener = TcpListener::bind(config.http.listen)
            .await
            .map_err(|e| StartError::Listen(format!("HTTP on {}: {e}", config.http.listen)))?;
        let grpc_addr = grpc_listener.local_addr().map_err(|e| StartError::Listen(e.to_string()))?;
        let http_addr = http_listener.local_addr().map_err(|e| StartError::Listen(e.to_string()))?;

        let http = ProviderHttp::new(&HttpOptions {
            connect_timeout: Duration::from_secs(config.provider.connect_timeout_secs),
            request_timeout: Duration::from_secs(config.provider.request_timeout_secs),
            max_response_bytes: config.provider.max_response_bytes,
            ca_bundle: Some(config.provider.ca_bundle_file.clone()).filter(|p| !p.as_os_str().is_empty()),
            deny: crate::provider::DenyList::parse(&config.provider.deny_networks)
                .map_err(|e| StartError::Config(format!("provider.deny_networks: {e}")))?,
        })
        .map_err(|e| StartError::Config(format!("provider HTTP client: {e}")))?;
        let core = Core::new(
            store,
            Arc::new(keys),
            Provider::new(http),
            options.clock,
            options.jitter,
            core_settings(&config, http_addr),
        );
        // Serve first: the cache fills in the background, and a profile not loaded yet is loaded
        // on first use.
        core.spawn_warm_up();
        if let Err(e) = core.expire_consents() {
            tracing::warn!(error = %e, "dropping expired consents failed");
        }
        crate::declared::reconcile(&core, &config)
            .await
            .map_err(|e| StartError::Config(format!("declared profiles: {e}")))?;

        let shutdown = CancellationToken::new();
        let scheduler = Scheduler::start(Arc::clone(&core), &config.refresh.sweep_cron, shutdown.clone())
            .await
            .map_err(|e| StartError::Config(format!("refresh.sweep_cron: {e}")))?;
        let grpc_metrics = crate::metrics::GrpcMetrics::default();
        let (routes, health) =
            crate::grpc::routes(Arc::clone(&core), &callers, &config.grpc, &grpc_metrics, shutdown.clone())
                .await
                .map_err(|e| StartError::Config(format!("gRPC services: {e}")))?;
        crate::audit::spawn_handout_writer(
            callers.clone(),
            Arc::clone(core.clock()),
            Duration::from_secs(config.audit.handout_interval_secs),
            shutdown.clone(),
        );
        let mut grpc_tasks = vec![listeners::serve_tcp(routes.clone(), grpc_listener, tls.clone(), shutdown.clone())];
        let unix_socket = (!config.grpc.unix_socket.as_os_str().is_empty()).then(|| config.grpc.unix_socket.clone());
        if let Some(path) = &unix_socket {
            let listener = listeners::bind_unix(path, config.grpc.unix_socket_mode)?;
            grpc_tasks.push(listeners::serve_unix(routes, listener, path.clone(), shutdown.clone()));
        }
        let ready = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Metrics::new(
            &core,
            &grpc_metrics,
            Arc::clone(&scheduler.last_sweep_ms),
            config.metrics.max_profile_series,
        ));
        let http_state = crate::http::HttpState { core: Arc::clone(&core), ready: Arc::clone(&ready), metrics };
        let http_shutdown = shutdown.clone();
        let http_task = tokio::spawn(async move {
            axum::serve(http_listener, crate::http::router(http_state))
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await
        });
        ready.store(true, Ordering::Relaxed);
        tracing::info!(grpc = %grpc_addr, http = %http_addr, "tokend serving");
        systemd::ready(&format!("serving; gRPC {grpc_addr}, HTTP {http_addr}"));
        systemd::spawn_watchdog(Arc::clone(&scheduler.last_sweep_ms), Arc::clone(core.clock()), shutdown.clone());
        Ok(Self {
            grpc_addr,
            http_addr,
            unix_socket,
            core,
            callers,
            tls,
            env_key,
            shutdown,
            ready,
            health,
            scheduler,
            grpc_tasks,
            http_task,
        })
    }

    /// A handle that applies reloaded configurations (SIGHUP) while the daemon runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            callers: self.callers.clone(),
            tls: self.tls.clone(),
            env_key: self.env_key.clone(),
            core: Arc::downgrade(&self.core),
        }
    }

    /// A token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the shutdown token fires, then stops: health goes not-serving, streams end,
    /// listeners close, the scheduler stops, the store is flushed, all within a grace period.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        tracing::info!("shutting down");
        systemd::stopping();
        self.ready.store(false, Ordering::Relaxed);
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        self.scheduler.shutdown().await;
        self.core.stop_background();
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
        let store = Arc::clone(self.core.store());
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => tracing::info!("store flushed"),
            Ok(Err(e)) => tracing::error!(error = %e, "final flush failed"),
            Err(e) => tracing::error!(error = %e, "final flush task failed"),
        }
        // Refreshes already sent finish in their own tasks and hold the core; wait for them (up
        // to the grace period) so their results are stored and the store's lock is released.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while Arc::strong_count(&self.core) > 1 && tokio::time::Instant::now() < deadline {
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

/// Applies reloaded configurations to a running daemon.
#[derive(Clone)]
pub struct ReloadHandle {
    callers: Callers,
    tls: Option<crate::grpc::tls::SharedTlsConfig>,
    /// The key given in `TOKEND_KEY` at start, if any: it stays the active key across reloads.
    env_key: Option<Zeroizing<String>>,
    /// Weak: a handle kept by a signal task must not keep the core (and the store's lock)
    /// alive past shutdown.
    core: std::sync::Weak<Core>,
}

impl ReloadHandle {
    /// Applies what a reloaded configuration may change without a restart: the callers, the
    /// TLS certificate and the key ring (a new active key; previous keys kept or, once nothing
    /// is sealed under them, dropped). Hand-out tallies gathered so far are written first.
    /// Anything else in the configuration takes a restart. Declared profiles are reconciled. On
    /// error nothing changes.
    pub async fn reload(&self, config: &Config) -> Result<(), StartError> {
        let core = self.core.upgrade().ok_or_else(|| StartError::Config("the daemon is shutting down".into()))?;
        let callers = caller_configs(config)?;
        let tls = match (&self.tls, config.grpc.tls.enabled()) {
            (Some(_), true) => Some(crate::grpc::tls::load(&config.grpc.tls).map_err(StartError::Config)?),
            (None, false) => None,
            _ => return Err(StartError::Config("turning TLS on or off takes a restart".into())),
        };
        let ring = bootstrap::reload_keys(config, self.env_key.as_ref())?;
        core.check_keys(&ring).await.map_err(|e| StartError::Key(e.to_string()))?;
        crate::declared::reconcile(&core, config)
            .await
            .map_err(|e| StartError::Config(format!("declared profiles: {e}")))?;
        crate::audit::write_handouts(&self.callers, core.clock().now_ms());
        core.install_keys(ring);
        self.callers.replace(&callers);
        if let (Some(shared), Some(tls)) = (&self.tls, tls) {
            shared.store(Arc::new(tls));
        }
        tracing::info!(callers = callers.len(), tls = self.tls.is_some(), "configuration reloaded");
        Ok(())
    }
}

/// The configured callers, or the generated admin when there are none.
fn caller_configs(config: &Config) -> Result<Vec<CallerConfig>, StartError> {
    if !config.callers.is_empty() {
        return Ok(config.callers.clone());
    }
    Ok(vec![CallerConfig {
        name: "generated-admin".into(),
        role: crate::config::Role::Admin,
        token_sha256: bootstrap::generated_admin(config)?,
        cert_dns_name: String::new(),
        unix_uid: None,
        profiles: vec![],
    }])
}

/// The core's settings; the default callback URL uses the bound HTTP address (port 0 in tests).
fn core_settings(config: &Config, http_addr: SocketAddr) -> CoreSettings {
    let r = &config.refresh;
    CoreSettings {
        callback_url: config.http.callback_url(http_addr),
        allow_insecure_http: config.provider.allow_insecure_http,
        consent_ttl: Duration::from_secs(config.consent.ttl_secs),
        refresh: RefreshPolicy {
            skew_ratio: r.skew_ratio,
            skew_floor: Duration::from_secs(r.skew_floor_secs),
            jitter_ratio: r.jitter_ratio,
            default_lifetime: Duration::from_secs(r.default_lifetime_secs),
            min_valid_for: Duration::from_secs(r.min_valid_for_secs),
            backoff_initial: Duration::from_secs(r.backoff_initial_secs),
            backoff_max: Duration::from_secs(r.backoff_max_secs),
            on_demand: false,
            max_idle: None,
            refresh_token_warning: Duration::from_secs(r.refresh_token_warning_secs),
        },
        max_concurrent_refreshes: r.max_concurrent,
        soft_timeout: Duration::from_secs(config.provider.soft_timeout_secs),
        provider_rate: r.provider_rate_per_sec,
        provider_burst: r.provider_burst,
    }
}
