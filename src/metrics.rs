//! Prometheus metrics, with a registry per daemon (so each test scrapes its own). Counters the
//! engine updates live with the engine ([`EngineMetrics`]), those of the gRPC request layer in
//! [`GrpcMetrics`]; gauges are set at scrape time from an [`EngineSnapshot`], so the hot path
//! pays a few atomic increments at most and this module only ever reads the engine.

mod grpc;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Held while a scrape sets the gauges and encodes them: they are shared by every scrape,
    /// and two at once would interleave one's `clear()` with the other's `set`s (#14 item 8).
    scrape: Mutex<()>,
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
    /// gauges. `max_profile_series` 0 leaves out the per-profile family altogether
    /// (`metrics.profile_labels = false`: profile names are not shown to whoever can scrape).
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
        registry.register(
            "store_flushes",
            "Flushes of the store that made rotated tokens durable (each serves every writer waiting)",
            engine.store_flushes.clone(),
        );
        registry.register(
            "store_flush_waits",
            "Writers that waited for a flush (divide by store_flushes for writers per flush)",
            engine.store_flush_waits.clone(),
        );
        registry.register(
            "store_flush_duration_seconds",
            "Time one flush of the store took",
            engine.store_flush_seconds.clone(),
        );
        let profiles = Family::<StatusLabel, Gauge>::default();
        registry.register("profiles", "Profiles by connection status", profiles.clone());
        let expires_in = Family::<ProfileLabel, Gauge>::default();
        if max_profile_series > 0 {
            registry.register(
                "token_expires_in_seconds",
                "Seconds until each profile's access token expires (first metrics.max_profile_series profiles by name)",
                expires_in.clone(),
            );
        }
        let store_bytes = Gauge::default();
        registry.register("store_size_bytes", "Bytes the store uses on disk", store_bytes.clone());
        let sweep_last_run = Gauge::default();
        registry.register(
            "sweep_last_run_timestamp_seconds",
            "When the refresh sweep last completed",
            sweep_last_run.clone(),
        );
        Self {
            scrape: Mutex::new(()),
            registry,
            profiles,
            expires_in,
            store_bytes,
            sweep_last_run,
            last_sweep_ms,
            max_profile_series,
        }
    }

    /// How many per-profile series a scrape shows (the snapshot need hold no more).
    pub fn max_profile_series(&self) -> usize {
        self.max_profile_series
    }

    /// The metrics in Prometheus text format, gauges set from `engine` (taken at scrape time).
    /// Scrapes take turns (a few microseconds each), so each one shows its own snapshot whole.
    pub fn render(&self, engine: &EngineSnapshot) -> Result<String, std::fmt::Error> {
        // A panic while holding the lock leaves nothing half-done that the next scrape does not
        // overwrite: go on with the poisoned lock.
        let _turn = self.scrape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
        for (name, expires_at_ms) in engine.token_expiries.iter().take(self.max_profile_series) {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A snapshot with `profiles` held tokens.
    fn snapshot(profiles: usize) -> EngineSnapshot {
        EngineSnapshot {
            status_counts: HashMap::from([(pb::Status::Connected, profiles)]),
            token_expiries: (0..profiles).map(|i| (format!("profile-{i:03}"), 3_600_000)).collect(),
            now_ms: 0,
            store_bytes: Some(1),
        }
    }

    fn metrics() -> Metrics {
        Metrics::new(&EngineMetrics::default(), &GrpcMetrics::default(), Arc::new(AtomicI64::new(0)), 1000)
    }

    /// With no per-profile series (`metrics.profile_labels = false`), no profile name appears.
    #[test]
    fn no_profile_series_no_profile_names() {
        let metrics = Metrics::new(&EngineMetrics::default(), &GrpcMetrics::default(), Arc::new(AtomicI64::new(0)), 0);
        let text = metrics.render(&snapshot(3)).expect("render");
        assert!(!text.contains("profile-") && !text.contains("token_expires_in_seconds"), "{text}");
        assert!(text.contains("tokend_profiles{status=\"connected\"} 3"), "{text}");
    }

    /// #14 item 8: scrapes rendered at once each carry every profile's series (they shared one
    /// set of gauges: one scrape's `clear()` emptied another's half-way).
    #[test]
    fn concurrent_scrapes_carry_the_same_series() {
        let metrics = Arc::new(metrics());
        let engine = Arc::new(snapshot(200));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (metrics, engine) = (Arc::clone(&metrics), Arc::clone(&engine));
                std::thread::spawn(move || {
                    (0..200)
                        .map(|_| metrics.render(&engine).expect("render"))
                        .map(|text| text.lines().filter(|l| l.starts_with("tokend_token_expires_in_seconds{")).count())
                        .min()
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().expect("thread"), Some(200), "fewest profile series in one scrape");
        }
    }
}
