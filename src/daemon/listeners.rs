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
pub(crate) fn tcp_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
}

/// The HTTP listener, as axum accepts from it.
pub(crate) fn http_incoming(listener: TcpListener) -> impl axum::serve::Listener<Io = TcpStream, Addr = SocketAddr> {
    listener
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
