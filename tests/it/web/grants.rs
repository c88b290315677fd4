//! The other grants on the page, the page over TLS, and streams of removed callers.

use std::time::Duration;

use tokend::api::pb;

use super::Visitor;
use crate::support::*;

/// Client credentials connect at once; a device grant shows the verification link and the user
/// code, and the profile turns Connected once the user approves; Refresh now refreshes.
#[tokio::test]
async fn device_and_client_credentials_grants() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    let mut machine = fake_profile("machine", &provider);
    machine.grant = pb::Grant::ClientCredentials as i32;
    let mut device = fake_profile("tv", &provider);
    device.grant = pb::Grant::DeviceCode as i32;
    device.device_authorization_endpoint = provider.device_authorization_endpoint();
    for profile in [machine, device] {
        apps.create_profile(pb::CreateProfileRequest { profile: Some(profile) }).await.unwrap();
    }
    let mut page = Visitor::new(daemon.daemon().http_addr);
    page.sign_in(ADMIN).await;
    let csrf = page.csrf().await;

    let connected = page.post("/profiles/machine/connect", &[("csrf", &csrf)]).await;
    assert_eq!(connected.location, "/?notice=connected&name=machine");
    assert!(page.get(&connected.location).await.body.contains("machine is connected."));

    let shown = page.post("/profiles/tv/connect", &[("csrf", &csrf)]).await;
    assert_eq!(shown.status, 200);
    assert!(shown.body.contains("Approve the connection") && shown.body.contains(&provider.url("/")));
    let code = shown.body.split("<strong class=\"code\">").nth(1).unwrap().split('<').next().unwrap().to_owned();
    assert!(!code.is_empty());
    provider.approve_device(&code);
    let tv = || async {
        let mut apps = daemon.apps(ADMIN).await;
        apps.get_profile(pb::GetProfileRequest { name: "tv".into() }).await.unwrap().into_inner().status()
    };
    assert!(settle_async(&daemon, 300, async || tv().await == pb::Status::Connected).await, "approved");
    assert!(page.get("/profiles/tv").await.body.contains(">Connected<"));

    let refreshed = page.post("/profiles/tv/refresh", &[("csrf", &csrf)]).await;
    assert_eq!(refreshed.location, "/profiles/tv?notice=refreshed&name=tv");
    assert!(page.get(&refreshed.location).await.body.contains("Refreshed tv."));
    daemon.stop().await;
}

/// Over `http.tls` the page is served by TLS, its session cookie is `Secure`, POSTs must come
/// from the `https` origin, and a reload (SIGHUP) swaps the certificate.
#[tokio::test]
async fn page_over_tls() {
    install_crypto_provider();
    let ca = Ca::new("page CA");
    let dir = private_tempdir().unwrap();
    let (cert, key) = ca.write_issued(dir.path(), "http", &["127.0.0.1"]);
    let tweak = |c: &mut tokend::config::Config| {
        c.http.tls.cert_file = cert.clone();
        c.http.tls.key_file = key.clone();
    };
    let daemon = TestDaemon::start_with(tweak, None).await;
    let client = oauth2::reqwest::Client::builder()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .add_root_certificate(oauth2::reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://{}", daemon.daemon().http_addr);
    let form = client.get(format!("{base}/")).send().await.expect("the page over TLS");
    assert!(form.text().await.unwrap().contains("Bearer token"));
    let plain = format!("token={ADMIN}");
    let post = |origin: String| {
        client
            .post(format!("{base}/signin"))
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(plain.clone())
            .send()
    };
    let wrong = post(format!("http://{}", daemon.daemon().http_addr)).await.unwrap();
    assert_eq!(wrong.status().as_u16(), 403, "the http origin is another origin");
    let reply = post(base.clone()).await.unwrap();
    assert_eq!(reply.status().as_u16(), 303);
    let cookie = reply.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(client.get(format!("{base}/healthz")).send().await.unwrap().status().is_success());

    // SIGHUP: a certificate from another CA is served to new connections.
    let other = Ca::new("renewed CA");
    let (cert2, key2) = other.write_issued(dir.path(), "http2", &["127.0.0.1"]);
    let mut config = daemon.config.clone();
    config.http.tls.cert_file = cert2;
    config.http.tls.key_file = key2;
    daemon.daemon().reload_handle().reload(&config).await.expect("reload");
    let renewed = oauth2::reqwest::Client::builder()
        .add_root_certificate(oauth2::reqwest::Certificate::from_pem(other.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let reply = renewed.get(format!("{base}/healthz")).send().await.expect("the renewed certificate");
    assert!(reply.status().is_success());
    daemon.stop().await;
}

/// A live-update stream ends when a reload removes its caller.
#[tokio::test]
async fn event_stream_ends_with_its_caller() {
    let mut daemon = TestDaemon::start().await;
    let mut page = Visitor::new(daemon.daemon().http_addr);
    page.sign_in(VIEWER).await;
    let mut stream = browser()
        .get(format!("http://{}/events", daemon.daemon().http_addr))
        .header("cookie", format!("tokend_session={}", page.cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let mut config = daemon.config.clone();
    config.callers.retain(|c| c.name != "dashboard");
    daemon.daemon().reload_handle().reload(&config).await.expect("reload");
    daemon.config = config;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ended");
    daemon.stop().await;
}
