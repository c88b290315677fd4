//! What can go wrong talking to a provider, sorted by what the caller should do about it.

use std::time::Duration;

use oauth2::RequestTokenError;
use oauth2::basic::BasicErrorResponse;

use super::http::{HttpError, ReplyMeta};

/// A provider call's failure. The engine retries `Transient` and `BadReply`, and stops on the
/// others until an admin acts.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider rejected the grant (`invalid_grant`): the refresh token or code is dead.
    #[error("the provider rejected the grant (invalid_grant){}", describe(.description))]
    InvalidGrant {
        /// The provider's `error_description`, sanitised.
        description: Option<String>,
    },
    /// The provider rejected the client credentials (`invalid_client`, `unauthorized_client`).
    #[error("the provider rejected the client ({error}){}", describe(.description))]
    InvalidClient {
        /// The OAuth error code.
        error: String,
        /// The provider's `error_description`, sanitised.
        description: Option<String>,
    },
    /// Another OAuth error that retrying will not heal (`invalid_scope`, `access_denied`, …).
    #[error("the provider refused the request ({error}){}", describe(.description))]
    Rejected {
        /// The OAuth error code.
        error: String,
        /// The provider's `error_description`, sanitised.
        description: Option<String>,
    },
    /// A failure that may heal: no connection, timeout, 5xx, 429, `temporarily_unavailable`.
    #[error("provider temporarily unavailable: {reason}")]
    Transient {
        /// What happened, for people.
        reason: String,
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
        /// Whether the provider may have processed the request (and rotated the refresh token)
        /// without us reading its answer: timeouts and connections cut mid-reply.
        maybe_sent: bool,
    },
    /// A reply that could not be used (not JSON, no access token, HTML error page, …).
    #[error("unusable provider reply (HTTP {status}): {reason}")]
    BadReply {
        /// HTTP status of the reply.
        status: u16,
        /// What was wrong, never echoing the body.
        reason: String,
    },
    /// The provider's host is, or resolves to, an address in `provider.deny_networks`; nothing
    /// was sent. Not permanent: the held tokens are kept (DNS may be fixed), and the engine
    /// retries with backoff while the profile shows the reason.
    #[error("refused to call the provider: {0}")]
    Denied(String),
    /// The profile cannot be used as configured.
    #[error("{0}")]
    Config(String),
}

fn describe(description: &Option<String>) -> String {
    description.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

impl ProviderError {
    /// Failures that need a person (a new consent or a fixed profile), not a retry.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::InvalidGrant { .. } | Self::InvalidClient { .. } | Self::Rejected { .. } | Self::Config(_))
    }

    /// The delay the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the request may have been processed by the provider.
    pub fn maybe_sent(&self) -> bool {
        match self {
            Self::Transient { maybe_sent, .. } => *maybe_sent,
            Self::BadReply { .. } => true,
            _ => false,
        }
    }
}

/// A failure before any reply was read.
pub(crate) fn from_http(e: HttpError, meta: &ReplyMeta) -> ProviderError {
    match e {
        HttpError::TooLarge(limit) => {
            ProviderError::BadReply { status: meta.status, reason: format!("reply larger than {limit} bytes") }
        }
        HttpError::Denied(denied) => ProviderError::Denied(denied.to_string()),
        HttpError::Setup(message) => ProviderError::Config(message),
        e => ProviderError::Transient { reason: e.to_string(), retry_after: None, maybe_sent: e.maybe_sent() },
    }
}

/// Keeps provider text short and printable; it ends up in `last_error` and logs.
pub(crate) fn sanitize(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

fn is_transient_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// An OAuth error reply, by its code (RFC 6749 §5.2, RFC 8628 §3.5).
fn from_error_code(code: &str, description: Option<&str>, meta: &ReplyMeta) -> ProviderError {
    let description = description.map(sanitize);
    match code {
        "invalid_grant" => ProviderError::InvalidGrant { description },
        "invalid_client" | "unauthorized_client" => {
            ProviderError::InvalidClient { error: code.to_owned(), description }
        }
        "temporarily_unavailable" | "server_error" => ProviderError::Transient {
            reason: format!("{}{}", sanitize(code), describe(&description)),
            retry_after: meta.retry_after,
            // The provider answered that it did not do it.
            maybe_sent: false,
        },
        _ if is_transient_status(meta.status) => ProviderError::Transient {
            reason: format!("HTTP {} ({})", meta.status, sanitize(code)),
            retry_after: meta.retry_after,
            maybe_sent: false,
        },
        _ => ProviderError::Rejected { error: sanitize(code), description },
    }
}

fn from_error_response<T>(err: &oauth2::StandardErrorResponse<T>, meta: &ReplyMeta) -> ProviderError
where
    T: oauth2::ErrorResponseType + std::fmt::Display + 'static,
{
    from_error_code(&err.error().to_string(), err.error_description().map(String::as_str), meta)
}

/// Sorts an oauth2 token-request failure, using the status and `Retry-After` it lost.
pub(crate) fn classify<T>(
    err: RequestTokenError<HttpError, oauth2::StandardErrorResponse<T>>,
    meta: Option<ReplyMeta>,
) -> ProviderError
where
    T: oauth2::ErrorResponseType + std::fmt::Display + 'static,
{
    let meta = meta.unwrap_or_default();
    match err {
        RequestTokenError::Request(e) => from_http(e, &meta),
        RequestTokenError::ServerResponse(err) => from_error_response(&err, &meta),
        RequestTokenError::Parse(e, body) => {
            // A 200 reply carrying an OAuth error (some providers do this).
            if let Ok(err) = serde_json::from_slice::<BasicErrorResponse>(&body) {
                return from_error_response(&err, &meta);
            }
            if is_transient_status(meta.status) {
                return ProviderError::Transient {
                    reason: format!("HTTP {} with a non-OAuth body", meta.status),
                    retry_after: meta.retry_after,
                    maybe_sent: false,
                };
            }
            // serde's message may quote a value from the body; name only where and what kind.
            let kind = match e.inner().classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not JSON",
                serde_json::error::Category::Data => "missing or mistyped field",
                serde_json::error::Category::Io => "unreadable",
            };
            ProviderError::BadReply { status: meta.status, reason: format!("{kind} at `{}`", e.path()) }
        }
        RequestTokenError::Other(message) if is_transient_status(meta.status) => ProviderError::Transient {
            reason: format!("HTTP {}: {}", meta.status, sanitize(&message)),
            retry_after: meta.retry_after,
            maybe_sent: false,
        },
        RequestTokenError::Other(message) => {
            ProviderError::BadReply { status: meta.status, reason: sanitize(&message) }
        }
    }
}
