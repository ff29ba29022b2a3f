//! LV create+remove latency through the LVM layer vs bare `lvm lvcreate`/`lvm lvremove` on the
//! same VG (host loop device, activation off), interleaved to cancel drift. Prints the median per
//! operation and the ratio layer/bare (goal ≤ 1.05).
//!
//!     cargo bench -p csi-agent --bench lvm_layer            # 40 rounds; LVM_BENCH_ROUNDS=N

#[path = "../tests/lvm_lab/mod.rs"]
mod lvm_lab;

use std::time::{Duration, Instant};

use csi_agent::lvm::{OWNER_TAG, naming};

const SIZE: u64 = 4 << 20;

async fn bare(lab: &lvm_lab::Lab, args: &[String]) {
    let out = tokio::process::Command::new("lvm")
        .args(args)
        .env("LVM_SYSTEM_DIR", lab.system_dir())
        .env("LC_ALL", "C")
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run lvm");
    assert!(
        out.status.success(),
        "lvm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds: usize = std::env::var("LVM_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let lab = match lvm_lab::Lab::new(1, 512) {
        Ok(lab) => lab,
        Err(why) => {
            eprintln!("lvm_layer bench skipped: {why}");
            return;
        }
    };
    let lvm = lab.lvm();
    let vg = "strata-bench";
    lvm.create_vg(vg, &[lab.loops[0].clone()])
        .await
        .expect("create VG");

    let (mut l_create, mut l_remove, mut b_create, mut b_remove) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds + 2 {
        let warm = round < 2;
        // Through the layer.
        let volume = format!("pvc-layer-{round}");
        let t = Instant::now();
        lvm.create_lv(vg, &volume, SIZE, None)
            .await
            .expect("layer create");
        let c = t.elapsed();
        let t = Instant::now();
        assert!(lvm.remove_lv(vg, &volume).await.expect("layer remove"));
        let r = t.elapsed();
        if !warm {
            l_create.push(c);
            l_remove.push(r);
        }
        // Bare lvm2, same arguments as the layer's lvcreate (tags included).
        let volume = format!("pvc-bare-{round}");
        let create: Vec<String> = [
            "lvcreate",
            "-n",
            &volume,
            "-L",
            &format!("{SIZE}b"),
            "--addtag",
            OWNER_TAG,
            "--addtag",
            &naming::volume_tag(&volume).expect("tag"),
            "-an",
            "-Zn",
            vg,
        ]
        .map(String::from)
        .to_vec();
        let remove: Vec<String> = ["lvremove", "-f", &format!("{vg}/{volume}")]
            .map(String::from)
            .to_vec();
        let t = Instant::now();
        bare(&lab, &create).await;
        let c = t.elapsed();
        let t = Instant::now();
        bare(&lab, &remove).await;
        let r = t.elapsed();
        if !warm {
            b_create.push(c);
            b_remove.push(r);
        }
    }
    let pairs = |c: &[Duration], r: &[Duration]| -> Vec<Duration> {
        c.iter().zip(r).map(|(a, b)| *a + *b).collect()
    };
    let mut l_pair = pairs(&l_create, &l_remove);
    let mut b_pair = pairs(&b_create, &b_remove);
    let (lc, lr, lp) = (
        median(&mut l_create),
        median(&mut l_remove),
        median(&mut l_pair),
    );
    let (bc, br, bp) = (
        median(&mut b_create),
        median(&mut b_remove),
        median(&mut b_pair),
    );
    println!("lvm_layer: {rounds} rounds, 4 MiB LVs, loop device, activation off");
    println!(
        "  create   layer {:8.2} ms   bare {:8.2} ms   ratio {:.3}",
        ms(lc),
        ms(bc),
        ms(lc) / ms(bc)
    );
    println!(
        "  remove   layer {:8.2} ms   bare {:8.2} ms   ratio {:.3}",
        ms(lr),
        ms(br),
        ms(lr) / ms(br)
    );
    println!(
        "  c+r      layer {:8.2} ms   bare {:8.2} ms   ratio {:.3} (goal <= 1.05)",
        ms(lp),
        ms(bp),
        ms(lp) / ms(bp)
    );
}
