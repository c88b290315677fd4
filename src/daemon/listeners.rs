//! The listeners: gRPC on TCP (plain on loopback, or TLS with our reloadable acceptor) and on an
//! optional Unix-domain socket, all serving the same routes, and HTTP; all under one shutdown
//! token. Every TCP connection is accepted through [`tcp_incoming`] (gRPC) or [`http_incoming`]
//! (HTTP), the one place that sets its socket options.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::StartError;
use crate::grpc::GrpcRoutes;
use crate::grpc::tls::{self, SharedTlsConfig};

/// A serving gRPC listener.
pub type ServeTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// Streams a connection may have open at once (watch streams included).
const MAX_CONCURRENT_STREAMS: u32 = 1024;

fn server() -> Server {
    Server::builder()
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        // One span per RPC, so every event of a call (refresh included) names the method.
        .trace_fn(|request| tracing::debug_span!("rpc", method = %request.uri().path()))
}

/// The connections accepted on the gRPC TCP listener, plain; TLS is layered on top of them.
/// Each has `TCP_NODELAY` set, as tonic's `Server::serve(addr)` sets it by default and
/// `serve_with_incoming*` does not (issue #18): without it Nagle's algorithm holds back the
/// second small write of a reply until the client's delayed ACK (about 40 ms on Linux), and a
/// caller making one call at a time waits that long.
///
/// Dead peers (a worker's host gone without closing its connection, leaving watch streams
/// open) are found by TCP keepalive: probes after [`KEEPALIVE_IDLE`] of silence, every
/// [`KEEPALIVE_INTERVAL`], the connection dropped after [`KEEPALIVE_PROBES`] unanswered, about
/// a minute in all. The kernel sends them, so a busy connection pays nothing; HTTP/2 pings,
/// which tokend used before (#17), cost a lock and a clock read on every frame received. A
/// dead peer on the Unix socket is always noticed (its end closes with its process).
pub(crate) fn tcp_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE_IDLE))
        .with_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .with_keepalive_retries(Some(KEEPALIVE_PROBES))
}

/// Silence on a gRPC TCP connection before the first keepalive probe.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between unanswered keepalive probes.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the connection is dropped.
pub(crate) const KEEPALIVE_PROBES: u32 = 3;

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
    routes: GrpcRoutes,
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
            tokio::spawn(server().serve_with_incoming_shutdown(routes, incoming, stop))
        }
        None => tokio::spawn(server().serve_with_incoming_shutdown(routes, incoming, stop)),
    }
}

/// Serves the HTTP `router` (landing page, callback, health, metrics) on `listener`, through
/// TLS when `tls` is set (reloadable: each handshake reads the current certificate), until
/// `shutdown` fires,
/// then lets open requests finish. HTTP/1.1 only (browsers and Prometheus speak it on a plain
/// port; HTTP/2 there would be prior-knowledge h2c, which no client of this listener uses), so
/// `http.header_read_timeout_secs` covers every connection from its first byte: a client that
/// trickles its headers, or keeps a connection idle between requests, is cut off. At most
/// `http.max_connections` are served at once: the next one is accepted only when one closes,
/// and until then waits in the kernel's accept queue (bounded by the listen backlog).
pub fn serve_http(
    router: axum::Router,
    listener: TcpListener,
    config: &crate::config::HttpConfig,
    tls: Option<SharedTlsConfig>,
    shutdown: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    use axum::serve::Listener as _;
    let mut incoming = http_incoming(listener);
    let header_timeout = Duration::from_secs(config.header_read_timeout_secs);
    let max = config.max_connections;
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(max));
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&slots).acquire_owned() => permit,
                () = shutdown.cancelled() => break,
            };
            // The semaphore is never closed; treat a closed one as the end of serving.
            let Ok(permit) = permit else { break };
            let (stream, peer) = tokio::select! {
                accepted = incoming.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let connection =
                HttpConnection { router: router.clone(), peer, header_timeout, shutdown: shutdown.clone() };
            tokio::spawn(connection.serve(stream, tls.clone(), permit));
        }
        // Every connection holds a slot: having them all back means every connection ended.
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        let _ = slots.acquire_many(all).await;
        Ok(())
    })
}

/// One accepted HTTP connection and what serving it needs.
struct HttpConnection {
    router: axum::Router,
    /// The peer, attached to every request ([`crate::web::PeerAddr`]) for the failed-sign-in
    /// limit.
    peer: SocketAddr,
    header_timeout: Duration,
    shutdown: CancellationToken,
}

impl HttpConnection {
    /// Serves the connection, after a TLS handshake (within the header timeout) when `tls` is
    /// set. `_slot` is given back when the connection ends.
    async fn serve(self, stream: TcpStream, tls: Option<SharedTlsConfig>, _slot: OwnedSemaphorePermit) {
        let Some(tls) = tls else { return self.serve_io(stream).await };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
        match tokio::time::timeout(self.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.serve_io(stream).await,
            Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "HTTP TLS handshake failed"),
            Err(_) => tracing::debug!(peer = %self.peer, "HTTP TLS handshake timed out"),
        }
    }

    /// One HTTP/1.1 connection, with the header timeout; on shutdown it finishes the request
    /// in progress and closes.
    async fn serve_io<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = crate::web::PeerAddr(self.peer);
        let service = TowerToHyperService::new(self.router);
        let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer);
            hyper::service::Service::call(&service, request)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(self.header_timeout);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = self.shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            // A timed-out or broken client: nothing the daemon needs to act on.
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    }
}

/// Binds the Unix socket (replacing a stale socket file) with the configured mode, which it
/// has from the instant it appears at `path`: binding creates the file with the umask's mode,
/// and a chmod after it would leave a window in which others may connect. The umask is
/// process-wide (other threads create files meanwhile), so instead the socket is bound in a
/// fresh directory beside `path` that only this user can enter (mode 0700), given its mode
/// there, and renamed into place (atomic within the directory; it also replaces a stale socket).
pub fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, StartError> {
    let fail =
        |what: &str, e: std::io::Error| StartError::Listen(format!("Unix socket {}: {what}: {e}", path.display()));
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        if !meta.file_type().is_socket() {
            return Err(StartError::Listen(format!("{} exists and is not a socket", path.display())));
        }
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // A random name, created anew (never an existing directory someone else may have made).
    let private = parent.join(format!(".tokend-{}", &crate::crypto::random_token()[..12]));
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().mode(0o700).create(&private).map_err(|e| fail("creating a private directory", e))?;
    }
    let bound = bind_privately(&private.join("s"), path, mode).map_err(|(what, e)| fail(what, e));
    if let Err(e) = std::fs::remove_dir_all(&private) {
        tracing::warn!(dir = %private.display(), error = %e, "removing the socket's private directory failed");
    }
    bound
}

/// Binds at `inside` (in a directory only we can enter), sets `mode`, and renames to `path`.
fn bind_privately(inside: &Path, path: &Path, mode: u32) -> Result<UnixListener, (&'static str, std::io::Error)> {
    use std::os::unix::fs::PermissionsExt as _;
    let listener = UnixListener::bind(inside).map_err(|e| ("bind", e))?;
    std::fs::set_permissions(inside, std::fs::Permissions::from_mode(mode)).map_err(|e| ("chmod", e))?;
    std::fs::rename(inside, path).map_err(|e| ("moving into place", e))?;
    Ok(listener)
}

/// Serves `routes` on the Unix socket; the socket file is removed when serving ends.
pub fn serve_unix(routes: GrpcRoutes, listener: UnixListener, path: PathBuf, shutdown: CancellationToken) -> ServeTask {
    tokio::spawn(async move {
        let result = server()
            .serve_with_incoming_shutdown(routes, UnixListenerStream::new(listener), async move {
                shutdown.cancelled().await
            })
            .await;
        let _ = std::fs::remove_file(&path);
        result
    })
}

#[cfg(test)]
mod tests {
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
    async fn grpc_tcp_connections_have_nodelay_and_keepalive() {
        let (listener, addr) = loopback().await;
        let mut incoming = tcp_incoming(listener);
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), incoming.next());
        let _client = client.expect("connect");
        let server = accepted.expect("a connection").expect("accepted");
        assert!(server.nodelay().expect("read TCP_NODELAY"), "TCP_NODELAY is off on an accepted gRPC connection");
        assert_keepalive(&server);
    }

    /// Dead peers are found by TCP keepalive with tokend's timings (HTTP/2 pings are off).
    fn assert_keepalive(stream: &TcpStream) {
        let socket = socket2::SockRef::from(stream);
        assert!(socket.keepalive().expect("read SO_KEEPALIVE"), "SO_KEEPALIVE is off on an accepted gRPC connection");
        assert_eq!(socket.tcp_keepalive_time().expect("read TCP_KEEPIDLE"), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().expect("read TCP_KEEPINTVL"), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().expect("read TCP_KEEPCNT"), KEEPALIVE_PROBES);
    }

    /// gRPC over TLS: the TCP socket under an accepted TLS connection has `TCP_NODELAY` set.
    #[tokio::test]
    async fn grpc_tls_connections_have_nodelay_and_keepalive() {
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
        assert_keepalive(tcp);
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

    /// #14 item 9: the socket file has its configured mode the instant it appears at its path
    /// (no window between bind and chmod in which the umask's mode lets others connect). A
    /// watcher polls the path while the socket is bound again and again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unix_socket_has_its_mode_from_the_start() {
        use std::os::unix::fs::PermissionsExt as _;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokend.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (path, stop) = (path.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(meta) = std::fs::symlink_metadata(&path) {
                        seen.insert(format!("{:o}", meta.permissions().mode() & 0o777));
                    }
                }
                seen
            })
        };
        for _ in 0..2000 {
            let listener = bind_unix(&path, 0o600).expect("bind");
            drop(listener);
        }
        stop.store(true, Ordering::Relaxed);
        let seen = watcher.join().expect("watcher");
        assert_eq!(seen, ["600".to_owned()].into_iter().collect(), "modes the socket file was seen with");
    }
}
