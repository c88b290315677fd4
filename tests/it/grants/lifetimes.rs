//! Refresh-token lifetimes, driven by the manual clock: the expected expiry and its warning,
//! Google's 7-day "Testing" apps, and on-demand refresh (none ahead of need, but before the
//! refresh token's idle limit).

use tokend::api::pb;
use tokend::clock::ManualClock;
use tonic::Code;

use crate::support::*;

const DAY_MS: i64 = 86_400_000;
const START_MS: i64 = 1_800_000_000_000;

async fn get(apps: &mut AppsClient, name: &str) -> pb::Profile {
    apps.get_profile(pb::GetProfileRequest { name: name.into() }).await.expect("get").into_inner()
}

/// Creates `profile` and connects it through the fake provider's consent and the callback.
async fn connect(daemon: &TestDaemon, apps: &mut AppsClient, profile: pb::Profile) -> pb::Profile {
    let name = profile.name.clone();
    apps.create_profile(pb::CreateProfileRequest { profile: Some(profile) }).await.expect("create");
    let start = apps.connect(pb::ConnectRequest { name: name.clone() }).await.expect("connect").into_inner();
    let redirect = consent_redirect(&start.authorization_url).await;
    assert!(redirect.starts_with(&daemon.callback_url()), "{redirect}");
    assert_eq!(browser().get(&redirect).send().await.expect("callback").status().as_u16(), 200);
    let profile = get(apps, &name).await;
    assert_eq!(profile.status, pb::Status::Connected as i32, "{}", profile.last_error);
    profile
}

fn seconds(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().map(|t| t.seconds).unwrap_or(0)
}

/// The refresh-token lifetime a provider states is stored and shown; when a refresh brings a
/// refresh token with less than the warning time (7 days) to live, the profile and the log say
/// an admin must Connect again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stated_refresh_token_expiry_is_shown_and_warned() {
    let provider = FakeProvider::start().await;
    provider.set_options(|o| o.refresh_token_lifetime_secs = Some(30 * 86_400));
    let clock = ManualClock::new(START_MS);
    let daemon = TestDaemon::start_with(|_| {}, Some(clock.clone())).await;
    let mut apps = daemon.apps(ADMIN).await;
    let profile = connect(&daemon, &mut apps, fake_profile("gh", &provider)).await;
    assert_eq!(seconds(&profile.refresh_token_expires_at), START_MS / 1000 + 30 * 86_400);
    assert!(profile.warning.is_empty(), "{}", profile.warning);

    // The provider now caps the session: the rotated refresh token has 3 days left.
    provider.set_options(|o| o.refresh_token_lifetime_secs = Some(3 * 86_400));
    clock.advance_ms(DAY_MS);
    apps.refresh_now(pb::RefreshNowRequest { name: "gh".into() }).await.expect("refresh");
    let profile = get(&mut apps, "gh").await;
    assert_eq!(seconds(&profile.refresh_token_expires_at), (START_MS + 4 * DAY_MS) / 1000);
    assert!(profile.warning.contains("expires in 3 d 0 h"), "{}", profile.warning);
    assert!(profile.warning.contains("Connect"), "{}", profile.warning);
    let logs = logs();
    assert!(logs.contains("the refresh token expires in 3 d 0 h"), "the warning is logged");
    daemon.stop().await;
}

/// A Google profile whose refresh token dies about 7 days after consent is told why: the app is
/// probably in "Testing" publishing status. Three days in, nothing is guessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_testing_app_hint() {
    let provider = FakeProvider::start().await;
    let clock = ManualClock::new(START_MS);
    let daemon = TestDaemon::start_with(|_| {}, Some(clock.clone())).await;
    let mut apps = daemon.apps(ADMIN).await;
    let google = |name: &str| pb::Profile {
        provider: "google".into(),
        device_authorization_endpoint: provider.device_authorization_endpoint(),
        ..fake_profile(name, &provider)
    };

    connect(&daemon, &mut apps, google("early")).await;
    provider.push_fault(Fault::InvalidGrant);
    clock.advance_ms(3 * DAY_MS);
    let err = apps.refresh_now(pb::RefreshNowRequest { name: "early".into() }).await.expect_err("dead");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let early = get(&mut apps, "early").await;
    assert_eq!(early.status, pb::Status::NeedsReauthorization as i32);
    assert!(!early.last_error.contains("Testing"), "{}", early.last_error);

    connect(&daemon, &mut apps, google("weekly")).await;
    provider.push_fault(Fault::InvalidGrant);
    clock.advance_ms(7 * DAY_MS + 3_600_000);
    let _ = apps.refresh_now(pb::RefreshNowRequest { name: "weekly".into() }).await;
    let weekly = get(&mut apps, "weekly").await;
    assert_eq!(weekly.status, pb::Status::NeedsReauthorization as i32);
    assert!(weekly.last_error.contains("\"Testing\" publishing status"), "{}", weekly.last_error);
    assert!(weekly.last_error.contains("7 d 1 h after the consent"), "{}", weekly.last_error);
    daemon.stop().await;
}

/// On demand: an expired token is not refreshed by the engine, only when a caller needs it; a
/// keep-alive refresh still comes before the refresh token's idle limit (here 10 days).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_refresh() {
    let provider = FakeProvider::start().await;
    provider.set_access_token_lifetime(600);
    let clock = ManualClock::new(START_MS);
    let daemon = TestDaemon::start_with(|_| {}, Some(clock.clone())).await;
    let mut apps = daemon.apps(ADMIN).await;
    let policy = pb::RefreshPolicy {
        mode: pb::RefreshMode::OnDemand as i32,
        max_idle: Some(prost_types::Duration { seconds: 10 * 86_400, nanos: 0 }),
        ..Default::default()
    };
    let input = pb::Profile { refresh_policy: Some(policy), ..fake_profile("rare", &provider) };
    let profile = connect(&daemon, &mut apps, input).await;
    assert_eq!(seconds(&profile.next_refresh_at), (START_MS + 9 * DAY_MS) / 1000, "90 % of max idle");

    clock.advance_ms(2 * 3_600_000);
    assert!(!settle(&daemon, 15, || provider.refresh_requests() > 0).await, "no proactive refresh of an expired token");

    let mut tokens = daemon.tokens(ADMIN).await;
    let request = pb::GetAccessTokenRequest { name: "rare".into(), min_valid_for: None };
    let token = tokens.get_access_token(request).await.expect("token").into_inner();
    assert_eq!(provider.refresh_requests(), 1, "refreshed because a caller needed it");
    assert_eq!(Some(&token.access_token), provider.issued_access_tokens().last());
    let used_at = START_MS + 2 * 3_600_000;
    assert_eq!(seconds(&get(&mut apps, "rare").await.next_refresh_at), (used_at + 9 * DAY_MS) / 1000);

    clock.advance_ms(9 * DAY_MS - 60_000);
    assert!(!settle(&daemon, 15, || provider.refresh_requests() > 1).await, "not before 90 % of max idle");
    clock.advance_ms(120_000);
    assert!(settle(&daemon, 150, || provider.refresh_requests() == 2).await, "keep-alive before max idle");
    let after = get(&mut apps, "rare").await;
    assert_eq!(after.status, pb::Status::Connected as i32, "{}", after.last_error);
    daemon.stop().await;
}

/// On demand with a preset's idle limit (Box: 60 days): the keep-alive is at 54 days.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_uses_the_preset_idle_limit() {
    let provider = FakeProvider::start().await;
    let clock = ManualClock::new(START_MS);
    let daemon = TestDaemon::start_with(|_| {}, Some(clock.clone())).await;
    let mut apps = daemon.apps(ADMIN).await;
    let policy = pb::RefreshPolicy { mode: pb::RefreshMode::OnDemand as i32, ..Default::default() };
    let input = pb::Profile { provider: "box".into(), refresh_policy: Some(policy), ..fake_profile("box", &provider) };
    let profile = connect(&daemon, &mut apps, input).await;
    assert_eq!(seconds(&profile.next_refresh_at), (START_MS + 54 * DAY_MS) / 1000);
    assert_eq!(seconds(&profile.refresh_token_expires_at), (START_MS + 60 * DAY_MS) / 1000, "idle limit shown");
    assert!(profile.warning.is_empty(), "{}", profile.warning);
    daemon.stop().await;
}
