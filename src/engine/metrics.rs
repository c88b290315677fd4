//! What the engine counts as it works, and the snapshot `/metrics` reads at scrape time. The
//! registry lives in [`crate::metrics`], which depends on this module and never the other way.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::api::pb;
use crate::clock::UnixMillis;

/// A status label value: `connected`, `refresh_failing`, ….
pub fn status_label(status: pb::Status) -> String {
    status.as_str_name().trim_start_matches("STATUS_").to_ascii_lowercase()
}

/// Label of a refresh outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok`, `transient` or `permanent`.
    pub outcome: &'static str,
}

/// Label of a status change.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabel {
    /// Status before.
    pub from: String,
    /// Status after.
    pub to: String,
}

/// The engine's counters: a few atomic increments on its paths, registered once by `/metrics`.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// Refreshes by outcome.
    pub refreshes: Family<OutcomeLabel, Counter>,
    /// Time a provider refresh took.
    pub refresh_seconds: Histogram,
    /// Access tokens handed out.
    pub handouts: Counter,
    /// Status changes.
    pub status_changes: Family<TransitionLabel, Counter>,
    /// Flushes of the store run to make rotated tokens durable (group commit: one flush serves
    /// every writer waiting when it starts).
    pub store_flushes: Counter,
    /// Writers that waited for a flush; divided by `store_flushes`, the writers per flush.
    pub store_flush_waits: Counter,
    /// Time one flush of the store took.
    pub store_flush_seconds: Histogram,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        let refreshes = Family::<OutcomeLabel, Counter>::default();
        // Every outcome exists from the start, so rates and alerts see zeros, not gaps.
        for outcome in ["ok", "transient", "permanent"] {
            let _ = refreshes.get_or_create(&OutcomeLabel { outcome });
        }
        Self {
            refreshes,
            refresh_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            handouts: Counter::default(),
            status_changes: Family::default(),
            store_flushes: Counter::default(),
            store_flush_waits: Counter::default(),
            store_flush_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

impl EngineMetrics {
    /// Counts one refresh outcome and how long the provider took.
    pub(super) fn count_refresh(&self, outcome: &'static str, elapsed: std::time::Duration) {
        self.refresh_seconds.observe(elapsed.as_secs_f64());
        self.refreshes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts one status change.
    pub(super) fn count_transition(&self, from: pb::Status, to: pb::Status) {
        let transition = TransitionLabel { from: status_label(from), to: status_label(to) };
        self.status_changes.get_or_create(&transition).inc();
    }
}

/// The engine's state as `/metrics` shows it, taken at scrape time.
#[derive(Debug, Clone, Default)]
pub struct EngineSnapshot {
    /// How many profiles are in each status.
    pub status_counts: HashMap<pb::Status, usize>,
    /// (profile, expiry) of held tokens, the first ones by name.
    pub token_expiries: Vec<(String, UnixMillis)>,
    /// The engine's clock when the snapshot was taken.
    pub now_ms: UnixMillis,
    /// Bytes the store uses on disk (None: it could not tell).
    pub store_bytes: Option<u64>,
}
