//! The Connected apps landing page, served on the HTTP listener beside the OAuth callback:
//! server-rendered HTML (askama templates, escaped by default), a stylesheet and a small script
//! embedded in the binary, sessions in sealed cookies, and live updates over server-sent
//! events. It is a view over the same operations as the gRPC service ([`Admin`]); the rules
//! (validation, permissions, status words, which action a status offers) live there and in
//! [`crate::access`] and [`crate::profile`], never here.
//!
//! - [`routes`]: every route of the page, in one place;
//! - [`session`]: sealed session cookies, idle and absolute expiry, sign-out;
//! - [`csrf`]: the per-session token and the `Origin` check every POST passes;
//! - [`auth`]: who is signed in (the caller looked up again on every request);
//! - [`pages`] and [`actions`]: the GET pages and the POST actions;
//! - [`views`] and [`form`]: what templates show, and profile forms read back;
//! - [`assets`]: the embedded stylesheet and script, named by content hash;
//! - [`sse`]: the live-update stream.

mod actions;
mod assets;
mod auth;
pub mod csrf;
mod error;
mod form;
mod pages;
mod routes;
pub mod session;
mod sse;
mod views;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::access::{Callers, PeerLimiter};
use crate::admin::Admin;

pub use assets::{SCRIPT_PATH, STYLE_PATH};
pub use error::WebError;
pub use routes::{clear_consent_cookie, consent_cookie_matches, routes};

/// The peer address of an HTTP request, attached by the listener (the failed-sign-in limit
/// counts by it).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// What the page's handlers share. Cheap to clone.
#[derive(Clone)]
pub struct Web {
    inner: Arc<Inner>,
}

struct Inner {
    admin: Arc<Admin>,
    callers: Callers,
    /// The failed-authentication limit the gRPC listener counts in too.
    limiter: Arc<PeerLimiter>,
    sessions: session::Sessions,
    /// Whether the listener serves TLS (`Secure` cookies, `https` origins).
    tls: bool,
    /// Seconds a started consent lives (the consent cookie lasts as long).
    consent_ttl_secs: u64,
    /// Ends live-update streams at shutdown.
    shutdown: CancellationToken,
}

/// How the page is set up: from the configuration, at start.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// Session expiries.
    pub session: crate::config::SessionConfig,
    /// Whether the listener serves TLS.
    pub tls: bool,
    /// Seconds a started consent lives.
    pub consent_ttl_secs: u64,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web").field("tls", &self.inner.tls).finish_non_exhaustive()
    }
}

impl Web {
    /// The page over `admin`, authenticating against `callers` and counting wrong tokens in
    /// `limiter`; `shutdown` ends live-update streams.
    pub fn new(
        admin: Arc<Admin>,
        callers: Callers,
        limiter: Arc<PeerLimiter>,
        options: &WebOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let sessions = session::Sessions::new(&options.session, options.tls);
        let inner = Inner {
            admin,
            callers,
            limiter,
            sessions,
            tls: options.tls,
            consent_ttl_secs: options.consent_ttl_secs,
            shutdown,
        };
        Self { inner: Arc::new(inner) }
    }

    fn admin(&self) -> &Arc<Admin> {
        &self.inner.admin
    }

    fn now_ms(&self) -> crate::clock::UnixMillis {
        self.inner.admin.engine().clock().now_ms()
    }
}
