//! `WatchAccessToken` on the wire: a token's reply is encoded once and copied to every stream
//! that sends it. A refresh fans out to thousands of streams of one profile (#17), and the
//! generated server's codec would build and encode the same message for each of them.
//! [`TokensRoutes`] serves that one method with [`WireCodec`] and hands every other
//! `tokend.v1.Tokens` call to the generated server.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message as _;
use prost::bytes::BufMut;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstDecoder;
use zeroize::Zeroizing;

use super::bound::Replies;
use super::tokens::{TokensService, reply};
use crate::api::pb;
use crate::api::pb::tokens_server::TokensServer;
use crate::engine::{HotToken, WireReply};

/// The method [`TokensRoutes`] serves itself.
const WATCH_PATH: &str = "/tokend.v1.Tokens/WatchAccessToken";

/// A reply's first buffer: one message (about 150 bytes with a short token) and its frame
/// header, where tonic's default is 8 KiB per stream, most of which an idle stream never uses.
const REPLY_BUFFER_BYTES: usize = 512;

/// How much encoded output a stream gathers before it yields a frame: tonic's default.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// One reply of a watch stream: `token`, sent as the profile `name`.
#[derive(Debug, Clone)]
pub struct WatchReply {
    /// The profile name the stream asked for.
    pub name: Arc<str>,
    /// The token to send.
    pub token: Arc<HotToken>,
}

impl From<WatchReply> for pb::AccessToken {
    fn from(sent: WatchReply) -> Self {
        reply(sent.name.to_string(), &sent.token)
    }
}

impl WatchReply {
    /// Writes the encoded message: the token's shared encoding ([`HotToken::wire`], made by the
    /// first stream to send it), or one of its own if that was made for another name.
    fn encode_to(&self, dst: &mut impl BufMut) -> Result<(), Status> {
        let wire = self.token.wire.get_or_init(|| WireReply {
            name: self.name.as_ref().into(),
            bytes: Zeroizing::new(reply(self.name.to_string(), &self.token).encode_to_vec()),
        });
        if *wire.name == *self.name {
            dst.put_slice(&wire.bytes);
            return Ok(());
        }
        reply(self.name.to_string(), &self.token)
            .encode(dst)
            .map_err(|e| Status::internal(format!("encoding a reply: {e}")))
    }
}

/// Writes [`WatchReply`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct WireEncoder;

impl Encoder for WireEncoder {
    type Item = WatchReply;
    type Error = Status;

    fn encode(&mut self, item: WatchReply, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode_to(dst)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(REPLY_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
    }
}

/// `WatchAccessToken`'s codec: requests decoded as usual, replies written by [`WireEncoder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WireCodec;

impl Codec for WireCodec {
    type Encode = WatchReply;
    type Decode = pb::WatchAccessTokenRequest;
    type Encoder = WireEncoder;
    type Decoder = ProstDecoder<pb::WatchAccessTokenRequest>;

    fn encoder(&mut self) -> WireEncoder {
        WireEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// `WatchAccessToken` as a tower service of decoded requests.
#[derive(Debug, Clone)]
struct WatchMethod(TokensService);

impl Service<Request<pb::WatchAccessTokenRequest>> for WatchMethod {
    type Response = Response<Replies<WatchReply>>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<pb::WatchAccessTokenRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch_replies(request).await.map(Response::new) })
    }
}

/// `tokend.v1.Tokens`: `WatchAccessToken` with [`WireCodec`], every other method by the
/// generated server, both with the same message size limit.
#[derive(Debug, Clone)]
pub struct TokensRoutes {
    generated: TokensServer<TokensService>,
    service: TokensService,
    max_message_bytes: usize,
}

impl TokensRoutes {
    /// The routes of `service`, whose messages may be up to `max_message_bytes` either way.
    pub fn new(service: TokensService, max_message_bytes: usize) -> Self {
        let generated = TokensServer::new(service.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Self { generated, service, max_message_bytes }
    }
}

impl NamedService for TokensRoutes {
    const NAME: &'static str = <TokensServer<TokensService> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for TokensRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != WATCH_PATH {
            return self.generated.call(request);
        }
        let method = WatchMethod(self.service.clone());
        let limit = Some(self.max_message_bytes);
        Box::pin(async move {
            let mut grpc = Grpc::new(WireCodec).apply_max_message_size_config(limit, limit);
            Ok(grpc.server_streaming(method, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use secrecy::SecretString;

    use super::*;

    fn token() -> Arc<HotToken> {
        Arc::new(HotToken {
            access_token: SecretString::from("at-1"),
            token_type: "Bearer".into(),
            expires_at_ms: 1_900_000_000_000,
            issued_at_ms: 1_800_000_000_000,
            scopes: vec!["mail.read".to_owned(), "offline_access".to_owned()].into(),
            token_version: 7,
            wire: OnceLock::new(),
        })
    }

    fn encoded(sent: &WatchReply) -> Vec<u8> {
        let mut buf = Vec::new();
        sent.encode_to(&mut buf).unwrap();
        buf
    }

    /// Every stream sends exactly what the generated server would have encoded for it, from one
    /// encoding per token; a stream under another name gets its own.
    #[test]
    fn the_shared_encoding_is_the_reply() {
        let token = token();
        let name: Arc<str> = "mail-in".into();
        let sent = WatchReply { name: Arc::clone(&name), token: Arc::clone(&token) };
        let expected = pb::AccessToken::from(sent.clone()).encode_to_vec();
        assert_eq!(encoded(&sent), expected);
        assert_eq!(encoded(&sent), expected, "the second stream copies the first encoding");
        assert_eq!(token.wire.get().map(|w| w.bytes.to_vec()), Some(expected.clone()));
        let decoded = pb::AccessToken::decode(expected.as_slice()).unwrap();
        assert_eq!((decoded.name.as_str(), decoded.token_version), ("mail-in", 7));

        let other = WatchReply { name: "mail-other".into(), token };
        let own = encoded(&other);
        assert_eq!(own, pb::AccessToken::from(other).encode_to_vec());
        assert_eq!(pb::AccessToken::decode(own.as_slice()).unwrap().name, "mail-other");
    }
}
