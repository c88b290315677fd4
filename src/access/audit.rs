//! The audit trail, as `tracing` events with target `audit` (so operators can route them apart).
//! Admin actions are one record each. Token hand-outs are tallied per caller and profile in
//! memory (two atomic updates on the hot path, no I/O) and written every few seconds: count,
//! first and last time, and the token version handed out.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::clock::UnixMillis;

/// Hand-outs of one profile's tokens to one caller since the last write.
#[derive(Debug, Default)]
pub struct Tally {
    count: AtomicU64,
    first_ms: AtomicI64,
    last_ms: AtomicI64,
    token_version: AtomicU64,
}

impl Tally {
    /// Counts one hand-out, at `now`, of version `token_version`.
    pub fn record(&self, now: UnixMillis, token_version: u64) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            self.first_ms.store(now, Ordering::Relaxed);
        }
        self.last_ms.store(now, Ordering::Relaxed);
        self.token_version.store(token_version, Ordering::Relaxed);
    }
}

/// One caller's hand-out tallies, by profile.
#[derive(Debug, Default)]
pub struct HandoutTallies {
    /// foldhash, not SipHash: looked up on every hand-out, keyed by names the caller may have.
    by_profile: DashMap<String, Arc<Tally>, foldhash::fast::RandomState>,
}

impl HandoutTallies {
    /// Counts one hand-out. Allocates only the first time a caller gets a profile's token.
    pub fn record(&self, profile: &str, now: UnixMillis, token_version: u64) {
        self.tally(profile).record(now, token_version);
    }

    /// The tally of `profile`, for a caller that counts many hand-outs of it (a watch stream)
    /// without looking it up each time. Stays the one this caller's writes read: a tally is
    /// never taken out of the map.
    pub fn tally(&self, profile: &str) -> Arc<Tally> {
        match self.by_profile.get(profile) {
            Some(tally) => Arc::clone(&tally),
            None => Arc::clone(&self.by_profile.entry(profile.to_owned()).or_default()),
        }
    }

    /// Writes and resets the tallies gathered since the last write, one audit record per profile.
    pub fn write(&self, caller: &str) {
        for (profile, count, first_ms, last_ms, token_version) in self.drain() {
            tracing::info!(
                target: "audit",
                caller = %caller,
                profile,
                count,
                first_ms,
                last_ms,
                token_version,
                "token hand-outs"
            );
        }
    }

    /// Takes the tallies gathered since the last call: (profile, count, first, last, version).
    fn drain(&self) -> Vec<(String, u64, UnixMillis, UnixMillis, u64)> {
        let mut out = Vec::new();
        for entry in self.by_profile.iter() {
            let tally = entry.value();
            let count = tally.count.swap(0, Ordering::Relaxed);
            if count > 0 {
                out.push((
                    entry.key().clone(),
                    count,
                    tally.first_ms.load(Ordering::Relaxed),
                    tally.last_ms.load(Ordering::Relaxed),
                    tally.token_version.load(Ordering::Relaxed),
                ));
            }
        }
        out
    }
}

/// Writes one admin action; a refusal or failure names its code (e.g. `PermissionDenied`).
pub fn admin_action(caller: &str, action: &str, profile: &str, outcome: Result<(), &str>) {
    match outcome {
        Ok(()) => {
            tracing::info!(target: "audit", caller = %caller, action, profile, outcome = "ok", "admin action")
        }
        Err(code) => tracing::info!(
            target: "audit",
            caller = %caller,
            action,
            profile,
            outcome = "error",
            code,
            "admin action"
        ),
    }
}

/// Runs `write` (which writes every caller's tallies, see [`HandoutTallies::write`]) every
/// `every`, and once more at shutdown.
pub fn spawn_handout_writer(write: impl Fn() + Send + 'static, every: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = ticker.tick() => false,
            };
            write();
            if stop {
                return;
            }
        }
    });
}
