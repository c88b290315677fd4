//! Security rules of issue #14, one regression test per item: token and profile streams end
//! when a reload removes or narrows their caller (item 6). Item 7 (names validated before they
//! are matched and remembered) is a unit test in `access::callers`.

use std::time::Duration;

use tokend::api::pb;
use tokend::config::Config;
use tonic::{Code, Streaming};

use crate::support::*;

/// How long a stream may outlive the reload that removed its caller.
const STREAM_END: Duration = Duration::from_secs(1);

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
