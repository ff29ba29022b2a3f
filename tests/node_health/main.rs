//! Node tests of disk health, inside the node VM with the lab disks (one boot for the target):
//! - the NVMe SMART / Health log read through `NVME_IOCTL_ADMIN_CMD` agrees with nvme-cli;
//! - SATA SMART RETURN STATUS through `SG_IO` answers "passed" on qemu's disks;
//! - a fault under a live volume: a VG over two SATA disks, one volume on each; the first disk
//!   is set `offline` (SCSI device state: every I/O fails) → it turns `Failing` with the evidence,
//!   its class is Degraded naming its slot, only its volume is abnormal (naming the slot), and
//!   so is a thin volume whose pool is on that disk (a thin volume has no extents of its own),
//!   the volume on the other disk stays healthy and usable; `replace-disk` refuses while the volume
//!   is on it. Then the disk is deleted from the SCSI bus (`device/delete`) → missing; once its
//!   volume is deleted, `replace-disk` (dry run changes nothing) removes it and the VG is whole,
//!   the other volume's data intact. Run with
//!
//!     NODE_TEST_TARGET=node_health tests/nodevm/cargo-node-test -- --nocapture
//!
//! On the host the tests only say why they skip.

use strata_tests::vm;

use std::collections::BTreeMap;
use std::path::Path;

use csi_agent::claim::{Policy, class_summary, degrade_failing, degraded_reasons};
use csi_agent::csi::lvm_volumes::LvmVolumes;
use csi_agent::csi::volumes::Volumes;
use csi_agent::health::replace::{Refusal, ReplaceError, replace_disk};
use csi_agent::health::{Board, ata, check_disks, nvme};
use csi_agent::lvm::naming::{escape, volume_tag};
use csi_agent::lvm::{
    CommandRunner, Lvm, LvmOptions, OWNER_TAG, RunnerConfig, THIN_POOL_LV, THIN_POOL_TAG, THIN_TAG,
};
use csi_api::crd::{ClassHealth, DiskState, DiskStatus, NodeStorageSpec};
use csi_api::names::DeviceClass;

const VG: &str = "strata-ssd";
const MARK: &str = "STRATA-HEALTH-MARK";

fn layer() -> Lvm<CommandRunner> {
    Lvm::new(
        CommandRunner::new(RunnerConfig::default()),
        LvmOptions::default(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn nvme_smart_log_through_the_ioctl_agrees_with_nvme_cli() {
    let Some(_lab) = vm::enter("nvme_smart_log_through_the_ioctl_agrees_with_nvme_cli") else {
        return;
    };
    let disk = vm::nvme_at("0000:00:04.0");
    let raw = csi_agent::nvme::smart_log(&disk.dev).expect("Get Log Page 0x02");
    let log = nvme::parse(&raw).unwrap();
    let cli: serde_json::Value = serde_json::from_str(&vm::run(
        "nvme",
        &["smart-log", "-o", "json", &disk.dev.to_string_lossy()],
    ))
    .expect("nvme-cli JSON");
    eprintln!("ioctl: {log:?}");
    assert_eq!(u64::from(log.critical_warning), cli["critical_warning"]);
    assert_eq!(u64::from(log.temperature_k), cli["temperature"]);
    assert_eq!(u64::from(log.available_spare), cli["avail_spare"]);
    assert_eq!(u64::from(log.spare_threshold), cli["spare_thresh"]);
    assert_eq!(u64::from(log.percentage_used), cli["percent_used"]);
    assert_eq!(log.media_errors.to_string(), cli["media_errors"]);
    assert!(log.temperature_k > 250, "a plausible temperature in kelvin");
    assert!(log.evidence().is_empty(), "{:?}", log.evidence());
}

#[test]
fn sata_smart_status_passes_on_the_lab_disks() {
    let Some(_lab) = vm::enter("sata_smart_status_passes_on_the_lab_disks") else {
        return;
    };
    for serial in ["SSD-A", "HDD-A"] {
        let disk = vm::by_serial(serial);
        let status = ata::smart_status(&disk.dev)
            .unwrap_or_else(|e| panic!("SMART RETURN STATUS on {serial}: {e}"));
        assert_eq!(status, ata::SmartStatus::Passed, "{serial}");
    }
}

/// Puts the lab back whatever happened: SCSI devices running and present, no VG, no PV label.
struct Restore {
    ssd_sysfs: String,
    devices: Vec<String>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("{}/device/state", self.ssd_sysfs), "running\n");
        rescan();
        let _ = vm::output("vgremove", &["-f", "-y", VG]);
        for d in &self.devices {
            let _ = vm::output("pvremove", &["-ff", "-y", d]);
            let _ = vm::output("wipefs", &["-a", d]);
        }
    }
}

fn rescan() {
    if let Ok(hosts) = std::fs::read_dir("/sys/class/scsi_host") {
        for h in hosts.flatten() {
            let _ = std::fs::write(h.path().join("scan"), "- - -");
        }
    }
    let _ = vm::output("udevadm", &["settle"]);
}

fn dd_write(dev: &str, text: &str) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("printf '%s' \"$1\" | dd of=\"$2\" bs=4096 conv=sync oflag=direct status=none")
        .args(["sh", text, dev])
        .output()
        .expect("dd");
    assert!(
        out.status.success(),
        "write {dev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dd_read(dev: &str) -> Result<String, String> {
    let out = vm::output(
        "dd",
        &[
            &format!("if={dev}"),
            "bs=4096",
            "count=1",
            "iflag=direct",
            "status=none",
        ],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\0')
            .to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn disk_status(slot: &str, d: &vm::Disk) -> DiskStatus {
    DiskStatus {
        slot: slot.into(),
        kernel_name: d.name.clone(),
        media: DeviceClass::Ssd,
        size_bytes: d.size_bytes,
        model: String::new(),
        serial: d.serial.clone(),
        wwn: String::new(),
        state: DiskState::Claimed,
        reason: String::new(),
        volume_group: Some(VG.into()),
    }
}

#[test]
fn a_fault_under_a_live_volume_marks_only_that_volume() {
    let Some(_lab) = vm::enter("a_fault_under_a_live_volume_marks_only_that_volume") else {
        return;
    };
    let ssd = vm::by_serial("SSD-A");
    let hdd = vm::by_serial("HDD-A");
    let (ssd_dev, hdd_dev) = (
        ssd.dev.to_string_lossy().into_owned(),
        hdd.dev.to_string_lossy().into_owned(),
    );
    let ssd_sysfs = format!("/sys/block/{}", ssd.name);
    let _restore = Restore {
        ssd_sysfs: ssd_sysfs.clone(),
        devices: vec![ssd_dev.clone(), hdd_dev.clone()],
    };
    let (slot_a, slot_b) = ("pci-0000:00:1f.2-ata-test-a", "pci-0000:00:1f.2-ata-test-b");
    let rt = runtime();
    let lvm = layer();
    rt.block_on(lvm.create_vg(VG, &[ssd.dev.clone(), hdd.dev.clone()]))
        .expect("VG over both disks");
    for (slot, dev) in [(slot_a, &ssd_dev), (slot_b, &hdd_dev)] {
        vm::run(
            "pvchange",
            &["--addtag", &format!("strata.io/slot={}", escape(slot)), dev],
        );
    }
    // one volume on each disk (placed explicitly; the product's lvcreate lets lvm2 choose)
    for (volume, dev) in [("pvc-on-a", &ssd_dev), ("pvc-on-b", &hdd_dev)] {
        vm::run(
            "lvcreate",
            &[
                "-y",
                "-n",
                volume,
                "-L",
                "64m",
                "--addtag",
                OWNER_TAG,
                "--addtag",
                &volume_tag(volume).unwrap(),
                VG,
                dev,
            ],
        );
    }
    // a thin pool on the first disk (data, metadata and lvm2's spare) and a thin volume on it
    vm::run(
        "lvcreate",
        &[
            "-y",
            "--type",
            "thin-pool",
            "-L",
            "64m",
            "--poolmetadatasize",
            "4m",
            "-n",
            THIN_POOL_LV,
            "--addtag",
            OWNER_TAG,
            "--addtag",
            THIN_POOL_TAG,
            VG,
            &ssd_dev,
        ],
    );
    vm::run(
        "lvcreate",
        &[
            "-y",
            "--type",
            "thin",
            "-V",
            "32m",
            "--thinpool",
            THIN_POOL_LV,
            "-n",
            "pvc-thin",
            "--addtag",
            OWNER_TAG,
            "--addtag",
            &volume_tag("pvc-thin").unwrap(),
            "--addtag",
            THIN_TAG,
            VG,
        ],
    );
    let (dev_a, dev_b) = (format!("/dev/{VG}/pvc-on-a"), format!("/dev/{VG}/pvc-on-b"));
    dd_write(&dev_b, MARK);
    let board = Board::default();
    let volumes = LvmVolumes::new(layer(), BTreeMap::new()).with_health(board.clone());
    let mut disks = vec![disk_status(slot_a, &ssd), disk_status(slot_b, &hdd)];
    let sys = Path::new("/sys");
    let dev = Path::new("/dev");

    // healthy: both disks Claimed, both volumes normal
    let notes = rt.block_on(check_disks(sys, dev, &board, &mut disks));
    assert!(notes.is_empty(), "{notes:?}");
    assert!(
        disks.iter().all(|d| d.state == DiskState::Claimed),
        "{disks:?}"
    );
    for id in ["pvc-on-a", "pvc-on-b", "pvc-thin"] {
        let v = rt.block_on(volumes.find(id)).unwrap().unwrap();
        assert_eq!(v.problem, None, "{id}");
    }

    // fault: the SSD goes offline under its live volume
    std::fs::write(format!("{ssd_sysfs}/device/state"), "offline\n").unwrap();
    assert!(dd_read(&dev_a).is_err(), "I/O on the offline disk fails");
    let mut disks = vec![disk_status(slot_a, &ssd), disk_status(slot_b, &hdd)];
    rt.block_on(check_disks(sys, dev, &board, &mut disks));
    assert_eq!(disks[0].state, DiskState::Failing, "{:?}", disks[0]);
    assert!(
        disks[0].reason.contains("kernel device state is offline"),
        "{}",
        disks[0].reason
    );
    // (an offline device refuses I/O before dispatch: the kernel's error counter does not move)
    assert_eq!(disks[1].state, DiskState::Claimed, "{:?}", disks[1]);
    let policy = Policy::new(&NodeStorageSpec::default()).unwrap();
    let mut classes = class_summary(&rt.block_on(lvm.vgs()).unwrap(), &policy);
    degrade_failing(&mut classes, &disks);
    assert_eq!(classes[0].health, ClassHealth::Degraded);
    let reasons = degraded_reasons(&classes, &disks).join("; ");
    assert!(reasons.contains(slot_a), "{reasons}");
    assert!(!reasons.contains(slot_b), "{reasons}");

    let a = rt.block_on(volumes.find("pvc-on-a")).unwrap().unwrap();
    let problem = a
        .problem
        .expect("the volume on the offline disk is abnormal");
    assert!(problem.contains(slot_a), "{problem}");
    let thin = rt.block_on(volumes.find("pvc-thin")).unwrap().unwrap();
    let problem = thin
        .problem
        .expect("the thin volume whose pool is on the offline disk is abnormal");
    assert!(
        problem.contains(slot_a) && problem.contains(THIN_POOL_LV),
        "{problem}"
    );
    let listed = rt.block_on(volumes.list()).unwrap();
    let abnormal: Vec<&str> = listed
        .iter()
        .filter(|v| v.problem.is_some())
        .map(|v| v.id.as_str())
        .collect();
    assert_eq!(abnormal, ["pvc-on-a", "pvc-thin"], "ListVolumes agrees");
    let b = rt.block_on(volumes.find("pvc-on-b")).unwrap().unwrap();
    assert_eq!(b.problem, None, "the volume on the other disk stays normal");
    assert_eq!(dd_read(&dev_b).as_deref(), Ok(MARK));
    dd_write(&dev_b, "still writable");
    assert_eq!(dd_read(&dev_b).as_deref(), Ok("still writable"));

    let refused = rt.block_on(replace_disk(&lvm, slot_a, true)).unwrap_err();
    match refused {
        ReplaceError::Refused(Refusal::InUse { volumes, .. }) => {
            for v in ["pvc-on-a", "pvc-thin", "thin pool strata_thinpool"] {
                assert!(volumes.iter().any(|x| x == v), "{v} in {volumes:?}");
            }
            assert!(!volumes.iter().any(|x| x == "pvc-on-b"), "{volumes:?}");
        }
        other => panic!("expected a refusal listing pvc-on-a, got {other}"),
    }
    assert_eq!(
        rt.block_on(lvm.vg(VG)).unwrap().unwrap().pv_count,
        2,
        "nothing changed"
    );

    // the thin volume and its pool go while the disk is back (the rest is about linear volumes)
    std::fs::write(format!("{ssd_sysfs}/device/state"), "running\n").unwrap();
    assert!(rt.block_on(lvm.remove_lv(VG, "pvc-thin")).unwrap());
    vm::run("lvremove", &["-y", &format!("{VG}/{THIN_POOL_LV}")]);

    // the disk is lost for good: deleted from the SCSI bus
    std::fs::write(format!("{ssd_sysfs}/device/delete"), "1\n").unwrap();
    let _ = vm::output("udevadm", &["settle"]);
    let a = rt.block_on(volumes.find("pvc-on-a")).unwrap().unwrap();
    let problem = a.problem.unwrap_or_default();
    assert!(
        problem.contains(slot_a) && problem.contains("missing"),
        "{problem}"
    );
    let b = rt.block_on(volumes.find("pvc-on-b")).unwrap().unwrap();
    assert_eq!(b.problem, None);

    // its volume deleted (its data is gone with the disk), the lost PV can go
    assert!(rt.block_on(lvm.remove_lv(VG, "pvc-on-a")).unwrap());
    let dry = rt.block_on(replace_disk(&lvm, slot_a, false)).unwrap();
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(
        rt.block_on(lvm.vg(VG)).unwrap().unwrap().missing_pv_count,
        1,
        "dry run changed nothing"
    );
    let done = rt.block_on(replace_disk(&lvm, slot_a, true)).unwrap();
    eprintln!("{done}");
    let vg = rt.block_on(lvm.vg(VG)).unwrap().unwrap();
    assert_eq!(
        (vg.pv_count, vg.missing_pv_count),
        (1, 0),
        "the VG is whole again"
    );
    assert_eq!(
        dd_read(&dev_b).as_deref(),
        Ok("still writable"),
        "no volume lost"
    );
    assert!(rt.block_on(lvm.remove_lv(VG, "pvc-on-b")).unwrap());
}
