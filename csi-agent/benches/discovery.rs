//! Full discovery scan vs `lsblk -J -O` on the same node: mean wall time of each over N rounds
//! and their ratio. A scan is what `csi-agent discover` does before planning: sysfs for every
//! disk, mountinfo and swaps, a `blkid -p` probe per disk (concurrently); lsblk -O reads sysfs
//! and udev's database (or probes with libblkid without udev). Run in the node VM with the lab:
//!
//!     CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="tests/nodevm/nodevm run --lab --" \
//!         cargo bench -p csi-agent --bench discovery
//!
//! On the host it measures the host's disks. `BENCH_ROUNDS` sets N (default 50).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use csi_agent::discovery::{self, BlkidProbe, PvView, Roots, Usage};

fn main() {
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let roots = Roots::default();
    let probe = BlkidProbe::default();
    let pvs = PvView::Known(BTreeMap::new());

    let scan_once = || {
        rt.block_on(async {
            let usage = Usage::read(&roots.proc).expect("read /proc");
            discovery::scan(&roots, &usage, &probe, &pvs)
                .await
                .expect("scan")
        })
    };
    let lsblk_once = || {
        let out = Command::new("lsblk")
            .args(["-J", "-O"])
            .output()
            .expect("run lsblk");
        assert!(out.status.success(), "lsblk failed: {out:?}");
        out.stdout.len()
    };

    // warm up both (page cache, binaries)
    let disks = scan_once().disks.len();
    lsblk_once();

    let scan = time(rounds, || {
        std::hint::black_box(scan_once());
    });
    let lsblk = time(rounds, || {
        std::hint::black_box(lsblk_once());
    });
    println!("disks found by the scan: {disks}; rounds: {rounds}");
    println!(
        "discovery scan (sysfs + mounts + blkid -p per disk): {:>8.2} ms",
        ms(scan)
    );
    println!(
        "lsblk -J -O:                                          {:>8.2} ms",
        ms(lsblk)
    );
    println!(
        "ratio scan / lsblk: {:.2}",
        scan.as_secs_f64() / lsblk.as_secs_f64()
    );
}

/// Mean duration of `f` over `rounds` runs.
fn time(rounds: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        f();
    }
    start.elapsed() / rounds.max(1)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
