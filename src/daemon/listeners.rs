//! The listeners: gRPC on TCP (plain on loopback, or TLS with our reloadable acceptor) and on an
//! optional Unix-domain socket, all serving the same routes, and HTTP; all under one shutdown
//! token. Every TCP connection is accepted through [`tcp_incoming`] (gRPC) or [`http_incoming`]
//! (HTTP), the one place that sets its socket options.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::StartError;
use crate::grpc::tls::{self, SharedTlsConfig};

/// A serving gRPC listener.
pub type ServeTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// Streams a connection may have open at once (watch streams included).
const MAX_CONCURRENT_STREAMS: u32 = 1024;

fn server() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        // One span per RPC, so every event of a call (refresh included) names the method.
        .trace_fn(|request| tracing::debug_span!("rpc", method = %request.uri().path()))
}

/// The connections accepted on the gRPC TCP listener, plain; TLS is layered on top of them.
/// Each has `TCP_NODELAY` set, as tonic's `Server::serve(addr)` sets it by default and
/// `serve_with_incoming*` does not (issue #18): without it Nagle's algorithm holds back the
/// second small write of a reply until the client's delayed ACK (about 40 ms on Linux), and a
/// caller making one call at a time waits that long. TCP keepalive is left off, as tonic's
/// default is: the configuration has no key for it, and HTTP/2 pings (`server()`) find dead
/// peers.
pub(crate) fn tcp_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The HTTP listener, as axum accepts from it; each connection has `TCP_NODELAY` set, for the
/// reason given at [`tcp_incoming`] (axum 0.8 sets no socket option itself).
pub(crate) fn http_incoming(listener: TcpListener) -> impl axum::serve::Listener<Io = TcpStream, Addr = SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|stream: &mut TcpStream| {
        // A connection without the option still works, only slower: log, as tonic does.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(error = %e, "setting TCP_NODELAY on an HTTP connection failed");
        }
    })
}

/// Serves `routes` on the TCP listener, through TLS when `tls` is set.
pub fn serve_tcp(
    routes: Routes,
    listener: TcpListener,
    tls: Option<SharedTlsConfig>,
    shutdown: CancellationToken,
) -> ServeTask {
    let signal = shutdown.clone();
    let stop = async move { signal.cancelled().await };
    let incoming = tcp_incoming(listener);
    match tls {
        Some(tls) => {
            let incoming = tls::incoming(incoming, tls, shutdown);
            tokio::spawn(server().add_routes(routes).serve_with_incoming_shutdown(incoming, stop))
        }
        None => tokio::spawn(server().add_routes(routes).serve_with_incoming_shutdown(incoming, stop)),
    }
}

/// Serves the HTTP `router` (callback, health, metrics) on `listener` until `shutdown` fires,
/// then lets open requests finish.
pub fn serve_http(
    router: axum::Router,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    let incoming = http_incoming(listener);
    tokio::spawn(async move {
        axum::serve(incoming, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    })
}

/// Binds the Unix socket (replacing a stale socket file) with the configured mode.
pub fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, StartError> {
    let fail =
        |what: &str, e: std::io::Error| StartError::Listen(format!("Unix socket {}: {what}: {e}", path.display()));
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        if !meta.file_type().is_socket() {
            return Err(StartError::Listen(format!("{} exists and is not a socket", path.display())));
        }
        std::fs::remove_file(path).map_err(|e| fail("removing the stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| fail("bind", e))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| fail("chmod", e))?;
    Ok(listener)
}

/// Serves `routes` on the Unix socket; the socket file is removed when serving ends.
pub fn serve_unix(routes: Routes, listener: UnixListener, path: PathBuf, shutdown: CancellationToken) -> ServeTask {
    tokio::spawn(async move {
        let result = server()
            .add_routes(routes)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move { shutdown.cancelled().await })
            .await;
        let _ = std::fs::remove_file(&path);
        result
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use axum::serve::Listener as _;
    use futures::StreamExt as _;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    use super::*;

    /// A listener on a free loopback port, and its address.
    async fn loopback() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        (listener, addr)
    }

    /// A server configuration for `localhost` with a fresh self-signed certificate, and a client
    /// configuration that trusts it.
    fn tls_pair() -> (rustls::ServerConfig, rustls::ClientConfig) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("server configuration");
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).expect("trust the certificate");
        let client = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        (server, client)
    }

    /// Plain gRPC: the server side of an accepted connection has `TCP_NODELAY` set (issue #18:
    /// without it, Nagle's algorithm meets the client's delayed ACK and a call waits ~40 ms).
    #[tokio::test]
    async fn grpc_tcp_connections_have_nodelay() {
        let (listener, addr) = loopback().await;
        let mut incoming = tcp_incoming(listener);
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), incoming.next());
        let _client = client.expect("connect");
        let server = accepted.expect("a connection").expect("accepted");
        assert!(server.nodelay().expect("read TCP_NODELAY"), "TCP_NODELAY is off on an accepted gRPC connection");
    }

    /// gRPC over TLS: the TCP socket under an accepted TLS connection has `TCP_NODELAY` set.
    #[tokio::test]
    async fn grpc_tls_connections_have_nodelay() {
        let (listener, addr) = loopback().await;
        let (server_config, client_config) = tls_pair();
        let shutdown = CancellationToken::new();
        let mut incoming =
            tls::incoming(tcp_incoming(listener), Arc::new(ArcSwap::from_pointee(server_config)), shutdown.clone());
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let client = async {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").expect("server name");
            connector.connect(name, tcp).await
        };
        let (client, accepted) = tokio::join!(client, incoming.next());
        let _client = client.expect("TLS connect");
        let server = accepted.expect("a connection").expect("handshake");
        let (tcp, _) = server.get_ref();
        assert!(tcp.nodelay().expect("read TCP_NODELAY"), "TCP_NODELAY is off on an accepted TLS connection");
        shutdown.cancel();
    }

    /// HTTP: the server side of a connection axum accepts has `TCP_NODELAY` set.
    #[tokio::test]
    async fn http_connections_have_nodelay() {
        let (listener, addr) = loopback().await;
        let mut incoming = http_incoming(listener);
        let (client, (server, _peer)) = tokio::join!(TcpStream::connect(addr), incoming.accept());
        let _client = client.expect("connect");
        assert!(server.nodelay().expect("read TCP_NODELAY"), "TCP_NODELAY is off on an accepted HTTP connection");
    }
}
