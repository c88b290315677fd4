//! `tokenctl` against a daemon whose gRPC port speaks TLS: the server's CA from `--ca-file` (or
//! `TOKENCTL_CA_FILE`) or from the system roots, and a caller known by its client certificate
//! that needs no bearer token.

use std::path::{Path, PathBuf};

use tokend::api::pb::connected_apps_client::ConnectedAppsClient;
use tokend::config::{CallerConfig, Role};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::{output, stderr, stdout, tokenctl_at, tokenctl_bare};
use crate::support::*;

/// The DNS name in the client certificate of the consumer known by its certificate.
const CERT_CALLER: &str = "mail-worker.clients.example";

/// A daemon serving gRPC over TLS with a `localhost` certificate, client certificates from
/// `client_ca` accepted, and a consumer (`mail-*`) known by the name [`CERT_CALLER`].
struct TlsDaemon {
    daemon: TestDaemon,
    /// `https://localhost:<port>`, what an admin passes as `--addr`.
    addr: String,
    /// The PEM file of the CA that signed the daemon's certificate.
    ca_file: PathBuf,
    client_ca: Ca,
    /// Where the test writes certificates; dropped with the test.
    dir: tempfile::TempDir,
}

impl TlsDaemon {
    async fn start() -> TlsDaemon {
        let dir = tempfile::tempdir().unwrap();
        let (server_ca, client_ca) = (Ca::new("tokend test server CA"), Ca::new("tokend test client CA"));
        let ca_file = server_ca.write_pem(dir.path(), "server-ca.pem");
        let (cert, key) = server_ca.write_issued(dir.path(), "server", &["localhost"]);
        let clients_ca = client_ca.write_pem(dir.path(), "clients-ca.pem");
        let daemon = TestDaemon::start_with(
            move |c| {
                c.grpc.tls.cert_file = cert;
                c.grpc.tls.key_file = key;
                c.grpc.tls.client_ca_file = clients_ca;
                c.callers.push(CallerConfig {
                    name: "mail-by-cert".into(),
                    role: Role::Consumer,
                    token_sha256: String::new(),
                    cert_dns_name: CERT_CALLER.into(),
                    unix_uid: None,
                    profiles: vec!["mail-*".into()],
                });
            },
            None,
        )
        .await;
        let addr = format!("https://localhost:{}", daemon.daemon().grpc_addr.port());
        TlsDaemon { daemon, addr, ca_file, client_ca, dir }
    }

    /// The admin's gRPC client over TLS (the test's own, to set up profiles).
    async fn admin(&self) -> AppsClient {
        let ca = std::fs::read_to_string(&self.ca_file).unwrap();
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
        let endpoint = Endpoint::from_shared(format!("https://{}", self.daemon.daemon().grpc_addr)).unwrap();
        let channel = endpoint.tls_config(tls).unwrap().connect().await.expect("admin over TLS");
        ConnectedAppsClient::with_interceptor(channel, bearer(ADMIN))
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An admin reaches a TLS daemon with its bearer token: trusting the server's CA through the
/// system roots (here `SSL_CERT_FILE`, which the system store honours), through `--ca-file`,
/// or through `TOKENCTL_CA_FILE`; a server whose CA is trusted by none of them is refused with
/// one line and exit code 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaches_a_tls_daemon_with_ca_file_or_system_roots() {
    let provider = FakeProvider::start().await;
    let tls = TlsDaemon::start().await;
    create_and_connect(&mut tls.admin().await, "crm", &provider).await;

    // The system roots: no flag at all.
    let mut system = tokenctl_at(&tls.addr, ADMIN);
    system.env("SSL_CERT_FILE", &tls.ca_file).args(["token", "crm"]);
    let out = output(system).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(provider.issued_access_tokens(), vec![stdout(&out).trim_end().to_owned()]);

    // --ca-file, with system roots that do not hold the server's CA.
    let other = Ca::new("some other CA").write_pem(tls.dir.path(), "other-ca.pem");
    let mut flag = tokenctl_at(&tls.addr, ADMIN);
    flag.env("SSL_CERT_FILE", &other).args(["--ca-file", path(&tls.ca_file), "--output", "json", "list"]);
    let out = output(flag).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list[0]["name"], "crm");

    // TOKENCTL_CA_FILE.
    let mut env = tokenctl_at(&tls.addr, ADMIN);
    env.env("SSL_CERT_FILE", &other).env("TOKENCTL_CA_FILE", &tls.ca_file).args(["get", "crm"]);
    let out = output(env).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // A server nobody vouches for.
    let mut untrusted = tokenctl_at(&tls.addr, ADMIN);
    untrusted.env("SSL_CERT_FILE", &other).arg("list");
    let out = output(untrusted).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("tokenctl: connecting to https://localhost:"), "{err}");
    assert!(err.contains("certificate") && err.contains("--ca-file"), "{err}");
    tls.daemon.stop().await;
}

/// A consumer known by its client certificate's DNS name gets its tokens with `--cert-file` and
/// `--key-file` (or their TOKENCTL_* variables) and no bearer token: the admin token lying in
/// `--data-dir` is not sent, so a profile outside the consumer's patterns stays refused (exit 4).
/// A certificate without its key is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_caller_needs_no_bearer_token() {
    let provider = FakeProvider::start().await;
    let tls = TlsDaemon::start().await;
    let mut admin = tls.admin().await;
    create_and_connect(&mut admin, "mail-in", &provider).await;
    create_and_connect(&mut admin, "crm", &provider).await;
    let (cert, key) = tls.client_ca.write_issued(tls.dir.path(), "client", &[CERT_CALLER]);
    let data_dir = tls.dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("admin.token"), ADMIN).unwrap();

    let mut flags = tokenctl_bare(&tls.addr);
    flags.args(["--ca-file", path(&tls.ca_file), "--cert-file", path(&cert), "--key-file", path(&key)]);
    flags.args(["--data-dir", path(&data_dir), "token", "mail-in"]);
    let out = output(flags).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let token = stdout(&out).trim_end().to_owned();
    assert!(provider.issued_access_tokens().contains(&token), "{token:?} is an issued token");

    let mut env = tokenctl_bare(&tls.addr);
    env.env("TOKENCTL_CA_FILE", &tls.ca_file).env("TOKENCTL_CERT_FILE", &cert).env("TOKENCTL_KEY_FILE", &key);
    env.args(["--data-dir", path(&data_dir), "token", "crm"]);
    let out = output(env).await;
    assert_eq!(out.status.code(), Some(4), "outside the consumer's patterns: {}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("permission") || stderr(&out).contains("may not"), "{}", stderr(&out));

    let mut half = tokenctl_bare(&tls.addr);
    half.args(["--ca-file", path(&tls.ca_file), "--cert-file", path(&cert), "token", "mail-in"]);
    let out = output(half).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    tls.daemon.stop().await;
}
