//! Kubernetes mode of the agent: the thin kube-facing layer over the plain-Rust node logic.
//! - [`volumes`]: the LogicalVolume reconciler (kube-runtime Controller on this node's label):
//!   finalizer, LV create/extend through the LVM layer, status, removal on deletion;
//! - [`node_storage`]: the claim pass and the NodeStorage status, published by server-side apply
//!   (field manager `csi-agent`) on every change the agent makes or sees, with a periodic resync.

pub mod adopt;
pub mod capacity_sequence;
pub mod node_storage;
pub mod volumes;

use std::sync::Arc;
use std::time::Duration;

use csi_api::runtime::Endpoint;
use kube::Client;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::csi::lvm_volumes::LvmVolumes;
use crate::csi::node::NodeService;
use crate::csi::server::{ServeError, Services, serve as serve_csi};
use crate::discovery::Roots;
use crate::fs::FsTools;
use crate::lvm::{CommandRunner, Lvm, LvmOptions, LvmRunner, RunnerConfig};
use crate::mount::SyscallMounter;
use csi_api::identity::{IdentityService, Readiness};
use csi_api::volume_lock::VolumeLocks;

/// What the Kubernetes-mode tasks share.
pub struct Context<R: LvmRunner> {
    pub client: Client,
    pub node: String,
    pub lvm: Lvm<R>,
    pub roots: Roots,
    /// Wakes the NodeStorage publisher after a change (recorded in `sequencer`: use
    /// [`Context::lv_changed`], [`Context::lv_removed`] or [`Context::everything_changed`]).
    pub changed: Arc<Notify>,
    /// Wipes LVs before their removal.
    pub wiper: crate::wiper::Wiper<R>,
    /// Failing disks, written by the NodeStorage pass, read by the node service and reconciler.
    pub health: crate::health::Board,
    /// Wakes the LogicalVolume reconciler for every volume when a disk's health changed.
    pub disks_changed: Arc<Notify>,
    /// NodeStorage `status.capacitySequence` and the tickets LogicalVolume status carries.
    pub sequencer: capacity_sequence::Sequencer,
    /// The claim mode written into the NodeStorage this agent creates for its node.
    pub new_node_claim_mode: csi_api::crd::ClaimMode,
    /// Longest time between two NodeStorage status writes, changed or not (`status.updatedAt`).
    pub heartbeat: Duration,
    /// Node gauges and claim counters, when metrics are on.
    pub metrics: Option<crate::metrics::Metrics>,
    /// Thin pools per class: made, grown and reported by the NodeStorage pass.
    pub thin: crate::claim::ThinSettings,
}

impl<R: LvmRunner> Context<R> {
    /// An LV of `vg` was made or grown (or found made): the ticket its LogicalVolume status
    /// carries. Wakes the publisher for a VG-only pass of `vg`.
    pub fn lv_changed(&self, vg: &str) -> u64 {
        let ticket = self.sequencer.ticket_for(vg);
        self.changed.notify_one();
        ticket
    }

    /// An LV of `vg` was removed: wakes the publisher for a VG-only pass of `vg`.
    pub fn lv_removed(&self, vg: &str) {
        self.sequencer.vg_changed(vg);
        self.changed.notify_one();
    }

    /// Something a VG re-read may not cover changed: wakes the publisher for a full pass.
    pub fn everything_changed(&self) {
        self.sequencer.want_full_pass();
        self.changed.notify_one();
    }
}

/// Runs the reconciler and the publisher until `shutdown`.
pub async fn run<R: LvmRunner + 'static>(
    ctx: Arc<Context<R>>,
    resync: std::time::Duration,
    shutdown: CancellationToken,
) {
    let publisher = tokio::spawn(node_storage::run(ctx.clone(), resync, shutdown.clone()));
    let adopter = tokio::spawn(adopt::run(ctx.clone(), shutdown.clone()));
    volumes::run(ctx, shutdown).await;
    publisher.await.ok();
    adopter.await.ok();
}

/// Everything Kubernetes mode is configured with.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    pub node: String,
    pub endpoint: Endpoint,
    pub roots: Roots,
    /// Safety-net period of the NodeStorage pass (changes are published at once).
    pub resync: Duration,
    pub lvm_runner: RunnerConfig,
    pub lvm_options: LvmOptions,
    /// Wipe on delete (policies per class, chunk size).
    pub wipe: crate::wiper::WipeConfig,
    /// Thin pools per class (`--thin-pool`, `--thin-overprovision-ratio`).
    pub thin: crate::claim::ThinSettings,
    /// Period of the fstrim pass over mounted flash volumes; `None` disables it.
    pub fstrim_interval: Option<Duration>,
    pub metrics: Option<crate::metrics::Metrics>,
    /// Target and staging paths must lie under it (`--kubelet-dir`).
    pub kubelet_dir: std::path::PathBuf,
    /// The claim mode of a NodeStorage the agent creates (`Manual` by default: a node claims no
    /// disk until an administrator opts it in).
    pub new_node_claim_mode: csi_api::crd::ClaimMode,
    /// Longest time between two NodeStorage status writes, changed or not.
    pub heartbeat: Duration,
}

/// Why Kubernetes mode stopped.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("no cluster access (in-cluster config or KUBECONFIG needed): {0}")]
    Client(#[from] kube::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Serves CSI Identity + Node, reconciles this node's LogicalVolumes and publishes its
/// NodeStorage until `shutdown`; in-flight CSI calls finish first. Probe is ready once LVM
/// answers (the claim pass and reconciler run in the background).
pub async fn serve(
    config: KubernetesConfig,
    shutdown: CancellationToken,
) -> Result<(), KubernetesError> {
    let client = Client::try_default().await?;
    let lvm = Lvm::new(
        CommandRunner::new(config.lvm_runner.clone()),
        config.lvm_options.clone(),
    );
    let ready = Readiness::default();
    let health = crate::health::Board::default();
    let services = Services {
        identity: IdentityService::new(false, ready.clone()),
        node: NodeService::new(
            config.node.clone(),
            Arc::new(LvmVolumes::new(lvm.clone(), Default::default()).with_health(health.clone())),
            Arc::new(SyscallMounter::default()),
            FsTools::new(Arc::new(CommandRunner::new(config.lvm_runner.clone()))),
            VolumeLocks::new(),
        )
        .with_kubelet_dir(config.kubelet_dir.clone()),
        controller: None,
    };
    let background_lvm = lvm.with_cancellation(shutdown.child_token());
    let wiper = crate::wiper::Wiper::new(
        background_lvm.clone(),
        config.wipe.clone(),
        config.metrics.clone(),
    );
    // The first capacity sequence goes beyond whatever a previous agent published.
    let previous = kube::Api::<csi_api::crd::NodeStorage>::all(client.clone())
        .get_opt(&config.node)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the previous capacity sequence; starting from the clock");
            None
        })
        .and_then(|o| o.status)
        .and_then(|s| s.capacity_sequence);
    let ctx = Arc::new(Context {
        client,
        sequencer: capacity_sequence::Sequencer::starting_after(
            previous,
            capacity_sequence::unix_millis(),
        ),
        node: config.node.clone(),
        lvm: background_lvm.clone(),
        roots: config.roots.clone(),
        changed: Arc::new(Notify::new()),
        wiper: wiper.clone(),
        health,
        disks_changed: Arc::new(Notify::new()),
        new_node_claim_mode: config.new_node_claim_mode,
        heartbeat: config.heartbeat,
        metrics: config.metrics.clone(),
        thin: config.thin.clone(),
    });
    // Wipes a previous run left unfinished (the reconciler also redoes those it still sees).
    let resumed = ctx.clone();
    tokio::spawn(async move {
        match wiper.resume().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(finished = n, "interrupted wipes finished");
                resumed.everything_changed();
            }
            Err(e) => tracing::warn!(error = %e, "cannot list interrupted wipes"),
        }
    });
    if let Some(every) = config.fstrim_interval {
        tokio::spawn(crate::fstrim::run(
            background_lvm,
            config.roots.proc.clone(),
            every,
            config.metrics.clone(),
            shutdown.clone(),
        ));
    }
    let probe_lvm = lvm.clone();
    let readiness = tokio::spawn(async move {
        loop {
            match probe_lvm.vgs().await {
                Ok(_) => {
                    ready.set_ready();
                    tracing::info!("LVM answers; ready");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "LVM not ready yet"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let background = tokio::spawn(run(ctx, config.resync, shutdown.clone()));
    let served = serve_csi(
        &config.endpoint,
        services,
        shutdown.clone().cancelled_owned(),
    )
    .await;
    shutdown.cancel();
    readiness.abort();
    let _ = background.await;
    Ok(served?)
}
