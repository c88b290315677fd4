//! The gRPC router: a request goes to the service its path names (`/package.Service/Method`),
//! through the request layer. tonic's own `Routes` does the same through an axum router, which
//! wraps every response body in two more boxes and two error conversions; a watch stream's
//! every reply and every hand-out went through them (#17).

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tower::util::BoxCloneSyncService;

use super::layer::{CountedBody, RequestService, ResponseFuture};
use super::watch_wire::TokensRoutes;

/// A service called rarely (health, reflection, administration), its type erased.
pub type Boxed = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// Every gRPC service of the daemon, behind the request layer.
#[derive(Clone)]
pub struct GrpcRoutes {
    /// `tokend.v1.Tokens`, the one the workers call all the time: no type erasure.
    tokens: RequestService<TokensRoutes>,
    /// The others, by service name.
    others: Vec<(&'static str, RequestService<Boxed>)>,
}

impl std::fmt::Debug for GrpcRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.others.iter().map(|(name, _)| *name).collect();
        f.debug_struct("GrpcRoutes").field("others", &names).finish_non_exhaustive()
    }
}

impl GrpcRoutes {
    /// Routes to `tokens`, and to nothing else yet.
    pub fn new(tokens: RequestService<TokensRoutes>) -> Self {
        Self { tokens, others: Vec::new() }
    }

    /// Adds a service and its name.
    pub fn with(mut self, (name, service): (&'static str, RequestService<Boxed>)) -> Self {
        self.others.push((name, service));
        self
    }
}

/// The service name in a gRPC request path, `/package.Service/Method`.
fn service_name(path: &str) -> Option<&str> {
    path.strip_prefix('/')?.split_once('/').map(|(service, _)| service)
}

impl Service<http::Request<Body>> for GrpcRoutes {
    type Response = http::Response<CountedBody>;
    type Error = Infallible;
    type Future = ResponseFuture<BoxFuture<http::Response<Body>, Infallible>>;

    /// Always ready: every service here is (tonic's generated servers do not apply back-pressure).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(name) = service_name(request.uri().path()) else {
            return ResponseFuture::refused(Status::unimplemented("not a gRPC method path"));
        };
        if name == <TokensRoutes as tonic::server::NamedService>::NAME {
            return self.tokens.call(request);
        }
        match self.others.iter_mut().find(|(service, _)| *service == name) {
            Some((_, service)) => service.call(request),
            None => ResponseFuture::refused(Status::unimplemented(format!("no service {name:?} here"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        assert_eq!(service_name("/tokend.v1.Tokens/GetAccessToken"), Some("tokend.v1.Tokens"));
        assert_eq!(service_name("/grpc.health.v1.Health/Check"), Some("grpc.health.v1.Health"));
        assert_eq!(service_name("/no-method"), None);
        assert_eq!(service_name("relative/Method"), None);
    }
}
