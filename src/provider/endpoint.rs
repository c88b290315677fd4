//! Which endpoint URLs tokend will call: http(s) only, plain http only for loopback hosts unless
//! the configuration allows it, and no credentials in the URL.

use std::net::IpAddr;

use url::{Host, Url};

/// Whether `url` points at this machine (127.0.0.0/8, ::1, `localhost`).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

/// Parses and checks an endpoint URL given for `field`. Errors name the field and the rule.
pub fn parse_endpoint(field: &str, text: &str, allow_insecure_http: bool) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("{field}: not a valid URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http || is_loopback(&url) => {}
        "http" => return Err(format!("{field}: plain http is allowed only for loopback hosts; use https")),
        other => return Err(format!("{field}: scheme {other:?} is not allowed; use https")),
    }
    if url.host().is_none() {
        return Err(format!("{field}: URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{field}: URL must not carry credentials"));
    }
    if url.fragment().is_some() {
        return Err(format!("{field}: URL must not have a fragment"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// https anywhere, http only on loopback, nothing else.
    #[test]
    fn endpoint_rules() {
        assert!(parse_endpoint("t", "https://example.com/token", false).is_ok());
        assert!(parse_endpoint("t", "http://127.0.0.1:8080/token", false).is_ok());
        assert!(parse_endpoint("t", "http://[::1]/token", false).is_ok());
        assert!(parse_endpoint("t", "http://localhost/token", false).is_ok());
        assert!(parse_endpoint("t", "http://example.com/token", false).unwrap_err().contains("loopback"));
        assert!(parse_endpoint("t", "http://example.com/token", true).is_ok());
        assert!(parse_endpoint("t", "ftp://example.com/x", true).is_err());
        assert!(parse_endpoint("t", "https://u:p@example.com/x", false).is_err());
        assert!(parse_endpoint("token_endpoint", "nope", false).unwrap_err().starts_with("token_endpoint"));
    }
}
