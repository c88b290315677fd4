//! The log capture of the in-process tests and the "no secret in any log line" scan.
//!
//! One process runs every test, in parallel threads, and `tracing` has one global subscriber: it
//! is installed once, at trace level, and files each line under the Tokio runtime that wrote it.
//! Every `#[tokio::test]` builds its own runtime, and the tasks of a daemon, fake provider or
//! client run on the runtime of the test that started them, so a test reads its own lines and
//! its daemons' scan checks them, whatever runs beside it. Lines written outside any runtime
//! (none are expected) land in one shared bucket that every read and scan includes.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, MutexGuard, OnceLock};

use tokio::runtime::{Handle, Id};
use tracing_subscriber::fmt::MakeWriter;

use super::fake_provider;

/// The captured lines, by the runtime that wrote them (`None`: no runtime).
type Buckets = HashMap<Option<Id>, Vec<u8>>;

fn buckets() -> MutexGuard<'static, Buckets> {
    static BUCKETS: OnceLock<Mutex<Buckets>> = OnceLock::new();
    // A test that panicked while holding the lock left whole lines behind: keep reading them.
    BUCKETS.get_or_init(Mutex::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The runtime the calling thread works for, if any: the key of its lines.
pub fn current_runtime() -> Option<Id> {
    Handle::try_current().ok().map(|handle| handle.id())
}

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let runtime = current_runtime();
        buckets().entry(runtime).or_default().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The subscriber of the capture (format and levels) writing to `writer`; the log-scan test
/// builds one over a private buffer, so the leak it plants never reaches the shared capture.
pub fn capture_subscriber<W>(writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter("trace,h2=info,hyper=info,tower=info,sled=info,reqwest=debug")
        .with_writer(writer)
        .with_ansi(false)
        .finish()
}

/// Captures every log line of this process at trace level (idempotent; called by everything in
/// support that starts something that logs, so no test relies on another having installed it).
pub fn install_log_capture() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing::subscriber::set_global_default(capture_subscriber(|| CaptureWriter));
    });
}

/// The lines of `runtime` followed by those written outside any runtime.
fn lines_of(runtime: Option<Id>) -> Vec<u8> {
    let buckets = buckets();
    let mut lines = runtime.and_then(|id| buckets.get(&Some(id))).cloned().unwrap_or_default();
    lines.extend_from_slice(buckets.get(&None).map_or(&[][..], Vec::as_slice));
    lines
}

/// Every line the calling test (its runtime) logged so far, at trace level.
pub fn logs() -> String {
    String::from_utf8_lossy(&lines_of(current_runtime())).into_owned()
}

/// Asserts that none of `secrets` appears in a line the calling test logged.
pub fn assert_no_secret_in_logs(secrets: &[String]) {
    let logs = logs();
    assert!(!logs.is_empty(), "log capture is empty: the check would prove nothing");
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(!logs.contains(secret.as_str()), "a secret appeared in the logs");
    }
}

/// What no log line may contain: prefixes of every access token, refresh token, authorization
/// code and device code the fake provider issues, its client secret, and the PKCE verifiers any
/// fake provider in this process received.
fn secret_patterns() -> Vec<String> {
    let mut patterns: Vec<String> =
        ["fake-at-", "fake-rt-", "fake-code-", "fake-dc-", "test-secret"].iter().map(|s| (*s).to_owned()).collect();
    if let Ok(seen) = fake_provider::SEEN_VERIFIERS.lock() {
        patterns.extend(seen.iter().filter(|v| v.len() >= 16).cloned());
    }
    patterns
}

/// Scans the lines of `runtime` (a test's, at trace level) for secrets. Runs whenever a
/// [`super::TestDaemon`] is dropped, so every in-process integration test is also a "no secret
/// in the logs" test.
pub fn assert_logs_hold_no_secret(runtime: Option<Id>) {
    assert_no_secret_in(&lines_of(runtime));
}

/// Panics naming the kind of secret and the log line up to it (never the secret itself) when
/// `logs` hold one.
pub fn assert_no_secret_in(logs: &[u8]) {
    let patterns = secret_patterns();
    let searcher = aho_corasick::AhoCorasick::new(&patterns).expect("secret patterns");
    if let Some(found) = searcher.find(logs) {
        let line_start = logs[..found.start()].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let before = String::from_utf8_lossy(&logs[line_start..found.start()]);
        let kind: String = patterns[found.pattern().as_usize()].chars().take(8).collect();
        panic!("a secret ({kind}…) appeared in a log line: {before}<secret>");
    }
}
