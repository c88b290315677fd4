//! A worker that gets its access tokens from tokend: one `GetAccessToken` call, then a
//! `WatchAccessToken` stream that delivers each new token after a refresh (reconnecting when the
//! stream ends, e.g. when tokend restarts).
//!
//! ```sh
//! TOKEND_ADDR=http://127.0.0.1:50051 TOKEND_TOKEN=… cargo run --example worker -- box-attachments
//! ```
//!
//! It prints token versions and expiry times, never the tokens.

use std::time::Duration;

use tokend::api::pb::{GetAccessTokenRequest, WatchAccessTokenRequest, tokens_client::TokensClient};
use tokend::client::Bearer;
use tonic::transport::Endpoint;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let profile = std::env::args().nth(1).ok_or("usage: worker PROFILE")?;
    let addr = std::env::var("TOKEND_ADDR").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    let bearer = Bearer::new(&std::env::var("TOKEND_TOKEN")?)?;
    let channel = Endpoint::from_shared(addr)?.connect_timeout(Duration::from_secs(5)).connect_lazy();
    let mut tokens = TokensClient::with_interceptor(channel, bearer);

    // A token valid for at least two minutes: tokend answers from memory, refreshing first only
    // when the one it holds is too old.
    let min_valid_for = Some(prost_types::Duration { seconds: 120, nanos: 0 });
    let token =
        tokens.get_access_token(GetAccessTokenRequest { name: profile.clone(), min_valid_for }).await?.into_inner();
    println!("{profile}: token version {} expires at {:?}", token.token_version, token.expires_at);
    // Use `token.access_token` as the `Authorization: Bearer` of the mailbox or file store here.

    // The streaming variant: the current token, then each new one.
    loop {
        let request = WatchAccessTokenRequest { name: profile.clone(), min_valid_for: None };
        match tokens.watch_access_token(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                while let Some(token) = stream.message().await? {
                    println!("{profile}: token version {} expires at {:?}", token.token_version, token.expires_at);
                }
                eprintln!("{profile}: stream ended (tokend restarting?); reconnecting");
            }
            Err(status) if status.code() == tonic::Code::Unavailable => eprintln!("{profile}: {status}; retrying"),
            Err(status) => return Err(status.into()),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
