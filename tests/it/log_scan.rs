//! The suite-wide "no secret in any log line" scan (run when every in-process test daemon is
//! dropped) catches a leak. The leak is planted in a private capture with the same format and
//! levels, never in the shared one, so the tests running beside this one stay clean.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::support::logs;

/// A log writer into a buffer of this test alone.
#[derive(Clone, Default)]
struct Private(Arc<Mutex<Vec<u8>>>);

impl Write for Private {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A refresh token logged at debug level makes the scan fail, naming the kind of secret.
#[test]
#[should_panic(expected = "a secret (fake-rt-…) appeared in a log line")]
fn the_scan_catches_a_logged_refresh_token() {
    let private = Private::default();
    let writer = private.clone();
    let subscriber = logs::capture_subscriber(move || writer.clone());
    tracing::subscriber::with_default(subscriber, || {
        tracing::debug!(refresh_token = "fake-rt-planted", "a careless log line");
    });
    let planted = private.0.lock().unwrap().clone();
    assert!(!planted.is_empty(), "the private capture got the line");
    logs::assert_no_secret_in(&planted);
}
