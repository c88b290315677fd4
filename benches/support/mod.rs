//! Helpers shared by the `handout` and `engine` benchmarks: flag parsing, the benchmark daemon
//! configuration, gRPC clients with a bearer token, process figures read from `/proc`
//! (CPU time, RSS), latency percentiles, and re-executing the benchmark binary in another role
//! (optionally pinned to a core with `taskset`).
//!
//! Not every helper is used by both benchmark binaries.
#![allow(dead_code)]

pub mod fast_provider;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokend::api::pb;
use tokend::api::pb::connected_apps_client::ConnectedAppsClient;
use tokend::api::pb::tokens_client::TokensClient;
use tokend::client::{Authed, Bearer};
use tokend::config::{CallerConfig, Config};
use tonic::transport::Channel;

/// Bearer token of the benchmark's admin caller.
pub const ADMIN: &str = "bench-admin-token";
/// Bearer token of the benchmark's consumer caller (may get tokens of `bench-*`, `mail-*`).
pub const CONSUMER: &str = "bench-consumer-token";

/// Command-line flags: `--name value` pairs and bare `--switch`es. Unknown flags (such as the
/// `--bench` that `cargo bench` appends) are ignored.
#[derive(Debug, Clone)]
pub struct Args(Vec<String>);

impl Args {
    /// The process arguments, program name excluded.
    pub fn from_env() -> Self {
        Self(std::env::args().skip(1).collect())
    }

    /// The process arguments, or `smoke` when there are none. `cargo bench` passes `--bench`;
    /// `cargo test --all-targets` runs a `harness = false` bench with no arguments at all, and
    /// then a full benchmark would cost CI minutes: a tiny run keeps the benchmark from rotting.
    pub fn from_env_or_smoke(smoke: &[&str]) -> Self {
        let args = Self::from_env();
        if args.0.is_empty() {
            eprintln!("no arguments (cargo test): smoke run with {}", smoke.join(" "));
            return Self(smoke.iter().map(|s| s.to_string()).collect());
        }
        args
    }

    /// The value after `name`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0.iter().position(|a| a == name).and_then(|i| self.0.get(i + 1)).map(String::as_str)
    }

    /// Whether the switch `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    /// The parsed value after `name`, or `default`; panics with the flag's name when unparsable.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.value(name) {
            None => default,
            Some(text) => text.parse().unwrap_or_else(|_| panic!("{name}: cannot parse {text:?}")),
        }
    }
}

/// The benchmark daemon configuration: data in `dir`, both listeners on loopback port 0, an
/// admin and a consumer caller (no generated admin token).
pub fn bench_config(dir: &Path) -> Config {
    // tokend refuses a data directory that group or others can enter; temp dirs follow the umask.
    use std::os::unix::fs::PermissionsExt as _;
    let private = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)));
    if let Err(e) = private {
        eprintln!("making {} private: {e}", dir.display());
    }
    let mut config = Config { data_dir: dir.to_path_buf(), ..Config::default() };
    config.grpc.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    // Through serde, so fields added to `CallerConfig` later take their defaults.
    let caller = |name: &str, role: &str, token: &str, profiles: &[&str]| -> CallerConfig {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "role": role,
            "token_sha256": tokend::grpc::auth::hash_token(token),
            "profiles": profiles,
        }))
        .expect("caller configuration")
    };
    config.callers = vec![
        caller("bench-admin", "admin", ADMIN, &[]),
        caller("bench-worker", "consumer", CONSUMER, &["bench-*", "mail-*"]),
    ];
    config
}

/// A `Tokens` client that sends a bearer token.
pub type TokensApi = TokensClient<Authed>;
/// A `ConnectedApps` client that sends a bearer token.
pub type AppsApi = ConnectedAppsClient<Authed>;

/// The interceptor for `token`.
pub fn bearer(token: &str) -> Bearer {
    Bearer::new(token).expect("ASCII bearer token")
}

/// One HTTP/2 connection to `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint URI")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// A `Tokens` client on its own connection.
pub async fn tokens_client(addr: SocketAddr, token: &str) -> TokensApi {
    TokensClient::with_interceptor(channel(addr).await, bearer(token)).max_decoding_message_size(4 * 1024 * 1024)
}

/// A `ConnectedApps` client on its own connection.
pub async fn apps_client(addr: SocketAddr, token: &str) -> AppsApi {
    ConnectedAppsClient::with_interceptor(channel(addr).await, bearer(token))
}

/// A `GetAccessToken` request; `min_valid_for` in seconds (None: the daemon's default).
pub fn get_token(name: &str, min_valid_for: Option<i64>) -> pb::GetAccessTokenRequest {
    pb::GetAccessTokenRequest {
        name: name.into(),
        min_valid_for: min_valid_for.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
    }
}

/// Kernel clock ticks per second (`getconf CLK_TCK`; 100 when that fails).
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time (user + system, all threads, exited ones included) of process `pid`, in
/// microseconds, from `/proc/<pid>/stat`. Resolution: one clock tick (10 ms at 100 Hz).
pub fn cpu_micros(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // The command name (field 2) may hold spaces; fields after it are space-separated.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime) are at offsets 11 and 12 after the command name.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks * 1_000_000 / clock_ticks()
}

/// Resident set size of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The `p`-th percentile (0..=100) of sorted values; 0 for none.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Formats microseconds as milliseconds with three decimals.
pub fn ms(micros: u32) -> String {
    format!("{:.3}", f64::from(micros) / 1000.0)
}

/// Whether `taskset` (util-linux) can pin processes here.
pub fn taskset_available() -> bool {
    Command::new("taskset").args(["-c", "0", "true"]).status().map(|s| s.success()).unwrap_or(false)
}

/// Starts this benchmark binary again with `args`, pinned to `cpus` (a `taskset -c` list) when
/// given and `taskset` works; stdin and stdout are pipes, stderr is inherited.
pub fn spawn_self(cpus: Option<&str>, args: &[String]) -> Child {
    let exe = std::env::current_exe().expect("current executable");
    let mut command = match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.args(["-c", list]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-executing the benchmark binary")
}

/// The machine, for the report: CPU count, CPU model, memory.
pub fn machine_summary() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let lifo = if tokend::daemon::LIFO_SLOT_DISABLED { "off" } else { "on" };
    format!(
        "{cpus} CPUs ({}), {:.1} GiB memory; the daemon's tokio LIFO slot {lifo}",
        model.unwrap_or("unknown model"),
        mem_kib as f64 / 1048576.0
    )
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`), to tell a quiet machine from a busy one.
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Polls `check` every 10 ms until it holds or `limit` passes; returns whether it held.
pub async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// A tokio runtime with one worker per CPU this process may run on (so a process pinned to one
/// core gets one worker).
pub fn runtime() -> tokio::runtime::Runtime {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().expect("tokio runtime")
}

/// The runtime `tokend` runs on ([`tokend::daemon::build_runtime`]), with one worker per CPU this
/// process may run on: for the benchmarks' daemons (clients and the bare server keep tokio's
/// defaults, [`runtime`]).
pub fn daemon_runtime() -> tokio::runtime::Runtime {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    tokend::daemon::build_runtime(Some(workers)).expect("tokio runtime")
}

/// Where a profile's provider lives (the fake provider's endpoints).
#[derive(Debug, Clone)]
pub struct ProviderEndpoints {
    /// `GET /authorize`.
    pub authorization: String,
    /// `POST /token`.
    pub token: String,
    /// `POST /revoke`.
    pub revocation: String,
}

/// Creates profile `name` for the fake provider (client `test-client` / `test-secret`) and
/// connects it as a browser would: the provider consents at once and redirects to tokend's
/// callback, which exchanges the code.
pub async fn create_and_connect(apps: &mut AppsApi, name: &str, provider: &ProviderEndpoints) {
    let profile = pb::Profile {
        name: name.into(),
        description: format!("{name} (benchmark)"),
        provider: "custom".into(),
        client_id: "test-client".into(),
        client_secret: "test-secret".into(),
        scopes: vec!["files.read".into()],
        authorization_endpoint: provider.authorization.clone(),
        token_endpoint: provider.token.clone(),
        revocation_endpoint: provider.revocation.clone(),
        ..Default::default()
    };
    apps.create_profile(pb::CreateProfileRequest { profile: Some(profile) }).await.expect("CreateProfile");
    let start = apps.connect(pb::ConnectRequest { name: name.into() }).await.expect("Connect").into_inner();
    let browser = oauth2::reqwest::Client::builder()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client");
    let consent = browser.get(&start.authorization_url).send().await.expect("GET authorization URL");
    assert_eq!(consent.status().as_u16(), 302, "the fake provider redirects after consent");
    let redirect = consent.headers().get("location").and_then(|v| v.to_str().ok()).expect("Location").to_owned();
    let page = browser.get(&redirect).send().await.expect("GET callback");
    assert_eq!(page.status().as_u16(), 200, "callback page: {:?}", page.text().await);
}
