//! The PostgreSQL backend through the daemon (issue #16): a store moves between backends with
//! `tokend export`/`import` unchanged, and a daemon on PostgreSQL serves what it held.

use tokend::api::pb;

use crate::support::{self, ADMIN, CONSUMER, FakeProvider, TestDaemon};

/// The backup lines of `config`'s store, sorted (entry order differs between backends only in
/// how ties sort; the content must not).
fn exported(config: &tokend::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    tokend::daemon::backup::export(config, &mut out).expect("export");
    let mut lines: Vec<String> = String::from_utf8(out).unwrap().lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

fn import(config: &tokend::config::Config, lines: &[String]) {
    let text = lines.join("\n");
    tokend::daemon::backup::import(config, &mut std::io::Cursor::new(text.into_bytes())).expect("import");
}

/// sled → PostgreSQL → sled: every entry survives both moves byte for byte, and a daemon on the
/// PostgreSQL copy serves the same token as the sled daemon did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_between_backends_is_lossless() {
    let provider = FakeProvider::start().await;
    let mut daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    for name in ["mail-a", "mail-b"] {
        support::create_and_connect(&mut apps, name, &provider).await;
    }
    let mut tokens = daemon.tokens(CONSUMER).await;
    let served = tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-a".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let sled_config = daemon.config.clone();
    // Stopped, but its data directory kept (it goes with `daemon`).
    daemon.daemon.take().unwrap().stop().await;
    let from_sled = exported(&sled_config);
    assert!(from_sled.len() > 4, "{from_sled:?}");

    // Into PostgreSQL (same data directory: the key file stays with it).
    let mut pg_config = sled_config.clone();
    support::use_postgres(&mut pg_config);
    import(&pg_config, &from_sled);
    assert_eq!(exported(&pg_config), from_sled, "sled → postgres");

    // And back into an empty sled directory.
    let back_dir = support::private_tempdir().unwrap();
    let mut back_config = sled_config.clone();
    back_config.data_dir = back_dir.path().to_path_buf();
    import(&back_config, &exported(&pg_config));
    assert_eq!(exported(&back_config), from_sled, "postgres → sled");

    // A daemon on the PostgreSQL copy serves the token the sled daemon held.
    let on_pg = support::start_daemon(&pg_config, None).await.expect("daemon on postgres starts");
    let mut pg_tokens = support::tokens_client(on_pg.grpc_addr, CONSUMER).await;
    let again = pg_tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-a".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.access_token, served.access_token);
    on_pg.stop().await;
}

/// The token `daemon` serves for "mail-x" now.
async fn token(daemon: &TestDaemon) -> String {
    let mut tokens = daemon.tokens(CONSUMER).await;
    let request = pb::GetAccessTokenRequest { name: "mail-x".into(), ..Default::default() };
    tokens.get_access_token(request).await.unwrap().into_inner().access_token
}

/// The next event of a watch stream, within `limit`.
async fn next_event(stream: &mut tonic::Streaming<pb::ProfileEvent>, limit: std::time::Duration) -> pb::ProfileEvent {
    tokio::time::timeout(limit, stream.message())
        .await
        .expect("an event in time")
        .expect("stream ok")
        .expect("stream open")
}

/// Two daemons on one database: what one writes (create, connect, refresh, delete) reaches the
/// other's cache and watch streams within a second, and the other serves the same token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_sees_every_change() {
    let provider = FakeProvider::start().await;
    let mut schema = String::new();
    let a = TestDaemon::start_with(|c| schema = support::use_postgres(c), None).await;
    let key_file = a.config.key_file();
    let b = TestDaemon::start_with(
        |c| {
            support::use_postgres(c);
            c.store.postgres.schema = schema.clone();
            c.keys.key_file = key_file.clone();
        },
        None,
    )
    .await;
    let second = std::time::Duration::from_secs(1);
    let mut b_apps = b.apps(ADMIN).await;
    let mut events = b_apps.watch_profiles(pb::WatchProfilesRequest::default()).await.expect("watch on b").into_inner();

    let mut a_apps = a.apps(ADMIN).await;
    support::create_and_connect(&mut a_apps, "mail-x", &provider).await;
    let mut connected = false;
    while !connected {
        let event = next_event(&mut events, second).await;
        connected = event.profile.as_ref().is_some_and(|p| p.status == pb::Status::Connected as i32);
    }
    assert_eq!(token(&b).await, token(&a).await, "b serves a's token from its cache");

    a_apps.refresh_now(pb::RefreshNowRequest { name: "mail-x".into() }).await.expect("refresh on a");
    let event = next_event(&mut events, second).await;
    assert_eq!(event.kind, pb::profile_event::Kind::Refreshed as i32, "{event:?}");
    assert_eq!(token(&b).await, token(&a).await, "b serves the refreshed token");
    assert_eq!(provider.refresh_requests(), 1);

    a_apps.delete_profile(pb::DeleteProfileRequest { name: "mail-x".into() }).await.expect("delete on a");
    loop {
        let event = next_event(&mut events, second).await;
        if event.kind == pb::profile_event::Kind::Deleted as i32 {
            break;
        }
    }
    let mut b_tokens = b.tokens(CONSUMER).await;
    let gone = b_tokens.get_access_token(pb::GetAccessTokenRequest { name: "mail-x".into(), ..Default::default() });
    assert_eq!(gone.await.unwrap_err().code(), tonic::Code::NotFound);
}

/// A database that cannot be reached at start stops the daemon at once with a retryable exit
/// code and a message without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_at_start_is_a_quick_retryable_failure() {
    let dir = support::private_tempdir().unwrap();
    let mut config = support::test_config(dir.path());
    support::use_postgres(&mut config);
    let port = support::free_port();
    config.store.postgres.url = format!("postgres://tokend:pw-not-logged@127.0.0.1:{port}/tokend");
    config.store.postgres.connect_timeout_secs = 1;
    let started = std::time::Instant::now();
    let Err(error) = support::start_daemon(&config, None).await else { panic!("no database, no daemon") };
    assert_eq!(error.exit_code(), 75, "{error}");
    assert!(!error.to_string().contains("pw-not-logged"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// TLS to the database with rustls: with `store.postgres.ca_file` the connection is encrypted
/// and the server's certificate verified against that CA and the host name (`verify-full`); a
/// server whose certificate another CA signed is refused. The test turns TLS on in the test
/// server (certificate files in its data directory, `ALTER SYSTEM`, reload) and off again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_verified() {
    use std::os::unix::fs::MetadataExt as _;
    let mut config = support::test_config(std::path::Path::new("/nonexistent"));
    support::use_postgres(&mut config);
    let admin = sqlx::PgPool::connect(&config.store.postgres.url).await.expect("connect to the test server");
    let data: String = sqlx::query_scalar("SHOW data_directory").fetch_one(&admin).await.unwrap();
    let owner = std::fs::metadata(&data).expect("the test server's data directory is readable here");
    let ca = support::Ca::new("tokend test database CA");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let (cert_path, key_path) =
        (std::path::Path::new(&data).join("tokend-test.crt"), std::path::Path::new(&data).join("tokend-test.key"));
    for (path, text) in [(&cert_path, cert), (&key_path, key)] {
        std::fs::write(path, text).unwrap();
        std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    for setting in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert_path.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key_path.display()),
        "ALTER SYSTEM SET ssl = on".into(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(setting)).execute(&admin).await.unwrap();
    }
    sqlx::query("SELECT pg_reload_conf()").execute(&admin).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let dir = support::private_tempdir().unwrap();
    let ca_file = ca.write_pem(dir.path(), "ca.pem");
    let other_ca = support::Ca::new("someone else").write_pem(dir.path(), "other.pem");
    let mut options = tokend::store::PgOptions::new(config.store.postgres.url.replace("127.0.0.1", "localhost"));
    options.schema = config.store.postgres.schema.clone();
    options.ca_file = Some(ca_file);
    let opened = tokend::store::PgStore::open(&options);
    let refused = {
        let mut wrong = options.clone();
        wrong.ca_file = Some(other_ca);
        wrong.connect_timeout = std::time::Duration::from_secs(2);
        tokend::store::PgStore::open(&wrong).err()
    };

    for reset in ["ALTER SYSTEM RESET ssl", "ALTER SYSTEM RESET ssl_cert_file", "ALTER SYSTEM RESET ssl_key_file"] {
        sqlx::query(reset).execute(&admin).await.unwrap();
    }
    sqlx::query("SELECT pg_reload_conf()").execute(&admin).await.unwrap();
    // verify-full never falls back to plain text: connecting proves TLS with a verified server.
    let store = opened.expect("verify-full against the right CA connects");
    use tokend::store::Store as _;
    assert!(store.healthy());
    let refused = refused.map(|e| e.to_string()).unwrap_or_default();
    eprintln!("another CA: {refused}");
    assert!(refused.contains("certificate") || refused.contains("Unknown"), "refused for the certificate: {refused:?}");
}

/// `tokend migrate` applies the schema ahead of a rollout (and again is a no-op), prints no
/// password, and is refused for the sled backend.
#[test]
fn migrate_subcommand_applies_the_schema() {
    let dir = support::private_tempdir().unwrap();
    let mut config = support::test_config(dir.path());
    support::use_postgres(&mut config);
    let url = url::Url::parse(&config.store.postgres.url).unwrap();
    let mut with_password = url.clone();
    with_password.set_password(Some("pw-never-printed")).unwrap();
    let run = |backend: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .arg("--data-dir")
            .arg(dir.path())
            .arg("migrate")
            .env("TOKEND_STORE__BACKEND", backend)
            .env("TOKEND_STORE__POSTGRES__URL", with_password.as_str())
            .env("TOKEND_STORE__POSTGRES__SCHEMA", &config.store.postgres.schema)
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        let out = run("postgres");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{text}");
        assert!(text.contains("database schema at version 1"), "{text}");
        assert!(!text.contains("pw-never-printed"), "{text}");
    }
    let sled = run("sled");
    assert_eq!(sled.status.code(), Some(78), "{}", String::from_utf8_lossy(&sled.stderr));
}
