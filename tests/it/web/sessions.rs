//! Sign-in, sessions and the checks every request passes.

use tokend::api::pb;
use tokend::clock::ManualClock;

use super::Visitor;
use crate::support::*;

/// The sign-in form as the issue describes it; admins and viewers get a session cookie with the
/// right flags, a consumer is sent to gRPC, a wrong token is told so.
#[tokio::test]
async fn sign_in_by_role() {
    let daemon = TestDaemon::start().await;
    let mut visitor = Visitor::new(daemon.daemon().http_addr);
    let form = visitor.get("/").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("<label for=\"token\">Bearer token</label>"), "{}", form.body);
    assert!(form.body.contains("type=\"password\"") && form.body.contains(">Sign in</button>"));

    let wrong = visitor.sign_in("not-a-token").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("not known"), "{}", wrong.body);
    assert!(visitor.cookie.is_empty());

    let consumer = visitor.sign_in(CONSUMER).await;
    assert_eq!(consumer.status, 403);
    assert!(consumer.body.contains("Consumers fetch tokens over gRPC"), "{}", consumer.body);
    assert!(visitor.cookie.is_empty());

    for (token, role) in [(ADMIN, "admin"), (VIEWER, "viewer")] {
        let mut visitor = Visitor::new(daemon.daemon().http_addr);
        let reply = visitor.sign_in(token).await;
        assert_eq!((reply.status, reply.location.as_str()), (303, "/"));
        let cookie = reply.cookies.iter().find(|c| c.starts_with("tokend_session=")).expect("session cookie");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/"));
        assert!(!cookie.contains("Secure"), "no Secure over plain HTTP: {cookie}");
        assert!(!cookie.contains(token), "the cookie is sealed, not the token");
        let page = visitor.get("/").await;
        assert!(page.body.contains("<h1>Connected apps</h1>"), "{}", page.body);
        assert!(page.body.contains(&format!("({role})")));
        assert_eq!(page.headers["cache-control"], "no-store");
    }
    daemon.stop().await;
}

/// Every page carries the security headers; the embedded assets are served by content hash.
#[tokio::test]
async fn security_headers_and_assets() {
    let daemon = TestDaemon::start().await;
    let mut visitor = Visitor::new(daemon.daemon().http_addr);
    visitor.sign_in(ADMIN).await;
    let page = visitor.get("/").await;
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(!page.body.contains("<script>") && !page.body.contains(" style=\""), "no inline script or style");
    let css = page.body.split("href=\"/assets/").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let asset = visitor.get(&format!("/assets/{css}")).await;
    assert_eq!(asset.status, 200);
    assert!(asset.headers["cache-control"].to_str().unwrap().contains("immutable"));
    assert!(asset.headers["content-type"].to_str().unwrap().starts_with("text/css"));
    assert!(asset.headers.contains_key("etag"));
    assert_eq!(visitor.get("/assets/other.css").await.status, 404);
    daemon.stop().await;
}

/// A POST without the session's CSRF token, with another origin, or without any origin
/// evidence is refused; with both it goes through.
#[tokio::test]
async fn csrf_and_origin_checked() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    apps.create_profile(pb::CreateProfileRequest { profile: Some(fake_profile("box-in", &provider)) }).await.unwrap();
    let mut visitor = Visitor::new(daemon.daemon().http_addr);
    visitor.sign_in(ADMIN).await;
    let csrf = visitor.csrf().await;
    let path = "/profiles/box-in/refresh";
    assert_eq!(visitor.post(path, &[]).await.status, 403, "no CSRF token");
    assert_eq!(visitor.post(path, &[("csrf", "wrong")]).await.status, 403, "wrong CSRF token");
    let evil = visitor.post_from(path, &[("csrf", &csrf)], Some("http://evil.example")).await;
    assert_eq!(evil.status, 403, "another origin");
    assert_eq!(visitor.post_from(path, &[("csrf", &csrf)], None).await.status, 403, "no Origin");
    let signin = visitor.post_from("/signin", &[("token", ADMIN)], Some("http://evil.example")).await;
    assert_eq!(signin.status, 403, "sign-in from another origin");
    let ok = visitor.post("/profiles/box-in/disconnect", &[("csrf", &csrf)]).await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    daemon.stop().await;
}

/// Viewers see the table without buttons or forms, and the server refuses their POSTs.
#[tokio::test]
async fn viewers_are_read_only() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    apps.create_profile(pb::CreateProfileRequest { profile: Some(fake_profile("box-in", &provider)) }).await.unwrap();
    let mut viewer = Visitor::new(daemon.daemon().http_addr);
    viewer.sign_in(VIEWER).await;
    let page = viewer.get("/").await;
    assert!(page.body.contains("box-in") && page.body.contains("Not connected"), "{}", page.body);
    for absent in [">Connect<", ">Disconnect<", "New profile", "/connect\""] {
        assert!(!page.body.contains(absent), "viewer page shows {absent}");
    }
    let profile = viewer.get("/profiles/box-in").await;
    for absent in [">Edit<", ">Delete<", ">Refresh now<", ">Connect<"] {
        assert!(!profile.body.contains(absent), "viewer profile page shows {absent}");
    }
    assert_eq!(viewer.get("/profiles/new").await.status, 403);
    assert_eq!(viewer.get("/profiles/box-in/edit").await.status, 403);
    let csrf = viewer.csrf().await;
    for action in ["connect", "disconnect", "refresh", "delete"] {
        let reply = viewer.post(&format!("/profiles/box-in/{action}"), &[("csrf", &csrf)]).await;
        assert_eq!(reply.status, 403, "viewer POST {action}");
    }
    let create = viewer.post("/profiles", &[("csrf", &csrf), ("name", "x"), ("provider", "custom")]).await;
    assert_eq!(create.status, 403);
    let still = apps.get_profile(pb::GetProfileRequest { name: "box-in".into() }).await.unwrap().into_inner();
    assert_eq!(still.status(), pb::Status::NotConnected);
    daemon.stop().await;
}

/// Sessions expire idle and absolutely on the daemon's clock (driven, not slept), slide while
/// used, and a sign-out ends the session for any copy of the cookie.
#[tokio::test]
async fn sessions_expire_and_sign_out() {
    let clock = ManualClock::new(1_800_000_000_000);
    let tweak = |c: &mut tokend::config::Config| {
        c.http.session.idle_timeout_secs = 60;
        c.http.session.absolute_timeout_secs = 150;
    };
    let daemon = TestDaemon::start_with(tweak, Some(clock.clone())).await;
    let addr = daemon.daemon().http_addr;
    let mut visitor = Visitor::new(addr);
    visitor.sign_in(ADMIN).await;
    let first = visitor.cookie.clone();
    clock.advance_ms(50_000);
    let page = visitor.get("/").await;
    assert!(page.body.contains("Connected apps"));
    assert_ne!(visitor.cookie, first, "the cookie is re-issued as the idle clock slides");
    clock.advance_ms(50_000);
    assert!(visitor.get("/").await.body.contains("Connected apps"), "used within the idle time");
    let mut stale = Visitor::new(addr);
    stale.cookie = first;
    assert!(stale.get("/").await.body.contains("Bearer token"), "the first cookie idled out");
    clock.advance_ms(50_000);
    let expired = visitor.get("/").await;
    assert!(expired.body.contains("Bearer token"), "absolute expiry after 150 s");
    assert!(expired.cookies.iter().any(|c| c.contains("Max-Age=0")), "the dead cookie is removed");

    visitor.cookie.clear();
    visitor.sign_in(ADMIN).await;
    let copy = visitor.cookie.clone();
    let csrf = visitor.csrf().await;
    let out = visitor.post("/signout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(out.cookies.iter().any(|c| c.starts_with("tokend_session=;") && c.contains("Max-Age=0")));
    let mut thief = Visitor::new(addr);
    thief.cookie = copy;
    assert!(thief.get("/").await.body.contains("Bearer token"), "a signed-out cookie is dead");
    assert_eq!(thief.post("/profiles/x/refresh", &[("csrf", &csrf)]).await.location, "/");
    daemon.stop().await;
}

/// A reload (SIGHUP) that removes the caller ends its session at once; one that demotes an
/// admin to viewer takes its buttons away on the next request.
#[tokio::test]
async fn reload_ends_sessions_of_removed_callers() {
    let mut daemon = TestDaemon::start().await;
    let addr = daemon.daemon().http_addr;
    let mut viewer = Visitor::new(addr);
    viewer.sign_in(VIEWER).await;
    let mut admin = Visitor::new(addr);
    admin.sign_in(ADMIN).await;
    assert!(admin.get("/").await.body.contains("New profile"));
    let mut config = daemon.config.clone();
    config.callers.retain(|c| c.name != "dashboard");
    for caller in &mut config.callers {
        if caller.name == "ops" {
            caller.role = "viewer".parse().unwrap();
        }
    }
    daemon.daemon().reload_handle().reload(&config).await.expect("reload");
    daemon.config = config;
    assert!(viewer.get("/").await.body.contains("Bearer token"), "removed caller: signed out");
    let page = admin.get("/").await;
    assert!(page.body.contains("Connected apps") && !page.body.contains("New profile"), "demoted to viewer");
    daemon.stop().await;
}

/// Wrong sign-in tokens count against the failed-authentication limit that gRPC uses: once
/// blocked, the peer is refused on both listeners.
#[tokio::test]
async fn wrong_tokens_count_against_the_shared_limit() {
    let tweak = |c: &mut tokend::config::Config| c.grpc.auth_limit.max_failures = 3;
    let daemon = TestDaemon::start_with(tweak, None).await;
    let mut visitor = Visitor::new(daemon.daemon().http_addr);
    for _ in 0..3 {
        assert_eq!(visitor.sign_in("guess").await.status, 401);
    }
    let blocked = visitor.sign_in(ADMIN).await;
    assert_eq!(blocked.status, 429, "{}", blocked.body);
    let mut apps = daemon.apps(ADMIN).await;
    let grpc = apps.list_profiles(pb::ListProfilesRequest::default()).await.unwrap_err();
    assert_eq!(grpc.code(), tonic::Code::ResourceExhausted, "the same peer is blocked on gRPC too");
    daemon.stop().await;
}
