//! Hardening of the edges (#14 items 8 to 10): the HTTP listener (header timeout, connection
//! limit, security headers, concurrent scrapes, profile labels on `/metrics`), key material on
//! disk (open permissions refuse the start), and the SSRF deny-list on IPv6 forms that embed an
//! IPv4 address (NAT64, 6to4, IPv4-compatible, IPv4-mapped).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use tokend::api::pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::Code;

use crate::support::*;

// === item 8: the HTTP listener ===

/// Reads from `stream` until the server closes it (EOF or reset), or `limit` passes; returns
/// how long it took, `None` if the connection was still open at the limit.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok().map(|()| started.elapsed())
}

/// #14 item 8: a client that never finishes its request headers (slowloris) is cut off after
/// `http.header_read_timeout_secs`, instead of holding the connection for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_cuts_off_slowloris() {
    let daemon = TestDaemon::start_with(|c| c.http.header_read_timeout_secs = 1, None).await;
    let mut stream = TcpStream::connect(daemon.daemon().http_addr).await.expect("connect");
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: tokend\r\nX-Slow: ").await.expect("partial request");
    let closed = closed_within(&mut stream, Duration::from_secs(4)).await;
    assert!(closed.is_some(), "connection with unfinished headers still open after 4 s (timeout 1 s)");
    daemon.stop().await;
}

/// One GET on an open connection; the status line of the reply, if one comes within `limit`.
async fn get_status(stream: &mut TcpStream, path: &str, limit: Duration) -> Option<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: tokend\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => String::from_utf8_lossy(&buf[..n]).lines().next().map(str::to_owned),
        _ => None,
    }
}

/// #14 item 8: connections beyond `http.max_connections` are not served (they wait in the
/// accept queue) until a served one closes; then the waiting one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_limits_connections() {
    let daemon = TestDaemon::start_with(|c| c.http.max_connections = 2, None).await;
    let addr = daemon.daemon().http_addr;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(
            get_status(&mut stream, "/healthz", Duration::from_secs(3)).await.as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        held.push(stream);
    }
    let mut waiting = TcpStream::connect(addr).await.expect("the kernel queues the connection");
    let status = get_status(&mut waiting, "/healthz", Duration::from_millis(700)).await;
    assert_eq!(status, None, "a third connection was served with max_connections = 2");
    drop(held.pop());
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), waiting.read(&mut buf))
        .await
        .expect("served once a slot frees")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    daemon.stop().await;
}

/// #14 item 8: every route (an unknown one too) sends `X-Content-Type-Options: nosniff`; the
/// callback page and `/metrics` are not cached (`no-store`) and the page leaks no referrer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_sets_security_headers() {
    let daemon = TestDaemon::start().await;
    let base = format!("http://{}", daemon.daemon().http_addr);
    let http = browser();
    for (path, cached_never) in [
        ("/oauth/callback?state=forged&code=x", true),
        ("/metrics", true),
        ("/healthz", false),
        ("/readyz", false),
        ("/no-such-page", false),
    ] {
        let reply = http.get(format!("{base}{path}")).send().await.expect(path);
        let header = |name: &str| reply.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{path}");
        if cached_never {
            assert_eq!(header("cache-control").as_deref(), Some("no-store"), "{path}");
        }
        if path.starts_with("/oauth/callback") {
            assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"), "{path}");
        }
    }
    daemon.stop().await;
}

/// The series of a scrape, after checking every line against the text format: comments
/// (`# HELP`, `# TYPE`, `# UNIT`), samples `name{labels} value`, and `# EOF` last.
fn parse_series(text: &str) -> BTreeSet<String> {
    let mut series = BTreeSet::new();
    let mut lines = text.lines().peekable();
    let mut saw_eof = false;
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            assert!(lines.peek().is_none(), "# EOF is not last");
            saw_eof = true;
        } else if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap_or_default();
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "bad comment line {line:?}");
        } else {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
            let metric = name.split('{').next().unwrap_or_default();
            assert!(
                !metric.is_empty() && metric.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line:?}"
            );
            assert!(!name.contains('{') || name.ends_with('}'), "bad labels in {line:?}");
            assert!(series.insert(name.to_owned()), "series {name} twice");
        }
    }
    assert!(saw_eof, "no # EOF");
    series
}

/// `count` client-credentials profiles, connected at the fake provider.
async fn connected_profiles(daemon: &TestDaemon, provider: &FakeProvider, count: usize) {
    let mut apps = daemon.apps(ADMIN).await;
    for i in 0..count {
        let profile = pb::Profile {
            name: format!("scraped-{i:02}"),
            provider: "custom".into(),
            grant: pb::Grant::ClientCredentials as i32,
            client_id: "test-client".into(),
            client_secret: "test-secret".into(),
            token_endpoint: provider.token_endpoint(),
            ..Default::default()
        };
        apps.create_profile(pb::CreateProfileRequest { profile: Some(profile) }).await.expect("create");
        apps.connect(pb::ConnectRequest { name: format!("scraped-{i:02}") }).await.expect("connect");
    }
}

/// #14 item 8: many `/metrics` scrapes at once each read as valid Prometheus text and carry the
/// same series, every profile's expiry included (they used to share one set of gauges, so one
/// scrape's `clear()` emptied another's profile series half-way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_concurrent_scrapes_agree() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    connected_profiles(&daemon, &provider, 40).await;
    let url = format!("http://{}/metrics", daemon.daemon().http_addr);
    let http = browser();
    let expected = parse_series(&http.get(&url).send().await.expect("scrape").text().await.expect("body"));
    assert_eq!(expected.iter().filter(|s| s.starts_with("tokend_token_expires_in_seconds{")).count(), 40);
    for _round in 0..10 {
        let scrapes = (0..24).map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { http.get(url).send().await.expect("scrape").text().await.expect("body") })
        });
        for scrape in futures::future::join_all(scrapes).await {
            let series = parse_series(&scrape.expect("scrape task"));
            let missing: Vec<_> = expected.difference(&series).collect();
            assert!(
                missing.is_empty(),
                "a concurrent scrape lacks {} series, e.g. {:?}",
                missing.len(),
                missing.first()
            );
        }
    }
    daemon.stop().await;
}

/// #14 item 8: `metrics.profile_labels = false` drops the per-profile series (which name
/// profiles to whoever reaches the listener); the counts by status stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_metrics_without_profile_labels() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start_with(|c| c.metrics.profile_labels = false, None).await;
    connected_profiles(&daemon, &provider, 1).await;
    let url = format!("http://{}/metrics", daemon.daemon().http_addr);
    let text = browser().get(url).send().await.expect("scrape").text().await.expect("body");
    let series = parse_series(&text);
    assert!(series.contains("tokend_profiles{status=\"connected\"}"), "{text}");
    assert!(!text.contains("scraped-00"), "a profile name on /metrics:\n{text}");
    daemon.stop().await;
}

// === item 9: key material on disk ===

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// #14 item 9: a key file, an `admin.token` or a data directory that group or others can read
/// refuses the start (exit 65) with a message naming the file and the `chmod` that fixes it;
/// `security.refuse_open_permissions = false` starts anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_material_with_open_permissions_refuses_start() {
    let dir = crate::support::private_tempdir().expect("dir");
    let mut config = test_config(dir.path());
    config.callers.clear(); // so admin.token is written
    start_daemon(&config, None).await.expect("first start").stop().await;
    let key = dir.path().join("tokend.key");
    let token = dir.path().join("admin.token");
    for (path, mode, fix) in
        [(&key, 0o644, "chmod 600"), (&token, 0o640, "chmod 600"), (&dir.path().to_path_buf(), 0o755, "chmod 700")]
    {
        chmod(path, mode);
        let err = start_daemon(&config, None).await.expect_err("open permissions refuse the start");
        assert_eq!(err.exit_code(), 65, "{err}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()) && message.contains(fix), "{message}");
        chmod(path, if fix == "chmod 700" { 0o700 } else { 0o600 });
    }
    chmod(&key, 0o644);
    config.security.refuse_open_permissions = false;
    let daemon = start_daemon(&config, None).await.expect("starts with a warning");
    assert!(logs().lines().any(|l| l.contains("tokend.key") && l.contains("chmod 600")), "no warning logged");
    daemon.stop().await;
}

// === item 10: the SSRF deny-list on IPv6 forms of IPv4 addresses ===

/// Creating a client-credentials profile whose `token_endpoint` is `url`.
async fn create_with_token_endpoint(apps: &mut AppsClient, url: &str) -> Result<pb::Profile, tonic::Status> {
    let profile = pb::Profile {
        name: "embedded".into(),
        provider: "custom".into(),
        grant: pb::Grant::ClientCredentials as i32,
        client_id: "test-client".into(),
        client_secret: "test-secret".into(),
        token_endpoint: url.into(),
        ..Default::default()
    };
    apps.create_profile(pb::CreateProfileRequest { profile: Some(profile) }).await.map(|r| r.into_inner())
}

/// Each URL is refused with INVALID_ARGUMENT naming `token_endpoint`, the embedded address and
/// the deny-list key.
async fn assert_refused(urls: &[&str]) {
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    for url in urls {
        let err = create_with_token_endpoint(&mut apps, url).await.expect_err(url);
        assert_eq!(err.code(), Code::InvalidArgument, "{url}: {}", err.message());
        let message = err.message();
        assert!(message.contains("token_endpoint") && message.contains("provider.deny_networks"), "{url}: {message}");
        assert!(message.contains("169.254.169.254") && message.contains("169.254.0.0/16"), "{url}: {message}");
    }
    daemon.stop().await;
}

/// #14 item 10: NAT64 addresses (well-known prefix `64:ff9b::/96`) of a metadata address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_list_nat64_well_known_prefix() {
    assert_refused(&["https://[64:ff9b::a9fe:a9fe]/token", "https://[64:ff9b::169.254.169.254]/token"]).await;
}

/// #14 item 10: NAT64 addresses under the local-use prefix `64:ff9b:1::/48`, with the IPv4
/// address where a /96 and a /48 translation prefix put it (RFC 6052).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_list_nat64_local_use_prefix() {
    assert_refused(&["https://[64:ff9b:1::a9fe:a9fe]/token", "https://[64:ff9b:1:a9fe:a9:fe00::]/token"]).await;
}

/// #14 item 10: 6to4 addresses (`2002::/16`) whose prefix embeds a metadata address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_list_6to4() {
    assert_refused(&["https://[2002:a9fe:a9fe::1]/token"]).await;
}

/// #14 item 10: IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-translated (`::ffff:0:a.b.c.d`)
/// addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_list_ipv4_mapped() {
    assert_refused(&["https://[::ffff:169.254.169.254]/token", "https://[::ffff:0:a9fe:a9fe]/token"]).await;
}

/// #14 item 10: deprecated IPv4-compatible addresses (`::a.b.c.d`); `::1` stays loopback and
/// other IPv6 addresses stay allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_list_ipv4_compatible() {
    assert_refused(&["https://[::169.254.169.254]/token"]).await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    for allowed in ["https://[::1]/token", "https://[2001:db8::a9fe:a9fe]/token", "https://[2002:808:808::1]/token"] {
        create_with_token_endpoint(&mut apps, allowed).await.expect(allowed);
        apps.delete_profile(pb::DeleteProfileRequest { name: "embedded".into() }).await.expect("delete");
    }
    daemon.stop().await;
}
