//! Prometheus metrics of the extender (`/metrics`, OpenMetrics text): requests and latency per
//! verb and status code, nodes rejected per reason, and the state of the cluster view.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric the extender exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistogramFamily<VerbLabels>,
    pub rejected_nodes: Family<ReasonLabels, Counter>,
    pub view_nodes: Gauge,
    pub view_claims: Gauge,
    pub view_builds: Counter,
    pub view_build_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strata_scheduler");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Extender requests by verb and HTTP status",
            requests.clone(),
        );
        let request_seconds: HistogramFamily<VerbLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time to answer an extender request, body decoding included",
            request_seconds.clone(),
        );
        let rejected_nodes = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected_nodes",
            "Nodes filtered out, by reason",
            rejected_nodes.clone(),
        );
        let view_nodes = Gauge::default();
        registry.register(
            "view_nodes",
            "Nodes with a NodeStorage in the view",
            view_nodes.clone(),
        );
        let view_claims = Gauge::default();
        registry.register(
            "view_claims",
            "Claims of Strata StorageClasses in the view",
            view_claims.clone(),
        );
        let view_builds = Counter::default();
        registry.register(
            "view_builds",
            "Cluster view snapshots published (one per burst of watch events)",
            view_builds.clone(),
        );
        let view_build_seconds = latency_histogram();
        registry.register(
            "view_build_duration_seconds",
            "Time to apply a burst of watch events to the view and publish it",
            view_build_seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            rejected_nodes,
            view_nodes,
            view_claims,
            view_builds,
            view_build_seconds,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
