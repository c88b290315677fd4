//! Three replicas of the real binary on one PostgreSQL database (issue #16), against the
//! authorization server that rotates the refresh token on every refresh and revokes the grant on
//! any reuse: a double refresh by two replicas would show up as reuse at the server.
//!
//! One run, in phases, with 1,000 concurrent callers spread over the replicas (a caller whose
//! replica does not answer tries the next, as a Service would route it) asking for a token fresher
//! than half its 6 s lifetime, so every replica wants a refresh every 3 s:
//! 1. a consent started on one replica and finished on another's callback; the third sees it;
//! 2. load through several rotations;
//! 3. `kill -9` of the replica that refreshed most: the others go on refreshing;
//! 4. the database cut off (a TCP proxy in front of it refuses and cuts connections): tokens are
//!    served from the caches, `/readyz` says not ready, and refreshing resumes when it is back;
//! 5. a lease left by a replica that died holding it: nobody refreshes until it lapses, then one
//!    replica takes over.
//!
//! Then: every call served, no refresh token reused, one provider call per rotation.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokend::api::pb;

use super::fault_proxy::{Fault, FaultProxy};
use super::harness::{ACCOUNT, AuthServer, ServerOptions, Tokend, Tokens, eventually, step};
use super::{assert_clean_rotation, create, get, profile, status};

const CALLERS: usize = 1000;
const NAME: &str = "shared";
/// Access token lifetime at the server, in seconds.
const TTL: u64 = 6;
/// What callers ask for: more than half the lifetime, so the engine refreshes at half of it.
const MIN_VALID_SECS: i64 = 4;

/// What the callers saw.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    served: AtomicU64,
    failed: AtomicU64,
    tokens: Mutex<HashSet<String>>,
    last_error: Mutex<String>,
}

impl Load {
    fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    fn last_error(&self) -> String {
        self.last_error.lock().unwrap().clone()
    }
}

/// One caller: asks its replica (then the next ones) for the token, about three times a second.
async fn caller(i: usize, replicas: Arc<Vec<Tokens>>, load: Arc<Load>) {
    let pause = Duration::from_millis(250 + (i % 100) as u64);
    tokio::time::sleep(Duration::from_millis((i % 300) as u64)).await;
    while !load.stop.load(Ordering::SeqCst) {
        let mut served = false;
        for attempt in 0..replicas.len() {
            let mut client = replicas[(i + attempt) % replicas.len()].clone();
            match tokio::time::timeout(Duration::from_secs(5), client.get_access_token(get(NAME, MIN_VALID_SECS))).await
            {
                Ok(Ok(reply)) => {
                    let token = reply.into_inner().access_token;
                    load.tokens.lock().unwrap().insert(token);
                    served = true;
                    break;
                }
                Ok(Err(status)) => {
                    *load.last_error.lock().unwrap() = format!("{:?}: {}", status.code(), status.message())
                }
                Err(_) => *load.last_error.lock().unwrap() = "no answer within 5 s".into(),
            }
        }
        if served {
            load.served.fetch_add(1, Ordering::Relaxed);
        } else {
            load.failed.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(pause).await;
    }
}

/// The test server's address and the URL to reach it through `proxy` instead.
fn database() -> (SocketAddr, url::Url) {
    let text = std::env::var("TOKEND_TEST_POSTGRES_URL").unwrap_or_default();
    assert!(
        !text.is_empty(),
        "TOKEND_TEST_POSTGRES_URL is not set: this test needs a PostgreSQL server. Run scripts/test.sh, or \
         `eval \"$(scripts/pg-test-server.sh start)\"` and then cargo test"
    );
    let url = url::Url::parse(&text).expect("TOKEND_TEST_POSTGRES_URL is a URL");
    let addr = url.socket_addrs(|| Some(5432)).expect("database address")[0];
    (addr, url)
}

/// How many refreshes a replica's log reports.
fn refreshes_logged(tokend: &Tokend) -> usize {
    tokend.log_text().matches("\"message\":\"refreshed\"").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_refresh_once_and_serve_through_failures() {
    let server = AuthServer::start(ServerOptions { access_token_ttl: TTL, ..ServerOptions::default() }).await;
    let (upstream, mut url) = database();
    let proxy = FaultProxy::start(upstream);
    url.set_port(Some(proxy.addr.port())).expect("port");
    let schema = format!("replicas_{:016x}", rand::random::<u64>());
    let shared = crate::support::private_tempdir().unwrap();
    let key_file = shared.path().join("tokend.key");
    let key = tokend::crypto::generate_key_text();
    tokend::crypto::write_private_file(&key_file, format!("{}\n", key.as_str()).as_bytes()).unwrap();
    // Lease: 2 × 2 s (provider timeout) + 5 s = 9 s.
    let extra = format!(
        "[store]\nbackend = \"postgres\"\n\
         [store.postgres]\nurl = \"{url}\"\nschema = \"{schema}\"\npool_size = 4\nconnect_timeout_secs = 1\nstatement_timeout_secs = 2\n\
         [keys]\nkey_file = {key_file:?}\n\
         [provider]\nrequest_timeout_secs = 2\nsoft_timeout_secs = 2\n",
        key_file = key_file.display().to_string(),
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Tokend::start_with(&extra).await);
    }

    step("consent: Connect on replica 1, the browser comes back to replica 2's callback, replica 0 sees it");
    let mut apps: Vec<_> = Vec::new();
    for replica in &replicas {
        apps.push(replica.apps().await);
    }
    let mut p = server.profile(NAME);
    p.redirect_uri = replicas[2].callback_url();
    create(&mut apps[0], p).await;
    let start = apps[1].connect(pb::ConnectRequest { name: NAME.into() }).await.expect("Connect").into_inner();
    let page = super::harness::consent(&start.authorization_url, &replicas[2].callback_url(), ACCOUNT).await;
    assert_eq!(page.status, 200, "replica 2's callback page: {}", page.body);
    let seen = Instant::now();
    let mut first = apps[0].clone();
    eventually("replica 0 shows the connection", Duration::from_secs(1), || {
        let mut apps = first.clone();
        async move { (status(&profile(&mut apps, NAME).await) == pb::Status::Connected).then_some(()) }
    })
    .await;
    eprintln!("replica 0 saw the consent finished on replica 2 after {:?}", seen.elapsed());
    let _ = profile(&mut first, NAME).await;

    // The test's own view of the database (direct, not through the proxy).
    let direct = database().1;
    let separator = if direct.query().is_some() { '&' } else { '?' };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{direct}{separator}options=-csearch_path%3D{schema}"))
        .await
        .expect("connect to the test database");

    step("1,000 callers over three replicas, through several rotations");
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(replica.tokens().await);
    }
    let clients = Arc::new(clients);
    let load = Arc::new(Load::default());
    let tasks: Vec<_> =
        (0..CALLERS).map(|i| tokio::spawn(caller(i, Arc::clone(&clients), Arc::clone(&load)))).collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after_load = server.granted("refresh_token").await;
    assert!(after_load >= 2, "rotations under load: {after_load}");
    assert_eq!(load.failed(), 0, "callers failed; last error: {}", load.last_error());

    step("kill -9 the replica that refreshed most, between refreshes; the others take over");
    // Right after a rotation, when no lease is held: a replica killed while it holds the lease
    // stops refreshing for the rest of the lease (9 s here, more than this token lives), which
    // the planted lease below checks with a lease that has little left.
    let rotations = load.tokens.lock().unwrap().len();
    let (load_ref, pool_ref) = (&load, &pool);
    eventually("a rotation just finished and no lease is held", Duration::from_secs(10), || async move {
        let rotated = load_ref.tokens.lock().unwrap().len() > rotations;
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM connections WHERE lease_holder <> ''")
            .fetch_one(pool_ref)
            .await
            .unwrap_or(1);
        (rotated && held == 0).then_some(())
    })
    .await;
    let busiest = (0..3).max_by_key(|&i| refreshes_logged(&replicas[i])).unwrap_or(0);
    replicas[busiest].kill();
    let before_kill = server.granted("refresh_token").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after_kill = server.granted("refresh_token").await;
    assert!(after_kill > before_kill, "refreshes went on after the kill: {before_kill} → {after_kill}");
    assert_eq!(load.failed(), 0, "callers failed after the kill; last error: {}", load.last_error());
    let live: Vec<usize> = (0..3).filter(|&i| i != busiest).collect();

    step("the database cut off for 2.5 s: served from the caches, not ready, then resumed");
    proxy.set(Fault::Refuse);
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Not ready, and writes refused quickly with UNAVAILABLE (nothing reaches the provider).
    let mut live_apps = replicas[live[1]].apps().await;
    let (readiness, refused) =
        tokio::join!(replicas[live[0]].readyz(), live_apps.refresh_now(pb::RefreshNowRequest { name: NAME.into() }));
    let refused = refused.expect_err("no refresh while the database is unreachable");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    eprintln!("during the outage: /readyz {readiness}, RefreshNow {:?} after {:?}", refused.code(), cut.elapsed());
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(cut.elapsed())).await;
    proxy.set(Fault::PassThrough);
    assert_eq!(readiness, 503, "not ready while the database is unreachable");
    let before_outage_end = server.granted("refresh_token").await;
    for &i in &live {
        let replica = &replicas[i];
        eventually("ready again", Duration::from_secs(10), || async { (replica.readyz().await == 200).then_some(()) })
            .await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_outage = server.granted("refresh_token").await;
    assert!(after_outage > before_outage_end, "refreshing resumed: {before_outage_end} → {after_outage}");
    assert_eq!(load.failed(), 0, "callers failed around the outage; last error: {}", load.last_error());

    step("a lease left by a dead replica: nobody refreshes until it lapses, then one replica does");
    let held = 1500;
    sqlx::query(
        "UPDATE connections SET lease_holder = 'dead-replica', \
         lease_until_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $1 WHERE name = $2",
    )
    .bind(held as i64)
    .bind(NAME)
    .execute(&pool)
    .await
    .expect("plant a dead replica's lease");
    let planted = server.granted("refresh_token").await;
    tokio::time::sleep(Duration::from_millis(held - 300)).await;
    assert_eq!(server.granted("refresh_token").await, planted, "no refresh while another holds the lease");
    let taken_over = Instant::now();
    let planted_ref = &planted;
    let server_ref = &server;
    eventually("a live replica refreshes once the lease lapsed", Duration::from_secs(5), || async move {
        (server_ref.granted("refresh_token").await > *planted_ref).then_some(())
    })
    .await;
    eprintln!("took over {:?} after the dead lease's last 300 ms", taken_over.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;

    load.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("caller task");
    }
    let (served, failed) = (load.served.load(Ordering::SeqCst), load.failed());
    let distinct = load.tokens.lock().unwrap().len() as u64;
    let refreshes = server.granted("refresh_token").await;
    eprintln!(
        "{CALLERS} callers: {served} calls served, {failed} failed; {refreshes} refreshes at the server, {distinct} \
         distinct access tokens seen"
    );
    assert_eq!(failed, 0, "last error: {}", load.last_error());
    assert_clean_rotation(&server).await;
    // Each refresh minted one access token; callers see every one (it is served for 3 s, they
    // ask every 0.35 s), plus the consent's.
    assert_eq!(refreshes + 1, distinct, "one provider call per rotation");
}
