//! `tokend.v1.Tokens`: the worker surface.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret as _;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::{Callers, caller, caller_watch};
use super::bound::{Replies, bound_to_caller};
use super::status::to_status;
use super::watch_wire::WatchReply;
use crate::access::Caller;
use crate::access::audit::Tally;
use crate::api::pb;
use crate::api::pb::tokens_server::Tokens;
use crate::engine::{Engine, HotToken, TokenUpdate};
use crate::profile::timestamp;

/// The service implementation over the engine's hand-out path.
#[derive(Debug, Clone)]
pub struct TokensService {
    engine: Arc<Engine>,
    /// The caller table, for watch streams to follow their caller across reloads.
    callers: Callers,
    shutdown: CancellationToken,
}

impl TokensService {
    /// The service; `shutdown` ends watch streams, and so does a reload of `callers` that
    /// removes a stream's caller or takes the profile from its patterns.
    pub fn new(engine: Arc<Engine>, callers: Callers, shutdown: CancellationToken) -> Self {
        Self { engine, callers, shutdown }
    }

    /// `WatchAccessToken`: the token now, then each newer one as soon as it is published, until
    /// the profile is deleted, the caller loses it in a reload, or the daemon stops.
    pub(super) async fn watch_replies(
        &self,
        request: Request<pb::WatchAccessTokenRequest>,
    ) -> Result<Replies<WatchReply>, Status> {
        let watch = caller_watch(&self.callers, &request)?;
        let request = request.into_inner();
        let current = watch.current();
        current.load().require_token(&request.name)?;
        let min = min_valid_for(request.min_valid_for.as_ref())?;
        let name: Arc<str> = request.name.into();
        // Subscribe first, so a refresh between the first answer and the subscription is seen.
        let token_watch = self.engine.watch_token(&name);
        let first = self.engine.access_token(&name, min).await.map_err(to_status)?;
        // The tally this stream counts in, looked up again only when a reload replaced the caller.
        let mut tallied = TalliedCaller::of(current.load_full(), &name);
        tallied.tally.record(first.at_ms, first.token.token_version);
        let engine = Arc::clone(&self.engine);
        let stream_name = Arc::clone(&name);
        let updates = token_watch.updates(first.token.token_version).map(move |update| match update {
            TokenUpdate::Deleted => Err(Status::not_found(format!("profile {stream_name:?} was deleted"))),
            TokenUpdate::Token(token) => {
                // The caller as it now stands: a reload's audit writer reads that one's tallies.
                let caller = current.load();
                if !Arc::ptr_eq(&caller, &tallied.caller) {
                    tallied = TalliedCaller::of(Arc::clone(&caller), &stream_name);
                }
                tallied.tally.record(engine.clock().now_ms(), token.token_version);
                Ok(WatchReply { name: Arc::clone(&stream_name), token })
            }
        });
        let first = WatchReply { name: Arc::clone(&name), token: first.token };
        let replies = Box::pin(tokio_stream::once(Ok(first)).chain(updates));
        let allowed = Box::new(move |caller: &Caller| Ok(caller.require_token(&name)?));
        Ok(bound_to_caller(replies, watch, allowed, self.shutdown.clone()))
    }
}

/// A caller and its hand-out tally of one profile.
struct TalliedCaller {
    caller: Arc<Caller>,
    tally: Arc<Tally>,
}

impl TalliedCaller {
    fn of(caller: Arc<Caller>, profile: &str) -> Self {
        let tally = caller.handouts.tally(profile);
        Self { caller, tally }
    }
}

fn min_valid_for(d: Option<&prost_types::Duration>) -> Result<Option<Duration>, Status> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(Status::invalid_argument("min_valid_for: must not be negative")),
        Some(d) if d.seconds > 24 * 3600 => Err(Status::invalid_argument("min_valid_for: at most 24 h")),
        Some(d) => Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32))),
    }
}

/// The reply that hands `token` out as profile `name`.
pub(super) fn reply(name: String, token: &HotToken) -> pb::AccessToken {
    pb::AccessToken {
        name,
        access_token: token.access_token.expose_secret().to_owned(),
        token_type: token.token_type.clone(),
        expires_at: timestamp(token.expires_at_ms),
        scopes: token.scopes.to_vec(),
        token_version: token.token_version,
    }
}

#[tonic::async_trait]
impl Tokens for TokensService {
    async fn get_access_token(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::AccessToken>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        // Authorization before existence: a consumer learns nothing about names outside its patterns.
        caller.require_token(&request.name)?;
        let min = min_valid_for(request.min_valid_for.as_ref())?;
        let handout = self.engine.access_token(&request.name, min).await.map_err(to_status)?;
        caller.handouts.record(&request.name, handout.at_ms, handout.token.token_version);
        Ok(Response::new(reply(request.name, &handout.token)))
    }

    type WatchAccessTokenStream = Replies<pb::AccessToken>;

    /// The generated trait's form of the method: what a `TokensServer` alone would serve. The
    /// daemon serves `WatchAccessToken` through [`super::watch_wire::TokensRoutes`] instead, which
    /// sends the same replies, encoded once per token for all its streams.
    async fn watch_access_token(
        &self,
        request: Request<pb::WatchAccessTokenRequest>,
    ) -> Result<Response<Self::WatchAccessTokenStream>, Status> {
        let replies = self.watch_replies(request).await?;
        Ok(Response::new(Box::pin(replies.map(|sent| sent.map(pb::AccessToken::from)))))
    }
}
