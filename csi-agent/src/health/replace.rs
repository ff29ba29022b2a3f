//! `csi-agent replace-disk --slot SLOT [--apply]`: takes a lost disk out of its VG so that the VG
//! is whole again and the new disk in the slot can be claimed. Only a *missing* Strata PV is
//! removed, only once no LV has extents on it (the volumes still on it are listed instead), and
//! only through the LVM layer (`vgreduce --removemissing`, never `--force`). Dry-run by default.

use std::fmt::Write as _;

use crate::claim::Recorded;
use crate::lvm::layout::{VgLayout, bare_lv_name, top_lv};
use crate::lvm::naming::volume_from_tags;
use crate::lvm::{Lvm, LvmError, LvmRunner, Pv};

/// What the command will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplacePlan {
    pub slot: String,
    pub vg: String,
    pub pv_uuid: String,
    /// Other missing PVs of the same VG (without extents) that `vgreduce --removemissing`
    /// removes in the same step.
    pub also_removed: Vec<String>,
}

/// Why the command refuses; nothing was changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("no Strata PV is recorded in slot {0} (see `csi-agent discover` and `pvs -o+tags`)")]
    NoPv(String),
    #[error(
        "the disk in slot {slot} is present (PV {uuid} on {device}); replace-disk only removes a \
         disk that is gone: delete or move its volumes and take it out first"
    )]
    Present {
        slot: String,
        uuid: String,
        device: String,
    },
    #[error(
        "the lost disk in slot {slot} still holds extents of: {}; delete those volumes (their \
         data is gone with the disk) or bring the disk back, then run this again",
        .volumes.join(", ")
    )]
    InUse { slot: String, volumes: Vec<String> },
}

/// Plans the removal of the PV recorded in `slot`; pure. What still holds extents on it is named
/// by volume; a thin pool's hidden sub-LV by its pool (`thin pool NAME`) and the thin volumes on
/// that pool (they have no extents of their own: their data is in the pool).
pub fn plan(slot: &str, pvs: &[Pv], layout: &VgLayout) -> Result<ReplacePlan, Refusal> {
    let pv = pvs
        .iter()
        .filter(|p| p.owned)
        .find(|p| Recorded::from_tags(&p.tags).slot.as_deref() == Some(slot))
        .ok_or_else(|| Refusal::NoPv(slot.to_owned()))?;
    if !pv.missing {
        return Err(Refusal::Present {
            slot: slot.to_owned(),
            uuid: pv.uuid.clone(),
            device: pv
                .device
                .as_ref()
                .map_or_else(|| "?".into(), |d| d.display().to_string()),
        });
    }
    let vg = pv.vg.clone().unwrap_or_default();
    let parents = layout.parents();
    let mut volumes: Vec<String> = Vec::new();
    for s in layout
        .segments
        .iter()
        .filter(|s| s.pv_uuid == pv.uuid || (s.vg == vg && s.pv_missing))
    {
        if let Some(v) = volume_from_tags(s.lv_tags.iter().map(String::as_str)) {
            volumes.push(v);
            continue;
        }
        let top = top_lv(bare_lv_name(&s.lv), &parents);
        let thin: Vec<String> = layout
            .links
            .iter()
            .filter(|l| l.pool == top)
            .map(|l| volume_from_tags(l.tags.iter().map(String::as_str)).unwrap_or(l.lv.clone()))
            .collect();
        if thin.is_empty() && top == bare_lv_name(&s.lv) {
            volumes.push(top.to_owned());
        } else {
            volumes.push(format!("thin pool {top}"));
            volumes.extend(thin);
        }
    }
    volumes.sort();
    volumes.dedup();
    if !volumes.is_empty() {
        return Err(Refusal::InUse {
            slot: slot.to_owned(),
            volumes,
        });
    }
    let also_removed = pvs
        .iter()
        .filter(|p| p.missing && p.vg.as_deref() == Some(&vg) && p.uuid != pv.uuid)
        .map(|p| p.uuid.clone())
        .collect();
    Ok(ReplacePlan {
        slot: slot.to_owned(),
        vg,
        pv_uuid: pv.uuid.clone(),
        also_removed,
    })
}

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Lvm(#[from] LvmError),
}

/// Plans, and with `apply` removes the missing PV. Returns the report for stdout.
pub async fn replace_disk<R: LvmRunner>(
    lvm: &Lvm<R>,
    slot: &str,
    apply: bool,
) -> Result<String, ReplaceError> {
    let pvs = lvm.pvs().await?;
    let vg = pvs
        .iter()
        .find(|p| p.owned && Recorded::from_tags(&p.tags).slot.as_deref() == Some(slot))
        .and_then(|p| p.vg.clone());
    let layout = match &vg {
        Some(vg) => lvm.vg_layout(vg).await?,
        None => VgLayout::default(),
    };
    let plan = plan(slot, &pvs, &layout)?;
    let mut out = format!(
        "slot {}: PV {} of {} is missing and holds no volume\n",
        plan.slot, plan.pv_uuid, plan.vg
    );
    if !plan.also_removed.is_empty() {
        let _ = writeln!(
            out,
            "also removed (missing, unused, same VG): {}",
            plan.also_removed.join(", ")
        );
    }
    if !apply {
        let _ = writeln!(
            out,
            "dry run: would run `vgreduce --removemissing {}`; add --apply to do it",
            plan.vg
        );
        return Ok(out);
    }
    let removed = lvm.remove_missing_pvs(&plan.vg).await?;
    let _ = writeln!(
        out,
        "removed {} missing PV(s) from {}: {}; the VG is whole again and the new disk in the slot \
         can be claimed",
        removed.len(),
        plan.vg,
        removed.join(", ")
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::lvm::naming::{escape, volume_tag};
    use crate::lvm::{FakeRunner, Invocation, LvmOptions, OWNER_TAG, PvSegment, Reply};

    fn pv(uuid: &str, slot: &str, missing: bool) -> Pv {
        Pv {
            device: (!missing).then(|| PathBuf::from("/dev/sdb")),
            uuid: uuid.into(),
            vg: Some("strata-ssd".into()),
            size_bytes: 4 << 30,
            free_bytes: 0,
            tags: vec![OWNER_TAG.into(), format!("strata.io/slot={}", escape(slot))],
            missing,
            owned: true,
        }
    }

    fn layout(segments: &[PvSegment]) -> VgLayout {
        VgLayout {
            segments: segments.to_vec(),
            links: Vec::new(),
        }
    }

    fn seg(uuid: &str, missing: bool, volume: &str) -> PvSegment {
        PvSegment {
            device: None,
            pv_uuid: uuid.into(),
            vg: "strata-ssd".into(),
            pv_tags: vec![],
            pv_missing: missing,
            lv: volume.into(),
            lv_tags: vec![OWNER_TAG.into(), volume_tag(volume).unwrap()],
            lv_health: String::new(),
        }
    }

    #[test]
    fn refuses_unknown_present_and_used_disks() {
        let pvs = [pv("A", "slot-a", true), pv("B", "slot-b", false)];
        assert_eq!(
            plan("slot-x", &pvs, &VgLayout::default()),
            Err(Refusal::NoPv("slot-x".into()))
        );
        assert!(matches!(
            plan("slot-b", &pvs, &VgLayout::default()),
            Err(Refusal::Present { .. })
        ));
        let segs = [seg("A", true, "pvc-1"), seg("B", false, "pvc-2")];
        assert_eq!(
            plan("slot-a", &pvs, &layout(&segs)),
            Err(Refusal::InUse {
                slot: "slot-a".into(),
                volumes: vec!["pvc-1".into()]
            })
        );
    }

    #[test]
    fn a_lost_disk_under_a_thin_pool_names_the_pool_and_its_thin_volumes() {
        use crate::lvm::layout::LvLink;
        let pvs = [pv("A", "slot-a", true), pv("B", "slot-b", false)];
        let hidden = |lv: &str, uuid: &str, missing: bool| PvSegment {
            lv: format!("[{lv}]"),
            lv_tags: vec![],
            ..seg(uuid, missing, "x")
        };
        let link = |lv: &str, parent: &str, pool: &str, volume: Option<&str>| LvLink {
            lv: lv.into(),
            parent: parent.into(),
            pool: pool.into(),
            tags: volume
                .map(|v| vec![OWNER_TAG.into(), volume_tag(v).unwrap()])
                .unwrap_or_default(),
            health: String::new(),
        };
        let layout = VgLayout {
            segments: vec![
                hidden("pool_tdata", "A", true),
                hidden("pool_tmeta", "A", true),
                hidden("lvol0_pmspare", "B", false),
                seg("B", false, "pvc-linear"),
            ],
            links: vec![
                link("pool", "", "", None),
                link("pool_tdata", "pool", "", None),
                link("pool_tmeta", "pool", "", None),
                link("lvol0_pmspare", "", "", None),
                link("pvc-thin", "", "pool", Some("pvc-thin")),
                link("pvc-linear", "", "", Some("pvc-linear")),
            ],
        };
        assert_eq!(
            plan("slot-a", &pvs, &layout),
            Err(Refusal::InUse {
                slot: "slot-a".into(),
                volumes: vec!["pvc-thin".into(), "thin pool pool".into()]
            })
        );
    }

    #[test]
    fn plans_the_removal_of_an_unused_lost_disk() {
        let pvs = [
            pv("A", "slot-a", true),
            pv("B", "slot-b", false),
            pv("C", "slot-c", true),
        ];
        let segs = [seg("B", false, "pvc-2")];
        assert_eq!(
            plan("slot-a", &pvs, &layout(&segs)),
            Ok(ReplacePlan {
                slot: "slot-a".into(),
                vg: "strata-ssd".into(),
                pv_uuid: "A".into(),
                also_removed: vec!["C".into()],
            })
        );
    }

    fn fake(segments: &'static str) -> FakeRunner {
        FakeRunner::from_fn(move |inv: &Invocation| {
            let slot = format!("{OWNER_TAG},strata.io/slot=slot-a");
            match inv.subcommand() {
                "pvs" if inv.args.iter().any(|a| a == "--segments") => Reply::ok(segments),
                "pvs" => Reply::ok(format!(
                    r#"{{"report":[{{"pv":[{{"pv_name":"[unknown]","pv_uuid":"A","vg_name":"strata-ssd","pv_size":"4194304","pv_free":"4194304","pv_tags":"{slot}","pv_missing":"missing","vg_tags":"{OWNER_TAG}"}}]}}]}}"#
                )),
                "vgs" => Reply::ok(format!(
                    r#"{{"report":[{{"vg":[{{"vg_name":"strata-ssd","vg_uuid":"U","vg_size":"8388608","vg_free":"8388608","vg_extent_size":"4194304","vg_extent_count":"2","vg_free_count":"2","pv_count":"2","lv_count":"0","vg_missing_pv_count":"1","vg_tags":"{OWNER_TAG}"}}]}}]}}"#
                )),
                "vgreduce" => Reply::ok(""),
                other => Reply::fail(5, format!("unexpected {other}")),
            }
        })
    }

    fn lvm(f: FakeRunner) -> Lvm<FakeRunner> {
        Lvm::new(
            f,
            LvmOptions {
                activate: false,
                ..LvmOptions::default()
            },
        )
    }

    #[tokio::test]
    async fn dry_run_changes_nothing_and_apply_runs_vgreduce_removemissing() {
        let empty = r#"{"report":[{"pvseg":[]}]}"#;
        let l = lvm(fake(empty));
        let out = replace_disk(&l, "slot-a", false).await.unwrap();
        assert!(out.contains("dry run"), "{out}");
        assert!(l.runner().calls_of("vgreduce").is_empty());

        let l = lvm(fake(empty));
        let out = replace_disk(&l, "slot-a", true).await.unwrap();
        assert!(
            out.contains("removed 1 missing PV(s) from strata-ssd: A"),
            "{out}"
        );
        let calls = l.runner().calls_of("vgreduce");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].args[1..], ["--removemissing", "strata-ssd"]);
    }

    #[tokio::test]
    async fn apply_refuses_while_a_volume_is_on_the_lost_disk() {
        let used = r#"{"report":[{"pvseg":[{"pv_name":"[unknown]","pv_uuid":"A","vg_name":"strata-ssd","pv_tags":"","pv_missing":"missing","lv_name":"pvc-9","lv_tags":"strata.io/volume=pvc-9","lv_health_status":"partial"}]}]}"#;
        let l = lvm(fake(used));
        let err = replace_disk(&l, "slot-a", true).await.unwrap_err();
        assert!(err.to_string().contains("pvc-9"), "{err}");
        assert!(l.runner().calls_of("vgreduce").is_empty());
    }
}
