//! Cross-site request forgery: every POST must come from a page of this origin (its `Origin`
//! header, or `Sec-Fetch-Site: same-origin` where a browser sends no `Origin`) and, once
//! signed in, carry the session's CSRF token in the form. The cookie is `SameSite=Strict`
//! too; the two checks hold where a browser ignores that.

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq as _;

/// Whether the request comes from a page of this listener's own origin: `Origin` equals
/// `<scheme>://<Host>`, or, without `Origin` (or with `Origin: null`), `Sec-Fetch-Site` says
/// `same-origin`. A request with neither is refused (browsers send one of them on every form
/// POST).
pub fn same_origin(headers: &HeaderMap, tls: bool) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let scheme = if tls { "https" } else { "http" };
    let fetch_site_same = || headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"same-origin");
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        // Browsers send `Origin: null` on a form POST from a page whose referrer policy is
        // `no-referrer` (ours): then `Sec-Fetch-Site` is the evidence.
        Some(Ok("null")) | None => fetch_site_same(),
        Some(Ok(origin)) => origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")),
        Some(Err(_)) => false,
    }
}

/// Whether the form's token is the session's (compared in constant time).
pub fn token_matches(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    /// Same origin passes; another origin, `null`, a scheme mismatch or no evidence is refused.
    #[test]
    fn origin_rules() {
        let ok = headers(&[("host", "127.0.0.1:8085"), ("origin", "http://127.0.0.1:8085")]);
        assert!(same_origin(&ok, false));
        assert!(!same_origin(&ok, true), "https expected under TLS");
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8085"), ("origin", "http://evil.example")]), false));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8085"), ("origin", "null")]), false));
        let null_same = headers(&[("host", "h"), ("origin", "null"), ("sec-fetch-site", "same-origin")]);
        assert!(same_origin(&null_same, false), "no-referrer pages post Origin: null");
        assert!(same_origin(&headers(&[("host", "h"), ("sec-fetch-site", "same-origin")]), false));
        assert!(!same_origin(&headers(&[("host", "h"), ("sec-fetch-site", "cross-site")]), false));
        assert!(!same_origin(&headers(&[("host", "h")]), false));
        assert!(token_matches("abc", "abc") && !token_matches("abc", "abd") && !token_matches("", ""));
    }
}
