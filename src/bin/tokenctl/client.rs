//! Connecting to tokend with a bearer token.

use std::time::Duration;

use secrecy::SecretString;
use tokend::api::pb::{
    connected_apps_client::ConnectedAppsClient, maintenance_client::MaintenanceClient, tokens_client::TokensClient,
};
use tokend::client::{Authed, Bearer};
use tonic::transport::Endpoint;

use crate::cli::*;
use crate::failure::*;

/// The connected clients and how to print.
pub(crate) struct Client {
    pub(crate) apps: ConnectedAppsClient<Authed>,
    pub(crate) tokens: TokensClient<Authed>,
    pub(crate) maintenance: MaintenanceClient<Authed>,
    pub(crate) hints: Hints,
    pub(crate) output: Output,
}

/// The bearer token: `--token`, else `--token-file`, else `<data-dir>/admin.token`.
pub(crate) fn load_token(cli: &Cli) -> Outcome<SecretString> {
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
pub(crate) async fn connect(cli: &Cli) -> Outcome<Client> {
    let token = load_token(cli)?;
    let bearer = Bearer::from_secret(&token)
        .map_err(|_| Failure::new(4, "the bearer token holds characters a header cannot carry", None))?;
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
    Ok(Client {
        apps: ConnectedAppsClient::with_interceptor(channel.clone(), bearer.clone()),
        tokens: TokensClient::with_interceptor(channel.clone(), bearer.clone()),
        maintenance: MaintenanceClient::with_interceptor(channel, bearer),
        hints: Hints { addr: cli.addr.clone(), data_dir: cli.data_dir.clone() },
        output: cli.output,
    })
}
