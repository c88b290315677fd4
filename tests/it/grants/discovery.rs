//! Issuer discovery (RFC 8414, then OpenID Connect Discovery) against the fake provider.

use tokend::api::pb;
use tonic::Code;

use crate::support::*;

const RFC8414: &str = "/.well-known/oauth-authorization-server";
const OPENID: &str = "/.well-known/openid-configuration";

/// A `custom` profile with only an issuer, a client id and a secret.
fn issuer_profile(name: &str, issuer: &str) -> pb::Profile {
    pb::Profile {
        name: name.into(),
        provider: "custom".into(),
        client_id: "test-client".into(),
        client_secret: "test-secret".into(),
        scopes: vec!["files.read".into()],
        issuer: issuer.into(),
        ..Default::default()
    }
}

async fn create(apps: &mut AppsClient, profile: pb::Profile) -> Result<pb::Profile, tonic::Status> {
    apps.create_profile(pb::CreateProfileRequest { profile: Some(profile) }).await.map(|r| r.into_inner())
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

/// A profile with only an issuer gets every endpoint from the RFC 8414 metadata and connects
/// through them (authorization code + PKCE), authenticating as the metadata allows; who
/// consented comes from the userinfo endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_alone_fills_the_profile_and_connects() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    let created = create(&mut apps, issuer_profile("idp", &provider.issuer())).await.expect("create");
    assert_eq!(created.token_endpoint, provider.token_endpoint());
    assert_eq!(created.authorization_endpoint, provider.authorization_endpoint());
    assert_eq!(created.revocation_endpoint, provider.revocation_endpoint());
    assert_eq!(created.device_authorization_endpoint, provider.device_authorization_endpoint());
    assert_eq!((provider.metadata_requests(RFC8414), provider.metadata_requests(OPENID)), (1, 0));

    let start = apps.connect(pb::ConnectRequest { name: "idp".into() }).await.expect("connect").into_inner();
    assert!(start.authorization_url.starts_with(&provider.authorization_endpoint()), "{}", start.authorization_url);
    let redirect = consent_redirect(&start.authorization_url).await;
    assert_eq!(browser().get(&redirect).send().await.expect("callback").status().as_u16(), 200);
    let profile = apps.get_profile(pb::GetProfileRequest { name: "idp".into() }).await.expect("get").into_inner();
    assert_eq!(profile.status, pb::Status::Connected as i32, "{}", profile.last_error);
    assert!(provider.last_token_request().expect("token request").used_basic_auth, "client_secret_basic first");
    assert_eq!(profile.connected_account, fake_provider::USERINFO_EMAIL, "no ID token: from the userinfo endpoint");
    let revoked = apps.disconnect(pb::DisconnectRequest { name: "idp".into() }).await.expect("disconnect");
    assert_eq!(revoked.into_inner().revocation, pb::Revocation::Revoked as i32, "discovered revocation endpoint");
    daemon.stop().await;
}

/// Without RFC 8414 metadata the OpenID document is used; endpoints the admin sets win over
/// discovered ones; an update re-discovers only when it names the issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_fallback_overrides_and_rediscovery() {
    let provider = FakeProvider::start().await;
    provider.set_options(|o| o.serve_oauth_metadata = false);
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    let own_token = format!("{}?tenant=own", provider.token_endpoint());
    let input = pb::Profile { token_endpoint: own_token.clone(), ..issuer_profile("oidc", &provider.issuer()) };
    let created = create(&mut apps, input).await.expect("create");
    assert_eq!(created.token_endpoint, own_token, "the admin's endpoint wins");
    assert_eq!(created.authorization_endpoint, provider.authorization_endpoint());
    assert_eq!((provider.metadata_requests(RFC8414), provider.metadata_requests(OPENID)), (1, 1));

    let update = |description: &str, paths: &[&str]| pb::UpdateProfileRequest {
        profile: Some(pb::Profile { description: description.into(), ..issuer_profile("oidc", &provider.issuer()) }),
        update_mask: mask(paths),
    };
    apps.update_profile(update("no discovery", &["description"])).await.expect("update");
    assert_eq!(provider.metadata_requests(OPENID), 1, "an update not naming the issuer fetches nothing");
    apps.update_profile(update("", &["issuer"])).await.expect("rediscover");
    assert_eq!(provider.metadata_requests(OPENID), 2, "naming the issuer discovers again");
    daemon.stop().await;
}

/// Discovery that fails stores nothing: a document naming another issuer (RFC 8414 §3.3), no
/// metadata at all, an unreachable issuer, a plain-http issuer off loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_discovery_changes_nothing() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    let get = |name: &str| pb::GetProfileRequest { name: name.into() };

    provider.set_options(|o| o.metadata_issuer = Some("https://evil.example".into()));
    let err = create(&mut apps, issuer_profile("mismatch", &provider.issuer())).await.expect_err("mismatch");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("issuer") && err.message().contains("RFC 8414 §3.3"), "{}", err.message());
    assert_eq!(apps.get_profile(get("mismatch")).await.expect_err("not stored").code(), Code::NotFound);

    provider.set_options(|o| o.metadata_issuer = None);
    create(&mut apps, issuer_profile("kept", &provider.issuer())).await.expect("create");
    provider.set_options(|o| o.metadata_issuer = Some("https://evil.example".into()));
    let changed = pb::Profile { description: "changed".into(), ..issuer_profile("kept", &provider.issuer()) };
    let request = pb::UpdateProfileRequest { profile: Some(changed), update_mask: mask(&["description", "issuer"]) };
    assert_eq!(apps.update_profile(request).await.expect_err("mismatch").code(), Code::InvalidArgument);
    let kept = apps.get_profile(get("kept")).await.expect("get").into_inner();
    assert!(kept.description.is_empty() && kept.token_endpoint == provider.token_endpoint(), "unchanged");

    provider.set_options(|o| (o.serve_oauth_metadata, o.serve_openid_metadata) = (false, false));
    let err = create(&mut apps, issuer_profile("none", &provider.issuer())).await.expect_err("no metadata");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("no authorization server metadata"), "{}", err.message());

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = create(&mut apps, issuer_profile("down", &format!("http://{closed}"))).await.expect_err("down");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());

    let err = create(&mut apps, issuer_profile("plain", "http://idp.example.com")).await.expect_err("plain http");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("issuer"), "{}", err.message());
    for name in ["none", "down", "plain"] {
        assert_eq!(apps.get_profile(get(name)).await.expect_err("not stored").code(), Code::NotFound);
    }
    daemon.stop().await;
}
