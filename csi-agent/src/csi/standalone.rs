//! Standalone mode: one process serves Identity + Controller + Node on one socket, with no
//! Kubernetes. At start and then every `rescan` interval it discovers the node's disks and claims
//! the eligible ones into the class VGs (policy from flags, `auto` by default), so a fresh node
//! with raw disks serves volumes with no setup. Probe turns ready after the first successful pass.
//! A rescan that finds the disks as the last full pass left them in sysfs (names, sizes,
//! partitions), less than a minute after it, only checks their health: discovery and claim
//! (a `blkid` per disk, `pvs`, `vgs`) would compete with the CSI calls for nothing.
//! DeleteVolume marks the LV (unless it is in use) and returns; one background worker wipes and
//! removes it (see `crate::wiper`); wipes a previous run left marked are
//! finished at start, and mounted flash volumes get a periodic fstrim. Every full pass also
//! tends the thin pools of the classes given `--thin-pool` (made when missing, grown at the
//! threshold: `claim::thin_pool::tend`, as the Kubernetes mode's capacity pass does).

use std::sync::Arc;
use std::time::Duration;

use csi_api::crd::{DiskStatus, NodeStorageSpec};
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
    /// Thin pools per class (`--thin-pool`, `--thin-overprovision-ratio`).
    pub thin: crate::claim::ThinSettings,
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
            .with_thin(config.thin.clone())
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
        config.thin.clone(),
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

/// One discovery + claim pass, then the thin pools of the classes (`thin`: made, grown, see
/// [`tend_pools`]), then the disks' health check (failing disks go on `health`, so
/// the volumes on them report abnormal); returns how many disks were claimed, and the disks as
/// the pass found them before the health check (what [`check_health`] checks again between
/// passes).
pub async fn claim_pass<R: LvmRunner>(
    roots: &Roots,
    policy: &Policy,
    thin: &claim::ThinSettings,
    lvm: &Lvm<R>,
    health: &crate::health::Board,
) -> Result<(usize, Vec<DiskStatus>), ClaimError> {
    let usage = Usage::read(&roots.proc).map_err(ClaimError::Usage)?;
    let probe = BlkidProbe::default();
    let (mut survey, outcomes) = claim::reconcile(roots, &usage, &probe, lvm, policy).await?;
    tend_pools(lvm, thin, &mut survey.classes).await;
    let disks = survey.plan.disks;
    check_health(roots, health, disks.clone()).await;
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
    Ok((claimed, disks))
}

/// Makes the pools of the classes configured with `--thin-pool` that lack one and grows pools
/// at the threshold (`claim::thin_pool::tend`); what it did or found is logged (standalone mode
/// has no Events).
async fn tend_pools<R: LvmRunner>(
    lvm: &Lvm<R>,
    thin: &claim::ThinSettings,
    classes: &mut [csi_api::crd::DeviceClassStatus],
) {
    if thin.classes.is_empty() {
        return;
    }
    for note in claim::thin_pool::tend(lvm, thin, classes, &[], true).await {
        match note {
            claim::PoolNote::Created { vg, bytes } => {
                tracing::info!(%vg, bytes, "thin pool created");
            }
            claim::PoolNote::Extended { vg, bytes } => {
                tracing::info!(%vg, bytes, "thin pool extended");
            }
            claim::PoolNote::Filling {
                vg,
                health,
                fill_percent,
            } => tracing::warn!(%vg, ?health, fill_percent, "thin pool filling"),
            claim::PoolNote::Failed { vg, what } => {
                tracing::warn!(%vg, error = %what, "thin pool not tended");
            }
        }
    }
}

/// The disks' health check (sysfs and the disks' own counters; no lvm2, no blkid): failing
/// disks go on `health`.
async fn check_health(roots: &Roots, health: &crate::health::Board, mut disks: Vec<DiskStatus>) {
    let before = health.failing();
    crate::health::check_disks(&roots.sysfs, &roots.dev, health, &mut disks).await;
    for (slot, evidence) in health.failing() {
        if before.get(&slot) != Some(&evidence) {
            tracing::warn!(%slot, %evidence, "disk is failing");
        }
    }
}

/// A rescan this long after the last full pass is a full pass, even when the disks look the
/// same (as the Kubernetes mode's net, docs/architecture.md).
const FULL_PASS_AFTER: Duration = Duration::from_secs(60);

/// What sysfs shows of the candidate disks: kernel name, device number, size in sectors and
/// partitions of each; read without running a process. Holders are left out: every LV created
/// or removed on a claimed disk changes them.
#[derive(Debug, PartialEq, Eq)]
struct DiskSet(Vec<(String, String, String, Vec<String>)>);

impl DiskSet {
    /// `None` when sysfs cannot be read (a full pass then says why).
    fn read(sysfs: &std::path::Path) -> Option<DiskSet> {
        let block = sysfs.join("block");
        let read = |p: std::path::PathBuf| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let mut disks = Vec::new();
        for entry in std::fs::read_dir(&block).ok()? {
            let name = entry.ok()?.file_name().into_string().ok()?;
            if !crate::discovery::is_candidate(&name) {
                continue;
            }
            let dir = block.join(&name);
            let mut parts: Vec<String> = std::fs::read_dir(&dir)
                .ok()?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(name.as_str()))
                .map(|n| format!("{n}:{}", read(dir.join(&n).join("size"))))
                .collect();
            parts.sort();
            disks.push((name, read(dir.join("dev")), read(dir.join("size")), parts));
        }
        disks.sort();
        Some(DiskSet(disks))
    }
}

/// Whether a rescan may skip discovery and claim: the last full pass succeeded and claimed
/// nothing, the disks look the same in sysfs, and that pass is less than [`FULL_PASS_AFTER`]
/// old. What sysfs does not show (a signature written to or wiped from an unclaimed disk, a
/// disk mounted or unmounted) is seen by the next full pass; pvcreate is preceded by its own
/// probe whatever the pass.
fn may_skip(last: Option<&DiskSet>, now: Option<&DiskSet>, since_full: Duration) -> bool {
    matches!((last, now), (Some(a), Some(b)) if a == b) && since_full < FULL_PASS_AFTER
}

#[allow(clippy::too_many_arguments)]
async fn rescan_loop<R: LvmRunner>(
    roots: Roots,
    policy: Policy,
    thin: claim::ThinSettings,
    lvm: Lvm<R>,
    ready: Readiness,
    volumes: Arc<LvmVolumes<R>>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let health = volumes.health().clone();
    // The disks as of the last full pass that succeeded and claimed nothing, those disks'
    // statuses (health is checked again on every rescan, skipped or not) and when it ran.
    let mut last: Option<(DiskSet, Vec<DiskStatus>, std::time::Instant)> = None;
    loop {
        let now = DiskSet::read(&roots.sysfs);
        match &last {
            Some((set, disks, at)) if may_skip(Some(set), now.as_ref(), at.elapsed()) => {
                // Discovery probes every disk and lists PVs and VGs: a dozen processes that
                // would compete with the CSI calls for nothing.
                tracing::debug!("disks unchanged: rescan without discovery");
                check_health(&roots, &health, disks.clone()).await;
            }
            _ => {
                let started = std::time::Instant::now();
                last = None;
                match claim_pass(&roots, &policy, &thin, &lvm, &health).await {
                    Ok((claimed, disks)) => {
                        if claimed == 0 {
                            last = now.map(|set| (set, disks, started));
                        }
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
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(disks: &[(&str, &str)]) -> DiskSet {
        DiskSet(
            disks
                .iter()
                .map(|(n, size)| (n.to_string(), "259:0".into(), size.to_string(), Vec::new()))
                .collect(),
        )
    }

    #[test]
    fn a_rescan_skips_discovery_only_for_the_same_disks_and_not_for_long() {
        let a = set(&[("nvme0n1", "2097152"), ("sda", "4194304")]);
        let same = set(&[("nvme0n1", "2097152"), ("sda", "4194304")]);
        let soon = Duration::from_secs(10);
        assert!(may_skip(Some(&a), Some(&same), soon));
        // A new disk, a disk gone, a disk resized: a full pass.
        let added = set(&[("nvme0n1", "2097152"), ("sda", "4194304"), ("sdb", "1")]);
        assert!(!may_skip(Some(&a), Some(&added), soon));
        assert!(!may_skip(Some(&a), Some(&set(&[("sda", "4194304")])), soon));
        let grown = set(&[("nvme0n1", "4194304"), ("sda", "4194304")]);
        assert!(!may_skip(Some(&a), Some(&grown), soon));
        // No successful pass yet, or sysfs unreadable: a full pass.
        assert!(!may_skip(None, Some(&same), soon));
        assert!(!may_skip(Some(&a), None, soon));
        // FULL_PASS_AFTER the last full pass, a full pass anyway.
        assert!(!may_skip(Some(&a), Some(&same), FULL_PASS_AFTER));
    }

    #[test]
    fn the_disk_set_has_disks_and_partitions_but_not_lvs_or_holders() {
        let root = tempfile::tempdir().unwrap();
        let block = root.path().join("block");
        let write = |p: &str, text: &str| {
            let p = block.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("sda/dev", "8:0\n");
        write("sda/size", "4194304\n");
        write("dm-0/dev", "253:0\n");
        write("dm-0/size", "8\n");
        std::fs::create_dir_all(block.join("sda/holders")).unwrap();
        let before = DiskSet::read(root.path()).unwrap();
        assert_eq!(
            before,
            DiskSet(vec![(
                "sda".into(),
                "8:0".into(),
                "4194304".into(),
                Vec::new()
            )])
        );
        // An LV appears (dm-1, a holder of sda): the same disks.
        write("dm-1/dev", "253:1\n");
        std::fs::create_dir_all(block.join("sda/holders/dm-1")).unwrap();
        assert_eq!(DiskSet::read(root.path()).unwrap(), before);
        // A partition appears: not the same.
        write("sda/sda1/size", "2048\n");
        assert_ne!(DiskSet::read(root.path()).unwrap(), before);
    }
}
