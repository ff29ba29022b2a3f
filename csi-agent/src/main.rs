//! The csi-agent binary: `discover` prints the node's disks and what Strata would do with them;
//! `serve` runs the node plugin (standalone or Kubernetes mode). Flags are parsed here and handed
//! to the library; nothing else lives in this file.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
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
    },
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

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let _shutdown = shutdown_token()?;
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
        Command::Serve { mode, .. } => {
            bail!("serve --mode {mode:?} is not available in this build yet")
        }
    }
}
