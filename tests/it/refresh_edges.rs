//! The refresh engine's edge cases from the line-by-line review (#13), one regression test per
//! item, each named after it: the real daemon in-process, the fake provider, a manual clock where
//! time matters.

use std::time::{Duration, Instant};

use tokend::api::pb;
use tokend::clock::ManualClock;
use tonic::Code;

use crate::support::*;

const START_MS: i64 = 1_800_000_000_000;

async fn get(apps: &mut AppsClient, name: &str) -> pb::Profile {
    apps.get_profile(pb::GetProfileRequest { name: name.into() }).await.expect("get").into_inner()
}

fn token_request(name: &str, min_valid_secs: i64) -> pb::GetAccessTokenRequest {
    pb::GetAccessTokenRequest {
        name: name.into(),
        min_valid_for: Some(prost_types::Duration { seconds: min_valid_secs, nanos: 0 }),
    }
}

/// Item 1: a connection the provider gave no refresh token (Microsoft without `offline_access`,
/// GitHub OAuth apps) schedules no refresh (the timer used to re-sweep it every 50 ms, forever);
/// its profile warns that a new consent will be needed, and reads NEEDS_REAUTHORIZATION once the
/// access token has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item1_no_refresh_token_means_no_refresh_loop() {
    let provider = FakeProvider::start().await;
    provider.set_access_token_lifetime(600);
    let clock = ManualClock::new(START_MS);
    let daemon = TestDaemon::start_with(|_| {}, Some(clock.clone())).await;
    let mut apps = daemon.apps(ADMIN).await;
    provider.push_fault(Fault::NoRefreshTokenInReply);
    let profile = create_and_connect(&mut apps, "no-offline", &provider).await;
    assert_eq!(profile.status, pb::Status::Connected as i32);
    assert!(!profile.refresh_token_enabled);
    assert!(profile.warning.contains("no refresh token"), "{:?}", profile.warning);
    let expires_ms = START_MS + 600_000;
    let due = daemon.daemon().engine().store().earliest_due().expect("index");
    assert!(due.as_ref().is_none_or(|d| d.at_ms >= expires_ms), "a refresh is scheduled before expiry: {due:?}");

    clock.set_ms(expires_ms - 30_000);
    let mut tokens = daemon.tokens(ADMIN).await;
    let token = tokens.get_access_token(token_request("no-offline", 60)).await.expect("the held token").into_inner();
    assert_eq!(Some(&token.access_token), provider.issued_access_tokens().last());
    assert_eq!(get(&mut apps, "no-offline").await.status, pb::Status::Connected as i32);

    clock.set_ms(expires_ms + 1_000);
    let expired = settle_async(&daemon, 50, async || {
        get(&mut apps, "no-offline").await.status == pb::Status::NeedsReauthorization as i32
    })
    .await;
    assert!(expired, "NEEDS_REAUTHORIZATION once the token expired");
    let err = tokens.get_access_token(token_request("no-offline", 60)).await.expect_err("expired");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("Connect"), "{}", err.message());
    assert!(daemon.daemon().engine().store().earliest_due().expect("index").is_none(), "nothing left scheduled");
    assert_eq!(provider.token_requests("refresh_token"), 0);
    daemon.stop().await;
}

/// Item 2: a consumer asking for more than the provider grants (`min_valid_for` 24 h on a
/// one-hour token) does not force a refresh on every call: `min_valid_for` counts at most half
/// the token's lifetime, so a thousand calls cause no refresh while the token is fresh, and one
/// refresh once it is past half its life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item2_min_valid_for_beyond_the_lifetime_causes_no_refresh_storm() {
    let provider = FakeProvider::start().await;
    provider.set_access_token_lifetime(3600);
    let clock = ManualClock::new(START_MS);
    let daemon = TestDaemon::start_with(|_| {}, Some(clock.clone())).await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-hourly", &provider).await;
    let storm = async |calls: usize| {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let mut tokens = daemon.tokens(CONSUMER).await;
            tasks.push(tokio::spawn(async move {
                for _ in 0..calls / 10 {
                    tokens.get_access_token(token_request("mail-hourly", 24 * 3600)).await.expect("token");
                }
            }));
        }
        for task in tasks {
            task.await.expect("caller task");
        }
    };
    storm(1000).await;
    assert_eq!(provider.refresh_requests(), 0, "a fresh one-hour token serves callers asking for 24 h");
    clock.advance_ms(1900 * 1000);
    storm(1000).await;
    assert_eq!(provider.refresh_requests(), 1, "one refresh once the token is past half its life");
    daemon.stop().await;
}

/// Item 5: `invalid_client` (the client secret was rotated at the provider) keeps the refresh
/// token: the profile needs the client credentials fixed, not a new consent, and refreshing
/// resumes once the profile is updated. Only `invalid_grant` means the refresh token is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item5_invalid_client_keeps_the_refresh_token() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "rotated-secret", &provider).await;
    provider.push_fault(Fault::InvalidClient);
    let err = apps.refresh_now(pb::RefreshNowRequest { name: "rotated-secret".into() }).await.expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let profile = get(&mut apps, "rotated-secret").await;
    assert_eq!(profile.status, pb::Status::NeedsReauthorization as i32);
    assert!(profile.refresh_token_enabled, "the refresh token is still valid and kept");
    assert!(profile.last_error.contains("client"), "{}", profile.last_error);

    let update = pb::Profile { client_secret: "test-secret".into(), ..fake_profile("rotated-secret", &provider) };
    let mask = prost_types::FieldMask { paths: vec!["client_secret".into()] };
    apps.update_profile(pb::UpdateProfileRequest { profile: Some(update), update_mask: Some(mask) })
        .await
        .expect("update the client secret");
    let resumed = settle_async(&daemon, 100, async || {
        get(&mut apps, "rotated-secret").await.status == pb::Status::Connected as i32
    })
    .await;
    assert!(resumed, "refreshing resumed without a new consent: {:?}", get(&mut apps, "rotated-secret").await);
    assert_eq!(provider.reuse_events(), 0);
    daemon.stop().await;
}

/// Item 7: a `200 OK` whose body cannot be read may still have rotated the refresh token at the
/// provider, so it is retried once with the same token, like a lost reply, and the retry waits
/// its turn at the provider's rate limiter (here 2 requests a second, no burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item7_unreadable_reply_is_retried_through_the_limiter() {
    let provider = FakeProvider::start().await;
    provider.set_reuse_grace(Some(Duration::from_secs(30)));
    let daemon = TestDaemon::start_with(
        |config| {
            config.refresh.provider_rate_per_sec = 2.0;
            config.refresh.provider_burst = 1;
        },
        None,
    )
    .await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "flaky", &provider).await;
    // Let the limiter's slot from any earlier request pass.
    tokio::time::sleep(Duration::from_millis(600)).await;
    provider.push_fault(Fault::CommitThenGarbage);
    let started = Instant::now();
    apps.refresh_now(pb::RefreshNowRequest { name: "flaky".into() }).await.expect("the retry gets the rotated tokens");
    let took = started.elapsed();
    assert_eq!(provider.refresh_requests(), 2, "one retry");
    assert!(took >= Duration::from_millis(450), "the retry skipped the rate limiter ({took:?})");
    assert_eq!(get(&mut apps, "flaky").await.status, pb::Status::Connected as i32);
    // The stored refresh token is the rotated one: the next refresh is no reuse.
    apps.refresh_now(pb::RefreshNowRequest { name: "flaky".into() }).await.expect("refresh with the rotated token");
    assert_eq!(provider.reuse_events(), 1, "only the retry itself presented the old token");
    daemon.stop().await;
}

/// Item 8: the code exchange runs in a task of its own, so a caller of CompleteConnect that gives
/// up (deadline, dropped connection) after the code was sent does not lose the new tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item8_consent_survives_a_caller_that_gives_up() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    apps.create_profile(pb::CreateProfileRequest { profile: Some(fake_profile("patient", &provider)) })
        .await
        .expect("create");
    let start = apps.connect(pb::ConnectRequest { name: "patient".into() }).await.expect("connect").into_inner();
    let redirect = consent_redirect(&start.authorization_url).await;
    provider.push_fault(Fault::Delay(Duration::from_millis(800)));
    let mut request = tonic::Request::new(pb::CompleteConnectRequest { redirect_url: redirect, ..Default::default() });
    request.set_timeout(Duration::from_millis(150));
    let err = apps.complete_connect(request).await.expect_err("the caller gave up");
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    let connected =
        settle_async(&daemon, 150, async || get(&mut apps, "patient").await.status == pb::Status::Connected as i32)
            .await;
    assert!(connected, "the exchange finished and was stored: {:?}", get(&mut apps, "patient").await);
    let mut tokens = daemon.tokens(ADMIN).await;
    let token = tokens.get_access_token(token_request("patient", 60)).await.expect("token").into_inner();
    assert_eq!(Some(&token.access_token), provider.issued_access_tokens().last());
    daemon.stop().await;
}

/// Item 6: shutdown waits for a refresh already sent (here 12 s at the provider, longer than the
/// 10 s grace, and nobody waiting on it: its caller gave up) and stores its rotation before the
/// store closes, so the restarted daemon refreshes with the rotated token and no reuse reaches
/// the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item6_shutdown_waits_for_a_refresh_in_flight() {
    let provider = FakeProvider::start().await;
    let mut daemon = TestDaemon::start_with(|config| config.provider.request_timeout_secs = 20, None).await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "slow-rotation", &provider).await;
    provider.push_fault(Fault::Delay(Duration::from_secs(12)));
    let mut request = tonic::Request::new(pb::RefreshNowRequest { name: "slow-rotation".into() });
    request.set_timeout(Duration::from_millis(200));
    apps.refresh_now(request).await.expect_err("the caller gives up; the refresh goes on");
    let sent = Instant::now() + Duration::from_secs(5);
    while provider.refresh_requests() == 0 {
        assert!(Instant::now() < sent, "the refresh reached the provider");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = Instant::now();
    daemon.restart().await;
    assert!(stopping.elapsed() >= Duration::from_secs(10), "shutdown waited for the refresh in flight");
    let mut apps = daemon.apps(ADMIN).await;
    apps.refresh_now(pb::RefreshNowRequest { name: "slow-rotation".into() })
        .await
        .expect("the rotated refresh token was stored before shutdown");
    assert_eq!(provider.reuse_events(), 0, "the old refresh token was never presented again");
    daemon.stop().await;
}
