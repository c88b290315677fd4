//! The small HTTP listener: the Connected apps landing page ([`crate::web`]) at `/`,
//! `GET /oauth/callback` (finishes a consent; back to the page when the consent started there,
//! else a short page), `/healthz` (alive), `/readyz` (store reachable, change feed connected,
//! engine running) and `/metrics` (Prometheus text). Every route of the listener is listed in [`router`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::admin::Admin;
use crate::metrics::Metrics;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// Administration (consents finish here).
    pub admin: Arc<Admin>,
    /// Set once the daemon serves, cleared when it starts to shut down.
    pub ready: Arc<AtomicBool>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The landing page; `None` where it is not served (plain HTTP off loopback without
    /// `http.allow_insecure_non_loopback`).
    pub web: Option<crate::web::Web>,
}

/// The routes, every one (the 404 fallback too) behind [`security_headers`]: the landing
/// page's ([`crate::web::routes`]), the callback, health, readiness and metrics.
pub fn router(state: HttpState) -> Router {
    let page = match state.web.clone() {
        Some(web) => crate::web::routes(web),
        None => Router::new().route("/", get(page_off)),
    };
    Router::new()
        .route(crate::config::HttpConfig::CALLBACK_PATH, get(callback))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(page)
        .layer(axum::middleware::map_response(security_headers))
}

/// `/` where the page is not served.
async fn page_off() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Landing page off",
        "This listener serves plain HTTP on a non-loopback address, so the landing page is off: configure \
         http.tls, or set http.allow_insecure_non_loopback = true to accept that risk.",
    )
}

/// The Content-Security-Policy of every reply: nothing inline, nothing from elsewhere, no
/// framing, forms only to this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every reply carries, in one layer so every route (the landing page's too) gets
/// them: `X-Content-Type-Options: nosniff` (a browser must not guess a type, e.g. run an
/// error message as script); the [`CSP`] and `X-Frame-Options: DENY` (no inline script, no
/// framing: the page holds admin power); unless the route set its own, `Cache-Control: no-store` (the
/// callback page shows consent outcomes and `/metrics` profile names: neither belongs in a
/// cache) and `Referrer-Policy: no-referrer` (the callback URL carries the authorization code
/// and state; a link followed from the page must not send it on).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    headers.entry(header::REFERRER_POLICY).or_insert(HeaderValue::from_static("no-referrer"));
    response
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tokend: {t}</title></head>\
         <link rel=\"stylesheet\" href=\"{css}\"></head><body><main><h1>{t}</h1><p>{b}</p>\
         <p><a href=\"/\">Connected apps</a></p></main></body></html>",
        css = crate::web::STYLE_PATH.as_str(),
        t = escape(title),
        b = escape(body)
    );
    // No-store and no-referrer come from `security_headers`.
    (status, Html(html)).into_response()
}

/// `GET /oauth/callback`. A consent started from the landing page in this browser (its consent
/// cookie matches the state) goes back to the page, where the row reads Connected; others get a
/// short page saying what happened.
async fn callback(
    State(state): State<HttpState>,
    headers: axum::http::HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let Some(consent_state) = query.state.filter(|s| !s.is_empty() && s.len() <= 512) else {
        return page(StatusCode::BAD_REQUEST, "Consent not completed", "The redirect carried no state.");
    };
    let from_page = state.web.is_some() && crate::web::consent_cookie_matches(&headers, &consent_state);
    let error = query.error.map(|e| (e, query.error_description.unwrap_or_default()));
    let code = query.code.map(secrecy::SecretString::from);
    let mut reply = match state.admin.complete_consent(&consent_state, code, error).await {
        Ok(name) if from_page => back_to_page(&name),
        Ok(name) => {
            page(StatusCode::OK, "Connected", &format!("Profile {name} is connected. You can close this window."))
        }
        Err(e) => page(StatusCode::BAD_REQUEST, "Consent not completed", &e.to_string()),
    };
    if from_page && let Ok(clear) = HeaderValue::from_str(&crate::web::clear_consent_cookie()) {
        reply.headers_mut().append(header::SET_COOKIE, clear);
    }
    reply
}

/// The way back to the landing page after a consent started there: a page that moves on by
/// itself (a meta refresh, not a redirect). The browser arrives here from the provider, a
/// cross-site navigation, and a redirect would carry on as one, without the `SameSite=Strict`
/// session cookie; a navigation this page starts is same-site, so the session comes along.
/// (`name` is a validated profile name: no escaping needed.)
fn back_to_page(name: &str) -> Response {
    let target = format!("/?notice=connected&amp;name={name}");
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tokend: Connected</title>\
         <meta http-equiv=\"refresh\" content=\"0; url={target}\"><link rel=\"stylesheet\" href=\"{css}\">\
         </head><body><main><h1>Connected</h1><p>Profile {name} is connected. \
         <a href=\"{target}\">Back to Connected apps</a></p></main></body></html>",
        css = crate::web::STYLE_PATH.as_str(),
    );
    (StatusCode::OK, Html(html)).into_response()
}

async fn readyz(State(state): State<HttpState>) -> Response {
    // A shared store (PostgreSQL) must be reachable and its change feed connected: a replica
    // that cannot hear other replicas' writes should not take traffic.
    let store_ok = state.admin.engine().store().healthy();
    if state.ready.load(Ordering::Relaxed) && store_ok {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    match state.metrics.render(&state.admin.engine().snapshot(state.metrics.max_profile_series())) {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n")).into_response(),
    }
}
