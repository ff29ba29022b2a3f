//! Admission through the real seams (issue 14): the controller's gRPC service with its watched
//! caches (`KubeCluster`) over a unix socket, against the fake API server — a tenant's bogus
//! `selected-node` claim does not block a node, calls without a deadline answer in bounded time,
//! CSI names a Kubernetes object cannot carry become valid object names, and a create plus a
//! delete draw no conflict from the API server; and thin provisioning (issue 20): a burst of thin
//! creates never promises more than the node's thin pool allows, a `Full` pool and a class
//! without a pool are refused in admission. An agent stand-in marks new volumes Ready (and grown
//! ones grown) unless a test runs without it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_api::crd::{
    ClassHealth, DeviceClassStatus, LogicalVolume, NodeStorage, NodeStorageSpec, NodeStorageStatus,
    ThinPoolHealth, ThinPoolStatus,
};
use csi_api::csi::controller_server::ControllerServer;
use csi_api::csi::identity_server::IdentityServer;
use csi_api::csi::{self, CapacityRange, Topology, TopologyRequirement};
use csi_api::names::{self, DeviceClass, Placement};
use csi_controller::cluster::KubeCluster;
use csi_controller::grpc::Grpc;
use csi_controller::metrics::Metrics;
use csi_controller::service::{ControllerService, Settings};
use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use strata_tests::apiserver::FakeApiServer;
use strata_tests::csi_client::{Csi, block_cap, create_request};
use tokio_util::sync::CancellationToken;
use tonic::Code;

pub(crate) const GIB: u64 = 1 << 30;
pub(crate) const NODE: &str = "n1";
/// The sequence of the seeded NodeStorage; the stand-in agent's tickets are beyond it, so its
/// volumes stay pending as a real agent's do until it republishes.
pub(crate) const PUBLISHED: u64 = 100;

pub(crate) struct Harness {
    server: FakeApiServer,
    pub(crate) client: Client,
    pub(crate) csi: Csi,
    pub(crate) stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn node_storage(ssd_bytes: u64) -> NodeStorage {
    let mut ns = NodeStorage::new(NODE, NodeStorageSpec::default());
    ns.status = Some(NodeStorageStatus {
        device_classes: vec![DeviceClassStatus {
            name: DeviceClass::Ssd,
            vg_name: DeviceClass::Ssd.vg_name().into(),
            total_bytes: ssd_bytes,
            free_bytes: ssd_bytes,
            allocatable_bytes: ssd_bytes,
            pv_count: 1,
            missing_pv_count: 0,
            lv_count: 0,
            health: ClassHealth::Healthy,
            capacity: None,
            allocatable: None,
            thin_pool: None,
        }],
        capacity_sequence: Some(PUBLISHED),
        ..Default::default()
    });
    ns
}

/// Seeds `objects` (before the controller's caches start, so their first list holds them),
/// starts the controller service with `max_wait`, serves it on a unix socket, and (with
/// `agent`) the stand-in agent.
async fn start(objects: &[serde_json::Value], max_wait: Duration, agent: bool) -> Harness {
    start_with(node_storage(10 * GIB), objects, max_wait, agent).await
}

/// [`start`] with the node's NodeStorage as given, and the thin StorageClass `strata-thin` too.
pub(crate) async fn start_with(
    node: NodeStorage,
    objects: &[serde_json::Value],
    max_wait: Duration,
    agent: bool,
) -> Harness {
    let server = FakeApiServer::start().await.expect("fake API server");
    server.seed(&node).unwrap();
    server
        .seed(&json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "strata-thin"},
            "provisioner": names::DRIVER_NAME,
            "parameters": {(names::PARAM_DEVICE_CLASS): "ssd", (names::PARAM_PROVISIONING): "thin"},
            "volumeBindingMode": "WaitForFirstConsumer"
        }))
        .unwrap();
    server
        .seed(&json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "strata-ssd"},
            "provisioner": names::DRIVER_NAME,
            "parameters": {(names::PARAM_DEVICE_CLASS): "ssd"},
            "volumeBindingMode": "WaitForFirstConsumer"
        }))
        .unwrap();
    for o in objects {
        server.seed(o).unwrap();
    }
    let client = server.client().unwrap();
    let stop = CancellationToken::new();
    let cluster = KubeCluster::start(client.clone(), stop.clone())
        .await
        .expect("watched caches");
    let service = Arc::new(ControllerService::new(
        Arc::new(cluster),
        Settings {
            default_placement: Placement::Binpack,
            max_wait,
            stale_after: None,
        },
    ));
    let grpc = Grpc::new(service, Metrics::new());
    let dir = tempfile::tempdir().unwrap();
    let socket: PathBuf = dir.path().join("controller.sock");
    let incoming = csi_api::runtime::bind_unix(&socket).unwrap();
    let shutdown = stop.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(
                csi_api::identity::IdentityService::new(true, grpc.probe()),
            ))
            .add_service(ControllerServer::new(grpc))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
    });
    if agent {
        tokio::spawn(stand_in_agent(client.clone(), stop.clone()));
    }
    let csi = Csi::connect_lazy(&socket).unwrap();
    Harness {
        server,
        client,
        csi,
        stop,
        _dir: dir,
    }
}

/// Plays the node's agent: a LogicalVolume without status becomes Ready at its size, a grown one
/// grows, each with a capacity ticket beyond the published NodeStorage.
async fn stand_in_agent(client: Client, stop: CancellationToken) {
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
        let current = lv.status.as_ref().and_then(|s| s.current_size_bytes);
        if lv.metadata.deletion_timestamp.is_some() || current >= Some(lv.spec.size_bytes) {
            continue;
        }
        ticket += 1;
        let status = json!({ "status": {
            "phase": "Ready", "currentSizeBytes": lv.spec.size_bytes, "capacitySequence": ticket } });
        let _ = api
            .patch_status(
                &lv.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await;
    }
}

fn on_node(mut req: csi::CreateVolumeRequest) -> csi::CreateVolumeRequest {
    let topology = Topology {
        segments: [(names::TOPOLOGY_KEY.to_owned(), NODE.to_owned())].into(),
    };
    req.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![topology.clone()],
        preferred: vec![topology],
    });
    req
}

pub(crate) fn ssd(name: &str, bytes: u64) -> csi::CreateVolumeRequest {
    on_node(create_request(
        name,
        "ssd",
        i64::try_from(bytes).unwrap(),
        block_cap(),
    ))
}

/// A claim of `strata-ssd` annotated with the selected node.
fn claim(name: &str, size: &str, modes: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "tenant", "uid": format!("uid-{name}"),
                     "annotations": {(names::ANNOTATION_SELECTED_NODE): NODE}},
        "spec": {"storageClassName": "strata-ssd", "accessModes": modes,
                 "resources": {"requests": {"storage": size}}},
    })
}

/// A Pending pod using `claim`, bound to the node.
fn pod_on_node(name: &str, claim: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "tenant"},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
        "status": {"phase": "Pending"},
    })
}

#[tokio::test]
async fn a_bogus_selected_node_claim_does_not_block_the_node() {
    let h = start(
        &[
            // absurd size, no pod
            claim("absurd", "1Pi", &["ReadWriteOnce"]),
            // an access mode CreateVolume refuses with a final error, even with a pod on the node
            claim("shared", "8Gi", &["ReadWriteMany"]),
            pod_on_node("uses-shared", "shared"),
            // plausible, but no pod bound or nominated there
            claim("no-pod", "8Gi", &["ReadWriteOnce"]),
            // the control: a credible claim (valid, its pod bound to the node) does count
            claim("credible", "4Gi", &["ReadWriteOnce"]),
            pod_on_node("uses-credible", "credible"),
        ],
        Duration::from_secs(30),
        true,
    )
    .await;
    let mut ctl = h.csi.controller.clone();
    // 10 GiB less the credible 4 GiB: 8 GiB does not fit …
    let refused = ctl
        .create_volume(ssd("pvc-big", 8 * GIB))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // … 6 GiB does, whatever the bogus claims say
    let made = ctl
        .create_volume(ssd("pvc-fits", 6 * GIB))
        .await
        .expect("a bogus claim blocked the node")
        .into_inner();
    assert_eq!(made.volume.unwrap().capacity_bytes, 6 * GIB as i64);
    // and the node is now full for real
    let full = ctl.create_volume(ssd("pvc-more", GIB)).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
}

/// Whether a call's outcome is a bounded, well-formed answer (a handler panic resets the
/// stream, which the client sees as Unknown/Internal).
fn assert_answered<T: std::fmt::Debug>(
    what: &str,
    result: &Result<tonic::Response<T>, tonic::Status>,
    allowed: &[Code],
) {
    match result {
        Ok(_) => assert!(allowed.contains(&Code::Ok), "{what}: unexpected success"),
        Err(s) => assert!(
            allowed.contains(&s.code()),
            "{what}: {:?} {} (allowed {allowed:?})",
            s.code(),
            s.message()
        ),
    }
}

#[tokio::test]
async fn calls_without_a_deadline_get_a_bounded_answer_on_every_rpc() {
    // no agent: nothing ever becomes Ready or grows, so every wait runs to its bound
    let bound = Duration::from_secs(2);
    let h = start(&[], bound, false).await;
    let mut ctl = h.csi.controller.clone();
    let limit = bound + Duration::from_secs(8);
    let timed = Instant::now();
    let r = ctl.create_volume(ssd("pvc-slow", GIB)).await;
    assert_answered("CreateVolume", &r, &[Code::DeadlineExceeded]);
    assert!(
        timed.elapsed() < limit,
        "CreateVolume took {:?}",
        timed.elapsed()
    );
    // the repeat joins the wait, bounded too
    let timed = Instant::now();
    let r = ctl.create_volume(ssd("pvc-slow", GIB)).await;
    assert_answered("repeat CreateVolume", &r, &[Code::DeadlineExceeded]);
    assert!(timed.elapsed() < limit);
    // the node's agent makes it: then the create answers, and an expansion waits (bounded)
    let api: Api<LogicalVolume> = Api::all(h.client.clone());
    let ready = json!({"status": {"phase": "Ready", "currentSizeBytes": GIB,
                                  "capacitySequence": PUBLISHED}});
    api.patch_status("pvc-slow", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ctl.create_volume(ssd("pvc-slow", GIB)).await {
            Ok(_) => break,
            Err(s) if Instant::now() < deadline && s.code() == Code::DeadlineExceeded => {}
            Err(s) => panic!("CreateVolume of a Ready volume: {s:?}"),
        }
    }
    let timed = Instant::now();
    let r = ctl
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: "pvc-slow".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 2 * GIB as i64,
                limit_bytes: 0,
            }),
            volume_capability: Some(block_cap()),
            ..Default::default()
        })
        .await;
    assert_answered("ControllerExpandVolume", &r, &[Code::DeadlineExceeded]);
    assert!(timed.elapsed() < limit, "expand took {:?}", timed.elapsed());
    let r = ctl
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "pvc-slow".into(),
            volume_capabilities: vec![block_cap()],
            ..Default::default()
        })
        .await;
    assert_answered("ValidateVolumeCapabilities", &r, &[Code::Ok]);
    let r = ctl
        .get_capacity(csi::GetCapacityRequest {
            parameters: [(names::PARAM_DEVICE_CLASS.to_owned(), "ssd".to_owned())].into(),
            ..Default::default()
        })
        .await;
    assert_answered("GetCapacity", &r, &[Code::Ok]);
    let r = ctl
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await;
    assert_answered("ControllerGetCapabilities", &r, &[Code::Ok]);
    let r = ctl.list_volumes(csi::ListVolumesRequest::default()).await;
    assert_answered("ListVolumes", &r, &[Code::Unimplemented]);
    let r = ctl
        .controller_publish_volume(csi::ControllerPublishVolumeRequest::default())
        .await;
    assert_answered("ControllerPublishVolume", &r, &[Code::Unimplemented]);
    let timed = Instant::now();
    let r = ctl
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "pvc-slow".into(),
            ..Default::default()
        })
        .await;
    assert_answered("DeleteVolume", &r, &[Code::Ok]);
    assert!(timed.elapsed() < limit);
    // the server is still whole
    let probe = h.csi.identity.clone().probe(csi::ProbeRequest {}).await;
    assert_answered("Probe", &probe, &[Code::Ok]);
}

#[tokio::test]
async fn odd_csi_names_make_valid_objects_idempotently_keeping_the_name() {
    let h = start(&[], Duration::from_secs(30), true).await;
    let mut ctl = h.csi.controller.clone();
    let name = "Data_Volume.UPPER-0";
    let first = ctl
        .create_volume(ssd(name, GIB))
        .await
        .expect("an uppercase CSI name")
        .into_inner()
        .volume
        .unwrap();
    let id = first.volume_id.clone();
    assert!(id.starts_with("strata-") && id.len() == 7 + 32, "{id}");
    let again = ctl
        .create_volume(ssd(name, GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, id, "a repeat found another volume");
    // the id is another CSI name: CreateVolume with it meets the object of the original name
    // (AlreadyExists, no second object); calls that take a volume id find it
    let by_id = ctl.create_volume(ssd(&id, GIB)).await.unwrap_err();
    assert_eq!(by_id.code(), Code::AlreadyExists, "{by_id:?}");
    ctl.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.clone(),
        volume_capabilities: vec![block_cap()],
        ..Default::default()
    })
    .await
    .expect("ValidateVolumeCapabilities by the id");
    let api: Api<LogicalVolume> = Api::all(h.client.clone());
    let objects = api.list(&Default::default()).await.unwrap().items;
    assert_eq!(objects.len(), 1, "one object for one volume");
    let annotations = objects[0].annotations();
    assert_eq!(
        annotations.get("strata.io/csi-name").map(String::as_str),
        Some(name)
    );
    // the API server stand-in refuses names a real one refuses: it was never asked to make one
    assert_eq!(h.server.count_answers(Some("POST"), 422), 0);
    assert_eq!(h.server.count_answers(Some("POST"), 201), 1);
    // the same name in a bigger size is another volume: AlreadyExists, nothing made
    let bigger = ctl.create_volume(ssd(name, 2 * GIB)).await.unwrap_err();
    assert_eq!(bigger.code(), Code::AlreadyExists, "{bigger:?}");
    // DeleteVolume by the original name finds the same object
    ctl.delete_volume(csi::DeleteVolumeRequest {
        volume_id: name.into(),
        ..Default::default()
    })
    .await
    .expect("DeleteVolume by the CSI name");
    let held = api.get(&id).await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some(), "not deleted");
    assert_eq!(
        held.finalizers(),
        [names::FINALIZER],
        "only the agent's finalizer left"
    );
}

#[tokio::test]
async fn a_create_and_a_delete_draw_no_conflict() {
    let h = start(&[], Duration::from_secs(30), true).await;
    let mut ctl = h.csi.controller.clone();
    let before = h.server.answers().len();
    let made = ctl
        .create_volume(ssd("pvc-c", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let during_create = h.server.answers().len() - before;
    ctl.delete_volume(csi::DeleteVolumeRequest {
        volume_id: made.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let answers = h.server.answers();
    let conflicts: Vec<_> = answers[before..]
        .iter()
        .filter(|(_, code)| *code == 409)
        .collect();
    assert!(conflicts.is_empty(), "409s: {conflicts:?}");
    let by_verb: BTreeMap<&str, usize> = answers[before..]
        .iter()
        .filter(|(line, _)| line.contains("/logicalvolumes"))
        .fold(BTreeMap::new(), |mut m, (line, _)| {
            *m.entry(line.split(' ').next().unwrap_or("")).or_default() += 1;
            m
        });
    // on LogicalVolumes: the stand-in agent's status PATCH, and the controller's POST for the
    // create, its PATCH of the protection finalizer and its DELETE
    assert!(by_verb.get("POST") == Some(&1), "{by_verb:?}");
    assert!(by_verb.get("DELETE") == Some(&1), "{by_verb:?}");
    println!(
        "API requests during CreateVolume: {during_create}; create+delete by verb: {by_verb:?}"
    );
}

/// The node with `linear` bytes of SSD VG space and a thin pool that may still promise
/// `promisable` bytes (20 GiB at ratio 2), in `health`.
pub(crate) fn thin_node_storage(
    linear: u64,
    promisable: u64,
    health: ThinPoolHealth,
) -> NodeStorage {
    let mut ns = node_storage(linear);
    ns.status.as_mut().unwrap().device_classes[0].thin_pool = Some(ThinPoolStatus {
        lv_name: "strata-thinpool".into(),
        size_bytes: 20 * GIB,
        used_bytes: 2 * GIB,
        metadata_size_bytes: GIB,
        metadata_used_bytes: 0,
        overprovision_ratio: 2.0,
        virtual_bytes: (40 * GIB).saturating_sub(promisable),
        promisable_bytes: promisable,
        health,
    });
    ns
}

pub(crate) fn thin_ssd(name: &str, bytes: u64) -> csi::CreateVolumeRequest {
    let mut req = ssd(name, bytes);
    req.parameters
        .insert(names::PARAM_PROVISIONING.to_owned(), "thin".to_owned());
    req
}

async fn thin_capacity(
    ctl: &mut csi_api::csi::controller_client::ControllerClient<tonic::transport::Channel>,
) -> i64 {
    ctl.get_capacity(csi::GetCapacityRequest {
        parameters: [
            (names::PARAM_DEVICE_CLASS.to_owned(), "ssd".to_owned()),
            (names::PARAM_PROVISIONING.to_owned(), "thin".to_owned()),
        ]
        .into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .available_capacity
}

#[tokio::test]
async fn a_burst_of_thin_creates_never_promises_more_than_the_pool_allows() {
    // 8 GiB promisable; a credible thin claim scheduled there takes 2 GiB of it.
    let mut thin_claim = claim("scheduled", "2Gi", &["ReadWriteOnce"]);
    thin_claim["spec"]["storageClassName"] = json!("strata-thin");
    let h = start_with(
        thin_node_storage(4 * GIB, 8 * GIB, ThinPoolHealth::Healthy),
        &[thin_claim, pod_on_node("uses-scheduled", "scheduled")],
        Duration::from_secs(30),
        true,
    )
    .await;
    let mut ctl = h.csi.controller.clone();
    assert_eq!(thin_capacity(&mut ctl).await, 6 * GIB as i64);
    // The stand-in agent's volumes stay unpublished (beyond the NodeStorage's sequence), so
    // every admitted one is pending for the next, as with a real agent between republishes.
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let mut ctl = h.csi.controller.clone();
            tokio::spawn(
                async move { ctl.create_volume(thin_ssd(&format!("pvc-t{i}"), GIB)).await },
            )
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("thin pool"), "{}", s.message());
                refused += 1;
            }
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert_eq!((admitted, refused), (6, 4));
    let api: Api<LogicalVolume> = Api::all(h.client.clone());
    let objects = api.list(&Default::default()).await.unwrap().items;
    assert_eq!(objects.len(), 6);
    assert!(
        objects
            .iter()
            .all(|lv| lv.spec.provisioning == Some(names::Provisioning::Thin))
    );
    assert_eq!(thin_capacity(&mut ctl).await, 0);
    // The pool's promises took nothing from the VG: a 4 GiB linear volume still fits, linear.
    ctl.create_volume(ssd("pvc-linear", 4 * GIB))
        .await
        .expect("linear space was taken by thin promises");
    let linear = api.get("pvc-linear").await.unwrap();
    assert_eq!(linear.spec.provisioning, None);
    // The same name as thin is another volume.
    let again = ctl
        .create_volume(thin_ssd("pvc-linear", 4 * GIB))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
}

#[tokio::test]
async fn a_full_pool_and_a_class_without_a_pool_are_refused_in_admission() {
    for (node, needle) in [
        (
            thin_node_storage(10 * GIB, 8 * GIB, ThinPoolHealth::Full),
            "thin pool is Full",
        ),
        (
            node_storage(10 * GIB),
            "the node's agent serves no thin pool for class ssd",
        ),
    ] {
        let h = start_with(node, &[], Duration::from_secs(30), true).await;
        let mut ctl = h.csi.controller.clone();
        assert_eq!(thin_capacity(&mut ctl).await, 0);
        let refused = ctl.create_volume(thin_ssd("pvc-t", GIB)).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains(needle), "{}", refused.message());
        let api: Api<LogicalVolume> = Api::all(h.client.clone());
        assert!(
            api.list(&Default::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
        // Linear volumes of the class are unaffected.
        ctl.create_volume(ssd("pvc-l", GIB)).await.expect("linear");
    }
}
