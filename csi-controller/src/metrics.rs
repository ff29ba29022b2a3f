//! Prometheus metrics of the controller (`prometheus-client`): CSI operations by RPC and code,
//! their latency, orphan volumes, and LogicalVolumes per phase and class (counted from the
//! watched cache at each scrape, so every replica reports it, not only the leader); served on
//! `/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use std::collections::HashMap;

use csi_api::crd::{LogicalVolume, LogicalVolumePhase};
use csi_api::names::DeviceClass;
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
struct VolumeLabels {
    phase: String,
    class: String,
}

/// Counts LogicalVolumes by (phase, class) at scrape time.
type VolumeCounter = Box<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

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
    volumes: Family<VolumeLabels, Gauge>,
    volume_counter: Arc<OnceLock<VolumeCounter>>,
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
        let volumes = Family::<VolumeLabels, Gauge>::default();
        registry.register(
            "volumes",
            "LogicalVolumes by status.phase (Pending also while the agent has written none) and device class",
            volumes.clone(),
        );
        Metrics {
            volumes,
            volume_counter: Arc::new(OnceLock::new()),
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

    /// Counts LogicalVolumes from `store` (the controller's watched cache) at every scrape.
    pub fn count_volumes_from(&self, store: kube::runtime::reflector::Store<LogicalVolume>) {
        let _ = self.volume_counter.set(Box::new(move || {
            store
                .state()
                .iter()
                .filter(|lv| !lv.spec.is_snapshot())
                .map(|lv| volume_labels(lv))
                .collect()
        }));
    }

    /// Sets `strata_controller_volumes` from `volumes` as (phase, class): every phase of every
    /// class is present (0 when none), so a panel or alert never sees a series vanish.
    fn set_volumes(&self, volumes: Vec<(String, String)>) {
        let mut counts: HashMap<(String, String), i64> = HashMap::new();
        for class in DeviceClass::ALL {
            for phase in PHASES {
                counts.insert((phase.to_string(), class.to_string()), 0);
            }
        }
        for key in volumes {
            *counts.entry(key).or_default() += 1;
        }
        for ((phase, class), n) in counts {
            self.volumes
                .get_or_create(&VolumeLabels { phase, class })
                .set(n);
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        if let Some(count) = self.volume_counter.get() {
            self.set_volumes(count());
        }
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

const PHASES: [&str; 4] = ["Pending", "Ready", "Failed", "Wiping"];

/// The (phase, class) labels of one LogicalVolume; no phase yet counts as `Pending`.
fn volume_labels(lv: &LogicalVolume) -> (String, String) {
    let phase = match lv.status.as_ref().and_then(|s| s.phase) {
        None | Some(LogicalVolumePhase::Pending) => "Pending",
        Some(LogicalVolumePhase::Ready) => "Ready",
        Some(LogicalVolumePhase::Failed) => "Failed",
        Some(LogicalVolumePhase::Wiping) => "Wiping",
    };
    (phase.to_owned(), lv.spec.device_class.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_counted_per_phase_and_class_with_zeros() {
        let metrics = Metrics::new();
        metrics.set_volumes(vec![
            ("Ready".into(), "nvme".into()),
            ("Ready".into(), "nvme".into()),
            ("Wiping".into(), "hdd".into()),
        ]);
        let text = metrics.encode();
        assert!(
            text.contains("# TYPE strata_controller_volumes gauge"),
            "{text}"
        );
        assert!(text.contains(r#"strata_controller_volumes{phase="Ready",class="nvme"} 2"#));
        assert!(text.contains(r#"strata_controller_volumes{phase="Wiping",class="hdd"} 1"#));
        assert!(text.contains(r#"strata_controller_volumes{phase="Failed",class="ssd"} 0"#));
        // A later count replaces the earlier one.
        metrics.set_volumes(vec![]);
        assert!(
            metrics
                .encode()
                .contains(r#"strata_controller_volumes{phase="Ready",class="nvme"} 0"#)
        );
    }

    #[test]
    fn snapshots_are_not_counted_as_volumes() {
        use csi_api::crd::{LogicalVolumeSpec, LogicalVolumeStatus, VolumeRole};
        use csi_api::names::DeviceClass;
        let (store, mut writer) = kube::runtime::reflector::store::<LogicalVolume>();
        for (name, role) in [("pvc-1", None), ("snapshot-1", Some(VolumeRole::Snapshot))] {
            let mut lv = LogicalVolume::new(
                name,
                LogicalVolumeSpec {
                    node_name: "n1".into(),
                    device_class: DeviceClass::Nvme,
                    size_bytes: 1 << 30,
                    pvc: None,
                    provisioning: None,
                    source: None,
                    role,
                    volume_snapshot: None,
                    wipe: None,
                },
            );
            lv.status = Some(LogicalVolumeStatus {
                phase: Some(LogicalVolumePhase::Ready),
                ..Default::default()
            });
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(lv));
        }
        let metrics = Metrics::new();
        metrics.count_volumes_from(store);
        assert!(
            metrics
                .encode()
                .contains(r#"strata_controller_volumes{phase="Ready",class="nvme"} 1"#)
        );
    }
}
