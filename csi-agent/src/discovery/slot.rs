//! Slot: the stable identity of a disk, derived from where it hangs in the sysfs device tree (the
//! udev `by-path` form), never from its kernel name. NVMe: `pci-<controller>-nvme-<nsid>`; SATA:
//! `pci-<ahci>-ata-<port>`; SAS: `pci-<hba>-sas-<address>-lun-<lun>`; other SCSI (virtio-scsi):
//! `pci-<hba>-scsi-<host>:<channel>:<target>:<lun>` with the host numbered from the first host of
//! the same adapter; virtio-blk: `pci-<function>`; Xen: `xen-vbd-<id>`.

use std::fs;
use std::path::{Path, PathBuf};

/// How a disk is attached; NVMe decides the media class by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Nvme,
    Ata,
    Sas,
    Scsi,
    Virtio,
    Xen,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Nvme => "nvme",
            Transport::Ata => "ata",
            Transport::Sas => "sas",
            Transport::Scsi => "scsi",
            Transport::Virtio => "virtio",
            Transport::Xen => "xen",
        }
    }
}

/// Where a disk sits: the by-path slot, its transport and PCI function (if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub slot: String,
    pub transport: Transport,
    pub pci_address: Option<String>,
}

/// Derives the location of a block device from its device directory `dev_dir`, a path below the
/// (canonical) sysfs root `sysfs_root` such as `<root>/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1`.
/// `nsid` is the NVMe namespace id (the `nsid` attribute). Returns why when the path is not one of
/// the known shapes.
pub fn locate(sysfs_root: &Path, dev_dir: &Path, nsid: Option<u32>) -> Result<Location, String> {
    let rel = dev_dir
        .strip_prefix(sysfs_root)
        .map_err(|_| format!("{} is outside {}", dev_dir.display(), sysfs_root.display()))?;
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    let nearest_pci = |before: usize| -> Option<String> {
        parts[..before]
            .iter()
            .rev()
            .find(|p| is_pci_address(p))
            .map(|p| (*p).to_owned())
    };
    let need_pci = |before: usize| -> Result<String, String> {
        nearest_pci(before).ok_or_else(|| format!("no PCI device above {}", rel.display()))
    };

    // NVMe: .../<pci>/nvme/nvmeN/<ns> (the per-controller path of a namespace)
    if let Some(i) = parts.iter().position(|p| *p == "nvme") {
        let nsid = nsid.ok_or("NVMe namespace without an nsid attribute")?;
        let pci = need_pci(i)?;
        return Ok(Location {
            slot: format!("pci-{pci}-nvme-{nsid}"),
            transport: Transport::Nvme,
            pci_address: Some(pci),
        });
    }
    // Xen: devices/vbd-51712/block/xvda
    if let Some(p) = parts.iter().find(|p| p.starts_with("vbd-")) {
        return Ok(Location {
            slot: format!("xen-{p}"),
            transport: Transport::Xen,
            pci_address: None,
        });
    }
    // SCSI disks: .../<h:c:t:l>/block/<name>
    let hctl_at = parts.iter().rposition(|p| parse_hctl(p).is_some());
    if let Some(hctl_i) = hctl_at {
        let [host, channel, target, lun] = parse_hctl(parts[hctl_i]).unwrap_or_default();
        // SATA through libata: .../<pci>/ataN/hostM/targetM:0:0/M:0:0:0
        if let Some(ata_i) = parts[..hctl_i].iter().rposition(|p| is_numbered(p, "ata")) {
            let pci = need_pci(ata_i)?;
            let ata = parts[ata_i];
            let port_file = prefix_path(sysfs_root, &parts[..=ata_i])
                .join("ata_port")
                .join(ata)
                .join("port_no");
            let port = read_trimmed(&port_file)
                .ok_or_else(|| format!("cannot read {}", port_file.display()))?;
            // a device behind a port multiplier is told apart by its SCSI target
            let slot = if target == 0 {
                format!("pci-{pci}-ata-{port}")
            } else {
                format!("pci-{pci}-ata-{port}.{target}")
            };
            return Ok(Location {
                slot,
                transport: Transport::Ata,
                pci_address: Some(pci),
            });
        }
        // SAS: .../<pci>/hostN/port-N:M/end_device-N:M/targetN:0:K/N:0:K:L
        if let Some(end_i) = parts[..hctl_i]
            .iter()
            .rposition(|p| p.starts_with("end_device-"))
        {
            let pci = need_pci(end_i)?;
            let end = parts[end_i];
            let addr_file = prefix_path(sysfs_root, &parts[..=end_i])
                .join("sas_device")
                .join(end)
                .join("sas_address");
            let addr = read_trimmed(&addr_file)
                .ok_or_else(|| format!("cannot read {}", addr_file.display()))?;
            return Ok(Location {
                slot: format!("pci-{pci}-sas-{addr}-lun-{lun}"),
                transport: Transport::Sas,
                pci_address: Some(pci),
            });
        }
        // other SCSI (virtio-scsi, plain HBAs): host numbered from the adapter's first host
        let host_i = parts[..hctl_i]
            .iter()
            .rposition(|p| is_numbered(p, "host"))
            .ok_or_else(|| format!("no SCSI host above {}", rel.display()))?;
        let pci = need_pci(host_i)?;
        let base = first_host_number(&prefix_path(sysfs_root, &parts[..host_i])).unwrap_or(host);
        return Ok(Location {
            slot: format!(
                "pci-{pci}-scsi-{}:{channel}:{target}:{lun}",
                host.saturating_sub(base)
            ),
            transport: Transport::Scsi,
            pci_address: Some(pci),
        });
    }
    // virtio-blk: .../<pci>/virtioN/block/vda
    if let Some(v) = parts.iter().position(|p| is_numbered(p, "virtio")) {
        let pci = need_pci(v)?;
        return Ok(Location {
            slot: format!("pci-{pci}"),
            transport: Transport::Virtio,
            pci_address: Some(pci),
        });
    }
    Err(format!(
        "unknown device path shape {} (not NVMe, ATA, SAS, SCSI, virtio or Xen)",
        rel.display()
    ))
}

/// The physical slot of a PCI function, when `/sys/bus/pci/slots/<name>/address` names it
/// (`address` holds `domain:bus:device`, without the function).
pub fn physical_slot(sysfs_root: &Path, pci_address: &str) -> Option<String> {
    let device = pci_address.rsplit_once('.').map(|(d, _)| d)?;
    let mut names: Vec<_> = fs::read_dir(sysfs_root.join("bus/pci/slots"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| read_trimmed(&e.path().join("address")).as_deref() == Some(device))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next()
}

fn prefix_path(root: &Path, parts: &[&str]) -> PathBuf {
    parts.iter().fold(root.to_path_buf(), |p, c| p.join(c))
}

/// The lowest `hostN` among the children of `adapter` (udev numbers hosts from it).
fn first_host_number(adapter: &Path) -> Option<u32> {
    fs::read_dir(adapter)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("host").and_then(|d| d.parse().ok()))
        .min()
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// `0000:00:1f.2`
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.char_indices()
            .filter(|(i, _)| ![4, 7, 10].contains(i))
            .all(|(_, c)| c.is_ascii_hexdigit())
}

/// `ata3`, `host0`, `virtio1`
fn is_numbered(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// `2:0:0:0` → host, channel, target, lun
fn parse_hctl(s: &str) -> Option<[u32; 4]> {
    let mut out = [0u32; 4];
    let mut it = s.split(':');
    for slot in &mut out {
        *slot = it.next()?.parse().ok()?;
    }
    it.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(paths: &[&str], files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for p in paths {
            fs::create_dir_all(dir.path().join(p)).unwrap();
        }
        for (p, content) in files {
            let f = dir.path().join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, content).unwrap();
        }
        dir
    }

    fn slot_of(root: &Path, dev: &str, nsid: Option<u32>) -> Result<String, String> {
        locate(root, &root.join(dev), nsid).map(|l| l.slot)
    }

    #[test]
    fn nvme_slot_is_controller_pci_plus_nsid() {
        let root = Path::new("/s");
        let loc = locate(
            root,
            &root.join("devices/pci0000:00/0000:00:1c.0/0000:01:00.0/nvme/nvme3/nvme3n2"),
            Some(2),
        )
        .unwrap();
        assert_eq!(loc.slot, "pci-0000:01:00.0-nvme-2");
        assert_eq!(loc.transport, Transport::Nvme);
        assert_eq!(loc.pci_address.as_deref(), Some("0000:01:00.0"));
        assert!(
            locate(
                root,
                &root.join("devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1"),
                None
            )
            .is_err()
        );
    }

    #[test]
    fn sata_slot_uses_port_number_not_ata_print_id() {
        let t = tree(
            &["devices/pci0000:00/0000:00:1f.2/ata7/host6/target6:0:0/6:0:0:0/block/sdc"],
            &[(
                "devices/pci0000:00/0000:00:1f.2/ata7/ata_port/ata7/port_no",
                "3\n",
            )],
        );
        assert_eq!(
            slot_of(
                t.path(),
                "devices/pci0000:00/0000:00:1f.2/ata7/host6/target6:0:0/6:0:0:0/block/sdc",
                None
            ),
            Ok("pci-0000:00:1f.2-ata-3".into())
        );
        // the port file is required: no guessing from the print id
        let bare = tree(&[], &[]);
        assert!(
            slot_of(
                bare.path(),
                "devices/pci0000:00/0000:00:1f.2/ata7/host6/target6:0:0/6:0:0:0/block/sdc",
                None
            )
            .is_err()
        );
    }

    #[test]
    fn sas_slot_uses_sas_address_and_lun() {
        let base = "devices/pci0000:00/0000:00:03.0/0000:03:00.0/host2/port-2:0/end_device-2:0";
        let t = tree(
            &[],
            &[(
                &format!("{base}/sas_device/end_device-2:0/sas_address"),
                "0x5000c50012345678\n",
            )],
        );
        assert_eq!(
            slot_of(
                t.path(),
                &format!("{base}/target2:0:0/2:0:0:1/block/sdb"),
                None
            ),
            Ok("pci-0000:03:00.0-sas-0x5000c50012345678-lun-1".into())
        );
    }

    #[test]
    fn scsi_host_is_numbered_from_the_adapters_first_host() {
        let base = "devices/pci0000:00/0000:00:03.0/virtio2";
        let t = tree(&[&format!("{base}/host4"), &format!("{base}/host5")], &[]);
        assert_eq!(
            slot_of(
                t.path(),
                &format!("{base}/host5/target5:0:1/5:0:1:0/block/sdd"),
                None
            ),
            Ok("pci-0000:00:03.0-scsi-1:0:1:0".into())
        );
    }

    #[test]
    fn virtio_blk_and_xen_and_unknown_shapes() {
        let root = Path::new("/s");
        assert_eq!(
            slot_of(
                root,
                "devices/pci0000:00/0000:00:02.0/virtio1/block/vda",
                None
            ),
            Ok("pci-0000:00:02.0".into())
        );
        assert_eq!(
            slot_of(root, "devices/vbd-51712/block/xvda", None),
            Ok("xen-vbd-51712".into())
        );
        assert!(slot_of(root, "devices/platform/foo/block/mmcblk0", None).is_err());
        assert!(locate(root, Path::new("/elsewhere/block/sda"), None).is_err());
    }

    #[test]
    fn physical_slot_matches_pci_device_without_function() {
        let t = tree(
            &[],
            &[
                ("bus/pci/slots/7/address", "0000:00:04\n"),
                ("bus/pci/slots/8/address", "0000:00:05\n"),
            ],
        );
        assert_eq!(physical_slot(t.path(), "0000:00:04.0"), Some("7".into()));
        assert_eq!(physical_slot(t.path(), "0000:00:06.0"), None);
        assert_eq!(
            physical_slot(Path::new("/nonexistent"), "0000:00:04.0"),
            None
        );
    }

    #[test]
    fn name_shapes() {
        assert!(is_pci_address("0000:00:1f.2"));
        assert!(!is_pci_address("pci0000:00"));
        assert!(!is_pci_address("0000:00:1g.2"));
        assert!(is_numbered("ata12", "ata"));
        assert!(!is_numbered("ata_port", "ata"));
        assert!(!is_numbered("ata", "ata"));
        assert_eq!(parse_hctl("2:0:1:3"), Some([2, 0, 1, 3]));
        assert_eq!(parse_hctl("target2:0:0"), None);
        assert_eq!(parse_hctl("2:0:0:0:0"), None);
    }
}
