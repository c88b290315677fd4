//! The small HTTP listener: `GET /oauth/callback` (finishes a consent and shows a short page),
//! `/healthz` (alive), `/readyz` (store reachable, change feed connected, engine running) and `/metrics` (Prometheus text).

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
}

/// The routes, every one (the 404 fallback too) behind [`security_headers`].
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route(crate::config::HttpConfig::CALLBACK_PATH, get(callback))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .layer(axum::middleware::map_response(security_headers))
}

/// The headers every reply carries, in one layer so routes added later (the landing page) get
/// them too: `X-Content-Type-Options: nosniff` (a browser must not guess a type, e.g. run an
/// error message as script); unless the route set its own, `Cache-Control: no-store` (the
/// callback page shows consent outcomes and `/metrics` profile names: neither belongs in a
/// cache) and `Referrer-Policy: no-referrer` (the callback URL carries the authorization code
/// and state; a link followed from the page must not send it on).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
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
         <body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>{t}</h1><p>{b}</p></body></html>",
        t = escape(title),
        b = escape(body)
    );
    // No-store and no-referrer come from `security_headers`.
    (status, Html(html)).into_response()
}

async fn callback(State(state): State<HttpState>, Query(query): Query<CallbackQuery>) -> Response {
    let Some(consent_state) = query.state.filter(|s| !s.is_empty() && s.len() <= 512) else {
        return page(StatusCode::BAD_REQUEST, "Consent not completed", "The redirect carried no state.");
    };
    let error = query.error.map(|e| (e, query.error_description.unwrap_or_default()));
    let code = query.code.map(secrecy::SecretString::from);
    match state.admin.complete_consent(&consent_state, code, error).await {
        Ok(name) => {
            page(StatusCode::OK, "Connected", &format!("Profile {name} is connected. You can close this window."))
        }
        Err(e) => page(StatusCode::BAD_REQUEST, "Consent not completed", &e.to_string()),
    }
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
