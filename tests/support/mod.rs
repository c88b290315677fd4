//! Shared helpers of the integration tests: a daemon started in-process on port 0 with a
//! temporary data directory, gRPC clients carrying a bearer token, a fake provider, and a log
//! capture for "no secret in any log line" checks.
#![allow(dead_code)]
// Test support: a failed setup step should panic with its message, like a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod fake_provider;
pub mod tls_front;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tokend::api::pb;
use tokend::api::pb::connected_apps_client::ConnectedAppsClient;
use tokend::api::pb::maintenance_client::MaintenanceClient;
use tokend::api::pb::tokens_client::TokensClient;
use tokend::clock::{Clock, FixedJitter, ManualClock, SystemClock};
use tokend::config::{CallerConfig, Config};
use tokend::daemon::{Daemon, StartOptions};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[allow(unused_imports)] // Not every test binary scripts faults.
pub use fake_provider::{FakeProvider, Fault};

/// Bearer tokens of the callers every test daemon knows.
pub const ADMIN: &str = "admin-token-for-tests";
pub const VIEWER: &str = "viewer-token-for-tests";
pub const CONSUMER: &str = "consumer-token-for-tests";

/// Every log line any test daemon wrote, at trace level.
pub fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = logs().lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of this process at trace level into [`logs`].
pub fn install_log_capture() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("trace,h2=info,hyper=info,tower=info,sled=info,reqwest=debug")
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Asserts that none of `secrets` appears in any captured log line.
pub fn assert_no_secret_in_logs(secrets: &[String]) {
    let logs = logs().lock().map(|l| String::from_utf8_lossy(&l).into_owned()).unwrap_or_default();
    assert!(!logs.is_empty(), "log capture is empty: the check would prove nothing");
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(!logs.contains(secret.as_str()), "a secret appeared in the logs");
    }
}

/// What no log line may contain: prefixes of every access token, refresh token, authorization
/// code and device code the fake provider issues, its client secret, and the PKCE verifiers it
/// received.
fn secret_patterns() -> Vec<String> {
    let mut patterns: Vec<String> =
        ["fake-at-", "fake-rt-", "fake-code-", "fake-dc-", "test-secret"].iter().map(|s| (*s).to_owned()).collect();
    if let Ok(seen) = fake_provider::SEEN_VERIFIERS.lock() {
        patterns.extend(seen.iter().filter(|v| v.len() >= 16).cloned());
    }
    patterns
}

/// Scans every captured log line (trace level, all daemons of this test binary so far) for
/// secrets. Runs whenever a [`TestDaemon`] is dropped, so every in-process integration test is
/// also a "no secret in the logs" test.
pub fn assert_logs_hold_no_secret() {
    let patterns = secret_patterns();
    let Ok(searcher) = aho_corasick::AhoCorasick::new(&patterns) else { panic!("secret patterns") };
    let logs = logs().lock().map(|l| l.clone()).unwrap_or_default();
    if let Some(found) = searcher.find(&logs) {
        let line_start = logs[..found.start()].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let before = String::from_utf8_lossy(&logs[line_start..found.start()]);
        // Name the kind of secret and the log line up to it, never the secret itself.
        let kind = &patterns[found.pattern().as_usize()];
        let kind: String = kind.chars().take(8).collect();
        panic!("a secret ({kind}…) appeared in a log line: {before}<secret>");
    }
}

/// A daemon under test.
pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub dir: tempfile::TempDir,
    pub clock: Option<ManualClock>,
    pub config: Config,
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
        install_log_capture();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let daemon = start_daemon(&config, clock.clone()).await.expect("daemon starts");
        TestDaemon { daemon: Some(daemon), dir, clock, config }
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
            assert_logs_hold_no_secret();
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

pub async fn start_daemon(config: &Config, clock: Option<ManualClock>) -> Result<Daemon, tokend::daemon::StartError> {
    let clock: Arc<dyn Clock> = match clock {
        Some(c) => Arc::new(c),
        None => Arc::new(SystemClock),
    };
    Daemon::start(config.clone(), StartOptions { clock, jitter: Arc::new(FixedJitter(0.5)), env_key: None }).await
}

/// Adds `authorization: Bearer <token>` (nothing for an empty token).
#[derive(Clone)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}
pub type AppsClient = ConnectedAppsClient<InterceptedService<Channel, Auth>>;
pub type TokensApi = TokensClient<InterceptedService<Channel, Auth>>;
pub type MaintenanceApi = MaintenanceClient<InterceptedService<Channel, Auth>>;

fn auth(token: &str) -> Auth {
    Auth((!token.is_empty()).then(|| format!("Bearer {token}").parse().expect("ascii token")))
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect")
}

pub async fn apps_client(addr: std::net::SocketAddr, token: &str) -> AppsClient {
    ConnectedAppsClient::with_interceptor(channel(addr).await, auth(token))
}

pub async fn tokens_client(addr: std::net::SocketAddr, token: &str) -> TokensApi {
    TokensClient::with_interceptor(channel(addr).await, auth(token))
}

pub async fn maintenance_client(addr: std::net::SocketAddr, token: &str) -> MaintenanceApi {
    MaintenanceClient::with_interceptor(channel(addr).await, auth(token))
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
