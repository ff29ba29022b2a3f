//! The agent's Prometheus metrics (`prometheus-client`), served as OpenMetrics text on `/metrics`
//! (the hardened `csi_api::http` server) at
//! `--metrics-addr` in both modes: bytes wiped and wipe durations by method and device class,
//! LVs whose wipe is pending (marked and not yet removed), and fstrim runs. One registry per
//! process, handed to the parts that count; cheap to clone.

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
struct WipeLabels {
    method: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// See the module head.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskLabels {
    state: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClaimLabels {
    action: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// The node's storage as last published in NodeStorage: per device class (VG) and per disk.
#[derive(Clone, Default)]
struct NodeGauges {
    vg_size: Family<ClassLabels, Gauge>,
    vg_free: Family<ClassLabels, Gauge>,
    vg_allocatable: Family<ClassLabels, Gauge>,
    class_degraded: Family<ClassLabels, Gauge>,
    thin_data_used: Family<ClassLabels, Gauge>,
    thin_data_size: Family<ClassLabels, Gauge>,
    thin_metadata_used: Family<ClassLabels, Gauge>,
    thin_metadata_size: Family<ClassLabels, Gauge>,
    thin_virtual: Family<ClassLabels, Gauge>,
    thin_promisable: Family<ClassLabels, Gauge>,
    disks: Family<DiskLabels, Gauge>,
    updated: Gauge,
}

#[derive(Clone)]
pub struct Metrics {
    node: NodeGauges,
    claim_actions: Family<ClaimLabels, Counter>,
    registry: Arc<Registry>,
    wiped_bytes: Family<WipeLabels, Counter>,
    wipe_seconds: Family<WipeLabels, Histogram>,
    /// LVs marked for wiping and not removed yet.
    pub wipes_pending: Gauge,
    fstrim_runs: Family<OutcomeLabels, Counter>,
    /// Bytes the last fstrim pass reported trimmed (sum over volumes).
    pub fstrim_last_bytes: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strata_agent");
        let wiped_bytes = Family::<WipeLabels, Counter>::default();
        // 0.1 s .. ~1.8 h: a discard of a small LV to zeroing a large one on a spinning disk.
        let wipe_seconds = Family::<WipeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.1, 2.0, 17))
        });
        let wipes_pending = Gauge::default();
        let fstrim_runs = Family::<OutcomeLabels, Counter>::default();
        let fstrim_last_bytes = Gauge::default();
        let node = NodeGauges::default();
        let claim_actions = Family::<ClaimLabels, Counter>::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the agent's version in the label",
            build_info,
        );
        registry.register(
            "vg_size_bytes",
            "Size of the device class's volume group",
            node.vg_size.clone(),
        );
        registry.register(
            "vg_free_bytes",
            "Free bytes of the device class's volume group",
            node.vg_free.clone(),
        );
        registry.register(
            "vg_allocatable_bytes",
            "Bytes new volumes of the class may still take (free minus the reserve)",
            node.vg_allocatable.clone(),
        );
        registry.register(
            "class_degraded",
            "1 when the device class is Degraded (a claimed disk is missing), else 0",
            node.class_degraded.clone(),
        );
        for (name, help, family) in [
            (
                "thin_pool_size_bytes",
                "Data size of the class's thin pool",
                &node.thin_data_size,
            ),
            (
                "thin_pool_used_bytes",
                "Data bytes in use in the class's thin pool",
                &node.thin_data_used,
            ),
            (
                "thin_pool_metadata_size_bytes",
                "Metadata size of the class's thin pool",
                &node.thin_metadata_size,
            ),
            (
                "thin_pool_metadata_used_bytes",
                "Metadata bytes in use in the class's thin pool",
                &node.thin_metadata_used,
            ),
            (
                "thin_pool_virtual_bytes",
                "Virtual bytes promised to the thin volumes on the class's pool",
                &node.thin_virtual,
            ),
            (
                "thin_pool_promisable_bytes",
                "Virtual bytes a new thin volume of the class may still be promised (0 when the pool is full)",
                &node.thin_promisable,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "disks",
            "Disks the agent sees, by state (claimed, available, rejected, missing, failed) and media class",
            node.disks.clone(),
        );
        registry.register(
            "nodestorage_updated_timestamp_seconds",
            "When the agent last wrote its NodeStorage status (Unix time)",
            node.updated.clone(),
        );
        registry.register(
            "claim_actions",
            "Claim actions (create_vg, extend_vg, retag) run on disks, by outcome (ok, failed)",
            claim_actions.clone(),
        );
        registry.register(
            "wiped_bytes",
            "Bytes of deleted volumes wiped, by method and device class",
            wiped_bytes.clone(),
        );
        registry.register(
            "wipe_duration_seconds",
            "Time to wipe one deleted volume, by method and device class",
            wipe_seconds.clone(),
        );
        registry.register(
            "wipes_pending",
            "Volumes marked for wiping and not removed yet (their space is not free)",
            wipes_pending.clone(),
        );
        registry.register(
            "fstrim_runs",
            "fstrim runs on mounted volumes, by outcome",
            fstrim_runs.clone(),
        );
        registry.register(
            "fstrim_last_trimmed_bytes",
            "Bytes the last periodic fstrim pass reported trimmed",
            fstrim_last_bytes.clone(),
        );
        Metrics {
            node,
            claim_actions,
            registry: Arc::new(registry),
            wiped_bytes,
            wipe_seconds,
            wipes_pending,
            fstrim_runs,
            fstrim_last_bytes,
        }
    }

    /// One finished wipe.
    pub fn wiped(&self, method: &str, class: &str, bytes: u64, took: Duration) {
        let labels = WipeLabels {
            method: method.into(),
            class: class.into(),
        };
        self.wiped_bytes.get_or_create(&labels).inc_by(bytes);
        self.wipe_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// One fstrim run (`ok` or `failed`).
    /// Sets the node gauges to what `status` says (label sets no longer present are dropped).
    pub fn node_storage(&self, status: &csi_api::crd::NodeStorageStatus) {
        let n = &self.node;
        for family in [
            &n.vg_size,
            &n.vg_free,
            &n.vg_allocatable,
            &n.class_degraded,
            &n.thin_data_size,
            &n.thin_data_used,
            &n.thin_metadata_size,
            &n.thin_metadata_used,
            &n.thin_virtual,
            &n.thin_promisable,
        ] {
            family.clear();
        }
        n.disks.clear();
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for c in &status.device_classes {
            let l = ClassLabels {
                class: c.name.to_string(),
            };
            n.vg_size.get_or_create(&l).set(gauge(c.total_bytes));
            n.vg_free.get_or_create(&l).set(gauge(c.free_bytes));
            n.vg_allocatable
                .get_or_create(&l)
                .set(gauge(c.allocatable_bytes));
            let degraded = c.health == csi_api::crd::ClassHealth::Degraded;
            n.class_degraded.get_or_create(&l).set(i64::from(degraded));
            if let Some(p) = &c.thin_pool {
                n.thin_data_size.get_or_create(&l).set(gauge(p.size_bytes));
                n.thin_data_used.get_or_create(&l).set(gauge(p.used_bytes));
                n.thin_metadata_size
                    .get_or_create(&l)
                    .set(gauge(p.metadata_size_bytes));
                n.thin_metadata_used
                    .get_or_create(&l)
                    .set(gauge(p.metadata_used_bytes));
                n.thin_virtual.get_or_create(&l).set(gauge(p.virtual_bytes));
                n.thin_promisable
                    .get_or_create(&l)
                    .set(gauge(p.promisable_bytes));
            }
        }
        for d in &status.disks {
            let state = serde_json::to_value(d.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_lowercase))
                .unwrap_or_default();
            let l = DiskLabels {
                state,
                class: d.media.to_string(),
            };
            n.disks.get_or_create(&l).inc();
        }
        if let Some(t) = &status.updated_at {
            n.updated.set(t.0.as_second());
        }
    }

    /// Counts one claim action (`create_vg`, `extend_vg`, `retag`) and whether it worked.
    pub fn claim_action(&self, action: &str, ok: bool) {
        self.claim_actions
            .get_or_create(&ClaimLabels {
                action: action.into(),
                outcome: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    pub fn fstrim_run(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.fstrim_runs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Serves `/metrics` on `addr` until `shutdown`.
    pub async fn serve(self, addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        self.serve_on(listener, shutdown).await
    }

    /// Serves `/metrics` on a bound listener until `shutdown`.
    pub async fn serve_on(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        csi_api::http::serve_metrics(listener, move || self.encode(), shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_api::crd::{ClassHealth, DeviceClassStatus, DiskState, DiskStatus, NodeStorageStatus};
    use csi_api::names::DeviceClass;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn disk(slot: &str, media: DeviceClass, state: DiskState) -> DiskStatus {
        DiskStatus {
            slot: slot.into(),
            kernel_name: "sda".into(),
            media,
            size_bytes: 1 << 30,
            model: String::new(),
            serial: String::new(),
            wwn: String::new(),
            state,
            reason: String::new(),
            volume_group: None,
        }
    }

    #[test]
    fn node_gauges_follow_the_published_status() {
        let m = Metrics::new();
        let nvme = DeviceClassStatus {
            name: DeviceClass::Nvme,
            vg_name: "strata-nvme".into(),
            total_bytes: 16 << 30,
            free_bytes: 8 << 30,
            allocatable_bytes: 7 << 30,
            capacity: None,
            allocatable: None,
            pv_count: 2,
            missing_pv_count: 1,
            lv_count: 1,
            health: ClassHealth::Degraded,
            thin_pool: None,
        };
        let mut status = NodeStorageStatus {
            disks: vec![
                disk("a", DeviceClass::Nvme, DiskState::Claimed),
                disk("b", DeviceClass::Nvme, DiskState::Missing),
                disk("c", DeviceClass::Hdd, DiskState::Rejected),
                disk("d", DeviceClass::Hdd, DiskState::Rejected),
            ],
            device_classes: vec![nvme],
            ..Default::default()
        };
        m.node_storage(&status);
        m.claim_action("create_vg", true);
        m.claim_action("extend_vg", false);
        let text = m.encode();
        for line in [
            r#"strata_agent_vg_size_bytes{class="nvme"} 17179869184"#,
            r#"strata_agent_vg_free_bytes{class="nvme"} 8589934592"#,
            r#"strata_agent_vg_allocatable_bytes{class="nvme"} 7516192768"#,
            r#"strata_agent_class_degraded{class="nvme"} 1"#,
            r#"strata_agent_disks{state="claimed",class="nvme"} 1"#,
            r#"strata_agent_disks{state="missing",class="nvme"} 1"#,
            r#"strata_agent_disks{state="rejected",class="hdd"} 2"#,
            r#"strata_agent_claim_actions_total{action="create_vg",outcome="ok"} 1"#,
            r#"strata_agent_claim_actions_total{action="extend_vg",outcome="failed"} 1"#,
            concat!(
                r#"strata_agent_build_info{version=""#,
                env!("CARGO_PKG_VERSION"),
                r#""} 1"#
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // a disk that is gone from the status is gone from the gauges
        status.disks.truncate(1);
        status.device_classes.clear();
        m.node_storage(&status);
        let text = m.encode();
        assert!(!text.contains(r#"state="rejected""#), "{text}");
        assert!(!text.contains(r#"strata_agent_vg_size_bytes{"#), "{text}");
    }

    #[tokio::test]
    async fn serves_the_wipe_metrics_over_http() {
        let m = Metrics::new();
        m.wiped("zero", "hdd", 4 << 20, Duration::from_millis(300));
        m.wipes_pending.set(2);
        m.fstrim_run(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(m.clone().serve_on(listener, stop.clone()));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains(csi_api::http::OPENMETRICS_CONTENT_TYPE),
            "{body}"
        );
        assert!(
            body.contains(r#"strata_agent_wiped_bytes_total{method="zero",class="hdd"} 4194304"#),
            "{body}"
        );
        assert!(body.contains("strata_agent_wipes_pending 2"), "{body}");
        assert!(
            body.contains(
                r#"strata_agent_wipe_duration_seconds_count{method="zero",class="hdd"} 1"#
            ),
            "{body}"
        );
        assert!(
            body.contains(r#"strata_agent_fstrim_runs_total{outcome="ok"} 1"#),
            "{body}"
        );
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
