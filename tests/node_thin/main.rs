//! Node tests of thin provisioning with real device-mapper on the node VM's lab disks: a thin
//! volume's lifecycle with growth, the agent's autoextend of a filling pool, remanence (a new thin
//! volume never reads a deleted one's blocks: the pool zeroes chunks, no wipe needed), a full pool
//! (Full, promisable 0, its volumes abnormal, new thin volumes refused by admission), and a burst
//! of concurrent creates never promised beyond the overprovision ratio. Run with
//!
//!     NODE_TEST_TARGET=node_thin tests/nodevm/cargo-node-test
//!
//! On the host they only say why they skip (see `vm::enter`). Snapshots, restores and clones:
//! [`snapshots`] (the LVM layer), [`reconciler`] (the Kubernetes-mode reconciler).

mod bench;
mod reconciler;
mod snapshots;

use strata_tests::vm;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use csi_agent::claim::thin_pool::{self, ThinSettings};
use csi_agent::claim::{Policy, PoolNote, class_summary};
use csi_agent::lvm::{CommandRunner, Lvm, LvmError, LvmOptions, RunnerConfig, THIN_POOL_LV};
use csi_api::crd::{NodeStorageSpec, ThinPoolHealth};
use csi_api::names::DeviceClass;

const MIB: u64 = 1 << 20;
const VG: &str = "strata-nvme";
const MARK: &[u8] = b"STRATA-REMANENCE";

fn layer() -> Lvm<CommandRunner> {
    Lvm::new(
        CommandRunner::new(RunnerConfig::default()),
        LvmOptions::default(),
    )
}

/// Removes the VG and wipes its PVs whatever happened, so the next test sees blank lab disks.
struct VgGuard {
    pvs: Vec<PathBuf>,
}

impl Drop for VgGuard {
    fn drop(&mut self) {
        let _ = vm::output("vgremove", &["-f", "-y", VG]);
        for pv in &self.pvs {
            let pv = pv.to_string_lossy();
            let _ = vm::output("pvremove", &["-f", "-y", &pv]);
            let _ = vm::output("wipefs", &["-a", &pv]);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn block_size(dev: &std::path::Path) -> u64 {
    vm::run("blockdev", &["--getsize64", &dev.to_string_lossy()])
        .trim()
        .parse()
        .expect("blockdev size")
}

/// Writes `bytes` of the marker pattern at the start of `dev`, synced.
fn write_pattern(dev: &std::path::Path, bytes: u64) {
    let chunk: Vec<u8> = MARK.iter().copied().cycle().take(MIB as usize).collect();
    let mut f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    for _ in 0..bytes / MIB {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
}

/// Whether every byte of `dev` reads zero.
fn reads_zero(dev: &std::path::Path) -> bool {
    let mut f = std::fs::File::open(dev).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return true;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return false;
        }
    }
}

fn settings(ratio: f64) -> ThinSettings {
    ThinSettings::new(&[(DeviceClass::Nvme, 1)], &[(DeviceClass::Nvme, ratio)]).unwrap()
}

#[test]
fn thin_lifecycle_autoextend_remanence_and_a_full_pool() {
    let Some(_lab) = vm::enter("thin_lifecycle_autoextend_remanence_and_a_full_pool") else {
        return;
    };
    let disk = vm::by_serial("NVME-B");
    let _guard = VgGuard {
        pvs: vec![disk.dev.clone()],
    };
    runtime().block_on(async {
        let lvm = layer();
        lvm.create_vg(VG, std::slice::from_ref(&disk.dev))
            .await
            .unwrap();
        let pool = lvm.create_thin_pool(VG, 64 * MIB).await.unwrap();
        assert_eq!(pool.size_bytes, 64 * MIB);
        assert!(pool.owned);
        let attrs = vm::run(
            "lvs",
            &[
                "--noheadings",
                "-o",
                "zero,discards,chunk_size",
                "--units",
                "k",
                &format!("{VG}/{THIN_POOL_LV}"),
            ],
        );
        assert!(
            attrs.contains("zero") && attrs.contains("passdown") && attrs.contains("64.00k"),
            "{attrs}"
        );
        let ratio = settings(4.0).ratio(DeviceClass::Nvme);
        let admit = |s: &csi_agent::lvm::ThinState| thin_pool::status(s, ratio).promisable_bytes;

        // one volume is never promised more than the pool can physically take (95 % of 64 MiB)
        let too_big = lvm
            .create_thin_lv(VG, "pvc-thin-big", 64 * MIB, None, admit)
            .await;
        assert!(
            matches!(too_big, Err(LvmError::InsufficientSpace { .. })),
            "{too_big:?}"
        );

        // lifecycle with growth
        let a = lvm
            .create_thin_lv(VG, "pvc-thin-a", 60 * MIB, None, admit)
            .await
            .unwrap();
        assert_eq!(block_size(&a.device_path()), 60 * MIB);
        assert!(lvm.take_fresh("pvc-thin-a"));
        assert!(
            reads_zero(&a.device_path()),
            "a new thin volume reads zeroes"
        );
        let grown = lvm.extend_lv(VG, "pvc-thin-a", 100 * MIB).await.unwrap();
        assert_eq!(grown.size_bytes, 100 * MIB);
        assert_eq!(block_size(&a.device_path()), 100 * MIB);
        let state = lvm.thin_state(VG).await.unwrap().unwrap();
        assert_eq!(state.virtual_bytes, 100 * MIB);
        assert_eq!(state.volumes.len(), 1);

        // autoextend: 56 MiB written into a 64 MiB pool (87.5 %) → the capacity pass grows it
        write_pattern(&a.device_path(), 56 * MIB);
        let state = lvm.thin_state(VG).await.unwrap().unwrap();
        assert!(state.pool.data_percent >= 85.0, "{:?}", state.pool);
        let policy = Policy::new(&NodeStorageSpec::default()).unwrap();
        let mut classes = class_summary(&[lvm.vg(VG).await.unwrap().unwrap()], &policy);
        let free_before = classes[0].free_bytes;
        let notes = thin_pool::tend(&lvm, &settings(4.0), &mut classes, &[], true).await;
        assert!(
            notes.iter().any(|n| matches!(n, PoolNote::Extended { .. })),
            "{notes:?}"
        );
        let tp = classes[0].thin_pool.clone().unwrap();
        assert!(tp.size_bytes > 64 * MIB, "{tp:?}");
        assert_eq!(tp.health, ThinPoolHealth::Healthy, "{tp:?}");
        assert!(
            classes[0].free_bytes < free_before,
            "the pool took VG extents"
        );

        // remanence: delete A (no wipe), a new thin volume reads zeroes everywhere
        assert!(lvm.remove_lv(VG, "pvc-thin-a").await.unwrap());
        let state = lvm.thin_state(VG).await.unwrap().unwrap();
        assert!(state.pool.used_bytes() < 2 * MIB, "{:?}", state.pool);
        let b = lvm
            .create_thin_lv(VG, "pvc-thin-b", 60 * MIB, None, admit)
            .await
            .unwrap();
        assert!(
            reads_zero(&b.device_path()),
            "a deleted thin volume's blocks showed through"
        );
        // partial writes of a fresh chunk: the rest of the chunk reads zero too
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(b.device_path())
            .unwrap();
        f.write_all(&[0xAA; 4096]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        // read the device, not the page cache the zero check above filled
        std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        let mut f = std::fs::File::open(b.device_path()).unwrap();
        let mut chunk = vec![0u8; 64 * 1024];
        f.read_exact(&mut chunk).unwrap();
        assert!(chunk[..4096].iter().all(|b| *b == 0xAA));
        assert!(
            chunk[4096..].iter().all(|b| *b == 0),
            "pool zeroing left old bytes"
        );

        // a full pool: error at once instead of queueing (the test's choice), fill it
        vm::run(
            "lvchange",
            &["--errorwhenfull", "y", &format!("{VG}/{THIN_POOL_LV}")],
        );
        assert_eq!(thin_pool::pool_problem(&lvm, VG).await, None);
        let c = lvm
            .create_thin_lv(VG, "pvc-thin-c", 256 * MIB, None, |_| u64::MAX)
            .await
            .unwrap();
        let dd = vm::output(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", c.device_path().display()),
                "bs=1M",
                "count=250",
                "oflag=direct",
            ],
        );
        assert!(!dd.status.success(), "writing beyond the pool must fail");
        let state = lvm.thin_state(VG).await.unwrap().unwrap();
        let status = thin_pool::status(&state, ratio);
        assert_eq!(status.health, ThinPoolHealth::Full, "{status:?}");
        assert_eq!(status.promisable_bytes, 0);
        let problem = thin_pool::pool_problem(&lvm, VG).await;
        assert!(
            problem.as_deref().is_some_and(|p| p.contains("is full")),
            "{problem:?}"
        );
        // admission refuses a new thin volume; a linear volume of the VG is still made
        let refused = lvm
            .create_thin_lv(VG, "pvc-thin-d", 8 * MIB, None, admit)
            .await;
        assert!(
            matches!(refused, Err(LvmError::InsufficientSpace { .. })),
            "{refused:?}"
        );
        assert!(lvm.lv(VG, "pvc-thin-d").await.unwrap().is_none());
        lvm.create_lv(VG, "pvc-linear", 8 * MIB, None)
            .await
            .unwrap();
    });
}

#[test]
fn thin_burst_never_promises_beyond_the_ratio() {
    let Some(_lab) = vm::enter("thin_burst_never_promises_beyond_the_ratio") else {
        return;
    };
    let disk = vm::by_serial("NVME-B");
    let _guard = VgGuard {
        pvs: vec![disk.dev.clone()],
    };
    runtime().block_on(async {
        let lvm = Arc::new(layer());
        lvm.create_vg(VG, std::slice::from_ref(&disk.dev))
            .await
            .unwrap();
        lvm.create_thin_pool(VG, 64 * MIB).await.unwrap();
        // ratio 2: 128 MiB may be promised; 10 concurrent creates of 16 MiB ask for 160
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let lvm = Arc::clone(&lvm);
                tokio::spawn(async move {
                    lvm.create_thin_lv(VG, &format!("pvc-burst-{i}"), 16 * MIB, None, |s| {
                        thin_pool::status(s, 2.0).promisable_bytes
                    })
                    .await
                })
            })
            .collect();
        let mut made = 0u64;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => made += 1,
                Err(LvmError::InsufficientSpace { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        let state = lvm.thin_state(VG).await.unwrap().unwrap();
        assert_eq!(state.virtual_bytes, made * 16 * MIB);
        assert_eq!(made, 8, "exactly the ratio's 128 MiB is promised");
    });
}
