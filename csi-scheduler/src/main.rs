//! The csi-scheduler binary: a kube-scheduler extender that filters and scores nodes by free
//! capacity per device class for pods with Strata volumes. Flags are parsed here; the cluster is
//! reached the standard way (in-cluster config, else `KUBECONFIG`). The log filter is
//! `--log-level`, else `STRATA_LOG`, else `RUST_LOG`, else `info`.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
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

/// The log filter: `--log-level` or `STRATA_LOG` when either is given (`explicit`), else
/// `RUST_LOG` when set and not empty, else the flag's default (`info`).
fn log_filter(explicit: bool, flag: &str, rust_log: Option<&str>) -> String {
    match rust_log {
        Some(filter) if !explicit && !filter.trim().is_empty() => filter.to_owned(),
        _ => flag.to_owned(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let explicit = matches!(
        matches.value_source("log_level"),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    let rust_log = std::env::var("RUST_LOG").ok();
    cli.log.log_level = log_filter(explicit, &cli.log.log_level, rust_log.as_deref());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_filter_is_the_flag_or_strata_log_then_rust_log_then_info() {
        // Neither `--log-level` nor STRATA_LOG: RUST_LOG decides.
        assert_eq!(log_filter(false, "info", Some("warn")), "warn");
        assert_eq!(log_filter(false, "info", None), "info");
        assert_eq!(log_filter(false, "info", Some(" ")), "info");
        // Either given: it wins over RUST_LOG.
        assert_eq!(log_filter(true, "debug", Some("warn")), "debug");
        assert_eq!(log_filter(true, "error", None), "error");
    }

    #[test]
    fn the_flag_and_strata_log_count_as_given_and_the_default_does_not() {
        let source = |args: &[&str]| {
            Cli::command()
                .try_get_matches_from(args)
                .expect("valid arguments")
                .value_source("log_level")
        };
        assert_eq!(
            source(&["csi-scheduler", "--log-level", "warn"]),
            Some(ValueSource::CommandLine)
        );
        // STRATA_LOG is not set in the test environment (nextest runs each test in a process,
        // and nothing sets it), so the default is what remains.
        if std::env::var_os("STRATA_LOG").is_none() {
            assert_eq!(source(&["csi-scheduler"]), Some(ValueSource::DefaultValue));
        }
    }
}
