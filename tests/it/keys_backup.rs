//! Key rotation inside the running daemon and online backup, through the `Maintenance` service:
//! a new key loads on reload, `RotateKeys` re-seals every secret under it while tokens keep
//! being served, the old key can then leave the configuration (and a reload that drops a key
//! still in use is refused); a backup streamed from the running daemon restores into an empty
//! directory and serves the same tokens.

use std::collections::HashMap;

use tokend::api::pb;
use tonic::Code;

use crate::support::{self, ADMIN, CONSUMER, FakeProvider, TestDaemon, VIEWER};

fn usage(reply: &pb::RotateKeysResponse) -> HashMap<String, u64> {
    reply.keys.iter().map(|k| (k.key_id.clone(), k.sealed_values)).collect()
}

fn write_key(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    // 0600, as tokend refuses a key file that group or others can read.
    tokend::crypto::write_private_file(&path, format!("{}\n", tokend::crypto::generate_key_text().as_str()).as_bytes())
        .unwrap();
    path
}

/// A new key loaded on reload takes over every sealed value through `RotateKeys` (admins only)
/// while tokens, refreshes and a pending consent keep working; the old key may leave only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_keys_in_the_running_daemon() {
    let provider = FakeProvider::start().await;
    let mut daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    for name in ["mail-a", "mail-b", "mail-c"] {
        support::create_and_connect(&mut apps, name, &provider).await;
    }
    // A consent left pending holds a sealed PKCE verifier.
    apps.create_profile(pb::CreateProfileRequest { profile: Some(support::fake_profile("mail-pending", &provider)) })
        .await
        .unwrap();
    let pending = apps.connect(pb::ConnectRequest { name: "mail-pending".into() }).await.unwrap().into_inner();

    let mut maintenance = daemon.maintenance(ADMIN).await;
    let before = maintenance.rotate_keys(pb::RotateKeysRequest { dry_run: true }).await.unwrap().into_inner();
    let old_id = before.active_key_id.clone();
    // 4 client secrets, 3 access and 3 refresh tokens, 1 PKCE verifier, the canary.
    assert_eq!(usage(&before), HashMap::from([(old_id.clone(), 12)]));

    // Viewers and consumers may not rotate or back up.
    for token in [VIEWER, CONSUMER] {
        let mut denied = daemon.maintenance(token).await;
        let status = denied.rotate_keys(pb::RotateKeysRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        let status = denied.backup(pb::BackupRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
    }

    // Load a new active key, keeping the generated one as previous.
    let old_key_file = daemon.config.key_file();
    let new_key_file = write_key(daemon.dir.path(), "new.key");
    let mut config = daemon.config.clone();
    config.keys.key_file = new_key_file.clone();
    config.keys.previous_key_files = vec![old_key_file.clone()];
    daemon.daemon().reload_handle().reload(&config).await.expect("reload with the new key");

    // Dropping the old key now is refused: it still seals everything.
    let mut dropped = config.clone();
    dropped.keys.previous_key_files.clear();
    let refused = daemon.daemon().reload_handle().reload(&dropped).await.expect_err("old key still in use");
    assert!(refused.to_string().contains(&old_id), "{refused}");

    let rotated = maintenance.rotate_keys(pb::RotateKeysRequest { dry_run: false }).await.unwrap().into_inner();
    let new_id = rotated.active_key_id.clone();
    assert_ne!(new_id, old_id);
    assert_eq!(rotated.unreadable, 0);
    assert_eq!(rotated.resealed, 4 + 3 + 1 + 1, "4 profiles, 3 connections, 1 consent, the canary");
    assert_eq!(usage(&rotated), HashMap::from([(new_id.clone(), 12), (old_id.clone(), 0)]));
    assert!(rotated.keys.iter().any(|k| k.key_id == old_id && k.loaded && !k.active));

    // Everything still opens: tokens, a refresh (refresh token and client secret), the consent.
    let mut tokens = daemon.tokens(CONSUMER).await;
    let token = tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-a".into(), min_valid_for: None })
        .await
        .unwrap()
        .into_inner();
    assert!(!token.access_token.is_empty());
    apps.refresh_now(pb::RefreshNowRequest { name: "mail-b".into() }).await.expect("refresh after rotation");
    let redirect = support::consent_redirect(&pending.authorization_url).await;
    apps.complete_connect(pb::CompleteConnectRequest { redirect_url: redirect, ..Default::default() })
        .await
        .expect("the pending consent completes with its re-sealed verifier");

    // The old key can go now, and a restart with only the new key opens the store.
    daemon.daemon().reload_handle().reload(&dropped).await.expect("old key no longer needed");
    daemon.config = dropped;
    std::fs::remove_file(&old_key_file).unwrap();
    daemon.restart().await;
    let mut tokens = daemon.tokens(CONSUMER).await;
    let after = tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-c".into(), min_valid_for: None })
        .await
        .unwrap()
        .into_inner();
    assert!(!after.access_token.is_empty());
    let mut maintenance = daemon.maintenance(ADMIN).await;
    let last = maintenance.rotate_keys(pb::RotateKeysRequest { dry_run: true }).await.unwrap().into_inner();
    // The completed consent traded its verifier for an access and a refresh token.
    assert_eq!(usage(&last), HashMap::from([(new_id, 13)]));
    daemon.stop().await;
}

/// A backup streamed from the running daemon holds whole sealed lines and restores into an
/// empty directory that serves the same profiles and the same token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_restores_into_an_empty_directory() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    for i in 0..40 {
        support::create_and_connect(&mut apps, &format!("mail-{i:02}"), &provider).await;
    }
    let mut tokens = daemon.tokens(CONSUMER).await;
    let served = tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-07".into(), min_valid_for: None })
        .await
        .unwrap()
        .into_inner();

    let mut maintenance = daemon.maintenance(ADMIN).await;
    let mut stream = maintenance.backup(pb::BackupRequest {}).await.unwrap().into_inner();
    let (mut backup, mut entries) = (Vec::new(), 0);
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.data.ends_with(b"\n"), "chunks hold whole lines");
        backup.extend_from_slice(&chunk.data);
        entries += chunk.entries;
    }
    assert_eq!(entries as usize, backup.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count());
    let text = String::from_utf8(backup.clone()).unwrap();
    assert!(!text.contains(&served.access_token), "secrets stay sealed in a backup");

    // Restore into an empty directory with the same key, start there: same profiles, same token.
    let restored_dir = crate::support::private_tempdir().unwrap();
    let mut config = support::test_config(restored_dir.path());
    config.keys.key_file = daemon.config.key_file();
    let count = tokend::daemon::backup::import(&config, &mut std::io::Cursor::new(backup)).expect("import");
    assert_eq!(count as u64, entries);
    let restored = support::start_daemon(&config, None).await.expect("restored daemon starts");
    let mut restored_apps = support::apps_client(restored.grpc_addr, ADMIN).await;
    let list = restored_apps.list_profiles(pb::ListProfilesRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.profiles.len(), 40);
    let mut restored_tokens = support::tokens_client(restored.grpc_addr, CONSUMER).await;
    let again = restored_tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-07".into(), min_valid_for: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.access_token, served.access_token);
    restored.stop().await;
    daemon.stop().await;
}

/// Refreshes that rotate refresh tokens keep running while the secrets are re-sealed: none is
/// lost (each profile refreshes again afterwards with the refresh token it holds) and no value
/// is left under the old key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_races_with_refreshes() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    let names: Vec<String> = (0..30).map(|i| format!("mail-{i:02}")).collect();
    for name in &names {
        support::create_and_connect(&mut apps, name, &provider).await;
    }
    let mut config = daemon.config.clone();
    config.keys.previous_key_files = vec![daemon.config.key_file()];
    config.keys.key_file = write_key(daemon.dir.path(), "new.key");
    daemon.daemon().reload_handle().reload(&config).await.expect("reload with the new key");

    let refresher = {
        let mut apps = daemon.apps(ADMIN).await;
        let names = names.clone();
        tokio::spawn(async move {
            for round in 0..3 {
                for name in &names {
                    let reply = apps.refresh_now(pb::RefreshNowRequest { name: name.clone() }).await;
                    assert!(reply.is_ok(), "refresh of {name} in round {round}: {reply:?}");
                }
            }
        })
    };
    let mut maintenance = daemon.maintenance(ADMIN).await;
    let rotated = maintenance.rotate_keys(pb::RotateKeysRequest { dry_run: false }).await.unwrap().into_inner();
    refresher.await.unwrap();
    assert_eq!(rotated.unreadable, 0);
    // Whatever the refresher wrote after the last pass was sealed under the new key anyway.
    let settled = maintenance.rotate_keys(pb::RotateKeysRequest { dry_run: true }).await.unwrap().into_inner();
    let left: u64 = settled.keys.iter().filter(|k| !k.active).map(|k| k.sealed_values).sum();
    assert_eq!(left, 0, "{:?}", settled.keys);
    for name in &names {
        apps.refresh_now(pb::RefreshNowRequest { name: name.clone() }).await.expect("refresh token still valid");
    }
    assert_eq!(provider.reuse_events(), 0, "no refresh token was used twice");
    daemon.stop().await;
}
