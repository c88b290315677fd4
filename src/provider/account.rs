//! Who consented, for the profile's `connected_account` ("connected as ops@example.com"): from
//! the OpenID ID token's claims in the token reply, else from the userinfo endpoint. Neither is
//! verified: the value is only shown to admins, never used for access decisions.

use base64::Engine as _;
use secrecy::ExposeSecret as _;
use url::Url;

use super::error::sanitize;
use super::http::ProviderHttp;
use super::{ProviderSettings, TokenSet};

/// The claims that name an account, most readable first.
const ACCOUNT_CLAIMS: &[&str] = &["email", "preferred_username", "upn", "sub"];

fn account_from_claims(claims: &serde_json::Value) -> Option<String> {
    ACCOUNT_CLAIMS.iter().find_map(|k| claims.get(*k).and_then(|v| v.as_str()).map(sanitize))
}

/// The account named by an ID token's payload (the signature is not checked; see above).
pub(super) fn account_from_id_token(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    account_from_claims(&serde_json::from_slice(&bytes).ok()?)
}

/// Fills `tokens.account` from the userinfo endpoint when the reply named nobody and the
/// profile has one (OpenID Connect Core §5.3, a bearer GET). Any failure leaves it empty: the
/// connection does not depend on it.
pub(super) async fn with_userinfo(http: &ProviderHttp, s: &ProviderSettings, mut tokens: TokenSet) -> TokenSet {
    let Some(endpoint) = &s.userinfo_endpoint else { return tokens };
    if tokens.account.is_some() || !tokens.token_type.eq_ignore_ascii_case("bearer") {
        return tokens;
    }
    match fetch(http, endpoint, &tokens).await {
        Some(account) => tokens.account = Some(account),
        None => tracing::debug!(endpoint = %endpoint, "userinfo named no account"),
    }
    tokens
}

async fn fetch(http: &ProviderHttp, endpoint: &Url, tokens: &TokenSet) -> Option<String> {
    let request = ::http::Request::builder()
        .method(::http::Method::GET)
        .uri(endpoint.as_str())
        .header(::http::header::ACCEPT, "application/json")
        .header(::http::header::AUTHORIZATION, format!("Bearer {}", tokens.access_token.expose_secret()))
        .body(Vec::new())
        .ok()?;
    let (reply, meta) = http.send(request).await.ok()?;
    if meta.status != 200 {
        return None;
    }
    account_from_claims(&serde_json::from_slice(reply.body()).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most readable claim names the account; a malformed token names nobody.
    #[test]
    fn claims() {
        let jwt = |claims: &str| format!("h.{}.s", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims));
        assert_eq!(account_from_id_token(&jwt(r#"{"sub":"1","email":"a@b.c"}"#)).as_deref(), Some("a@b.c"));
        assert_eq!(account_from_id_token(&jwt(r#"{"sub":"1"}"#)).as_deref(), Some("1"));
        assert_eq!(account_from_id_token("not-a-jwt"), None);
        assert_eq!(account_from_id_token(&jwt("[]")), None);
    }
}
