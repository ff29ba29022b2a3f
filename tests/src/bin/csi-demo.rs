//! `csi-demo`: drives a standalone `csi-agent` inside the node VM over its unix socket.
//! - `csi-demo demo`: shows discovery, creates one volume per class, stages and publishes it,
//!   writes and reads a file, expands it online, shows stats, deletes everything, and prints a
//!   report with timings (run by `tests/demo`);
//! - `csi-demo bench`: CreateVolume+NodeStage+NodePublish end to end against the bare
//!   `lvcreate`+`mkfs.xfs`+`mount` sequence on the same VG, N concurrent CreateVolume calls
//!   against N bare `lvcreate`s in sequence on the same VG, and the agent's RSS idle and under
//!   the concurrent creates, read from `/proc` (run by `tests/bench`). The rounds follow one
//!   uncounted warm-up round, and the two halves of a round take turns going first. Both start
//!   and stop the agent themselves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use csi_api::csi::{self, CapacityRange, volume_usage::Unit};
use strata_tests::csi_client::{
    Agent, Csi, block_cap, create_request, mount_cap, publish_request, stage_request,
    unpublish_request, unstage_request,
};

#[derive(Parser)]
struct Cli {
    /// Scratch folder (socket, agent log, mount points).
    #[arg(long, default_value = "/run/strata-demo")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The guided tour.
    Demo,
    /// The benchmark.
    Bench {
        /// Sequential rounds of each end-to-end sequence (after one uncounted warm-up round).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Concurrent CreateVolume calls.
        #[arg(long, default_value_t = 50)]
        concurrent: usize,
        /// Run the agent with its runner and mounter at debug level (JSON) and print, per call,
        /// its own commands and the rest. Off by default: the agent then logs as shipped (info),
        /// since each extra log line costs 3-5 ms of the VM's CPU inside the timed calls.
        #[arg(long)]
        trace: bool,
    },
}

const GI: i64 = 1 << 30;

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {prog}"))?;
    if !out.status.success() {
        bail!("{prog} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ok<T>(what: &str, r: Result<tonic::Response<T>, tonic::Status>) -> Result<T> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| anyhow::anyhow!("{what}: {:?}: {}", s.code(), s.message()))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // One thread: the client stands in for kubelet and the sidecars, and should add as little as
    // it can to the calls it times (a multi-threaded runtime hands each call between threads, a
    // few milliseconds apiece in the node VM).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let _ = std::fs::remove_dir_all(&cli.dir);
        std::fs::create_dir_all(&cli.dir)?;
        match cli.command {
            Cmd::Demo => demo(&cli.dir).await,
            Cmd::Bench {
                rounds,
                concurrent,
                trace,
            } => bench(&cli.dir, rounds, concurrent, trace).await,
        }
    })
}

async fn start(dir: &Path, extra_args: &[&str]) -> Result<Agent> {
    let log = dir.join("agent.log");
    match Agent::start(
        &dir.join("csi.sock"),
        "demo-node",
        extra_args,
        &log,
        Duration::from_secs(240),
    )
    .await
    {
        Ok(a) => Ok(a),
        Err(e) => {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("the agent did not come up: {e}\n{text}")
        }
    }
}

/// Timings of the demo, printed at the end.
struct Report(Vec<(String, Duration)>);

impl Report {
    async fn step<T>(
        &mut self,
        name: impl Into<String>,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let name = name.into();
        let t = Instant::now();
        let out = f.await.with_context(|| name.clone())?;
        let took = t.elapsed();
        println!("  {name:<44} {}", secs(took));
        self.0.push((name, took));
        Ok(out)
    }
}

async fn demo(dir: &Path) -> Result<()> {
    let total = Instant::now();
    let agent_bin = strata_tests::csi_client::agent_bin();
    let bin = agent_bin.to_string_lossy();
    println!("== disks before the agent (csi-agent discover)");
    print!("{}", run(&bin, &["discover"])?);
    println!("\n== starting csi-agent serve --mode standalone");
    let agent = start(dir, &[]).await?;
    println!(
        "  ready after {} (discovery + claim)",
        secs(agent.ready_after)
    );
    println!("\n== disks after the first claim pass");
    print!("{}", run(&bin, &["discover"])?);
    println!("\n== volume groups");
    print!(
        "{}",
        run("vgs", &["-o", "vg_name,pv_count,vg_size,vg_free,vg_tags"])?
    );
    let csi = agent.csi.clone();
    let mut report = Report(Vec::new());
    let mut volumes = Vec::new();
    for class in ["nvme", "ssd", "hdd"] {
        println!("\n== class {class}");
        let name = format!("demo-{class}");
        let cap = mount_cap("xfs", &[]);
        let v = report
            .step(format!("{class}: CreateVolume 1 GiB"), async {
                let r = ok(
                    "CreateVolume",
                    csi.controller
                        .clone()
                        .create_volume(create_request(&name, class, GI, cap.clone()))
                        .await,
                )?;
                r.volume.context("no volume")
            })
            .await?;
        let id = v.volume_id.clone();
        let staging = dir.join(&name).join("staging");
        let target = dir.join(&name).join("target");
        std::fs::create_dir_all(&staging)?;
        report
            .step(
                format!("{class}: NodeStageVolume (mkfs.xfs + mount)"),
                async {
                    ok(
                        "stage",
                        csi.node
                            .clone()
                            .node_stage_volume(stage_request(&id, &staging, cap.clone()))
                            .await,
                    )
                },
            )
            .await?;
        report
            .step(format!("{class}: NodePublishVolume (bind)"), async {
                ok(
                    "publish",
                    csi.node
                        .clone()
                        .node_publish_volume(publish_request(
                            &id,
                            &staging,
                            &target,
                            cap.clone(),
                            false,
                        ))
                        .await,
                )
            })
            .await?;
        let payload: Vec<u8> = (0..(16u32 << 20)).map(|i| (i % 251) as u8).collect();
        report
            .step(format!("{class}: write + read back 16 MiB"), async {
                std::fs::write(target.join("hello.bin"), &payload)?;
                ensure!(
                    std::fs::read(target.join("hello.bin"))? == payload,
                    "read back differs"
                );
                Ok(())
            })
            .await?;
        let new_size = 2 * GI;
        report
            .step(format!("{class}: expand online to 2 GiB"), async {
                ok(
                    "ControllerExpandVolume",
                    csi.controller
                        .clone()
                        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                            volume_id: id.clone(),
                            capacity_range: Some(CapacityRange {
                                required_bytes: new_size,
                                limit_bytes: 0,
                            }),
                            volume_capability: Some(cap.clone()),
                            ..Default::default()
                        })
                        .await,
                )?;
                ok(
                    "NodeExpandVolume",
                    csi.node
                        .clone()
                        .node_expand_volume(csi::NodeExpandVolumeRequest {
                            volume_id: id.clone(),
                            volume_path: target.to_string_lossy().into_owned(),
                            staging_target_path: staging.to_string_lossy().into_owned(),
                            capacity_range: Some(CapacityRange {
                                required_bytes: new_size,
                                limit_bytes: 0,
                            }),
                            volume_capability: Some(cap.clone()),
                            ..Default::default()
                        })
                        .await,
                )
            })
            .await?;
        ensure!(
            std::fs::read(target.join("hello.bin"))? == payload,
            "data changed by expansion"
        );
        let st = ok(
            "stats",
            csi.node
                .clone()
                .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                    volume_id: id.clone(),
                    volume_path: target.to_string_lossy().into_owned(),
                    staging_target_path: String::new(),
                })
                .await,
        )?;
        for u in &st.usage {
            let unit = if u.unit == Unit::Bytes as i32 {
                "bytes "
            } else {
                "inodes"
            };
            println!(
                "  stats {unit}: total {:>12} used {:>10} available {:>12}",
                u.total, u.used, u.available
            );
        }
        if let Some(c) = &st.volume_condition {
            println!(
                "  condition: {} ({})",
                if c.abnormal { "ABNORMAL" } else { "normal" },
                c.message
            );
        }
        volumes.push((id, staging, target));
    }
    println!("\n== logical volumes");
    print!(
        "{}",
        run("lvs", &["-o", "vg_name,lv_name,lv_size,lv_tags"])?
    );
    println!("\n== cleanup");
    for (id, staging, target) in &volumes {
        report
            .step(format!("{id}: unpublish + unstage + delete"), async {
                ok(
                    "unpublish",
                    csi.node
                        .clone()
                        .node_unpublish_volume(unpublish_request(id, target))
                        .await,
                )?;
                ok(
                    "unstage",
                    csi.node
                        .clone()
                        .node_unstage_volume(unstage_request(id, staging))
                        .await,
                )?;
                ok(
                    "delete",
                    csi.controller
                        .clone()
                        .delete_volume(csi::DeleteVolumeRequest {
                            volume_id: id.clone(),
                            ..Default::default()
                        })
                        .await,
                )
            })
            .await?;
    }
    let left = ok(
        "ListVolumes",
        csi.controller
            .clone()
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
    )?;
    ensure!(
        left.entries.is_empty(),
        "volumes left: {}",
        left.entries.len()
    );
    let status = agent.stop().await?;
    ensure!(status.success(), "agent exit {status}");
    println!("\n== report");
    let sum = |pred: &dyn Fn(&str) -> bool| -> Duration {
        report
            .0
            .iter()
            .filter(|(n, _)| pred(n))
            .map(|(_, d)| *d)
            .sum()
    };
    println!(
        "  classes served             3 (nvme, ssd, hdd), all volumes deleted, agent exited cleanly"
    );
    println!(
        "  create (3 volumes)         {}",
        secs(sum(&|n| n.contains("CreateVolume")))
    );
    println!(
        "  stage+publish (3)          {}",
        secs(sum(&|n| n.contains("Stage") || n.contains("Publish")))
    );
    println!(
        "  online expansion (3)       {}",
        secs(sum(&|n| n.contains("expand")))
    );
    println!(
        "  cleanup (3)                {}",
        secs(sum(&|n| n.contains("unpublish")))
    );
    println!("  whole demo in the VM       {}", secs(total.elapsed()));
    Ok(())
}

/// `VmRSS`, `VmHWM` (KiB) and `Threads` of process `pid`, from `/proc/<pid>/status`.
fn proc_status(pid: u32) -> Result<(u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?, field("Threads:")?))
}

/// CPU time process `pid` has used itself (user + system, not its children), from
/// `/proc/<pid>/stat` (in USER_HZ ticks, 100 per second on Linux).
fn cpu_time(pid: u32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |n: usize| -> u64 {
        rest.split_whitespace()
            .nth(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((field(14) + field(15)) * 10)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mean(xs: &[Duration]) -> Duration {
    xs.iter().sum::<Duration>() / u32::try_from(xs.len().max(1)).unwrap_or(1)
}

/// The median (the mean of the middle two for an even count); robust to a round that a
/// background job on the shared host slowed down.
fn median(xs: &[Duration]) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// `mean a / b / c` and `median a / b / c` of three phases over the rounds.
fn phases(rows: &[[Duration; 3]]) -> String {
    let col = |i: usize| rows.iter().map(|r| r[i]).collect::<Vec<_>>();
    let (a, b, c) = (col(0), col(1), col(2));
    format!(
        "mean {} / {} / {}, median {} / {} / {}",
        secs(mean(&a)),
        secs(mean(&b)),
        secs(mean(&c)),
        secs(median(&a)),
        secs(median(&b)),
        secs(median(&c))
    )
}

/// One command the agent ran, from its runner's debug line (JSON log), or one mount syscall.
struct Ran {
    /// `lvm lvcreate`, `mkfs.xfs`...
    command: String,
    ms: f64,
    /// The CSI call it ran for (`create`, `stage`...), or `None` for background work (the
    /// claim pass, the wiper).
    call: Option<String>,
}

/// The agent's log (JSON lines, runner at debug level): what it ran between two marks.
struct Trace {
    log: PathBuf,
}

impl Trace {
    fn mark(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// The commands that finished between the marks `from` and `to`.
    fn between(&self, from: u64, to: u64) -> Vec<Ran> {
        let Ok(bytes) = std::fs::read(&self.log) else {
            return Vec::new();
        };
        let end = usize::try_from(to).unwrap_or(usize::MAX).min(bytes.len());
        let start = usize::try_from(from).unwrap_or(0).min(end);
        String::from_utf8_lossy(&bytes[start..end])
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                ["command", "command stopped", "syscall"]
                    .contains(&v["message"].as_str().unwrap_or(""))
            })
            .map(|v| {
                let program = v["program"].as_str().unwrap_or("?");
                let args = v["args"].as_str().unwrap_or("");
                let command = if let Some(op) = v["op"].as_str() {
                    format!("{op}(2)")
                } else if program == "lvm" {
                    format!("lvm {}", args.split_whitespace().next().unwrap_or(""))
                } else {
                    program.to_owned()
                };
                Ran {
                    command,
                    ms: v["elapsed_ms"].as_f64().unwrap_or(0.0),
                    call: v["span"]["name"].as_str().map(str::to_owned),
                }
            })
            .collect()
    }
}

/// `lvm lvcreate 812ms, mkfs.xfs 290ms` (or `none`).
fn listed(ran: &[&Ran]) -> String {
    if ran.is_empty() {
        return "none".into();
    }
    ran.iter()
        .map(|r| format!("{} {:.0}ms", r.command, r.ms))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where one phase of strata's sequence went: its own commands and mount syscalls (the log lines
/// of its span), listed, and the rest (gRPC, the agent's code, waiting).
struct Spent {
    commands: Duration,
    rest: Duration,
    listing: String,
}

/// What the agent did during one whole sequence besides its calls' own commands: the CPU time
/// its process used itself (not its commands') and the background commands (claim pass, wiper)
/// that finished meanwhile (logged only when traced).
struct Beside {
    cpu: Duration,
    background: Duration,
    listing: String,
}

const PHASES: [&str; 3] = ["create", "stage", "publish"];

impl Trace {
    /// The sequence between the marks `from` and `to`, split by call (the span each command
    /// logged under); `took` is each call's duration as the client saw it.
    fn split(
        &self,
        (from, to): (u64, u64),
        took: [Duration; 3],
        cpu: Duration,
    ) -> ([Spent; 3], Beside) {
        let ran = self.between(from, to);
        let ms =
            |rs: &[&Ran]| Duration::from_secs_f64(rs.iter().map(|r| r.ms).sum::<f64>() / 1000.0);
        let spent = std::array::from_fn(|i| {
            let own: Vec<&Ran> = ran
                .iter()
                .filter(|r| r.call.as_deref() == Some(PHASES[i]))
                .collect();
            let commands = ms(&own);
            Spent {
                commands,
                rest: took[i].saturating_sub(commands),
                listing: listed(&own),
            }
        });
        let other: Vec<&Ran> = ran.iter().filter(|r| r.call.is_none()).collect();
        let beside = Beside {
            cpu,
            background: ms(&other),
            listing: listed(&other),
        };
        (spent, beside)
    }
}

async fn bench(dir: &Path, rounds: usize, concurrent: usize, traced: bool) -> Result<()> {
    // Traced: the runner's debug line for each command, as JSON, so that the rounds can say
    // where strata's time went. Else the shipped log level, in JSON as a cluster would collect it.
    let level = if traced {
        "info,csi_agent::lvm::runner=debug,csi_agent::mount=debug"
    } else {
        "info"
    };
    let agent = start(dir, &["--log-format", "json", "--log-level", level]).await?;
    println!(
        "agent log level: {level}{}",
        if traced {
            " (traced: each debug line costs the calls 3-5 ms)"
        } else {
            " (as shipped; --trace for each call's commands)"
        }
    );
    let trace = Trace {
        log: dir.join("agent.log"),
    };
    let pid = agent.child.id().context("the agent has no pid")?;
    // Under emulation the figures depend on the VM's settings (tests/nodevm/README.md: with
    // address-space randomisation, qemu keeps retranslating), so the run names them.
    println!(
        "kernel command line: {}",
        std::fs::read_to_string("/proc/cmdline")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "agent binary: {}; this client: {} build",
        strata_tests::csi_client::agent_bin().display(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    // Idle: after the first claim pass and the read-ahead, before any call.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, _, idle_threads) = proc_status(pid)?;
    println!("agent RSS idle: {} ({idle_threads} threads)", mib(idle_rss));
    let csi: Csi = agent.csi.clone();
    // The floor of any call: a gRPC round trip over the unix socket that runs nothing.
    let mut noop = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        ok(
            "NodeGetCapabilities",
            csi.node
                .clone()
                .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
                .await,
        )?;
        noop.push(t.elapsed());
    }
    println!(
        "gRPC round trip of a no-op call (NodeGetCapabilities, 20 calls): mean {} median {}",
        secs(mean(&noop)),
        secs(median(&noop))
    );
    let cap = mount_cap("xfs", &[]);
    let vg = "strata-nvme";
    // Per phase: create / stage / publish, and lvcreate / mkfs.xfs / mount.
    let (mut ours_phases, mut bare_phases) = (Vec::new(), Vec::new());
    // Per phase of strata's sequence: where the time went (from the agent's runner log).
    let mut spent_phases: Vec<[Spent; 3]> = Vec::new();
    let mut beside: Vec<Beside> = Vec::new();
    // Interleaved rounds, so that drift affects both sequences alike, and the halves take turns
    // going first: the first half of a round runs right after the previous round's removals
    // (and the kernel's and udev's work behind them), the second right after the first half.
    // Round 0 is a warm-up, run like the others and not counted: the VM's first XFS mount loads
    // the module and replays nothing yet, and each program's first run reads it from disk; the
    // half that happened to go first would pay for all of it.
    for round in 0..=rounds {
        let name = format!("bench-{round}");
        let staging = dir.join(&name).join("staging");
        let target = dir.join(&name).join("target");
        std::fs::create_dir_all(&staging)?;
        let bare_name = format!("bare-{round}");
        let mnt = dir.join(&bare_name);
        let dev = format!("/dev/{vg}/{bare_name}");
        std::fs::create_dir_all(&mnt)?;
        let strata_first = round % 2 == 0;
        let mut volume_id = None;
        // This round's phases; the sequences' totals are their sums.
        let (mut ours_round, mut bare_round) = (None, None);
        for strata in [strata_first, !strata_first] {
            // Untimed: each half starts from a settled system (udev done with the previous
            // half's device events), so neither pays for the other's leftovers.
            run("udevadm", &["settle"])?;
            if strata {
                let m0 = trace.mark();
                let c0 = cpu_time(pid);
                let t = Instant::now();
                let v = ok(
                    "create",
                    csi.controller
                        .clone()
                        .create_volume(create_request(&name, "nvme", GI, cap.clone()))
                        .await,
                )?
                .volume
                .context("no volume")?;
                let created = t.elapsed();
                ok(
                    "stage",
                    csi.node
                        .clone()
                        .node_stage_volume(stage_request(&v.volume_id, &staging, cap.clone()))
                        .await,
                )?;
                let staged = t.elapsed();
                ok(
                    "publish",
                    csi.node
                        .clone()
                        .node_publish_volume(publish_request(
                            &v.volume_id,
                            &staging,
                            &target,
                            cap.clone(),
                            false,
                        ))
                        .await,
                )?;
                let published = t.elapsed();
                let phases = [created, staged - created, published - staged];
                // Where the time went, read after the sequence (reading the log and /proc
                // between the calls would be timed too): each command is attributed to its
                // call by the span it logged under.
                let m3 = trace.mark();
                let c3 = cpu_time(pid);
                let (spent, besides) = trace.split((m0, m3), phases, c3 - c0);
                ours_round = Some((phases, spent, besides));
                volume_id = Some(v.volume_id);
            } else {
                let t = Instant::now();
                run(
                    "lvcreate",
                    &[
                        "-n", &bare_name, "-L", "1g", "-ay", "-Zy", "-Wy", "--yes", vg,
                    ],
                )?;
                let created = t.elapsed();
                run("mkfs.xfs", &["-q", &dev])?;
                let formatted = t.elapsed();
                run("mount", &[&dev, &mnt.to_string_lossy()])?;
                bare_round = Some([created, formatted - created, t.elapsed() - formatted]);
            }
        }
        let volume_id = volume_id.context("the strata half did not run")?;

        ok(
            "unpublish",
            csi.node
                .clone()
                .node_unpublish_volume(unpublish_request(&volume_id, &target))
                .await,
        )?;
        ok(
            "unstage",
            csi.node
                .clone()
                .node_unstage_volume(unstage_request(&volume_id, &staging))
                .await,
        )?;
        ok(
            "delete",
            csi.controller
                .clone()
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: volume_id.clone(),
                    ..Default::default()
                })
                .await,
        )?;
        run("umount", &[&mnt.to_string_lossy()])?;
        run("lvremove", &["-y", &format!("{vg}/{bare_name}")])?;
        // DeleteVolume answers once the LV is marked and the agent wipes it in the background:
        // untimed, wait until it is gone, so that no wipe lands on the next round's halves.
        let waited = Instant::now();
        while !run("lvs", &["--noheadings", "-o", "lv_name", vg])?
            .trim()
            .is_empty()
        {
            ensure!(
                waited.elapsed() < Duration::from_secs(300),
                "the wipe of {volume_id} did not finish in 300 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (Some((ours_p, spent, besides)), Some(bare_p)) = (ours_round, bare_round) else {
            bail!("round {round} measured nothing");
        };
        let ([c, s, p], [l, m, n]) = (ours_p, bare_p);
        let label = if round == 0 {
            "warm-up round (not counted)".to_owned()
        } else {
            format!("round {round}")
        };
        println!(
            "{label}: strata {} (create {} stage {} publish {}) bare {} (lvcreate {} mkfs.xfs {} mount {})",
            secs(c + s + p),
            secs(c),
            secs(s),
            secs(p),
            secs(l + m + n),
            secs(l),
            secs(m),
            secs(n)
        );
        if traced {
            for (phase, spent) in PHASES.iter().zip(&spent) {
                println!("  {phase}: {}", spent.listing);
            }
        }
        println!(
            "  beside: agent CPU {:.0}ms{}",
            besides.cpu.as_secs_f64() * 1000.0,
            if traced {
                format!("; background: {}", besides.listing)
            } else {
                String::new()
            }
        );
        if round > 0 {
            ours_phases.push(ours_p);
            bare_phases.push(bare_p);
            spent_phases.push(spent);
            beside.push(besides);
        }
    }
    let total = |rows: &[[Duration; 3]]| rows.iter().map(|r| r.iter().sum()).collect::<Vec<_>>();
    let (ours, bare) = (total(&ours_phases), total(&bare_phases));
    let ratio = mean(&ours).as_secs_f64() / mean(&bare).as_secs_f64().max(1e-9);
    println!(
        "\nCreateVolume+NodeStage+NodePublish: mean {} over {rounds} rounds",
        secs(mean(&ours))
    );
    println!(
        "lvcreate+mkfs.xfs+mount (same VG):  mean {}",
        secs(mean(&bare))
    );
    println!("ratio strata/bare: {ratio:.3} (goal <= 1.10)");
    println!(
        "medians: strata {} bare {}, ratio {:.3}",
        secs(median(&ours)),
        secs(median(&bare)),
        median(&ours).as_secs_f64() / median(&bare).as_secs_f64().max(1e-9)
    );
    println!("create / stage / publish:    {}", phases(&ours_phases));
    println!("lvcreate / mkfs.xfs / mount: {}", phases(&bare_phases));
    for (i, phase) in PHASES.iter().enumerate().filter(|_| traced) {
        let col =
            |f: fn(&Spent) -> Duration| spent_phases.iter().map(|r| f(&r[i])).collect::<Vec<_>>();
        let (cmds, rest) = (col(|s| s.commands), col(|s| s.rest));
        println!(
            "strata {phase:<7} = its commands mean {} (median {}) + rest (gRPC, agent code, waiting) mean {} (median {})",
            secs(mean(&cmds)),
            secs(median(&cmds)),
            secs(mean(&rest)),
            secs(median(&rest)),
        );
    }
    let cpu: Vec<Duration> = beside.iter().map(|b| b.cpu).collect();
    let background: Vec<Duration> = beside.iter().map(|b| b.background).collect();
    println!(
        "per sequence: agent CPU mean {} (median {}){}",
        secs(mean(&cpu)),
        secs(median(&cpu)),
        if traced {
            format!(
                "; background commands finished meanwhile: mean {}",
                secs(mean(&background))
            )
        } else {
            String::new()
        }
    );

    // Baseline: N bare lvcreates in sequence on the same VG, with the agent's flags.
    let t = Instant::now();
    for i in 0..concurrent {
        run(
            "lvcreate",
            &[
                "-n",
                &format!("bare-conc-{i}"),
                "-L",
                "64m",
                "-ay",
                "-Zy",
                "-Wy",
                "--yes",
                "strata-hdd",
            ],
        )?;
    }
    let bare_wall = t.elapsed();
    let names: Vec<String> = (0..concurrent)
        .map(|i| format!("strata-hdd/bare-conc-{i}"))
        .collect();
    let mut args = vec!["-y"];
    args.extend(names.iter().map(String::as_str));
    run("lvremove", &args)?;

    // N concurrent CreateVolume calls (raw block, 64 MiB each, on the HDD class), with the
    // agent's RSS sampled every 20 ms meanwhile.
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let stop = sampling.clone();
        tokio::spawn(async move {
            let mut peak = (0, 0);
            while !stop.is_cancelled() {
                if let Ok((rss, _, threads)) = proc_status(pid) {
                    peak = (peak.0.max(rss), peak.1.max(threads));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let t = Instant::now();
    let calls = (0..concurrent).map(|i| {
        let mut ctl = csi.controller.clone();
        async move {
            let t = Instant::now();
            let r = ctl
                .create_volume(create_request(
                    &format!("conc-{i}"),
                    "hdd",
                    64 << 20,
                    block_cap(),
                ))
                .await;
            (r.is_ok(), t.elapsed())
        }
    });
    let results = futures::future::join_all(calls).await;
    let wall = t.elapsed();
    let okc = results.iter().filter(|(o, _)| *o).count();
    let mut lat: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "\n{concurrent} concurrent CreateVolume: {okc} ok in {} wall ({:.1} volumes/s); latency p50 {} p99 {} max {}",
        secs(wall),
        concurrent as f64 / wall.as_secs_f64(),
        secs(p(0.5)),
        secs(p(0.99)),
        secs(p(1.0))
    );
    println!(
        "{concurrent} bare lvcreate in sequence (same VG): {} wall",
        secs(bare_wall)
    );
    println!(
        "ratio concurrent CreateVolume wall / bare sequence: {:.3}",
        wall.as_secs_f64() / bare_wall.as_secs_f64().max(1e-9)
    );
    sampling.cancel();
    let (peak_rss, peak_threads) = sampler.await?;
    let (_, hwm, _) = proc_status(pid)?;
    println!(
        "agent RSS under {concurrent} concurrent creates: peak sampled {} ({peak_threads} threads), VmHWM {}; idle {} (goal < 30 MiB)",
        mib(peak_rss),
        mib(hwm),
        mib(idle_rss)
    );
    let t = Instant::now();
    let deletes = (0..concurrent).map(|i| {
        let mut ctl = csi.controller.clone();
        async move {
            ctl.delete_volume(csi::DeleteVolumeRequest {
                volume_id: format!("conc-{i}"),
                ..Default::default()
            })
            .await
            .is_ok()
        }
    });
    let deleted = futures::future::join_all(deletes)
        .await
        .into_iter()
        .filter(|o| *o)
        .count();
    println!(
        "{concurrent} concurrent DeleteVolume: {deleted} ok in {}",
        secs(t.elapsed())
    );
    let status = agent.stop().await?;
    ensure!(status.success(), "agent exit {status}");
    ensure!(
        okc == concurrent && deleted == concurrent,
        "some concurrent calls failed"
    );
    Ok(())
}
