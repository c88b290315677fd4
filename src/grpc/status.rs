//! The one table from core errors to gRPC status codes.

use tonic::{Code, Status};

use crate::core::CoreError;
use crate::provider::ProviderError;

/// Maps a core error to the status that tells the caller what to do.
pub fn to_status(error: CoreError) -> Status {
    status_for(&error)
}

/// [`to_status`] for a shared error (the outcome of a refresh many callers waited on).
pub fn status_for(error: &CoreError) -> Status {
    let code = match error {
        CoreError::NotFound(_) => Code::NotFound,
        CoreError::AlreadyExists(_) => Code::AlreadyExists,
        CoreError::InvalidArgument(_) => Code::InvalidArgument,
        CoreError::FailedPrecondition(_) => Code::FailedPrecondition,
        CoreError::Unavailable(_) => Code::Unavailable,
        CoreError::Provider(e) if e.is_permanent() => Code::FailedPrecondition,
        CoreError::Provider(ProviderError::Transient { .. } | ProviderError::BadReply { .. }) => Code::Unavailable,
        CoreError::Provider(_) => Code::FailedPrecondition,
        CoreError::Aborted(_) => Code::Aborted,
        CoreError::Storage(_) | CoreError::Sealed(_) => Code::Internal,
    };
    if code == Code::Internal {
        tracing::error!(error = %error, "internal error");
    }
    Status::new(code, error.to_string())
}
