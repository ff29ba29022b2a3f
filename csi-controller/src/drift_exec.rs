//! Carries out the recovery policy decided by [`crate::drift`], on the leader, once per
//! housekeeping period: gathers the facts (LogicalVolumes, Strata PVs, Nodes' Ready condition,
//! StorageClass parameters, and — only when some volume failed — the pods of the claims'
//! namespaces), and for each verdict:
//!
//! - `Report`, `Refuse`, `Wait`: one Event on the claim (and pod) and one count, until the
//!   verdict changes;
//! - `Drift`: re-reads the claim (recorded uid, still bound to the volume's PV) and the pod (same
//!   uid, still controlled by the StatefulSet), Events `DriftStarted` on both, deletes the claim
//!   with a uid precondition (`kubernetes.io/pvc-protection` keeps it until the pod is gone),
//!   then the pod with a uid precondition — immediately (grace 0) when the node is NotReady, as
//!   its kubelet cannot confirm a graceful stop. The StatefulSet recreates the pod and the claim;
//!   the scheduler places the claim on another node. The old LogicalVolume follows the normal
//!   deletion path (reclaim → DeleteVolume → pv-protection released → the agent wipes, or the
//!   lost-node path).
//!
//! A drift stays in flight until a new claim of the same name (another uid) is Bound, or until
//! the timeout; the brakes count it meanwhile. The drifts in flight are kept in the cluster, as
//! the annotation [`ANNOTATION_DRIFTS`] of the controller's Lease, written before the claim is
//! deleted and read at the start of every pass, so that a new leader counts the drifts its
//! predecessor started (and finishes them). Every write goes through the leader's
//! [`Fence`](crate::lease::Fence).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use csi_api::crd::{LogicalVolume, PvcReference};
use csi_api::names;
use k8s_openapi::api::core::v1::{
    Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::drift::{self, InFlight, PodFacts, Recovery, Trigger, Verdict, VolumeFacts};
use crate::housekeeping;
use crate::lease::{Fence, FenceError};
use crate::metrics::Metrics;
use crate::object_name::ANNOTATION_CSI_NAME;

/// The annotation of the controller's Lease that holds the drifts in flight: a JSON object,
/// volume name → record (StatefulSet, trigger, claim and pod with their uids, whether the pod
/// was deleted, when the drift started).
pub const ANNOTATION_DRIFTS: &str = "strata.io/drifts-in-flight";

/// A drift under way, as recorded on the Lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Drifting {
    statefulset: String,
    trigger: Trigger,
    claim: PvcReference,
    pod: PodFacts,
    pod_deleted: bool,
    /// The leader's clock when it recorded the drift (before deleting the claim).
    started: Time,
}

/// What stops a recovery pass.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error(transparent)]
    Fence(#[from] FenceError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "the Lease annotation {ANNOTATION_DRIFTS} cannot be read ({0}); no drift starts until it is fixed or removed"
    )]
    Record(String),
}

/// The executor; keep one per process (its in-flight list is the brakes' memory).
pub struct Drifter {
    client: Client,
    recorder: Recorder,
    settings: drift::Settings,
    timeout: Duration,
    metrics: Metrics,
    in_flight: BTreeMap<String, Drifting>,
    /// The record as last read from or written to the Lease.
    recorded: Option<String>,
    /// Verdicts already told (Event + count), by volume: told again only when they change.
    told: HashMap<String, String>,
}

impl Drifter {
    pub fn new(
        client: Client,
        settings: drift::Settings,
        timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "csi-controller".into(),
                instance: None,
            },
        );
        Drifter {
            client,
            recorder,
            settings,
            timeout,
            metrics,
            in_flight: BTreeMap::new(),
            recorded: None,
            told: HashMap::new(),
        }
    }

    /// The drifts in flight.
    pub fn in_flight(&self) -> Vec<InFlight> {
        self.in_flight
            .iter()
            .map(|(volume, d)| InFlight {
                volume: volume.clone(),
                statefulset: d.statefulset.clone(),
            })
            .collect()
    }

    /// One pass, as the leader that `fence` confirms: read the drifts in flight from the Lease,
    /// follow them up, then decide and act. Returns the verdicts.
    pub async fn pass(&mut self, fence: &mut Fence) -> Result<Vec<Verdict>, DriftError> {
        self.load(fence).await?;
        self.follow_up(fence).await?;
        let facts = self.gather().await?;
        let verdicts = drift::decide(&facts, &self.in_flight(), Timestamp::now(), &self.settings);
        let current: HashSet<&str> = verdicts.iter().map(volume_of).collect();
        self.told
            .retain(|volume, _| current.contains(volume.as_str()));
        for verdict in &verdicts {
            match self.apply(verdict, fence).await {
                Ok(()) => {}
                Err(DriftError::Kube(e)) => {
                    let (volume, trigger) = (volume_of(verdict), trigger_of(verdict));
                    warn!(%volume, %trigger, error = %e, "drift step failed; retried next pass");
                    self.metrics.drift(trigger.label(), "failed");
                }
                Err(e) => return Err(e),
            }
        }
        self.metrics
            .drifts_in_flight
            .set(self.in_flight.len() as i64);
        Ok(verdicts)
    }

    /// Reads the drifts in flight from the Lease (the record of whoever led before).
    async fn load(&mut self, fence: &Fence) -> Result<(), DriftError> {
        let text = fence.annotation(ANNOTATION_DRIFTS).await?;
        let parsed: BTreeMap<String, Drifting> = match &text {
            Some(t) => serde_json::from_str(t).map_err(|e| DriftError::Record(e.to_string()))?,
            None => BTreeMap::new(),
        };
        if parsed != self.in_flight {
            info!(
                in_flight = parsed.len(),
                "drifts in flight read from the Lease"
            );
        }
        self.in_flight = parsed;
        self.recorded = text;
        self.metrics
            .drifts_in_flight
            .set(self.in_flight.len() as i64);
        Ok(())
    }

    /// Writes the drifts in flight to the Lease if they changed (as the leader only).
    async fn save(&mut self, fence: &mut Fence) -> Result<(), DriftError> {
        let text = (!self.in_flight.is_empty())
            .then(|| serde_json::to_string(&self.in_flight))
            .transpose()
            .map_err(|e| DriftError::Record(e.to_string()))?;
        if text != self.recorded {
            fence
                .set_annotation(ANNOTATION_DRIFTS, text.as_deref())
                .await?;
            self.recorded = text;
        }
        self.metrics
            .drifts_in_flight
            .set(self.in_flight.len() as i64);
        Ok(())
    }

    async fn gather(&self) -> Result<Vec<VolumeFacts>, kube::Error> {
        let lp = ListParams::default();
        let volumes = Api::<LogicalVolume>::all(self.client.clone())
            .list(&lp)
            .await?
            .items;
        let now = Timestamp::now();
        let nodes: HashMap<String, Option<Timestamp>> = Api::<Node>::all(self.client.clone())
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, not_ready_since(&n, now))))
            .collect();
        let candidates: Vec<&LogicalVolume> = volumes
            .iter()
            // Snapshots have no claim or pod: nothing to drift.
            .filter(|lv| !lv.spec.is_snapshot())
            .filter(|lv| {
                let disk = disk_failed(lv);
                let node = nodes.get(&lv.spec.node_name).copied().flatten().is_some();
                disk || node
            })
            .collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // PV by volume handle: (PV name, StorageClass name).
        let pvs: HashMap<String, (String, String)> =
            Api::<PersistentVolume>::all(self.client.clone())
                .list(&lp)
                .await?
                .items
                .into_iter()
                .filter_map(|pv| {
                    let name = pv.metadata.name?;
                    let spec = pv.spec?;
                    let csi = spec.csi?;
                    (csi.driver == names::DRIVER_NAME).then(|| {
                        (
                            csi.volume_handle,
                            (name, spec.storage_class_name.unwrap_or_default()),
                        )
                    })
                })
                .collect();
        let classes: HashMap<String, (Option<Recovery>, Option<Recovery>)> =
            Api::<StorageClass>::all(self.client.clone())
                .list(&lp)
                .await?
                .items
                .into_iter()
                .filter_map(|sc| {
                    let params = sc.parameters.unwrap_or_default();
                    let get = |key: &str| params.get(key).and_then(|v| v.parse::<Recovery>().ok());
                    Some((
                        sc.metadata.name?,
                        (
                            get(names::PARAM_ON_DISK_FAILURE),
                            get(names::PARAM_ON_NODE_FAILURE),
                        ),
                    ))
                })
                .collect();
        let mut pods_by_ns: HashMap<String, Vec<Pod>> = HashMap::new();
        let mut claims_by_ns: HashMap<String, Vec<PersistentVolumeClaim>> = HashMap::new();
        for ns in candidates
            .iter()
            .filter_map(|lv| lv.spec.pvc.as_ref().map(|c| c.namespace.clone()))
            .collect::<HashSet<_>>()
        {
            let pods = Api::<Pod>::namespaced(self.client.clone(), &ns)
                .list(&lp)
                .await?
                .items;
            let claims = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &ns)
                .list(&lp)
                .await?
                .items;
            pods_by_ns.insert(ns.clone(), pods);
            claims_by_ns.insert(ns, claims);
        }
        let mut out = Vec::new();
        for lv in candidates {
            let Some(volume) = lv.metadata.name.clone() else {
                continue;
            };
            let pv = pvs.get(&volume).or_else(|| {
                lv.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_CSI_NAME))
                    .and_then(|csi| pvs.get(csi))
            });
            let (on_disk_failure, on_node_failure) = pv
                .and_then(|(_, class)| classes.get(class))
                .copied()
                .unwrap_or((None, None));
            let pods = match &lv.spec.pvc {
                Some(claim) => pods_by_ns
                    .get(&claim.namespace)
                    .into_iter()
                    .flatten()
                    .filter(|p| uses_claim(p, &claim.name))
                    .map(pod_facts)
                    .collect(),
                None => Vec::new(),
            };
            let claim_current = match (&lv.spec.pvc, pv) {
                (Some(claim), Some((pv, _))) => claims_by_ns
                    .get(&claim.namespace)
                    .into_iter()
                    .flatten()
                    .find(|c| c.metadata.name.as_deref() == Some(claim.name.as_str()))
                    .is_some_and(|c| housekeeping::claim_to_delete(c, claim, pv).is_ok()),
                _ => false,
            };
            out.push(VolumeFacts {
                claim_current,
                volume,
                node: lv.spec.node_name.clone(),
                deleting: lv.metadata.deletion_timestamp.is_some(),
                disk_failed: disk_failed(lv),
                node_not_ready_since: nodes.get(&lv.spec.node_name).copied().flatten(),
                claim: lv.spec.pvc.clone(),
                pv: pv.map(|(name, _)| name.clone()),
                on_disk_failure,
                on_node_failure,
                pods,
            });
        }
        Ok(out)
    }

    /// Tells a verdict once (Event on the claim and the pods, one count).
    async fn tell(
        &mut self,
        verdict: &Verdict,
        key: String,
        facts: (&str, &str),
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let volume = volume_of(verdict).to_owned();
        if self.told.get(&volume) == Some(&key) {
            return;
        }
        let (trigger, outcome) = facts;
        info!(%volume, trigger, outcome, "{note}");
        self.metrics.drift(trigger, outcome);
        let refs = self.claim_and_pod_refs(&volume).await;
        self.publish(&refs, type_, reason, note).await;
        self.told.insert(volume, key);
    }

    /// References of the volume's claim and its pods, read fresh (best effort: for Events).
    async fn claim_and_pod_refs(&self, volume: &str) -> Vec<ObjectReference> {
        let Ok(Some(lv)) = Api::<LogicalVolume>::all(self.client.clone())
            .get_opt(volume)
            .await
        else {
            return Vec::new();
        };
        let Some(claim) = lv.spec.pvc else {
            return vec![lv.object_ref(&())];
        };
        let mut refs = vec![claim_ref(&claim)];
        if let Ok(pods) = Api::<Pod>::namespaced(self.client.clone(), &claim.namespace)
            .list(&ListParams::default())
            .await
        {
            refs.extend(
                pods.items
                    .iter()
                    .filter(|p| uses_claim(p, &claim.name))
                    .map(|p| p.object_ref(&())),
            );
        }
        refs
    }

    async fn publish(
        &self,
        refs: &[ObjectReference],
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Recovery".into(),
            secondary: None,
        };
        for reference in refs {
            if let Err(e) = self.recorder.publish(&event, reference).await {
                warn!(reason, error = %e, "cannot record the Event");
            }
        }
    }

    async fn apply(&mut self, verdict: &Verdict, fence: &mut Fence) -> Result<(), DriftError> {
        match verdict {
            Verdict::Report { volume, trigger } => {
                let (param, flag) = param_and_flag(*trigger);
                let note = format!(
                    "volume {volume}: {}; the recovery policy is report, so nothing moves. To let a StatefulSet rebuild elsewhere, set {param}: drift on the StorageClass (or run the controller with {flag}=drift), or delete the PVC and then the pod yourself",
                    what_failed(*trigger)
                );
                self.tell(
                    verdict,
                    format!("report/{trigger}"),
                    (trigger.label(), "reported"),
                    EventType::Warning,
                    "RecoveryReported",
                    note,
                )
                .await;
            }
            Verdict::Refuse {
                volume,
                trigger,
                why,
            } => {
                let note = format!(
                    "volume {volume}: {}; the recovery policy is drift but nothing is moved: {why}. Recreate the workload elsewhere by hand (delete the PVC, then the pod)",
                    what_failed(*trigger)
                );
                self.tell(
                    verdict,
                    format!("refuse/{trigger}/{why}"),
                    (trigger.label(), "refused"),
                    EventType::Warning,
                    "DriftRefused",
                    note,
                )
                .await;
            }
            Verdict::Wait {
                volume,
                trigger,
                brake,
            } => {
                let note = format!(
                    "volume {volume}: {}; drift waits: {brake} (--max-drifts-in-flight={}, one per StatefulSet)",
                    what_failed(*trigger),
                    self.settings.max_in_flight
                );
                self.tell(
                    verdict,
                    format!("wait/{trigger}/{brake:?}"),
                    (trigger.label(), "waiting"),
                    EventType::Normal,
                    "DriftWaiting",
                    note,
                )
                .await;
            }
            Verdict::Drift {
                volume,
                trigger,
                claim,
                pv,
                pod,
                statefulset,
            } => {
                self.start(volume, *trigger, claim, pv, pod, statefulset, fence)
                    .await?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn start(
        &mut self,
        volume: &str,
        trigger: Trigger,
        claim: &PvcReference,
        pv: &str,
        pod: &PodFacts,
        statefulset: &str,
        fence: &mut Fence,
    ) -> Result<(), DriftError> {
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &claim.namespace);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        // Re-read both: the decision was made from lists that may be a moment old.
        let Some(current) = claims.get_opt(&claim.name).await? else {
            self.changed(
                volume,
                trigger,
                "claim_changed",
                "the claim is gone; no drift",
            );
            return Ok(());
        };
        let claim_uid = match housekeeping::claim_to_delete(&current, claim, pv) {
            Ok(uid) => uid,
            Err(why) => {
                self.changed(volume, trigger, "claim_changed", &why);
                return Ok(());
            }
        };
        let current_pod = pods.get_opt(&pod.name).await?;
        if current_pod.as_ref().map(pod_facts).as_ref() != Some(pod) {
            self.changed(
                volume,
                trigger,
                "pod_changed",
                "the pod changed since the decision; no drift now",
            );
            return Ok(());
        }
        // Recorded before anything is deleted: a new leader counts it even if this replica
        // stops right after the deletion.
        self.in_flight.insert(
            volume.to_owned(),
            Drifting {
                statefulset: statefulset.to_owned(),
                trigger,
                claim: claim.clone(),
                pod: pod.clone(),
                pod_deleted: false,
                started: Time(Timestamp::now()),
            },
        );
        self.save(fence).await?;
        let claim_ref = current.object_ref(&());
        let pod_ref = current_pod
            .as_ref()
            .map(|p| p.object_ref(&()))
            .unwrap_or_default();
        let refs = [claim_ref.clone(), pod_ref.clone()];
        self.publish(
            &refs,
            EventType::Warning,
            "DriftStarted",
            format!(
                "volume {volume}: {}; recovery policy drift: deleting claim {}/{} and then pod {} so that StatefulSet {statefulset} recreates both on another node. The data of the old volume is not copied",
                what_failed(trigger),
                claim.namespace,
                claim.name,
                pod.name
            ),
        )
        .await;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(claim_uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        fence.confirm().await?;
        match claims.delete(&claim.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                let why = format!("the claim changed under the drift (uid precondition): {e}");
                self.changed(volume, trigger, "claim_changed", &why);
                self.in_flight.remove(volume);
                self.save(fence).await?;
                return Ok(());
            }
            Err(e) => {
                self.in_flight.remove(volume);
                self.save(fence).await?;
                return Err(e.into());
            }
        }
        info!(%volume, claim = %claim.name, uid = %claim_uid, %statefulset, "drift: claim deleted");
        self.publish(
            &refs,
            EventType::Normal,
            "DriftClaimDeleted",
            format!(
                "claim {}/{} (uid {claim_uid}) deleted; it goes once pod {} is gone",
                claim.namespace, claim.name, pod.name
            ),
        )
        .await;
        self.metrics.drift(trigger.label(), "started");
        self.told.remove(volume);
        self.delete_pod(volume, fence).await
    }

    /// A drift not started because the claim or the pod changed: logged and counted once until
    /// the verdict changes.
    fn changed(&mut self, volume: &str, trigger: Trigger, outcome: &str, why: &str) {
        let key = format!("{outcome}/{trigger}");
        if self.told.get(volume) == Some(&key) {
            return;
        }
        warn!(%volume, %trigger, "{why}; left alone");
        self.metrics.drift(trigger.label(), outcome);
        self.told.insert(volume.to_owned(), key);
    }

    /// Deletes the pod of a drift in flight (uid precondition); retried next pass on failure.
    async fn delete_pod(&mut self, volume: &str, fence: &mut Fence) -> Result<(), DriftError> {
        let Some(d) = self.in_flight.get(volume).cloned() else {
            return Ok(());
        };
        fence.confirm().await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &d.pod.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(d.pod.uid.clone()),
                resource_version: None,
            }),
            // The kubelet of a NotReady node cannot confirm a graceful stop.
            grace_period_seconds: (d.trigger == Trigger::Node).then_some(0),
            ..Default::default()
        };
        let note = match pods.delete(&d.pod.name, &params).await {
            Ok(_) => format!(
                "pod {} (uid {}) deleted{}; StatefulSet {} recreates it with a new claim",
                d.pod.name,
                d.pod.uid,
                if d.trigger == Trigger::Node {
                    " without a grace period (its node is NotReady)"
                } else {
                    ""
                },
                d.statefulset
            ),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => format!(
                "pod {} (uid {}) was already gone or replaced",
                d.pod.name, d.pod.uid
            ),
            Err(e) => return Err(e.into()),
        };
        info!(%volume, pod = %d.pod.name, "drift: {note}");
        if let Some(entry) = self.in_flight.get_mut(volume) {
            entry.pod_deleted = true;
        }
        self.save(fence).await?;
        self.publish(
            &[pod_ref(&d.pod), claim_ref(&d.claim)],
            EventType::Normal,
            "DriftPodDeleted",
            note,
        )
        .await;
        Ok(())
    }

    /// Retries pod deletions, completes drifts whose new claim is Bound, times out the rest.
    async fn follow_up(&mut self, fence: &mut Fence) -> Result<(), DriftError> {
        let volumes: Vec<String> = self.in_flight.keys().cloned().collect();
        for volume in volumes {
            let Some(d) = self.in_flight.get(&volume).cloned() else {
                continue;
            };
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(self.client.clone(), &d.claim.namespace);
            let claim_now = claims.get_opt(&d.claim.name).await?;
            if !d.pod_deleted {
                let untouched = claim_now.as_ref().is_some_and(|c| {
                    c.metadata.uid.as_deref() == Some(d.claim.uid.as_str())
                        && c.metadata.deletion_timestamp.is_none()
                });
                if untouched {
                    // Recorded, but the leader stopped before deleting the claim: not started.
                    // The next decision starts it again, with every check made afresh.
                    info!(%volume, "drift recorded but its claim was never deleted: dropped");
                    self.in_flight.remove(&volume);
                    self.save(fence).await?;
                    continue;
                }
                match self.delete_pod(&volume, fence).await {
                    Ok(()) => {}
                    Err(DriftError::Kube(e)) => {
                        warn!(%volume, error = %e, "drift: pod deletion failed; retried next pass");
                        self.metrics.drift(d.trigger.label(), "failed");
                    }
                    Err(e) => return Err(e),
                }
            }
            let new = claim_now.filter(|c| {
                c.metadata.uid.as_deref() != Some(d.claim.uid.as_str())
                    && c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
            });
            if let Some(new) = new {
                let bound = new
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.clone())
                    .unwrap_or_default();
                info!(%volume, claim = %d.claim.name, %bound, "drift completed");
                self.metrics.drift(d.trigger.label(), "completed");
                self.in_flight.remove(&volume);
                self.save(fence).await?;
                self.publish(
                    &[new.object_ref(&())],
                    EventType::Normal,
                    "DriftCompleted",
                    format!(
                        "StatefulSet {} recreated claim {} (bound to {bound}); the old volume {volume} is released by the normal deletion path",
                        d.statefulset, d.claim.name
                    ),
                )
                .await;
            } else if Duration::try_from(Timestamp::now().duration_since(d.started.0))
                .unwrap_or_default()
                >= self.timeout
            {
                warn!(%volume, "drift timed out");
                self.metrics.drift(d.trigger.label(), "timed_out");
                self.in_flight.remove(&volume);
                self.save(fence).await?;
                self.publish(
                    &[claim_ref(&d.claim), pod_ref(&d.pod)],
                    EventType::Warning,
                    "DriftTimedOut",
                    format!(
                        "no new claim {}/{} was bound within {}s of the drift of {volume}; check the StatefulSet {} (pod Pending? no node with capacity?). The brake no longer counts this drift",
                        d.claim.namespace,
                        d.claim.name,
                        self.timeout.as_secs(),
                        d.statefulset
                    ),
                )
                .await;
            }
        }
        self.metrics
            .drifts_in_flight
            .set(self.in_flight.len() as i64);
        Ok(())
    }
}

fn volume_of(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Report { volume, .. }
        | Verdict::Refuse { volume, .. }
        | Verdict::Wait { volume, .. }
        | Verdict::Drift { volume, .. } => volume,
    }
}

fn trigger_of(verdict: &Verdict) -> Trigger {
    match verdict {
        Verdict::Report { trigger, .. }
        | Verdict::Refuse { trigger, .. }
        | Verdict::Wait { trigger, .. }
        | Verdict::Drift { trigger, .. } => *trigger,
    }
}

fn what_failed(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::Disk => "its disk failed (condition DiskFailed)",
        Trigger::Node => "its node is NotReady past --node-failure-grace",
    }
}

fn param_and_flag(trigger: Trigger) -> (&'static str, &'static str) {
    match trigger {
        Trigger::Disk => (names::PARAM_ON_DISK_FAILURE, "--on-disk-failure"),
        Trigger::Node => (names::PARAM_ON_NODE_FAILURE, "--on-node-failure"),
    }
}

fn disk_failed(lv: &LogicalVolume) -> bool {
    lv.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == names::CONDITION_DISK_FAILED && c.status == "True")
    })
}

/// Since when the node's Ready condition is not True (its last transition); `None` when Ready
/// or when it reports no Ready condition at all (not judged).
fn not_ready_since(node: &Node, now: Timestamp) -> Option<Timestamp> {
    let ready = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (ready.status != "True").then(|| ready.last_transition_time.as_ref().map_or(now, |t| t.0))
}

fn uses_claim(pod: &Pod, claim: &str) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.volumes.iter().flatten().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == claim)
        })
    })
}

fn pod_facts(pod: &Pod) -> PodFacts {
    let statefulset = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| {
            o.controller == Some(true) && o.kind == "StatefulSet" && o.api_version == "apps/v1"
        })
        .map(|o| o.name.clone());
    PodFacts {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        statefulset,
    }
}

fn pod_ref(pod: &PodFacts) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(pod.namespace.clone()),
        name: Some(pod.name.clone()),
        uid: (!pod.uid.is_empty()).then(|| pod.uid.clone()),
        ..Default::default()
    }
}

fn claim_ref(claim: &PvcReference) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: Some(claim.namespace.clone()),
        name: Some(claim.name.clone()),
        uid: (!claim.uid.is_empty()).then(|| claim.uid.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use k8s_openapi::jiff::SignedDuration;

    fn node(ready: Option<(&str, Timestamp)>) -> Node {
        Node {
            status: Some(NodeStatus {
                conditions: ready.map(|(status, at)| {
                    vec![NodeCondition {
                        type_: "Ready".into(),
                        status: status.into(),
                        last_transition_time: Some(Time(at)),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_not_ready_clock_is_the_ready_conditions_last_transition() {
        let now = Timestamp::now();
        let then = now.checked_sub(SignedDuration::from_secs(90)).unwrap();
        assert_eq!(
            not_ready_since(&node(Some(("False", then))), now),
            Some(then)
        );
        assert_eq!(
            not_ready_since(&node(Some(("Unknown", then))), now),
            Some(then)
        );
        // Ready again (a flap): no clock at all.
        assert_eq!(not_ready_since(&node(Some(("True", then))), now), None);
        assert_eq!(not_ready_since(&node(None), now), None);
    }

    #[test]
    fn only_a_controlling_apps_v1_statefulset_counts() {
        let owner = |kind: &str, controller| OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: "web".into(),
            uid: "u".into(),
            controller: Some(controller),
            ..Default::default()
        };
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-0".into());
        pod.metadata.owner_references = Some(vec![owner("StatefulSet", true)]);
        assert_eq!(pod_facts(&pod).statefulset.as_deref(), Some("web"));
        pod.metadata.owner_references = Some(vec![owner("StatefulSet", false)]);
        assert_eq!(pod_facts(&pod).statefulset, None);
        pod.metadata.owner_references = Some(vec![owner("ReplicaSet", true)]);
        assert_eq!(pod_facts(&pod).statefulset, None);
        pod.metadata.owner_references = None;
        assert_eq!(pod_facts(&pod).statefulset, None);
    }
}
