//! A fast local OAuth token endpoint for the benchmarks: `POST /token` with
//! `grant_type=refresh_token` accepts any refresh token of the form `rt-<index>-<generation>`,
//! records when it arrived (on the benchmark's clock), and answers a rotated refresh token and a
//! 1 KiB access token valid for an hour; `grant_type=client_credentials` gets a 1 KiB access
//! token. No client authentication, no state besides the log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Length of the access tokens issued.
pub const ACCESS_TOKEN_BYTES: usize = 1024;

/// One refresh request as the provider saw it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The connection index encoded in the refresh token.
    pub index: u32,
    /// Generation of the presented refresh token (0: the seeded one).
    pub generation: u32,
    /// When it arrived, in the benchmark clock's Unix milliseconds.
    pub at_ms: i64,
}

struct Shared {
    /// Added to the system clock to give the benchmark clock.
    offset_ms: AtomicI64,
    /// 1 KiB of token text; each reply replaces its tail with the index and generation.
    filler: String,
    /// Whether replies carry a new refresh token (rotation).
    rotate: AtomicBool,
    arrivals: Mutex<Vec<Arrival>>,
}

/// A running fast provider; it stops with the runtime that runs it.
#[derive(Clone)]
pub struct FastProvider {
    shared: Arc<Shared>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl FastProvider {
    /// Starts listening on a loopback port; arrival times are system time + `offset_ms`.
    pub async fn start(offset_ms: i64) -> Self {
        let offset_ms = AtomicI64::new(offset_ms);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fast provider");
        let addr = listener.local_addr().expect("local address");
        let rotate = AtomicBool::new(true);
        let shared = Arc::new(Shared { offset_ms, filler: filler(), rotate, arrivals: Mutex::new(Vec::new()) });
        let app = axum::Router::new().route("/token", axum::routing::post(token)).with_state(Arc::clone(&shared));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { shared, addr }
    }

    /// Changes the offset of the benchmark clock from the system clock.
    pub fn set_offset(&self, offset_ms: i64) {
        self.shared.offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    /// Whether replies carry a new refresh token (default: yes). Without one, tokend keeps the
    /// stored refresh token and does not flush before showing the new access token.
    pub fn set_rotate(&self, rotate: bool) {
        self.shared.rotate.store(rotate, Ordering::Relaxed);
    }

    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every refresh request so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals.lock().expect("arrivals lock").clone()
    }

    /// How many refresh requests arrived so far.
    pub fn count(&self) -> usize {
        self.shared.arrivals.lock().expect("arrivals lock").len()
    }
}

/// The benchmark clock: system time in Unix milliseconds plus `offset_ms`.
pub fn now_ms(offset_ms: i64) -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
    since.as_millis() as i64 + offset_ms
}

/// 1 KiB of token text, for [`access_token`].
pub fn filler() -> String {
    (0..ACCESS_TOKEN_BYTES).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

/// `rt-<index>-<generation>` → (index, generation).
pub fn parse_refresh_token(token: &str) -> Option<(u32, u32)> {
    let mut parts = token.strip_prefix("rt-")?.split('-');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The refresh token of connection `index`, generation `generation`.
pub fn refresh_token(index: u32, generation: u32) -> String {
    format!("rt-{index}-{generation}")
}

/// An access token of [`ACCESS_TOKEN_BYTES`] bytes for connection `index`, generation `generation`.
pub fn access_token(filler: &str, index: u32, generation: u32) -> String {
    let tail = format!("-{index}-{generation}");
    format!("{}{tail}", &filler[..ACCESS_TOKEN_BYTES - tail.len()])
}

async fn token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let at_ms = now_ms(shared.offset_ms.load(Ordering::Relaxed));
    if url::form_urlencoded::parse(&body).any(|(k, v)| k == "grant_type" && v == "client_credentials") {
        let access = access_token(&shared.filler, 0, 0);
        let reply = format!(r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":3600}}"#);
        return ([(header::CONTENT_TYPE, "application/json")], reply).into_response();
    }
    let presented = url::form_urlencoded::parse(&body).find(|(k, _)| k == "refresh_token").map(|(_, v)| v.into_owned());
    let Some((index, generation)) = presented.as_deref().and_then(parse_refresh_token) else {
        let body = r#"{"error":"invalid_grant","error_description":"unknown refresh token"}"#;
        return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    };
    shared.arrivals.lock().expect("arrivals lock").push(Arrival { index, generation, at_ms });
    let access = access_token(&shared.filler, index, generation + 1);
    let reply = if shared.rotate.load(Ordering::Relaxed) {
        format!(
            r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":3600,"refresh_token":"{}","scope":"files.read"}}"#,
            refresh_token(index, generation + 1)
        )
    } else {
        format!(r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":3600,"scope":"files.read"}}"#)
    };
    ([(header::CONTENT_TYPE, "application/json")], reply).into_response()
}
