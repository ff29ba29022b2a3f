use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::{DeviceClass, Provisioning};

/// One CSI volume (name = CSI volume name, e.g. `pvc-<uid>`). The controller writes `spec`, the
/// agent of `spec.nodeName` makes the LV and writes `status`.
///
/// `spec` is immutable once created except `sizeBytes`, which may only grow (expansion). The API
/// server enforces this with the CEL rules below (transition rules: they run on update only), so a
/// client holding `patch` on LogicalVolumes (a compromised node) cannot move a volume to another
/// node or class, retarget its claim or turn off its wipe.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("self.nodeName == oldSelf.nodeName").message("spec.nodeName is immutable"))]
#[x_kube(validation = Rule::new("self.deviceClass == oldSelf.deviceClass").message("spec.deviceClass is immutable"))]
#[x_kube(validation = Rule::new("self.sizeBytes >= oldSelf.sizeBytes").message("spec.sizeBytes may only grow"))]
#[x_kube(validation = Rule::new("has(self.pvc) == has(oldSelf.pvc) && (!has(self.pvc) || self.pvc == oldSelf.pvc)").message("spec.pvc is immutable"))]
#[x_kube(validation = Rule::new("has(self.source) == has(oldSelf.source) && (!has(self.source) || self.source == oldSelf.source)").message("spec.source is immutable"))]
#[x_kube(validation = Rule::new("has(self.provisioning) == has(oldSelf.provisioning) && (!has(self.provisioning) || self.provisioning == oldSelf.provisioning)").message("spec.provisioning is immutable"))]
#[x_kube(validation = Rule::new("has(self.wipe) == has(oldSelf.wipe) && (!has(self.wipe) || self.wipe == oldSelf.wipe)").message("spec.wipe is immutable"))]
#[x_kube(validation = Rule::new("has(self.role) == has(oldSelf.role) && (!has(self.role) || self.role == oldSelf.role)").message("spec.role is immutable"))]
#[x_kube(validation = Rule::new("has(self.volumeSnapshot) == has(oldSelf.volumeSnapshot) && (!has(self.volumeSnapshot) || self.volumeSnapshot == oldSelf.volumeSnapshot)").message("spec.volumeSnapshot is immutable"))]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "LogicalVolume",
    plural = "logicalvolumes",
    shortname = "slv",
    status = "LogicalVolumeStatus",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Class","type":"string","jsonPath":".spec.deviceClass"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role","priority":1}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source.name","priority":1}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Wipe%","type":"integer","jsonPath":".status.wipe.percent"}"#,
    printcolumn = r#"{"name":"DiskFailed","type":"string","jsonPath":".status.conditions[?(@.type==\"DiskFailed\")].status"}"#,
    printcolumn = r#"{"name":"PVC","type":"string","jsonPath":".spec.pvc.name","priority":1}"#,
    printcolumn = r#"{"name":"Requested","type":"integer","jsonPath":".spec.sizeBytes","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LogicalVolumeSpec {
    pub node_name: String,
    pub device_class: DeviceClass,
    /// Requested size; the LV is this size rounded up to whole extents.
    pub size_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcReference>,
    /// `linear` (absent) or `thin` (a virtual size on the class VG's thin pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<Provisioning>,
    /// What the volume starts from: a snapshot (a restore) or another volume (a clone) for a
    /// volume; the origin volume for a snapshot. Always on the same node, class and thin pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VolumeSource>,
    /// `Volume` (absent) or `Snapshot`: a snapshot is a read-only thin snapshot of `source`
    /// (kind `Volume`), never activated, staged or mounted, with no PVC; its object name is the
    /// CSI snapshot id. See docs/architecture.md "Snapshots, restores and clones".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<VolumeRole>,
    /// The VolumeSnapshot a snapshot was made for (csi-snapshotter's `--extra-create-metadata`);
    /// the scheduler extender finds a restore's node through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot: Option<VolumeSnapshotReference>,
    /// Wipe policy on delete (`discard`, `zero`, `none`); unset = the agent's class default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wipe: Option<String>,
}

/// The claim a volume was made for (from external-provisioner's `--extra-create-metadata`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcReference {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

impl LogicalVolumeSpec {
    /// Whether the object is a snapshot (not a volume).
    pub fn is_snapshot(&self) -> bool {
        self.role == Some(VolumeRole::Snapshot)
    }

    /// Whether the volume (or snapshot) lives on its class's thin pool.
    pub fn is_thin(&self) -> bool {
        self.provisioning == Some(Provisioning::Thin)
    }
}

impl LogicalVolume {
    /// The size the agent reports the LV has (`status.currentSizeBytes`), else the size asked.
    pub fn current_size_bytes(&self) -> u64 {
        self.status
            .as_ref()
            .and_then(|s| s.current_size_bytes)
            .unwrap_or(self.spec.size_bytes)
    }
}

/// Content a volume starts from (or, for a snapshot, the volume it is a snapshot of).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSource {
    /// `Volume` (a clone, or the origin of a snapshot) or `Snapshot` (a restore).
    pub kind: SourceKind,
    /// The LogicalVolume name of the source.
    pub name: String,
}

/// What kind of object a [`VolumeSource`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SourceKind {
    Volume,
    Snapshot,
}

/// Whether a LogicalVolume is a volume or a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VolumeRole {
    Volume,
    Snapshot,
}

/// The namespaced VolumeSnapshot a snapshot LogicalVolume was made for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotReference {
    pub namespace: String,
    pub name: String,
}

/// What the agent made of the spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogicalVolumeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<LogicalVolumePhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vg_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lv_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_size_bytes: Option<u64>,
    /// `currentSizeBytes` as a quantity for people (`kubectl get`), rounded down to 0.1 of its
    /// unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// The NodeStorage `status.capacitySequence` from which the LV's current allocation
    /// (`currentSizeBytes`) is reflected in the node's published free bytes. The agent sets it
    /// whenever it creates or extends the LV, before or with the status that says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_sequence: Option<u64>,
    /// When the LV was made, as lvm2 records it (RFC 3339, UTC, whole seconds). For a snapshot
    /// this is the snapshot's point in time (CSI `creation_time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<String>,
    /// Machine-readable cause of the phase, e.g. `InsufficientSpace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wipe: Option<WipeProgress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where a volume is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LogicalVolumePhase {
    Pending,
    Ready,
    Failed,
    Wiping,
}

/// Progress of the wipe that precedes the LV's removal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WipeProgress {
    pub policy: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// `doneBytes` of `totalBytes` in whole percent, rounded down (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
}

impl WipeProgress {
    /// Progress of `done` of `total` bytes, with its percentage (100 for an empty LV).
    pub fn new(policy: impl Into<String>, done: u64, total: u64) -> WipeProgress {
        let percent = if total == 0 {
            100
        } else {
            (u128::from(done.min(total)) * 100 / u128::from(total)) as u8
        };
        WipeProgress {
            policy: policy.into(),
            done_bytes: done,
            total_bytes: total,
            percent: Some(percent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_percent_rounds_down_and_never_exceeds_100() {
        assert_eq!(WipeProgress::new("zero", 0, 8).percent, Some(0));
        assert_eq!(WipeProgress::new("zero", 4, 8).percent, Some(50));
        assert_eq!(WipeProgress::new("zero", 7, 8).percent, Some(87));
        assert_eq!(WipeProgress::new("zero", 9, 8).percent, Some(100));
        assert_eq!(WipeProgress::new("zero", 0, 0).percent, Some(100));
        assert_eq!(
            WipeProgress::new("zero", u64::MAX - 1, u64::MAX).percent,
            Some(99)
        );
    }
}
