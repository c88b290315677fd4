//! Profiles through the page's forms, Connect and Disconnect through the callback, live
//! updates, and no secret anywhere in what the page sends.

use std::time::Duration;

use tokend::api::pb;

use super::Visitor;
use crate::support::*;

/// The fields of a `custom` profile for the fake provider, as the New profile form posts them.
fn fields<'a>(name: &'a str, endpoints: &'a [String; 3]) -> Vec<(&'a str, &'a str)> {
    vec![
        ("name", name),
        ("description", "Inbound mail attachments"),
        ("provider", "custom"),
        ("grant", "authorization_code"),
        ("client_id", "test-client"),
        ("client_secret", "test-secret"),
        ("scopes", "files.read"),
        ("authorization_endpoint", &endpoints[0]),
        ("token_endpoint", &endpoints[1]),
        ("revocation_endpoint", &endpoints[2]),
    ]
}

/// Create through the form (a bad field is named, the secret is not shown back), edit with a
/// blank secret (kept), Connect through the provider and the callback back to the page,
/// Disconnect with the revocation outcome, Delete. No page ever carries a secret.
#[tokio::test]
async fn profile_lifecycle_through_forms() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    let mut page = Visitor::new(daemon.daemon().http_addr);
    page.sign_in(ADMIN).await;
    let csrf = page.csrf().await;
    let mut seen = String::new();
    let form = page.get("/profiles/new").await;
    assert!(form.body.contains("<option value=\"google\"") && form.body.contains("accounts.google.com"));
    let endpoints = [provider.authorization_endpoint(), provider.token_endpoint(), provider.revocation_endpoint()];

    let mut bad = fields("mail-in", &endpoints);
    bad[8] = ("token_endpoint", "not a url");
    bad.push(("csrf", &csrf));
    let refused = page.post("/profiles", &bad).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("Invalid token_endpoint"), "{}", refused.body);
    assert!(refused.body.contains("aria-invalid=\"true\""));
    seen.push_str(&refused.body);

    let mut good = fields("mail-in", &endpoints);
    good.push(("csrf", &csrf));
    let created = page.post("/profiles", &good).await;
    assert_eq!((created.status, created.location.as_str()), (303, "/?notice=created&name=mail-in"));
    let table = page.get(&created.location).await;
    assert!(table.body.contains("Created mail-in.") && table.body.contains("Inbound mail attachments"));
    for header in
        ["Name", "Description", "Service provider", "Authorization expires", "Status", "Refresh token", "Action"]
    {
        assert!(table.body.contains(&format!("<th scope=\"col\">{header}</th>")), "header {header}");
    }
    seen.push_str(&table.body);

    let edit = page.get("/profiles/mail-in/edit").await;
    assert!(edit.body.contains("A secret is stored; leave blank to keep it."));
    assert!(edit.body.contains("value=\"Inbound mail attachments\""));
    seen.push_str(&edit.body);
    let mut changed = fields("mail-in", &endpoints);
    changed[1] = ("description", "Attachments <b>& more</b>");
    changed[5] = ("client_secret", "");
    changed.push(("csrf", &csrf));
    let saved = page.post("/profiles/mail-in/edit", &changed).await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let shown = page.get("/profiles/mail-in").await;
    assert!(shown.body.contains("Attachments &#60;b&#62;&#38; more&#60;/b&#62;") || shown.body.contains("&lt;b&gt;"));
    assert!(shown.body.contains("set (write-only)"), "blank kept the secret");
    seen.push_str(&shown.body);

    // Connect: to the provider, which consents at once and redirects to tokend's callback; the
    // consent cookie brings the browser back to the page.
    let connect = page.post("/profiles/mail-in/connect", &[("csrf", &csrf)]).await;
    assert_eq!(connect.status, 200, "a page that moves on to the provider (form-action 'self' bars a redirect)");
    let leaving = connect.body.split("content=\"0; url=").nth(1).unwrap().split('"').next().unwrap();
    let authorization_url = leaving.replace("&#38;", "&").replace("&amp;", "&");
    assert!(authorization_url.starts_with(&provider.authorization_endpoint()), "{authorization_url}");
    let consent = connect.cookies.iter().find(|c| c.starts_with("tokend_consent=")).expect("consent cookie");
    assert!(consent.contains("SameSite=Lax") && consent.contains("Path=/oauth/callback"));
    let connecting = page.get("/").await;
    assert!(connecting.body.contains(">Connecting<") && connecting.body.contains(">Cancel<"));
    let redirect = consent_redirect(&authorization_url).await;
    let consent_value = consent.split(';').next().unwrap().to_owned();
    let back = browser().get(&redirect).header("cookie", consent_value).send().await.unwrap();
    assert_eq!(back.status().as_u16(), 200, "a page that moves on by itself (same-site, so the session comes)");
    let moving_on = back.text().await.unwrap();
    assert!(moving_on.contains("content=\"0; url=/?notice=connected&amp;name=mail-in\""), "{moving_on}");
    let connected = page.get("/?notice=connected&name=mail-in").await;
    assert!(connected.body.contains("mail-in is connected."));
    assert!(connected.body.contains(">Connected<") && connected.body.contains(">enabled<"));
    assert!(connected.body.contains(">Disconnect<"));
    let expires = connected.body.split("data-expires-in=\"").nth(1).unwrap().split('"').next().unwrap();
    assert!(expires.parse::<i64>().unwrap() > 3000, "about an hour left: {expires}");
    seen.push_str(&connected.body);
    seen.push_str(&page.get("/profiles/mail-in").await.body);
    seen.push_str(&page.get("/?fragment=1").await.body);

    let confirm = page.get("/profiles/mail-in/disconnect").await;
    assert!(confirm.body.contains("Disconnect mail-in?"));
    let gone = page.post("/profiles/mail-in/disconnect", &[("csrf", &csrf)]).await;
    assert_eq!(gone.location, "/?notice=revoked&name=mail-in");
    let after = page.get(&gone.location).await;
    assert!(after.body.contains("the provider revoked the tokens") && after.body.contains(">Not connected<"));

    let tokens = provider.issued_access_tokens().into_iter().chain(provider.issued_refresh_tokens());
    for secret in tokens.chain(["test-secret".to_owned(), ADMIN.to_owned()]) {
        assert!(!seen.contains(&secret), "a page carries a secret");
    }
    assert!(!authorization_url.contains("test-secret") && !authorization_url.contains("code_verifier"));
    assert!(!connect.body.contains("test-secret"));

    assert!(page.get("/profiles/mail-in/delete").await.body.contains("Delete mail-in?"));
    let deleted = page.post("/profiles/mail-in/delete", &[("csrf", &csrf)]).await;
    assert_eq!(deleted.location, "/?notice=deleted&name=mail-in");
    let missing = apps.get_profile(pb::GetProfileRequest { name: "mail-in".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    daemon.stop().await;
}

/// A consent finished without the page's cookie (tokenctl's, another browser's) still gets the
/// short callback page.
#[tokio::test]
async fn callback_without_the_page_shows_its_own_page() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    let profile = create_and_connect(&mut apps, "files", &provider).await;
    assert_eq!(profile.status(), pb::Status::Connected);
    daemon.stop().await;
}

/// The live-update stream sends an event when a profile changes through gRPC.
#[tokio::test]
async fn live_updates_follow_grpc_changes() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut page = Visitor::new(daemon.daemon().http_addr);
    page.sign_in(VIEWER).await;
    let url = format!("http://{}/events", daemon.daemon().http_addr);
    let mut stream =
        browser().get(url).header("cookie", format!("tokend_session={}", page.cookie)).send().await.expect("events");
    assert_eq!(stream.status().as_u16(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut apps = daemon.apps(ADMIN).await;
    apps.create_profile(pb::CreateProfileRequest { profile: Some(fake_profile("made-by-grpc", &provider)) })
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await.expect("an event").unwrap();
    let text = String::from_utf8_lossy(&chunk.unwrap()).into_owned();
    assert!(text.contains("event: profile") && text.contains("data: made-by-grpc"), "{text}");
    let anonymous = browser().get(format!("http://{}/events", daemon.daemon().http_addr)).send().await.unwrap();
    assert_ne!(anonymous.status().as_u16(), 200, "no stream without a session");
    daemon.stop().await;
}

/// Off loopback without TLS the page is off unless opted in; on loopback or under TLS it is on.
#[test]
fn page_served_only_where_safe() {
    let mut http = tokend::config::HttpConfig::default();
    assert!(http.serves_page());
    http.listen = "0.0.0.0:8085".parse().unwrap();
    assert!(!http.serves_page());
    http.allow_insecure_non_loopback = true;
    assert!(http.serves_page());
    http.allow_insecure_non_loopback = false;
    http.tls.cert_file = "cert.pem".into();
    assert!(http.serves_page());
}
