//! Discovery on fixture trees captured from the node VM (`tests/fixtures/sysfs/lab`, the `--lab`
//! disk set with the ext4 disk mounted and the swap disk enabled) and from this host
//! (`tests/fixtures/sysfs/host`). Refusals the lab does not show (read-only, removable, holders,
//! small, no node, ambivalent, ...) are made by editing a copy of the lab tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::lvm::blkid::{ProbeError, Probed, parse_export};
use csi_api::crd::DiskState;
use csi_api::names::DeviceClass;

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/sysfs")
        .join(name)
}

fn roots(tree: &Path) -> Roots {
    Roots {
        sysfs: tree.join("sys"),
        dev: tree.join("dev"),
        proc: tree.join("proc"),
    }
}

/// Replays the `blkid -p -o export` output captured with the tree (by device file name).
struct Replay {
    dir: PathBuf,
    overrides: Mutex<BTreeMap<String, Result<Probed, String>>>,
}

impl Replay {
    fn new(tree: &Path) -> Self {
        Replay {
            dir: tree.join("blkid"),
            overrides: Mutex::new(BTreeMap::new()),
        }
    }

    fn set(&self, name: &str, result: Result<Probed, String>) {
        self.overrides
            .lock()
            .unwrap()
            .insert(name.to_owned(), result);
    }
}

#[async_trait]
impl SignatureProbe for Replay {
    async fn probe(&self, device: &Path) -> Result<Probed, ProbeError> {
        let name = device.file_name().unwrap().to_str().unwrap().to_owned();
        if let Some(r) = self.overrides.lock().unwrap().get(&name) {
            return r.clone().map_err(|stderr| ProbeError::Failed {
                path: device.to_path_buf(),
                code: Some(4),
                stderr,
            });
        }
        let rc = std::fs::read_to_string(self.dir.join(format!("{name}.rc"))).unwrap();
        let out = std::fs::read_to_string(self.dir.join(format!("{name}.export"))).unwrap();
        Ok(match rc.trim() {
            "0" => parse_export(&out),
            "2" => Probed::Blank,
            "8" => Probed::Ambivalent,
            other => panic!("unexpected captured rc {other}"),
        })
    }
}

const FOREIGN_PV_UUID: &str = "r53vbz-D8bu-pxjr-Vq59-NPRe-fvfp-W9eQfh";

fn pvs_foreign() -> PvView {
    PvView::Known(BTreeMap::from([(
        FOREIGN_PV_UUID.to_owned(),
        KnownPv {
            vg: Some("othervg".into()),
            strata: false,
        },
    )]))
}

async fn scan_tree(tree: &Path, probe: &Replay, pvs: &PvView) -> Inventory {
    let r = roots(tree);
    let usage = Usage::read(&r.proc).unwrap();
    scan(&r, &usage, probe, pvs).await.unwrap()
}

fn by_serial<'a>(inv: &'a Inventory, serial: &str) -> &'a Found {
    inv.disks
        .iter()
        .find(|d| d.disk.serial == serial)
        .unwrap_or_else(|| panic!("no disk with serial {serial}: {inv:#?}"))
}

fn refusals(f: &Found) -> &[Refusal] {
    match &f.verdict {
        Verdict::Refused(r) => r,
        other => panic!("{} not refused: {other:?}", f.disk.slot),
    }
}

/// A writable copy of a fixture tree (symlinks kept as they are).
fn copy_tree(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(fixture(name).join("."))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn block_dir(tree: &Path, name: &str) -> PathBuf {
    std::fs::canonicalize(tree.join("sys/block").join(name)).unwrap()
}

#[tokio::test]
async fn lab_disks_by_slot_media_and_identity() {
    let tree = fixture("lab");
    let inv = scan_tree(&tree, &Replay::new(&tree), &pvs_foreign()).await;
    let got: Vec<_> = inv
        .disks
        .iter()
        .map(|f| {
            (
                f.disk.slot.as_str(),
                f.disk.media,
                f.disk.serial.as_str(),
                f.disk.size_bytes >> 20,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("pci-0000:00:04.0-nvme-1", DeviceClass::Nvme, "NVME-A", 8192),
            ("pci-0000:00:05.0-nvme-1", DeviceClass::Nvme, "NVME-B", 8192),
            ("pci-0000:00:06.0", DeviceClass::Hdd, "PV-FOREIGN", 2048),
            ("pci-0000:00:1f.2-ata-1", DeviceClass::Ssd, "SSD-A", 4096),
            ("pci-0000:00:1f.2-ata-2", DeviceClass::Hdd, "HDD-A", 16384),
            ("pci-0000:00:1f.2-ata-3", DeviceClass::Hdd, "HDD-GPT", 4096),
            ("pci-0000:00:1f.2-ata-4", DeviceClass::Ssd, "SSD-EXT4", 2048),
            ("pci-0000:00:1f.2-ata-5", DeviceClass::Ssd, "SWAP-A", 2048),
        ]
    );
    let nvme = by_serial(&inv, "NVME-A");
    assert_eq!(nvme.disk.transport, Some(Transport::Nvme));
    assert_eq!(nvme.disk.kernel_name, "nvme0n1");
    assert_eq!(nvme.disk.device, tree.join("dev/nvme0n1"));
    assert_eq!(nvme.disk.logical_block_size, 512);
    assert!(nvme.disk.model.contains("NVMe"), "{}", nvme.disk.model);
    assert!(nvme.disk.wwn.starts_with("nvme."), "{}", nvme.disk.wwn);
    let ssd = by_serial(&inv, "SSD-A");
    assert_eq!(ssd.disk.transport, Some(Transport::Ata));
    assert_eq!(ssd.disk.wwn, "", "t10 vendor ids are not WWNs");
    assert!(!ssd.disk.model.is_empty());
    assert_eq!(
        by_serial(&inv, "PV-FOREIGN").disk.transport,
        Some(Transport::Virtio)
    );
    assert!(inv.notes.is_empty(), "{:?}", inv.notes);
}

#[tokio::test]
async fn lab_eligibility_and_every_captured_refusal() {
    let tree = fixture("lab");
    let inv = scan_tree(&tree, &Replay::new(&tree), &pvs_foreign()).await;
    for serial in ["NVME-A", "NVME-B", "SSD-A", "HDD-A"] {
        assert_eq!(
            by_serial(&inv, serial).verdict,
            Verdict::Eligible,
            "{serial}"
        );
        assert_eq!(by_serial(&inv, serial).status().state, DiskState::Available);
    }
    let gpt = by_serial(&inv, "HDD-GPT");
    assert_eq!(
        refusals(gpt),
        [
            Refusal::HasPartitions(vec!["sdb1".into(), "sdb2".into()]),
            Refusal::Signature("gpt partition table".into()),
        ]
    );
    assert_eq!(
        gpt.reason(),
        "has partitions (sdb1, sdb2); has gpt partition table"
    );
    let ext4 = by_serial(&inv, "SSD-EXT4");
    assert_eq!(
        refusals(ext4),
        [
            Refusal::Mounted(vec![PathBuf::from("/mnt/fixture-ext4")]),
            Refusal::Signature("ext4 filesystem".into()),
        ]
    );
    let swap = by_serial(&inv, "SWAP-A");
    assert_eq!(
        refusals(swap),
        [
            Refusal::Swap(vec!["/dev/sdd".into()]),
            Refusal::Signature("swap signature".into()),
        ]
    );
    let pv = by_serial(&inv, "PV-FOREIGN");
    assert_eq!(refusals(pv), [Refusal::ForeignPv(Some("othervg".into()))]);
    assert_eq!(
        pv.reason(),
        "is an LVM2 physical volume of foreign VG othervg"
    );
    assert_eq!(pv.status().state, DiskState::Rejected);
}

#[tokio::test]
async fn strata_pv_is_claimed_and_unknown_lvm_degrades_to_rejected() {
    let tree = fixture("lab");
    let probe = Replay::new(&tree);
    let strata = PvView::Known(BTreeMap::from([(
        FOREIGN_PV_UUID.to_owned(),
        KnownPv {
            vg: Some("strata-hdd".into()),
            strata: true,
        },
    )]));
    let inv = scan_tree(&tree, &probe, &strata).await;
    let pv = by_serial(&inv, "PV-FOREIGN");
    assert_eq!(
        pv.verdict,
        Verdict::StrataPv {
            pv_uuid: FOREIGN_PV_UUID.into(),
            vg: Some("strata-hdd".into())
        }
    );
    let status = pv.status();
    assert_eq!(status.state, DiskState::Claimed);
    assert_eq!(status.volume_group.as_deref(), Some("strata-hdd"));

    // an LVM2 PV that LVM does not list is not trusted either
    let empty = scan_tree(&tree, &probe, &PvView::Known(BTreeMap::new())).await;
    assert_eq!(
        refusals(by_serial(&empty, "PV-FOREIGN")),
        [Refusal::ForeignPv(None)]
    );

    let unknown = PvView::Unavailable("lvm: not found".into());
    let inv = scan_tree(&tree, &probe, &unknown).await;
    assert_eq!(
        refusals(by_serial(&inv, "PV-FOREIGN")),
        [Refusal::UncheckedPv("lvm: not found".into())]
    );
    assert_eq!(inv.notes.len(), 1);
    assert!(
        inv.notes[0].contains("LVM is unavailable"),
        "{:?}",
        inv.notes
    );
    // everything else is judged as before
    assert_eq!(by_serial(&inv, "NVME-A").verdict, Verdict::Eligible);
}

#[tokio::test]
async fn synthesized_refusals_read_only_removable_holders_small_no_node() {
    let t = copy_tree("lab");
    let tree = t.path();
    let nvme_a = block_dir(tree, "nvme0n1");
    let nvme_b = block_dir(tree, "nvme1n1");
    let ssd = block_dir(tree, "sda");
    let hdd = block_dir(tree, "sde");
    std::fs::write(nvme_a.join("ro"), "1\n").unwrap();
    std::fs::write(nvme_b.join("removable"), "1\n").unwrap();
    std::fs::create_dir_all(ssd.join("holders")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../../../../virtual/block/dm-0",
        ssd.join("holders/dm-0"),
    )
    .unwrap();
    std::fs::write(hdd.join("size"), "2097150\n").unwrap(); // 1 GiB - 1 KiB
    std::fs::remove_file(tree.join("dev/sdc")).unwrap();

    let probe = Replay::new(tree);
    let inv = scan_tree(tree, &probe, &pvs_foreign()).await;
    assert_eq!(refusals(by_serial(&inv, "NVME-A")), [Refusal::ReadOnly]);
    assert_eq!(by_serial(&inv, "NVME-A").reason(), "read-only");
    assert_eq!(refusals(by_serial(&inv, "NVME-B")), [Refusal::Removable]);
    assert_eq!(
        refusals(by_serial(&inv, "SSD-A")),
        [Refusal::HasHolders(vec!["dm-0".into()])]
    );
    assert_eq!(
        refusals(by_serial(&inv, "HDD-A")),
        [Refusal::TooSmall((1 << 30) - 1024)]
    );
    // no device node: not probed at all, still reported with its other reasons
    let ext4 = by_serial(&inv, "SSD-EXT4");
    assert_eq!(
        refusals(ext4),
        [
            Refusal::Mounted(vec![PathBuf::from("/mnt/fixture-ext4")]),
            Refusal::NoDeviceNode(tree.join("dev/sdc")),
        ]
    );
    assert_eq!(ext4.signature, None);
}

#[tokio::test]
async fn probe_failures_ambivalence_and_unknown_slots_refuse() {
    let t = copy_tree("lab");
    let tree = t.path();
    // the ATA port number is what names the slot: without it there is no slot
    let sda = block_dir(tree, "sda");
    let port = sda
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "ata1"))
        .unwrap()
        .join("ata_port/ata1/port_no");
    std::fs::remove_file(port).unwrap();
    let probe = Replay::new(tree);
    probe.set("nvme0n1", Ok(Probed::Ambivalent));
    probe.set("nvme1n1", Err("blkid: cannot read".into()));
    let inv = scan_tree(tree, &probe, &pvs_foreign()).await;
    assert_eq!(refusals(by_serial(&inv, "NVME-A")), [Refusal::Ambivalent]);
    let failed = refusals(by_serial(&inv, "NVME-B"));
    assert!(
        matches!(failed, [Refusal::ProbeFailed(m)] if m.contains("cannot read")),
        "{failed:?}"
    );
    let ssd = by_serial(&inv, "SSD-A");
    assert_eq!(ssd.disk.slot, "");
    assert!(
        matches!(refusals(ssd), [Refusal::NoSlot(m)] if m.contains("port_no")),
        "{ssd:?}"
    );
    // disks without a slot sort last and show "-" in the table
    assert_eq!(inv.disks.last().unwrap().disk.serial, "SSD-A");
    let table = render_table(&[ssd.status()], &[]);
    assert!(table.lines().nth(1).unwrap().starts_with("- "), "{table}");
}

#[tokio::test]
async fn ignored_kernel_devices_pci_slots_and_multipath_heads() {
    let t = copy_tree("lab");
    let tree = t.path();
    let sys = tree.join("sys");
    // a loop device and a device-mapper device are never candidates
    for name in ["loop0", "dm-0", "zram0"] {
        std::fs::create_dir_all(sys.join("devices/virtual/block").join(name)).unwrap();
        std::fs::write(
            sys.join("devices/virtual/block").join(name).join("size"),
            "8388608",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            format!("../devices/virtual/block/{name}"),
            sys.join("block").join(name),
        )
        .unwrap();
    }
    // the platform names the physical slot of 00:04
    std::fs::create_dir_all(sys.join("bus/pci/slots/4")).unwrap();
    std::fs::write(sys.join("bus/pci/slots/4/address"), "0000:00:04\n").unwrap();
    // NVMe-B as a multipath head: the slot comes from its first path
    let head = sys.join("devices/virtual/nvme-subsystem/nvme-subsys1/nvme1n1");
    let path_dir = block_dir(tree, "nvme1n1");
    std::fs::create_dir_all(head.parent().unwrap()).unwrap();
    std::fs::rename(&path_dir, &head).unwrap();
    std::fs::create_dir_all(&path_dir).unwrap(); // now the hidden path device nvme1c1n1
    let path_dev = path_dir.with_file_name("nvme1c1n1");
    std::fs::rename(&path_dir, &path_dev).unwrap();
    std::fs::create_dir_all(head.join("multipath")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../pci0000:00/0000:00:05.0/nvme/nvme1/nvme1c1n1",
        head.join("multipath/nvme1c1n1"),
    )
    .unwrap();
    std::fs::remove_file(head.join("device")).unwrap();
    std::fs::write(head.join("serial"), "NVME-B\n").unwrap();
    std::fs::remove_file(sys.join("block/nvme1n1")).unwrap();
    std::os::unix::fs::symlink(
        "../devices/virtual/nvme-subsystem/nvme-subsys1/nvme1n1",
        sys.join("block/nvme1n1"),
    )
    .unwrap();

    let inv = scan_tree(tree, &Replay::new(tree), &pvs_foreign()).await;
    assert_eq!(inv.disks.len(), 8, "{:#?}", inv.disks);
    assert!(inv.disks.iter().all(|d| is_candidate(&d.disk.kernel_name)));
    let a = by_serial(&inv, "NVME-A");
    assert_eq!(a.disk.physical_slot.as_deref(), Some("4"));
    assert_eq!(by_serial(&inv, "HDD-A").disk.physical_slot, None);
    let b = by_serial(&inv, "NVME-B");
    assert_eq!(b.disk.slot, "pci-0000:00:05.0-nvme-1");
    assert_eq!(b.disk.media, DeviceClass::Nvme);
    assert_eq!(b.verdict, Verdict::Eligible);
}

#[tokio::test]
async fn host_fixture_virtio_root_disk_is_rejected() {
    // captured on the development host: /dev/vda (virtio, ext4 on the whole disk, mounted at /),
    // loop and zram devices beside it
    let tree = fixture("host");
    let inv = scan_tree(&tree, &Replay::new(&tree), &PvView::Unavailable("x".into())).await;
    assert_eq!(inv.disks.len(), 1);
    let vda = &inv.disks[0];
    assert_eq!(vda.disk.slot, "pci-0000:00:02.0");
    assert_eq!(vda.disk.transport, Some(Transport::Virtio));
    assert_eq!(refusals(vda), [Refusal::Mounted(vec![PathBuf::from("/")])]);
}

#[tokio::test]
async fn missing_sysfs_root_is_an_error() {
    let r = Roots {
        sysfs: PathBuf::from("/nonexistent/sys"),
        ..Roots::default()
    };
    let err = scan(
        &r,
        &Usage::default(),
        &Replay::new(Path::new("/x")),
        &pvs_foreign(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/sys"), "{err}");
}

#[tokio::test]
async fn recheck_refuses_anything_but_blank() {
    let probe = Replay::new(Path::new("/nonexistent"));
    probe.set("a", Ok(Probed::Blank));
    probe.set("b", Ok(parse_export("TYPE=xfs\nUSAGE=filesystem\n")));
    probe.set("c", Ok(Probed::Ambivalent));
    probe.set("d", Err("io".into()));
    assert_eq!(recheck_blank(&probe, Path::new("/dev/a")).await, Ok(()));
    assert_eq!(
        recheck_blank(&probe, Path::new("/dev/b")).await,
        Err(Refusal::Signature("xfs filesystem".into()))
    );
    assert_eq!(
        recheck_blank(&probe, Path::new("/dev/c")).await,
        Err(Refusal::Ambivalent)
    );
    assert!(matches!(
        recheck_blank(&probe, Path::new("/dev/d")).await,
        Err(Refusal::ProbeFailed(_))
    ));
}

/// Counts the probes in flight around a [`Replay`], each held for a moment.
struct Overlap {
    inner: Replay,
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl SignatureProbe for Overlap {
    async fn probe(&self, device: &Path) -> Result<Probed, ProbeError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        self.now.fetch_sub(1, SeqCst);
        self.inner.probe(device).await
    }
}

#[tokio::test]
async fn probes_overlap_within_the_bound_and_the_order_is_kept() {
    let tree = fixture("lab");
    let probe = Overlap {
        inner: Replay::new(&tree),
        now: Default::default(),
        most: Default::default(),
    };
    let r = roots(&tree);
    let usage = Usage::read(&r.proc).unwrap();
    let inv = scan(&r, &usage, &probe, &pvs_foreign()).await.unwrap();
    let most = probe.most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(inv.disks.len() > 2, "{inv:#?}");
    assert!(
        most > 1 && most <= CONCURRENT_PROBES,
        "{most} probes at once"
    );
    let plain = scan_tree(&tree, &Replay::new(&tree), &pvs_foreign()).await;
    assert_eq!(inv, plain);
}
