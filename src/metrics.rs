//! Prometheus metrics: a registry per daemon (so each test scrapes its own), filled at scrape
//! time from the token cache and the store, so the hot path pays nothing for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::pb;
use crate::core::Core;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    profiles: Family<StatusLabel, Gauge>,
    store_bytes: Gauge,
    sweep_last_run: Gauge,
    /// Unix milliseconds of the last completed sweep, written by the scheduler.
    pub last_sweep_ms: Arc<AtomicI64>,
}

impl Metrics {
    /// A fresh registry.
    pub fn new(last_sweep_ms: Arc<AtomicI64>) -> Self {
        let mut registry = Registry::with_prefix("tokend");
        let profiles = Family::<StatusLabel, Gauge>::default();
        registry.register("profiles", "Profiles by connection status", profiles.clone());
        let store_bytes = Gauge::default();
        registry.register("store_size_bytes", "Bytes the store uses on disk", store_bytes.clone());
        let sweep_last_run = Gauge::default();
        registry.register(
            "sweep_last_run_timestamp_seconds",
            "When the refresh sweep last completed",
            sweep_last_run.clone(),
        );
        Self { registry, profiles, store_bytes, sweep_last_run, last_sweep_ms }
    }

    /// The metrics in Prometheus text format, computed now.
    pub fn render(&self, core: &Core) -> Result<String, std::fmt::Error> {
        let counts = core.status_counts();
        for status in [
            pb::Status::NotConnected,
            pb::Status::Connecting,
            pb::Status::Connected,
            pb::Status::RefreshFailing,
            pb::Status::NeedsReauthorization,
        ] {
            let label = StatusLabel { status: status.as_str_name().trim_start_matches("STATUS_").to_ascii_lowercase() };
            self.profiles.get_or_create(&label).set(counts.get(&status).copied().unwrap_or(0) as i64);
        }
        self.store_bytes.set(core.store().size_on_disk().map(|b| b as i64).unwrap_or(-1));
        self.sweep_last_run.set(self.last_sweep_ms.load(Ordering::Relaxed) / 1000);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
