//! `tokenctl`: the admin client of tokend. Manages profiles and their connections over gRPC and
//! hands access tokens to scripts.
//!
//! Exit codes: 0 ok; 1 failed; 2 usage; 3 not found; 4 not authenticated or not allowed;
//! 5 failed precondition (e.g. not connected); 6 unavailable (retry later); 7 invalid argument or
//! already exists.

mod cli;
mod client;
mod commands;
mod failure;
mod input;
mod maintenance;
mod render;
mod tls;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::*;
use crate::client::*;
use crate::failure::*;

/// Runs the command.
async fn run(cli: Cli) -> Outcome {
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "tokenctl", &mut std::io::stdout());
        return Ok(());
    }
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
        Command::RotateKeys { dry_run } => client.rotate_keys(dry_run).await,
        Command::Backup { file } => client.backup(&file).await,
        Command::Completions { .. } => Ok(()),
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
