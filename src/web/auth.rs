//! Who is signed in: the session cookie opened ([`super::session`]) and its caller looked up
//! again in the current caller table on every request, so a reload (SIGHUP) that removes the
//! caller or changes its role takes effect on the next request.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::session::{self, Claims};
use super::{Web, WebError, csrf};
use crate::access::{Caller, Credential, Role};

/// A signed-in admin or viewer, for one request.
pub struct Signed {
    /// The caller as the current configuration has it.
    pub caller: Arc<Caller>,
    /// The session.
    pub claims: Claims,
    /// The re-issued cookie (its idle clock slid), to send with the reply.
    reissue: Option<String>,
}

impl Signed {
    /// Whether the caller may act (admins) rather than only look (viewers).
    pub fn is_admin(&self) -> bool {
        self.caller.require_admin().is_ok()
    }

    /// Refuses viewers: the page shows them no buttons, and the server refuses anyway.
    pub fn require_admin(&self) -> Result<(), WebError> {
        self.caller.require_admin().map_err(|denied| WebError::Forbidden(format!("{denied}; viewers may only look")))
    }

    /// `response` with the re-issued session cookie, if any.
    pub fn reply(&self, response: impl IntoResponse) -> Response {
        let mut response = response.into_response();
        if let Some(cookie) = self.reissue.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        response
    }
}

impl Web {
    /// The signed-in caller of a request: a valid, unexpired, not signed-out session whose
    /// caller is still configured as an admin or viewer; else [`WebError::SignIn`].
    pub(super) fn signed(&self, headers: &HeaderMap) -> Result<Signed, WebError> {
        let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
        let value = cookies.filter_map(session::from_header).next().ok_or(WebError::SignIn)?;
        let engine = self.admin().engine();
        let now = self.now_ms();
        let (claims, slid) = match self.inner.sessions.open(engine.keys(), engine.store().as_ref(), value, now) {
            Ok(opened) => opened,
            Err(session::SessionError::Store) => return Err(session::SessionError::Store.into()),
            Err(_) => return Err(WebError::SignIn),
        };
        let hash = parse_hash(&claims.token_sha256).ok_or(WebError::SignIn)?;
        let caller = self.inner.callers.resolve(&Credential::Token(hash)).ok_or(WebError::SignIn)?;
        if caller.role == Role::Consumer {
            return Err(WebError::SignIn);
        }
        let reissue = if slid { Some(self.inner.sessions.cookie(engine.keys(), &claims)?) } else { None };
        Ok(Signed { caller, claims, reissue })
    }

    /// [`Web::signed`] for a POST: also the origin check and the session's CSRF token.
    pub(super) fn signed_post(&self, headers: &HeaderMap, token: &str) -> Result<Signed, WebError> {
        if !csrf::same_origin(headers, self.inner.tls) {
            return Err(WebError::CrossSite);
        }
        let signed = self.signed(headers)?;
        if !csrf::token_matches(&signed.claims.csrf, token) {
            return Err(WebError::CrossSite);
        }
        Ok(signed)
    }
}

/// The 32 bytes of a hex SHA-256 (as sessions carry the token's hash).
pub(super) fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let mut hash = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}
