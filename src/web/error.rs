//! What can go wrong on the page, and the reply each gets. Administration's errors go through
//! the gRPC status table ([`crate::grpc::to_status`]), so a refusal means the same on both
//! surfaces; here the code becomes an HTTP status and a short page.

use askama::Template as _;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use tonic::Code;

use super::views::{ErrorPage, Layout};
use crate::admin::AdminError;

/// Why a page or action failed.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// No (valid) session: the browser is sent to the sign-in form.
    #[error("sign in first")]
    SignIn,
    /// The caller may not do this (a viewer posting an action).
    #[error("{0}")]
    Forbidden(String),
    /// A POST without the session's CSRF token or from another origin.
    #[error(
        "the request did not come from this page (missing or wrong CSRF token or Origin); reload the page and try again"
    )]
    CrossSite,
    /// The peer failed to sign in too often.
    #[error("too many failed sign-ins from this address; retry in {0} s")]
    Blocked(u64),
    /// What administration refused or failed at: the HTTP status its gRPC code maps to, and
    /// the message (which names the field of a validation error).
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// What went wrong.
        message: String,
    },
    /// A session could not be read or recorded.
    #[error(transparent)]
    Session(#[from] super::session::SessionError),
    /// A template failed to render (a defect).
    #[error("the page could not be rendered")]
    Render(#[from] askama::Error),
    /// No such page.
    #[error("no such page")]
    NotFound,
}

impl WebError {
    /// The HTTP status and the message shown.
    fn status(&self) -> (StatusCode, String) {
        match self {
            Self::SignIn => (StatusCode::UNAUTHORIZED, self.to_string()),
            Self::Forbidden(_) | Self::CrossSite => (StatusCode::FORBIDDEN, self.to_string()),
            Self::Blocked(_) => (StatusCode::TOO_MANY_REQUESTS, self.to_string()),
            Self::NotFound => (StatusCode::NOT_FOUND, self.to_string()),
            Self::Session(_) => (StatusCode::SERVICE_UNAVAILABLE, self.to_string()),
            Self::Render(e) => {
                tracing::error!(error = %e, "rendering a page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, self.to_string())
            }
            Self::Refused { status, message } => (*status, message.clone()),
        }
    }
}

impl From<AdminError> for WebError {
    fn from(e: AdminError) -> Self {
        let status = crate::grpc::to_status(e);
        Self::Refused { status: http_status(status.code()), message: status.message().to_owned() }
    }
}

/// The HTTP status of a gRPC code, for refusals of an action the caller may ask for (not found,
/// invalid, precondition, provider down).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        if let Self::SignIn = self {
            return Redirect::to("/").into_response();
        }
        let (status, message) = self.status();
        let page = ErrorPage { layout: Layout::bare("Not done"), message: message.clone() };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response(),
        }
    }
}
