//! `FakeProvider`: a scriptable, in-process OAuth 2.0 authorization server for
//! tokend's integration tests.
//!
//! It listens on `127.0.0.1:0` and serves `GET /authorize` (code flow + PKCE S256),
//! `POST /token` (authorization_code, refresh_token, client_credentials, device_code),
//! `POST /device` (RFC 8628), `POST /revoke` (RFC 7009), `POST /introspect`
//! (RFC 7662), `GET /userinfo` (OpenID, bearer) and its metadata at `GET /.well-known/oauth-authorization-server` (RFC 8414)
//! and `GET /.well-known/openid-configuration`. Tests script failures with
//! [`FakeProvider::push_fault`] and inspect what the client did through the counters and
//! recorders. Dropping the provider stops it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// Every PKCE code verifier any fake provider in this process received: secrets tokend must never
/// log (the other secrets the provider hands out carry recognizable `fake-…-` prefixes).
pub static SEEN_VERIFIERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Behaviour switches of a [`FakeProvider`]; change them later with [`FakeProvider::set_options`].
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// The only client the provider knows. Default `"test-client"`.
    pub client_id: String,
    /// That client's secret. Default `"test-secret"`.
    pub client_secret: String,
    /// Lifetime of new access tokens, sent as `expires_in`; `<= 0` issues already-expired tokens. Default 3600.
    pub access_token_lifetime_secs: i64,
    /// Every refresh returns a new refresh token and voids the presented one. Default true.
    /// When false the refresh reply repeats the presented (still valid) refresh token.
    pub rotate_refresh_tokens: bool,
    /// With `Some(d)` the rotated-out refresh token is still accepted for `d`; such a retry gets
    /// back exactly the same reply (same access and refresh token) as the rotation did. Default None.
    pub reuse_grace: Option<Duration>,
    /// Presenting a voided refresh token revokes its whole grant (like panva's oidc-provider). Default true.
    pub revoke_grant_on_reuse: bool,
    /// authorization_code and device grants get a refresh token (client_credentials never does). Default true.
    pub issue_refresh_token: bool,
    /// Minimum seconds between device-code polls (`slow_down` below it; 0 disables). Default 1.
    pub device_interval_secs: u64,
    /// Lifetime of device codes (`expired_token` after it). Default 600.
    pub device_code_lifetime_secs: u64,
    /// Sent as `refresh_token_expires_in` with every refresh token (GitHub does). Default None.
    pub refresh_token_lifetime_secs: Option<i64>,
    /// Serve RFC 8414 metadata at `/.well-known/oauth-authorization-server`. Default true.
    pub serve_oauth_metadata: bool,
    /// Serve OpenID metadata at `/.well-known/openid-configuration`. Default true.
    pub serve_openid_metadata: bool,
    /// The `issuer` the metadata names; None: the provider's own base URL. Default None.
    pub metadata_issuer: Option<String>,
    /// The base URL the metadata and device replies use, e.g. a TLS front's `https://…`;
    /// None: `http://127.0.0.1:PORT`. Default None.
    pub public_base: Option<String>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            client_id: "test-client".into(),
            client_secret: "test-secret".into(),
            access_token_lifetime_secs: 3600,
            rotate_refresh_tokens: true,
            reuse_grace: None,
            revoke_grant_on_reuse: true,
            issue_refresh_token: true,
            device_interval_secs: 1,
            device_code_lifetime_secs: 600,
            refresh_token_lifetime_secs: None,
            serve_oauth_metadata: true,
            serve_openid_metadata: true,
            metadata_issuer: None,
            public_base: None,
        }
    }
}

/// A failure injected into the next `POST /token` request (FIFO, each used once).
#[derive(Clone, Debug)]
pub enum Fault {
    /// Reply with this status and `{"error": ...}`: `temporarily_unavailable` for 503,
    /// `server_error` for other 5xx, `invalid_request` otherwise. State is untouched.
    Status(u16),
    /// Reply with exactly this status, content type (`""` = none) and body. State is untouched.
    StatusBody { status: u16, content_type: &'static str, body: String },
    /// 429 with `Retry-After: <secs>` and `{"error":"temporarily_unavailable"}`.
    RateLimited { retry_after_secs: u64 },
    /// Sleep, then process the request normally (it commits even if the client gave up).
    Delay(Duration),
    /// 400 `invalid_grant` without touching state.
    InvalidGrant,
    /// 401 `invalid_client` without touching state.
    InvalidClient,
    /// Process normally but send `"expires_in"` as a JSON string.
    ExpiresInAsString,
    /// Process normally but omit `expires_in`.
    NoExpiresIn,
    /// Process normally without rotating; the reply carries no `refresh_token` (a code/device
    /// grant then gets none at all, a refresh keeps the presented token valid).
    NoRefreshTokenInReply,
    /// Process normally (a refresh rotates), then answer `200 OK` with a body that is not JSON:
    /// the reply a client cannot read although the provider committed.
    CommitThenGarbage,
}

/// What the client sent in a `POST /token` request.
#[derive(Clone, Debug, Default)]
pub struct RecordedRequest {
    /// Whether an `Authorization: Basic` header was present.
    pub used_basic_auth: bool,
}

#[derive(Clone, Debug)]
struct Issued {
    access_token: String,
    refresh_token: Option<String>,
    scope: String,
    expires_in: i64,
}

struct Grant {
    client_id: String,
    scope: String,
    current: Option<String>,
    /// Last rotated-out refresh token, when it was rotated and the reply it got.
    previous: Option<(String, Instant, Issued)>,
    revoked: bool,
}

struct AccessToken {
    grant: Option<usize>,
    client_id: String,
    scope: String,
    expires_at: Instant,
    revoked: bool,
}

struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
    expires_at: Instant,
}

#[derive(Clone, Copy, PartialEq)]
enum DeviceStatus {
    Pending,
    Approved,
    Denied,
    Used,
}

struct Device {
    user_code: String,
    client_id: String,
    scope: String,
    expires_at: Instant,
    last_poll: Option<Instant>,
    status: DeviceStatus,
}

#[derive(Default)]
struct Inner {
    opts: FakeOptions,
    faults: VecDeque<Fault>,
    counts: HashMap<String, usize>,
    revoked: Vec<String>,
    codes: HashMap<String, Code>,
    grants: Vec<Grant>,
    refresh_owner: HashMap<String, usize>,
    access: HashMap<String, AccessToken>,
    issued_at: Vec<String>,
    issued_rt: Vec<String>,
    devices: HashMap<String, Device>,
    deny_next_consent: bool,
    last_authorize: Option<HashMap<String, String>>,
    last_token: Option<RecordedRequest>,
    /// Refreshes that presented a rotated-out refresh token (inside or outside the grace window).
    reuse_events: usize,
    /// `GET` requests for metadata, by path.
    metadata_requests: HashMap<String, usize>,
}

struct Shared {
    base: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running fake authorization server; dropping it shuts the server down.
pub struct FakeProvider {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

impl FakeProvider {
    /// Starts a provider with [`FakeOptions::default`].
    pub async fn start() -> FakeProvider {
        Self::start_with(FakeOptions::default()).await
    }

    /// Starts a provider with the given options on a fresh loopback port.
    pub async fn start_with(opts: FakeOptions) -> FakeProvider {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("fake provider: cannot bind 127.0.0.1:0: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("fake provider: no local address: {e}"),
        };
        let (tx, rx) = watch::channel(false);
        let inner = Inner { opts, ..Inner::default() };
        let shared = Arc::new(Shared { base: format!("http://{addr}"), inner: Mutex::new(inner) });
        let app = Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/device", post(device))
            .route("/revoke", post(revoke))
            .route("/introspect", post(introspect))
            .route("/userinfo", get(userinfo))
            .route("/.well-known/oauth-authorization-server", get(oauth_metadata))
            .route("/.well-known/openid-configuration", get(openid_metadata))
            .with_state(shared.clone());
        let mut stop = rx;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        });
        tokio::spawn(async move {
            let _ = server.await;
        });
        FakeProvider { shared, addr, shutdown: tx }
    }

    /// The socket address the provider listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.shared.base)
    }

    /// URL of `GET /authorize`.
    pub fn authorization_endpoint(&self) -> String {
        self.url("/authorize")
    }

    /// URL of `POST /token`.
    pub fn token_endpoint(&self) -> String {
        self.url("/token")
    }

    /// URL of `POST /revoke` (RFC 7009).
    pub fn revocation_endpoint(&self) -> String {
        self.url("/revoke")
    }

    /// URL of `POST /device` (RFC 8628 device authorization).
    pub fn device_authorization_endpoint(&self) -> String {
        self.url("/device")
    }

    /// The issuer its metadata names by default: the base URL (`http://127.0.0.1:PORT`).
    pub fn issuer(&self) -> String {
        self.shared.base.clone()
    }

    /// How many times a metadata document was asked for at `path`
    /// (e.g. `/.well-known/openid-configuration`).
    pub fn metadata_requests(&self, path: &str) -> usize {
        self.shared.lock().metadata_requests.get(path).copied().unwrap_or(0)
    }

    /// Queues a fault for the next `POST /token` request that finds no earlier fault queued.
    pub fn push_fault(&self, fault: Fault) {
        self.shared.lock().faults.push_back(fault);
    }

    /// Changes options in place, e.g. `p.set_options(|o| o.reuse_grace = Some(d))`.
    pub fn set_options(&self, change: impl FnOnce(&mut FakeOptions)) {
        change(&mut self.shared.lock().opts);
    }

    /// Sets the lifetime (and `expires_in`) of access tokens issued from now on.
    pub fn set_access_token_lifetime(&self, secs: i64) {
        self.set_options(|o| o.access_token_lifetime_secs = secs);
    }

    /// Sets the reuse grace window of rotated-out refresh tokens.
    pub fn set_reuse_grace(&self, grace: Option<Duration>) {
        self.set_options(|o| o.reuse_grace = grace);
    }

    /// Makes the next `GET /authorize` redirect with `error=access_denied`.
    pub fn deny_next_consent(&self) {
        self.shared.lock().deny_next_consent = true;
    }

    /// How many `POST /token` requests carried this `grant_type` (faulted ones included;
    /// requests without `grant_type` count under `""`).
    pub fn token_requests(&self, grant_type: &str) -> usize {
        self.shared.lock().counts.get(grant_type).copied().unwrap_or(0)
    }

    /// Same as `token_requests("refresh_token")`.
    pub fn refresh_requests(&self) -> usize {
        self.token_requests("refresh_token")
    }

    /// How many refreshes presented a rotated-out refresh token: a client that lost a rotation
    /// or refreshed twice with one token.
    pub fn reuse_events(&self) -> usize {
        self.shared.lock().reuse_events
    }

    /// Every `token` value posted to `/revoke` by an authenticated client, in order.
    pub fn revoked(&self) -> Vec<String> {
        self.shared.lock().revoked.clone()
    }

    /// The current refresh token of the most recently created grant; None if there is no
    /// grant, it has no refresh token, or it was revoked.
    pub fn current_refresh_token(&self) -> Option<String> {
        let inner = self.shared.lock();
        let grant = inner.grants.last()?;
        if grant.revoked { None } else { grant.current.clone() }
    }

    /// Every access token ever issued, oldest first (for "no secret in the logs" checks).
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.shared.lock().issued_at.clone()
    }

    /// Every refresh token ever issued, oldest first.
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        self.shared.lock().issued_rt.clone()
    }

    /// Whether this access token was issued here, has not expired, and neither it nor its grant is revoked.
    pub fn is_active(&self, access_token: &str) -> bool {
        access_active(&self.shared.lock(), access_token)
    }

    /// Revokes every grant (the user withdrew consent): their refresh and access tokens die.
    pub fn revoke_all_grants(&self) {
        for grant in &mut self.shared.lock().grants {
            grant.revoked = true;
        }
    }

    /// Approves the pending device authorization with this user code. Panics if unknown.
    pub fn approve_device(&self, user_code: &str) {
        self.set_device_status(user_code, DeviceStatus::Approved);
    }

    /// Denies the pending device authorization with this user code. Panics if unknown.
    pub fn deny_device(&self, user_code: &str) {
        self.set_device_status(user_code, DeviceStatus::Denied);
    }

    fn set_device_status(&self, user_code: &str, status: DeviceStatus) {
        let mut inner = self.shared.lock();
        let found = inner.devices.values_mut().find(|d| d.user_code.eq_ignore_ascii_case(user_code));
        match found {
            Some(d) if d.status == DeviceStatus::Pending => d.status = status,
            Some(_) => panic!("fake provider: user code {user_code} was already decided"),
            None => panic!("fake provider: unknown user code {user_code}"),
        }
    }

    /// Query parameters of the last `GET /authorize`.
    pub fn last_authorize_query(&self) -> Option<HashMap<String, String>> {
        self.shared.lock().last_authorize.clone()
    }

    /// The last `POST /token` request as received (recorded before any fault applies).
    pub fn last_token_request(&self) -> Option<RecordedRequest> {
        self.shared.lock().last_token.clone()
    }
}

// ---------------------------------------------------------------- replies

/// An OAuth error reply (RFC 6749 §5.2).
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

fn err(status: u16, error: &'static str, description: impl Into<String>) -> OAuthError {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    OAuthError { status, error, description: description.into() }
}

fn invalid_grant(description: &str) -> OAuthError {
    err(400, "invalid_grant", description)
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "error_description": self.description});
        let mut resp = json_reply(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = HeaderValue::from_static("Basic realm=\"fake-provider\"");
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        resp
    }
}

fn json_reply(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// Reply shaping requested by a fault.
#[derive(Clone, Copy, Default)]
struct Shape {
    expires_as_string: bool,
    no_expires_in: bool,
    no_refresh_token: bool,
    refresh_token_expires_in: Option<i64>,
    garbage: bool,
}

fn token_reply(issued: &Issued, shape: &Shape) -> Response {
    let mut body = Map::new();
    body.insert("access_token".into(), issued.access_token.clone().into());
    body.insert("token_type".into(), "Bearer".into());
    if shape.expires_as_string {
        body.insert("expires_in".into(), issued.expires_in.to_string().into());
    } else if !shape.no_expires_in {
        body.insert("expires_in".into(), issued.expires_in.into());
    }
    if let Some(rt) = issued.refresh_token.as_ref().filter(|_| !shape.no_refresh_token) {
        body.insert("refresh_token".into(), rt.clone().into());
        if let Some(secs) = shape.refresh_token_expires_in {
            body.insert("refresh_token_expires_in".into(), secs.into());
        }
    }
    if !issued.scope.is_empty() {
        body.insert("scope".into(), issued.scope.clone().into());
    }
    json_reply(StatusCode::OK, &Value::Object(body))
}

// ---------------------------------------------------------------- request helpers

fn random(prefix: &str) -> String {
    let tail: String = rand::rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
    format!("{prefix}{tail}")
}

fn user_code() -> String {
    const LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut rng = rand::rng();
    let mut half = || -> String { (0..4).map(|_| char::from(LETTERS[rng.random_range(0..LETTERS.len())])).collect() };
    format!("{}-{}", half(), half())
}

fn pairs(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

/// Parses a form body: requires the form content type and no repeated parameter (RFC 6749 §3.2).
fn parse_form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        return Err(err(400, "invalid_request", "expected application/x-www-form-urlencoded"));
    }
    let mut form = HashMap::new();
    for (key, value) in pairs(body) {
        if form.insert(key.clone(), value).is_some() {
            return Err(err(400, "invalid_request", format!("parameter {key} repeated")));
        }
    }
    Ok(form)
}

/// `Ok(None)` without a Basic header; `Err` for a malformed one; otherwise the raw decoded pair.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, ()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ())?;
    match value.split_once(' ') {
        Some((scheme, b64)) if scheme.eq_ignore_ascii_case("basic") => {
            let decoded = STANDARD.decode(b64.trim()).map_err(|_| ())?;
            let text = String::from_utf8(decoded).map_err(|_| ())?;
            let (id, secret) = text.split_once(':').ok_or(())?;
            Ok(Some((id.to_string(), secret.to_string())))
        }
        _ => Ok(None),
    }
}

/// Compares a Basic credential with the expected value, accepting it plain or form-url-encoded.
fn credential_matches(sent: &str, expected: &str) -> bool {
    if sent == expected {
        return true;
    }
    let decoded = url::form_urlencoded::parse(format!("v={sent}").as_bytes()).next().map(|(_, v)| v.into_owned());
    !sent.contains(['&', '=']) && decoded.as_deref() == Some(expected)
}

/// Authenticates the client; `allow_public` accepts a bare `client_id` (device flow).
fn authenticate(
    opts: &FakeOptions,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    allow_public: bool,
) -> Result<String, OAuthError> {
    let bad_client = || err(401, "invalid_client", "client authentication failed");
    let body_id = form.get("client_id");
    let ok = match basic_credentials(headers).map_err(|()| bad_client())? {
        Some(_) if form.contains_key("client_secret") => {
            return Err(err(400, "invalid_request", "more than one client authentication method"));
        }
        Some((id, secret)) => {
            credential_matches(&id, &opts.client_id)
                && credential_matches(&secret, &opts.client_secret)
                && body_id.is_none_or(|b| *b == opts.client_id)
        }
        None => match form.get("client_secret") {
            Some(secret) => body_id == Some(&opts.client_id) && *secret == opts.client_secret,
            None => allow_public && body_id == Some(&opts.client_id),
        },
    };
    if ok { Ok(opts.client_id.clone()) } else { Err(bad_client()) }
}

fn required<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str, OAuthError> {
    match form.get(name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(err(400, "invalid_request", format!("missing {name}"))),
    }
}

fn access_active(inner: &Inner, token: &str) -> bool {
    inner.access.get(token).is_some_and(|at| {
        !at.revoked
            && Instant::now() < at.expires_at
            && at.grant.is_none_or(|g| inner.grants.get(g).is_some_and(|g| !g.revoked))
    })
}

fn issue_access(inner: &mut Inner, grant: Option<usize>, client_id: &str, scope: &str) -> String {
    let token = random("fake-at-");
    let lifetime = inner.opts.access_token_lifetime_secs;
    let expires_at = Instant::now() + Duration::from_secs(u64::try_from(lifetime).unwrap_or(0));
    let entry = AccessToken { grant, client_id: client_id.into(), scope: scope.into(), expires_at, revoked: false };
    inner.access.insert(token.clone(), entry);
    inner.issued_at.push(token.clone());
    token
}

fn issue_refresh(inner: &mut Inner, grant: usize) -> String {
    let token = random("fake-rt-");
    inner.refresh_owner.insert(token.clone(), grant);
    inner.issued_rt.push(token.clone());
    token
}

/// Creates a grant (authorization_code / device) and its first tokens.
fn new_grant(inner: &mut Inner, client_id: &str, scope: String, no_refresh: bool) -> Issued {
    let id = inner.grants.len();
    let refresh_token = (inner.opts.issue_refresh_token && !no_refresh).then(|| issue_refresh(inner, id));
    let access_token = issue_access(inner, Some(id), client_id, &scope);
    let grant = Grant {
        client_id: client_id.into(),
        scope: scope.clone(),
        current: refresh_token.clone(),
        previous: None,
        revoked: false,
    };
    inner.grants.push(grant);
    Issued { access_token, refresh_token, scope, expires_in: inner.opts.access_token_lifetime_secs }
}

// ---------------------------------------------------------------- grants

fn token_grant(inner: &mut Inner, headers: &HeaderMap, body: &[u8], shape: &Shape) -> Result<Issued, OAuthError> {
    let form = parse_form(headers, body)?;
    let grant_type = required(&form, "grant_type")?;
    let device = grant_type == "urn:ietf:params:oauth:grant-type:device_code";
    let client_id = authenticate(&inner.opts, headers, &form, device)?;
    match grant_type {
        "authorization_code" => code_grant(inner, &form, &client_id, shape),
        "refresh_token" => refresh_grant(inner, &form, &client_id, shape),
        "client_credentials" => {
            let scope = form.get("scope").cloned().unwrap_or_default();
            let access_token = issue_access(inner, None, &client_id, &scope);
            Ok(Issued { access_token, refresh_token: None, scope, expires_in: inner.opts.access_token_lifetime_secs })
        }
        _ if device => device_grant(inner, &form, &client_id, shape),
        other => Err(err(400, "unsupported_grant_type", format!("grant_type {other} not supported"))),
    }
}

fn code_grant(
    inner: &mut Inner,
    form: &HashMap<String, String>,
    client_id: &str,
    shape: &Shape,
) -> Result<Issued, OAuthError> {
    let code = inner.codes.remove(required(form, "code")?).ok_or_else(|| invalid_grant("unknown or used code"))?;
    if Instant::now() >= code.expires_at || code.client_id != client_id {
        return Err(invalid_grant("code expired or issued to another client"));
    }
    if form.get("redirect_uri") != Some(&code.redirect_uri) {
        return Err(invalid_grant("redirect_uri differs from the one sent to /authorize"));
    }
    let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
    if let Ok(mut seen) = SEEN_VERIFIERS.lock() {
        seen.push(verifier.to_owned());
    }
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !well_formed || URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != code.challenge {
        return Err(invalid_grant("PKCE verification failed"));
    }
    Ok(new_grant(inner, client_id, code.scope, shape.no_refresh_token))
}

fn refresh_grant(
    inner: &mut Inner,
    form: &HashMap<String, String>,
    client_id: &str,
    shape: &Shape,
) -> Result<Issued, OAuthError> {
    let presented = required(form, "refresh_token")?;
    let id = *inner.refresh_owner.get(presented).ok_or_else(|| invalid_grant("unknown refresh token"))?;
    let opts = inner.opts.clone();
    let Some(grant) = inner.grants.get_mut(id) else {
        return Err(invalid_grant("unknown grant"));
    };
    if grant.revoked || grant.client_id != client_id {
        return Err(invalid_grant("grant revoked or issued to another client"));
    }
    let scope = match form.get("scope") {
        Some(s) if !s.split(' ').all(|want| grant.scope.split(' ').any(|have| have == want)) => {
            return Err(err(400, "invalid_scope", "scope exceeds the original grant"));
        }
        Some(s) => s.clone(),
        None => grant.scope.clone(),
    };
    if grant.current.as_deref() != Some(presented) {
        inner.reuse_events += 1;
        let Some(grant) = inner.grants.get_mut(id) else {
            return Err(invalid_grant("unknown grant"));
        };
        let now = Instant::now();
        if let Some((old, at, reply)) = &grant.previous
            && old == presented
            && opts.reuse_grace.is_some_and(|grace| now < *at + grace)
        {
            return Ok(reply.clone());
        }
        if opts.revoke_grant_on_reuse {
            grant.revoked = true;
        }
        return Err(invalid_grant("refresh token was rotated out"));
    }
    let access_token = issue_access(inner, Some(id), client_id, &scope);
    let rotate = opts.rotate_refresh_tokens && !shape.no_refresh_token;
    let refresh_token = if rotate { issue_refresh(inner, id) } else { presented.to_string() };
    let issued = Issued {
        access_token,
        refresh_token: Some(refresh_token.clone()),
        scope,
        expires_in: opts.access_token_lifetime_secs,
    };
    if rotate && let Some(grant) = inner.grants.get_mut(id) {
        grant.previous = Some((presented.to_string(), Instant::now(), issued.clone()));
        grant.current = Some(refresh_token);
    }
    Ok(issued)
}

fn device_grant(
    inner: &mut Inner,
    form: &HashMap<String, String>,
    client_id: &str,
    shape: &Shape,
) -> Result<Issued, OAuthError> {
    let interval = Duration::from_secs(inner.opts.device_interval_secs);
    let code = required(form, "device_code")?;
    let dev = inner.devices.get_mut(code).filter(|d| d.client_id == client_id);
    let dev = dev.ok_or_else(|| invalid_grant("unknown device_code"))?;
    let now = Instant::now();
    if now >= dev.expires_at {
        return Err(err(400, "expired_token", "device code expired"));
    }
    let too_fast = dev.last_poll.is_some_and(|last| now < last + interval);
    dev.last_poll = Some(now);
    match dev.status {
        DeviceStatus::Denied => Err(err(400, "access_denied", "the user denied the request")),
        DeviceStatus::Used => Err(invalid_grant("device code already used")),
        _ if too_fast => Err(err(400, "slow_down", "polling faster than the interval")),
        DeviceStatus::Pending => Err(err(400, "authorization_pending", "waiting for the user")),
        DeviceStatus::Approved => {
            dev.status = DeviceStatus::Used;
            let scope = dev.scope.clone();
            Ok(new_grant(inner, client_id, scope, shape.no_refresh_token))
        }
    }
}

// ---------------------------------------------------------------- handlers

async fn token(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = {
        let mut inner = sh.lock();
        let form: HashMap<String, String> = pairs(&body).into_iter().collect();
        *inner.counts.entry(form.get("grant_type").cloned().unwrap_or_default()).or_default() += 1;
        let used_basic_auth = basic_credentials(&headers).ok().flatten().is_some();
        inner.last_token = Some(RecordedRequest { used_basic_auth });
        inner.faults.pop_front()
    };
    let mut shape = Shape { refresh_token_expires_in: sh.lock().opts.refresh_token_lifetime_secs, ..Shape::default() };
    let mut delay = None;
    match fault {
        None => {}
        Some(Fault::Status(code)) => {
            let error = match code {
                503 => "temporarily_unavailable",
                500..=599 => "server_error",
                _ => "invalid_request",
            };
            return err(code, error, "injected fault").into_response();
        }
        Some(Fault::StatusBody { status, content_type, body }) => {
            let mut resp = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
            resp.headers_mut().remove(header::CONTENT_TYPE);
            if !content_type.is_empty()
                && let Ok(value) = HeaderValue::from_str(content_type)
            {
                resp.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            return resp;
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut resp = err(429, "temporarily_unavailable", "rate limited").into_response();
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return resp;
        }
        Some(Fault::Delay(d)) => delay = Some(d),
        Some(Fault::InvalidGrant) => return invalid_grant("injected fault").into_response(),
        Some(Fault::InvalidClient) => {
            return err(401, "invalid_client", "injected fault").into_response();
        }
        Some(Fault::ExpiresInAsString) => shape.expires_as_string = true,
        Some(Fault::NoExpiresIn) => shape.no_expires_in = true,
        Some(Fault::NoRefreshTokenInReply) => shape.no_refresh_token = true,
        Some(Fault::CommitThenGarbage) => shape.garbage = true,
    }
    // Processed in its own task so that a client giving up (hyper then drops this handler)
    // does not cancel the commit: a delayed request still rotates the token.
    let work = async move {
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        token_grant(&mut sh.lock(), &headers, &body, &shape)
    };
    let result = match tokio::spawn(work).await {
        Ok(result) => result,
        Err(_) => Err(err(500, "server_error", "fake provider task failed")),
    };
    match result {
        Ok(_) if shape.garbage => (StatusCode::OK, "<html>upstream reset</html>").into_response(),
        Ok(issued) => token_reply(&issued, &shape),
        Err(e) => e.into_response(),
    }
}

async fn device(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut inner = sh.lock();
    let result = parse_form(&headers, &body).and_then(|form| {
        let client_id = authenticate(&inner.opts, &headers, &form, true)?;
        Ok((client_id, form.get("scope").cloned().unwrap_or_default()))
    });
    let (client_id, scope) = match result {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let (device_code, user_code) = (random("fake-dc-"), user_code());
    let lifetime = inner.opts.device_code_lifetime_secs;
    let interval = inner.opts.device_interval_secs;
    let verify = format!("{}/device/verify", inner.opts.public_base.as_deref().unwrap_or(&sh.base));
    let expires_at = Instant::now() + Duration::from_secs(lifetime);
    let entry = Device {
        user_code: user_code.clone(),
        client_id,
        scope,
        expires_at,
        last_poll: None,
        status: DeviceStatus::Pending,
    };
    inner.devices.insert(device_code.clone(), entry);
    let body = json!({
        "device_code": device_code, "user_code": user_code,
        "verification_uri": verify, "verification_uri_complete": format!("{verify}?user_code={user_code}"),
        "expires_in": lifetime, "interval": interval,
    });
    json_reply(StatusCode::OK, &body)
}

/// Shared front half of `/revoke` and `/introspect`: form, client authentication, `token`.
fn authed_token(inner: &Inner, headers: &HeaderMap, body: &[u8]) -> Result<String, OAuthError> {
    let form = parse_form(headers, body)?;
    authenticate(&inner.opts, headers, &form, false)?;
    required(&form, "token").map(String::from)
}

async fn revoke(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut inner = sh.lock();
    let token = match authed_token(&inner, &headers, &body) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    inner.revoked.push(token.clone());
    if let Some(&id) = inner.refresh_owner.get(&token) {
        if let Some(grant) = inner.grants.get_mut(id) {
            grant.revoked = true;
        }
    } else if let Some(at) = inner.access.get_mut(&token) {
        at.revoked = true;
    }
    StatusCode::OK.into_response()
}

/// Access tokens are active per [`FakeProvider::is_active`]; refresh tokens while they are
/// the current one of a live grant (a token inside its reuse grace reads as inactive).
async fn introspect(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let inner = sh.lock();
    let token = match authed_token(&inner, &headers, &body) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let grant = inner.refresh_owner.get(&token).and_then(|&id| inner.grants.get(id));
    let body = match (inner.access.get(&token), grant) {
        (Some(at), _) if access_active(&inner, &token) => {
            let left = at.expires_at.saturating_duration_since(Instant::now());
            json!({"active": true, "token_type": "Bearer", "client_id": at.client_id,
                   "scope": at.scope, "exp": unix_now() + left.as_secs()})
        }
        (_, Some(g)) if !g.revoked && g.current.as_deref() == Some(token.as_str()) => {
            json!({"active": true, "token_type": "refresh_token", "client_id": g.client_id, "scope": g.scope})
        }
        _ => json!({"active": false}),
    };
    json_reply(StatusCode::OK, &body)
}

/// The account every grant belongs to, as `/userinfo` names it.
pub const USERINFO_EMAIL: &str = "consenting.user@fake.test";

/// OpenID userinfo for an active bearer access token; 401 otherwise.
async fn userinfo(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        Some(token) if access_active(&sh.lock(), token) => {
            json_reply(StatusCode::OK, &json!({"sub": "fake-user-1", "email": USERINFO_EMAIL}))
        }
        _ => err(401, "invalid_token", "no active bearer access token").into_response(),
    }
}

/// RFC 8414 metadata, when [`FakeOptions::serve_oauth_metadata`] is on.
async fn oauth_metadata(State(sh): State<Arc<Shared>>) -> Response {
    metadata(&sh, "/.well-known/oauth-authorization-server", |o| o.serve_oauth_metadata)
}

/// OpenID Connect discovery, when [`FakeOptions::serve_openid_metadata`] is on.
async fn openid_metadata(State(sh): State<Arc<Shared>>) -> Response {
    metadata(&sh, "/.well-known/openid-configuration", |o| o.serve_openid_metadata)
}

fn metadata(sh: &Shared, path: &str, served: fn(&FakeOptions) -> bool) -> Response {
    let mut inner = sh.lock();
    *inner.metadata_requests.entry(path.to_owned()).or_default() += 1;
    if !served(&inner.opts) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let base = inner.opts.public_base.clone().unwrap_or_else(|| sh.base.clone());
    let issuer = inner.opts.metadata_issuer.clone().unwrap_or_else(|| base.clone());
    let body = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "revocation_endpoint": format!("{base}/revoke"),
        "introspection_endpoint": format!("{base}/introspect"),
        "device_authorization_endpoint": format!("{base}/device"),
        "userinfo_endpoint": format!("{base}/userinfo"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials",
                                  "urn:ietf:params:oauth:grant-type:device_code"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
    });
    json_reply(StatusCode::OK, &body)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn authorize(State(sh): State<Arc<Shared>>, uri: Uri) -> Response {
    let query: HashMap<String, String> = pairs(uri.query().unwrap_or("").as_bytes()).into_iter().collect();
    let mut inner = sh.lock();
    inner.last_authorize = Some(query.clone());
    let param = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
    let redirect = url::Url::parse(param("redirect_uri"));
    let mut redirect = match redirect {
        Ok(url) if param("client_id") == inner.opts.client_id => url,
        _ => {
            return (StatusCode::BAD_REQUEST, "unknown client_id or bad redirect_uri").into_response();
        }
    };
    let problem = if param("response_type") != "code" {
        Some("response_type must be code")
    } else if param("code_challenge").is_empty() || param("code_challenge_method") != "S256" {
        Some("PKCE with code_challenge_method=S256 is required")
    } else if param("state").is_empty() {
        Some("state is required")
    } else {
        None
    };
    let denied = std::mem::take(&mut inner.deny_next_consent);
    {
        let mut out = redirect.query_pairs_mut();
        match (problem, denied) {
            (Some(problem), _) => out.append_pair("error", "invalid_request").append_pair("error_description", problem),
            (None, true) => {
                out.append_pair("error", "access_denied").append_pair("error_description", "the user denied consent")
            }
            (None, false) => {
                let code = random("fake-code-");
                let entry = Code {
                    client_id: inner.opts.client_id.clone(),
                    redirect_uri: param("redirect_uri").into(),
                    challenge: param("code_challenge").into(),
                    scope: param("scope").into(),
                    expires_at: Instant::now() + Duration::from_secs(60),
                };
                inner.codes.insert(code.clone(), entry);
                out.append_pair("code", &code)
            }
        };
        if !param("state").is_empty() {
            out.append_pair("state", param("state"));
        }
    }
    (StatusCode::FOUND, [(header::LOCATION, redirect.to_string())]).into_response()
}
