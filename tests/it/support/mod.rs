//! Shared helpers of the integration tests: a daemon started in-process on port 0 with a
//! temporary data directory, gRPC clients carrying a bearer token, a fake provider, a log
//! capture for "no secret in any log line" checks, free ports for child daemons, and a
//! throwaway CA for TLS tests.

pub mod certs;
pub mod fake_provider;
pub mod logs;
pub mod ports;
pub mod tls_front;

use std::sync::Arc;

use tokend::api::pb;
use tokend::api::pb::connected_apps_client::ConnectedAppsClient;
use tokend::api::pb::maintenance_client::MaintenanceClient;
use tokend::api::pb::tokens_client::TokensClient;
use tokend::client::{Authed, Bearer};
use tokend::clock::{Clock, FixedJitter, ManualClock, SystemClock};
use tokend::config::{CallerConfig, Config};
use tokend::daemon::{Daemon, StartOptions};
use tonic::transport::Channel;

pub use certs::Ca;
pub use fake_provider::{FakeProvider, Fault};
pub use logs::{assert_no_secret_in_logs, logs};
pub use ports::free_port;

/// Bearer tokens of the callers every test daemon knows.
pub const ADMIN: &str = "admin-token-for-tests";
pub const VIEWER: &str = "viewer-token-for-tests";
pub const CONSUMER: &str = "consumer-token-for-tests";

/// A daemon under test.
pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub dir: tempfile::TempDir,
    pub clock: Option<ManualClock>,
    pub config: Config,
    /// The runtime of the test that started it: whose log lines its drop scans.
    runtime: Option<tokio::runtime::Id>,
}

/// A temporary directory only its owner can enter (0700), as tokend wants its data directory
/// (tempfile's default follows the umask, usually 0755, which tokend refuses).
pub fn private_tempdir() -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt as _;
    tempfile::Builder::new().permissions(std::fs::Permissions::from_mode(0o700)).tempdir()
}

/// The test configuration: temp data dir, port 0, three callers.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config { data_dir: dir.to_path_buf(), ..Config::default() };
    config.grpc.listen = "127.0.0.1:0".parse().unwrap_or(config.grpc.listen);
    config.http.listen = "127.0.0.1:0".parse().unwrap_or(config.http.listen);
    let caller = |name: &str, role: &str, token: &str, profiles: &[&str]| CallerConfig {
        name: name.into(),
        role: role.parse().unwrap(),
        token_sha256: tokend::grpc::auth::hash_token(token),
        cert_dns_name: String::new(),
        unix_uid: None,
        profiles: profiles.iter().map(|s| (*s).to_owned()).collect(),
    };
    config.callers = vec![
        caller("ops", "admin", ADMIN, &[]),
        caller("dashboard", "viewer", VIEWER, &[]),
        caller("mail-worker", "consumer", CONSUMER, &["mail-*"]),
    ];
    config
}

impl TestDaemon {
    /// Starts a daemon on the real clock.
    pub async fn start() -> TestDaemon {
        Self::start_with(|_| {}, None).await
    }

    /// Starts a daemon with a config tweak and, optionally, a manual clock.
    pub async fn start_with(tweak: impl FnOnce(&mut Config), clock: Option<ManualClock>) -> TestDaemon {
        let dir = crate::support::private_tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let daemon = start_daemon(&config, clock.clone()).await.expect("daemon starts");
        TestDaemon { daemon: Some(daemon), dir, clock, config, runtime: logs::current_runtime() }
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    /// Stops the daemon and starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop().await;
        }
        self.daemon = Some(start_daemon(&self.config, self.clock.clone()).await.expect("daemon restarts"));
    }

    pub async fn stop(mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop().await;
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            logs::assert_logs_hold_no_secret(self.runtime);
        }
    }
}

impl TestDaemon {
    pub fn callback_url(&self) -> String {
        format!("http://{}/oauth/callback", self.daemon().http_addr)
    }

    pub async fn apps(&self, token: &str) -> AppsClient {
        apps_client(self.daemon().grpc_addr, token).await
    }

    pub async fn tokens(&self, token: &str) -> TokensApi {
        tokens_client(self.daemon().grpc_addr, token).await
    }

    pub async fn maintenance(&self, token: &str) -> MaintenanceApi {
        maintenance_client(self.daemon().grpc_addr, token).await
    }
}

/// Starts a daemon in-process (log capture and crypto provider installed first).
pub async fn start_daemon(config: &Config, clock: Option<ManualClock>) -> Result<Daemon, tokend::daemon::StartError> {
    logs::install_log_capture();
    install_crypto_provider();
    let clock: Arc<dyn Clock> = match clock {
        Some(c) => Arc::new(c),
        None => Arc::new(SystemClock),
    };
    Daemon::start(config.clone(), StartOptions { clock, jitter: Arc::new(FixedJitter(0.5)), env_key: None }).await
}

pub type AppsClient = ConnectedAppsClient<Authed>;
pub type TokensApi = TokensClient<Authed>;
pub type MaintenanceApi = MaintenanceClient<Authed>;

/// The interceptor for `token` (an empty token: a client without credentials).
pub fn bearer(token: &str) -> Bearer {
    Bearer::new(token).expect("ASCII bearer token")
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect")
}

pub async fn apps_client(addr: std::net::SocketAddr, token: &str) -> AppsClient {
    ConnectedAppsClient::with_interceptor(channel(addr).await, bearer(token))
}

pub async fn tokens_client(addr: std::net::SocketAddr, token: &str) -> TokensApi {
    TokensClient::with_interceptor(channel(addr).await, bearer(token))
}

pub async fn maintenance_client(addr: std::net::SocketAddr, token: &str) -> MaintenanceApi {
    MaintenanceClient::with_interceptor(channel(addr).await, bearer(token))
}

/// Installs ring as the process's rustls crypto provider, as the binaries do at start. Whatever
/// builds a TLS configuration calls it, so no test relies on another having done it first.
pub fn install_crypto_provider() {
    // An error means a provider is installed already: ring too, as nothing else installs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A profile pointing at the fake provider.
pub fn fake_profile(name: &str, provider: &FakeProvider) -> pb::Profile {
    pb::Profile {
        name: name.into(),
        description: format!("{name} for tests"),
        provider: "custom".into(),
        client_id: "test-client".into(),
        client_secret: "test-secret".into(),
        scopes: vec!["files.read".into()],
        authorization_endpoint: provider.authorization_endpoint(),
        token_endpoint: provider.token_endpoint(),
        revocation_endpoint: provider.revocation_endpoint(),
        ..Default::default()
    }
}

/// An HTTP client that does not follow redirects (the test plays the browser).
pub fn browser() -> oauth2::reqwest::Client {
    oauth2::reqwest::Client::builder().redirect(oauth2::reqwest::redirect::Policy::none()).build().expect("http client")
}

/// Follows an authorization URL through the fake provider's consent to the redirect it sends
/// the browser to; returns that redirect URL.
pub async fn consent_redirect(authorization_url: &str) -> String {
    let reply = browser().get(authorization_url).send().await.expect("authorize");
    assert_eq!(reply.status().as_u16(), 302, "provider redirects after consent");
    reply.headers().get("location").and_then(|v| v.to_str().ok()).expect("location header").to_owned()
}

/// Creates a profile for the fake provider and connects it through the callback, as a browser
/// would. Returns the profile after connecting.
pub async fn create_and_connect(apps: &mut AppsClient, name: &str, provider: &FakeProvider) -> pb::Profile {
    apps.create_profile(pb::CreateProfileRequest { profile: Some(fake_profile(name, provider)) })
        .await
        .expect("create");
    let start = apps.connect(pb::ConnectRequest { name: name.into() }).await.expect("connect").into_inner();
    let redirect = consent_redirect(&start.authorization_url).await;
    let page = browser().get(&redirect).send().await.expect("callback");
    assert_eq!(page.status().as_u16(), 200, "callback page: {:?}", page.text().await);
    apps.get_profile(pb::GetProfileRequest { name: name.into() }).await.expect("get").into_inner()
}

/// Polls `check` (waking the scheduler each time) up to `rounds` times, 20 ms apart; whether it
/// came true. For states the engine reaches on its own once time has moved.
pub async fn settle(daemon: &TestDaemon, rounds: usize, check: impl Fn() -> bool) -> bool {
    settle_async(daemon, rounds, async || check()).await
}

/// [`settle`] for a check that calls the daemon.
pub async fn settle_async(daemon: &TestDaemon, rounds: usize, mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..rounds {
        daemon.daemon().engine().wake_scheduler();
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    check().await
}

/// Points `config` at a fresh schema of the PostgreSQL test server (`TOKEND_TEST_POSTGRES_URL`,
/// set by scripts/test.sh). Without it the test fails saying so: never a silent skip.
pub fn use_postgres(config: &mut Config) -> String {
    let url = std::env::var("TOKEND_TEST_POSTGRES_URL").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "TOKEND_TEST_POSTGRES_URL is not set: the PostgreSQL tests need a server. Run scripts/test.sh, or \
         `eval \"$(scripts/pg-test-server.sh start)\"` and then cargo test"
    );
    let schema = format!("it_{:016x}", rand::random::<u64>());
    config.store.backend = tokend::config::StoreBackend::Postgres;
    config.store.postgres.url = url;
    config.store.postgres.schema = schema.clone();
    config.store.postgres.pool_size = 4;
    schema
}
