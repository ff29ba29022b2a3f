//! Node tests: LVM, device-mapper and filesystems on real (emulated) disks. They run as root
//! inside the Strata node VM with the lab disk set:
//!
//!     tests/nodevm/cargo-node-test            # = cargo test -p strata-tests --test node in the VM
//!
//! On the host they do nothing but say so (see `vm::enter`); they never touch the host's disks.
//! The lab (tests/nodevm/README.md): NVMe NVME-A at 00:04.0 and NVME-B at 00:05.0 (8 GiB each),
//! SATA SSD-A (4 GiB), HDD-A (16 GiB), HDD-GPT (4 GiB, GPT, 2 partitions), SSD-EXT4 (2 GiB, ext4),
//! SWAP-A (2 GiB, swap), virtio PV-FOREIGN (2 GiB, PV of the foreign VG `othervg`).

use strata_tests::vm;

use std::fs;
use std::path::{Path, PathBuf};

const GIB: u64 = 1 << 30;

/// Removes what a test created even when it fails half-way, so that the next test finds the
/// disks as the lab declared them. The happy path tears down explicitly (and checks each step);
/// the guard only acts on what is left.
struct Teardown {
    mounts: Vec<PathBuf>,
    vg: Option<String>,
    pvs: Vec<PathBuf>,
}

impl Teardown {
    fn new() -> Self {
        Teardown {
            mounts: Vec::new(),
            vg: None,
            pvs: Vec::new(),
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = vm::output("umount", &["-l", &m.to_string_lossy()]);
        }
        if let Some(vg) = &self.vg {
            let _ = vm::output("vgremove", &["-f", "-y", vg]);
        }
        for pv in &self.pvs {
            let _ = vm::output("pvremove", &["-ff", "-y", &pv.to_string_lossy()]);
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn assert_blank(disk: &vm::Disk) {
    let found = vm::probe(&disk.dev);
    assert!(
        found.is_empty(),
        "{} ({}) should carry no signature, blkid -p finds {found:?}",
        disk.serial,
        disk.name
    );
    assert_eq!(
        disk.partitions, 0,
        "{} ({}) should have no partitions",
        disk.serial, disk.name
    );
}

/// The lab carries what `nodevm --lab` declares: slots, media, sizes and prepared content.
#[test]
fn lab_disks_carry_declared_content() {
    let Some(_lab) = vm::enter("lab_disks_carry_declared_content") else {
        return;
    };

    let nvme_a = vm::nvme_at("0000:00:04.0");
    let nvme_b = vm::nvme_at("0000:00:05.0");
    assert_eq!(nvme_a.serial, "NVME-A");
    assert_eq!(nvme_b.serial, "NVME-B");
    for d in [&nvme_a, &nvme_b] {
        assert_eq!(d.size_bytes, 8 * GIB, "{d:?}");
        assert!(!d.rotational, "{d:?}");
        assert_blank(d);
    }

    // (serial, rotational, size in GiB)
    for (serial, rotational, gib) in [
        ("SSD-A", false, 4),
        ("HDD-A", true, 16),
        ("HDD-GPT", true, 4),
        ("SSD-EXT4", false, 2),
        ("SWAP-A", false, 2),
    ] {
        let d = vm::by_serial(serial);
        assert_eq!(
            d.pci, "0000:00:1f.2",
            "{serial} should sit on the q35 AHCI controller: {d:?}"
        );
        assert!(d.name.starts_with("sd"), "{d:?}");
        assert_eq!(d.rotational, rotational, "{d:?}");
        assert_eq!(d.size_bytes, gib * GIB, "{d:?}");
    }
    assert_blank(&vm::by_serial("SSD-A"));
    assert_blank(&vm::by_serial("HDD-A"));

    let gpt = vm::by_serial("HDD-GPT");
    assert_eq!(
        vm::probe(&gpt.dev).get("PTTYPE").map(String::as_str),
        Some("gpt"),
        "{gpt:?}"
    );
    assert_eq!(gpt.partitions, 2, "{gpt:?}");

    let ext4 = vm::by_serial("SSD-EXT4");
    assert_eq!(
        vm::probe(&ext4.dev).get("TYPE").map(String::as_str),
        Some("ext4"),
        "{ext4:?}"
    );

    let swap = vm::by_serial("SWAP-A");
    assert_eq!(
        vm::probe(&swap.dev).get("TYPE").map(String::as_str),
        Some("swap"),
        "{swap:?}"
    );

    let foreign = vm::by_serial("PV-FOREIGN");
    assert_eq!(foreign.pci, "0000:00:06.0", "{foreign:?}");
    assert!(foreign.name.starts_with("vd"), "{foreign:?}");
    assert_eq!(foreign.size_bytes, 2 * GIB);
    assert_eq!(
        vm::probe(&foreign.dev).get("TYPE").map(String::as_str),
        Some("LVM2_member"),
        "{foreign:?}"
    );
    let vg = vm::run("pvs", &["--noheadings", "-o", "vg_name", s(&foreign.dev)]);
    assert_eq!(vg.trim(), "othervg");
    // the foreign VG's LV exists but nothing activated it
    let attr = vm::run("lvs", &["--noheadings", "-o", "lv_attr", "othervg/data"]);
    assert_eq!(
        attr.trim().chars().nth(4),
        Some('-'),
        "othervg/data should be inactive: {attr}"
    );
}

/// The acceptance path of a Strata volume: VG over both NVMe disks, LV, XFS, online growth
/// across the second PV, data intact, and the disks clean afterwards.
#[test]
fn lvm_xfs_online_grow_on_nvme() {
    let Some(_lab) = vm::enter("lvm_xfs_online_grow_on_nvme") else {
        return;
    };
    let vg = "nodetest_nvme";
    let disks = [vm::nvme_at("0000:00:04.0"), vm::nvme_at("0000:00:05.0")];
    for d in &disks {
        assert_blank(d);
    }
    let devs: Vec<&str> = disks.iter().map(|d| s(&d.dev)).collect();
    let mut teardown = Teardown::new();

    teardown.pvs = disks.iter().map(|d| d.dev.clone()).collect();
    vm::run("pvcreate", &[&["-q", "-y"], devs.as_slice()].concat());
    teardown.vg = Some(vg.to_owned());
    vm::run("vgcreate", &[&["-q", vg], devs.as_slice()].concat());
    vm::run(
        "lvcreate",
        &["-q", "-y", "-W", "y", "-L", "1G", "-n", "data", vg],
    );
    let lv = PathBuf::from(format!("/dev/{vg}/data"));
    assert!(lv.exists(), "{} missing after lvcreate", lv.display());
    assert_eq!(vm::dev_size(&lv), GIB);

    vm::run("mkfs.xfs", &["-q", s(&lv)]);
    let mnt = PathBuf::from("/mnt/nodetest-xfs");
    fs::create_dir_all(&mnt).expect("mkdir mountpoint");
    vm::run("mount", &[s(&lv), s(&mnt)]);
    teardown.mounts.push(mnt.clone());

    let data: Vec<u8> = (0..4 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = mnt.join("payload");
    fs::write(&file, &data).expect("write payload");
    vm::run("sync", &[]);
    let before = vm::fs_size(&mnt);
    assert!(before <= GIB, "fresh 1 GiB XFS reports {before} bytes");

    // 10 GiB does not fit on one 8 GiB PV: the LV must span both disks
    vm::run("lvextend", &["-q", "-L", "10G", &format!("{vg}/data")]);
    assert_eq!(vm::dev_size(&lv), 10 * GIB);
    let pvs_used = vm::run(
        "lvs",
        &["--noheadings", "-o", "devices", &format!("{vg}/data")],
    );
    for d in &devs {
        assert!(pvs_used.contains(d), "LV should use {d}: {pvs_used}");
    }
    vm::run("xfs_growfs", &[s(&mnt)]);
    let after = vm::fs_size(&mnt);
    assert!(
        after > 9 * GIB,
        "filesystem did not grow online: {before} -> {after} bytes"
    );
    assert_eq!(
        fs::read(&file).expect("read payload back"),
        data,
        "payload changed by the growth"
    );

    vm::run("umount", &[s(&mnt)]);
    teardown.mounts.clear();
    vm::run("xfs_repair", &["-n", s(&lv)]);
    vm::run("lvremove", &["-q", "-y", &format!("{vg}/data")]);
    vm::run("vgremove", &["-q", "-y", vg]);
    teardown.vg = None;
    vm::run("pvremove", &[&["-q", "-y"], devs.as_slice()].concat());
    teardown.pvs.clear();

    for d in &disks {
        assert_blank(d);
    }
    let left = vm::run("dmsetup", &["ls"]);
    assert!(
        !left.contains(vg),
        "device-mapper devices left behind: {left}"
    );
}

/// What the image must bring beyond plain LVM: thin pools (dm-thin-pool, thin_check),
/// dmeventd monitoring (its plugins are dlopen()ed), classic snapshots (dm-snapshot), ext4 with
/// `lvextend -r` (fsadm needs GNU coreutils).
#[test]
fn thin_pool_snapshot_and_monitoring() {
    let Some(_lab) = vm::enter("thin_pool_snapshot_and_monitoring") else {
        return;
    };
    let vg = "nodetest_ssd";
    let disk = vm::by_serial("SSD-A");
    assert_blank(&disk);
    let dev = s(&disk.dev);
    let mut teardown = Teardown::new();
    teardown.pvs = vec![disk.dev.clone()];
    vm::run("pvcreate", &["-q", "-y", dev]);
    teardown.vg = Some(vg.to_owned());
    vm::run("vgcreate", &["-q", vg, dev]);

    // thin pool + thin volume, monitored by dmeventd
    vm::run(
        "lvcreate",
        &["-q", "-y", "-L", "512M", "-T", &format!("{vg}/pool")],
    );
    vm::run(
        "lvcreate",
        &[
            "-q",
            "-y",
            "-V",
            "2G",
            "-T",
            &format!("{vg}/pool"),
            "-n",
            "thin",
        ],
    );
    let monitor = vm::run(
        "lvs",
        &["--noheadings", "-o", "seg_monitor", &format!("{vg}/pool")],
    );
    assert_eq!(
        monitor.trim(),
        "monitored",
        "dmeventd does not monitor the thin pool"
    );
    let thin = PathBuf::from(format!("/dev/{vg}/thin"));
    vm::run("mkfs.ext4", &["-q", s(&thin)]);
    let mnt = PathBuf::from("/mnt/nodetest-thin");
    fs::create_dir_all(&mnt).expect("mkdir mountpoint");
    vm::run("mount", &[s(&thin), s(&mnt)]);
    teardown.mounts.push(mnt.clone());
    fs::write(mnt.join("f"), b"before").expect("write");
    vm::run("sync", &[]);
    // a snapshot of a mounted volume: LVM's suspend freezes the filesystem itself
    vm::run(
        "lvcreate",
        &["-q", "-s", "-n", "thinsnap", &format!("{vg}/thin")],
    );
    fs::write(mnt.join("f"), b"after").expect("write");
    vm::run(
        "lvchange",
        &["-q", "-a", "y", "-K", &format!("{vg}/thinsnap")],
    );
    let snapmnt = PathBuf::from("/mnt/nodetest-thinsnap");
    fs::create_dir_all(&snapmnt).expect("mkdir mountpoint");
    vm::run(
        "mount",
        &["-o", "ro", &format!("/dev/{vg}/thinsnap"), s(&snapmnt)],
    );
    teardown.mounts.push(snapmnt.clone());
    assert_eq!(
        fs::read(snapmnt.join("f")).expect("read snapshot"),
        b"before"
    );
    vm::run("umount", &[s(&snapmnt)]);
    vm::run("umount", &[s(&mnt)]);
    teardown.mounts.clear();

    // linear LV with ext4: classic snapshot, then lvextend -r (fsadm) online
    vm::run(
        "lvcreate",
        &["-q", "-y", "-W", "y", "-L", "256M", "-n", "lin", vg],
    );
    let lin = PathBuf::from(format!("/dev/{vg}/lin"));
    vm::run("mkfs.ext4", &["-q", s(&lin)]);
    vm::run(
        "lvcreate",
        &[
            "-q",
            "-s",
            "-L",
            "64M",
            "-n",
            "linsnap",
            &format!("{vg}/lin"),
        ],
    );
    let origin = vm::run(
        "lvs",
        &["--noheadings", "-o", "origin", &format!("{vg}/linsnap")],
    );
    assert_eq!(origin.trim(), "lin");
    vm::run("lvremove", &["-q", "-y", &format!("{vg}/linsnap")]);
    let linmnt = PathBuf::from("/mnt/nodetest-lin");
    fs::create_dir_all(&linmnt).expect("mkdir mountpoint");
    vm::run("mount", &[s(&lin), s(&linmnt)]);
    teardown.mounts.push(linmnt.clone());
    let before = vm::fs_size(&linmnt);
    vm::run(
        "lvextend",
        &["-q", "-r", "-L", "512M", &format!("{vg}/lin")],
    );
    let after = vm::fs_size(&linmnt);
    assert!(
        after > before + 200 * (1 << 20),
        "ext4 did not grow online: {before} -> {after}"
    );
    vm::run("umount", &[s(&linmnt)]);
    teardown.mounts.clear();

    vm::run("vgremove", &["-q", "-y", "-f", vg]);
    teardown.vg = None;
    vm::run("pvremove", &["-q", "-y", dev]);
    teardown.pvs.clear();
    assert_blank(&vm::by_serial("SSD-A"));
}
