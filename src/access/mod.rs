//! Who may do what, and the record of what they did: the configured callers and their roles
//! ([`callers`]), the audit trail ([`audit`]), and the failed-authentication limit
//! ([`peer_limit`]). Every surface (the gRPC services and the landing page) asks the same
//! questions here, so a permission rule lives in one place, and one limiter counts a peer's
//! wrong tokens on both.

pub mod audit;
pub mod callers;
pub mod peer_limit;
pub mod watch;

pub use callers::{Caller, Callers, Credential, Denied, Role, TokenRefused, hash_token};
pub use peer_limit::{FailureOutcome, PeerKey, PeerLimiter};
pub use watch::{CallerGone, CallerWatch};
