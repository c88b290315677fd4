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
