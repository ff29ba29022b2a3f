//! Thin snapshots, restores and clones with real device-mapper, through the LVM layer: a snapshot
//! of a written volume keeps its bytes exactly while the origin is written again; restores of the
//! same size and larger (first bytes, then the filesystem grown) and a clone of a mounted volume
//! under writes; the origin deleted, the snapshot still restores exactly; every LV removed, a new
//! thin volume reads no byte of theirs (remanence); and the refusals (no room by the ratio, a
//! linear or unknown source) that leave nothing made. One VG, 64–128 MiB volumes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use csi_agent::claim::thin_pool::virtual_room;
use csi_agent::lvm::{LvSource, LvmError, ThinState};
use strata_tests::vm;

use super::{MIB, VG, VgGuard, layer, reads_zero, runtime};

/// Every byte of `dev`, read past the page cache.
fn device_bytes(dev: &Path) -> Vec<u8> {
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let mut out = Vec::new();
    std::fs::File::open(dev)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// `len` bytes of a pattern no zeroed or freshly made device holds (a counter per 8 bytes).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|i| (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64).to_le_bytes())
        .collect()
}

fn mount(dev: &Path, at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    vm::run("mount", &[&dev.to_string_lossy(), &at.to_string_lossy()]);
}

fn umount(at: &Path) {
    vm::run("umount", &[&at.to_string_lossy()]);
}

fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Whether `hay` contains the first 64 bytes of `needle` anywhere (an old block showing through).
fn shows(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(64).any(|w| w == &needle[..64])
}

#[test]
fn snapshot_restore_clone_and_remanence() {
    let Some(_lab) = vm::enter("snapshot_restore_clone_and_remanence") else {
        return;
    };
    let disk = vm::by_serial("NVME-B");
    let _guard = VgGuard {
        pvs: vec![disk.dev.clone()],
    };
    let mnt = PathBuf::from("/mnt/strata-snap");
    runtime().block_on(async {
        let lvm = Arc::new(layer());
        lvm.create_vg(VG, std::slice::from_ref(&disk.dev))
            .await
            .unwrap();
        lvm.create_thin_pool(VG, 256 * MIB).await.unwrap();
        // ratio 4: 1 GiB of virtual size may be promised on the 256 MiB pool
        let room = |s: &ThinState| virtual_room(s, 4.0);

        // the origin: ext4 with a file of pattern A
        let origin = lvm
            .create_thin_lv(VG, "pvc-origin", 64 * MIB, None, room)
            .await
            .unwrap();
        let odev = origin.device_path();
        vm::run("mkfs.ext4", &["-q", &odev.to_string_lossy()]);
        let data_a = pattern(1, 16 * MIB as usize);
        mount(&odev, &mnt);
        write_file(&mnt.join("data.bin"), &data_a);
        umount(&mnt);
        let at_snapshot = device_bytes(&odev);
        assert_eq!(at_snapshot.len() as u64, 64 * MIB);

        // the snapshot: read-only, never activated, the origin's size, lvm2's time
        let snap = lvm
            .create_snapshot(VG, "pvc-origin", "snapshot-1", room)
            .await
            .unwrap();
        assert_eq!(snap.size_bytes, 64 * MIB);
        assert_eq!(snap.source_volume, "pvc-origin");
        assert!(snap.creation_time.is_some(), "{snap:?}");
        assert!(
            !snap.lv.device_path().exists(),
            "a snapshot is never activated"
        );
        let attr = vm::run(
            "lvs",
            &[
                "--noheadings",
                "-o",
                "lv_attr",
                &format!("{VG}/{}", snap.lv.name),
            ],
        );
        assert_eq!(attr.trim().as_bytes()[1], b'r', "read-only: {attr}");
        // idempotent: the same snapshot again
        let again = lvm
            .create_snapshot(VG, "pvc-origin", "snapshot-1", room)
            .await
            .unwrap();
        assert_eq!(again.lv.name, snap.lv.name);
        // the volume listings never take it for a volume
        assert!(lvm.find_lv("snapshot-1").await.unwrap().is_none());
        assert_eq!(
            lvm.find_snapshot("snapshot-1").await.unwrap().map(|s| s.vg),
            Some(VG.to_owned())
        );

        // the origin written again: pattern B over the file, and a new file
        let data_b = pattern(2, 16 * MIB as usize);
        mount(&odev, &mnt);
        write_file(&mnt.join("data.bin"), &data_b);
        write_file(&mnt.join("more.bin"), &pattern(3, 4 * MIB as usize));
        umount(&mnt);
        assert_ne!(device_bytes(&odev), at_snapshot, "the origin changed");

        // restore of the same size: the snapshot's bytes exactly
        let same = lvm
            .create_lv_from_source(
                VG,
                LvSource::Snapshot("snapshot-1"),
                "pvc-restore-same",
                64 * MIB,
                None,
                room,
            )
            .await
            .unwrap();
        assert!(csi_agent::lvm::is_thin(&same));
        assert!(device_bytes(&same.device_path()) == at_snapshot);

        // restore larger: the first 64 MiB exactly, the rest grown; the filesystem grows mounted
        let larger = lvm
            .create_lv_from_source(
                VG,
                LvSource::Snapshot("snapshot-1"),
                "pvc-restore-larger",
                128 * MIB,
                None,
                room,
            )
            .await
            .unwrap();
        let ldev = larger.device_path();
        assert_eq!(vm::dev_size(&ldev), 128 * MIB);
        let bytes = device_bytes(&ldev);
        assert!(bytes[..64 * MIB as usize] == at_snapshot[..]);
        mount(&ldev, &mnt);
        let before = vm::fs_size(&mnt);
        vm::run("resize2fs", &[&ldev.to_string_lossy()]);
        let after = vm::fs_size(&mnt);
        assert!(
            before < 64 * MIB && after > 100 * MIB,
            "{before} -> {after}"
        );
        assert!(std::fs::read(mnt.join("data.bin")).unwrap() == data_a);
        assert!(!mnt.join("more.bin").exists());
        umount(&mnt);

        // clone of a live volume: mounted and being written while the clone is made
        mount(&odev, &mnt);
        let settled = pattern(4, 4 * MIB as usize);
        write_file(&mnt.join("settled.bin"), &settled);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, path) = (Arc::clone(&stop), mnt.join("busy.bin"));
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    write_file(&path, &pattern(100 + rounds, MIB as usize));
                    rounds += 1;
                }
                rounds
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        let clone = lvm
            .create_lv_from_source(
                VG,
                LvSource::Volume("pvc-origin"),
                "pvc-clone",
                64 * MIB,
                None,
                room,
            )
            .await
            .unwrap();
        stop.store(true, Ordering::SeqCst);
        let rounds = writer.join().unwrap();
        assert!(rounds > 0, "the origin was written during the clone");
        umount(&mnt);
        // crash-consistent: the clone mounts (journal replayed) and holds what was synced before
        let cmnt = PathBuf::from("/mnt/strata-clone");
        mount(&clone.device_path(), &cmnt);
        assert!(std::fs::read(cmnt.join("settled.bin")).unwrap() == settled);
        assert!(std::fs::read(cmnt.join("data.bin")).unwrap() == data_b);
        umount(&cmnt);
        vm::run("e2fsck", &["-fn", &clone.device_path().to_string_lossy()]);

        // the origin deleted: the snapshot still restores exactly
        assert!(lvm.remove_lv(VG, "pvc-origin").await.unwrap());
        assert!(lvm.find_snapshot("snapshot-1").await.unwrap().is_some());
        let late = lvm
            .create_lv_from_source(
                VG,
                LvSource::Snapshot("snapshot-1"),
                "pvc-restore-late",
                64 * MIB,
                None,
                room,
            )
            .await
            .unwrap();
        assert!(device_bytes(&late.device_path()) == at_snapshot);

        // remanence: everything removed, a new thin volume over the pool reads none of it
        assert!(lvm.remove_snapshot(VG, "snapshot-1").await.unwrap());
        assert!(!lvm.remove_snapshot(VG, "snapshot-1").await.unwrap());
        for v in [
            "pvc-restore-same",
            "pvc-restore-larger",
            "pvc-clone",
            "pvc-restore-late",
        ] {
            assert!(lvm.remove_lv(VG, v).await.unwrap(), "{v}");
        }
        let state = lvm.thin_state(VG).await.unwrap().unwrap();
        assert_eq!(state.virtual_bytes, 0);
        assert!(state.pool.used_bytes() < 2 * MIB, "{:?}", state.pool);
        let fresh = lvm
            .create_thin_lv(VG, "pvc-fresh", 128 * MIB, None, room)
            .await
            .unwrap();
        let bytes = device_bytes(&fresh.device_path());
        assert!(!shows(&bytes, &data_a) && !shows(&bytes, &data_b));
        assert!(reads_zero(&fresh.device_path()));
    });
}

#[test]
fn snapshot_refusals_make_nothing() {
    let Some(_lab) = vm::enter("snapshot_refusals_make_nothing") else {
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
        lvm.create_thin_pool(VG, 128 * MIB).await.unwrap();
        // ratio 1: the pool may promise 128 MiB of virtual size
        let room = |s: &ThinState| virtual_room(s, 1.0);
        let origin = lvm
            .create_thin_lv(VG, "pvc-origin", 96 * MIB, None, room)
            .await
            .unwrap();
        super::write_pattern(&origin.device_path(), 8 * MIB);
        let names = || vm::run("lvs", &["--noheadings", "-o", "lv_name", VG]);
        let before = names();

        // 96 MiB promised, 32 left: a 96 MiB snapshot may not be promised
        let refused = lvm
            .create_snapshot(VG, "pvc-origin", "snapshot-big", room)
            .await;
        assert!(
            matches!(refused, Err(LvmError::InsufficientSpace { .. })),
            "{refused:?}"
        );
        assert!(lvm.find_snapshot("snapshot-big").await.unwrap().is_none());
        // nor a clone of it
        let refused = lvm
            .create_lv_from_source(
                VG,
                LvSource::Volume("pvc-origin"),
                "pvc-c",
                96 * MIB,
                None,
                room,
            )
            .await;
        assert!(
            matches!(refused, Err(LvmError::InsufficientSpace { .. })),
            "{refused:?}"
        );
        // an unknown source, a linear source
        let unknown = lvm
            .create_snapshot(VG, "pvc-nothing", "snapshot-x", |_| u64::MAX)
            .await;
        assert!(
            matches!(unknown, Err(LvmError::NotFound { .. })),
            "{unknown:?}"
        );
        lvm.create_lv(VG, "pvc-linear", 8 * MIB, None)
            .await
            .unwrap();
        let before_linear = names();
        let linear = lvm
            .create_snapshot(VG, "pvc-linear", "snapshot-l", |_| u64::MAX)
            .await;
        assert!(
            matches!(linear, Err(LvmError::NotThin { .. })),
            "{linear:?}"
        );
        assert_eq!(names(), before_linear, "nothing made");
        assert!(lvm.remove_lv(VG, "pvc-linear").await.unwrap());
        assert_eq!(names(), before, "nothing made");
        // the origin's bytes are untouched by the refusals
        let mut head = vec![0u8; 16];
        std::fs::File::open(origin.device_path())
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(&head, super::MARK);
        // with room, the same snapshot is made
        let made = lvm
            .create_snapshot(VG, "pvc-origin", "snapshot-big", |s| virtual_room(s, 2.0))
            .await
            .unwrap();
        assert_eq!(made.size_bytes, 96 * MIB);
    });
}
