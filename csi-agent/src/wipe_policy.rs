//! Which wipe an LV gets, from its policy and what the kernel says about the disks under it.
//! Policies: `discard` (default for nvme and ssd), `zero` (default for hdd), `none` (opt-out).
//! `discard` is only used where the kernel shows that reads return zeroes after a discard, on
//! every disk under the LV (found through `slaves/` of the LV's dm device); otherwise the LV is
//! zeroed instead, so a policy never leaves readable data. Evidence per disk: `queue/
//! discard_max_bytes` > 0, and for SCSI/SATA disks `zeroing_mode` `*_unmap` (the sd driver's
//! LBPRZ: unmapped blocks read zeroes; libata only reports it for drives known to honour it), for
//! NVMe namespaces the namespace's DLFEAT from Identify Namespace ([`crate::nvme`]: deallocated
//! blocks read as zeroes). Write Zeroes support is not evidence, and any other disk has none.
//! Everything here but the NVMe ioctl reads a sysfs tree given as a root, so it is tested on
//! fixture trees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use csi_api::names::DeviceClass;

use crate::lvm::WipeMethod;

/// A wipe policy as configured (agent flag, StorageClass `strata.io/wipe`): csi-api's enum.
pub use csi_api::names::{UnknownWipePolicy as UnknownPolicy, WipePolicy as Policy};

/// The agent's policy per class (flags `--wipe-policy CLASS=POLICY`), defaults elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassPolicies(pub BTreeMap<DeviceClass, Policy>);

impl ClassPolicies {
    pub fn get(&self, class: DeviceClass) -> Policy {
        self.0
            .get(&class)
            .copied()
            .unwrap_or_else(|| Policy::default_for(class))
    }
}

/// What one disk's queue says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskFacts {
    pub name: String,
    pub discard_max_bytes: u64,
    pub write_zeroes_max_bytes: u64,
    /// The sd driver's `zeroing_mode` (SCSI and SATA disks only).
    pub zeroing_mode: Option<String>,
    /// NVMe namespaces: whether Identify Namespace's DLFEAT says deallocated blocks read as
    /// zeroes (`None`: not NVMe, or the Identify could not be read).
    pub nvme_dealloc_zeroes: Option<bool>,
}

impl DiskFacts {
    /// Whether a discard on this disk leaves blocks that read as zeroes (see the module head).
    pub fn discard_reads_zeroes(&self) -> bool {
        if self.discard_max_bytes == 0 {
            return false;
        }
        match (&self.zeroing_mode, self.nvme_dealloc_zeroes) {
            (Some(mode), _) => mode.ends_with("_unmap"),
            (None, Some(zeroes)) => zeroes,
            (None, None) => false,
        }
    }
}

/// The wipe an LV gets and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// `None` only for the `none` policy.
    pub method: Option<WipeMethod>,
    pub reason: String,
}

/// Decides from the policy and the facts of the LV's own queue and of the disks under it. Pure.
pub fn choose(policy: Policy, lv_queue: Option<&DiskFacts>, disks: &[DiskFacts]) -> Choice {
    match policy {
        Policy::None => Choice {
            method: None,
            reason: "policy none: the LV is removed without wiping".into(),
        },
        Policy::Zero => Choice {
            method: Some(WipeMethod::Zero),
            reason: "policy zero".into(),
        },
        Policy::Discard => {
            let why_not = if disks.is_empty() {
                Some("the disks under the LV are unknown".to_owned())
            } else if lv_queue.is_some_and(|q| q.discard_max_bytes == 0) {
                Some("the LV's device does not pass discards down".to_owned())
            } else {
                disks.iter().find(|d| !d.discard_reads_zeroes()).map(|d| {
                    if d.discard_max_bytes == 0 {
                        format!("{} does not support discard", d.name)
                    } else {
                        format!("{} does not show that discarded blocks read zeroes", d.name)
                    }
                })
            };
            match why_not {
                None => Choice {
                    method: Some(WipeMethod::Discard),
                    reason: "policy discard: every disk reads zeroes after discard".into(),
                },
                Some(why) => Choice {
                    method: Some(WipeMethod::Zero),
                    reason: format!("policy discard, zeroing instead: {why}"),
                },
            }
        }
    }
}

/// Reads the facts of the LV's device `kname` (e.g. `dm-3`) and of every disk under it, then
/// [`choose`]s. Unreadable facts count as no evidence (so `discard` becomes `zero`).
pub fn choose_for_device(sysfs: &Path, kname: &str, policy: Policy) -> Choice {
    choose_for_device_with(sysfs, kname, policy, &nvme_dealloc_zeroes)
}

/// [`choose_for_device`] with the NVMe question (`kname` → DLFEAT says zeroes) given.
pub fn choose_for_device_with(
    sysfs: &Path,
    kname: &str,
    policy: Policy,
    nvme: &dyn Fn(&str) -> bool,
) -> Choice {
    if policy != Policy::Discard {
        return choose(policy, None, &[]);
    }
    let lv_queue = read_facts(sysfs, kname);
    let disks: Vec<DiskFacts> = leaf_disks(sysfs, kname)
        .iter()
        .filter_map(|d| read_facts(sysfs, d))
        .map(|mut d| {
            if d.name.starts_with("nvme") {
                d.nvme_dealloc_zeroes = Some(nvme(&d.name));
            }
            d
        })
        .collect();
    choose(policy, lv_queue.as_ref(), &disks)
}

/// Asks NVMe namespace `/dev/<kname>` for its DLFEAT (Identify Namespace); no answer, no evidence.
pub fn nvme_dealloc_zeroes(kname: &str) -> bool {
    let dev = Path::new("/dev").join(kname);
    match crate::nvme::identify_namespace(&dev) {
        Ok(id) => crate::nvme::dealloc_reads_zeroes(&id),
        Err(e) => {
            tracing::warn!(device = %dev.display(), error = %e, "cannot read NVMe Identify Namespace; no discard evidence");
            false
        }
    }
}

/// The whole disks under `kname`, following `slaves/` down (a partition stands for its disk).
pub fn leaf_disks(sysfs: &Path, kname: &str) -> Vec<String> {
    let mut out = Vec::new();
    collect_leaves(sysfs, kname, 0, &mut out);
    out.sort();
    out.dedup();
    out
}

fn collect_leaves(sysfs: &Path, kname: &str, depth: usize, out: &mut Vec<String>) {
    if depth > 8 {
        return;
    }
    let dir = class_block(sysfs, kname);
    let slaves: Vec<String> = std::fs::read_dir(dir.join("slaves"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() {
        out.push(whole_disk(sysfs, kname));
        return;
    }
    for s in slaves {
        collect_leaves(sysfs, &s, depth + 1, out);
    }
}

fn class_block(sysfs: &Path, kname: &str) -> PathBuf {
    sysfs.join("class/block").join(kname)
}

/// The disk of a partition (its parent directory in the device tree), or `kname` itself.
fn whole_disk(sysfs: &Path, kname: &str) -> String {
    let dir = class_block(sysfs, kname);
    if dir.join("partition").exists()
        && let Ok(real) = std::fs::canonicalize(&dir)
        && let Some(parent) = real.parent().and_then(|p| p.file_name())
    {
        return parent.to_string_lossy().into_owned();
    }
    kname.to_owned()
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The queue facts of `kname`, or `None` if its queue cannot be read.
pub fn read_facts(sysfs: &Path, kname: &str) -> Option<DiskFacts> {
    let dir = class_block(sysfs, kname);
    let queue = dir.join("queue");
    let zeroing_mode = std::fs::read_dir(dir.join("device/scsi_disk"))
        .ok()
        .and_then(|mut rd| rd.next())
        .and_then(|e| e.ok())
        .and_then(|e| std::fs::read_to_string(e.path().join("zeroing_mode")).ok())
        .map(|s| s.trim().to_owned());
    Some(DiskFacts {
        nvme_dealloc_zeroes: None,
        name: kname.to_owned(),
        discard_max_bytes: read_u64(&queue.join("discard_max_bytes"))?,
        write_zeroes_max_bytes: read_u64(&queue.join("write_zeroes_max_bytes")).unwrap_or(0),
        zeroing_mode,
    })
}

/// The kernel name of the block device at `path` (e.g. `/dev/strata-nvme/pvc-1` → `dm-3`).
pub fn kernel_name(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    Some(real.file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs fixture: `class/block/<name>` links into `devices/...` like the kernel's tree.
    struct Tree(tempfile::TempDir);

    impl Tree {
        fn new() -> Self {
            Tree(tempfile::tempdir().unwrap())
        }

        fn root(&self) -> &Path {
            self.0.path()
        }

        fn dev(&self, devpath: &str, name: &str, dmax: u64, wz: u64) -> PathBuf {
            let dir = self.root().join("devices").join(devpath).join(name);
            std::fs::create_dir_all(dir.join("queue")).unwrap();
            std::fs::create_dir_all(dir.join("slaves")).unwrap();
            std::fs::write(dir.join("queue/discard_max_bytes"), format!("{dmax}\n")).unwrap();
            std::fs::write(dir.join("queue/write_zeroes_max_bytes"), format!("{wz}\n")).unwrap();
            let class = self.root().join("class/block");
            std::fs::create_dir_all(&class).unwrap();
            std::os::unix::fs::symlink(&dir, class.join(name)).unwrap();
            dir
        }

        fn scsi(&self, dir: &Path, mode: &str) {
            let sd = dir.join("device/scsi_disk/0:0:0:0");
            std::fs::create_dir_all(&sd).unwrap();
            std::fs::write(sd.join("zeroing_mode"), format!("{mode}\n")).unwrap();
        }

        fn dm(&self, name: &str, dmax: u64, slaves: &[&str]) {
            let dir = self.dev("virtual/block", name, dmax, 0);
            for s in slaves {
                std::os::unix::fs::symlink(
                    self.root().join("class/block").join(s),
                    dir.join("slaves").join(s),
                )
                .unwrap();
            }
        }
    }

    // Figures from the node VM: qemu NVMe (DLFEAT=1), qemu AHCI disks (no LBPRZ).
    const NVME_DMAX: u64 = 2_147_483_136;
    const SATA_DMAX: u64 = 2_147_450_880;

    #[test]
    fn nvme_with_write_zeroes_but_no_dlfeat_evidence_is_zeroed() {
        let t = Tree::new();
        t.dev(
            "pci0000:00/0000:00:04.0/nvme/nvme0",
            "nvme0n1",
            NVME_DMAX,
            524_288,
        );
        t.dm("dm-0", NVME_DMAX, &["nvme0n1"]);
        // DLFEAT without zeroes: Write Zeroes alone is no evidence.
        let c = choose_for_device_with(t.root(), "dm-0", Policy::Discard, &|_| false);
        assert_eq!(c.method, Some(WipeMethod::Zero), "{}", c.reason);
        assert!(c.reason.contains("nvme0n1 does not show"), "{}", c.reason);
        assert_eq!(leaf_disks(t.root(), "dm-0"), vec!["nvme0n1".to_owned()]);
    }

    #[test]
    fn nvme_discards_only_when_dlfeat_says_zeroes() {
        let nvme = |id_ns_dlfeat: u8| {
            let mut id = vec![0u8; crate::nvme::IDENTIFY_BYTES];
            id[33] = id_ns_dlfeat;
            DiskFacts {
                name: "nvme0n1".into(),
                discard_max_bytes: NVME_DMAX,
                write_zeroes_max_bytes: 524_288,
                zeroing_mode: None,
                nvme_dealloc_zeroes: Some(crate::nvme::dealloc_reads_zeroes(&id)),
            }
        };
        let c = choose(Policy::Discard, None, &[nvme(1)]);
        assert_eq!(c.method, Some(WipeMethod::Discard), "{}", c.reason);
        let c = choose(Policy::Discard, None, &[nvme(0)]);
        assert_eq!(c.method, Some(WipeMethod::Zero), "{}", c.reason);
        // One disk without the evidence under a spanning LV zeroes the whole LV.
        let c = choose(Policy::Discard, None, &[nvme(1), nvme(0)]);
        assert_eq!(c.method, Some(WipeMethod::Zero), "{}", c.reason);
    }

    #[test]
    fn sata_without_lbprz_is_zeroed_even_when_it_discards() {
        let t = Tree::new();
        let sda = t.dev(
            "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block",
            "sda",
            SATA_DMAX,
            0,
        );
        t.scsi(&sda, "write");
        t.dm("dm-1", SATA_DMAX, &["sda"]);
        let c = choose_for_device(t.root(), "dm-1", Policy::Discard);
        assert_eq!(c.method, Some(WipeMethod::Zero));
        assert!(c.reason.contains("sda does not show"), "{}", c.reason);
        // The same disk with LBPRZ (a drive libata trusts to read zeroes after TRIM) discards.
        t.scsi(&sda, "writesame_16_unmap");
        let c = choose_for_device(t.root(), "dm-1", Policy::Discard);
        assert_eq!(c.method, Some(WipeMethod::Discard), "{}", c.reason);
    }

    #[test]
    fn one_disk_without_evidence_zeroes_an_lv_spanning_two() {
        let t = Tree::new();
        t.dev(
            "pci0000:00/0000:00:04.0/nvme/nvme0",
            "nvme0n1",
            NVME_DMAX,
            524_288,
        );
        t.dev("pci0000:00/0000:00:05.0/nvme/nvme1", "nvme1n1", 0, 0);
        t.dm("dm-2", NVME_DMAX, &["nvme0n1", "nvme1n1"]);
        let c = choose_for_device_with(t.root(), "dm-2", Policy::Discard, &|_| true);
        assert_eq!(c.method, Some(WipeMethod::Zero));
        assert!(
            c.reason.contains("nvme1n1 does not support discard"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn stacked_dm_and_partitions_resolve_to_whole_disks() {
        let t = Tree::new();
        let disk = t.dev(
            "pci0000:00/0000:00:04.0/nvme/nvme0",
            "nvme0n1",
            NVME_DMAX,
            524_288,
        );
        // nvme0n1p1 lives inside its disk's directory, like the kernel's tree.
        let part = disk.join("nvme0n1p1");
        std::fs::create_dir_all(part.join("slaves")).unwrap();
        std::fs::write(part.join("partition"), "1\n").unwrap();
        std::os::unix::fs::symlink(&part, t.root().join("class/block/nvme0n1p1")).unwrap();
        t.dm("dm-0", NVME_DMAX, &["nvme0n1p1"]);
        t.dm("dm-1", NVME_DMAX, &["dm-0"]);
        assert_eq!(leaf_disks(t.root(), "dm-1"), vec!["nvme0n1".to_owned()]);
        let c = choose_for_device_with(t.root(), "dm-1", Policy::Discard, &|d| d == "nvme0n1");
        assert_eq!(c.method, Some(WipeMethod::Discard), "{}", c.reason);
    }

    #[test]
    fn lv_queue_without_discard_or_unknown_device_zeroes() {
        let t = Tree::new();
        t.dev(
            "pci0000:00/0000:00:04.0/nvme/nvme0",
            "nvme0n1",
            NVME_DMAX,
            524_288,
        );
        t.dm("dm-0", 0, &["nvme0n1"]);
        assert_eq!(
            choose_for_device(t.root(), "dm-0", Policy::Discard).method,
            Some(WipeMethod::Zero)
        );
        assert_eq!(
            choose_for_device(t.root(), "dm-9", Policy::Discard).method,
            Some(WipeMethod::Zero)
        );
    }

    #[test]
    fn zero_and_none_ignore_the_disks() {
        let t = Tree::new();
        assert_eq!(
            choose_for_device(t.root(), "dm-0", Policy::Zero).method,
            Some(WipeMethod::Zero)
        );
        assert_eq!(
            choose_for_device(t.root(), "dm-0", Policy::None).method,
            None
        );
    }

    #[test]
    fn class_defaults_and_overrides() {
        let mut p = ClassPolicies::default();
        assert_eq!(p.get(DeviceClass::Nvme), Policy::Discard);
        assert_eq!(p.get(DeviceClass::Ssd), Policy::Discard);
        assert_eq!(p.get(DeviceClass::Hdd), Policy::Zero);
        p.0.insert(DeviceClass::Ssd, Policy::None);
        assert_eq!(p.get(DeviceClass::Ssd), Policy::None);
        assert_eq!("zero".parse::<Policy>().unwrap(), Policy::Zero);
        assert!("shred".parse::<Policy>().is_err());
        for p in [Policy::Discard, Policy::Zero, Policy::None] {
            assert_eq!(p.as_str().parse::<Policy>(), Ok(p));
        }
    }
}
