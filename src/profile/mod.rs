//! Profiles as the API shows them and as the store keeps them: validation of admin input,
//! conversions both ways, and resolution of the provider settings a profile stands for (the
//! profile's own values, else its issuer's discovered metadata, else its preset).

mod destinations;
mod discovered;
mod view;

use std::collections::BTreeMap;
use std::time::Duration;

use prost_types::{FieldMask, Timestamp};
use secrecy::SecretString;

use crate::api::pb;
use crate::clock::UnixMillis;
use crate::crypto::{KeyRing, Purpose};
use crate::provider::{AuthMethod, Preset, ProviderSettings, fill_tenant, parse_endpoint, preset, preset_ids};
use crate::store::{DiscoveredRecord, ProfileRecord, RefreshPolicyRecord};

pub use destinations::{HeldTokens, check_redirect};
pub use discovered::{names_issuer, to_record as discovered_record, wants_discovery};
pub use view::{action, human_span, status_label, to_api};

/// Longest description, scope list entry, or other free text accepted.
const MAX_TEXT: usize = 1024;
/// Most scopes or extra parameters accepted.
const MAX_ITEMS: usize = 64;

/// Bad admin input: the field and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.to_owned(), message: message.into() }
}

/// Checks a profile name against `^[a-z0-9][a-z0-9._-]{0,62}$`.
pub fn validate_name(name: &str) -> Result<(), FieldError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(field_error("name", "must match ^[a-z0-9][a-z0-9._-]{0,62}$")) }
}

/// Milliseconds to a protobuf timestamp; zero (unset) gives `None`.
pub fn timestamp(ms: UnixMillis) -> Option<Timestamp> {
    (ms > 0).then(|| Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 })
}

/// A protobuf duration to milliseconds; unset or negative gives 0.
pub fn duration_ms(d: Option<&prost_types::Duration>) -> i64 {
    d.map(|d| d.seconds.saturating_mul(1000).saturating_add(i64::from(d.nanos) / 1_000_000)).unwrap_or(0).max(0)
}

fn pb_duration(ms: i64) -> Option<prost_types::Duration> {
    (ms > 0).then(|| prost_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

/// The writable fields of `Profile`, as named in update masks.
pub const WRITABLE: &[&str] = &[
    "description",
    "provider",
    "grant",
    "client_id",
    "client_secret",
    "scopes",
    "authorization_endpoint",
    "token_endpoint",
    "revocation_endpoint",
    "device_authorization_endpoint",
    "redirect_uri",
    "extra_authorization_params",
    "token_endpoint_auth_method",
    "refresh_policy",
    "issuer",
    "provider_options",
];

/// Copies the writable fields named in `mask` (all of them when empty) from `input` onto
/// `record`. An empty client secret leaves the stored one. Returns the new plaintext secret, if
/// one was given, for the caller to seal.
pub fn apply_input(
    record: &mut ProfileRecord,
    input: &pb::Profile,
    mask: Option<&FieldMask>,
) -> Result<Option<SecretString>, FieldError> {
    let paths: Vec<&str> = match mask {
        Some(m) if !m.paths.is_empty() => m.paths.iter().map(String::as_str).collect(),
        _ => WRITABLE.to_vec(),
    };
    let mut secret = None;
    for path in paths {
        match path {
            "description" => record.description = input.description.clone(),
            "provider" => record.provider = input.provider.clone(),
            "grant" => record.grant = input.grant,
            "client_id" => record.client_id = input.client_id.clone(),
            "client_secret" if !input.client_secret.is_empty() => {
                secret = Some(SecretString::from(input.client_secret.clone()));
            }
            "client_secret" => {}
            "scopes" => record.scopes = input.scopes.clone(),
            "authorization_endpoint" => record.authorization_endpoint = input.authorization_endpoint.clone(),
            "token_endpoint" => record.token_endpoint = input.token_endpoint.clone(),
            "revocation_endpoint" => record.revocation_endpoint = input.revocation_endpoint.clone(),
            "device_authorization_endpoint" => {
                record.device_authorization_endpoint = input.device_authorization_endpoint.clone();
            }
            "redirect_uri" => record.redirect_uri = input.redirect_uri.clone(),
            "extra_authorization_params" => {
                record.extra_authorization_params = input.extra_authorization_params.clone().into_iter().collect();
            }
            "token_endpoint_auth_method" => record.token_endpoint_auth_method = input.token_endpoint_auth_method,
            "refresh_policy" => {
                record.refresh_policy = input.refresh_policy.as_ref().map(|p| RefreshPolicyRecord {
                    mode: p.mode,
                    skew_ratio: p.skew_ratio,
                    skew_floor_ms: duration_ms(p.skew_floor.as_ref()),
                    default_lifetime_ms: duration_ms(p.default_lifetime.as_ref()),
                    max_idle_ms: duration_ms(p.max_idle.as_ref()),
                });
            }
            "issuer" => record.issuer = input.issuer.clone(),
            "provider_options" => record.provider_options = input.provider_options.clone().into_iter().collect(),
            other if WRITABLE.contains(&other) => {}
            other => return Err(field_error("update_mask", format!("{other:?} is not a writable field of Profile"))),
        }
    }
    Ok(secret)
}

/// Checks a profile record for the rules the store relies on; endpoint rules are checked
/// against the resolved settings by [`resolve`].
pub fn validate_record(record: &ProfileRecord, allow_insecure_http: bool) -> Result<(), FieldError> {
    validate_name(&record.name)?;
    if record.provider.is_empty() {
        return Err(field_error("provider", format!("required; one of {}", preset_ids().join(", "))));
    }
    if preset(&record.provider).is_none() {
        return Err(field_error(
            "provider",
            format!("unknown preset {:?}; one of {}", record.provider, preset_ids().join(", ")),
        ));
    }
    if record.client_id.trim().is_empty() {
        return Err(field_error("client_id", "required"));
    }
    if pb::Grant::try_from(record.grant).is_err() {
        return Err(field_error("grant", "unknown value"));
    }
    if pb::TokenEndpointAuthMethod::try_from(record.token_endpoint_auth_method).is_err() {
        return Err(field_error("token_endpoint_auth_method", "unknown value"));
    }
    if record.description.len() > MAX_TEXT {
        return Err(field_error("description", format!("longer than {MAX_TEXT} bytes")));
    }
    if record.scopes.len() > MAX_ITEMS || record.scopes.iter().any(|s| s.is_empty() || s.len() > 256 || s.contains(' '))
    {
        return Err(field_error("scopes", "at most 64 scopes, each 1-256 bytes without spaces"));
    }
    if record.extra_authorization_params.len() > MAX_ITEMS {
        return Err(field_error("extra_authorization_params", "at most 64 entries"));
    }
    validate_policy(record)?;
    validate_endpoints(record, allow_insecure_http)?;
    Ok(())
}

/// The refresh policy overrides are in range.
fn validate_policy(record: &ProfileRecord) -> Result<(), FieldError> {
    if let Some(policy) = &record.refresh_policy {
        if policy.skew_ratio.is_some_and(|r| !(0.0..=0.5).contains(&r)) {
            return Err(field_error("refresh_policy.skew_ratio", "must be between 0 and 0.5"));
        }
        if pb::RefreshMode::try_from(policy.mode).is_err() {
            return Err(field_error("refresh_policy.mode", "unknown value"));
        }
    }
    Ok(())
}

/// Every endpoint the profile sets parses (https unless allowed), and a token endpoint is known
/// from the profile, its issuer's metadata or its preset; discovered metadata agrees.
fn validate_endpoints(record: &ProfileRecord, allow_insecure_http: bool) -> Result<(), FieldError> {
    for (field, value) in [
        ("authorization_endpoint", &record.authorization_endpoint),
        ("token_endpoint", &record.token_endpoint),
        ("revocation_endpoint", &record.revocation_endpoint),
        ("device_authorization_endpoint", &record.device_authorization_endpoint),
        ("redirect_uri", &record.redirect_uri),
    ] {
        if !value.is_empty() {
            let insecure = allow_insecure_http || field == "redirect_uri";
            parse_endpoint(field, value, insecure).map_err(|m| FieldError { field: field.into(), message: m })?;
        }
    }
    let preset = preset(&record.provider);
    let discovered = record.discovered.as_ref().is_some_and(|d| !d.token_endpoint.is_empty());
    if record.token_endpoint.is_empty() && !discovered && preset.is_none_or(|p| p.token_endpoint.is_empty()) {
        return Err(field_error(
            "token_endpoint",
            "required for provider \"custom\" (or set issuer to discover the endpoints)",
        ));
    }
    if let Some(found) = &record.discovered {
        discovered::check_against(record, found)?;
    }
    Ok(())
}

/// The grant a profile uses.
pub fn grant(record: &ProfileRecord) -> pb::Grant {
    match pb::Grant::try_from(record.grant) {
        Ok(pb::Grant::Unspecified) | Err(_) => pb::Grant::AuthorizationCode,
        Ok(g) => g,
    }
}

/// The lifetime assumed when a reply has no `expires_in`.
pub fn default_lifetime(record: &ProfileRecord, daemon_default: Duration) -> Duration {
    let profile = record.refresh_policy.as_ref().map(|p| p.default_lifetime_ms).unwrap_or(0);
    if profile > 0 {
        return Duration::from_millis(profile as u64);
    }
    match preset(&record.provider) {
        Some(p) if p.id != "custom" => p.default_lifetime,
        _ => daemon_default,
    }
}

/// The profile's client secret, opened (None: the profile has none).
fn open_client_secret(record: &ProfileRecord, keys: &KeyRing) -> Result<Option<SecretString>, FieldError> {
    if record.client_secret_sealed.is_empty() {
        return Ok(None);
    }
    keys.open_secret(Purpose::ClientSecret, &record.name, &record.client_secret_sealed)
        .map(Some)
        .map_err(|e| field_error("client_secret", format!("stored secret does not open: {e}")))
}

/// How the client authenticates at the token endpoint: as the profile says, else none without a
/// secret, else what the issuer prefers, else the preset's method.
fn auth_method(record: &ProfileRecord, has_secret: bool, found: &DiscoveredRecord, preset: &Preset) -> AuthMethod {
    match pb::TokenEndpointAuthMethod::try_from(record.token_endpoint_auth_method) {
        Ok(pb::TokenEndpointAuthMethod::ClientSecretBasic) => AuthMethod::ClientSecretBasic,
        Ok(pb::TokenEndpointAuthMethod::ClientSecretPost) => AuthMethod::ClientSecretPost,
        Ok(pb::TokenEndpointAuthMethod::None) => AuthMethod::None,
        _ if !has_secret => AuthMethod::None,
        _ => discovered::preferred_auth_method(&found.token_endpoint_auth_methods_supported)
            .unwrap_or(preset.auth_method),
    }
}

/// The scopes to ask for (the profile's, else the preset's) and the extra authorization
/// parameters (the preset's, overridden by the profile's).
fn scopes_and_params(record: &ProfileRecord, preset: &Preset) -> (Vec<String>, BTreeMap<String, String>) {
    let mut scopes = record.scopes.clone();
    if scopes.is_empty() {
        scopes = preset.default_scopes.iter().map(|s| (*s).to_owned()).collect();
    }
    let mut extra: BTreeMap<String, String> =
        preset.extra_authorization_params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    extra.extend(record.extra_authorization_params.clone());
    (scopes, extra)
}

/// Resolves the provider settings of a profile: preset defaults under the profile's own
/// values, the client secret opened, endpoints checked.
pub fn resolve(
    record: &ProfileRecord,
    keys: &KeyRing,
    default_redirect: &str,
    allow_insecure_http: bool,
) -> Result<ProviderSettings, FieldError> {
    let preset = preset(&record.provider).ok_or_else(|| field_error("provider", "unknown preset"))?;
    let tenant = record.provider_options.get("tenant").map(String::as_str).unwrap_or(preset.default_tenant);
    let found = record.discovered.clone().unwrap_or_default();
    // The profile's own value, else the issuer's metadata, else the preset.
    let pick = |own: &str, discovered: &str, preset_value: &str| match (own, discovered) {
        ("", "") => fill_tenant(preset_value, tenant),
        ("", discovered) => discovered.to_owned(),
        (own, _) => own.to_owned(),
    };
    let endpoint = |field: &str, value: String, insecure: bool| -> Result<Option<url::Url>, FieldError> {
        if value.is_empty() {
            return Ok(None);
        }
        parse_endpoint(field, &value, insecure).map(Some).map_err(|m| FieldError { field: field.into(), message: m })
    };
    let token_endpoint = endpoint(
        "token_endpoint",
        pick(&record.token_endpoint, &found.token_endpoint, preset.token_endpoint),
        allow_insecure_http,
    )?
    .ok_or_else(|| field_error("token_endpoint", "required"))?;
    let client_secret = open_client_secret(record, keys)?;
    let auth_method = auth_method(record, client_secret.is_some(), &found, preset);
    let (scopes, extra) = scopes_and_params(record, preset);
    let redirect = if record.redirect_uri.is_empty() { default_redirect } else { &record.redirect_uri };
    Ok(ProviderSettings {
        client_id: record.client_id.clone(),
        client_secret,
        auth_method,
        authorization_endpoint: endpoint(
            "authorization_endpoint",
            pick(&record.authorization_endpoint, &found.authorization_endpoint, preset.authorization_endpoint),
            true,
        )?,
        token_endpoint,
        revocation_endpoint: endpoint(
            "revocation_endpoint",
            pick(&record.revocation_endpoint, &found.revocation_endpoint, preset.revocation_endpoint),
            allow_insecure_http,
        )?,
        device_authorization_endpoint: endpoint(
            "device_authorization_endpoint",
            pick(
                &record.device_authorization_endpoint,
                &found.device_authorization_endpoint,
                preset.device_authorization_endpoint,
            ),
            allow_insecure_http,
        )?,
        userinfo_endpoint: endpoint("userinfo_endpoint", found.userinfo_endpoint.clone(), allow_insecure_http)?,
        scopes,
        extra_authorization_params: extra,
        redirect_uri: endpoint("redirect_uri", redirect.to_owned(), true)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names follow the documented pattern exactly.
    #[test]
    fn names() {
        for ok in ["a", "box-ops", "mail.in_1", "0", &"a".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a b", "a/b", &"a".repeat(64), "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    /// An update mask touches only the named fields; an empty secret keeps the stored one.
    #[test]
    fn update_mask() {
        let mut record = ProfileRecord { description: "old".into(), client_id: "id".into(), ..Default::default() };
        let input = pb::Profile { description: "new".into(), client_id: "other".into(), ..Default::default() };
        let mask = FieldMask { paths: vec!["description".into(), "client_secret".into()] };
        let secret = apply_input(&mut record, &input, Some(&mask)).unwrap();
        assert!(secret.is_none());
        assert_eq!((record.description.as_str(), record.client_id.as_str()), ("new", "id"));
        let bad = FieldMask { paths: vec!["status".into()] };
        assert_eq!(apply_input(&mut record, &input, Some(&bad)).unwrap_err().field, "update_mask");
    }

    /// Presets fill endpoints; custom profiles need their own token endpoint.
    #[test]
    fn presets_fill_endpoints() {
        let keys = KeyRing::single(&[1; 32]);
        let record = ProfileRecord {
            name: "ms".into(),
            provider: "microsoft".into(),
            client_id: "c".into(),
            provider_options: [("tenant".to_owned(), "contoso".to_owned())].into(),
            ..Default::default()
        };
        validate_record(&record, false).unwrap();
        let settings = resolve(&record, &keys, "http://127.0.0.1:8085/oauth/callback", false).unwrap();
        assert_eq!(settings.token_endpoint.as_str(), "https://login.microsoftonline.com/contoso/oauth2/v2.0/token");
        assert_eq!(settings.scopes, ["offline_access"]);
        let custom = ProfileRecord { provider: "custom".into(), ..record };
        assert_eq!(validate_record(&custom, false).unwrap_err().field, "token_endpoint");
    }
}
