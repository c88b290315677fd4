//! Configuration: one typed struct from layered sources — embedded defaults (zero config works),
//! then the TOML file, then `TOKEND_*` environment variables (`__` separates sections, e.g.
//! `TOKEND_GRPC__LISTEN`; see [`env`](mod@env) for which variables are configuration), then command-line
//! flags. Validated once at start with messages that name the key.
//!
//! Longer than our modules usually are (about 540 lines before its tests): it is the one place
//! every configuration key is declared, each section's struct with its defaults beside it, so a
//! reader checks a key's type, default and meaning in one spot; the parsing of enumerated values,
//! the environment rules, the errors and the validation live in `config/`.

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Format as _, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};

mod choices;
pub mod env;
mod error;
mod validate;

pub use choices::{AuthMethod, Grant, LogFormat, Role, StoreBackend, UnknownChoice};
pub use error::ConfigError;

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
    /// The store: embedded sled (default) or PostgreSQL.
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
    /// Checks at start that protect secrets on disk.
    pub security: SecurityConfig,
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
    /// `authorization_code`, `device_code` or `client_credentials`; unset (`""`):
    /// `authorization_code`.
    #[serde(with = "choices::empty_is_unset")]
    pub grant: Option<Grant>,
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
    /// `client_secret_basic`, `client_secret_post` or `none`; unset (`""`): the preset's.
    #[serde(with = "choices::empty_is_unset")]
    pub token_endpoint_auth_method: Option<AuthMethod>,
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
    /// Seconds a client has to send a request's headers, and the longest a kept-alive
    /// connection may sit idle: a client that trickles its headers (slowloris) is cut off
    /// instead of holding a connection for ever.
    pub header_read_timeout_secs: u64,
    /// Connections served at once; further ones wait in the kernel's accept queue until one
    /// closes, so a flood of connections cannot grow memory or tasks without bound.
    pub max_connections: usize,
    /// TLS on the HTTP listener (off when `cert_file` is empty); reloaded on SIGHUP like
    /// `grpc.tls`. `client_ca_file` is not used here (the page signs in with a bearer token).
    pub tls: TlsConfig,
    /// Serve the landing page over plain HTTP on a non-loopback address. Off: such a listener
    /// still serves the callback, health and metrics, but not the page, whose session cookie
    /// and bearer token would travel in clear text.
    pub allow_insecure_non_loopback: bool,
    /// Landing-page sessions.
    pub session: SessionConfig,
}

/// How long a landing-page session lasts: it ends after `idle_timeout_secs` without a request,
/// and `absolute_timeout_secs` after sign-in whatever happens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Seconds without a request after which a session ends.
    pub idle_timeout_secs: u64,
    /// Seconds after sign-in at which a session ends, active or not.
    pub absolute_timeout_secs: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { idle_timeout_secs: 30 * 60, absolute_timeout_secs: 12 * 60 * 60 }
    }
}

/// The store: embedded sled (default) or PostgreSQL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sled` (embedded, one process) or `postgres` (several replicas on one database).
    pub backend: StoreBackend,
    /// sled's page cache, in MiB.
    pub cache_capacity_mb: u64,
    /// sled's background flush interval, in milliseconds.
    pub flush_every_ms: u64,
    /// The PostgreSQL database, when `backend = "postgres"`.
    pub postgres: PostgresConfig,
}

/// The PostgreSQL database (`store.postgres`). `Debug` hides the URL's password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/database` (environment `TOKEND_STORE__POSTGRES__URL`, e.g. from a
    /// Kubernetes Secret). May carry the password; better kept in `password_file`.
    pub url: String,
    /// A file holding the password (a mounted Secret); wins over a password in the URL.
    pub password_file: PathBuf,
    /// Connections per replica (one of them carries the change feed).
    pub pool_size: u32,
    /// Bound on opening a connection, in seconds: an unreachable database fails fast.
    pub connect_timeout_secs: u64,
    /// Bound on one statement, in seconds; a slower answer counts as unavailable.
    pub statement_timeout_secs: u64,
    /// A CA file: TLS is then required and verified (`sslmode=verify-full`), with rustls.
    pub ca_file: PathBuf,
    /// The schema holding tokend's tables.
    pub schema: String,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &crate::store::postgres::pool::redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("statement_timeout_secs", &self.statement_timeout_secs)
            .field("ca_file", &self.ca_file)
            .field("schema", &self.schema)
            .finish()
    }
}

impl Config {
    /// The configuration as `check-config` prints it: the database URL's password replaced.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        if !shown.store.postgres.url.is_empty() {
            shown.store.postgres.url = crate::store::postgres::pool::redact_url(&shown.store.postgres.url);
        }
        shown
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            password_file: PathBuf::new(),
            pool_size: 10,
            connect_timeout_secs: 5,
            statement_timeout_secs: 5,
            ca_file: PathBuf::new(),
            schema: "public".into(),
        }
    }
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
    pub format: LogFormat,
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
    /// Whether `/metrics` shows per-profile series (`tokend_token_expires_in_seconds{profile=…}`).
    /// They name profiles to whoever can reach the HTTP listener; off drops them.
    pub profile_labels: bool,
}

/// Checks at start that protect secrets on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Refuse to start when the key file, `admin.token` or the data directory can be read by
    /// group or others (off: start with a loud warning instead).
    pub refuse_open_permissions: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self { refuse_open_permissions: true }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { handout_interval_secs: 5 }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { max_profile_series: 100, profile_labels: true }
    }
}

/// A caller of the gRPC API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// Who this is, for logs and audit.
    pub name: String,
    /// `admin`, `viewer` or `consumer`.
    pub role: Role,
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
            security: SecurityConfig::default(),
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

impl HttpConfig {
    /// The path of the OAuth callback on the HTTP listener.
    pub const CALLBACK_PATH: &str = "/oauth/callback";

    /// Whether the landing page is served: always on loopback or under TLS, elsewhere only
    /// with `allow_insecure_non_loopback` (the rule gRPC follows for its whole listener).
    pub fn serves_page(&self) -> bool {
        self.listen.ip().is_loopback() || self.tls.enabled() || self.allow_insecure_non_loopback
    }

    /// The redirect URI profiles use unless they name their own: `callback_url` when set (a
    /// proxy or ingress in front of tokend), else `http://<bound>/oauth/callback`. `bound` is
    /// the address the listener actually got, so port 0 (tests) yields a usable URL. The one
    /// place this default is computed.
    pub fn callback_url(&self, bound: SocketAddr) -> String {
        if self.callback_url.is_empty() {
            format!("http://{bound}{}", Self::CALLBACK_PATH)
        } else {
            self.callback_url.clone()
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8085)),
            callback_url: String::new(),
            header_read_timeout_secs: 10,
            max_connections: 256,
            tls: TlsConfig::default(),
            allow_insecure_non_loopback: false,
            session: SessionConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sled,
            cache_capacity_mb: 32,
            flush_every_ms: 500,
            postgres: PostgresConfig::default(),
        }
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
        Self { format: LogFormat::Auto, level: "info".into() }
    }
}

impl Config {
    /// Loads defaults, then `file` (if given), then `TOKEND_*` environment variables, then
    /// `overrides` (flags), and validates the result.
    pub fn load(file: Option<&std::path::Path>, overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::File { path: path.to_owned(), reason: "does not exist".into() });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only `TOKEND_<SECTION>__<KEY>` and the top-level keys: the rest of the prefix belongs
        // to tokenctl, workers, and tokend's own TOKEND_KEY / TOKEND_CONFIG / TOKEND_LOG.
        figment = figment.merge(env::source());
        Self::extract(&figment.merge(Flags(overrides)))
    }

    /// Parses and validates a TOML configuration text alone (no environment, no flags); for
    /// tools and fuzzing.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::extract(&Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
    }

    fn extract(figment: &Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(ConfigError::from_figment)?;
        config.validate()?;
        Ok(config)
    }

    /// The redirect URI profiles use by default, for the configured HTTP address (the daemon
    /// uses the address it bound: [`HttpConfig::callback_url`]).
    pub fn callback_url(&self) -> String {
        self.http.callback_url(self.http.listen)
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

/// Values given as flags (`--grpc-listen`), as one source so that an error says where the
/// value came from ("from command-line flag").
struct Flags<'a>(&'a [(&'a str, String)]);

impl figment::Provider for Flags<'_> {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("command-line flag")
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut flags = Dict::new();
        for (key, value) in self.0 {
            if let Value::Dict(_, nested) = figment::util::nest(key, Value::from(value.clone())) {
                merge_dicts(&mut flags, nested);
            }
        }
        Ok(figment::Profile::Default.collect(flags))
    }
}

/// Merges `from` into `into`, tables key by key (`grpc.listen` and `grpc.tls.cert_file` both
/// land in `grpc`).
fn merge_dicts(into: &mut Dict, from: Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Dict(_, inner)), Value::Dict(_, nested)) => merge_dicts(inner, nested),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
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

    /// The key of the error, by variant.
    fn rejected_key(text: &str) -> (String, ConfigError) {
        let err = Config::from_toml_str(text).unwrap_err();
        (err.key().unwrap_or_default().to_owned(), err)
    }

    /// Every error names the key and says why; callers can match on the kind of problem.
    #[test]
    fn errors_name_the_key() {
        let (key, err) = rejected_key("[refresh]\nskew_ratio = 0.9\n");
        assert!(matches!(err, ConfigError::Rejected { .. }) && key == "refresh.skew_ratio", "{err}");
        let (key, err) = rejected_key("[grpc]\nlisten = \"nope\"\n");
        assert!(matches!(err, ConfigError::Invalid { .. }) && key == "grpc.listen", "{err}");
        assert!(err.to_string().contains("grpc.listen: "), "{err}");
        let (key, err) = rejected_key("bogus = 1\n");
        assert!(matches!(&err, ConfigError::UnknownKey { expected, .. } if expected.contains(&"data_dir".to_owned())));
        assert_eq!(key, "bogus");
        let (key, err) = rejected_key("[grpc]\nlistne = \"127.0.0.1:1\"\n");
        assert!(matches!(err, ConfigError::UnknownKey { .. }) && key == "grpc.listne", "{err}");
    }

    /// The landing page's keys are checked and named: session expiries in order, TLS parts
    /// together, no client CA on the HTTP listener.
    #[test]
    fn http_page_keys() {
        let (key, _) = rejected_key("[http.session]\nidle_timeout_secs = 0\n");
        assert_eq!(key, "http.session.idle_timeout_secs");
        let (key, _) = rejected_key("[http.session]\nidle_timeout_secs = 100\nabsolute_timeout_secs = 50\n");
        assert_eq!(key, "http.session.absolute_timeout_secs");
        let (key, _) = rejected_key("[http.tls]\ncert_file = \"c.pem\"\n");
        assert_eq!(key, "http.tls.key_file");
        let (key, _) = rejected_key("[http.tls]\nclient_ca_file = \"ca.pem\"\n");
        assert_eq!(key, "http.tls.client_ca_file");
        let config = Config::from_toml_str("[http.session]\nidle_timeout_secs = 90\n").unwrap();
        assert_eq!(config.http.session.idle_timeout_secs, 90);
    }

    /// Keys inside lists read as in the README (`callers[2].unix_uid`).
    #[test]
    fn list_keys_carry_the_index() {
        let caller = |uid: &str| format!("[[callers]]\nname = \"a\"\nrole = \"admin\"\nunix_uid = {uid}\n");
        let text = format!("[grpc]\nunix_socket = \"/s\"\n{}{}{}", caller("1"), caller("2"), caller("\"x\""));
        let (key, err) = rejected_key(&text);
        assert_eq!(key, "callers[2].unix_uid", "{err}");
        assert!(err.to_string().contains("callers[2].unix_uid: "), "{err}");
    }

    /// An unknown value of an enumerated setting names the key and lists the accepted values.
    #[test]
    fn unknown_choices_list_the_values() {
        let caller = |role: &str| {
            format!("[[callers]]\nname = \"a\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n", "0".repeat(64))
        };
        let text = format!("{}{}{}", caller("admin"), caller("viewer"), caller("root"));
        let err = Config::from_toml_str(&text).unwrap_err();
        let ConfigError::UnknownValue { key, value, expected, .. } = &err else { panic!("{err}") };
        assert_eq!((key.as_str(), value.as_str()), ("callers[2].role", "root"));
        assert_eq!(expected, &["admin", "viewer", "consumer"]);
        assert!(err.to_string().contains("admin, viewer, consumer"), "{err}");
        let err = Config::from_toml_str("[log]\nformat = \"yaml\"\n").unwrap_err();
        assert!(matches!(&err, ConfigError::UnknownValue { key, .. } if key == "log.format"), "{err}");
        let err = Config::from_toml_str("[[profiles]]\nname = \"p\"\ngrant = \"implicit\"\n").unwrap_err();
        assert!(matches!(&err, ConfigError::UnknownValue { key, .. } if key == "profiles[0].grant"), "{err}");
        let err =
            Config::from_toml_str("[[profiles]]\nname = \"p\"\ntoken_endpoint_auth_method = \"jwt\"\n").unwrap_err();
        assert!(err.to_string().contains("client_secret_basic, client_secret_post, none"), "{err}");
    }

    /// Enumerated settings read and print with the same spelling as before they were enums;
    /// an unset grant or method is still written `""`.
    #[test]
    fn choices_round_trip_in_the_old_spelling() {
        let text = "[log]\nformat = \"json\"\n\n[[profiles]]\nname = \"a\"\ngrant = \"device_code\"\n\
                    token_endpoint_auth_method = \"none\"\n\n[[profiles]]\nname = \"b\"\ngrant = \"\"\n";
        let config = Config::from_toml_str(text).unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.profiles[0].grant, Some(Grant::DeviceCode));
        assert_eq!(config.profiles[0].token_endpoint_auth_method, Some(AuthMethod::None));
        assert_eq!((config.profiles[1].grant, config.profiles[1].token_endpoint_auth_method), (None, None));
        let printed = toml::to_string_pretty(&config).unwrap();
        for line in
            ["format = \"json\"", "grant = \"device_code\"", "token_endpoint_auth_method = \"none\"", "grant = \"\""]
        {
            assert!(printed.contains(line), "{line} in\n{printed}");
        }
        assert_eq!(Config::from_toml_str(&printed).unwrap().profiles[1].grant, None);
    }

    /// A missing or broken file is a file error naming the file.
    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        assert!(matches!(Config::load(Some(&missing), &[]), Err(ConfigError::File { path, .. }) if path == missing));
        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "[grpc\n").unwrap();
        let err = Config::load(Some(&broken), &[]).unwrap_err();
        assert!(matches!(&err, ConfigError::File { path, .. } if *path == broken), "{err}");
    }

    /// The default callback URL follows the bound address; a configured one wins.
    #[test]
    fn callback_url_defaults_to_the_bound_address() {
        let mut http = HttpConfig::default();
        let bound: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        assert_eq!(http.callback_url(bound), "http://127.0.0.1:40123/oauth/callback");
        assert_eq!(http.callback_url("[::1]:8085".parse().unwrap()), "http://[::1]:8085/oauth/callback");
        http.callback_url = "https://tokend.example.internal/oauth/callback".into();
        assert_eq!(http.callback_url(bound), "https://tokend.example.internal/oauth/callback");
    }

    /// Flags win over the file; a bad flag value says it came from a flag.
    #[test]
    fn overrides_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "data_dir = \"/tmp/file\"\n[grpc]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let flags =
            [("data_dir", "/tmp/x".into()), ("grpc.listen", "127.0.0.1:2".into()), ("log.format", "json".into())];
        let config = Config::load(Some(&file), &flags).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.grpc.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(config.log.format, LogFormat::Json);
        let err = Config::load(None, &[("http.listen", "nope".into())]).unwrap_err();
        assert!(err.to_string().ends_with("(from command-line flag)"), "{err}");
    }
}
