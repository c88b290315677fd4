//! Transport and identity: TLS on the gRPC port (certificates reloaded without a restart),
//! client-certificate callers, the Unix socket with peer-uid callers.

use std::path::Path;

use tokend::api::pb;
use tokend::api::pb::connected_apps_client::ConnectedAppsClient;
use tokend::api::pb::tokens_client::TokensClient;
use tokend::config::CallerConfig;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::support::*;

fn write_server_files(dir: &Path, ca: &Ca, client_ca: &Ca) {
    let (cert, key) = ca.issue(&["localhost"]);
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    std::fs::write(dir.join("clients-ca.pem"), client_ca.pem()).unwrap();
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    server_ca: &Ca,
    client: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(server_ca.pem())).domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls)?.connect().await
}

fn with_bearer(channel: Channel, token: &str) -> TokensApi {
    TokensClient::with_interceptor(channel, bearer(token))
}

/// TLS on the gRPC port: bearer tokens work over it, a client certificate naming a consumer
/// gets that consumer's tokens only, an unknown certificate or none at all is refused, plain
/// text is refused, and a new certificate is picked up on reload without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mtls_and_reload() {
    let provider = FakeProvider::start().await;
    let (server_ca, client_ca) = (Ca::new("server ca"), Ca::new("client ca"));
    let certs = crate::support::private_tempdir().unwrap();
    write_server_files(certs.path(), &server_ca, &client_ca);
    let cert_dir = certs.path().to_path_buf();
    let daemon = TestDaemon::start_with(
        move |c| {
            c.grpc.tls.cert_file = cert_dir.join("server.pem");
            c.grpc.tls.key_file = cert_dir.join("server.key");
            c.grpc.tls.client_ca_file = cert_dir.join("clients-ca.pem");
            c.callers.push(CallerConfig {
                name: "mail-by-cert".into(),
                role: tokend::config::Role::Consumer,
                token_sha256: String::new(),
                cert_dns_name: "mail-worker.clients.example".into(),
                unix_uid: None,
                profiles: vec!["mail-*".into()],
            });
        },
        None,
    )
    .await;
    let addr = daemon.daemon().grpc_addr;

    // Admin over TLS with a bearer token: create and connect two profiles.
    let channel = tls_channel(addr, &server_ca, None).await.expect("TLS without a client certificate");
    let mut apps = ConnectedAppsClient::with_interceptor(channel.clone(), bearer(ADMIN));
    for name in ["mail-in", "crm"] {
        apps.create_profile(pb::CreateProfileRequest { profile: Some(fake_profile(name, &provider)) }).await.unwrap();
        let start = apps.connect(pb::ConnectRequest { name: name.into() }).await.unwrap().into_inner();
        let redirect = consent_redirect(&start.authorization_url).await;
        apps.complete_connect(pb::CompleteConnectRequest { redirect_url: redirect, ..Default::default() })
            .await
            .unwrap();
    }
    with_bearer(channel.clone(), ADMIN)
        .get_access_token(pb::GetAccessTokenRequest { name: "crm".into(), min_valid_for: None })
        .await
        .expect("admin over TLS");
    let err = TokensClient::new(channel)
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-in".into(), min_valid_for: None })
        .await
        .expect_err("no credentials");
    assert_eq!(err.code(), Code::Unauthenticated);

    // A client certificate naming the consumer.
    let client = client_ca.issue(&["mail-worker.clients.example"]);
    let channel = tls_channel(addr, &server_ca, Some(client)).await.expect("mTLS");
    let mut tokens = TokensClient::new(channel);
    tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-in".into(), min_valid_for: None })
        .await
        .expect("consumer by certificate");
    let err = tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "crm".into(), min_valid_for: None })
        .await
        .expect_err("outside patterns");
    assert_eq!(err.code(), Code::PermissionDenied);

    // A valid certificate that names nobody, and one from another CA.
    let stranger = client_ca.issue(&["someone-else.example"]);
    let channel = tls_channel(addr, &server_ca, Some(stranger)).await.expect("handshake");
    let err = TokensClient::new(channel)
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-in".into(), min_valid_for: None })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::Unauthenticated);
    let rogue = Ca::new("rogue").issue(&["mail-worker.clients.example"]);
    let refused = match tls_channel(addr, &server_ca, Some(rogue)).await {
        Err(_) => true,
        Ok(channel) => TokensClient::new(channel)
            .get_access_token(pb::GetAccessTokenRequest { name: "mail-in".into(), min_valid_for: None })
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from an untrusted CA is refused");

    // Plain text to the TLS port fails.
    let plain = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await;
    if let Ok(channel) = plain {
        assert!(
            TokensClient::new(channel)
                .get_access_token(pb::GetAccessTokenRequest { name: "mail-in".into(), min_valid_for: None })
                .await
                .is_err()
        );
    }

    // Reload: a certificate from a new CA is served to new connections, no restart.
    let new_ca = Ca::new("new server ca");
    write_server_files(certs.path(), &new_ca, &client_ca);
    assert!(tls_channel(addr, &new_ca, None).await.is_err(), "still the old certificate");
    daemon.daemon().reload_handle().reload(&daemon.config).await.expect("reload");
    let channel = tls_channel(addr, &new_ca, None).await.expect("new certificate after reload");
    with_bearer(channel, ADMIN)
        .get_access_token(pb::GetAccessTokenRequest { name: "crm".into(), min_valid_for: None })
        .await
        .expect("works");
    daemon.stop().await;
}

/// The Unix socket: created with the configured mode, serves the same API, and a peer whose uid
/// is a configured caller needs no token; reloading the callers applies at once.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_with_peer_uid() {
    use std::os::unix::fs::PermissionsExt as _;
    let provider = FakeProvider::start().await;
    let sockets = crate::support::private_tempdir().unwrap();
    let path = sockets.path().join("tokend.sock");
    let socket = path.clone();
    // Our effective uid, as the kernel reports it for peer credentials.
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    let mut daemon = TestDaemon::start_with(
        move |c| {
            c.grpc.unix_socket = socket;
            c.grpc.unix_socket_mode = 0o600;
            c.callers.push(CallerConfig {
                name: "local-worker".into(),
                role: tokend::config::Role::Consumer,
                token_sha256: String::new(),
                cert_dns_name: String::new(),
                unix_uid: Some(uid),
                profiles: vec!["mail-*".into()],
            });
        },
        None,
    )
    .await;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-local", &provider).await;

    let channel =
        Endpoint::from_shared(format!("unix://{}", path.display())).unwrap().connect().await.expect("unix socket");
    let mut tokens = TokensClient::new(channel.clone());
    tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-local".into(), min_valid_for: None })
        .await
        .expect("by uid");
    // A wrong token is refused even from a trusted uid.
    let err = with_bearer(channel.clone(), "wrong")
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-local".into(), min_valid_for: None })
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Reload without the uid caller: the same connection is refused at once.
    let mut config = daemon.config.clone();
    config.callers.retain(|c| c.unix_uid.is_none());
    daemon.daemon().reload_handle().reload(&config).await.expect("reload");
    let err = tokens
        .get_access_token(pb::GetAccessTokenRequest { name: "mail-local".into(), min_valid_for: None })
        .await
        .expect_err("removed");
    assert_eq!(err.code(), Code::Unauthenticated);

    daemon.restart().await;
    daemon.stop().await;
    assert!(!path.exists(), "the socket file is removed at shutdown");
}
