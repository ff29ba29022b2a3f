//! Snapshots, restores and clones over the in-memory cluster: the agent is played by a hook that
//! makes every new object Ready (or refuses it for space), and every refusal is checked to
//! change nothing.

use std::collections::HashMap;
use std::time::Duration;

use csi_api::crd::{
    LogicalVolume, LogicalVolumePhase, LogicalVolumeSpec, LogicalVolumeStatus, SourceKind,
    VolumeSnapshotReference,
};
use csi_api::csi;
use csi_api::csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
use csi_api::names::{DeviceClass, Provisioning, TOPOLOGY_KEY};

use super::REASON_INSUFFICIENT_SPACE;
use super::tests::{create, service};
use crate::cluster::memory::MemoryCluster;
use crate::error::Error;

const GIB: u64 = 1 << 30;
const WAIT: Duration = Duration::from_secs(5);
const CREATED: &str = "2026-12-02T10:00:00Z";

/// Plays the agent: every new object becomes Ready at its spec size, made at [`CREATED`].
fn ready_agent(cluster: &MemoryCluster) {
    cluster.set_agent(|lv: &mut LogicalVolume| {
        lv.status = Some(LogicalVolumeStatus {
            phase: Some(LogicalVolumePhase::Ready),
            current_size_bytes: Some(lv.spec.size_bytes),
            creation_time: Some(CREATED.into()),
            ..Default::default()
        });
    });
}

/// A Ready volume on `node`, thin or linear, of 2 GiB.
fn volume(cluster: &MemoryCluster, name: &str, node: &str, thin: bool) {
    let mut lv = LogicalVolume::new(
        name,
        LogicalVolumeSpec {
            node_name: node.into(),
            device_class: DeviceClass::Nvme,
            size_bytes: 2 * GIB,
            pvc: None,
            provisioning: thin.then_some(Provisioning::Thin),
            source: None,
            role: None,
            volume_snapshot: None,
            wipe: None,
        },
    );
    lv.status = Some(LogicalVolumeStatus {
        phase: Some(LogicalVolumePhase::Ready),
        current_size_bytes: Some(2 * GIB),
        ..Default::default()
    });
    cluster.insert_volume(lv);
}

fn snapshot_req(name: &str, source: &str) -> csi::CreateSnapshotRequest {
    csi::CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        parameters: HashMap::from([
            (
                "csi.storage.k8s.io/volumesnapshot/name".into(),
                "snap".into(),
            ),
            (
                "csi.storage.k8s.io/volumesnapshot/namespace".into(),
                "db".into(),
            ),
        ]),
        ..Default::default()
    }
}

fn sourced_req(
    name: &str,
    class: &str,
    thin: bool,
    source: Type,
    node: Option<&str>,
) -> csi::CreateVolumeRequest {
    let mut req = create(name, class, GIB, node);
    if thin {
        req.parameters
            .insert("strata.io/provisioning".into(), "thin".into());
    }
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(source),
    });
    req
}

fn from_snapshot(id: &str) -> Type {
    Type::Snapshot(SnapshotSource {
        snapshot_id: id.into(),
    })
}

fn from_volume(id: &str) -> Type {
    Type::Volume(VolumeSource {
        volume_id: id.into(),
    })
}

#[tokio::test]
async fn a_snapshot_is_a_ready_snapshot_object_on_its_origins_node() {
    let cluster = MemoryCluster::default();
    ready_agent(&cluster);
    volume(&cluster, "pvc-1", "a", true);
    let svc = service(&cluster);
    let snap = svc
        .create_snapshot(snapshot_req("snapshot-1", "pvc-1"), WAIT)
        .await
        .unwrap();
    assert_eq!(snap.snapshot_id, "snapshot-1");
    assert_eq!(snap.source_volume_id, "pvc-1");
    assert_eq!(snap.size_bytes, (2 * GIB) as i64);
    assert!(snap.ready_to_use);
    let expected: k8s_openapi::jiff::Timestamp = CREATED.parse().unwrap();
    assert_eq!(snap.creation_time.unwrap().seconds, expected.as_second());

    let lv = cluster.volume("snapshot-1").unwrap();
    assert!(lv.spec.is_snapshot() && lv.spec.is_thin());
    assert_eq!(lv.spec.node_name, "a");
    assert_eq!(lv.spec.device_class, DeviceClass::Nvme);
    assert_eq!(lv.spec.source.as_ref().unwrap().kind, SourceKind::Volume);
    assert_eq!(lv.spec.source.as_ref().unwrap().name, "pvc-1");
    assert_eq!(lv.spec.pvc, None);
    assert_eq!(
        lv.spec.volume_snapshot,
        Some(VolumeSnapshotReference {
            namespace: "db".into(),
            name: "snap".into()
        })
    );
    assert_eq!(
        lv.metadata.finalizers,
        Some(vec![csi_api::names::FINALIZER.to_owned()]),
        "a snapshot has no PV to protect"
    );

    // A repeat is the same snapshot; the name with another source is taken.
    let again = svc
        .create_snapshot(snapshot_req("snapshot-1", "pvc-1"), WAIT)
        .await
        .unwrap();
    assert_eq!(again, snap);
    volume(&cluster, "pvc-2", "a", true);
    let taken = svc
        .create_snapshot(snapshot_req("snapshot-1", "pvc-2"), WAIT)
        .await;
    assert!(matches!(taken, Err(Error::AlreadyExists(_))), "{taken:?}");
    // A volume's name is not a snapshot's.
    let volume_name = svc
        .create_snapshot(snapshot_req("pvc-2", "pvc-1"), WAIT)
        .await;
    assert!(
        matches!(volume_name, Err(Error::AlreadyExists(_))),
        "{volume_name:?}"
    );
    assert_eq!(cluster.volume_count(), 3);
}

#[tokio::test]
async fn snapshot_refusals_change_nothing() {
    let cluster = MemoryCluster::default();
    ready_agent(&cluster);
    volume(&cluster, "pvc-linear", "a", false);
    let svc = service(&cluster);
    let linear = svc
        .create_snapshot(snapshot_req("snapshot-1", "pvc-linear"), WAIT)
        .await;
    match linear {
        Err(Error::FailedPrecondition(m)) => assert!(m.contains("thin StorageClass"), "{m}"),
        other => panic!("{other:?}"),
    }
    let unknown = svc
        .create_snapshot(snapshot_req("snapshot-1", "pvc-none"), WAIT)
        .await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
    let bad_param = svc
        .create_snapshot(
            csi::CreateSnapshotRequest {
                parameters: HashMap::from([("strata.io/device-class".into(), "ssd".into())]),
                ..snapshot_req("snapshot-1", "pvc-linear")
            },
            WAIT,
        )
        .await;
    assert!(
        matches!(bad_param, Err(Error::InvalidArgument(_))),
        "{bad_param:?}"
    );
    let bad_name = svc
        .create_snapshot(snapshot_req("snap/1", "pvc-linear"), WAIT)
        .await;
    assert!(
        matches!(bad_name, Err(Error::InvalidArgument(_))),
        "{bad_name:?}"
    );
    assert_eq!(cluster.volume_count(), 1);

    // A snapshot of a snapshot is not a snapshot of a volume.
    volume(&cluster, "pvc-thin", "a", true);
    svc.create_snapshot(snapshot_req("snapshot-2", "pvc-thin"), WAIT)
        .await
        .unwrap();
    let of_snapshot = svc
        .create_snapshot(snapshot_req("snapshot-3", "snapshot-2"), WAIT)
        .await;
    assert!(
        matches!(of_snapshot, Err(Error::NotFound(_))),
        "{of_snapshot:?}"
    );
    assert_eq!(cluster.volume_count(), 3);
}

#[tokio::test]
async fn a_snapshot_the_pool_cannot_promise_is_resource_exhausted_and_removed() {
    let cluster = MemoryCluster::default();
    volume(&cluster, "pvc-1", "a", true);
    cluster.set_agent(|lv: &mut LogicalVolume| {
        lv.status = Some(LogicalVolumeStatus {
            phase: Some(LogicalVolumePhase::Failed),
            reason: Some(REASON_INSUFFICIENT_SPACE.into()),
            message: Some("thin pool promises no more".into()),
            ..Default::default()
        });
    });
    let refused = service(&cluster)
        .create_snapshot(snapshot_req("snapshot-1", "pvc-1"), WAIT)
        .await;
    assert!(
        matches!(refused, Err(Error::ResourceExhausted(_))),
        "{refused:?}"
    );
    assert!(cluster.volume("snapshot-1").is_none());
    assert!(cluster.volume("pvc-1").is_some());
}

#[tokio::test]
async fn each_terminal_failure_of_the_agent_has_its_csi_code_and_the_object_is_removed() {
    use csi_api::names::{REASON_INVALID_SPEC, REASON_SOURCE_NOT_FOUND, REASON_SOURCE_NOT_THIN};
    // (the agent's reason, the error variant the CSI caller gets)
    let cases = [
        (REASON_SOURCE_NOT_FOUND, tonic::Code::NotFound),
        (REASON_SOURCE_NOT_THIN, tonic::Code::FailedPrecondition),
        (REASON_INVALID_SPEC, tonic::Code::InvalidArgument),
        ("LvmError", tonic::Code::Internal),
    ];
    for (reason, expected) in cases {
        let cluster = MemoryCluster::default();
        volume(&cluster, "pvc-1", "a", true);
        cluster.set_agent(move |lv: &mut LogicalVolume| {
            lv.status = Some(LogicalVolumeStatus {
                phase: Some(LogicalVolumePhase::Failed),
                reason: Some(reason.into()),
                message: Some("as the agent said".into()),
                ..Default::default()
            });
        });
        let refused = service(&cluster)
            .create_snapshot(snapshot_req("snapshot-1", "pvc-1"), WAIT)
            .await;
        let error = refused.expect_err(reason);
        assert_eq!(error.code(), expected, "{reason}: {error:?}");
        assert!(error.to_string().contains("as the agent said"), "{error}");
        assert!(cluster.volume("snapshot-1").is_none(), "{reason}");
        assert!(cluster.volume("pvc-1").is_some(), "{reason}");
    }
}

#[tokio::test]
async fn delete_snapshot_removes_only_snapshots() {
    let cluster = MemoryCluster::default();
    ready_agent(&cluster);
    volume(&cluster, "pvc-1", "a", true);
    let svc = service(&cluster);
    svc.create_snapshot(snapshot_req("snapshot-1", "pvc-1"), WAIT)
        .await
        .unwrap();
    let delete = |id: &str| csi::DeleteSnapshotRequest {
        snapshot_id: id.into(),
        ..Default::default()
    };
    svc.delete_snapshot(delete("snapshot-unknown"))
        .await
        .unwrap();
    let a_volume = svc.delete_snapshot(delete("pvc-1")).await;
    assert!(
        matches!(a_volume, Err(Error::InvalidArgument(_))),
        "{a_volume:?}"
    );
    assert!(cluster.volume("pvc-1").is_some());
    // DeleteVolume of a snapshot id is refused the same way, and the snapshot stays.
    let as_volume = svc
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "snapshot-1".into(),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(as_volume, Err(Error::InvalidArgument(_))),
        "{as_volume:?}"
    );
    assert!(cluster.volume("snapshot-1").is_some());
    // Expand and ValidateVolumeCapabilities find no volume of a snapshot's id.
    let expand = svc
        .expand_volume(
            csi::ControllerExpandVolumeRequest {
                volume_id: "snapshot-1".into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: (4 * GIB) as i64,
                    limit_bytes: 0,
                }),
                ..Default::default()
            },
            WAIT,
        )
        .await;
    assert!(matches!(expand, Err(Error::NotFound(_))), "{expand:?}");
    assert_eq!(
        cluster.volume("snapshot-1").unwrap().spec.size_bytes,
        2 * GIB
    );

    svc.delete_snapshot(delete("snapshot-1")).await.unwrap();
    assert!(cluster.volume("snapshot-1").is_none());
    assert!(cluster.volume("pvc-1").is_some());
}

#[tokio::test]
async fn list_snapshots_filters_and_pages_in_a_stable_order() {
    let cluster = MemoryCluster::default();
    ready_agent(&cluster);
    volume(&cluster, "pvc-1", "a", true);
    volume(&cluster, "pvc-2", "b", true);
    let svc = service(&cluster);
    for (snap, source) in [
        ("snapshot-c", "pvc-1"),
        ("snapshot-a", "pvc-1"),
        ("snapshot-b", "pvc-2"),
    ] {
        svc.create_snapshot(snapshot_req(snap, source), WAIT)
            .await
            .unwrap();
    }
    let list = |max: i32, token: &str, id: &str, source: &str| csi::ListSnapshotsRequest {
        max_entries: max,
        starting_token: token.into(),
        snapshot_id: id.into(),
        source_volume_id: source.into(),
        ..Default::default()
    };
    let ids = |r: &csi::ListSnapshotsResponse| -> Vec<String> {
        r.entries
            .iter()
            .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
            .collect()
    };
    let all = svc.list_snapshots(list(0, "", "", "")).await.unwrap();
    assert_eq!(ids(&all), ["snapshot-a", "snapshot-b", "snapshot-c"]);
    assert_eq!(all.next_token, "");

    let first = svc.list_snapshots(list(2, "", "", "")).await.unwrap();
    assert_eq!(ids(&first), ["snapshot-a", "snapshot-b"]);
    assert_eq!(first.next_token, "snapshot-c");
    let second = svc
        .list_snapshots(list(2, &first.next_token, "", ""))
        .await
        .unwrap();
    assert_eq!(ids(&second), ["snapshot-c"]);
    assert_eq!(second.next_token, "");

    let of_1 = svc.list_snapshots(list(0, "", "", "pvc-1")).await.unwrap();
    assert_eq!(ids(&of_1), ["snapshot-a", "snapshot-c"]);
    let one = svc
        .list_snapshots(list(0, "", "snapshot-b", ""))
        .await
        .unwrap();
    assert_eq!(ids(&one), ["snapshot-b"]);
    let none = svc
        .list_snapshots(list(0, "", "snapshot-x", ""))
        .await
        .unwrap();
    assert!(none.entries.is_empty());
    // A volume id is not a snapshot id.
    let volume = svc.list_snapshots(list(0, "", "pvc-1", "")).await.unwrap();
    assert!(volume.entries.is_empty());

    let bad_token = svc.list_snapshots(list(0, "Not/A-Token", "", "")).await;
    assert!(matches!(bad_token, Err(Error::Aborted(_))), "{bad_token:?}");
    let negative = svc.list_snapshots(list(-1, "", "", "")).await;
    assert!(
        matches!(negative, Err(Error::InvalidArgument(_))),
        "{negative:?}"
    );
}

#[tokio::test]
async fn a_restore_and_a_clone_land_on_the_sources_node_in_its_pool() {
    let cluster = MemoryCluster::default();
    ready_agent(&cluster);
    volume(&cluster, "pvc-1", "a", true);
    let svc = service(&cluster);
    svc.create_snapshot(snapshot_req("snapshot-1", "pvc-1"), WAIT)
        .await
        .unwrap();

    // No accessibility requirements (Immediate binding): still the source's node.
    let restored = svc
        .create_volume(
            sourced_req("pvc-r", "nvme", true, from_snapshot("snapshot-1"), None),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        restored.content_source,
        Some(csi::VolumeContentSource {
            r#type: Some(from_snapshot("snapshot-1"))
        })
    );
    assert_eq!(
        restored.accessible_topology[0].segments[TOPOLOGY_KEY],
        "a".to_owned()
    );
    // At least the source's size, though 1 GiB was asked for.
    assert_eq!(restored.capacity_bytes, (2 * GIB) as i64);
    let lv = cluster.volume("pvc-r").unwrap();
    assert_eq!(lv.spec.node_name, "a");
    assert!(lv.spec.is_thin() && !lv.spec.is_snapshot());
    assert_eq!(lv.spec.source.as_ref().unwrap().kind, SourceKind::Snapshot);
    assert_eq!(lv.spec.source.as_ref().unwrap().name, "snapshot-1");

    let cloned = svc
        .create_volume(
            sourced_req("pvc-c", "nvme", true, from_volume("pvc-1"), Some("a")),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        cloned.content_source,
        Some(csi::VolumeContentSource {
            r#type: Some(from_volume("pvc-1"))
        })
    );
    assert_eq!(
        cluster.volume("pvc-c").unwrap().spec.source.unwrap().kind,
        SourceKind::Volume
    );

    // A repeat is idempotent; the same name from another source, or from none, is taken.
    let again = svc
        .create_volume(
            sourced_req("pvc-r", "nvme", true, from_snapshot("snapshot-1"), None),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(again, restored);
    let other_source = svc
        .create_volume(
            sourced_req("pvc-r", "nvme", true, from_volume("pvc-1"), None),
            WAIT,
        )
        .await;
    assert!(
        matches!(other_source, Err(Error::AlreadyExists(_))),
        "{other_source:?}"
    );
    let mut plain = sourced_req("pvc-r", "nvme", true, from_volume("pvc-1"), None);
    plain.volume_content_source = None;
    let no_source = svc.create_volume(plain, WAIT).await;
    assert!(
        matches!(no_source, Err(Error::AlreadyExists(_))),
        "{no_source:?}"
    );
    assert_eq!(cluster.volume_count(), 4);
}

#[tokio::test]
async fn restore_and_clone_refusals_change_nothing() {
    let cluster = MemoryCluster::default();
    ready_agent(&cluster);
    volume(&cluster, "pvc-1", "a", true);
    volume(&cluster, "pvc-linear", "a", false);
    let svc = service(&cluster);
    svc.create_snapshot(snapshot_req("snapshot-1", "pvc-1"), WAIT)
        .await
        .unwrap();
    let before = cluster.volume_count();
    let code = |r: Result<csi::Volume, Error>| match r {
        Ok(v) => panic!("created {v:?}"),
        Err(e) => (e.code(), e.to_string()),
    };

    let (c, m) = code(
        svc.create_volume(
            sourced_req("pvc-x", "nvme", true, from_snapshot("snapshot-none"), None),
            WAIT,
        )
        .await,
    );
    assert_eq!(c, tonic::Code::NotFound, "{m}");
    // A volume id given as a snapshot, and a snapshot id given as a volume.
    let (c, m) = code(
        svc.create_volume(
            sourced_req("pvc-x", "nvme", true, from_snapshot("pvc-1"), None),
            WAIT,
        )
        .await,
    );
    assert_eq!(c, tonic::Code::NotFound, "{m}");
    let (c, m) = code(
        svc.create_volume(
            sourced_req("pvc-x", "nvme", true, from_volume("snapshot-1"), None),
            WAIT,
        )
        .await,
    );
    assert_eq!(c, tonic::Code::NotFound, "{m}");
    let (c, m) = code(
        svc.create_volume(
            sourced_req("pvc-x", "nvme", true, from_volume("pvc-linear"), None),
            WAIT,
        )
        .await,
    );
    assert_eq!(c, tonic::Code::FailedPrecondition, "{m}");
    assert!(m.contains("thin StorageClass"), "{m}");
    let (c, m) = code(
        svc.create_volume(
            sourced_req("pvc-x", "ssd", true, from_snapshot("snapshot-1"), None),
            WAIT,
        )
        .await,
    );
    assert_eq!(c, tonic::Code::InvalidArgument, "{m}");
    assert!(
        m.contains("stays in its source's class and thin pool"),
        "{m}"
    );
    let (c, m) = code(
        svc.create_volume(
            sourced_req("pvc-x", "nvme", false, from_snapshot("snapshot-1"), None),
            WAIT,
        )
        .await,
    );
    assert_eq!(c, tonic::Code::InvalidArgument, "{m}");
    let (c, m) = code(
        svc.create_volume(
            sourced_req(
                "pvc-x",
                "nvme",
                true,
                from_snapshot("snapshot-1"),
                Some("b"),
            ),
            WAIT,
        )
        .await,
    );
    assert_eq!(c, tonic::Code::ResourceExhausted, "{m}");
    assert!(m.contains("node a"), "{m}");
    let mut small = sourced_req("pvc-x", "nvme", true, from_snapshot("snapshot-1"), None);
    small.capacity_range = Some(csi::CapacityRange {
        required_bytes: GIB as i64,
        limit_bytes: GIB as i64,
    });
    let (c, m) = code(svc.create_volume(small, WAIT).await);
    assert_eq!(c, tonic::Code::OutOfRange, "{m}");
    let mut no_type = sourced_req("pvc-x", "nvme", true, from_snapshot("snapshot-1"), None);
    no_type.volume_content_source = Some(csi::VolumeContentSource { r#type: None });
    let (c, m) = code(svc.create_volume(no_type, WAIT).await);
    assert_eq!(c, tonic::Code::InvalidArgument, "{m}");

    // A source not Ready yet is retryable.
    let mut pending = cluster.volume("pvc-1").unwrap();
    pending.metadata.name = Some("pvc-pending".into());
    pending.status = None;
    cluster.insert_volume(pending);
    let (c, m) = code(
        svc.create_volume(
            sourced_req("pvc-x", "nvme", true, from_volume("pvc-pending"), None),
            WAIT,
        )
        .await,
    );
    assert_eq!(c, tonic::Code::Unavailable, "{m}");
    assert_eq!(cluster.volume_count(), before + 1);
    assert!(cluster.volume("pvc-x").is_none());
}
