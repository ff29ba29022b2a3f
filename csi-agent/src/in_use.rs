//! Whether an LV is in use, asked before anything destructive (the wipe mark, the wipe, the
//! removal): its device-mapper device open (`lv_attr`'s open bit, which lvm2 reads from the
//! kernel's open count), held by another block device (`holders/` in sysfs), mounted anywhere
//! in the host's mount table (`<host proc>/1/mountinfo`, not this container's), and, to name who
//! holds it, the processes with the device open (`<host proc>/<pid>/fd`). A table that cannot be
//! read counts as in use: the answer must prove the LV free, never assume it.
//! The evidence is gathered by [`InUseCheck::check`] and judged by the pure [`judge`].

use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::lvm::Lv;
use crate::mount::mountinfo::{self, MountEntry};

/// An LV found in use: what holds it, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// `vg/lv`.
    pub lv: String,
    /// One line per finding (`mounted at /x`, `open (...)`, `held by dm-7`, ...).
    pub findings: Vec<String>,
}

impl fmt::Display for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "logical volume {} is in use: {}; nothing was touched (unmount it or stop what holds it, then retry)",
            self.lv,
            self.findings.join("; ")
        )
    }
}

impl std::error::Error for InUse {}

/// What was seen of one LV's device.
#[derive(Debug, Default, Clone)]
pub struct Evidence {
    /// `lv_attr` open bit.
    pub open: bool,
    /// `major:minor` of the device node, when it exists.
    pub major_minor: Option<String>,
    /// The host's mount table.
    pub mounts: Vec<MountEntry>,
    /// Names under `holders/`.
    pub holders: Vec<String>,
    /// `pid N (comm)` of processes with the device open.
    pub openers: Vec<String>,
    /// Evidence that could not be read (each makes the LV count as in use).
    pub unreadable: Vec<String>,
}

/// The findings that make the LV in use; empty when it is free. Pure.
pub fn judge(e: &Evidence) -> Vec<String> {
    let mut findings = Vec::new();
    if let Some(mm) = &e.major_minor {
        let points: Vec<String> = e
            .mounts
            .iter()
            .filter(|m| &m.major_minor == mm)
            .map(|m| m.mount_point.display().to_string())
            .collect();
        if !points.is_empty() {
            findings.push(format!("mounted at {}", points.join(", ")));
        }
    }
    if !e.holders.is_empty() {
        findings.push(format!("held by {}", e.holders.join(", ")));
    }
    if e.open || !e.openers.is_empty() {
        let who = if e.openers.is_empty() {
            String::new()
        } else {
            format!(" by {}", e.openers.join(", "))
        };
        findings.push(format!("open{who} (device-mapper open count above zero)"));
    }
    findings.extend(
        e.unreadable
            .iter()
            .map(|u| format!("cannot prove it free: {u}")),
    );
    findings
}

/// Reads the evidence from the host (see the module head).
#[derive(Debug, Clone)]
pub struct InUseCheck {
    /// The host's procfs as this process sees it (`/proc` with hostPID, else a host-path mount).
    pub host_proc: PathBuf,
    /// Root of sysfs.
    pub sysfs: PathBuf,
}

impl Default for InUseCheck {
    fn default() -> Self {
        InUseCheck {
            host_proc: PathBuf::from("/proc"),
            sysfs: PathBuf::from("/sys"),
        }
    }
}

/// At most this many holding processes are named.
const MAX_OPENERS: usize = 8;

impl InUseCheck {
    /// `Ok` when `lv` (freshly read from lvm2) is neither open, held nor mounted.
    pub async fn check(&self, lv: &Lv) -> Result<(), InUse> {
        let this = self.clone();
        let lv = lv.clone();
        let name = format!("{}/{}", lv.vg, lv.name);
        let evidence = tokio::task::spawn_blocking(move || this.gather(&lv))
            .await
            .unwrap_or_else(|e| Evidence {
                unreadable: vec![format!("the check did not finish: {e}")],
                ..Evidence::default()
            });
        let findings = judge(&evidence);
        if findings.is_empty() {
            Ok(())
        } else {
            Err(InUse { lv: name, findings })
        }
    }

    fn gather(&self, lv: &Lv) -> Evidence {
        let mut e = Evidence {
            open: lv.open,
            ..Evidence::default()
        };
        let table = self.host_proc.join("1/mountinfo");
        match std::fs::read_to_string(&table)
            .map_err(|err| err.to_string())
            .and_then(|t| mountinfo::parse(&t).map_err(|err| err.to_string()))
        {
            Ok(mounts) => e.mounts = mounts,
            Err(err) => e
                .unreadable
                .push(format!("host mount table {}: {err}", table.display())),
        }
        let rdev = match std::fs::metadata(lv.device_path()) {
            Ok(m) if m.file_type().is_block_device() => m.rdev(),
            // No device node: the LV is inactive, so nothing can hold or mount it.
            _ => return e,
        };
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        e.major_minor = Some(format!("{major}:{minor}"));
        let holders = self
            .sysfs
            .join(format!("dev/block/{major}:{minor}/holders"));
        match std::fs::read_dir(&holders) {
            Ok(dir) => {
                e.holders = dir
                    .filter_map(|d| d.ok())
                    .map(|d| d.file_name().to_string_lossy().into_owned())
                    .collect();
                e.holders.sort();
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => e
                .unreadable
                .push(format!("holders {}: {err}", holders.display())),
        }
        e.openers = openers(&self.host_proc, rdev);
        e
    }
}

/// `pid N (comm)` of the processes under `proc` with block device `rdev` open (best effort:
/// processes that end or cannot be read are skipped; the open bit is the authority).
fn openers(proc: &Path, rdev: u64) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(proc) else {
        return vec![];
    };
    let mut found = Vec::new();
    for entry in dir.filter_map(|d| d.ok()) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.filter_map(|f| f.ok()).any(|f| {
            std::fs::metadata(f.path())
                .is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == rdev)
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push(format!("pid {pid} ({})", comm.trim()));
            if found.len() >= MAX_OPENERS {
                break;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::Activation;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
98 22 253:4 / /var/lib/kubelet/plugins/kubernetes.io/csi/local.strata.io/abc/globalmount rw,relatime shared:40 - xfs /dev/mapper/strata--ssd-pvc--1 rw
99 22 253:4 / /var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pvc-1/mount rw,relatime shared:40 - xfs /dev/mapper/strata--ssd-pvc--1 rw
";

    fn evidence(mm: &str) -> Evidence {
        Evidence {
            major_minor: Some(mm.into()),
            mounts: mountinfo::parse(MOUNTINFO).unwrap(),
            ..Evidence::default()
        }
    }

    #[test]
    fn a_free_lv_has_no_findings() {
        assert!(judge(&evidence("253:9")).is_empty());
        assert!(judge(&Evidence::default()).is_empty());
    }

    #[test]
    fn mounts_are_matched_by_device_and_all_named() {
        let f = judge(&evidence("253:4"));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("mounted at /var/lib/kubelet/plugins/"),
            "{f:?}"
        );
        assert!(
            f[0].contains("/volumes/kubernetes.io~csi/pvc-1/mount"),
            "{f:?}"
        );
    }

    #[test]
    fn open_holders_and_unreadable_tables_each_count() {
        let open = Evidence {
            open: true,
            ..evidence("253:9")
        };
        assert_eq!(judge(&open), ["open (device-mapper open count above zero)"]);
        let named = Evidence {
            openers: vec!["pid 42 (dd)".into()],
            ..evidence("253:9")
        };
        assert!(judge(&named)[0].contains("pid 42 (dd)"));
        let held = Evidence {
            holders: vec!["dm-7".into()],
            ..evidence("253:9")
        };
        assert_eq!(judge(&held), ["held by dm-7"]);
        let blind = Evidence {
            unreadable: vec!["host mount table /proc/1/mountinfo: denied".into()],
            ..Evidence::default()
        };
        assert_eq!(judge(&blind).len(), 1);
    }

    fn lv(open: bool) -> Lv {
        Lv {
            vg: "strata-ssd".into(),
            name: "pvc-1".into(),
            uuid: None,
            size_bytes: 1 << 20,
            tags: vec![],
            active: Activation::Active,
            volume: Some("pvc-1".into()),
            pvc: None,
            owned: true,
            open,
        }
    }

    #[tokio::test]
    async fn the_check_reads_the_host_table_and_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("1")).unwrap();
        std::fs::write(dir.path().join("1/mountinfo"), MOUNTINFO).unwrap();
        let check = InUseCheck {
            host_proc: dir.path().to_owned(),
            sysfs: dir.path().join("sys"),
        };
        // No device node on the host: inactive, free unless lvm2 says open.
        check.check(&lv(false)).await.unwrap();
        let err = check.check(&lv(true)).await.unwrap_err();
        assert!(
            err.to_string().contains("strata-ssd/pvc-1 is in use"),
            "{err}"
        );
        let blind = InUseCheck {
            host_proc: dir.path().join("absent"),
            ..check
        };
        let err = blind.check(&lv(false)).await.unwrap_err();
        assert!(err.to_string().contains("cannot prove it free"), "{err}");
    }
}
