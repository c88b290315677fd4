//! Token replies as providers really send them. oauth2's standard response rejects
//! `"expires_in": "3600"` (Microsoft v1, SAP) and requires `token_type`; this one accepts both,
//! clamps absurd lifetimes, and keeps the extra fields worth keeping.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use oauth2::basic::BasicTokenType;
use oauth2::{AccessToken, RefreshToken, Scope, TokenResponse};
use serde::{Deserialize, Deserializer, Serialize};

/// The longest access-token lifetime believed; anything longer is clamped (and logged by the
/// caller), since a wrong "eternal" lifetime would mean serving a dead token.
pub const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// Extra reply fields kept as non-secret metadata, shown on the profile.
const KEPT_METADATA: &[&str] = &["instance_url", "id", "issued_at", "signature_method", "team_id", "account_id", "uid"];

/// A token endpoint reply, leniently parsed.
#[derive(Clone, Serialize, Deserialize)]
pub struct LenientTokenResponse {
    #[serde(deserialize_with = "non_empty_token")]
    access_token: AccessToken,
    #[serde(default = "bearer", deserialize_with = "token_type_any_case")]
    token_type: BasicTokenType,
    #[serde(default, deserialize_with = "seconds_lenient")]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
    #[serde(default, deserialize_with = "scope_list")]
    scope: Option<Vec<Scope>>,
    #[serde(default, deserialize_with = "seconds_lenient")]
    refresh_token_expires_in: Option<i64>,
    /// OpenID Connect ID token (a JWT); used only to show who consented.
    #[serde(default)]
    id_token: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

impl fmt::Debug for LenientTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LenientTokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// An access token must be a non-blank string; the error never quotes it.
fn non_empty_token<'de, D: Deserializer<'de>>(d: D) -> Result<AccessToken, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Err(serde::de::Error::custom("access_token is empty"));
    }
    Ok(AccessToken::new(text))
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

fn token_type_any_case<'de, D: Deserializer<'de>>(d: D) -> Result<BasicTokenType, D::Error> {
    let text = Option::<String>::deserialize(d)?.unwrap_or_default();
    Ok(match text.to_ascii_lowercase().as_str() {
        "" | "bearer" => BasicTokenType::Bearer,
        "mac" => BasicTokenType::Mac,
        _ => BasicTokenType::Extension(text),
    })
}

/// Seconds as a JSON number (integer or float) or a numeric string; anything else is absent.
fn seconds_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        Some(serde_json::Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok().map(|f| f as i64),
        _ => None,
    })
}

/// A space-delimited scope string (some providers send commas, GitHub among them).
fn scope_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Scope>>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        Some(serde_json::Value::String(s)) => {
            Some(s.split([' ', ',']).filter(|s| !s.is_empty()).map(|s| Scope::new(s.to_owned())).collect())
        }
        Some(serde_json::Value::Array(items)) => {
            Some(items.into_iter().filter_map(|v| v.as_str().map(|s| Scope::new(s.to_owned()))).collect())
        }
        _ => None,
    })
}

impl LenientTokenResponse {
    /// `expires_in` exactly as sent (seconds; may be zero or negative).
    pub fn raw_expires_in(&self) -> Option<i64> {
        self.expires_in
    }

    /// Lifetime of the refresh token, where the provider says it: `refresh_token_expires_in`
    /// (GitHub), else Keycloak's `refresh_expires_in` (0 there means "does not expire").
    pub fn refresh_token_expires_in(&self) -> Option<Duration> {
        let keycloak = || match self.other.get("refresh_expires_in") {
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        self.refresh_token_expires_in
            .or_else(keycloak)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s as u64).min(MAX_LIFETIME * 2))
    }

    /// The OpenID ID token, if any.
    pub fn id_token(&self) -> Option<&str> {
        self.id_token.as_deref()
    }

    /// Non-secret extra fields worth showing (instance URL and the like).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        KEPT_METADATA
            .iter()
            .filter_map(|key| {
                let value = self.other.get(*key)?;
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some(((*key).to_owned(), text))
            })
            .collect()
    }
}

impl TokenResponse for LenientTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }

    /// The lifetime, when usable: zero or negative counts as absent (the profile's default
    /// lifetime applies), and more than [`MAX_LIFETIME`] is clamped.
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.filter(|s| *s > 0).map(|s| Duration::from_secs(s as u64).min(MAX_LIFETIME))
    }

    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref().filter(|t| !t.secret().is_empty())
    }

    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scope.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<LenientTokenResponse, serde_json::Error> {
        serde_json::from_str(body)
    }

    /// One row per quirk providers are known for.
    #[test]
    fn quirks_table() {
        let rows: &[(&str, Option<u64>, &str)] = &[
            (r#"{"access_token":"a","token_type":"Bearer","expires_in":3600}"#, Some(3600), "bearer"),
            (r#"{"access_token":"a","token_type":"bearer","expires_in":"3599"}"#, Some(3599), "microsoft v1 string"),
            (r#"{"access_token":"a","token_type":"BEARER"}"#, None, "salesforce: no expires_in"),
            (r#"{"access_token":"a"}"#, None, "no token_type"),
            (r#"{"access_token":"a","expires_in":0}"#, None, "zero lifetime"),
            (r#"{"access_token":"a","expires_in":-5}"#, None, "negative lifetime"),
            (r#"{"access_token":"a","expires_in":999999999}"#, Some(MAX_LIFETIME.as_secs()), "absurd lifetime"),
            (r#"{"access_token":"a","expires_in":3600.0}"#, Some(3600), "float"),
            (r#"{"access_token":"a","expires_in":null}"#, None, "null"),
            (r#"{"access_token":"a","expires_in":"soon"}"#, None, "garbage string"),
        ];
        for (body, expect, what) in rows {
            let reply = parse(body).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(reply.expires_in().map(|d| d.as_secs()), *expect, "{what}");
            assert_eq!(*reply.token_type(), BasicTokenType::Bearer, "{what}");
        }
    }

    /// Scopes, refresh-token lifetimes and metadata are kept; secrets never show in Debug.
    #[test]
    fn extra_fields() {
        let reply = parse(
            r#"{"access_token":"at-secret","refresh_token":"rt-secret","scope":"a b,c",
                "refresh_token_expires_in":"15897600","instance_url":"https://eu.my.salesforce.com",
                "id_token":"x.y.z","unknown":{"nested":true}}"#,
        )
        .unwrap();
        let scopes: Vec<_> = reply.scopes().unwrap().iter().map(|s| s.to_string()).collect();
        assert_eq!(scopes, ["a", "b", "c"]);
        assert_eq!(reply.refresh_token_expires_in(), Some(Duration::from_secs(15_897_600)));
        let keycloak = parse(r#"{"access_token":"a","refresh_token":"r","refresh_expires_in":1800}"#).unwrap();
        assert_eq!(keycloak.refresh_token_expires_in(), Some(Duration::from_secs(1800)));
        let offline = parse(r#"{"access_token":"a","refresh_token":"r","refresh_expires_in":0}"#).unwrap();
        assert_eq!(offline.refresh_token_expires_in(), None, "Keycloak offline tokens do not expire");
        assert_eq!(reply.metadata().get("instance_url").map(String::as_str), Some("https://eu.my.salesforce.com"));
        assert_eq!(reply.id_token(), Some("x.y.z"));
        let debug = format!("{reply:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }

    /// Replies without a usable access token are rejected; an empty refresh token counts as none.
    #[test]
    fn unusable_replies() {
        assert!(parse(r#"{"error":"invalid_grant"}"#).is_err());
        assert!(parse(r#"{"access_token":42}"#).is_err());
        assert!(parse(r#"{"access_token":""}"#).is_err());
        assert!(parse(r#"{"access_token":"  "}"#).is_err());
        assert!(parse("<html>").is_err());
        let reply = parse(r#"{"access_token":"a","refresh_token":""}"#).unwrap();
        assert!(reply.refresh_token().is_none());
    }
}
