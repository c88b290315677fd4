//! `tokend`: the daemon, and its operator chores as subcommands. This file parses the command
//! line and calls the library: loading the configuration (`tokend::config`), signals and
//! reloads (`tokend::daemon::signals`), backups (`tokend::daemon::backup`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokend::config::{Config, ConfigError, LogFormat, Role};
use tokend::daemon::{StartOptions, backup, signals};
use zeroize::Zeroizing;

/// Keeps OAuth 2.0 tokens for connected apps valid and hands them out over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "TOKEND_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (store, generated key, generated admin token).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, global = true)]
    grpc_listen: Option<String>,
    /// HTTP listen address (OAuth callback, health, metrics).
    #[arg(long, global = true)]
    http_listen: Option<String>,
    /// Log format.
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Validate the configuration and print it (secrets are never in it).
    CheckConfig,
    /// Print a new random encryption key (base64 of 32 bytes) for a key file.
    GenKey,
    /// Back up the store of a stopped daemon as JSON lines (secrets stay sealed); for a running
    /// one use `tokenctl backup`.
    Export {
        /// Where to write (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Restore a backup into an empty data directory (the daemon stopped).
    Import {
        /// The backup file.
        #[arg(long)]
        input: PathBuf,
    },
    /// Apply the PostgreSQL schema migrations this binary knows (`store.backend = "postgres"`),
    /// ahead of a rolling update; replicas also apply them at start, under the same lock.
    Migrate,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print a new caller bearer token and the config line holding its hash.
    MintToken {
        /// The caller's role.
        #[arg(long, value_enum, default_value_t = Role::Consumer)]
        role: Role,
        /// Caller name.
        #[arg(long)]
        name: String,
        /// Profile glob patterns (consumers).
        #[arg(long = "profile")]
        profiles: Vec<String>,
    },
}

/// The configuration from the file, the environment and the flags given; called at start and
/// again on every SIGHUP.
fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let mut overrides = Vec::new();
    if let Some(dir) = &cli.data_dir {
        overrides.push(("data_dir", dir.display().to_string()));
    }
    if let Some(listen) = &cli.grpc_listen {
        overrides.push(("grpc.listen", listen.clone()));
    }
    if let Some(listen) = &cli.http_listen {
        overrides.push(("http.listen", listen.clone()));
    }
    if let Some(format) = &cli.log_format {
        overrides.push(("log.format", format.to_string()));
    }
    Config::load(cli.config.as_deref(), &overrides)
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let command = cli.command.take().unwrap_or(Command::Serve);
    let config = match command {
        Command::GenKey => return gen_key(),
        Command::Completions { shell } => return completions(shell),
        Command::MintToken { role, name, profiles } => return mint_token(role, &name, &profiles),
        _ => match load_config(&cli) {
            Ok(config) => config,
            Err(e) => return fail(&e, ConfigError::EXIT_CODE),
        },
    };
    match command {
        Command::CheckConfig => match toml::to_string_pretty(&config.redacted()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, ConfigError::EXIT_CODE),
        },
        Command::Export { output } => match backup::export_file(&config, output.as_deref()) {
            Ok(count) => done(&format!("exported {count} entries (secrets sealed; keep the key file apart)")),
            Err(e) => fail(&format_args!("export failed: {e}"), e.exit_code()),
        },
        Command::Import { input } => match backup::import_file(&config, &input) {
            Ok(count) => {
                done(&format!("imported {count} entries; start tokend with the key the backup was sealed with"))
            }
            Err(e) => fail(&format_args!("import failed: {e}"), e.exit_code()),
        },
        Command::Migrate => match backup::migrate(&config) {
            Ok(version) => done(&format!("database schema at version {version}")),
            Err(e) => fail(&format_args!("migrate failed: {e}"), e.exit_code()),
        },
        _ => serve(config, cli),
    }
}

fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = <Cli as clap::CommandFactory>::command();
    // Into a buffer: clap_complete panics when stdout is a closed pipe (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "tokend", &mut script);
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
    ExitCode::SUCCESS
}

fn gen_key() -> ExitCode {
    let text = tokend::crypto::generate_key_text();
    match tokend::crypto::decode_key(&text) {
        Ok(key) => {
            eprintln!("key id {:08x} (logs and `tokenctl rotate-keys` name keys by id)", tokend::crypto::key_id(&key))
        }
        Err(e) => eprintln!("tokend: {e}"),
    }
    println!("{}", text.as_str());
    ExitCode::SUCCESS
}

fn mint_token(role: Role, name: &str, profiles: &[String]) -> ExitCode {
    let token = tokend::crypto::random_token();
    let hash = tokend::access::hash_token(&token);
    println!("token (shown once; give it to the caller): {token}");
    println!(
        "config:\n[[callers]]\nname = {name:?}\nrole = \"{role}\"\ntoken_sha256 = {hash:?}\nprofiles = {profiles:?}"
    );
    ExitCode::SUCCESS
}

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP reloads with the same file, environment
/// and flags.
fn serve(config: Config, cli: Cli) -> ExitCode {
    tokend::telemetry::init(config.log.format, &config.log.level);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokend::daemon::build_runtime(None) {
        Ok(rt) => rt,
        Err(e) => return fail(&format_args!("starting the runtime: {e}"), 1),
    };
    // The key itself, kept apart from the configuration (never printed by check-config); set
    // but empty counts as unset.
    let env_key = std::env::var("TOKEND_KEY").ok().filter(|key| !key.is_empty()).map(Zeroizing::new);
    let options = StartOptions { env_key, ..Default::default() };
    let reload = move || load_config(&cli);
    match runtime.block_on(signals::serve(config, options, reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            fail(&format_args!("cannot start: {e}"), e.exit_code())
        }
    }
}

fn done(message: &str) -> ExitCode {
    eprintln!("tokend: {message}");
    ExitCode::SUCCESS
}

/// Prints `tokend: <why>` and exits with `code` (sysexits.h, see `StartError::exit_code`).
fn fail(why: &dyn std::fmt::Display, code: impl TryInto<u8>) -> ExitCode {
    eprintln!("tokend: {why}");
    ExitCode::from(code.try_into().unwrap_or(1))
}
