//! Security rules of issue #14, one regression test per item: a stored client secret is never
//! sent somewhere new unless the update supplies it again (item 5); token and profile streams
//! end when a reload removes or narrows their caller (item 6). Item 7 (names validated before
//! they are matched and remembered) is a unit test in `access::callers`.

use std::time::Duration;

use tokend::api::pb;
use tokend::config::Config;
use tonic::{Code, Streaming};

use crate::support::*;

/// How long a stream may outlive the reload that removed its caller.
const STREAM_END: Duration = Duration::from_secs(1);

/// An update of `name` setting only the fields in `paths` from `profile`.
fn update(profile: pb::Profile, paths: &[&str]) -> pb::UpdateProfileRequest {
    let mask = prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() };
    pb::UpdateProfileRequest { profile: Some(profile), update_mask: Some(mask) }
}

/// Item 5: an update that changes where the stored client secret (and the held tokens) go is
/// refused unless it supplies the client secret again; with it, tokens issued by the old
/// server are dropped locally when the token endpoint's origin changes, and kept otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_only_secrets_cannot_be_redirected() {
    let provider = FakeProvider::start().await;
    let elsewhere = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-a", &provider).await;
    let base = pb::Profile { name: "mail-a".into(), ..Default::default() };

    let moves = [
        ("token_endpoint", pb::Profile { token_endpoint: elsewhere.token_endpoint(), ..base.clone() }),
        ("revocation_endpoint", pb::Profile { revocation_endpoint: elsewhere.revocation_endpoint(), ..base.clone() }),
        (
            "device_authorization_endpoint",
            pb::Profile { device_authorization_endpoint: elsewhere.device_authorization_endpoint(), ..base.clone() },
        ),
        ("issuer", pb::Profile { issuer: elsewhere.issuer(), ..base.clone() }),
        (
            "token_endpoint_auth_method",
            pb::Profile {
                token_endpoint_auth_method: pb::TokenEndpointAuthMethod::ClientSecretBasic as i32,
                ..base.clone()
            },
        ),
    ];
    for (field, input) in moves {
        let status = apps.update_profile(update(input, &[field])).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with("invalid client_secret:"), "{field}: {}", status.message());
    }
    // Nothing was sent anywhere new, and the connection is untouched.
    let metadata = ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"];
    let discovered: usize = metadata.iter().map(|path| elsewhere.metadata_requests(path)).sum();
    assert_eq!(elsewhere.refresh_requests() + discovered, 0);
    let get = pb::GetProfileRequest { name: "mail-a".into() };
    let profile = apps.get_profile(get.clone()).await.unwrap().into_inner();
    assert_eq!(
        (profile.status(), profile.token_endpoint.as_str()),
        (pb::Status::Connected, &*provider.token_endpoint())
    );

    // Same origin, secret supplied: the held tokens stay and keep refreshing.
    let same_origin = pb::Profile {
        token_endpoint: provider.url("/token?tenant=2"),
        client_secret: "test-secret".into(),
        ..base.clone()
    };
    let profile = apps.update_profile(update(same_origin, &["token_endpoint", "client_secret"])).await.unwrap();
    assert_eq!(profile.into_inner().status(), pb::Status::Connected);
    apps.refresh_now(pb::RefreshNowRequest { name: "mail-a".into() }).await.expect("refresh at the same origin");

    // Another origin, secret supplied: the update is made and the tokens are dropped locally.
    let moved =
        pb::Profile { token_endpoint: elsewhere.token_endpoint(), client_secret: "test-secret".into(), ..base.clone() };
    let profile = apps.update_profile(update(moved, &["token_endpoint", "client_secret"])).await.unwrap().into_inner();
    assert_eq!(profile.status(), pb::Status::NotConnected);
    assert!(profile.last_error.contains("another origin"), "{}", profile.last_error);
    let mut tokens = daemon.tokens(ADMIN).await;
    let denied =
        tokens.get_access_token(pb::GetAccessTokenRequest { name: "mail-a".into(), min_valid_for: None }).await;
    assert_eq!(denied.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(elsewhere.refresh_requests(), 0, "the old refresh token never went to the new origin");
    daemon.stop().await;
}

/// The test configuration with `change` applied to the caller named `name`, or without that
/// caller when `change` returns false.
fn with_caller(daemon: &TestDaemon, name: &str, change: impl Fn(&mut tokend::config::CallerConfig) -> bool) -> Config {
    let mut config = daemon.config.clone();
    config.callers.retain_mut(|c| c.name != name || change(c));
    config
}

/// Waits at most [`STREAM_END`] for `stream` to end with an error; returns it.
async fn ended<T: std::fmt::Debug>(stream: &mut Streaming<T>) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + STREAM_END;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("the stream was still open {STREAM_END:?} after the reload"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => return status,
        }
    }
}

/// A connected `mail-a`, and a consumer's `WatchAccessToken` stream on it past its first token.
async fn consumer_watching(provider: &FakeProvider) -> (TestDaemon, Streaming<pb::AccessToken>) {
    let daemon = TestDaemon::start().await;
    create_and_connect(&mut daemon.apps(ADMIN).await, "mail-a", provider).await;
    let mut tokens = daemon.tokens(CONSUMER).await;
    let request = pb::WatchAccessTokenRequest { name: "mail-a".into(), min_valid_for: None };
    let mut stream = tokens.watch_access_token(request).await.unwrap().into_inner();
    stream.message().await.unwrap().expect("the first token");
    (daemon, stream)
}

/// Item 6: a consumer removed by a reload loses its `WatchAccessToken` stream at once
/// (UNAUTHENTICATED, saying it was removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_streams_end_when_their_caller_is_removed() {
    let provider = FakeProvider::start().await;
    let (daemon, mut stream) = consumer_watching(&provider).await;
    let config = with_caller(&daemon, "mail-worker", |_| false);
    daemon.daemon().reload_handle().reload(&config).await.expect("reload");
    let status = ended(&mut stream).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("removed"), "{}", status.message());
    daemon.stop().await;
}

/// Item 6: a consumer whose patterns no longer match the profile after a reload loses its
/// `WatchAccessToken` stream at once (PERMISSION_DENIED); one whose patterns still match keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_streams_end_when_their_caller_no_longer_matches() {
    let provider = FakeProvider::start().await;
    let (daemon, mut stream) = consumer_watching(&provider).await;
    let reload = daemon.daemon().reload_handle();
    // Still matching (another pattern added): the stream goes on.
    let widened = with_caller(&daemon, "mail-worker", |c| {
        c.profiles.push("files-*".into());
        true
    });
    reload.reload(&widened).await.expect("reload");
    assert!(tokio::time::timeout(STREAM_END, stream.message()).await.is_err(), "the stream goes on");
    let narrowed = with_caller(&daemon, "mail-worker", |c| {
        c.profiles = vec!["files-*".into()];
        true
    });
    reload.reload(&narrowed).await.expect("reload");
    let status = ended(&mut stream).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("changed"), "{}", status.message());
    daemon.stop().await;
}

/// Item 6: `WatchProfiles` ends too when a reload removes its viewer, or makes it a consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_streams_end_when_their_caller_is_removed_or_demoted() {
    let daemon = TestDaemon::start().await;
    let reload = daemon.daemon().reload_handle();
    let watch = || async {
        let request = pb::WatchProfilesRequest { send_initial: false, names: Vec::new() };
        daemon.apps(VIEWER).await.watch_profiles(request).await.unwrap().into_inner()
    };
    let mut stream = watch().await;
    let demoted = with_caller(&daemon, "dashboard", |c| {
        c.role = "consumer".parse().unwrap();
        true
    });
    reload.reload(&demoted).await.expect("reload");
    let status = ended(&mut stream).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    reload.reload(&daemon.config).await.expect("reload");
    let mut stream = watch().await;
    reload.reload(&with_caller(&daemon, "dashboard", |_| false)).await.expect("reload");
    let status = ended(&mut stream).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    daemon.stop().await;
}

/// Item 5 for declared profiles: a declared profile supplies its secret from its
/// `client_secret_file` on every reconcile, so it may move; its tokens are then dropped as for
/// an update. Without the file, a secret stored earlier may not move: the reload is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_profiles_keep_secrets_where_they_were() {
    let provider = FakeProvider::start().await;
    let elsewhere = FakeProvider::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("secret");
    std::fs::write(&secret_file, "test-secret\n").unwrap();
    let declared = tokend::config::DeclaredProfile {
        name: "mail-d".into(),
        provider: "custom".into(),
        client_id: "test-client".into(),
        client_secret_file: secret_file,
        authorization_endpoint: provider.authorization_endpoint(),
        token_endpoint: provider.token_endpoint(),
        ..Default::default()
    };
    let first = declared.clone();
    let daemon = TestDaemon::start_with(move |c| c.profiles = vec![first], None).await;
    let mut apps = daemon.apps(ADMIN).await;
    let start = apps.connect(pb::ConnectRequest { name: "mail-d".into() }).await.unwrap().into_inner();
    let page = browser().get(consent_redirect(&start.authorization_url).await).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let reload = daemon.daemon().reload_handle();

    // Without its secret file, the profile may not send the stored secret somewhere new.
    let mut config = daemon.config.clone();
    let unsupplied = tokend::config::DeclaredProfile {
        client_secret_file: Default::default(),
        token_endpoint: elsewhere.token_endpoint(),
        ..declared.clone()
    };
    config.profiles = vec![unsupplied];
    let refused = reload.reload(&config).await.expect_err("moving the secret without it");
    assert!(refused.to_string().contains("client_secret"), "{refused}");
    let get = pb::GetProfileRequest { name: "mail-d".into() };
    assert_eq!(apps.get_profile(get.clone()).await.unwrap().into_inner().status(), pb::Status::Connected);

    // With it, the profile moves and the tokens from the old origin are dropped.
    config.profiles = vec![tokend::config::DeclaredProfile { token_endpoint: elsewhere.token_endpoint(), ..declared }];
    reload.reload(&config).await.expect("reload");
    let profile = apps.get_profile(get).await.unwrap().into_inner();
    assert_eq!(profile.status(), pb::Status::NotConnected);
    assert!(profile.last_error.contains("another origin"), "{}", profile.last_error);
    assert_eq!(elsewhere.refresh_requests(), 0);
    daemon.stop().await;
}

/// The next token on `stream`, within 5 s.
async fn next_token(stream: &mut Streaming<pb::AccessToken>) -> pb::AccessToken {
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
    next.expect("a token in time").expect("no error").expect("a token")
}

/// Item 6 and the audit trail: a `WatchAccessToken` stream's hand-outs are tallied on its caller
/// as it stands. The stream keeps its tally between items (#17); a reload that keeps the caller
/// writes the tallies so far and moves the stream to the reloaded caller's, so every hand-out is
/// audited once: three tokens, a total count of three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_stream_hand_outs_are_audited_across_a_reload() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start_with(|c| c.audit.handout_interval_secs = 1, None).await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-tallied", &provider).await;
    let mut tokens = daemon.tokens(CONSUMER).await;
    let request = pb::WatchAccessTokenRequest { name: "mail-tallied".into(), min_valid_for: None };
    let mut stream = tokens.watch_access_token(request).await.unwrap().into_inner();
    next_token(&mut stream).await;
    apps.refresh_now(pb::RefreshNowRequest { name: "mail-tallied".into() }).await.expect("refresh");
    next_token(&mut stream).await;
    let widened = with_caller(&daemon, "mail-worker", |c| {
        c.profiles.push("files-*".into());
        true
    });
    daemon.daemon().reload_handle().reload(&widened).await.expect("reload");
    apps.refresh_now(pb::RefreshNowRequest { name: "mail-tallied".into() }).await.expect("refresh");
    next_token(&mut stream).await;

    // Tallies are written every second (and at the reload): add up this profile's records.
    let counted = || {
        logs()
            .lines()
            .filter(|l| l.contains("token hand-outs") && l.contains("caller=mail-worker") && l.contains("mail-tallied"))
            .filter_map(|l| l.split("count=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while counted() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted(), 3, "every hand-out audited once");
    daemon.stop().await;
}
