//! Which disks hold which volume, for the per-volume health verdict: the PV segments of a VG
//! (`pvs --segments`) and, when the VG has hidden sub-LVs (a thin pool's `[<pool>_tdata]` and
//! `[<pool>_tmeta]`), how LVs hang together (`lvs -a`: each sub-LV's parent, each thin LV's
//! pool). A thin volume has no segment of its own: its data lives in the pool's sub-LVs, so it
//! is on whatever disks they are on. Read only when a VG misses a PV or a disk is failing.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::{Result, Subject};
use super::report::PvSegment;
use super::runner::LvmRunner;
use super::{Lvm, name_arg};

/// Fields asked of `lvs -a` for [`LvLink`]s.
pub const LV_LINK_FIELDS: &str = "lv_name,lv_parent,pool_lv,lv_tags,lv_health_status";

/// How one LV (visible or hidden) hangs on the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvLink {
    /// The LV's name without lvm2's brackets around a hidden LV (`strata_thinpool_tdata`).
    pub lv: String,
    /// The LV this one is a part of (a pool's data or metadata sub-LV), else empty.
    pub parent: String,
    /// The thin pool of a thin LV, else empty.
    pub pool: String,
    pub tags: Vec<String>,
    /// lvm2's `lv_health_status`; empty when healthy.
    pub health: String,
}

/// A VG's segments and LV links, as [`crate::health::volume_problems`] reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VgLayout {
    pub segments: Vec<PvSegment>,
    /// Empty when no segment belongs to a hidden LV (no thin pool: `lvs -a` is not run).
    pub links: Vec<LvLink>,
}

impl VgLayout {
    /// Each linked LV → the LV it is a part of (empty for a top LV).
    pub fn parents(&self) -> BTreeMap<&str, &str> {
        self.links
            .iter()
            .map(|l| (l.lv.as_str(), l.parent.as_str()))
            .collect()
    }
}

/// The top LV a (hidden) LV is part of: `[pool_tdata]` → `pool` (bounded: links form no cycle,
/// but a malformed report must not hang the agent).
pub fn top_lv<'a>(lv: &'a str, parents: &BTreeMap<&'a str, &'a str>) -> &'a str {
    let mut at = lv;
    for _ in 0..8 {
        match parents.get(at) {
            Some(p) if !p.is_empty() => at = p,
            _ => break,
        }
    }
    at
}

/// An LV name without the brackets lvm2 puts around a hidden LV's.
pub fn bare_lv_name(name: &str) -> &str {
    name.trim_start_matches('[').trim_end_matches(']')
}

#[derive(Deserialize)]
struct RawLink {
    lv_name: String,
    #[serde(default)]
    lv_parent: String,
    #[serde(default)]
    pool_lv: String,
    #[serde(default)]
    lv_tags: String,
    #[serde(default)]
    lv_health_status: String,
}

/// Parses an `lvs -a` report made with [`LV_LINK_FIELDS`].
pub fn parse_lv_links(command: &str, json: &str) -> Result<Vec<LvLink>> {
    let rows: Vec<RawLink> = super::report::rows(command, json)?;
    Ok(rows
        .into_iter()
        .map(|r| LvLink {
            lv: bare_lv_name(&r.lv_name).to_owned(),
            parent: bare_lv_name(&r.lv_parent).to_owned(),
            pool: bare_lv_name(&r.pool_lv).to_owned(),
            tags: super::report::tags(&r.lv_tags),
            health: r.lv_health_status,
        })
        .collect())
}

impl<R: LvmRunner> Lvm<R> {
    /// The layout of `vg`: `pvs --segments`, then `lvs -a` only when a segment belongs to a
    /// hidden LV.
    pub async fn vg_layout(&self, vg: &str) -> Result<VgLayout> {
        let segments = self.pv_segments(Some(vg)).await?;
        if !segments.iter().any(|s| s.lv.starts_with('[')) {
            return Ok(VgLayout {
                segments,
                links: Vec::new(),
            });
        }
        let mut args = self.report("lvs", LV_LINK_FIELDS);
        args.insert(1, "-a".into());
        args.push(name_arg(vg)?);
        let out = self.run_ok(args, Subject::Vg(vg), 0).await?;
        Ok(VgLayout {
            segments,
            links: parse_lv_links("lvs -a", &out.stdout)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::{FakeRunner, LvmOptions, Reply};

    fn fixture(name: &str) -> String {
        let path = format!("{}/src/lvm/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn sub_lvs_of_sub_lvs_resolve_to_their_pool() {
        // a pool whose data sub-LV is itself made of parts (e.g. raid images)
        let parents =
            BTreeMap::from([("p_tdata_rimage_0", "p_tdata"), ("p_tdata", "p"), ("p", "")]);
        assert_eq!(top_lv("p_tdata_rimage_0", &parents), "p");
        assert_eq!(top_lv("other", &parents), "other");
        let cycle = BTreeMap::from([("a", "b"), ("b", "a")]);
        let _ = top_lv("a", &cycle); // terminates
    }

    #[test]
    fn parses_captured_links_of_a_thin_pool() {
        let links = parse_lv_links("lvs -a", &fixture("lvs_links_thin.json")).unwrap();
        let by = |n: &str| links.iter().find(|l| l.lv == n).unwrap().clone();
        assert_eq!(by("strata_thinpool_tdata").parent, "strata_thinpool");
        assert_eq!(by("strata_thinpool_tmeta").parent, "strata_thinpool");
        let thin = by("pvc-thin");
        assert_eq!(thin.pool, "strata_thinpool");
        assert!(thin.tags.iter().any(|t| t == "strata.io/volume=pvc-thin"));
        assert_eq!(by("pvc-linear").pool, "");
    }

    #[tokio::test]
    async fn lvs_a_runs_only_when_a_hidden_lv_holds_extents() {
        let linear_only = r#"{"report":[{"pvseg":[{"pv_name":"/dev/a","pv_uuid":"A","vg_name":"vg","pv_tags":"","pv_missing":"","lv_name":"lin","lv_tags":"","lv_health_status":""}]}]}"#;
        let fake = FakeRunner::scripted()
            .expect(&["pvs", "--segments"], &[], Reply::ok(linear_only))
            .expect(
                &["pvs", "--segments"],
                &[],
                Reply::ok(fixture("pvsegs_thin.json")),
            )
            .expect(
                &["lvs", "-a"],
                &["vg"],
                Reply::ok(fixture("lvs_links_thin.json")),
            );
        let lvm = Lvm::new(fake, LvmOptions::default());
        let plain = lvm.vg_layout("vg").await.unwrap();
        assert_eq!(plain.segments.len(), 1);
        assert!(plain.links.is_empty());
        let thin = lvm.vg_layout("vg").await.unwrap();
        assert!(!thin.links.is_empty());
        lvm.runner().assert_done();
    }
}
