//! Per-volume truth: a volume is abnormal only when one of the disks holding its extents is
//! missing or failing (or lvm2 itself reports the LV unhealthy); the other volumes of the same
//! VG stay normal. Pure, over `pvs --segments` rows and the failing disks by slot.

use std::collections::BTreeMap;

use crate::claim::Recorded;
use crate::lvm::PvSegment;
use crate::lvm::naming::volume_from_tags;

/// What is wrong with one disk under a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskProblem {
    /// The disk's slot (or, for a PV without a slot tag, its device or PV UUID).
    pub disk: String,
    pub message: String,
}

/// How a PV is named in messages: its slot tag, else its device, else its UUID.
fn disk_name(seg: &PvSegment) -> String {
    Recorded::from_tags(&seg.pv_tags)
        .slot
        .map(|s| format!("slot {s}"))
        .or_else(|| seg.device.as_ref().map(|d| d.display().to_string()))
        .unwrap_or_else(|| format!("PV {}", seg.pv_uuid))
}

/// Volume name (from its volume tag) → the problems of the disks under it. Volumes that do not
/// appear are healthy. `failing` maps slot → evidence.
pub fn volume_problems(
    segments: &[PvSegment],
    failing: &BTreeMap<String, String>,
) -> BTreeMap<String, Vec<DiskProblem>> {
    let mut out: BTreeMap<String, Vec<DiskProblem>> = BTreeMap::new();
    let mut lvm_says: BTreeMap<String, String> = BTreeMap::new();
    for seg in segments {
        let Some(volume) = volume_from_tags(seg.lv_tags.iter().map(String::as_str)) else {
            continue;
        };
        let slot = Recorded::from_tags(&seg.pv_tags).slot;
        let problem = if seg.pv_missing {
            Some(DiskProblem {
                disk: slot.clone().unwrap_or_else(|| seg.pv_uuid.clone()),
                message: format!("disk in {} (PV {}) is missing", disk_name(seg), seg.pv_uuid),
            })
        } else {
            slot.as_ref()
                .and_then(|s| failing.get(s).map(|ev| (s, ev)))
                .map(|(s, ev)| DiskProblem {
                    disk: s.clone(),
                    message: format!("disk in slot {s} is failing: {ev}"),
                })
        };
        match problem {
            Some(p) => {
                let list = out.entry(volume).or_default();
                if !list.contains(&p) {
                    list.push(p);
                }
            }
            None if !seg.lv_health.is_empty() => {
                lvm_says.insert(volume, seg.lv_health.clone());
            }
            None => {}
        }
    }
    for (volume, health) in lvm_says {
        out.entry(volume).or_insert_with(|| {
            vec![DiskProblem {
                disk: String::new(),
                message: format!("lvm2 reports the logical volume as {health}"),
            }]
        });
    }
    out
}

/// One line for a VolumeCondition or a LogicalVolume condition.
pub fn message(problems: &[DiskProblem]) -> String {
    problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::lvm::naming::volume_tag;

    fn seg(slot: &str, missing: bool, volume: &str, health: &str) -> PvSegment {
        PvSegment {
            device: (!missing).then(|| PathBuf::from(format!("/dev/{slot}"))),
            pv_uuid: format!("uuid-{slot}"),
            vg: "strata-nvme".into(),
            pv_tags: vec![
                crate::lvm::OWNER_TAG.into(),
                format!("strata.io/slot={}", crate::lvm::naming::escape(slot)),
            ],
            pv_missing: missing,
            lv: volume.into(),
            lv_tags: vec![crate::lvm::OWNER_TAG.into(), volume_tag(volume).unwrap()],
            lv_health: health.into(),
        }
    }

    #[test]
    fn only_volumes_on_the_missing_disk_are_abnormal() {
        let segs = [
            seg("pci-a", true, "pvc-on-a", "partial"),
            seg("pci-b", false, "pvc-on-b", ""),
            // a volume spanning both disks
            seg("pci-a", true, "pvc-both", "partial"),
            seg("pci-b", false, "pvc-both", "partial"),
        ];
        let out = volume_problems(&segs, &BTreeMap::new());
        assert_eq!(out.keys().collect::<Vec<_>>(), vec!["pvc-both", "pvc-on-a"]);
        assert_eq!(
            message(&out["pvc-on-a"]),
            "disk in slot pci-a (PV uuid-pci-a) is missing"
        );
        assert_eq!(out["pvc-both"].len(), 1);
        assert_eq!(out["pvc-both"][0].disk, "pci-a");
    }

    #[test]
    fn volumes_on_a_failing_disk_carry_its_evidence() {
        let segs = [
            seg("pci-a", false, "pvc-on-a", ""),
            seg("pci-b", false, "pvc-on-b", ""),
        ];
        let failing = BTreeMap::from([(
            "pci-b".to_string(),
            "kernel device state is offline".to_string(),
        )]);
        let out = volume_problems(&segs, &failing);
        assert_eq!(out.len(), 1);
        assert_eq!(
            message(&out["pvc-on-b"]),
            "disk in slot pci-b is failing: kernel device state is offline"
        );
    }

    #[test]
    fn lvm_health_alone_makes_a_volume_abnormal_and_untagged_lvs_are_skipped() {
        let mut foreign = seg("pci-a", true, "x", "partial");
        foreign.lv_tags.clear();
        let segs = [seg("pci-a", false, "pvc-a", "refresh needed"), foreign];
        let out = volume_problems(&segs, &BTreeMap::new());
        assert_eq!(out.len(), 1);
        assert_eq!(
            message(&out["pvc-a"]),
            "lvm2 reports the logical volume as refresh needed"
        );
    }
}
