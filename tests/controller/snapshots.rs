//! Snapshots, restores and clones (issue 20) through the controller's gRPC service and its
//! watched caches against the fake API server, the agent's side played by a stand-in that makes
//! every new object Ready with a creation time, and refuses the snapshot `snapshot-full` for
//! space as an agent whose pool cannot promise it does. Every refusal is checked to leave the
//! objects as they were.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use csi_api::crd::ThinPoolHealth;
use csi_api::crd::{LogicalVolume, SourceKind, VolumeSnapshotReference};
use csi_api::csi::controller_client::ControllerClient;
use csi_api::csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
use csi_api::csi::{self, Topology, TopologyRequirement};
use csi_api::names::{self, Provisioning};
use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

use crate::admission::{GIB, NODE, PUBLISHED, ssd, start_with, thin_node_storage, thin_ssd};

const MADE_AT: &str = "2026-12-02T09:30:00Z";

/// Plays the agent: a new object becomes Ready at its size with lvm2's creation time, except
/// the snapshot `snapshot-full`, which the pool cannot promise (Failed, InsufficientSpace); a
/// deleted object loses the agent's finalizer once no other holds it (its LV removed).
async fn agent(client: Client, stop: CancellationToken) {
    let api = Api::<LogicalVolume>::all(client);
    let mut events = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut ticket = PUBLISHED;
    loop {
        let lv = tokio::select! {
            _ = stop.cancelled() => return,
            next = events.next() => match next {
                Some(Ok(lv)) => lv,
                Some(Err(_)) => continue,
                None => return,
            },
        };
        if lv.metadata.deletion_timestamp.is_some() {
            let finalizers = lv.finalizers();
            if finalizers == [names::FINALIZER.to_owned()] {
                let release = json!({"metadata": {"finalizers": []}});
                let _ = api
                    .patch(
                        &lv.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&release),
                    )
                    .await;
            }
            continue;
        }
        if lv.status.is_some() {
            continue;
        }
        ticket += 1;
        let status = if lv.name_any() == "snapshot-full" {
            json!({"status": {"phase": "Failed", "reason": "InsufficientSpace",
                              "message": "the thin pool promises no more"}})
        } else {
            json!({"status": {"phase": "Ready", "currentSizeBytes": lv.spec.size_bytes,
                              "capacitySequence": ticket, "creationTime": MADE_AT}})
        };
        let _ = api
            .patch_status(
                &lv.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await;
    }
}

fn snapshot(name: &str, source: &str) -> csi::CreateSnapshotRequest {
    csi::CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        parameters: [
            (
                "csi.storage.k8s.io/volumesnapshot/name".to_owned(),
                "nightly".to_owned(),
            ),
            (
                "csi.storage.k8s.io/volumesnapshot/namespace".to_owned(),
                "db".to_owned(),
            ),
            (
                "csi.storage.k8s.io/volumesnapshotcontent/name".to_owned(),
                "snapcontent-1".to_owned(),
            ),
        ]
        .into(),
        ..Default::default()
    }
}

/// A thin volume of `bytes` made from `source`, with no topology (Immediate) or on `node`.
fn from(name: &str, source: Type, node: Option<&str>) -> csi::CreateVolumeRequest {
    let mut req = thin_ssd(name, GIB);
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(source),
    });
    req.accessibility_requirements = node.map(|n| {
        let t = Topology {
            segments: [(names::TOPOLOGY_KEY.to_owned(), n.to_owned())].into(),
        };
        TopologyRequirement {
            requisite: vec![t.clone()],
            preferred: vec![t],
        }
    });
    req
}

fn of_snapshot(id: &str) -> Type {
    Type::Snapshot(SnapshotSource {
        snapshot_id: id.into(),
    })
}

fn of_volume(id: &str) -> Type {
    Type::Volume(VolumeSource {
        volume_id: id.into(),
    })
}

async fn names(api: &Api<LogicalVolume>) -> BTreeSet<String> {
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|lv| lv.name_any())
        .collect()
}

async fn listed(ctl: &mut ControllerClient<Channel>, source: &str) -> Vec<String> {
    ctl.list_snapshots(csi::ListSnapshotsRequest {
        source_volume_id: source.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .entries
    .into_iter()
    .map(|e| e.snapshot.unwrap().snapshot_id)
    .collect()
}

#[tokio::test]
async fn snapshot_restore_clone_and_delete_through_the_watched_caches() {
    let h = start_with(
        thin_node_storage(10 * GIB, 16 * GIB, ThinPoolHealth::Healthy),
        &[],
        Duration::from_secs(30),
        false,
    )
    .await;
    tokio::spawn(agent(h.client.clone(), h.stop.clone()));
    let mut ctl = h.csi.controller.clone();
    let api: Api<LogicalVolume> = Api::all(h.client.clone());
    ctl.create_volume(thin_ssd("pvc-origin", 2 * GIB))
        .await
        .unwrap();
    ctl.create_volume(ssd("pvc-linear", GIB)).await.unwrap();

    // The snapshot: a Ready snapshot object on the origin's node, class and pool.
    let snap = ctl
        .create_snapshot(snapshot("snapshot-1", "pvc-origin"))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(
        (snap.snapshot_id.as_str(), snap.source_volume_id.as_str()),
        ("snapshot-1", "pvc-origin")
    );
    assert_eq!(snap.size_bytes, 2 * GIB as i64);
    let made: k8s_openapi::jiff::Timestamp = MADE_AT.parse().unwrap();
    assert_eq!(snap.creation_time.unwrap().seconds, made.as_second());
    let lv = api.get("snapshot-1").await.unwrap();
    assert!(lv.spec.is_snapshot());
    assert_eq!(lv.spec.provisioning, Some(Provisioning::Thin));
    assert_eq!(lv.spec.node_name, NODE);
    assert_eq!(lv.spec.source.as_ref().unwrap().name, "pvc-origin");
    assert_eq!(
        lv.spec.volume_snapshot,
        Some(VolumeSnapshotReference {
            namespace: "db".into(),
            name: "nightly".into()
        })
    );
    assert_eq!(lv.finalizers(), [names::FINALIZER.to_owned()]);
    // Idempotent; the name with another source is taken.
    let again = ctl
        .create_snapshot(snapshot("snapshot-1", "pvc-origin"))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again, snap);
    let before = names(&api).await;
    let taken = ctl
        .create_snapshot(snapshot("snapshot-1", "pvc-linear"))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    let linear = ctl
        .create_snapshot(snapshot("snapshot-2", "pvc-linear"))
        .await
        .unwrap_err();
    assert_eq!(linear.code(), Code::FailedPrecondition, "{linear:?}");
    assert!(linear.message().contains("thin StorageClass"), "{linear:?}");
    let unknown = ctl
        .create_snapshot(snapshot("snapshot-2", "pvc-none"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    // The agent refuses for space: ResourceExhausted, and the object is gone again.
    let full = ctl
        .create_snapshot(snapshot("snapshot-full", "pvc-origin"))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while names(&api).await != before {
        assert!(
            Instant::now() < deadline,
            "the refused snapshot's object stays"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed(&mut ctl, "pvc-origin").await, ["snapshot-1"]);
    assert!(listed(&mut ctl, "pvc-linear").await.is_empty());

    // A restore (Immediate: no topology) and a clone land on the source's node.
    let restored = ctl
        .create_volume(from("pvc-restore", of_snapshot("snapshot-1"), None))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        restored.content_source.unwrap().r#type,
        Some(of_snapshot("snapshot-1"))
    );
    assert_eq!(restored.capacity_bytes, 2 * GIB as i64, "the source's size");
    assert_eq!(
        restored.accessible_topology[0].segments[names::TOPOLOGY_KEY],
        NODE
    );
    let lv = api.get("pvc-restore").await.unwrap();
    assert_eq!(lv.spec.source.as_ref().unwrap().kind, SourceKind::Snapshot);
    assert!(!lv.spec.is_snapshot() && lv.spec.is_thin());
    assert!(
        lv.finalizers()
            .contains(&names::FINALIZER_PV_PROTECTION.to_owned())
    );
    ctl.create_volume(from("pvc-clone", of_volume("pvc-origin"), Some(NODE)))
        .await
        .unwrap();
    assert_eq!(
        api.get("pvc-clone")
            .await
            .unwrap()
            .spec
            .source
            .unwrap()
            .kind,
        SourceKind::Volume
    );

    // Refusals change nothing.
    let before = names(&api).await;
    let mut linear_class = from("pvc-x", of_snapshot("snapshot-1"), None);
    linear_class.parameters.remove(names::PARAM_PROVISIONING);
    for (req, code) in [
        (linear_class, Code::InvalidArgument),
        (
            from("pvc-x", of_snapshot("snapshot-1"), Some("n2")),
            Code::ResourceExhausted,
        ),
        (
            from("pvc-x", of_snapshot("snapshot-9"), None),
            Code::NotFound,
        ),
        (from("pvc-x", of_volume("snapshot-1"), None), Code::NotFound),
        (
            from("pvc-x", of_volume("pvc-linear"), None),
            Code::FailedPrecondition,
        ),
    ] {
        let refused = ctl.create_volume(req).await.unwrap_err();
        assert_eq!(refused.code(), code, "{refused:?}");
    }
    let as_volume = ctl
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "snapshot-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(as_volume.code(), Code::InvalidArgument, "{as_volume:?}");
    let as_snapshot = ctl
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: "pvc-origin".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(as_snapshot.code(), Code::InvalidArgument, "{as_snapshot:?}");
    assert_eq!(names(&api).await, before);
    for name in &before {
        assert!(
            api.get(name)
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
                .is_none(),
            "{name} was touched"
        );
    }

    // The origin can go while its snapshot stays; DeleteSnapshot then deletes the snapshot
    // object (the agent removes the LV and its finalizer); an unknown id is success.
    ctl.delete_volume(csi::DeleteVolumeRequest {
        volume_id: "pvc-origin".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        api.get("snapshot-1")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );
    for id in ["snapshot-1", "snapshot-gone"] {
        ctl.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.get_opt("snapshot-1").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the snapshot object stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listed(&mut ctl, "").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "a deleted snapshot is still listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
