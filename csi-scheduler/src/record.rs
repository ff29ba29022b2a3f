//! What the extender keeps of each watched object: only the fields placement reads, taken from
//! the object as it arrives from the watch, so that the rest (metadata, conditions, the parts of
//! the spec placement never looks at) is dropped at the boundary instead of being held for every
//! one of tens of thousands of volumes and claims. StorageClasses, a handful, are kept whole.
//!
//! The rules stay where they are: a volume's pending bytes are still computed by
//! `csi_api::capacity::volume_pending_bytes` (on a LogicalVolume rebuilt from the kept fields
//! without allocating), a claim's bytes and validity by [`crate::view`] from the kept spec fields.

use csi_api::capacity::{NodeCapacity, Pool};
use csi_api::crd::NodeStorage;
use csi_api::crd::{LogicalVolume, LogicalVolumePhase, LogicalVolumeSpec, LogicalVolumeStatus};
use csi_api::names::{ANNOTATION_SELECTED_NODE, DeviceClass, Provisioning};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::view::{ObjectKey, check_access, pod_claims_on_nodes};

/// Legacy annotation naming a claim's StorageClass before `spec.storageClassName` existed.
const LEGACY_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// An object's key in the index: (namespace, name), the namespace empty for cluster-scoped kinds.
pub trait Keyed {
    fn key(&self) -> ObjectKey;
}

/// What the index keeps of a NodeStorage.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRecord {
    pub name: String,
    pub fields: StorageFields,
}

/// A NodeStorage's placement fields.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageFields {
    /// `status.capacitySequence`: which volume changes the published capacity reflects.
    pub sequence: Option<u64>,
    /// The reported capacity; `None` while the object is being deleted or is marked stale
    /// (the node takes nothing).
    pub reported: Option<NodeCapacity>,
}

impl From<&NodeStorage> for StorageRecord {
    fn from(ns: &NodeStorage) -> Self {
        let status = ns.status.as_ref();
        StorageRecord {
            name: ns.metadata.name.clone().unwrap_or_default(),
            fields: StorageFields {
                sequence: status.and_then(|s| s.capacity_sequence),
                // Being deleted, or marked stale by the controller (its agent stopped
                // reporting): trust nothing it says.
                reported: (ns.metadata.deletion_timestamp.is_none()
                    && !status.is_some_and(|s| s.marked_stale()))
                .then(|| status.map(NodeCapacity::from_status).unwrap_or_default()),
            },
        }
    }
}

impl From<NodeStorage> for StorageRecord {
    fn from(ns: NodeStorage) -> Self {
        StorageRecord::from(&ns)
    }
}

impl Keyed for StorageRecord {
    fn key(&self) -> ObjectKey {
        (String::new(), self.name.clone())
    }
}

/// What the index keeps of a LogicalVolume.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeRecord {
    pub name: String,
    pub fields: VolumeFields,
}

/// A LogicalVolume's placement fields: its node and what its pending bytes depend on.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeFields {
    pub node: String,
    pub class: DeviceClass,
    /// `spec.provisioning` (absent = linear): which pool the pending bytes count against.
    pub provisioning: Option<Provisioning>,
    pub size_bytes: u64,
    pub deletion_timestamp: Option<Time>,
    pub phase: Option<LogicalVolumePhase>,
    pub current_size_bytes: Option<u64>,
    pub capacity_sequence: Option<u64>,
    /// For a snapshot (`spec.role: Snapshot`), the VolumeSnapshot (namespace, name) it was made
    /// for: a claim restoring that VolumeSnapshot is placed on this volume's node.
    pub volume_snapshot: Option<ObjectKey>,
}

impl VolumeFields {
    /// Bytes of its pool (class and provisioning) this volume still takes from its node's
    /// published capacity, by the one rule in `csi_api::capacity` (the volume rebuilt from the
    /// kept fields, no allocation).
    pub fn pending_bytes(&self, published_sequence: Option<u64>) -> Option<(Pool, u64)> {
        let lv = LogicalVolume {
            metadata: ObjectMeta {
                deletion_timestamp: self.deletion_timestamp.clone(),
                ..Default::default()
            },
            spec: LogicalVolumeSpec {
                node_name: String::new(),
                device_class: self.class,
                size_bytes: self.size_bytes,
                pvc: None,
                source: None,
                role: None,
                volume_snapshot: None,
                wipe: None,
                provisioning: self.provisioning,
            },
            status: Some(LogicalVolumeStatus {
                phase: self.phase,
                current_size_bytes: self.current_size_bytes,
                capacity_sequence: self.capacity_sequence,
                ..Default::default()
            }),
        };
        csi_api::capacity::volume_pending_bytes(&lv, published_sequence)
    }
}

impl From<&LogicalVolume> for VolumeRecord {
    fn from(lv: &LogicalVolume) -> Self {
        let status = lv.status.as_ref();
        VolumeRecord {
            name: lv.metadata.name.clone().unwrap_or_default(),
            fields: VolumeFields {
                node: lv.spec.node_name.clone(),
                class: lv.spec.device_class,
                provisioning: lv.spec.provisioning,
                size_bytes: lv.spec.size_bytes,
                deletion_timestamp: lv.metadata.deletion_timestamp.clone(),
                phase: status.and_then(|s| s.phase),
                current_size_bytes: status.and_then(|s| s.current_size_bytes),
                capacity_sequence: status.and_then(|s| s.capacity_sequence),
                volume_snapshot: lv
                    .spec
                    .volume_snapshot
                    .as_ref()
                    .filter(|_| lv.spec.is_snapshot())
                    .map(|r| (r.namespace.clone(), r.name.clone())),
            },
        }
    }
}

impl From<LogicalVolume> for VolumeRecord {
    fn from(lv: LogicalVolume) -> Self {
        VolumeRecord::from(&lv)
    }
}

impl Keyed for VolumeRecord {
    fn key(&self) -> ObjectKey {
        (String::new(), self.name.clone())
    }
}

/// What the index keeps of a PersistentVolumeClaim.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimRecord {
    pub key: ObjectKey,
    pub fields: ClaimFields,
}

/// A claim's placement fields. `storage_class` is `None` for a claim without a spec or a class:
/// such a claim is known (the pod using it is not made to wait) but never Strata's.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimFields {
    pub uid: Option<String>,
    /// `spec.storageClassName`, else the legacy beta annotation.
    pub storage_class: Option<String>,
    /// `spec.resources.requests.storage` and `.limits.storage`, as quantities.
    pub request: Option<String>,
    pub limit: Option<String>,
    /// `spec.volumeMode: Block`.
    pub block: bool,
    /// Whether the access modes and volume mode are ones CreateVolume accepts, and why not.
    pub access: Result<(), String>,
    /// Bound to a PV already (`spec.volumeName` or phase `Bound`).
    pub bound: bool,
    /// `volume.kubernetes.io/selected-node`.
    pub selected_node: Option<String>,
    /// What the volume starts from, if it is a restore or a clone.
    pub data_source: Option<DataSource>,
}

/// What a claim's volume starts from (`spec.dataSourceRef`, else `spec.dataSource`): the
/// extender places such a claim only on its source's node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DataSource {
    /// A VolumeSnapshot (namespace, name): a restore.
    Snapshot(ObjectKey),
    /// A PersistentVolumeClaim (namespace, name): a clone.
    Claim(ObjectKey),
}

/// The API group of VolumeSnapshots.
pub const SNAPSHOT_API_GROUP: &str = "snapshot.storage.k8s.io";

impl DataSource {
    /// The data source of a claim in `namespace` with `spec`; `None` without one or for a kind
    /// that is not a snapshot or a claim (a volume populator: not Strata's to place).
    pub fn of_claim(
        namespace: &str,
        spec: &k8s_openapi::api::core::v1::PersistentVolumeClaimSpec,
    ) -> Option<DataSource> {
        Self::of_refs(
            namespace,
            spec.data_source_ref.as_ref(),
            spec.data_source.as_ref(),
        )
    }

    /// The data source named by a claim spec's `dataSourceRef` (which wins) or `dataSource`,
    /// for a claim in `namespace`: of a PVC, or of a pod's ephemeral volume claim template.
    pub fn of_refs(
        namespace: &str,
        data_source_ref: Option<&k8s_openapi::api::core::v1::TypedObjectReference>,
        data_source: Option<&k8s_openapi::api::core::v1::TypedLocalObjectReference>,
    ) -> Option<DataSource> {
        let (group, kind, name, ns) = match (data_source_ref, data_source) {
            (Some(r), _) => (
                r.api_group.as_deref(),
                r.kind.as_str(),
                r.name.as_str(),
                r.namespace.as_deref(),
            ),
            (None, Some(r)) => (
                r.api_group.as_deref(),
                r.kind.as_str(),
                r.name.as_str(),
                None,
            ),
            (None, None) => return None,
        };
        let key = (ns.unwrap_or(namespace).to_owned(), name.to_owned());
        match (group.unwrap_or_default(), kind) {
            (SNAPSHOT_API_GROUP, "VolumeSnapshot") => Some(DataSource::Snapshot(key)),
            ("", "PersistentVolumeClaim") => Some(DataSource::Claim(key)),
            _ => None,
        }
    }

    /// For messages: `VolumeSnapshot ns/name` or `PersistentVolumeClaim ns/name`.
    pub fn describe(&self) -> String {
        match self {
            DataSource::Snapshot((ns, name)) => format!("VolumeSnapshot {ns}/{name}"),
            DataSource::Claim((ns, name)) => format!("PersistentVolumeClaim {ns}/{name}"),
        }
    }
}

impl From<&PersistentVolumeClaim> for ClaimRecord {
    fn from(pvc: &PersistentVolumeClaim) -> Self {
        let meta = &pvc.metadata;
        let key = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let annotations = meta.annotations.as_ref();
        let annotation = |name: &str| annotations.and_then(|a| a.get(name).cloned());
        let spec = pvc.spec.as_ref();
        let storage_class = spec.and_then(|spec| {
            spec.storage_class_name
                .clone()
                .or_else(|| annotation(LEGACY_CLASS_ANNOTATION))
        });
        let resources = spec.and_then(|s| s.resources.as_ref());
        let quantity = |map: Option<&std::collections::BTreeMap<String, _>>| {
            map.and_then(|m| m.get("storage"))
                .map(|q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0.clone())
        };
        let data_source = spec.and_then(|s| DataSource::of_claim(&key.0, s));
        ClaimRecord {
            key,
            fields: ClaimFields {
                uid: meta.uid.clone(),
                storage_class,
                request: quantity(resources.and_then(|r| r.requests.as_ref())),
                limit: quantity(resources.and_then(|r| r.limits.as_ref())),
                block: spec.and_then(|s| s.volume_mode.as_deref()) == Some("Block"),
                access: spec.map_or(Ok(()), check_access),
                bound: spec
                    .and_then(|s| s.volume_name.as_deref())
                    .is_some_and(|v| !v.is_empty())
                    || pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"),
                selected_node: annotation(ANNOTATION_SELECTED_NODE),
                data_source,
            },
        }
    }
}

impl From<PersistentVolumeClaim> for ClaimRecord {
    fn from(pvc: PersistentVolumeClaim) -> Self {
        ClaimRecord::from(&pvc)
    }
}

impl Keyed for ClaimRecord {
    fn key(&self) -> ObjectKey {
        self.key.clone()
    }
}

/// What the index keeps of a Pod: the claims it uses and the nodes it is bound or nominated to.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRecord {
    pub key: ObjectKey,
    /// Each claim the pod uses with those nodes; empty for a pod on no node.
    pub uses: Vec<(ObjectKey, Vec<String>)>,
}

impl From<&Pod> for PodRecord {
    fn from(pod: &Pod) -> Self {
        PodRecord {
            key: (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            ),
            uses: pod_claims_on_nodes(pod),
        }
    }
}

impl From<Pod> for PodRecord {
    fn from(pod: Pod) -> Self {
        PodRecord::from(&pod)
    }
}

impl Keyed for PodRecord {
    fn key(&self) -> ObjectKey {
        self.key.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    #[test]
    fn a_kept_volume_has_the_pending_bytes_of_the_whole_object() {
        for phase in [
            LogicalVolumePhase::Pending,
            LogicalVolumePhase::Ready,
            LogicalVolumePhase::Failed,
            LogicalVolumePhase::Wiping,
        ] {
            for (current, needed) in [(None, None), (Some(GIB), Some(3)), (Some(4 * GIB), None)] {
                let mut lv = (*volume("pvc-a", "n1", DeviceClass::Nvme, 4 * GIB, phase)).clone();
                let status = lv.status.as_mut().unwrap();
                status.current_size_bytes = current;
                status.capacity_sequence = needed;
                status.reason = Some("noise".into());
                for seen in [None, Some(2), Some(3)] {
                    assert_eq!(
                        VolumeRecord::from(&lv).fields.pending_bytes(seen),
                        csi_api::capacity::volume_pending_bytes(&lv, seen),
                        "{phase:?} {current:?} {needed:?} {seen:?}"
                    );
                }
            }
        }
        let mut deleting = (*volume(
            "pvc-b",
            "n1",
            DeviceClass::Hdd,
            GIB,
            LogicalVolumePhase::Pending,
        ))
        .clone();
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(
            VolumeRecord::from(&deleting).fields.pending_bytes(None),
            None
        );
    }

    #[test]
    fn a_kept_claim_reads_the_class_from_the_spec_or_the_legacy_annotation() {
        let mut legacy = claim("apps", "c", "u", "fast", "1Gi");
        legacy.spec.as_mut().unwrap().storage_class_name = None;
        legacy.metadata.annotations =
            Some([(LEGACY_CLASS_ANNOTATION.into(), "bulk".into())].into());
        let record = ClaimRecord::from(&legacy);
        assert_eq!(record.key, ("apps".into(), "c".into()));
        assert_eq!(record.fields.storage_class.as_deref(), Some("bulk"));
        assert_eq!(record.fields.request.as_deref(), Some("1Gi"));
        assert!(!record.fields.bound);
        let record = ClaimRecord::from(&bound(selected(
            claim("apps", "d", "v", "fast", "1Gi"),
            "n1",
        )));
        assert!(record.fields.bound);
        assert_eq!(record.fields.selected_node.as_deref(), Some("n1"));
    }
}
