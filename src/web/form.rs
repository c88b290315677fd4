//! The profile form (new and edit) read back into the API's `Profile` message, so creating or
//! editing here goes through exactly the validation `CreateProfile` and `UpdateProfile` apply.
//! An edit names the fields the form has in its update mask: what the form does not show
//! (extra authorization parameters, refresh policy overrides) is left as it is.

use prost_types::FieldMask;
use serde::Deserialize;

use crate::api::pb;
use crate::store::ProfileRecord;

/// The form's fields, as posted (and as shown again after a validation error). The client
/// secret is never filled in from the store: blank keeps the stored one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProfileForm {
    /// The session's CSRF token.
    pub csrf: String,
    /// Profile name (new profiles only).
    pub name: String,
    /// Description.
    pub description: String,
    /// Preset id.
    pub provider: String,
    /// `authorization_code`, `device_code` or `client_credentials`.
    pub grant: String,
    /// Client id.
    pub client_id: String,
    /// Client secret (write-only).
    pub client_secret: String,
    /// Scopes, separated by spaces.
    pub scopes: String,
    /// Own endpoints (blank: the preset's or the issuer's).
    pub authorization_endpoint: String,
    /// Token endpoint.
    pub token_endpoint: String,
    /// Revocation endpoint.
    pub revocation_endpoint: String,
    /// Device authorization endpoint.
    pub device_authorization_endpoint: String,
    /// Issuer whose metadata fills in endpoints.
    pub issuer: String,
    /// Redirect URI (blank: tokend's callback).
    pub redirect_uri: String,
    /// `` (automatic), `client_secret_basic`, `client_secret_post` or `none`.
    pub token_endpoint_auth_method: String,
    /// The `tenant` provider option (Microsoft).
    pub tenant: String,
}

/// The writable profile fields this form does not show: an edit leaves them as they are.
const NOT_ON_FORM: &[&str] = &["extra_authorization_params", "refresh_policy"];

/// The grant choices: form value, label.
pub const GRANTS: &[(&str, &str)] = &[
    ("authorization_code", "Authorization code (browser consent)"),
    ("device_code", "Device grant (code typed on another device)"),
    ("client_credentials", "Client credentials (no person)"),
];

/// The token endpoint authentication choices: form value, label.
pub const AUTH_METHODS: &[(&str, &str)] = &[
    ("", "Automatic (issuer or preset)"),
    ("client_secret_basic", "client_secret_basic"),
    ("client_secret_post", "client_secret_post"),
    ("none", "none (public client)"),
];

impl ProfileForm {
    /// The form for a stored profile: its own values (not the preset's or the issuer's, which
    /// would then be stored as its own), never its secret.
    pub fn of_record(record: &ProfileRecord) -> Self {
        let grant = match pb::Grant::try_from(record.grant) {
            Ok(pb::Grant::DeviceCode) => "device_code",
            Ok(pb::Grant::ClientCredentials) => "client_credentials",
            _ => "authorization_code",
        };
        let auth = match pb::TokenEndpointAuthMethod::try_from(record.token_endpoint_auth_method) {
            Ok(pb::TokenEndpointAuthMethod::ClientSecretBasic) => "client_secret_basic",
            Ok(pb::TokenEndpointAuthMethod::ClientSecretPost) => "client_secret_post",
            Ok(pb::TokenEndpointAuthMethod::None) => "none",
            _ => "",
        };
        Self {
            csrf: String::new(),
            name: record.name.clone(),
            description: record.description.clone(),
            provider: record.provider.clone(),
            grant: grant.to_owned(),
            client_id: record.client_id.clone(),
            client_secret: String::new(),
            scopes: record.scopes.join(" "),
            authorization_endpoint: record.authorization_endpoint.clone(),
            token_endpoint: record.token_endpoint.clone(),
            revocation_endpoint: record.revocation_endpoint.clone(),
            device_authorization_endpoint: record.device_authorization_endpoint.clone(),
            issuer: record.issuer.clone(),
            redirect_uri: record.redirect_uri.clone(),
            token_endpoint_auth_method: auth.to_owned(),
            tenant: record.provider_options.get("tenant").cloned().unwrap_or_default(),
        }
    }

    /// A blank form for a new profile.
    pub fn blank() -> Self {
        Self { provider: "custom".into(), grant: "authorization_code".into(), ..Self::default() }
    }

    /// The `Profile` message the form stands for. An unknown choice becomes an out-of-range
    /// value, which validation refuses naming the field.
    pub fn to_profile(&self, name: &str) -> pb::Profile {
        let grant = match self.grant.as_str() {
            "authorization_code" => pb::Grant::AuthorizationCode as i32,
            "device_code" => pb::Grant::DeviceCode as i32,
            "client_credentials" => pb::Grant::ClientCredentials as i32,
            _ => -1,
        };
        let auth = match self.token_endpoint_auth_method.as_str() {
            "" => pb::TokenEndpointAuthMethod::Unspecified as i32,
            "client_secret_basic" => pb::TokenEndpointAuthMethod::ClientSecretBasic as i32,
            "client_secret_post" => pb::TokenEndpointAuthMethod::ClientSecretPost as i32,
            "none" => pb::TokenEndpointAuthMethod::None as i32,
            _ => -1,
        };
        let mut provider_options = std::collections::HashMap::new();
        if !self.tenant.trim().is_empty() {
            provider_options.insert("tenant".to_owned(), self.tenant.trim().to_owned());
        }
        pb::Profile {
            name: name.to_owned(),
            description: self.description.trim().to_owned(),
            provider: self.provider.trim().to_owned(),
            grant,
            client_id: self.client_id.trim().to_owned(),
            client_secret: self.client_secret.clone(),
            scopes: self.scopes.split_whitespace().map(str::to_owned).collect(),
            authorization_endpoint: self.authorization_endpoint.trim().to_owned(),
            token_endpoint: self.token_endpoint.trim().to_owned(),
            revocation_endpoint: self.revocation_endpoint.trim().to_owned(),
            device_authorization_endpoint: self.device_authorization_endpoint.trim().to_owned(),
            issuer: self.issuer.trim().to_owned(),
            redirect_uri: self.redirect_uri.trim().to_owned(),
            token_endpoint_auth_method: auth,
            provider_options,
            ..Default::default()
        }
    }

    /// The `Profile` message of an edit: [`Self::to_profile`], keeping the stored provider
    /// options this form does not show (it shows `tenant` only; the update replaces the map).
    pub fn to_update(&self, name: &str, stored_options: &std::collections::BTreeMap<String, String>) -> pb::Profile {
        let mut profile = self.to_profile(name);
        for (key, value) in stored_options.iter().filter(|(key, _)| key.as_str() != "tenant") {
            profile.provider_options.entry(key.clone()).or_insert_with(|| value.clone());
        }
        profile
    }

    /// The update mask of an edit: the fields this form shows.
    pub fn mask() -> FieldMask {
        let shown = crate::profile::WRITABLE.iter().filter(|path| !NOT_ON_FORM.contains(path));
        FieldMask { paths: shown.map(|path| (*path).to_owned()).collect() }
    }

    /// The form without what must never be shown again (the secret typed).
    pub fn redisplay(mut self) -> Self {
        self.client_secret.clear();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An edit's mask names exactly the fields the form shows: every writable field but the
    /// extra authorization parameters and the refresh policy, which an edit leaves alone.
    #[test]
    fn edit_mask_is_the_fields_on_the_form() {
        let mut paths = ProfileForm::mask().paths;
        paths.sort();
        let mut expected = vec![
            "authorization_endpoint",
            "client_id",
            "client_secret",
            "description",
            "device_authorization_endpoint",
            "grant",
            "issuer",
            "provider",
            "provider_options",
            "redirect_uri",
            "revocation_endpoint",
            "scopes",
            "token_endpoint",
            "token_endpoint_auth_method",
        ];
        expected.sort_unstable();
        assert_eq!(paths, expected);
    }

    /// A form reads back into the message the gRPC API takes; a stored profile's form has no
    /// secret.
    #[test]
    fn round_trip() {
        let form = ProfileForm {
            grant: "device_code".into(),
            scopes: " a  b ".into(),
            client_secret: "s".into(),
            provider: "google".into(),
            ..ProfileForm::blank()
        };
        let p = form.to_profile("x");
        assert_eq!(p.grant, pb::Grant::DeviceCode as i32);
        assert_eq!(p.scopes, vec!["a", "b"]);
        assert_eq!(p.client_secret, "s");
        let record = ProfileRecord { name: "x".into(), client_secret_sealed: vec![1, 2], ..Default::default() };
        assert!(ProfileForm::of_record(&record).client_secret.is_empty());
        assert!(form.redisplay().client_secret.is_empty());
        // An edit keeps the options the form does not show, and takes `tenant` from the form.
        let stored = [("tenant".to_owned(), "old".to_owned()), ("other".to_owned(), "kept".to_owned())].into();
        let edit = ProfileForm { tenant: "new".into(), ..ProfileForm::blank() }.to_update("x", &stored);
        assert_eq!(edit.provider_options.get("other").map(String::as_str), Some("kept"));
        assert_eq!(edit.provider_options.get("tenant").map(String::as_str), Some("new"));
        let cleared = ProfileForm::blank().to_update("x", &stored);
        assert!(!cleared.provider_options.contains_key("tenant"), "a tenant emptied in the form is removed");
        let bad = ProfileForm { grant: "nope".into(), ..ProfileForm::blank() };
        assert!(pb::Grant::try_from(bad.to_profile("x").grant).is_err());
    }
}
