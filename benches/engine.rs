//! The refresh engine and the daemon's footprint, at scale.
//!
//! 1. Single flight: `--callers` (1000) concurrent `GetAccessToken` calls on a token that needs a
//!    refresh (a 30 s token, `min_valid_for` 60 s) → exactly one provider call; the time until
//!    every caller has the new token.
//! 2. `--connections` (100000) connections seeded straight into the store (sealed 1 KiB access
//!    tokens, refresh tokens `rt-<i>-0`), against a fast local provider (1 KiB tokens, rotation):
//!    - a paced group (`--paced` fraction, 0.2) falls due at `--paced-rate` (1000/s): the
//!      scheduler lag (provider arrival minus seeded `next_refresh_at`), p50/p99/max;
//!    - the rest falls due at one instant: durable refreshes per second (a rotated token set is
//!      flushed before it is shown; completion is the core's `Refreshed` event);
//!    - every connection refreshed exactly once, and none after its seeded expiry
//!      (`next_refresh_at` + `--margin-secs`, 120).
//! 3. Footprint: RSS (`VmRSS`) of a daemon process idle (empty store) and with the connections
//!    loaded, start-up time with them stored, store size on disk (`du`).
//!
//! The daemon runs in a child process (`--daemon <dir>`: this binary re-executed), so its RSS is
//! its own; the fast provider and the seeding run in this process. The seeded times are on a
//! benchmark clock (`--clock-offset-ms` from the system clock, given to the daemon as its clock),
//! set so that the first refresh falls due `--lead-secs` (5) after the daemon is launched,
//! however long seeding took.
//!
//! Other flags: `--cache-mb` (sled cache, 16), `--log-level` (the daemon's, warn),
//! `--max-concurrent` (refreshes at once; the daemon's default), `--provider-rate`/
//! `--provider-burst` (the daemon's per-provider rate
//! limit; its defaults when absent), `--no-rotate` (replies keep the refresh token, so no flush
//! before hand-out), `--data-dir` (where the temporary data directory goes), `--keep-data`,
//! `--timeout-secs` (300), `--skip-single-flight`, `--skip-engine`, `--postgres URL` (the engine
//! run on the PostgreSQL store, in a new schema of that database, one replica: seeding goes
//! through `PgStore`, the daemon runs with `store.backend = "postgres"`, and the size reported is
//! the tables' instead of the data directory's).
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The integration tests' fake provider; a benchmark uses a few of its methods.
#[allow(dead_code)]
#[path = "../tests/it/support/fake_provider.rs"]
mod fake_provider;
mod support;

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokend::api::pb;
use tokend::clock::{Clock, RandomJitter, UnixMillis};
use tokend::crypto::{KeyRing, Purpose};
use tokend::daemon::{Daemon, StartOptions};
use tokend::store::{
    ConnectionRecord, ConnectionWrite, PgOptions, PgStore, ProfileRecord, SledOptions, SledStore, Store,
};

use support::fast_provider::{self, FastProvider};
use support::{ADMIN, Args, CONSUMER};

fn main() {
    let args = Args::from_env_or_smoke(&[
        "--connections",
        "300",
        "--callers",
        "50",
        "--provider-rate",
        "1000000",
        "--provider-burst",
        "1000",
    ]);
    match args.value("--daemon") {
        Some(dir) => daemon_child(&args, Path::new(dir)),
        None => orchestrate(&args),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Single flight

/// `callers` concurrent `GetAccessToken` calls (over 10 connections) on a profile whose 30 s
/// token is 20 s old, too old for `min_valid_for` 60 s (which counts at most half the token's
/// lifetime, 15 s); the provider now issues one-hour tokens, so one refresh satisfies everyone.
async fn single_flight(callers: usize) {
    let provider = fake_provider::FakeProvider::start().await;
    provider.set_access_token_lifetime(30);
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = tokend::clock::ManualClock::new(tokend::clock::SystemClock.now_ms());
    let options = StartOptions { clock: Arc::new(clock.clone()), ..StartOptions::default() };
    let daemon = Daemon::start(support::bench_config(dir.path()), options).await.expect("daemon");
    let endpoints = support::ProviderEndpoints {
        authorization: provider.authorization_endpoint(),
        token: provider.token_endpoint(),
        revocation: provider.revocation_endpoint(),
    };
    let mut apps = support::apps_client(daemon.grpc_addr, ADMIN).await;
    support::create_and_connect(&mut apps, "mail-single", &endpoints).await;
    clock.advance_ms(20_000);
    provider.set_access_token_lifetime(3600);
    let refreshes_before = provider.refresh_requests();
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(support::tokens_client(daemon.grpc_addr, CONSUMER).await);
    }
    let replies = call_together(&clients, callers).await;
    let calls = provider.refresh_requests() - refreshes_before;
    report_single_flight(callers, calls, replies);
    daemon.stop().await;
}

/// What one caller got, and when (time since all were released).
type Reply = (Duration, Result<pb::AccessToken, tonic::Status>);

/// `callers` tasks over `clients`, released together by a barrier, each asking once for a token
/// valid for 60 s.
async fn call_together(clients: &[support::TokensApi], callers: usize) -> Vec<Reply> {
    let go = Arc::new(tokio::sync::Barrier::new(callers + 1));
    let mut tasks = Vec::new();
    for i in 0..callers {
        let (mut client, go) = (clients[i % clients.len()].clone(), Arc::clone(&go));
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            let reply = client.get_access_token(support::get_token("mail-single", Some(60))).await;
            (Instant::now(), reply.map(|r| r.into_inner()))
        }));
    }
    go.wait().await;
    let released = Instant::now();
    let mut replies = Vec::new();
    for task in tasks {
        let (at, reply) = task.await.expect("caller task");
        replies.push((at.saturating_duration_since(released), reply));
    }
    replies
}

/// Prints the single-flight figures.
fn report_single_flight(callers: usize, calls: usize, replies: Vec<Reply>) {
    let mut done = Vec::new();
    let (mut tokens, mut versions, mut errors) = (HashSet::new(), HashSet::new(), 0);
    for (elapsed, reply) in replies {
        match reply {
            Ok(token) => {
                done.push(elapsed.as_micros() as u32);
                tokens.insert(token.access_token);
                versions.insert(token.token_version);
            }
            Err(status) => {
                errors += 1;
                eprintln!("single flight: caller failed: {status:?}");
            }
        }
    }
    done.sort_unstable();
    println!(
        "SINGLE_FLIGHT callers {callers}: provider refresh calls {calls} (target 1), distinct tokens {}, \
         token versions {versions:?}, errors {errors}; all callers had the new token after {} ms \
         (p50 {} ms, p99 {} ms)",
        tokens.len(),
        support::ms(support::percentile(&done, 100.0)),
        support::ms(support::percentile(&done, 50.0)),
        support::ms(support::percentile(&done, 99.0)),
    );
}

// ---------------------------------------------------------------------------------------------
// The daemon child

/// The benchmark clock: the system clock shifted by a fixed offset.
struct OffsetClock(i64);

impl Clock for OffsetClock {
    fn now_ms(&self) -> UnixMillis {
        fast_provider::now_ms(self.0)
    }
}

/// The `--daemon <dir>` role: starts the daemon on `dir` and prints
/// `READY <start µs> <first call µs> <profiles> <rss KiB>`, then `R <ms> <name>` for every
/// `Refreshed` event, `E <ms> <name> <kind> <status>` for other events, `L <n>` when events were
/// missed; answers `rss` on stdin with `RSS <KiB>`; stops when stdin closes, then prints
/// `FLUSHES <flushes> <writers who waited>` and `STOPPED`.
fn daemon_child(args: &Args, dir: &Path) {
    let offset_ms: i64 = args.parsed("--clock-offset-ms", 0);
    let mut config = support::bench_config(dir);
    config.store.cache_capacity_mb = args.parsed("--cache-mb", 16);
    config.refresh.max_concurrent = args.parsed("--max-concurrent", config.refresh.max_concurrent);
    config.refresh.provider_rate_per_sec = args.parsed("--provider-rate", config.refresh.provider_rate_per_sec);
    config.refresh.provider_burst = args.parsed("--provider-burst", config.refresh.provider_burst);
    if let (Some(url), Some(schema)) = (args.value("--postgres"), args.value("--pg-schema")) {
        config.store.backend = tokend::config::StoreBackend::Postgres;
        config.store.postgres.url = url.to_owned();
        config.store.postgres.schema = schema.to_owned();
    }
    let probe = args.value("--probe").map(str::to_owned);
    // The daemon's own log subscriber, as `tokend` installs it, at `--log-level` (warn: at info
    // it writes a line per refresh to stderr, which this benchmark inherits). Without a
    // subscriber, tracing's `log` feature (on in this build through sqlx) would offer every span
    // of the stack to the `log` crate, a cost no daemon pays.
    tokend::telemetry::init(tokend::config::LogFormat::Json, args.value("--log-level").unwrap_or("warn"));
    support::daemon_runtime().block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let clock: Arc<dyn Clock> = Arc::new(OffsetClock(offset_ms));
        let options = StartOptions { clock: Arc::clone(&clock), jitter: Arc::new(RandomJitter), env_key: None };
        let started = Instant::now();
        let daemon = Daemon::start(config, options).await.expect("daemon starts");
        let start_us = started.elapsed().as_micros();
        if let Some(name) = &probe {
            let mut client = support::tokens_client(daemon.grpc_addr, CONSUMER).await;
            client.get_access_token(support::get_token(name, None)).await.expect("first GetAccessToken");
        }
        let first_us = started.elapsed().as_micros();
        let profiles: usize = daemon.engine().snapshot(0).status_counts.values().sum();
        println!("READY {start_us} {first_us} {profiles} {}", support::rss_kib(std::process::id()));
        tokio::spawn(print_events(daemon.engine().subscribe(), clock));
        let mut commands = stdin_lines();
        while let Some(command) = commands.recv().await {
            if command.trim() == "rss" {
                println!("RSS {}", support::rss_kib(std::process::id()));
            }
        }
        let metrics = daemon.engine().metrics();
        println!("FLUSHES {} {}", metrics.store_flushes.get(), metrics.store_flush_waits.get());
        daemon.stop().await;
        println!("STOPPED");
    });
}

/// Prints every profile change (see [`daemon_child`]).
async fn print_events(
    mut events: tokio::sync::broadcast::Receiver<tokend::engine::ProfileChange>,
    clock: Arc<dyn Clock>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(change) if change.kind == pb::profile_event::Kind::Refreshed => {
                println!("R {} {}", clock.now_ms(), change.name);
            }
            Ok(change) => println!(
                "E {} {} {} {}",
                clock.now_ms(),
                change.name,
                change.kind.as_str_name(),
                change.status.as_str_name()
            ),
            Err(RecvError::Lagged(n)) => println!("L {n}"),
            Err(RecvError::Closed) => return,
        }
    }
}

/// Lines of stdin, read on a thread; the channel closes at end of file.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

// ---------------------------------------------------------------------------------------------
// The daemon child, seen from the orchestrator

/// What the daemon child's `READY` line said, and when it came.
#[derive(Debug, Clone, Copy)]
struct Ready {
    /// `Daemon::start` took this long (µs).
    start_us: u64,
    /// The first `GetAccessToken` was answered this long after the `Daemon::start` call (µs).
    first_call_us: u64,
    /// Profiles in the token cache.
    profiles: u64,
    /// RSS right after start (KiB).
    rss_kib: u64,
    /// From launching the process to reading `READY`.
    launch_to_ready: Duration,
}

/// Everything the daemon child reported.
#[derive(Debug, Default)]
struct ChildLog {
    ready: Option<Ready>,
    /// (benchmark-clock ms, connection index) of every `Refreshed` event.
    refreshed: Vec<(i64, u32)>,
    /// Other events, as printed.
    other_events: Vec<String>,
    /// Events the child's subscription missed.
    lagged: u64,
    /// Answers to `rss`.
    rss: Vec<u64>,
    /// (flushes run, writers who waited for one) over the daemon's life.
    flushes: (u64, u64),
}

/// A daemon child process.
struct DaemonProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    log: Arc<Mutex<ChildLog>>,
    reader: std::thread::JoinHandle<()>,
}

impl DaemonProcess {
    /// Launches `--daemon <dir>` with `extra` flags; a thread collects what it prints.
    fn launch(dir: &Path, extra: &[String]) -> Self {
        let mut args = vec!["--daemon".to_owned(), dir.display().to_string()];
        args.extend_from_slice(extra);
        let launched = Instant::now();
        let mut child = support::spawn_self(None, &args);
        let stdout = child.stdout.take().expect("child stdout");
        let log = Arc::new(Mutex::new(ChildLog::default()));
        let reader = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || read_child(BufReader::new(stdout), &log, launched))
        };
        let stdin = child.stdin.take();
        Self { child, stdin, log, reader }
    }

    /// Polls the log every 10 ms until `pick` finds something; panics after `limit`.
    fn wait_for<T>(&self, limit: Duration, what: &str, mut pick: impl FnMut(&ChildLog) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = pick(&self.log.lock().expect("log lock")) {
                return found;
            }
            assert!(Instant::now() < deadline, "daemon child: no {what} within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ready(&self) -> Ready {
        self.wait_for(Duration::from_secs(120), "READY", |log| log.ready)
    }

    /// The child's current RSS (KiB).
    fn rss(&mut self) -> u64 {
        let asked = self.log.lock().expect("log lock").rss.len();
        writeln!(self.stdin.as_mut().expect("child stdin"), "rss").expect("ask for rss");
        self.wait_for(Duration::from_secs(10), "RSS", |log| log.rss.get(asked).copied())
    }

    /// Distinct connections refreshed so far.
    fn refreshed(&self) -> usize {
        let log = self.log.lock().expect("log lock");
        log.refreshed.iter().map(|&(_, i)| i).collect::<HashSet<_>>().len()
    }

    /// Closes the child's stdin (the daemon stops gracefully) and returns what it reported.
    fn stop(mut self) -> ChildLog {
        drop(self.stdin.take());
        assert!(self.child.wait().expect("daemon child").success(), "daemon child failed");
        self.reader.join().expect("reader thread");
        std::mem::take(&mut *self.log.lock().expect("log lock"))
    }
}

/// Parses the child's lines into `log`.
fn read_child(stdout: BufReader<std::process::ChildStdout>, log: &Mutex<ChildLog>, launched: Instant) {
    for line in stdout.lines() {
        let Ok(line) = line else { return };
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
        let mut log = log.lock().expect("log lock");
        match words.first().copied() {
            Some("R") => log.refreshed.push((number(1) as i64, index_of(words.get(2).unwrap_or(&"")))),
            Some("E") => log.other_events.push(line.clone()),
            Some("L") => log.lagged += number(1),
            Some("RSS") => log.rss.push(number(1)),
            Some("FLUSHES") => log.flushes = (number(1), number(2)),
            Some("READY") => {
                log.ready = Some(Ready {
                    start_us: number(1),
                    first_call_us: number(2),
                    profiles: number(3),
                    rss_kib: number(4),
                    launch_to_ready: launched.elapsed(),
                })
            }
            Some("STOPPED") => {}
            _ => println!("daemon: {line}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeding

/// The name of connection `i`.
fn profile_name(i: u32) -> String {
    format!("bench-{i:06}")
}

/// The index in a name made by [`profile_name`] (`u32::MAX` for another name).
fn index_of(name: &str) -> u32 {
    name.strip_prefix("bench-").and_then(|n| n.parse().ok()).unwrap_or(u32::MAX)
}

/// When each seeded connection falls due and expires, on the benchmark clock.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Connections.
    n: u32,
    /// The first `paced` fall due one after another at `paced_rate` per second from `epoch_ms`.
    paced: u32,
    paced_rate: f64,
    epoch_ms: i64,
    /// The others all fall due at this time.
    burst_ms: i64,
    /// A token expires this long after it falls due.
    margin_ms: i64,
}

impl Plan {
    fn new(args: &Args, epoch_ms: i64) -> Self {
        let n: u32 = args.parsed("--connections", 100_000);
        let paced = (f64::from(n) * args.parsed("--paced", 0.2)).round() as u32;
        let paced_rate: f64 = args.parsed("--paced-rate", 1000.0);
        let paced_ms = (f64::from(paced) * 1000.0 / paced_rate) as i64;
        let margin_ms = args.parsed::<i64>("--margin-secs", 120) * 1000;
        Self { n, paced, paced_rate, epoch_ms, burst_ms: epoch_ms + paced_ms + 3000, margin_ms }
    }

    fn due(&self, i: u32) -> i64 {
        if i < self.paced { self.epoch_ms + (f64::from(i) * 1000.0 / self.paced_rate) as i64 } else { self.burst_ms }
    }

    fn expires(&self, i: u32) -> i64 {
        self.due(i) + self.margin_ms
    }
}

/// The PostgreSQL database and schema of a `--postgres` run.
#[derive(Clone)]
struct PgTarget {
    url: String,
    schema: String,
}

impl PgTarget {
    fn options(&self) -> PgOptions {
        let mut options = PgOptions::new(self.url.clone());
        options.schema = self.schema.clone();
        options.pool_size = 8;
        options
    }

    fn flags(&self) -> [String; 4] {
        ["--postgres".into(), self.url.clone(), "--pg-schema".into(), self.schema.clone()]
    }
}

/// Writes the plan's profiles and connections into the stopped daemon's store at `dir` (or the
/// PostgreSQL schema), sealed with its key, on two threads. Returns how long it took.
fn seed(dir: &Path, plan: &Plan, token_endpoint: &str, pg: Option<&PgTarget>) -> Duration {
    let started = Instant::now();
    let config = support::bench_config(dir);
    let store: Box<dyn Store> = match pg {
        Some(pg) => Box::new(PgStore::open(&pg.options()).expect("open the PostgreSQL store")),
        None => {
            let options = SledOptions { cache_capacity: 64 * 1024 * 1024, flush_every_ms: 1000 };
            Box::new(SledStore::open(&dir.join("store"), &options).expect("open the store"))
        }
    };
    let key = tokend::crypto::read_key_file(&config.key_file()).expect("the daemon's key file");
    let keys = KeyRing::from_keys(&[key]).expect("key ring");
    let filler = fast_provider::filler();
    std::thread::scope(|scope| {
        for thread in 0..2 {
            let (store, keys, filler) = (store.as_ref(), &keys, &filler);
            scope.spawn(move || {
                for i in (thread..plan.n).step_by(2) {
                    seed_one(store, keys, plan, i, token_endpoint, filler);
                }
            });
        }
    });
    store.flush().expect("flush the seeded store");
    if pg.is_some() {
        let bytes = store.size_on_disk().unwrap_or(0);
        println!("PostgreSQL tables: {:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
    }
    started.elapsed()
}

/// One profile and its connected connection (version 1, due per the plan).
fn seed_one(store: &dyn Store, keys: &KeyRing, plan: &Plan, i: u32, token_endpoint: &str, filler: &str) {
    let name = profile_name(i);
    let issued = plan.expires(i) - 3_600_000;
    let profile = ProfileRecord {
        name: name.clone(),
        description: format!("seeded connection {i}"),
        provider: "custom".into(),
        grant: pb::Grant::AuthorizationCode as i32,
        client_id: "bench-client".into(),
        client_secret_sealed: keys.seal(Purpose::ClientSecret, &name, b"bench-secret").unwrap(),
        scopes: vec!["files.read".into()],
        token_endpoint: token_endpoint.to_owned(),
        create_time_ms: issued,
        update_time_ms: issued,
        ..Default::default()
    };
    store.insert_profile(&profile, &ConnectionRecord::default()).expect("insert profile");
    let access = fast_provider::access_token(filler, i, 0);
    let record = ConnectionRecord {
        status: pb::Status::Connected as i32,
        access_token_sealed: keys.seal(Purpose::AccessToken, &name, access.as_bytes()).unwrap(),
        refresh_token_sealed: keys
            .seal(Purpose::RefreshToken, &name, fast_provider::refresh_token(i, 0).as_bytes())
            .unwrap(),
        token_type: "Bearer".into(),
        scopes: vec!["files.read".into()],
        expires_at_ms: plan.expires(i),
        last_refreshed_at_ms: issued,
        next_refresh_at_ms: plan.due(i),
        connected_at_ms: issued,
        token_version: 1,
        ..Default::default()
    };
    let write = ConnectionWrite { name, expected_version: 0, record, put_consent: None, remove_consent: None };
    store.write_connection(write).expect("write connection");
}

/// `du -sk` of `dir`, in KiB.
fn du_kib(dir: &Path) -> u64 {
    let output = std::process::Command::new("du").arg("-sk").arg(dir).output().expect("du");
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().and_then(|k| k.parse().ok()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Orchestration and figures

/// Runs the single-flight check and the engine-and-footprint run.
fn orchestrate(args: &Args) {
    println!("machine: {}; load average {}", support::machine_summary(), support::load_average());
    let runtime = support::runtime();
    if !args.has("--skip-single-flight") {
        runtime.block_on(single_flight(args.parsed("--callers", 1000)));
    }
    if !args.has("--skip-engine") {
        engine(args, &runtime);
    }
}

/// The flags every daemon child gets.
fn daemon_flags(args: &Args) -> Vec<String> {
    let mut flags = vec!["--cache-mb".to_owned(), args.parsed::<u64>("--cache-mb", 16).to_string()];
    for flag in ["--max-concurrent", "--provider-rate", "--provider-burst", "--log-level"] {
        if let Some(value) = args.value(flag) {
            flags.extend([flag.to_owned(), value.to_owned()]);
        }
    }
    flags
}

/// Seeds, runs the refresh wave, measures the footprint, restarts once for the start-up time.
fn engine(args: &Args, runtime: &tokio::runtime::Runtime) {
    let provider = runtime.block_on(FastProvider::start(0));
    provider.set_rotate(!args.has("--no-rotate"));
    let base = args.value("--data-dir").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let temp = tempfile::tempdir_in(base).expect("temp dir");
    let data = temp.path().join("data");
    let rotation = if args.has("--no-rotate") {
        "kept (--no-rotate: no flush before hand-out)"
    } else {
        "rotated (flushed before hand-out)"
    };
    println!("engine run: refresh tokens {rotation}; load average {}", support::load_average());
    let pg = args
        .value("--postgres")
        .map(|url| PgTarget { url: url.to_owned(), schema: format!("bench_{:016x}", rand::random::<u64>()) });
    let mut flags = daemon_flags(args);
    if let Some(pg) = &pg {
        println!("store: PostgreSQL, schema {} (one replica)", pg.schema);
        flags.extend(pg.flags());
    }
    // Idle: the first start on an empty directory also writes the key and the canary.
    let mut idle = DaemonProcess::launch(&data, &flags);
    let idle_ready = idle.ready();
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = idle.rss();
    idle.stop();
    let plan = Plan::new(args, fast_provider::now_ms(0));
    let du_seeded = seed_and_report(&data, &plan, &provider.token_endpoint(), pg.as_ref());
    let lead_ms = args.parsed::<i64>("--lead-secs", 5) * 1000;
    let offset = plan.epoch_ms - (fast_provider::now_ms(0) + lead_ms);
    provider.set_offset(offset);
    flags.extend(["--clock-offset-ms".to_owned(), offset.to_string(), "--probe".to_owned(), profile_name(0)]);
    let wave = run_wave(&data, &flags, &plan, &provider, offset, args.parsed("--timeout-secs", 300));
    let restarted = DaemonProcess::launch(&data, &flags);
    let restart = restarted.ready();
    restarted.stop();
    let du_after = du_kib(&data);
    let footprint = Footprint { idle: idle_ready, idle_rss, wave, restart, du_seeded, du_after };
    footprint.print(plan.n);
    println!("load average at the end: {}", support::load_average());
    if args.has("--keep-data") {
        println!("data directory kept: {}", temp.keep().join("data").display());
    }
}

/// Seeds the store and prints how long it took; returns the data directory's size (KiB).
fn seed_and_report(data: &Path, plan: &Plan, token_endpoint: &str, pg: Option<&PgTarget>) -> u64 {
    let seeded_in = seed(data, plan, token_endpoint, pg);
    let du_seeded = du_kib(data);
    println!(
        "SEEDED {} connections in {:.1} s ({:.0}/s); data directory {:.1} MiB (du)",
        plan.n,
        seeded_in.as_secs_f64(),
        f64::from(plan.n) / seeded_in.as_secs_f64(),
        du_seeded as f64 / 1024.0
    );
    du_seeded
}

/// What the daemon looked like around the refresh wave.
struct Wave {
    /// Its `READY` line.
    loaded: Ready,
    /// RSS 1 s after ready, before the first refresh (KiB).
    loaded_rss: u64,
    /// RSS after the wave (KiB).
    wave_rss: u64,
}

/// Starts the daemon on the seeded store, waits for every connection's refresh, prints the
/// engine's figures, stops it.
fn run_wave(data: &Path, flags: &[String], plan: &Plan, provider: &FastProvider, offset: i64, timeout: u64) -> Wave {
    let mut daemon = DaemonProcess::launch(data, flags);
    let loaded = daemon.ready();
    if fast_provider::now_ms(offset) + 1000 < plan.epoch_ms {
        std::thread::sleep(Duration::from_secs(1));
    } else {
        println!("note: the daemon was ready less than 1 s before the first refresh fell due");
    }
    let loaded_rss = daemon.rss();
    let burst_cpu = wait_for_wave(&daemon, plan, provider, offset, timeout);
    std::thread::sleep(Duration::from_secs(2));
    let wave_rss = daemon.rss();
    let log = daemon.stop();
    report_engine(plan, &provider.arrivals(), &log);
    let burst = f64::from(plan.n - plan.paced).max(1.0);
    println!(
        "ENGINE CPU during the burst ({} ms): daemon {:.0} µs per refresh ({:.0}% of one core), fast provider \
         and this process {:.0} µs per refresh",
        burst_cpu.wall_ms,
        burst_cpu.daemon_us as f64 / burst,
        burst_cpu.daemon_us as f64 / (burst_cpu.wall_ms.max(1) as f64 * 10.0),
        burst_cpu.provider_us as f64 / burst
    );
    let (flushes, waits) = log.flushes;
    println!(
        "ENGINE flushes over the run: {flushes} for {waits} durable writes ({:.1} writes per flush)",
        waits as f64 / flushes.max(1) as f64
    );
    Wave { loaded, loaded_rss, wave_rss }
}

/// CPU time spent while the burst group was being refreshed.
#[derive(Debug, Default, Clone, Copy)]
struct BurstCpu {
    /// The daemon process (µs).
    daemon_us: u64,
    /// This process: the fast provider and the polling loop (µs).
    provider_us: u64,
    /// Wall time from the burst's due time to the last durable refresh (ms).
    wall_ms: u64,
}

/// Waits until every connection has a durable refresh (or `timeout_secs`), printing progress;
/// samples both processes' CPU time when the burst falls due and when the wave is done.
fn wait_for_wave(
    daemon: &DaemonProcess,
    plan: &Plan,
    provider: &FastProvider,
    offset: i64,
    timeout_secs: u64,
) -> BurstCpu {
    let cpu = || (support::cpu_micros(daemon.child.id()), support::cpu_micros(std::process::id()));
    let (started, mut last_print) = (Instant::now(), Instant::now());
    let mut at_burst: Option<((u64, u64), Instant)> = None;
    loop {
        let done = daemon.refreshed();
        if at_burst.is_none() && fast_provider::now_ms(offset) >= plan.burst_ms {
            at_burst = Some((cpu(), Instant::now()));
        }
        if done >= plan.n as usize || started.elapsed() > Duration::from_secs(timeout_secs) {
            if done < plan.n as usize {
                println!("TIMEOUT after {timeout_secs} s: {done} of {} connections refreshed", plan.n);
            }
            let ((daemon_0, provider_0), at) = at_burst.unwrap_or((cpu(), Instant::now()));
            let (daemon_1, provider_1) = cpu();
            let wall_ms = at.elapsed().as_millis() as u64;
            return BurstCpu { daemon_us: daemon_1 - daemon_0, provider_us: provider_1 - provider_0, wall_ms };
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            println!(
                "  t = {:+.1} s from the first due time: provider saw {} refreshes, {done} durable",
                (fast_provider::now_ms(offset) - plan.epoch_ms) as f64 / 1000.0,
                provider.count(),
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// For each connection, the first time in `times` (index, ms) and how many times came after it.
fn first_times(n: u32, times: impl Iterator<Item = (u32, i64)>) -> (Vec<Option<i64>>, usize) {
    let mut first = vec![None; n as usize];
    let mut repeats = 0;
    for (i, at) in times {
        match first.get_mut(i as usize) {
            Some(slot @ None) => *slot = Some(at),
            Some(Some(earlier)) => {
                *earlier = (*earlier).min(at);
                repeats += 1;
            }
            None => repeats += 1,
        }
    }
    (first, repeats)
}

/// Sorted (time − due) in ms over `range`, clamped at zero, and how many were negative.
fn lags(plan: &Plan, times: &[Option<i64>], range: std::ops::Range<u32>) -> (Vec<u32>, usize) {
    let raw: Vec<i64> = range.filter_map(|i| times[i as usize].map(|t| t - plan.due(i))).collect();
    let negative = raw.iter().filter(|&&l| l < 0).count();
    let mut lags: Vec<u32> = raw.iter().map(|&l| u32::try_from(l.max(0)).unwrap_or(u32::MAX)).collect();
    lags.sort_unstable();
    (lags, negative)
}

/// Percentiles of millisecond lags, as text.
fn lag_text(lags: &[u32]) -> String {
    let p = |q| support::percentile(lags, q);
    format!("p50 {} ms, p99 {} ms, max {} ms (n = {})", p(50.0), p(99.0), p(100.0), lags.len())
}

/// Completions per second over `times` (sorted ms) from `start_ms`, overall and between the
/// 10th and 90th percentile completion (the steady rate, without ramp-up and tail).
fn rates(times: &[i64], start_ms: i64) -> (f64, f64) {
    let Some(&last) = times.last() else { return (0.0, 0.0) };
    let overall = times.len() as f64 * 1000.0 / (last - start_ms).max(1) as f64;
    let (a, b) = (times.len() / 10, times.len() * 9 / 10);
    let steady = (b - a) as f64 * 1000.0 / (times[b.min(times.len() - 1)] - times[a]).max(1) as f64;
    (overall, steady)
}

/// Prints the paced group's scheduler lag: provider call (and durable write) minus due time.
fn report_paced(plan: &Plan, called: &[Option<i64>], durable: &[Option<i64>]) {
    let (paced_lag, negative) = lags(plan, called, 0..plan.paced);
    println!(
        "ENGINE scheduler lag, paced group ({} due at {:.0}/s): {} (target p99 < 1000 ms){}",
        plan.paced,
        plan.paced_rate,
        lag_text(&paced_lag),
        if negative > 0 { format!("; {negative} called before due") } else { String::new() }
    );
    let (paced_durable_lag, _) = lags(plan, durable, 0..plan.paced);
    println!("ENGINE due → durable, paced group: {}", lag_text(&paced_durable_lag));
}

/// Prints the refresh engine's figures.
fn report_engine(plan: &Plan, arrivals: &[fast_provider::Arrival], log: &ChildLog) {
    let (called, extra_calls) = first_times(plan.n, arrivals.iter().map(|a| (a.index, a.at_ms)));
    let (durable, extra_events) = first_times(plan.n, log.refreshed.iter().map(|&(at, i)| (i, at)));
    let never_called = called.iter().filter(|t| t.is_none()).count();
    let never_durable = durable.iter().filter(|t| t.is_none()).count();
    let expired_first = (0..plan.n).filter(|&i| durable[i as usize].is_none_or(|t| t > plan.expires(i))).count();
    println!(
        "ENGINE refreshes: provider calls {} for {} connections ({} never called, {} repeat calls); durable \
         refreshes {} ({} missing, {} repeats, {} events missed by the subscription); other events {}",
        arrivals.len(),
        plan.n,
        never_called,
        extra_calls,
        log.refreshed.len(),
        never_durable,
        extra_events,
        log.lagged,
        log.other_events.len()
    );
    for line in log.other_events.iter().take(5) {
        println!("  event: {line}");
    }
    println!("ENGINE expired before their refresh was durable: {expired_first} (target 0)");
    if plan.paced > 0 {
        report_paced(plan, &called, &durable);
    }
    let (burst_lag, _) = lags(plan, &called, plan.paced..plan.n);
    println!("ENGINE due → provider call, burst group (backlog): {}", lag_text(&burst_lag));
    let sorted = |v: &[Option<i64>]| {
        let mut t: Vec<i64> = v[plan.paced as usize..].iter().flatten().copied().collect();
        t.sort_unstable();
        t
    };
    let (calls_rate, calls_steady) = rates(&sorted(&called), plan.burst_ms);
    let (durable_rate, durable_steady) = rates(&sorted(&durable), plan.burst_ms);
    println!(
        "ENGINE burst of {}: durable refreshes {durable_rate:.0}/s overall, {durable_steady:.0}/s steady \
         (target >= 2000/s); provider calls {calls_rate:.0}/s overall, {calls_steady:.0}/s steady",
        plan.n - plan.paced
    );
}

/// Footprint and start-up figures.
struct Footprint {
    idle: Ready,
    idle_rss: u64,
    wave: Wave,
    restart: Ready,
    du_seeded: u64,
    du_after: u64,
}

impl Footprint {
    fn print(&self, n: u32) {
        let per = |rss: u64| (rss.saturating_sub(self.idle_rss)) as f64 * 1024.0 / f64::from(n.max(1));
        println!(
            "FOOTPRINT RSS idle {} KiB; {n} connections loaded: {} KiB at ready, {} KiB 1 s later \
             ({:.0} B per connection above idle; target <= 3072), {} KiB after the refresh wave ({:.0} B per connection)",
            self.idle_rss,
            self.wave.loaded.rss_kib,
            self.wave.loaded_rss,
            per(self.wave.loaded_rss),
            self.wave.wave_rss,
            per(self.wave.wave_rss)
        );
        let start = |r: &Ready| {
            format!(
                "Daemon::start {:.0} ms, first GetAccessToken answered at {:.0} ms, process launch to ready {:.0} ms ({} profiles)",
                r.start_us as f64 / 1000.0,
                r.first_call_us as f64 / 1000.0,
                r.launch_to_ready.as_secs_f64() * 1000.0,
                r.profiles
            )
        };
        println!("FOOTPRINT start-up, empty store: {}", start(&self.idle));
        println!("FOOTPRINT start-up, {n} stored (target < 1000 ms): {}", start(&self.wave.loaded));
        println!("FOOTPRINT start-up, {n} stored, after the refresh wave: {}", start(&self.restart));
        println!(
            "FOOTPRINT data directory on disk (du): {:.1} MiB seeded ({:.0} B per connection), {:.1} MiB after the refresh wave",
            self.du_seeded as f64 / 1024.0,
            self.du_seeded as f64 * 1024.0 / f64::from(n.max(1)),
            self.du_after as f64 / 1024.0
        );
    }
}
