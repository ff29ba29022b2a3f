//! The node-path benchmark of snapshots (ignored by default; it prints figures and asserts only
//! that every step worked). Through the LVM layer on the node VM's two NVMe lab disks: snapshot
//! create latency (p50/p99 over 20), restore of a 10 GiB volume to a mounted filesystem against
//! the same restore of a 1 GiB volume (a thin restore is a metadata operation: neither its time
//! nor the pool's used bytes follow the size), and thin against linear create + mkfs.xfs + mount
//! + bind mount in the same run (ratio). Run with
//!
//!     NODE_TEST_TARGET=node_thin tests/nodevm/cargo-node-test -- --ignored --nocapture bench_
//!
//! Figures and the command are kept in docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csi_agent::claim::thin_pool::virtual_room;
use csi_agent::lvm::{LvSource, ThinState};
use strata_tests::vm;

use super::{MIB, VG, VgGuard, layer, runtime, write_pattern};

const GIB: u64 = 1 << 30;

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// The `q`-quantile of `xs` (nearest rank).
fn quantile(xs: &[Duration], q: f64) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn mean(xs: &[Duration]) -> Duration {
    xs.iter().sum::<Duration>() / xs.len() as u32
}

fn mount(dev: &Path, at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    vm::run("mount", &[&dev.to_string_lossy(), &at.to_string_lossy()]);
}

fn umount(at: &Path) {
    vm::run("umount", &[&at.to_string_lossy()]);
}

/// mkfs.xfs + mount + bind mount, as NodeStage and NodePublish do after CreateVolume.
fn stage_and_publish(dev: &Path, stage: &Path, publish: &Path) {
    vm::run("mkfs.xfs", &["-q", &dev.to_string_lossy()]);
    mount(dev, stage);
    std::fs::create_dir_all(publish).unwrap();
    vm::run(
        "mount",
        &[
            "--bind",
            &stage.to_string_lossy(),
            &publish.to_string_lossy(),
        ],
    );
}

fn unpublish_and_unstage(stage: &Path, publish: &Path) {
    umount(publish);
    umount(stage);
}

#[test]
#[ignore = "benchmark: run explicitly (see the module head)"]
fn bench_snapshots_restores_and_thin_against_linear() {
    let Some(_lab) = vm::enter("bench_snapshots_restores_and_thin_against_linear") else {
        return;
    };
    let disks = [vm::by_serial("NVME-A"), vm::by_serial("NVME-B")];
    let devs: Vec<PathBuf> = disks.iter().map(|d| d.dev.clone()).collect();
    let _guard = VgGuard { pvs: devs.clone() };
    let stage = PathBuf::from("/mnt/strata-bench-stage");
    let publish = PathBuf::from("/mnt/strata-bench-publish");
    runtime().block_on(async {
        let lvm = layer();
        lvm.create_vg(VG, &devs).await.unwrap();
        lvm.create_thin_pool(VG, 6 * GIB).await.unwrap();
        let room = |s: &ThinState| virtual_room(s, 8.0);

        // snapshot create latency
        let origin = lvm
            .create_thin_lv(VG, "pvc-bench-origin", 64 * MIB, None, room)
            .await
            .unwrap();
        write_pattern(&origin.device_path(), 16 * MIB);
        let mut made = Vec::new();
        for i in 0..20 {
            let t = Instant::now();
            lvm.create_snapshot(VG, "pvc-bench-origin", &format!("snapshot-b{i}"), room)
                .await
                .unwrap();
            made.push(t.elapsed());
        }
        let mut removed = Vec::new();
        for i in 0..20 {
            let t = Instant::now();
            assert!(
                lvm.remove_snapshot(VG, &format!("snapshot-b{i}"))
                    .await
                    .unwrap()
            );
            removed.push(t.elapsed());
        }
        // the bare lvm2 commands on the same origin, same run
        let origin_lv = format!("{VG}/{}", origin.name);
        let (mut bare_made, mut bare_removed) = (Vec::new(), Vec::new());
        for i in 0..20 {
            let name = format!("bare_snap{i}");
            let t = Instant::now();
            vm::run(
                "lvcreate",
                &["-qq", "-s", "-n", &name, "-ky", "-p", "r", &origin_lv],
            );
            bare_made.push(t.elapsed());
            let t = Instant::now();
            vm::run("lvremove", &["-qq", "-y", &format!("{VG}/{name}")]);
            bare_removed.push(t.elapsed());
        }
        println!(
            "BENCH snapshot create (64 MiB origin, 16 MiB written), n=20: p50 {} p99 {} mean {}; \
             remove: p50 {} p99 {}",
            secs(quantile(&made, 0.5)),
            secs(quantile(&made, 0.99)),
            secs(mean(&made)),
            secs(quantile(&removed, 0.5)),
            secs(quantile(&removed, 0.99)),
        );
        println!(
            "BENCH bare lvcreate -s, n=20: p50 {} p99 {} (layer/bare p50 {:.2}); bare lvremove: \
             p50 {} p99 {}",
            secs(quantile(&bare_made, 0.5)),
            secs(quantile(&bare_made, 0.99)),
            quantile(&made, 0.5).as_secs_f64() / quantile(&bare_made, 0.5).as_secs_f64(),
            secs(quantile(&bare_removed, 0.5)),
            secs(quantile(&bare_removed, 0.99)),
        );
        assert!(lvm.remove_lv(VG, "pvc-bench-origin").await.unwrap());

        // restore to a mounted filesystem: 10 GiB against 1 GiB, 256 MiB written in each
        for size in [GIB, 10 * GIB] {
            let name = format!("pvc-bench-{}g", size / GIB);
            let src = lvm
                .create_thin_lv(VG, &name, size, None, room)
                .await
                .unwrap();
            vm::run("mkfs.xfs", &["-q", &src.device_path().to_string_lossy()]);
            mount(&src.device_path(), &stage);
            vm::run(
                "dd",
                &[
                    "if=/dev/urandom",
                    &format!("of={}", stage.join("data.bin").display()),
                    "bs=1M",
                    "count=256",
                    "conv=fsync",
                ],
            );
            umount(&stage);
            let snap = format!("snapshot-{name}");
            lvm.create_snapshot(VG, &name, &snap, room).await.unwrap();
            let used_before = lvm.thin_state(VG).await.unwrap().unwrap().pool.used_bytes();
            let restore = format!("{name}-restore");
            let t = Instant::now();
            let lv = lvm
                .create_lv_from_source(VG, LvSource::Snapshot(&snap), &restore, size, None, room)
                .await
                .unwrap();
            let created = t.elapsed();
            mount(&lv.device_path(), &stage);
            let mounted = t.elapsed();
            let used_after = lvm.thin_state(VG).await.unwrap().unwrap().pool.used_bytes();
            assert!(stage.join("data.bin").exists());
            umount(&stage);
            println!(
                "BENCH restore of a {} GiB volume (256 MiB written): LV {} , mounted filesystem {}; \
                 pool used {} -> {} MiB",
                size / GIB,
                secs(created),
                secs(mounted),
                used_before / MIB,
                used_after / MIB,
            );
            assert!(lvm.remove_lv(VG, &restore).await.unwrap());
            assert!(lvm.remove_snapshot(VG, &snap).await.unwrap());
            assert!(lvm.remove_lv(VG, &name).await.unwrap());
        }

        // thin against linear: create + mkfs.xfs + mount + bind mount, alternating, same run
        let rounds = 5;
        let (mut thin, mut linear) = (Vec::new(), Vec::new());
        let (mut thin_create, mut linear_create) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            for kind in ["thin", "linear"] {
                let name = format!("pvc-bench-{kind}-{round}");
                let t = Instant::now();
                let lv = if kind == "thin" {
                    lvm.create_thin_lv(VG, &name, GIB, None, room).await
                } else {
                    lvm.create_lv(VG, &name, GIB, None).await
                }
                .unwrap();
                let created = t.elapsed();
                stage_and_publish(&lv.device_path(), &stage, &publish);
                let took = t.elapsed();
                if kind == "thin" {
                    thin.push(took);
                    thin_create.push(created);
                } else {
                    linear.push(took);
                    linear_create.push(created);
                }
                unpublish_and_unstage(&stage, &publish);
                assert!(lvm.remove_lv(VG, &name).await.unwrap());
            }
        }
        println!(
            "BENCH 1 GiB create+mkfs.xfs+mount+bind, {rounds} rounds: thin mean {} median {}, \
             linear mean {} median {}; ratio thin/linear mean {:.2} median {:.2}",
            secs(mean(&thin)),
            secs(quantile(&thin, 0.5)),
            secs(mean(&linear)),
            secs(quantile(&linear, 0.5)),
            mean(&thin).as_secs_f64() / mean(&linear).as_secs_f64(),
            quantile(&thin, 0.5).as_secs_f64() / quantile(&linear, 0.5).as_secs_f64(),
        );
        println!(
            "BENCH of which the layer's create: thin median {}, linear median {}",
            secs(quantile(&thin_create, 0.5)),
            secs(quantile(&linear_create, 0.5)),
        );
    });
}
