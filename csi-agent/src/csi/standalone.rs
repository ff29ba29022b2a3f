//! Standalone mode: one process serves Identity + Controller + Node on one socket, with no
//! Kubernetes. At start and then every `rescan` interval it discovers the node's disks and claims
//! the eligible ones into the class VGs (policy from flags, `auto` by default), so a fresh node
//! with raw disks serves volumes with no setup. Probe turns ready after the first successful pass.
//! DeleteVolume marks the LV (unless it is in use) and returns; one background worker wipes and
//! removes it (see `crate::wiper`); wipes a previous run left marked are
//! finished at start, and mounted flash volumes get a periodic fstrim.

use std::sync::Arc;
use std::time::Duration;

use csi_api::crd::NodeStorageSpec;
use csi_api::runtime::Endpoint;
use tokio_util::sync::CancellationToken;

use super::controller::ControllerService;
use super::lvm_volumes::LvmVolumes;
use super::node::NodeService;
use super::server::{ServeError, Services, serve};
use crate::claim::{self, ClaimError, InvalidPattern, Policy};
use crate::discovery::{BlkidProbe, Roots, Usage};
use crate::fs::FsTools;
use crate::lvm::{CommandRunner, Lvm, LvmOptions, LvmRunner, RunnerConfig};
use crate::mount::SyscallMounter;
use csi_api::identity::{IdentityService, Readiness};
use csi_api::volume_lock::VolumeLocks;

/// Everything standalone mode is configured with.
#[derive(Clone, Debug)]
pub struct StandaloneConfig {
    pub node: String,
    pub endpoint: Endpoint,
    pub roots: Roots,
    /// The claim policy (mode, slot globs, reserve per class, media overrides).
    pub spec: NodeStorageSpec,
    /// Time between discovery passes.
    pub rescan: Duration,
    pub lvm_runner: RunnerConfig,
    pub lvm_options: LvmOptions,
    /// Wipe on delete (policies per class, chunk size).
    pub wipe: crate::wiper::WipeConfig,
    /// Period of the fstrim pass over mounted flash volumes; `None` disables it.
    pub fstrim_interval: Option<Duration>,
    pub metrics: Option<crate::metrics::Metrics>,
    /// Target and staging paths must lie under it (`--kubelet-dir`).
    pub kubelet_dir: std::path::PathBuf,
}

/// Why standalone mode stopped.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Policy(#[from] InvalidPattern),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs standalone mode until `shutdown` is cancelled; in-flight calls finish first.
pub async fn run(
    config: StandaloneConfig,
    shutdown: CancellationToken,
) -> Result<(), StandaloneError> {
    let policy = Policy::new(&config.spec)?;
    let lvm = Lvm::new(
        CommandRunner::new(config.lvm_runner.clone()),
        config.lvm_options.clone(),
    );
    // Calls in flight at shutdown finish: only the rescans' LVM commands stop with the token.
    let rescan_lvm = lvm.with_cancellation(shutdown.child_token());
    // One wiper for the process: DeleteVolume marks and queues, the worker wipes one LV at a
    // time in the background (stopping between chunks at shutdown; the progress stays with the
    // LV and the next start resumes from it), and the resume queues what a previous run left.
    let wiper = crate::wiper::Wiper::new(
        rescan_lvm.clone(),
        config.wipe.clone(),
        config.metrics.clone(),
    );
    wiper.spawn_worker(shutdown.child_token());
    let volumes = Arc::new(
        LvmVolumes::new(lvm.clone(), config.spec.reserved_bytes.clone())
            .with_wiper(wiper.clone())
            .with_health(crate::health::Board::default()),
    );
    tokio::spawn(async move {
        match wiper.resume_in_background().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(queued = n, "interrupted wipes queued"),
            Err(e) => tracing::warn!(error = %e, "cannot list interrupted wipes"),
        }
    });
    if let Some(every) = config.fstrim_interval {
        tokio::spawn(crate::fstrim::run(
            rescan_lvm.clone(),
            config.roots.proc.clone(),
            every,
            config.metrics.clone(),
            shutdown.clone(),
        ));
    }
    let locks = VolumeLocks::new();
    let ready = Readiness::default();
    let warm = Arc::clone(&volumes);
    let services = Services {
        identity: IdentityService::new(true, ready.clone()),
        node: NodeService::new(
            config.node.clone(),
            volumes.clone(),
            Arc::new(SyscallMounter::default()),
            FsTools::new(Arc::new(CommandRunner::new(config.lvm_runner.clone()))),
            locks.clone(),
        )
        .with_kubelet_dir(config.kubelet_dir.clone()),
        controller: Some(ControllerService::new(config.node.clone(), volumes, locks)),
    };
    let rescans = tokio::spawn(rescan_loop(
        config.roots.clone(),
        policy,
        rescan_lvm,
        ready,
        warm,
        config.rescan,
        shutdown.clone(),
    ));
    let served = serve(
        &config.endpoint,
        services,
        shutdown.clone().cancelled_owned(),
    )
    .await;
    shutdown.cancel();
    let _ = rescans.await;
    Ok(served?)
}

/// One discovery + claim pass, then the disks' health check (failing disks go on `health`, so
/// the volumes on them report abnormal); returns how many disks were claimed.
pub async fn claim_pass<R: LvmRunner>(
    roots: &Roots,
    policy: &Policy,
    lvm: &Lvm<R>,
    health: &crate::health::Board,
) -> Result<usize, ClaimError> {
    let usage = Usage::read(&roots.proc).map_err(ClaimError::Usage)?;
    let probe = BlkidProbe::default();
    let (mut survey, outcomes) = claim::reconcile(roots, &usage, &probe, lvm, policy).await?;
    let before = health.failing();
    crate::health::check_disks(&roots.sysfs, &roots.dev, health, &mut survey.plan.disks).await;
    for (slot, evidence) in health.failing() {
        if before.get(&slot) != Some(&evidence) {
            tracing::warn!(%slot, %evidence, "disk is failing");
        }
    }
    let mut claimed = 0;
    for outcome in &outcomes {
        match &outcome.result {
            Ok(()) => {
                claimed += 1;
                tracing::info!(slot = %outcome.slot, action = ?outcome.kind, "disk claimed");
            }
            Err(why) => {
                tracing::warn!(slot = %outcome.slot, action = ?outcome.kind, error = %why, "claim failed");
            }
        }
    }
    for class in &survey.classes {
        tracing::debug!(
            class = %class.name,
            total = class.total_bytes,
            allocatable = class.allocatable_bytes,
            "device class"
        );
    }
    Ok(claimed)
}

async fn rescan_loop<R: LvmRunner>(
    roots: Roots,
    policy: Policy,
    lvm: Lvm<R>,
    ready: Readiness,
    volumes: Arc<LvmVolumes<R>>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let health = volumes.health().clone();
    loop {
        match claim_pass(&roots, &policy, &lvm, &health).await {
            Ok(claimed) => {
                if !ready.is_ready() {
                    // Read ahead what CreateVolume needs, now that the class VGs exist.
                    if let Err(e) = volumes.warm_up().await {
                        tracing::warn!(error = %e, "read-ahead for CreateVolume failed");
                    }
                    ready.set_ready();
                    tracing::info!(claimed, "discovery and LVM ready");
                }
            }
            Err(e) => tracing::warn!(error = %e, "discovery pass failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
