//! Capacity arithmetic shared by the scheduler's filter and the controller's admission, so that
//! both answer "does this fit on that node" the same way, to the byte.

use std::collections::BTreeMap;
use std::fmt;

use crate::crd::{ClassHealth, LogicalVolume, LogicalVolumePhase, NodeStorageStatus};
use crate::names::DeviceClass;

/// LVM's default physical extent, the granularity of every allocation.
pub const DEFAULT_EXTENT_BYTES: u64 = 4 << 20;

/// Bytes per device class.
pub type ClassBytes = BTreeMap<DeviceClass, u64>;

/// `bytes` rounded up to whole extents; `None` on overflow or a zero extent.
pub fn round_up_to_extent(bytes: u64, extent: u64) -> Option<u64> {
    if extent == 0 {
        return None;
    }
    bytes.div_ceil(extent).checked_mul(extent)
}

/// Adds `bytes` of `class` to a per-class sum, saturating.
pub fn add_class_bytes(sum: &mut ClassBytes, class: DeviceClass, bytes: u64) {
    let entry = sum.entry(class).or_insert(0);
    *entry = entry.saturating_add(bytes);
}

/// Demand already promised to a node but not yet visible in its NodeStorage: LogicalVolumes of
/// the node that are neither Ready nor Failed (the agent has not made them yet, or is wiping).
pub fn pending_from_volumes<'a>(
    volumes: impl IntoIterator<Item = &'a LogicalVolume>,
    node: &str,
) -> ClassBytes {
    let mut pending = ClassBytes::new();
    for lv in volumes {
        if lv.spec.node_name != node || lv.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let phase = lv.status.as_ref().and_then(|s| s.phase);
        if matches!(
            phase,
            Some(
                LogicalVolumePhase::Ready | LogicalVolumePhase::Failed | LogicalVolumePhase::Wiping
            )
        ) {
            continue;
        }
        let extent_rounded =
            round_up_to_extent(lv.spec.size_bytes, DEFAULT_EXTENT_BYTES).unwrap_or(u64::MAX);
        add_class_bytes(&mut pending, lv.spec.device_class, extent_rounded);
    }
    pending
}

/// What one class of one node can still take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassCapacity {
    pub total: u64,
    pub allocatable: u64,
    pub pending: u64,
    pub healthy: bool,
}

impl ClassCapacity {
    /// Allocatable minus pending, never below zero.
    pub fn available(&self) -> u64 {
        self.allocatable.saturating_sub(self.pending)
    }
}

/// The capacity of one node for new volumes, per class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeCapacity {
    pub classes: BTreeMap<DeviceClass, ClassCapacity>,
}

/// Why a demand does not fit on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    /// The node has no volume group of this class: waiting does not help.
    NoSuchClass(DeviceClass),
    /// The class lost a PV; it takes no new allocations until repaired.
    Degraded(DeviceClass),
    /// Not enough bytes now; deletions may free some.
    Insufficient {
        class: DeviceClass,
        needed: u64,
        available: u64,
    },
}

impl Shortfall {
    /// Whether no amount of waiting makes the node fit (the scheduler's "unresolvable").
    pub fn is_unresolvable(&self) -> bool {
        match self {
            Shortfall::NoSuchClass(_) => true,
            Shortfall::Degraded(_) => false,
            Shortfall::Insufficient { .. } => false,
        }
    }
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortfall::NoSuchClass(c) => write!(f, "node has no {c} device class"),
            Shortfall::Degraded(c) => {
                write!(f, "{c} device class is degraded (a disk is missing)")
            }
            Shortfall::Insufficient {
                class,
                needed,
                available,
            } => write!(
                f,
                "not enough {class} capacity: {needed} bytes requested, {available} available"
            ),
        }
    }
}

impl NodeCapacity {
    /// Capacity as the node's agent last reported it, with nothing pending yet.
    pub fn from_status(status: &NodeStorageStatus) -> Self {
        let classes = status
            .device_classes
            .iter()
            .map(|c| {
                let cap = ClassCapacity {
                    total: c.total_bytes,
                    allocatable: c.allocatable_bytes.min(c.free_bytes),
                    pending: 0,
                    healthy: c.health == ClassHealth::Healthy && c.missing_pv_count == 0,
                };
                (c.name, cap)
            })
            .collect();
        NodeCapacity { classes }
    }

    /// Adds demand that is promised but not yet reflected in the status.
    pub fn with_pending(mut self, pending: &ClassBytes) -> Self {
        for (class, bytes) in pending {
            if let Some(cap) = self.classes.get_mut(class) {
                cap.pending = cap.pending.saturating_add(*bytes);
            }
        }
        self
    }

    /// Whether every class of `demand` fits; the first shortfall (in class order) otherwise.
    pub fn check(&self, demand: &ClassBytes) -> Result<(), Shortfall> {
        for (&class, &needed) in demand {
            let Some(cap) = self.classes.get(&class) else {
                return Err(Shortfall::NoSuchClass(class));
            };
            if !cap.healthy {
                return Err(Shortfall::Degraded(class));
            }
            if cap.available() < needed {
                return Err(Shortfall::Insufficient {
                    class,
                    needed,
                    available: cap.available(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DeviceClassStatus, LogicalVolumeSpec, LogicalVolumeStatus};

    fn class(name: DeviceClass, free: u64, alloc: u64, missing: u32) -> DeviceClassStatus {
        DeviceClassStatus {
            name,
            vg_name: name.vg_name().into(),
            total_bytes: 100 << 30,
            free_bytes: free,
            allocatable_bytes: alloc,
            pv_count: 1,
            missing_pv_count: missing,
            lv_count: 0,
            health: if missing > 0 {
                ClassHealth::Degraded
            } else {
                ClassHealth::Healthy
            },
        }
    }

    fn lv(
        node: &str,
        class: DeviceClass,
        size: u64,
        phase: Option<LogicalVolumePhase>,
    ) -> LogicalVolume {
        let mut lv = LogicalVolume::new(
            "pvc-1",
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
            phase,
            ..Default::default()
        });
        lv
    }

    #[test]
    fn rounds_up_to_whole_extents() {
        assert_eq!(round_up_to_extent(0, 4), Some(0));
        assert_eq!(round_up_to_extent(1, 4), Some(4));
        assert_eq!(round_up_to_extent(8, 4), Some(8));
        assert_eq!(round_up_to_extent(u64::MAX, 4 << 20), None);
        assert_eq!(round_up_to_extent(5, 0), None);
    }

    #[test]
    fn allocatable_never_exceeds_free_and_pending_is_subtracted() {
        let status = NodeStorageStatus {
            device_classes: vec![class(DeviceClass::Nvme, 10 << 30, 12 << 30, 0)],
            ..Default::default()
        };
        let pending = ClassBytes::from([(DeviceClass::Nvme, 4 << 30)]);
        let cap = NodeCapacity::from_status(&status).with_pending(&pending);
        assert_eq!(cap.classes[&DeviceClass::Nvme].available(), 6 << 30);
        assert!(
            cap.check(&ClassBytes::from([(DeviceClass::Nvme, 6 << 30)]))
                .is_ok()
        );
        assert_eq!(
            cap.check(&ClassBytes::from([(DeviceClass::Nvme, (6 << 30) + 1)])),
            Err(Shortfall::Insufficient {
                class: DeviceClass::Nvme,
                needed: (6 << 30) + 1,
                available: 6 << 30
            })
        );
    }

    #[test]
    fn absent_class_is_unresolvable_and_degraded_takes_nothing() {
        let status = NodeStorageStatus {
            device_classes: vec![class(DeviceClass::Hdd, 50 << 30, 50 << 30, 1)],
            ..Default::default()
        };
        let cap = NodeCapacity::from_status(&status);
        let ssd = cap
            .check(&ClassBytes::from([(DeviceClass::Ssd, 1)]))
            .unwrap_err();
        assert!(ssd.is_unresolvable());
        let hdd = cap
            .check(&ClassBytes::from([(DeviceClass::Hdd, 1)]))
            .unwrap_err();
        assert_eq!(hdd, Shortfall::Degraded(DeviceClass::Hdd));
        assert!(!hdd.is_unresolvable());
    }

    #[test]
    fn pending_counts_only_unfinished_volumes_of_the_node() {
        let volumes = [
            lv("a", DeviceClass::Nvme, 1, None),
            lv(
                "a",
                DeviceClass::Nvme,
                4 << 20,
                Some(LogicalVolumePhase::Pending),
            ),
            lv(
                "a",
                DeviceClass::Nvme,
                1 << 30,
                Some(LogicalVolumePhase::Ready),
            ),
            lv(
                "a",
                DeviceClass::Ssd,
                1 << 30,
                Some(LogicalVolumePhase::Failed),
            ),
            lv("b", DeviceClass::Nvme, 1 << 30, None),
        ];
        let pending = pending_from_volumes(&volumes, "a");
        assert_eq!(pending, ClassBytes::from([(DeviceClass::Nvme, 8 << 20)]));
    }
}
