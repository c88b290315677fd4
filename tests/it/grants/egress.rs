//! The way out to providers: an on-premises provider behind a private CA (`provider.ca_bundle_file`)
//! and the SSRF deny-list (`provider.deny_networks`) on literal and resolved addresses.

use tokend::api::pb;
use tonic::Code;

use crate::support::tls_front::TlsFront;
use crate::support::*;

/// A client-credentials profile discovered from `issuer`.
fn m2m(name: &str, issuer: &str) -> pb::Profile {
    pb::Profile {
        name: name.into(),
        provider: "custom".into(),
        grant: pb::Grant::ClientCredentials as i32,
        client_id: "test-client".into(),
        client_secret: "test-secret".into(),
        issuer: issuer.into(),
        ..Default::default()
    }
}

async fn create(apps: &mut AppsClient, profile: pb::Profile) -> Result<pb::Profile, tonic::Status> {
    apps.create_profile(pb::CreateProfileRequest { profile: Some(profile) }).await.map(|r| r.into_inner())
}

/// A provider whose certificate comes from a private CA is refused until the CA is in
/// `provider.ca_bundle_file`; then discovery, the token endpoint and revocation work over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_bundle_trusts_an_on_premises_provider() {
    let provider = FakeProvider::start().await;
    let front = TlsFront::start(provider.addr()).await;
    provider.set_options(|o| o.public_base = Some(front.base()));

    let untrusting = TestDaemon::start().await;
    let mut apps = untrusting.apps(ADMIN).await;
    let err = create(&mut apps, m2m("onprem", &front.base())).await.expect_err("unknown CA");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().to_ascii_lowercase().contains("certificate"), "{}", err.message());
    untrusting.stop().await;

    let bundle = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bundle.path(), front.ca_pem()).unwrap();
    let path = bundle.path().to_path_buf();
    let daemon = TestDaemon::start_with(move |c| c.provider.ca_bundle_file = path, None).await;
    let mut apps = daemon.apps(ADMIN).await;
    let created = create(&mut apps, m2m("onprem", &front.base())).await.expect("create over TLS");
    assert_eq!(created.token_endpoint, format!("{}/token", front.base()));
    let start = apps.connect(pb::ConnectRequest { name: "onprem".into() }).await.expect("connect").into_inner();
    assert_eq!(start.status, pb::Status::Connected as i32);
    assert_eq!(provider.token_requests("client_credentials"), 1);
    let revoked = apps.disconnect(pb::DisconnectRequest { name: "onprem".into() }).await.expect("disconnect");
    assert_eq!(revoked.into_inner().revocation, pb::Revocation::Revoked as i32);
    daemon.stop().await;
}

/// A bundle that is not a PEM certificate stops the daemon at start with the key's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_ca_bundle_is_a_configuration_error() {
    let dir = crate::support::private_tempdir().unwrap();
    let mut config = test_config(dir.path());
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, "not a certificate").unwrap();
    config.provider.ca_bundle_file = bundle;
    match start_daemon(&config, None).await {
        Ok(_) => panic!("a daemon started with an unusable CA bundle"),
        Err(err) => assert!(err.to_string().contains("provider.ca_bundle_file"), "{err}"),
    }
}

/// The default deny-list refuses link-local and metadata addresses written as literals, the
/// IPv4-mapped spelling included, when the profile is written; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_list_refuses_metadata_literals() {
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    for (field, url) in [
        ("token_endpoint", "https://169.254.169.254/latest/meta-data/"),
        ("token_endpoint", "https://[::ffff:169.254.169.254]/token"),
        ("revocation_endpoint", "https://[fd00:ec2::254]/revoke"),
    ] {
        let mut profile = m2m("meta", "");
        profile.token_endpoint = "https://idp.example.com/token".into();
        match field {
            "token_endpoint" => profile.token_endpoint = url.into(),
            _ => profile.revocation_endpoint = url.into(),
        }
        let err = create(&mut apps, profile).await.expect_err(url);
        assert_eq!(err.code(), Code::InvalidArgument, "{url}");
        assert!(err.message().contains(field) && err.message().contains("provider.deny_networks"), "{}", err.message());
    }
    let err = create(&mut apps, m2m("meta", "https://169.254.169.254")).await.expect_err("issuer");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("169.254.0.0/16"), "{}", err.message());
    let missing = apps.get_profile(pb::GetProfileRequest { name: "meta".into() }).await.expect_err("not stored");
    assert_eq!(missing.code(), Code::NotFound);
    daemon.stop().await;
}

/// The deny-list applies to the addresses a host name resolves to: with loopback denied, a
/// profile naming `localhost` is refused when tokend would call it, and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_list_applies_to_resolved_addresses() {
    let provider = FakeProvider::start().await;
    let daemon =
        TestDaemon::start_with(|c| c.provider.deny_networks = vec!["127.0.0.0/8".into(), "::1/128".into()], None).await;
    let mut apps = daemon.apps(ADMIN).await;
    let literal = pb::Profile { token_endpoint: provider.token_endpoint(), ..m2m("literal", "") };
    assert_eq!(create(&mut apps, literal).await.expect_err("literal").code(), Code::InvalidArgument);

    let named = format!("http://localhost:{}/token", provider.addr().port());
    create(&mut apps, pb::Profile { token_endpoint: named, ..m2m("named", "") }).await.expect("names pass");
    let err = apps.connect(pb::ConnectRequest { name: "named".into() }).await.expect_err("resolves to loopback");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("localhost resolves to"), "{}", err.message());
    assert!(err.message().contains("provider.deny_networks"), "{}", err.message());
    assert_eq!(provider.token_requests("client_credentials"), 0, "nothing was sent");
    daemon.stop().await;
}
