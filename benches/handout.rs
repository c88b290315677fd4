//! Token hand-out throughput and latency, tokend against the bare gRPC stack, side by side.
//!
//! - Server A: the real daemon in-process (`Daemon::start`, temp data directory, an admin and a
//!   consumer caller), one profile connected through the fake provider, so `GetAccessToken`
//!   with a one-hour token is answered from the token cache.
//! - Server B: a minimal tonic server with tonic's defaults, implementing the same
//!   `tokend.v1.Tokens` service, answering the same `AccessToken` message (A's own reply) from
//!   an in-memory `HashMap`, with no authentication (the client sends the same bearer header to
//!   both). It accepts as `Server::serve(addr)` does (`TCP_NODELAY` on, TCP keepalive off), so a
//!   server that forgets a socket option shows against it (issue #18).
//!
//! The binary re-executes itself in three roles: the orchestrator (default) starts A and B
//! pinned to CPU 0 (`taskset -c 0`), then runs load rounds A, B, A, B… from a load process
//! pinned to CPU 1, reading each server's CPU time (`/proc/<pid>/stat`, utime + stime) at the
//! start and end of every measured window; `--serve a|b` runs a server until its stdin closes;
//! `--load` generates load and prints its figures.
//!
//! Flags: `--connections N` (HTTP/2 connections, 4), `--concurrency M` (calls in flight per
//! connection, 64), `--seconds D` (measured window, 5), `--warmup W` (seconds before it, 1),
//! `--rounds R` (3), `--rate RPS` (also run fixed-rate rounds at RPS calls per second, 0: off),
//! `--big-token` (a 1 KiB access token: A's profile uses client credentials against the fast
//! provider of `support/fast_provider.rs`, instead of the fake provider's 32-byte token),
//! `--h2load` (also run h2load rounds, when `h2load` is installed), `--h2load-requests N`
//! (300000), `--no-closed` (skip the closed-loop series), `--no-pin` (do not use taskset),
//! `--latency` (sequential calls on one connection, one call in flight, as h2load `-c 1 -m 1`:
//! `--latency-runs R` runs (5) of `--latency-calls N` calls (20000) per server, over TCP and
//! then over TLS with a fresh self-signed certificate for both servers; `--no-tls` skips TLS;
//! prints p50 / p99 / p99.9 / max side by side and the calls above 5 ms), `--unix` (both
//! servers serve on a Unix socket instead of TCP, as local workers call tokend; the consumer
//! still sends its bearer token; h2load and TLS are skipped, having no Unix socket support),
//! `--h2load-rate R` (h2load at a fixed R calls per second for `--seconds`, latencies from its
//! per-request log: the p99 at a given load, with a load generator that is not the bottleneck,
//! which the tonic one is above about 20,000 calls per second on one core).
//!
//! The load average is printed at the start; at 0.5 or more (1-minute) every summary line is
//! marked unreliable: the figures would measure the neighbours as much as the servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The integration tests' fake provider; a benchmark uses a few of its methods.
#[allow(dead_code)]
#[path = "../tests/it/support/fake_provider.rs"]
mod fake_provider;
mod support;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, ChildStdout, Command};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prost::Message as _;
use tokend::api::pb;
use tokend::api::pb::connected_apps_client::ConnectedAppsClient;
use tokend::api::pb::tokens_client::TokensClient;
use tokend::api::pb::tokens_server::{Tokens, TokensServer};
use tokend::daemon::{Daemon, StartOptions};
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

use support::{ADMIN, AppsApi, Args, CONSUMER, TokensApi};

/// The profile every call asks for.
const PROFILE: &str = "mail-bench";

/// In TLS runs, the servers' certificate (PEM, for `localhost`) and its key, in the directory
/// given with `--tls-dir`.
const TLS_CERT: &str = "cert.pem";
const TLS_KEY: &str = "key.pem";

/// A sequential call slower than this is the stall of issue #18 (Nagle's algorithm against a
/// delayed ACK costs about 40 ms; a hand-out takes tens of microseconds).
const SLOW_CALL_US: u32 = 5_000;

/// Sequential calls made before measuring: the connection, HPACK tables and allocator settle.
const SEQUENTIAL_WARMUP_CALLS: usize = 200;

/// The 1-minute load average from which the figures are marked unreliable.
const QUIET_LOAD: f64 = 0.5;

/// Appended to every summary line: empty on a quiet machine, a warning otherwise.
static RELIABILITY: OnceLock<String> = OnceLock::new();

fn reliability() -> &'static str {
    RELIABILITY.get().map(String::as_str).unwrap_or("")
}

fn main() {
    let args = Args::from_env_or_smoke(&[
        "--rounds",
        "1",
        "--seconds",
        "0.3",
        "--warmup",
        "0.1",
        "--rate",
        "200",
        "--no-pin",
        "--latency",
        "--latency-runs",
        "1",
        "--latency-calls",
        "200",
    ]);
    match args.value("--serve") {
        Some("a") => serve_a(&args),
        Some("b") => serve_b(&args),
        Some(other) => panic!("--serve {other}: expected a or b"),
        None if args.has("--load") => load(&args),
        None => orchestrate(&args),
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

/// Server A: the daemon, one connected profile; prints `READY <addr> <reply hex>`. With
/// `--big-token`, the profile uses client credentials against the fast provider (a 1 KiB access
/// token); otherwise the authorization-code flow against the fake provider (32 bytes). With
/// `--tls-dir`, gRPC is served through tokend's TLS acceptor with the certificate there.
fn serve_a(args: &Args) {
    let big_token = args.has("--big-token");
    let tls_dir = args.value("--tls-dir").map(PathBuf::from);
    // The daemon's own log subscriber, as `tokend` installs it (JSON lines, level info, to
    // stderr): what a production daemon pays per call for the stack's spans and events.
    tokend::telemetry::init(tokend::config::LogFormat::Json, "info");
    support::daemon_runtime().block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let provider = fake_provider::FakeProvider::start().await;
        let fast = support::fast_provider::FastProvider::start(0).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = support::bench_config(dir.path());
        if let Some(tls) = &tls_dir {
            config.grpc.tls.cert_file = tls.join(TLS_CERT);
            config.grpc.tls.key_file = tls.join(TLS_KEY);
        }
        let unix = args.value("--unix").map(|dir| Path::new(dir).join("a.sock"));
        if let Some(path) = &unix {
            config.grpc.unix_socket = path.clone();
        }
        let daemon = Daemon::start(config, StartOptions::default()).await.expect("daemon starts");
        let mut apps = apps_client(daemon.grpc_addr, tls_dir.as_deref()).await;
        if big_token {
            connect_client_credentials(&mut apps, &fast.token_endpoint()).await;
        } else {
            let endpoints = support::ProviderEndpoints {
                authorization: provider.authorization_endpoint(),
                token: provider.token_endpoint(),
                revocation: provider.revocation_endpoint(),
            };
            support::create_and_connect(&mut apps, PROFILE, &endpoints).await;
        }
        let mut tokens = tokens_client(&Target::Tcp(daemon.grpc_addr), tls_dir.as_deref()).await;
        let reply = tokens.get_access_token(support::get_token(PROFILE, None)).await.expect("GetAccessToken");
        let target = unix.map_or(Target::Tcp(daemon.grpc_addr), Target::Unix);
        println!("READY {target} {}", to_hex(&reply.into_inner().encode_to_vec()));
        stdin_closed().await;
        daemon.stop().await;
        drop(provider);
    });
}

/// Creates the profile with the client-credentials grant against `token_endpoint`; Connect
/// fetches its token at once.
async fn connect_client_credentials(apps: &mut AppsApi, token_endpoint: &str) {
    let profile = pb::Profile {
        name: PROFILE.into(),
        provider: "custom".into(),
        grant: pb::Grant::ClientCredentials as i32,
        client_id: "bench-client".into(),
        client_secret: "bench-secret".into(),
        token_endpoint: token_endpoint.into(),
        ..Default::default()
    };
    apps.create_profile(pb::CreateProfileRequest { profile: Some(profile) }).await.expect("CreateProfile");
    let start = apps.connect(pb::ConnectRequest { name: PROFILE.into() }).await.expect("Connect").into_inner();
    assert_eq!(start.status, pb::Status::Connected as i32, "client credentials connect at once");
}

/// Where a server listens: a TCP address, or a Unix socket path (`--unix`). Written as the
/// address or the absolute path on the command line and in `READY` lines.
#[derive(Debug, Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for Target {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with('/') { Ok(Self::Unix(PathBuf::from(s))) } else { s.parse().map(Self::Tcp) }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(path) => path.display().fmt(f),
        }
    }
}

/// Connects a tonic channel to a Unix socket.
#[derive(Debug, Clone)]
struct UnixConnector(PathBuf);

impl tonic::codegen::Service<http::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
    }
}

/// The bare `Tokens` service of server B.
struct BareTokens {
    tokens: Arc<HashMap<String, pb::AccessToken>>,
}

#[tonic::async_trait]
impl Tokens for BareTokens {
    async fn get_access_token(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::AccessToken>, Status> {
        let name = &request.get_ref().name;
        self.tokens.get(name).cloned().map(Response::new).ok_or_else(|| Status::not_found(name.clone()))
    }

    type WatchAccessTokenStream = Pin<Box<dyn futures::Stream<Item = Result<pb::AccessToken, Status>> + Send>>;

    async fn watch_access_token(
        &self,
        _request: Request<pb::WatchAccessTokenRequest>,
    ) -> Result<Response<Self::WatchAccessTokenStream>, Status> {
        Err(Status::unimplemented("not part of the benchmark"))
    }
}

/// Server B: the bare service answering `--token-hex` (an encoded `AccessToken`), with tonic's
/// own TLS when `--tls-dir` is given; prints `READY <addr>`.
fn serve_b(args: &Args) {
    let reply = pb::AccessToken::decode(from_hex(args.value("--token-hex").expect("--token-hex")).as_slice())
        .expect("--token-hex: an encoded AccessToken");
    let tokens = Arc::new(HashMap::from([(reply.name.clone(), reply)]));
    let tls = args.value("--tls-dir").map(|dir| {
        let read = |file| std::fs::read(Path::new(dir).join(file)).expect("read the benchmark TLS identity");
        ServerTlsConfig::new().identity(Identity::from_pem(read(TLS_CERT), read(TLS_KEY)))
    });
    // A bare tonic build has no subscriber and tracing without its `log` feature, so h2's and
    // tonic's spans cost next to nothing. This binary links tokend, whose sqlx turns `log` on
    // for the whole build, and with `log` on and no subscriber every span is offered to the
    // `log` crate (about 15,000 instructions per call under callgrind). A no-op subscriber
    // restores the bare stack's cheap path.
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
    support::runtime().block_on(async move {
        // Bound as tonic's `Server::serve(addr)` binds (its `bind_incoming`, with the builder's
        // defaults: TCP_NODELAY on, TCP keepalive off); `serve(addr)` itself cannot report the
        // port it got for port 0.
        let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind").with_nodelay(Some(true));
        let addr = incoming.local_addr().expect("local address");
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).expect("server TLS configuration");
        }
        let router = builder.add_service(TokensServer::new(BareTokens { tokens }));
        if let Some(dir) = args.value("--unix") {
            let path = Path::new(dir).join("b.sock");
            let listener = tokio::net::UnixListener::bind(&path).expect("bind the Unix socket");
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            println!("READY {}", path.display());
            return router.serve_with_incoming_shutdown(incoming, stdin_closed()).await.expect("bare server");
        }
        let server = router.serve_with_incoming_shutdown(incoming, stdin_closed());
        println!("READY {addr}");
        server.await.expect("bare server");
    });
}

/// One HTTP/2 connection to `target`: plain, or TLS trusting the benchmark's certificate in
/// `tls_dir`, or over a Unix socket.
async fn channel(target: &Target, tls_dir: Option<&Path>) -> Channel {
    let addr = match target {
        Target::Unix(path) => {
            return Endpoint::from_static("http://localhost")
                .connect_with_connector(UnixConnector(path.clone()))
                .await
                .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
        }
        Target::Tcp(addr) => *addr,
    };
    let Some(dir) = tls_dir else { return support::channel(addr).await };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(dir.join(TLS_CERT)).expect("read the benchmark certificate");
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint URI")
        .tls_config(tls)
        .expect("client TLS configuration")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr} (TLS): {e}"))
}

/// A `Tokens` client of the consumer caller on its own connection.
async fn tokens_client(target: &Target, tls_dir: Option<&Path>) -> TokensApi {
    TokensClient::with_interceptor(channel(target, tls_dir).await, support::bearer(CONSUMER))
        .max_decoding_message_size(4 * 1024 * 1024)
}

/// A `ConnectedApps` client of the admin caller on its own connection.
async fn apps_client(addr: SocketAddr, tls_dir: Option<&Path>) -> AppsApi {
    ConnectedAppsClient::with_interceptor(channel(&Target::Tcp(addr), tls_dir).await, support::bearer(ADMIN))
}

/// Writes a fresh self-signed certificate for `localhost` and its key into `dir`.
fn write_tls_identity(dir: &Path) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    std::fs::write(dir.join(TLS_CERT), certified.cert.pem()).expect("write the certificate");
    std::fs::write(dir.join(TLS_KEY), certified.signing_key.serialize_pem()).expect("write the key");
}

/// Resolves when this process's stdin reaches end of file (the orchestrator closed it or died).
async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            line.clear();
        }
    })
    .await;
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

// ---------------------------------------------------------------------------------------------
// Load generator

/// The measured window of a load run.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// When load starts (warm-up begins).
    start: Instant,
    /// When measurement starts.
    from: Instant,
    /// When measurement (and load) ends.
    to: Instant,
}

/// What a load run saw inside the window.
#[derive(Debug, Default)]
struct Samples {
    /// Latencies of successful calls, in microseconds.
    latencies: Vec<u32>,
    /// Failed calls.
    errors: u64,
    /// The first failure, for the log.
    first_error: Option<String>,
    /// Calls that completed at any time, window or not (what the server answered).
    completed: u64,
}

impl Samples {
    fn record(&mut self, result: Result<(), Status>, micros: u128) {
        match result {
            Ok(()) => self.latencies.push(u32::try_from(micros).unwrap_or(u32::MAX)),
            Err(status) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{status:?}"));
            }
        }
    }

    fn merge(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.completed += other.completed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One `GetAccessToken` call, its reply dropped.
async fn call(client: &mut TokensApi) -> Result<(), Status> {
    client.get_access_token(support::get_token(PROFILE, None)).await.map(drop)
}

/// The load role: `--target ADDR` (through TLS with `--tls-dir`), closed loop (`--connections` ×
/// `--concurrency`), open loop (`--rate`) or sequential (`--sequential N`). Prints
/// `MEASURE_START`, `MEASURE_END` (not for sequential calls), then
/// `RESULT calls errors p50 p99 p999 max completed slow` (latencies in µs; `completed` counts
/// every call answered, in the window or not; `slow` the calls above 5 ms).
fn load(args: &Args) {
    let target: Target = args.value("--target").expect("--target").parse().expect("--target address or path");
    let tls_dir = args.value("--tls-dir").map(PathBuf::from);
    if let Some(calls) = args.value("--sequential") {
        let calls = calls.parse().expect("--sequential: a number of calls");
        return support::runtime().block_on(sequential_load(&target, tls_dir.as_deref(), calls));
    }
    let connections: usize = args.parsed("--connections", 4);
    let concurrency: usize = args.parsed("--concurrency", 64);
    let rate: f64 = args.parsed("--rate", 0.0);
    let warmup = Duration::from_secs_f64(args.parsed("--warmup", 1.0));
    let seconds = Duration::from_secs_f64(args.parsed("--seconds", 5.0));
    support::runtime().block_on(async move {
        let mut clients = Vec::new();
        for _ in 0..connections {
            clients.push(tokens_client(&target, tls_dir.as_deref()).await);
        }
        let start = Instant::now();
        let window = Window { start, from: start + warmup, to: start + warmup + seconds };
        let markers = tokio::spawn(async move {
            tokio::time::sleep_until(window.from).await;
            println!("MEASURE_START");
            tokio::time::sleep_until(window.to).await;
            println!("MEASURE_END");
        });
        let samples = if rate > 0.0 {
            open_loop(&clients, rate, window).await
        } else {
            closed_loop(&clients, concurrency, window).await
        };
        markers.await.expect("marker task");
        print_result(samples);
    });
}

/// `calls` calls one after the other on one connection, each sent when the previous reply has
/// arrived (h2load `-c 1 -m 1`): the pattern of a worker fetching its token before each job,
/// and the one where a missing `TCP_NODELAY` shows (issue #18). No window markers: the
/// orchestrator reading `/proc` mid-run would add noise to the tail this measures.
async fn sequential_load(target: &Target, tls_dir: Option<&Path>, calls: usize) {
    let mut client = tokens_client(target, tls_dir).await;
    for _ in 0..SEQUENTIAL_WARMUP_CALLS {
        let _ = call(&mut client).await;
    }
    let mut samples = Samples { latencies: Vec::with_capacity(calls), ..Samples::default() };
    for _ in 0..calls {
        let begun = Instant::now();
        let result = call(&mut client).await;
        samples.completed += 1;
        samples.record(result, begun.elapsed().as_micros());
    }
    print_result(samples);
}

/// Prints the `RESULT` line of a load run (see [`load`]).
fn print_result(mut samples: Samples) {
    if let Some(error) = &samples.first_error {
        eprintln!("load: {} failed calls; first: {error}", samples.errors);
    }
    samples.latencies.sort_unstable();
    let l = &samples.latencies;
    let p = |q| support::percentile(l, q);
    let (calls, errors, completed) = (l.len(), samples.errors, samples.completed);
    let slow = l.iter().filter(|&&micros| micros > SLOW_CALL_US).count();
    println!("RESULT {calls} {errors} {} {} {} {} {completed} {slow}", p(50.0), p(99.0), p(99.9), p(100.0));
}

/// `concurrency` callers per connection, each calling back to back until the window ends.
async fn closed_loop(clients: &[TokensApi], concurrency: usize, window: Window) -> Samples {
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..concurrency {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut samples = Samples::default();
                loop {
                    let begun = Instant::now();
                    if begun >= window.to {
                        return samples;
                    }
                    let result = call(&mut client).await;
                    let ended = Instant::now();
                    samples.completed += 1;
                    if begun >= window.from && ended <= window.to {
                        samples.record(result, (ended - begun).as_micros());
                    }
                }
            }));
        }
    }
    let mut all = Samples::default();
    for task in tasks {
        all.merge(task.await.expect("load task"));
    }
    all
}

/// Calls started at `rate` per second, round-robin over the connections, whatever the replies
/// do; latency counts from when a call was due (no coordinated omission).
async fn open_loop(clients: &[TokensApi], rate: f64, window: Window) -> Samples {
    let mut tasks = Vec::new();
    let mut sent: u64 = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if now >= window.to {
            break;
        }
        let due = ((now - window.start).as_secs_f64() * rate) as u64;
        while sent < due {
            let intended = window.start + Duration::from_secs_f64(sent as f64 / rate);
            let mut client = clients[sent as usize % clients.len()].clone();
            tasks.push(tokio::spawn(async move {
                let result = call(&mut client).await;
                (intended, Instant::now(), result)
            }));
            sent += 1;
        }
    }
    let mut samples = Samples::default();
    for task in tasks {
        let (intended, ended, result) = task.await.expect("load task");
        samples.completed += 1;
        if intended >= window.from && intended < window.to {
            samples.record(result, (ended - intended).as_micros());
        }
    }
    samples
}

// ---------------------------------------------------------------------------------------------
// Orchestrator

/// A running server process.
struct Server {
    /// `A tokend` or `B bare`.
    label: &'static str,
    child: Child,
    addr: Target,
    /// Kept open: a server writing to a closed pipe would fail.
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts `--serve <role>` (pinned to CPU 0 when `pin`) and reads its `READY` line: the
    /// address and, for A, the reply it hands out (hex).
    fn start(label: &'static str, pin: bool, args: &[String]) -> (Self, Option<String>) {
        let mut child = support::spawn_self(pin.then_some("0"), args);
        let mut stdout = BufReader::new(child.stdout.take().expect("server stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("server READY line");
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("READY"), "server said {line:?}");
        let addr = words.next().expect("address").parse().expect("server address");
        (Self { label, child, addr, _stdout: stdout }, words.next().map(str::to_owned))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes the server's stdin (it shuts down) and waits for it.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// One measured round against one server.
#[derive(Debug, Clone)]
struct Round {
    label: &'static str,
    calls: u64,
    errors: u64,
    seconds: f64,
    p50: u32,
    p99: u32,
    p999: u32,
    max: u32,
    /// Calls above `SLOW_CALL_US`.
    slow: u64,
    server_cpu_us: u64,
    client_cpu_us: u64,
}

impl Round {
    fn rps(&self) -> f64 {
        self.calls as f64 / self.seconds
    }

    fn cpu_per_call(&self) -> f64 {
        self.server_cpu_us as f64 / self.calls.max(1) as f64
    }

    fn print(&self, n: usize) {
        println!(
            "round {n} {:<9} {:>9.0} req/s  p50 {} ms  p99 {} ms  p99.9 {} ms  max {} ms  errors {}  | server CPU {:>6.2} µs/call ({:>3.0}% of a core) | client CPU {:>3.0}%",
            self.label,
            self.rps(),
            support::ms(self.p50),
            support::ms(self.p99),
            support::ms(self.p999),
            support::ms(self.max),
            self.errors,
            self.cpu_per_call(),
            self.server_cpu_us as f64 / (self.seconds * 1e4),
            self.client_cpu_us as f64 / (self.seconds * 1e4),
        );
    }
}

/// Runs one load process (pinned to CPU 1 when `pin`) against `server`; samples both
/// processes' CPU time at the window's start and end markers.
fn run_round(server: &Server, pin: bool, load_args: &[String], seconds: f64) -> Round {
    let mut args = vec!["--load".to_owned(), "--target".to_owned(), server.addr.to_string()];
    args.extend_from_slice(load_args);
    let mut child = support::spawn_self(pin.then_some("1"), &args);
    let lines = BufReader::new(child.stdout.take().expect("load stdout")).lines();
    let (mut server_cpu, mut client_cpu, mut result) = ((0, 0), (0, 0), None);
    for line in lines {
        let line = line.expect("load stdout");
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["MEASURE_START"] => {
                server_cpu.0 = support::cpu_micros(server.pid());
                client_cpu.0 = support::cpu_micros(child.id());
            }
            ["MEASURE_END"] => {
                server_cpu.1 = support::cpu_micros(server.pid());
                client_cpu.1 = support::cpu_micros(child.id());
            }
            ["RESULT", figures @ ..] => {
                result = Some(figures.iter().map(|f| f.parse::<u64>().expect("RESULT figure")).collect::<Vec<_>>())
            }
            _ => println!("load: {line}"),
        }
    }
    assert!(child.wait().expect("load process").success(), "load process failed");
    let r = result.expect("RESULT line");
    Round {
        label: server.label,
        calls: r[0],
        errors: r[1],
        seconds,
        p50: r[2] as u32,
        p99: r[3] as u32,
        p999: r[4] as u32,
        max: r[5] as u32,
        slow: r[7],
        server_cpu_us: server_cpu.1 - server_cpu.0,
        client_cpu_us: client_cpu.1 - client_cpu.0,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `rounds` rounds alternating A and B, prints each round, its A/B ratios, and a summary.
fn series(title: &str, servers: &[Server; 2], pin: bool, load_args: &[String], seconds: f64, rounds: usize) {
    println!("\n== {title}");
    let mut all: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for n in 1..=rounds {
        for (i, server) in servers.iter().enumerate() {
            let round = run_round(server, pin, load_args, seconds);
            round.print(n);
            all[i].push(round);
        }
        let (a, b) = (&all[0][n - 1], &all[1][n - 1]);
        println!(
            "round {n} ratio A/B: throughput {:.3}, server CPU per call {:.3}",
            a.rps() / b.rps(),
            a.cpu_per_call() / b.cpu_per_call()
        );
    }
    summarize(title, &all);
}

/// Medians over the rounds, and the median (and range) of the per-round A/B ratios: a round
/// of A and the round of B right after it saw about the same background load, so their ratio
/// is steadier than either figure on a shared machine.
fn summarize(title: &str, all: &[Vec<Round>; 2]) {
    let med = |i: usize, f: fn(&Round) -> f64| median(all[i].iter().map(f).collect());
    let paired = |f: fn(&Round) -> f64| {
        let ratios: Vec<f64> = all[0].iter().zip(&all[1]).map(|(a, b)| f(a) / f(b)).collect();
        let (low, high) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), &r| (l.min(r), h.max(r)));
        format!("{:.3} (range {low:.3}..{high:.3})", median(ratios))
    };
    let (rps_a, rps_b) = (med(0, Round::rps), med(1, Round::rps));
    let (cpu_a, cpu_b) = (med(0, Round::cpu_per_call), med(1, Round::cpu_per_call));
    let ms = |i: usize, f: fn(&Round) -> f64| med(i, f) / 1000.0;
    println!(
        "SUMMARY {title}: A {rps_a:.0} req/s, B {rps_b:.0} req/s; server CPU A {cpu_a:.2} µs/call, B {cpu_b:.2} µs/call; \
         p50 A {:.3} ms B {:.3} ms; p99 A {:.3} ms B {:.3} ms; p99.9 A {:.3} ms B {:.3} ms{}",
        ms(0, |r| f64::from(r.p50)),
        ms(1, |r| f64::from(r.p50)),
        ms(0, |r| f64::from(r.p99)),
        ms(1, |r| f64::from(r.p99)),
        ms(0, |r| f64::from(r.p999)),
        ms(1, |r| f64::from(r.p999)),
        reliability(),
    );
    println!(
        "SUMMARY {title}: throughput A/B {:.3} (ratio of medians), {} (median of paired rounds), target >= 0.95 (#17); \
         server CPU per call A/B {:.3} (ratio of medians), {} (median of paired rounds), target <= 1.05 (#17){}",
        rps_a / rps_b,
        paired(Round::rps),
        cpu_a / cpu_b,
        paired(Round::cpu_per_call),
        reliability(),
    );
}

/// The default role: starts both servers, runs the closed-loop series, the fixed-rate series
/// (`--rate`), the h2load series (`--h2load`) and the sequential-latency series (`--latency`,
/// over TCP, then over TLS on a second pair of servers), then stops the servers.
fn orchestrate(args: &Args) {
    let pin = !args.has("--no-pin") && support::taskset_available();
    let connections: usize = args.parsed("--connections", 4);
    let concurrency: usize = args.parsed("--concurrency", 64);
    let seconds: f64 = args.parsed("--seconds", 5.0);
    let warmup: f64 = args.parsed("--warmup", 1.0);
    let rounds: usize = args.parsed("--rounds", 3);
    let rate: f64 = args.parsed("--rate", 0.0);
    print_machine();
    println!(
        "pinning: {}",
        if pin { "servers on CPU 0, load generator on CPU 1 (taskset)" } else { "none (--no-pin or no taskset)" }
    );
    // `--unix`: both servers on Unix sockets in a directory of their own.
    let unix_dir = args.has("--unix").then(|| tempfile::tempdir().expect("temp dir"));
    let servers = start_servers(args, pin, None, unix_dir.as_ref().map(|dir| dir.path()));
    let common =
        ["--connections", &connections.to_string(), "--warmup", &warmup.to_string(), "--seconds", &seconds.to_string()]
            .map(str::to_owned);
    let mut closed = common.to_vec();
    closed.extend(["--concurrency".to_owned(), concurrency.to_string()]);
    let title = format!("closed loop: {connections} connections x {concurrency} calls in flight, {seconds} s");
    if !args.has("--no-closed") {
        series(&title, &servers, pin, &closed, seconds, rounds);
    }
    if rate > 0.0 {
        let mut open = common.to_vec();
        open.extend(["--rate".to_owned(), rate.to_string()]);
        let title = format!("fixed rate: {rate} calls/s over {connections} connections, {seconds} s");
        series(&title, &servers, pin, &open, seconds, rounds);
    }
    if args.has("--h2load") {
        h2load_series(&servers, pin, connections, concurrency, args.parsed("--h2load-requests", 300_000), rounds);
    }
    if let Some(rate) = args.value("--h2load-rate") {
        let rate: u64 = rate.parse().expect("--h2load-rate: calls per second");
        h2load_rate_series(&servers, pin, connections, concurrency, rate, seconds, rounds);
    }
    let latency = Latency { calls: args.parsed("--latency-calls", 20_000), runs: args.parsed("--latency-runs", 5) };
    if args.has("--latency") {
        latency_series(if unix_dir.is_some() { "Unix socket" } else { "TCP" }, &servers, pin, None, latency);
    }
    let [a, b] = servers;
    a.stop();
    b.stop();
    if args.has("--latency") && !args.has("--no-tls") && unix_dir.is_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_tls_identity(dir.path());
        let servers = start_servers(args, pin, Some(dir.path()), None);
        latency_series("TLS", &servers, pin, Some(dir.path()), latency);
        let [a, b] = servers;
        a.stop();
        b.stop();
    }
    println!("\nload average at the end: {}", support::load_average());
}

/// Prints the machine and the load average, and marks the figures unreliable when the machine
/// is not quiet.
fn print_machine() {
    let load = support::load_average();
    println!("machine: {}; load average {load}", support::machine_summary());
    let one_minute: f64 = load.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(f64::MAX);
    if one_minute >= QUIET_LOAD {
        println!(
            "WARNING: 1-minute load average {one_minute} >= {QUIET_LOAD}: the machine is not quiet; \
             the figures below are UNRELIABLE (they measure the neighbours too)"
        );
        let _ = RELIABILITY.set(format!(" [UNRELIABLE: load average {one_minute} at the start]"));
    }
}

/// Starts server A, then server B answering A's reply; both serve through TLS with the
/// certificate in `tls_dir` when given, or on Unix sockets in `unix_dir`.
fn start_servers(args: &Args, pin: bool, tls_dir: Option<&Path>, unix_dir: Option<&Path>) -> [Server; 2] {
    let tls_args = tls_dir
        .map(|dir| ["--tls-dir".to_owned(), dir.display().to_string()])
        .or(unix_dir.map(|dir| ["--unix".to_owned(), dir.display().to_string()]));
    let mut a_args = vec!["--serve".to_owned(), "a".to_owned()];
    if args.has("--big-token") {
        a_args.push("--big-token".to_owned());
    }
    a_args.extend(tls_args.clone().into_iter().flatten());
    let (a, token_hex) = Server::start("A tokend", pin, &a_args);
    let token_hex = token_hex.expect("server A prints the reply it hands out");
    let reply = pb::AccessToken::decode(from_hex(&token_hex).as_slice()).expect("A's reply");
    println!("reply: {} bytes encoded, access token {} bytes", token_hex.len() / 2, reply.access_token.len());
    let mut b_args = vec!["--serve".to_owned(), "b".to_owned(), "--token-hex".to_owned(), token_hex];
    b_args.extend(tls_args.into_iter().flatten());
    let (b, _) = Server::start("B bare", pin, &b_args);
    let transport = match (tls_dir, unix_dir) {
        (Some(_), _) => "TLS",
        (None, Some(_)) => "Unix socket",
        (None, None) => "plain TCP",
    };
    println!("A (tokend) on {}, B (bare tonic, tonic's defaults) on {}, {transport}", a.addr, b.addr);
    [a, b]
}

// ---------------------------------------------------------------------------------------------
// Sequential latency

/// The size of the sequential-latency series.
#[derive(Debug, Clone, Copy)]
struct Latency {
    /// Calls per run.
    calls: usize,
    /// Runs per server.
    runs: usize,
}

/// `latency.runs` runs of `latency.calls` sequential calls on one connection, alternating A and
/// B; prints each run, then p50 / p99 / p99.9 (medians of the runs) and max (worst run) side by
/// side, and whether any call took more than 5 ms.
fn latency_series(transport: &str, servers: &[Server; 2], pin: bool, tls_dir: Option<&Path>, latency: Latency) {
    let Latency { calls, runs } = latency;
    println!("\n== sequential calls on one connection (c1 m1), {transport}: {runs} runs of {calls} calls per server");
    let mut load_args = vec!["--sequential".to_owned(), calls.to_string()];
    load_args.extend(tls_dir.map(|dir| ["--tls-dir".to_owned(), dir.display().to_string()]).into_iter().flatten());
    let mut all: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for n in 1..=runs {
        for (i, server) in servers.iter().enumerate() {
            // The window length only scales req/s and CPU shares, which this series does not report.
            let r = run_round(server, pin, &load_args, 1.0);
            println!(
                "run {n} {:<9} p50 {} ms  p99 {} ms  p99.9 {} ms  max {} ms  calls over 5 ms {}  errors {}",
                r.label,
                support::ms(r.p50),
                support::ms(r.p99),
                support::ms(r.p999),
                support::ms(r.max),
                r.slow,
                r.errors,
            );
            all[i].push(r);
        }
    }
    latency_table(transport, &all);
}

/// The side-by-side table of a sequential-latency series, and its summary line.
fn latency_table(transport: &str, all: &[Vec<Round>; 2]) {
    let med = |i: usize, f: fn(&Round) -> u32| median(all[i].iter().map(|r| f64::from(f(r))).collect()) / 1000.0;
    let worst = |i: usize| f64::from(all[i].iter().map(|r| r.max).max().unwrap_or(0)) / 1000.0;
    let total = |i: usize, f: fn(&Round) -> u64| all[i].iter().map(f).sum::<u64>();
    println!("{:<28} {:>14} {:>14}", format!("latency, {transport}"), "A tokend", "B bare tonic");
    for (name, f) in
        [("p50 (median of runs)", (|r| r.p50) as fn(&Round) -> u32), ("p99", |r| r.p99), ("p99.9", |r| r.p999)]
    {
        println!("{name:<28} {:>11.3} ms {:>11.3} ms", med(0, f), med(1, f));
    }
    println!("{:<28} {:>11.3} ms {:>11.3} ms", "max (worst run)", worst(0), worst(1));
    let counted = |i: usize| format!("{} of {}", total(i, |r| r.slow), total(i, |r| r.calls));
    println!("{:<28} {:>14} {:>14}", "calls over 5 ms", counted(0), counted(1));
    let errors = (total(0, |r| r.errors), total(1, |r| r.errors));
    let verdict = |i: usize| if total(i, |r| r.slow) == 0 { "none" } else { "SOME" };
    println!(
        "SUMMARY latency {transport} c1 m1: p50 A {:.3} ms B {:.3} ms; p99 A {:.3} ms B {:.3} ms; p99.9 A {:.3} ms B {:.3} ms; \
         max A {:.3} ms B {:.3} ms; calls over 5 ms: A {} B {} (target: none); errors A {} B {}{}",
        med(0, |r| r.p50),
        med(1, |r| r.p50),
        med(0, |r| r.p99),
        med(1, |r| r.p99),
        med(0, |r| r.p999),
        med(1, |r| r.p999),
        worst(0),
        worst(1),
        verdict(0),
        verdict(1),
        errors.0,
        errors.1,
        reliability(),
    );
}

// ---------------------------------------------------------------------------------------------
// h2load

/// The gRPC request body h2load sends: a length-prefixed (uncompressed) `GetAccessTokenRequest`.
fn grpc_body() -> Vec<u8> {
    let message = support::get_token(PROFILE, None).encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).expect("small message").to_be_bytes());
    body.extend_from_slice(&message);
    body
}

/// The h2load command line against `addr` (without the taskset prefix).
fn h2load_command(
    addr: SocketAddr,
    body: &std::path::Path,
    requests: u64,
    connections: usize,
    streams: usize,
) -> Vec<String> {
    [
        "h2load",
        "-n",
        &requests.to_string(),
        "-c",
        &connections.to_string(),
        "-m",
        &streams.to_string(),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-H",
        &format!("authorization: Bearer {CONSUMER}"),
        "-d",
        &body.display().to_string(),
        &format!("http://{addr}/tokend.v1.Tokens/GetAccessToken"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Rounds of h2load (pinned to CPU 1) against A and B: req/s, mean latency, reply bytes per
/// request (equal for A and B when A answered every call with the token), server CPU per call.
fn h2load_series(servers: &[Server; 2], pin: bool, connections: usize, streams: usize, requests: u64, rounds: usize) {
    if !h2load_available() {
        println!("\n== h2load: not installed (apt-get install nghttp2-client); skipped");
        return;
    }
    if matches!(servers[0].addr, Target::Unix(_)) {
        println!("\n== h2load: no Unix socket support; skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let body = dir.path().join("get-access-token.grpc");
    std::fs::write(&body, grpc_body()).expect("write h2load body");
    println!("\n== h2load: {requests} requests, {connections} connections x {streams} streams");
    println!("   body: printf '{}' | xxd -r -p > get-access-token.grpc", to_hex(&grpc_body()));
    let mut ratios = (Vec::new(), Vec::new());
    for n in 1..=rounds {
        let mut figures = Vec::new();
        for server in servers {
            let Target::Tcp(addr) = server.addr else { return };
            let command = h2load_command(addr, &body, requests, connections, streams);
            if n == 1 {
                println!("   {}: {}{}", server.label, if pin { "taskset -c 1 " } else { "" }, shell_words(&command));
            }
            let (rps, per_call) = h2load_round(server, pin, &command, requests, n);
            figures.push((rps, per_call));
        }
        ratios.0.push(figures[0].0 / figures[1].0);
        ratios.1.push(figures[0].1 / figures[1].1);
        println!("round {n} ratio A/B: throughput {:.3}, server CPU per call {:.3}", ratios.0[n - 1], ratios.1[n - 1]);
    }
    let range = |r: &[f64]| {
        let (lo, hi) = r.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        format!("{lo:.3}-{hi:.3}")
    };
    let ranges = (range(&ratios.0), range(&ratios.1));
    println!(
        "SUMMARY h2load: throughput A/B {:.3} (rounds {}), server CPU per call A/B {:.3} (rounds {}) (medians of \
         paired rounds; targets >= 0.95 and <= 1.05, #17){}",
        median(ratios.0),
        ranges.0,
        median(ratios.1),
        ranges.1,
        reliability(),
    );
}

/// One h2load run against `server`: prints and returns (req/s, server CPU µs per call).
fn h2load_round(server: &Server, pin: bool, command: &[String], requests: u64, n: usize) -> (f64, f64) {
    let (before, started) = (support::cpu_micros(server.pid()), std::time::Instant::now());
    let output = pinned(pin, command).output().expect("run h2load");
    let (cpu, wall) = (support::cpu_micros(server.pid()) - before, started.elapsed());
    let text = String::from_utf8_lossy(&output.stdout);
    let (rps, mean, data_bytes, succeeded) = parse_h2load(&text);
    let per_call = cpu as f64 / requests as f64;
    println!(
        "round {n} {:<9} {rps:>9.0} req/s  mean {mean}  succeeded {succeeded}  reply data {:.1} B/request | server CPU {per_call:.2} µs/call ({:.0}% of a core)",
        server.label,
        data_bytes / requests as f64,
        cpu as f64 / (wall.as_secs_f64() * 1e4),
    );
    (rps, per_call)
}

/// `command`, prefixed with `taskset -c 1` when pinning.
/// Whether h2load (Debian `nghttp2-client`) is installed.
fn h2load_available() -> bool {
    Command::new("h2load").arg("--version").output().is_ok()
}

fn pinned(pin: bool, command: &[String]) -> Command {
    let mut c = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(&command[0]);
        c
    } else {
        Command::new(&command[0])
    };
    c.args(&command[1..]);
    c
}

fn shell_words(command: &[String]) -> String {
    command.iter().map(|w| if w.contains(' ') { format!("'{w}'") } else { w.clone() }).collect::<Vec<_>>().join(" ")
}

/// (req/s, mean request time, reply DATA bytes in total, succeeded requests) from h2load's report.
fn parse_h2load(text: &str) -> (f64, String, f64, u64) {
    let mut figures = (0.0, String::new(), 0.0, 0);
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            figures.0 = rest.split(", ").nth(1).and_then(|s| s.trim_end_matches(" req/s").parse().ok()).unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            figures.3 =
                rest.split(", ").find_map(|s| s.strip_suffix(" succeeded")).and_then(|s| s.parse().ok()).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("traffic: ") {
            // "2.29MB (2400530) total, 392.97KB (402400) headers (space savings 93.42%), 1.53MB (1600000) data"
            figures.2 = rest
                .split(", ")
                .find_map(|s| s.strip_suffix(") data"))
                .and_then(|s| s.rsplit('(').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            figures.1 = rest.split_whitespace().nth(2).unwrap_or("?").to_owned();
        }
    }
    figures
}

/// h2load at a fixed total rate (`--rps` per connection) for `seconds`, A and B alternating:
/// p50 / p99 / p99.9 of every request from h2load's per-request log, and the server CPU per call.
fn h2load_rate_series(
    servers: &[Server; 2],
    pin: bool,
    connections: usize,
    streams: usize,
    rate: u64,
    seconds: f64,
    rounds: usize,
) {
    if !h2load_available() || matches!(servers[0].addr, Target::Unix(_)) {
        println!("\n== h2load at a fixed rate: needs h2load and TCP; skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let body = dir.path().join("get-access-token.grpc");
    std::fs::write(&body, grpc_body()).expect("write h2load body");
    let requests = (rate as f64 * seconds) as u64;
    let per_connection = rate.div_ceil(connections as u64);
    println!(
        "\n== h2load at {rate} calls/s ({per_connection}/s on each of {connections} connections), {requests} calls per round"
    );
    let mut p99s: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for n in 1..=rounds {
        for (i, server) in servers.iter().enumerate() {
            let Target::Tcp(addr) = server.addr else { return };
            let log = dir.path().join(format!("requests-{n}-{i}.tsv"));
            let mut command = h2load_command(addr, &body, requests, connections, streams);
            let url = command.pop().expect("the URL is last");
            command.extend([format!("--rps={per_connection}"), format!("--log-file={}", log.display()), url]);
            let before = support::cpu_micros(server.pid());
            let output = pinned(pin, &command).output().expect("run h2load");
            let cpu = support::cpu_micros(server.pid()) - before;
            let (rps, _, _, succeeded) = parse_h2load(&String::from_utf8_lossy(&output.stdout));
            let mut micros: Vec<u64> = std::fs::read_to_string(&log)
                .expect("h2load request log")
                .lines()
                .filter_map(|line| line.split('\t').nth(2)?.parse().ok())
                .collect();
            micros.sort_unstable();
            let at = |q: f64| {
                micros
                    .get(((micros.len() as f64 * q) as usize).min(micros.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or(0) as f64
                    / 1000.0
            };
            p99s[i].push(at(0.99));
            println!(
                "round {n} {:<9} {rps:>8.0} req/s  succeeded {succeeded}  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms | server CPU {:.2} µs/call",
                server.label,
                at(0.5),
                at(0.99),
                at(0.999),
                cpu as f64 / requests as f64,
            );
        }
    }
    let ratios: Vec<f64> = p99s[0].iter().zip(&p99s[1]).map(|(a, b)| a / b).collect();
    println!(
        "SUMMARY h2load at {rate} calls/s: p99 A {:.3} ms, B {:.3} ms (medians); p99 A/B {:.3} (median of paired rounds; target <= 1.1, #17){}",
        median(p99s[0].clone()),
        median(p99s[1].clone()),
        median(ratios),
        reliability(),
    );
}
