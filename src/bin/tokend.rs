//! `tokend`: the daemon, and its operator chores as subcommands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokend::config::{Config, LogFormat, Role};
use tokend::daemon::{Daemon, StartOptions};

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

fn load_config(cli: &Cli) -> Result<Config, tokend::config::ConfigError> {
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
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::GenKey) => {
            let text = tokend::crypto::generate_key_text();
            match tokend::crypto::decode_key(&text) {
                Ok(key) => eprintln!(
                    "key id {:08x} (logs and `tokenctl rotate-keys` name keys by id)",
                    tokend::crypto::key_id(&key)
                ),
                Err(e) => eprintln!("tokend: {e}"),
            }
            println!("{}", text.as_str());
            return ExitCode::SUCCESS;
        }
        Some(Command::Completions { shell }) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "tokend", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::MintToken { role, name, profiles }) => {
            let token = tokend::crypto::random_token();
            let hash = tokend::grpc::auth::hash_token(&token);
            println!("token (shown once; give it to the caller): {token}");
            println!(
                "config:\n[[callers]]\nname = {name:?}\nrole = \"{role}\"\ntoken_sha256 = {hash:?}\nprofiles = {profiles:?}"
            );
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tokend: {e}");
            return ExitCode::from(78);
        }
    };
    match &cli.command {
        Some(Command::Export { output }) => return export(&config, output.as_deref()),
        Some(Command::Import { input }) => return import(&config, input),
        _ => {}
    }
    if matches!(cli.command, Some(Command::CheckConfig)) {
        match toml::to_string_pretty(&config) {
            Ok(text) => {
                println!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("tokend: {e}");
                return ExitCode::from(78);
            }
        }
    }
    tokend::telemetry::init(config.log.format, &config.log.level);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokend: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config, cli))
}

fn export(config: &Config, output: Option<&std::path::Path>) -> ExitCode {
    let result = match output {
        Some(path) => std::fs::File::create(path)
            .map_err(|e| tokend::daemon::StartError::Data(format!("{}: {e}", path.display())))
            .and_then(|file| tokend::daemon::backup::export(config, &mut std::io::BufWriter::new(file))),
        None => tokend::daemon::backup::export(config, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(count) => {
            eprintln!("tokend: exported {count} entries (secrets sealed; keep the key file apart)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokend: export failed: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn import(config: &Config, input: &std::path::Path) -> ExitCode {
    let result = std::fs::File::open(input)
        .map_err(|e| tokend::daemon::StartError::Data(format!("{}: {e}", input.display())))
        .and_then(|file| tokend::daemon::backup::import(config, &mut std::io::BufReader::new(file)));
    match result {
        Ok(count) => {
            eprintln!("tokend: imported {count} entries; start tokend with the key the backup was sealed with");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokend: import failed: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

async fn serve(config: Config, cli: Cli) -> ExitCode {
    let daemon = match Daemon::start(config, StartOptions::default()).await {
        Ok(daemon) => daemon,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("tokend: cannot start: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let stop = daemon.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
    spawn_reload_on_sighup(daemon.reload_handle(), cli);
    daemon.wait().await;
    ExitCode::SUCCESS
}

/// SIGHUP reloads the configuration file: callers, the TLS certificate and declared profiles
/// change without a restart; a configuration that does not load is logged and changes nothing.
fn spawn_reload_on_sighup(handle: tokend::daemon::ReloadHandle, cli: Cli) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else { return };
        while hangup.recv().await.is_some() {
            let result = match load_config(&cli) {
                Ok(config) => handle.reload(&config).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                tracing::error!("reload refused, nothing changed: {e}");
            }
        }
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
