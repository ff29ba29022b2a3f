//! `ClusterView`: a plain, immutable snapshot of what placement needs, built from the watched
//! objects (NodeStorage, LogicalVolume, PersistentVolumeClaim, StorageClass, Pod) by [`ViewIndex`]:
//! each node's capacity per class with pending demand already subtracted, the Strata claims, and
//! the Strata StorageClasses. It also turns a pod into its [`PodDemand`].
//!
//! Two rules keep it correct while the caches lag (docs/architecture.md, "scheduler under lag"):
//! a claim of the pod that the PVC cache does not know yet makes the pod wait (every node fails
//! as resolvable, so kube-scheduler retries) instead of passing it without its demand; and a claim
//! that carries `volume.kubernetes.io/selected-node` but has no volume yet counts as pending on
//! that node only where it is credible ([`capacity::selected_claim_counts`]): valid for its class,
//! used by a pod bound or nominated to the node, and no larger than the class there.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use csi_api::capacity::{self, NodeCapacity, Pool, volume_name_for_claim};
use csi_api::crd::{LogicalVolume, NodeStorage};
use csi_api::csi::CapacityRange;
use csi_api::csi::VolumeCapability;
use csi_api::csi::volume_capability::access_mode::Mode;
use csi_api::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use csi_api::names::{DRIVER_NAME, DeviceClass, Placement, Provisioning};
use csi_api::placement::Demand;
use csi_api::request::check_capability;
use csi_api::request::{VolumeParameters, size_within};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;

use crate::index::ViewIndex;
use crate::record::{ClaimFields, ClaimRecord, DataSource, PodRecord, StorageRecord, VolumeRecord};
use crate::room::NodeEntry;
use crate::wire;

/// Annotations marking the default StorageClass (GA and legacy beta).
const DEFAULT_CLASS_ANNOTATIONS: [&str; 2] = [
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];

/// A Strata StorageClass as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassParams {
    /// Valid parameters: the device class, its provisioning, and the placement it asks for.
    Strata {
        class: DeviceClass,
        /// `strata.io/provisioning`: thin claims are placed against the class's thin pool.
        provisioning: Provisioning,
        placement: Option<Placement>,
        /// The smallest filesystem volume of the class (its fstype's minimum, e.g. xfs 300 MiB):
        /// a smaller claim is sized up to it, as the controller does.
        fs_min_bytes: u64,
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
    /// The node on which this claim's bytes are counted as pending (a credible selected node).
    pub counted_on: Option<String>,
    /// What the volume starts from (a restore or a clone): it can only be made on the source's
    /// node.
    pub data_source: Option<DataSource>,
    /// The node of the claim's volume (`pvc-<uid>`), once it exists: where a clone of this
    /// claim must go.
    pub volume_node: Option<String>,
}

impl ClaimInfo {
    /// A LogicalVolume `pvc-<uid>` exists: the volume is placed (and counted) already.
    pub fn has_volume(&self) -> bool {
        self.volume_node.is_some()
    }
}

/// A node a pod is held to because a claim of it restores or clones a source there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub node: String,
    /// The claim and its source, for the rejection message.
    pub why: String,
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
        own_pending: Vec<(String, Pool, u64)>,
        /// Restores and clones: the pod fits only on the node of each pin. Their bytes are not
        /// in `demand` (the source's node is fixed and its agent admits them, as the
        /// controller does; docs/architecture.md "Snapshots, restores and clones").
        pins: Vec<Pin>,
    },
    /// A claim of the pod cannot be placed anywhere (bad StorageClass, bad size).
    Invalid(String),
    /// A claim of the pod is not in the extender's PVC cache yet (the cache lags the API server):
    /// the pod must wait, never pass without its demand.
    Unsynced(String),
    /// A claim restores or clones a source the extender does not know (yet): the pod waits.
    SourceMissing(String),
}

/// A claim's or a pod's namespace and name.
pub type ObjectKey = (String, String);

/// A persistent map with a fast hasher: every request looks up each candidate node by name, and
/// std's SipHash (DoS-resistant, which names from our own watches do not need) was a third of a
/// names-only /filter's time at 5,000 nodes. foldhash is seeded per process.
pub type FastMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// The snapshot placement works on. Its maps are persistent (`imbl`): a clone shares every
/// entry, and [`crate::index::ViewIndex`] publishes a new snapshot by cloning its working copy
/// after replacing only the entries a change touched (one node's capacity, a few claims).
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// Each node's capacity, and the room of each of its pools for the fit check.
    pub(crate) nodes: FastMap<String, Arc<NodeEntry>>,
    /// (namespace, name) → claim; `None` for a claim of another driver's StorageClass (known, so
    /// that a pod using it is not taken for one whose claim the cache has not seen yet).
    pub(crate) claims: FastMap<ObjectKey, Option<Arc<ClaimInfo>>>,
    /// How many entries of `claims` are Strata claims (kept as they change).
    pub(crate) strata_claims: usize,
    pub(crate) classes: Arc<HashMap<String, ClassParams>>,
    /// VolumeSnapshot (namespace, name) → the node of its snapshot LogicalVolume.
    pub(crate) snapshot_nodes: FastMap<ObjectKey, String>,
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

    /// Builds the view from the reflector stores' contents, through the same incremental index
    /// the cache task keeps (every object applied once, then published).
    pub fn build<N, V, C, S, P>(
        node_storages: &[N],
        volumes: &[V],
        claims: &[C],
        storage_classes: &[S],
        pods: &[P],
        default_placement: Placement,
    ) -> Self
    where
        N: Deref<Target = NodeStorage>,
        V: Deref<Target = LogicalVolume>,
        C: Deref<Target = PersistentVolumeClaim>,
        S: Clone + Into<Arc<StorageClass>>,
        P: Deref<Target = Pod>,
    {
        let mut index = ViewIndex::new(default_placement);
        index.set_storage_classes(storage_classes.iter().map(|s| s.clone().into()));
        for ns in node_storages {
            index.apply_node_storage(StorageRecord::from(&**ns));
        }
        for lv in volumes {
            index.apply_volume(VolumeRecord::from(&**lv));
        }
        for pvc in claims {
            index.apply_claim(ClaimRecord::from(&**pvc));
        }
        for pod in pods {
            index.apply_pod(PodRecord::from(&**pod));
        }
        index.publish()
    }

    /// The node on which a claim with a selected node counts as pending demand, if the
    /// annotation is credible ([`capacity::selected_claim_counts`]).
    pub(crate) fn selected_pending<'a>(
        &self,
        info: &ClaimInfo,
        pod_on_node: impl Fn(&str) -> bool,
        reported: impl Fn(&str) -> Option<&'a NodeCapacity>,
    ) -> Option<String> {
        let node = info.selected_node.as_deref()?;
        if info.bound || info.has_volume() {
            return None;
        }
        let Some(ClassParams::Strata {
            class,
            provisioning,
            ..
        }) = self.classes.get(&info.storage_class)
        else {
            return None;
        };
        let (valid, bytes) = match info.bytes {
            Ok(bytes) => (true, bytes),
            Err(_) => (false, 0),
        };
        let pool = Pool::new(*class, *provisioning);
        let total = reported(node).and_then(|cap| capacity::pool_total(cap, pool));
        capacity::selected_claim_counts(valid, pod_on_node(node), bytes, total)
            .then(|| node.to_owned())
    }

    /// Replaces the StorageClasses (and the default class) with `classes`.
    pub(crate) fn set_storage_classes<'a>(
        &mut self,
        classes: impl Iterator<Item = &'a StorageClass>,
    ) {
        let mut parsed_classes = HashMap::new();
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
                    provisioning: p.provisioning,
                    placement: p.placement,
                    fs_min_bytes: csi_api::request::fs_min_bytes(
                        p.fs_type
                            .as_deref()
                            .unwrap_or(csi_api::names::DEFAULT_FS_TYPE),
                    ),
                },
                Err(e) => ClassParams::Invalid(format!("StorageClass {name}: {e}")),
            };
            parsed_classes.insert(name.to_owned(), parsed);
        }
        self.classes = Arc::new(parsed_classes);
        self.default_class = default.and_then(|d| d.metadata.name.clone());
    }

    /// The claim as placement sees it, if its StorageClass is one of the driver's.
    /// `volume_node` gives the node of a LogicalVolume (by name) if it exists: the claim's own
    /// volume is named after its UID.
    pub(crate) fn claim_info(
        &self,
        claim: &ClaimFields,
        volume_node: impl Fn(&str) -> Option<String>,
    ) -> Option<ClaimInfo> {
        let storage_class = claim.storage_class.as_ref()?;
        if !self.classes.contains_key(storage_class) {
            return None;
        }
        let volume_node = claim
            .uid
            .as_deref()
            .and_then(|uid| volume_node(&volume_name_for_claim(uid)));
        let min = self.min_bytes(storage_class, claim.block.then_some("Block"));
        let bytes = volume_bytes(claim.request.as_deref(), claim.limit.as_deref(), min)
            .and_then(|bytes| claim.access.clone().map(|()| bytes));
        Some(ClaimInfo {
            storage_class: storage_class.clone(),
            bytes,
            bound: claim.bound,
            selected_node: claim.selected_node.clone(),
            counted_on: None,
            data_source: claim.data_source.clone(),
            volume_node,
        })
    }

    /// Adds or replaces a node's capacity (pending included).
    pub fn insert_node(&mut self, name: impl Into<String>, capacity: NodeCapacity) {
        self.nodes
            .insert(name.into(), Arc::new(NodeEntry::new(capacity)));
    }

    /// Changes a node's capacity, e.g. to record a placement as pending (its pools' room is
    /// recomputed); false if the node has no entry.
    pub fn update_node(&mut self, name: &str, change: impl FnOnce(&mut NodeCapacity)) -> bool {
        let Some(entry) = self.nodes.get_mut(name) else {
            return false;
        };
        let mut capacity = entry.capacity.clone();
        change(&mut capacity);
        *entry = Arc::new(NodeEntry::new(capacity));
        true
    }

    /// A node's capacity for new volumes, if it has a NodeStorage.
    pub fn node(&self, name: &str) -> Option<&NodeCapacity> {
        self.nodes.get(name).map(|e| &e.capacity)
    }

    /// A node's capacity with its pools' room, if it has a NodeStorage.
    pub fn node_entry(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.get(name).map(|e| &**e)
    }

    /// Number of nodes with a NodeStorage.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of claims of Strata StorageClasses.
    pub fn claim_count(&self) -> usize {
        self.strata_claims
    }

    /// A claim of a Strata StorageClass by namespace and name.
    pub fn claim(&self, namespace: &str, name: &str) -> Option<&ClaimInfo> {
        self.claims
            .get(&(namespace.to_owned(), name.to_owned()))?
            .as_deref()
    }

    /// Whether the PVC cache has seen this claim at all (of any StorageClass).
    pub fn knows_claim(&self, namespace: &str, name: &str) -> bool {
        self.claims
            .contains_key(&(namespace.to_owned(), name.to_owned()))
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
        let mut unsynced: Option<String> = None;
        let mut pins = Vec::new();
        let mut missing: Option<String> = None;
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
            let known = self.knows_claim(namespace, &claim_name);
            let resolved = match self.claim(namespace, &claim_name) {
                Some(info) if info.bound || info.has_volume() => continue,
                Some(info) if info.data_source.is_some() => {
                    if let Some(source) = &info.data_source {
                        self.pin_to_source(source, namespace, &claim_name, &mut pins, &mut missing);
                    }
                    seen.push(claim_name);
                    continue;
                }
                Some(info) => self.resolve(&info.storage_class, info.bytes.clone()),
                // Known, of another driver's StorageClass.
                None if known => continue,
                None if template.is_none() => {
                    unsynced.get_or_insert_with(|| claim_name.clone());
                    continue;
                }
                None => match template {
                    // Before the ephemeral controller made the claim, its template's source
                    // pins the pod as the claim's would (of a Strata class only).
                    Some(t) => {
                        if let Some(source) = self.template_source(namespace, t) {
                            self.pin_to_source(
                                &source,
                                namespace,
                                &claim_name,
                                &mut pins,
                                &mut missing,
                            );
                            seen.push(claim_name);
                            continue;
                        }
                        let class = t
                            .spec
                            .storage_class_name
                            .as_ref()
                            .or(self.default_class.as_ref());
                        let Some(class) = class else { continue };
                        let resources = &t.spec.resources;
                        let min = self.min_bytes(class, t.spec.volume_mode.as_deref());
                        let bytes = volume_bytes(
                            resources.requests.get("storage").map(String::as_str),
                            resources.limits.get("storage").map(String::as_str),
                            min,
                        );
                        self.resolve(class, bytes)
                    }
                    None => None,
                },
            };
            let (pool, placement, bytes) = match resolved {
                None => continue,
                Some(Err(message)) => {
                    return PodDemand::Invalid(format!("volume {:?}: {message}", volume.name));
                }
                Some(Ok(found)) => found,
            };
            demand.add(pool, placement, bytes);
            if let Some(node) = self
                .claim(namespace, &claim_name)
                .and_then(|c| c.counted_on.clone())
            {
                own_pending.push((node, pool, bytes));
            }
            seen.push(claim_name);
        }
        if let Some(claim) = unsynced {
            PodDemand::Unsynced(format!(
                "claim {namespace}/{claim} is not in the scheduler extender's cache yet; retrying"
            ))
        } else if let Some(message) = missing {
            PodDemand::SourceMissing(message)
        } else if demand.is_empty() && pins.is_empty() {
            PodDemand::Nothing
        } else {
            PodDemand::Needs {
                demand,
                own_pending,
                pins,
            }
        }
    }

    /// Pins the pod to the node of `source` (a claim's restore or clone source), or records
    /// that the source is not known yet (the first such claim names the wait).
    fn pin_to_source(
        &self,
        source: &DataSource,
        namespace: &str,
        claim_name: &str,
        pins: &mut Vec<Pin>,
        missing: &mut Option<String>,
    ) {
        match self.source_node(source) {
            Some(node) => pins.push(Pin {
                node,
                why: format!(
                    "claim {namespace}/{claim_name} is made from {}",
                    source.describe()
                ),
            }),
            None => {
                missing.get_or_insert_with(|| {
                    format!(
                        "waiting for source {} of claim {namespace}/{claim_name} \
                         (no Strata snapshot or volume of it exists yet)",
                        source.describe()
                    )
                });
            }
        }
    }

    /// The data source of a generic ephemeral volume's claim template, if its StorageClass
    /// (named, or the default) is one of the driver's: the claim the ephemeral controller makes
    /// from it will restore or clone that source.
    fn template_source(
        &self,
        namespace: &str,
        template: &wire::ClaimTemplate,
    ) -> Option<DataSource> {
        let spec = &template.spec;
        let class = spec
            .storage_class_name
            .as_ref()
            .or(self.default_class.as_ref())?;
        if !self.classes.contains_key(class) {
            return None;
        }
        DataSource::of_refs(
            namespace,
            spec.data_source_ref.as_ref(),
            spec.data_source.as_ref(),
        )
    }

    /// The node of a restore's or clone's source: the snapshot LogicalVolume made for the
    /// VolumeSnapshot, or the volume of the source claim (both kept by the index; no search).
    pub fn source_node(&self, source: &DataSource) -> Option<String> {
        match source {
            DataSource::Snapshot(key) => self.snapshot_nodes.get(key).cloned(),
            DataSource::Claim((namespace, name)) => {
                self.claim(namespace, name)?.volume_node.clone()
            }
        }
    }

    /// The smallest volume a claim of `storage_class` in `volume_mode` takes: 0 for a raw block
    /// claim, the class's filesystem minimum otherwise.
    fn min_bytes(&self, storage_class: &str, volume_mode: Option<&str>) -> u64 {
        match (self.classes.get(storage_class), volume_mode) {
            (_, Some("Block")) => 0,
            (Some(ClassParams::Strata { fs_min_bytes, .. }), _) => *fs_min_bytes,
            _ => 0,
        }
    }

    /// Pool (class and provisioning), placement and bytes of a claim of `storage_class`; `None`
    /// if the class is not the driver's.
    fn resolve(
        &self,
        storage_class: &str,
        bytes: Result<u64, String>,
    ) -> Option<Result<(Pool, Placement, u64), String>> {
        Some(match self.classes.get(storage_class)? {
            ClassParams::Invalid(message) => Err(message.clone()),
            ClassParams::Strata {
                class,
                provisioning,
                placement,
                ..
            } => bytes
                .map(|b| {
                    let pool = Pool::new(*class, *provisioning);
                    (pool, placement.unwrap_or(self.default_placement), b)
                })
                .map_err(|e| format!("StorageClass {storage_class}: {e}")),
        })
    }
}

/// The claims (namespace, name) a pod uses, with the nodes it is bound (`spec.nodeName`) or
/// nominated (`status.nominatedNodeName`) to; empty for a pod on no node yet.
pub(crate) fn pod_claims_on_nodes(pod: &Pod) -> Vec<(ObjectKey, Vec<String>)> {
    let (Some(namespace), Some(spec)) = (pod.metadata.namespace.as_deref(), &pod.spec) else {
        return Vec::new();
    };
    let nominated = pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref());
    let nodes: Vec<String> = [spec.node_name.as_deref(), nominated]
        .into_iter()
        .flatten()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() {
        return Vec::new();
    }
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        let claim = match (&volume.persistent_volume_claim, &volume.ephemeral) {
            (Some(source), _) => source.claim_name.clone(),
            (None, Some(_)) => format!("{pod_name}-{}", volume.name),
            (None, None) => continue,
        };
        out.push(((namespace.to_owned(), claim), nodes.clone()));
    }
    out
}

/// Whether the claim's access modes and volume mode are ones CreateVolume accepts, by the
/// shared request validator.
pub(crate) fn check_access(
    spec: &k8s_openapi::api::core::v1::PersistentVolumeClaimSpec,
) -> Result<(), String> {
    let access_type = if spec.volume_mode.as_deref() == Some("Block") {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume::default())
    };
    for mode in spec.access_modes.iter().flatten() {
        let mode = match mode.as_str() {
            "ReadWriteOnce" => Mode::SingleNodeWriter,
            "ReadWriteOncePod" => Mode::SingleNodeSingleWriter,
            "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
            "ReadWriteMany" => Mode::MultiNodeMultiWriter,
            _ => Mode::Unknown,
        };
        let cap = VolumeCapability {
            access_mode: Some(AccessMode { mode: mode.into() }),
            access_type: Some(access_type.clone()),
        };
        check_capability(&cap).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The bytes a volume of this request and limit takes, as the controller will size it (raised
/// to `min_bytes`, the filesystem's minimum).
fn volume_bytes(request: Option<&str>, limit: Option<&str>, min_bytes: u64) -> Result<u64, String> {
    let to_i64 = |q: Option<&str>| -> Result<i64, String> {
        let Some(q) = q else { return Ok(0) };
        let bytes = capacity::quantity_bytes(q).map_err(|e| e.to_string())?;
        i64::try_from(bytes).map_err(|_| format!("storage quantity {q:?} is too large"))
    };
    let range = CapacityRange {
        required_bytes: to_i64(request)?,
        limit_bytes: to_i64(limit)?,
    };
    size_within(Some(&range), min_bytes, capacity::DEFAULT_EXTENT_BYTES).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use csi_api::crd::LogicalVolumePhase;

    use super::*;
    use crate::fixtures::*;

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
        let pods = [pod_on("apps", "p1", "n1", true, &["c1", "c2", "c3", "c4"])];
        let view = ClusterView::build(
            &nodes,
            &volumes,
            &claims,
            &standard_classes(),
            &pods,
            Placement::Binpack,
        );
        let cap = view.node("n1").unwrap().classes[&DeviceClass::Nvme];
        assert_eq!(cap.pending, 15 * GIB);
        assert_eq!(cap.available(), 85 * GIB);
        assert_eq!(view.claim_count(), 3);
        assert!(view.claim("apps", "c4").is_none());
    }

    #[test]
    fn a_small_filesystem_claim_counts_at_its_filesystems_minimum() {
        let mut raw = claim("apps", "raw", "u2", "fast", "100Mi");
        raw.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        let claims = [
            Arc::new(claim("apps", "small", "u1", "fast", "100Mi")),
            Arc::new(raw),
        ];
        let view = ClusterView::build::<Arc<NodeStorage>, Arc<LogicalVolume>, _, _, Arc<Pod>>(
            &[],
            &[],
            &claims,
            &standard_classes(),
            &[],
            Placement::Binpack,
        );
        // The controller makes a 100Mi xfs volume at xfs's 300 MiB minimum: count that.
        assert_eq!(
            view.claim("apps", "small").unwrap().bytes,
            Ok(csi_api::request::XFS_MIN_BYTES)
        );
        assert_eq!(view.claim("apps", "raw").unwrap().bytes, Ok(100 << 20));
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
        let view = ClusterView::build::<Arc<NodeStorage>, Arc<LogicalVolume>, _, _, Arc<Pod>>(
            &[],
            &[],
            &claims,
            &standard_classes(),
            &[],
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
                {"name": "cache", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
                    "storageClassName": "bulk", "resources": {"requests": {"storage": "1.5Gi"}}}}}},
                {"name": "config", "configMap": {"name": "x"}}
            ]),
        );
        let PodDemand::Needs {
            demand,
            own_pending,
            ..
        } = view.demand_of(&p)
        else {
            panic!("expected a demand")
        };
        assert!(own_pending.is_empty());
        assert_eq!(
            demand.by_class(),
            &capacity::ClassBytes::from([
                (Pool::linear(DeviceClass::Nvme), 11 * GIB),
                (Pool::linear(DeviceClass::Hdd), 100 * GIB + 1536 * (1 << 20)),
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
        let view = ClusterView::build::<Arc<NodeStorage>, Arc<LogicalVolume>, _, _, Arc<Pod>>(
            &[],
            &[],
            &claims,
            &standard_classes(),
            &[],
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
            Arc<Pod>,
        >(&[], &[], &[], &classes, &[], Placement::Spread);
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
        let pods = [pod_on("apps", "p", "n1", false, &["data"])];
        let view = ClusterView::build::<_, Arc<LogicalVolume>, _, _, _>(
            &nodes,
            &[],
            &claims,
            &standard_classes(),
            &pods,
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
            vec![("n1".to_string(), Pool::linear(DeviceClass::Nvme), 10 * GIB)]
        );
    }

    fn one_node_view(claims: &[Arc<PersistentVolumeClaim>], pods: &[Arc<Pod>]) -> ClusterView {
        let nodes = [node_storage("n1", &[(DeviceClass::Nvme, 100 * GIB, true)])];
        ClusterView::build::<_, Arc<LogicalVolume>, _, _, _>(
            &nodes,
            &[],
            claims,
            &standard_classes(),
            pods,
            Placement::Binpack,
        )
    }

    #[test]
    fn a_node_storage_marked_stale_offers_nothing() {
        let mut stale = (*node_storage("n1", &[(DeviceClass::Nvme, 100 * GIB, true)])).clone();
        let mut status = stale.status.take().unwrap();
        status.conditions.push(csi_api::crd::Condition {
            type_: csi_api::names::CONDITION_STALE.into(),
            status: "True".into(),
            reason: "AgentSilent".into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
            observed_generation: None,
        });
        stale.status = Some(status.clone());
        let view = ClusterView::build::<_, Arc<LogicalVolume>, _, _, Arc<Pod>>(
            &[Arc::new(stale.clone())],
            &[],
            &[] as &[Arc<PersistentVolumeClaim>],
            &standard_classes(),
            &[],
            Placement::Binpack,
        );
        assert!(view.node("n1").is_none());
        // Fresh again (the controller set the condition False): trusted.
        status.conditions[0].status = "False".into();
        stale.status = Some(status);
        let view = ClusterView::build::<_, Arc<LogicalVolume>, _, _, Arc<Pod>>(
            &[Arc::new(stale)],
            &[],
            &[] as &[Arc<PersistentVolumeClaim>],
            &standard_classes(),
            &[],
            Placement::Binpack,
        );
        assert!(view.node("n1").is_some());
    }

    fn nvme_pending(view: &ClusterView) -> u64 {
        view.node("n1").unwrap().classes[&DeviceClass::Nvme].pending
    }

    #[test]
    fn a_claim_the_cache_has_not_seen_makes_the_pod_wait() {
        let claims = [
            Arc::new(claim("apps", "known", "u1", "fast", "1Gi")),
            Arc::new(claim("apps", "theirs", "u2", "ebs", "1Gi")),
        ];
        let view = one_node_view(&claims, &[]);
        let uses = |names: &[&str]| {
            let volumes: Vec<_> = names
                .iter()
                .map(|n| serde_json::json!({"name": n, "persistentVolumeClaim": {"claimName": n}}))
                .collect();
            pod("p", serde_json::Value::Array(volumes))
        };
        let PodDemand::Unsynced(message) = view.demand_of(&uses(&["known", "missing"])) else {
            panic!("an unknown claim must not be skipped")
        };
        assert!(message.contains("apps/missing"), "{message}");
        // Only the unknown claim: still waits (not `Nothing`, which would pass every node).
        assert!(matches!(
            view.demand_of(&uses(&["missing"])),
            PodDemand::Unsynced(_)
        ));
        // A known claim of another driver is not Strata demand.
        assert_eq!(view.demand_of(&uses(&["theirs"])), PodDemand::Nothing);
        assert!(matches!(
            view.demand_of(&uses(&["known", "theirs"])),
            PodDemand::Needs { .. }
        ));
    }

    #[test]
    fn a_selected_claim_counts_only_with_a_pod_on_that_node() {
        let claims = [Arc::new(selected(
            claim("apps", "c", "u1", "fast", "10Gi"),
            "n1",
        ))];
        // No pod uses it: a bare annotation blocks nothing.
        assert_eq!(nvme_pending(&one_node_view(&claims, &[])), 0);
        // A pod bound or nominated elsewhere: not credible on n1.
        let elsewhere = [pod_on("apps", "p", "n2", true, &["c"])];
        assert_eq!(nvme_pending(&one_node_view(&claims, &elsewhere)), 0);
        // A pod of another namespace with a claim of the same name: no.
        let other_ns = [pod_on("tenant", "p", "n1", true, &["c"])];
        assert_eq!(nvme_pending(&one_node_view(&claims, &other_ns)), 0);
        // Bound or nominated to n1: counts.
        for bound in [true, false] {
            let pods = [pod_on("apps", "p", "n1", bound, &["c"])];
            assert_eq!(nvme_pending(&one_node_view(&claims, &pods)), 10 * GIB);
        }
    }

    #[test]
    fn a_bogus_selected_claim_does_not_block_the_node() {
        let pods = [pod_on(
            "apps",
            "p",
            "n1",
            true,
            &["huge", "rwx", "bad-size"],
        )];
        let mut rwx = selected(claim("apps", "rwx", "u2", "fast", "10Gi"), "n1");
        rwx.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteMany".into()]);
        let claims = [
            // Larger than the class's total on the node (1000 GiB in the fixture).
            Arc::new(selected(claim("apps", "huge", "u1", "fast", "900Ti"), "n1")),
            // An access mode CreateVolume refuses.
            Arc::new(rwx),
            Arc::new(selected(
                claim("apps", "bad-size", "u3", "fast", "lots"),
                "n1",
            )),
        ];
        let view = one_node_view(&claims, &pods);
        assert_eq!(nvme_pending(&view), 0);
        // So another pod's honest claim still fits there.
        let honest = pod(
            "honest",
            serde_json::json!([{"name": "v", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "storageClassName": "fast", "resources": {"requests": {"storage": "100Gi"}}}}}}]),
        );
        let demand = view.demand_of(&honest);
        assert_eq!(crate::extender::filter(&view, &demand, &["n1"]), vec![None]);
        // The RWX claim's own pod is told why, as for any invalid claim.
        let own = pod(
            "p",
            serde_json::json!([{"name": "v", "persistentVolumeClaim": {"claimName": "rwx"}}]),
        );
        let PodDemand::Invalid(message) = view.demand_of(&own) else {
            panic!()
        };
        assert!(message.contains("MULTI_NODE_MULTI_WRITER"), "{message}");
        // A valid RWO claim with the same pod counts.
        let mut rwo = selected(claim("apps", "huge", "u1", "fast", "10Gi"), "n1");
        rwo.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteOnce".into()]);
        assert_eq!(
            nvme_pending(&one_node_view(&[Arc::new(rwo)], &pods)),
            10 * GIB
        );
    }
}
