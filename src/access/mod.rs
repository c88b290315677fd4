//! Who may do what, and the record of what they did: the configured callers and their roles
//! ([`callers`]), and the audit trail ([`audit`]). Every surface (the gRPC services today, the
//! landing page next) asks the same questions here, so a permission rule lives in one place.

pub mod audit;
pub mod callers;
pub mod watch;

pub use callers::{Caller, Callers, Credential, Denied, Role, TokenRefused, hash_token};
pub use watch::{CallerGone, CallerWatch};
