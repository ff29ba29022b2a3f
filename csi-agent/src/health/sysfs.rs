//! The kernel's own view of a disk, from sysfs: the SCSI device state (`device/state`: `running`
//! is well, `offline` means the midlayer gave up on it), the SCSI error counter
//! (`device/ioerr_cnt`, commands that completed with an error since boot) and the NVMe controller
//! state (`device/state`: `live` is well). Reading is cheap (three small files per disk).

use std::path::Path;

/// What sysfs says about one disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelView {
    /// `device/state`, trimmed.
    pub state: Option<String>,
    /// `device/ioerr_cnt` (SCSI only).
    pub ioerr_cnt: Option<u64>,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Parses a counter as sysfs prints it: `0x1f` (SCSI prints hex) or decimal.
pub fn parse_counter(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Reads `<sysfs>/block/<name>/device/{state,ioerr_cnt}`.
pub fn read_view(sysfs: &Path, kernel_name: &str) -> KernelView {
    let device = sysfs.join("block").join(kernel_name).join("device");
    KernelView {
        state: read(&device.join("state")),
        ioerr_cnt: read(&device.join("ioerr_cnt")).and_then(|s| parse_counter(&s)),
    }
}

/// Device states in which the disk is present and serving I/O, or in a passing state that the
/// kernel leaves by itself (a reset, a transport blip).
const WELL: [&str; 7] = [
    "running",
    "live",
    "blocked",
    "quiesce",
    "created",
    "resetting",
    "connecting",
];

impl KernelView {
    /// The evidence of failure: a device state in which the disk does not serve I/O.
    pub fn evidence(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(state) = &self.state
            && !WELL.contains(&state.as_str())
        {
            out.push(format!("kernel device state is {state}"));
        }
        out
    }

    /// Errors the kernel counted since `baseline` (the counter when the agent first saw the disk),
    /// as a note, never as evidence of failure: `ioerr_cnt` also counts every command a healthy
    /// device refuses (an optional discard or WRITE SAME it lacks, SMART pass-through from any
    /// tool such as smartd), which a demo in the node VM showed marking healthy SATA disks
    /// failing. Real failures show as the device state, SMART, or LVM's health of the LV.
    pub fn new_errors(&self, baseline: Option<u64>) -> Option<String> {
        match (self.ioerr_cnt, baseline) {
            (Some(now), Some(then)) if now > then => Some(format!(
                "{} command(s) answered with an error since the agent started watching \
                 (ioerr_cnt {now:#x}; not counted as failure: refused optional commands count too)",
                now - then
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    #[test]
    fn counters_parse_in_hex_and_decimal() {
        assert_eq!(parse_counter("0x1f\n"), Some(31));
        assert_eq!(parse_counter("12"), Some(12));
        assert_eq!(parse_counter("zz"), None);
    }

    #[test]
    fn a_running_scsi_disk_without_new_errors_is_well() {
        let t = tree(&[
            ("block/sda/device/state", "running\n"),
            ("block/sda/device/ioerr_cnt", "0x3\n"),
        ]);
        let v = read_view(t.path(), "sda");
        assert_eq!(v.state.as_deref(), Some("running"));
        assert_eq!(v.ioerr_cnt, Some(3));
        assert!(v.evidence().is_empty());
        assert_eq!(v.new_errors(Some(3)), None, "errors from before the agent");
        assert_eq!(v.new_errors(None), None);
    }

    #[test]
    fn offline_state_is_evidence_and_new_errors_only_a_note() {
        let t = tree(&[
            ("block/sdb/device/state", "offline\n"),
            ("block/sdb/device/ioerr_cnt", "0x9\n"),
        ]);
        let v = read_view(t.path(), "sdb");
        assert_eq!(
            v.evidence(),
            vec!["kernel device state is offline".to_string()]
        );
        assert!(v.new_errors(Some(1)).unwrap().starts_with("8 command(s)"));
        // A running disk whose counter grew (refused optional commands) is not failing.
        let t = tree(&[
            ("block/sdc/device/state", "running\n"),
            ("block/sdc/device/ioerr_cnt", "0x11\n"),
        ]);
        let v = read_view(t.path(), "sdc");
        assert!(v.evidence().is_empty());
        assert!(v.new_errors(Some(1)).is_some());
    }

    #[test]
    fn nvme_controller_states() {
        let t = tree(&[("block/nvme0n1/device/state", "live\n")]);
        assert!(read_view(t.path(), "nvme0n1").evidence().is_empty());
        let t = tree(&[("block/nvme0n1/device/state", "dead\n")]);
        assert_eq!(
            read_view(t.path(), "nvme0n1").evidence(),
            vec!["kernel device state is dead".to_string()]
        );
        // a disk without these files (virtio) says nothing
        let t = tree(&[("block/vda/size", "100\n")]);
        assert_eq!(read_view(t.path(), "vda"), KernelView::default());
    }
}
