//! What an admin and a viewer do on the page, in Chromium.

use std::time::Duration;

use tokend::api::pb;

use super::Browser;
use crate::interop::harness::{ACCOUNT, ADMIN_TOKEN, AuthServer, CLIENT_ID, CLIENT_SECRET, ServerOptions, Tokend};
use crate::support::*;

const NAME: &str = "interop-web";

/// The row of the profile in the table.
fn row(cell: &str) -> String {
    format!("//tr[@data-profile='{NAME}']/td[{cell}]")
}

/// The whole admin journey against the real binary and the interop authorization server: sign
/// in, create a profile in the form, Connect through the provider's own login and consent
/// pages, back on the page Connected with a refresh token and a ticking expiry, the grid view
/// (remembered), edit the description, Disconnect, sign out. axe-core finds no serious or
/// critical violation on the sign-in, landing and profile pages; no page carries a secret.
#[tokio::test]
async fn admin_journey_in_chromium() {
    let server = AuthServer::start(ServerOptions::default()).await;
    let tokend = Tokend::start().await;
    let browser = Browser::start().await;
    let base = format!("http://{}", tokend.http);
    let mut sources = Vec::new();

    browser.goto(&format!("{base}/")).await;
    browser.wait_heading("Sign in").await;
    browser.assert_accessible("sign-in").await;
    browser.fill("Bearer token", "wrong-token").await;
    browser.click("Sign in").await;
    browser.wait("//p[@role='alert' and contains(., 'not known')]").await;
    browser.fill("Bearer token", ADMIN_TOKEN).await;
    browser.click("Sign in").await;
    browser.wait_heading("Connected apps").await;

    browser.click("New profile").await;
    browser.wait_heading("New profile").await;
    browser.fill("Name", NAME).await;
    browser.fill("Description", "Mail attachments (interop)").await;
    browser.fill("Client ID", CLIENT_ID).await;
    browser.fill("Client secret", CLIENT_SECRET).await;
    browser.fill("Scopes", "openid offline_access").await;
    browser.fill("Issuer", &server.issuer).await;
    sources.push(browser.source().await);
    browser.click("Create profile").await;
    browser.wait(&format!("//p[@role='status' and normalize-space()='Created {NAME}.']")).await;
    assert_eq!(browser.wait(&row("5")).await.text().await.unwrap(), "Not connected");
    browser.assert_accessible("landing").await;

    browser
        .wait(&format!("//tr[@data-profile='{NAME}']//button[normalize-space()='Connect']"))
        .await
        .click()
        .await
        .unwrap();
    // The authorization server's own pages: its login form, then its consent.
    let login = browser.wait("//input[@name='login']").await;
    assert!(browser.url().await.starts_with(&server.issuer), "at the provider");
    login.send_keys(ACCOUNT).await.unwrap();
    browser.wait("//input[@name='password']").await.send_keys("any").await.unwrap();
    browser.click("Sign-in").await;
    browser.click("Continue").await;
    browser.wait_heading("Connected apps").await;
    browser.wait(&format!("//p[@role='status' and normalize-space()='{NAME} is connected.']")).await;
    assert_eq!(browser.wait(&row("5")).await.text().await.unwrap(), "Connected");
    assert_eq!(browser.wait(&row("6")).await.text().await.unwrap(), "enabled");
    let expiry = browser.wait(&format!("{}/span", row("4"))).await;
    let before = expiry.text().await.unwrap();
    assert!(before.contains('m') && before.ends_with('s'), "an expiry like 9m 58s: {before:?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let after = expiry.text().await.unwrap();
    assert_ne!(before, after, "the expiry counts down");
    sources.push(browser.source().await);
    assert!(!browser.wait(&format!("//li[@data-profile='{NAME}']")).await.is_displayed().await.unwrap(), "table only");
    let table = browser.screenshot("table").await;

    browser.click("Grid view").await;
    let card = browser.wait(&format!("//li[@data-profile='{NAME}']")).await;
    assert!(card.is_displayed().await.unwrap());
    assert!(!browser.wait("//table[@id='apps-table']").await.is_displayed().await.unwrap());
    assert!(card.text().await.unwrap().contains("Connected"));
    let grid = browser.screenshot("grid").await;
    browser.goto(&format!("{base}/")).await;
    let card = browser.wait(&format!("//li[@data-profile='{NAME}']")).await;
    assert!(card.is_displayed().await.unwrap(), "the grid choice is remembered");
    browser.click("Table view").await;
    assert!(browser.wait("//table[@id='apps-table']").await.is_displayed().await.unwrap());

    browser.click(NAME).await;
    browser.wait_heading(NAME).await;
    browser.wait("//dt[normalize-space()='Connected account']").await;
    browser.assert_accessible("profile").await;
    let profile = browser.screenshot("profile").await;
    sources.push(browser.source().await);
    browser.click("Edit").await;
    browser.wait_heading(&format!("Edit {NAME}")).await;
    browser.fill("Description", "Edited in the browser").await;
    browser.click("Save").await;
    browser.wait(&format!("//p[@role='status' and normalize-space()='Saved {NAME}.']")).await;
    browser.wait("//dd[normalize-space()='Edited in the browser']").await;

    let mut tokens = tokend.tokens().await;
    let token = tokens
        .get_access_token(pb::GetAccessTokenRequest { name: NAME.into(), ..Default::default() })
        .await
        .expect("the connected profile hands out a token")
        .into_inner()
        .access_token;
    sources.push(browser.source().await);

    browser.click("Disconnect").await;
    browser.wait_heading(&format!("Disconnect {NAME}?")).await;
    browser.click("Disconnect").await;
    browser.wait_heading("Connected apps").await;
    browser.wait("//p[@role='status' and contains(., 'the provider revoked the tokens')]").await;
    assert_eq!(browser.wait(&row("5")).await.text().await.unwrap(), "Not connected");
    assert_eq!(browser.wait(&row("4")).await.text().await.unwrap(), "");

    for source in &sources {
        for secret in [CLIENT_SECRET, ADMIN_TOKEN, token.as_str()] {
            assert!(!source.contains(secret), "a page source carries a secret");
        }
    }
    let stored = browser.client.execute("return JSON.stringify(Object.assign({}, localStorage));", vec![]).await;
    let stored = stored.unwrap().as_str().unwrap_or_default().to_owned();
    assert_eq!(stored, "{\"tokend.view\":\"table\"}", "the view choice is the only thing stored");

    browser.click("Sign out").await;
    browser.wait_heading("Sign in").await;
    for shot in [table, grid, profile] {
        assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "{} written", shot.display());
    }
    browser.close().await;
    drop(tokend);
}

/// A viewer sees the page without buttons, and the server refuses the POSTs a viewer forges
/// from the page; an admin's POST without the CSRF token is refused too; a profile created
/// through gRPC appears on an open page without a reload; 360 px wide shows cards.
#[tokio::test]
async fn viewer_read_only_and_live_updates_in_chromium() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    apps.create_profile(pb::CreateProfileRequest { profile: Some(fake_profile("box-in", &provider)) }).await.unwrap();
    let base = format!("http://{}", daemon.daemon().http_addr);
    let browser = Browser::start().await;

    browser.goto(&format!("{base}/")).await;
    browser.fill("Bearer token", VIEWER).await;
    browser.click("Sign in").await;
    browser.wait_heading("Connected apps").await;
    let source = browser.source().await;
    assert!(source.contains("box-in") && source.contains("Not connected"));
    for absent in [">Connect<", ">Disconnect<", ">New profile<"] {
        assert!(!source.contains(absent), "a viewer sees {absent}");
    }
    let csrf = crate::web::csrf_of(&source).expect("the Sign out form's token");
    assert_eq!(browser.post_from_page("/profiles/box-in/connect", &format!("csrf={csrf}")).await, 403);
    assert_eq!(browser.post_from_page("/profiles/box-in/delete", &format!("csrf={csrf}")).await, 403);
    browser.click("Sign out").await;

    browser.fill("Bearer token", ADMIN).await;
    browser.click("Sign in").await;
    browser.wait_heading("Connected apps").await;
    assert_eq!(browser.post_from_page("/profiles/box-in/delete", "").await, 403, "no CSRF token");
    // Live: created through gRPC while the page is open.
    apps.create_profile(pb::CreateProfileRequest { profile: Some(fake_profile("made-by-grpc", &provider)) })
        .await
        .unwrap();
    browser.wait("//tr[@data-profile='made-by-grpc']").await;
    // 360 px wide: cards, whatever the toggle says; 1,920 px: the table.
    browser.client.set_window_size(360, 800).await.expect("narrow window");
    let card = browser.wait("//li[@data-profile='made-by-grpc']").await;
    assert!(card.is_displayed().await.unwrap(), "cards at 360 px");
    browser.client.set_window_size(1920, 1000).await.expect("wide window");
    assert!(browser.wait("//table[@id='apps-table']").await.is_displayed().await.unwrap(), "the table at 1,920 px");
    browser.close().await;
    daemon.stop().await;
}
