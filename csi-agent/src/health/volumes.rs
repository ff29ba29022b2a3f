//! Per-volume truth: a volume is abnormal only when one of the disks holding its extents is
//! missing or failing (or lvm2 itself reports the LV unhealthy); the other volumes of the same
//! VG stay normal. A thin volume has no extents of its own: it inherits the problems of its
//! pool, i.e. of the disks under the pool's hidden data and metadata sub-LVs. Pure, over a
//! [`VgLayout`] (`pvs --segments` rows, `lvs -a` links) and the failing disks by slot.

use std::collections::BTreeMap;

use crate::claim::Recorded;
use crate::lvm::PvSegment;
use crate::lvm::layout::{LvLink, VgLayout, bare_lv_name, top_lv};
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

/// The problem of the disk under one segment, if it is missing or failing.
fn segment_problem(seg: &PvSegment, failing: &BTreeMap<String, String>) -> Option<DiskProblem> {
    let slot = Recorded::from_tags(&seg.pv_tags).slot;
    if seg.pv_missing {
        return Some(DiskProblem {
            disk: slot.unwrap_or_else(|| seg.pv_uuid.clone()),
            message: format!("disk in {} (PV {}) is missing", disk_name(seg), seg.pv_uuid),
        });
    }
    let slot = slot?;
    let evidence = failing.get(&slot)?;
    Some(DiskProblem {
        message: format!("disk in slot {slot} is failing: {evidence}"),
        disk: slot,
    })
}

fn push_new(list: &mut Vec<DiskProblem>, p: DiskProblem) {
    if !list.contains(&p) {
        list.push(p);
    }
}

/// Volume name (from its volume tag) → the problems of the disks under it. Volumes that do not
/// appear are healthy. `failing` maps slot → evidence. A thin volume (an `lvs -a` link with a
/// pool) has the problems of the disks under its pool's sub-LVs.
pub fn volume_problems(
    layout: &VgLayout,
    failing: &BTreeMap<String, String>,
) -> BTreeMap<String, Vec<DiskProblem>> {
    let mut out: BTreeMap<String, Vec<DiskProblem>> = BTreeMap::new();
    let mut lvm_says: BTreeMap<String, String> = BTreeMap::new();
    let parents = layout.parents();
    // the problems of each top LV (a pool for its sub-LVs' segments)
    let mut by_top: BTreeMap<&str, Vec<DiskProblem>> = BTreeMap::new();
    for seg in &layout.segments {
        let problem = segment_problem(seg, failing);
        if let Some(p) = &problem {
            let top = top_lv(bare_lv_name(&seg.lv), &parents);
            push_new(by_top.entry(top).or_default(), p.clone());
        }
        let Some(volume) = volume_from_tags(seg.lv_tags.iter().map(String::as_str)) else {
            continue;
        };
        match problem {
            Some(p) => push_new(out.entry(volume).or_default(), p),
            None if !seg.lv_health.is_empty() => {
                lvm_says.insert(volume, seg.lv_health.clone());
            }
            None => {}
        }
    }
    for link in layout.links.iter().filter(|l| !l.pool.is_empty()) {
        thin_volume_problems(link, &by_top, &mut out, &mut lvm_says);
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

/// A thin volume inherits its pool's disk problems, named as the pool's.
fn thin_volume_problems(
    link: &LvLink,
    by_top: &BTreeMap<&str, Vec<DiskProblem>>,
    out: &mut BTreeMap<String, Vec<DiskProblem>>,
    lvm_says: &mut BTreeMap<String, String>,
) {
    let Some(volume) = volume_from_tags(link.tags.iter().map(String::as_str)) else {
        return;
    };
    match by_top.get(link.pool.as_str()) {
        Some(problems) => {
            let list = out.entry(volume).or_default();
            for p in problems {
                push_new(
                    list,
                    DiskProblem {
                        disk: p.disk.clone(),
                        message: format!("thin pool {}: {}", link.pool, p.message),
                    },
                );
            }
        }
        None if !link.health.is_empty() => {
            lvm_says.insert(volume, link.health.clone());
        }
        None => {}
    }
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

    fn layout(segs: &[PvSegment]) -> VgLayout {
        VgLayout {
            segments: segs.to_vec(),
            links: Vec::new(),
        }
    }

    fn fixture(name: &str) -> String {
        let path = format!("{}/src/lvm/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Captured from lvm2 (fixtures/thin_vg.metadata restored on two loop devices): slot pci-a
    /// holds `pvc-linear` and lvm2's spare metadata LV, slot pci-b the pool's `_tdata` and
    /// `_tmeta`; `pvc-thin` is on the pool. `missing`: pci-b filtered out.
    fn thin_layout(missing: bool) -> VgLayout {
        let suffix = if missing { "_missing" } else { "" };
        VgLayout {
            segments: crate::lvm::report::parse_pv_segments(
                "pvs --segments",
                &fixture(&format!("pvsegs_thin{suffix}.json")),
            )
            .unwrap(),
            links: crate::lvm::layout::parse_lv_links(
                "lvs -a",
                &fixture(&format!("lvs_links_thin{suffix}.json")),
            )
            .unwrap(),
        }
    }

    #[test]
    fn a_thin_volume_on_a_failing_disk_under_its_pool_is_abnormal() {
        let failing = BTreeMap::from([("pci-b".to_string(), "media errors 3".to_string())]);
        // without the links (the bug): the thin volume has no segment and looks healthy
        let unlinked = VgLayout {
            links: Vec::new(),
            ..thin_layout(false)
        };
        assert!(volume_problems(&unlinked, &failing).is_empty());
        let out = volume_problems(&thin_layout(false), &failing);
        assert_eq!(out.keys().collect::<Vec<_>>(), vec!["pvc-thin"]);
        assert_eq!(
            out["pvc-thin"].len(),
            1,
            "tdata and tmeta on one disk: one problem"
        );
        assert_eq!(out["pvc-thin"][0].disk, "pci-b");
        assert_eq!(
            message(&out["pvc-thin"]),
            "thin pool strata_thinpool: disk in slot pci-b is failing: media errors 3"
        );
    }

    #[test]
    fn a_thin_volume_on_a_missing_disk_under_its_pool_is_abnormal_and_names_it() {
        let out = volume_problems(&thin_layout(true), &BTreeMap::new());
        assert_eq!(out.keys().collect::<Vec<_>>(), vec!["pvc-thin"]);
        assert_eq!(
            message(&out["pvc-thin"]),
            "thin pool strata_thinpool: disk in slot pci-b (PV \
             cLhvcE-kaNe-gl34-nw70-L2An-7RfB-DTDOp1) is missing"
        );
    }

    #[test]
    fn a_thin_volume_on_a_healthy_pool_stays_normal_while_another_disk_fails() {
        // pci-a holds the linear volume and lvm2's spare metadata LV, not the pool
        let failing = BTreeMap::from([("pci-a".to_string(), "device state offline".to_string())]);
        let out = volume_problems(&thin_layout(false), &failing);
        assert_eq!(out.keys().collect::<Vec<_>>(), vec!["pvc-linear"]);
        assert_eq!(out["pvc-linear"][0].disk, "pci-a");
    }

    #[test]
    fn a_thin_volume_lvm2_reports_unhealthy_is_abnormal() {
        let mut layout = thin_layout(false);
        for l in &mut layout.links {
            if l.lv == "pvc-thin" {
                l.health = "failed".into();
            }
        }
        let out = volume_problems(&layout, &BTreeMap::new());
        assert_eq!(
            message(&out["pvc-thin"]),
            "lvm2 reports the logical volume as failed"
        );
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
        let out = volume_problems(&layout(&segs), &BTreeMap::new());
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
        let out = volume_problems(&layout(&segs), &failing);
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
        let out = volume_problems(&layout(&segs), &BTreeMap::new());
        assert_eq!(out.len(), 1);
        assert_eq!(
            message(&out["pvc-a"]),
            "lvm2 reports the logical volume as refresh needed"
        );
    }
}
