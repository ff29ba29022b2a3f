//! Node tests of csi-agent's LVM layer with real activation (device-mapper, udev) on the node
//! VM's lab disks: LV device nodes appear and disappear, lvextend grows the block device, 50
//! concurrent creates on one VG all succeed, and foreign or signed disks are refused. Run with
//!
//!     STRATA_NODEVM_REQUIRED=1 \
//!     CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/tests/nodevm/nodevm run --lab --" \
//!         cargo test -p strata-tests --test node_lvm
//!
//! On the host they only say why they skip (see `vm::enter`).

use strata_tests::vm;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use csi_agent::lvm::{Activation, CommandRunner, Lvm, LvmError, LvmOptions, RunnerConfig};

const MIB: u64 = 1 << 20;

fn layer() -> Lvm<CommandRunner> {
    Lvm::new(
        CommandRunner::new(RunnerConfig::default()),
        LvmOptions::default(),
    )
}

/// Removes the VG and wipes its PVs whatever happened, so the next test sees blank lab disks.
struct VgGuard {
    vg: String,
    pvs: Vec<PathBuf>,
}

impl Drop for VgGuard {
    fn drop(&mut self) {
        let _ = vm::output("vgremove", &["-f", "-y", &self.vg]);
        for pv in &self.pvs {
            let pv = pv.to_string_lossy();
            let _ = vm::output("pvremove", &["-f", "-y", &pv]);
            let _ = vm::output("wipefs", &["-a", &pv]);
        }
    }
}

fn block_size(dev: &Path) -> u64 {
    vm::run("blockdev", &["--getsize64", &dev.to_string_lossy()])
        .trim()
        .parse()
        .expect("blockdev size")
}

fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn lv_device_appears_grows_and_goes() {
    let Some(_lab) = vm::enter("lv_device_appears_grows_and_goes") else {
        return;
    };
    let disk = vm::by_serial("NVME-A");
    let _guard = VgGuard {
        vg: "strata-nvme".into(),
        pvs: vec![disk.dev.clone()],
    };
    runtime().block_on(async {
        let lvm = layer();
        let vg = lvm
            .create_vg("strata-nvme", std::slice::from_ref(&disk.dev))
            .await
            .unwrap();
        assert!(vg.owned);
        let volume = "pvc-node-1";
        let lv = lvm
            .create_lv("strata-nvme", volume, 100 * MIB, None)
            .await
            .unwrap();
        assert_eq!(lv.active, Activation::Active);
        let dev = lv.device_path();
        assert!(
            is_block_device(&dev),
            "{} is not a block device",
            dev.display()
        );
        assert_eq!(block_size(&dev), 100 * MIB);
        let read = lvm.lv("strata-nvme", volume).await.unwrap().unwrap();
        assert_eq!(read.active, Activation::Active);

        let grown = lvm
            .extend_lv("strata-nvme", volume, 250 * MIB)
            .await
            .unwrap();
        assert_eq!(grown.size_bytes, 252 * MIB);
        assert_eq!(block_size(&dev), 252 * MIB);

        // Idempotent create of an existing, active LV.
        let again = lvm
            .create_lv("strata-nvme", volume, 252 * MIB, None)
            .await
            .unwrap();
        assert_eq!(again.active, Activation::Active);

        // Deactivated (e.g. after a reboot without autoactivation): activate brings the node back.
        vm::run("lvchange", &["-an", "strata-nvme/pvc-node-1"]);
        assert!(!is_block_device(&dev));
        lvm.activate_lv("strata-nvme", volume).await.unwrap();
        assert!(is_block_device(&dev));

        assert!(lvm.remove_lv("strata-nvme", volume).await.unwrap());
        assert!(!dev.exists(), "{} still exists after remove", dev.display());
        assert!(!lvm.remove_lv("strata-nvme", volume).await.unwrap());
    });
}

#[test]
fn fifty_concurrent_creates_on_one_vg() {
    let Some(_lab) = vm::enter("fifty_concurrent_creates_on_one_vg") else {
        return;
    };
    let disk = vm::by_serial("NVME-B");
    let _guard = VgGuard {
        vg: "strata-nvme".into(),
        pvs: vec![disk.dev.clone()],
    };
    runtime().block_on(async {
        let lvm = layer();
        lvm.create_vg("strata-nvme", std::slice::from_ref(&disk.dev))
            .await
            .unwrap();
        let creates: Vec<_> = (0..50)
            .map(|i| {
                let lvm = lvm.clone();
                tokio::spawn(async move {
                    lvm.create_lv("strata-nvme", &format!("pvc-c{i}"), 8 * MIB, None)
                        .await
                })
            })
            .collect();
        let mut errors = Vec::new();
        for t in creates {
            match t.await.unwrap() {
                Ok(lv) => assert!(is_block_device(&lv.device_path())),
                Err(e) => errors.push(e.to_string()),
            }
        }
        assert!(
            errors.is_empty(),
            "{} creates failed: {errors:#?}",
            errors.len()
        );
        assert_eq!(lvm.strata_lvs(Some("strata-nvme")).await.unwrap().len(), 50);
        let removes: Vec<_> = (0..50)
            .map(|i| {
                let lvm = lvm.clone();
                tokio::spawn(
                    async move { lvm.remove_lv("strata-nvme", &format!("pvc-c{i}")).await },
                )
            })
            .collect();
        for t in removes {
            assert!(t.await.unwrap().unwrap());
        }
        assert!(
            lvm.strata_lvs(Some("strata-nvme"))
                .await
                .unwrap()
                .is_empty()
        );
    });
}

#[test]
fn foreign_and_signed_disks_are_refused() {
    let Some(_lab) = vm::enter("foreign_and_signed_disks_are_refused") else {
        return;
    };
    let foreign = vm::by_serial("PV-FOREIGN");
    let ext4 = vm::by_serial("SSD-EXT4");
    let gpt = vm::by_serial("HDD-GPT");
    runtime().block_on(async {
        let lvm = layer();
        let err = lvm
            .create_vg("strata-ssd", std::slice::from_ref(&foreign.dev))
            .await
            .unwrap_err();
        assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");
        let err = lvm
            .create_lv("othervg", "pvc-x", MIB, None)
            .await
            .unwrap_err();
        assert!(matches!(err, LvmError::NotOwned { .. }), "{err:?}");
        for disk in [&ext4, &gpt] {
            let err = lvm.create_pv(&disk.dev).await.unwrap_err();
            assert!(
                matches!(err, LvmError::HasSignature { .. }),
                "{}: {err:?}",
                disk.name
            );
        }
        assert!(lvm.vg("strata-ssd").await.unwrap().is_none());
    });
    assert_eq!(
        vm::probe(&ext4.dev).get("TYPE").map(String::as_str),
        Some("ext4")
    );
    assert_eq!(
        vm::probe(&gpt.dev).get("PTTYPE").map(String::as_str),
        Some("gpt")
    );
    let vg = vm::run(
        "pvs",
        &[
            "--noheadings",
            "-o",
            "vg_name",
            &foreign.dev.to_string_lossy(),
        ],
    );
    assert_eq!(vg.trim(), "othervg");
    let lvs = vm::run("lvs", &["--noheadings", "-o", "lv_name,lv_tags", "othervg"]);
    assert_eq!(lvs.split_whitespace().collect::<Vec<_>>(), ["data"]);
}
