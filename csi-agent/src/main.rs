//! The csi-agent binary: `discover` prints the node's disks and what Strata would do with them;
//! `serve` runs the node plugin (standalone or Kubernetes mode). Flags are parsed here and handed
//! to the library; nothing else lives in this file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use csi_agent::csi::standalone::StandaloneConfig;
use csi_agent::lvm::{LvmOptions, RunnerConfig};
use csi_api::crd::{ClaimMode, NodeStorageSpec};
use csi_api::duration::parse_flag as parse_duration;
use csi_api::names::DeviceClass;
use csi_api::runtime::{Endpoint, LogArgs, init_logging, shutdown_token};

/// Strata node agent: turns a node's raw disks into LVM volume groups per media class and serves
/// the CSI Identity and Node services (and the Controller service in standalone mode).
#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the node's disks with slot, media, size, state and reason; changes nothing.
    Discover {
        /// Print JSON (`{"disks":[...]}`, the field names of NodeStorage status.disks).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        roots: Roots,
        /// Root of procfs (mounts and swaps are read from it).
        #[arg(long, default_value = "/proc")]
        proc_root: PathBuf,
    },
    /// Take a lost disk (missing PV) out of its class VG once no volume has extents on it, so
    /// the VG is whole again and the new disk in the slot can be claimed. Dry run by default.
    ReplaceDisk {
        /// The disk's slot, as in NodeStorage status.disks[].slot.
        #[arg(long)]
        slot: String,
        /// Run `vgreduce --removemissing` (without it, only say what would be done).
        #[arg(long)]
        apply: bool,
    },
    /// Run the CSI plugin until SIGTERM.
    Serve {
        /// `standalone`: Identity+Controller+Node from local LVM state; `kubernetes`: Identity+Node,
        /// with NodeStorage reporting and the LogicalVolume reconciler.
        #[arg(long, value_enum)]
        mode: Mode,
        /// CSI endpoint, `unix:///path/to/csi.sock`.
        #[arg(
            long,
            env = "CSI_ENDPOINT",
            default_value = "unix:///run/strata/csi.sock"
        )]
        csi_endpoint: Endpoint,
        /// This node's name (Kubernetes: from the downward API, `spec.nodeName`).
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        #[command(flatten)]
        roots: Roots,
        /// Root of procfs (mounts and swaps are read from it).
        #[arg(long, default_value = "/proc")]
        proc_root: PathBuf,
        #[command(flatten)]
        standalone: StandaloneArgs,
        #[command(flatten)]
        kubernetes: KubernetesArgs,
        #[command(flatten)]
        node_ops: Box<NodeOpsArgs>,
    },
}

/// Kubernetes mode's safe defaults and liveness (standalone mode ignores them).
#[derive(clap::Args, Debug)]
struct KubernetesArgs {
    /// `claimMode` of the NodeStorage the agent creates for a node that has none: `manual` (the
    /// default) claims nothing until an administrator opts the node in (`claimMode: auto`, or
    /// `include` slots); `auto` claims every eligible disk at once. An existing NodeStorage is
    /// never changed.
    #[arg(long, value_enum, default_value = "manual")]
    new_node_claim_mode: ClaimModeArg,
    /// Longest time between two NodeStorage status writes even without changes
    /// (`status.updatedAt` is the agent's heartbeat): `30s`, `1m`; at least 1 s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
}

/// Wipe on delete, fstrim and metrics (both modes).
#[derive(clap::Args, Debug)]
struct NodeOpsArgs {
    /// Wipe policy of a class's deleted volumes, e.g. `ssd=zero` (repeatable; `discard`, `zero`
    /// or `none`). Defaults: nvme and ssd `discard` (zeroing where the disks do not read zeroes
    /// after a discard), hdd `zero`. A StorageClass's `strata.io/wipe` overrides it.
    #[arg(long = "wipe-policy", value_name = "CLASS=POLICY", value_parser = parse_wipe_policy)]
    wipe_policy: Vec<(DeviceClass, csi_agent::wipe_policy::Policy)>,
    /// The host's procfs as the agent sees it: `<root>/1/mountinfo` is the host's mount table
    /// and `<root>/<pid>/fd` its open files, read before any volume is wiped or removed. `/proc`
    /// with hostPID, else a read-only host-path mount of the host's `/proc` (e.g. `/host/proc`).
    #[arg(long, default_value = "/proc")]
    host_proc_root: std::path::PathBuf,
    /// Time between fstrim passes over mounted nvme/ssd volumes: `7d`, `12h`, `30m`, `90s`;
    /// `0` disables them.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    fstrim_interval: Duration,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, default_value = "0.0.0.0:9809")]
    metrics_addr: std::net::SocketAddr,
    /// The only directory under which NodeStage/NodePublish paths are accepted. Default:
    /// `/var/lib/kubelet` in Kubernetes mode; `/` (any absolute path) in standalone mode, whose
    /// orchestrator keeps its own data directory — set it there (e.g. Nomad's
    /// `<data_dir>/client/csi`).
    #[arg(long, value_name = "DIR")]
    kubelet_dir: Option<PathBuf>,
    /// Gives a class a thin pool of PERCENT % of its VG when the class VG has none, e.g.
    /// `nvme=50` (repeatable; 1-100). A class without it serves no thin volumes.
    #[arg(long = "thin-pool", value_name = "CLASS=PERCENT", value_parser = parse_thin_pool)]
    thin_pool: Vec<(DeviceClass, u8)>,
    /// Virtual bytes a class's thin volumes may be promised per byte of its pool, e.g.
    /// `nvme=3` (repeatable; default 1, no overprovisioning).
    #[arg(
        long = "thin-overprovision-ratio",
        value_name = "CLASS=RATIO",
        value_parser = parse_thin_ratio
    )]
    thin_overprovision_ratio: Vec<(DeviceClass, f64)>,
}

impl NodeOpsArgs {
    fn wipe(&self, sysfs: &std::path::Path) -> csi_agent::wiper::WipeConfig {
        csi_agent::wiper::WipeConfig {
            policies: csi_agent::wipe_policy::ClassPolicies(
                self.wipe_policy.iter().copied().collect(),
            ),
            sysfs: sysfs.to_owned(),
            host_proc: self.host_proc_root.clone(),
            ..Default::default()
        }
    }

    fn thin(&self) -> anyhow::Result<csi_agent::claim::ThinSettings> {
        csi_agent::claim::ThinSettings::new(&self.thin_pool, &self.thin_overprovision_ratio)
            .map_err(anyhow::Error::msg)
    }

    fn fstrim(&self) -> Option<Duration> {
        (!self.fstrim_interval.is_zero()).then_some(self.fstrim_interval)
    }

    /// The registry, served on `--metrics-addr` until `shutdown`.
    fn metrics(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> csi_agent::metrics::Metrics {
        let metrics = csi_agent::metrics::Metrics::new();
        let (server, addr, stop) = (metrics.clone(), self.metrics_addr, shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = server.serve(addr, stop).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
        metrics
    }
}

fn parse_thin_pool(s: &str) -> Result<(DeviceClass, u8), String> {
    let (class, percent) = s.split_once('=').ok_or("expected CLASS=PERCENT")?;
    let class = class.parse().map_err(|e| format!("{e}"))?;
    let percent: u8 = percent
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{percent:?} is not a percentage (1-100)"))?;
    if !(1..=100).contains(&percent) {
        return Err(format!("{percent} is not a percentage (1-100)"));
    }
    Ok((class, percent))
}

fn parse_thin_ratio(s: &str) -> Result<(DeviceClass, f64), String> {
    let (class, ratio) = s.split_once('=').ok_or("expected CLASS=RATIO")?;
    let class = class.parse().map_err(|e| format!("{e}"))?;
    let ratio: f64 = ratio
        .parse()
        .map_err(|_| format!("{ratio:?} is not a number"))?;
    if !ratio.is_finite() || ratio < 0.1 {
        return Err(format!("{ratio} is not a ratio of at least 0.1"));
    }
    Ok((class, ratio))
}

fn parse_wipe_policy(s: &str) -> Result<(DeviceClass, csi_agent::wipe_policy::Policy), String> {
    let (class, policy) = s.split_once('=').ok_or("expected CLASS=POLICY")?;
    let class = class.parse().map_err(|e| format!("{e}"))?;
    Ok((class, policy.parse().map_err(|e| format!("{e}"))?))
}

/// Standalone mode's claim policy and rescans (Kubernetes mode reads the policy from NodeStorage).
#[derive(clap::Args, Debug)]
struct StandaloneArgs {
    /// `auto` claims every eligible disk; `manual` only slots matched by `--include`.
    #[arg(long, value_enum, default_value = "auto")]
    claim_mode: ClaimModeArg,
    /// Slot glob that may be claimed (repeatable; empty = all in auto mode).
    #[arg(long = "include", value_name = "GLOB")]
    include: Vec<String>,
    /// Slot glob never claimed (repeatable; wins over --include).
    #[arg(long = "exclude", value_name = "GLOB")]
    exclude: Vec<String>,
    /// Bytes of a class kept free of volumes, e.g. `nvme=10Gi` (repeatable).
    #[arg(long = "reserve", value_name = "CLASS=QUANTITY", value_parser = parse_reserve)]
    reserve: Vec<(DeviceClass, u64)>,
    /// Media class forced for a slot, e.g. `pci-0000:00:05.0-ata-1=hdd` (repeatable).
    #[arg(long = "media-override", value_name = "SLOT=CLASS", value_parser = parse_override)]
    media_override: Vec<(String, DeviceClass)>,
    /// Seconds between rescans (new disks are claimed on the next one): a discovery and claim
    /// pass when the disks changed in sysfs or the last pass is a minute old, else a health check.
    #[arg(long, default_value_t = 10)]
    rescan_seconds: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClaimModeArg {
    Auto,
    Manual,
}

impl From<ClaimModeArg> for ClaimMode {
    fn from(mode: ClaimModeArg) -> ClaimMode {
        match mode {
            ClaimModeArg::Auto => ClaimMode::Auto,
            ClaimModeArg::Manual => ClaimMode::Manual,
        }
    }
}

fn parse_reserve(s: &str) -> Result<(DeviceClass, u64), String> {
    let (class, qty) = s.split_once('=').ok_or("expected CLASS=QUANTITY")?;
    let class = class.parse().map_err(|e| format!("{e}"))?;
    let bytes = csi_api::capacity::quantity_bytes(qty).map_err(|e| e.to_string())?;
    Ok((class, bytes))
}

fn parse_override(s: &str) -> Result<(String, DeviceClass), String> {
    let (slot, class) = s.split_once('=').ok_or("expected SLOT=CLASS")?;
    Ok((slot.to_owned(), class.parse().map_err(|e| format!("{e}"))?))
}

impl StandaloneArgs {
    fn spec(&self) -> NodeStorageSpec {
        NodeStorageSpec {
            claim_mode: self.claim_mode.into(),
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            reserved_bytes: self.reserve.iter().copied().collect(),
            media_overrides: self.media_override.iter().cloned().collect(),
        }
    }
}

/// Where the agent reads the kernel's view of devices (tests point these at fixtures).
#[derive(clap::Args, Debug)]
struct Roots {
    /// Root of sysfs.
    #[arg(long, default_value = "/sys")]
    sysfs_root: PathBuf,
    /// Root of the device nodes.
    #[arg(long, default_value = "/dev")]
    dev_root: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Standalone,
    Kubernetes,
}

/// Worker threads of the agent's runtime: its work is waiting for lvm2, mkfs and the API server,
/// so a few threads serve any node; one per CPU (tokio's default) costs memory on big nodes.
const WORKER_THREADS: usize = 2;
/// Threads for blocking file system calls (`tokio::fs`, statvfs); tokio's default is 512.
const MAX_BLOCKING_THREADS: usize = 16;

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let shutdown = shutdown_token()?;
    match cli.command {
        Command::Discover {
            json,
            roots,
            proc_root,
        } => {
            let roots = csi_agent::discovery::Roots {
                sysfs: roots.sysfs_root,
                dev: roots.dev_root,
                proc: proc_root,
            };
            let spec = csi_api::crd::NodeStorageSpec::default();
            let (out, notes) = csi_agent::claim::discover(&roots, json, &spec).await?;
            print!("{out}");
            if json {
                for note in notes {
                    eprintln!("note: {note}");
                }
            }
            Ok(())
        }
        Command::ReplaceDisk { slot, apply } => {
            let lvm = csi_agent::lvm::Lvm::system(RunnerConfig::default(), LvmOptions::default());
            let out = csi_agent::health::replace::replace_disk(&lvm, &slot, apply).await?;
            print!("{out}");
            Ok(())
        }
        Command::Serve {
            mode: Mode::Kubernetes,
            csi_endpoint,
            node_name,
            roots,
            proc_root,
            standalone: _,
            kubernetes,
            node_ops,
        } => {
            let config = csi_agent::kubernetes::KubernetesConfig {
                kubelet_dir: node_ops.kubelet_dir.clone().unwrap_or_else(|| {
                    PathBuf::from(csi_agent::csi::validate::DEFAULT_KUBELET_DIR)
                }),
                new_node_claim_mode: kubernetes.new_node_claim_mode.into(),
                heartbeat: kubernetes.heartbeat_interval.max(Duration::from_secs(1)),
                wipe: node_ops.wipe(&roots.sysfs_root),
                thin: node_ops.thin()?,
                fstrim_interval: node_ops.fstrim(),
                metrics: Some(node_ops.metrics(&shutdown)),
                node: node_name,
                endpoint: csi_endpoint,
                roots: csi_agent::discovery::Roots {
                    sysfs: roots.sysfs_root,
                    dev: roots.dev_root,
                    proc: proc_root,
                },
                resync: Duration::from_secs(60),
                lvm_runner: RunnerConfig::default(),
                lvm_options: LvmOptions::default(),
            };
            csi_agent::kubernetes::serve(config, shutdown).await?;
            Ok(())
        }
        Command::Serve {
            mode: Mode::Standalone,
            csi_endpoint,
            node_name,
            roots,
            proc_root,
            standalone,
            kubernetes: _,
            node_ops,
        } => {
            let config = StandaloneConfig {
                kubelet_dir: node_ops
                    .kubelet_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/")),
                wipe: node_ops.wipe(&roots.sysfs_root),
                fstrim_interval: node_ops.fstrim(),
                metrics: Some(node_ops.metrics(&shutdown)),
                node: node_name,
                endpoint: csi_endpoint,
                roots: csi_agent::discovery::Roots {
                    sysfs: roots.sysfs_root,
                    dev: roots.dev_root,
                    proc: proc_root,
                },
                spec: standalone.spec(),
                thin: node_ops.thin()?,
                rescan: Duration::from_secs(standalone.rescan_seconds.max(1)),
                lvm_runner: RunnerConfig::default(),
                lvm_options: LvmOptions::default(),
            };
            csi_agent::csi::standalone::run(config, shutdown).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_flags_parse() {
        assert_eq!(parse_thin_pool("nvme=50").unwrap(), (DeviceClass::Nvme, 50));
        assert_eq!(parse_thin_pool("ssd=25%").unwrap(), (DeviceClass::Ssd, 25));
        assert!(parse_thin_pool("ssd=0").is_err());
        assert!(parse_thin_pool("ssd=101").is_err());
        assert!(parse_thin_pool("tape=5").is_err());
        assert_eq!(
            parse_thin_ratio("hdd=2.5").unwrap(),
            (DeviceClass::Hdd, 2.5)
        );
        assert!(parse_thin_ratio("hdd=0").is_err());
        assert!(parse_thin_ratio("hdd=inf").is_err());
        assert!(parse_thin_ratio("hdd").is_err());
    }

    #[test]
    fn wipe_policies_parse() {
        let (class, policy) = parse_wipe_policy("hdd=none").unwrap();
        assert_eq!(
            (class, policy),
            (DeviceClass::Hdd, csi_agent::wipe_policy::Policy::None)
        );
        assert!(parse_wipe_policy("hdd=shred").is_err());
        assert!(parse_wipe_policy("tape=zero").is_err());
    }

    fn kubernetes_args(extra: &[&str]) -> KubernetesArgs {
        let args = [
            "csi-agent",
            "serve",
            "--mode",
            "kubernetes",
            "--node-name",
            "n",
        ];
        let cli = Cli::try_parse_from(args.iter().chain(extra)).unwrap();
        match cli.command {
            Command::Serve { kubernetes, .. } => kubernetes,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_node_is_not_claimed_unless_asked_and_heartbeats_every_30s() {
        let k = kubernetes_args(&[]);
        assert_eq!(k.new_node_claim_mode, ClaimModeArg::Manual);
        assert_eq!(ClaimMode::from(k.new_node_claim_mode), ClaimMode::Manual);
        assert_eq!(k.heartbeat_interval, Duration::from_secs(30));
        let k = kubernetes_args(&[
            "--new-node-claim-mode",
            "auto",
            "--heartbeat-interval",
            "1m",
        ]);
        assert_eq!(ClaimMode::from(k.new_node_claim_mode), ClaimMode::Auto);
        assert_eq!(k.heartbeat_interval, Duration::from_secs(60));
        let args = [
            "csi-agent",
            "serve",
            "--mode",
            "kubernetes",
            "--node-name",
            "n",
        ];
        let bad = ["--new-node-claim-mode", "all"];
        assert!(Cli::try_parse_from(args.iter().chain(&bad)).is_err());
    }
}
