//! Prometheus metrics, with a registry per daemon (so each test scrapes its own). Counters the
//! engine updates live in [`EngineMetrics`], those of the gRPC request layer in [`GrpcMetrics`];
//! gauges are computed at scrape time from the token cache and the store, so the hot path pays
//! a few atomic increments at most.

mod grpc;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::pb;
use crate::core::Core;

pub use grpc::{GrpcMetrics, LatencyHistogram, MethodMetrics, UNKNOWN_METHOD};

/// A status label value: `connected`, `refresh_failing`, ….
pub fn status_label(status: pb::Status) -> String {
    status.as_str_name().trim_start_matches("STATUS_").to_ascii_lowercase()
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileLabel {
    profile: String,
}

/// What the engine counts as it works.
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
        }
    }
}

/// The daemon's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    profiles: Family<StatusLabel, Gauge>,
    expires_in: Family<ProfileLabel, Gauge>,
    store_bytes: Gauge,
    sweep_last_run: Gauge,
    last_sweep_ms: Arc<AtomicI64>,
    max_profile_series: usize,
}

impl Metrics {
    /// A registry holding the engine's and the request layer's counters and the scrape-time
    /// gauges.
    pub fn new(core: &Core, grpc: &GrpcMetrics, last_sweep_ms: Arc<AtomicI64>, max_profile_series: usize) -> Self {
        let mut registry = Registry::with_prefix("tokend");
        grpc.register(&mut registry);
        let engine = core.metrics();
        registry.register("refreshes", "Refreshes by outcome (ok, transient, permanent)", engine.refreshes.clone());
        registry.register("refresh_duration_seconds", "Time a provider refresh took", engine.refresh_seconds.clone());
        registry.register("token_handouts", "Access tokens handed out", engine.handouts.clone());
        registry.register("status_changes", "Connection status changes", engine.status_changes.clone());
        let profiles = Family::<StatusLabel, Gauge>::default();
        registry.register("profiles", "Profiles by connection status", profiles.clone());
        let expires_in = Family::<ProfileLabel, Gauge>::default();
        registry.register(
            "token_expires_in_seconds",
            "Seconds until each profile's access token expires (first metrics.max_profile_series profiles by name)",
            expires_in.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register("store_size_bytes", "Bytes the store uses on disk", store_bytes.clone());
        let sweep_last_run = Gauge::default();
        registry.register(
            "sweep_last_run_timestamp_seconds",
            "When the refresh sweep last completed",
            sweep_last_run.clone(),
        );
        Self { registry, profiles, expires_in, store_bytes, sweep_last_run, last_sweep_ms, max_profile_series }
    }

    /// The metrics in Prometheus text format, gauges computed now.
    pub fn render(&self, core: &Core) -> Result<String, std::fmt::Error> {
        let counts = core.status_counts();
        for status in [
            pb::Status::NotConnected,
            pb::Status::Connecting,
            pb::Status::Connected,
            pb::Status::RefreshFailing,
            pb::Status::NeedsReauthorization,
        ] {
            let label = StatusLabel { status: status_label(status) };
            self.profiles.get_or_create(&label).set(counts.get(&status).copied().unwrap_or(0) as i64);
        }
        self.expires_in.clear();
        let now = core.clock().now_ms();
        for (name, expires_at_ms) in core.token_expiries(self.max_profile_series) {
            self.expires_in.get_or_create(&ProfileLabel { profile: name }).set((expires_at_ms - now) / 1000);
        }
        self.store_bytes.set(core.store().size_on_disk().map(|b| b as i64).unwrap_or(-1));
        self.sweep_last_run.set(self.last_sweep_ms.load(Ordering::Relaxed) / 1000);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
