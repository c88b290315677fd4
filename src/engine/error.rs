//! The engine's error: one variant per thing a caller does differently. `grpc::status` maps each
//! to a gRPC code in one table.

use crate::provider::ProviderError;
use crate::store::StoreError;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such profile.
    #[error("profile {0:?} not found")]
    NotFound(String),
    /// The profile is not in a state that allows this (not connected, needs reauthorization,
    /// wrong grant, unknown consent state). The message says what an admin must do.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The provider is unavailable and no valid token is at hand; retry.
    #[error("{0}")]
    Unavailable(String),
    /// The provider refused the request (consent refused, bad client credentials).
    #[error("{0}")]
    Provider(ProviderError),
    /// A concurrent change won; retry.
    #[error("profile {0:?} changed concurrently; retry")]
    Aborted(String),
    /// The store failed.
    #[error("storage: {0}")]
    Storage(StoreError),
    /// A sealed secret did not open (wrong key).
    #[error("a stored secret of profile {0:?} does not open with the configured key")]
    Sealed(String),
    /// A secret of the profile could not be sealed, so nothing was written.
    #[error("sealing a secret of profile {0:?} failed; nothing was written")]
    SealFailed(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(name) => Self::NotFound(name),
            StoreError::Conflict { name, .. } => Self::Aborted(name),
            // The shared database is down: nothing was written; the caller retries later.
            StoreError::Unavailable(why) => Self::Unavailable(format!("database unavailable ({why}); retry")),
            other => Self::Storage(other),
        }
    }
}
