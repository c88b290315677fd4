//! Issuer discovery: a profile that names only its issuer gets its endpoints, supported grants
//! and token-endpoint auth methods from the authorization server's metadata — RFC 8414
//! (`/.well-known/oauth-authorization-server`, inserted before the issuer's path), then OpenID
//! Connect Discovery (`/.well-known/openid-configuration`, appended to it). The document must
//! name exactly the configured issuer (RFC 8414 §3.3), its endpoints follow the same rules as
//! endpoints an admin types, and it is fetched through the provider HTTP client (no redirects,
//! bounded time and size, the deny-list).

use serde::Deserialize;
use url::Url;

use super::endpoint::parse_endpoint;
use super::http::{HttpError, ProviderHttp};
use super::presets::AuthMethod;

/// What discovery found, ready to be stored with the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    /// The issuer the metadata was fetched for (equal to the document's `issuer`).
    pub issuer: String,
    /// Where the metadata came from.
    pub metadata_url: String,
    /// Endpoints; empty where the server announces none.
    pub authorization_endpoint: String,
    /// Always set: discovery fails without one.
    pub token_endpoint: String,
    /// RFC 7009.
    pub revocation_endpoint: String,
    /// RFC 8628.
    pub device_authorization_endpoint: String,
    /// OpenID Connect userinfo.
    pub userinfo_endpoint: String,
    /// `grant_types_supported` as announced (empty: not announced).
    pub grant_types_supported: Vec<String>,
    /// `token_endpoint_auth_methods_supported` as announced (empty: not announced).
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

/// Why discovery failed. Nothing is stored when it does.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryError {
    /// The configured issuer is not a usable issuer identifier.
    #[error("{0}")]
    BadIssuer(String),
    /// The server could not be reached (or timed out); retry later.
    #[error("issuer metadata could not be fetched from {url}: {reason}")]
    Unreachable {
        /// The metadata URL tried.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Neither well-known URL served a metadata document.
    #[error("no authorization server metadata at {tried} ({reason}); check the issuer, or set the endpoints yourself")]
    NotFound {
        /// The URLs tried, comma-separated.
        tried: String,
        /// What the last one answered.
        reason: String,
    },
    /// A document was found but cannot be used.
    #[error("issuer metadata at {url} is unusable: {reason}")]
    Invalid {
        /// Where it came from.
        url: String,
        /// What is wrong, never echoing the document.
        reason: String,
    },
    /// The document names another issuer: RFC 8414 §3.3 forbids using it.
    #[error(
        "issuer metadata at {url} names issuer {found:?}, not the configured {expected:?}; refusing it (RFC 8414 §3.3: they must be identical)"
    )]
    IssuerMismatch {
        /// Where it came from.
        url: String,
        /// The configured issuer.
        expected: String,
        /// What the document says.
        found: String,
    },
    /// The host is, or resolves to, an address in the deny-list.
    #[error("{0}")]
    Denied(String),
}

impl DiscoveryError {
    /// Whether trying again later may help (the server was unreachable or overloaded).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// The metadata fields tokend uses (RFC 8414 §2, OpenID Connect Discovery §3).
#[derive(Debug, Deserialize)]
struct Metadata {
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    grant_types_supported: Vec<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

/// The metadata URLs of `issuer`, in the order they are tried: RFC 8414's (the well-known
/// segment inserted between host and path), then OpenID's (appended to the issuer).
pub fn metadata_urls(issuer: &Url) -> Vec<String> {
    let origin = issuer.origin().ascii_serialization();
    let path = issuer.path().trim_end_matches('/');
    vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{origin}{path}/.well-known/openid-configuration"),
    ]
}

/// Checks an issuer identifier (RFC 8414 §2): https (or plain http on loopback), no query, no
/// fragment.
pub fn parse_issuer(text: &str, allow_insecure_http: bool) -> Result<Url, DiscoveryError> {
    // The caller names the field; keep only the rule.
    let url = parse_endpoint("issuer", text, allow_insecure_http)
        .map_err(|m| DiscoveryError::BadIssuer(m.trim_start_matches("issuer: ").to_owned()))?;
    if url.query().is_some() {
        return Err(DiscoveryError::BadIssuer("must not have a query (RFC 8414 §2)".into()));
    }
    Ok(url)
}

/// Fetches and checks the metadata of `issuer` (the exact text configured).
pub async fn discover(
    http: &ProviderHttp,
    issuer: &str,
    allow_insecure_http: bool,
) -> Result<Discovered, DiscoveryError> {
    let issuer = issuer.trim();
    let parsed = parse_issuer(issuer, allow_insecure_http)?;
    let urls = metadata_urls(&parsed);
    let mut last = String::new();
    for url in &urls {
        match fetch(http, url).await? {
            Fetched::Document(body) => return validate(issuer, url, &body, allow_insecure_http),
            Fetched::Missing(why) => last = why,
        }
    }
    Err(DiscoveryError::NotFound { tried: urls.join(", "), reason: last })
}

enum Fetched {
    Document(Vec<u8>),
    /// Not there (a 404, an HTML page): try the next URL.
    Missing(String),
}

async fn fetch(http: &ProviderHttp, url: &str) -> Result<Fetched, DiscoveryError> {
    let request = ::http::Request::builder()
        .method(::http::Method::GET)
        .uri(url)
        .header(::http::header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| DiscoveryError::BadIssuer(format!("cannot build a request to {url}: {e}")))?;
    let (reply, meta) = match http.send(request).await {
        Ok(reply) => reply,
        Err(HttpError::Denied(denied)) => return Err(DiscoveryError::Denied(denied.to_string())),
        Err(HttpError::TooLarge(limit)) => {
            return Err(DiscoveryError::Invalid { url: url.into(), reason: format!("larger than {limit} bytes") });
        }
        Err(e) => return Err(DiscoveryError::Unreachable { url: url.into(), reason: e.to_string() }),
    };
    match meta.status {
        200 => Ok(Fetched::Document(reply.into_body())),
        429 | 500..=599 => {
            Err(DiscoveryError::Unreachable { url: url.into(), reason: format!("HTTP {}", meta.status) })
        }
        status => Ok(Fetched::Missing(format!("HTTP {status} at {url}"))),
    }
}

fn validate(issuer: &str, url: &str, body: &[u8], allow_insecure_http: bool) -> Result<Discovered, DiscoveryError> {
    let invalid = |reason: String| DiscoveryError::Invalid { url: url.into(), reason };
    // serde's message may quote the document; name only where and what kind.
    let doc: Metadata = serde_json::from_slice(body).map_err(|e| {
        invalid(match e.classify() {
            serde_json::error::Category::Data => format!("a field has the wrong type (line {})", e.line()),
            _ => "not a JSON object".into(),
        })
    })?;
    let found = doc.issuer.unwrap_or_default();
    if found != issuer {
        return Err(DiscoveryError::IssuerMismatch {
            url: url.into(),
            expected: issuer.into(),
            found: super::sanitize_text(&found),
        });
    }
    let endpoint = |field: &str, value: Option<String>, insecure: bool| -> Result<String, DiscoveryError> {
        match value.filter(|v| !v.trim().is_empty()) {
            None => Ok(String::new()),
            Some(v) => parse_endpoint(field, &v, insecure).map(|u| u.to_string()).map_err(invalid),
        }
    };
    let token_endpoint = endpoint("token_endpoint", doc.token_endpoint, allow_insecure_http)?;
    if token_endpoint.is_empty() {
        return Err(invalid("it has no token_endpoint".into()));
    }
    Ok(Discovered {
        issuer: issuer.into(),
        metadata_url: url.into(),
        // Browsers, not tokend, open the authorization endpoint: plain http is the provider's
        // business there, as for endpoints an admin types.
        authorization_endpoint: endpoint("authorization_endpoint", doc.authorization_endpoint, true)?,
        token_endpoint,
        revocation_endpoint: endpoint("revocation_endpoint", doc.revocation_endpoint, allow_insecure_http)?,
        device_authorization_endpoint: endpoint(
            "device_authorization_endpoint",
            doc.device_authorization_endpoint,
            allow_insecure_http,
        )?,
        userinfo_endpoint: endpoint("userinfo_endpoint", doc.userinfo_endpoint, allow_insecure_http)?,
        grant_types_supported: short_list(doc.grant_types_supported),
        token_endpoint_auth_methods_supported: short_list(doc.token_endpoint_auth_methods_supported),
    })
}

/// A bounded, printable copy of an announced list.
fn short_list(items: Vec<String>) -> Vec<String> {
    items.into_iter().take(32).map(|s| super::sanitize_text(&s)).collect()
}

/// The token-endpoint auth method to use with a client secret when the server announces its
/// methods: `client_secret_basic` where offered (RFC 8414's default), else `client_secret_post`.
/// `None`: the server announces neither (or nothing at all).
pub fn preferred_auth_method(supported: &[String]) -> Option<AuthMethod> {
    if supported.iter().any(|m| m == "client_secret_basic") {
        Some(AuthMethod::ClientSecretBasic)
    } else if supported.iter().any(|m| m == "client_secret_post") {
        Some(AuthMethod::ClientSecretPost)
    } else {
        None
    }
}

/// The `grant_types_supported` value naming a grant.
pub fn grant_type_name(grant: crate::api::pb::Grant) -> &'static str {
    match grant {
        crate::api::pb::Grant::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
        crate::api::pb::Grant::ClientCredentials => "client_credentials",
        _ => "authorization_code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8414 §3.1 inserts the well-known segment before the path; OpenID appends it.
    #[test]
    fn well_known_urls() {
        let urls = |issuer: &str| metadata_urls(&Url::parse(issuer).unwrap());
        assert_eq!(
            urls("https://login.example.com"),
            [
                "https://login.example.com/.well-known/oauth-authorization-server",
                "https://login.example.com/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            urls("https://example.com:8443/realms/ops/"),
            [
                "https://example.com:8443/.well-known/oauth-authorization-server/realms/ops",
                "https://example.com:8443/realms/ops/.well-known/openid-configuration"
            ]
        );
    }

    /// Issuers are https (http on loopback) without query or fragment.
    #[test]
    fn issuer_rules() {
        assert!(parse_issuer("https://idp.example.com/t1", false).is_ok());
        assert!(parse_issuer("http://127.0.0.1:9000", false).is_ok());
        for bad in ["http://idp.example.com", "https://idp.example.com/?tenant=1", "https://idp.example.com/#x", "idp"]
        {
            assert!(parse_issuer(bad, false).is_err(), "{bad}");
        }
    }

    /// A document must name the configured issuer exactly, have a token endpoint, and keep to
    /// the endpoint rules; errors never quote the document.
    #[test]
    fn document_checks() {
        let url = "https://idp.example.com/.well-known/openid-configuration";
        let ok = br#"{"issuer":"https://idp.example.com","token_endpoint":"https://idp.example.com/token",
            "authorization_endpoint":"https://idp.example.com/auth","grant_types_supported":["authorization_code"],
            "token_endpoint_auth_methods_supported":["client_secret_post","private_key_jwt"],"extra":{"x":1}}"#;
        let found = validate("https://idp.example.com", url, ok, false).unwrap();
        assert_eq!(found.token_endpoint, "https://idp.example.com/token");
        assert_eq!(found.revocation_endpoint, "");
        assert_eq!(
            preferred_auth_method(&found.token_endpoint_auth_methods_supported),
            Some(AuthMethod::ClientSecretPost)
        );

        let trailing = validate("https://idp.example.com/", url, ok, false).unwrap_err();
        assert!(matches!(trailing, DiscoveryError::IssuerMismatch { .. }), "{trailing}");
        let other = br#"{"issuer":"https://evil.example","token_endpoint":"https://evil.example/token"}"#;
        assert!(validate("https://idp.example.com", url, other, false).unwrap_err().to_string().contains("RFC 8414"));
        let no_token = br#"{"issuer":"https://idp.example.com"}"#;
        assert!(
            validate("https://idp.example.com", url, no_token, false)
                .unwrap_err()
                .to_string()
                .contains("token_endpoint")
        );
        let plain = br#"{"issuer":"https://idp.example.com","token_endpoint":"http://idp.example.com/token"}"#;
        assert!(validate("https://idp.example.com", url, plain, false).unwrap_err().to_string().contains("https"));
        let typed = br#"{"issuer":"https://idp.example.com","token_endpoint":"https://x/t","grant_types_supported":"secret-ish"}"#;
        let err = validate("https://idp.example.com", url, typed, false).unwrap_err().to_string();
        assert!(err.contains("wrong type") && !err.contains("secret-ish"), "{err}");
        assert!(validate("https://idp.example.com", url, b"<html>", false).is_err());
    }
}
