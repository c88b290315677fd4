//! Interleavings of the engine's write step, driven deterministically: a store whose flush waits
//! at a gate the test opens ([`GatedStore`]), a manual clock, fixed jitter. No provider is
//! called: the tests hand token sets to the same `store_tokens` a refresh or a consent ends in.
//! (One file: the fixtures and the tests that share them.)

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio_stream::StreamExt as _;
use zeroize::Zeroizing;

use super::*;
use crate::admin::Admin;
use crate::api::pb::profile_event::Kind;
use crate::clock::{FixedJitter, ManualClock};
use crate::provider::{HttpOptions, ProviderHttp, TokenSet};
use crate::store::testing::GatedStore;
use crate::store::{ConnectionWrite, DueEntry};

const FIRST_KEY: [u8; 32] = [7; 32];
const SECOND_KEY: [u8; 32] = [9; 32];

/// An engine over `store` with one profile, "p", created (not connected).
fn engine_with_profile(store: Arc<dyn Store>) -> (Arc<Engine>, ProfileRecord) {
    let engine = engine_over(store);
    let profile = ProfileRecord {
        name: "p".into(),
        provider: "custom".into(),
        client_id: "client".into(),
        token_endpoint: "http://127.0.0.1:1/token".into(),
        ..Default::default()
    };
    engine.store().insert_profile(&profile, &ConnectionRecord::default()).unwrap();
    engine.created("p");
    (engine, profile)
}

/// An engine over `store` (a second one over the same store plays another replica).
fn engine_over(store: Arc<dyn Store>) -> Arc<Engine> {
    let settings = EngineSettings {
        callback_url: "http://127.0.0.1:1/oauth/callback".into(),
        allow_insecure_http: true,
        refresh: policy::test_policy(),
        max_concurrent_refreshes: 4,
        soft_timeout: Duration::from_secs(5),
        provider_rate: 100.0,
        provider_burst: 10,
        lease: Duration::from_secs(30),
    };
    let provider = Provider::new(ProviderHttp::new(&HttpOptions::default()).unwrap());
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let keys = Arc::new(KeyRing::single(&FIRST_KEY));
    Engine::new(store, keys, provider, clock, Arc::new(FixedJitter(0.5)), settings)
}

fn tokens(access: &str, refresh: Option<&str>) -> TokenSet {
    TokenSet {
        access_token: SecretString::from(access.to_owned()),
        refresh_token: refresh.map(|r| SecretString::from(r.to_owned())),
        token_type: "Bearer".into(),
        expires_in: Some(Duration::from_secs(3600)),
        raw_expires_in: Some(3600),
        scopes: None,
        refresh_token_expires_in: None,
        account: None,
        metadata: Default::default(),
    }
}

/// Connects "p" as a consent would, with `refresh` as its refresh token.
async fn connect(engine: &Engine, profile: &ProfileRecord, access: &str, refresh: Option<&str>) -> ConnectionRecord {
    let before = engine.store().connection("p").unwrap().unwrap_or_default();
    let extras = TokenWriteExtras { remove_consent: None, connected: true };
    engine.store_tokens(profile, before, tokens(access, refresh), extras, Kind::StatusChanged).await.unwrap()
}

fn served(engine: &Engine) -> Option<String> {
    use secrecy::ExposeSecret as _;
    engine.cached("p").and_then(|s| s.token.as_ref().map(|t| t.access_token.expose_secret().to_owned()))
}

/// Regression (#13 item 3): a refresh waits for its flush between its write and its publish; a
/// Disconnect that lands in that window must not be undone in the cache by the refresh's older
/// record when the flush ends. Before the fix the cache served the disconnected profile's new
/// token until it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item3_cache_never_moves_backwards() {
    let (store, gate) = GatedStore::new();
    let (engine, profile) = engine_with_profile(store);
    let connected = connect(&engine, &profile, "a1", Some("r1")).await;
    assert_eq!(served(&engine).as_deref(), Some("a1"));

    gate.set(false);
    let refresh = {
        let (engine, profile) = (Arc::clone(&engine), profile.clone());
        tokio::spawn(async move {
            let extras = TokenWriteExtras::default();
            engine.store_tokens(&profile, connected, tokens("a2", Some("r2")), extras, Kind::Refreshed).await
        })
    };
    // The refresh has written its record and waits for the flush.
    let written = loop {
        let current = engine.store().connection("p").unwrap().unwrap();
        if current.token_version == 2 {
            break current;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    // A Disconnect lands in the window.
    let disconnected = ConnectionRecord {
        status: pb::Status::NotConnected as i32,
        token_version: written.token_version,
        ..Default::default()
    };
    engine.write(&written, ConnectionWrite::replacing("p", &written, disconnected), Kind::Updated).unwrap();
    assert_eq!(served(&engine), None, "disconnected");

    gate.set(true);
    refresh.await.unwrap().unwrap();
    assert_eq!(served(&engine), None, "the refresh's older record must not be published over the disconnect");
    assert_eq!(engine.cached("p").unwrap().status, pb::Status::NotConnected);
}

/// Regression (#13 item 4): a new consent replaces the token set whole. A code exchange whose
/// reply has no refresh token must not keep the previous grant's refresh token (which would
/// refresh into the old account).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item4_a_new_consent_replaces_the_whole_token_set() {
    let (store, _gate) = GatedStore::new();
    let (engine, profile) = engine_with_profile(store);
    connect(&engine, &profile, "old-account-access", Some("old-account-refresh")).await;
    let reconnected = connect(&engine, &profile, "new-account-access", None).await;
    assert!(reconnected.refresh_token_sealed.is_empty(), "the old grant's refresh token was kept");
    assert_eq!(reconnected.refresh_token_expires_at_ms, 0);
    // A refresh (not a consent) without a refresh token in its reply still keeps the stored one.
    let refreshed = {
        let connected = connect(&engine, &profile, "a", Some("r")).await;
        engine.store_tokens(&profile, connected, tokens("b", None), TokenWriteExtras::default(), Kind::Refreshed)
    }
    .await
    .unwrap();
    assert!(!refreshed.refresh_token_sealed.is_empty(), "RFC 6749 §6: a refresh reply without one keeps it");
}

/// Regression (#13 item 9): key rotation re-seals records through a versioned write, so a
/// refresh that read the record before the rotation cannot write back a value sealed under the
/// old key (which would stop opening once that key is dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item9_reseal_wins_over_a_refresh_that_read_before_it() {
    let (store, _gate) = GatedStore::new();
    let (engine, profile) = engine_with_profile(Arc::clone(&store) as Arc<dyn Store>);
    let read_by_refresh = connect(&engine, &profile, "a1", Some("r1")).await;
    let admin = Admin::new(Arc::clone(&engine), Duration::from_secs(600));
    let ring = KeyRing::from_keys(&[Zeroizing::new(SECOND_KEY), Zeroizing::new(FIRST_KEY)]).unwrap();
    admin.install_keys(ring);
    admin.reseal_all().await.unwrap();
    let new_key = engine.keys().active_id();

    // The refresh answers without a new refresh token: the stored one is kept (RFC 6749 §6).
    let stored = engine
        .store_tokens(&profile, read_by_refresh, tokens("a2", None), TokenWriteExtras::default(), Kind::Refreshed)
        .await
        .unwrap();
    assert_eq!(KeyRing::sealed_key_id(&stored.refresh_token_sealed), Some(new_key), "sealed under the dropped key");
    assert_eq!(KeyRing::sealed_key_id(&stored.access_token_sealed), Some(new_key));
    let usage = admin.key_usage().await.unwrap();
    assert_eq!(usage.keys().copied().collect::<Vec<_>>(), vec![new_key], "{usage:?}");
}

/// One operation on profile "p" in [`seeded_interleavings_keep_everything_in_agreement`].
#[derive(Debug, Clone, Copy)]
enum Op {
    /// A refresh whose reply rotates the refresh token (flushed before it is published).
    Refresh,
    /// A refresh whose reply keeps the refresh token.
    RefreshKeepingToken,
    /// A Disconnect's write (tokens gone, NOT_CONNECTED).
    Disconnect,
    /// A new consent (with or without a refresh token).
    Consent { with_refresh_token: bool },
    /// Key rotation: a new active key and a re-seal of every record.
    Reseal,
}

impl Op {
    fn pick(rng: &mut impl rand::Rng) -> Op {
        match rng.random_range(0..6) {
            0 => Op::Refresh,
            1 => Op::RefreshKeepingToken,
            2 => Op::Disconnect,
            3 => Op::Consent { with_refresh_token: true },
            4 => Op::Consent { with_refresh_token: false },
            _ => Op::Reseal,
        }
    }

    /// Runs the operation as the engine and administration would. Refused outcomes (a refresh
    /// that lost its race, a refresh of a disconnected profile) are part of the game.
    async fn run(self, engine: Arc<Engine>, admin: Arc<Admin>, profile: ProfileRecord, serial: u32) {
        let before = engine.store().connection("p").unwrap().unwrap_or_default();
        let fresh = |with_refresh: bool| {
            tokens(&format!("access-{serial}"), with_refresh.then(|| format!("refresh-{serial}")).as_deref())
        };
        match self {
            Op::Refresh | Op::RefreshKeepingToken if before.access_token_sealed.is_empty() => {}
            Op::Refresh | Op::RefreshKeepingToken => {
                let reply = fresh(matches!(self, Op::Refresh));
                let _ =
                    engine.store_tokens(&profile, before, reply, TokenWriteExtras::default(), Kind::Refreshed).await;
            }
            Op::Disconnect => {
                let record = ConnectionRecord {
                    status: pb::Status::NotConnected as i32,
                    token_version: before.token_version,
                    ..Default::default()
                };
                let _ = engine.write(&before, ConnectionWrite::replacing("p", &before, record), Kind::Updated);
                let _ = engine.flush().await;
            }
            Op::Consent { with_refresh_token } => {
                let extras = TokenWriteExtras { remove_consent: None, connected: true };
                let reply = fresh(with_refresh_token);
                engine.store_tokens(&profile, before, reply, extras, Kind::StatusChanged).await.unwrap();
            }
            Op::Reseal => {
                let next = if engine.keys().active_id() == crate::crypto::key_id(&FIRST_KEY) {
                    [SECOND_KEY, FIRST_KEY]
                } else {
                    [FIRST_KEY, SECOND_KEY]
                };
                admin.install_keys(KeyRing::from_keys(&next.map(Zeroizing::new)).unwrap());
                admin.reseal_all().await.unwrap();
            }
        }
    }
}

/// What GetAccessToken serves, what the store holds, the refresh index and the status agree:
/// the cache shows the newest published version, opened to the same token, in the same status;
/// the index holds exactly the connection's refresh time; every stored secret opens.
fn assert_agreement(engine: &Engine, context: &str) {
    use secrecy::ExposeSecret as _;
    let stored = engine.store().connection("p").unwrap().unwrap();
    let cached = engine.cached("p").unwrap();
    let keys = engine.keys();
    let opened = (!stored.access_token_sealed.is_empty()).then(|| {
        keys.open_secret(crate::crypto::Purpose::AccessToken, "p", &stored.access_token_sealed)
            .unwrap_or_else(|e| panic!("{context}: the stored access token does not open: {e}"))
    });
    if !stored.refresh_token_sealed.is_empty() {
        keys.open_secret(crate::crypto::Purpose::RefreshToken, "p", &stored.refresh_token_sealed)
            .unwrap_or_else(|e| panic!("{context}: the stored refresh token does not open: {e}"));
    }
    assert_eq!(
        cached.token.as_ref().map(|t| t.access_token.expose_secret().to_owned()),
        opened.map(|t| t.expose_secret().to_owned()),
        "{context}: served token vs stored"
    );
    assert_eq!(cached.status, stored.status(), "{context}: status");
    // A re-seal writes a new version without publishing (nothing a caller sees changed).
    assert!(cached.version <= stored.version, "{context}: cache ahead of the store");
    let due: Vec<DueEntry> = engine.store().due(i64::MAX, 10).unwrap();
    let expected =
        (stored.next_refresh_at_ms > 0).then(|| DueEntry { at_ms: stored.next_refresh_at_ms, name: "p".into() });
    assert_eq!(due, expected.into_iter().collect::<Vec<_>>(), "{context}: refresh index");
}

/// Many seeded interleavings of refreshes, Disconnects, consents and key rotation on one
/// profile, each second operation landing in the first one's window between its write and its
/// publish (held open by the flush gate). After every step the served token, the stored record,
/// the index and the status agree, and every stored secret opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_interleavings_keep_everything_in_agreement() {
    use rand::SeedableRng as _;
    for seed in 0..48u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (store, gate) = GatedStore::new();
        let (engine, profile) = engine_with_profile(store);
        let admin = Admin::new(Arc::clone(&engine), Duration::from_secs(600));
        connect(&engine, &profile, "access-0", Some("refresh-0")).await;
        let mut serial = 1;
        for step in 0..6 {
            let (first, second) = (Op::pick(&mut rng), Op::pick(&mut rng));
            let context = format!("seed {seed}, step {step}: {first:?} then {second:?}");
            gate.set(false);
            let version = engine.store().connection("p").unwrap().unwrap().version;
            let a = tokio::spawn(first.run(Arc::clone(&engine), Arc::clone(&admin), profile.clone(), serial));
            // Let the first operation write (it then waits at the gate, if it flushes).
            for _ in 0..200 {
                if engine.store().connection("p").unwrap().unwrap().version != version || a.is_finished() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let b = tokio::spawn(second.run(Arc::clone(&engine), Arc::clone(&admin), profile.clone(), serial + 1));
            tokio::time::sleep(Duration::from_millis(2)).await;
            gate.set(true);
            a.await.unwrap();
            b.await.unwrap();
            serial += 2;
            assert_agreement(&engine, &context);
        }
    }
}

/// More events than the broadcast channel holds, for profile "other": a watcher not polled
/// meanwhile falls behind.
fn flood_other_profile(engine: &Engine) {
    for _ in 0..super::EVENT_CAPACITY + 10 {
        engine.publish("other", Kind::Updated, pb::Status::Connected, pb::Status::Connected);
    }
}

/// Regression: a `WatchAccessToken` stream that fell behind the change channel (a refresh of
/// its profile among the events it missed) must still get the new token. Before the fix the
/// gap was skipped silently, and the watcher kept the old token until the next refresh — an
/// hour later, long after it expired.
#[tokio::test]
async fn token_watcher_that_fell_behind_still_gets_the_new_token() {
    let (store, _gate) = GatedStore::new();
    let (engine, profile) = engine_with_profile(store);
    let connected = connect(&engine, &profile, "a1", Some("r1")).await;
    let updates = engine.watch_token("p").updates(1);
    tokio::pin!(updates);
    // A refresh, then a flood of other events, before the watcher is polled at all.
    let extras = TokenWriteExtras::default();
    engine.store_tokens(&profile, connected, tokens("a2", Some("r2")), extras, Kind::Refreshed).await.unwrap();
    flood_other_profile(&engine);
    let next = tokio::time::timeout(Duration::from_secs(2), updates.next()).await;
    match next {
        Ok(Some(TokenUpdate::Token(token))) => assert_eq!(token.token_version, 2),
        other => panic!("the watcher missed the refresh: {other:?}"),
    }
}

/// A token watcher is told once when its profile is deleted, also when the deletion fell in a
/// gap it missed.
#[tokio::test]
async fn token_watcher_that_fell_behind_learns_of_a_deletion() {
    let (store, _gate) = GatedStore::new();
    let (engine, profile) = engine_with_profile(store);
    connect(&engine, &profile, "a1", Some("r1")).await;
    let updates = engine.watch_token("p").updates(1);
    tokio::pin!(updates);
    // As administration deletes: from the store, then from the cache and to watchers.
    engine.store().remove_profile("p").unwrap();
    engine.deleted("p", pb::Status::Connected);
    flood_other_profile(&engine);
    let next = tokio::time::timeout(Duration::from_secs(2), updates.next()).await;
    assert!(matches!(next, Ok(Some(TokenUpdate::Deleted))), "{next:?}");
}

/// A watcher of every change is told how many events it missed, not left with a silently
/// incomplete picture (before: the gap was skipped).
#[tokio::test]
async fn change_watcher_that_fell_behind_is_told() {
    let (store, _gate) = GatedStore::new();
    let (engine, _profile) = engine_with_profile(store);
    let changes = Engine::changes(engine.subscribe());
    tokio::pin!(changes);
    flood_other_profile(&engine);
    let first = changes.next().await;
    assert!(matches!(first, Some(Err(MissedEvents(n))) if n > 0), "{first:?}");
}

/// A token watcher is woken by its own profile only: a flood of other profiles' changes does not
/// wake it (before, every stream was woken by every change of every profile, to filter it out:
/// with 10,000 streams and 3,000 refreshes a second, 30 million wake-ups a second).
#[tokio::test]
async fn token_watcher_sleeps_through_other_profiles() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use futures::Stream as _;

    struct CountingWaker(AtomicUsize);
    impl futures::task::ArcWake for CountingWaker {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    let (store, _gate) = GatedStore::new();
    let (engine, profile) = engine_with_profile(store);
    let connected = connect(&engine, &profile, "a1", Some("r1")).await;
    let updates = engine.watch_token("p").updates(1);
    tokio::pin!(updates);
    let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = futures::task::waker(Arc::clone(&wakes));
    let mut context = Context::from_waker(&waker);
    assert!(updates.as_mut().poll_next(&mut context).is_pending());
    flood_other_profile(&engine);
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "woken by other profiles' changes");
    // Its own profile's refresh does wake it, with the new token.
    let extras = TokenWriteExtras::default();
    engine.store_tokens(&profile, connected, tokens("a2", Some("r2")), extras, Kind::Refreshed).await.unwrap();
    assert!(wakes.0.load(Ordering::SeqCst) > 0, "not woken by its own profile's refresh");
    match updates.as_mut().poll_next(&mut context) {
        Poll::Ready(Some(TokenUpdate::Token(token))) => assert_eq!(token.token_version, 2),
        other => panic!("expected the refreshed token: {other:?}"),
    }
}

/// The last watcher of a profile leaves no channel behind.
#[tokio::test]
async fn token_watchers_leave_nothing_behind() {
    let (store, _gate) = GatedStore::new();
    let (engine, _profile) = engine_with_profile(store);
    let first = engine.watch_token("p");
    let second = engine.watch_token("p");
    assert_eq!(engine.token_watchers.len(), 1);
    drop(first);
    assert_eq!(engine.token_watchers.len(), 1, "one watcher left");
    drop(second.updates(0));
    assert_eq!(engine.token_watchers.len(), 0);
}

/// Regression (found merging #16 with the per-profile token watchers): a replica whose refresh
/// waits on another replica's lease, and finds that replica's write by looking at the store, must
/// show the new token to its own watchers. It only set its cache; the change feed's notice of the
/// same write then found the cache already at that version and published nothing, so this
/// replica's watch streams kept the old token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_another_replicas_refresh_wakes_local_watchers() {
    let (store, _gate) = GatedStore::new();
    let (engine, profile) = engine_with_profile(Arc::clone(&store) as Arc<dyn Store>);
    let other_replica = engine_over(Arc::clone(&store) as Arc<dyn Store>);
    let connected = connect(&engine, &profile, "a1", Some("r1")).await;
    let updates = engine.watch_token("p").updates(connected.token_version);
    tokio::pin!(updates);
    store.lease_elsewhere.store(true, std::sync::atomic::Ordering::SeqCst);
    let waiting = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move { engine.refresh_shared("p").await.map(|_| ()) })
    };
    // Once this replica found the lease held and waits, the holder's refresh lands in the store.
    while store.lease_asks.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let extras = TokenWriteExtras::default();
    other_replica.store_tokens(&profile, connected, tokens("a2", Some("r2")), extras, Kind::Refreshed).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), updates.next()).await;
    match next {
        Ok(Some(TokenUpdate::Token(token))) => assert_eq!(token.token_version, 2),
        other => panic!("the local watcher missed the other replica's refresh: {other:?}"),
    }
    assert_eq!(served(&engine).as_deref(), Some("a2"));
    waiting.await.unwrap().unwrap();
}

/// Regression: a refresh's flight leaves the profile's slot before its outcome goes out. Before
/// the fix the outcome went out first, so a caller arriving between the two (a `RefreshNow` sent
/// right after another one returned) joined the finished flight and got its outcome back with no
/// provider call: CI saw `grants::quirky_token_replies` fail that way under load. Here the test
/// holds the slot's flight lock, as such a caller would, while the refresh ends; the outcome
/// must not be out while the slot still offers that flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_flight_is_never_joined() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (store, _gate) = GatedStore::new();
    let (engine, profile) = engine_with_profile(store);
    let provider = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/token", provider.local_addr().unwrap());
    let profile = ProfileRecord { token_endpoint: endpoint, ..profile };
    engine.store().replace_profile(&profile).unwrap();
    connect(&engine, &profile, "a1", Some("r1")).await;

    let first = tokio::spawn({
        let engine = Arc::clone(&engine);
        async move { engine.refresh_shared("p").await }
    });
    // The refresh is in flight once its request arrives; read the whole request.
    let (mut socket, _) = provider.accept().await.unwrap();
    let mut request = Vec::new();
    while !String::from_utf8_lossy(&request).contains("refresh_token=r1") {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the request ended early");
        request.extend_from_slice(&chunk[..n]);
    }
    let slot = engine.slot("p").unwrap();
    let flight = slot.flight.lock().await;
    let outcome = flight.as_ref().expect("the refresh is in flight").clone();
    socket
        .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // The refresh records the failure, then ends its flight; give it a second to get there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        assert!(outcome.borrow().is_none(), "the outcome is out while the slot still offers the finished flight");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(flight);
    assert!(first.await.unwrap().is_err(), "the provider answered 503");
    assert!(slot.flight.lock().await.is_none());
}
