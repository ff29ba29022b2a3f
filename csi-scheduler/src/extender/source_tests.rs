//! Restores and clones in the extender: a claim with a data source passes only on its source's
//! node, every other node failing with a reason naming the source and its node; a source the
//! extender does not know makes every node wait.

use std::sync::Arc;

use csi_api::crd::{LogicalVolumePhase, VolumeRole, VolumeSnapshotReference};
use csi_api::names::{DeviceClass, Placement};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, TypedLocalObjectReference, TypedObjectReference,
};

use super::{RejectKind, filter, prioritize};
use crate::fixtures::*;
use crate::view::ClusterView;

const NODES: [&str; 3] = ["a", "b", "c"];

fn thin_classes() -> Vec<Arc<k8s_openapi::api::storage::v1::StorageClass>> {
    let mut classes = standard_classes();
    classes.push(storage_class(
        "thin",
        csi_api::names::DRIVER_NAME,
        &[
            ("strata.io/device-class", "nvme"),
            ("strata.io/provisioning", "thin"),
        ],
    ));
    classes
}

/// Three nodes; `snap-lv` on "b" is the snapshot made for VolumeSnapshot apps/snap, and the
/// bound claim apps/src has its volume `pvc-src-uid` on "c".
fn view(claims: Vec<PersistentVolumeClaim>) -> ClusterView {
    let nodes: Vec<_> = NODES
        .iter()
        .map(|n| node_storage(n, &[(DeviceClass::Nvme, 100 * GIB, true)]))
        .collect();
    let mut snap = (*thin_volume(
        "snap-lv",
        "b",
        DeviceClass::Nvme,
        GIB,
        LogicalVolumePhase::Ready,
    ))
    .clone();
    snap.spec.role = Some(VolumeRole::Snapshot);
    snap.spec.volume_snapshot = Some(VolumeSnapshotReference {
        namespace: "apps".into(),
        name: "snap".into(),
    });
    let volumes = [
        Arc::new(snap),
        thin_volume(
            "pvc-src-uid",
            "c",
            DeviceClass::Nvme,
            GIB,
            LogicalVolumePhase::Ready,
        ),
    ];
    let mut claims = claims;
    claims.push(bound(claim("apps", "src", "src-uid", "thin", "1Gi")));
    let claims: Vec<_> = claims.into_iter().map(Arc::new).collect();
    ClusterView::build(
        &nodes,
        &volumes,
        &claims,
        &thin_classes(),
        &no_pods(),
        Placement::Binpack,
    )
}

fn restore(name: &str, snapshot: &str, group: Option<&str>) -> PersistentVolumeClaim {
    let mut pvc = claim("apps", name, &format!("{name}-uid"), "thin", "1Gi");
    pvc.spec.as_mut().unwrap().data_source_ref = Some(TypedObjectReference {
        api_group: group.map(str::to_owned),
        kind: "VolumeSnapshot".into(),
        name: snapshot.into(),
        namespace: None,
    });
    pvc
}

fn clone_of(name: &str, source: &str) -> PersistentVolumeClaim {
    let mut pvc = claim("apps", name, &format!("{name}-uid"), "thin", "1Gi");
    pvc.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
        api_group: None,
        kind: "PersistentVolumeClaim".into(),
        name: source.into(),
    });
    pvc
}

fn pod_with(claims: &[&str]) -> crate::wire::Pod {
    let volumes: Vec<_> = claims
        .iter()
        .map(|c| serde_json::json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    pod("p", serde_json::Value::Array(volumes))
}

#[test]
fn a_restore_goes_only_to_its_snapshots_node() {
    let v = view(vec![restore("r", "snap", Some("snapshot.storage.k8s.io"))]);
    let demand = v.demand_of(&pod_with(&["r"]));
    let verdicts = filter(&v, &demand, &NODES);
    assert!(verdicts[1].is_none(), "{verdicts:?}");
    for i in [0, 2] {
        let r = verdicts[i].as_ref().expect("filtered");
        assert_eq!(r.kind, RejectKind::SourceElsewhere);
        assert!(r.kind.is_unresolvable());
        assert!(
            r.message.contains("VolumeSnapshot apps/snap") && r.message.contains("node b"),
            "{}",
            r.message
        );
    }
    let scores = prioritize(&v, &demand, &NODES);
    assert_eq!((scores[0], scores[2]), (0, 0));
}

#[test]
fn a_clone_goes_only_to_its_source_claims_node() {
    let v = view(vec![clone_of("copy", "src")]);
    let verdicts = filter(&v, &v.demand_of(&pod_with(&["copy"])), &NODES);
    assert!(verdicts[2].is_none(), "{verdicts:?}");
    let r = verdicts[0].as_ref().expect("filtered");
    assert_eq!(r.kind, RejectKind::SourceElsewhere);
    assert!(
        r.message.contains("PersistentVolumeClaim apps/src") && r.message.contains("node c"),
        "{}",
        r.message
    );
}

#[test]
fn an_unknown_source_makes_every_node_wait() {
    let v = view(vec![
        restore("r", "later", Some("snapshot.storage.k8s.io")),
        clone_of("copy", "nobody"),
    ]);
    for p in [pod_with(&["r"]), pod_with(&["copy"])] {
        let verdicts = filter(&v, &v.demand_of(&p), &NODES);
        for verdict in &verdicts {
            let r = verdict.as_ref().expect("never passes");
            assert_eq!(r.kind, RejectKind::SourceNotFound);
            assert!(!r.kind.is_unresolvable(), "the pod waits for its source");
            assert!(r.message.contains("waiting for source"), "{}", r.message);
        }
    }
}

#[test]
fn a_restore_and_a_clone_on_different_nodes_fit_nowhere() {
    let v = view(vec![
        restore("r", "snap", Some("snapshot.storage.k8s.io")),
        clone_of("copy", "src"),
    ]);
    let verdicts = filter(&v, &v.demand_of(&pod_with(&["r", "copy"])), &NODES);
    assert!(verdicts.iter().all(Option::is_some), "{verdicts:?}");
}

#[test]
fn other_data_sources_are_placed_as_plain_claims() {
    // A populator's kind, and a VolumeSnapshot of another API group, are not Strata sources.
    let mut populated = claim("apps", "pop", "pop-uid", "thin", "1Gi");
    populated.spec.as_mut().unwrap().data_source_ref = Some(TypedObjectReference {
        api_group: Some("populator.example.com".into()),
        kind: "Dataset".into(),
        name: "d".into(),
        namespace: None,
    });
    let v = view(vec![populated, restore("r", "snap", Some("example.com"))]);
    for p in [pod_with(&["pop"]), pod_with(&["r"])] {
        let verdicts = filter(&v, &v.demand_of(&p), &NODES);
        // No thin pool on these nodes: a plain thin claim fails as NoThinPool everywhere,
        // never as a source.
        assert!(
            verdicts
                .iter()
                .all(|r| r.as_ref().is_some_and(|r| r.kind == RejectKind::NoThinPool)),
            "{verdicts:?}"
        );
    }
}

/// A pod's generic ephemeral volume whose claim template restores or clones `source`.
fn ephemeral_pod(source: serde_json::Value, source_field: &str) -> crate::wire::Pod {
    pod(
        "p",
        serde_json::json!([{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "storageClassName": "thin",
            "resources": {"requests": {"storage": "1Gi"}},
            source_field: source}}}}]),
    )
}

#[test]
fn an_ephemeral_volumes_template_pins_before_its_claim_exists() {
    // The ephemeral controller has not made apps/p-scratch yet: the template's source pins.
    let v = view(vec![]);
    let restore = ephemeral_pod(
        serde_json::json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
            "name": "snap"}),
        "dataSourceRef",
    );
    let verdicts = filter(&v, &v.demand_of(&restore), &NODES);
    assert!(verdicts[1].is_none(), "{verdicts:?}");
    for i in [0, 2] {
        let r = verdicts[i].as_ref().expect("filtered");
        assert_eq!(r.kind, RejectKind::SourceElsewhere);
        assert!(
            r.message.contains("claim apps/p-scratch")
                && r.message.contains("VolumeSnapshot apps/snap")
                && r.message.contains("node b"),
            "{}",
            r.message
        );
    }
    let clone = ephemeral_pod(
        serde_json::json!({"kind": "PersistentVolumeClaim", "name": "src"}),
        "dataSource",
    );
    let verdicts = filter(&v, &v.demand_of(&clone), &NODES);
    assert_eq!(
        verdicts.iter().map(Option::is_none).collect::<Vec<_>>(),
        [false, false, true],
        "{verdicts:?}"
    );
    // A source not known yet makes the pod wait, as for a claim.
    let later = ephemeral_pod(
        serde_json::json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
            "name": "later"}),
        "dataSourceRef",
    );
    let verdicts = filter(&v, &v.demand_of(&later), &NODES);
    assert!(
        verdicts.iter().all(|r| r
            .as_ref()
            .is_some_and(|r| r.kind == RejectKind::SourceNotFound)),
        "{verdicts:?}"
    );
    // Once the claim exists, the claim is read (here: made from the clone's source, on "c").
    let mut made = clone_of("p-scratch", "src");
    made.metadata.name = Some("p-scratch".into());
    let v = view(vec![made]);
    let verdicts = filter(&v, &v.demand_of(&restore), &NODES);
    assert_eq!(
        verdicts.iter().map(Option::is_none).collect::<Vec<_>>(),
        [false, false, true],
        "{verdicts:?}"
    );
}
