//! Who uses a block device right now: mounts (mountinfo, parsed by `procfs`) and swap
//! (`/proc/swaps`). Both are read once per scan from an injectable proc root (or given as text)
//! and matched by device number first, by `/dev/<name>` source second.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use procfs::FromBufRead;
use procfs::process::MountInfos;

/// One mount: device number, source and mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub majmin: String,
    pub source: Option<String>,
    pub mount_point: PathBuf,
}

/// The mounts and active swap areas of the node at scan time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub mounts: Vec<Mount>,
    /// `Filename` column of `/proc/swaps` (devices and swap files).
    pub swaps: Vec<String>,
}

impl Usage {
    /// Reads `<proc_root>/self/mountinfo` and `<proc_root>/swaps` (a missing swaps file = no swap).
    pub fn read(proc_root: &Path) -> io::Result<Usage> {
        let mountinfo = std::fs::read_to_string(proc_root.join("self/mountinfo"))?;
        let swaps = match std::fs::read_to_string(proc_root.join("swaps")) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        Usage::parse(&mountinfo, &swaps)
    }

    /// Parses the text of mountinfo and `/proc/swaps`.
    pub fn parse(mountinfo: &str, swaps: &str) -> io::Result<Usage> {
        let infos = MountInfos::from_buf_read(mountinfo.as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("mountinfo: {e}")))?;
        let mounts = infos
            .0
            .into_iter()
            .map(|m| Mount {
                majmin: m.majmin,
                source: m.mount_source,
                mount_point: m.mount_point,
            })
            .collect();
        Ok(Usage {
            mounts,
            swaps: parse_swaps(swaps),
        })
    }

    /// Mount points of any of `names` (a disk and its partitions) with device numbers `majmins`.
    pub fn mount_points(
        &self,
        names: &BTreeSet<String>,
        majmins: &BTreeSet<String>,
    ) -> Vec<PathBuf> {
        self.mounts
            .iter()
            .filter(|m| {
                majmins.contains(&m.majmin)
                    || m.source
                        .as_deref()
                        .and_then(dev_name)
                        .is_some_and(|n| names.contains(n))
            })
            .map(|m| m.mount_point.clone())
            .collect()
    }

    /// The swap areas on any of `names`.
    pub fn swap_areas(&self, names: &BTreeSet<String>) -> Vec<String> {
        self.swaps
            .iter()
            .filter(|s| dev_name(s).is_some_and(|n| names.contains(n)))
            .cloned()
            .collect()
    }
}

/// `/dev/sdb1` → `sdb1`; anything not directly under `/dev` → None.
fn dev_name(source: &str) -> Option<&str> {
    source.strip_prefix("/dev/").filter(|n| !n.contains('/'))
}

/// The `Filename` column of `/proc/swaps` (the first line is a header). The kernel escapes
/// blanks in names as octal (`\040`), so the first whitespace-separated field is the whole name.
fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:20 / / rw,relatime - rootfs rootfs rw
25 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=1000k
40 22 8:49 / /mnt/data rw,relatime shared:1 - ext4 /dev/sdd1 rw
41 22 0:45 / /mnt/btrfs rw,relatime - btrfs /dev/sde rw
";
    const SWAPS: &str = "\
Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/sdf                                partition\t2097148\t\t0\t\t-2
/var/swapfile                           file\t\t1024\t\t0\t\t-3
";

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn matches_mounts_by_device_number_and_by_source() {
        let u = Usage::parse(MOUNTINFO, SWAPS).unwrap();
        assert_eq!(u.mounts.len(), 4);
        // partition sdd1 (8:49) of disk sdd: by device number even with another name
        assert_eq!(
            u.mount_points(&set(&["sdd"]), &set(&["8:48", "8:49"])),
            vec![PathBuf::from("/mnt/data")]
        );
        // btrfs has an anonymous device number: matched by source
        assert_eq!(
            u.mount_points(&set(&["sde"]), &set(&["8:64"])),
            vec![PathBuf::from("/mnt/btrfs")]
        );
        assert!(u.mount_points(&set(&["sdg"]), &set(&["8:96"])).is_empty());
    }

    #[test]
    fn finds_swap_partitions_not_swap_files() {
        let u = Usage::parse(MOUNTINFO, SWAPS).unwrap();
        assert_eq!(u.swaps, vec!["/dev/sdf", "/var/swapfile"]);
        assert_eq!(u.swap_areas(&set(&["sdf"])), vec!["/dev/sdf"]);
        assert!(u.swap_areas(&set(&["swapfile", "sda"])).is_empty());
        assert!(Usage::parse(MOUNTINFO, "").unwrap().swaps.is_empty());
    }

    #[test]
    fn reads_from_a_proc_root_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("self")).unwrap();
        std::fs::write(dir.path().join("self/mountinfo"), MOUNTINFO).unwrap();
        let u = Usage::read(dir.path()).unwrap();
        assert!(u.swaps.is_empty());
        assert_eq!(u.mounts.len(), 4);
        assert!(Usage::read(&dir.path().join("nope")).is_err());
        assert!(Usage::parse("not a mountinfo line\n", "").is_err());
    }
}
