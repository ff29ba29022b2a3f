//! Background bookkeeping of LogicalVolumes, as a pure planner: given what the cluster holds now,
//! which volumes are bound (have a PV), which are orphans (no PV past the grace period), which
//! are lost (their Node is gone), and what to do about each under the configured policies.
//! `background` applies the plan through kube; this module has no I/O.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use csi_api::crd::{LogicalVolume, PvcReference};
use k8s_openapi::jiff::Timestamp;

/// Annotation on a LogicalVolume naming its PV once bound.
pub const ANNOTATION_PV: &str = "strata.io/pv";
/// Annotation on a LogicalVolume whose node is gone.
pub const ANNOTATION_LOST: &str = "strata.io/node-lost";

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
    /// Delete the claim so that its StatefulSet makes a new one elsewhere.
    DeleteClaim {
        volume: String,
        pvc: PvcReference,
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
            if policies.node_loss == NodeLossPolicy::DeletePvc
                && let Some(pvc) = &lv.spec.pvc
            {
                plan.actions.push(Action::DeleteClaim {
                    volume: name,
                    pvc: pvc.clone(),
                });
            }
            continue;
        }
        if deleting {
            continue;
        }
        match pv_of.get(name.as_str()) {
            Some(pv) => {
                if annotations.get(ANNOTATION_PV).map(String::as_str) != Some(*pv) {
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
                wipe: None,
            },
        );
        lv.metadata.creation_timestamp = Some(Time(
            now.checked_sub(SignedDuration::from_secs(age_secs))
                .unwrap(),
        ));
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
            &[],
            &nodes,
            now,
            &policies(OrphanPolicy::Report, NodeLossPolicy::DeletePvc),
        );
        assert!(
            matches!(&rebuild.actions[1], Action::DeleteClaim { pvc, .. } if pvc.name == "data-pvc-1")
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
}
