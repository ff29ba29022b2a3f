//! The leader's background loop. Leadership comes from a `coordination.k8s.io` Lease kept by the
//! `kube-lease-manager` crate (renewed well inside its duration); while this replica leads, every
//! period it lists LogicalVolumes, Strata PVs, Nodes and NodeStorages, runs the
//! [`housekeeping`](crate::housekeeping) planner and applies its actions through kube, with
//! Events that tell the operator what happened and what to do. When leadership is lost, the pass
//! in progress is dropped at once (cancellation), before its next API call; and every write of a
//! pass is first confirmed by the [`Fence`], so that a replica paused past its lease (whose
//! lease manager has not noticed yet) writes nothing.

use std::collections::HashSet;
use std::time::Duration;

use csi_api::crd::{LogicalVolume, NodeStorage};
use csi_api::names;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::release_finalizer;
use crate::housekeeping::{
    self, ANNOTATION_HELD, ANNOTATION_LOST, ANNOTATION_PV, Action, Policies, StrataPv,
};
use crate::lease::{Fence, FenceError};
use crate::metrics::Metrics;

/// What the loop needs besides the client.
pub struct Settings {
    pub policies: Policies,
    pub period: Duration,
    /// `None`: staleness is not checked.
    pub stale_after: Option<Duration>,
    /// The recovery policy ([`crate::drift`]) and how long a drift may stay in flight.
    pub recovery: crate::drift::Settings,
    pub drift_timeout: Duration,
}

/// Runs until `shutdown`: waits for leadership (`leading` is the lease manager's channel) and,
/// while leading, keeps the books every period.
pub async fn run(
    client: Client,
    mut leading: watch::Receiver<bool>,
    mut fence: Fence,
    settings: Settings,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "csi-controller".into(),
            instance: None,
        },
    );
    let mut drifter = crate::drift_exec::Drifter::new(
        client.clone(),
        settings.recovery,
        settings.drift_timeout,
        metrics.clone(),
    );
    loop {
        if leading.has_changed().is_err() {
            warn!("the lease manager stopped: no background work from this replica");
            return;
        }
        // Follow until we lead.
        while !*leading.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = leading.changed() => if changed.is_err() { return },
            }
        }
        info!("leading: background work starts");
        loop {
            let lost = async {
                loop {
                    if leading.changed().await.is_err() || !*leading.borrow() {
                        return;
                    }
                }
            };
            let pass = async {
                let books = keep_books(&client, &recorder, &settings, &metrics, &mut fence).await;
                match books {
                    Err(e @ FenceError::NotLeader { .. }) => {
                        warn!(error = %e, "housekeeping pass stopped");
                    }
                    other => {
                        if let Err(e) = other {
                            warn!(error = %e, "housekeeping pass failed; retrying next period");
                        }
                        if let Err(e) = drifter.pass(&mut fence).await {
                            warn!(error = %e, "recovery-policy pass failed; retrying next period");
                        }
                    }
                }
                tokio::time::sleep(settings.period).await;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = lost => {
                    warn!("leadership lost: background work stops");
                    break;
                }
                _ = pass => {}
            }
        }
    }
}

async fn keep_books(
    client: &Client,
    recorder: &Recorder,
    settings: &Settings,
    metrics: &Metrics,
    fence: &mut Fence,
) -> Result<(), FenceError> {
    let volumes_api: Api<LogicalVolume> = Api::all(client.clone());
    let volumes = volumes_api.list(&ListParams::default()).await?.items;
    let pvs: Vec<StrataPv> = Api::<PersistentVolume>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|pv| {
            let csi = pv.spec?.csi?;
            (csi.driver == names::DRIVER_NAME).then(|| StrataPv {
                name: pv.metadata.name.unwrap_or_default(),
                volume_handle: csi.volume_handle,
            })
        })
        .collect();
    let nodes: HashSet<String> = Api::<Node>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let now = Timestamp::now();
    let plan = housekeeping::plan(&volumes, &pvs, &nodes, now, &settings.policies);
    metrics.orphans.set(plan.orphans as i64);
    metrics.lost.set(plan.lost as i64);
    for action in plan.actions {
        fence.confirm().await?;
        if let Err(e) = apply(client, recorder, &volumes, &action).await {
            warn!(?action, error = %e, "housekeeping action failed");
        }
        csi_api::fault::point("controller.housekeeping.after-action");
    }
    if let Some(limit) = settings.stale_after {
        let storages = Api::<NodeStorage>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let stale = housekeeping::stale_nodes(&storages, now, limit);
        metrics.stale_nodes.set(stale.len() as i64);
        fence.confirm().await?;
        for ns in &storages {
            let Some(node) = ns.metadata.name.as_deref() else {
                continue;
            };
            let marked = ns.status.as_ref().is_some_and(|s| s.marked_stale());
            let age = stale.iter().find(|(n, _)| n == node).map(|(_, age)| *age);
            if let Err(e) = mark_stale(client, recorder, ns, node, age, marked, limit).await {
                warn!(%node, error = %e, "cannot record the staleness of the NodeStorage");
            }
        }
    }
    Ok(())
}

/// Keeps the NodeStorage's `Stale` condition (owned by the controller, server-side apply) in step
/// with its age: marks it True with a Warning Event when the agent stopped refreshing it, and back
/// to False with a Normal Event once it is fresh again. The condition is the episode's record, so
/// a new leader neither repeats nor misses an Event.
async fn mark_stale(
    client: &Client,
    recorder: &Recorder,
    ns: &NodeStorage,
    node: &str,
    age: Option<Duration>,
    marked: bool,
    limit: Duration,
) -> Result<(), kube::Error> {
    let (event, status, reason, message) = match (age, marked) {
        (Some(age), false) => {
            warn!(%node, age = age.as_secs(), "NodeStorage is stale");
            let note = format!(
                "status.updatedAt is {}s old (limit {}s): new volumes are not placed on this node and its capacity is reported as 0. Check the csi-agent pod on node {node}",
                age.as_secs(),
                limit.as_secs()
            );
            (
                Event {
                    type_: EventType::Warning,
                    reason: "Stale".into(),
                    note: Some(note.clone()),
                    action: "Admission".into(),
                    secondary: None,
                },
                "True",
                "AgentSilent",
                note,
            )
        }
        (None, true) => {
            info!(%node, "NodeStorage is fresh again");
            let note = format!(
                "the csi-agent on node {node} refreshed status.updatedAt again: the node takes new volumes"
            );
            (
                Event {
                    type_: EventType::Normal,
                    reason: "Fresh".into(),
                    note: Some(note.clone()),
                    action: "Admission".into(),
                    secondary: None,
                },
                "False",
                "AgentReporting",
                note,
            )
        }
        _ => return Ok(()),
    };
    let patch = serde_json::json!({
        "apiVersion": "strata.io/v1alpha1",
        "kind": "NodeStorage",
        "status": { "conditions": [{
            "type": names::CONDITION_STALE,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": Timestamp::now(),
        }]},
    });
    let params = PatchParams::apply(names::FIELD_MANAGER_CONTROLLER).force();
    Api::<NodeStorage>::all(client.clone())
        .patch_status(node, &params, &Patch::Apply(&patch))
        .await?;
    recorder.publish(&event, &ns.object_ref(&())).await
}

async fn apply(
    client: &Client,
    recorder: &Recorder,
    volumes: &[LogicalVolume],
    action: &Action,
) -> Result<(), kube::Error> {
    let api: Api<LogicalVolume> = Api::all(client.clone());
    let find = |name: &str| {
        volumes
            .iter()
            .find(|lv| lv.metadata.name.as_deref() == Some(name))
    };
    let annotate = |key: &str, value: &str| serde_json::json!({ "metadata": { "annotations": { key: value } } });
    let event = |lv: &LogicalVolume, reason: &str, note: String, kind: EventType| {
        let reference = lv.object_ref(&());
        let event = Event {
            type_: kind,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        async move { recorder.publish(&event, &reference).await }
    };
    let cluster_error = |e: crate::cluster::ClusterError| {
        kube::Error::Service(Box::new(std::io::Error::other(e.to_string())))
    };
    match action {
        Action::AnnotateBound { volume, pv } => {
            api.patch(
                volume,
                &PatchParams::default(),
                &Patch::Merge(annotate(ANNOTATION_PV, pv)),
            )
            .await?;
        }
        Action::ReportOrphan { volume, age } => {
            if let Some(lv) = find(volume) {
                let note = format!(
                    "no PersistentVolume uses this volume for {}s; delete the LogicalVolume if its data is not needed (or run the controller with --orphan-policy=delete)",
                    age.as_secs()
                );
                event(lv, "Orphaned", note, EventType::Warning).await?;
            }
        }
        Action::DeleteOrphan { volume } => {
            info!(%volume, "deleting orphan LogicalVolume (--orphan-policy=delete)");
            // No PV refers to it (the planner checked): the protection goes first.
            release_finalizer(&api, volume, names::FINALIZER_PV_PROTECTION)
                .await
                .map_err(cluster_error)?;
            api.delete(volume, &DeleteParams::default()).await?;
        }
        Action::ReleaseProtection { volume } => {
            info!(%volume, "no PersistentVolume refers to this deleted LogicalVolume: releasing its protection");
            release_finalizer(&api, volume, names::FINALIZER_PV_PROTECTION)
                .await
                .map_err(cluster_error)?;
        }
        Action::WarnHeld { volume, pv } => {
            if let Some(lv) = find(volume) {
                let note = format!(
                    "PersistentVolume {pv} still refers to this volume; delete the PVC instead (its reclaim policy then deletes the volume). Nothing is wiped while the PV exists"
                );
                event(lv, names::REASON_PV_PROTECTED, note, EventType::Warning).await?;
            }
            api.patch(
                volume,
                &PatchParams::default(),
                &Patch::Merge(annotate(ANNOTATION_HELD, pv)),
            )
            .await?;
        }
        Action::MarkLost { volume, node } => {
            api.patch(
                volume,
                &PatchParams::default(),
                &Patch::Merge(annotate(ANNOTATION_LOST, node)),
            )
            .await?;
            if let Some(lv) = find(volume) {
                let note = format!(
                    "node {node} was deleted; the data of this volume is gone with it. Delete the PVC to let its workload rebuild elsewhere (or run the controller with --node-loss-policy=delete-pvc)"
                );
                event(lv, "NodeLost", note, EventType::Warning).await?;
            }
        }
        Action::DeleteClaim { volume, pvc, pv } => {
            delete_lost_claim(client, volume, pvc, pv).await?;
        }
        Action::ReleaseFinalizer { volume } => {
            info!(%volume, "node is gone: releasing the finalizer of a deleted LogicalVolume");
            let patch = serde_json::json!({ "metadata": { "finalizers": null } });
            api.patch(volume, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
    }
    Ok(())
}

/// What became of a claim [`delete_lost_claim`] was asked to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    Deleted,
    /// Already gone.
    Gone,
    /// Not the claim the lost volume was made for (another uid, or bound elsewhere), or it changed
    /// between the read and the delete (uid precondition failed): left alone.
    Refused(String),
}

/// Deletes the claim of a lost volume (policy `delete-pvc`): re-reads it, checks it with
/// [`housekeeping::claim_to_delete`] and deletes with a uid precondition.
pub async fn delete_lost_claim(
    client: &Client,
    volume: &str,
    pvc: &csi_api::crd::PvcReference,
    pv: &str,
) -> Result<ClaimOutcome, kube::Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &pvc.namespace);
    let Some(claim) = claims.get_opt(&pvc.name).await? else {
        return Ok(ClaimOutcome::Gone);
    };
    let uid = match housekeeping::claim_to_delete(&claim, pvc, pv) {
        Ok(uid) => uid,
        Err(why) => {
            warn!(%volume, "{why}");
            return Ok(ClaimOutcome::Refused(why));
        }
    };
    info!(%volume, claim = %format!("{}/{}", pvc.namespace, pvc.name), %uid, "deleting the claim of a lost volume (--node-loss-policy=delete-pvc)");
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match claims.delete(&pvc.name, &params).await {
        Ok(_) => Ok(ClaimOutcome::Deleted),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(ClaimOutcome::Gone),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            warn!(%volume, error = %e, "the claim changed (uid precondition failed); left alone");
            Ok(ClaimOutcome::Refused(e.message.clone()))
        }
        Err(e) => Err(e),
    }
}
