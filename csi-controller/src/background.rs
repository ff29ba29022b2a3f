//! The leader's background loop: every period, list LogicalVolumes, Strata PVs and Nodes, run the
//! [`housekeeping`](crate::housekeeping) planner and apply its actions through kube, with Events
//! that tell the operator what happened and what to do.

use std::collections::HashSet;
use std::time::Duration;

use csi_api::crd::LogicalVolume;
use csi_api::names;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::housekeeping::{self, ANNOTATION_LOST, ANNOTATION_PV, Action, Policies, StrataPv};
use crate::lease::Elector;
use crate::metrics::Metrics;

/// Runs until `shutdown`: leads or follows the Lease, and when leading, keeps the books.
pub async fn run(
    client: Client,
    elector: Elector,
    policies: Policies,
    period: Duration,
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
    let mut leading = false;
    loop {
        match elector.try_lead().await {
            Ok(now_leading) => {
                if now_leading != leading {
                    info!(leading = now_leading, "background work leadership changed");
                }
                leading = now_leading;
            }
            Err(e) => {
                warn!(error = %e, "cannot reach the Lease; standing by");
                leading = false;
            }
        }
        if leading && let Err(e) = keep_books(&client, &recorder, &policies, &metrics).await {
            warn!(error = %e, "housekeeping pass failed; retrying next period");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

async fn keep_books(
    client: &Client,
    recorder: &Recorder,
    policies: &Policies,
    metrics: &Metrics,
) -> Result<(), kube::Error> {
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
    let plan = housekeeping::plan(&volumes, &pvs, &nodes, Timestamp::now(), policies);
    metrics.orphans.set(plan.orphans as i64);
    metrics.lost.set(plan.lost as i64);
    for action in plan.actions {
        if let Err(e) = apply(client, recorder, &volumes, &action).await {
            warn!(?action, error = %e, "housekeeping action failed");
        }
    }
    Ok(())
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
            api.delete(volume, &DeleteParams::default()).await?;
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
        Action::DeleteClaim { volume, pvc } => {
            info!(%volume, claim = %format!("{}/{}", pvc.namespace, pvc.name), "deleting the claim of a lost volume (--node-loss-policy=delete-pvc)");
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &pvc.namespace);
            match claims.delete(&pvc.name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
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
