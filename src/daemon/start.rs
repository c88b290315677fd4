//! The steps of [`super::Daemon::start`], in the order it runs them: open the storage, load
//! TLS, bind the listeners, start the engine and administration, serve gRPC and HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{StartError, StartOptions, bootstrap, ensure_data_dir, listeners, upgrade};
use crate::access::Callers;
use crate::admin::Admin;
use crate::clock::{Clock, Jitter};
use crate::config::{CallerConfig, Config};
use crate::crypto::KeyRing;
use crate::engine::{Engine, EngineSettings, RefreshPolicy, Scheduler};
use crate::metrics::Metrics;
use crate::provider::{HttpOptions, Provider, ProviderHttp};
use crate::store::Store;

/// The two TCP listeners, bound before anything else starts (tests ask for port 0 and read the
/// addresses back).
pub(super) struct Bound {
    pub(super) grpc: TcpListener,
    pub(super) http: TcpListener,
    pub(super) grpc_addr: SocketAddr,
    pub(super) http_addr: SocketAddr,
}

/// The gRPC and HTTP serving tasks, and what stops them gracefully.
pub(super) struct Serving {
    pub(super) grpc_addr: SocketAddr,
    pub(super) http_addr: SocketAddr,
    pub(super) health: tonic_health::server::HealthReporter,
    pub(super) ready: Arc<AtomicBool>,
    pub(super) grpc_tasks: Vec<listeners::ServeTask>,
    pub(super) http_task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub(super) unix_socket: Option<std::path::PathBuf>,
}

/// The reloadable TLS configurations of the two listeners (`None`: plain).
pub(super) struct ListenerTls {
    pub(super) grpc: Option<crate::grpc::tls::SharedTlsConfig>,
    pub(super) http: Option<crate::grpc::tls::SharedTlsConfig>,
}

/// Opens the data directory and the store (upgrading it if an older tokend wrote it), then the
/// key ring, checked against the store's canary.
pub(super) fn open_storage(config: &Config, options: &StartOptions) -> Result<(Arc<dyn Store>, KeyRing), StartError> {
    ensure_data_dir(&config.data_dir)?;
    bootstrap::check_permissions(config, options.env_key.is_some())?;
    let store: Arc<dyn Store> = bootstrap::open_store(config)?.into();
    upgrade::upgrade(
        store.as_ref(),
        crate::store::SCHEMA_VERSION,
        upgrade::MIGRATIONS,
        &config.data_dir,
        options.clock.now_ms(),
    )?;
    let keys = bootstrap::open_keys(config, store.as_ref(), options.env_key.clone())?;
    Ok((store, keys))
}

/// The gRPC TLS configuration, reloadable, when TLS is on; warns about plain gRPC off loopback.
pub(super) fn grpc_tls(config: &Config) -> Result<Option<crate::grpc::tls::SharedTlsConfig>, StartError> {
    if !config.grpc.tls.enabled() {
        if !config.grpc.listen.ip().is_loopback() {
            tracing::warn!(listen = %config.grpc.listen, "serving plain gRPC (no TLS) off loopback: bearer tokens travel in clear text");
        }
        return Ok(None);
    }
    let tls = crate::grpc::tls::load(&config.grpc.tls).map_err(StartError::Config)?;
    Ok(Some(Arc::new(ArcSwap::from_pointee(tls))))
}

/// Binds the gRPC and HTTP listeners.
pub(super) async fn bind(config: &Config) -> Result<Bound, StartError> {
    let grpc = TcpListener::bind(config.grpc.listen)
        .await
        .map_err(|e| StartError::Listen(format!("gRPC on {}: {e}", config.grpc.listen)))?;
    let http = TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| StartError::Listen(format!("HTTP on {}: {e}", config.http.listen)))?;
    let grpc_addr = grpc.local_addr().map_err(|e| StartError::Listen(e.to_string()))?;
    let http_addr = http.local_addr().map_err(|e| StartError::Listen(e.to_string()))?;
    Ok(Bound { grpc, http, grpc_addr, http_addr })
}

/// The provider client, the engine and administration over it; the cache starts warming, stale
/// consents are dropped and declared profiles reconciled.
pub(super) async fn start_engine(
    config: &Config,
    store: Arc<dyn Store>,
    keys: KeyRing,
    clock: Arc<dyn Clock>,
    jitter: Arc<dyn Jitter>,
    http_addr: SocketAddr,
) -> Result<Arc<Admin>, StartError> {
    let http = ProviderHttp::new(&HttpOptions {
        connect_timeout: Duration::from_secs(config.provider.connect_timeout_secs),
        request_timeout: Duration::from_secs(config.provider.request_timeout_secs),
        max_response_bytes: config.provider.max_response_bytes,
        ca_bundle: Some(config.provider.ca_bundle_file.clone()).filter(|p| !p.as_os_str().is_empty()),
        deny: crate::provider::DenyList::parse(&config.provider.deny_networks)
            .map_err(|e| StartError::Config(format!("provider.deny_networks: {e}")))?,
    })
    .map_err(|e| StartError::Config(format!("provider HTTP client: {e}")))?;
    let settings = engine_settings(config, http_addr);
    let engine = Engine::new(store, Arc::new(keys), Provider::new(http), clock, jitter, settings);
    let admin = Admin::new(Arc::clone(&engine), Duration::from_secs(config.consent.ttl_secs));
    // Serve first: the cache fills in the background, and a profile not loaded yet is loaded
    // on first use.
    // The change feed (shared stores only) first: nothing written while the cache warms is missed.
    engine.spawn_change_feed();
    engine.spawn_warm_up();
    if let Err(e) = admin.expire_consents() {
        tracing::warn!(error = %e, "dropping expired consents failed");
    }
    crate::declared::reconcile(&admin, config)
        .await
        .map_err(|e| StartError::Config(format!("declared profiles: {e}")))?;
    Ok(admin)
}

/// Starts serving gRPC (TCP, and the Unix socket if configured) with the hand-out audit writer,
/// and HTTP (callback, health, metrics).
pub(super) async fn serve(
    config: &Config,
    admin: &Arc<Admin>,
    callers: &Callers,
    tls: ListenerTls,
    bound: Bound,
    scheduler: &Scheduler,
    shutdown: &CancellationToken,
) -> Result<Serving, StartError> {
    let engine = admin.engine();
    let grpc_metrics = crate::metrics::GrpcMetrics::default();
    // One failed-authentication limit for both listeners: a wrong token counts on either.
    let limiter = Arc::new(crate::access::PeerLimiter::new(&config.grpc.auth_limit));
    let (routes, health) = crate::grpc::routes(
        Arc::clone(admin),
        callers,
        Arc::clone(&limiter),
        &config.grpc,
        &grpc_metrics,
        shutdown.clone(),
    )
    .await
    .map_err(|e| StartError::Config(format!("gRPC services: {e}")))?;
    let every = Duration::from_secs(config.audit.handout_interval_secs);
    let tallied = callers.clone();
    crate::access::audit::spawn_handout_writer(move || tallied.write_handouts(), every, shutdown.clone());
    let mut grpc_tasks = vec![listeners::serve_tcp(routes.clone(), bound.grpc, tls.grpc, shutdown.clone())];
    let unix_socket = (!config.grpc.unix_socket.as_os_str().is_empty()).then(|| config.grpc.unix_socket.clone());
    if let Some(path) = &unix_socket {
        let listener = listeners::bind_unix(path, config.grpc.unix_socket_mode)?;
        grpc_tasks.push(listeners::serve_unix(routes, listener, path.clone(), shutdown.clone()));
    }
    let ready = Arc::new(AtomicBool::new(false));
    let last_sweep = Arc::clone(&scheduler.last_sweep_ms);
    // Per-profile series name profiles to whoever can scrape: none when profile_labels is off.
    let profile_series = if config.metrics.profile_labels { config.metrics.max_profile_series } else { 0 };
    let metrics = Arc::new(Metrics::new(engine.metrics(), &grpc_metrics, last_sweep, profile_series));
    let web = landing_page(config, admin, callers, limiter, shutdown);
    let http_state = crate::http::HttpState { admin: Arc::clone(admin), ready: Arc::clone(&ready), metrics, web };
    let router = crate::http::router(http_state);
    let http_task = listeners::serve_http(router, bound.http, &config.http, tls.http, shutdown.clone());
    Ok(Serving {
        grpc_addr: bound.grpc_addr,
        http_addr: bound.http_addr,
        health,
        ready,
        grpc_tasks,
        http_task,
        unix_socket,
    })
}

/// The landing page, unless the listener is plain HTTP off loopback without the opt-in (then
/// the listener serves the callback, health and metrics only); the opt-in is logged.
fn landing_page(
    config: &Config,
    admin: &Arc<Admin>,
    callers: &Callers,
    limiter: Arc<crate::access::PeerLimiter>,
    shutdown: &CancellationToken,
) -> Option<crate::web::Web> {
    let http = &config.http;
    if !http.serves_page() {
        tracing::warn!(listen = %http.listen, "landing page off: plain HTTP on a non-loopback address (configure http.tls, or set http.allow_insecure_non_loopback)");
        return None;
    }
    if !http.listen.ip().is_loopback() && !http.tls.enabled() {
        tracing::warn!(listen = %http.listen, "serving the landing page over plain HTTP off loopback: bearer tokens and session cookies travel in clear text");
    }
    let options = crate::web::WebOptions {
        session: http.session.clone(),
        tls: http.tls.enabled(),
        consent_ttl_secs: config.consent.ttl_secs,
    };
    Some(crate::web::Web::new(Arc::clone(admin), callers.clone(), limiter, &options, shutdown.clone()))
}

/// The HTTP listener's TLS configuration, reloadable, when `http.tls` is on.
pub(super) fn http_tls(config: &Config) -> Result<Option<crate::grpc::tls::SharedTlsConfig>, StartError> {
    if !config.http.tls.enabled() {
        return Ok(None);
    }
    let tls = crate::grpc::tls::load_http(&config.http.tls).map_err(StartError::Config)?;
    Ok(Some(Arc::new(ArcSwap::from_pointee(tls))))
}

/// The configured callers, or the generated admin when there are none.
pub(super) fn caller_configs(config: &Config) -> Result<Vec<CallerConfig>, StartError> {
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

/// The engine's settings; the default callback URL uses the bound HTTP address (port 0 in tests).
pub(super) fn engine_settings(config: &Config, http_addr: SocketAddr) -> EngineSettings {
    let r = &config.refresh;
    EngineSettings {
        callback_url: config.http.callback_url(http_addr),
        allow_insecure_http: config.provider.allow_insecure_http,
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
        lease: refresh_lease(config),
    }
}

/// The refresh lease: the longest a refresh can take (two provider requests: the one retry of a
/// refresh whose answer may have been lost) plus a margin for the write.
pub(super) fn refresh_lease(config: &Config) -> Duration {
    Duration::from_secs(config.provider.request_timeout_secs.saturating_mul(2).saturating_add(5))
}
