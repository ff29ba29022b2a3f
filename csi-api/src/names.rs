//! Every name the three programs and the cluster agree on (driver, API group, labels, parameters,
//! device classes, reasons).

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CSI driver name (GetPluginInfo, StorageClass `provisioner`, CSIDriver object).
pub const DRIVER_NAME: &str = "local.strata.io";
/// API group of the CRDs.
pub const API_GROUP: &str = "strata.io";
/// API version of the CRDs.
pub const API_VERSION: &str = "v1alpha1";
/// Topology key carried by every volume and every node (value: node name).
pub const TOPOLOGY_KEY: &str = "topology.strata.io/node";
/// Label on a LogicalVolume naming its node (the agent watches by this selector).
pub const LABEL_NODE: &str = "strata.io/node";
/// Label on a LogicalVolume naming its device class.
pub const LABEL_DEVICE_CLASS: &str = "strata.io/device-class";
/// Finalizer on a LogicalVolume, removed by the agent once the LV is gone.
pub const FINALIZER: &str = "strata.io/lv";
/// Finalizer on a LogicalVolume held by the controller while a PersistentVolume may refer to
/// it; released only by the CO's DeleteVolume for that PV, or when no PV refers to the volume.
/// The agent never wipes or removes an LV whose object still carries it.
pub const FINALIZER_PV_PROTECTION: &str = "strata.io/pv-protection";
/// LogicalVolume `status.reason` (agent) and Event reason (controller) while a deletion is held
/// because a PersistentVolume still refers to the volume (the protection finalizer is on).
pub const REASON_PV_PROTECTED: &str = "PvProtected";
/// LogicalVolume `status.reason` while a deletion is held because the LV is open or mounted.
pub const REASON_VOLUME_IN_USE: &str = "VolumeInUse";
/// LogicalVolume `status.reason` (agent, phase `Failed`) when the LV does not fit on the node
/// (no room in the VG, or the thin pool cannot promise it; CSI: `ResourceExhausted`).
pub const REASON_INSUFFICIENT_SPACE: &str = "InsufficientSpace";
/// LogicalVolume `status.reason` (agent, phase `Failed`) when the source of a snapshot, restore or
/// clone (`spec.source`) has no LV on the node (CSI: `NotFound`).
pub const REASON_SOURCE_NOT_FOUND: &str = "SourceNotFound";
/// LogicalVolume `status.reason` (agent, phase `Failed`) when the source of a snapshot or clone is
/// a linear volume (CSI: `FailedPrecondition`, use a thin StorageClass).
pub const REASON_SOURCE_NOT_THIN: &str = "SourceNotThin";
/// LogicalVolume `status.reason` (agent, phase `Failed`) when the spec cannot be made as written
/// (a snapshot without a volume source, a restore or clone that is not thin; CSI: `InvalidArgument`).
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// Event reason (Normal) on a snapshot LogicalVolume when the agent made its snapshot LV.
pub const EVENT_SNAPSHOT_CREATED: &str = "SnapshotCreated";
/// StorageClass parameter: the device class (required).
pub const PARAM_DEVICE_CLASS: &str = "strata.io/device-class";
/// StorageClass parameter: placement strategy, `binpack` or `spread`.
pub const PARAM_PLACEMENT: &str = "strata.io/placement";
/// StorageClass parameter: wipe policy on delete, overriding the agent's per-class default.
pub const PARAM_WIPE: &str = "strata.io/wipe";
/// StorageClass parameter: `linear` (default) or `thin` ([`Provisioning`]).
pub const PARAM_PROVISIONING: &str = "strata.io/provisioning";
/// StorageClass parameter: what the controller does when a volume's disk fails (LogicalVolume
/// condition `DiskFailed`): `report` (Events only) or `drift` (delete the claim and the pod of a
/// StatefulSet so that both are recreated elsewhere). Unset: the controller's cluster default.
pub const PARAM_ON_DISK_FAILURE: &str = "strata.io/on-disk-failure";
/// StorageClass parameter: the same for a node NotReady longer than the controller's grace.
pub const PARAM_ON_NODE_FAILURE: &str = "strata.io/on-node-failure";
/// LogicalVolume condition type set True by the agent while the volume has extents on a failing
/// or missing disk.
pub const CONDITION_DISK_FAILED: &str = "DiskFailed";
/// NodeStorage condition type owned by the controller (server-side apply, field manager
/// `csi-controller`; the agent owns the other types): True while `status.updatedAt` is older than
/// the controller's `--stale-after`. Readers then trust none of the node's capacity.
pub const CONDITION_STALE: &str = "Stale";
/// StorageClass parameter: filesystem type (`xfs` default, `ext4`).
pub const PARAM_FS_TYPE: &str = "csi.storage.k8s.io/fstype";
/// Default filesystem when the request names none.
pub const DEFAULT_FS_TYPE: &str = "xfs";
/// LVM tag on every PV, VG and LV Strata creates; objects without it are never touched.
pub const LVM_OWNER_TAG: &str = "strata.io/owner";
/// PVC annotation set by kube-scheduler for WaitForFirstConsumer claims.
pub const ANNOTATION_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Field manager of the agent's server-side applies.
pub const FIELD_MANAGER_AGENT: &str = "csi-agent";
/// Field manager of the controller's writes.
pub const FIELD_MANAGER_CONTROLLER: &str = "csi-controller";
/// Smallest disk the agent claims.
pub const MIN_DISK_BYTES: u64 = 1 << 30;

/// A class of media; one volume group per class and node.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    Nvme,
    Ssd,
    Hdd,
}

impl DeviceClass {
    /// Every class, in order of speed.
    pub const ALL: [DeviceClass; 3] = [DeviceClass::Nvme, DeviceClass::Ssd, DeviceClass::Hdd];

    /// The class name as written in StorageClasses and CRDs.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Nvme => "nvme",
            DeviceClass::Ssd => "ssd",
            DeviceClass::Hdd => "hdd",
        }
    }

    /// The volume group that holds this class on every node.
    pub fn vg_name(self) -> &'static str {
        match self {
            DeviceClass::Nvme => "strata-nvme",
            DeviceClass::Ssd => "strata-ssd",
            DeviceClass::Hdd => "strata-hdd",
        }
    }

    /// The class whose VG has this name, if it is one of Strata's.
    pub fn from_vg_name(vg: &str) -> Option<DeviceClass> {
        DeviceClass::ALL.into_iter().find(|c| c.vg_name() == vg)
    }

    /// Whether the media is flash (TRIM/discard make sense).
    pub fn is_flash(self) -> bool {
        !matches!(self, DeviceClass::Hdd)
    }
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device class name that is not one of `nvme`, `ssd`, `hdd`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown device class {0:?}: expected one of nvme, ssd, hdd")]
pub struct UnknownDeviceClass(pub String);

impl FromStr for DeviceClass {
    type Err = UnknownDeviceClass;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownDeviceClass(s.to_owned()))
    }
}

/// What happens to a deleted volume's bytes (StorageClass `strata.io/wipe`, the agent's
/// `--wipe-policy CLASS=POLICY`). `discard` falls back to zeroing where the disks do not prove
/// that discarded blocks read as zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WipePolicy {
    Discard,
    Zero,
    None,
}

impl WipePolicy {
    pub const ALL: [WipePolicy; 3] = [WipePolicy::Discard, WipePolicy::Zero, WipePolicy::None];

    pub fn as_str(self) -> &'static str {
        match self {
            WipePolicy::Discard => "discard",
            WipePolicy::Zero => "zero",
            WipePolicy::None => "none",
        }
    }

    /// The default of a device class: discard on flash, zeroes on spinning disks.
    pub fn default_for(class: DeviceClass) -> WipePolicy {
        if class.is_flash() {
            WipePolicy::Discard
        } else {
            WipePolicy::Zero
        }
    }
}

impl fmt::Display for WipePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A wipe policy name that is not `discard`, `zero` or `none`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown wipe policy {0:?}: expected discard, zero or none")]
pub struct UnknownWipePolicy(pub String);

impl FromStr for WipePolicy {
    type Err = UnknownWipePolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WipePolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownWipePolicy(s.to_owned()))
    }
}

/// The values of [`PARAM_ON_DISK_FAILURE`] and [`PARAM_ON_NODE_FAILURE`] (and the controller's
/// cluster defaults): what to do when a volume's disk or node fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RecoveryPolicy {
    /// Events only: the workload stays where its data was.
    Report,
    /// Delete the claim and the StatefulSet pod so that both are recreated elsewhere.
    Drift,
}

impl RecoveryPolicy {
    pub const ALL: [RecoveryPolicy; 2] = [RecoveryPolicy::Report, RecoveryPolicy::Drift];

    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryPolicy::Report => "report",
            RecoveryPolicy::Drift => "drift",
        }
    }
}

/// A recovery policy name that is not `report` or `drift`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown recovery policy {0:?}: expected report or drift")]
pub struct UnknownRecoveryPolicy(pub String);

impl FromStr for RecoveryPolicy {
    type Err = UnknownRecoveryPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RecoveryPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownRecoveryPolicy(s.to_owned()))
    }
}

/// How a volume's extents are allocated (StorageClass `strata.io/provisioning`): `linear` takes
/// its whole size from the class VG at creation; `thin` is a virtual size on the class VG's thin
/// pool, backed by the pool's chunks as it is written, and promised against the pool's size
/// times the class's overprovision ratio.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provisioning {
    #[default]
    Linear,
    Thin,
}

impl Provisioning {
    pub const ALL: [Provisioning; 2] = [Provisioning::Linear, Provisioning::Thin];

    pub fn as_str(self) -> &'static str {
        match self {
            Provisioning::Linear => "linear",
            Provisioning::Thin => "thin",
        }
    }
}

impl fmt::Display for Provisioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provisioning name that is not `linear` or `thin`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown provisioning {0:?}: expected linear or thin")]
pub struct UnknownProvisioning(pub String);

impl FromStr for Provisioning {
    type Err = UnknownProvisioning;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provisioning::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProvisioning(s.to_owned()))
    }
}

/// How the scheduler and the controller place volumes among nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[derive(clap::ValueEnum)]
pub enum Placement {
    /// Prefer the node left fullest (best fit): keeps large holes for large volumes.
    #[default]
    Binpack,
    /// Prefer the node left emptiest: spreads load and failure domains.
    Spread,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Binpack => "binpack",
            Placement::Spread => "spread",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A placement name that is not `binpack` or `spread`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown placement {0:?}: expected binpack or spread")]
pub struct UnknownPlacement(pub String);

impl FromStr for Placement {
    type Err = UnknownPlacement;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "binpack" => Ok(Placement::Binpack),
            "spread" => Ok(Placement::Spread),
            other => Err(UnknownPlacement(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_class_round_trips_through_names() {
        for class in DeviceClass::ALL {
            assert_eq!(class.as_str().parse::<DeviceClass>(), Ok(class));
            assert_eq!(DeviceClass::from_vg_name(class.vg_name()), Some(class));
        }
        assert_eq!(DeviceClass::from_vg_name("othervg"), None);
        assert!("NVMe".parse::<DeviceClass>().is_err());
    }

    #[test]
    fn placement_parses_only_known_names() {
        assert_eq!("spread".parse::<Placement>(), Ok(Placement::Spread));
        assert_eq!("binpack".parse::<Placement>(), Ok(Placement::Binpack));
        assert!("fill".parse::<Placement>().is_err());
    }
}
