//! `ClusterView`: a plain, immutable snapshot of what placement needs, built from the reflector
//! stores (NodeStorage, LogicalVolume, PersistentVolumeClaim, StorageClass) by a pure function:
//! each node's capacity per class with pending demand already subtracted, the Strata claims, and
//! the Strata StorageClasses. It also turns a pod into its [`PodDemand`].

use std::collections::{HashMap, HashSet};
use std::ops::Deref;

use csi_api::capacity::{self, NodeCapacity, volume_name_for_claim};
use csi_api::crd::{LogicalVolume, NodeStorage};
use csi_api::csi::CapacityRange;
use csi_api::names::{ANNOTATION_SELECTED_NODE, DRIVER_NAME, DeviceClass, Placement};
use csi_api::placement::Demand;
use csi_api::request::{VolumeParameters, size_for_range};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;

use crate::wire;

/// Annotations marking the default StorageClass (GA and legacy beta).
const DEFAULT_CLASS_ANNOTATIONS: [&str; 2] = [
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];
/// Legacy annotation naming a claim's StorageClass before `spec.storageClassName` existed.
const LEGACY_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// A Strata StorageClass as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassParams {
    /// Valid parameters: the device class and the placement it asks for, if any.
    Strata {
        class: DeviceClass,
        placement: Option<Placement>,
    },
    /// A StorageClass of the driver whose parameters are invalid; claims of it cannot be placed.
    Invalid(String),
}

/// A claim of a Strata StorageClass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimInfo {
    pub storage_class: String,
    /// Bytes the volume will take (extent-rounded), or why the request cannot be met.
    pub bytes: Result<u64, String>,
    /// Bound to a PV already: nothing left to place.
    pub bound: bool,
    /// `volume.kubernetes.io/selected-node`, set by kube-scheduler for WaitForFirstConsumer.
    pub selected_node: Option<String>,
    /// A LogicalVolume `pvc-<uid>` exists: the volume is placed (and counted) already.
    pub has_volume: bool,
}

/// What a pod asks of Strata.
#[derive(Clone, Debug, PartialEq)]
pub enum PodDemand {
    /// No unbound claim of a Strata StorageClass: every node passes, every score is 0.
    Nothing,
    /// Bytes per class and placement; `own_pending` lists the pod's own claims already counted
    /// as pending on a selected node (a rescheduled pod), which must not be counted twice.
    Needs {
        demand: Demand,
        own_pending: Vec<(String, DeviceClass, u64)>,
    },
    /// A claim of the pod cannot be placed anywhere (bad StorageClass, bad size).
    Invalid(String),
}

/// The snapshot placement works on.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    nodes: HashMap<String, NodeCapacity>,
    /// namespace → name → claim (Strata StorageClasses only).
    claims: HashMap<String, HashMap<String, ClaimInfo>>,
    classes: HashMap<String, ClassParams>,
    default_class: Option<String>,
    default_placement: Placement,
}

impl ClusterView {
    /// An empty view whose StorageClasses without `strata.io/placement` use `default_placement`.
    pub fn new(default_placement: Placement) -> Self {
        ClusterView {
            default_placement,
            ..Default::default()
        }
    }

    /// Builds the view from the reflector stores' contents.
    pub fn build<N, V, C, S>(
        node_storages: &[N],
        volumes: &[V],
        claims: &[C],
        storage_classes: &[S],
        default_placement: Placement,
    ) -> Self
    where
        N: Deref<Target = NodeStorage>,
        V: Deref<Target = LogicalVolume>,
        C: Deref<Target = PersistentVolumeClaim>,
        S: Deref<Target = StorageClass>,
    {
        let mut view = ClusterView::new(default_placement);
        view.set_storage_classes(storage_classes.iter().map(|s| &**s));

        let volume_names: HashSet<&str> = volumes
            .iter()
            .filter_map(|v| v.metadata.name.as_deref())
            .collect();
        let published: HashMap<&str, u64> = node_storages
            .iter()
            .filter_map(|ns| {
                let sequence = ns.status.as_ref()?.capacity_sequence?;
                Some((ns.metadata.name.as_deref()?, sequence))
            })
            .collect();
        let mut pending = capacity::pending_by_node(volumes.iter().map(|v| &**v), |node| {
            published.get(node).copied()
        });
        for pvc in claims {
            let Some(info) = view.claim_info(pvc, &volume_names) else {
                continue;
            };
            if let (false, false, Some(node), Ok(bytes)) = (
                info.bound,
                info.has_volume,
                &info.selected_node,
                &info.bytes,
            ) && let Some(ClassParams::Strata { class, .. }) =
                view.classes.get(&info.storage_class)
            {
                capacity::add_class_bytes(pending.entry(node.clone()).or_default(), *class, *bytes);
            }
            let namespace = pvc.metadata.namespace.clone().unwrap_or_default();
            let name = pvc.metadata.name.clone().unwrap_or_default();
            view.claims.entry(namespace).or_default().insert(name, info);
        }
        for ns in node_storages {
            let (Some(name), None) = (&ns.metadata.name, &ns.metadata.deletion_timestamp) else {
                continue;
            };
            let cap = ns
                .status
                .as_ref()
                .map(NodeCapacity::from_status)
                .unwrap_or_default();
            let cap = match pending.get(name) {
                Some(p) => cap.with_pending(p),
                None => cap,
            };
            view.nodes.insert(name.clone(), cap);
        }
        view
    }

    fn set_storage_classes<'a>(&mut self, classes: impl Iterator<Item = &'a StorageClass>) {
        let mut default: Option<&StorageClass> = None;
        for sc in classes {
            let Some(name) = sc.metadata.name.as_deref() else {
                continue;
            };
            let is_default = sc.metadata.annotations.as_ref().is_some_and(|a| {
                DEFAULT_CLASS_ANNOTATIONS
                    .iter()
                    .any(|k| a.get(*k).is_some_and(|v| v == "true"))
            });
            // Like the API server: the newest default wins, then the smallest name.
            if is_default
                && default.is_none_or(|d| {
                    let by_age = sc
                        .metadata
                        .creation_timestamp
                        .cmp(&d.metadata.creation_timestamp);
                    by_age.then_with(|| d.metadata.name.as_deref().unwrap_or("").cmp(name))
                        == std::cmp::Ordering::Greater
                })
            {
                default = Some(sc);
            }
            if sc.provisioner != DRIVER_NAME {
                continue;
            }
            let params: HashMap<String, String> = sc
                .parameters
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            let parsed = match VolumeParameters::try_from(&params) {
                Ok(p) => ClassParams::Strata {
                    class: p.device_class,
                    placement: p.placement,
                },
                Err(e) => ClassParams::Invalid(format!("StorageClass {name}: {e}")),
            };
            self.classes.insert(name.to_owned(), parsed);
        }
        self.default_class = default.and_then(|d| d.metadata.name.clone());
    }

    /// The claim as placement sees it, if its StorageClass is one of the driver's.
    fn claim_info(
        &self,
        pvc: &PersistentVolumeClaim,
        volume_names: &HashSet<&str>,
    ) -> Option<ClaimInfo> {
        let spec = pvc.spec.as_ref()?;
        let annotations = pvc.metadata.annotations.as_ref();
        let storage_class = spec
            .storage_class_name
            .clone()
            .or_else(|| annotations.and_then(|a| a.get(LEGACY_CLASS_ANNOTATION).cloned()))?;
        if !self.classes.contains_key(&storage_class) {
            return None;
        }
        let quantity = |map: &Option<std::collections::BTreeMap<String, _>>| {
            map.as_ref()
                .and_then(|m| m.get("storage"))
                .map(|q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0.clone())
        };
        let resources = spec.resources.as_ref();
        let requests = resources.and_then(|r| quantity(&r.requests));
        let limits = resources.and_then(|r| quantity(&r.limits));
        let bound = spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
            || pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let has_volume = pvc
            .metadata
            .uid
            .as_deref()
            .is_some_and(|uid| volume_names.contains(volume_name_for_claim(uid).as_str()));
        Some(ClaimInfo {
            storage_class,
            bytes: volume_bytes(requests.as_deref(), limits.as_deref()),
            bound,
            selected_node: annotations.and_then(|a| a.get(ANNOTATION_SELECTED_NODE).cloned()),
            has_volume,
        })
    }

    /// Adds or replaces a node's capacity (pending included).
    pub fn insert_node(&mut self, name: impl Into<String>, capacity: NodeCapacity) {
        self.nodes.insert(name.into(), capacity);
    }

    /// Mutable access to a node's capacity, e.g. to record a placement as pending.
    pub fn node_mut(&mut self, name: &str) -> Option<&mut NodeCapacity> {
        self.nodes.get_mut(name)
    }

    /// A node's capacity for new volumes, if it has a NodeStorage.
    pub fn node(&self, name: &str) -> Option<&NodeCapacity> {
        self.nodes.get(name)
    }

    /// Number of nodes with a NodeStorage.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of claims of Strata StorageClasses.
    pub fn claim_count(&self) -> usize {
        self.claims.values().map(HashMap::len).sum()
    }

    /// A claim of a Strata StorageClass by namespace and name.
    pub fn claim(&self, namespace: &str, name: &str) -> Option<&ClaimInfo> {
        self.claims.get(namespace)?.get(name)
    }

    /// What `pod` still needs: its unbound claims (and generic ephemeral volumes, whose claim is
    /// `<pod>-<volume>` or, before it exists, the pod's template) of Strata StorageClasses.
    pub fn demand_of(&self, pod: &wire::Pod) -> PodDemand {
        let namespace = if pod.metadata.namespace.is_empty() {
            "default"
        } else {
            pod.metadata.namespace.as_str()
        };
        let mut demand = Demand::new();
        let mut own_pending = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for volume in &pod.spec.volumes {
            let (claim_name, template) = match (&volume.persistent_volume_claim, &volume.ephemeral)
            {
                (Some(source), _) => (source.claim_name.clone(), None),
                (None, Some(eph)) => (
                    format!("{}-{}", pod.metadata.name, volume.name),
                    eph.volume_claim_template.as_ref(),
                ),
                (None, None) => continue,
            };
            if seen.contains(&claim_name) {
                continue;
            }
            let resolved = match self.claim(namespace, &claim_name) {
                Some(info) if info.bound || info.has_volume => continue,
                Some(info) => self.resolve(&info.storage_class, info.bytes.clone()),
                None => match template {
                    Some(t) => {
                        let class = t
                            .spec
                            .storage_class_name
                            .as_ref()
                            .or(self.default_class.as_ref());
                        let Some(class) = class else { continue };
                        let resources = &t.spec.resources;
                        let bytes = volume_bytes(
                            resources.requests.get("storage").map(String::as_str),
                            resources.limits.get("storage").map(String::as_str),
                        );
                        self.resolve(class, bytes)
                    }
                    None => None,
                },
            };
            let (class, placement, bytes) = match resolved {
                None => continue,
                Some(Err(message)) => {
                    return PodDemand::Invalid(format!("volume {:?}: {message}", volume.name));
                }
                Some(Ok(found)) => found,
            };
            demand.add(class, placement, bytes);
            if let Some(node) = self
                .claim(namespace, &claim_name)
                .and_then(|c| c.selected_node.clone())
            {
                own_pending.push((node, class, bytes));
            }
            seen.push(claim_name);
        }
        if demand.is_empty() {
            PodDemand::Nothing
        } else {
            PodDemand::Needs {
                demand,
                own_pending,
            }
        }
    }

    /// Class, placement and bytes of a claim of `storage_class`; `None` if the class is not the
    /// driver's.
    fn resolve(
        &self,
        storage_class: &str,
        bytes: Result<u64, String>,
    ) -> Option<Result<(DeviceClass, Placement, u64), String>> {
        Some(match self.classes.get(storage_class)? {
            ClassParams::Invalid(message) => Err(message.clone()),
            ClassParams::Strata { class, placement } => bytes
                .map(|b| (*class, placement.unwrap_or(self.default_placement), b))
                .map_err(|e| format!("StorageClass {storage_class}: {e}")),
        })
    }
}

/// The bytes a volume of this request and limit takes, as the controller will size it.
fn volume_bytes(request: Option<&str>, limit: Option<&str>) -> Result<u64, String> {
    let to_i64 = |q: Option<&str>| -> Result<i64, String> {
        let Some(q) = q else { return Ok(0) };
        let bytes = capacity::quantity_bytes(q).map_err(|e| e.to_string())?;
        i64::try_from(bytes).map_err(|_| format!("storage quantity {q:?} is too large"))
    };
    let range = CapacityRange {
        required_bytes: to_i64(request)?,
        limit_bytes: to_i64(limit)?,
    };
    size_for_range(Some(&range)).map_err(|e| e.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use csi_api::crd::{
        ClassHealth, DeviceClassStatus, LogicalVolumePhase, LogicalVolumeSpec, LogicalVolumeStatus,
        NodeStorageSpec, NodeStorageStatus,
    };
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

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
                    pv_count: 2,
                    missing_pv_count: u32::from(!healthy),
                    lv_count: 0,
                    health: if healthy {
                        ClassHealth::Healthy
                    } else {
                        ClassHealth::Degraded
                    },
                })
                .collect(),
            ..Default::default()
        });
        Arc::new(ns)
    }

    pub fn storage_class(
        name: &str,
        provisioner: &str,
        params: &[(&str, &str)],
    ) -> Arc<StorageClass> {
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

    pub fn claim(
        ns: &str,
        name: &str,
        uid: &str,
        class: &str,
        size: &str,
    ) -> PersistentVolumeClaim {
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
                wipe: None,
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

    #[test]
    fn pending_counts_unready_volumes_and_selected_claims_without_volume() {
        let nodes = [node_storage("n1", &[(DeviceClass::Nvme, 100 * GIB, true)])];
        let volumes = [
            volume(
                "pvc-a",
                "n1",
                DeviceClass::Nvme,
                10 * GIB,
                LogicalVolumePhase::Pending,
            ),
            volume(
                "pvc-b",
                "n1",
                DeviceClass::Nvme,
                10 * GIB,
                LogicalVolumePhase::Ready,
            ),
        ];
        let claims = [
            Arc::new(selected(claim("apps", "c1", "u1", "fast", "5Gi"), "n1")),
            // Has its volume already (counted through the LogicalVolume).
            Arc::new(selected(claim("apps", "c2", "a", "fast", "10Gi"), "n1")),
            Arc::new(bound(selected(
                claim("apps", "c3", "u3", "fast", "7Gi"),
                "n1",
            ))),
            Arc::new(selected(claim("apps", "c4", "u4", "ebs", "7Gi"), "n1")),
        ];
        let view = ClusterView::build(
            &nodes,
            &volumes,
            &claims,
            &standard_classes(),
            Placement::Binpack,
        );
        let cap = view.node("n1").unwrap().classes[&DeviceClass::Nvme];
        assert_eq!(cap.pending, 15 * GIB);
        assert_eq!(cap.available(), 85 * GIB);
        assert_eq!(view.claim_count(), 3);
        assert!(view.claim("apps", "c4").is_none());
    }

    #[test]
    fn demand_sums_unbound_strata_claims_and_ephemeral_templates() {
        let claims = [
            Arc::new(claim("apps", "data", "u1", "fast", "10Gi")),
            Arc::new(claim("apps", "logs", "u2", "bulk", "100Gi")),
            Arc::new(bound(claim("apps", "old", "u3", "fast", "10Gi"))),
            Arc::new(claim("apps", "other", "u4", "ebs", "10Gi")),
            Arc::new(claim("apps", "web-0-cache", "u5", "fast", "1Gi")),
        ];
        let view = ClusterView::build::<Arc<NodeStorage>, Arc<LogicalVolume>, _, _>(
            &[],
            &[],
            &claims,
            &standard_classes(),
            Placement::Binpack,
        );
        let p = pod(
            "web-0",
            serde_json::json!([
                {"name": "a", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "a2", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "b", "persistentVolumeClaim": {"claimName": "logs"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "old"}},
                {"name": "d", "persistentVolumeClaim": {"claimName": "other"}},
                {"name": "e", "persistentVolumeClaim": {"claimName": "missing"}},
                {"name": "cache", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
                    "storageClassName": "bulk", "resources": {"requests": {"storage": "1.5Gi"}}}}}},
                {"name": "config", "configMap": {"name": "x"}}
            ]),
        );
        let PodDemand::Needs {
            demand,
            own_pending,
        } = view.demand_of(&p)
        else {
            panic!("expected a demand")
        };
        assert!(own_pending.is_empty());
        assert_eq!(
            demand.by_class(),
            &capacity::ClassBytes::from([
                (DeviceClass::Nvme, 11 * GIB),
                (DeviceClass::Hdd, 100 * GIB + 1536 * (1 << 20)),
            ])
        );
        let placements: Vec<_> = demand
            .terms()
            .iter()
            .map(|t| (t.class, t.placement))
            .collect();
        assert_eq!(
            placements,
            [
                (DeviceClass::Nvme, Placement::Binpack),
                (DeviceClass::Hdd, Placement::Spread)
            ]
        );
    }

    #[test]
    fn pods_without_strata_claims_need_nothing_and_bad_classes_are_invalid() {
        let claims = [Arc::new(claim("apps", "bad", "u1", "broken", "1Gi"))];
        let view = ClusterView::build::<Arc<NodeStorage>, Arc<LogicalVolume>, _, _>(
            &[],
            &[],
            &claims,
            &standard_classes(),
            Placement::Spread,
        );
        let plain = pod("p", serde_json::json!([{"name": "t", "emptyDir": {}}]));
        assert_eq!(view.demand_of(&plain), PodDemand::Nothing);
        let none = pod("p", serde_json::Value::Null);
        assert_eq!(view.demand_of(&none), PodDemand::Nothing);
        let bad = pod(
            "p",
            serde_json::json!([{"name": "v", "persistentVolumeClaim": {"claimName": "bad"}}]),
        );
        let PodDemand::Invalid(message) = view.demand_of(&bad) else {
            panic!()
        };
        assert!(
            message.contains("broken") && message.contains("tape"),
            "{message}"
        );
    }

    #[test]
    fn default_storage_class_serves_templates_without_a_class() {
        let mut classes = standard_classes();
        let mut default =
            (*storage_class("local", DRIVER_NAME, &[("strata.io/device-class", "ssd")])).clone();
        default.metadata.annotations = Some(BTreeMap::from([(
            "storageclass.kubernetes.io/is-default-class".to_string(),
            "true".to_string(),
        )]));
        classes.push(Arc::new(default));
        let view = ClusterView::build::<
            Arc<NodeStorage>,
            Arc<LogicalVolume>,
            Arc<PersistentVolumeClaim>,
            _,
        >(&[], &[], &[], &classes, Placement::Spread);
        let p = pod(
            "p",
            serde_json::json!([{"name": "v", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "resources": {"requests": {"storage": "3Gi"}}}}}}]),
        );
        let PodDemand::Needs { demand, .. } = view.demand_of(&p) else {
            panic!()
        };
        assert_eq!(demand.terms()[0].class, DeviceClass::Ssd);
        assert_eq!(demand.terms()[0].placement, Placement::Spread);
        assert_eq!(demand.terms()[0].bytes, 3 * GIB);
    }

    #[test]
    fn a_rescheduled_pods_own_selected_claim_is_reported() {
        let claims = [Arc::new(selected(
            claim("apps", "data", "u1", "fast", "10Gi"),
            "n1",
        ))];
        let nodes = [node_storage("n1", &[(DeviceClass::Nvme, 15 * GIB, true)])];
        let view = ClusterView::build::<_, Arc<LogicalVolume>, _, _>(
            &nodes,
            &[],
            &claims,
            &standard_classes(),
            Placement::Binpack,
        );
        assert_eq!(
            view.node("n1").unwrap().classes[&DeviceClass::Nvme].pending,
            10 * GIB
        );
        let p = pod(
            "p",
            serde_json::json!([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]),
        );
        let PodDemand::Needs { own_pending, .. } = view.demand_of(&p) else {
            panic!()
        };
        assert_eq!(
            own_pending,
            vec![("n1".to_string(), DeviceClass::Nvme, 10 * GIB)]
        );
    }
}
