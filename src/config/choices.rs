//! Settings with a fixed set of values, as enums that serde reads: a value outside the set is
//! refused while the configuration is read, with the key and the accepted values
//! ([`super::ConfigError::UnknownValue`]), instead of being checked against a list of strings
//! later. Values are spelled in `snake_case`, in the file, the environment, `check-config`
//! output and flags alike.

use std::fmt;
use std::str::FromStr;

use serde::de::{DeserializeOwned, IntoDeserializer as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::api::pb;

/// How log lines are written (`log.format`, `--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum LogFormat {
    /// Text on a terminal, JSON lines otherwise (systemd, Kubernetes).
    #[default]
    Auto,
    /// Human-readable text.
    Text,
    /// JSON lines.
    Json,
}

/// Where profiles and tokens are kept (`store.backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// The embedded store in `<data_dir>/store`: zero configuration, one process.
    #[default]
    Sled,
    /// A PostgreSQL database (`store.postgres`), shared by several replicas.
    Postgres,
}

/// What a caller may do (`callers[].role`, `tokend mint-token --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Role {
    /// Everything, tokens included.
    Admin,
    /// Read the profile table; never a token.
    Viewer,
    /// Tokens for the profiles its patterns allow; nothing else.
    Consumer,
}

/// The OAuth grant of a declared profile (`profiles[].grant`, `tokenctl create --grant`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Grant {
    /// Browser consent with PKCE; the default.
    #[default]
    AuthorizationCode,
    /// RFC 8628: a code typed on another device.
    DeviceCode,
    /// No person involved; the client's own credentials.
    ClientCredentials,
}

/// How a declared profile's client authenticates at the token endpoint
/// (`profiles[].token_endpoint_auth_method`, `tokenctl create --auth-method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with the client id and secret.
    ClientSecretBasic,
    /// Client id and secret in the form body.
    ClientSecretPost,
    /// A public client: client id in the body, no secret.
    None,
}

impl From<Grant> for pb::Grant {
    fn from(grant: Grant) -> Self {
        match grant {
            Grant::AuthorizationCode => Self::AuthorizationCode,
            Grant::DeviceCode => Self::DeviceCode,
            Grant::ClientCredentials => Self::ClientCredentials,
        }
    }
}

impl From<AuthMethod> for pb::TokenEndpointAuthMethod {
    fn from(method: AuthMethod) -> Self {
        match method {
            AuthMethod::ClientSecretBasic => Self::ClientSecretBasic,
            AuthMethod::ClientSecretPost => Self::ClientSecretPost,
            AuthMethod::None => Self::None,
        }
    }
}

/// A value that is not one of a setting's values; the message lists the accepted ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownChoice(String);

/// `Display` and `FromStr` from the serde spelling, so flags, messages and the file agree.
macro_rules! spelled_by_serde {
    ($($choice:ty),*) => {$(
        impl fmt::Display for $choice {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&spelling(self))
            }
        }

        impl FromStr for $choice {
            type Err = UnknownChoice;

            fn from_str(text: &str) -> Result<Self, UnknownChoice> {
                parse(text)
            }
        }
    )*};
}

spelled_by_serde!(LogFormat, Role, Grant, AuthMethod);

/// The value as serde writes it.
fn spelling<T: Serialize>(choice: &T) -> String {
    match serde_json::to_value(choice) {
        Ok(serde_json::Value::String(text)) => text,
        // Unit variants always serialize as strings; anything else is a bug in this module.
        other => format!("{other:?}"),
    }
}

fn parse<T: DeserializeOwned>(text: &str) -> Result<T, UnknownChoice> {
    T::deserialize(text.into_deserializer()).map_err(|e: serde::de::value::Error| UnknownChoice(e.to_string()))
}

/// Serde helpers for an optional choice written as `""` when unset, as the file format has
/// always had it: `check-config` prints `grant = ""`, and a file with `grant = ""` stays valid.
pub(super) mod empty_is_unset {
    use super::*;

    /// `None` as `""`.
    pub(crate) fn serialize<T: Serialize, S: Serializer>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(choice) => choice.serialize(serializer),
            None => serializer.serialize_str(""),
        }
    }

    /// `""` as `None`; any other value must be one of `T`'s, else the error names the accepted
    /// values (and, through figment, the key).
    pub(crate) fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() {
            return Ok(None);
        }
        T::deserialize(text.as_str().into_deserializer()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    /// Flags, messages and the file spell every value the same way.
    #[test]
    fn spellings_agree() {
        for format in LogFormat::value_variants() {
            let flag = format.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(flag.as_deref(), Some(format.to_string().as_str()));
            assert_eq!(format.to_string().parse::<LogFormat>().as_ref(), Ok(format));
        }
        for role in Role::value_variants() {
            let flag = role.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(flag.as_deref(), Some(role.to_string().as_str()));
            assert_eq!(role.to_string().parse::<Role>().as_ref(), Ok(role));
        }
        for grant in Grant::value_variants() {
            let flag = grant.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(flag.as_deref(), Some(grant.to_string().as_str()));
        }
        for method in AuthMethod::value_variants() {
            let flag = method.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(flag.as_deref(), Some(method.to_string().as_str()));
        }
        assert_eq!(Grant::ClientCredentials.to_string(), "client_credentials");
        assert_eq!(AuthMethod::ClientSecretPost.to_string(), "client_secret_post");
        assert_eq!(AuthMethod::None.to_string(), "none");
    }

    /// Each value maps to the API value of the same name.
    #[test]
    fn api_values_match() {
        for grant in Grant::value_variants() {
            assert_eq!(pb::Grant::from(*grant).as_str_name(), format!("GRANT_{}", grant.to_string().to_uppercase()));
        }
        for method in AuthMethod::value_variants() {
            let name = format!("TOKEN_ENDPOINT_AUTH_METHOD_{}", method.to_string().to_uppercase());
            assert_eq!(pb::TokenEndpointAuthMethod::from(*method).as_str_name(), name);
        }
    }

    /// An unknown value lists the accepted ones.
    #[test]
    fn unknown_values_list_the_choices() {
        let err = "yaml".parse::<LogFormat>().unwrap_err().to_string();
        assert!(err.contains("yaml") && err.contains("auto") && err.contains("json"), "{err}");
        let err = "root".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("admin") && err.contains("viewer") && err.contains("consumer"), "{err}");
    }
}
