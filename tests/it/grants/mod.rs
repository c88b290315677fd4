//! Every way to connect: device authorization (RFC 8628) and client credentials, against the
//! fake provider; issuer discovery, egress (CA bundle, deny-list) and refresh-token lifetimes
//! in the modules below.

mod discovery;
mod egress;
mod lifetimes;

use std::time::Duration;

use tokend::api::pb;
use tonic::Code;

use crate::support::*;

fn device_profile(name: &str, provider: &FakeProvider) -> pb::Profile {
    pb::Profile {
        grant: pb::Grant::DeviceCode as i32,
        authorization_endpoint: String::new(),
        device_authorization_endpoint: provider.device_authorization_endpoint(),
        ..fake_profile(name, provider)
    }
}

pub(crate) async fn wait_for_status(apps: &mut AppsClient, name: &str, wanted: pb::Status) -> pb::Profile {
    let mut profile = pb::Profile::default();
    for _ in 0..200 {
        profile = apps.get_profile(pb::GetProfileRequest { name: name.into() }).await.expect("get").into_inner();
        if profile.status == wanted as i32 {
            return profile;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never reached {wanted:?}; last: status {} error {:?}", profile.status, profile.last_error);
}

/// Device grant: Connect returns the user code; the daemon polls through authorization_pending
/// until the user approves, then the profile is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_grant_approved() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    apps.create_profile(pb::CreateProfileRequest { profile: Some(device_profile("tv", &provider)) })
        .await
        .expect("create");
    let start = apps.connect(pb::ConnectRequest { name: "tv".into() }).await.expect("connect").into_inner();
    assert_eq!(start.status, pb::Status::Connecting as i32);
    assert!(!start.user_code.is_empty() && start.verification_uri.starts_with("http"));
    assert!(start.interval.is_some() && start.expires_at.is_some() && start.authorization_url.is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(provider.token_requests("urn:ietf:params:oauth:grant-type:device_code") >= 1, "polling while pending");
    provider.approve_device(&start.user_code);
    let profile = wait_for_status(&mut apps, "tv", pb::Status::Connected).await;
    assert!(profile.refresh_token_enabled);
    // GetProfile reads the store, which shows the new tokens while their flush is still running;
    // the token is handed out once it is durable (a few milliseconds later).
    let mut tokens = daemon.tokens(ADMIN).await;
    let mut token = None;
    for _ in 0..100 {
        match tokens.get_access_token(pb::GetAccessTokenRequest { name: "tv".into(), min_valid_for: None }).await {
            Ok(reply) => {
                token = Some(reply.into_inner().access_token);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(token.as_ref(), provider.issued_access_tokens().last());
    daemon.stop().await;
}

/// Device grant: a denial or an expired code puts the profile back to not connected with the
/// reason; a Disconnect stops polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_grant_denied_expired_and_cancelled() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    apps.create_profile(pb::CreateProfileRequest { profile: Some(device_profile("tv", &provider)) })
        .await
        .expect("create");

    let start = apps.connect(pb::ConnectRequest { name: "tv".into() }).await.expect("connect").into_inner();
    provider.deny_device(&start.user_code);
    let profile = wait_for_status(&mut apps, "tv", pb::Status::NotConnected).await;
    assert!(profile.last_error.contains("denied"), "{}", profile.last_error);

    provider.set_options(|o| o.device_code_lifetime_secs = 1);
    apps.connect(pb::ConnectRequest { name: "tv".into() }).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let profile = wait_for_status(&mut apps, "tv", pb::Status::NotConnected).await;
    assert!(profile.last_error.contains("expired"), "{}", profile.last_error);

    provider.set_options(|o| o.device_code_lifetime_secs = 600);
    apps.connect(pb::ConnectRequest { name: "tv".into() }).await.expect("connect");
    apps.disconnect(pb::DisconnectRequest { name: "tv".into() }).await.expect("disconnect");
    let polls = provider.token_requests("urn:ietf:params:oauth:grant-type:device_code");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(provider.token_requests("urn:ietf:params:oauth:grant-type:device_code"), polls, "polling stopped");
    daemon.stop().await;
}

/// Client credentials: Connect connects at once; with no refresh token the daemon re-acquires
/// a token the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_connect_and_reacquire() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    let profile = pb::Profile {
        grant: pb::Grant::ClientCredentials as i32,
        authorization_endpoint: String::new(),
        ..fake_profile("m2m", &provider)
    };
    apps.create_profile(pb::CreateProfileRequest { profile: Some(profile) }).await.expect("create");
    let start = apps.connect(pb::ConnectRequest { name: "m2m".into() }).await.expect("connect").into_inner();
    assert_eq!(start.status, pb::Status::Connected as i32);
    let profile = start.profile.expect("profile");
    assert!(!profile.refresh_token_enabled);
    assert!(profile.next_refresh_at.is_some(), "re-acquisition is scheduled");
    let mut tokens = daemon.tokens(ADMIN).await;
    let first = tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "m2m".into(), min_valid_for: None })
        .await
        .expect("token")
        .into_inner();
    apps.refresh_now(pb::RefreshNowRequest { name: "m2m".into() }).await.expect("re-acquire");
    let second = tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "m2m".into(), min_valid_for: None })
        .await
        .expect("token")
        .into_inner();
    assert_ne!(first.access_token, second.access_token);
    assert_eq!(provider.token_requests("client_credentials"), 2);
    assert_eq!(provider.refresh_requests(), 0);
    // Wrong client credentials: the admin is told to fix the profile.
    provider.push_fault(Fault::InvalidClient);
    let err = apps.refresh_now(pb::RefreshNowRequest { name: "m2m".into() }).await.expect_err("bad client");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("client_secret"), "{}", err.message());
    daemon.stop().await;
}

/// Quirky token replies: expires_in as a string, missing expires_in (default lifetime), no
/// refresh token in a refresh reply (the stored one is kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quirky_token_replies() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start_with(|c| c.refresh.default_lifetime_secs = 1800, None).await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "quirks", &provider).await;
    let expiry = |p: &pb::Profile| {
        p.authorization_expires_at.as_ref().map(|t| t.seconds).unwrap_or(0)
            - p.last_refreshed_at.as_ref().map(|t| t.seconds).unwrap_or(0)
    };

    provider.push_fault(Fault::ExpiresInAsString);
    let p = apps
        .refresh_now(pb::RefreshNowRequest { name: "quirks".into() })
        .await
        .expect("string")
        .into_inner()
        .profile
        .expect("profile");
    assert!((3599..=3600).contains(&expiry(&p)), "{}", expiry(&p));

    provider.push_fault(Fault::NoExpiresIn);
    let p = apps
        .refresh_now(pb::RefreshNowRequest { name: "quirks".into() })
        .await
        .expect("missing")
        .into_inner()
        .profile
        .expect("profile");
    assert!((1799..=1800).contains(&expiry(&p)), "default lifetime: {}", expiry(&p));

    let kept = provider.current_refresh_token();
    provider.push_fault(Fault::NoRefreshTokenInReply);
    apps.refresh_now(pb::RefreshNowRequest { name: "quirks".into() }).await.expect("no refresh token");
    assert_eq!(provider.current_refresh_token(), kept);
    apps.refresh_now(pb::RefreshNowRequest { name: "quirks".into() })
        .await
        .expect("the kept refresh token still works");
    daemon.stop().await;
}
