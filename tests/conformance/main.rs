//! CSI conformance of the standalone agent and of Kubernetes mode, written from the CSI spec's MUST/SHOULD lines
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
//! its unix socket. Then, in the same boot, it runs the cases that apply to Kubernetes mode
//! against the agent (`--mode kubernetes`) and csi-controller, both children in the VM, with the
//! fake API server in this process ([`kubernetes`]). `STRATA_CONFORMANCE_MODES` (default
//! `standalone,kubernetes`) picks the modes, `STRATA_CONFORMANCE_KUBERNETES_EXCLUDE` leaves cases
//! out of the Kubernetes pass. On the host (no VM) it says so and does nothing.

mod cases;
mod check;
mod kubernetes;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use strata_tests::csi_client::{Agent, Csi};

/// What every case gets.
pub struct Ctx {
    /// Identity and Controller of the plugin (the agent standalone, the controller in Kubernetes
    /// mode) and Node of the agent.
    pub csi: Csi,
    pub node: String,
    /// Scratch folder for staging and target paths.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The API server stand-in and the processes of Kubernetes mode; `None` standalone.
    pub kube: Option<kubernetes::Kube>,
}

/// Which modes a case applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modes {
    Both,
    /// The standalone agent only (ListVolumes, restarting the agent that is the whole plugin).
    Standalone,
    /// Kubernetes mode only (NodeStorage, LogicalVolume objects, the API server's answers).
    Kubernetes,
}

impl Modes {
    fn applies(self, kubernetes: bool) -> bool {
        match self {
            Modes::Both => true,
            Modes::Standalone => !kubernetes,
            Modes::Kubernetes => kubernetes,
        }
    }
}

type CaseFn = for<'a> fn(
    &'a mut Ctx,
    &'a mut Option<Agent>,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>,
>;

/// The standalone agent's flags: a thin pool on the hdd class (10 % of its 16 GiB; ratio 4) for
/// the snapshot cases; the linear cases keep the nvme and ssd classes whole.
pub const STANDALONE_FLAGS: &[&str] = &[
    "--thin-pool",
    "hdd=10",
    "--thin-overprovision-ratio",
    "hdd=4",
];

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

/// The modes to run, from `STRATA_CONFORMANCE_MODES`.
fn modes() -> Result<(bool, bool), String> {
    let text = std::env::var("STRATA_CONFORMANCE_MODES")
        .unwrap_or_else(|_| "standalone,kubernetes".into());
    let (mut standalone, mut kubernetes) = (false, false);
    for m in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        match m {
            "standalone" => standalone = true,
            "kubernetes" => kubernetes = true,
            other => {
                return Err(format!(
                    "STRATA_CONFORMANCE_MODES: unknown mode {other:?} (standalone, kubernetes)"
                ));
            }
        }
    }
    Ok((standalone, kubernetes))
}

/// The tally of one mode's run.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: Vec<String>,
    selected: usize,
}

async fn run(filters: Vec<String>) -> std::process::ExitCode {
    let (standalone, kubernetes) = match modes() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("conformance: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let dir = PathBuf::from("/run/strata-conformance");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut logs = Vec::new();
    if standalone {
        let log = dir.join("agent.log");
        run_standalone(&dir, &filters, &mut tally).await;
        logs.push(log);
    }
    if kubernetes {
        run_kubernetes(&dir, &filters, &mut tally).await;
        logs.push(dir.join("agent-kubernetes.log"));
        logs.push(dir.join("controller.log"));
    }
    println!(
        "\nconformance: {} passed, {} failed, of {} cases in {:.1}s",
        tally.passed,
        tally.failed.len(),
        tally.selected,
        started.elapsed().as_secs_f64()
    );
    if tally.failed.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        println!("failed: {}", tally.failed.join(", "));
        for log in &logs {
            dump_log(log);
        }
        std::process::ExitCode::FAILURE
    }
}

async fn run_standalone(dir: &std::path::Path, filters: &[String], tally: &mut Tally) {
    println!("== standalone: csi-agent serve --mode standalone");
    let socket = dir.join("csi.sock");
    let log = dir.join("agent.log");
    let node = "conformance-node".to_owned();
    let agent = match Agent::start(
        &socket,
        &node,
        STANDALONE_FLAGS,
        &log,
        Duration::from_secs(180),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            println!("FAIL  standalone agent start: {e}");
            tally.failed.push("standalone agent start".into());
            return;
        }
    };
    println!(
        "agent ready after {:.2}s (discovery + claim of the lab disks)",
        agent.ready_after.as_secs_f64()
    );
    let mut ctx = Ctx {
        csi: agent.csi.clone(),
        node,
        dir: dir.to_path_buf(),
        socket,
        log,
        kube: None,
    };
    let mut agent = Some(agent);
    run_cases(&mut ctx, &mut agent, filters, "standalone", tally).await;
    if let Some(agent) = agent.take() {
        match agent.stop().await {
            Ok(status) if status.success() => {}
            Ok(status) => {
                println!("FAIL  agent exit: {status}");
                tally.failed.push("standalone agent exit".into());
            }
            Err(e) => {
                println!("FAIL  agent stop: {e}");
                tally.failed.push("standalone agent stop".into());
            }
        }
    }
}

async fn run_kubernetes(dir: &std::path::Path, filters: &[String], tally: &mut Tally) {
    println!("== kubernetes: csi-agent --mode kubernetes + csi-controller, fake API server");
    let node = "conformance-node".to_owned();
    let t = Instant::now();
    let (kube, csi) = match kubernetes::Kube::start(dir, &node).await {
        Ok(k) => k,
        Err(e) => {
            println!("FAIL  kubernetes mode start: {e:#}");
            tally.failed.push("kubernetes start".into());
            return;
        }
    };
    println!(
        "agent and controller ready, NodeStorage published after {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let mut ctx = Ctx {
        csi,
        node,
        dir: dir.to_path_buf(),
        socket: dir.join("agent.sock"),
        log: dir.join("agent-kubernetes.log"),
        kube: Some(kube),
    };
    run_cases(&mut ctx, &mut None, filters, "kubernetes", tally).await;
    if let Some(kube) = ctx.kube.take()
        && let Err(e) = kube.stop().await
    {
        println!("FAIL  kubernetes mode stop: {e:#}");
        tally.failed.push("kubernetes stop".into());
    }
}

/// `STRATA_CONFORMANCE_KUBERNETES_EXCLUDE`: comma-separated name parts of cases left out of the
/// Kubernetes-mode pass (run-all leaves out the Node-service cases there: the agent's Node service
/// is the same code in both modes and they run in the standalone pass). Unset: none.
fn kubernetes_exclusions() -> Vec<String> {
    std::env::var("STRATA_CONFORMANCE_KUBERNETES_EXCLUDE")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn run_cases(
    ctx: &mut Ctx,
    agent: &mut Option<Agent>,
    filters: &[String],
    mode: &str,
    tally: &mut Tally,
) {
    let kubernetes = ctx.kube.is_some();
    let skipped = if kubernetes {
        kubernetes_exclusions()
    } else {
        Vec::new()
    };
    let selected: Vec<(&str, CaseFn)> = cases::ALL
        .iter()
        .copied()
        .filter(|(_, modes, _)| modes.applies(kubernetes))
        .filter(|(name, _, _)| !skipped.iter().any(|s| name.contains(s.as_str())))
        .filter(|(name, _, _)| {
            filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
        })
        .map(|(name, _, case)| (name, case))
        .collect();
    tally.selected += selected.len();
    for (name, case) in &selected {
        let t = Instant::now();
        let result = case(ctx, agent).await;
        match result {
            Ok(()) => {
                tally.passed += 1;
                println!("PASS  [{mode}] {name} ({:.2}s)", t.elapsed().as_secs_f64());
            }
            Err(e) => {
                println!(
                    "FAIL  [{mode}] {name} ({:.2}s): {e:#}",
                    t.elapsed().as_secs_f64()
                );
                tally.failed.push(format!("[{mode}] {name}"));
            }
        }
    }
}

fn dump_log(log: &std::path::Path) {
    if let Ok(text) = std::fs::read_to_string(log) {
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        eprintln!("--- last lines of {}:", log.display());
        for l in tail {
            eprintln!("{l}");
        }
    }
}
