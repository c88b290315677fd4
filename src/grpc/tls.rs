//! TLS for the gRPC listener with an acceptor of our own: tonic's built-in TLS configuration is
//! fixed at start, and certificates must reload on SIGHUP without dropping connections. Each
//! handshake reads the current `ServerConfig`; connections already open keep theirs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::{Stream, StreamExt as _};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The current TLS configuration, swapped on reload.
pub type SharedTlsConfig = Arc<ArcSwap<ServerConfig>>;

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// Builds the server configuration from the PEM files: the certificate chain, its key, and the
/// client CA when client certificates are to be accepted (optional per connection: callers
/// without a certificate still authenticate with a bearer token).
pub fn load(tls: &TlsConfig) -> Result<ServerConfig, String> {
    let mut config = build(tls, "grpc.tls")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The HTTP listener's server configuration (`http.tls`): the certificate chain and its key;
/// HTTP/1.1 only, as the listener serves.
pub fn load_http(tls: &TlsConfig) -> Result<ServerConfig, String> {
    let mut config = build(tls, "http.tls")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A server configuration from the PEM files of the section `key` (`grpc.tls`, `http.tls`).
fn build(tls: &TlsConfig, key: &str) -> Result<ServerConfig, String> {
    let chain = read_certs(&tls.cert_file, &format!("{key}.cert_file"))?;
    let key_file = &tls.key_file;
    let private =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{key}.key_file {}: {e}", key_file.display()))?;
    let builder = ServerConfig::builder();
    let builder = if tls.client_ca_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&tls.client_ca_file, &format!("{key}.client_ca_file"))? {
            roots.add(cert).map_err(|e| format!("{key}.client_ca_file: {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("{key}.client_ca_file: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    };
    builder.with_single_cert(chain, private).map_err(|e| format!("{key}: certificate and key do not match: {e}"))
}

/// Completes the handshakes of the TCP connections `connections` yields (the listener's accept
/// step, which sets their socket options) off the accept loop, so a slow client does not hold
/// up others, yielding TLS streams for tonic to serve.
pub fn incoming<S>(
    mut connections: S,
    tls: SharedTlsConfig,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>
where
    S: Stream<Item = std::io::Result<TcpStream>> + Send + Unpin + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = connections.next() => match accepted {
                    Some(Ok(stream)) => stream,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    None => return,
                },
            };
            let peer = stream.peer_addr().ok();
            let acceptor = TlsAcceptor::from(tls.load_full());
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
