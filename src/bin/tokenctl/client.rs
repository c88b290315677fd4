//! Connecting to tokend: plain text, TLS or a Unix socket; a bearer token, a client
//! certificate, or both.

use std::time::Duration;

use secrecy::SecretString;
use tokend::api::pb::{
    connected_apps_client::ConnectedAppsClient, maintenance_client::MaintenanceClient, tokens_client::TokensClient,
};
use tokend::client::{Authed, Bearer};
use tonic::transport::Endpoint;

use crate::cli::*;
use crate::failure::*;
use crate::tls::*;

/// The connected clients and how to print.
pub(crate) struct Client {
    pub(crate) apps: ConnectedAppsClient<Authed>,
    pub(crate) tokens: TokensClient<Authed>,
    pub(crate) maintenance: MaintenanceClient<Authed>,
    pub(crate) hints: Hints,
    pub(crate) output: Output,
}

/// The bearer token: `--token`, else `--token-file`, else none when a client certificate
/// identifies us (tokend prefers a bearer token to the certificate, so sending the data
/// directory's admin token would speak for someone else), else `<data-dir>/admin.token`.
pub(crate) fn load_token(cli: &Cli) -> Outcome<Option<SecretString>> {
    if let Some(token) = &cli.token {
        return Ok(Some(SecretString::from(token.trim().to_owned())));
    }
    if cli.token_file.is_none() && cli.cert_file.is_some() {
        return Ok(None);
    }
    let path = cli.token_file.clone().unwrap_or_else(|| cli.data_dir.join("admin.token"));
    let hint =
        || Some("pass --token, --token-file or --cert-file, or point --data-dir at tokend's data directory".to_owned());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failure::new(4, format!("reading the bearer token from {}: {e}", path.display()), hint()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::new(4, format!("{} is empty", path.display()), hint()));
    }
    Ok(Some(SecretString::from(token.to_owned())))
}

/// Connects to tokend (over TLS for an `https://` address) and builds the clients, which carry
/// the bearer token when there is one.
pub(crate) async fn connect(cli: &Cli) -> Outcome<Client> {
    let bearer = match load_token(cli)? {
        Some(token) => Bearer::from_secret(&token)
            .map_err(|_| Failure::new(4, "the bearer token holds characters a header cannot carry", None))?,
        None => Bearer::default(),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let limit = Duration::from_secs(cli.timeout);
    let mut endpoint = Endpoint::from_shared(cli.addr.clone())
        .map_err(|e| Failure::new(2, format!("--addr {:?}: {}", cli.addr, error_chain(&e)), None))?
        .connect_timeout(limit)
        .timeout(limit);
    if let Some(tls) = client_tls(cli)? {
        endpoint = endpoint.tls_config(tls).map_err(|e| {
            let hint = Some("pass --ca-file with the CA that signed tokend's certificate".to_owned());
            Failure::new(2, format!("TLS towards {}: {}", cli.addr, error_chain(&e)), hint)
        })?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let chain = error_chain(&e);
        let hint = if chain.contains("certificate") {
            "pass --ca-file with the CA that signed tokend's certificate, or add that CA to the system roots".to_owned()
        } else {
            format!("is tokend running at {}?", cli.addr)
        };
        Failure::new(6, format!("connecting to {}: {chain}", cli.addr), Some(hint))
    })?;
    Ok(Client {
        apps: ConnectedAppsClient::with_interceptor(channel.clone(), bearer.clone()),
        tokens: TokensClient::with_interceptor(channel.clone(), bearer.clone()),
        maintenance: MaintenanceClient::with_interceptor(channel, bearer),
        hints: Hints {
            addr: cli.addr.clone(),
            data_dir: cli.data_dir.clone(),
            by_certificate: cli.cert_file.is_some(),
        },
        output: cli.output,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use secrecy::ExposeSecret as _;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from([&["tokenctl"], args, &["list"]].concat()).unwrap()
    }

    /// A client certificate alone sends no bearer token, not even the data directory's admin
    /// token; an explicit token still goes with it; without a certificate the admin token is read.
    #[test]
    fn a_certificate_needs_no_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), "admin-token\n").unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let cert = ["--cert-file", "c.pem", "--key-file", "c.key", "--data-dir", data_dir];
        assert!(load_token(&cli(&cert)).unwrap().is_none());
        let both = load_token(&cli(&[&cert[..], &["--token", "explicit"]].concat())).unwrap();
        assert_eq!(both.unwrap().expose_secret(), "explicit");
        let admin = load_token(&cli(&["--data-dir", data_dir])).unwrap();
        assert_eq!(admin.unwrap().expose_secret(), "admin-token");
    }
}
