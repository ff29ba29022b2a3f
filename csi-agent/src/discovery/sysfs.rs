//! Reading one block device from sysfs: size, block sizes, flags, partitions, holders, identity
//! (model, serial, WWN) and location (slot). Only attribute files are read; nothing is opened
//! below `/dev` here. Multipath NVMe heads (`devices/virtual/nvme-subsystem/...`) are located
//! through their first path under `multipath/`.

use std::fs;
use std::path::{Path, PathBuf};

use csi_api::names::DeviceClass;

use super::slot::{self, Location, Transport};

/// Kernel name prefixes of disks Strata considers; everything else (loop, ram, zram, dm, md, sr,
/// nbd, mmcblk, ...) is ignored.
const DISK_PREFIXES: [&str; 4] = ["nvme", "sd", "vd", "xvd"];

/// Whether `/sys/block/<name>` is a kind of disk Strata considers.
pub fn is_candidate(name: &str) -> bool {
    DISK_PREFIXES.iter().any(|p| name.starts_with(p)) && !is_nvme_path_device(name)
}

/// `nvme0c1n1`: one path of a multipath namespace, never a disk of its own.
fn is_nvme_path_device(name: &str) -> bool {
    name.strip_prefix("nvme")
        .and_then(|r| r.split_once('c'))
        .is_some_and(|(a, b)| a.bytes().all(|c| c.is_ascii_digit()) && b.contains('n'))
}

/// Facts about one disk as sysfs shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysDisk {
    pub kernel_name: String,
    /// Where the disk sits, or why that could not be told.
    pub location: Result<Location, String>,
    pub physical_slot: Option<String>,
    /// Media class from the transport (NVMe) or `queue/rotational`.
    pub media: DeviceClass,
    pub size_bytes: u64,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub model: String,
    pub serial: String,
    pub wwn: String,
    pub read_only: bool,
    pub removable: bool,
    /// `major:minor` of the disk.
    pub majmin: String,
    /// Partitions as (kernel name, `major:minor`).
    pub partitions: Vec<(String, String)>,
    /// Kernel names of the devices stacked on the disk (dm, md, bcache).
    pub holders: Vec<String>,
}

/// Reads `<sysfs_root>/block/<name>`; `sysfs_root` must be canonical (symlinks resolved).
pub fn read_disk(sysfs_root: &Path, name: &str) -> std::io::Result<SysDisk> {
    let dev_dir = fs::canonicalize(sysfs_root.join("block").join(name))?;
    let nsid = read(&dev_dir.join("nsid")).and_then(|s| s.parse().ok());
    let location = locate_dir(sysfs_root, &dev_dir)
        .and_then(|path_dir| slot::locate(sysfs_root, &path_dir, nsid));
    let physical_slot = location
        .as_ref()
        .ok()
        .and_then(|l| l.pci_address.as_deref())
        .and_then(|pci| slot::physical_slot(sysfs_root, pci));
    let rotational = read(&dev_dir.join("queue/rotational")).as_deref() == Some("1");
    let media = match &location {
        Ok(l) if l.transport == Transport::Nvme => DeviceClass::Nvme,
        _ if rotational => DeviceClass::Hdd,
        _ => DeviceClass::Ssd,
    };
    let sectors: u64 = read(&dev_dir.join("size"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let device = dev_dir.join("device");
    Ok(SysDisk {
        kernel_name: name.to_owned(),
        location,
        physical_slot,
        media,
        size_bytes: sectors.saturating_mul(512),
        logical_block_size: read_num(&dev_dir.join("queue/logical_block_size")),
        physical_block_size: read_num(&dev_dir.join("queue/physical_block_size")),
        model: read(&device.join("model"))
            .map(|m| squeeze(&m))
            .unwrap_or_default(),
        serial: read(&device.join("serial"))
            .or_else(|| read(&dev_dir.join("serial")))
            .or_else(|| vpd_serial(&device.join("vpd_pg80")))
            .unwrap_or_default(),
        wwn: read(&dev_dir.join("wwid"))
            .or_else(|| read(&device.join("wwid")))
            .filter(|w| !w.starts_with("t10."))
            .unwrap_or_default(),
        read_only: read(&dev_dir.join("ro")).as_deref() == Some("1"),
        removable: read(&dev_dir.join("removable")).as_deref() == Some("1"),
        majmin: read(&dev_dir.join("dev")).unwrap_or_default(),
        partitions: partitions(&dev_dir),
        holders: entries(&dev_dir.join("holders")),
    })
}

/// The directory whose path tells the slot: the device itself, or for a multipath NVMe head the
/// first of its paths (`multipath/nvme0c0n1` → `.../<pci>/nvme/nvme0/nvme0c0n1`).
fn locate_dir(sysfs_root: &Path, dev_dir: &Path) -> Result<PathBuf, String> {
    let rel = dev_dir.strip_prefix(sysfs_root).unwrap_or(dev_dir);
    if !rel.iter().any(|c| c == "nvme-subsystem") {
        return Ok(dev_dir.to_path_buf());
    }
    let first = entries(&dev_dir.join("multipath"))
        .into_iter()
        .next()
        .ok_or("multipath NVMe namespace without paths")?;
    fs::canonicalize(dev_dir.join("multipath").join(&first))
        .map_err(|e| format!("cannot resolve multipath/{first}: {e}"))
}

/// Partitions: child directories holding a `partition` file.
fn partitions(dev_dir: &Path) -> Vec<(String, String)> {
    let Ok(rd) = fs::read_dir(dev_dir) else {
        return Vec::new();
    };
    let mut parts: Vec<_> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("partition").is_file())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name, read(&e.path().join("dev")).unwrap_or_default()))
        })
        .collect();
    parts.sort();
    parts
}

/// Sorted names in a directory (empty when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn read_num(path: &Path) -> u32 {
    read(path).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Runs of blanks to one space (SCSI inquiry strings are space padded).
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The unit serial number of SCSI VPD page 0x80: 4-byte header (length at bytes 2..4), then ASCII.
fn vpd_serial(path: &Path) -> Option<String> {
    let page = fs::read(path).ok()?;
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let body = page.get(4..4 + len).unwrap_or(&page[4..]);
    let s = squeeze(&String::from_utf8_lossy(body).replace('\0', " "));
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_nvme_sd_vd_xvd_only() {
        for name in ["nvme0n1", "sda", "vdb", "xvda", "sdaa"] {
            assert!(is_candidate(name), "{name}");
        }
        for name in [
            "loop0",
            "ram0",
            "zram0",
            "dm-0",
            "md0",
            "sr0",
            "nbd0",
            "mmcblk0",
            "nvme0c0n1",
        ] {
            assert!(!is_candidate(name), "{name}");
        }
    }

    #[test]
    fn vpd_page_80_serial() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vpd_pg80");
        fs::write(&p, b"\x00\x80\x00\x0a  HDD-A\0\0\0").unwrap();
        assert_eq!(vpd_serial(&p), Some("HDD-A".into()));
        fs::write(&p, b"\x00\x83\x00\x02ab").unwrap();
        assert_eq!(vpd_serial(&p), None);
        fs::write(&p, b"\x00\x80\x00\x00").unwrap();
        assert_eq!(vpd_serial(&p), None);
        assert_eq!(vpd_serial(&dir.path().join("none")), None);
    }

    #[test]
    fn squeezes_inquiry_padding() {
        assert_eq!(squeeze("QEMU HARDDISK    \n"), "QEMU HARDDISK");
        assert_eq!(squeeze("  a   b "), "a b");
    }
}
