//! Typed `pvs`/`vgs`/`lvs` reports: the exact field lists asked of lvm2 and the parsing of its
//! `--reportformat json --units b --nosuffix` output (every value a string, sizes in bytes,
//! tags comma-separated) into [`Pv`], [`Vg`] and [`Lv`]. Tested on fixtures captured from lvm2.

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::{LvmError, Result};
use super::naming::{self, OWNER_TAG, PvcRef};

/// Fields asked of `pvs`.
pub const PV_FIELDS: &str = "pv_name,pv_uuid,vg_name,pv_size,pv_free,pv_tags,pv_missing,vg_tags";
/// Fields asked of `vgs`.
pub const VG_FIELDS: &str = "vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_extent_count,\
vg_free_count,pv_count,lv_count,vg_missing_pv_count,vg_tags";
/// Fields asked of `lvs`.
pub const LV_FIELDS: &str = "lv_name,vg_name,lv_uuid,lv_size,lv_tags,lv_active,lv_attr";

/// Fields asked of `pvs --segments`: which LV uses which PV (the per-volume truth of a lost or
/// failing disk), with lvm2's own health verdict of the LV.
pub const PVSEG_FIELDS: &str =
    "pv_name,pv_uuid,vg_name,pv_tags,pv_missing,lv_name,lv_tags,lv_health_status";

/// The common options of every report command.
pub fn report_args(subcommand: &str, fields: &str) -> Vec<String> {
    [
        subcommand,
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        fields,
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// A physical volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pv {
    /// Device path; `None` for a missing PV (lvm2 shows `[unknown]`).
    pub device: Option<PathBuf>,
    pub uuid: String,
    /// The VG it belongs to; `None` for an orphan PV.
    pub vg: Option<String>,
    pub size_bytes: u64,
    pub free_bytes: u64,
    pub tags: Vec<String>,
    /// lvm2 knows the PV from the VG metadata but cannot find its device.
    pub missing: bool,
    /// Carries the owner tag itself or belongs to a VG that does.
    pub owned: bool,
}

/// A volume group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vg {
    pub name: String,
    pub uuid: String,
    pub size_bytes: u64,
    pub free_bytes: u64,
    pub extent_size: u64,
    pub extent_count: u64,
    pub free_extents: u64,
    pub pv_count: u64,
    pub lv_count: u64,
    pub missing_pv_count: u64,
    pub tags: Vec<String>,
    /// Carries the owner tag.
    pub owned: bool,
}

/// Whether an LV is active (has a device node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Active,
    Inactive,
    /// lvm2 cannot tell (activation disabled, as in host tests without device-mapper).
    Unknown,
}

/// A logical volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lv {
    pub vg: String,
    pub name: String,
    /// `None` when the value was built from a create that did not re-read lvm2.
    pub uuid: Option<String>,
    pub size_bytes: u64,
    pub tags: Vec<String>,
    pub active: Activation,
    /// The CSI volume name from the volume tag, if any.
    pub volume: Option<String>,
    /// The PVC reference from the PVC tag, if any.
    pub pvc: Option<PvcRef>,
    /// Carries the owner tag (the LV itself, not only its VG).
    pub owned: bool,
    /// `lv_attr`'s sixth character is `o`: the device-mapper device is open (its open count,
    /// as lvm2 read it from the kernel, is above zero).
    pub open: bool,
}

impl Lv {
    /// The device path `/dev/<vg>/<lv>` (present while the LV is active).
    pub fn device_path(&self) -> PathBuf {
        device_path(&self.vg, &self.name)
    }
}

/// The device path of an LV: `/dev/<vg>/<lv>`.
pub fn device_path(vg: &str, lv: &str) -> PathBuf {
    PathBuf::from(format!("/dev/{vg}/{lv}"))
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<Section<T>>,
}

#[derive(Deserialize)]
struct Section<T> {
    #[serde(
        default = "Vec::new",
        alias = "pv",
        alias = "vg",
        alias = "lv",
        alias = "pvseg"
    )]
    rows: Vec<T>,
}

/// One segment of a PV that an LV uses (free segments are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvSegment {
    /// Device path; `None` for a missing PV.
    pub device: Option<PathBuf>,
    pub pv_uuid: String,
    pub vg: String,
    pub pv_tags: Vec<String>,
    pub pv_missing: bool,
    pub lv: String,
    pub lv_tags: Vec<String>,
    /// lvm2's `lv_health_status` (`partial`, `refresh needed`, ...); empty when healthy.
    pub lv_health: String,
}

#[derive(Deserialize)]
struct RawPvSeg {
    pv_name: String,
    pv_uuid: String,
    vg_name: String,
    pv_tags: String,
    pv_missing: String,
    lv_name: String,
    lv_tags: String,
    #[serde(default)]
    lv_health_status: String,
}

/// Parses a `pvs --segments` report made with [`PVSEG_FIELDS`].
pub fn parse_pv_segments(command: &str, json: &str) -> Result<Vec<PvSegment>> {
    Ok(rows::<RawPvSeg>(command, json)?
        .into_iter()
        .filter(|r| !r.lv_name.is_empty())
        .map(|r| PvSegment {
            pv_missing: !r.pv_missing.is_empty() || r.pv_name == "[unknown]",
            device: (!r.pv_name.is_empty() && r.pv_name != "[unknown]")
                .then(|| PathBuf::from(&r.pv_name)),
            pv_uuid: r.pv_uuid,
            vg: r.vg_name,
            pv_tags: tags(&r.pv_tags),
            lv: r.lv_name,
            lv_tags: tags(&r.lv_tags),
            lv_health: r.lv_health_status,
        })
        .collect())
}

#[derive(Deserialize)]
struct RawPv {
    pv_name: String,
    pv_uuid: String,
    vg_name: String,
    pv_size: String,
    pv_free: String,
    pv_tags: String,
    pv_missing: String,
    vg_tags: String,
}

#[derive(Deserialize)]
struct RawVg {
    vg_name: String,
    vg_uuid: String,
    vg_size: String,
    vg_free: String,
    vg_extent_size: String,
    vg_extent_count: String,
    vg_free_count: String,
    pv_count: String,
    lv_count: String,
    vg_missing_pv_count: String,
    vg_tags: String,
}

#[derive(Deserialize)]
struct RawLv {
    lv_name: String,
    vg_name: String,
    lv_uuid: String,
    lv_size: String,
    lv_tags: String,
    lv_active: String,
    lv_attr: String,
}

/// The rows of an lvm2 JSON report (`--reportformat json`), whatever the report's kind: the
/// one envelope parser every report of the LVM layer goes through.
pub(super) fn rows<T: DeserializeOwned>(command: &str, json: &str) -> Result<Vec<T>> {
    let report: Report<T> = serde_json::from_str(json).map_err(|e| LvmError::Parse {
        command: command.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(report.report.into_iter().flat_map(|s| s.rows).collect())
}

fn num(command: &str, field: &str, value: &str) -> Result<u64> {
    value.trim().parse().map_err(|_| LvmError::Parse {
        command: command.to_owned(),
        detail: format!("{field} = {value:?} is not a whole number of bytes"),
    })
}

/// The tags of a report field (`a,b,c`).
pub(super) fn tags(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn has_owner(tags: &[String]) -> bool {
    tags.iter().any(|t| t == OWNER_TAG)
}

/// Parses a `pvs` report made with [`PV_FIELDS`].
pub fn parse_pvs(command: &str, json: &str) -> Result<Vec<Pv>> {
    rows::<RawPv>(command, json)?
        .into_iter()
        .map(|r| {
            let tags = tags(&r.pv_tags);
            let owned = has_owner(&tags) || has_owner(&self::tags(&r.vg_tags));
            let missing = !r.pv_missing.is_empty() || r.pv_name == "[unknown]";
            Ok(Pv {
                device: (!r.pv_name.is_empty() && r.pv_name != "[unknown]")
                    .then(|| PathBuf::from(&r.pv_name)),
                uuid: r.pv_uuid,
                vg: (!r.vg_name.is_empty()).then_some(r.vg_name),
                size_bytes: num(command, "pv_size", &r.pv_size)?,
                free_bytes: num(command, "pv_free", &r.pv_free)?,
                tags,
                missing,
                owned,
            })
        })
        .collect()
}

/// Parses a `vgs` report made with [`VG_FIELDS`].
pub fn parse_vgs(command: &str, json: &str) -> Result<Vec<Vg>> {
    rows::<RawVg>(command, json)?
        .into_iter()
        .map(|r| {
            let tags = tags(&r.vg_tags);
            Ok(Vg {
                owned: has_owner(&tags),
                name: r.vg_name,
                uuid: r.vg_uuid,
                size_bytes: num(command, "vg_size", &r.vg_size)?,
                free_bytes: num(command, "vg_free", &r.vg_free)?,
                extent_size: num(command, "vg_extent_size", &r.vg_extent_size)?,
                extent_count: num(command, "vg_extent_count", &r.vg_extent_count)?,
                free_extents: num(command, "vg_free_count", &r.vg_free_count)?,
                pv_count: num(command, "pv_count", &r.pv_count)?,
                lv_count: num(command, "lv_count", &r.lv_count)?,
                missing_pv_count: num(command, "vg_missing_pv_count", &r.vg_missing_pv_count)?,
                tags,
            })
        })
        .collect()
}

/// Parses an `lvs` report made with [`LV_FIELDS`].
pub fn parse_lvs(command: &str, json: &str) -> Result<Vec<Lv>> {
    rows::<RawLv>(command, json)?
        .into_iter()
        .map(|r| {
            let tags = tags(&r.lv_tags);
            let active = match r.lv_active.as_str() {
                "active" => Activation::Active,
                "unknown" => Activation::Unknown,
                // lv_attr's fifth character is `a` for an active LV.
                "" if r.lv_attr.chars().nth(4) == Some('a') => Activation::Active,
                _ => Activation::Inactive,
            };
            Ok(Lv {
                volume: naming::volume_from_tags(tags.iter().map(String::as_str)),
                pvc: naming::pvc_from_tags(tags.iter().map(String::as_str)),
                owned: has_owner(&tags),
                vg: r.vg_name,
                name: r.lv_name,
                uuid: Some(r.lv_uuid),
                size_bytes: num(command, "lv_size", &r.lv_size)?,
                open: r.lv_attr.chars().nth(5) == Some('o'),
                tags,
                active,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/src/lvm/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn parses_captured_pvs_with_orphan_tagged_and_missing() {
        let pvs = parse_pvs("pvs", &fixture("pvs.json")).unwrap();
        let orphan = pvs.iter().find(|p| p.vg.is_none()).expect("an orphan PV");
        assert!(!orphan.owned && !orphan.missing && orphan.device.is_some());
        assert_eq!(orphan.size_bytes, orphan.free_bytes);
        let strata: Vec<_> = pvs.iter().filter(|p| p.owned).collect();
        assert!(!strata.is_empty());
        assert!(strata.iter().all(|p| p.vg.as_deref() == Some("strata-ssd")));
        assert!(
            pvs.iter()
                .any(|p| p.vg.as_deref() == Some("foreign") && !p.owned)
        );
        assert!(pvs.iter().all(|p| p.uuid.len() == 38));
    }

    #[test]
    fn parses_captured_degraded_vg_and_missing_pv() {
        let vgs = parse_vgs("vgs", &fixture("vgs_degraded.json")).unwrap();
        assert_eq!(vgs.len(), 1);
        let vg = &vgs[0];
        assert!(vg.owned);
        assert_eq!(vg.missing_pv_count, 1);
        assert_eq!(vg.pv_count, 2);
        let pvs = parse_pvs("pvs", &fixture("pvs_degraded.json")).unwrap();
        let missing: Vec<_> = pvs.iter().filter(|p| p.missing).collect();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].device, None);
        assert!(pvs.iter().any(|p| !p.missing && p.device.is_some()));
    }

    #[test]
    fn parses_captured_vgs_sizes_in_bytes() {
        let vgs = parse_vgs("vgs", &fixture("vgs.json")).unwrap();
        let strata = vgs.iter().find(|v| v.name == "strata-ssd").unwrap();
        assert!(strata.owned);
        assert_eq!(strata.extent_size, 4 << 20);
        assert_eq!(strata.size_bytes, strata.extent_count * strata.extent_size);
        assert_eq!(strata.free_bytes, strata.free_extents * strata.extent_size);
        assert_eq!(strata.missing_pv_count, 0);
        let foreign = vgs.iter().find(|v| v.name == "foreign").unwrap();
        assert!(!foreign.owned);
    }

    #[test]
    fn parses_captured_lvs_with_tags() {
        let lvs = parse_lvs("lvs", &fixture("lvs.json")).unwrap();
        let ours = lvs
            .iter()
            .find(|l| l.volume.as_deref() == Some("pvc-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"))
            .expect("the Strata LV");
        assert!(ours.owned);
        assert_eq!(ours.name, "pvc-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
        assert_eq!(ours.size_bytes, 12 << 20);
        assert_eq!(ours.active, Activation::Unknown);
        assert_eq!(ours.pvc.as_ref().unwrap().namespace, "default");
        assert_eq!(
            ours.device_path(),
            PathBuf::from("/dev/strata-ssd/pvc-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        );
        let hashed = lvs
            .iter()
            .find(|l| l.name.starts_with("strata_"))
            .expect("a hash-named LV");
        assert_eq!(hashed.volume.as_deref(), Some("Weird_Name/With Spaces"));
        let foreign = lvs.iter().find(|l| l.vg == "foreign").unwrap();
        assert!(!foreign.owned && foreign.volume.is_none());
    }

    #[test]
    fn reads_activation_from_active_or_attr() {
        let json = r#"{"report":[{"lv":[
            {"lv_name":"a","vg_name":"v","lv_uuid":"u","lv_size":"4194304","lv_tags":"","lv_active":"active","lv_attr":"-wi-a-----"},
            {"lv_name":"b","vg_name":"v","lv_uuid":"u","lv_size":"4194304","lv_tags":"","lv_active":"","lv_attr":"-wi-------"}
        ]}]}"#;
        let lvs = parse_lvs("lvs", json).unwrap();
        assert_eq!(lvs[0].active, Activation::Active);
        assert_eq!(lvs[1].active, Activation::Inactive);
        assert!(!lvs[0].open && !lvs[1].open);
    }

    #[test]
    fn reads_the_open_bit_of_lv_attr() {
        let json = r#"{"report":[{"lv":[
            {"lv_name":"a","vg_name":"v","lv_uuid":"u","lv_size":"4194304","lv_tags":"","lv_active":"active","lv_attr":"-wi-ao----"}
        ]}]}"#;
        assert!(parse_lvs("lvs", json).unwrap()[0].open);
    }

    #[test]
    fn empty_and_malformed_reports() {
        assert!(
            parse_lvs("lvs", r#"{"report":[{"lv":[]}]}"#)
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            parse_lvs("lvs", "not json"),
            Err(LvmError::Parse { .. })
        ));
        let bad_size = r#"{"report":[{"lv":[{"lv_name":"a","vg_name":"v","lv_uuid":"u","lv_size":"1.5g","lv_tags":"","lv_active":"","lv_attr":"-wi-------"}]}]}"#;
        assert!(matches!(
            parse_lvs("lvs", bad_size),
            Err(LvmError::Parse { .. })
        ));
    }
}
