//! Configuration: one typed struct from layered sources — embedded defaults (zero config works),
//! then the TOML file, then `TOKEND_*` environment variables (`__` separates sections, e.g.
//! `TOKEND_GRPC__LISTEN`), then command-line flags. Validated once at start with messages that
//! name the key.

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration. Every key, its default and its environment name are listed in the
/// README's configuration reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the store, the generated key and the generated admin token live.
    pub data_dir: PathBuf,
    /// The gRPC listener.
    pub grpc: GrpcConfig,
    /// The HTTP listener (OAuth callback, health, metrics).
    pub http: HttpConfig,
    /// The embedded store.
    pub store: StoreConfig,
    /// Encryption of secrets at rest.
    pub keys: KeysConfig,
    /// The refresh policy defaults.
    pub refresh: RefreshConfig,
    /// Calls to providers.
    pub provider: ProviderConfig,
    /// Consents.
    pub consent: ConsentConfig,
    /// Logging.
    pub log: LogConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// Who may call the gRPC API. Empty: a generated admin token in `<data_dir>/admin.token`.
    pub callers: Vec<CallerConfig>,
    /// Profiles declared here (GitOps, a Kubernetes ConfigMap), reconciled at start and on
    /// SIGHUP; RPC edits of them are refused.
    pub profiles: Vec<DeclaredProfile>,
    /// Delete managed profiles no longer declared (off: they are left alone).
    pub prune_profiles: bool,
}

/// A profile declared in the configuration. Field meanings follow `tokend.v1.Profile`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeclaredProfile {
    /// Unique name.
    pub name: String,
    /// For people.
    pub description: String,
    /// Preset id.
    pub provider: String,
    /// `authorization_code` (default), `device_code` or `client_credentials`.
    pub grant: String,
    /// OAuth client id.
    pub client_id: String,
    /// A file holding the client secret (a Kubernetes Secret mount); read at every reconcile.
    pub client_secret_file: PathBuf,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Endpoint overrides.
    pub authorization_endpoint: String,
    /// Endpoint overrides.
    pub token_endpoint: String,
    /// Endpoint overrides.
    pub revocation_endpoint: String,
    /// Endpoint overrides.
    pub device_authorization_endpoint: String,
    /// Redirect URI registered with the provider.
    pub redirect_uri: String,
    /// `client_secret_basic`, `client_secret_post` or `none` (default: the preset's).
    pub token_endpoint_auth_method: String,
    /// Extra authorization URL parameters.
    pub extra_authorization_params: std::collections::BTreeMap<String, String>,
    /// Preset options, e.g. `tenant`.
    pub provider_options: std::collections::BTreeMap<String, String>,
    /// Issuer URL: endpoints not set here are discovered from its metadata.
    pub issuer: String,
}

/// The gRPC listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request or reply message, in bytes.
    pub max_message_bytes: usize,
    /// Allow plain TCP (no TLS) on a non-loopback address.
    pub allow_insecure_non_loopback: bool,
    /// TLS on the gRPC listener (off when `cert_file` is empty).
    pub tls: TlsConfig,
    /// A Unix-domain socket to serve gRPC on as well (off when empty), for workers on the same
    /// host. Its peers' uid may identify them (`callers[].unix_uid`).
    pub unix_socket: PathBuf,
    /// File mode of the Unix socket (e.g. `0o660`).
    pub unix_socket_mode: u32,
    /// Refusing peers that fail to authenticate again and again.
    pub auth_limit: AuthLimitConfig,
}

/// Failed authentications per peer (IP address, IPv6 by /64; uid on the Unix socket): after
/// `max_failures` within `window_secs` the peer is refused (`RESOURCE_EXHAUSTED`) for
/// `block_secs`, whatever it presents. Peers sharing an address (loopback, NAT) share the count.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthLimitConfig {
    /// Failures within the window that block a peer; 0 turns the limit off.
    pub max_failures: u32,
    /// The counting window, in seconds.
    pub window_secs: u64,
    /// How long a blocked peer is refused, in seconds.
    pub block_secs: u64,
    /// Peers tracked at most (memory bound); failures of further peers are not counted.
    pub max_peers: usize,
}

impl Default for AuthLimitConfig {
    fn default() -> Self {
        Self { max_failures: 10, window_secs: 60, block_secs: 60, max_peers: 10_000 }
    }
}

/// TLS on the gRPC listener, from PEM files; reloaded on SIGHUP without dropping connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM). Setting it turns TLS on.
    pub cert_file: PathBuf,
    /// Private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that sign client certificates; setting it enables client
    /// certificate authentication (optional per connection; `callers[].cert_dns_name`).
    pub client_ca_file: PathBuf,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }
}

/// The HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The OAuth redirect URI profiles use unless they name their own. Empty: derived from
    /// `listen` as `http://<listen>/oauth/callback`.
    pub callback_url: String,
}

/// The embedded store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// sled's page cache, in MiB.
    pub cache_capacity_mb: u64,
    /// sled's background flush interval, in milliseconds.
    pub flush_every_ms: u64,
}

/// Encryption of secrets at rest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// The key file (base64 of 32 bytes). Empty: `<data_dir>/tokend.key`, generated on first
    /// start. The environment variable `TOKEND_KEY` (the key itself) takes precedence.
    pub key_file: PathBuf,
    /// Older keys that can still open values (files), for rotation.
    pub previous_key_files: Vec<PathBuf>,
}

/// The refresh policy defaults; profiles may override them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshConfig {
    /// Fraction of a token's lifetime refreshed ahead of expiry.
    pub skew_ratio: f64,
    /// The least time ahead of expiry a refresh is due, in seconds.
    pub skew_floor_secs: u64,
    /// Extra random skew, as a fraction of the skew, so tokens issued together spread out.
    pub jitter_ratio: f64,
    /// Lifetime assumed when a provider sends no `expires_in`, in seconds.
    pub default_lifetime_secs: u64,
    /// Default `min_valid_for` of `GetAccessToken`, in seconds.
    pub min_valid_for_secs: u64,
    /// First retry delay after a transient failure, in seconds.
    pub backoff_initial_secs: u64,
    /// Longest retry delay, in seconds.
    pub backoff_max_secs: u64,
    /// Refreshes running at once.
    pub max_concurrent: usize,
    /// Token requests per second to one provider (by token endpoint host). A backlog (after
    /// downtime, or tokens issued together) drains at this rate: 500/s clears 100,000 due
    /// refreshes in under four minutes, well inside the skew of one-hour tokens.
    pub provider_rate_per_sec: f64,
    /// Requests one provider may get in a burst.
    pub provider_burst: u32,
    /// Cron expression (with seconds) of the safety-net sweep.
    pub sweep_cron: String,
    /// How long ahead of a refresh token's expected expiry (stated by the provider, or its
    /// preset's idle limit) a warning is logged and shown on the profile, in seconds.
    pub refresh_token_warning_secs: u64,
}

/// Calls to providers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Time to connect, in seconds.
    pub connect_timeout_secs: u64,
    /// Time for a whole request, in seconds: the hard timeout, after which a sent refresh is
    /// given up.
    pub request_timeout_secs: u64,
    /// After this many seconds without an answer a refresh shows `STATUS_REFRESH_FAILING` while
    /// it keeps waiting for the hard timeout.
    pub soft_timeout_secs: u64,
    /// Largest reply accepted, in bytes.
    pub max_response_bytes: usize,
    /// Allow plain-http endpoints on non-loopback hosts (never in production).
    pub allow_insecure_http: bool,
    /// A PEM file of CA certificates trusted for provider endpoints besides the built-in roots
    /// (on-premises providers with a private CA). Read at start.
    pub ca_bundle_file: PathBuf,
    /// Networks (CIDR) tokend never sends a provider request to, checked on the addresses host
    /// names resolve to and on literal IP hosts (SSRF).
    pub deny_networks: Vec<String>,
}

/// Consents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsentConfig {
    /// How long a started consent stays valid, in seconds.
    pub ttl_secs: u64,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `auto` (text on a terminal, JSON otherwise), `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `tokend=debug`. `RUST_LOG` overrides it.
    pub level: String,
}

/// The audit trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// How often token hand-out tallies are written, in seconds.
    pub handout_interval_secs: u64,
}

/// Prometheus metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Per-profile series (seconds until expiry) for at most this many profiles, by name order,
    /// so 100k profiles do not mean 100k series.
    pub max_profile_series: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { handout_interval_secs: 5 }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { max_profile_series: 100 }
    }
}

/// A caller of the gRPC API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// Who this is, for logs and audit.
    pub name: String,
    /// `admin`, `viewer` or `consumer`.
    pub role: String,
    /// Hex SHA-256 of the caller's bearer token (`tokend mint-token` prints it).
    #[serde(default)]
    pub token_sha256: String,
    /// A DNS name in the subject alternative names of the caller's TLS client certificate.
    #[serde(default)]
    pub cert_dns_name: String,
    /// The uid of the caller's process on the Unix socket.
    #[serde(default)]
    pub unix_uid: Option<u32>,
    /// Consumers: glob patterns of the profiles they may get tokens for.
    #[serde(default)]
    pub profiles: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./tokend-data"),
            grpc: GrpcConfig::default(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            keys: KeysConfig::default(),
            refresh: RefreshConfig::default(),
            provider: ProviderConfig::default(),
            consent: ConsentConfig::default(),
            log: LogConfig::default(),
            audit: AuditConfig::default(),
            metrics: MetricsConfig::default(),
            callers: Vec::new(),
            profiles: Vec::new(),
            prune_profiles: false,
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: 1024 * 1024,
            allow_insecure_non_loopback: false,
            tls: TlsConfig::default(),
            unix_socket: PathBuf::new(),
            unix_socket_mode: 0o660,
            auth_limit: AuthLimitConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 8085)), callback_url: String::new() }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { cache_capacity_mb: 32, flush_every_ms: 500 }
    }
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            skew_ratio: 0.2,
            skew_floor_secs: 120,
            jitter_ratio: 0.1,
            default_lifetime_secs: 3600,
            min_valid_for_secs: 60,
            backoff_initial_secs: 5,
            backoff_max_secs: 300,
            max_concurrent: 16,
            provider_rate_per_sec: 500.0,
            provider_burst: 100,
            sweep_cron: "*/10 * * * * *".into(),
            refresh_token_warning_secs: 7 * 24 * 3600,
        }
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 5,
            request_timeout_secs: 15,
            soft_timeout_secs: 5,
            max_response_bytes: 256 * 1024,
            allow_insecure_http: false,
            ca_bundle_file: PathBuf::new(),
            deny_networks: crate::provider::DEFAULT_DENY_NETWORKS.iter().map(|n| (*n).to_owned()).collect(),
        }
    }
}

impl Default for ConsentConfig {
    fn default() -> Self {
        Self { ttl_secs: 600 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: "auto".into(), level: "info".into() }
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads defaults, then `file` (if given), then `TOKEND_*` environment variables, then
    /// `overrides` (flags), and validates the result.
    pub fn load(file: Option<&std::path::Path>, overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // TOKEND_KEY is the key itself, not a config key; TOKEND_CONFIG names the file.
        figment = figment.merge(Env::prefixed("TOKEND_").split("__").ignore(&["KEY", "CONFIG", "LOG"]));
        for (key, value) in overrides {
            figment = figment.merge(Serialized::default(key, value));
        }
        let config: Config = figment.extract().map_err(|e| ConfigError(describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates a TOML configuration text alone (no environment, no flags); for
    /// tools and fuzzing.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        let config: Config = figment.extract().map_err(|e| ConfigError(describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot: ranges, enums, cron syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.refresh;
        let fail = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        if !(0.0..=0.5).contains(&r.skew_ratio) {
            return fail("refresh.skew_ratio", "must be between 0 and 0.5");
        }
        if !(0.0..=1.0).contains(&r.jitter_ratio) {
            return fail("refresh.jitter_ratio", "must be between 0 and 1");
        }
        if r.default_lifetime_secs == 0 {
            return fail("refresh.default_lifetime_secs", "must be positive");
        }
        if !r.provider_rate_per_sec.is_finite() || r.provider_rate_per_sec <= 0.0 || r.provider_burst == 0 {
            return fail("refresh.provider_rate_per_sec", "rate and refresh.provider_burst must be positive");
        }
        if r.max_concurrent == 0 {
            return fail("refresh.max_concurrent", "must be positive");
        }
        if r.backoff_initial_secs == 0 || r.backoff_max_secs < r.backoff_initial_secs {
            return fail("refresh.backoff_*", "need 0 < backoff_initial_secs <= backoff_max_secs");
        }
        if r.sweep_cron.split_whitespace().count() != 6 {
            return fail("refresh.sweep_cron", "needs six fields (seconds first), e.g. \"*/10 * * * * *\"");
        }
        if !["auto", "text", "json"].contains(&self.log.format.as_str()) {
            return fail("log.format", "must be auto, text or json");
        }
        if self.audit.handout_interval_secs == 0 {
            return fail("audit.handout_interval_secs", "must be positive");
        }
        if self.provider.soft_timeout_secs == 0 || self.provider.soft_timeout_secs > self.provider.request_timeout_secs
        {
            return fail("provider.soft_timeout_secs", "must be positive and at most provider.request_timeout_secs");
        }
        crate::provider::DenyList::parse(&self.provider.deny_networks)
            .map_err(|e| ConfigError(format!("provider.deny_networks: {e}")))?;
        if self.consent.ttl_secs == 0 {
            return fail("consent.ttl_secs", "must be positive");
        }
        if !self.grpc.listen.ip().is_loopback() && !self.grpc.tls.enabled() && !self.grpc.allow_insecure_non_loopback {
            return fail(
                "grpc.listen",
                "plain TCP on a non-loopback address; configure grpc.tls, or set grpc.allow_insecure_non_loopback = true to accept that risk",
            );
        }
        let tls = &self.grpc.tls;
        if tls.enabled() && tls.key_file.as_os_str().is_empty() {
            return fail("grpc.tls.key_file", "required with grpc.tls.cert_file");
        }
        let tls_parts_without_cert = !tls.key_file.as_os_str().is_empty() || !tls.client_ca_file.as_os_str().is_empty();
        if !tls.enabled() && tls_parts_without_cert {
            return fail("grpc.tls.cert_file", "required with grpc.tls.key_file or grpc.tls.client_ca_file");
        }
        let limit = &self.grpc.auth_limit;
        if limit.max_failures > 0 && (limit.window_secs == 0 || limit.block_secs == 0 || limit.max_peers == 0) {
            return fail("grpc.auth_limit", "window_secs, block_secs and max_peers must be positive");
        }
        if self.grpc.unix_socket_mode > 0o777 {
            return fail("grpc.unix_socket_mode", "must be a file mode such as 0o660");
        }
        if !self.http.callback_url.is_empty() {
            crate::provider::parse_endpoint("http.callback_url", &self.http.callback_url, true).map_err(ConfigError)?;
        }
        for (i, declared) in self.profiles.iter().enumerate() {
            if !["", "authorization_code", "device_code", "client_credentials"].contains(&declared.grant.as_str()) {
                return fail(
                    &format!("profiles[{i}].grant"),
                    "must be authorization_code, device_code or client_credentials",
                );
            }
            if !["", "client_secret_basic", "client_secret_post", "none"]
                .contains(&declared.token_endpoint_auth_method.as_str())
            {
                return fail(
                    &format!("profiles[{i}].token_endpoint_auth_method"),
                    "must be client_secret_basic, client_secret_post or none",
                );
            }
            if self.profiles[..i].iter().any(|p| p.name == declared.name) {
                return fail(&format!("profiles[{i}].name"), "declared twice");
            }
        }
        for (i, caller) in self.callers.iter().enumerate() {
            if !["admin", "viewer", "consumer"].contains(&caller.role.as_str()) {
                return fail(&format!("callers[{i}].role"), "must be admin, viewer or consumer");
            }
            let has_token = !caller.token_sha256.is_empty();
            if has_token
                && (caller.token_sha256.len() != 64 || !caller.token_sha256.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return fail(&format!("callers[{i}].token_sha256"), "must be 64 hex digits (SHA-256)");
            }
            if !has_token && caller.cert_dns_name.is_empty() && caller.unix_uid.is_none() {
                return fail(&format!("callers[{i}]"), "needs token_sha256, cert_dns_name or unix_uid");
            }
            if !caller.cert_dns_name.is_empty() && self.grpc.tls.client_ca_file.as_os_str().is_empty() {
                return fail(&format!("callers[{i}].cert_dns_name"), "needs grpc.tls.client_ca_file");
            }
            if caller.unix_uid.is_some() && self.grpc.unix_socket.as_os_str().is_empty() {
                return fail(&format!("callers[{i}].unix_uid"), "needs grpc.unix_socket");
            }
            for pattern in &caller.profiles {
                globset::Glob::new(pattern).map_err(|e| ConfigError(format!("callers[{i}].profiles: {e}")))?;
            }
        }
        Ok(())
    }

    /// The redirect URI profiles use by default.
    pub fn callback_url(&self) -> String {
        if self.http.callback_url.is_empty() {
            format!("http://{}/oauth/callback", self.http.listen)
        } else {
            self.http.callback_url.clone()
        }
    }

    /// The key file in use.
    pub fn key_file(&self) -> PathBuf {
        if self.keys.key_file.as_os_str().is_empty() {
            self.data_dir.join("tokend.key")
        } else {
            self.keys.key_file.clone()
        }
    }
}

fn describe(e: &figment::Error) -> String {
    let mut parts = Vec::new();
    for err in e.clone() {
        let key = err.path.join(".");
        let origin = err.metadata.as_ref().map(|m| m.name.to_string()).unwrap_or_default();
        parts.push(if key.is_empty() {
            format!("{} ({origin})", err.kind)
        } else {
            format!("{key}: {} ({origin})", err.kind)
        });
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero configuration is valid and listens on loopback.
    #[test]
    fn defaults_are_valid() {
        let config = Config::load(None, &[]).unwrap();
        assert!(config.grpc.listen.ip().is_loopback());
        assert_eq!(config.callback_url(), "http://127.0.0.1:8085/oauth/callback");
    }

    /// A bad value is reported with its key.
    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "[refresh]\nskew_ratio = 0.9\n").unwrap();
        let err = Config::load(Some(&file), &[]).unwrap_err().to_string();
        assert!(err.contains("refresh.skew_ratio"), "{err}");
        std::fs::write(&file, "[grpc]\nlisten = \"nope\"\n").unwrap();
        let err = Config::load(Some(&file), &[]).unwrap_err().to_string();
        assert!(err.contains("grpc.listen"), "{err}");
        std::fs::write(&file, "bogus = 1\n").unwrap();
        let err = Config::load(Some(&file), &[]).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    /// Flags win over the file.
    #[test]
    fn overrides_win() {
        let config = Config::load(None, &[("data_dir", "/tmp/x".into())]).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
    }
}
