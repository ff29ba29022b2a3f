//! CSI conformance of the standalone agent, written from the CSI spec's MUST/SHOULD lines
//! (container-storage-interface/spec, spec.md): every RPC the agent offers, idempotent repeats,
//! each documented error code, the stage/publish/unpublish/unstage cycle for mount and block
//! volumes, online expansion with data intact, stats and condition, bad input (clear error and no
//! state change), one call per volume in flight, restart from LVM state, graceful shutdown.
//!
//!     tests/conformance/run           # builds, boots the node VM once, runs every case in it
//!     tests/conformance/run lifecycle # only the cases whose name contains "lifecycle"
//!
//! It starts `target/debug/csi-agent serve --mode standalone` as a child process in the VM (which
//! claims the lab's raw disks into strata-nvme/ssd/hdd), waits for Probe, and talks to it over
//! its unix socket. On the host (no VM) it says so and does nothing.

mod cases;
mod check;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use strata_tests::csi_client::{Agent, Csi};

/// What every case gets.
pub struct Ctx {
    pub csi: Csi,
    pub node: String,
    /// Scratch folder for staging and target paths.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

type CaseFn = for<'a> fn(
    &'a mut Ctx,
    &'a mut Option<Agent>,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>,
>;

const VM_MARKER: &str = "strata.nodevm=1";

fn inside_vm() -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|a| a == VM_MARKER))
        .unwrap_or(false)
}

fn main() -> std::process::ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !inside_vm() {
        if std::env::var("STRATA_NODEVM_REQUIRED").is_ok_and(|v| !v.is_empty() && v != "0") {
            eprintln!("conformance: not inside the node VM but STRATA_NODEVM_REQUIRED is set");
            return std::process::ExitCode::FAILURE;
        }
        eprintln!(
            "SKIPPED conformance: not inside the Strata node VM; the suite claims disks and \
             mounts filesystems. Run it with tests/conformance/run."
        );
        return std::process::ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(run(filters))
}

async fn run(filters: Vec<String>) -> std::process::ExitCode {
    let dir = PathBuf::from("/run/strata-conformance");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let socket = dir.join("csi.sock");
    let log = dir.join("agent.log");
    let node = "conformance-node".to_owned();
    let started = Instant::now();
    let agent = match Agent::start(&socket, &node, &[], &log, Duration::from_secs(180)).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("conformance: the agent did not come up: {e}");
            dump_log(&log);
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "agent ready after {:.2}s (discovery + claim of the lab disks)",
        agent.ready_after.as_secs_f64()
    );
    let mut ctx = Ctx {
        csi: agent.csi.clone(),
        node,
        dir,
        socket,
        log: log.clone(),
    };
    let mut agent = Some(agent);
    let selected: Vec<(&str, CaseFn)> = cases::ALL
        .iter()
        .copied()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let (mut passed, mut failed) = (0usize, Vec::new());
    for (name, case) in &selected {
        let t = Instant::now();
        let result = case(&mut ctx, &mut agent).await;
        match result {
            Ok(()) => {
                passed += 1;
                println!("PASS  {name} ({:.2}s)", t.elapsed().as_secs_f64());
            }
            Err(e) => {
                println!("FAIL  {name} ({:.2}s): {e:#}", t.elapsed().as_secs_f64());
                failed.push(*name);
            }
        }
    }
    if let Some(agent) = agent.take() {
        match agent.stop().await {
            Ok(status) if status.success() => {}
            Ok(status) => {
                println!("FAIL  agent exit: {status}");
                failed.push("agent exit");
            }
            Err(e) => {
                println!("FAIL  agent stop: {e}");
                failed.push("agent stop");
            }
        }
    }
    println!(
        "\nconformance: {passed} passed, {} failed, of {} cases in {:.1}s",
        failed.len(),
        selected.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        println!("failed: {}", failed.join(", "));
        dump_log(&log);
        std::process::ExitCode::FAILURE
    }
}

fn dump_log(log: &std::path::Path) {
    if let Ok(text) = std::fs::read_to_string(log) {
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        eprintln!("--- last lines of the agent's log ({}):", log.display());
        for l in tail {
            eprintln!("{l}");
        }
    }
}
