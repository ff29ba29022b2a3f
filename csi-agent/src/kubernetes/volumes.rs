//! The LogicalVolume reconciler. `decide` is the pure heart (spec + deletion + what LVM holds →
//! one step); `reconcile` performs the step through the LVM layer and writes the status with the
//! agent's field manager. Failures an operator must act on become Events.
//!
//! Deletion never destroys data in use: a LogicalVolume that still carries the controller's
//! PV-protection finalizer ([`names::FINALIZER_PV_PROTECTION`], held while a PersistentVolume
//! refers to it and released only by the CO's DeleteVolume) keeps its LV untouched
//! (`PvProtected`: a direct `kubectl delete`, an orphan policy or CRD removal at uninstall wipe
//! nothing); an LV that is open or mounted on the host is not touched either (`VolumeInUse`,
//! retried with backoff). Each is said once in an Event. The finalizer is released by a JSON
//! patch that tests and removes exactly our entry of the fresh object (never a stale
//! resourceVersion, so the status writes of the wipe cannot make it fail with 409).
//!
//! Snapshots, restores and clones (docs/architecture.md "Snapshots, restores and clones"): an
//! object with `spec.role: Snapshot` is made with [`Lvm::create_snapshot`] of its `spec.source`
//! volume (admitted against the pool's overprovisioning room, [`virtual_room`]), reported Ready
//! with lvm2's creation time and no device path (a snapshot LV is never activated), and removed
//! with [`Lvm::remove_snapshot`] (no wipe; the PV-protection rule still holds). A volume with
//! `spec.source` is made with [`Lvm::create_lv_from_source`] and is a thin volume from then on.
//! A source that is missing or linear fails the object (`SourceNotFound`, `SourceNotThin`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csi_api::crd::{
    Condition, LogicalVolume, LogicalVolumePhase, LogicalVolumeSpec, LogicalVolumeStatus,
    NodeStorage, SourceKind, VolumeSource, WipeProgress,
};
use csi_api::names::{self, DeviceClass};
use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Context;
use crate::claim::thin_pool::virtual_room;
#[cfg(doc)]
use crate::lvm::Lvm;
use crate::lvm::snapshot::snapshot_of_tag;
use crate::lvm::{Lv, LvSource, LvmError, LvmRunner, PvcRef, Snapshot, is_wiping};
use crate::wiper::{Progress, WipeError};

/// `status.reason` when the VG has no room; the controller turns it into ResourceExhausted.
pub use csi_api::names::REASON_INSUFFICIENT_SPACE;
/// `status.reason` for other LVM failures.
pub const REASON_LVM_ERROR: &str = "LvmError";
/// `status.reason` when the LV could not be wiped before removal (it is kept, and retried).
pub const REASON_WIPE_FAILED: &str = "WipeFailed";
/// `status.reason` of a deleted LogicalVolume whose LV was made in a VG that lvm2 no longer sees
/// at all (every disk of the class absent): the deletion waits for the disks.
pub const REASON_VG_MISSING: &str = "VolumeGroupMissing";
/// Retry period of a deletion held because its VG is absent.
const VG_MISSING_RETRY: Duration = Duration::from_secs(60);
/// Backoff of a deletion held because the LV is in use: first and longest delay.
const IN_USE_FIRST_RETRY: Duration = Duration::from_secs(5);
const IN_USE_MAX_RETRY: Duration = Duration::from_secs(300);

/// The one thing to do next for a LogicalVolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not this node's volume: leave it alone.
    Ignore,
    /// Being deleted and the LV still exists: remove it (then the finalizer).
    Remove,
    /// Being deleted while the PV-protection finalizer is on (a PersistentVolume still refers
    /// to it): the LV is left untouched until the controller releases the protection.
    Protected,
    /// Being deleted and the LV is gone: release the finalizer.
    ReleaseFinalizer,
    /// Deleted without our finalizer: nothing of ours to do.
    Done,
    /// Live but without our finalizer: add it before touching LVM.
    AddFinalizer,
    Create {
        size: u64,
    },
    /// A volume that starts from `source` (a restore or a clone): a thin LV made from it.
    CreateFromSource {
        size: u64,
        source: VolumeSource,
    },
    /// A snapshot object without its LV: a thin snapshot of the volume `origin`.
    CreateSnapshot {
        origin: String,
    },
    /// The spec cannot be made as written (the controller never writes it): `Failed`.
    Invalid {
        message: String,
    },
    Extend {
        size: u64,
    },
    /// The LV matches the spec: report it Ready.
    Report,
    /// Being deleted, and its LV was made in a VG that lvm2 no longer sees: the deletion is
    /// not done (it cannot be proven) until the disks are back.
    VgMissing,
}

/// Decides the next step; pure.
pub fn decide(lv: &LogicalVolume, node: &str, existing: Option<&Lv>) -> Step {
    if lv.spec.node_name != node {
        return Step::Ignore;
    }
    let ours = lv.finalizers().iter().any(|f| f == names::FINALIZER);
    if lv.metadata.deletion_timestamp.is_some() {
        let protected = lv
            .finalizers()
            .iter()
            .any(|f| f == names::FINALIZER_PV_PROTECTION);
        return match (ours, existing) {
            (false, _) => Step::Done,
            // A wipe that has started is finished (its data is partly gone already).
            (true, Some(have)) if protected && !is_wiping(have) => Step::Protected,
            (true, Some(_)) => Step::Remove,
            (true, None) => Step::ReleaseFinalizer,
        };
    }
    if !ours {
        return Step::AddFinalizer;
    }
    if lv.spec.is_snapshot() {
        let origin = match snapshot_origin(&lv.spec) {
            Ok(origin) => origin,
            Err(message) => return Step::Invalid { message },
        };
        let of_origin = snapshot_of_tag(&origin);
        // A snapshot's size is its origin's at the time: never grown.
        return match existing {
            None => Step::CreateSnapshot { origin },
            Some(have) if have.tags.contains(&of_origin) => Step::Report,
            Some(_) => Step::Invalid {
                message: format!(
                    "the snapshot LV of {} on this node was taken of another volume than {origin}",
                    lv.name_any()
                ),
            },
        };
    }
    match existing {
        None => match &lv.spec.source {
            None => Step::Create {
                size: lv.spec.size_bytes,
            },
            Some(source) if !lv.spec.is_thin() => Step::Invalid {
                message: format!(
                    "a volume made from {} {} must be thin (spec.provisioning: thin): \
                     restores and clones are thin snapshots in the source's pool",
                    kind_word(source.kind),
                    source.name
                ),
            },
            Some(source) => Step::CreateFromSource {
                size: lv.spec.size_bytes,
                source: source.clone(),
            },
        },
        Some(have) if have.size_bytes < lv.spec.size_bytes => Step::Extend {
            size: lv.spec.size_bytes,
        },
        Some(_) => Step::Report,
    }
}

/// The origin volume of a snapshot object, or why the spec is no snapshot the agent can make.
fn snapshot_origin(spec: &LogicalVolumeSpec) -> Result<String, String> {
    match &spec.source {
        Some(VolumeSource {
            kind: SourceKind::Volume,
            name,
        }) if spec.is_thin() => Ok(name.clone()),
        Some(VolumeSource {
            kind: SourceKind::Volume,
            ..
        }) => Err("a snapshot must be thin (spec.provisioning: thin)".to_owned()),
        Some(other) => Err(format!(
            "a snapshot's source must be a volume, not {} {}",
            kind_word(other.kind),
            other.name
        )),
        None => Err("a snapshot needs spec.source (the volume it is a snapshot of)".to_owned()),
    }
}

fn kind_word(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Volume => "volume",
        SourceKind::Snapshot => "snapshot",
    }
}

/// The step for a deleted LogicalVolume of this node whose class VG lvm2 does not see at all.
/// Its LV existed if the agent ever reported it made (`status` names its VG, LV or size) or
/// lvm2's backup of the VG records it (`recorded`, [`crate::lvm::backup`]): then the deletion
/// waits ([`Step::VgMissing`]); a volume never made in a VG never seen is simply released. Pure.
pub fn decide_without_vg(lv: &LogicalVolume, node: &str, recorded: bool) -> Step {
    if lv.spec.node_name != node {
        return Step::Ignore;
    }
    if !lv.finalizers().iter().any(|f| f == names::FINALIZER) {
        return Step::Done;
    }
    let made = lv.status.as_ref().is_some_and(|s| {
        s.vg_name.is_some()
            || s.lv_name.is_some()
            || s.current_size_bytes.is_some()
            || matches!(
                s.phase,
                Some(LogicalVolumePhase::Ready | LogicalVolumePhase::Wiping)
            )
    });
    if made || recorded {
        Step::VgMissing
    } else {
        Step::ReleaseFinalizer
    }
}

/// Why a reconcile pass failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Lvm(#[from] LvmError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl From<WipeError> for ReconcileError {
    fn from(e: WipeError) -> Self {
        match e {
            WipeError::Lvm(e) => ReconcileError::Lvm(e),
            // Handled where it happens (status, Event, backoff); never reaches here.
            WipeError::InUse(e) => ReconcileError::Lvm(LvmError::InvalidArgument(e.to_string())),
        }
    }
}

struct Reconciler<R: LvmRunner> {
    ctx: Arc<Context<R>>,
    recorder: Recorder,
    /// Next retry delay of each deletion held because its LV is in use.
    in_use_backoff: Mutex<HashMap<String, Duration>>,
}

/// Runs the controller for this node's LogicalVolumes until `shutdown`.
pub async fn run<R: LvmRunner + 'static>(ctx: Arc<Context<R>>, shutdown: CancellationToken) {
    let api: Api<LogicalVolume> = Api::all(ctx.client.clone());
    let selector = format!("{}={}", names::LABEL_NODE, ctx.node);
    let recorder = Recorder::new(
        ctx.client.clone(),
        Reporter {
            controller: names::FIELD_MANAGER_AGENT.into(),
            instance: Some(ctx.node.clone()),
        },
    );
    // A disk turning failing or missing (seen by the NodeStorage pass) re-checks every volume.
    let disks_changed = futures::stream::unfold(ctx.disks_changed.clone(), |n| async move {
        n.notified().await;
        Some(((), n))
    });
    let reconciler = Arc::new(Reconciler {
        ctx,
        recorder,
        in_use_backoff: Mutex::default(),
    });
    Controller::new(api, watcher::Config::default().labels(&selector))
        .reconcile_all_on(disks_changed)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, reconciler)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

fn error_policy<R: LvmRunner>(
    _lv: Arc<LogicalVolume>,
    error: &ReconcileError,
    _r: Arc<Reconciler<R>>,
) -> Action {
    let delay = match error {
        ReconcileError::Lvm(e) if e.is_transient() => Duration::from_secs(2),
        _ => Duration::from_secs(15),
    };
    Action::requeue(delay)
}

async fn reconcile<R: LvmRunner>(
    lv: Arc<LogicalVolume>,
    r: Arc<Reconciler<R>>,
) -> Result<Action, ReconcileError> {
    let ctx = &r.ctx;
    let name = lv.name_any();
    let class: DeviceClass = lv.spec.device_class;
    let vg = class.vg_name();
    let api: Api<LogicalVolume> = Api::all(ctx.client.clone());
    // A snapshot object names its snapshot LV by the snapshot tag, a volume its LV by the volume
    // tag: neither lookup ever returns the other kind.
    let looked_up = if lv.spec.is_snapshot() {
        ctx.lvm.snapshots(Some(vg)).await.map(|all| {
            let held = all.into_iter().find(|s| s.snapshot_id == name);
            (held.as_ref().map(|s| s.lv.clone()), held)
        })
    } else {
        ctx.lvm.lv(vg, &name).await.map(|found| (found, None))
    };
    let (existing, snapshot) = match looked_up {
        Ok(found) => found,
        // lvm2 sees no VG of the class at all: an LV there can be neither removed nor proven gone.
        Err(LvmError::NotFound { .. })
            if lv.metadata.deletion_timestamp.is_some() && ctx.lvm.vg(vg).await?.is_none() =>
        {
            let recorded = ctx.lvm.backup_records(vg, &name);
            return delete_without_vg(&r, &api, &lv, vg, recorded).await;
        }
        Err(e) => return Err(e.into()),
    };
    let step = decide(&lv, &ctx.node, existing.as_ref());
    match step {
        Step::Ignore | Step::Done => {}
        Step::AddFinalizer => {
            let mut finalizers = lv.finalizers().to_vec();
            finalizers.push(names::FINALIZER.to_owned());
            let patch = serde_json::json!({ "metadata": { "finalizers": finalizers, "resourceVersion": lv.resource_version() } });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Step::Protected => {
            let note = format!(
                "LogicalVolume {name} is being deleted, but a PersistentVolume still refers to it \
                 (finalizer {}): its LV is kept untouched, every byte intact. To delete the data, \
                 delete the PersistentVolumeClaim instead (reclaim policy Delete); to keep it, \
                 leave the object as it is",
                names::FINALIZER_PV_PROTECTION
            );
            hold(&r, &api, &lv, names::REASON_PV_PROTECTED, &note, "KeepLV").await?;
            return Ok(Action::await_change());
        }
        Step::Remove if lv.spec.is_snapshot() => {
            // Never open (never activated) and never wiped: its chunks go back to the pool,
            // which zeroes them before another thin LV can read them.
            info!(snapshot = %name, %vg, "removing snapshot LV");
            ctx.lvm.remove_snapshot(vg, &name).await?;
            ctx.lv_removed(vg);
            release_finalizer(&api, &lv).await?;
        }
        Step::Remove => {
            info!(volume = %name, %vg, "removing LV");
            csi_api::fault::point("agent.remove.before-lv");
            match wipe_then_remove(&r, &api, &lv, vg).await {
                Ok(()) => {}
                Err(WipeError::InUse(in_use)) => {
                    let delay = r.next_in_use_delay(&name);
                    let note = format!(
                        "{in_use}. The finalizer stays and the agent retries (next in {}s)",
                        delay.as_secs()
                    );
                    warn!(volume = %name, %in_use, "deletion held: LV in use");
                    hold(&r, &api, &lv, names::REASON_VOLUME_IN_USE, &note, "WipeLV").await?;
                    return Ok(Action::requeue(delay));
                }
                Err(e) => return Err(e.into()),
            }
            r.forget_in_use(&name);
            csi_api::fault::point("agent.remove.after-lv");
            ctx.lv_removed(vg);
            release_finalizer(&api, &lv).await?;
        }
        Step::ReleaseFinalizer => release_finalizer(&api, &lv).await?,
        // Only from `decide_without_vg`.
        Step::VgMissing => {}
        Step::Invalid { message } => {
            let op = if lv.spec.is_snapshot() {
                Operation::Snapshot
            } else {
                Operation::FromSource
            };
            let failure = Failure {
                reason: names::REASON_INVALID_SPEC,
                terminal: true,
            };
            return record_failure(&r, &api, &lv, op, failure, message).await;
        }
        Step::CreateSnapshot { origin } => {
            let ratio = ctx.thin.ratio(class);
            let made = ctx
                .lvm
                .create_snapshot(vg, &origin, &name, move |s| virtual_room(s, ratio))
                .await;
            match made {
                Ok(snap) => {
                    info!(snapshot = %name, %origin, %vg, size = snap.size_bytes, "snapshot created");
                    let ticket = ctx.lv_changed(vg);
                    write_status(&api, &name, snapshot_status(&snap, Some(ticket))).await?;
                    let event = Event {
                        type_: EventType::Normal,
                        reason: names::EVENT_SNAPSHOT_CREATED.into(),
                        note: Some(format!(
                            "Thin snapshot of volume {origin} made on node {} ({}/{}, {} bytes, \
                             at {})",
                            ctx.node,
                            snap.vg,
                            snap.lv.name,
                            snap.size_bytes,
                            snap.creation_time.as_deref().unwrap_or("unknown time")
                        )),
                        action: "CreateSnapshot".into(),
                        secondary: None,
                    };
                    if let Err(e) = r.recorder.publish(&event, &lv.object_ref(&())).await {
                        warn!(error = %e, "cannot publish Event");
                    }
                }
                Err(e) => return fail(&r, &api, &lv, &e, Operation::Snapshot).await,
            }
        }
        Step::CreateFromSource { size, source } => {
            let pvc = pvc_of(&lv);
            let ratio = ctx.thin.ratio(class);
            let from = match source.kind {
                SourceKind::Snapshot => LvSource::Snapshot(&source.name),
                SourceKind::Volume => LvSource::Volume(&source.name),
            };
            let made = ctx
                .lvm
                .create_lv_from_source(vg, from, &name, size, pvc.as_ref(), move |s| {
                    virtual_room(s, ratio)
                })
                .await;
            match made {
                Ok(made) => {
                    info!(volume = %name, source = %source.name, %vg, size = made.size_bytes, "LV created from its source");
                    let ticket = ctx.lv_changed(vg);
                    write_status(&api, &name, ready_status(&made, None, Some(ticket))).await?;
                }
                Err(e) => return fail(&r, &api, &lv, &e, Operation::FromSource).await,
            }
        }
        Step::Create { size } => {
            let pvc = pvc_of(&lv);
            let thin = lv.spec.provisioning == Some(csi_api::names::Provisioning::Thin);
            let reserve = if thin {
                0
            } else {
                reserve_of(ctx, class).await?
            };
            csi_api::fault::point("agent.create.before-lv");
            let made = if thin {
                let ratio = ctx.thin.ratio(class);
                ctx.lvm
                    .create_thin_lv(vg, &name, size, pvc.as_ref(), |s| {
                        crate::claim::thin_pool::status(s, ratio).promisable_bytes
                    })
                    .await
            } else {
                ctx.lvm
                    .create_lv_within(vg, &name, size, pvc.as_ref(), reserve)
                    .await
            };
            match made {
                Ok(made) => {
                    csi_api::fault::point("agent.create.after-lv");
                    info!(volume = %name, %vg, size = made.size_bytes, "LV created");
                    // After the change, before the status that says so (see capacity_sequence).
                    let ticket = ctx.lv_changed(vg);
                    write_status(&api, &name, ready_status(&made, None, Some(ticket))).await?;
                }
                Err(e) => return fail(&r, &api, &lv, &e, Operation::Create).await,
            }
        }
        Step::Extend { size } => {
            let thin = existing.as_ref().is_some_and(crate::lvm::is_thin);
            let reserve = if thin {
                0
            } else {
                reserve_of(ctx, class).await?
            };
            csi_api::fault::point("agent.extend.before-lv");
            let grown = if thin {
                let current = existing.as_ref().map_or(0, |l| l.size_bytes);
                thin_room(ctx, vg, class, size.saturating_sub(current)).await
            } else {
                Ok(())
            };
            let grown = match grown {
                Ok(()) => ctx.lvm.extend_lv_within(vg, &name, size, reserve).await,
                Err(e) => Err(e),
            };
            match grown {
                Ok(grown) => {
                    csi_api::fault::point("agent.extend.after-lv");
                    info!(volume = %name, %vg, size = grown.size_bytes, "LV extended");
                    let ticket = ctx.lv_changed(vg);
                    write_status(&api, &name, ready_status(&grown, None, Some(ticket))).await?;
                }
                Err(e) => return fail(&r, &api, &lv, &e, Operation::Extend).await,
            }
        }
        Step::Report if lv.spec.is_snapshot() => {
            if let Some(snap) = snapshot.as_ref() {
                let fresh = snapshot_status(snap, None);
                let unchanged = lv.status.as_ref().is_some_and(|s| {
                    s.phase == fresh.phase
                        && s.lv_name == fresh.lv_name
                        && s.current_size_bytes == fresh.current_size_bytes
                        && s.creation_time == fresh.creation_time
                        && s.reason.is_none()
                });
                if !unchanged {
                    let ticket = ctx.lv_changed(vg);
                    write_status(&api, &name, snapshot_status(snap, Some(ticket))).await?;
                }
            }
        }
        Step::Report => {
            if let Some(have) = existing.as_ref() {
                let current = lv.status.as_ref();
                let problem = disk_problem(ctx, vg, &name).await;
                let mut fresh = ready_status(have, None, None);
                fresh.conditions.extend(problem.as_deref().map(disk_failed));
                let had = current.and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == names::CONDITION_DISK_FAILED)
                        .map(|c| c.message.clone())
                });
                let unchanged = current.is_some_and(|s| {
                    s.phase == fresh.phase
                        && s.current_size_bytes == fresh.current_size_bytes
                        && s.device_path == fresh.device_path
                        && s.reason.is_none()
                }) && had == problem;
                if !unchanged {
                    // The LV may have been made by a previous run that never said so: readers
                    // count it pending until a publish that began after now.
                    let ticket = ctx.lv_changed(vg);
                    let mut status = ready_status(have, None, Some(ticket));
                    status.conditions = fresh.conditions.clone();
                    write_status(&api, &name, status).await?;
                }
                if let Some(message) = problem.filter(|p| had.as_ref() != Some(p)) {
                    warn_disk_failed(&r, &lv, message).await;
                }
            }
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// A deletion whose class VG lvm2 does not see: held (reason `VolumeGroupMissing`, Warning
/// Event, retried every minute) when the LV was made there, released when it never was.
async fn delete_without_vg<R: LvmRunner>(
    r: &Reconciler<R>,
    api: &Api<LogicalVolume>,
    lv: &LogicalVolume,
    vg: &str,
    recorded: bool,
) -> Result<Action, ReconcileError> {
    match decide_without_vg(lv, &r.ctx.node, recorded) {
        Step::ReleaseFinalizer => {
            info!(volume = %lv.name_any(), %vg, "deleted volume was never made and its VG does not exist; releasing");
            release_finalizer(api, lv).await?;
            Ok(Action::await_change())
        }
        Step::VgMissing => {
            let note = format!(
                "LogicalVolume {} is being deleted, but its volume group {vg} is not visible on \
                 node {} (every disk of the class is absent): the LV can be neither wiped nor \
                 proven gone, so the finalizer stays. Bring the disks back; if they are gone for \
                 good, see the troubleshooting guide (VolumeGroupMissing)",
                lv.name_any(),
                r.ctx.node
            );
            hold(r, api, lv, REASON_VG_MISSING, &note, "WipeLV").await?;
            Ok(Action::requeue(VG_MISSING_RETRY))
        }
        _ => Ok(Action::await_change()),
    }
}

/// The bytes of `class` this node keeps free (NodeStorage `spec.reservedBytes`), read afresh
/// for every create and extend so that the LVM layer enforces the operator's current policy.
/// `Ok` when the thin pool of `vg` may still promise `more` bytes to a growing thin volume,
/// else [`LvmError::InsufficientSpace`].
async fn thin_room<R: LvmRunner>(
    ctx: &Context<R>,
    vg: &str,
    class: DeviceClass,
    more: u64,
) -> Result<(), LvmError> {
    let room = ctx.lvm.thin_state(vg).await?.map_or(0, |s| {
        crate::claim::thin_pool::status(&s, ctx.thin.ratio(class)).promisable_bytes
    });
    if more > room {
        return Err(LvmError::InsufficientSpace {
            vg: vg.to_owned(),
            requested_bytes: more,
            detail: format!("the thin pool of {vg} may still promise {room} bytes"),
        });
    }
    Ok(())
}

async fn reserve_of<R: LvmRunner>(
    ctx: &Context<R>,
    class: DeviceClass,
) -> Result<u64, kube::Error> {
    let api: Api<NodeStorage> = Api::all(ctx.client.clone());
    Ok(api
        .get_opt(&ctx.node)
        .await?
        .and_then(|ns| ns.spec.reserved_bytes.get(&class).copied())
        .unwrap_or(0))
}

/// Wipes the LV (phase `Wiping`, progress in `status.wipe`, written at most every 2 s), then
/// removes it. A failed wipe keeps the LV, so its data never reaches another volume: reason
/// `WipeFailed`, an Event, and a retry.
async fn wipe_then_remove<R: LvmRunner>(
    r: &Reconciler<R>,
    api: &Api<LogicalVolume>,
    lv: &LogicalVolume,
    vg: &str,
) -> Result<(), WipeError> {
    let name = lv.name_any();
    let (tx, mut rx) = tokio::sync::watch::channel::<Option<Progress>>(None);
    let base = lv.status.clone().unwrap_or_default();
    let (writer_api, writer_name, writer_base) = (api.clone(), name.clone(), base.clone());
    let writer = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(p) = rx.borrow_and_update().clone() else {
                continue;
            };
            let status = wiping_status(&writer_base, &p, None);
            if let Err(e) = write_status(&writer_api, &writer_name, status).await {
                warn!(volume = %writer_name, error = %e, "cannot write wipe progress");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let asked = lv.spec.wipe.as_deref();
    let result = r
        .ctx
        .wiper
        .wipe_and_remove(vg, &name, asked, &|p| {
            tx.send_replace(Some(p.clone()));
        })
        .await;
    writer.abort();
    let _ = writer.await;
    let error = match result {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    if matches!(
        error,
        WipeError::Lvm(LvmError::Cancelled { .. }) | WipeError::InUse(_)
    ) {
        return Err(error);
    }
    let message = error.to_string();
    warn!(volume = %name, %message, "wipe before removal failed; the LV is kept");
    let last = tx.borrow().clone().unwrap_or(Progress {
        method: "unknown",
        done: 0,
        total: 0,
    });
    let status = wiping_status(&base, &last, Some(message.clone()));
    if let Err(e) = write_status(api, &name, status).await {
        warn!(volume = %name, error = %e, "cannot write the wipe failure");
    }
    let event = Event {
        type_: EventType::Warning,
        reason: REASON_WIPE_FAILED.into(),
        note: Some(format!(
            "{message}. The LV is kept (its data must not reach another volume) and the agent retries; see the troubleshooting guide for WipeFailed"
        )),
        action: "WipeLV".into(),
        secondary: None,
    };
    if let Err(e) = r.recorder.publish(&event, &lv.object_ref(&())).await {
        warn!(error = %e, "cannot publish Event");
    }
    Err(error)
}

impl<R: LvmRunner> Reconciler<R> {
    /// The delay before the next check of a deletion held by an LV in use (doubling).
    fn next_in_use_delay(&self, name: &str) -> Duration {
        let mut map = self
            .in_use_backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let delay = map.entry(name.to_owned()).or_insert(IN_USE_FIRST_RETRY / 2);
        *delay = (*delay * 2).min(IN_USE_MAX_RETRY);
        *delay
    }

    fn forget_in_use(&self, name: &str) {
        self.in_use_backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

/// Whether a held deletion must be said (status and Event): only when the reason or its
/// message changed, so an operator gets one Event per situation, not one per retry.
fn hold_is_news(current: Option<&LogicalVolumeStatus>, reason: &str, message: &str) -> bool {
    !current.is_some_and(|s| {
        s.reason.as_deref() == Some(reason)
            && held_message(s.message.as_deref()) == held_message(Some(message))
    })
}

/// A held deletion's message without its changing retry delay.
fn held_message(message: Option<&str>) -> Option<&str> {
    message.map(|m| m.split(". The finalizer stays").next().unwrap_or(m))
}

/// Keeps the LV: writes the reason to the status and a Warning Event, once per situation.
async fn hold<R: LvmRunner>(
    r: &Reconciler<R>,
    api: &Api<LogicalVolume>,
    lv: &LogicalVolume,
    reason: &str,
    note: &str,
    action: &str,
) -> Result<(), ReconcileError> {
    if !hold_is_news(lv.status.as_ref(), reason, note) {
        return Ok(());
    }
    let name = lv.name_any();
    warn!(volume = %name, %reason, "deletion held; the LV is untouched");
    let mut status = lv.status.clone().unwrap_or_default();
    status.reason = Some(reason.to_owned());
    status.message = Some(note.to_owned());
    write_status(api, &name, status).await?;
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note.to_owned()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = r.recorder.publish(&event, &lv.object_ref(&())).await {
        warn!(error = %e, "cannot publish Event");
    }
    Ok(())
}

/// `base` in phase `Wiping` with the progress `p` (and the failure, if any).
fn wiping_status(
    base: &LogicalVolumeStatus,
    p: &Progress,
    failure: Option<String>,
) -> LogicalVolumeStatus {
    LogicalVolumeStatus {
        phase: Some(LogicalVolumePhase::Wiping),
        reason: failure.as_ref().map(|_| REASON_WIPE_FAILED.to_owned()),
        message: failure,
        wipe: Some(WipeProgress::new(p.method, p.done, p.total)),
        ..base.clone()
    }
}

/// The problem of the disks under `volume` (missing or failing, named by slot), if any. Asks
/// lvm2 which PVs the volume uses only when the VG misses a PV or a disk is failing.
async fn disk_problem<R: LvmRunner>(ctx: &Context<R>, vg: &str, volume: &str) -> Option<String> {
    let failing = ctx.health.failing();
    if !ctx.health.misses_pv(vg) && failing.is_empty() {
        return None;
    }
    match ctx.lvm.vg_layout(vg).await {
        Ok(layout) => crate::health::volume_problems(&layout, &failing)
            .get(volume)
            .map(|p| crate::health::volumes::message(p)),
        Err(e) => {
            warn!(%vg, error = %e, "cannot tell which disks hold the volume");
            None
        }
    }
}

fn disk_failed(message: &str) -> Condition {
    Condition {
        type_: names::CONDITION_DISK_FAILED.into(),
        status: "True".into(),
        reason: names::CONDITION_DISK_FAILED.into(),
        message: format!(
            "{message}. The data on the failed part may be lost: restore from the application's \
             replicas or a backup (see the troubleshooting guide, DiskFailed)"
        ),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ),
        observed_generation: None,
    }
}

/// A Warning Event on the LogicalVolume and on its PVC (so that `kubectl describe pvc` shows it).
async fn warn_disk_failed<R: LvmRunner>(r: &Reconciler<R>, lv: &LogicalVolume, message: String) {
    let event = Event {
        type_: EventType::Warning,
        reason: names::CONDITION_DISK_FAILED.into(),
        note: Some(message),
        action: "CheckDisks".into(),
        secondary: None,
    };
    let mut refs = vec![lv.object_ref(&())];
    if let Some(pvc) = &lv.spec.pvc {
        refs.push(k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolumeClaim".into()),
            name: Some(pvc.name.clone()),
            namespace: Some(pvc.namespace.clone()),
            uid: Some(pvc.uid.clone()),
            ..Default::default()
        });
    }
    for reference in refs {
        if let Err(e) = r.recorder.publish(&event, &reference).await {
            warn!(error = %e, "cannot publish the DiskFailed Event");
        }
    }
}

fn ready_status(
    lv: &Lv,
    reason: Option<(&str, String)>,
    capacity_sequence: Option<u64>,
) -> LogicalVolumeStatus {
    LogicalVolumeStatus {
        capacity_sequence,
        phase: Some(LogicalVolumePhase::Ready),
        vg_name: Some(lv.vg.clone()),
        lv_name: Some(lv.name.clone()),
        device_path: Some(lv.device_path().display().to_string()),
        current_size_bytes: Some(lv.size_bytes),
        size: Some(csi_api::crd::quantity(lv.size_bytes)),
        reason: reason.as_ref().map(|(r, _)| r.to_string()),
        message: reason.map(|(_, m)| m),
        ..Default::default()
    }
}

/// The LVM operation a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Create,
    Extend,
    Snapshot,
    /// A restore or a clone.
    FromSource,
}

impl Operation {
    fn action(self) -> &'static str {
        match self {
            Operation::Create | Operation::FromSource => "CreateLV",
            Operation::Extend => "ExtendLV",
            Operation::Snapshot => "CreateSnapshot",
        }
    }
}

/// How a failure is recorded: `status.reason`, and whether the object is `Failed` (the request
/// cannot succeed as written and nothing was made) rather than retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Failure {
    reason: &'static str,
    terminal: bool,
}

/// The [`Failure`] of `error` in `op`. Pure.
fn failure_of(op: Operation, error: &LvmError) -> Failure {
    let sourced = matches!(op, Operation::Snapshot | Operation::FromSource);
    let (reason, terminal) = match error {
        LvmError::InsufficientSpace { .. } => (REASON_INSUFFICIENT_SPACE, true),
        LvmError::NotFound { .. } if sourced => (names::REASON_SOURCE_NOT_FOUND, true),
        LvmError::NotThin { .. } if sourced => (names::REASON_SOURCE_NOT_THIN, true),
        // The LV name is held by a snapshot, restore or clone of another source (left by an
        // earlier object of the same name): the spec cannot be made as written.
        // Likewise a restore smaller than its source (the controller refuses it with OutOfRange).
        LvmError::OtherSource { .. } | LvmError::InvalidArgument(_) if sourced => {
            (names::REASON_INVALID_SPEC, true)
        }
        _ => (REASON_LVM_ERROR, false),
    };
    Failure {
        reason,
        // A volume that fails to grow stays Ready at its size, with the reason.
        terminal: terminal && op != Operation::Extend,
    }
}

/// What the Event of a failure tells the operator to do. Pure.
fn failure_note(op: Operation, reason: &str, message: &str, node: &str) -> String {
    let what = match op {
        Operation::Snapshot => "the snapshot",
        Operation::FromSource => "the restore or clone",
        Operation::Create | Operation::Extend => "the volume",
    };
    match reason {
        REASON_INSUFFICIENT_SPACE if matches!(op, Operation::Snapshot | Operation::FromSource) => {
            format!(
                "{message}. The thin pool on node {node} may not promise {what} (its virtual \
                 size counts against the pool's overprovisioning ratio, and it must stay on \
                 its source's node): delete unused snapshots or thin volumes there, or raise \
                 the class's --thin-overprovision-ratio; nothing was made"
            )
        }
        REASON_INSUFFICIENT_SPACE => format!(
            "{message}. Free space on node {node} (delete unused volumes or add a disk) or let the workload be scheduled elsewhere"
        ),
        names::REASON_SOURCE_NOT_FOUND => format!(
            "{message}. The source of {what} has no LV on node {node} (deleted, or never \
             made): nothing was made; delete this request and choose an existing source"
        ),
        names::REASON_SOURCE_NOT_THIN => format!(
            "{message}. Snapshots and clones are thin snapshots: the source must be a thin \
             volume (a StorageClass with strata.io/provisioning: thin); nothing was made"
        ),
        names::REASON_INVALID_SPEC => format!(
            "{message}. Nothing was made: the spec cannot be made as written; delete this \
             object and make it again through a VolumeSnapshot or PersistentVolumeClaim"
        ),
        _ => format!(
            "{message}. The agent retries; check the node's LVM state (`vgs`, `pvs`) if this persists"
        ),
    }
}

/// Records a failed LVM operation (see [`failure_of`]).
async fn fail<R: LvmRunner>(
    r: &Reconciler<R>,
    api: &Api<LogicalVolume>,
    lv: &LogicalVolume,
    error: &LvmError,
    op: Operation,
) -> Result<Action, ReconcileError> {
    record_failure(r, api, lv, op, failure_of(op, error), error.to_string()).await
}

/// Writes a failure to the status and a Warning Event: a create that cannot succeed fails the
/// object (`Failed`, nothing half-made); an extend that cannot fit keeps it `Ready` at its size
/// with the reason; others are retried.
async fn record_failure<R: LvmRunner>(
    r: &Reconciler<R>,
    api: &Api<LogicalVolume>,
    lv: &LogicalVolume,
    op: Operation,
    failure: Failure,
    message: String,
) -> Result<Action, ReconcileError> {
    let name = lv.name_any();
    let reason = failure.reason;
    warn!(volume = %name, %reason, %message, "LV operation failed");
    let status = if op == Operation::Extend {
        let mut s = lv.status.clone().unwrap_or_default();
        s.reason = Some(reason.into());
        s.message = Some(message.clone());
        s
    } else {
        LogicalVolumeStatus {
            phase: Some(if failure.terminal {
                LogicalVolumePhase::Failed
            } else {
                LogicalVolumePhase::Pending
            }),
            reason: Some(reason.into()),
            message: Some(message.clone()),
            ..Default::default()
        }
    };
    write_status(api, &name, status).await?;
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(failure_note(op, reason, &message, &r.ctx.node)),
        action: op.action().into(),
        secondary: None,
    };
    if let Err(e) = r.recorder.publish(&event, &lv.object_ref(&())).await {
        warn!(error = %e, "cannot publish Event");
    }
    if failure.terminal || reason == REASON_INSUFFICIENT_SPACE {
        Ok(Action::await_change())
    } else {
        Ok(Action::requeue(Duration::from_secs(10)))
    }
}

fn pvc_of(lv: &LogicalVolume) -> Option<PvcRef> {
    lv.spec.pvc.as_ref().map(|p| PvcRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    })
}

/// The Ready status of a snapshot: its LV, size and point in time; no device path (a snapshot LV
/// is never activated, so it has no device node).
fn snapshot_status(snap: &Snapshot, capacity_sequence: Option<u64>) -> LogicalVolumeStatus {
    LogicalVolumeStatus {
        device_path: None,
        creation_time: snap.creation_time.clone(),
        current_size_bytes: Some(snap.size_bytes),
        size: Some(csi_api::crd::quantity(snap.size_bytes)),
        ..ready_status(&snap.lv, None, capacity_sequence)
    }
}

async fn write_status(
    api: &Api<LogicalVolume>,
    name: &str,
    status: LogicalVolumeStatus,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({
        "apiVersion": "strata.io/v1alpha1",
        "kind": "LogicalVolume",
        "status": status,
    });
    let params = PatchParams::apply(names::FIELD_MANAGER_AGENT).force();
    api.patch_status(name, &params, &Patch::Apply(&patch))
        .await
        .map(drop)
}

/// The merge patch that removes `names::FINALIZER` from `fresh` (just read): its other
/// finalizers, guarded by its own resourceVersion. `None` when the finalizer is not there.
/// Built from the object as it is now, never from the one the reconcile started with (whose
/// resourceVersion the wipe's status writes have made stale: that patch would fail with 409).
fn finalizer_removal(fresh: &LogicalVolume) -> Option<serde_json::Value> {
    if !fresh.finalizers().iter().any(|f| f == names::FINALIZER) {
        return None;
    }
    let rest: Vec<&String> = fresh
        .finalizers()
        .iter()
        .filter(|f| *f != names::FINALIZER)
        .collect();
    Some(serde_json::json!({
        "metadata": { "finalizers": rest, "resourceVersion": fresh.resource_version() }
    }))
}

/// Removes our finalizer from the object as it is now (re-read before each attempt), retrying
/// when another writer changed it between the read and the patch.
async fn release_finalizer(
    api: &Api<LogicalVolume>,
    lv: &LogicalVolume,
) -> Result<(), kube::Error> {
    let name = lv.name_any();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(fresh) = api.get_opt(&name).await? else {
            return Ok(());
        };
        let Some(patch) = finalizer_removal(&fresh) else {
            return Ok(());
        };
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::Activation;
    use csi_api::crd::LogicalVolumeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn volume(node: &str, size: u64, finalizer: bool, deleting: bool) -> LogicalVolume {
        let mut lv = LogicalVolume::new(
            "pvc-1",
            LogicalVolumeSpec {
                node_name: node.into(),
                device_class: DeviceClass::Ssd,
                size_bytes: size,
                pvc: None,
                source: None,
                role: None,
                volume_snapshot: None,
                wipe: None,
                provisioning: None,
            },
        );
        if finalizer {
            lv.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
        }
        if deleting {
            lv.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        lv
    }

    fn lvm_lv(size: u64) -> Lv {
        Lv {
            vg: "strata-ssd".into(),
            name: "pvc-1".into(),
            uuid: None,
            size_bytes: size,
            tags: vec![],
            active: Activation::Active,
            volume: Some("pvc-1".into()),
            pvc: None,
            owned: true,
            open: false,
        }
    }

    #[test]
    fn other_nodes_volumes_are_ignored() {
        assert_eq!(
            decide(&volume("b", 1, true, false), "a", None),
            Step::Ignore
        );
    }

    #[test]
    fn the_finalizer_comes_before_any_lvm_change() {
        assert_eq!(
            decide(&volume("a", 8, false, false), "a", None),
            Step::AddFinalizer
        );
    }

    #[test]
    fn create_extend_report_follow_the_spec() {
        assert_eq!(
            decide(&volume("a", 8, true, false), "a", None),
            Step::Create { size: 8 }
        );
        assert_eq!(
            decide(&volume("a", 8, true, false), "a", Some(&lvm_lv(4))),
            Step::Extend { size: 8 }
        );
        assert_eq!(
            decide(&volume("a", 8, true, false), "a", Some(&lvm_lv(8))),
            Step::Report
        );
        // Never shrink: a bigger LV (extent rounding) is reported as it is.
        assert_eq!(
            decide(&volume("a", 6, true, false), "a", Some(&lvm_lv(8))),
            Step::Report
        );
    }

    #[test]
    fn wiping_status_keeps_the_volume_fields_and_reports_progress() {
        let base = ready_status(&lvm_lv(8), None, Some(7));
        let p = Progress {
            method: "discard",
            done: 4,
            total: 8,
        };
        let s = wiping_status(&base, &p, None);
        assert_eq!(s.phase, Some(LogicalVolumePhase::Wiping));
        assert_eq!(s.lv_name.as_deref(), Some("pvc-1"));
        assert_eq!(s.capacity_sequence, Some(7));
        assert_eq!(
            s.wipe,
            Some(WipeProgress {
                policy: "discard".into(),
                done_bytes: 4,
                total_bytes: 8,
                percent: Some(50),
            })
        );
        assert_eq!(s.reason, None);
        let failed = wiping_status(&base, &p, Some("I/O error".into()));
        assert_eq!(failed.reason.as_deref(), Some(REASON_WIPE_FAILED));
        assert_eq!(failed.message.as_deref(), Some("I/O error"));
    }

    #[test]
    fn deletion_removes_the_lv_before_the_finalizer() {
        assert_eq!(
            decide(&volume("a", 8, true, true), "a", Some(&lvm_lv(8))),
            Step::Remove
        );
        assert_eq!(
            decide(&volume("a", 8, true, true), "a", None),
            Step::ReleaseFinalizer
        );
        assert_eq!(
            decide(&volume("a", 8, false, true), "a", Some(&lvm_lv(8))),
            Step::Done
        );
    }

    fn protected(mut lv: LogicalVolume) -> LogicalVolume {
        lv.metadata
            .finalizers
            .get_or_insert_with(Vec::new)
            .push(names::FINALIZER_PV_PROTECTION.into());
        lv
    }

    #[test]
    fn a_deleted_volume_whose_pv_exists_keeps_its_lv() {
        // kubectl delete logicalvolume, an orphan policy, or CRD removal at uninstall.
        assert_eq!(
            decide(
                &protected(volume("a", 8, true, true)),
                "a",
                Some(&lvm_lv(8))
            ),
            Step::Protected
        );
        // Released by the controller's DeleteVolume: removed.
        assert_eq!(
            decide(&volume("a", 8, true, true), "a", Some(&lvm_lv(8))),
            Step::Remove
        );
        // No LV left: only the finalizer goes (the protection is the controller's).
        assert_eq!(
            decide(&protected(volume("a", 8, true, true)), "a", None),
            Step::ReleaseFinalizer
        );
        // A wipe that has started is finished.
        let mut marked = lvm_lv(8);
        marked.tags.push(crate::lvm::WIPING_TAG.into());
        assert_eq!(
            decide(&protected(volume("a", 8, true, true)), "a", Some(&marked)),
            Step::Remove
        );
        // A live protected volume is reconciled as usual.
        assert_eq!(
            decide(
                &protected(volume("a", 8, true, false)),
                "a",
                Some(&lvm_lv(8))
            ),
            Step::Report
        );
    }

    #[test]
    fn a_held_deletion_is_said_once_per_situation() {
        let note = "logical volume strata-ssd/pvc-1 is in use: mounted at /x. The finalizer stays and the agent retries (next in 5s)";
        assert!(hold_is_news(None, names::REASON_VOLUME_IN_USE, note));
        let said = LogicalVolumeStatus {
            reason: Some(names::REASON_VOLUME_IN_USE.into()),
            message: Some(note.into()),
            ..Default::default()
        };
        let later = note.replace("next in 5s", "next in 10s");
        assert!(!hold_is_news(
            Some(&said),
            names::REASON_VOLUME_IN_USE,
            &later
        ));
        let elsewhere = note.replace("/x", "/y");
        assert!(hold_is_news(
            Some(&said),
            names::REASON_VOLUME_IN_USE,
            &elsewhere
        ));
        assert!(hold_is_news(
            Some(&said),
            names::REASON_PV_PROTECTED,
            "kept"
        ));
    }

    #[test]
    fn a_deletion_whose_vg_vanished_waits_if_the_lv_was_made() {
        let deleted = volume("a", 8, true, true);
        // Never made (no status) and not in lvm2's record of the VG: nothing to wait for.
        assert_eq!(
            decide_without_vg(&deleted, "a", false),
            Step::ReleaseFinalizer
        );
        // lvm2's backup of the vanished VG records it: held.
        assert_eq!(decide_without_vg(&deleted, "a", true), Step::VgMissing);
        // The agent reported it made: held, whatever the backup says.
        let mut made = deleted.clone();
        made.status = Some(ready_status(&lvm_lv(8), None, Some(1)));
        assert_eq!(decide_without_vg(&made, "a", false), Step::VgMissing);
        let mut wiping = deleted.clone();
        wiping.status = Some(LogicalVolumeStatus {
            phase: Some(LogicalVolumePhase::Wiping),
            ..Default::default()
        });
        assert_eq!(decide_without_vg(&wiping, "a", false), Step::VgMissing);
        // Not ours to decide.
        assert_eq!(decide_without_vg(&made, "b", true), Step::Ignore);
        assert_eq!(
            decide_without_vg(&volume("a", 8, false, true), "a", true),
            Step::Done
        );
    }

    fn snapshot_object(source: Option<VolumeSource>, thin: bool) -> LogicalVolume {
        let mut lv = volume("a", 8, true, false);
        lv.spec.role = Some(csi_api::crd::VolumeRole::Snapshot);
        lv.spec.source = source;
        lv.spec.provisioning = thin.then_some(csi_api::names::Provisioning::Thin);
        lv
    }

    fn source(kind: SourceKind, name: &str) -> Option<VolumeSource> {
        Some(VolumeSource {
            kind,
            name: name.into(),
        })
    }

    #[test]
    fn a_snapshot_object_is_made_from_its_origin_and_never_grown() {
        let snap = snapshot_object(source(SourceKind::Volume, "pvc-origin"), true);
        assert_eq!(
            decide(&snap, "a", None),
            Step::CreateSnapshot {
                origin: "pvc-origin".into()
            }
        );
        // The LV is there (even smaller than the spec says): reported, never extended.
        let mut made = lvm_lv(4);
        made.tags.push(snapshot_of_tag("pvc-origin"));
        assert_eq!(decide(&snap, "a", Some(&made)), Step::Report);
        // A snapshot LV of another origin under this id is not this snapshot.
        let mut other = lvm_lv(4);
        other.tags.push(snapshot_of_tag("pvc-other"));
        assert!(matches!(
            decide(&snap, "a", Some(&other)),
            Step::Invalid { message } if message.contains("another volume")
        ));
        // The finalizer still comes first.
        let mut bare = snap.clone();
        bare.metadata.finalizers = None;
        assert_eq!(decide(&bare, "a", None), Step::AddFinalizer);
    }

    #[test]
    fn a_snapshot_spec_the_agent_cannot_make_fails_without_lvm() {
        for (spec, says) in [
            (snapshot_object(None, true), "needs spec.source"),
            (
                snapshot_object(source(SourceKind::Snapshot, "snap-x"), true),
                "not snapshot snap-x",
            ),
            (
                snapshot_object(source(SourceKind::Volume, "pvc-o"), false),
                "must be thin",
            ),
        ] {
            match decide(&spec, "a", None) {
                Step::Invalid { message } => assert!(message.contains(says), "{message}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_deleted_snapshot_is_removed_unless_a_pv_protects_it() {
        let mut snap = snapshot_object(source(SourceKind::Volume, "pvc-o"), true);
        snap.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(decide(&snap, "a", Some(&lvm_lv(8))), Step::Remove);
        assert_eq!(decide(&snap, "a", None), Step::ReleaseFinalizer);
        // The one rule: an object with the protection finalizer keeps its LV, snapshot or not.
        assert_eq!(
            decide(&protected(snap), "a", Some(&lvm_lv(8))),
            Step::Protected
        );
    }

    #[test]
    fn restores_and_clones_are_made_from_their_source_and_then_are_volumes() {
        let mut restore = volume("a", 16, true, false);
        restore.spec.source = source(SourceKind::Snapshot, "snap-1");
        restore.spec.provisioning = Some(csi_api::names::Provisioning::Thin);
        assert_eq!(
            decide(&restore, "a", None),
            Step::CreateFromSource {
                size: 16,
                source: source(SourceKind::Snapshot, "snap-1").unwrap()
            }
        );
        // Made: it grows and reports like any volume.
        assert_eq!(
            decide(&restore, "a", Some(&lvm_lv(8))),
            Step::Extend { size: 16 }
        );
        assert_eq!(decide(&restore, "a", Some(&lvm_lv(16))), Step::Report);
        let mut clone = restore.clone();
        clone.spec.source = source(SourceKind::Volume, "pvc-src");
        assert!(matches!(
            decide(&clone, "a", None),
            Step::CreateFromSource { source, .. } if source.kind == SourceKind::Volume
        ));
        // A linear restore would be a full copy: refused.
        clone.spec.provisioning = None;
        match decide(&clone, "a", None) {
            Step::Invalid { message } => assert!(message.contains("must be thin"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_of_sourced_operations_name_the_source_problem() {
        let not_found = LvmError::NotFound {
            what: "volume pvc-o".into(),
        };
        let space = LvmError::InsufficientSpace {
            vg: "strata-ssd".into(),
            requested_bytes: 8,
            detail: "room 0".into(),
        };
        let linear = LvmError::NotThin {
            what: "volume pvc-o".into(),
        };
        let other = LvmError::InvalidArgument("smaller than its source".into());
        let busy = LvmError::Busy(crate::lvm::CommandFailure {
            command: "lvcreate".into(),
            code: Some(5),
            stderr: "locked".into(),
        });
        let f = |op, e| failure_of(op, e);
        for op in [Operation::Snapshot, Operation::FromSource] {
            assert_eq!(
                f(op, &not_found),
                Failure {
                    reason: names::REASON_SOURCE_NOT_FOUND,
                    terminal: true
                }
            );
            assert_eq!(
                f(op, &linear),
                Failure {
                    reason: names::REASON_SOURCE_NOT_THIN,
                    terminal: true
                }
            );
            assert_eq!(
                f(op, &space),
                Failure {
                    reason: REASON_INSUFFICIENT_SPACE,
                    terminal: true
                }
            );
            assert_eq!(
                f(op, &other),
                Failure {
                    reason: names::REASON_INVALID_SPEC,
                    terminal: true
                }
            );
            assert_eq!(
                f(op, &busy),
                Failure {
                    reason: REASON_LVM_ERROR,
                    terminal: false
                }
            );
        }
        // Plain volumes keep their meaning: not found is an LVM error (retried), and an
        // extension that does not fit keeps the volume Ready.
        assert_eq!(f(Operation::Create, &not_found).reason, REASON_LVM_ERROR);
        assert!(f(Operation::Create, &space).terminal);
        assert!(!f(Operation::Extend, &space).terminal);
        let note = failure_note(
            Operation::Snapshot,
            REASON_INSUFFICIENT_SPACE,
            "no room",
            "node-1",
        );
        assert!(note.contains("--thin-overprovision-ratio") && note.contains("node-1"));
        let note = failure_note(
            Operation::Snapshot,
            names::REASON_SOURCE_NOT_THIN,
            "linear",
            "n",
        );
        assert!(note.contains("strata.io/provisioning: thin"), "{note}");
    }

    #[test]
    fn a_snapshot_is_reported_with_its_time_and_no_device() {
        let snap = Snapshot {
            vg: "strata-ssd".into(),
            snapshot_id: "snapshot-1".into(),
            source_volume: "pvc-o".into(),
            size_bytes: 64 << 20,
            creation_time: Some("2026-12-03T00:00:00Z".into()),
            lv: lvm_lv(64 << 20),
        };
        let s = snapshot_status(&snap, Some(3));
        assert_eq!(s.phase, Some(LogicalVolumePhase::Ready));
        assert_eq!(s.device_path, None);
        assert_eq!(s.creation_time.as_deref(), Some("2026-12-03T00:00:00Z"));
        assert_eq!(s.current_size_bytes, Some(64 << 20));
        assert_eq!(s.capacity_sequence, Some(3));
        assert_eq!(s.vg_name.as_deref(), Some("strata-ssd"));
    }

    #[test]
    fn the_finalizer_release_uses_the_fresh_object() {
        let mut fresh = volume("a", 8, true, true);
        fresh.metadata.finalizers = Some(vec!["other.io/x".into(), names::FINALIZER.into()]);
        fresh.metadata.resource_version = Some("42".into());
        let patch = finalizer_removal(&fresh).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({ "metadata": { "finalizers": ["other.io/x"], "resourceVersion": "42" } })
        );
        fresh.metadata.finalizers = Some(vec!["other.io/x".into()]);
        assert_eq!(finalizer_removal(&fresh), None);
    }
}
