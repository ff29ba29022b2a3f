//! The csi-scheduler binary: a kube-scheduler extender that filters and scores nodes by free
//! capacity per device class for pods with Strata volumes. Flags are parsed here; the cluster is
//! reached the standard way (in-cluster config, else `KUBECONFIG`).

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use csi_api::names::Placement;
use csi_api::runtime::{LogArgs, init_logging, shutdown_token};
use csi_scheduler::http::{AppState, ViewHandle, router};
use csi_scheduler::metrics::Metrics;

/// Strata scheduler extender: `/filter`, `/prioritize`, `/healthz`, `/readyz`, `/metrics`.
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
    let shutdown = shutdown_token()?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (in-cluster config or KUBECONFIG)")?;
    let state = AppState {
        view: ViewHandle::default(),
        metrics: Arc::new(Metrics::new()),
    };
    let cache = tokio::spawn(csi_scheduler::cache::run(
        client,
        state.view.clone(),
        state.metrics.clone(),
        cli.default_placement,
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    tracing::info!(listen = %cli.listen, default_placement = %cli.default_placement, "serving");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("serving HTTP")?;
    shutdown.cancel();
    cache.await.context("cache task")?;
    Ok(())
}
