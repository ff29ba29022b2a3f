use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::DeviceClass;

/// The operator's storage policy for one node (name = node name). The agent writes `status`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "NodeStorage",
    plural = "nodestorages",
    shortname = "strns",
    status = "NodeStorageStatus",
    printcolumn = r#"{"name":"NVMe free","type":"string","jsonPath":".status.deviceClasses[?(@.name==\"nvme\")].allocatable"}"#,
    printcolumn = r#"{"name":"NVMe size","type":"string","jsonPath":".status.deviceClasses[?(@.name==\"nvme\")].capacity","priority":1}"#,
    printcolumn = r#"{"name":"SSD free","type":"string","jsonPath":".status.deviceClasses[?(@.name==\"ssd\")].allocatable"}"#,
    printcolumn = r#"{"name":"SSD size","type":"string","jsonPath":".status.deviceClasses[?(@.name==\"ssd\")].capacity","priority":1}"#,
    printcolumn = r#"{"name":"HDD free","type":"string","jsonPath":".status.deviceClasses[?(@.name==\"hdd\")].allocatable"}"#,
    printcolumn = r#"{"name":"HDD size","type":"string","jsonPath":".status.deviceClasses[?(@.name==\"hdd\")].capacity","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Degraded","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].status"}"#,
    printcolumn = r#"{"name":"Stale","type":"string","jsonPath":".status.conditions[?(@.type==\"Stale\")].status"}"#,
    printcolumn = r#"{"name":"Updated","type":"date","jsonPath":".status.updatedAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeStorageSpec {
    /// `auto` claims every eligible disk; `manual` claims only slots matched by `include`.
    #[serde(default)]
    pub claim_mode: ClaimMode,
    /// Slot globs (e.g. `pci-0000:00:04.0-nvme-*`) that may be claimed; empty = all in `auto`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Slot globs never claimed, whatever `include` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Bytes per device class kept back from allocation (e.g. for LVM snapshots or headroom).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reserved_bytes: BTreeMap<DeviceClass, u64>,
    /// Media class forced for a slot, when the kernel's rotational flag is wrong.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub media_overrides: BTreeMap<String, DeviceClass>,
}

/// How the agent chooses disks to claim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClaimMode {
    #[default]
    Auto,
    Manual,
}

/// What the agent saw and built on the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStorageStatus {
    #[serde(default)]
    pub disks: Vec<DiskStatus>,
    #[serde(default)]
    pub device_classes: Vec<DeviceClassStatus>,
    /// Keyed by `type` (a list-map), so that each writer's server-side apply owns only its own
    /// types: the agent `Ready` and `Degraded`, the controller `Stale`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
    /// Grows with every capacity the agent publishes (never goes back, also across restarts).
    /// A LogicalVolume's allocation counts as reflected in `freeBytes` once this reaches the
    /// volume's `status.capacitySequence`; until then readers count it as pending demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_sequence: Option<u64>,
}

impl NodeStorageStatus {
    /// Whether the controller marked this status stale (condition `Stale` True): the agent has
    /// not refreshed it within the controller's limit, so its capacity is not to be trusted.
    pub fn marked_stale(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == crate::names::CONDITION_STALE && c.status == "True")
    }

    /// The status of one class, if the node has a VG for it.
    pub fn class(&self, class: DeviceClass) -> Option<&DeviceClassStatus> {
        self.device_classes.iter().find(|c| c.name == class)
    }
}

/// One disk as found by slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskStatus {
    /// Stable identity: by-path form, e.g. `pci-0000:00:04.0-nvme-1`.
    pub slot: String,
    /// Kernel name at the time of the scan (informational only; changes across reboots).
    #[serde(default)]
    pub kernel_name: String,
    pub media: DeviceClass,
    pub size_bytes: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub serial: String,
    #[serde(default)]
    pub wwn: String,
    pub state: DiskState,
    /// Why the disk is in this state, in words an operator acts on.
    #[serde(default)]
    pub reason: String,
    /// The VG the disk is a PV of, when claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group: Option<String>,
}

/// The life of a disk as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DiskState {
    /// A PV of a Strata VG.
    Claimed,
    /// Eligible but not (yet) claimed.
    Available,
    /// Not eligible; `reason` says why.
    Rejected,
    /// A PV Strata claimed that is no longer present.
    Missing,
    /// Claiming failed; `reason` has the error.
    Failed,
    /// A present disk that reports errors or a failing health (SMART, kernel device state, I/O
    /// errors); `reason` has the evidence. Its class takes no new allocations.
    Failing,
}

/// Capacity and health of one device class (one VG) on the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceClassStatus {
    pub name: DeviceClass,
    pub vg_name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// `freeBytes` minus the class's reserve (and space still being wiped); never negative.
    pub allocatable_bytes: u64,
    /// `totalBytes` as a quantity for people (`kubectl get`), rounded down to 0.1 of its unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// `allocatableBytes` as a quantity for people, rounded down to 0.1 of its unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<String>,
    pub pv_count: u32,
    #[serde(default)]
    pub missing_pv_count: u32,
    #[serde(default)]
    pub lv_count: u32,
    pub health: ClassHealth,
    /// The class VG's thin pool, when the class serves `strata.io/provisioning: thin`. Its
    /// extents are part of `totalBytes` and missing from `freeBytes` like any LV's; thin volumes
    /// are admitted against `thinPool.promisableBytes`, never against `allocatableBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_pool: Option<ThinPoolStatus>,
}

/// The thin pool of a class VG: what it holds, what has been promised on it, and what a new thin
/// volume may still be promised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThinPoolStatus {
    /// The pool LV's name in the class VG.
    pub lv_name: String,
    /// Data size of the pool: what it can physically hold.
    pub size_bytes: u64,
    /// Data bytes written (lvm2's `data_percent` of `sizeBytes`).
    pub used_bytes: u64,
    pub metadata_size_bytes: u64,
    pub metadata_used_bytes: u64,
    /// Virtual bytes the class may promise per byte of pool (the agent's per-class setting).
    pub overprovision_ratio: f64,
    /// Sum of the virtual sizes of the thin volumes on the pool (snapshots included).
    pub virtual_bytes: u64,
    /// What a new thin volume may still be promised, as the agent computed it from the fields
    /// above (and 0 when the pool is `Full`). The scheduler and the controller subtract the thin
    /// demand still pending on the node from this and nothing else.
    pub promisable_bytes: u64,
    pub health: ThinPoolHealth,
}

/// The fill state of a thin pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ThinPoolHealth {
    Healthy,
    /// Data or metadata over the warning threshold (and autoextend could not bring it back).
    Filling,
    /// Data or metadata over the refusal threshold: no new thin volume is admitted.
    Full,
}

impl DeviceClassStatus {
    /// Sets `capacity` and `allocatable` from the byte counts.
    pub fn with_quantities(self) -> Self {
        DeviceClassStatus {
            capacity: Some(super::quantity(self.total_bytes)),
            allocatable: Some(super::quantity(self.allocatable_bytes)),
            ..self
        }
    }
}

/// A class with a missing PV takes no new allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClassHealth {
    Healthy,
    Degraded,
}
