//! Who is calling a gRPC method: the caller table lives in [`crate::access`]; here it is read
//! from what tonic gives a request (the `authorization` header, the TLS client certificate, the
//! Unix socket peer's uid). The request layer ([`super::layer`]) calls [`identify`] before the
//! body is decoded and attaches the [`Caller`] that handlers read with [`caller`].

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Extensions, HeaderMap};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::{Request, Status};

pub use crate::access::{Caller, CallerGone, CallerWatch, Callers, Credential, Denied, Role, TokenRefused, hash_token};

impl From<Denied> for Status {
    fn from(denied: Denied) -> Self {
        Status::permission_denied(denied.0)
    }
}

impl From<TokenRefused> for Status {
    fn from(refused: TokenRefused) -> Self {
        match refused {
            e @ TokenRefused::InvalidName(_) => Status::invalid_argument(e.to_string()),
            TokenRefused::Denied(denied) => denied.into(),
        }
    }
}

/// Who is calling, from the request's `authorization` header and its connection (the
/// extensions tonic's server attaches): a bearer token if one is presented (a wrong one is
/// refused even on a trusted socket), else the TLS client certificate, else the Unix socket
/// peer's uid. Returns the caller and the credential it proved itself with (what a stream
/// looks it up by again after a reload). Failures are logged with the peer; the caller counts
/// them per peer.
pub fn identify(
    callers: &Callers,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Result<(Arc<Caller>, Credential), Status> {
    if let Some(header) = headers.get(http::header::AUTHORIZATION) {
        let value = header.to_str().map_err(|_| Status::unauthenticated("malformed authorization metadata"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization metadata must be `Bearer <token>`"))?;
        // A token accepted before is found by a keyed SipHash; a new one is proven by its SHA-256.
        return callers.identify_token(token.trim()).ok_or_else(|| {
            tracing::warn!(peer = ?remote_addr(extensions), "rejected an unknown bearer token");
            Status::unauthenticated("unknown bearer token")
        });
    }
    if let Some(certs) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.peer_certs()) {
        return callers.by_certificate(&certs).ok_or_else(|| {
            tracing::warn!(peer = ?remote_addr(extensions), "rejected a client certificate naming no caller");
            Status::unauthenticated("the client certificate names no configured caller")
        });
    }
    if let Some(uid) = peer_uid(extensions)
        && let Some(caller) = callers.by_uid(uid)
    {
        return Ok((caller, Credential::Uid(uid)));
    }
    Err(Status::unauthenticated("missing `authorization: Bearer <token>` metadata"))
}

/// The TCP peer of a request (plain or TLS), if it came over TCP.
pub fn remote_addr(extensions: &Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.get_ref().remote_addr()))
}

/// The uid of the process on the other end of the Unix socket, if the request came over it.
pub fn peer_uid(extensions: &Extensions) -> Option<u32> {
    extensions.get::<UdsConnectInfo>().and_then(|info| info.peer_cred).map(|cred| cred.uid())
}

/// What the request layer attaches to an authenticated request: the caller and the credential
/// it proved itself with, as one extension (one allocation per call, not two).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who is calling.
    pub caller: Arc<Caller>,
    /// How it proved it (what a stream looks the caller up by after a reload).
    pub credential: Credential,
}

fn authenticated<T>(request: &Request<T>) -> Result<&Authenticated, Status> {
    request.extensions().get::<Authenticated>().ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// The caller the request layer attached.
pub fn caller<T>(request: &Request<T>) -> Result<Arc<Caller>, Status> {
    authenticated(request).map(|found| Arc::clone(&found.caller))
}

/// Follows the request's caller across reloads, for a stream that outlives the request: by the
/// credential the request layer attached. A caller removed since the request was authenticated
/// is refused here already.
pub fn caller_watch<T>(callers: &Callers, request: &Request<T>) -> Result<CallerWatch, Status> {
    let found = authenticated(request)?;
    CallerWatch::new(callers, found.credential.clone(), &found.caller.name).map_err(|gone| removed(&gone))
}

/// The status that ends a stream whose caller a reload removed.
pub fn removed(gone: &CallerGone) -> Status {
    Status::unauthenticated(format!("{gone} by a reload; this stream ends"))
}

/// The status that ends a stream whose caller a reload changed so that it may no longer have
/// what the stream sends.
pub fn changed(caller: &Caller, refusal: Status) -> Status {
    Status::new(
        refusal.code(),
        format!("caller {:?} changed in a configuration reload: {}; this stream ends", caller.name, refusal.message()),
    )
}
