//! Node tests of wipe on delete, inside the node VM with the lab disks: a known pattern written to
//! a raw block volume and to a file on an xfs volume never reappears in a new volume on the same
//! extents after the volumes are deleted through the agent's deletion path (`Wiper`), for each
//! policy the disks support (NVMe: discard, zero; SATA SSD: discard asked, zeroed since the disk
//! shows no zeroes-after-discard evidence; HDD: zero), while with `none` it does (so the check can
//! fail). A wipe interrupted halfway (the agent's handle cancelled after a chunk, leaving the
//! mark) is finished by a fresh agent's resume: LV removed, capacity back, no pattern; meanwhile
//! the standalone volume layer refuses to hand the marked LV out. Run with
//!
//!     STRATA_NODEVM_REQUIRED=1 \
//!     CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/tests/nodevm/nodevm run --lab --" \
//!         cargo test -p strata-tests --test node_wipe
//!
//! The throughput benchmark (bytes/s per policy and disk) is the ignored test `throughput`: add
//! `-- --ignored --nocapture throughput`. On the host the tests only say why they skip.

use strata_tests::vm;

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use csi_agent::csi::error::Error as CsiError;
use csi_agent::csi::lvm_volumes::LvmVolumes;
use csi_agent::csi::volumes::Volumes;
use csi_agent::lvm::{CommandRunner, Lvm, LvmError, LvmOptions, RunnerConfig, WipeMethod};
use csi_agent::wiper::{WipeConfig, WipeError, Wiper};
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;
/// 16 bytes that cannot appear by chance in zeroes or in a fresh xfs.
const MARK: &[u8; 16] = b"STRATA-WIPE-PAT!";

fn layer() -> Lvm<CommandRunner> {
    Lvm::new(
        CommandRunner::new(RunnerConfig::default()),
        LvmOptions::default(),
    )
}

fn wiper(lvm: &Lvm<CommandRunner>, chunk: u64) -> Wiper<CommandRunner> {
    Wiper::new(
        lvm.clone(),
        WipeConfig {
            chunk_bytes: chunk,
            ..WipeConfig::default()
        },
        None,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Removes the VG and wipes its PV whatever happened.
struct VgGuard {
    vg: String,
    pv: PathBuf,
}

impl Drop for VgGuard {
    fn drop(&mut self) {
        let _ = vm::output("umount", &["-l", "/run/node-wipe"]);
        let _ = vm::output("vgremove", &["-f", "-y", &self.vg]);
        let pv = self.pv.to_string_lossy();
        let _ = vm::output("pvremove", &["-f", "-y", &pv]);
        let _ = vm::output("wipefs", &["-a", &pv]);
    }
}

/// Writes the mark repeated over `bytes` bytes of `path` (direct I/O, then fsync).
fn write_pattern(path: &Path, bytes: u64) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc_o_direct())
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let block = MARK.repeat((MIB as usize) / MARK.len());
    let aligned = AlignedBuf::new(&block);
    for _ in 0..bytes / MIB {
        f.write_all(aligned.as_slice()).expect("write pattern");
    }
    f.sync_all().expect("fsync");
}

/// Counts the MiB blocks of `path` that hold the mark. The pattern is only ever written at
/// 16-byte-aligned offsets (raw volumes from offset 0, files in whole filesystem blocks), so the
/// scan compares aligned 16-byte words: 16 times fewer comparisons than a sliding window, which
/// matters under software emulation.
fn blocks_with_mark(path: &Path) -> u64 {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut hits = 0;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match f.read(&mut buf[filled..]).expect("read") {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            return hits;
        }
        if buf[..filled].chunks_exact(MARK.len()).any(|w| w == MARK) {
            hits += 1;
        }
        if filled < buf.len() {
            return hits;
        }
    }
}

fn libc_o_direct() -> i32 {
    nix::fcntl::OFlag::O_DIRECT.bits()
}

/// A 4 KiB-aligned copy of a buffer (O_DIRECT needs aligned memory).
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(data: &[u8]) -> Self {
        let mut raw = vec![0u8; data.len() + 4096];
        let start = (4096 - (raw.as_ptr() as usize % 4096)) % 4096;
        raw[start..start + data.len()].copy_from_slice(data);
        AlignedBuf {
            raw,
            start,
            len: data.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// Puts the mark on raw volume `raw` (64 MiB) and in a file on xfs volume `fs` (320 MiB).
fn fill_volumes(lvm: &Lvm<CommandRunner>, vg: &str) {
    let rt = runtime();
    rt.block_on(async {
        let a = lvm.create_lv(vg, "raw-a", 64 * MIB, None).await.unwrap();
        write_pattern(&a.device_path(), 64 * MIB);
        let b = lvm.create_lv(vg, "fs-b", 320 * MIB, None).await.unwrap();
        let dev = b.device_path();
        vm::run("mkfs.xfs", &["-q", &dev.to_string_lossy()]);
        std::fs::create_dir_all("/run/node-wipe").unwrap();
        vm::run("mount", &[&dev.to_string_lossy(), "/run/node-wipe"]);
        std::fs::write(
            "/run/node-wipe/data",
            MARK.repeat((96 * MIB) as usize / MARK.len()),
        )
        .unwrap();
        vm::run("sync", &[]);
        vm::run("umount", &["/run/node-wipe"]);
        assert!(blocks_with_mark(&a.device_path()) == 64);
        assert!(blocks_with_mark(&dev) >= 96);
    });
}

/// Deletes both volumes through the wiper with `policy`; returns the methods used.
fn delete_volumes(lvm: &Lvm<CommandRunner>, vg: &str, policy: &str) -> Vec<String> {
    let w = wiper(lvm, 16 * MIB);
    let methods = Mutex::new(Vec::new());
    runtime().block_on(async {
        for volume in ["raw-a", "fs-b"] {
            let removed = w
                .wipe_and_remove(vg, volume, Some(policy), &|p| {
                    let mut m = methods.lock().unwrap();
                    if m.last().is_none_or(|last: &String| last != p.method) || p.done == 0 {
                        m.push(p.method.to_owned());
                    }
                })
                .await
                .unwrap_or_else(|e| panic!("wipe and remove {vg}/{volume}: {e}"));
            assert!(removed);
        }
    });
    let mut m = methods.into_inner().unwrap();
    m.dedup();
    m
}

/// A new volume over all the freed extents: MiB blocks still holding the mark.
fn reuse_and_count(lvm: &Lvm<CommandRunner>, vg: &str) -> u64 {
    runtime().block_on(async {
        let info = lvm.vg(vg).await.unwrap().unwrap();
        assert_eq!(info.lv_count, 0, "the deleted LVs are gone");
        assert_eq!(info.free_bytes, info.size_bytes, "all capacity is back");
        // An empty VG allocates from its first extent: the new LV covers the old ones.
        let c = lvm.create_lv(vg, "reuse-c", 384 * MIB, None).await.unwrap();
        let hits = blocks_with_mark(&c.device_path());
        lvm.remove_lv(vg, "reuse-c").await.unwrap();
        hits
    })
}

fn scenario(serial: &str, vg: &str, policy: &str) -> (Vec<String>, u64) {
    let disk = vm::by_serial(serial);
    let _guard = VgGuard {
        vg: vg.into(),
        pv: disk.dev.clone(),
    };
    let lvm = layer();
    runtime()
        .block_on(lvm.create_vg(vg, std::slice::from_ref(&disk.dev)))
        .unwrap();
    fill_volumes(&lvm, vg);
    let methods = delete_volumes(&lvm, vg, policy);
    let hits = reuse_and_count(&lvm, vg);
    eprintln!(
        "{serial} {vg} policy={policy}: methods {methods:?}, MiB blocks with the mark: {hits}"
    );
    (methods, hits)
}

#[test]
fn nvme_discard_leaves_nothing() {
    let Some(_lab) = vm::enter("nvme_discard_leaves_nothing") else {
        return;
    };
    let (methods, hits) = scenario("NVME-A", "strata-nvme", "discard");
    // qemu's NVMe reports Write Zeroes (and DLFEAT=1): discard is used as is.
    assert_eq!(methods, ["discard"]);
    assert_eq!(hits, 0);
}

#[test]
fn nvme_zero_leaves_nothing() {
    let Some(_lab) = vm::enter("nvme_zero_leaves_nothing") else {
        return;
    };
    let (methods, hits) = scenario("NVME-B", "strata-nvme", "zero");
    assert_eq!(methods, ["zero"]);
    assert_eq!(hits, 0);
}

#[test]
fn sata_ssd_discard_without_evidence_zeroes() {
    let Some(_lab) = vm::enter("sata_ssd_discard_without_evidence_zeroes") else {
        return;
    };
    let (methods, hits) = scenario("SSD-A", "strata-ssd", "discard");
    // qemu's AHCI disk discards but shows no LBPRZ (zeroing_mode "write"): zeroed instead.
    assert_eq!(methods, ["zero"]);
    assert_eq!(hits, 0);
}

#[test]
fn hdd_zero_leaves_nothing() {
    let Some(_lab) = vm::enter("hdd_zero_leaves_nothing") else {
        return;
    };
    let (methods, hits) = scenario("HDD-A", "strata-hdd", "zero");
    assert_eq!(methods, ["zero"]);
    assert_eq!(hits, 0);
}

#[test]
fn policy_none_leaves_the_data_readable() {
    let Some(_lab) = vm::enter("policy_none_leaves_the_data_readable") else {
        return;
    };
    let (methods, hits) = scenario("HDD-A", "strata-hdd", "none");
    assert!(methods.is_empty(), "{methods:?}");
    // The raw volume's 64 MiB at least: the check above would have seen them.
    assert!(
        hits >= 64,
        "the pattern should survive without a wipe: {hits}"
    );
}

#[test]
fn an_interrupted_wipe_is_finished_after_a_restart() {
    let Some(_lab) = vm::enter("an_interrupted_wipe_is_finished_after_a_restart") else {
        return;
    };
    let disk = vm::by_serial("HDD-A");
    let vg = "strata-hdd";
    let _guard = VgGuard {
        vg: vg.into(),
        pv: disk.dev.clone(),
    };
    let rt = runtime();
    let lvm = layer();
    rt.block_on(lvm.create_vg(vg, std::slice::from_ref(&disk.dev)))
        .unwrap();
    let size = 1024 * MIB;
    let lv = rt.block_on(lvm.create_lv(vg, "big", size, None)).unwrap();
    write_pattern(&lv.device_path(), size);

    // The first agent: marks, wipes 8 of 16 chunks of 64 MiB, and dies (its handle is
    // cancelled between chunks; a kill -9 mid-chunk leaves the same tag: completed chunks only).
    let token = CancellationToken::new();
    let dying = wiper(&lvm.with_cancellation(token.clone()), 64 * MIB);
    let trigger = token.clone();
    let err = rt
        .block_on(dying.wipe_and_remove(vg, "big", None, &move |p| {
            if p.done >= size / 2 {
                trigger.cancel();
            }
        }))
        .unwrap_err();
    assert!(
        matches!(err, WipeError::Lvm(LvmError::Cancelled { .. })),
        "{err:?}"
    );
    let left = rt.block_on(lvm.lv(vg, "big")).unwrap().expect("LV kept");
    assert!(csi_agent::lvm::is_wiping(&left), "{:?}", left.tags);
    assert_eq!(
        csi_agent::lvm::wipe::wiped_bytes(&left),
        size / 2,
        "{:?}",
        left.tags
    );
    assert!(blocks_with_mark(&left.device_path()) > 0, "half wiped");
    let info = rt.block_on(lvm.vg(vg)).unwrap().unwrap();
    assert_eq!(info.size_bytes - info.free_bytes, size, "not counted free");

    // Meanwhile the standalone volume layer never hands the marked LV out.
    let volumes = LvmVolumes::new(lvm.clone(), Default::default());
    let refused = rt.block_on(volumes.locate("big")).unwrap_err();
    assert!(
        matches!(refused, CsiError::FailedPrecondition(_)),
        "{refused:?}"
    );
    assert!(rt.block_on(volumes.list()).unwrap().is_empty());

    // The restarted agent: a fresh layer and wiper find the mark and resume at 50 %.
    let restarted = layer();
    let first = Mutex::new(None);
    let removed = rt
        .block_on(
            wiper(&restarted, 256 * MIB).wipe_and_remove(vg, "big", None, &|p| {
                first.lock().unwrap().get_or_insert(p.done);
            }),
        )
        .unwrap();
    assert!(removed);
    assert_eq!(
        first.into_inner().unwrap(),
        Some(size / 2),
        "resumed at 50 %"
    );
    assert!(rt.block_on(restarted.lv(vg, "big")).unwrap().is_none());
    let info = rt.block_on(restarted.vg(vg)).unwrap().unwrap();
    assert_eq!(info.free_bytes, info.size_bytes, "capacity returned");
    let c = rt
        .block_on(restarted.create_lv(vg, "after", size, None))
        .unwrap();
    assert_eq!(blocks_with_mark(&c.device_path()), 0);
    rt.block_on(restarted.remove_lv(vg, "after")).unwrap();
}

/// Waits until `volume`'s LV is gone from `vg` (the background worker removed it).
fn wait_gone(
    rt: &tokio::runtime::Runtime,
    lvm: &Lvm<CommandRunner>,
    vg: &str,
    volume: &str,
    limit: std::time::Duration,
) {
    let start = Instant::now();
    while rt.block_on(lvm.lv(vg, volume)).unwrap().is_some() {
        assert!(
            start.elapsed() < limit,
            "{vg}/{volume} still there after {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn volumes_in_use_are_never_touched_and_deleted_once_released() {
    let Some(_lab) = vm::enter("volumes_in_use_are_never_touched_and_deleted_once_released") else {
        return;
    };
    let disk = vm::by_serial("HDD-A");
    let vg = "strata-hdd";
    let _guard = VgGuard {
        vg: vg.into(),
        pv: disk.dev.clone(),
    };
    let rt = runtime();
    let lvm = layer();
    rt.block_on(lvm.create_vg(vg, std::slice::from_ref(&disk.dev)))
        .unwrap();
    let w = wiper(&lvm, 16 * MIB);
    let stop = CancellationToken::new();
    let _worker = {
        let _in_runtime = rt.enter();
        w.spawn_worker(stop.clone())
    };
    let volumes = LvmVolumes::new(lvm.clone(), Default::default()).with_wiper(w.clone());
    use csi_api::names::DeviceClass;

    // A mounted xfs volume with a file, and a raw block volume held open by this process.
    let fs = rt
        .block_on(volumes.create("fs-in-use", DeviceClass::Hdd, 320 * MIB))
        .unwrap();
    vm::run("mkfs.xfs", &["-q", &fs.device.to_string_lossy()]);
    std::fs::create_dir_all("/run/node-wipe").unwrap();
    vm::run("mount", &[&fs.device.to_string_lossy(), "/run/node-wipe"]);
    let content = MARK.repeat((32 * MIB) as usize / MARK.len());
    std::fs::write("/run/node-wipe/data", &content).unwrap();
    vm::run("sync", &[]);
    let raw = rt
        .block_on(volumes.create("raw-in-use", DeviceClass::Hdd, 64 * MIB))
        .unwrap();
    write_pattern(&raw.device, 64 * MIB);
    let holder = std::fs::File::open(&raw.device).unwrap();

    // DeleteVolume on each: FailedPrecondition naming the mount / the holder; nothing touched.
    let err = rt.block_on(volumes.remove("fs-in-use")).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(
        err.to_string().contains("mounted at /run/node-wipe"),
        "{err}"
    );
    let err = rt.block_on(volumes.remove("raw-in-use")).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    for name in ["fs-in-use", "raw-in-use"] {
        let lv = rt.block_on(lvm.lv(vg, name)).unwrap().expect("LV kept");
        assert!(
            !csi_agent::lvm::is_wiping(&lv),
            "{name} marked: {:?}",
            lv.tags
        );
    }
    assert_eq!(
        std::fs::read("/run/node-wipe/data").unwrap(),
        content,
        "file byte-exact"
    );
    assert_eq!(blocks_with_mark(&raw.device), 64, "raw volume byte-exact");
    // The node calls keep working on an unmarked volume.
    assert!(rt.block_on(volumes.locate("fs-in-use")).unwrap().is_some());

    // The second guard: even a marked LV is not wiped while mounted (blkdiscard's exclusive
    // open, no --force).
    rt.block_on(lvm.mark_wiping(vg, "fs-in-use")).unwrap();
    let err = rt
        .block_on(lvm.wipe_lv(vg, "fs-in-use", WipeMethod::Zero, 16 * MIB, &|_, _| {}))
        .unwrap_err();
    eprintln!("blkdiscard on a mounted LV: {err}");
    assert_eq!(
        std::fs::read("/run/node-wipe/data").unwrap(),
        content,
        "file byte-exact"
    );
    // Marked now: stage/publish re-read the mark (even for a volume this process remembers)
    // and refuse; the release calls find the device.
    assert!(
        rt.block_on(volumes.marked_for_deletion("fs-in-use"))
            .unwrap()
    );
    assert!(
        rt.block_on(volumes.device_for_release("fs-in-use"))
            .unwrap()
            .is_some()
    );

    // Released: the deletes complete (DeleteVolume answers once marked, the worker wipes).
    vm::run("umount", &["/run/node-wipe"]);
    drop(holder);
    rt.block_on(volumes.remove("fs-in-use")).unwrap();
    rt.block_on(volumes.remove("raw-in-use")).unwrap();
    // Repeated: OK.
    rt.block_on(volumes.remove("raw-in-use")).unwrap();
    for name in ["fs-in-use", "raw-in-use"] {
        wait_gone(&rt, &lvm, vg, name, std::time::Duration::from_secs(300));
    }
    let info = rt.block_on(lvm.vg(vg)).unwrap().unwrap();
    assert_eq!(info.free_bytes, info.size_bytes, "capacity returned");
    let c = rt
        .block_on(lvm.create_lv(vg, "after", 192 * MIB, None))
        .unwrap();
    assert_eq!(
        blocks_with_mark(&c.device_path()),
        0,
        "no pattern on the old extents"
    );
    rt.block_on(lvm.remove_lv(vg, "after")).unwrap();
    stop.cancel();
}

#[test]
fn a_whole_disk_volume_is_deleted_within_a_short_deadline_and_wiped_after() {
    let Some(_lab) =
        vm::enter("a_whole_disk_volume_is_deleted_within_a_short_deadline_and_wiped_after")
    else {
        return;
    };
    // The 4 GiB SATA SSD: zeroed (it shows no zeroes-after-discard evidence), so the wipe far
    // outlasts the 5 s deadline under TCG, at a quarter of the 16 GiB HDD's CI time.
    let disk = vm::by_serial("SSD-A");
    let vg = "strata-ssd";
    let _guard = VgGuard {
        vg: vg.into(),
        pv: disk.dev.clone(),
    };
    let rt = runtime();
    let lvm = layer();
    rt.block_on(lvm.create_vg(vg, std::slice::from_ref(&disk.dev)))
        .unwrap();
    let w = wiper(&lvm, csi_agent::lvm::wipe::DEFAULT_CHUNK_BYTES);
    let stop = CancellationToken::new();
    let _worker = {
        let _in_runtime = rt.enter();
        w.spawn_worker(stop.clone())
    };
    let volumes = LvmVolumes::new(lvm.clone(), Default::default()).with_wiper(w.clone());
    // The whole lab disk (less LVM's metadata).
    let free = rt.block_on(lvm.vg(vg)).unwrap().unwrap().free_bytes;
    let v = rt
        .block_on(volumes.create("whole", csi_api::names::DeviceClass::Ssd, free))
        .unwrap();
    write_pattern(&v.device, 64 * MIB);
    // A CO with a 5 s deadline, retrying after each expiry (the call is dropped, as tonic does):
    // the answer never waits for the wipe, so a retry soon answers OK.
    let started = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let call = Instant::now();
        let answer = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), volumes.remove("whole")).await
        });
        eprintln!(
            "DeleteVolume try {tries}: {:?} after {:?}",
            answer.as_ref().map(|r| r.is_ok()),
            call.elapsed()
        );
        match answer {
            Ok(r) => {
                r.unwrap();
                break;
            }
            Err(_) => assert!(tries < 10, "DeleteVolume never answered within 5 s"),
        }
    }
    eprintln!(
        "DeleteVolume of {free} bytes answered OK after {:?} ({tries} tries)",
        started.elapsed()
    );
    assert!(
        rt.block_on(volumes.list()).unwrap().is_empty(),
        "hidden once marked"
    );
    wait_gone(&rt, &lvm, vg, "whole", std::time::Duration::from_secs(1500));
    eprintln!("wiped and removed after {:?}", started.elapsed());
    let c = rt
        .block_on(lvm.create_lv(vg, "after", 128 * MIB, None))
        .unwrap();
    assert_eq!(blocks_with_mark(&c.device_path()), 0);
    rt.block_on(lvm.remove_lv(vg, "after")).unwrap();
    stop.cancel();
}

/// Wipe throughput per method on each lab disk kind: `-- --ignored --nocapture throughput`.
#[test]
#[ignore = "benchmark: prints bytes/s per policy"]
fn throughput() {
    let Some(_lab) = vm::enter("throughput") else {
        return;
    };
    let size = 2048 * MIB;
    println!("| disk | method | bytes | seconds | MiB/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (serial, vg, methods) in [
        (
            "NVME-A",
            "strata-nvme",
            &[WipeMethod::Discard, WipeMethod::Zero][..],
        ),
        (
            "SSD-A",
            "strata-ssd",
            &[WipeMethod::Discard, WipeMethod::Zero][..],
        ),
        ("HDD-A", "strata-hdd", &[WipeMethod::Zero][..]),
    ] {
        let disk = vm::by_serial(serial);
        let _guard = VgGuard {
            vg: vg.into(),
            pv: disk.dev.clone(),
        };
        let rt = runtime();
        let lvm = layer();
        rt.block_on(lvm.create_vg(vg, std::slice::from_ref(&disk.dev)))
            .unwrap();
        let size = size.min(disk.size_bytes / 2 / MIB * MIB);
        for &method in methods {
            let lv = rt.block_on(lvm.create_lv(vg, "bench", size, None)).unwrap();
            // Data on the extents first, so discard and zeroing have real blocks to drop.
            write_pattern(&lv.device_path(), 256 * MIB);
            rt.block_on(lvm.mark_wiping(vg, "bench")).unwrap();
            let started = Instant::now();
            let bytes = rt
                .block_on(lvm.wipe_lv(vg, "bench", method, 1 << 30, &|_, _| {}))
                .unwrap();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "| {serial} | {} | {bytes} | {secs:.2} | {:.0} |",
                method.as_str(),
                bytes as f64 / secs / MIB as f64
            );
            rt.block_on(lvm.remove_lv(vg, "bench")).unwrap();
        }
    }
}

/// Detaches the loop device, removes its VG and backing file whatever happened.
struct LoopGuard {
    vg: &'static str,
    dev: String,
    file: PathBuf,
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let _ = vm::output("umount", &["-l", "/run/node-trim"]);
        let _ = vm::output("vgremove", &["-f", "-y", self.vg]);
        let _ = vm::output("pvremove", &["-f", "-y", &self.dev]);
        let _ = vm::output("losetup", &["-d", &self.dev]);
        let _ = std::fs::remove_file(&self.file);
    }
}

#[test]
fn an_fstrim_pass_shrinks_a_file_backed_ssd() {
    let Some(_lab) = vm::enter("an_fstrim_pass_shrinks_a_file_backed_ssd") else {
        return;
    };
    use std::os::unix::fs::MetadataExt;
    // The emulated SSD: a sparse file (its allocated bytes are what the flash would hold) behind
    // a loop device, which turns discards into holes punched in the file.
    let file = PathBuf::from("/run/strata-trim-ssd.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(512 * MIB)
        .unwrap();
    // The loop driver may be a module in the VM's kernel.
    let _ = vm::output("modprobe", &["loop"]);
    let dev = vm::run("losetup", &["--find", "--show", &file.to_string_lossy()])
        .trim()
        .to_owned();
    let vg = "strata-ssd";
    let _guard = LoopGuard {
        vg,
        dev: dev.clone(),
        file: file.clone(),
    };
    let allocated = || std::fs::metadata(&file).unwrap().blocks() * 512;
    let rt = runtime();
    let lvm = layer();
    rt.block_on(lvm.create_vg(vg, &[PathBuf::from(&dev)]))
        .unwrap();
    let lv = rt
        .block_on(lvm.create_lv(vg, "trimmed", 320 * MIB, None))
        .unwrap();
    let path = lv.device_path().to_string_lossy().into_owned();
    vm::run("mkfs.xfs", &["-q", "-K", &path]);
    std::fs::create_dir_all("/run/node-trim").unwrap();
    vm::run("mount", &[&path, "/run/node-trim"]);
    std::fs::write(
        "/run/node-trim/data",
        MARK.repeat((128 * MIB) as usize / MARK.len()),
    )
    .unwrap();
    vm::run("sync", &[]);
    std::fs::remove_file("/run/node-trim/data").unwrap();
    vm::run("sync", &[]);
    let before = allocated();
    let report = rt
        .block_on(csi_agent::fstrim::pass(&lvm, Path::new("/proc"), None))
        .unwrap();
    let after = allocated();
    eprintln!("fstrim pass: {report:?}; backing file {before} -> {after} bytes allocated");
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(
        report
            .trimmed
            .iter()
            .any(|(v, b)| v == "trimmed" && *b >= 100 * MIB),
        "{report:?}"
    );
    assert!(
        after + 100 * MIB <= before,
        "the emulated SSD did not shrink: {before} -> {after}"
    );
    // The pass is remembered with the LV (restarts do not postpone the next one).
    let lv = rt.block_on(lvm.lv(vg, "trimmed")).unwrap().unwrap();
    assert!(
        csi_agent::fstrim::last_trimmed(&lv).is_some(),
        "{:?}",
        lv.tags
    );
    vm::run("umount", &["/run/node-trim"]);
}
