//! gRPC requests by method and status code, and the latency of unary calls by method. The
//! request layer resolves one [`MethodMetrics`] per method at start, so a call costs two atomic
//! adds for its count and three for its latency: no label hashing, no lock (prometheus-client's
//! own histogram takes a mutex per observation, one per method, which every hand-out would
//! contend on).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tonic::Code;

/// The canonical names of the gRPC status codes, indexed by code.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Upper bounds of the latency buckets, in seconds: a hand-out from the cache takes tens of
/// microseconds, one that waits for a refresh up to the provider's timeout.
const BOUNDS: [f64; 16] =
    [0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The method label of requests for paths no service serves (a fixed value, so a client
/// cannot create series at will).
pub const UNKNOWN_METHOD: &str = "unknown";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCodeLabel {
    method: String,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// The gRPC request families, registered once per daemon.
#[derive(Debug, Clone, Default)]
pub struct GrpcMetrics {
    requests: Family<MethodCodeLabel, Counter>,
    durations: Family<MethodLabel, LatencyHistogram>,
}

impl GrpcMetrics {
    /// Adds the families to `registry` (which carries the `tokend` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "grpc_requests",
            "gRPC requests by method (package.Service/Method) and status code",
            self.requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time from a unary gRPC request to its status, by method",
            self.durations.clone(),
        );
    }

    /// The handles of one method (`package.Service/Method`). Streaming methods get no latency
    /// series: a watch stream lasts as long as its client.
    pub fn method(&self, method: &str, unary: bool) -> MethodMetrics {
        MethodMetrics {
            inner: Arc::new(MethodInner {
                method: method.to_owned(),
                requests: self.requests.clone(),
                durations: unary.then(|| self.durations.clone()),
                codes: Default::default(),
                duration: OnceLock::new(),
            }),
        }
    }
}

/// One method's counters and latency, resolved ahead of its calls. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MethodMetrics {
    inner: Arc<MethodInner>,
}

#[derive(Debug)]
struct MethodInner {
    method: String,
    requests: Family<MethodCodeLabel, Counter>,
    /// The latency family, for unary methods only.
    durations: Option<Family<MethodLabel, LatencyHistogram>>,
    /// The counter of each code, created on first use (series appear only for what happens).
    codes: [OnceLock<Counter>; 17],
    /// The latency histogram, created on the first call.
    duration: OnceLock<LatencyHistogram>,
}

impl MethodMetrics {
    /// Counts one finished call with its status code and, for unary methods, its latency.
    pub fn record(&self, code: Code, elapsed: Duration) {
        let index = (code as usize).min(CODE_NAMES.len() - 1);
        let counter = self.inner.codes[index].get_or_init(|| {
            let label = MethodCodeLabel { method: self.inner.method.clone(), code: CODE_NAMES[index] };
            self.inner.requests.get_or_create(&label).clone()
        });
        counter.inc();
        if let Some(durations) = &self.inner.durations {
            let histogram = self
                .inner
                .duration
                .get_or_init(|| durations.get_or_create(&MethodLabel { method: self.inner.method.clone() }).clone());
            histogram.observe(elapsed);
        }
    }
}

/// A latency histogram of atomics with fixed buckets ([`BOUNDS`]): observing never locks.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// Observations per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Adds one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = BOUNDS.iter().position(|bound| seconds <= *bound).unwrap_or(BOUNDS.len());
        self.inner.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = Vec::with_capacity(BOUNDS.len() + 1);
        let mut count = 0;
        for (i, bucket) in self.inner.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            count += n;
            buckets.push((BOUNDS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts land under the method and the canonical code name; latency only for unary
    /// methods, in the right bucket.
    #[test]
    fn counts_and_latency() {
        let metrics = GrpcMetrics::default();
        let mut registry = Registry::with_prefix("tokend");
        metrics.register(&mut registry);
        let get = metrics.method("tokend.v1.Tokens/GetAccessToken", true);
        let watch = metrics.method("tokend.v1.Tokens/WatchAccessToken", false);
        get.record(Code::Ok, Duration::from_micros(80));
        get.record(Code::Ok, Duration::from_millis(3));
        get.clone().record(Code::Unauthenticated, Duration::from_secs(20));
        watch.record(Code::Cancelled, Duration::from_secs(3600));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"tokend_grpc_requests_total{method="tokend.v1.Tokens/GetAccessToken",code="OK"} 2"#,
            r#"tokend_grpc_requests_total{method="tokend.v1.Tokens/GetAccessToken",code="UNAUTHENTICATED"} 1"#,
            r#"tokend_grpc_requests_total{method="tokend.v1.Tokens/WatchAccessToken",code="CANCELLED"} 1"#,
            r#"tokend_grpc_request_duration_seconds_count{method="tokend.v1.Tokens/GetAccessToken"} 3"#,
            r#"tokend_grpc_request_duration_seconds_bucket{le="0.0001",method="tokend.v1.Tokens/GetAccessToken"} 1"#,
            r#"tokend_grpc_request_duration_seconds_bucket{le="0.005",method="tokend.v1.Tokens/GetAccessToken"} 2"#,
            r#"tokend_grpc_request_duration_seconds_bucket{le="+Inf",method="tokend.v1.Tokens/GetAccessToken"} 3"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains(r#"duration_seconds_count{method="tokend.v1.Tokens/WatchAccessToken"}"#), "{text}");
    }
}
