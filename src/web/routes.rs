//! Every route of the landing page, in one place, and the consent cookie that lets the OAuth
//! callback send a browser back to the page that started the consent.

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};

use super::{Web, actions, assets, pages, sse};

/// The consent cookie's name. It holds a hash of the consent's state (never the state), lives
/// as long as the consent, is sent only to the callback path, and is `SameSite=Lax` because the
/// provider's redirect back is a cross-site navigation that a `Strict` cookie would miss.
const CONSENT_COOKIE: &str = "tokend_consent";

/// The page's routes, with their state.
pub fn routes(web: Web) -> Router {
    Router::new()
        .route("/", get(pages::home))
        .route("/signin", post(actions::sign_in))
        .route("/signout", post(actions::sign_out))
        .route("/events", get(sse::events))
        .route("/assets/{file}", get(assets::serve))
        .route("/profiles", post(actions::create))
        .route("/profiles/new", get(pages::new_profile))
        .route("/profiles/{name}", get(pages::profile))
        .route("/profiles/{name}/edit", get(pages::edit).post(actions::edit))
        .route("/profiles/{name}/delete", get(pages::confirm_delete).post(actions::delete))
        .route("/profiles/{name}/disconnect", get(pages::confirm_disconnect).post(actions::disconnect))
        .route("/profiles/{name}/connect", post(actions::connect))
        .route("/profiles/{name}/refresh", post(actions::refresh))
        .with_state(web)
}

fn state_hash(state: &str) -> String {
    Sha256::digest(state.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The `Set-Cookie` value marking a consent started from the page.
pub(super) fn consent_cookie(state: &str, ttl_secs: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{CONSENT_COOKIE}={}; Path={}; HttpOnly; SameSite=Lax; Max-Age={ttl_secs}{secure}",
        state_hash(state),
        crate::config::HttpConfig::CALLBACK_PATH
    )
}

/// Whether the callback request carries the consent cookie of `state`: the consent was started
/// from the landing page in this browser, so the callback sends it back there.
pub fn consent_cookie_matches(headers: &HeaderMap, state: &str) -> bool {
    let expected = state_hash(state);
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).any(|cookies| {
        cookies
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(k, v)| k == CONSENT_COOKIE && super::csrf::token_matches(&expected, v))
    })
}

/// The `Set-Cookie` value that removes the consent cookie.
pub fn clear_consent_cookie() -> String {
    format!("{CONSENT_COOKIE}=; Path={}; HttpOnly; SameSite=Lax; Max-Age=0", crate::config::HttpConfig::CALLBACK_PATH)
}
