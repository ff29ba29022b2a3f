//! Prometheus metrics of the controller (`prometheus-client`): CSI operations by RPC and code,
//! their latency, and orphan volumes; served on `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    rpc: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    trigger: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: String,
}

/// The controller's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    operations: Family<OperationLabels, Counter>,
    latency: Family<RpcLabels, Histogram>,
    /// LogicalVolumes whose PV is gone past the grace period.
    pub orphans: Gauge,
    /// LogicalVolumes on nodes that no longer exist.
    pub lost: Gauge,
    /// NodeStorages not refreshed within `--stale-after`.
    pub stale_nodes: Gauge,
    drifts: Family<DriftLabels, Counter>,
    /// Drifts started and not yet completed or timed out.
    pub drifts_in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strata_controller");
        let operations = Family::<OperationLabels, Counter>::default();
        let latency = Family::<RpcLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let orphans = Gauge::default();
        let lost = Gauge::default();
        let stale_nodes = Gauge::default();
        registry.register(
            "csi_operations",
            "CSI calls by RPC and gRPC code",
            operations.clone(),
        );
        registry.register("csi_operation_seconds", "CSI call latency", latency.clone());
        registry.register(
            "orphan_volumes",
            "LogicalVolumes without a PV past the grace period",
            orphans.clone(),
        );
        registry.register(
            "lost_volumes",
            "LogicalVolumes whose node was deleted",
            lost.clone(),
        );
        registry.register(
            "stale_node_storages",
            "NodeStorages whose agent has not refreshed status.updatedAt within --stale-after",
            stale_nodes.clone(),
        );
        let drifts = Family::<DriftLabels, Counter>::default();
        let drifts_in_flight = Gauge::default();
        registry.register(
            "drifts",
            "Recovery-policy decisions and drift steps by trigger (disk, node) and outcome",
            drifts.clone(),
        );
        registry.register(
            "drifts_in_flight",
            "Drifts started whose StatefulSet has not yet bound a new claim",
            drifts_in_flight.clone(),
        );
        Metrics {
            drifts,
            drifts_in_flight,
            stale_nodes,
            registry: Arc::new(registry),
            operations,
            latency,
            orphans,
            lost,
        }
    }

    pub fn observe(&self, rpc: &str, code: tonic::Code, elapsed: Duration) {
        let code = format!("{code:?}");
        self.operations
            .get_or_create(&OperationLabels {
                rpc: rpc.into(),
                code,
            })
            .inc();
        self.latency
            .get_or_create(&RpcLabels { rpc: rpc.into() })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one recovery-policy outcome (`strata_controller_drifts_total`).
    pub fn drift(&self, trigger: &str, outcome: &str) {
        self.drifts
            .get_or_create(&DriftLabels {
                trigger: trigger.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Serves `/metrics` until `shutdown`.
    pub async fn serve(self, addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        csi_api::http::serve_metrics(listener, move || self.encode(), shutdown).await
    }
}
