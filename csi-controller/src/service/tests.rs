use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use csi_api::crd::{
    ClassHealth, DeviceClassStatus, LogicalVolume, LogicalVolumePhase, LogicalVolumeStatus,
    NodeStorage, NodeStorageSpec, NodeStorageStatus, ThinPoolHealth, ThinPoolStatus,
};
use csi_api::csi;
use csi_api::csi::volume_capability::access_mode::Mode;
use csi_api::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use csi_api::names::{DeviceClass, Placement, Provisioning, TOPOLOGY_KEY};

use super::{ControllerService, REASON_INSUFFICIENT_SPACE, Settings};
use crate::cluster::SelectedClaim;
use crate::cluster::memory::MemoryCluster;
use crate::error::Error;

const GIB: u64 = 1 << 30;
const WAIT: Duration = Duration::from_secs(5);

fn node(name: &str, class: DeviceClass, free: u64, healthy: bool) -> NodeStorage {
    let mut ns = NodeStorage::new(name, NodeStorageSpec::default());
    ns.status = Some(NodeStorageStatus {
        device_classes: vec![DeviceClassStatus {
            name: class,
            vg_name: class.vg_name().into(),
            total_bytes: 100 * GIB,
            free_bytes: free,
            allocatable_bytes: free,
            capacity: None,
            allocatable: None,
            pv_count: 1,
            missing_pv_count: u32::from(!healthy),
            lv_count: 0,
            health: if healthy {
                ClassHealth::Healthy
            } else {
                ClassHealth::Degraded
            },
            thin_pool: None,
        }],
        ..Default::default()
    });
    ns
}

/// Plays a healthy agent: every volume becomes Ready at its spec size.
fn ready_agent(cluster: &MemoryCluster) {
    cluster.set_agent(|lv: &mut LogicalVolume| {
        lv.status = Some(LogicalVolumeStatus {
            phase: Some(LogicalVolumePhase::Ready),
            current_size_bytes: Some(lv.spec.size_bytes),
            ..Default::default()
        });
    });
}

pub(super) fn service(cluster: &MemoryCluster) -> ControllerService<MemoryCluster> {
    ControllerService::new(
        Arc::new(cluster.clone()),
        Settings {
            default_placement: Placement::Binpack,
            max_wait: Duration::from_secs(30),
            stale_after: None,
        },
    )
}

pub(super) fn create(
    name: &str,
    class: &str,
    bytes: u64,
    node: Option<&str>,
) -> csi::CreateVolumeRequest {
    let topology = node.map(|n| csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: [(TOPOLOGY_KEY.into(), n.into())].into(),
        }],
        preferred: vec![csi::Topology {
            segments: [(TOPOLOGY_KEY.into(), n.into())].into(),
        }],
    });
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes as i64,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![csi::VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Mount(MountVolume::default())),
        }],
        parameters: HashMap::from([("strata.io/device-class".into(), class.into())]),
        accessibility_requirements: topology,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_repeat_the_cache_has_not_seen_is_answered_from_the_api_server() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    ready_agent(&cluster);
    let svc = service(&cluster);
    let vol = svc
        .create_volume(create("pvc-1", "nvme", 4 * GIB, Some("a")), WAIT)
        .await
        .unwrap();

    // Another replica made it moments ago: the create conflicts, the object is read and
    // compared, and the same volume is answered.
    cluster.blind_cache(true);
    let again = svc
        .create_volume(create("pvc-1", "nvme", 4 * GIB, Some("a")), WAIT)
        .await
        .unwrap();
    assert_eq!(again, vol);
    let conflict = svc
        .create_volume(create("pvc-1", "nvme", 5 * GIB, Some("a")), WAIT)
        .await;
    assert!(
        matches!(conflict, Err(Error::AlreadyExists(_))),
        "{conflict:?}"
    );
    // Admission refuses a repeat that no longer fits (the node counts the volume itself as
    // pending while the cache lags): the API server still answers it as the existing volume.
    cluster.add_node(node("b", DeviceClass::Nvme, GIB, true));
    let mut on_full = create("pvc-1", "nvme", 4 * GIB, Some("a"));
    on_full.accessibility_requirements =
        create("x", "nvme", GIB, Some("b")).accessibility_requirements;
    let refused_then_found = svc.create_volume(on_full, WAIT).await;
    assert!(
        matches!(refused_then_found, Err(Error::AlreadyExists(_))),
        "a repeat on another node is not the same volume: {refused_then_found:?}"
    );
    assert_eq!(cluster.volume_count(), 1);
    assert_eq!(cluster.volume("pvc-1").unwrap().spec.size_bytes, 4 * GIB);
}

#[tokio::test]
async fn creates_on_the_selected_node_and_repeats_are_idempotent() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    ready_agent(&cluster);
    let svc = service(&cluster);

    let vol = svc
        .create_volume(create("pvc-1", "nvme", GIB, Some("a")), WAIT)
        .await
        .unwrap();
    assert_eq!(vol.volume_id, "pvc-1");
    assert_eq!(vol.capacity_bytes, GIB as i64);
    assert_eq!(vol.accessible_topology[0].segments[TOPOLOGY_KEY], "a");
    let lv = cluster.volume("pvc-1").unwrap();
    assert_eq!(lv.spec.node_name, "a");
    assert_eq!(
        lv.metadata.finalizers.as_deref(),
        Some(
            &[
                "strata.io/lv".to_string(),
                "strata.io/pv-protection".to_string()
            ][..]
        )
    );
    assert_eq!(
        lv.metadata.annotations.as_ref().unwrap()["strata.io/csi-name"],
        "pvc-1"
    );
    assert_eq!(lv.metadata.labels.as_ref().unwrap()["strata.io/node"], "a");

    let again = svc
        .create_volume(create("pvc-1", "nvme", GIB, Some("a")), WAIT)
        .await
        .unwrap();
    assert_eq!(again, vol);
    let conflict = svc
        .create_volume(create("pvc-1", "nvme", 2 * GIB, Some("a")), WAIT)
        .await;
    assert!(
        matches!(conflict, Err(Error::AlreadyExists(_))),
        "{conflict:?}"
    );
    assert_eq!(cluster.volume_count(), 1);
}

#[tokio::test]
async fn a_small_xfs_volume_is_raised_to_the_xfs_minimum_and_a_block_one_is_not() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    ready_agent(&cluster);
    let svc = service(&cluster);
    // 100Mi on the default filesystem (xfs): formatted at xfs's minimum, never stuck at stage.
    let vol = svc
        .create_volume(create("pvc-small", "nvme", 100 << 20, Some("a")), WAIT)
        .await
        .unwrap();
    assert_eq!(vol.capacity_bytes, csi_api::request::XFS_MIN_BYTES as i64);
    assert_eq!(
        cluster.volume("pvc-small").unwrap().spec.size_bytes,
        csi_api::request::XFS_MIN_BYTES
    );
    let mut block = create("pvc-raw", "nvme", 100 << 20, Some("a"));
    block.volume_capabilities[0].access_type = Some(AccessType::Block(Default::default()));
    let vol = svc.create_volume(block, WAIT).await.unwrap();
    assert_eq!(vol.capacity_bytes, 100 << 20);
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    let svc = service(&cluster);
    for req in [
        create("", "nvme", GIB, Some("a")),
        create("pvc-x", "tape", GIB, Some("a")),
        create("pvc-x", "nvme", u64::MAX / 2, Some("a")),
    ] {
        let err = svc.create_volume(req, WAIT).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_) | Error::OutOfRange(_)),
            "{err:?}"
        );
    }
    let mut negative = create("pvc-x", "nvme", GIB, Some("a"));
    negative.capacity_range = Some(csi::CapacityRange {
        required_bytes: -5,
        limit_bytes: 0,
    });
    assert!(matches!(
        svc.create_volume(negative, WAIT).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(cluster.volume_count(), 0);
}

#[tokio::test]
async fn no_room_is_resource_exhausted_and_creates_nothing() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Ssd, 2 * GIB, true));
    cluster.add_node(node("b", DeviceClass::Ssd, 50 * GIB, false));
    let svc = service(&cluster);
    let err = svc
        .create_volume(create("pvc-1", "ssd", 3 * GIB, Some("a")), WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ResourceExhausted(ref m) if m.contains("not enough ssd")),
        "{err}"
    );
    let degraded = svc
        .create_volume(create("pvc-2", "ssd", GIB, Some("b")), WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(degraded, Error::ResourceExhausted(ref m) if m.contains("degraded")),
        "{degraded}"
    );
    let wrong_class = svc
        .create_volume(create("pvc-3", "hdd", GIB, Some("a")), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(wrong_class, Error::ResourceExhausted(_)));
    assert_eq!(cluster.volume_count(), 0);
}

#[tokio::test]
async fn claims_scheduled_on_the_node_count_as_pending() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    ready_agent(&cluster);
    // Another pod's claim is already scheduled there, and this volume's own claim too.
    cluster.add_claim(
        "a",
        SelectedClaim {
            uid: "other".into(),
            class: DeviceClass::Nvme,
            provisioning: Provisioning::Linear,
            bytes: 8 * GIB,
            valid: true,
            pod_on_node: true,
        },
    );
    cluster.add_claim(
        "a",
        SelectedClaim {
            uid: "self".into(),
            class: DeviceClass::Nvme,
            provisioning: Provisioning::Linear,
            bytes: 2 * GIB,
            valid: true,
            pod_on_node: true,
        },
    );
    let svc = service(&cluster);
    svc.create_volume(create("pvc-self", "nvme", 2 * GIB, Some("a")), WAIT)
        .await
        .unwrap();
    let err = svc
        .create_volume(create("pvc-third", "nvme", 3 * GIB, Some("a")), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
}

#[tokio::test]
async fn concurrent_creates_never_overcommit_a_node() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Hdd, 10 * GIB, true));
    // An agent that is slow to make volumes: admission must count the ones not yet Ready.
    let svc = Arc::new(service(&cluster));
    let mut calls = Vec::new();
    for i in 0..20 {
        let svc = svc.clone();
        calls.push(tokio::spawn(async move {
            svc.create_volume(
                create(&format!("pvc-{i}"), "hdd", GIB, Some("a")),
                Duration::from_millis(200),
            )
            .await
        }));
    }
    let mut admitted = 0;
    let mut exhausted = 0;
    for call in calls {
        match call.await.unwrap() {
            Err(Error::DeadlineExceeded(_)) => admitted += 1,
            Err(Error::ResourceExhausted(_)) => exhausted += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((admitted, exhausted), (10, 10));
    assert_eq!(cluster.volume_count(), 10);
}

#[tokio::test]
async fn agent_out_of_space_deletes_the_object_and_reports_exhausted() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    cluster.set_agent(|lv: &mut LogicalVolume| {
        lv.status = Some(LogicalVolumeStatus {
            phase: Some(LogicalVolumePhase::Failed),
            reason: Some(REASON_INSUFFICIENT_SPACE.into()),
            message: Some("Volume group strata-nvme has insufficient free space".into()),
            ..Default::default()
        });
    });
    let svc = service(&cluster);
    let err = svc
        .create_volume(create("pvc-1", "nvme", GIB, Some("a")), WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ResourceExhausted(ref m) if m.contains("insufficient")),
        "{err}"
    );
    assert_eq!(cluster.volume_count(), 0);
}

#[tokio::test]
async fn slow_agent_gives_deadline_exceeded_then_a_retry_succeeds() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    let svc = service(&cluster);
    let err = svc
        .create_volume(
            create("pvc-1", "nvme", GIB, Some("a")),
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded(_)), "{err:?}");
    let mut lv = cluster.volume("pvc-1").unwrap();
    lv.status = Some(LogicalVolumeStatus {
        phase: Some(LogicalVolumePhase::Ready),
        current_size_bytes: Some(GIB),
        ..Default::default()
    });
    cluster.insert_volume(lv);
    let vol = svc
        .create_volume(create("pvc-1", "nvme", GIB, Some("a")), WAIT)
        .await
        .unwrap();
    assert_eq!(vol.capacity_bytes, GIB as i64);
}

#[tokio::test]
async fn a_second_call_on_a_busy_volume_is_aborted() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    let svc = Arc::new(service(&cluster));
    let first = {
        let svc = svc.clone();
        tokio::spawn(async move {
            svc.create_volume(
                create("pvc-1", "nvme", GIB, Some("a")),
                Duration::from_millis(300),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = svc
        .create_volume(create("pvc-1", "nvme", GIB, Some("a")), WAIT)
        .await;
    assert!(matches!(second, Err(Error::Aborted(_))), "{second:?}");
    let delete = svc
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "pvc-1".into(),
            ..Default::default()
        })
        .await;
    assert!(matches!(delete, Err(Error::Aborted(_))), "{delete:?}");
    assert!(matches!(
        first.await.unwrap(),
        Err(Error::DeadlineExceeded(_))
    ));
}

#[tokio::test]
async fn expansion_is_admitted_against_the_node() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    ready_agent(&cluster);
    let svc = service(&cluster);
    svc.create_volume(create("pvc-1", "nvme", GIB, Some("a")), WAIT)
        .await
        .unwrap();
    let expand = |bytes: u64| csi::ControllerExpandVolumeRequest {
        volume_id: "pvc-1".into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes as i64,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let grown = svc.expand_volume(expand(3 * GIB), WAIT).await.unwrap();
    assert_eq!(grown.capacity_bytes, 3 * GIB as i64);
    assert!(grown.node_expansion_required);
    // Shrinking is a no-op that reports the current size.
    assert_eq!(
        svc.expand_volume(expand(GIB), WAIT)
            .await
            .unwrap()
            .capacity_bytes,
        3 * GIB as i64
    );
    // The node reports 10 GiB free (the fake does not subtract), growth beyond that is refused.
    let err = svc.expand_volume(expand(20 * GIB), WAIT).await.unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    assert_eq!(cluster.volume("pvc-1").unwrap().spec.size_bytes, 3 * GIB);
    let missing = svc
        .expand_volume(
            csi::ControllerExpandVolumeRequest {
                volume_id: "pvc-nope".into(),
                ..expand(GIB)
            },
            WAIT,
        )
        .await;
    assert!(matches!(missing, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn immediate_binding_places_by_the_class_strategy() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("roomy", DeviceClass::Ssd, 90 * GIB, true));
    cluster.add_node(node("tight", DeviceClass::Ssd, 5 * GIB, true));
    cluster.add_node(node("full", DeviceClass::Ssd, GIB, true));
    ready_agent(&cluster);
    let svc = service(&cluster);
    let packed = svc
        .create_volume(create("pvc-1", "ssd", 4 * GIB, None), WAIT)
        .await
        .unwrap();
    assert_eq!(
        packed.accessible_topology[0].segments[TOPOLOGY_KEY],
        "tight"
    );

    let mut spread = create("pvc-2", "ssd", 4 * GIB, None);
    spread
        .parameters
        .insert("strata.io/placement".into(), "spread".into());
    let spread = svc.create_volume(spread, WAIT).await.unwrap();
    assert_eq!(
        spread.accessible_topology[0].segments[TOPOLOGY_KEY],
        "roomy"
    );
}

#[tokio::test]
async fn capacity_is_reported_per_node_and_class() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    cluster.add_node(node("b", DeviceClass::Nvme, 4 * GIB, true));
    cluster.add_node(node("c", DeviceClass::Hdd, 7 * GIB, true));
    let svc = service(&cluster);
    let nvme = HashMap::from([("strata.io/device-class".to_string(), "nvme".to_string())]);
    let on_a = svc
        .get_capacity(csi::GetCapacityRequest {
            parameters: nvme.clone(),
            accessible_topology: Some(csi::Topology {
                segments: [(TOPOLOGY_KEY.into(), "a".into())].into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(on_a.available_capacity, 10 * GIB as i64);
    let all = svc
        .get_capacity(csi::GetCapacityRequest {
            parameters: nvme,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.available_capacity, 14 * GIB as i64);
    assert_eq!(all.maximum_volume_size, Some(10 * GIB as i64));
}

fn service_with(
    cluster: &MemoryCluster,
    max_wait: Duration,
    stale_after: Option<Duration>,
) -> ControllerService<MemoryCluster> {
    ControllerService::new(
        Arc::new(cluster.clone()),
        Settings {
            default_placement: Placement::Binpack,
            max_wait,
            stale_after,
        },
    )
}

fn expand_req(id: &str, bytes: u64) -> csi::ControllerExpandVolumeRequest {
    csi::ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes as i64,
            limit_bytes: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn calls_without_a_deadline_wait_a_bounded_time_and_never_panic() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    ready_agent(&cluster);
    let svc = service_with(&cluster, Duration::from_millis(200), None);
    svc.create_volume(create("pvc-1", "nvme", GIB, Some("a")), Duration::MAX)
        .await
        .unwrap();
    // From now on the agent never grows anything: the wait must end at the cap.
    cluster.set_agent(|_| {});
    let started = std::time::Instant::now();
    let err = svc
        .expand_volume(expand_req("pvc-1", 2 * GIB), Duration::MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The cluster seam itself caps an unbounded wait too.
    use crate::cluster::Cluster;
    let (_, done) = tokio::time::timeout(
        Duration::from_secs(1),
        cluster.wait_logical_volume("pvc-1", &|_| true, Duration::MAX),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(done);
}

#[tokio::test]
async fn names_a_kubernetes_object_cannot_carry_are_mapped_everywhere() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    ready_agent(&cluster);
    let svc = service(&cluster);
    let name = "Volume_ONE";
    let vol = svc
        .create_volume(create(name, "nvme", GIB, Some("a")), WAIT)
        .await
        .unwrap();
    let object = crate::object_name::object_name(name);
    assert_eq!(vol.volume_id, object);
    let lv = cluster
        .volume(&object)
        .expect("object under the mapped name");
    assert_eq!(
        lv.metadata.annotations.as_ref().unwrap()["strata.io/csi-name"],
        name
    );
    // Idempotent by the CSI name; a name differing only in case is another volume.
    let again = svc
        .create_volume(create(name, "nvme", GIB, Some("a")), WAIT)
        .await
        .unwrap();
    assert_eq!(again, vol);
    let other = svc
        .create_volume(create("volume_one", "nvme", GIB, Some("a")), WAIT)
        .await
        .unwrap();
    assert_ne!(other.volume_id, vol.volume_id);
    assert_eq!(cluster.volume_count(), 2);
    // Expand, validate and delete find it by the id handed out and by the original name.
    let grown = svc
        .expand_volume(expand_req(name, 2 * GIB), WAIT)
        .await
        .unwrap();
    assert_eq!(grown.capacity_bytes, 2 * GIB as i64);
    let validated = svc
        .validate_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: vol.volume_id.clone(),
            volume_capabilities: create(name, "nvme", GIB, None).volume_capabilities,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(validated.confirmed.is_some());
    svc.delete_volume(csi::DeleteVolumeRequest {
        volume_id: vol.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(cluster.volume(&object).is_none());
    assert_eq!(cluster.volume_count(), 1);
}

#[tokio::test]
async fn delete_volume_releases_the_protection_then_deletes() {
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    ready_agent(&cluster);
    let svc = service(&cluster);
    svc.create_volume(create("pvc-1", "nvme", GIB, Some("a")), WAIT)
        .await
        .unwrap();
    // Deleting the object any other way leaves it held by the protection finalizer.
    use crate::cluster::Cluster;
    cluster.delete_logical_volume("pvc-1").await.unwrap();
    let held = cluster
        .volume("pvc-1")
        .expect("held by strata.io/pv-protection");
    assert!(held.metadata.deletion_timestamp.is_some());
    // DeleteVolume releases it: the object goes (the agent's own finalizer is not modelled).
    let delete = || csi::DeleteVolumeRequest {
        volume_id: "pvc-1".into(),
        ..Default::default()
    };
    svc.delete_volume(delete()).await.unwrap();
    assert!(cluster.volume("pvc-1").is_none());
    svc.delete_volume(delete()).await.expect("idempotent");
}

fn with_updated_at(mut ns: NodeStorage, age: Duration) -> NodeStorage {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let at = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::try_from(age).unwrap())
        .unwrap();
    ns.status.as_mut().unwrap().updated_at = Some(Time(at));
    ns
}

#[tokio::test]
async fn a_stale_node_takes_nothing_and_reports_no_capacity() {
    let cluster = MemoryCluster::default();
    cluster.add_node(with_updated_at(
        node("dead", DeviceClass::Nvme, 50 * GIB, true),
        Duration::from_secs(600),
    ));
    cluster.add_node(with_updated_at(
        node("live", DeviceClass::Nvme, 10 * GIB, true),
        Duration::from_secs(30),
    ));
    ready_agent(&cluster);
    let svc = service_with(&cluster, WAIT, Some(Duration::from_secs(180)));
    let err = svc
        .create_volume(create("pvc-1", "nvme", GIB, Some("dead")), WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ResourceExhausted(m) if m.contains("stale")),
        "{err:?}"
    );
    assert_eq!(cluster.volume_count(), 0);
    let all = svc
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .unwrap();
    assert_eq!(all.available_capacity, 10 * GIB as i64);
    // Immediate binding never picks the stale node, even though it has the most room.
    let vol = svc
        .create_volume(create("pvc-2", "nvme", GIB, None), WAIT)
        .await
        .unwrap();
    assert_eq!(vol.accessible_topology[0].segments[TOPOLOGY_KEY], "live");
}

#[tokio::test]
async fn only_credible_selected_node_claims_count() {
    let claim = |uid: &str, bytes: u64, valid: bool, pod_on_node: bool| SelectedClaim {
        uid: uid.into(),
        class: DeviceClass::Nvme,
        provisioning: Provisioning::Linear,
        bytes,
        valid,
        pod_on_node,
    };
    let cluster = MemoryCluster::default();
    cluster.add_node(node("a", DeviceClass::Nvme, 10 * GIB, true));
    ready_agent(&cluster);
    // A claim nobody's pod uses, an invalid one, and one bigger than the whole class: none of
    // them may block the node.
    cluster.add_claim("a", claim("no-pod", 9 * GIB, true, false));
    cluster.add_claim("a", claim("invalid", 9 * GIB, false, true));
    cluster.add_claim("a", claim("absurd", 1 << 60, true, true));
    let svc = service(&cluster);
    svc.create_volume(create("pvc-x", "nvme", 8 * GIB, Some("a")), WAIT)
        .await
        .expect("bogus claims do not block the node");
    // A credible one does (the fake NodeStorage still reports 10 GiB free).
    cluster.add_claim("a", claim("real", 3 * GIB, true, true));
    let err = svc
        .create_volume(create("pvc-y", "nvme", 8 * GIB, Some("a")), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
}

fn ready_volume(
    name: &str,
    node: &str,
    spec: u64,
    current: u64,
    sequence: Option<u64>,
) -> LogicalVolume {
    let mut lv = LogicalVolume::new(
        name,
        csi_api::crd::LogicalVolumeSpec {
            node_name: node.into(),
            device_class: DeviceClass::Nvme,
            size_bytes: spec,
            pvc: None,
            source: None,
            role: None,
            volume_snapshot: None,
            wipe: None,
            provisioning: None,
        },
    );
    lv.status = Some(LogicalVolumeStatus {
        phase: Some(LogicalVolumePhase::Ready),
        current_size_bytes: Some(current),
        capacity_sequence: sequence,
        ..Default::default()
    });
    lv
}

#[tokio::test]
async fn a_ready_volume_counts_until_its_node_republishes() {
    let cluster = MemoryCluster::default();
    let mut ns = node("a", DeviceClass::Nvme, 10 * GIB, true);
    ns.status.as_mut().unwrap().capacity_sequence = Some(4);
    cluster.add_node(ns);
    // Ready at sequence 5: NodeStorage (published at 4) does not reflect its 6 GiB yet.
    cluster.insert_volume(ready_volume("pvc-early", "a", 6 * GIB, 6 * GIB, Some(5)));
    ready_agent(&cluster);
    let svc = service(&cluster);
    let err = svc
        .create_volume(create("pvc-late", "nvme", 6 * GIB, Some("a")), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    svc.create_volume(create("pvc-small", "nvme", 4 * GIB, Some("a")), WAIT)
        .await
        .expect("4 GiB still fit");
}

#[tokio::test]
async fn growth_not_yet_made_counts_against_the_node() {
    let cluster = MemoryCluster::default();
    let mut ns = node("a", DeviceClass::Nvme, 10 * GIB, true);
    ns.status.as_mut().unwrap().capacity_sequence = Some(9);
    cluster.add_node(ns);
    // Reflected at 1 GiB, asked to grow to 7 GiB: 6 GiB are promised.
    cluster.insert_volume(ready_volume("pvc-grow", "a", 7 * GIB, GIB, Some(3)));
    ready_agent(&cluster);
    let svc = service(&cluster);
    let err = svc
        .expand_volume(expand_req("pvc-grow", 12 * GIB), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    let err = svc
        .create_volume(create("pvc-new", "nvme", 5 * GIB, Some("a")), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    svc.create_volume(create("pvc-fits", "nvme", 4 * GIB, Some("a")), WAIT)
        .await
        .expect("10 - 6 = 4 GiB fit");
}

/// `node` with a thin pool on its class: 50 GiB at ratio 2, `promisable` left, `health`.
fn thin_node(
    name: &str,
    class: DeviceClass,
    free: u64,
    promisable: u64,
    health: ThinPoolHealth,
) -> NodeStorage {
    let mut ns = node(name, class, free, true);
    ns.status.as_mut().unwrap().device_classes[0].thin_pool = Some(ThinPoolStatus {
        lv_name: "strata-thinpool".into(),
        size_bytes: 50 * GIB,
        used_bytes: 5 * GIB,
        metadata_size_bytes: GIB,
        metadata_used_bytes: 0,
        overprovision_ratio: 2.0,
        virtual_bytes: (100 * GIB).saturating_sub(promisable),
        promisable_bytes: promisable,
        health,
    });
    ns
}

fn thin(mut req: csi::CreateVolumeRequest) -> csi::CreateVolumeRequest {
    req.parameters
        .insert("strata.io/provisioning".into(), "thin".into());
    req
}

#[tokio::test]
async fn a_burst_of_thin_creates_never_promises_more_than_promisable() {
    let cluster = MemoryCluster::default();
    // 2 GiB of VG space, 30 GiB promisable: thin is admitted against the pool only.
    cluster.add_node(thin_node(
        "a",
        DeviceClass::Nvme,
        2 * GIB,
        30 * GIB,
        ThinPoolHealth::Healthy,
    ));
    // A slow agent: admission must count the thin volumes not yet made.
    let svc = Arc::new(service(&cluster));
    let mut calls = Vec::new();
    for i in 0..40 {
        let svc = svc.clone();
        calls.push(tokio::spawn(async move {
            svc.create_volume(
                thin(create(&format!("pvc-{i}"), "nvme", GIB, Some("a"))),
                Duration::from_millis(200),
            )
            .await
        }));
    }
    let (mut admitted, mut exhausted) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Err(Error::DeadlineExceeded(_)) => admitted += 1,
            Err(Error::ResourceExhausted(m)) => {
                assert!(m.contains("thin pool"), "{m}");
                exhausted += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((admitted, exhausted), (30, 10));
    assert_eq!(cluster.volume_count(), 30);
    let made = cluster.volume("pvc-0").unwrap();
    assert_eq!(made.spec.provisioning, Some(Provisioning::Thin));
    // The pending thin promises took no linear space.
    let linear = svc
        .create_volume(
            create("pvc-linear", "nvme", 2 * GIB, Some("a")),
            Duration::from_millis(50),
        )
        .await;
    assert!(
        matches!(linear, Err(Error::DeadlineExceeded(_))),
        "{linear:?}"
    );
    assert_eq!(
        cluster.volume("pvc-linear").unwrap().spec.provisioning,
        None
    );
}

#[tokio::test]
async fn thin_is_refused_without_a_pool_on_a_full_pool_and_on_a_degraded_class() {
    let refused = |ns: NodeStorage, needle: &'static str| async move {
        let cluster = MemoryCluster::default();
        cluster.add_node(ns);
        ready_agent(&cluster);
        let svc = service(&cluster);
        let err = svc
            .create_volume(thin(create("pvc-1", "nvme", GIB, Some("a"))), WAIT)
            .await
            .unwrap_err();
        match err {
            Error::ResourceExhausted(m) => assert!(m.contains(needle), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(cluster.volume_count(), 0);
    };
    refused(
        node("a", DeviceClass::Nvme, 50 * GIB, true),
        "the node's agent serves no thin pool for class nvme",
    )
    .await;
    // Full: refused although the published number says otherwise.
    refused(
        thin_node(
            "a",
            DeviceClass::Nvme,
            50 * GIB,
            20 * GIB,
            ThinPoolHealth::Full,
        ),
        "thin pool is Full",
    )
    .await;
    let mut degraded = thin_node(
        "a",
        DeviceClass::Nvme,
        50 * GIB,
        20 * GIB,
        ThinPoolHealth::Healthy,
    );
    let class = &mut degraded.status.as_mut().unwrap().device_classes[0];
    class.missing_pv_count = 1;
    class.health = ClassHealth::Degraded;
    refused(degraded, "degraded").await;
}

#[tokio::test]
async fn a_repeat_with_another_provisioning_already_exists() {
    let cluster = MemoryCluster::default();
    cluster.add_node(thin_node(
        "a",
        DeviceClass::Nvme,
        10 * GIB,
        30 * GIB,
        ThinPoolHealth::Healthy,
    ));
    ready_agent(&cluster);
    let svc = service(&cluster);
    svc.create_volume(thin(create("pvc-1", "nvme", GIB, Some("a"))), WAIT)
        .await
        .unwrap();
    svc.create_volume(thin(create("pvc-1", "nvme", GIB, Some("a"))), WAIT)
        .await
        .unwrap();
    let linear = svc
        .create_volume(create("pvc-1", "nvme", GIB, Some("a")), WAIT)
        .await;
    match linear {
        Err(Error::AlreadyExists(m)) => assert!(m.contains("provisioning thin"), "{m}"),
        other => panic!("{other:?}"),
    }
    svc.create_volume(create("pvc-2", "nvme", GIB, Some("a")), WAIT)
        .await
        .unwrap();
    let as_thin = svc
        .create_volume(thin(create("pvc-2", "nvme", GIB, Some("a"))), WAIT)
        .await;
    assert!(
        matches!(as_thin, Err(Error::AlreadyExists(_))),
        "{as_thin:?}"
    );
}

#[tokio::test]
async fn thin_capacity_and_growth_are_the_pools_promisable_minus_pending_thin() {
    let cluster = MemoryCluster::default();
    cluster.add_node(thin_node(
        "a",
        DeviceClass::Nvme,
        3 * GIB,
        20 * GIB,
        ThinPoolHealth::Healthy,
    ));
    cluster.add_node(node("b", DeviceClass::Nvme, 40 * GIB, true));
    cluster.add_node(thin_node(
        "c",
        DeviceClass::Nvme,
        40 * GIB,
        9 * GIB,
        ThinPoolHealth::Full,
    ));
    // A thin claim scheduled on "a" (its pod bound there) is thin demand.
    cluster.add_claim(
        "a",
        SelectedClaim {
            uid: "other".into(),
            class: DeviceClass::Nvme,
            provisioning: Provisioning::Thin,
            bytes: 4 * GIB,
            valid: true,
            pod_on_node: true,
        },
    );
    ready_agent(&cluster);
    let svc = service(&cluster);
    let thin_params = HashMap::from([
        ("strata.io/device-class".to_string(), "nvme".to_string()),
        ("strata.io/provisioning".to_string(), "thin".to_string()),
    ]);
    let capacity = |parameters: HashMap<String, String>| {
        svc.get_capacity(csi::GetCapacityRequest {
            parameters,
            ..Default::default()
        })
    };
    // a: 20 − 4 pending; b: no pool; c: Full.
    let all = capacity(thin_params.clone()).await.unwrap();
    assert_eq!(all.available_capacity, 16 * GIB as i64);
    assert_eq!(all.maximum_volume_size, Some(16 * GIB as i64));
    let linear = capacity(HashMap::from([(
        "strata.io/device-class".to_string(),
        "nvme".to_string(),
    )]))
    .await
    .unwrap();
    assert_eq!(linear.available_capacity, 83 * GIB as i64);
    let bad = capacity(HashMap::from([(
        "strata.io/provisioning".to_string(),
        "fat".to_string(),
    )]))
    .await;
    assert!(matches!(bad, Err(Error::InvalidArgument(_))), "{bad:?}");

    // Thin growth is admitted against promisable (16 GiB left), not the VG's 3 GiB.
    svc.create_volume(thin(create("pvc-t", "nvme", GIB, Some("a"))), WAIT)
        .await
        .unwrap();
    // The fake agent makes volumes at once and never republishes NodeStorage: promisable stays
    // 20 GiB, 4 GiB of it pending for the claim; a growth of 14 GiB fits, then one of 17 does not.
    let grown = svc
        .expand_volume(expand_req("pvc-t", 15 * GIB), WAIT)
        .await
        .unwrap();
    assert_eq!(grown.capacity_bytes, 15 * GIB as i64);
    let err = svc
        .expand_volume(expand_req("pvc-t", 32 * GIB), WAIT)
        .await
        .unwrap_err();
    match err {
        Error::ResourceExhausted(m) => assert!(m.contains("thin pool"), "{m}"),
        other => panic!("{other:?}"),
    }
}
