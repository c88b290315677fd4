//! The one table from administration and engine errors to gRPC status codes.

use tonic::{Code, Status};

use crate::admin::AdminError;
use crate::engine::EngineError;
use crate::provider::ProviderError;
use crate::store::StoreError;

/// Maps an administration error to the status that tells the caller what to do.
pub fn to_status(error: impl Into<AdminError>) -> Status {
    match error.into() {
        AdminError::AlreadyExists(name) => Status::already_exists(AdminError::AlreadyExists(name).to_string()),
        e @ AdminError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
        AdminError::Engine(e) => engine_status(&e),
    }
}

/// The status of an engine error (by reference: the outcome of a refresh many callers waited on
/// is shared).
pub fn engine_status(error: &EngineError) -> Status {
    let code = match error {
        EngineError::NotFound(_) => Code::NotFound,
        EngineError::FailedPrecondition(_) => Code::FailedPrecondition,
        EngineError::Unavailable(_) => Code::Unavailable,
        EngineError::Provider(e) if e.is_permanent() => Code::FailedPrecondition,
        EngineError::Provider(ProviderError::Transient { .. } | ProviderError::BadReply { .. }) => Code::Unavailable,
        EngineError::Provider(_) => Code::FailedPrecondition,
        EngineError::Aborted(_) => Code::Aborted,
        // The shared database is unreachable (PostgreSQL): nothing was written; retry later.
        EngineError::Storage(StoreError::Unavailable(_)) => Code::Unavailable,
        EngineError::Storage(_) | EngineError::Sealed(_) | EngineError::SealFailed(_) => Code::Internal,
    };
    if code == Code::Internal {
        tracing::error!(error = %error, "internal error");
    }
    Status::new(code, error.to_string())
}
