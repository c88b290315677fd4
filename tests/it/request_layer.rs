//! The gRPC request layer, end to end: request counts by method and code on `/metrics`, and
//! peers refused after repeated failed authentication.

use std::time::Duration;

use tokend::api::pb;
use tonic::Code;

use crate::support::*;

fn get_token(name: &str) -> pb::GetAccessTokenRequest {
    pb::GetAccessTokenRequest { name: name.into(), min_valid_for: None }
}

async fn scrape(daemon: &TestDaemon) -> String {
    let url = format!("http://{}/metrics", daemon.daemon().http_addr);
    browser().get(url).send().await.expect("metrics").text().await.expect("body")
}

/// A successful call, a refused one (trailers-only reply) and an unauthenticated one are each
/// counted under their method and code; unary calls are timed; health checks are counted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_counted_by_method_and_code() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-counted", &provider).await;
    let mut consumer = daemon.tokens(CONSUMER).await;
    consumer.get_access_token(get_token("mail-counted")).await.expect("token");
    consumer.get_access_token(get_token("mail-counted")).await.expect("token");
    let denied = consumer.get_access_token(get_token("box-other")).await.expect_err("outside its patterns");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let unknown = daemon.tokens("not-a-configured-token").await.get_access_token(get_token("mail-counted")).await;
    assert_eq!(unknown.expect_err("unknown token").code(), Code::Unauthenticated);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", daemon.daemon().grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await;
    assert!(health.is_ok(), "health stays open: {health:?}");

    let metrics = scrape(&daemon).await;
    for wanted in [
        r#"tokend_grpc_requests_total{method="tokend.v1.Tokens/GetAccessToken",code="OK"} 2"#,
        r#"tokend_grpc_requests_total{method="tokend.v1.Tokens/GetAccessToken",code="PERMISSION_DENIED"} 1"#,
        r#"tokend_grpc_requests_total{method="tokend.v1.Tokens/GetAccessToken",code="UNAUTHENTICATED"} 1"#,
        r#"tokend_grpc_requests_total{method="tokend.v1.ConnectedApps/CreateProfile",code="OK"} 1"#,
        r#"tokend_grpc_requests_total{method="grpc.health.v1.Health/Check",code="OK"} 1"#,
        r#"tokend_grpc_request_duration_seconds_count{method="tokend.v1.Tokens/GetAccessToken"} 4"#,
    ] {
        assert!(metrics.contains(wanted), "{wanted} in:\n{metrics}");
    }
    daemon.stop().await;
}

/// After `max_failures` failed authentications a peer is refused with RESOURCE_EXHAUSTED even
/// with a right token, once logged; open services still answer; after the block it is served
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_block_the_peer() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start_with(
        |c| {
            c.grpc.auth_limit.max_failures = 3;
            c.grpc.auth_limit.block_secs = 1;
        },
        None,
    )
    .await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-guarded", &provider).await;
    let mut guesser = daemon.tokens("guess-1").await;
    for _ in 0..3 {
        let err = guesser.get_access_token(get_token("mail-guarded")).await.expect_err("wrong token");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let mut worker = daemon.tokens(CONSUMER).await;
    let refused = worker.get_access_token(get_token("mail-guarded")).await.expect_err("peer blocked");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("retry in"), "{}", refused.message());
    let err = guesser.get_access_token(get_token("mail-guarded")).await.expect_err("still blocked");
    assert_eq!(err.code(), Code::ResourceExhausted);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    worker.get_access_token(get_token("mail-guarded")).await.expect("served after the block");

    let logs = logs();
    let blocks = logs.lines().filter(|l| l.contains("refusing the peer for a while")).count();
    assert_eq!(blocks, 1, "one log line per block, not per refused request");
    let metrics = scrape(&daemon).await;
    let wanted = r#"tokend_grpc_requests_total{method="tokend.v1.Tokens/GetAccessToken",code="RESOURCE_EXHAUSTED"} 2"#;
    assert!(metrics.contains(wanted), "{wanted} in:\n{metrics}");
    daemon.stop().await;
}
