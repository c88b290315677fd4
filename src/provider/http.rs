//! The one HTTP client tokend uses to talk to providers, under the oauth2 crate: no redirects
//! followed (SSRF), no link-local or metadata addresses (the deny-list, on resolved addresses),
//! an optional extra CA bundle for on-premises providers, bounded time, bounded reply size, and
//! the status code and `Retry-After` of every reply kept for the refresh engine (oauth2 itself
//! drops them). `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` are honoured (reqwest reads them).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth2::reqwest;
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};

use super::deny::{DeniedAddress, DenyList, GuardedResolver, literal_ip};

/// Limits of provider HTTP calls.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for a whole request, reply included.
    pub request_timeout: Duration,
    /// Largest reply body accepted, in bytes.
    pub max_response_bytes: usize,
    /// A PEM file of CA certificates trusted for provider endpoints in addition to the built-in
    /// (Mozilla) roots: on-premises providers with a private CA.
    pub ca_bundle: Option<PathBuf>,
    /// Networks never called, checked on resolved and literal addresses.
    pub deny: DenyList,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_response_bytes: 256 * 1024,
            ca_bundle: None,
            deny: DenyList::default_list(),
        }
    }
}

/// Why an HTTP exchange with a provider failed before a reply was read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    /// No connection could be made: the request was certainly not sent.
    #[error("could not connect to the provider: {0}")]
    Connect(String),
    /// The request timed out; it may have reached the provider.
    #[error("provider did not answer in time")]
    Timeout,
    /// The reply was larger than allowed.
    #[error("provider reply larger than {0} bytes")]
    TooLarge(usize),
    /// Anything else on the wire (reset connection, broken reply).
    #[error("provider exchange failed: {0}")]
    Transport(String),
    /// The host is, or resolves to, an address in the deny-list: nothing was sent.
    #[error("{0}")]
    Denied(DeniedAddress),
    /// The client could not be built (the CA bundle is unreadable or holds no certificate).
    #[error("{0}")]
    Setup(String),
}

impl HttpError {
    /// Whether the provider may have received and acted on the request.
    pub fn maybe_sent(&self) -> bool {
        !matches!(self, Self::Connect(_) | Self::Denied(_) | Self::Setup(_))
    }
}

/// Status and headers of the last reply, which oauth2's errors do not carry.
#[derive(Debug, Clone, Default)]
pub struct ReplyMeta {
    /// HTTP status code.
    pub status: u16,
    /// `Retry-After`, in seconds (delta form only).
    pub retry_after: Option<Duration>,
}

/// A shared HTTP client for provider calls.
#[derive(Debug, Clone)]
pub struct ProviderHttp {
    client: reqwest::Client,
    max_response_bytes: usize,
    /// Also checked here, for literal IP hosts, which never reach the resolver.
    deny: Arc<DenyList>,
}

impl ProviderHttp {
    /// Builds the client. Fails when the CA bundle cannot be read or holds no certificate.
    pub fn new(options: &HttpOptions) -> Result<Self, HttpError> {
        let deny = Arc::new(options.deny.clone());
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::clone(&deny))));
        if let Some(path) = &options.ca_bundle {
            for cert in read_ca_bundle(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| HttpError::Setup(e.to_string()))?;
        Ok(Self { client, max_response_bytes: options.max_response_bytes, deny })
    }

    /// Refuses a URL whose host is a literal address in the deny-list (names are checked when
    /// they resolve).
    pub fn check_literal(&self, url: &url::Url) -> Result<(), DeniedAddress> {
        let Some(host) = url.host() else { return Ok(()) };
        let Some(ip) = literal_ip(&host) else { return Ok(()) };
        let port = url.port_or_known_default().unwrap_or(0);
        self.deny.check(&host.to_string(), &[std::net::SocketAddr::new(ip, port)])
    }

    /// A client for one exchange that remembers the reply's status and `Retry-After`.
    pub fn recording(&self) -> RecordingClient<'_> {
        RecordingClient { http: self, meta: Mutex::new(None) }
    }

    /// Sends a request and reads the reply within the size limit.
    pub async fn send(&self, request: HttpRequest) -> Result<(HttpResponse, ReplyMeta), HttpError> {
        let (parts, body) = request.into_parts();
        // Parsed once, here: reqwest takes the parsed URL as it is.
        let url = url::Url::parse(&parts.uri.to_string())
            .map_err(|e| HttpError::Transport(format!("the request's URL does not parse: {e}")))?;
        self.check_literal(&url).map_err(HttpError::Denied)?;
        let builder = self.client.request(parts.method, url).headers(parts.headers).body(body);
        let mut response = builder.send().await.map_err(classify)?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(HttpError::TooLarge(self.max_response_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        let meta = ReplyMeta {
            status: status.as_u16(),
            retry_after: headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        };
        let mut reply = http::Response::new(body);
        *reply.status_mut() = status;
        *reply.headers_mut() = headers;
        Ok((reply, meta))
    }
}

/// Reads a PEM bundle of CA certificates; the error names the configuration key.
fn read_ca_bundle(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, HttpError> {
    let fail = |why: String| HttpError::Setup(format!("provider.ca_bundle_file {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn classify(e: reqwest::Error) -> HttpError {
    // Error text from reqwest and its sources names the URL, never a body; it carries no secret.
    let mut source = std::error::Error::source(&e);
    let mut innermost = None;
    while let Some(cause) = source {
        if let Some(denied) = cause.downcast_ref::<DeniedAddress>() {
            return HttpError::Denied(denied.clone());
        }
        innermost = Some(cause.to_string());
        source = cause.source();
    }
    let (timeout, connect) = (e.is_timeout(), e.is_connect());
    let text = match innermost {
        Some(cause) => format!("{}: {cause}", e.without_url()),
        None => e.without_url().to_string(),
    };
    if timeout {
        HttpError::Timeout
    } else if connect {
        HttpError::Connect(text)
    } else {
        HttpError::Transport(text)
    }
}

/// One exchange's client: implements oauth2's [`AsyncHttpClient`] and records the reply meta.
#[derive(Debug)]
pub struct RecordingClient<'a> {
    http: &'a ProviderHttp,
    meta: Mutex<Option<ReplyMeta>>,
}

impl RecordingClient<'_> {
    /// Status and `Retry-After` of the last reply, if one arrived.
    pub fn meta(&self) -> Option<ReplyMeta> {
        self.meta.lock().ok().and_then(|m| m.clone())
    }
}

impl<'c> AsyncHttpClient<'c> for RecordingClient<'_> {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (reply, meta) = self.http.send(request).await?;
            if let Ok(mut slot) = self.meta.lock() {
                *slot = Some(meta);
            }
            Ok(reply)
        })
    }
}
