//! Disk health: what the devices and the kernel say about each disk Strata sees, and which
//! volumes a lost or failing disk touches.
//! - [`nvme`]: SMART / Health Information log (page 0x02) through `NVME_IOCTL_ADMIN_CMD`;
//! - [`ata`]: SATA SMART RETURN STATUS through `SG_IO` (ATA PASS-THROUGH 16);
//! - [`sysfs`]: kernel device state (evidence) and SCSI I/O error counter (a note only);
//! - [`volumes`]: per-volume truth from `pvs --segments` (which LV has extents on which disk),
//!   lvm2's `lv_health_status`, and the [`Board`] of failing disks.
//!
//! Checks are cheap (one ioctl and two small sysfs reads per disk) and run with the NodeStorage
//! pass (every 60 s, and on every change). No kube here.

pub mod ata;
pub mod nvme;
pub mod replace;
pub mod sysfs;
pub mod volumes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use volumes::{DiskProblem, volume_problems};

/// One disk to check: its slot (identity), kernel name (to find it now) and device node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub slot: String,
    pub kernel_name: String,
    pub device: PathBuf,
}

/// The outcome of checking one disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Evidence of failure; empty = healthy as far as could be seen.
    pub evidence: Vec<String>,
    /// What could not be asked (e.g. no permission for the ioctl); not evidence.
    pub notes: Vec<String>,
}

/// The disks known to be failing now, by slot, with their evidence; shared by the NodeStorage
/// pass (which writes it) and the CSI node service and LogicalVolume reconciler (which read it).
/// It also keeps each disk's error counter as first seen (the baseline of "new errors").
#[derive(Clone, Debug, Default)]
pub struct Board {
    inner: Arc<Mutex<BoardState>>,
}

#[derive(Debug, Default)]
struct BoardState {
    failing: BTreeMap<String, String>,
    baselines: BTreeMap<String, u64>,
    /// Strata VGs that miss a PV, as the last NodeStorage pass saw them.
    missing_pv_vgs: std::collections::BTreeSet<String>,
}

impl Board {
    fn state(&self) -> std::sync::MutexGuard<'_, BoardState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Failing slots → evidence (joined).
    pub fn failing(&self) -> BTreeMap<String, String> {
        self.state().failing.clone()
    }

    /// Replaces the set of failing disks with the result of the last pass.
    pub fn set_failing(&self, failing: BTreeMap<String, String>) {
        self.state().failing = failing;
    }

    /// Records which VGs miss a PV (from the pass's class summary), so that readers need no LVM
    /// call of their own to know whether a volume may sit on a lost disk.
    pub fn set_missing_pv_vgs(&self, vgs: std::collections::BTreeSet<String>) {
        self.state().missing_pv_vgs = vgs;
    }

    /// Whether `vg` missed a PV at the last pass.
    pub fn misses_pv(&self, vg: &str) -> bool {
        self.state().missing_pv_vgs.contains(vg)
    }

    /// Marks one disk failing (tests and callers that learn of a failure outside a pass).
    pub fn mark(&self, slot: &str, evidence: &str) {
        self.state()
            .failing
            .insert(slot.to_owned(), evidence.to_owned());
    }

    /// Moves the error baseline of `slot` past errors the agent caused itself (SMART RETURN
    /// STATUS answers with CHECK CONDITION by design, which the kernel counts in `ioerr_cnt`).
    fn excuse(&self, slot: &str, errors: u64) {
        if let Some(b) = self.state().baselines.get_mut(slot) {
            *b = b.saturating_add(errors);
        }
    }

    fn baseline(&self, slot: &str, now: Option<u64>) -> Option<u64> {
        let mut s = self.state();
        match (s.baselines.get(slot), now) {
            (Some(b), _) => Some(*b),
            (None, Some(n)) => {
                s.baselines.insert(slot.to_owned(), n);
                Some(n)
            }
            (None, None) => None,
        }
    }
}

/// Checks one disk: the kernel's view for every disk; the NVMe log for NVMe namespaces; SMART
/// RETURN STATUS for SATA disks (SCSI disks whose vendor is `ATA`). Blocking work runs on a
/// blocking thread.
pub async fn check(sysfs_root: &Path, board: &Board, target: &Target) -> Checked {
    let view = sysfs::read_view(sysfs_root, &target.kernel_name);
    let baseline = board.baseline(&target.slot, view.ioerr_cnt);
    let mut out = Checked {
        evidence: view.evidence(),
        notes: view
            .new_errors(baseline)
            .map(|n| format!("{}: {n}", target.slot))
            .into_iter()
            .collect(),
    };
    let name = target.kernel_name.clone();
    let vendor = std::fs::read_to_string(
        sysfs_root
            .join("block")
            .join(&name)
            .join("device")
            .join("vendor"),
    )
    .unwrap_or_default();
    let device = target.device.clone();
    let asked = if name.starts_with("nvme") {
        let r = tokio::task::spawn_blocking(move || crate::nvme::smart_log(&device)).await;
        match r {
            Ok(Ok(log)) => match nvme::parse(&log) {
                Ok(parsed) => Ok(parsed.evidence()),
                Err(e) => Err(e.to_string()),
            },
            Ok(Err(e)) => Err(format!("NVMe SMART log not readable: {e}")),
            Err(e) => Err(e.to_string()),
        }
    } else if name.starts_with("sd") && vendor.trim() == "ATA" {
        let counter = || sysfs::read_view(sysfs_root, &name).ioerr_cnt.unwrap_or(0);
        let before = counter();
        let r = tokio::task::spawn_blocking(move || ata::smart_status(&device)).await;
        board.excuse(&target.slot, counter().saturating_sub(before));
        match r {
            Ok(Ok(ata::SmartStatus::Passed)) => Ok(Vec::new()),
            Ok(Ok(ata::SmartStatus::ThresholdExceeded)) => Ok(vec![
                "SMART health: a threshold is exceeded (the drive predicts its failure)".into(),
            ]),
            Ok(Err(e)) => Err(format!("SMART status not readable: {e}")),
            Err(e) => Err(e.to_string()),
        }
    } else {
        Ok(Vec::new())
    };
    match asked {
        Ok(ev) => out.evidence.extend(ev),
        Err(note) => out.notes.push(format!("{}: {note}", target.slot)),
    }
    out
}

/// Checks every present disk that is Claimed or Available, turns those with evidence into
/// `Failing` (evidence in `reason`) and records the failing slots on `board`. Returns what could
/// not be checked.
pub async fn check_disks(
    sysfs_root: &Path,
    dev_root: &Path,
    board: &Board,
    disks: &mut [csi_api::crd::DiskStatus],
) -> Vec<String> {
    use csi_api::crd::DiskState;
    let mut failing = BTreeMap::new();
    let mut notes = Vec::new();
    for disk in disks.iter_mut() {
        if !matches!(disk.state, DiskState::Claimed | DiskState::Available)
            || disk.kernel_name.is_empty()
            || disk.slot.is_empty()
        {
            continue;
        }
        let target = Target {
            slot: disk.slot.clone(),
            kernel_name: disk.kernel_name.clone(),
            device: dev_root.join(&disk.kernel_name),
        };
        let checked = check(sysfs_root, board, &target).await;
        notes.extend(checked.notes);
        if !checked.evidence.is_empty() {
            let evidence = checked.evidence.join("; ");
            failing.insert(disk.slot.clone(), evidence.clone());
            disk.state = DiskState::Failing;
            disk.reason = evidence;
        }
    }
    board.set_failing(failing);
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_baseline_is_set_once_and_moved_past_own_commands() {
        let board = Board::default();
        assert_eq!(board.baseline("s", None), None);
        assert_eq!(board.baseline("s", Some(14)), Some(14));
        assert_eq!(
            board.baseline("s", Some(20)),
            Some(14),
            "first seen is kept"
        );
        board.excuse("s", 1);
        assert_eq!(board.baseline("s", Some(20)), Some(15));
        board.excuse("unknown", 3);
        assert_eq!(board.baseline("unknown", None), None);
    }
}
