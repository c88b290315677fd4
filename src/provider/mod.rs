//! The OAuth 2.0 protocol client: authorization URLs with PKCE, code exchange, refresh, client
//! credentials (through the oauth2 crate) and RFC 7009 revocation, over tokend's own HTTP layer.

mod account;
mod deny;
mod discovery;
mod endpoint;
mod error;
mod http;
mod presets;
mod token_response;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use oauth2::basic::{BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, Scope,
    StandardDeviceAuthorizationResponse, StandardRevocableToken, TokenResponse as _, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

pub use deny::{DEFAULT_DENY_NETWORKS, DeniedAddress, DenyList, Network};
pub use discovery::{Discovered, DiscoveryError, grant_type_name, metadata_urls, preferred_auth_method};
pub use endpoint::{is_loopback, parse_endpoint};
pub use error::ProviderError;
pub use http::{HttpError, HttpOptions, ProviderHttp};
pub use presets::{AuthMethod, PRESETS, Preset, fill_tenant, invalid_grant_hint, preset, preset_ids};
pub use token_response::{LenientTokenResponse, MAX_LIFETIME};

use error::{classify, sanitize};

/// Keeps provider-supplied text short and printable before it reaches a message or a log.
pub fn sanitize_text(text: &str) -> String {
    sanitize(text)
}

/// oauth2's client with tokend's lenient token reply; endpoints come from profiles at run time.
type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    LenientTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointMaybeSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Everything needed to talk to one profile's provider, resolved from the profile and its preset.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret (none for public clients).
    pub client_secret: Option<SecretString>,
    /// Token endpoint authentication.
    pub auth_method: AuthMethod,
    /// Where browsers consent.
    pub authorization_endpoint: Option<Url>,
    /// Where tokens come from.
    pub token_endpoint: Url,
    /// RFC 7009 revocation endpoint.
    pub revocation_endpoint: Option<Url>,
    /// RFC 8628 device authorization endpoint.
    pub device_authorization_endpoint: Option<Url>,
    /// OpenID Connect userinfo endpoint (from issuer metadata): who consented, when the token
    /// reply does not say.
    pub userinfo_endpoint: Option<Url>,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Extra authorization URL parameters.
    pub extra_authorization_params: BTreeMap<String, String>,
    /// Redirect URI registered with the provider.
    pub redirect_uri: Option<Url>,
}

/// A token reply, with secrets wrapped.
#[derive(Debug, Clone)]
pub struct TokenSet {
    /// The access token.
    pub access_token: SecretString,
    /// The refresh token, when the reply carried one.
    pub refresh_token: Option<SecretString>,
    /// Token type as sent ("Bearer" when absent).
    pub token_type: String,
    /// Usable lifetime (absent, zero and negative values give `None`; huge ones are clamped).
    pub expires_in: Option<Duration>,
    /// `expires_in` as sent, for logging absurd values.
    pub raw_expires_in: Option<i64>,
    /// Granted scopes, when the reply lists them.
    pub scopes: Option<Vec<String>>,
    /// Refresh-token lifetime, where the provider says it.
    pub refresh_token_expires_in: Option<Duration>,
    /// Who consented, from the ID token's claims, where present.
    pub account: Option<String>,
    /// Non-secret extra reply fields worth showing.
    pub metadata: BTreeMap<String, String>,
}

impl TokenSet {
    fn from_reply(reply: &LenientTokenResponse) -> Self {
        let token_type = match reply.token_type() {
            oauth2::basic::BasicTokenType::Bearer => "Bearer".to_owned(),
            oauth2::basic::BasicTokenType::Mac => "MAC".to_owned(),
            oauth2::basic::BasicTokenType::Extension(other) => other.clone(),
        };
        Self {
            access_token: SecretString::from(reply.access_token().secret().clone()),
            refresh_token: reply.refresh_token().map(|t| SecretString::from(t.secret().clone())),
            token_type,
            expires_in: reply.expires_in(),
            raw_expires_in: reply.raw_expires_in(),
            scopes: reply.scopes().map(|s| s.iter().map(|s| s.to_string()).collect()),
            refresh_token_expires_in: reply.refresh_token_expires_in(),
            account: reply.id_token().and_then(account::account_from_id_token),
            metadata: reply.metadata(),
        }
    }
}

/// Parses a successful token endpoint reply body the way tokend does (lenient rules, secrets
/// wrapped); for tools and fuzzing. Errors never echo the body.
pub fn parse_token_reply(body: &[u8]) -> Result<TokenSet, ProviderError> {
    serde_json::from_slice::<LenientTokenResponse>(body).map(|reply| TokenSet::from_reply(&reply)).map_err(|e| {
        ProviderError::BadReply { status: 200, reason: format!("not a usable token reply ({:?})", e.classify()) }
    })
}

/// A started authorization-code consent: the URL to open, and what must be kept to finish it.
#[derive(Debug)]
pub struct AuthorizationStart {
    /// The URL the admin opens.
    pub url: Url,
    /// The PKCE verifier to send with the code.
    pub pkce_verifier: SecretString,
}

/// A started device authorization (RFC 8628): what the user must do, and what the poller needs.
#[derive(Debug)]
pub struct DeviceStart {
    /// Where the user goes.
    pub verification_uri: String,
    /// The same, with the user code filled in, where the provider offers it.
    pub verification_uri_complete: Option<String>,
    /// The code the user types.
    pub user_code: String,
    /// How often to poll.
    pub interval: Duration,
    /// How long the codes stay valid.
    pub expires_in: Duration,
    /// The provider's reply, carrying the device code (secret), for polling.
    pub details: StandardDeviceAuthorizationResponse,
}

/// The protocol client; cheap to clone.
#[derive(Debug, Clone)]
pub struct Provider {
    http: ProviderHttp,
}

impl Provider {
    /// A client over `http`.
    pub fn new(http: ProviderHttp) -> Self {
        Self { http }
    }

    /// Fetches and checks the authorization server metadata of `issuer` (RFC 8414, then OpenID
    /// Connect Discovery); see [`discovery`](self::discovery).
    pub async fn discover(&self, issuer: &str, allow_insecure_http: bool) -> Result<Discovered, DiscoveryError> {
        discovery::discover(&self.http, issuer, allow_insecure_http).await
    }

    /// Fills in who consented from the userinfo endpoint when the token reply named nobody
    /// (best effort: a failure leaves it empty).
    pub async fn with_account(&self, s: &ProviderSettings, tokens: TokenSet) -> TokenSet {
        account::with_userinfo(&self.http, s, tokens).await
    }

    /// Refuses an endpoint whose host is a literal address in the deny-list, so a profile
    /// naming one is refused when it is written, not only when it is used.
    pub fn check_endpoint(&self, url: &Url) -> Result<(), DeniedAddress> {
        self.http.check_literal(url)
    }

    fn client(&self, s: &ProviderSettings) -> OAuthClient {
        let mut client = oauth2::Client::new(ClientId::new(s.client_id.clone()))
            .set_auth_uri_option(s.authorization_endpoint.clone().map(AuthUrl::from_url))
            .set_token_uri(TokenUrl::from_url(s.token_endpoint.clone()))
            .set_auth_type(match s.auth_method {
                AuthMethod::ClientSecretBasic => AuthType::BasicAuth,
                AuthMethod::ClientSecretPost | AuthMethod::None => AuthType::RequestBody,
            });
        if let (Some(secret), false) = (&s.client_secret, s.auth_method == AuthMethod::None) {
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        if let Some(redirect) = &s.redirect_uri {
            client = client.set_redirect_uri(RedirectUrl::from_url(redirect.clone()));
        }
        client
    }

    /// Builds the authorization URL for a consent bound to `state`, with a fresh PKCE (S256)
    /// challenge.
    pub fn authorization_url(&self, s: &ProviderSettings, state: &str) -> Result<AuthorizationStart, ProviderError> {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.client(s);
        let state = state.to_owned();
        let mut request = client
            .authorize_url(move || CsrfToken::new(state))
            .map_err(|_| ProviderError::Config("the profile has no authorization_endpoint".into()))?
            .add_scopes(s.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge);
        for (key, value) in &s.extra_authorization_params {
            request = request.add_extra_param(key.clone(), value.clone());
        }
        let (url, _) = request.url();
        Ok(AuthorizationStart { url, pkce_verifier: SecretString::from(verifier.secret().clone()) })
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    pub async fn exchange_code(
        &self,
        s: &ProviderSettings,
        code: &SecretString,
        pkce_verifier: &SecretString,
    ) -> Result<TokenSet, ProviderError> {
        let recorder = self.http.recording();
        let result = self
            .client(s)
            .exchange_code(AuthorizationCode::new(code.expose_secret().to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.expose_secret().to_owned()))
            .request_async(&recorder)
            .await;
        result.map(|r| TokenSet::from_reply(&r)).map_err(|e| classify(e, recorder.meta()))
    }

    /// Starts a device authorization (RFC 8628 §3.1).
    pub async fn device_authorization(&self, s: &ProviderSettings) -> Result<DeviceStart, ProviderError> {
        let Some(url) = &s.device_authorization_endpoint else {
            return Err(ProviderError::Config("the profile has no device_authorization_endpoint".into()));
        };
        let recorder = self.http.recording();
        let client = self.client(s).set_device_authorization_url(DeviceAuthorizationUrl::from_url(url.clone()));
        let result = client
            .exchange_device_code()
            .add_scopes(s.scopes.iter().cloned().map(Scope::new))
            .request_async(&recorder)
            .await;
        let details: StandardDeviceAuthorizationResponse = result.map_err(|e| classify(e, recorder.meta()))?;
        Ok(DeviceStart {
            verification_uri: details.verification_uri().to_string(),
            verification_uri_complete: details.verification_uri_complete().map(|u| u.secret().clone()),
            user_code: details.user_code().secret().clone(),
            interval: details.interval(),
            expires_in: details.expires_in(),
            details,
        })
    }

    /// Polls the token endpoint until the user approves (tokens), denies or lets the code expire
    /// (`Rejected` with `access_denied` / `expired_token`). `authorization_pending` keeps the
    /// interval and `slow_down` adds 5 s (oauth2's poller). Dropping the future stops polling.
    pub async fn poll_device(
        &self,
        s: &ProviderSettings,
        details: &StandardDeviceAuthorizationResponse,
    ) -> Result<TokenSet, ProviderError> {
        let recorder = self.http.recording();
        let client = self.client(s);
        let result = client
            .exchange_device_access_token(details)
            .set_max_backoff_interval(Duration::from_secs(30))
            .request_async(&recorder, tokio::time::sleep, Some(details.expires_in()))
            .await;
        result.map(|r| TokenSet::from_reply(&r)).map_err(|e| classify(e, recorder.meta()))
    }

    /// Refreshes with `refresh_token` (RFC 6749 §6).
    pub async fn refresh(&self, s: &ProviderSettings, refresh_token: &SecretString) -> Result<TokenSet, ProviderError> {
        let recorder = self.http.recording();
        let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let client = self.client(s);
        let result = client.exchange_refresh_token(&token).request_async(&recorder).await;
        result.map(|r| TokenSet::from_reply(&r)).map_err(|e| classify(e, recorder.meta()))
    }

    /// Acquires a token with the client credentials grant.
    pub async fn client_credentials(&self, s: &ProviderSettings) -> Result<TokenSet, ProviderError> {
        let recorder = self.http.recording();
        let client = self.client(s);
        let result = client
            .exchange_client_credentials()
            .add_scopes(s.scopes.iter().cloned().map(Scope::new))
            .request_async(&recorder)
            .await;
        result.map(|r| TokenSet::from_reply(&r)).map_err(|e| classify(e, recorder.meta()))
    }

    /// Revokes a token (RFC 7009). Written here rather than through oauth2, whose revocation
    /// refuses plain-http URLs, which loopback providers (tests, on-host proxies) use.
    pub async fn revoke(&self, s: &ProviderSettings, token: &SecretString, hint: &str) -> Result<(), ProviderError> {
        let Some(endpoint) = &s.revocation_endpoint else {
            return Err(ProviderError::Config("the profile has no revocation_endpoint".into()));
        };
        let mut builder = ::http::Request::builder()
            .method(::http::Method::POST)
            .uri(endpoint.as_str())
            .header(::http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(::http::header::ACCEPT, "application/json");
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token.expose_secret()).append_pair("token_type_hint", hint);
            match (s.auth_method, &s.client_secret) {
                (AuthMethod::ClientSecretBasic, Some(secret)) => {
                    let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
                    let pair = format!("{}:{}", enc(&s.client_id), enc(secret.expose_secret()));
                    let basic = base64::engine::general_purpose::STANDARD.encode(pair);
                    builder = builder.header(::http::header::AUTHORIZATION, format!("Basic {basic}"));
                }
                (_, secret) => {
                    form.append_pair("client_id", &s.client_id);
                    if let (Some(secret), false) = (secret, s.auth_method == AuthMethod::None) {
                        form.append_pair("client_secret", secret.expose_secret());
                    }
                }
            }
            form.finish().into_bytes()
        };
        let request = builder.body(body).map_err(|e| ProviderError::Config(format!("revocation request: {e}")))?;
        let (reply, meta) = self.http.send(request).await.map_err(|e| error::from_http(e, &Default::default()))?;
        if reply.status().is_success() {
            return Ok(());
        }
        let detail = serde_json::from_slice::<BasicErrorResponse>(reply.body())
            .map(|e| sanitize(&e.to_string()))
            .unwrap_or_else(|_| "no OAuth error body".into());
        Err(ProviderError::Rejected { error: format!("HTTP {}", meta.status), description: Some(detail) })
    }
}
