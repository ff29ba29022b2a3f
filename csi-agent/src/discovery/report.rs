//! The output of `csi-agent discover`: `{"disks":[...]}` with NodeStorage's `status.disks` field
//! names (tools read it; keep it stable), or a table for people. Both render
//! `csi_api::crd::DiskStatus`, so the CLI and the CRD never drift apart.

use csi_api::crd::{DiskState, DiskStatus};
use serde::{Deserialize, Serialize};

use super::{Found, Verdict};

/// The JSON document printed by `discover --json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    pub disks: Vec<DiskStatus>,
}

impl Found {
    /// The disk as NodeStorage reports it, before any claim decision: Claimed (a Strata PV),
    /// Available (eligible) or Rejected (with every reason).
    pub fn status(&self) -> DiskStatus {
        let (state, volume_group) = match &self.verdict {
            Verdict::Eligible => (DiskState::Available, None),
            Verdict::StrataPv { vg, .. } => (DiskState::Claimed, vg.clone()),
            Verdict::Refused(_) => (DiskState::Rejected, None),
        };
        DiskStatus {
            slot: self.disk.slot.clone(),
            kernel_name: self.disk.kernel_name.clone(),
            media: self.disk.media,
            size_bytes: self.disk.size_bytes,
            model: self.disk.model.clone(),
            serial: self.disk.serial.clone(),
            wwn: self.disk.wwn.clone(),
            state,
            reason: self.reason(),
            volume_group,
        }
    }
}

/// `{"disks":[...]}`, pretty-printed, with a final newline.
pub fn render_json(disks: &[DiskStatus]) -> String {
    let doc = DiskReport {
        disks: disks.to_vec(),
    };
    // plain data with string keys: serialisation cannot fail
    let mut s =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":{e:?}}}"));
    s.push('\n');
    s
}

/// A table: slot, media, size, state, kernel name, serial, reason; then the notes.
pub fn render_table(disks: &[DiskStatus], notes: &[String]) -> String {
    let header = [
        "SLOT", "MEDIA", "SIZE", "STATE", "KNAME", "SERIAL", "REASON",
    ];
    let rows: Vec<[String; 7]> = disks
        .iter()
        .map(|d| {
            let reason = match (&d.volume_group, d.reason.is_empty()) {
                (Some(vg), true) => format!("in {vg}"),
                (Some(vg), false) => format!("in {vg}; {}", d.reason),
                (None, _) => d.reason.clone(),
            };
            [
                if d.slot.is_empty() {
                    "-".to_owned()
                } else {
                    d.slot.clone()
                },
                d.media.to_string(),
                human_size(d.size_bytes),
                format!("{:?}", d.state),
                d.kernel_name.clone(),
                if d.serial.is_empty() {
                    "-".to_owned()
                } else {
                    d.serial.clone()
                },
                reason,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    if disks.is_empty() {
        out.push_str("(no disks found)\n");
    }
    for note in notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

/// Bytes in binary units with one decimal (`8.0G`, `512.0M`, `100B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_api::names::DeviceClass;

    fn disk(slot: &str, state: DiskState, reason: &str, vg: Option<&str>) -> DiskStatus {
        DiskStatus {
            slot: slot.into(),
            kernel_name: "nvme0n1".into(),
            media: DeviceClass::Nvme,
            size_bytes: 8 << 30,
            model: "QEMU NVMe Ctrl".into(),
            serial: "NVME-A".into(),
            wwn: String::new(),
            state,
            reason: reason.into(),
            volume_group: vg.map(Into::into),
        }
    }

    #[test]
    fn json_uses_node_storage_field_names() {
        let out = render_json(&[disk(
            "pci-0000:00:04.0-nvme-1",
            DiskState::Claimed,
            "",
            Some("strata-nvme"),
        )]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let d = &v["disks"][0];
        for key in [
            "slot",
            "kernelName",
            "media",
            "sizeBytes",
            "model",
            "serial",
            "wwn",
            "state",
            "reason",
            "volumeGroup",
        ] {
            assert!(d.get(key).is_some(), "missing {key} in {out}");
        }
        assert_eq!(d["state"], "Claimed");
        assert_eq!(d["media"], "nvme");
        assert_eq!(d["sizeBytes"], 8u64 << 30);
        let back: DiskReport = serde_json::from_str(&out).unwrap();
        assert_eq!(back.disks.len(), 1);
        assert_eq!(render_json(&[]).trim(), "{\n  \"disks\": []\n}");
    }

    #[test]
    fn table_aligns_columns_and_lists_notes() {
        let out = render_table(
            &[
                disk(
                    "pci-0000:00:04.0-nvme-1",
                    DiskState::Claimed,
                    "",
                    Some("strata-nvme"),
                ),
                disk("", DiskState::Rejected, "has partitions (vda1)", None),
            ],
            &["LVM is unavailable".into()],
        );
        let lines: Vec<_> = out.lines().collect();
        assert!(lines[0].starts_with("SLOT"));
        assert!(lines[1].contains("Claimed") && lines[1].ends_with("in strata-nvme"));
        assert!(lines[2].starts_with("- ") && lines[2].ends_with("has partitions (vda1)"));
        assert_eq!(lines[1].find("nvme  "), lines[0].find("MEDIA"));
        assert_eq!(lines[3], "note: LVM is unavailable");
        assert!(render_table(&[], &[]).contains("no disks found"));
    }

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(human_size(100), "100B");
        assert_eq!(human_size(8 << 30), "8.0G");
        assert_eq!(human_size(1536 << 20), "1.5G");
        assert_eq!(human_size(16 << 40), "16.0T");
    }
}
