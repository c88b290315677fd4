//! The stylesheet and the script, embedded in the binary (no CDN, no build step) and served
//! under names that carry a hash of their content: a new build changes the name, so browsers
//! may cache them for good (`immutable`), and a page never pairs with a stale script.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const STYLE: &str = include_str!("../../assets/tokend.css");
const SCRIPT: &str = include_str!("../../assets/tokend.js");

fn hashed(stem: &str, ext: &str, body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("/assets/{stem}-{hex}.{ext}")
}

/// The stylesheet's URL.
pub static STYLE_PATH: LazyLock<String> = LazyLock::new(|| hashed("tokend", "css", STYLE));
/// The script's URL.
pub static SCRIPT_PATH: LazyLock<String> = LazyLock::new(|| hashed("tokend", "js", SCRIPT));

/// `GET /assets/{file}`: the stylesheet or the script under its hashed name; anything else 404.
pub async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let path = format!("/assets/{file}");
    let (body, kind) = if path == *STYLE_PATH {
        (STYLE, "text/css; charset=utf-8")
    } else if path == *SCRIPT_PATH {
        (SCRIPT, "text/javascript; charset=utf-8")
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The name is the content's hash, so it is the ETag too.
    let etag = format!("\"{}\"", path.rsplit('-').next().unwrap_or_default());
    let cache = HeaderValue::from_static("public, max-age=31536000, immutable");
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return (StatusCode::NOT_MODIFIED, [(header::CACHE_CONTROL, cache)]).into_response();
    }
    let etag = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(kind)), (header::CACHE_CONTROL, cache), (header::ETAG, etag)],
        body,
    )
        .into_response()
}
