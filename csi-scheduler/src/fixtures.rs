//! Objects for tests and benchmarks (shared by the unit tests of `view`, `extender` and `http`,
//! and by `benches/`): NodeStorage, LogicalVolume, PVC, StorageClass and Pod builders, and a
//! synthetic cluster of any size. Not used by the binary.

use std::collections::BTreeMap;
use std::sync::Arc;

use csi_api::crd::{
    ClassHealth, DeviceClassStatus, LogicalVolume, LogicalVolumePhase, LogicalVolumeSpec,
    LogicalVolumeStatus, NodeStorage, NodeStorageSpec, NodeStorageStatus, ThinPoolHealth,
    ThinPoolStatus,
};
use csi_api::names::{ANNOTATION_SELECTED_NODE, DRIVER_NAME, DeviceClass, Provisioning};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodStatus, Volume, VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::wire;

pub const GIB: u64 = 1 << 30;

/// A NodeStorage reporting `(class, allocatable bytes, healthy)` per class.
pub fn node_storage(name: &str, classes: &[(DeviceClass, u64, bool)]) -> Arc<NodeStorage> {
    let mut ns = NodeStorage::new(name, NodeStorageSpec::default());
    ns.status = Some(NodeStorageStatus {
        device_classes: classes
            .iter()
            .map(|&(class, alloc, healthy)| DeviceClassStatus {
                name: class,
                vg_name: class.vg_name().into(),
                total_bytes: alloc.max(1000 * GIB),
                free_bytes: alloc,
                allocatable_bytes: alloc,
                capacity: None,
                allocatable: None,
                pv_count: 2,
                missing_pv_count: u32::from(!healthy),
                lv_count: 0,
                health: if healthy {
                    ClassHealth::Healthy
                } else {
                    ClassHealth::Degraded
                },
                thin_pool: None,
            })
            .collect(),
        ..Default::default()
    });
    Arc::new(ns)
}

/// `ns` with a thin pool on `class`: 100 GiB at ratio 2, `promisable` bytes left, `health`.
pub fn with_thin_pool(
    ns: Arc<NodeStorage>,
    class: DeviceClass,
    promisable: u64,
    health: ThinPoolHealth,
) -> Arc<NodeStorage> {
    let mut ns = (*ns).clone();
    for c in &mut ns.status.as_mut().expect("status").device_classes {
        if c.name == class {
            c.thin_pool = Some(ThinPoolStatus {
                lv_name: "strata-thinpool".into(),
                size_bytes: 100 * GIB,
                used_bytes: 10 * GIB,
                metadata_size_bytes: GIB,
                metadata_used_bytes: 0,
                overprovision_ratio: 2.0,
                virtual_bytes: (200 * GIB).saturating_sub(promisable),
                promisable_bytes: promisable,
                health,
            });
        }
    }
    Arc::new(ns)
}

/// [`volume`], thin (`spec.provisioning: thin`).
pub fn thin_volume(
    name: &str,
    node: &str,
    class: DeviceClass,
    size: u64,
    phase: LogicalVolumePhase,
) -> Arc<LogicalVolume> {
    let mut lv = (*volume(name, node, class, size, phase)).clone();
    lv.spec.provisioning = Some(Provisioning::Thin);
    Arc::new(lv)
}

pub fn storage_class(name: &str, provisioner: &str, params: &[(&str, &str)]) -> Arc<StorageClass> {
    Arc::new(StorageClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        provisioner: provisioner.into(),
        parameters: Some(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    })
}

pub fn claim(ns: &str, name: &str, uid: &str, class: &str, size: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            storage_class_name: Some(class.into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity(size.into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    }
}

pub fn selected(mut pvc: PersistentVolumeClaim, node: &str) -> PersistentVolumeClaim {
    pvc.metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_SELECTED_NODE.to_string(),
        node.to_string(),
    )]));
    pvc
}

pub fn bound(mut pvc: PersistentVolumeClaim) -> PersistentVolumeClaim {
    pvc.spec.as_mut().unwrap().volume_name = Some("pvc-x".into());
    pvc
}

pub fn volume(
    name: &str,
    node: &str,
    class: DeviceClass,
    size: u64,
    phase: LogicalVolumePhase,
) -> Arc<LogicalVolume> {
    let mut lv = LogicalVolume::new(
        name,
        LogicalVolumeSpec {
            node_name: node.into(),
            device_class: class,
            size_bytes: size,
            pvc: None,
            source: None,
            role: None,
            volume_snapshot: None,
            wipe: None,
            provisioning: None,
        },
    );
    lv.status = Some(LogicalVolumeStatus {
        phase: Some(phase),
        ..Default::default()
    });
    Arc::new(lv)
}

pub fn standard_classes() -> Vec<Arc<StorageClass>> {
    vec![
        storage_class("fast", DRIVER_NAME, &[("strata.io/device-class", "nvme")]),
        storage_class(
            "bulk",
            DRIVER_NAME,
            &[
                ("strata.io/device-class", "hdd"),
                ("strata.io/placement", "spread"),
            ],
        ),
        storage_class("broken", DRIVER_NAME, &[("strata.io/device-class", "tape")]),
        storage_class("ebs", "ebs.csi.aws.com", &[("type", "gp3")]),
    ]
}

pub fn pod(name: &str, volumes: serde_json::Value) -> wire::Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "apps", "uid": "pod-uid"},
        "spec": {"volumes": volumes}
    }))
    .unwrap()
}

/// No pods (for views where no selected-node claim needs to count).
pub fn no_pods() -> Vec<Arc<Pod>> {
    Vec::new()
}

/// A pod in `ns` using `claims`, bound to `node` (`spec.nodeName`) when `bound`, else only
/// nominated to it (`status.nominatedNodeName`).
pub fn pod_on(ns: &str, name: &str, node: &str, bound: bool, claims: &[&str]) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: bound.then(|| node.to_owned()),
            volumes: Some(
                claims
                    .iter()
                    .map(|c| Volume {
                        name: format!("v-{c}"),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: (*c).to_owned(),
                            read_only: None,
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: Some(PodStatus {
            nominated_node_name: (!bound).then(|| node.to_owned()),
            ..Default::default()
        }),
    })
}

/// Objects of a synthetic cluster, as the reflector stores hold them.
pub struct Objects {
    pub nodes: Vec<Arc<NodeStorage>>,
    pub volumes: Vec<Arc<LogicalVolume>>,
    pub claims: Vec<Arc<PersistentVolumeClaim>>,
    pub classes: Vec<Arc<StorageClass>>,
    pub pods: Vec<Arc<Pod>>,
}

/// The name of the `i`th node of [`cluster`].
pub fn node_name(i: usize) -> String {
    format!("worker-{i:05}")
}

/// Volumes (and bound claims) per node in [`cluster`].
pub const CLAIMS_PER_NODE: usize = 8;

/// A cluster of `n` nodes: NodeStorage with two or three classes (nvme, hdd, every third node
/// ssd), [`CLAIMS_PER_NODE`] LogicalVolumes and bound claims per node (one volume pending), one
/// claim per node selected for it by a pod nominated there, the three claims of the pod
/// `apps/db-0` (`data-db-0` 200Gi and `wal-db-0` 20Gi on `strata-nvme` binpack, `archive-db-0`
/// 1Ti on `strata-hdd` spread), and the two StorageClasses.
pub fn cluster(n: usize) -> Objects {
    let mut nodes = Vec::with_capacity(n);
    let mut volumes = Vec::new();
    let mut claims = Vec::new();
    let mut pods = Vec::new();
    for i in 0..n {
        let name = node_name(i);
        let class = |c: DeviceClass, total: u64, free: u64| DeviceClassStatus {
            name: c,
            vg_name: c.vg_name().into(),
            total_bytes: total,
            free_bytes: free,
            allocatable_bytes: free,
            capacity: None,
            allocatable: None,
            pv_count: 2,
            missing_pv_count: 0,
            lv_count: 3,
            health: ClassHealth::Healthy,
            thin_pool: None,
        };
        let mut device_classes = vec![
            class(
                DeviceClass::Nvme,
                3200 * GIB,
                (100 + (i as u64 * 37) % 3000) * GIB,
            ),
            class(
                DeviceClass::Hdd,
                16_000 * GIB,
                (500 + (i as u64 * 101) % 15_000) * GIB,
            ),
        ];
        if i % 3 == 0 {
            device_classes.push(class(DeviceClass::Ssd, 8000 * GIB, 4000 * GIB));
        }
        let mut ns = NodeStorage::new(&name, NodeStorageSpec::default());
        ns.status = Some(NodeStorageStatus {
            device_classes,
            ..Default::default()
        });
        nodes.push(Arc::new(ns));
        for k in 0..CLAIMS_PER_NODE {
            let uid = format!("{i:05}-{k}");
            let phase = if k == 0 {
                LogicalVolumePhase::Pending
            } else {
                LogicalVolumePhase::Ready
            };
            volumes.push(volume(
                &format!("pvc-{uid}"),
                &name,
                DeviceClass::Nvme,
                10 * GIB,
                phase,
            ));
            let mut pvc = claim("apps", &format!("claim-{uid}"), &uid, "strata-nvme", "10Gi");
            if let Some(spec) = pvc.spec.as_mut() {
                spec.volume_name = Some(format!("pvc-{uid}"));
            }
            claims.push(Arc::new(pvc));
        }
        // One claim selected for the node by a pod nominated there, its volume not made yet.
        let selected_name = format!("selected-{i:05}");
        claims.push(Arc::new(selected(
            claim(
                "apps",
                &selected_name,
                &format!("sel-{i:05}"),
                "strata-nvme",
                "5Gi",
            ),
            &name,
        )));
        pods.push(pod_on(
            "apps",
            &format!("sel-pod-{i:05}"),
            &name,
            false,
            &[&selected_name],
        ));
    }
    claims.push(Arc::new(claim(
        "apps",
        "data-db-0",
        "p1",
        "strata-nvme",
        "200Gi",
    )));
    claims.push(Arc::new(claim(
        "apps",
        "wal-db-0",
        "p2",
        "strata-nvme",
        "20Gi",
    )));
    claims.push(Arc::new(claim(
        "apps",
        "archive-db-0",
        "p3",
        "strata-hdd",
        "1Ti",
    )));
    let classes = vec![
        storage_class(
            "strata-nvme",
            DRIVER_NAME,
            &[("strata.io/device-class", "nvme")],
        ),
        storage_class(
            "strata-hdd",
            DRIVER_NAME,
            &[
                ("strata.io/device-class", "hdd"),
                ("strata.io/placement", "spread"),
            ],
        ),
    ];
    Objects {
        nodes,
        volumes,
        claims,
        classes,
        pods,
    }
}
