//! The gRPC surface: one file per service, the request layer in front of them (metrics,
//! caller authentication, refusing peers that keep failing it), and the one table from core
//! errors to status codes. Health and reflection are open; everything under `tokend.v1` needs
//! an authenticated caller.

pub mod auth;
mod bound;
mod connected_apps;
mod convert;
pub mod layer;
mod maintenance;
mod router;
/// The failed-authentication limit, shared with the landing page (it lives in `access`).
pub use crate::access::peer_limit;
mod status;
pub mod tls;
mod tokens;
mod watch_wire;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tower_layer::Layer as _;

pub use connected_apps::ConnectedAppsService;
pub use maintenance::MaintenanceService;
pub use router::GrpcRoutes;
pub use status::{engine_status, to_status};
pub use tokens::TokensService;

use crate::admin::Admin;
use crate::api::pb;
use crate::config::GrpcConfig;
use crate::metrics::GrpcMetrics;
use auth::Callers;
use layer::RequestLayer;

/// The gRPC services could not be built (an embedded descriptor set does not decode: a build
/// defect, not an operator's mistake).
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// Server reflection refused a descriptor set.
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A descriptor set does not decode.
    #[error("descriptor set: {0}")]
    Descriptors(#[from] prost::DecodeError),
}

/// The gRPC routes and the health reporter that operators' probes read. Every service sits
/// behind the [`RequestLayer`], which counts requests into `metrics` and failed
/// authentications into `limiter` (the one the landing page counts its wrong tokens in too).
pub async fn routes(
    admin: Arc<Admin>,
    callers: &Callers,
    limiter: Arc<crate::access::PeerLimiter>,
    config: &GrpcConfig,
    metrics: &GrpcMetrics,
    shutdown: CancellationToken,
) -> Result<(GrpcRoutes, HealthReporter), RoutesError> {
    let max_message_bytes = config.max_message_bytes;
    let (reporter, health) = tonic_health::server::health_reporter();
    let apps = pb::connected_apps_server::ConnectedAppsServer::new(ConnectedAppsService::new(
        Arc::clone(&admin),
        callers.clone(),
        shutdown.clone(),
    ))
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(max_message_bytes);
    let maintenance = pb::maintenance_server::MaintenanceServer::new(MaintenanceService::new(Arc::clone(&admin)))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let tokens = watch_wire::TokensRoutes::new(
        TokensService::new(Arc::clone(admin.engine()), callers.clone(), shutdown),
        max_message_bytes,
    );
    reporter.set_serving::<pb::connected_apps_server::ConnectedAppsServer<ConnectedAppsService>>().await;
    reporter.set_serving::<pb::tokens_server::TokensServer<TokensService>>().await;
    reporter.set_serving::<pb::maintenance_server::MaintenanceServer<MaintenanceService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let authenticated = RequestLayer::new(
        callers.clone(),
        limiter,
        metrics,
        &[
            pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
    )?;
    let open = authenticated.open();
    let routes = GrpcRoutes::new(authenticated.layer(tokens))
        .with(boxed(&open, health))
        .with(boxed(&authenticated, apps))
        .with(boxed(&authenticated, maintenance))
        .with(boxed(&open, reflection_v1))
        .with(boxed(&open, reflection_v1alpha));
    Ok((routes, reporter))
}

/// `service` behind `layer`, its type erased, with its name.
fn boxed<S>(layer: &RequestLayer, service: S) -> (&'static str, layer::RequestService<router::Boxed>)
where
    S: tonic::server::NamedService
        + tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    (S::NAME, layer.named(S::NAME, router::Boxed::new(service)))
}
