//! The csi-scheduler binary: a kube-scheduler extender that filters and scores nodes by free
//! capacity per device class for pods with Strata volumes. Flags are parsed here; the cluster is
//! reached the standard way (in-cluster config, else `KUBECONFIG`). The log filter is
//! `--log-level`, else `STRATA_LOG`, else `RUST_LOG`, else `info` (`csi_api::runtime`).

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use csi_api::names::Placement;
use csi_api::runtime::{LogArgs, init_logging, shutdown_token};
use csi_scheduler::http::{
    AppState, DEFAULT_MAX_CONNECTIONS, NAMES_ONLY_MAX_BODY_BYTES, ViewHandle, limits, router,
};
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
    /// Largest request body in bytes. The default fits names-only requests
    /// (`nodeCacheCapable: true`); with full Node objects set 67108864 (64 MiB) and raise the
    /// pod's memory limit (docs/install.md).
    #[arg(long, default_value_t = NAMES_ONLY_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Most connections open at once; more are closed as they arrive.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
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
    let limits = limits(cli.max_body_bytes, cli.max_connections);
    csi_api::http::serve(listener, router(state), limits, shutdown.clone())
        .await
        .context("serving HTTP")?;
    shutdown.cancel();
    cache.await.context("cache task")?;
    Ok(())
}
