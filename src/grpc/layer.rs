//! The request layer in front of every gRPC service, working on the HTTP request itself (no
//! conversion to a `tonic::Request` and back, which tonic's interceptor does on every call):
//!
//! - counts every request by method and status code, and times unary calls
//!   ([`crate::metrics::GrpcMetrics`]); the code comes from the `grpc-status` header of a
//!   trailers-only reply (how tonic answers most errors) or from the trailers of the body;
//! - for `tokend.v1` services, refuses peers blocked for failing to authenticate
//!   ([`PeerLimiter`]), identifies the caller ([`Callers::identify`]) and attaches it for
//!   [`super::auth::caller`], counting failures per peer. Health and reflection stay open.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::Message as _;
use tonic::body::Body;
use tonic::codegen::{Bytes, Service};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tower_layer::Layer;

use super::auth::{Authenticated, Callers, identify, peer_uid, remote_addr};
use crate::access::{FailureOutcome, PeerKey, PeerLimiter};
use crate::metrics::{GrpcMetrics, MethodMetrics, UNKNOWN_METHOD};

/// What every wrapped service shares.
#[derive(Debug)]
struct Shared {
    callers: Callers,
    /// Shared with the landing page: a wrong token counts against the peer on either surface.
    limiter: Arc<PeerLimiter>,
    /// Every method of every service served, by path (`/package.Service/Method`).
    methods: Vec<(Box<str>, MethodMetrics)>,
    /// Requests for paths that name no method.
    unknown: MethodMetrics,
}

/// Builds a [`RequestService`] around a service; see the module documentation.
#[derive(Debug, Clone)]
pub struct RequestLayer {
    shared: Arc<Shared>,
    authenticate: bool,
}

impl RequestLayer {
    /// A layer that authenticates callers (for `tokend.v1` services). `descriptor_sets` are
    /// the encoded file descriptor sets of every service served: their methods are resolved
    /// to metric handles here, once.
    pub fn new(
        callers: Callers,
        limiter: Arc<PeerLimiter>,
        metrics: &GrpcMetrics,
        descriptor_sets: &[&[u8]],
    ) -> Result<Self, prost::DecodeError> {
        let mut methods = Vec::new();
        for set in descriptor_sets {
            for file in prost_types::FileDescriptorSet::decode(*set)?.file {
                for service in &file.service {
                    for method in &service.method {
                        let label = format!("{}.{}/{}", file.package(), service.name(), method.name());
                        let unary = !method.client_streaming() && !method.server_streaming();
                        methods.push((format!("/{label}").into_boxed_str(), metrics.method(&label, unary)));
                    }
                }
            }
        }
        let shared = Shared { callers, limiter, methods, unknown: metrics.method(UNKNOWN_METHOD, false) };
        Ok(Self { shared: Arc::new(shared), authenticate: true })
    }

    /// The same layer for open services (health, reflection): counted, not authenticated.
    pub fn open(&self) -> Self {
        Self { shared: Arc::clone(&self.shared), authenticate: false }
    }

    /// `inner`, the service named `name` (its methods' paths begin `/name/`), behind this layer.
    pub fn named<S>(&self, name: &str, inner: S) -> RequestService<S> {
        let prefix = format!("/{name}/");
        let methods: Arc<[(Box<str>, MethodMetrics)]> =
            self.shared.methods.iter().filter(|(path, _)| path.starts_with(&prefix)).cloned().collect();
        RequestService { inner, shared: Arc::clone(&self.shared), methods, authenticate: self.authenticate }
    }
}

impl<S: NamedService> Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> RequestService<S> {
        self.named(S::NAME, inner)
    }
}

/// A service behind the request layer.
#[derive(Debug, Clone)]
pub struct RequestService<S> {
    inner: S,
    shared: Arc<Shared>,
    /// This service's methods: a handful, so a scan beats hashing the path.
    methods: Arc<[(Box<str>, MethodMetrics)]>,
    authenticate: bool,
}

impl<S: NamedService> NamedService for RequestService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> RequestService<S> {
    fn method(&self, path: &str) -> &MethodMetrics {
        self.methods.iter().find(|(p, _)| **p == *path).map_or(&self.shared.unknown, |(_, m)| m)
    }

    /// Refuses blocked peers, then identifies the caller; counts a failure against the peer.
    fn authenticate(&self, request: &mut http::Request<Body>) -> Result<(), Status> {
        let limiter = &self.shared.limiter;
        if !limiter.is_idle()
            && let Some(left) =
                peer_key(request.extensions()).and_then(|peer| limiter.blocked_for(peer, Instant::now()))
        {
            return Err(Status::resource_exhausted(format!(
                "too many failed authentication attempts from this address; retry in {} s",
                left.as_secs().max(1)
            )));
        }
        match identify(&self.shared.callers, request.headers(), request.extensions()) {
            Ok((caller, credential)) => {
                request.extensions_mut().insert(Authenticated { caller, credential });
                Ok(())
            }
            Err(status) => {
                if let Some(key) = peer_key(request.extensions()) {
                    match limiter.failed(key, Instant::now()) {
                        FailureOutcome::Blocked(block) => tracing::warn!(
                            peer = ?remote_addr(request.extensions()),
                            uid = peer_uid(request.extensions()),
                            block_secs = block.as_secs(),
                            "too many failed authentication attempts; refusing the peer for a while"
                        ),
                        FailureOutcome::Untracked => {
                            tracing::debug!("failed-authentication table full; this peer is not counted")
                        }
                        FailureOutcome::Counted | FailureOutcome::Off => {}
                    }
                }
                Err(status)
            }
        }
    }
}

impl<S> Service<http::Request<Body>> for RequestService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = http::Response<CountedBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let method = self.method(request.uri().path()).clone();
        let count = Some(Count { method, started });
        if self.authenticate
            && let Err(status) = self.authenticate(&mut request)
        {
            return ResponseFuture { inner: None, refused: Some(status), count };
        }
        ResponseFuture { inner: Some(self.inner.call(request)), refused: None, count }
    }
}

/// Who the limiter counts a request's failures against: its IP address, or its uid on the Unix
/// socket.
fn peer_key(extensions: &http::Extensions) -> Option<PeerKey> {
    remote_addr(extensions).map(|addr| PeerKey::of_ip(addr.ip())).or_else(|| peer_uid(extensions).map(PeerKey::Uid))
}

/// A call in progress, to be counted once its status code is known.
#[derive(Debug)]
struct Count {
    method: MethodMetrics,
    started: Instant,
}

impl Count {
    fn finish(self, code: Code) {
        self.method.record(code, self.started.elapsed());
    }
}

/// The status code in a `grpc-status` header or trailer, if there is one.
fn grpc_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get(Status::GRPC_STATUS)?;
    let code = std::str::from_utf8(value.as_bytes()).ok()?.parse::<i32>().ok()?;
    Some(Code::from_i32(code))
}

/// The response of a [`RequestService`]: the inner service's, or a refusal.
#[derive(Debug)]
pub struct ResponseFuture<F> {
    inner: Option<F>,
    refused: Option<Status>,
    count: Option<Count>,
}

impl<F> ResponseFuture<F> {
    /// The answer to a call of no service here: `status`, counted under no method.
    pub fn refused(status: Status) -> Self {
        Self { inner: None, refused: Some(status), count: None }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<http::Response<CountedBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let response = match (&mut this.inner, this.refused.take()) {
            (_, Some(status)) => status.into_http::<Body>(),
            (Some(inner), None) => match Pin::new(inner).poll(cx) {
                Poll::Ready(Ok(response)) => response,
                Poll::Pending => return Poll::Pending,
            },
            (None, None) => http::Response::new(Body::empty()),
        };
        let mut count = this.count.take();
        // A trailers-only reply carries its code in the headers; others, in the trailers.
        if let Some(code) = grpc_code(response.headers())
            && let Some(done) = count.take()
        {
            done.finish(code);
        }
        Poll::Ready(Ok(response.map(|inner| CountedBody { inner, count })))
    }
}

/// A response body that counts its call when the trailers go by (or as cancelled, if the body
/// is dropped first: the client went away).
#[derive(Debug)]
pub struct CountedBody {
    inner: Body,
    count: Option<Count>,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(ready) = &frame
            && let Some(count) = this.count.take()
        {
            match ready {
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => count.finish(grpc_code(trailers).unwrap_or(Code::Unknown)),
                    None => this.count = Some(count),
                },
                Some(Err(_)) => count.finish(Code::Internal),
                None => count.finish(Code::Unknown),
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        if let Some(count) = self.count.take() {
            count.finish(Code::Cancelled);
        }
    }
}

impl<F> Drop for ResponseFuture<F> {
    fn drop(&mut self) {
        // Dropped before its reply: the client cancelled (or its deadline passed).
        if let Some(count) = self.count.take() {
            count.finish(Code::Cancelled);
        }
    }
}
