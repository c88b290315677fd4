//! What every gRPC client of tokend needs (tokenctl, the tests, the benchmarks, the example
//! worker): the bearer-token interceptor, written once.

use secrecy::{ExposeSecret as _, SecretString};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A channel whose every call carries the caller's bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// The token holds characters an HTTP header cannot carry.
#[derive(Debug, thiserror::Error)]
#[error("the bearer token holds characters a header cannot carry")]
pub struct InvalidToken;

/// Adds `authorization: Bearer <token>` to every call (nothing for an empty token, so tests can
/// call as an unauthenticated client through the same type). The header value is marked
/// sensitive, so HTTP/2 never indexes it and `Debug` never prints it.
#[derive(Clone, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Bearer").field(&self.0.as_ref().map(|_| "<redacted>")).finish()
    }
}

impl Bearer {
    /// An interceptor sending `token` (surrounding whitespace removed; empty: no header).
    pub fn new(token: &str) -> Result<Self, InvalidToken> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(Self(None));
        }
        let mut value = AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| InvalidToken)?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }

    /// An interceptor sending a token kept as a secret.
    pub fn from_secret(token: &SecretString) -> Result<Self, InvalidToken> {
        Self::new(token.expose_secret())
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header carries the trimmed token; an empty token sends none; Debug shows no token.
    #[test]
    fn adds_the_header() {
        let mut bearer = Bearer::new(" s3cret\n").unwrap();
        let request = bearer.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer s3cret");
        assert!(!format!("{bearer:?}").contains("s3cret"));
        let mut none = Bearer::new("").unwrap();
        assert!(none.call(tonic::Request::new(())).unwrap().metadata().get("authorization").is_none());
        assert!(Bearer::new("bad\u{7f}token").is_err());
    }
}
