//! Prometheus metrics, with a registry per daemon (so each test scrapes its own). Counters the
//! engine updates live with the engine ([`EngineMetrics`]), those of the gRPC request layer in
//! [`GrpcMetrics`]; gauges are set at scrape time from an [`EngineSnapshot`], so the hot path
//! pays a few atomic increments at most and this module only ever reads the engine.

mod grpc;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::pb;
use crate::engine::{EngineMetrics, EngineSnapshot, status_label};

pub use grpc::{GrpcMetrics, LatencyHistogram, MethodMetrics, UNKNOWN_METHOD};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileLabel {
    profile: String,
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
    pub fn new(
        engine: &EngineMetrics,
        grpc: &GrpcMetrics,
        last_sweep_ms: Arc<AtomicI64>,
        max_profile_series: usize,
    ) -> Self {
        let mut registry = Registry::with_prefix("tokend");
        grpc.register(&mut registry);
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

    /// How many per-profile series a scrape shows (the snapshot need hold no more).
    pub fn max_profile_series(&self) -> usize {
        self.max_profile_series
    }

    /// The metrics in Prometheus text format, gauges set from `engine` (taken at scrape time).
    pub fn render(&self, engine: &EngineSnapshot) -> Result<String, std::fmt::Error> {
        let counts = &engine.status_counts;
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
        for (name, expires_at_ms) in &engine.token_expiries {
            let label = ProfileLabel { profile: name.clone() };
            self.expires_in.get_or_create(&label).set((expires_at_ms - engine.now_ms) / 1000);
        }
        self.store_bytes.set(engine.store_bytes.map_or(-1, |b| b as i64));
        self.sweep_last_run.set(self.last_sweep_ms.load(Ordering::Relaxed) / 1000);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
