//! Integration tests: the real daemon in-process on 127.0.0.1 port 0, the generated gRPC client,
//! and a scriptable fake provider.

use std::sync::Arc;
use std::time::Duration;

use tokend::api::pb;
use tonic::Code;

use crate::support::*;

fn get_token(name: &str, min_valid_secs: i64) -> pb::GetAccessTokenRequest {
    pb::GetAccessTokenRequest {
        name: name.into(),
        min_valid_for: Some(prost_types::Duration { seconds: min_valid_secs, nanos: 0 }),
    }
}

/// Connect → token → refresh with rotation → disconnect with revocation, end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_connection_cycle() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    let mut tokens = daemon.tokens(ADMIN).await;

    let profile = create_and_connect(&mut apps, "box-ops", &provider).await;
    assert_eq!(profile.status, pb::Status::Connected as i32);
    assert!(profile.refresh_token_enabled);
    assert!(profile.authorization_expires_at.is_some());
    assert!(profile.client_secret.is_empty() && profile.client_secret_set);
    let query = provider.last_authorize_query().expect("authorize query");
    assert_eq!(query.get("code_challenge_method").map(String::as_str), Some("S256"));
    assert_eq!(query.get("redirect_uri"), Some(&daemon.callback_url()));

    let first = tokens.get_access_token(get_token("box-ops", 60)).await.expect("token").into_inner();
    assert!(provider.is_active(&first.access_token));
    assert_eq!(provider.issued_access_tokens(), vec![first.access_token.clone()]);
    assert_eq!(first.token_type, "Bearer");

    let old_refresh = provider.current_refresh_token().expect("refresh token");
    apps.refresh_now(pb::RefreshNowRequest { name: "box-ops".into() }).await.expect("refresh");
    assert_eq!(provider.refresh_requests(), 1);
    assert_ne!(provider.current_refresh_token().as_ref(), Some(&old_refresh), "rotated");
    let second = tokens.get_access_token(get_token("box-ops", 60)).await.expect("token").into_inner();
    assert_ne!(second.access_token, first.access_token);
    assert!(second.token_version > first.token_version);
    // A second refresh works with the rotated token: the first rotation was kept.
    apps.refresh_now(pb::RefreshNowRequest { name: "box-ops".into() }).await.expect("refresh with rotated token");
    assert_eq!(provider.reuse_events(), 0);

    let reply =
        apps.disconnect(pb::DisconnectRequest { name: "box-ops".into() }).await.expect("disconnect").into_inner();
    assert!(reply.revoked, "{}", reply.detail);
    assert_eq!(reply.revocation, pb::Revocation::Revoked as i32);
    assert!(!provider.revoked().is_empty());
    let err = tokens.get_access_token(get_token("box-ops", 60)).await.expect_err("disconnected");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("not connected"), "{}", err.message());
    let profile = apps.get_profile(pb::GetProfileRequest { name: "box-ops".into() }).await.expect("get").into_inner();
    assert_eq!(profile.status, pb::Status::NotConnected as i32);
    assert!(profile.authorization_expires_at.is_none() && !profile.refresh_token_enabled);

    let mut secrets = provider.issued_access_tokens();
    secrets.extend(provider.issued_refresh_tokens());
    secrets.push("test-secret".into());
    assert_no_secret_in_logs(&secrets);
    daemon.stop().await;
}

/// Many concurrent callers on a token too old for them cause exactly one provider refresh, and
/// all get the same new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight() {
    let provider = FakeProvider::start().await;
    provider.set_access_token_lifetime(30);
    let clock = tokend::clock::ManualClock::new(1_800_000_000_000);
    let daemon = TestDaemon::start_with(|_| {}, Some(clock.clone())).await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-in", &provider).await;
    // 20 s of its 30 s gone: too old for callers asking for 60 s (which count at most 15 s).
    clock.advance_ms(20_000);
    provider.push_fault(Fault::Delay(Duration::from_millis(300)));
    let client = daemon.tokens(CONSUMER).await;
    let mut calls = Vec::new();
    for _ in 0..200 {
        let mut client = client.clone();
        calls.push(tokio::spawn(async move { client.get_access_token(get_token("mail-in", 60)).await }));
    }
    let mut seen = std::collections::HashSet::new();
    for call in calls {
        let token = call.await.expect("task").expect("token").into_inner();
        seen.insert(token.access_token);
    }
    assert_eq!(provider.refresh_requests(), 1, "one refresh for all callers");
    assert_eq!(provider.reuse_events(), 0, "no rotated token was presented twice");
    assert_eq!(seen.len(), 1, "every caller got the same token");
    assert_eq!(seen.iter().next(), provider.issued_access_tokens().last());
    daemon.stop().await;
}

/// A caller that gives up does not cancel the refresh it started: the rotated token is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_caller_keeps_rotation() {
    let provider = FakeProvider::start().await;
    provider.set_access_token_lifetime(30);
    let clock = tokend::clock::ManualClock::new(1_800_000_000_000);
    let daemon = TestDaemon::start_with(|_| {}, Some(clock.clone())).await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-out", &provider).await;
    clock.advance_ms(20_000);
    provider.push_fault(Fault::Delay(Duration::from_millis(500)));
    let mut tokens = daemon.tokens(ADMIN).await;
    let mut request = tonic::Request::new(get_token("mail-out", 60));
    request.set_timeout(Duration::from_millis(100));
    let err = tokens.get_access_token(request).await.expect_err("deadline");
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    // The refresh finishes on its own; then the next refresh uses the rotated token.
    for _ in 0..50 {
        if provider.refresh_requests() == 1
            && daemon.daemon().engine().cached("mail-out").and_then(|s| s.token.clone()).map(|t| t.token_version)
                == Some(2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    apps.refresh_now(pb::RefreshNowRequest { name: "mail-out".into() }).await.expect("rotated token was kept");
    daemon.stop().await;
}

/// invalid_grant → NEEDS_REAUTHORIZATION; the still-valid token keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_needs_reauthorization() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "gdrive", &provider).await;
    provider.revoke_all_grants();
    let err = apps.refresh_now(pb::RefreshNowRequest { name: "gdrive".into() }).await.expect_err("dead grant");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let profile = apps.get_profile(pb::GetProfileRequest { name: "gdrive".into() }).await.expect("get").into_inner();
    assert_eq!(profile.status, pb::Status::NeedsReauthorization as i32);
    assert!(
        profile.last_error.contains("invalid_grant") && profile.last_error.contains("Connect"),
        "{}",
        profile.last_error
    );
    let mut tokens = daemon.tokens(ADMIN).await;
    let token = tokens.get_access_token(get_token("gdrive", 60)).await.expect("held token still served");
    assert!(!token.into_inner().access_token.is_empty());
    // A token nobody holds long enough: the error says an admin must reconnect.
    let err = tokens.get_access_token(get_token("gdrive", 7200)).await;
    assert!(err.is_ok(), "unexpired token is served even below min_valid_for");
    // Reconnecting heals it.
    let start = apps.connect(pb::ConnectRequest { name: "gdrive".into() }).await.expect("connect").into_inner();
    let redirect = consent_redirect(&start.authorization_url).await;
    apps.complete_connect(pb::CompleteConnectRequest { redirect_url: redirect, ..Default::default() })
        .await
        .expect("complete");
    let profile = apps.get_profile(pb::GetProfileRequest { name: "gdrive".into() }).await.expect("get").into_inner();
    assert_eq!(profile.status, pb::Status::Connected as i32);
    daemon.stop().await;
}

/// Transient failures → REFRESH_FAILING while the token is served; the next success recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failure_and_recovery() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    let mut events = apps
        .watch_profiles(pb::WatchProfilesRequest { names: vec!["att".into()], send_initial: false })
        .await
        .expect("watch")
        .into_inner();
    create_and_connect(&mut apps, "att", &provider).await;
    for fault in [
        Fault::Status(503),
        Fault::RateLimited { retry_after_secs: 7 },
        Fault::StatusBody { status: 200, content_type: "text/html", body: "<html>oops</html>".into() },
        Fault::StatusBody { status: 200, content_type: "application/json", body: "{\"access_token\": 5}".into() },
    ] {
        provider.push_fault(fault.clone());
        if matches!(fault, Fault::StatusBody { .. }) {
            // An unreadable reply may hide a rotation: tokend asks once more, which fails too.
            provider.push_fault(fault.clone());
        }
        let err = apps.refresh_now(pb::RefreshNowRequest { name: "att".into() }).await.expect_err("fault");
        assert_eq!(err.code(), Code::Unavailable, "{fault:?}: {}", err.message());
        let profile = apps.get_profile(pb::GetProfileRequest { name: "att".into() }).await.expect("get").into_inner();
        assert_eq!(profile.status, pb::Status::RefreshFailing as i32, "{fault:?}");
        assert!(!profile.last_error.is_empty());
        assert!(!profile.last_error.contains("oops"), "bodies are not echoed");
    }
    let mut tokens = daemon.tokens(ADMIN).await;
    tokens.get_access_token(get_token("att", 60)).await.expect("held token served while failing");
    apps.refresh_now(pb::RefreshNowRequest { name: "att".into() }).await.expect("recovers");
    let profile = apps.get_profile(pb::GetProfileRequest { name: "att".into() }).await.expect("get").into_inner();
    assert_eq!(profile.status, pb::Status::Connected as i32);
    assert_eq!(profile.consecutive_failures, 0);
    // The watch stream saw the failure and the recovery.
    let mut statuses = Vec::new();
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_millis(200), events.message()).await.map(|r| r.transpose())
    {
        statuses.push(event.profile.map(|p| p.status).unwrap_or_default());
    }
    assert!(statuses.contains(&(pb::Status::RefreshFailing as i32)));
    assert_eq!(statuses.last(), Some(&(pb::Status::Connected as i32)));
    daemon.stop().await;
}

/// The scheduler refreshes proactively before expiry, driven by a manual clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proactive_refresh_before_expiry() {
    let provider = FakeProvider::start().await;
    provider.set_access_token_lifetime(600);
    let clock = tokend::clock::ManualClock::new(1_800_000_000_000);
    let daemon = TestDaemon::start_with(|_| {}, Some(clock.clone())).await;
    let mut apps = daemon.apps(ADMIN).await;
    let profile = create_and_connect(&mut apps, "sched", &provider).await;
    let expires = profile.authorization_expires_at.expect("expiry").seconds;
    let next = profile.next_refresh_at.expect("next refresh").seconds;
    // 600 s token: skew = clamp(120, 120, 300) × (1 + 0.1 × 0.5) = 126 s ahead.
    assert_eq!(expires - next, 126);
    clock.advance_ms(400_000);
    daemon.daemon().engine().wake_scheduler();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(provider.refresh_requests(), 0, "not due yet");
    clock.advance_ms(80_000);
    daemon.daemon().engine().wake_scheduler();
    for _ in 0..100 {
        if provider.refresh_requests() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(provider.refresh_requests(), 1, "refreshed once it was due");
    daemon.stop().await;
}

/// Tokens and connections survive a restart; the rotated refresh token is used afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_connections() {
    let provider = FakeProvider::start().await;
    let mut daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "persist", &provider).await;
    apps.refresh_now(pb::RefreshNowRequest { name: "persist".into() }).await.expect("refresh");
    let before =
        daemon.tokens(ADMIN).await.get_access_token(get_token("persist", 60)).await.expect("token").into_inner();
    daemon.restart().await;
    let after =
        daemon.tokens(ADMIN).await.get_access_token(get_token("persist", 60)).await.expect("token").into_inner();
    assert_eq!(before.access_token, after.access_token);
    let mut apps = daemon.apps(ADMIN).await;
    apps.refresh_now(pb::RefreshNowRequest { name: "persist".into() }).await.expect("refresh after restart");
    daemon.stop().await;
}

/// Roles: viewers never get tokens; consumers only for their patterns, and a name outside them
/// answers PERMISSION_DENIED whether it exists or not; no token is UNAUTHENTICATED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_authentication() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-box", &provider).await;
    create_and_connect(&mut apps, "crm", &provider).await;

    let mut consumer = daemon.tokens(CONSUMER).await;
    consumer.get_access_token(get_token("mail-box", 60)).await.expect("allowed");
    for name in ["crm", "does-not-exist"] {
        let err = consumer.get_access_token(get_token(name, 60)).await.expect_err("denied");
        assert_eq!(err.code(), Code::PermissionDenied, "{name}");
    }
    let err = consumer.get_access_token(get_token("mail-nope", 60)).await.expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    let mut consumer_apps = daemon.apps(CONSUMER).await;
    let err = consumer_apps.list_profiles(pb::ListProfilesRequest::default()).await.expect_err("consumer lists");
    assert_eq!(err.code(), Code::PermissionDenied);

    let mut viewer_apps = daemon.apps(VIEWER).await;
    let list = viewer_apps.list_profiles(pb::ListProfilesRequest::default()).await.expect("viewer lists").into_inner();
    assert_eq!(list.profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["crm", "mail-box"]);
    let err = viewer_apps.disconnect(pb::DisconnectRequest { name: "crm".into() }).await.expect_err("viewer");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = daemon.tokens(VIEWER).await.get_access_token(get_token("crm", 60)).await.expect_err("viewer token");
    assert_eq!(err.code(), Code::PermissionDenied);

    for token in ["", "wrong-token"] {
        let err =
            daemon.apps(token).await.list_profiles(pb::ListProfilesRequest::default()).await.expect_err("no auth");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    daemon.stop().await;
}

/// Bad input gets a clear error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    let create = |p: pb::Profile| pb::CreateProfileRequest { profile: Some(p) };
    let base = fake_profile("good", &provider);
    let cases = [
        (pb::Profile { name: "Bad Name".into(), ..base.clone() }, "name"),
        (pb::Profile { provider: String::new(), ..base.clone() }, "provider"),
        (pb::Profile { provider: "myspace".into(), ..base.clone() }, "provider"),
        (pb::Profile { client_id: String::new(), ..base.clone() }, "client_id"),
        (pb::Profile { token_endpoint: String::new(), ..base.clone() }, "token_endpoint"),
        (pb::Profile { token_endpoint: "http://example.com/token".into(), ..base.clone() }, "token_endpoint"),
        (pb::Profile { token_endpoint: "ftp://127.0.0.1/x".into(), ..base.clone() }, "token_endpoint"),
    ];
    for (profile, field) in cases {
        let err = apps.create_profile(create(profile)).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let err = apps.create_profile(pb::CreateProfileRequest { profile: None }).await.expect_err("none");
    assert_eq!(err.code(), Code::InvalidArgument);
    let list = apps.list_profiles(pb::ListProfilesRequest::default()).await.expect("list").into_inner();
    assert!(list.profiles.is_empty(), "nothing was created");

    apps.create_profile(create(base.clone())).await.expect("create");
    let err =
        apps.create_profile(create(pb::Profile { description: "dup".into(), ..base.clone() })).await.expect_err("dup");
    assert_eq!(err.code(), Code::AlreadyExists);
    let got = apps.get_profile(pb::GetProfileRequest { name: "good".into() }).await.expect("get").into_inner();
    assert_eq!(got.description, base.description, "the duplicate changed nothing");

    let err = apps.get_profile(pb::GetProfileRequest { name: "missing".into() }).await.expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    let err = apps.connect(pb::ConnectRequest { name: "missing".into() }).await.expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    let err =
        apps.list_profiles(pb::ListProfilesRequest { page_size: -1, ..Default::default() }).await.expect_err("page");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Consent states: unknown, replayed, and a provider error.
    let err = apps
        .complete_connect(pb::CompleteConnectRequest { code: "c".into(), state: "forged".into(), ..Default::default() })
        .await
        .expect_err("forged state");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let start = apps.connect(pb::ConnectRequest { name: "good".into() }).await.expect("connect").into_inner();
    assert_eq!(start.status, pb::Status::Connecting as i32);
    let redirect = consent_redirect(&start.authorization_url).await;
    apps.complete_connect(pb::CompleteConnectRequest { redirect_url: redirect.clone(), ..Default::default() })
        .await
        .expect("complete");
    let err = apps
        .complete_connect(pb::CompleteConnectRequest { redirect_url: redirect, ..Default::default() })
        .await
        .expect_err("replay");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let profile = apps.get_profile(pb::GetProfileRequest { name: "good".into() }).await.expect("get").into_inner();
    assert_eq!(profile.status, pb::Status::Connected as i32, "the replay changed nothing");
    assert_eq!(provider.token_requests("authorization_code"), 1, "the replay never reached the provider");

    apps.create_profile(create(fake_profile("denied", &provider))).await.expect("create");
    provider.deny_next_consent();
    let start = apps.connect(pb::ConnectRequest { name: "denied".into() }).await.expect("connect").into_inner();
    let redirect = consent_redirect(&start.authorization_url).await;
    let err = apps
        .complete_connect(pb::CompleteConnectRequest { redirect_url: redirect, ..Default::default() })
        .await
        .expect_err("denied");
    assert!(err.message().contains("access_denied"), "{}", err.message());
    let profile = apps.get_profile(pb::GetProfileRequest { name: "denied".into() }).await.expect("get").into_inner();
    assert_eq!(profile.status, pb::Status::NotConnected as i32);
    assert!(profile.last_error.contains("access_denied"));

    // An oversized message is refused before it reaches a handler.
    let huge = pb::Profile { description: "x".repeat(2 * 1024 * 1024), ..fake_profile("huge", &provider) };
    let err = apps.create_profile(create(huge)).await.expect_err("too large");
    assert_eq!(err.code(), Code::OutOfRange);
    daemon.stop().await;
}

/// Update with a mask changes only the named fields; delete disconnects first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_delete() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "upd", &provider).await;
    let update = pb::UpdateProfileRequest {
        profile: Some(pb::Profile {
            name: "upd".into(),
            description: "new text".into(),
            client_id: "ignored".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["description".into()] }),
    };
    let updated = apps.update_profile(update).await.expect("update").into_inner();
    assert_eq!(updated.description, "new text");
    assert_eq!(updated.client_id, "test-client");
    assert!(updated.client_secret_set);
    // The secret is unchanged: a refresh still authenticates.
    apps.refresh_now(pb::RefreshNowRequest { name: "upd".into() }).await.expect("refresh");
    let reply =
        apps.delete_profile(pb::DeleteProfileRequest { name: "upd".into() }).await.expect("delete").into_inner();
    assert!(reply.disconnect.expect("disconnect").revoked);
    let err = apps.get_profile(pb::GetProfileRequest { name: "upd".into() }).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    daemon.stop().await;
}

/// A second daemon on the same data directory, a missing key file and a wrong key are refused
/// with distinct exit codes, and touch no data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors() {
    let provider = FakeProvider::start().await;
    let first = TestDaemon::start().await;
    let mut apps = first.apps(ADMIN).await;
    create_and_connect(&mut apps, "keep", &provider).await;
    let err = start_daemon(&first.config, None).await.expect_err("locked");
    assert_eq!(err.exit_code(), 75, "{err}");
    let config = first.config.clone();
    let dir = first.dir.path().to_path_buf();
    let mut first = first;
    if let Some(d) = first.daemon.take() {
        d.stop().await;
    }
    let key_file = dir.join("tokend.key");
    let key = std::fs::read(&key_file).expect("key");
    std::fs::remove_file(&key_file).expect("remove key");
    let err = start_daemon(&config, None).await.expect_err("missing key");
    assert_eq!(err.exit_code(), 65);
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(!key_file.exists(), "no key was generated over existing secrets");
    let other_key = format!("{}\n", tokend::crypto::generate_key_text().as_str());
    tokend::crypto::write_private_file(&key_file, other_key.as_bytes()).expect("write");
    let err = start_daemon(&config, None).await.expect_err("wrong key");
    assert_eq!(err.exit_code(), 65);
    assert!(err.to_string().contains("does not open"), "{err}");
    std::fs::write(&key_file, key).expect("restore key");
    let daemon = start_daemon(&config, None).await.expect("right key");
    let mut tokens = tokens_client(daemon.grpc_addr, ADMIN).await;
    tokens.get_access_token(get_token("keep", 60)).await.expect("data intact");
    daemon.stop().await;
    drop(first);
}

/// With no callers configured, an admin token is generated in the data directory (mode 0600)
/// and works; nothing else is open but health and reflection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_admin_token() {
    let daemon = TestDaemon::start_with(|c| c.callers.clear(), None).await;
    let path = daemon.dir.path().join("admin.token");
    let token = std::fs::read_to_string(&path).expect("admin.token").trim().to_owned();
    assert!(token.len() >= 22);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
    }
    daemon.apps(&token).await.list_profiles(pb::ListProfilesRequest::default()).await.expect("admin");
    let err = daemon.apps("guess").await.list_profiles(pb::ListProfilesRequest::default()).await.expect_err("guess");
    assert_eq!(err.code(), Code::Unauthenticated);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", daemon.daemon().grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply =
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health open");
    assert_eq!(reply.into_inner().status, 1);
    assert_no_secret_in_logs(&[token]);
    daemon.stop().await;
}

/// The HTTP side: health, readiness and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "metered", &provider).await;
    let base = format!("http://{}", daemon.daemon().http_addr);
    let http = browser();
    assert_eq!(http.get(format!("{base}/healthz")).send().await.expect("healthz").status().as_u16(), 200);
    assert_eq!(http.get(format!("{base}/readyz")).send().await.expect("readyz").status().as_u16(), 200);
    let metrics = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("body");
    assert!(metrics.contains("tokend_profiles{status=\"connected\"} 1"), "{metrics}");
    let page = http.get(format!("{base}/oauth/callback?state=forged&code=x")).send().await.expect("callback");
    assert_eq!(page.status().as_u16(), 400);
    let _ = Arc::new(());
    daemon.stop().await;
}

/// Server reflection answers in both versions (v1 for new grpcurl, v1alpha for 1.8.6) and lists
/// every service, health included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let daemon = TestDaemon::start().await;
    let uri = format!("http://{}", daemon.daemon().grpc_addr);
    let channel = tonic::transport::Endpoint::from_shared(uri).expect("uri").connect().await.expect("connect");

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut replies = client.server_reflection_info(tokio_stream::iter([request])).await.expect("v1").into_inner();
    let reply = replies.message().await.expect("reply").expect("one reply");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = reply.message_response
    else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["tokend.v1.ConnectedApps", "tokend.v1.Tokens", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut replies = client.server_reflection_info(tokio_stream::iter([request])).await.expect("v1alpha").into_inner();
    assert!(replies.message().await.expect("reply").is_some());
    daemon.stop().await;
}

/// WatchAccessToken sends the current token, then each new one after a refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_access_token_streams_rotations() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-watch", &provider).await;
    let mut tokens = daemon.tokens(CONSUMER).await;
    let mut stream = tokens
        .watch_access_token(pb::WatchAccessTokenRequest { name: "mail-watch".into(), min_valid_for: None })
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("first").expect("some");
    // One refresh at a time: the stream sends the newest token, so two refreshes done before it
    // reads the first event would reach it as one (by design, #17).
    apps.refresh_now(pb::RefreshNowRequest { name: "mail-watch".into() }).await.expect("refresh");
    let second = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("some");
    apps.refresh_now(pb::RefreshNowRequest { name: "mail-watch".into() }).await.expect("refresh");
    let third = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("some");
    assert!(first.token_version < second.token_version && second.token_version < third.token_version);
    assert_eq!(Some(&third.access_token), provider.issued_access_tokens().last());
    // Shutdown ends the stream cleanly.
    daemon.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("ends in time");
    assert!(!matches!(end, Ok(Some(_))), "no more tokens after shutdown");
}

/// Metrics count refreshes and hand-outs and show each token's time to expiry; the audit trail
/// records admin actions one by one and tallies hand-outs per caller and profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_audit() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start_with(|c| c.audit.handout_interval_secs = 1, None).await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-audited", &provider).await;
    apps.refresh_now(pb::RefreshNowRequest { name: "mail-audited".into() }).await.expect("refresh");
    let mut tokens = daemon.tokens(CONSUMER).await;
    for _ in 0..3 {
        tokens.get_access_token(get_token("mail-audited", 60)).await.expect("token");
    }
    let denied = daemon.apps(VIEWER).await.disconnect(pb::DisconnectRequest { name: "mail-audited".into() }).await;
    assert!(denied.is_err());

    let base = format!("http://{}", daemon.daemon().http_addr);
    let metrics = browser().get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("body");
    for wanted in [
        "tokend_refreshes_total{outcome=\"ok\"} 1",
        "tokend_token_handouts_total 3",
        "tokend_token_expires_in_seconds{profile=\"mail-audited\"} 3",
        "tokend_status_changes_total{from=\"connecting\",to=\"connected\"} 1",
        "tokend_refresh_duration_seconds_count 1",
    ] {
        assert!(metrics.contains(wanted), "{wanted} in:\n{metrics}");
    }
    // The consent and the refresh each stored a rotated refresh token: flushed, each by a flush
    // of its own or one shared.
    let value = |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok());
    let flushes = value("tokend_store_flushes_total ").unwrap_or(0);
    let waits = value("tokend_store_flush_waits_total ").unwrap_or(0);
    assert!(flushes >= 1 && waits >= 2 && waits >= flushes, "{flushes} flushes for {waits} writers in:\n{metrics}");
    assert_eq!(value("tokend_store_flush_duration_seconds_count "), Some(flushes));

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logs = logs();
        let tallied = logs.lines().any(|l| {
            l.contains("token hand-outs")
                && l.contains("caller=mail-worker")
                && l.contains("mail-audited")
                && l.contains("count=3")
        });
        if tallied {
            assert!(logs.lines().any(|l| l.contains("admin action")
                && l.contains("action=\"RefreshNow\"")
                && l.contains("caller=ops")));
            assert!(logs.lines().any(|l| l.contains("admin action")
                && l.contains("caller=dashboard")
                && l.contains("outcome=\"error\"")));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "hand-out tally written within the interval");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await;
}

/// Profiles declared in the configuration are created at start (secrets from files), marked
/// managed (RPC edits refused), updated on reload, and pruned only when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_profiles() {
    let provider = FakeProvider::start().await;
    let secrets = crate::support::private_tempdir().expect("dir");
    let secret_file = secrets.path().join("box-secret");
    std::fs::write(&secret_file, "test-secret\n").expect("secret");
    let declared = tokend::config::DeclaredProfile {
        name: "declared-box".into(),
        description: "from the ConfigMap".into(),
        provider: "custom".into(),
        client_id: "test-client".into(),
        client_secret_file: secret_file.clone(),
        authorization_endpoint: provider.authorization_endpoint(),
        token_endpoint: provider.token_endpoint(),
        revocation_endpoint: provider.revocation_endpoint(),
        ..Default::default()
    };
    let first = declared.clone();
    let daemon = TestDaemon::start_with(move |c| c.profiles = vec![first], None).await;
    let mut apps = daemon.apps(ADMIN).await;
    let profile =
        apps.get_profile(pb::GetProfileRequest { name: "declared-box".into() }).await.expect("declared").into_inner();
    assert!(profile.managed && profile.client_secret_set);
    let err = apps
        .update_profile(pb::UpdateProfileRequest {
            profile: Some(pb::Profile {
                name: "declared-box".into(),
                description: "rpc edit".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["description".into()] }),
        })
        .await
        .expect_err("managed");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("configuration file"), "{}", err.message());
    let err = apps.delete_profile(pb::DeleteProfileRequest { name: "declared-box".into() }).await.expect_err("managed");
    assert_eq!(err.code(), Code::FailedPrecondition);
    // Connecting works with the secret from the file.
    let start = apps.connect(pb::ConnectRequest { name: "declared-box".into() }).await.expect("connect").into_inner();
    let redirect = consent_redirect(&start.authorization_url).await;
    apps.complete_connect(pb::CompleteConnectRequest { redirect_url: redirect, ..Default::default() })
        .await
        .expect("complete");

    let mut config = daemon.config.clone();
    config.profiles[0].description = "changed in git".into();
    daemon.daemon().reload_handle().reload(&config).await.expect("reload");
    let profile =
        apps.get_profile(pb::GetProfileRequest { name: "declared-box".into() }).await.expect("get").into_inner();
    assert_eq!(profile.description, "changed in git");
    assert_eq!(profile.status, pb::Status::Connected as i32, "an update keeps the connection");

    // A missing secret file is refused and changes nothing.
    let mut broken = config.clone();
    broken.profiles[0].client_secret_file = secrets.path().join("missing");
    broken.profiles[0].description = "never applied".into();
    assert!(daemon.daemon().reload_handle().reload(&broken).await.is_err());
    let profile =
        apps.get_profile(pb::GetProfileRequest { name: "declared-box".into() }).await.expect("get").into_inner();
    assert_eq!(profile.description, "changed in git");

    // A bad entry after a good new one: the whole reload is refused, the good one not applied.
    let mut half_bad = config.clone();
    let mut good = half_bad.profiles[0].clone();
    good.name = "declared-second".into();
    let mut bad = good.clone();
    bad.name = "declared-third".into();
    bad.token_endpoint = "ftp://example.com/token".into();
    half_bad.profiles.extend([good, bad]);
    let err = daemon.daemon().reload_handle().reload(&half_bad).await.expect_err("bad entry");
    assert!(err.to_string().contains("profiles[2]"), "{err}");
    let err =
        apps.get_profile(pb::GetProfileRequest { name: "declared-second".into() }).await.expect_err("not applied");
    assert_eq!(err.code(), Code::NotFound);

    // Undeclared: kept without pruning, deleted with it.
    config.profiles.clear();
    daemon.daemon().reload_handle().reload(&config).await.expect("reload");
    apps.get_profile(pb::GetProfileRequest { name: "declared-box".into() }).await.expect("still there");
    config.prune_profiles = true;
    daemon.daemon().reload_handle().reload(&config).await.expect("reload");
    let err = apps.get_profile(pb::GetProfileRequest { name: "declared-box".into() }).await.expect_err("pruned");
    assert_eq!(err.code(), Code::NotFound);
    assert!(!provider.revoked().is_empty(), "pruning disconnected (revoked) first");
    daemon.stop().await;
}

/// Export of a stopped daemon's store and import into an empty data directory round-trip:
/// the restored daemon (with the same key) serves the same token and keeps refreshing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_round_trip() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "backed-up", &provider).await;
    let token =
        daemon.tokens(ADMIN).await.get_access_token(get_token("backed-up", 60)).await.expect("token").into_inner();
    let config = daemon.config.clone();
    let old_dir = daemon.dir.path().to_path_buf();
    let mut daemon = daemon;
    if let Some(running) = daemon.daemon.take() {
        running.stop().await;
    }
    let mut backup = Vec::new();
    let count = tokend::daemon::backup::export(&config, &mut backup).expect("export");
    assert!(count >= 4, "{count}");
    let text = String::from_utf8(backup.clone()).expect("utf8");
    assert!(!text.contains(&token.access_token) && !text.contains("test-secret"), "secrets stay sealed");

    let new_dir = crate::support::private_tempdir().expect("dir");
    let mut restored = test_config(new_dir.path());
    restored.callers = config.callers.clone();
    tokend::daemon::backup::import(&restored, &mut backup.as_slice()).expect("import");
    assert!(tokend::daemon::backup::import(&restored, &mut backup.as_slice()).is_err(), "only into an empty store");
    std::fs::copy(old_dir.join("tokend.key"), new_dir.path().join("tokend.key")).expect("key");
    let daemon = start_daemon(&restored, None).await.expect("restored daemon");
    let mut tokens = tokens_client(daemon.grpc_addr, ADMIN).await;
    assert_eq!(
        tokens.get_access_token(get_token("backed-up", 60)).await.expect("token").into_inner().access_token,
        token.access_token
    );
    apps_client(daemon.grpc_addr, ADMIN)
        .await
        .refresh_now(pb::RefreshNowRequest { name: "backed-up".into() })
        .await
        .expect("refresh");
    daemon.stop().await;
}

/// A slow provider: past the soft timeout the profile shows REFRESH_FAILING and the held token
/// keeps being served; the answer that finally arrives (with its rotated token) is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_timeout_marks_refresh_failing() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start_with(|c| c.provider.soft_timeout_secs = 1, None).await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "slow", &provider).await;
    provider.push_fault(Fault::Delay(Duration::from_millis(2500)));
    let mut background = apps.clone();
    let refresh =
        tokio::spawn(async move { background.refresh_now(pb::RefreshNowRequest { name: "slow".into() }).await });
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let profile = apps.get_profile(pb::GetProfileRequest { name: "slow".into() }).await.expect("get").into_inner();
    assert_eq!(profile.status, pb::Status::RefreshFailing as i32);
    assert!(profile.last_error.contains("slow"), "{}", profile.last_error);
    daemon.tokens(ADMIN).await.get_access_token(get_token("slow", 60)).await.expect("held token served meanwhile");
    refresh.await.expect("task").expect("the slow answer is stored");
    let profile = apps.get_profile(pb::GetProfileRequest { name: "slow".into() }).await.expect("get").into_inner();
    assert_eq!(profile.status, pb::Status::Connected as i32);
    apps.refresh_now(pb::RefreshNowRequest { name: "slow".into() }).await.expect("the rotated token was kept");
    assert_eq!(provider.reuse_events(), 0);
    daemon.stop().await;
}

/// Between a token write and its publish to the cache (the flush runs in between), the admin
/// view shows what `GetAccessToken` serves, not what the store already holds: a profile never
/// reads CONNECTED while its token cannot be fetched yet. The window is a few milliseconds in
/// real life; here the store is written behind the cache's back to hold it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_view_follows_what_is_served() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-window", &provider).await;
    let store = std::sync::Arc::clone(daemon.daemon().engine().store());
    let connected = store.connection("mail-window").expect("read").expect("connection");
    apps.disconnect(pb::DisconnectRequest { name: "mail-window".into() }).await.expect("disconnect");

    // A new token set lands in the store; the cache has not been told yet.
    let current = store.connection("mail-window").expect("read").expect("connection");
    let mut unpublished = connected.clone();
    unpublished.token_version = current.token_version + 1;
    store
        .write_connection(tokend::store::ConnectionWrite {
            name: "mail-window".into(),
            expected_version: current.version,
            record: unpublished,
            put_consent: None,
            remove_consent: None,
        })
        .expect("write behind the cache");

    let profile =
        apps.get_profile(pb::GetProfileRequest { name: "mail-window".into() }).await.expect("get").into_inner();
    assert_eq!(profile.status(), pb::Status::NotConnected, "shown as served, not as stored");
    assert!(profile.authorization_expires_at.is_none());
    let listed = apps.list_profiles(pb::ListProfilesRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.profiles[0].status(), pb::Status::NotConnected);
    let mut tokens = daemon.tokens(CONSUMER).await;
    let err = tokens.get_access_token(get_token("mail-window", 60)).await.expect_err("not served yet");
    assert_eq!(err.code(), Code::FailedPrecondition);
    daemon.stop().await;
}

/// A call of a service the daemon does not have, or of a method its service does not have, is
/// answered `UNIMPLEMENTED` (by the router, or by the generated server behind the request
/// layer); the known methods answer as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_and_methods_are_unimplemented() {
    let daemon = TestDaemon::start().await;
    let addr = daemon.daemon().grpc_addr;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    for path in ["/nope.v1.Nope/Call", "/tokend.v1.Tokens/Nope", "/grpc.health.v1.Health/Nope"] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let mut request = tonic::Request::new(pb::GetAccessTokenRequest::default());
        request.metadata_mut().insert("authorization", format!("Bearer {CONSUMER}").parse().unwrap());
        let codec = tonic_prost::ProstCodec::<pb::GetAccessTokenRequest, pb::AccessToken>::default();
        let status = grpc.unary(request, http::uri::PathAndQuery::from_static(path), codec).await.unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
    }
    let missing = daemon.tokens(CONSUMER).await.get_access_token(get_token("mail-missing", 60)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    daemon.stop().await;
}

/// `WatchProfiles` with `send_initial` starts with the current state of every watched profile,
/// however many there are: all of them in name order, or the named ones that exist. (It sent
/// the first 1,000 profiles only, so a named profile past them never got its `INITIAL`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_initial_covers_every_profile() {
    use pb::profile_event::Kind;
    use tokend::store::{ConnectionRecord, ProfileRecord};
    const PROFILES: usize = 1_205;
    let daemon = TestDaemon::start().await;
    let store = daemon.daemon().engine().store();
    let names: Vec<String> = (0..PROFILES).map(|i| format!("p{i:05}")).collect();
    for name in &names {
        let profile = ProfileRecord { name: name.clone(), provider: "custom".into(), ..Default::default() };
        store.insert_profile(&profile, &ConnectionRecord::default()).expect("insert");
    }
    let mut apps = daemon.apps(ADMIN).await;

    let request = pb::WatchProfilesRequest { names: Vec::new(), send_initial: true };
    let mut all = apps.watch_profiles(request).await.expect("watch all").into_inner();
    let mut seen = Vec::new();
    while seen.len() < PROFILES {
        let event = next_event(&mut all).await;
        assert_eq!(event.kind(), Kind::Initial, "after {} initial events", seen.len());
        seen.push(event.profile.unwrap_or_default().name);
    }
    assert_eq!(seen, names);

    let request = pb::WatchProfilesRequest { names: vec!["nobody".into(), "p01200".into()], send_initial: true };
    let mut named = apps.watch_profiles(request).await.expect("watch named").into_inner();
    let event = next_event(&mut named).await;
    assert_eq!((event.kind(), event.profile.unwrap_or_default().name.as_str()), (Kind::Initial, "p01200"));
    daemon.daemon().engine().publish("p01200", Kind::Updated, pb::Status::Unspecified, pb::Status::Unspecified);
    let event = next_event(&mut named).await;
    assert_eq!(event.kind(), Kind::Updated, "nothing but p01200's initial state came first");
    daemon.stop().await;
}

/// The next event of a watch (10 s at most).
async fn next_event(stream: &mut tonic::Streaming<pb::ProfileEvent>) -> pb::ProfileEvent {
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
    event.expect("an event within 10 s").expect("no error").expect("the stream goes on")
}
