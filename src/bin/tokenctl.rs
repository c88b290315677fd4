//! `tokenctl`: the admin client of tokend. Manages profiles and their connections over gRPC and
//! hands access tokens to scripts.
//!
//! Exit codes: 0 ok; 1 failed; 2 usage; 3 not found; 4 not authenticated or not allowed;
//! 5 failed precondition (e.g. not connected); 6 unavailable (retry later); 7 invalid argument or
//! already exists.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use prost_types::{FieldMask, Timestamp};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use tokend::api::pb::{self, connected_apps_client::ConnectedAppsClient, tokens_client::TokensClient};
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Channel, Endpoint};

/// Admin client of tokend: manage connected apps and fetch their access tokens.
#[derive(Debug, Parser)]
#[command(version, next_help_heading = "Global options")]
struct Cli {
    /// tokend's gRPC address (`http://host:port`, `https://…` or `unix:/path`).
    #[arg(long, env = "TOKEND_ADDR", default_value = "http://127.0.0.1:50051", global = true)]
    addr: String,
    /// Bearer token (prefer TOKEND_TOKEN or --token-file: flags land in shell history).
    #[arg(long, env = "TOKEND_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "TOKEND_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// tokend's data directory: without a token, `<data-dir>/admin.token` is used.
    #[arg(long, default_value = "./tokend-data", global = true)]
    data_dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// Seconds to wait for a connection and for each call.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned columns or key/value lines, for people.
    Table,
    /// JSON, for scripts (field names as in the proto).
    Json,
}

/// What to do.
#[derive(Debug, Subcommand)]
enum Command {
    /// List the connected apps.
    List {
        /// Add the NEXT REFRESH and LAST ERROR columns.
        #[arg(long)]
        wide: bool,
    },
    /// Show one profile.
    Get {
        /// Profile name.
        name: String,
    },
    /// Create a profile.
    Create {
        /// Profile name.
        name: String,
        /// Preset: box, google, microsoft, salesforce, github, dropbox or custom.
        #[arg(long)]
        provider: String,
        #[command(flatten)]
        fields: Fields,
    },
    /// Change the given fields of a profile (and only those).
    Update {
        /// Profile name.
        name: String,
        /// Preset: box, google, microsoft, salesforce, github, dropbox or custom.
        #[arg(long)]
        provider: Option<String>,
        #[command(flatten)]
        fields: Fields,
    },
    /// Disconnect (revoking at the provider where possible) and delete a profile.
    Delete {
        /// Profile name.
        name: String,
    },
    /// Start a connection and wait for the consent to finish.
    Connect {
        /// Profile name.
        name: String,
        /// Print the authorization URL and return without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Finish a consent from the URL the browser was redirected to.
    Complete {
        /// The URL the browser landed on after the consent (quote it for the shell).
        redirect_url: String,
    },
    /// Revoke and delete a profile's tokens.
    Disconnect {
        /// Profile name.
        name: String,
    },
    /// Refresh a profile's tokens now.
    Refresh {
        /// Profile name.
        name: String,
    },
    /// Print a valid access token (only the token, for scripts).
    Token {
        /// Profile name.
        name: String,
        /// The token must stay valid at least this long (tokend's default: 60).
        #[arg(long, value_name = "SECONDS")]
        min_valid_for: Option<u64>,
    },
    /// Follow profile changes (all profiles, or the ones named).
    Watch {
        /// Profile names (all profiles when none).
        names: Vec<String>,
    },
}

/// The writable profile fields shared by `create` and `update`.
#[derive(Debug, Args)]
struct Fields {
    /// What the profile is for, shown in the table.
    #[arg(long)]
    description: Option<String>,
    /// OAuth client id registered at the provider.
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// File holding the client secret (`-` for stdin).
    #[arg(long, value_name = "FILE", conflicts_with = "client_secret_env")]
    client_secret_file: Option<PathBuf>,
    /// Environment variable holding the client secret.
    #[arg(long, value_name = "VAR")]
    client_secret_env: Option<String>,
    /// A scope to request (repeat for several).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Where the browser consents (default: the preset's).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    authorization_endpoint: Option<String>,
    /// Where tokens are obtained and refreshed (default: the preset's).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    token_endpoint: Option<String>,
    /// RFC 7009 revocation, used on disconnect (default: the preset's).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    revocation_endpoint: Option<String>,
    /// RFC 8628 device authorization (default: the preset's).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    device_authorization_endpoint: Option<String>,
    /// Issuer URL for RFC 8414 / OpenID discovery.
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    issuer: Option<String>,
    /// Where the provider sends the browser back (default: tokend's callback URL).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    redirect_uri: Option<String>,
    /// How the profile obtains its tokens (default: the preset's).
    #[arg(long, value_parser = ["authorization_code", "device_code", "client_credentials"])]
    grant: Option<String>,
    /// How the client authenticates at the token endpoint.
    #[arg(long, value_parser = ["client_secret_basic", "client_secret_post", "none"])]
    auth_method: Option<String>,
    /// Extra authorization URL parameter (repeat; replaces all of them on update).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
}

/// Accepts an absolute URL.
fn parse_url(text: &str) -> Result<String, String> {
    url::Url::parse(text).map(|_| text.to_owned()).map_err(|e| format!("not a URL: {e}"))
}

/// Splits `key=value`.
fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

/// A failure to report: one line on stderr, and an exit code scripts can test.
#[derive(Debug)]
struct Failure {
    code: u8,
    line: String,
}

// === impl Failure ===

impl Failure {
    /// `what` happened, with an optional hint on what to do about it.
    fn new(code: u8, what: impl Display, hint: Option<String>) -> Self {
        let line = match hint {
            Some(hint) => format!("{what}; {hint}"),
            None => what.to_string(),
        };
        Failure { code, line: line.replace(['\n', '\r'], " ") }
    }
}

/// Result of a command.
type Outcome<T = ()> = Result<T, Failure>;

/// What error hints need to know about the invocation.
struct Hints {
    addr: String,
    data_dir: PathBuf,
}

// === impl Hints ===

impl Hints {
    /// Turns a failed call into a failure line with a hint and the exit code for its status.
    fn fail(&self, what: impl Display, status: &tonic::Status) -> Failure {
        let code = status.code();
        let mut message =
            if status.message().is_empty() { code.description().to_owned() } else { status.message().to_owned() };
        let local = std::error::Error::source(status).is_some();
        if let Some(source) = std::error::Error::source(status) {
            message = format!("{message}: {}", error_chain(source));
        }
        let hint = match code {
            Code::Unauthenticated => Some(format!(
                "pass --token, --token-file or run where {} is readable",
                self.data_dir.join("admin.token").display()
            )),
            Code::PermissionDenied => Some("this token's role may not do that; use an admin token".to_owned()),
            Code::NotFound => Some("see `tokenctl list`".to_owned()),
            Code::Unavailable if local => Some(format!("is tokend running at {}?", self.addr)),
            Code::Unavailable => Some("retry later".to_owned()),
            Code::DeadlineExceeded | Code::Cancelled => Some("raise --timeout or retry later".to_owned()),
            _ => None,
        };
        let exit = match code {
            Code::NotFound => 3,
            Code::PermissionDenied | Code::Unauthenticated => 4,
            Code::FailedPrecondition => 5,
            Code::Unavailable | Code::DeadlineExceeded => 6,
            Code::InvalidArgument | Code::AlreadyExists => 7,
            _ => 1,
        };
        Failure::new(exit, format!("{what}: {message}"), hint)
    }
}

/// Unwraps a call's reply, or turns its status into a [`Failure`].
trait Reply<T> {
    /// The reply, or a failure saying `what` was being done.
    fn or_fail(self, hints: &Hints, what: impl Display) -> Outcome<T>;
}

impl<T> Reply<T> for Result<tonic::Response<T>, tonic::Status> {
    fn or_fail(self, hints: &Hints, what: impl Display) -> Outcome<T> {
        self.map(tonic::Response::into_inner).map_err(|status| hints.fail(what, &status))
    }
}

/// An error and its sources, joined with `: `.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
struct Bearer(AsciiMetadataValue);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel with the bearer token attached.
type Authed = InterceptedService<Channel, Bearer>;

/// The connected clients and how to print.
struct Client {
    apps: ConnectedAppsClient<Authed>,
    tokens: TokensClient<Authed>,
    hints: Hints,
    output: Output,
}

/// The bearer token: `--token`, else `--token-file`, else `<data-dir>/admin.token`.
fn load_token(cli: &Cli) -> Outcome<SecretString> {
    if let Some(token) = &cli.token {
        return Ok(SecretString::from(token.trim().to_owned()));
    }
    let path = cli.token_file.clone().unwrap_or_else(|| cli.data_dir.join("admin.token"));
    let hint = || Some("pass --token or --token-file, or point --data-dir at tokend's data directory".to_owned());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failure::new(4, format!("reading the bearer token from {}: {e}", path.display()), hint()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::new(4, format!("{} is empty", path.display()), hint()));
    }
    Ok(SecretString::from(token.to_owned()))
}

/// Connects to tokend and builds the authenticated clients.
async fn connect(cli: &Cli) -> Outcome<Client> {
    let token = load_token(cli)?;
    let mut bearer = AsciiMetadataValue::try_from(format!("Bearer {}", token.expose_secret()))
        .map_err(|_| Failure::new(4, "the bearer token holds characters a header cannot carry", None))?;
    bearer.set_sensitive(true);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let limit = Duration::from_secs(cli.timeout);
    let endpoint = Endpoint::from_shared(cli.addr.clone())
        .map_err(|e| Failure::new(2, format!("--addr {:?}: {}", cli.addr, error_chain(&e)), None))?
        .connect_timeout(limit)
        .timeout(limit);
    let channel = endpoint.connect().await.map_err(|e| {
        let hint = Some(format!("is tokend running at {}?", cli.addr));
        Failure::new(6, format!("connecting to {}: {}", cli.addr, error_chain(&e)), hint)
    })?;
    let bearer = Bearer(bearer);
    Ok(Client {
        apps: ConnectedAppsClient::with_interceptor(channel.clone(), bearer.clone()),
        tokens: TokensClient::with_interceptor(channel, bearer),
        hints: Hints { addr: cli.addr.clone(), data_dir: cli.data_dir.clone() },
        output: cli.output,
    })
}

/// Reads the client secret from the named file or environment variable, if one was given.
fn read_secret(fields: &Fields) -> Outcome<Option<SecretString>> {
    let text = if let Some(path) = &fields.client_secret_file {
        read_secret_file(path)?
    } else if let Some(var) = &fields.client_secret_env {
        std::env::var(var).map_err(|e| Failure::new(2, format!("--client-secret-env {var}: {e}"), None))?
    } else {
        return Ok(None);
    };
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(Failure::new(2, "the client secret is empty", None));
    }
    Ok(Some(SecretString::from(secret.to_owned())))
}

/// The contents of a secret file (`-`: stdin).
fn read_secret_file(path: &Path) -> Outcome<String> {
    let result =
        if path == Path::new("-") { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(path) };
    result.map_err(|e| Failure::new(1, format!("reading the client secret from {}: {e}", path.display()), None))
}

/// Sets `slot` from `value` when given and names the field in `mask`.
fn put<T>(value: Option<T>, slot: &mut T, path: &str, mask: &mut Vec<String>) {
    if let Some(value) = value {
        *slot = value;
        mask.push(path.to_owned());
    }
}

/// The profile the flags describe, and the names of the fields they set.
fn build_profile(name: &str, provider: Option<String>, fields: Fields) -> Outcome<(pb::Profile, Vec<String>)> {
    let mut p = pb::Profile { name: name.to_owned(), ..Default::default() };
    let mut mask = Vec::new();
    let secret = read_secret(&fields)?.map(|s| s.expose_secret().to_owned());
    put(provider, &mut p.provider, "provider", &mut mask);
    put(fields.description, &mut p.description, "description", &mut mask);
    put(fields.client_id, &mut p.client_id, "client_id", &mut mask);
    put(secret, &mut p.client_secret, "client_secret", &mut mask);
    let scopes = (!fields.scopes.is_empty()).then_some(fields.scopes);
    put(scopes, &mut p.scopes, "scopes", &mut mask);
    put(fields.authorization_endpoint, &mut p.authorization_endpoint, "authorization_endpoint", &mut mask);
    put(fields.token_endpoint, &mut p.token_endpoint, "token_endpoint", &mut mask);
    put(fields.revocation_endpoint, &mut p.revocation_endpoint, "revocation_endpoint", &mut mask);
    let device = fields.device_authorization_endpoint;
    put(device, &mut p.device_authorization_endpoint, "device_authorization_endpoint", &mut mask);
    put(fields.issuer, &mut p.issuer, "issuer", &mut mask);
    put(fields.redirect_uri, &mut p.redirect_uri, "redirect_uri", &mut mask);
    // clap admits only the names of these enums' values, lower-cased and without the prefix.
    let grant = fields.grant.and_then(|g| pb::Grant::from_str_name(&format!("GRANT_{}", g.to_uppercase())));
    put(grant.map(|g| g as i32), &mut p.grant, "grant", &mut mask);
    let method = fields.auth_method.map(|m| format!("TOKEN_ENDPOINT_AUTH_METHOD_{}", m.to_uppercase()));
    let method = method.and_then(|m| pb::TokenEndpointAuthMethod::from_str_name(&m)).map(|m| m as i32);
    put(method, &mut p.token_endpoint_auth_method, "token_endpoint_auth_method", &mut mask);
    let params = (!fields.params.is_empty()).then(|| fields.params.into_iter().collect::<HashMap<_, _>>());
    put(params, &mut p.extra_authorization_params, "extra_authorization_params", &mut mask);
    Ok((p, mask))
}

/// Seconds since the Unix epoch, now.
fn now_secs() -> i64 {
    Timestamp::from(SystemTime::now()).seconds
}

/// A span of seconds for people: `42s`, `59m12s`, `3h02m`, `2d05h`.
fn human(secs: i64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    if secs < 60 {
        format!("{s}s")
    } else if secs < 3600 {
        format!("{m}m{s:02}s")
    } else if secs < 86_400 {
        format!("{h}h{m:02}m")
    } else {
        format!("{d}d{h:02}h")
    }
}

/// Time left until `ts` (`past` once it has passed; blank when unset).
fn until(ts: Option<&Timestamp>, past: &str) -> String {
    match ts {
        None => String::new(),
        Some(ts) if ts.seconds <= now_secs() => past.to_owned(),
        Some(ts) => human(ts.seconds - now_secs()),
    }
}

/// A status as people read it.
fn status_label(status: pb::Status) -> &'static str {
    match status {
        pb::Status::Unspecified => "Unknown",
        pb::Status::NotConnected => "Not connected",
        pb::Status::Connecting => "Connecting",
        pb::Status::Connected => "Connected",
        pb::Status::RefreshFailing => "Refresh failing",
        pb::Status::NeedsReauthorization => "Needs reauthorization",
    }
}

/// The admin action the connected-apps table offers for a status.
fn action(status: pb::Status) -> &'static str {
    match status {
        pb::Status::Connected | pb::Status::RefreshFailing => "Disconnect",
        pb::Status::NotConnected | pb::Status::NeedsReauthorization => "Connect",
        pb::Status::Connecting => "Cancel",
        pb::Status::Unspecified => "",
    }
}

/// Replaces control characters so a value cannot break a table line or the terminal.
fn clean(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Prints left-aligned columns sized to their content.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// A timestamp as RFC 3339, or null.
fn ts_json(ts: Option<&Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// A map with its keys in order.
fn sorted(map: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A profile as JSON, field names as in the proto, enums by name.
fn profile_json(p: &pb::Profile) -> Value {
    let policy = p.refresh_policy.as_ref().map(|r| {
        json!({
            "mode": r.mode().as_str_name(),
            "skew_ratio": r.skew_ratio,
            "skew_floor": r.skew_floor.map(|d| d.to_string()),
            "default_lifetime": r.default_lifetime.map(|d| d.to_string()),
            "max_idle": r.max_idle.map(|d| d.to_string()),
        })
    });
    let mut object = json!({
        "name": p.name, "description": p.description, "provider": p.provider,
        "grant": p.grant().as_str_name(), "client_id": p.client_id, "scopes": p.scopes,
        "authorization_endpoint": p.authorization_endpoint, "token_endpoint": p.token_endpoint,
        "revocation_endpoint": p.revocation_endpoint,
        "device_authorization_endpoint": p.device_authorization_endpoint,
        "redirect_uri": p.redirect_uri, "extra_authorization_params": sorted(&p.extra_authorization_params),
        "token_endpoint_auth_method": p.token_endpoint_auth_method().as_str_name(),
        "refresh_policy": policy, "issuer": p.issuer, "provider_options": sorted(&p.provider_options),
    });
    let state = json!({
        "status": p.status().as_str_name(),
        "authorization_expires_at": ts_json(p.authorization_expires_at.as_ref()),
        "refresh_token_enabled": p.refresh_token_enabled, "last_error": p.last_error,
        "last_refreshed_at": ts_json(p.last_refreshed_at.as_ref()),
        "next_refresh_at": ts_json(p.next_refresh_at.as_ref()), "client_secret_set": p.client_secret_set,
        "granted_scopes": p.granted_scopes,
        "refresh_token_expires_at": ts_json(p.refresh_token_expires_at.as_ref()),
        "consecutive_failures": p.consecutive_failures, "connected_account": p.connected_account,
        "managed": p.managed, "create_time": ts_json(p.create_time.as_ref()),
        "update_time": ts_json(p.update_time.as_ref()), "token_metadata": sorted(&p.token_metadata),
        "connected_at": ts_json(p.connected_at.as_ref()),
    });
    if let (Some(object), Value::Object(state)) = (object.as_object_mut(), state) {
        object.extend(state);
    }
    object
}

/// A timestamp with the time left until it, for key/value output.
fn ts_line(ts: Option<&Timestamp>) -> String {
    ts.map_or_else(String::new, |t| match until(Some(t), "") {
        left if left.is_empty() => t.to_string(),
        left => format!("{t} (in {left})"),
    })
}

/// A JSON value as text for key/value output: lists space-separated, maps as `k=v`, timestamps
/// with the time left until them; empty for null, false, 0 and unspecified enums.
fn text_of(key: &str, value: &Value) -> String {
    let text = match value {
        Value::String(s) if s.ends_with("_UNSPECIFIED") => String::new(),
        Value::String(s) if key.ends_with("_at") || key.ends_with("_time") => {
            s.parse::<Timestamp>().map_or_else(|_| s.clone(), |t| ts_line(Some(&t)))
        }
        Value::String(s) => match s.strip_prefix(&format!("{}_", key.to_uppercase())) {
            Some(value) => value.to_lowercase(),
            None => s.clone(),
        },
        Value::Array(items) => items.iter().map(|v| text_of("", v)).collect::<Vec<_>>().join(" "),
        Value::Object(map) => map.iter().map(|(k, v)| format!("{k}={}", text_of("", v))).collect::<Vec<_>>().join(" "),
        Value::Bool(b) => if *b { "yes" } else { "" }.to_owned(),
        Value::Number(n) if n.as_f64() == Some(0.0) => String::new(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
    };
    clean(&text)
}

/// Prints a profile as `key: value` lines: name and status first, then the other non-empty
/// fields by their proto names.
fn print_profile(p: &pb::Profile) {
    let mut lines = vec![
        ("name".to_owned(), clean(&p.name)),
        ("status".to_owned(), format!("{} (action: {})", status_label(p.status()), action(p.status()))),
    ];
    if let Value::Object(fields) = profile_json(p) {
        let rest = fields.iter().filter(|(key, _)| !matches!(key.as_str(), "name" | "status"));
        lines.extend(rest.map(|(key, value)| (key.clone(), text_of(key, value))).filter(|(_, v)| !v.is_empty()));
    }
    let width = lines.iter().map(|(key, _)| key.len() + 2).max().unwrap_or(0);
    for (key, value) in lines {
        println!("{:<width$}{value}", format!("{key}:"));
    }
}

/// Whether a consent started from `baseline` (the profile as Connect left it) has finished: `Ok`
/// once new tokens came, `Err(reason)` once it failed or was cancelled. A profile that holds
/// tokens keeps its status during a consent (and a failed consent leaves it there), so success is
/// a new `connected_at` and failure a new `last_error`; a refresh failing meanwhile is no verdict.
fn settled(baseline: &pb::Profile, now: &pb::Profile) -> Option<Result<(), String>> {
    use pb::Status::{Connected, Connecting, NeedsReauthorization, NotConnected};
    let was_connecting = baseline.status() == Connecting;
    let reconnected = now.connected_at.is_some() && now.connected_at != baseline.connected_at;
    if reconnected || (was_connecting && now.status() == Connected) {
        return Some(Ok(()));
    }
    let new_error = !now.last_error.is_empty() && (was_connecting || now.last_error != baseline.last_error);
    match now.status() {
        NotConnected | NeedsReauthorization | Connected if new_error => Some(Err(now.last_error.clone())),
        NotConnected if was_connecting => Some(Err("the consent was cancelled".to_owned())),
        _ => None,
    }
}

// === impl Client ===

impl Client {
    /// Prints a JSON value (pretty).
    fn json(&self, value: &Value) {
        println!("{value:#}");
    }

    /// Prints a message for people: stdout in table mode, stderr when stdout carries JSON.
    fn say(&self, text: impl Display) {
        match self.output {
            Output::Table => println!("{text}"),
            Output::Json => eprintln!("{text}"),
        }
    }

    /// Prints a profile in the chosen format.
    fn show(&self, profile: &pb::Profile) {
        match self.output {
            Output::Table => print_profile(profile),
            Output::Json => self.json(&profile_json(profile)),
        }
    }

    /// Every profile, following the pages to the end.
    async fn all_profiles(&mut self) -> Outcome<Vec<pb::Profile>> {
        let mut profiles = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = pb::ListProfilesRequest { page_size: 1000, page_token: page_token.clone() };
            let page = self.apps.list_profiles(request).await.or_fail(&self.hints, "listing profiles")?;
            profiles.extend(page.profiles);
            if page.next_page_token.is_empty() || page.next_page_token == page_token {
                return Ok(profiles);
            }
            page_token = page.next_page_token;
        }
    }

    /// `list`: the connected-apps table.
    async fn list(&mut self, wide: bool) -> Outcome {
        let profiles = self.all_profiles().await?;
        if self.output == Output::Json {
            self.json(&Value::Array(profiles.iter().map(profile_json).collect()));
            return Ok(());
        }
        let mut header =
            vec!["NAME", "DESCRIPTION", "PROVIDER", "AUTHORIZATION EXPIRES", "STATUS", "REFRESH TOKEN", "ACTION"];
        if wide {
            header.extend(["NEXT REFRESH", "LAST ERROR"]);
        }
        let rows: Vec<Vec<String>> = profiles
            .iter()
            .map(|p| {
                let mut row = vec![
                    clean(&p.name),
                    clean(&p.description),
                    clean(&p.provider),
                    until(p.authorization_expires_at.as_ref(), "expired"),
                    status_label(p.status()).to_owned(),
                    if p.refresh_token_enabled { "enabled".to_owned() } else { String::new() },
                    action(p.status()).to_owned(),
                ];
                if wide {
                    row.extend([until(p.next_refresh_at.as_ref(), "due"), clean(&p.last_error)]);
                }
                row
            })
            .collect();
        print_table(&header, &rows);
        Ok(())
    }

    /// GetProfile.
    async fn profile(&mut self, name: &str) -> Outcome<pb::Profile> {
        let request = pb::GetProfileRequest { name: name.to_owned() };
        let reply = self.apps.get_profile(request).await.or_fail(&self.hints, format!("getting {name}"))?;
        Ok(reply)
    }

    /// `create` (`paths` unused) or `update` (exactly the fields given).
    async fn save(&mut self, name: &str, provider: Option<String>, fields: Fields, create: bool) -> Outcome {
        let (profile, paths) = build_profile(name, provider, fields)?;
        let saved = if create {
            let request = pb::CreateProfileRequest { profile: Some(profile) };
            self.apps.create_profile(request).await.or_fail(&self.hints, format!("creating {name}"))?
        } else if paths.is_empty() {
            return Err(Failure::new(2, "nothing to update", Some("give at least one field flag, see --help".into())));
        } else {
            let request = pb::UpdateProfileRequest { profile: Some(profile), update_mask: Some(FieldMask { paths }) };
            self.apps.update_profile(request).await.or_fail(&self.hints, format!("updating {name}"))?
        };
        self.show(&saved);
        Ok(())
    }

    /// Prints what a disconnect did.
    fn revocation(&self, name: &str, done: &str, reply: &pb::DisconnectResponse) {
        match self.output {
            Output::Table => println!("{name} {done}: {}", clean(&reply.detail)),
            Output::Json => self.json(&json!({
                "name": name,
                "revoked": reply.revoked,
                "revocation": reply.revocation().as_str_name(),
                "detail": reply.detail,
            })),
        }
    }

    /// `delete`.
    async fn delete(&mut self, name: &str) -> Outcome {
        let request = pb::DeleteProfileRequest { name: name.to_owned() };
        let reply = self.apps.delete_profile(request).await.or_fail(&self.hints, format!("deleting {name}"))?;
        self.revocation(name, "deleted", &reply.disconnect.unwrap_or_default());
        Ok(())
    }

    /// `disconnect`.
    async fn disconnect(&mut self, name: &str) -> Outcome {
        let request = pb::DisconnectRequest { name: name.to_owned() };
        let reply = self.apps.disconnect(request).await.or_fail(&self.hints, format!("disconnecting {name}"))?;
        self.revocation(name, "disconnected", &reply);
        Ok(())
    }

    /// `connect`: starts the grant, shows what the admin must do, and waits for the outcome.
    async fn connect(&mut self, name: &str, no_wait: bool) -> Outcome {
        let request = pb::ConnectRequest { name: name.to_owned() };
        let reply = self.apps.connect(request).await.or_fail(&self.hints, format!("connecting {name}"))?;
        if self.output == Output::Json {
            self.json(&json!({
                "name": name,
                "status": reply.status().as_str_name(),
                "authorization_url": reply.authorization_url,
                "state": reply.state,
                "verification_uri": reply.verification_uri,
                "verification_uri_complete": reply.verification_uri_complete,
                "user_code": reply.user_code,
                "expires_at": ts_json(reply.expires_at.as_ref()),
            }));
        }
        if !reply.authorization_url.is_empty() {
            self.say(format!("Open this URL in a browser to connect {name}:\n{}", reply.authorization_url));
        } else if !reply.user_code.is_empty() {
            self.say(format!("To connect {name}, go to {} and enter code {}", reply.verification_uri, reply.user_code));
        } else if reply.status() == pb::Status::Connected {
            self.say(format!("{name} connected"));
            return Ok(());
        } else {
            let status = status_label(reply.status());
            return Err(Failure::new(
                1,
                format!("connecting {name}: tokend started no consent (status {status})"),
                None,
            ));
        }
        if no_wait {
            return Ok(());
        }
        let baseline = reply.profile.unwrap_or_default();
        self.wait_connected(name, &baseline, reply.expires_at).await
    }

    /// Watches `name` until the consent started from `baseline` finishes or `expires_at` passes.
    async fn wait_connected(&mut self, name: &str, baseline: &pb::Profile, expires_at: Option<Timestamp>) -> Outcome {
        let what = format!("waiting for {name} to connect");
        let request = pb::WatchProfilesRequest { names: vec![name.to_owned()], send_initial: false };
        let mut stream = self.apps.watch_profiles(request).await.or_fail(&self.hints, &what)?;
        // A consent finished between Connect and the watch would otherwise go unseen.
        let mut outcome = settled(baseline, &self.profile(name).await?);
        let left = expires_at.map_or(86_400 * 365, |t| t.seconds.saturating_sub(now_secs()).max(0));
        let deadline = tokio::time::sleep(Duration::from_secs(left.unsigned_abs()));
        tokio::pin!(deadline);
        while outcome.is_none() {
            tokio::select! {
                () = &mut deadline => {
                    let hint = Some(format!("run `tokenctl connect {name}` again"));
                    return Err(Failure::new(1, format!("{what}: the consent expired"), hint));
                }
                event = stream.message() => match event {
                    Ok(Some(event)) if event.kind() == pb::profile_event::Kind::Deleted => {
                        outcome = Some(Err("the profile was deleted".to_owned()));
                    }
                    Ok(Some(event)) => outcome = event.profile.and_then(|p| settled(baseline, &p)),
                    Ok(None) => return Err(Failure::new(6, format!("{what}: tokend ended the watch"), None)),
                    Err(status) => return Err(self.hints.fail(&what, &status)),
                },
            }
        }
        match outcome {
            Some(Err(reason)) => Err(Failure::new(1, format!("connecting {name}: {reason}"), None)),
            _ => {
                self.say(format!("{name} connected"));
                Ok(())
            }
        }
    }

    /// `complete`.
    async fn complete(&mut self, redirect_url: String) -> Outcome {
        let request = pb::CompleteConnectRequest { redirect_url, ..Default::default() };
        let reply = self.apps.complete_connect(request).await.or_fail(&self.hints, "completing the consent")?;
        let profile = reply.profile.unwrap_or_default();
        match self.output {
            Output::Table => println!("{} connected", profile.name),
            Output::Json => self.json(&profile_json(&profile)),
        }
        Ok(())
    }

    /// `refresh`.
    async fn refresh(&mut self, name: &str) -> Outcome {
        let request = pb::RefreshNowRequest { name: name.to_owned() };
        let reply = self.apps.refresh_now(request).await.or_fail(&self.hints, format!("refreshing {name}"))?;
        let profile = reply.profile.unwrap_or_default();
        match self.output {
            Output::Table => match profile.authorization_expires_at.as_ref() {
                Some(_) => println!(
                    "{name} refreshed; the token expires {}",
                    ts_line(profile.authorization_expires_at.as_ref())
                ),
                None => println!("{name} refreshed"),
            },
            Output::Json => self.json(&profile_json(&profile)),
        }
        Ok(())
    }

    /// `token`: only the token on stdout.
    async fn token(&mut self, name: &str, min_valid_for: Option<u64>) -> Outcome {
        let min_valid_for =
            min_valid_for.map(|s| prost_types::Duration { seconds: s.min(i64::MAX as u64) as i64, nanos: 0 });
        let request = pb::GetAccessTokenRequest { name: name.to_owned(), min_valid_for };
        let what = format!("getting a token for {name}");
        let token = self.tokens.get_access_token(request).await.or_fail(&self.hints, what)?;
        match self.output {
            Output::Table => println!("{}", token.access_token),
            Output::Json => self.json(&json!({
                "name": token.name,
                "access_token": token.access_token,
                "token_type": token.token_type,
                "expires_at": ts_json(token.expires_at.as_ref()),
                "scopes": token.scopes,
                "token_version": token.token_version,
            })),
        }
        Ok(())
    }

    /// `watch`: one line per event (one JSON object per line with `--output json`).
    async fn watch(&mut self, names: Vec<String>) -> Outcome {
        let request = pb::WatchProfilesRequest { names, send_initial: true };
        let mut stream = self.apps.watch_profiles(request).await.or_fail(&self.hints, "watching profiles")?;
        loop {
            let event = match stream.message().await {
                Ok(Some(event)) => event,
                Ok(None) => return Err(Failure::new(6, "watching profiles: tokend ended the watch", None)),
                Err(status) => return Err(self.hints.fail("watching profiles", &status)),
            };
            let profile = event.profile.clone().unwrap_or_default();
            if self.output == Output::Json {
                let value = json!({
                    "kind": event.kind().as_str_name(),
                    "time": ts_json(event.time.as_ref()),
                    "previous_status": event.previous_status().as_str_name(),
                    "profile": profile_json(&profile),
                });
                println!("{value}");
                continue;
            }
            let kind = event.kind().as_str_name().trim_start_matches("KIND_").to_lowercase();
            let mut status = status_label(profile.status()).to_owned();
            if event.kind() == pb::profile_event::Kind::Deleted {
                status = "deleted".to_owned();
            } else if event.previous_status() != profile.status() {
                status = format!("{status} (was {})", status_label(event.previous_status()));
            }
            let time = event.time.map_or_else(String::new, |t| t.to_string());
            let line = format!("{time}  {kind}  {}  {status}  {}", clean(&profile.name), clean(&profile.last_error));
            println!("{}", line.trim_end());
        }
    }
}

/// Runs the command.
async fn run(cli: Cli) -> Outcome {
    let mut client = connect(&cli).await?;
    match cli.command {
        Command::List { wide } => client.list(wide).await,
        Command::Get { name } => {
            let profile = client.profile(&name).await?;
            client.show(&profile);
            Ok(())
        }
        Command::Create { name, provider, fields } => client.save(&name, Some(provider), fields, true).await,
        Command::Update { name, provider, fields } => client.save(&name, provider, fields, false).await,
        Command::Delete { name } => client.delete(&name).await,
        Command::Connect { name, no_wait } => client.connect(&name, no_wait).await,
        Command::Complete { redirect_url } => client.complete(redirect_url).await,
        Command::Disconnect { name } => client.disconnect(&name).await,
        Command::Refresh { name } => client.refresh(&name).await,
        Command::Token { name, min_valid_for } => client.token(&name, min_valid_for).await,
        Command::Watch { names } => client.watch(names).await,
    }
}

/// Parses the flags, runs the command on a small runtime, and maps the outcome to an exit code.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tokenctl: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("tokenctl: {}", failure.line);
            ExitCode::from(failure.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(status: pb::Status, error: &str, connected_at: i64) -> pb::Profile {
        let connected_at = (connected_at > 0).then_some(Timestamp { seconds: connected_at, nanos: 0 });
        pb::Profile { status: status as i32, last_error: error.into(), connected_at, ..Default::default() }
    }

    /// Spans read the way the table shows them.
    #[test]
    fn human_spans() {
        assert_eq!(human(42), "42s");
        assert_eq!(human(59 * 60 + 12), "59m12s");
        assert_eq!(human(3 * 3600 + 2 * 60 + 59), "3h02m");
        assert_eq!(human(2 * 86_400 + 5 * 3600), "2d05h");
        assert_eq!(until(Some(&Timestamp { seconds: 1, nanos: 0 }), "expired"), "expired");
        assert_eq!(until(None, "expired"), "");
    }

    /// A consent settles on new tokens, a new error or a cancel; stale errors and refresh
    /// failures of a connected profile are no verdict.
    #[test]
    fn consent_verdicts() {
        use pb::Status::*;
        let pending = profile(Connecting, "old failure", 0);
        assert_eq!(settled(&pending, &pending), None);
        assert_eq!(settled(&pending, &profile(Connected, "", 100)), Some(Ok(())));
        assert_eq!(settled(&pending, &profile(NotConnected, "old failure", 0)), Some(Err("old failure".into())));
        assert!(matches!(settled(&pending, &profile(NotConnected, "", 0)), Some(Err(_))));
        let held = profile(NeedsReauthorization, "invalid_grant", 100);
        assert_eq!(settled(&held, &held), None);
        assert_eq!(settled(&held, &profile(Connected, "", 200)), Some(Ok(())));
        assert_eq!(settled(&held, &profile(NeedsReauthorization, "denied", 100)), Some(Err("denied".into())));
        let connected = profile(Connected, "", 100);
        assert_eq!(settled(&connected, &profile(RefreshFailing, "timeout", 100)), None);
        assert_eq!(settled(&connected, &profile(Connected, "denied", 100)), Some(Err("denied".into())));
    }
}
