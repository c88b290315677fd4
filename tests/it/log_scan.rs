//! The suite-wide "no secret in any log line" scan (run when every in-process test daemon is
//! dropped) catches a leak. In its own test binary, because a leak it plants stays in the log
//! capture for the rest of the process.

use crate::support;

#[test]
#[should_panic(expected = "a secret (fake-rt-…) appeared in a log line")]
fn the_scan_catches_a_logged_refresh_token() {
    support::install_log_capture();
    tracing::debug!(refresh_token = "fake-rt-planted", "a careless log line");
    support::assert_logs_hold_no_secret();
}
