//! Failures: one line on stderr and an exit code scripts can test.

use std::fmt::Display;
use std::path::PathBuf;

use tonic::Code;

/// A failure to report: one line on stderr, and an exit code scripts can test.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) line: String,
}

// === impl Failure ===

impl Failure {
    /// `what` happened, with an optional hint on what to do about it.
    pub(crate) fn new(code: u8, what: impl Display, hint: Option<String>) -> Self {
        let line = match hint {
            Some(hint) => format!("{what}; {hint}"),
            None => what.to_string(),
        };
        Failure { code, line: line.replace(['\n', '\r'], " ") }
    }
}

/// Result of a command.
pub(crate) type Outcome<T = ()> = Result<T, Failure>;

/// What error hints need to know about the invocation.
pub(crate) struct Hints {
    pub(crate) addr: String,
    pub(crate) data_dir: PathBuf,
    /// Whether a client certificate was presented: then a refusal is about the certificate.
    pub(crate) by_certificate: bool,
}

// === impl Hints ===

impl Hints {
    /// Turns a failed call into a failure line with a hint and the exit code for its status.
    pub(crate) fn fail(&self, what: impl Display, status: &tonic::Status) -> Failure {
        let code = status.code();
        let mut message =
            if status.message().is_empty() { code.description().to_owned() } else { status.message().to_owned() };
        let local = std::error::Error::source(status).is_some();
        if let Some(source) = std::error::Error::source(status) {
            message = format!("{message}: {}", error_chain(source));
        }
        let hint = match code {
            Code::Unauthenticated if self.by_certificate => Some(
                "the certificate's DNS name must be a caller's cert_dns_name and its CA tokend's \
                 grpc.tls.client_ca_file"
                    .to_owned(),
            ),
            Code::Unauthenticated => Some(format!(
                "pass --token, --token-file or run where {} is readable",
                self.data_dir.join("admin.token").display()
            )),
            Code::PermissionDenied => Some("this caller's role or profile patterns do not allow that".to_owned()),
            Code::NotFound => Some("see `tokenctl list`".to_owned()),
            Code::Unavailable if local => Some(format!("is tokend running at {}?", self.addr)),
            Code::Unavailable => Some("retry later".to_owned()),
            Code::DeadlineExceeded | Code::Cancelled => Some("raise --timeout or retry later".to_owned()),
            _ => None,
        };
        let exit = match code {
            Code::NotFound => 3,
            Code::PermissionDenied | Code::Unauthenticated => 4,
            Code::FailedPrecondition => 5,
            Code::Unavailable | Code::DeadlineExceeded => 6,
            Code::InvalidArgument | Code::AlreadyExists => 7,
            _ => 1,
        };
        Failure::new(exit, format!("{what}: {message}"), hint)
    }
}

/// Unwraps a call's reply, or turns its status into a [`Failure`].
pub(crate) trait Reply<T> {
    /// The reply, or a failure saying `what` was being done.
    fn or_fail(self, hints: &Hints, what: impl Display) -> Outcome<T>;
}

impl<T> Reply<T> for Result<tonic::Response<T>, tonic::Status> {
    fn or_fail(self, hints: &Hints, what: impl Display) -> Outcome<T> {
        self.map(tonic::Response::into_inner).map_err(|status| hints.fail(what, &status))
    }
}

/// An error and its sources, joined with `: `.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}
