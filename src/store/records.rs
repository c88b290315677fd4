//! What the store holds, encoded as protobuf messages (prost): field numbers make the format
//! versioned, so a newer binary reads older records and unknown fields are skipped. Secrets are
//! stored sealed (see [`crate::crypto`]); the store never sees a plaintext secret.

use std::collections::BTreeMap;

/// Store-wide schema version, kept in the metadata tree.
pub const SCHEMA_VERSION: u32 = 1;

/// A profile: how to reach the provider. Field meanings follow `tokend.v1.Profile`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProfileRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub description: String,
    #[prost(string, tag = "3")]
    pub provider: String,
    /// `tokend.v1.Grant` value.
    #[prost(int32, tag = "4")]
    pub grant: i32,
    #[prost(string, tag = "5")]
    pub client_id: String,
    /// Sealed client secret; empty when none.
    #[prost(bytes = "vec", tag = "6")]
    pub client_secret_sealed: Vec<u8>,
    #[prost(string, repeated, tag = "7")]
    pub scopes: Vec<String>,
    #[prost(string, tag = "8")]
    pub authorization_endpoint: String,
    #[prost(string, tag = "9")]
    pub token_endpoint: String,
    #[prost(string, tag = "10")]
    pub revocation_endpoint: String,
    #[prost(string, tag = "11")]
    pub device_authorization_endpoint: String,
    #[prost(string, tag = "12")]
    pub redirect_uri: String,
    #[prost(btree_map = "string, string", tag = "13")]
    pub extra_authorization_params: BTreeMap<String, String>,
    /// `tokend.v1.TokenEndpointAuthMethod` value.
    #[prost(int32, tag = "14")]
    pub token_endpoint_auth_method: i32,
    #[prost(message, optional, tag = "15")]
    pub refresh_policy: Option<RefreshPolicyRecord>,
    #[prost(string, tag = "16")]
    pub issuer: String,
    #[prost(btree_map = "string, string", tag = "17")]
    pub provider_options: BTreeMap<String, String>,
    /// Declared in the configuration file.
    #[prost(bool, tag = "18")]
    pub managed: bool,
    #[prost(int64, tag = "19")]
    pub create_time_ms: i64,
    #[prost(int64, tag = "20")]
    pub update_time_ms: i64,
    /// What issuer discovery found (RFC 8414 / OpenID); the profile's own endpoints win.
    #[prost(message, optional, tag = "21")]
    pub discovered: Option<DiscoveredRecord>,
}

/// Authorization server metadata of a profile's issuer, as discovered when the profile was
/// written. Field meanings follow `crate::provider::Discovered`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveredRecord {
    #[prost(string, tag = "1")]
    pub issuer: String,
    #[prost(string, tag = "2")]
    pub metadata_url: String,
    #[prost(string, tag = "3")]
    pub authorization_endpoint: String,
    #[prost(string, tag = "4")]
    pub token_endpoint: String,
    #[prost(string, tag = "5")]
    pub revocation_endpoint: String,
    #[prost(string, tag = "6")]
    pub device_authorization_endpoint: String,
    #[prost(string, tag = "7")]
    pub userinfo_endpoint: String,
    #[prost(string, repeated, tag = "8")]
    pub grant_types_supported: Vec<String>,
    #[prost(string, repeated, tag = "9")]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[prost(int64, tag = "10")]
    pub discovered_at_ms: i64,
}

/// Per-profile refresh policy overrides; zero means "use the daemon's default".
#[derive(Clone, PartialEq, prost::Message)]
pub struct RefreshPolicyRecord {
    /// `tokend.v1.RefreshMode` value.
    #[prost(int32, tag = "1")]
    pub mode: i32,
    #[prost(double, optional, tag = "2")]
    pub skew_ratio: Option<f64>,
    #[prost(int64, tag = "3")]
    pub skew_floor_ms: i64,
    #[prost(int64, tag = "4")]
    pub default_lifetime_ms: i64,
    #[prost(int64, tag = "5")]
    pub max_idle_ms: i64,
}

/// The connection of a profile: its tokens and their state. Times are Unix milliseconds; zero
/// means unset.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectionRecord {
    /// Grows by one with every write; writes are compare-and-swap on it.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// `tokend.v1.Status` value.
    #[prost(int32, tag = "2")]
    pub status: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub access_token_sealed: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub refresh_token_sealed: Vec<u8>,
    #[prost(string, tag = "5")]
    pub token_type: String,
    #[prost(string, repeated, tag = "6")]
    pub scopes: Vec<String>,
    #[prost(int64, tag = "7")]
    pub expires_at_ms: i64,
    #[prost(int64, tag = "8")]
    pub refresh_token_expires_at_ms: i64,
    #[prost(int64, tag = "9")]
    pub last_refreshed_at_ms: i64,
    /// When the refresh engine should refresh; also the key of the refresh index entry.
    #[prost(int64, tag = "10")]
    pub next_refresh_at_ms: i64,
    #[prost(string, tag = "11")]
    pub last_error: String,
    #[prost(uint32, tag = "12")]
    pub consecutive_failures: u32,
    /// Key of the pending consent, if one is open.
    #[prost(bytes = "vec", tag = "13")]
    pub pending_consent: Vec<u8>,
    #[prost(int64, tag = "14")]
    pub connected_at_ms: i64,
    /// Grows with every new access token; lets callers and audits tell tokens apart.
    #[prost(uint64, tag = "15")]
    pub token_version: u64,
    #[prost(string, tag = "16")]
    pub connected_account: String,
    #[prost(btree_map = "string, string", tag = "17")]
    pub token_metadata: BTreeMap<String, String>,
    /// Status before a consent started, restored when it fails or expires.
    #[prost(int32, tag = "18")]
    pub status_before_consent: i32,
    /// No refresh can renew the access token: the provider granted no refresh token and the
    /// grant is not client credentials. The token is served until it expires; then the profile
    /// needs a new consent. (Negated so that records written before the field read as renewable.)
    #[prost(bool, tag = "19")]
    pub not_renewable: bool,
}

impl ConnectionRecord {
    /// The connection's status; unset or unknown reads as not connected. The one place that
    /// says what a stored status means.
    pub fn status(&self) -> crate::api::pb::Status {
        use crate::api::pb::Status;
        match Status::try_from(self.status) {
            Ok(Status::Unspecified) | Err(_) => Status::NotConnected,
            Ok(s) => s,
        }
    }
}

/// A consent waiting for the provider's redirect (or the device grant's approval).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConsentRecord {
    #[prost(string, tag = "1")]
    pub profile: String,
    /// Sealed PKCE code verifier (owner: the profile name).
    #[prost(bytes = "vec", tag = "2")]
    pub pkce_verifier_sealed: Vec<u8>,
    #[prost(string, tag = "3")]
    pub redirect_uri: String,
    #[prost(int64, tag = "4")]
    pub created_at_ms: i64,
    #[prost(int64, tag = "5")]
    pub expires_at_ms: i64,
    /// `tokend.v1.Grant` value.
    #[prost(int32, tag = "6")]
    pub grant: i32,
}
