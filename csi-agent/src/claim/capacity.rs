//! The per-class capacity summary (`csi_api::crd::DeviceClassStatus`) from LVM's view of the
//! Strata VGs, as a pure function: NodeStorage status and standalone GetCapacity both use it.
//! allocatable = free − the class's reserve (never negative); a VG with a missing PV is Degraded,
//! and so is a VG with a failing disk ([`degrade_failing`]); [`degraded_reasons`] names the disks.

use csi_api::crd::{ClassHealth, DeviceClassStatus, DiskState, DiskStatus};
use csi_api::names::DeviceClass;

use super::policy::Policy;
use crate::lvm::Vg;

/// One entry per Strata class VG (owner tag, `strata-<class>` name), in class order.
pub fn class_summary(vgs: &[Vg], policy: &Policy) -> Vec<DeviceClassStatus> {
    let mut out: Vec<DeviceClassStatus> = vgs
        .iter()
        .filter(|v| v.owned)
        .filter_map(|v| DeviceClass::from_vg_name(&v.name).map(|c| (c, v)))
        .map(|(class, v)| {
            let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
            DeviceClassStatus {
                name: class,
                vg_name: v.name.clone(),
                total_bytes: v.size_bytes,
                free_bytes: v.free_bytes,
                allocatable_bytes: v.free_bytes.saturating_sub(policy.reserved(class)),
                capacity: None,
                allocatable: None,
                pv_count: count(v.pv_count),
                missing_pv_count: count(v.missing_pv_count),
                lv_count: count(v.lv_count),
                health: if v.missing_pv_count > 0 {
                    ClassHealth::Degraded
                } else {
                    ClassHealth::Healthy
                },
                thin_pool: None,
            }
        })
        .collect();
    out.sort_by_key(|c| c.name);
    out
}

/// Turns Degraded every class whose VG holds a `Failing` disk: new volumes there would land on
/// a disk that reports errors (the VG's free extents may sit on it).
pub fn degrade_failing(classes: &mut [DeviceClassStatus], disks: &[DiskStatus]) {
    for class in classes.iter_mut() {
        let failing = disks.iter().any(|d| {
            d.state == DiskState::Failing && d.volume_group.as_deref() == Some(&class.vg_name)
        });
        if failing {
            class.health = ClassHealth::Degraded;
        }
    }
}

/// Why each Degraded class is degraded, naming the disks (slot) and the evidence, one line each.
pub fn degraded_reasons(classes: &[DeviceClassStatus], disks: &[DiskStatus]) -> Vec<String> {
    let mut out = Vec::new();
    for class in classes.iter().filter(|c| c.health == ClassHealth::Degraded) {
        let in_vg = |state: DiskState| {
            disks.iter().filter(move |d| {
                d.state == state && d.volume_group.as_deref() == Some(&class.vg_name)
            })
        };
        if class.missing_pv_count > 0 {
            let slots: Vec<&str> = in_vg(DiskState::Missing)
                .map(|d| {
                    if d.slot.is_empty() {
                        "slot unknown"
                    } else {
                        d.slot.as_str()
                    }
                })
                .collect();
            let named = if slots.is_empty() {
                String::new()
            } else {
                format!(" ({})", slots.join(", "))
            };
            out.push(format!(
                "{} is missing {} disk(s){named}",
                class.vg_name, class.missing_pv_count
            ));
        }
        for d in in_vg(DiskState::Failing) {
            out.push(format!(
                "{}: disk in slot {} is failing: {}",
                class.vg_name, d.slot, d.reason
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_api::crd::NodeStorageSpec;

    pub(crate) fn vg(name: &str, size: u64, free: u64, pvs: u64, missing: u64, owned: bool) -> Vg {
        Vg {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            size_bytes: size,
            free_bytes: free,
            extent_size: 4 << 20,
            extent_count: size / (4 << 20),
            free_extents: free / (4 << 20),
            pv_count: pvs,
            lv_count: 3,
            missing_pv_count: missing,
            tags: if owned {
                vec![crate::lvm::OWNER_TAG.into()]
            } else {
                vec![]
            },
            owned,
        }
    }

    #[test]
    fn summarises_only_strata_class_vgs_with_reserve_and_health() {
        let mut spec = NodeStorageSpec::default();
        spec.reserved_bytes.insert(DeviceClass::Nvme, 2 << 30);
        spec.reserved_bytes.insert(DeviceClass::Hdd, 100 << 30);
        let policy = Policy::new(&spec).unwrap();
        let vgs = [
            vg("strata-hdd", 16 << 30, 10 << 30, 1, 1, true),
            vg("strata-nvme", 16 << 30, 12 << 30, 2, 0, true),
            vg("othervg", 2 << 30, 2 << 30, 1, 0, false),
            vg("strata-ssd", 4 << 30, 4 << 30, 1, 0, false), // not tagged: not Strata's
            vg("strata-extra", 4 << 30, 4 << 30, 1, 0, true), // tagged but no class
        ];
        let out = class_summary(&vgs, &policy);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            DeviceClassStatus {
                name: DeviceClass::Nvme,
                vg_name: "strata-nvme".into(),
                total_bytes: 16 << 30,
                free_bytes: 12 << 30,
                allocatable_bytes: 10 << 30,
                capacity: None,
                allocatable: None,
                pv_count: 2,
                missing_pv_count: 0,
                lv_count: 3,
                health: ClassHealth::Healthy,
                thin_pool: None,
            }
        );
        assert_eq!(out[1].name, DeviceClass::Hdd);
        assert_eq!(out[1].allocatable_bytes, 0, "reserve larger than free");
        assert_eq!(out[1].missing_pv_count, 1);
        assert_eq!(out[1].health, ClassHealth::Degraded);
        assert!(class_summary(&[], &policy).is_empty());
    }

    fn disk(slot: &str, state: DiskState, reason: &str) -> DiskStatus {
        DiskStatus {
            slot: slot.into(),
            kernel_name: "sdb".into(),
            media: DeviceClass::Ssd,
            size_bytes: 4 << 30,
            model: String::new(),
            serial: String::new(),
            wwn: String::new(),
            state,
            reason: reason.into(),
            volume_group: Some("strata-ssd".into()),
        }
    }

    #[test]
    fn a_failing_disk_degrades_its_class_and_is_named() {
        let policy = Policy::new(&NodeStorageSpec::default()).unwrap();
        let vgs = [
            vg("strata-ssd", 8 << 30, 4 << 30, 2, 0, true),
            vg("strata-nvme", 8 << 30, 4 << 30, 1, 0, true),
        ];
        let mut classes = class_summary(&vgs, &policy);
        let disks = [
            disk("pci-a-ata-1", DiskState::Claimed, ""),
            disk(
                "pci-a-ata-2",
                DiskState::Failing,
                "kernel device state is offline",
            ),
        ];
        degrade_failing(&mut classes, &disks);
        let ssd = classes.iter().find(|c| c.name == DeviceClass::Ssd).unwrap();
        let nvme = classes
            .iter()
            .find(|c| c.name == DeviceClass::Nvme)
            .unwrap();
        assert_eq!(ssd.health, ClassHealth::Degraded);
        assert_eq!(nvme.health, ClassHealth::Healthy);
        assert_eq!(
            degraded_reasons(&classes, &disks),
            vec![
                "strata-ssd: disk in slot pci-a-ata-2 is failing: kernel device state is offline"
                    .to_string()
            ]
        );
    }

    #[test]
    fn a_missing_disk_is_named_by_slot() {
        let policy = Policy::new(&NodeStorageSpec::default()).unwrap();
        let classes = class_summary(&[vg("strata-ssd", 8 << 30, 4 << 30, 2, 1, true)], &policy);
        let disks = [disk(
            "pci-a-ata-3",
            DiskState::Missing,
            "PV u of strata-ssd is missing",
        )];
        assert_eq!(
            degraded_reasons(&classes, &disks),
            vec!["strata-ssd is missing 1 disk(s) (pci-a-ata-3)".to_string()]
        );
    }
}
