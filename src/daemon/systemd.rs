//! systemd integration: `Type=notify` readiness and status text, `Stopping` on shutdown, and a
//! watchdog fed only while the refresh engine is alive (its sweep ran recently), so a wedged
//! engine gets the service restarted. Every call is a no-op outside systemd.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// How stale the last sweep may be before the watchdog stops being fed. The timer task sweeps
/// at least every 30 s and the cron safety net more often.
const ENGINE_STALE_AFTER_MS: i64 = 120_000;

/// Tells systemd the daemon is ready.
pub fn ready(status: &str) {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Starts feeding the watchdog (if systemd enabled one) every half period while the engine's
/// last sweep is recent.
pub fn spawn_watchdog(last_sweep_ms: Arc<AtomicI64>, clock: Arc<dyn Clock>, shutdown: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else { return };
    let every = (period / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let last = last_sweep_ms.load(Ordering::Relaxed);
            if clock.now_ms() - last < ENGINE_STALE_AFTER_MS {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            } else {
                tracing::error!(last_sweep_ms = last, "refresh engine looks stalled; not feeding the systemd watchdog");
            }
        }
    });
}
