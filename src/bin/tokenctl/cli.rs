//! Command-line flags and subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Admin client of tokend: manage connected apps and fetch their access tokens.
#[derive(Debug, Parser)]
#[command(version, next_help_heading = "Global options")]
pub(crate) struct Cli {
    /// tokend's gRPC address (`http://host:port`, `https://…` or `unix:/path`).
    #[arg(long, env = "TOKEND_ADDR", default_value = "http://127.0.0.1:50051", global = true)]
    pub(crate) addr: String,
    /// Bearer token (prefer TOKEND_TOKEN or --token-file: flags land in shell history).
    #[arg(long, env = "TOKEND_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "TOKEND_TOKEN_FILE", global = true)]
    pub(crate) token_file: Option<PathBuf>,
    /// PEM file of the CA that signed tokend's certificate, trusted instead of the system roots
    /// (`https://` addresses only).
    #[arg(long, env = "TOKENCTL_CA_FILE", value_name = "FILE", global = true)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS: tokend knows the caller by the certificate's DNS
    /// name, so no bearer token is needed (`https://` addresses only; needs --key-file).
    #[arg(long, env = "TOKENCTL_CERT_FILE", value_name = "FILE", requires = "key_file", global = true)]
    pub(crate) cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "TOKENCTL_KEY_FILE", value_name = "FILE", requires = "cert_file", global = true)]
    pub(crate) key_file: Option<PathBuf>,
    /// tokend's data directory: without a token or a client certificate, `<data-dir>/admin.token`
    /// is used.
    #[arg(long, default_value = "./tokend-data", global = true)]
    pub(crate) data_dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub(crate) output: Output,
    /// Seconds to wait for a connection and for each call.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", global = true)]
    pub(crate) timeout: u64,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns or key/value lines, for people.
    Table,
    /// JSON, for scripts (field names as in the proto).
    Json,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List the connected apps.
    List {
        /// Add the NEXT REFRESH, LAST ERROR and WARNING columns.
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
    /// Follow profile changes (all profiles, or the ones named). A watch that falls behind
    /// tokend's events starts again from the current state, with a notice on stderr.
    Watch {
        /// Profile names (all profiles when none).
        names: Vec<String>,
    },
    /// Re-seal every stored secret under the active key (load the new key with SIGHUP first);
    /// then lists which keys still seal values.
    RotateKeys {
        /// Only show which keys seal how many values.
        #[arg(long)]
        dry_run: bool,
    },
    /// Back up the running daemon's store (JSON lines; secrets stay sealed).
    Backup {
        /// Where to write the backup (`-` for stdout). The file is created with mode 0600 and
        /// must not exist yet.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The writable profile fields shared by `create` and `update`.
#[derive(Debug, Args)]
pub(crate) struct Fields {
    /// What the profile is for, shown in the table.
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// OAuth client id registered at the provider.
    #[arg(long, value_name = "ID")]
    pub(crate) client_id: Option<String>,
    /// File holding the client secret (`-` for stdin).
    #[arg(long, value_name = "FILE", conflicts_with = "client_secret_env")]
    pub(crate) client_secret_file: Option<PathBuf>,
    /// Environment variable holding the client secret.
    #[arg(long, value_name = "VAR")]
    pub(crate) client_secret_env: Option<String>,
    /// A scope to request (repeat for several).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub(crate) scopes: Vec<String>,
    /// Where the browser consents (default: the preset's).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub(crate) authorization_endpoint: Option<String>,
    /// Where tokens are obtained and refreshed (default: the preset's).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub(crate) token_endpoint: Option<String>,
    /// RFC 7009 revocation, used on disconnect (default: the preset's).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub(crate) revocation_endpoint: Option<String>,
    /// RFC 8628 device authorization (default: the preset's).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub(crate) device_authorization_endpoint: Option<String>,
    /// Issuer URL for RFC 8414 / OpenID discovery.
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub(crate) issuer: Option<String>,
    /// Where the provider sends the browser back (default: tokend's callback URL).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub(crate) redirect_uri: Option<String>,
    /// How the profile obtains its tokens (default: the preset's).
    #[arg(long, value_enum)]
    pub(crate) grant: Option<tokend::config::Grant>,
    /// How the client authenticates at the token endpoint.
    #[arg(long, value_enum)]
    pub(crate) auth_method: Option<tokend::config::AuthMethod>,
    /// Extra authorization URL parameter (repeat; replaces all of them on update).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub(crate) params: Vec<(String, String)>,
}

/// Accepts an absolute URL.
pub(crate) fn parse_url(text: &str) -> Result<String, String> {
    url::Url::parse(text).map(|_| text.to_owned()).map_err(|e| format!("not a URL: {e}"))
}

/// Splits `key=value`.
pub(crate) fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}
