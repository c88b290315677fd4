//! Provider presets: endpoints, default scopes, extra authorization parameters and token-reply
//! rules for the providers our users connect to. Every field a preset fills stays overridable
//! on the profile; `custom` fills nothing.

use std::time::Duration;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// HTTP Basic with the client id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// Public client: `client_id` in the body, no secret.
    None,
}

/// What a preset knows about a provider.
#[derive(Debug, Clone)]
pub struct Preset {
    /// The id admins name in `provider`.
    pub id: &'static str,
    /// Authorization endpoint; `{tenant}` is replaced by the `tenant` provider option.
    pub authorization_endpoint: &'static str,
    /// Token endpoint; `{tenant}` as above.
    pub token_endpoint: &'static str,
    /// RFC 7009 revocation endpoint, where the provider has one.
    pub revocation_endpoint: &'static str,
    /// RFC 8628 device authorization endpoint, where the provider has one.
    pub device_authorization_endpoint: &'static str,
    /// Scopes added when the profile names none.
    pub default_scopes: &'static [&'static str],
    /// Query parameters the authorization URL needs (e.g. to get a refresh token at all).
    pub extra_authorization_params: &'static [(&'static str, &'static str)],
    /// Token endpoint authentication.
    pub auth_method: AuthMethod,
    /// Access-token lifetime assumed when a reply has no `expires_in`.
    pub default_lifetime: Duration,
    /// How long a refresh token survives unused, where the provider documents it.
    pub max_idle: Option<Duration>,
    /// Default for the `tenant` option.
    pub default_tenant: &'static str,
}

const HOUR: Duration = Duration::from_secs(3600);

const CUSTOM: Preset = Preset {
    id: "custom",
    authorization_endpoint: "",
    token_endpoint: "",
    revocation_endpoint: "",
    device_authorization_endpoint: "",
    default_scopes: &[],
    extra_authorization_params: &[],
    auth_method: AuthMethod::ClientSecretBasic,
    default_lifetime: HOUR,
    max_idle: None,
    default_tenant: "",
};

/// Every preset, `custom` first.
pub const PRESETS: &[Preset] = &[
    CUSTOM,
    // Box: single-use refresh tokens (each refresh returns a new pair), 60 days unused.
    Preset {
        id: "box",
        authorization_endpoint: "https://account.box.com/api/oauth2/authorize",
        token_endpoint: "https://api.box.com/oauth2/token",
        revocation_endpoint: "https://api.box.com/oauth2/revoke",
        auth_method: AuthMethod::ClientSecretPost,
        max_idle: Some(Duration::from_secs(60 * 24 * 3600)),
        ..CUSTOM
    },
    // Google: a refresh token only with access_type=offline and prompt=consent.
    Preset {
        id: "google",
        authorization_endpoint: "https://accounts.google.com/o/oauth2/v2/auth",
        token_endpoint: "https://oauth2.googleapis.com/token",
        revocation_endpoint: "https://oauth2.googleapis.com/revoke",
        device_authorization_endpoint: "https://oauth2.googleapis.com/device/code",
        extra_authorization_params: &[("access_type", "offline"), ("prompt", "consent")],
        auth_method: AuthMethod::ClientSecretPost,
        max_idle: Some(Duration::from_secs(180 * 24 * 3600)),
        ..CUSTOM
    },
    // Microsoft Entra ID: offline_access for a refresh token; no RFC 7009 endpoint.
    Preset {
        id: "microsoft",
        authorization_endpoint: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        token_endpoint: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        device_authorization_endpoint: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
        default_scopes: &["offline_access"],
        auth_method: AuthMethod::ClientSecretPost,
        max_idle: Some(Duration::from_secs(90 * 24 * 3600)),
        default_tenant: "common",
        ..CUSTOM
    },
    // Salesforce: no expires_in in token replies; the session lifetime defaults to 2 h.
    Preset {
        id: "salesforce",
        authorization_endpoint: "https://login.salesforce.com/services/oauth2/authorize",
        token_endpoint: "https://login.salesforce.com/services/oauth2/token",
        revocation_endpoint: "https://login.salesforce.com/services/oauth2/revoke",
        auth_method: AuthMethod::ClientSecretPost,
        default_lifetime: Duration::from_secs(2 * 3600),
        ..CUSTOM
    },
    // GitHub App user tokens: 8 h access tokens, single-use refresh tokens.
    Preset {
        id: "github",
        authorization_endpoint: "https://github.com/login/oauth/authorize",
        token_endpoint: "https://github.com/login/oauth/access_token",
        device_authorization_endpoint: "https://github.com/login/device/code",
        auth_method: AuthMethod::ClientSecretPost,
        default_lifetime: Duration::from_secs(8 * 3600),
        ..CUSTOM
    },
    // Dropbox: token_access_type=offline for a refresh token; about 4 h access tokens.
    Preset {
        id: "dropbox",
        authorization_endpoint: "https://www.dropbox.com/oauth2/authorize",
        token_endpoint: "https://api.dropboxapi.com/oauth2/token",
        extra_authorization_params: &[("token_access_type", "offline")],
        auth_method: AuthMethod::ClientSecretPost,
        default_lifetime: Duration::from_secs(4 * 3600),
        ..CUSTOM
    },
];

/// The preset with this id.
pub fn preset(id: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.id == id)
}

/// The ids of every preset, for error messages.
pub fn preset_ids() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.id).collect()
}

/// Google ends the refresh tokens of apps in "Testing" publishing status 7 days after consent.
const GOOGLE_TESTING_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far from those 7 days an `invalid_grant` still points at it.
const GOOGLE_TESTING_TOLERANCE: Duration = Duration::from_secs(24 * 3600);

/// What a preset knows about why a refresh token died (`invalid_grant`), given how long after
/// the consent it happened; `None` when nothing specific is known.
pub fn invalid_grant_hint(provider: &str, since_consent: Duration) -> Option<String> {
    let lower = GOOGLE_TESTING_LIFETIME - GOOGLE_TESTING_TOLERANCE;
    let upper = GOOGLE_TESTING_LIFETIME + GOOGLE_TESTING_TOLERANCE;
    if provider == "google" && (lower..=upper).contains(&since_consent) {
        let hours = since_consent.as_secs() / 3600;
        return Some(format!(
            "this came {} d {} h after the consent: the Google app is probably in \"Testing\" publishing status, \
             whose refresh tokens expire after 7 days; publish the app (Google Auth Platform > Audience) or \
             Connect again every week",
            hours / 24,
            hours % 24
        ));
    }
    None
}

/// A preset endpoint with the tenant filled in.
pub fn fill_tenant(template: &str, tenant: &str) -> String {
    template.replace("{tenant}", tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Google "Testing" hint applies 6 to 8 days after consent, to Google only.
    #[test]
    fn google_testing_hint() {
        let days = |d: u64| Duration::from_secs(d * 86_400);
        assert!(invalid_grant_hint("google", days(7)).is_some_and(|h| h.contains("Testing") && h.contains("7 d 0 h")));
        assert!(invalid_grant_hint("google", days(6)).is_some());
        assert!(invalid_grant_hint("google", days(8)).is_some());
        assert!(invalid_grant_hint("google", days(5)).is_none());
        assert!(invalid_grant_hint("google", days(9)).is_none());
        assert!(invalid_grant_hint("box", days(7)).is_none());
    }
}
