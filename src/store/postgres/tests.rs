//! The PostgreSQL backend against a real server: the shared contract suite, then what only a
//! shared database has (schema versions, durability check, leases, the change feed).

use std::time::Duration;

use super::*;
use crate::store::{ConnectionRecord, ConnectionWrite, LeaseOutcome, ProfileRecord, Store, StoreChange};

crate::store::contract::store_contract_tests!(test_store);

/// A schema migrated by a newer tokend is refused before anything is touched.
#[test]
fn newer_schema_is_refused() {
    let options = test_options();
    drop(PgStore::open(&options).unwrap());
    let store = PgStore::connect(&options).unwrap();
    let pool = store.pool().unwrap().clone();
    store
        .run("test", async move {
            sqlx::query(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES (999, 'future', true, '\\x00', 0)",
            )
            .execute(&pool)
            .await
            .map_err(pool::db)
            .map(|_| ())
        })
        .unwrap();
    drop(store);
    assert!(matches!(PgStore::open(&options), Err(StoreError::TooNew { found: 999, .. })));
}

/// A server that would lose acknowledged commits is refused.
#[test]
fn synchronous_commit_off_is_refused() {
    let mut options = test_options();
    let separator = if options.url.contains('?') { '&' } else { '?' };
    options.url = format!("{}{separator}options=-csynchronous_commit%3Doff", options.url);
    let error = PgStore::open(&options).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("synchronous_commit"), "{error}");
}

/// An unreachable server fails fast with `Unavailable`, never hangs.
#[test]
fn unreachable_database_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut options = PgOptions::new(format!("postgres://tokend:secret-pw@127.0.0.1:{port}/tokend"));
    options.connect_timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let error = PgStore::open(&options).err().unwrap();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
    assert!(!error.to_string().contains("secret-pw"));
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// One holder at a time: a second process is told the lease is held, a stale version is told
/// the connection moved, and a released or expired lease can be taken.
#[test]
fn leases_are_exclusive_and_expire() {
    let options = test_options();
    let (a, b) = (PgStore::open(&options).unwrap(), PgStore::open(&options).unwrap());
    a.insert_profile(&ProfileRecord { name: "p".into(), ..Default::default() }, &ConnectionRecord::default()).unwrap();
    assert_eq!(a.take_lease("p", 0, Duration::from_secs(30)).unwrap(), LeaseOutcome::Granted);
    assert!(matches!(b.take_lease("p", 0, Duration::from_secs(30)).unwrap(), LeaseOutcome::HeldElsewhere { .. }));
    a.release_lease("p").unwrap();
    assert_eq!(b.take_lease("p", 0, Duration::from_millis(200)).unwrap(), LeaseOutcome::Granted);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.take_lease("p", 0, Duration::from_secs(30)).unwrap(), LeaseOutcome::Granted, "expired");
    let before = ConnectionRecord::default();
    a.write_connection(ConnectionWrite::replacing("p", &before, ConnectionRecord::default())).unwrap();
    assert_eq!(b.take_lease("p", 0, Duration::from_secs(30)).unwrap(), LeaseOutcome::Moved);
}

/// A write on one process reaches the change feed of another with its version, promptly.
#[test]
fn writes_reach_other_processes() {
    let options = test_options();
    let (a, b) = (PgStore::open(&options).unwrap(), PgStore::open(&options).unwrap());
    let mut feed = b.changes().unwrap();
    assert!(b.changes().is_none(), "handed out once");
    a.insert_profile(&ProfileRecord { name: "p".into(), ..Default::default() }, &ConnectionRecord::default()).unwrap();
    let before = ConnectionRecord::default();
    a.write_connection(ConnectionWrite::replacing("p", &before, ConnectionRecord::default())).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline && seen.len() < 2 {
        match feed.try_recv() {
            Ok(change) => seen.push(change),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert_eq!(
        seen,
        [
            StoreChange::Changed { name: "p".into(), version: Some(0) },
            StoreChange::Changed { name: "p".into(), version: Some(1) }
        ]
    );
    assert!(b.healthy());
}

/// The refresh schedule leaves out a connection another process holds the lease of (its
/// refresh is under way there) and shows it again once the lease is released or lapses; the
/// holder itself still sees it.
#[test]
fn due_leaves_out_what_another_process_refreshes() {
    let options = test_options();
    let (a, b) = (PgStore::open(&options).unwrap(), PgStore::open(&options).unwrap());
    a.insert_profile(&ProfileRecord { name: "p".into(), ..Default::default() }, &ConnectionRecord::default()).unwrap();
    let before = ConnectionRecord::default();
    let due_at = ConnectionRecord { next_refresh_at_ms: 500, ..Default::default() };
    a.write_connection(ConnectionWrite::replacing("p", &before, due_at)).unwrap();
    assert_eq!(a.take_lease("p", 1, Duration::from_millis(300)).unwrap(), LeaseOutcome::Granted);
    assert_eq!(a.due(1000, 10).unwrap().len(), 1, "the holder sees it");
    assert!(b.due(1000, 10).unwrap().is_empty(), "another process leaves it to the holder");
    assert!(b.earliest_due().unwrap().is_none());
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(b.due(1000, 10).unwrap().len(), 1, "a lapsed lease makes it due again");
    assert_eq!(b.earliest_due().unwrap().map(|e| e.at_ms), Some(500));
}
