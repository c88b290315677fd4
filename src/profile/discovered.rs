//! A profile's discovered issuer metadata: when to (re)discover it, how it is stored, and how it
//! constrains the profile. Endpoints an admin sets win over discovered ones; discovered ones win
//! over a preset's.

use prost_types::FieldMask;

use super::{FieldError, field_error, grant};
use crate::api::pb;
use crate::clock::UnixMillis;
use crate::provider::{AuthMethod, Discovered, grant_type_name};
use crate::store::{DiscoveredRecord, ProfileRecord};

/// Whether an update with `mask` names the issuer (an empty mask names every field): admins
/// ask for fresh metadata that way.
pub fn names_issuer(mask: Option<&FieldMask>) -> bool {
    mask.is_none_or(|m| m.paths.is_empty() || m.paths.iter().any(|p| p == "issuer"))
}

/// Whether writing `record` must fetch its issuer's metadata: it names an issuer, and either
/// has no metadata for it yet or the admin `asked` for fresh metadata.
pub fn wants_discovery(record: &ProfileRecord, asked: bool) -> bool {
    if record.issuer.trim().is_empty() {
        return false;
    }
    asked || record.discovered.as_ref().is_none_or(|d| d.issuer != record.issuer.trim())
}

/// The stored form of what discovery found at `now`.
pub fn to_record(found: Discovered, now: UnixMillis) -> DiscoveredRecord {
    DiscoveredRecord {
        issuer: found.issuer,
        metadata_url: found.metadata_url,
        authorization_endpoint: found.authorization_endpoint,
        token_endpoint: found.token_endpoint,
        revocation_endpoint: found.revocation_endpoint,
        device_authorization_endpoint: found.device_authorization_endpoint,
        userinfo_endpoint: found.userinfo_endpoint,
        grant_types_supported: found.grant_types_supported,
        token_endpoint_auth_methods_supported: found.token_endpoint_auth_methods_supported,
        discovered_at_ms: now,
    }
}

/// The auth method to use with a client secret when the profile names none: what the issuer
/// announces (`client_secret_basic` preferred), if anything.
pub(super) fn preferred_auth_method(supported: &[String]) -> Option<AuthMethod> {
    crate::provider::preferred_auth_method(supported)
}

/// Refuses a profile the issuer says it cannot serve: a grant missing from
/// `grant_types_supported`, or no token-endpoint auth method in common when the profile leaves
/// the choice to tokend. Lists the issuer does not announce constrain nothing.
pub(super) fn check_against(record: &ProfileRecord, found: &DiscoveredRecord) -> Result<(), FieldError> {
    let wanted = grant_type_name(grant(record));
    let grants = &found.grant_types_supported;
    if !grants.is_empty() && !grants.iter().any(|g| g == wanted) {
        return Err(field_error(
            "grant",
            format!("the issuer's metadata does not list {wanted} in grant_types_supported ({})", grants.join(", ")),
        ));
    }
    let methods = &found.token_endpoint_auth_methods_supported;
    let unspecified = record.token_endpoint_auth_method == pb::TokenEndpointAuthMethod::Unspecified as i32;
    if methods.is_empty() || !unspecified {
        return Ok(());
    }
    if !record.client_secret_sealed.is_empty() && preferred_auth_method(methods).is_none() {
        return Err(field_error(
            "token_endpoint_auth_method",
            format!(
                "the issuer supports only {}; tokend can use client_secret_basic, client_secret_post or none",
                methods.join(", ")
            ),
        ));
    }
    if record.client_secret_sealed.is_empty() && !methods.iter().any(|m| m == "none") {
        return Err(field_error(
            "client_secret",
            format!("required: the issuer does not accept public clients (it supports {})", methods.join(", ")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(issuer: &str, discovered_for: Option<&str>) -> ProfileRecord {
        ProfileRecord {
            issuer: issuer.into(),
            discovered: discovered_for.map(|i| DiscoveredRecord { issuer: i.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    /// Discovery runs for a new or changed issuer, and when an update names the issuer.
    #[test]
    fn when_to_discover() {
        let only = |paths: &[&str]| FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() };
        assert!(names_issuer(None) && names_issuer(Some(&only(&[]))) && names_issuer(Some(&only(&["issuer"]))));
        assert!(!names_issuer(Some(&only(&["description"]))));
        assert!(!wants_discovery(&record("", None), true));
        assert!(wants_discovery(&record("https://idp", None), false));
        assert!(wants_discovery(&record("https://idp2", Some("https://idp")), false));
        assert!(!wants_discovery(&record("https://idp", Some("https://idp")), false));
        assert!(wants_discovery(&record("https://idp", Some("https://idp")), true));
    }

    /// Announced grants and auth methods constrain the profile; unannounced ones do not.
    #[test]
    fn metadata_constrains() {
        let found = DiscoveredRecord {
            grant_types_supported: vec!["authorization_code".into(), "refresh_token".into()],
            token_endpoint_auth_methods_supported: vec!["private_key_jwt".into()],
            ..Default::default()
        };
        let mut profile = ProfileRecord { client_secret_sealed: vec![1], ..Default::default() };
        assert_eq!(check_against(&profile, &found).unwrap_err().field, "token_endpoint_auth_method");
        profile.token_endpoint_auth_method = pb::TokenEndpointAuthMethod::ClientSecretPost as i32;
        assert!(check_against(&profile, &found).is_ok(), "the admin's explicit choice wins");
        profile.grant = pb::Grant::ClientCredentials as i32;
        assert_eq!(check_against(&profile, &found).unwrap_err().field, "grant");
        assert!(check_against(&profile, &DiscoveredRecord::default()).is_ok());
    }
}
