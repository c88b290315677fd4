//! Interoperability with a real authorization server: panva's OpenID-certified `oidc-provider`
//! (`interop/server.mjs`, on 127.0.0.1) against the real `tokend` binary, both child processes.
//! The server rotates the refresh token on every refresh and revokes the whole grant when a
//! rotated refresh token is presented again, so a double refresh or a lost rotation shows up as
//! a dead connection. Its introspection endpoint (RFC 7662) is the server's view of each token.
//!
//! Needs Node.js 20.18+ and `npm ci` in `interop/` (see `interop/README.md`); fails, never
//! skips, without them.

mod fault_proxy;
pub mod harness;
mod replicas;

use std::time::{Duration, SystemTime};

use fault_proxy::{Fault, FaultProxy};
use harness::{ACCOUNT, Apps, AuthServer, CLIENT_ID, CLIENT_SECRET, ServerOptions, Tokend, eventually, step};
use serde_json::{Value, json};
use tokend::api::pb;
use tonic::Code;

fn duration(secs: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: secs, nanos: 0 })
}

/// `GetAccessToken` with an explicit `min_valid_for` (0: whatever unexpired token is held, never
/// a refresh while one is).
fn get(name: &str, min_valid_secs: i64) -> pb::GetAccessTokenRequest {
    pb::GetAccessTokenRequest { name: name.into(), min_valid_for: duration(min_valid_secs) }
}

async fn profile(apps: &mut Apps, name: &str) -> pb::Profile {
    apps.get_profile(pb::GetProfileRequest { name: name.into() }).await.expect("GetProfile").into_inner()
}

fn status(p: &pb::Profile) -> pb::Status {
    pb::Status::try_from(p.status).unwrap_or(pb::Status::Unspecified)
}

fn expires_at(token: &pb::AccessToken) -> SystemTime {
    let at = token.expires_at.as_ref().expect("expires_at");
    SystemTime::UNIX_EPOCH + Duration::new(at.seconds as u64, at.nanos as u32)
}

/// `Connect`, then the admin's browser: authorization URL → login → consent → tokend's real
/// callback. Returns the profile afterwards, which must be CONNECTED.
async fn connect(apps: &mut Apps, tokend: &Tokend, name: &str) -> pb::Profile {
    let before = profile(apps, name).await;
    let start = apps.connect(pb::ConnectRequest { name: name.into() }).await.expect("Connect").into_inner();
    // CONNECTING while nothing is held; a profile still holding a token keeps its status (and
    // keeps serving the token) while the new consent is pending.
    let pending = if before.authorization_expires_at.is_none() { pb::Status::Connecting as i32 } else { before.status };
    assert_eq!(start.status, pending);
    let url = url::Url::parse(&start.authorization_url).expect("authorization URL");
    let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(query.get("code_challenge_method").map(String::as_str), Some("S256"));
    assert_eq!(query.get("redirect_uri"), Some(&tokend.callback_url()));
    assert_eq!(query.get("state"), Some(&start.state));
    let page = harness::consent(&start.authorization_url, &tokend.callback_url(), ACCOUNT).await;
    assert_eq!(page.status, 200, "tokend's callback page: {}", page.body);
    let after = profile(apps, name).await;
    assert_eq!(status(&after), pb::Status::Connected, "{}", after.last_error);
    after
}

/// The next message of a token stream, within 10 s.
async fn next(stream: &mut tonic::Streaming<pb::AccessToken>) -> pb::AccessToken {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a token on the stream in time")
        .expect("stream ok")
        .expect("stream open")
}

async fn create(apps: &mut Apps, p: pb::Profile) {
    apps.create_profile(pb::CreateProfileRequest { profile: Some(p) }).await.expect("CreateProfile");
}

/// Asserts the server never saw a refresh token twice, nor any failed token request.
async fn assert_clean_rotation(server: &AuthServer) {
    let stats = server.stats().await;
    assert_eq!(stats["refresh_token_reuse"], 0, "a rotated refresh token was reused: {stats}");
    // Device-code polls answered authorization_pending are the protocol working, not a failure.
    let refused: Vec<&String> = stats["errors"]
        .as_object()
        .expect("errors")
        .keys()
        .filter(|k| !k.ends_with(":authorization_pending") && !k.ends_with(":slow_down"))
        .collect();
    assert!(refused.is_empty(), "the token endpoint refused something: {stats}");
    assert_eq!(stats["live_grants"], 1, "the grant must be alive: {stats}");
}

/// A real consent through the provider's login and consent pages and tokend's callback yields a
/// token the server introspects as active, obtained with client_secret_basic, PKCE S256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_yields_token_active_at_server() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let tokend = Tokend::start().await;
    let (mut apps, mut tokens) = (tokend.apps().await, tokend.tokens().await);
    create(&mut apps, server.profile("oidc")).await;

    step("connect through the provider's login and consent pages");
    let connected = connect(&mut apps, &tokend, "oidc").await;
    assert!(connected.refresh_token_enabled, "oidc-provider issued a refresh token");
    assert!(connected.authorization_expires_at.is_some());
    assert_eq!(connected.connected_account, ACCOUNT, "from the ID token's sub");
    assert!(connected.client_secret.is_empty() && connected.client_secret_set);

    step("GetAccessToken, then introspect it at the server");
    let token = tokens.get_access_token(get("oidc", 60)).await.expect("GetAccessToken").into_inner();
    assert_eq!(token.token_type, "Bearer");
    let seen = server.introspect(&token.access_token).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["client_id"], CLIENT_ID);
    assert_eq!(seen["sub"], ACCOUNT);
    assert_eq!(seen["token_type"], "Bearer");
    assert!(seen["scope"].as_str().unwrap_or_default().split(' ').any(|s| s == "openid"), "{seen}");
    let exp = seen["exp"].as_i64().expect("exp");
    let held = token.expires_at.as_ref().expect("expires_at").seconds;
    assert!((held - exp).abs() <= 2, "tokend's expires_at {held} matches the server's exp {exp}");

    assert_eq!(server.granted("authorization_code").await, 1);
    assert_eq!(server.granted("refresh_token").await, 0, "a fresh token is served from the cache");
    let log = tokend.log_text();
    assert!(!log.is_empty());
    assert!(!log.contains(&token.access_token) && !log.contains(CLIENT_SECRET), "a secret reached tokend's log");
}

/// A `custom` profile given only the issuer, the client id and the secret finds everything else
/// in the server's OpenID metadata (it serves no RFC 8414 document), connects through the real
/// consent, refreshes, and revokes at the discovered revocation endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_alone_discovers_and_connects() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let tokend = Tokend::start().await;
    let (mut apps, mut tokens) = (tokend.apps().await, tokend.tokens().await);
    let bare = pb::Profile {
        name: "discovered".into(),
        provider: "custom".into(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        scopes: vec!["openid".into(), "offline_access".into()],
        issuer: server.issuer.clone(),
        ..Default::default()
    };
    step("CreateProfile with the issuer, client id and secret only");
    create(&mut apps, bare).await;
    let p = profile(&mut apps, "discovered").await;
    assert_eq!(p.authorization_endpoint, server.endpoints.authorization);
    assert_eq!(p.token_endpoint, server.endpoints.token);
    assert_eq!(p.revocation_endpoint, server.endpoints.revocation);
    assert_eq!(p.device_authorization_endpoint, server.endpoints.device_authorization);

    step("connect through the discovered endpoints");
    let connected = connect(&mut apps, &tokend, "discovered").await;
    assert!(connected.refresh_token_enabled);
    assert_eq!(connected.connected_account, ACCOUNT);
    let token = tokens.get_access_token(get("discovered", 60)).await.expect("GetAccessToken").into_inner();
    assert!(server.is_active(&token.access_token).await, "the token is active at the server");

    step("RefreshNow rotates at the discovered token endpoint");
    apps.refresh_now(pb::RefreshNowRequest { name: "discovered".into() }).await.expect("RefreshNow");
    let fresh = tokens.get_access_token(get("discovered", 0)).await.expect("GetAccessToken").into_inner();
    assert_ne!(fresh.access_token, token.access_token);
    assert!(server.is_active(&fresh.access_token).await);
    assert_clean_rotation(&server).await;

    step("Disconnect revokes at the discovered revocation endpoint");
    let reply =
        apps.disconnect(pb::DisconnectRequest { name: "discovered".into() }).await.expect("Disconnect").into_inner();
    assert_eq!(reply.revocation, pb::Revocation::Revoked as i32, "{}", reply.detail);
    assert!(!server.is_active(&fresh.access_token).await);
    let log = tokend.log_text();
    assert!(log.contains("issuer metadata discovered"), "discovery is logged");
    assert!(!log.contains(CLIENT_SECRET) && !log.contains(&fresh.access_token), "a secret reached tokend's log");
}

/// Proactive refreshes rotate the refresh token several times in a row, before each access token
/// expires, exactly once each, and a SIGTERM restart in the middle changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proactive_rotation_survives_restart() {
    // 6 s tokens refreshed at half-life (the profile's skew_ratio 0.5): a refresh every 3 s, 3 s
    // ahead of expiry, which leaves a restart room to happen in between.
    let server = AuthServer::start(ServerOptions { access_token_ttl: 6, ..Default::default() }).await;
    let mut tokend = Tokend::start().await;
    let mut apps = tokend.apps().await;
    let mut tokens = tokend.tokens().await;
    let policy = pb::RefreshPolicy { skew_ratio: Some(0.5), ..Default::default() };
    create(&mut apps, pb::Profile { refresh_policy: Some(policy), ..server.profile("rotating") }).await;
    connect(&mut apps, &tokend, "rotating").await;
    // min_valid_for 0: only look at what tokend holds; never cause a refresh.
    let mut last = tokens.get_access_token(get("rotating", 0)).await.expect("token").into_inner();
    let first_version = last.token_version;

    for round in 1..=5u64 {
        let mut up_before_due = true;
        if round == 4 {
            let due = profile(&mut apps, "rotating").await.next_refresh_at.expect("next_refresh_at");
            let due = SystemTime::UNIX_EPOCH + Duration::new(due.seconds as u64, due.nanos as u32);
            step("SIGTERM tokend and start it again on the same data directory");
            let stop_took = tokend.restart().await;
            apps = tokend.apps().await;
            tokens = tokend.tokens().await;
            up_before_due = SystemTime::now() < due;
            if up_before_due {
                let held = tokens.get_access_token(get("rotating", 0)).await.expect("token after restart").into_inner();
                assert_eq!(held.token_version, last.token_version, "the stored token survives the restart");
                assert_eq!(held.access_token, last.access_token, "the stored token survives the restart");
            } else {
                // See `sigterm_stops_an_idle_daemon_promptly`.
                step(&format!("tokend was down past the refresh time (its stop took {stop_took:?})"));
            }
            let p = profile(&mut apps, "rotating").await;
            assert!(matches!(status(&p), pb::Status::Connected), "{p:?}");
            assert!(p.refresh_token_enabled);
        }
        let previous = last.clone();
        last = eventually("a proactive refresh", Duration::from_secs(20), || {
            let mut tokens = tokens.clone();
            let previous = previous.token_version;
            async move {
                let token = tokens.get_access_token(get("rotating", 0)).await.ok()?.into_inner();
                (token.token_version > previous).then_some(token)
            }
        })
        .await;
        if up_before_due {
            let now = SystemTime::now();
            assert!(now < expires_at(&previous), "round {round}: refreshed before the old token expired");
        }
        assert_eq!(last.token_version, previous.token_version + 1, "round {round}: one refresh, one new token");
        assert_ne!(last.access_token, previous.access_token);
        step(&format!("round {round}: token version {} is active at the server", last.token_version));
        assert!(server.is_active(&last.access_token).await, "round {round}: the new token is active");
        // Every stored token came from exactly one refresh at the server: none doubled, none lost.
        assert_eq!(server.granted("refresh_token").await, last.token_version - first_version, "round {round}");
        assert_clean_rotation(&server).await;
    }
    let p = profile(&mut apps, "rotating").await;
    assert_eq!(status(&p), pb::Status::Connected);
    assert_eq!(p.consecutive_failures, 0);
    assert!(p.last_error.is_empty(), "{}", p.last_error);
    tokend.stop().await;
}

/// SIGTERM stops an idle tokend within moments, well inside its 10 s shutdown grace, so a
/// restart does not outlast a short-lived token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_an_idle_daemon_promptly() {
    let mut tokend = Tokend::start().await;
    let took = tokend.stop().await;
    assert!(took < Duration::from_secs(3), "an idle tokend with no profiles took {took:?} to stop on SIGTERM");
}

/// `RefreshNow` rotates at the server at once, and `WatchAccessToken` delivers the current token
/// and then each rotated one, each active at the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_now_and_watch_stream() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let tokend = Tokend::start().await;
    let (mut apps, mut tokens) = (tokend.apps().await, tokend.tokens().await);
    create(&mut apps, server.profile("watched")).await;
    connect(&mut apps, &tokend, "watched").await;

    let request = pb::WatchAccessTokenRequest { name: "watched".into(), min_valid_for: duration(60) };
    let mut stream = tokens.watch_access_token(request).await.expect("WatchAccessToken").into_inner();
    let mut current = next(&mut stream).await;
    assert!(server.is_active(&current.access_token).await);
    for round in 1..=3u64 {
        step(&format!("RefreshNow #{round}"));
        let reply = apps.refresh_now(pb::RefreshNowRequest { name: "watched".into() }).await.expect("RefreshNow");
        let p = reply.into_inner().profile.expect("profile");
        assert_eq!(status(&p), pb::Status::Connected);
        assert_eq!(server.granted("refresh_token").await, round, "RefreshNow went to the server");
        let rotated = next(&mut stream).await;
        assert_eq!(rotated.token_version, current.token_version + 1, "each rotated token, once, in order");
        assert_ne!(rotated.access_token, current.access_token);
        assert!(server.is_active(&rotated.access_token).await, "the streamed token is active");
        let got = tokens.get_access_token(get("watched", 60)).await.expect("token").into_inner();
        assert_eq!(got.access_token, rotated.access_token, "GetAccessToken hands out the streamed token");
        current = rotated;
    }
    assert_clean_rotation(&server).await;
}

/// `Disconnect` revokes at the server (RFC 7009): the token introspects inactive, and
/// `GetAccessToken` answers FAILED_PRECONDITION.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_revokes_at_server() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let tokend = Tokend::start().await;
    let (mut apps, mut tokens) = (tokend.apps().await, tokend.tokens().await);
    create(&mut apps, server.profile("leaving")).await;
    connect(&mut apps, &tokend, "leaving").await;
    let token = tokens.get_access_token(get("leaving", 60)).await.expect("token").into_inner();
    assert!(server.is_active(&token.access_token).await);

    step("Disconnect");
    let reply =
        apps.disconnect(pb::DisconnectRequest { name: "leaving".into() }).await.expect("Disconnect").into_inner();
    assert!(reply.revoked, "{}", reply.detail);
    assert_eq!(reply.revocation, pb::Revocation::Revoked as i32, "{}", reply.detail);
    assert_eq!(reply.profile.as_ref().map(status), Some(pb::Status::NotConnected));
    let stats = server.stats().await;
    assert_eq!(stats["revocations"], 1, "{stats}");
    assert_eq!(stats["live_grants"], 0, "revoking the refresh token ended the grant: {stats}");
    assert!(!server.is_active(&token.access_token).await, "the server reports the token inactive");

    let err = tokens.get_access_token(get("leaving", 60)).await.expect_err("disconnected");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not connected"), "{}", err.message());
    let p = profile(&mut apps, "leaving").await;
    assert_eq!(status(&p), pb::Status::NotConnected);
    assert!(!p.refresh_token_enabled && p.authorization_expires_at.is_none());
}

/// A grant revoked at the server behind tokend's back makes the next refresh end in
/// NEEDS_REAUTHORIZATION with a clear `last_error`; a new consent heals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_revoked_at_server_needs_reauthorization() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let tokend = Tokend::start().await;
    let (mut apps, mut tokens) = (tokend.apps().await, tokend.tokens().await);
    create(&mut apps, server.profile("revoked")).await;
    connect(&mut apps, &tokend, "revoked").await;
    let token = tokens.get_access_token(get("revoked", 60)).await.expect("token").into_inner();

    step("revoke every grant at the server");
    assert_eq!(server.revoke_all_grants().await, 1);
    assert!(!server.is_active(&token.access_token).await);
    let err = apps.refresh_now(pb::RefreshNowRequest { name: "revoked".into() }).await.expect_err("dead grant");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let p = profile(&mut apps, "revoked").await;
    assert_eq!(status(&p), pb::Status::NeedsReauthorization);
    assert!(p.last_error.contains("invalid_grant") && p.last_error.contains("Connect"), "{}", p.last_error);
    assert!(!p.refresh_token_enabled);
    let stats = server.stats().await;
    assert_eq!(stats["errors"], json!({ "refresh_token:invalid_grant": 1 }), "one refresh attempt: {stats}");
    assert_eq!(stats["refresh_token_reuse"], 0);

    step("connect again");
    connect(&mut apps, &tokend, "revoked").await;
    let fresh = tokens.get_access_token(get("revoked", 60)).await.expect("token").into_inner();
    assert_ne!(fresh.access_token, token.access_token);
    assert!(server.is_active(&fresh.access_token).await);
    apps.refresh_now(pb::RefreshNowRequest { name: "revoked".into() }).await.expect("refresh after reconnect");
}

/// A client-credentials profile connects at once, hands out a token active at the server, and
/// re-acquires it before it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_connects_at_once() {
    let server = AuthServer::start(ServerOptions { client_credentials_ttl: 5, ..Default::default() }).await;
    let tokend = Tokend::start().await;
    let (mut apps, mut tokens) = (tokend.apps().await, tokend.tokens().await);
    let p = pb::Profile {
        grant: pb::Grant::ClientCredentials as i32,
        scopes: vec!["api:read".into()],
        authorization_endpoint: String::new(),
        ..server.profile("machine")
    };
    create(&mut apps, p).await;

    let reply = apps.connect(pb::ConnectRequest { name: "machine".into() }).await.expect("Connect").into_inner();
    assert_eq!(reply.status, pb::Status::Connected as i32);
    assert!(reply.authorization_url.is_empty());
    let p = reply.profile.expect("profile");
    assert_eq!(status(&p), pb::Status::Connected);
    assert!(!p.refresh_token_enabled);

    let token = tokens.get_access_token(get("machine", 1)).await.expect("token").into_inner();
    let seen = server.introspect(&token.access_token).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["client_id"], CLIENT_ID);
    assert_eq!(seen["scope"], "api:read");
    assert_eq!(seen["sub"], Value::Null, "a client token, no user");
    assert_eq!(server.granted("client_credentials").await, 1);

    step("wait for the token to be re-acquired before it expires");
    let renewed = eventually("a proactive re-acquisition", Duration::from_secs(15), || {
        let mut tokens = tokens.clone();
        let version = token.token_version;
        async move {
            let t = tokens.get_access_token(get("machine", 0)).await.ok()?.into_inner();
            (t.token_version > version).then_some(t)
        }
    })
    .await;
    assert!(SystemTime::now() < expires_at(&token), "re-acquired before expiry");
    assert!(server.is_active(&renewed.access_token).await);
    assert_eq!(server.granted("client_credentials").await, 2);
}

/// A device-grant profile (RFC 8628) connects once the user approves the code on the server's
/// verification page; its token is active there and its refresh token rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_grant_connects_after_approval() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let tokend = Tokend::start().await;
    let (mut apps, mut tokens) = (tokend.apps().await, tokend.tokens().await);
    let p = pb::Profile {
        grant: pb::Grant::DeviceCode as i32,
        authorization_endpoint: String::new(),
        device_authorization_endpoint: server.endpoints.device_authorization.clone(),
        ..server.profile("tv")
    };
    create(&mut apps, p).await;

    // How `tokenctl connect` waits: WatchProfiles events are published once the token is served.
    let mut events = apps
        .watch_profiles(pb::WatchProfilesRequest { names: vec!["tv".into()], send_initial: false })
        .await
        .expect("WatchProfiles")
        .into_inner();
    let start = apps.connect(pb::ConnectRequest { name: "tv".into() }).await.expect("Connect").into_inner();
    assert_eq!(start.status, pb::Status::Connecting as i32);
    assert!(!start.user_code.is_empty() && start.verification_uri.starts_with(&server.issuer), "{start:?}");
    assert!(start.verification_uri_complete.contains(&start.user_code.replace('-', "")[..4]), "{start:?}");
    assert!(start.authorization_url.is_empty());

    step("the user approves the code on the server's verification page");
    let page = harness::browse(&start.verification_uri_complete, None, ACCOUNT).await;
    assert!(page.body.contains("Sign-in Success"), "{}: {}", page.url, page.body);
    // tokend polls every `interval` (oidc-provider sends none: RFC 8628's default of 5 s).
    let connected = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = events.message().await.expect("event stream").expect("stream open");
            if let Some(p) = event.profile.filter(|p| status(p) == pb::Status::Connected) {
                return p;
            }
        }
    })
    .await
    .expect("CONNECTED after the device approval");
    assert!(connected.refresh_token_enabled);
    assert_eq!(connected.connected_account, ACCOUNT);
    let token = tokens.get_access_token(get("tv", 60)).await.expect("token").into_inner();
    let seen = server.introspect(&token.access_token).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["sub"], ACCOUNT);
    assert_eq!(server.granted("urn:ietf:params:oauth:grant-type:device_code").await, 1);

    apps.refresh_now(pb::RefreshNowRequest { name: "tv".into() }).await.expect("RefreshNow");
    let rotated = tokens.get_access_token(get("tv", 60)).await.expect("token").into_inner();
    assert_ne!(rotated.access_token, token.access_token);
    assert!(server.is_active(&rotated.access_token).await);
    assert_clean_rotation(&server).await;
}

/// With the token endpoint unreachable (refused, then 503 + Retry-After), the valid token keeps
/// being served while the status is REFRESH_FAILING; once expired, UNAVAILABLE; when the server is
/// reachable again, the connection recovers by itself with no reused refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_outage_then_recovery() {
    let server = AuthServer::start(ServerOptions { access_token_ttl: 8, ..Default::default() }).await;
    let token_url = url::Url::parse(&server.endpoints.token).expect("token endpoint");
    let upstream = token_url.socket_addrs(|| None).expect("token endpoint address")[0];
    let proxy = FaultProxy::start(upstream);
    let tokend = Tokend::start().await;
    let (mut apps, mut tokens) = (tokend.apps().await, tokend.tokens().await);
    let p = pb::Profile { token_endpoint: proxy.url_for(&server.endpoints.token), ..server.profile("flaky") };
    create(&mut apps, p).await;
    connect(&mut apps, &tokend, "flaky").await;
    assert!(proxy.passed() >= 1, "the code exchange went through the proxy");
    let held = tokens.get_access_token(get("flaky", 0)).await.expect("token").into_inner();

    for fault in [Fault::Refuse, Fault::Unavailable] {
        step(&format!("token endpoint: {fault:?}"));
        proxy.set(fault);
        let err = apps.refresh_now(pb::RefreshNowRequest { name: "flaky".into() }).await.expect_err("no provider");
        assert_eq!(err.code(), Code::Unavailable, "{fault:?}: {err:?}");
        let p = profile(&mut apps, "flaky").await;
        assert_eq!(status(&p), pb::Status::RefreshFailing, "{fault:?}");
        assert!(p.consecutive_failures >= 1 && !p.last_error.is_empty(), "{p:?}");
        assert!(!p.last_error.contains("maintenance"), "reply bodies are not echoed: {}", p.last_error);
        // The held token is still valid: callers keep getting it, even those asking for more
        // validity than it has left (the default min_valid_for is 60 s).
        for min in [Some(1), None] {
            let request = pb::GetAccessTokenRequest { name: "flaky".into(), min_valid_for: min.and_then(duration) };
            let served = tokens.get_access_token(request).await.expect("valid token served").into_inner();
            assert_eq!(served.access_token, held.access_token, "{fault:?}, min_valid_for {min:?}");
        }
        assert!(server.is_active(&held.access_token).await);
    }
    assert!(proxy.answered_503() >= 1);

    step("wait for the held token to expire while the server stays unreachable");
    proxy.set(Fault::Refuse);
    let err = eventually("UNAVAILABLE once the token expired", Duration::from_secs(15), || {
        let mut tokens = tokens.clone();
        async move { tokens.get_access_token(get("flaky", 0)).await.err() }
    })
    .await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(SystemTime::now() >= expires_at(&held));

    step("the server is reachable again: recovery without admin action");
    proxy.set(Fault::PassThrough);
    let recovered = eventually("status CONNECTED again", Duration::from_secs(15), || {
        let mut apps = apps.clone();
        async move {
            let p = profile(&mut apps, "flaky").await;
            (status(&p) == pb::Status::Connected).then_some(p)
        }
    })
    .await;
    assert_eq!(recovered.consecutive_failures, 0);
    assert!(recovered.last_error.is_empty(), "{}", recovered.last_error);
    let fresh = tokens.get_access_token(get("flaky", 1)).await.expect("token after recovery").into_inner();
    assert!(fresh.token_version > held.token_version);
    assert!(server.is_active(&fresh.access_token).await);
    // No fault reached the server, and the refresh token was never presented twice.
    assert_clean_rotation(&server).await;
    assert!(server.granted("refresh_token").await >= 1);
}

/// A token reply lost after the server rotated (a strict server: reuse revokes the grant, no
/// grace period) ends at once in NEEDS_REAUTHORIZATION with the reason, never in a refresh loop:
/// the limit of rotation DESIGN.md accepts ("losing it disconnects the profile for good").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_rotation_reply_needs_reauthorization() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let token_url = url::Url::parse(&server.endpoints.token).expect("token endpoint");
    let proxy = FaultProxy::start(token_url.socket_addrs(|| None).expect("token endpoint address")[0]);
    let tokend = Tokend::start().await;
    let (mut apps, mut tokens) = (tokend.apps().await, tokend.tokens().await);
    let p = pb::Profile { token_endpoint: proxy.url_for(&server.endpoints.token), ..server.profile("unlucky") };
    create(&mut apps, p).await;
    connect(&mut apps, &tokend, "unlucky").await;
    let held = tokens.get_access_token(get("unlucky", 60)).await.expect("token").into_inner();

    step("the server rotates, its reply is lost on the way back");
    proxy.set(Fault::LoseNextReply);
    // The proxy cuts the connections it passed through (tokend's pooled keep-alive connection
    // from the consent) in their own tasks: let it, or under load the refresh may go out on the
    // connection being cut ("reset by peer", no request reaching the server) and only the retry
    // would reach the server, the reply it loses being the first rotation.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = apps.refresh_now(pb::RefreshNowRequest { name: "unlucky".into() }).await.expect_err("rotation lost");
    assert_eq!(proxy.replies_lost(), 1);
    // tokend asked once more with the same refresh token (a maybe-sent failure); this server
    // treats that as reuse and revokes the grant.
    let stats = server.stats().await;
    assert_eq!(stats["granted"]["refresh_token"], 1, "{stats}");
    assert_eq!(stats["refresh_token_reuse"], 1, "{stats}");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let p = profile(&mut apps, "unlucky").await;
    assert_eq!(status(&p), pb::Status::NeedsReauthorization);
    assert!(p.last_error.contains("invalid_grant") && p.last_error.contains("Connect"), "{}", p.last_error);
    // Nothing more is sent: no loop on a dead grant.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.stats().await["errors"]["refresh_token:invalid_grant"], 1);
    assert!(!server.is_active(&held.access_token).await, "the server revoked the whole grant");
}
