//! The csi-scheduler binary: a kube-scheduler extender that filters and scores nodes by free
//! capacity per device class for pods with Strata volumes. Flags are parsed here.

use anyhow::{Result, bail};
use clap::Parser;
use csi_api::names::Placement;
use csi_api::runtime::{LogArgs, init_logging, shutdown_token};

/// Strata scheduler extender: `/filter`, `/prioritize`, `/healthz`, `/metrics`.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8099")]
    listen: String,
    /// Placement for StorageClasses without `strata.io/placement`.
    #[arg(long, value_enum, default_value_t = Placement::Binpack)]
    default_placement: Placement,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let _shutdown = shutdown_token()?;
    bail!("the scheduler extender is not available in this build yet ({cli:?})")
}
