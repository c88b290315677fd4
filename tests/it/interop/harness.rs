//! The interop harness: the real authorization server (`node interop/server.mjs`, panva's
//! oidc-provider) and the real `tokend` binary as child processes, gRPC clients for tokend, and a
//! headless browser that drives the provider's login and consent pages with plain HTTP.
//!
//! Children are stopped on drop (panics included); when a test fails, the tails of their logs are
//! printed, so a CI failure shows what the daemon and the provider said.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oauth2::reqwest;
use serde_json::Value;
use tokend::api::pb;
use tokend::api::pb::connected_apps_client::ConnectedAppsClient;
use tokend::api::pb::tokens_client::TokensClient;
use tokend::client::{Authed, Bearer};
use tonic::transport::Channel;

/// The confidential client registered at the authorization server.
pub const CLIENT_ID: &str = "tokend-interop";
pub const CLIENT_SECRET: &str = "interop-secret-for-tests-7f3a9c";
/// The bearer token of tokend's admin caller.
pub const ADMIN_TOKEN: &str = "interop-admin-token-0123456789";
/// Who consents at the authorization server's login page.
pub const ACCOUNT: &str = "alice";

/// How long a child may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An HTTP client that follows no redirects (the test plays the browser).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends SIGTERM (there is no libc/nix dependency: the `kill` command does it).
fn sigterm(child: &Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
}

/// Waits for a child to exit, up to `limit`; kills it (SIGKILL) after that. Returns its status.
fn reap(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The authorization server
// ---------------------------------------------------------------------------------------------

/// Lifetimes the authorization server gives its tokens.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Access tokens of authorization-code grants (and their refreshes), in seconds.
    pub access_token_ttl: u64,
    /// Client-credentials access tokens, in seconds.
    pub client_credentials_ttl: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { access_token_ttl: 600, client_credentials_ttl: 600 }
    }
}

/// The endpoints the authorization server announces (OpenID Connect discovery).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub authorization: String,
    pub token: String,
    pub revocation: String,
    pub introspection: String,
    pub device_authorization: String,
}

/// `node interop/server.mjs`, running.
pub struct AuthServer {
    child: Child,
    pub issuer: String,
    pub endpoints: Endpoints,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl AuthServer {
    /// Starts the server on a free port and reads its endpoints from discovery. Fails (never
    /// skips) when Node or the npm packages are missing.
    pub async fn start(options: ServerOptions) -> AuthServer {
        let root = repo_root();
        let interop = root.join("interop");
        assert!(
            interop.join("node_modules/oidc-provider/package.json").is_file(),
            "interop/node_modules is missing: the interop suite needs the authorization server's npm packages. \
             Run `npm ci` in {} (Node.js 20.18+ and npm), then rerun `cargo test --test it interop::`.",
            interop.display()
        );
        let dir = crate::support::private_tempdir().expect("temp dir");
        let log = dir.path().join("oidc-provider.log");
        let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
        let mut child = Command::new(&node)
            .arg(interop.join("server.mjs"))
            .arg("0")
            .current_dir(&interop)
            .env("INTEROP_CLIENT_ID", CLIENT_ID)
            .env("INTEROP_CLIENT_SECRET", CLIENT_SECRET)
            .env("INTEROP_ACCESS_TOKEN_TTL", options.access_token_ttl.to_string())
            .env("INTEROP_CLIENT_CREDENTIALS_TTL", options.client_credentials_ttl.to_string())
            .env("INTEROP_EXIT_ON_STDIN_EOF", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("server log"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{node} interop/server.mjs` ({e}): the interop suite needs Node.js 20.18+ on PATH \
                     (or NODE=/path/to/node) and `npm ci` run in interop/"
                )
            });
        // The first stdout line says where it listens; read it off the runtime's threads.
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = sender.send(lines.next());
            // Keep draining, so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match tokio::time::timeout(START_TIMEOUT, receiver).await {
            Ok(Ok(Some(Ok(line)))) => line,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "interop/server.mjs did not announce its port; did you run `npm ci` in interop/? Its stderr:\n{}",
                    tail(&log, 40)
                );
            }
        };
        let announced: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad announce line {line:?}: {e}"));
        let issuer = announced["issuer"].as_str().expect("issuer").to_owned();
        let mut server = AuthServer {
            child,
            issuer: issuer.clone(),
            endpoints: Endpoints {
                authorization: String::new(),
                token: String::new(),
                revocation: String::new(),
                introspection: String::new(),
                device_authorization: String::new(),
            },
            log,
            _dir: dir,
        };
        let discovery = server.get_json(&format!("{issuer}/.well-known/openid-configuration")).await;
        assert_eq!(discovery["issuer"], issuer.as_str());
        let endpoint =
            |key: &str| discovery[key].as_str().unwrap_or_else(|| panic!("discovery lacks {key}")).to_owned();
        server.endpoints = Endpoints {
            authorization: endpoint("authorization_endpoint"),
            token: endpoint("token_endpoint"),
            revocation: endpoint("revocation_endpoint"),
            introspection: endpoint("introspection_endpoint"),
            device_authorization: endpoint("device_authorization_endpoint"),
        };
        server
    }

    async fn get_json(&self, url: &str) -> Value {
        let reply = http_client().get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = reply.status();
        let text = reply.text().await.expect("body");
        assert!(status.is_success(), "GET {url}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
    }

    /// RFC 7662 introspection with the client's credentials: the server's view of a token.
    pub async fn introspect(&self, token: &str) -> Value {
        let body = url::form_urlencoded::Serializer::new(String::new()).append_pair("token", token).finish();
        let reply = http_client()
            .post(&self.endpoints.introspection)
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .expect("introspection request");
        let status = reply.status();
        let text = reply.text().await.expect("introspection body");
        assert!(status.is_success(), "introspection: {status}: {text}");
        serde_json::from_str(&text).expect("introspection JSON")
    }

    /// Whether the server holds `token` as an active token.
    pub async fn is_active(&self, token: &str) -> bool {
        self.introspect(token).await["active"] == Value::Bool(true)
    }

    /// The server's counters of token endpoint outcomes (see `interop/server.mjs`).
    pub async fn stats(&self) -> Value {
        self.get_json(&format!("{}/_interop/stats", self.issuer)).await
    }

    /// Successful token endpoint calls of one grant type.
    pub async fn granted(&self, grant_type: &str) -> u64 {
        self.stats().await["granted"][grant_type].as_u64().unwrap_or(0)
    }

    /// Revokes every grant and its tokens at the server, behind tokend's back.
    pub async fn revoke_all_grants(&self) -> u64 {
        let url = format!("{}/_interop/revoke-grants", self.issuer);
        let reply = http_client().post(&url).send().await.expect("revoke grants");
        assert!(reply.status().is_success());
        let body: Value = serde_json::from_str(&reply.text().await.expect("body")).expect("JSON");
        body["revoked"].as_u64().expect("revoked count")
    }

    /// A `custom` profile for this server's confidential client, authorization code grant.
    pub fn profile(&self, name: &str) -> pb::Profile {
        pb::Profile {
            name: name.into(),
            description: format!("{name}: panva/oidc-provider at {}", self.issuer),
            provider: "custom".into(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            scopes: vec!["openid".into(), "offline_access".into()],
            authorization_endpoint: self.endpoints.authorization.clone(),
            token_endpoint: self.endpoints.token.clone(),
            revocation_endpoint: self.endpoints.revocation.clone(),
            issuer: self.issuer.clone(),
            ..Default::default()
        }
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- oidc-provider stderr (last lines) ----\n{}\n----", tail(&self.log, 40));
        }
        sigterm(&self.child);
        reap(&mut self.child, Duration::from_secs(3));
    }
}

// ---------------------------------------------------------------------------------------------
// tokend
// ---------------------------------------------------------------------------------------------

pub type Apps = ConnectedAppsClient<Authed>;
pub type Tokens = TokensClient<Authed>;

/// A free loopback port for tokend to take (see [`crate::support::ports`]).
fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()))
}

/// The real `tokend` binary, running as a child process on a temporary data directory.
pub struct Tokend {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
}

impl Tokend {
    /// Writes the configuration (an admin caller, a short refresh skew, quick backoff) and starts
    /// the daemon; returns once `/readyz` answers.
    pub async fn start() -> Tokend {
        Self::start_with("").await
    }

    /// [`Tokend::start`] with `extra` appended to the configuration file (sections other than
    /// `[refresh]`, `[log]` and `[[callers]]`, e.g. `[store]` for a replica on PostgreSQL).
    pub async fn start_with(extra: &str) -> Tokend {
        let dir = crate::support::private_tempdir().expect("temp dir");
        let config = dir.path().join("tokend.toml");
        let log = dir.path().join("tokend.log");
        let text = format!(
            r#"# tokend interop test configuration
[refresh]
skew_floor_secs = 2
backoff_initial_secs = 1
backoff_max_secs = 2
sweep_cron = "* * * * * *"

[log]
format = "json"
level = "info,tokend=debug"

[[callers]]
name = "interop-admin"
role = "admin"
token_sha256 = "{}"
"#,
            tokend::grpc::auth::hash_token(ADMIN_TOKEN)
        );
        std::fs::write(&config, format!("{text}\n{extra}")).expect("write config");
        let mut tokend = Tokend { child: None, grpc: free_port(), http: free_port(), dir, config, log };
        // A released port may be taken by someone else before tokend binds it: then new ports.
        for _ in 0..3 {
            if tokend.spawn().await {
                return tokend;
            }
            (tokend.grpc, tokend.http) = (free_port(), free_port());
        }
        panic!("tokend could not bind free ports three times; its log:\n{}", tail(&tokend.log, 40));
    }

    /// Starts the binary and waits until it is ready. `false`: it could not bind its ports.
    async fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("tokend log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tokend"));
        command
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--grpc-listen")
            .arg(self.grpc.to_string())
            .arg("--http-listen")
            .arg(self.http.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        // Only this test's configuration counts: no TOKEND_* from the environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TOKEND_") {
                command.env_remove(key);
            }
        }
        command.env_remove("RUST_LOG");
        let mut child = command.spawn().expect("start the tokend binary");
        let ready = format!("http://{}/readyz", self.http);
        let client = http_client();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(reply) = client.get(&ready).send().await
                && reply.status().is_success()
                && matches!(child.try_wait(), Ok(None))
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                // 69 (EX_UNAVAILABLE): a listener could not be bound.
                if status.code() == Some(69) {
                    return false;
                }
                panic!("tokend exited at start ({status}); its log:\n{}", tail(&self.log, 40));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tokend was not ready within {START_TIMEOUT:?}; its log:\n{}", tail(&self.log, 40));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        true
    }

    /// Stops the daemon with SIGTERM, checks that it exits cleanly, and says how long it took.
    pub async fn stop(&mut self) -> Duration {
        let Some(mut child) = self.child.take() else { return Duration::ZERO };
        let started = Instant::now();
        sigterm(&child);
        let status =
            tokio::task::spawn_blocking(move || reap(&mut child, Duration::from_secs(30))).await.expect("reap task");
        let took = started.elapsed();
        let status = status.unwrap_or_else(|| panic!("tokend ignored SIGTERM; log:\n{}", tail(&self.log, 40)));
        assert!(status.success(), "tokend exited with {status} on SIGTERM; log:\n{}", tail(&self.log, 40));
        took
    }

    /// SIGTERM, then start again on the same data directory and ports. Returns how long the
    /// stop took.
    pub async fn restart(&mut self) -> Duration {
        let took = self.stop().await;
        assert!(self.spawn().await, "tokend could not bind its ports again; log:\n{}", tail(&self.log, 40));
        took
    }

    /// Kills the daemon with SIGKILL: no shutdown, no release of what it holds.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `GET /readyz`'s status code (0: no answer).
    pub async fn readyz(&self) -> u16 {
        match http_client().get(format!("http://{}/readyz", self.http)).send().await {
            Ok(reply) => reply.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// tokend's OAuth callback, the redirect URI its profiles use by default.
    pub fn callback_url(&self) -> String {
        format!("http://{}/oauth/callback", self.http)
    }

    /// Everything tokend logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn channel(&self) -> (Channel, Bearer) {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect to tokend");
        (channel, Bearer::new(ADMIN_TOKEN).expect("ASCII bearer token"))
    }

    /// A `tokend.v1.ConnectedApps` client as the admin.
    pub async fn apps(&self) -> Apps {
        let (channel, bearer) = self.channel().await;
        ConnectedAppsClient::with_interceptor(channel, bearer)
    }

    /// A `tokend.v1.Tokens` client as the admin.
    pub async fn tokens(&self) -> Tokens {
        let (channel, bearer) = self.channel().await;
        TokensClient::with_interceptor(channel, bearer)
    }
}

impl Drop for Tokend {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- tokend log (last lines) ----\n{}\n----", tail(&self.log, 60));
        }
        // The data directory is thrown away: no need to wait long for a graceful stop.
        if let Some(mut child) = self.child.take() {
            sigterm(&child);
            reap(&mut child, Duration::from_secs(1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------------------------

/// The page the browser ended on.
#[derive(Debug)]
pub struct Page {
    pub url: String,
    pub status: u16,
    pub body: String,
}

/// Plays the admin's browser from `start` (an authorization URL or a device verification URL):
/// follows redirects by hand, carries cookies by hand, signs in as `account` on the provider's
/// login page, and submits every other form the provider shows (consent, device code
/// confirmation, auto-submitting form posts) as a person clicking "Continue" would. Stops at the
/// first URL starting with `stop_prefix` (tokend's callback: fetched, and its page returned), or
/// at a page with no form (the provider's final page).
pub async fn browse(start: &str, stop_prefix: Option<&str>, account: &str) -> Page {
    let client = http_client();
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    let mut url = url::Url::parse(start).expect("start URL");
    let mut form: Option<Vec<(String, String)>> = None;
    for _ in 0..30 {
        if stop_prefix.is_some_and(|prefix| url.as_str().starts_with(prefix)) {
            let reply = client.get(url.as_str()).send().await.expect("GET tokend callback");
            let status = reply.status().as_u16();
            return Page { url: url.to_string(), status, body: reply.text().await.unwrap_or_default() };
        }
        let request = match form.take() {
            Some(fields) => {
                let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
                client.post(url.as_str()).header("content-type", "application/x-www-form-urlencoded").body(body)
            }
            None => client.get(url.as_str()),
        };
        let cookie_header = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let request = if cookie_header.is_empty() { request } else { request.header("cookie", cookie_header) };
        let reply = request.header("accept", "text/html").send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        for value in reply.headers().get_all("set-cookie") {
            let text = value.to_str().expect("ascii cookie");
            let pair = text.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let expired = text.to_ascii_lowercase().contains("expires=thu, 01 jan 1970");
            if value.is_empty() || expired {
                cookies.remove(name.trim());
            } else {
                cookies.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        let status = reply.status().as_u16();
        if (300..400).contains(&status) {
            let location = reply.headers().get("location").and_then(|v| v.to_str().ok()).expect("location");
            url = url.join(location).expect("redirect URL");
            continue;
        }
        let body = reply.text().await.unwrap_or_default();
        assert_eq!(status, 200, "{url}: unexpected page: {body}");
        let Some(action) = form_action(&body) else {
            return Page { url: url.to_string(), status, body };
        };
        let mut fields = hidden_inputs(&body);
        // oidc-provider's development login page: any account name and password.
        if fields.iter().any(|(k, v)| k == "prompt" && v == "login") {
            fields.push(("login".into(), account.into()));
            fields.push(("password".into(), "any".into()));
        }
        form = Some(fields);
        url = url.join(&action).expect("form action");
    }
    panic!("the browser did not get anywhere within 30 steps (last at {url})");
}

/// Plays the browser through a consent, from the authorization URL to tokend's callback page.
pub async fn consent(authorization_url: &str, callback_url: &str, account: &str) -> Page {
    let page = browse(authorization_url, Some(callback_url), account).await;
    assert!(page.url.starts_with(callback_url), "the consent ended at {} instead of tokend: {}", page.url, page.body);
    page
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#x2F;", "/")
        .replace("&#47;", "/")
        .replace("&amp;", "&")
}

/// The value of `name="…"` inside one tag.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    let end = tag[at..].find('"')?;
    Some(unescape(&tag[at..at + end]))
}

/// The tags named `tag` in `page`, each as its text up to `>`.
fn tags<'a>(page: &'a str, tag: &'a str) -> impl Iterator<Item = String> + 'a {
    page.match_indices(tag)
        .filter_map(move |(at, _)| page[at..].find('>').map(|end| page[at..at + end].replace(['\n', '\t'], " ")))
}

/// The `action` of the page's first form, if it has one.
fn form_action(page: &str) -> Option<String> {
    tags(page, "<form").next().and_then(|tag| attribute(&tag, "action"))
}

/// The hidden inputs of the page, as form fields.
fn hidden_inputs(page: &str) -> Vec<(String, String)> {
    tags(page, "<input")
        .filter(|tag| attribute(tag, "type").as_deref() == Some("hidden"))
        .filter_map(|tag| Some((attribute(&tag, "name")?, attribute(&tag, "value").unwrap_or_default())))
        .collect()
}

/// A progress line, shown with `cargo test --test it interop:: -- --nocapture` (and on failure).
pub fn step(text: &str) {
    eprintln!("[interop] {text}");
}
