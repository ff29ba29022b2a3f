//! The csi-controller binary: the CSI Controller service behind the kubernetes-csi sidecars,
//! turning CreateVolume/DeleteVolume/Expand into LogicalVolume resources, plus leader-elected
//! background work (PVC binding, orphans, node loss, recovery policy). Flags are parsed here.

use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use csi_api::csi::controller_server::ControllerServer;
use csi_api::csi::identity_server::IdentityServer;
use csi_api::duration::parse_flag as parse_duration;
use csi_api::identity::IdentityService;
use csi_api::names::Placement;
use csi_api::runtime::{Endpoint, LogArgs, bind_unix, init_logging, shutdown_token};
use csi_controller::cluster::KubeCluster;
use csi_controller::drift::Recovery;
use csi_controller::grpc::Grpc;
use csi_controller::housekeeping::{NodeLossPolicy, OrphanPolicy, Policies};
use csi_controller::metrics::Metrics;
use csi_controller::service::{ControllerService, Settings};
use tracing::info;

/// Strata controller: the CSI Controller service for external-provisioner and external-resizer.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    /// CSI endpoint, `unix:///path/to/csi.sock`.
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/strata/controller.sock"
    )]
    csi_endpoint: Endpoint,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, default_value = "0.0.0.0:9808")]
    metrics_addr: String,
    /// Placement for volumes with no selected node (Immediate binding), unless the class says.
    #[arg(long, value_enum, default_value_t = Placement::Binpack)]
    default_placement: Placement,
    /// What to do with a LogicalVolume whose PV is gone past the grace period.
    #[arg(long, value_enum, default_value_t = OrphanPolicy::Report)]
    orphan_policy: OrphanPolicy,
    /// How long a LogicalVolume may lack a PV before it is an orphan.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    orphan_grace: Duration,
    /// What to do with the volumes of a deleted Node.
    #[arg(long, value_enum, default_value_t = NodeLossPolicy::Report)]
    node_loss_policy: NodeLossPolicy,
    /// Recovery when a volume's disk fails, for classes without `strata.io/on-disk-failure`:
    /// `report` (Events only) or `drift` (delete the claim and the StatefulSet pod).
    #[arg(long, value_enum, default_value_t = Recovery::Report)]
    on_disk_failure: Recovery,
    /// The same when a volume's node is NotReady past `--node-failure-grace`, for classes
    /// without `strata.io/on-node-failure`.
    #[arg(long, value_enum, default_value_t = Recovery::Report)]
    on_node_failure: Recovery,
    /// How long a node must stay NotReady before its volumes count as failed (a node Ready
    /// again before that moves nothing).
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    node_failure_grace: Duration,
    /// Drifts in flight in the whole cluster, at most (and always one per StatefulSet).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    max_drifts_in_flight: u64,
    /// A drift whose StatefulSet has not bound a new claim by then stops counting against the
    /// brakes (Warning Event `DriftTimedOut`).
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    drift_timeout: Duration,
    /// Namespace of the Lease that guards background work.
    #[arg(long, env = "POD_NAMESPACE", default_value = "strata-system")]
    lease_namespace: String,
    /// This replica's identity in the Lease (defaults to the host name, the pod name in a pod).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// A node whose NodeStorage `status.updatedAt` is older than this is stale: admission refuses
    /// it, GetCapacity reports nothing for it, and housekeeping reports it (the agent refreshes
    /// `updatedAt` at least every minute). `0s` disables the check.
    #[arg(long, value_parser = parse_duration, default_value = "3m")]
    stale_after: Duration,
    /// How often the leader checks bindings, orphans and lost nodes.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    housekeeping_period: Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let shutdown = shutdown_token()?;
    let client = kube::Client::try_default()
        .await
        .context("no cluster access: in-cluster config or KUBECONFIG needed")?;
    let metrics = Metrics::new();
    let settings = Settings {
        default_placement: cli.default_placement,
        max_wait: Duration::from_secs(300),
        stale_after: (!cli.stale_after.is_zero()).then_some(cli.stale_after),
    };
    let settings_stale_after = settings.stale_after;
    let cluster = KubeCluster::start(client.clone(), shutdown.clone())
        .await
        .context(
            "starting the watches of LogicalVolumes, NodeStorages, PVCs, StorageClasses and Pods",
        )?;
    metrics.count_volumes_from(cluster.volume_store());
    let service = Arc::new(ControllerService::new(Arc::new(cluster), settings));
    let grpc = Grpc::new(service, metrics.clone());

    let identity = match cli.identity {
        Some(id) => id,
        None => host_name()?,
    };
    let election = csi_controller::lease::elect(
        client.clone(),
        &cli.lease_namespace,
        csi_controller::lease::LEASE_NAME,
        &identity,
    )
    .await?;
    let fence = csi_controller::lease::Fence::new(
        client.clone(),
        &cli.lease_namespace,
        csi_controller::lease::LEASE_NAME,
        &identity,
    );
    let policies = Policies {
        orphan: cli.orphan_policy,
        orphan_grace: cli.orphan_grace,
        node_loss: cli.node_loss_policy,
    };
    let background = tokio::spawn(csi_controller::background::run(
        client.clone(),
        election.leading,
        fence,
        csi_controller::background::Settings {
            policies,
            period: cli.housekeeping_period,
            stale_after: settings_stale_after,
            recovery: csi_controller::drift::Settings {
                disk_default: cli.on_disk_failure,
                node_default: cli.on_node_failure,
                node_grace: cli.node_failure_grace,
                max_in_flight: cli.max_drifts_in_flight as usize,
            },
            drift_timeout: cli.drift_timeout,
        },
        metrics.clone(),
        shutdown.clone(),
    ));

    let metrics_addr: SocketAddr = cli.metrics_addr.parse().context("--metrics-addr")?;
    let metrics_task = tokio::spawn(metrics.serve(metrics_addr, shutdown.clone()));

    let Endpoint::Unix(path) = &cli.csi_endpoint else {
        bail!(
            "--csi-endpoint must be unix:///path: the sidecars share a socket with the controller"
        )
    };
    let incoming = bind_unix(path).with_context(|| format!("binding {}", path.display()))?;
    info!(endpoint = %path.display(), "serving CSI Identity and Controller");
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(
            true,
            grpc.probe(),
        )))
        .add_service(ControllerServer::new(grpc))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .context("gRPC server")?;
    metrics_task.abort();
    background.await.ok();
    // The background loop dropped the last receiver: the lease manager releases the lease.
    match tokio::time::timeout(Duration::from_secs(5), election.task).await {
        Ok(Ok(Ok(_))) => info!("lease released"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "lease not released; it expires on its own"),
        _ => tracing::warn!("lease release did not finish; it expires on its own"),
    }
    info!("stopped");
    Ok(())
}

fn host_name() -> Result<String> {
    let name =
        std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name")?;
    Ok(name.trim().to_owned())
}
