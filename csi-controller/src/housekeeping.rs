//! Background bookkeeping of LogicalVolumes, as a pure planner: given what the cluster holds now,
//! which volumes are bound (have a PV), which are orphans (no PV past the grace period), which
//! are lost (their Node is gone), which deletions are held by the `strata.io/pv-protection`
//! finalizer, and what to do about each under the configured policies.
//! `background` applies the plan through kube; this module has no I/O.
//!
//! Protection: a LogicalVolume is created with `strata.io/pv-protection`; the agent never wipes
//! while it is present. DeleteVolume (the CO's, for the volume's PV) removes it. Any other
//! deletion (`kubectl delete`, CRD removal) leaves it: housekeeping releases it only once no
//! PersistentVolume refers to the volume, and otherwise tells the operator, once, to delete the
//! PVC instead.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use csi_api::crd::{LogicalVolume, PvcReference};
use csi_api::names;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::jiff::Timestamp;

use crate::object_name::ANNOTATION_CSI_NAME;

/// Annotation on a LogicalVolume naming its PV once bound.
pub const ANNOTATION_PV: &str = "strata.io/pv";
/// Annotation on a LogicalVolume whose node is gone.
pub const ANNOTATION_LOST: &str = "strata.io/node-lost";
/// Annotation on a LogicalVolume whose deletion is held because a PV still refers to it (value:
/// the PV), so that the operator is told once, not on every pass.
pub const ANNOTATION_HELD: &str = "strata.io/deletion-held-by";

/// What to do with orphans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OrphanPolicy {
    /// Emit an Event and a metric only.
    Report,
    /// Also delete the orphan LogicalVolume (its agent wipes and removes the LV).
    Delete,
}

/// What to do with the volumes of a deleted Node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeLossPolicy {
    /// Mark the volumes lost and emit Events.
    Report,
    /// Also delete the bound PVCs so that StatefulSets recreate them elsewhere.
    DeletePvc,
}

/// The policies of the housekeeping loop.
#[derive(Clone, Copy, Debug)]
pub struct Policies {
    pub orphan: OrphanPolicy,
    pub orphan_grace: Duration,
    pub node_loss: NodeLossPolicy,
}

/// A PersistentVolume of Strata's driver, reduced to what matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrataPv {
    pub name: String,
    pub volume_handle: String,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Record the PV on the LogicalVolume.
    AnnotateBound {
        volume: String,
        pv: String,
    },
    /// Tell the operator the volume has no PV (Event `Orphaned`).
    ReportOrphan {
        volume: String,
        age: Duration,
    },
    DeleteOrphan {
        volume: String,
    },
    /// Mark the volume lost (annotation and Event `NodeLost`).
    MarkLost {
        volume: String,
        node: String,
    },
    /// Delete the claim so that its StatefulSet makes a new one elsewhere: only the claim with
    /// the recorded uid, and only while it is still bound to `pv`, the lost volume's PV.
    DeleteClaim {
        volume: String,
        pvc: PvcReference,
        pv: String,
    },
    /// The volume is being deleted and no PV refers to it: remove `strata.io/pv-protection` so
    /// that the agent may wipe it.
    ReleaseProtection {
        volume: String,
    },
    /// The volume is being deleted but PV `pv` still refers to it: keep the protection, Warning
    /// Event (once).
    WarnHeld {
        volume: String,
        pv: String,
    },
    /// The node is gone and the volume is being deleted: nobody else will ever remove the
    /// finalizer.
    ReleaseFinalizer {
        volume: String,
    },
}

/// The plan and its counts for the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub orphans: usize,
    pub lost: usize,
}

/// Decides what to do; see the module documentation.
pub fn plan(
    volumes: &[LogicalVolume],
    pvs: &[StrataPv],
    nodes: &HashSet<String>,
    now: Timestamp,
    policies: &Policies,
) -> Plan {
    let pv_of: HashMap<&str, &str> = pvs
        .iter()
        .map(|pv| (pv.volume_handle.as_str(), pv.name.as_str()))
        .collect();
    let mut plan = Plan::default();
    for lv in volumes {
        let Some(name) = lv.metadata.name.clone() else {
            continue;
        };
        let annotations = lv.metadata.annotations.clone().unwrap_or_default();
        let deleting = lv.metadata.deletion_timestamp.is_some();
        let node = &lv.spec.node_name;
        // The PV's volumeHandle is the object name (what CreateVolume returns); an older object
        // may be referred to by its CSI name.
        let pv = pv_of.get(name.as_str()).copied().or_else(|| {
            annotations
                .get(ANNOTATION_CSI_NAME)
                .and_then(|csi| pv_of.get(csi.as_str()).copied())
        });
        let protected = lv
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == names::FINALIZER_PV_PROTECTION);

        if deleting && protected {
            match pv {
                None => plan.actions.push(Action::ReleaseProtection {
                    volume: name.clone(),
                }),
                Some(pv) => {
                    if annotations.get(ANNOTATION_HELD).map(String::as_str) != Some(pv) {
                        plan.actions.push(Action::WarnHeld {
                            volume: name.clone(),
                            pv: pv.to_owned(),
                        });
                    }
                    if !nodes.contains(node) {
                        plan.lost += 1;
                    }
                    continue;
                }
            }
        }

        if !nodes.contains(node) {
            plan.lost += 1;
            if deleting {
                plan.actions.push(Action::ReleaseFinalizer { volume: name });
                continue;
            }
            if !annotations.contains_key(ANNOTATION_LOST) {
                plan.actions.push(Action::MarkLost {
                    volume: name.clone(),
                    node: node.clone(),
                });
            }
            // Only a claim we can name exactly (uid) and whose PV is this volume's; never for a
            // snapshot (it has no claim: it is reported lost, nothing more).
            if policies.node_loss == NodeLossPolicy::DeletePvc
                && !lv.spec.is_snapshot()
                && let Some(pvc) = &lv.spec.pvc
                && !pvc.uid.is_empty()
                && let Some(pv) = pv
            {
                plan.actions.push(Action::DeleteClaim {
                    volume: name,
                    pvc: pvc.clone(),
                    pv: pv.to_owned(),
                });
            }
            continue;
        }
        // A snapshot has no PV by design: it is never bound nor an orphan.
        if deleting || lv.spec.is_snapshot() {
            continue;
        }
        match pv {
            Some(pv) => {
                if annotations.get(ANNOTATION_PV).map(String::as_str) != Some(pv) {
                    plan.actions.push(Action::AnnotateBound {
                        volume: name,
                        pv: pv.to_string(),
                    });
                }
            }
            None => {
                let created = lv
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(now);
                let age = Duration::try_from(now.duration_since(created)).unwrap_or_default();
                if age < policies.orphan_grace {
                    continue;
                }
                plan.orphans += 1;
                plan.actions.push(Action::ReportOrphan {
                    volume: name.clone(),
                    age,
                });
                if policies.orphan == OrphanPolicy::Delete {
                    plan.actions.push(Action::DeleteOrphan { volume: name });
                }
            }
        }
    }
    plan
}

/// The nodes whose NodeStorage was not refreshed within `limit` (by `status.updatedAt`), with
/// their age. A NodeStorage that never carried `updatedAt` is not judged.
pub fn stale_nodes(
    storages: &[csi_api::crd::NodeStorage],
    now: Timestamp,
    limit: Duration,
) -> Vec<(String, Duration)> {
    storages
        .iter()
        .filter_map(|ns| {
            let updated = ns.status.as_ref()?.updated_at.as_ref()?.0;
            let age = Duration::try_from(now.duration_since(updated)).unwrap_or_default();
            let name = ns.metadata.name.clone()?;
            (age > limit).then_some((name, age))
        })
        .collect()
}

/// Whether the claim read back from the API server is the one a [`Action::DeleteClaim`] means:
/// the recorded uid (not a claim recreated under the same name) and still bound to the lost
/// volume's PV. Returns the uid to use as the deletion's precondition.
pub fn claim_to_delete(
    claim: &PersistentVolumeClaim,
    expected: &PvcReference,
    pv: &str,
) -> Result<String, String> {
    let uid = claim.metadata.uid.as_deref().unwrap_or_default();
    if expected.uid.is_empty() || uid != expected.uid {
        return Err(format!(
            "claim {}/{} has uid {uid:?}, not the lost volume's {:?}: it was recreated; left alone",
            expected.namespace, expected.name, expected.uid
        ));
    }
    let bound = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or_default();
    if bound != pv {
        return Err(format!(
            "claim {}/{} is bound to {bound:?}, not to the lost volume's PV {pv}; left alone",
            expected.namespace, expected.name
        ));
    }
    Ok(uid.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_api::crd::LogicalVolumeSpec;
    use csi_api::names::DeviceClass;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::SignedDuration;

    fn lv(name: &str, node: &str, age_secs: i64, now: Timestamp) -> LogicalVolume {
        let mut lv = LogicalVolume::new(
            name,
            LogicalVolumeSpec {
                node_name: node.into(),
                device_class: DeviceClass::Nvme,
                size_bytes: 1 << 30,
                pvc: Some(PvcReference {
                    namespace: "db".into(),
                    name: format!("data-{name}"),
                    uid: "u".into(),
                }),
                source: None,
                role: None,
                volume_snapshot: None,
                wipe: None,
                provisioning: None,
            },
        );
        lv.metadata.creation_timestamp = Some(Time(
            now.checked_sub(SignedDuration::from_secs(age_secs))
                .unwrap(),
        ));
        lv
    }

    fn pv(name: &str, handle: &str) -> StrataPv {
        StrataPv {
            name: name.into(),
            volume_handle: handle.into(),
        }
    }

    fn protected(mut lv: LogicalVolume, now: Timestamp) -> LogicalVolume {
        lv.metadata.finalizers = Some(vec![
            names::FINALIZER.into(),
            names::FINALIZER_PV_PROTECTION.into(),
        ]);
        lv.metadata.deletion_timestamp = Some(Time(now));
        lv
    }

    fn policies(orphan: OrphanPolicy, node_loss: NodeLossPolicy) -> Policies {
        Policies {
            orphan,
            orphan_grace: Duration::from_secs(3600),
            node_loss,
        }
    }

    #[test]
    fn bound_volumes_are_annotated_once() {
        let now = Timestamp::now();
        let mut volumes = vec![lv("pvc-1", "a", 10, now)];
        let pvs = vec![StrataPv {
            name: "pvc-1".into(),
            volume_handle: "pvc-1".into(),
        }];
        let nodes = HashSet::from(["a".to_string()]);
        let p = plan(
            &volumes,
            &pvs,
            &nodes,
            now,
            &policies(OrphanPolicy::Report, NodeLossPolicy::Report),
        );
        assert_eq!(
            p.actions,
            vec![Action::AnnotateBound {
                volume: "pvc-1".into(),
                pv: "pvc-1".into()
            }]
        );
        volumes[0].metadata.annotations =
            Some([(ANNOTATION_PV.to_string(), "pvc-1".to_string())].into());
        let p = plan(
            &volumes,
            &pvs,
            &nodes,
            now,
            &policies(OrphanPolicy::Report, NodeLossPolicy::Report),
        );
        assert!(p.actions.is_empty());
    }

    #[test]
    fn orphans_wait_for_the_grace_period_and_are_deleted_only_by_policy() {
        let now = Timestamp::now();
        let volumes = vec![lv("young", "a", 60, now), lv("old", "a", 7200, now)];
        let nodes = HashSet::from(["a".to_string()]);
        let report = plan(
            &volumes,
            &[],
            &nodes,
            now,
            &policies(OrphanPolicy::Report, NodeLossPolicy::Report),
        );
        assert_eq!(report.orphans, 1);
        assert_eq!(
            report.actions,
            vec![Action::ReportOrphan {
                volume: "old".into(),
                age: Duration::from_secs(7200)
            }]
        );
        let delete = plan(
            &volumes,
            &[],
            &nodes,
            now,
            &policies(OrphanPolicy::Delete, NodeLossPolicy::Report),
        );
        assert!(delete.actions.contains(&Action::DeleteOrphan {
            volume: "old".into()
        }));
        assert!(
            !delete
                .actions
                .iter()
                .any(|a| matches!(a, Action::DeleteOrphan { volume } if volume == "young"))
        );
    }

    #[test]
    fn snapshots_are_never_orphans_and_a_lost_one_is_only_reported() {
        let now = Timestamp::now();
        let snapshot = |name: &str, node: &str| {
            let mut s = lv(name, node, 7200, now);
            s.spec.role = Some(csi_api::crd::VolumeRole::Snapshot);
            s
        };
        let nodes = HashSet::from(["a".to_string()]);
        let delete_all = policies(OrphanPolicy::Delete, NodeLossPolicy::DeletePvc);
        let here = plan(
            &[snapshot("snapshot-1", "a")],
            &[],
            &nodes,
            now,
            &delete_all,
        );
        assert_eq!(here, Plan::default(), "no PV is expected of a snapshot");
        // Even with a claim reference and a PV naming it (neither should exist), a lost
        // snapshot is marked lost and no claim is deleted for it.
        let lost = plan(
            &[snapshot("snapshot-2", "gone")],
            &[pv("pv-x", "snapshot-2")],
            &nodes,
            now,
            &delete_all,
        );
        assert_eq!(lost.lost, 1);
        assert_eq!(
            lost.actions,
            vec![Action::MarkLost {
                volume: "snapshot-2".into(),
                node: "gone".into()
            }]
        );
    }

    #[test]
    fn lost_nodes_are_reported_and_claims_deleted_only_by_policy() {
        let now = Timestamp::now();
        let volumes = vec![lv("pvc-1", "gone", 10, now)];
        let nodes = HashSet::from(["a".to_string()]);
        let report = plan(
            &volumes,
            &[],
            &nodes,
            now,
            &policies(OrphanPolicy::Delete, NodeLossPolicy::Report),
        );
        assert_eq!(report.lost, 1);
        assert_eq!(
            report.actions,
            vec![Action::MarkLost {
                volume: "pvc-1".into(),
                node: "gone".into()
            }]
        );
        let rebuild = plan(
            &volumes,
            &[pv("pv-1", "pvc-1")],
            &nodes,
            now,
            &policies(OrphanPolicy::Report, NodeLossPolicy::DeletePvc),
        );
        assert!(
            matches!(&rebuild.actions[1], Action::DeleteClaim { pvc, pv, .. } if pvc.name == "data-pvc-1" && pv == "pv-1")
        );
        // Without a PV for the volume, or without the claim's uid, no claim is named for deletion.
        let no_pv = plan(
            &volumes,
            &[],
            &nodes,
            now,
            &policies(OrphanPolicy::Report, NodeLossPolicy::DeletePvc),
        );
        assert!(
            !no_pv
                .actions
                .iter()
                .any(|a| matches!(a, Action::DeleteClaim { .. }))
        );
        let mut no_uid = volumes.clone();
        no_uid[0].spec.pvc.as_mut().unwrap().uid.clear();
        let no_uid = plan(
            &no_uid,
            &[pv("pv-1", "pvc-1")],
            &nodes,
            now,
            &policies(OrphanPolicy::Report, NodeLossPolicy::DeletePvc),
        );
        assert!(
            !no_uid
                .actions
                .iter()
                .any(|a| matches!(a, Action::DeleteClaim { .. }))
        );
    }

    #[test]
    fn deleted_volumes_of_lost_nodes_release_their_finalizer() {
        let now = Timestamp::now();
        let mut gone = lv("pvc-1", "gone", 10, now);
        gone.metadata.deletion_timestamp = Some(Time(now));
        let mut here = lv("pvc-2", "a", 7200, now);
        here.metadata.deletion_timestamp = Some(Time(now));
        let nodes = HashSet::from(["a".to_string()]);
        let p = plan(
            &[gone, here],
            &[],
            &nodes,
            now,
            &policies(OrphanPolicy::Delete, NodeLossPolicy::DeletePvc),
        );
        assert_eq!(
            p.actions,
            vec![Action::ReleaseFinalizer {
                volume: "pvc-1".into()
            }]
        );
    }

    #[test]
    fn a_deleted_volume_keeps_its_protection_while_a_pv_refers_to_it() {
        let now = Timestamp::now();
        let nodes = HashSet::from(["a".to_string()]);
        let p = policies(OrphanPolicy::Report, NodeLossPolicy::Report);
        let mut held = protected(lv("pvc-1", "a", 10, now), now);
        let free = protected(lv("pvc-2", "a", 10, now), now);
        let pvs = [pv("pv-1", "pvc-1")];
        let first = plan(&[held.clone(), free], &pvs, &nodes, now, &p);
        assert_eq!(
            first.actions,
            vec![
                Action::WarnHeld {
                    volume: "pvc-1".into(),
                    pv: "pv-1".into()
                },
                Action::ReleaseProtection {
                    volume: "pvc-2".into()
                },
            ]
        );
        // Warned once: the annotation records it.
        held.metadata.annotations =
            Some([(ANNOTATION_HELD.to_string(), "pv-1".to_string())].into());
        assert!(
            plan(&[held.clone()], &pvs, &nodes, now, &p)
                .actions
                .is_empty()
        );
        // A PV that refers to the volume by its CSI name holds it too.
        let mut by_csi_name = protected(lv("strata-0123", "a", 10, now), now);
        by_csi_name.metadata.annotations =
            Some([(ANNOTATION_CSI_NAME.to_string(), "Vol-1".to_string())].into());
        let held_by_csi = plan(&[by_csi_name], &[pv("pv-9", "Vol-1")], &nodes, now, &p);
        assert!(matches!(&held_by_csi.actions[..], [Action::WarnHeld { pv, .. }] if pv == "pv-9"));
        // Once the PV is gone, the protection is released.
        let released = plan(&[held], &[], &nodes, now, &p);
        assert_eq!(
            released.actions,
            vec![Action::ReleaseProtection {
                volume: "pvc-1".into()
            }]
        );
    }

    #[test]
    fn a_lost_volume_with_a_pv_is_not_released() {
        let now = Timestamp::now();
        let nodes = HashSet::new();
        let p = policies(OrphanPolicy::Delete, NodeLossPolicy::DeletePvc);
        let held = protected(lv("pvc-1", "gone", 10, now), now);
        let actions = plan(
            std::slice::from_ref(&held),
            &[pv("pv-1", "pvc-1")],
            &nodes,
            now,
            &p,
        )
        .actions;
        assert!(
            !actions.iter().any(|a| matches!(
                a,
                Action::ReleaseFinalizer { .. } | Action::ReleaseProtection { .. }
            )),
            "{actions:?}"
        );
        let actions = plan(&[held], &[], &nodes, now, &p).actions;
        assert_eq!(
            actions,
            vec![
                Action::ReleaseProtection {
                    volume: "pvc-1".into()
                },
                Action::ReleaseFinalizer {
                    volume: "pvc-1".into()
                }
            ]
        );
    }

    #[test]
    fn only_the_recorded_claim_still_bound_to_the_lost_pv_is_deleted() {
        use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
        let claim = |uid: &str, volume: &str| PersistentVolumeClaim {
            metadata: kube::api::ObjectMeta {
                name: Some("data-0".into()),
                namespace: Some("db".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: Some(volume.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let expected = PvcReference {
            namespace: "db".into(),
            name: "data-0".into(),
            uid: "u-1".into(),
        };
        assert_eq!(
            claim_to_delete(&claim("u-1", "pv-1"), &expected, "pv-1"),
            Ok("u-1".to_string())
        );
        // Recreated by its StatefulSet under the same name: stale uid, refused.
        let stale = claim_to_delete(&claim("u-2", "pv-1"), &expected, "pv-1").unwrap_err();
        assert!(stale.contains("recreated"), "{stale}");
        // Bound to another volume (e.g. spec.pvc rewritten to point at someone else's claim).
        let other = claim_to_delete(&claim("u-1", "pv-7"), &expected, "pv-1").unwrap_err();
        assert!(other.contains("not to the lost volume"), "{other}");
        let no_uid = PvcReference {
            uid: String::new(),
            ..expected
        };
        assert!(claim_to_delete(&claim("", "pv-1"), &no_uid, "pv-1").is_err());
    }

    #[test]
    fn node_storages_past_the_limit_are_stale() {
        use csi_api::crd::{NodeStorage, NodeStorageSpec, NodeStorageStatus};
        let now = Timestamp::now();
        let ns = |name: &str, age: Option<i64>| {
            let mut ns = NodeStorage::new(name, NodeStorageSpec::default());
            ns.status = Some(NodeStorageStatus {
                updated_at: age
                    .map(|a| Time(now.checked_sub(SignedDuration::from_secs(a)).unwrap())),
                ..Default::default()
            });
            ns
        };
        let stale = stale_nodes(
            &[
                ns("fresh", Some(30)),
                ns("dead", Some(400)),
                ns("never", None),
            ],
            now,
            Duration::from_secs(180),
        );
        assert_eq!(stale, vec![("dead".to_string(), Duration::from_secs(400))]);
    }
}
