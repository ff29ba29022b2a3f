//! Recovery policy, as a pure decision: which volumes on a failed disk (LogicalVolume condition
//! `DiskFailed` True) or on a node NotReady longer than the grace period are *drifted* — their
//! claim and then their StatefulSet pod deleted, so that the StatefulSet recreates both and the
//! scheduler places the new claim elsewhere — and which are only reported, refused or held back
//! by the brakes. [`crate::drift_exec`] gathers the facts and carries the verdicts out; this
//! module has no I/O.
//!
//! Policy per StorageClass (`strata.io/on-disk-failure`, `strata.io/on-node-failure`), else the
//! controller's cluster default; `report` moves nothing.
//!
//! Brakes: at most `max_in_flight` drifts in flight in the cluster, at most one per StatefulSet,
//! never a pod that is not controlled by a StatefulSet, never a claim that the StatefulSet would
//! not recreate (its name is not `<template>-<pod>`).

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use csi_api::crd::PvcReference;
use k8s_openapi::jiff::Timestamp;

/// What to do when a volume's disk or node fails: csi-api's one owner of the parameter values.
pub use csi_api::names::RecoveryPolicy as Recovery;

/// What failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The volume has extents on a failing or missing disk (`DiskFailed` True).
    Disk,
    /// The volume's node has been NotReady longer than the grace period.
    Node,
}

impl Trigger {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Disk => "disk",
            Trigger::Node => "node",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The controller's settings for recovery.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// For classes without `strata.io/on-disk-failure`.
    pub disk_default: Recovery,
    /// For classes without `strata.io/on-node-failure`.
    pub node_default: Recovery,
    /// How long a node must be NotReady before its volumes count as failed.
    pub node_grace: Duration,
    /// Drifts in flight in the whole cluster, at most.
    pub max_in_flight: usize,
}

/// A pod that uses a claim.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The name of the StatefulSet that controls the pod (controller ownerReference of kind
    /// StatefulSet), if any.
    pub statefulset: Option<String>,
}

/// Everything the decision needs about one LogicalVolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeFacts {
    pub volume: String,
    pub node: String,
    /// The LogicalVolume is being deleted (nothing to recover).
    pub deleting: bool,
    /// The `DiskFailed` condition is True.
    pub disk_failed: bool,
    /// The node's Ready condition is not True, since then (its last transition). `None`: Ready,
    /// or the Node object is gone (the lost-node path of housekeeping handles that).
    pub node_not_ready_since: Option<Timestamp>,
    /// The claim the volume was made for (uid recorded by the provisioner).
    pub claim: Option<PvcReference>,
    /// The volume's PersistentVolume.
    pub pv: Option<String>,
    /// The claim of that name exists with the recorded uid and is bound to `pv`. False for the
    /// old volume of a finished drift (its StatefulSet made a new claim under the same name) or
    /// a claim deleted by someone else: such a volume is left to the normal deletion path.
    pub claim_current: bool,
    /// The class's parameters (`None` = not set there, the default applies).
    pub on_disk_failure: Option<Recovery>,
    pub on_node_failure: Option<Recovery>,
    /// The pods that use the claim.
    pub pods: Vec<PodFacts>,
}

/// A drift under way, as the executor remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub volume: String,
    /// `namespace/name` of the StatefulSet.
    pub statefulset: String,
}

/// Why a drift is refused (the operator must act).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No claim with a uid or no PV: nothing that a StatefulSet would recreate.
    NotBound,
    /// No pod uses the claim: a StatefulSet recreates a claim only with its pod.
    NoPod,
    /// A pod that uses the claim is not controlled by a StatefulSet (value: the pod).
    NotStatefulSet(String),
    /// The claim's name is not `<template>-<pod>`: the StatefulSet would not recreate it.
    NotTemplateClaim,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotBound => f.write_str("the volume has no bound claim with a recorded uid"),
            Refusal::NoPod => f.write_str(
                "no pod uses the claim (a StatefulSet recreates a claim only with its pod)",
            ),
            Refusal::NotStatefulSet(pod) => write!(
                f,
                "pod {pod} is not controlled by a StatefulSet; only StatefulSet pods are drifted"
            ),
            Refusal::NotTemplateClaim => f.write_str(
                "the claim is not one of its StatefulSet's volumeClaimTemplates (<template>-<pod>)",
            ),
        }
    }
}

/// Which brake holds a drift back (it is retried next pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Brake {
    /// `max_in_flight` drifts are already in flight.
    ClusterLimit,
    /// A drift of the same StatefulSet is in flight.
    StatefulSetBusy,
}

impl fmt::Display for Brake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Brake::ClusterLimit => {
                f.write_str("the cluster's limit of drifts in flight is reached")
            }
            Brake::StatefulSetBusy => {
                f.write_str("another volume of the same StatefulSet is drifting")
            }
        }
    }
}

/// The decision for one failed volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The policy is `report`: Events only.
    Report { volume: String, trigger: Trigger },
    /// The policy is `drift` but the volume cannot be drifted.
    Refuse {
        volume: String,
        trigger: Trigger,
        why: Refusal,
    },
    /// The policy is `drift` but a brake holds it back for now.
    Wait {
        volume: String,
        trigger: Trigger,
        brake: Brake,
    },
    /// Delete `claim` (uid precondition, still bound to `pv`), then `pod` (uid precondition).
    Drift {
        volume: String,
        trigger: Trigger,
        claim: PvcReference,
        pv: String,
        pod: PodFacts,
        /// `namespace/name`.
        statefulset: String,
    },
}

/// Which trigger applies to the volume now, if any: a failed disk first, then a node NotReady
/// for at least the grace period (a node that came back Ready has no `since`, so a flap restarts
/// the clock).
pub fn trigger(facts: &VolumeFacts, now: Timestamp, node_grace: Duration) -> Option<Trigger> {
    if facts.disk_failed {
        return Some(Trigger::Disk);
    }
    let since = facts.node_not_ready_since?;
    let down = Duration::try_from(now.duration_since(since)).unwrap_or_default();
    (down >= node_grace).then_some(Trigger::Node)
}

/// Decides, for every failed volume not already drifting, what to do; see the module
/// documentation. Volumes are taken in name order, so that the brakes pick the same ones on
/// every pass.
pub fn decide(
    volumes: &[VolumeFacts],
    in_flight: &[InFlight],
    now: Timestamp,
    settings: &Settings,
) -> Vec<Verdict> {
    let drifting: HashSet<&str> = in_flight.iter().map(|f| f.volume.as_str()).collect();
    let mut busy: HashSet<String> = in_flight.iter().map(|f| f.statefulset.clone()).collect();
    let mut count = in_flight.len();
    let mut sorted: Vec<&VolumeFacts> = volumes.iter().collect();
    sorted.sort_by(|a, b| a.volume.cmp(&b.volume));
    let mut out = Vec::new();
    for facts in sorted {
        if facts.deleting || drifting.contains(facts.volume.as_str()) {
            continue;
        }
        if facts.claim.is_some() && facts.pv.is_some() && !facts.claim_current {
            continue;
        }
        let Some(trigger) = trigger(facts, now, settings.node_grace) else {
            continue;
        };
        let volume = facts.volume.clone();
        let policy = match trigger {
            Trigger::Disk => facts.on_disk_failure.unwrap_or(settings.disk_default),
            Trigger::Node => facts.on_node_failure.unwrap_or(settings.node_default),
        };
        if policy == Recovery::Report {
            out.push(Verdict::Report { volume, trigger });
            continue;
        }
        let (claim, pv) = match (&facts.claim, &facts.pv) {
            (Some(claim), Some(pv)) if !claim.uid.is_empty() => (claim.clone(), pv.clone()),
            _ => {
                out.push(Verdict::Refuse {
                    volume,
                    trigger,
                    why: Refusal::NotBound,
                });
                continue;
            }
        };
        let refuse = |why| Verdict::Refuse {
            volume: volume.clone(),
            trigger,
            why,
        };
        if facts.pods.is_empty() {
            out.push(refuse(Refusal::NoPod));
            continue;
        }
        if let Some(pod) = facts.pods.iter().find(|p| p.statefulset.is_none()) {
            out.push(refuse(Refusal::NotStatefulSet(format!(
                "{}/{}",
                pod.namespace, pod.name
            ))));
            continue;
        }
        // ReadWriteOnce on one node: one pod. Several (e.g. a pod being replaced) is not a
        // state to act in; the next pass sees it settled.
        let [pod] = facts.pods.as_slice() else {
            out.push(refuse(Refusal::NotStatefulSet(format!(
                "{} pods",
                facts.pods.len()
            ))));
            continue;
        };
        if !claim.name.ends_with(&format!("-{}", pod.name)) || claim.namespace != pod.namespace {
            out.push(refuse(Refusal::NotTemplateClaim));
            continue;
        }
        let statefulset = format!(
            "{}/{}",
            pod.namespace,
            pod.statefulset.as_deref().unwrap_or_default()
        );
        let brake = if busy.contains(&statefulset) {
            Some(Brake::StatefulSetBusy)
        } else if count >= settings.max_in_flight {
            Some(Brake::ClusterLimit)
        } else {
            None
        };
        if let Some(brake) = brake {
            out.push(Verdict::Wait {
                volume,
                trigger,
                brake,
            });
            continue;
        }
        busy.insert(statefulset.clone());
        count += 1;
        out.push(Verdict::Drift {
            volume,
            trigger,
            claim,
            pv,
            pod: pod.clone(),
            statefulset,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    const GRACE: Duration = Duration::from_secs(300);

    fn settings(default: Recovery, max: usize) -> Settings {
        Settings {
            disk_default: default,
            node_default: default,
            node_grace: GRACE,
            max_in_flight: max,
        }
    }

    /// Volume `pvc-<sts>-<ordinal>` of pod `<sts>-<ordinal>` (claim `data-<sts>-<ordinal>`).
    fn volume(sts: &str, ordinal: u32) -> VolumeFacts {
        let pod = format!("{sts}-{ordinal}");
        VolumeFacts {
            volume: format!("pvc-{pod}"),
            node: format!("node-{ordinal}"),
            deleting: false,
            disk_failed: false,
            node_not_ready_since: None,
            claim: Some(PvcReference {
                namespace: "db".into(),
                name: format!("data-{pod}"),
                uid: format!("uid-claim-{pod}"),
            }),
            pv: Some(format!("pv-{pod}")),
            claim_current: true,
            on_disk_failure: None,
            on_node_failure: None,
            pods: vec![PodFacts {
                namespace: "db".into(),
                name: pod.clone(),
                uid: format!("uid-pod-{pod}"),
                statefulset: Some(sts.into()),
            }],
        }
    }

    fn disk_failed(mut v: VolumeFacts) -> VolumeFacts {
        v.disk_failed = true;
        v
    }

    fn not_ready_for(mut v: VolumeFacts, now: Timestamp, secs: i64) -> VolumeFacts {
        v.node_not_ready_since = Some(now.checked_sub(SignedDuration::from_secs(secs)).unwrap());
        v
    }

    fn drifted(verdicts: &[Verdict]) -> Vec<(&str, &str)> {
        verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Drift {
                    volume,
                    statefulset,
                    ..
                } => Some((volume.as_str(), statefulset.as_str())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn healthy_volumes_get_no_verdict() {
        let now = Timestamp::now();
        let v = decide(
            &[volume("web", 0), volume("web", 1)],
            &[],
            now,
            &settings(Recovery::Drift, 3),
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn disk_failure_drifts_the_claim_and_pod_under_drift() {
        let now = Timestamp::now();
        let v = decide(
            &[disk_failed(volume("web", 0))],
            &[],
            now,
            &settings(Recovery::Drift, 3),
        );
        assert_eq!(
            v,
            vec![Verdict::Drift {
                volume: "pvc-web-0".into(),
                trigger: Trigger::Disk,
                claim: PvcReference {
                    namespace: "db".into(),
                    name: "data-web-0".into(),
                    uid: "uid-claim-web-0".into(),
                },
                pv: "pv-web-0".into(),
                pod: PodFacts {
                    namespace: "db".into(),
                    name: "web-0".into(),
                    uid: "uid-pod-web-0".into(),
                    statefulset: Some("web".into()),
                },
                statefulset: "db/web".into(),
            }]
        );
    }

    #[test]
    fn disk_failure_is_only_reported_under_report() {
        let now = Timestamp::now();
        let v = decide(
            &[disk_failed(volume("web", 0))],
            &[],
            now,
            &settings(Recovery::Report, 3),
        );
        assert_eq!(
            v,
            vec![Verdict::Report {
                volume: "pvc-web-0".into(),
                trigger: Trigger::Disk
            }]
        );
    }

    #[test]
    fn the_class_parameter_overrides_the_cluster_default_per_trigger() {
        let now = Timestamp::now();
        let mut opted_in = disk_failed(volume("web", 0));
        opted_in.on_disk_failure = Some(Recovery::Drift);
        let v = decide(&[opted_in], &[], now, &settings(Recovery::Report, 3));
        assert_eq!(drifted(&v), vec![("pvc-web-0", "db/web")]);

        let mut opted_out = disk_failed(volume("web", 0));
        opted_out.on_disk_failure = Some(Recovery::Report);
        // The node parameter does not govern a disk failure.
        opted_out.on_node_failure = Some(Recovery::Drift);
        let v = decide(&[opted_out], &[], now, &settings(Recovery::Drift, 3));
        assert!(matches!(v.as_slice(), [Verdict::Report { .. }]), "{v:?}");

        let mut node_only = not_ready_for(volume("web", 1), now, 600);
        node_only.on_node_failure = Some(Recovery::Drift);
        node_only.on_disk_failure = Some(Recovery::Report);
        let v = decide(&[node_only], &[], now, &settings(Recovery::Report, 3));
        assert_eq!(drifted(&v), vec![("pvc-web-1", "db/web")]);
    }

    #[test]
    fn node_not_ready_drifts_only_past_the_grace_period() {
        let now = Timestamp::now();
        let s = settings(Recovery::Drift, 3);
        let before = decide(&[not_ready_for(volume("web", 0), now, 299)], &[], now, &s);
        assert!(before.is_empty(), "{before:?}");
        let at = decide(&[not_ready_for(volume("web", 0), now, 300)], &[], now, &s);
        assert_eq!(drifted(&at), vec![("pvc-web-0", "db/web")]);
        match &at[0] {
            Verdict::Drift { trigger, .. } => assert_eq!(*trigger, Trigger::Node),
            other => panic!("{other:?}"),
        }
        let report = decide(
            &[not_ready_for(volume("web", 0), now, 3600)],
            &[],
            now,
            &settings(Recovery::Report, 3),
        );
        assert_eq!(
            report,
            vec![Verdict::Report {
                volume: "pvc-web-0".into(),
                trigger: Trigger::Node
            }]
        );
    }

    #[test]
    fn a_flapping_node_moves_nothing() {
        // NotReady 4 min, Ready again, NotReady 4 min: each transition restarts the clock
        // (the Ready condition's lastTransitionTime), so the grace is never reached.
        let s = settings(Recovery::Drift, 3);
        let t0 = Timestamp::now();
        let mut now = t0;
        for round in 0..5 {
            let down_since = now;
            now = now.checked_add(SignedDuration::from_secs(240)).unwrap();
            let v = decide(&[not_ready_for(volume("web", 0), now, 240)], &[], now, &s);
            assert!(v.is_empty(), "round {round}: {v:?}");
            assert_eq!(
                Duration::try_from(now.duration_since(down_since)).unwrap(),
                Duration::from_secs(240)
            );
            // Ready: no `since` at all.
            now = now.checked_add(SignedDuration::from_secs(30)).unwrap();
            assert!(decide(&[volume("web", 0)], &[], now, &s).is_empty());
        }
        assert!(now.duration_since(t0) > SignedDuration::from_secs(GRACE.as_secs() as i64));
    }

    #[test]
    fn a_gone_node_is_not_this_policys_business() {
        // The Node object is gone: `node_not_ready_since` is None; housekeeping's lost-node path
        // (--node-loss-policy) handles it.
        let now = Timestamp::now();
        let v = decide(&[volume("web", 0)], &[], now, &settings(Recovery::Drift, 3));
        assert!(v.is_empty());
    }

    #[test]
    fn pods_not_controlled_by_a_statefulset_are_refused() {
        let now = Timestamp::now();
        let mut bare = disk_failed(volume("web", 0));
        bare.pods[0].statefulset = None;
        let v = decide(&[bare], &[], now, &settings(Recovery::Drift, 3));
        assert_eq!(
            v,
            vec![Verdict::Refuse {
                volume: "pvc-web-0".into(),
                trigger: Trigger::Disk,
                why: Refusal::NotStatefulSet("db/web-0".into()),
            }]
        );
        // Also when a second, bare pod shares the claim.
        let mut shared = disk_failed(volume("web", 1));
        let mut intruder = shared.pods[0].clone();
        intruder.name = "debug".into();
        intruder.statefulset = None;
        shared.pods.push(intruder);
        let v = decide(&[shared], &[], now, &settings(Recovery::Drift, 3));
        assert!(
            matches!(&v[..], [Verdict::Refuse { why: Refusal::NotStatefulSet(p), .. }] if p == "db/debug"),
            "{v:?}"
        );
    }

    #[test]
    fn claims_a_statefulset_would_not_recreate_are_refused() {
        let now = Timestamp::now();
        let s = settings(Recovery::Drift, 3);
        let mut foreign = disk_failed(volume("web", 0));
        foreign.claim.as_mut().unwrap().name = "shared-data".into();
        let mut no_pod = disk_failed(volume("web", 1));
        no_pod.pods.clear();
        let mut no_uid = disk_failed(volume("web", 2));
        no_uid.claim.as_mut().unwrap().uid.clear();
        let mut no_pv = disk_failed(volume("web", 3));
        no_pv.pv = None;
        let v = decide(&[foreign, no_pod, no_uid, no_pv], &[], now, &s);
        let why: Vec<&Refusal> = v
            .iter()
            .map(|v| match v {
                Verdict::Refuse { why, .. } => why,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            why,
            vec![
                &Refusal::NotTemplateClaim,
                &Refusal::NoPod,
                &Refusal::NotBound,
                &Refusal::NotBound
            ]
        );
    }

    #[test]
    fn the_old_volume_of_a_finished_drift_is_left_to_the_deletion_path() {
        // The StatefulSet made a new claim under the same name (another uid), or the claim is
        // gone: no second drift, no refusal; reclaim and pv-protection release the old volume.
        let now = Timestamp::now();
        let mut old = disk_failed(volume("web", 0));
        old.claim_current = false;
        let v = decide(&[old], &[], now, &settings(Recovery::Drift, 3));
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn deleting_or_already_drifting_volumes_are_skipped() {
        let now = Timestamp::now();
        let mut deleting = disk_failed(volume("web", 0));
        deleting.deleting = true;
        let drifting = disk_failed(volume("api", 0));
        let in_flight = [InFlight {
            volume: "pvc-api-0".into(),
            statefulset: "db/api".into(),
        }];
        let v = decide(
            &[deleting, drifting],
            &in_flight,
            now,
            &settings(Recovery::Drift, 3),
        );
        assert!(v.is_empty(), "{v:?}");
    }

    /// 20 simultaneous failures over 5 StatefulSets of 4 replicas, passes repeated as drifts
    /// complete: never more than N in flight, never two of one StatefulSet, and all drift in the
    /// end.
    #[test]
    fn brakes_hold_under_twenty_simultaneous_failures() {
        let now = Timestamp::now();
        for max in [1usize, 2, 3, 7] {
            let s = settings(Recovery::Drift, max);
            let mut pending: Vec<VolumeFacts> = ["a", "b", "c", "d", "e"]
                .iter()
                .flat_map(|sts| (0..4).map(move |i| disk_failed(volume(sts, i))))
                .collect();
            // Half by disk, half by a node down past the grace.
            for (i, v) in pending.iter_mut().enumerate() {
                if i % 2 == 1 {
                    v.disk_failed = false;
                    v.node_not_ready_since =
                        Some(now.checked_sub(SignedDuration::from_secs(900)).unwrap());
                }
            }
            let mut in_flight: Vec<InFlight> = Vec::new();
            for pass in 0..100 {
                let verdicts = decide(&pending, &in_flight, now, &s);
                let mut started = 0;
                for verdict in &verdicts {
                    match verdict {
                        Verdict::Drift {
                            volume,
                            statefulset,
                            ..
                        } => {
                            assert!(
                                !in_flight.iter().any(|f| &f.statefulset == statefulset),
                                "pass {pass}: second drift of {statefulset}"
                            );
                            in_flight.push(InFlight {
                                volume: volume.clone(),
                                statefulset: statefulset.clone(),
                            });
                            started += 1;
                        }
                        Verdict::Wait { .. } => {}
                        other => panic!("{other:?}"),
                    }
                }
                assert!(
                    in_flight.len() <= max,
                    "pass {pass}: {} in flight",
                    in_flight.len()
                );
                // Five StatefulSets: never more than five at once, whatever N.
                assert!(started <= 5);
                // The oldest drift completes: its volume is gone from the facts.
                if !in_flight.is_empty() {
                    let finished = in_flight.remove(0);
                    pending.retain(|v| v.volume != finished.volume);
                }
                if pending.is_empty() {
                    break;
                }
            }
            assert!(
                pending.is_empty(),
                "max {max}: {} never drifted",
                pending.len()
            );
        }
    }

    #[test]
    fn the_first_pass_of_twenty_failures_starts_exactly_min_n_statefulsets() {
        let now = Timestamp::now();
        let failures: Vec<VolumeFacts> = (0..20)
            .map(|i| disk_failed(volume(["a", "b", "c", "d"][i % 4], i as u32)))
            .collect();
        for max in [1usize, 2, 3, 4, 10] {
            let v = decide(&failures, &[], now, &settings(Recovery::Drift, max));
            let started = drifted(&v);
            assert_eq!(started.len(), max.min(4), "max {max}: {started:?}");
            let sts: HashSet<&str> = started.iter().map(|(_, s)| *s).collect();
            assert_eq!(
                sts.len(),
                started.len(),
                "two of one StatefulSet: {started:?}"
            );
            let waits = v
                .iter()
                .filter(|v| matches!(v, Verdict::Wait { .. }))
                .count();
            assert_eq!(waits + started.len(), 20);
        }
    }
}
