//! Administration's error: what the engine reports, plus the two things only administration
//! runs into (a name taken, a bad field). `grpc::status` maps every variant in one table.

use crate::engine::EngineError;
use crate::profile::FieldError;
use crate::store::StoreError;

/// Why an administrative operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The name is taken.
    #[error("profile {0:?} already exists")]
    AlreadyExists(String),
    /// Bad input, naming the field.
    #[error("invalid {0}")]
    InvalidArgument(#[from] FieldError),
    /// What the engine (or the store under it) reported.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl AdminError {
    /// The profile is not in a state that allows the operation; `message` says what to do.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::Engine(EngineError::FailedPrecondition(message.into()))
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists(name) => Self::AlreadyExists(name),
            other => Self::Engine(other.into()),
        }
    }
}
