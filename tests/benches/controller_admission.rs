//! CreateVolume against the fake API server at cluster scale: API requests and latency per call,
//! the watched-cache controller (`KubeCluster`) against the LIST-per-call design it replaced
//! (kept here, and only here, as the baseline), in the same run.
//!
//!     cargo bench -p strata-tests --bench controller_admission [-- NODES LVS CALLS]
//!
//! Defaults: 5,000 nodes (NodeStorage, one nvme class each), 40,000 Ready LogicalVolumes, 40 calls
//! per mode. An agent stand-in marks each new LogicalVolume Ready through the status subresource;
//! its requests (`PATCH …/status`) are not counted. The requests counted are every other request
//! the fake server logs between the call's start and its answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use csi_api::capacity::{claim_bytes, quantity_bytes};
use csi_api::crd::{
    ClassHealth, DeviceClassStatus, LogicalVolume, LogicalVolumePhase, LogicalVolumeSpec,
    LogicalVolumeStatus, NodeStorage, NodeStorageSpec, NodeStorageStatus,
};
use csi_api::csi;
use csi_api::names::{self, DeviceClass, Placement};
use csi_controller::cluster::{Cluster, ClusterError, KubeCluster, SelectedClaim, VolumeCondition};
use csi_controller::service::{ControllerService, Settings};
use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use strata_tests::apiserver::FakeApiServer;
use tokio_util::sync::CancellationToken;

const GIB: u64 = 1 << 30;

/// The controller's reads as they were before the watched caches: cluster-wide LISTs per call.
struct ListingCluster {
    client: Client,
}

fn err(e: kube::Error) -> ClusterError {
    ClusterError::Api(e.to_string())
}

#[async_trait]
impl Cluster for ListingCluster {
    async fn logical_volume(&self, name: &str) -> Result<Option<LogicalVolume>, ClusterError> {
        Api::<LogicalVolume>::all(self.client.clone())
            .get_opt(name)
            .await
            .map_err(err)
    }
    async fn logical_volumes(&self) -> Result<Vec<LogicalVolume>, ClusterError> {
        Ok(Api::<LogicalVolume>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(err)?
            .items)
    }
    async fn selected_claims_by_node(
        &self,
    ) -> Result<std::collections::HashMap<String, Vec<SelectedClaim>>, ClusterError> {
        Ok(Default::default())
    }
    async fn logical_volumes_on(&self, node: &str) -> Result<Vec<LogicalVolume>, ClusterError> {
        let all = Api::<LogicalVolume>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(err)?;
        Ok(all
            .items
            .into_iter()
            .filter(|lv| lv.spec.node_name == node)
            .collect())
    }
    async fn create_logical_volume(
        &self,
        lv: &LogicalVolume,
    ) -> Result<Option<LogicalVolume>, ClusterError> {
        Api::<LogicalVolume>::all(self.client.clone())
            .create(&PostParams::default(), lv)
            .await
            .map(Some)
            .map_err(err)
    }
    async fn release_protection(&self, _name: &str) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn delete_logical_volume(&self, _name: &str) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn resize_logical_volume(&self, _: &str, _: u64) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn node_storages(&self) -> Result<Vec<NodeStorage>, ClusterError> {
        Ok(Api::<NodeStorage>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(err)?
            .items)
    }
    async fn node_storage(&self, node: &str) -> Result<Option<NodeStorage>, ClusterError> {
        Ok(self
            .node_storages()
            .await?
            .into_iter()
            .find(|ns| ns.metadata.name.as_deref() == Some(node)))
    }
    async fn selected_claims(&self, node: &str) -> Result<Vec<SelectedClaim>, ClusterError> {
        let classes = Api::<StorageClass>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(err)?
            .items;
        let claims = Api::<PersistentVolumeClaim>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(err)?
            .items;
        Ok(claims
            .into_iter()
            .filter_map(|pvc| {
                let selected = pvc
                    .metadata
                    .annotations
                    .as_ref()?
                    .get(names::ANNOTATION_SELECTED_NODE)?;
                let spec = pvc.spec.as_ref()?;
                let sc = classes
                    .iter()
                    .find(|c| c.metadata.name == spec.storage_class_name)?;
                let parameters = sc.parameters.as_ref()?;
                let class = parameters.get(names::PARAM_DEVICE_CLASS)?.parse().ok()?;
                let provisioning = parameters
                    .get(names::PARAM_PROVISIONING)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_default();
                let request = spec.resources.as_ref()?.requests.as_ref()?.get("storage")?;
                (selected == node).then(|| SelectedClaim {
                    uid: pvc.metadata.uid.clone().unwrap_or_default(),
                    class,
                    provisioning,
                    bytes: claim_bytes(quantity_bytes(&request.0).unwrap_or(u64::MAX)),
                    valid: true,
                    pod_on_node: true,
                })
            })
            .collect())
    }
    async fn wait_logical_volume(
        &self,
        name: &str,
        done: &VolumeCondition,
        timeout: Duration,
    ) -> Result<(Option<LogicalVolume>, bool), ClusterError> {
        let api = Api::<LogicalVolume>::all(self.client.clone());
        let mut events = watcher::watch_object(api, name).boxed();
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(60));
        let mut last = None;
        loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Err(_) => return Ok((last, false)),
                Ok(None) => return Err(ClusterError::Api("watch ended".into())),
                Ok(Some(Err(e))) => return Err(ClusterError::Api(e.to_string())),
                Ok(Some(Ok(obj))) => {
                    if done(obj.as_ref()) {
                        return Ok((obj, true));
                    }
                    last = obj;
                }
            }
        }
    }
}

fn node_storage(name: &str) -> NodeStorage {
    let mut ns = NodeStorage::new(name, NodeStorageSpec::default());
    ns.status = Some(NodeStorageStatus {
        device_classes: vec![DeviceClassStatus {
            name: DeviceClass::Nvme,
            vg_name: DeviceClass::Nvme.vg_name().into(),
            total_bytes: 4096 * GIB,
            free_bytes: 2048 * GIB,
            allocatable_bytes: 2048 * GIB,
            capacity: None,
            allocatable: None,
            pv_count: 1,
            missing_pv_count: 0,
            lv_count: 8,
            health: ClassHealth::Healthy,
            thin_pool: None,
        }],
        capacity_sequence: Some(100),
        ..Default::default()
    });
    ns
}

fn ready_volume(name: &str, node: &str) -> LogicalVolume {
    let mut lv = LogicalVolume::new(
        name,
        LogicalVolumeSpec {
            node_name: node.into(),
            device_class: DeviceClass::Nvme,
            size_bytes: GIB,
            pvc: None,
            source: None,
            role: None,
            volume_snapshot: None,
            wipe: None,
            provisioning: None,
        },
    );
    lv.metadata.labels = Some(BTreeMap::from([(names::LABEL_NODE.into(), node.into())]));
    lv.status = Some(LogicalVolumeStatus {
        phase: Some(LogicalVolumePhase::Ready),
        current_size_bytes: Some(GIB),
        capacity_sequence: Some(1),
        ..Default::default()
    });
    lv
}

/// Plays every node's agent: a new LogicalVolume becomes Ready at once.
async fn agent(client: Client, stop: CancellationToken) {
    let api = Api::<LogicalVolume>::all(client);
    let mut events = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    loop {
        let lv = tokio::select! {
            _ = stop.cancelled() => return,
            next = events.next() => match next {
                Some(Ok(lv)) => lv,
                Some(Err(_)) => continue,
                None => return,
            },
        };
        if lv.status.is_some() {
            continue;
        }
        let status = serde_json::json!({ "status": {
            "phase": "Ready", "currentSizeBytes": lv.spec.size_bytes } });
        let name = lv.metadata.name.clone().unwrap_or_default();
        let _ = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await;
    }
}

fn request(name: &str, node: &str) -> csi::CreateVolumeRequest {
    let topology = csi::Topology {
        segments: [(names::TOPOLOGY_KEY.into(), node.into())].into(),
    };
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: GIB as i64,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![csi::VolumeCapability {
            access_mode: Some(csi::volume_capability::AccessMode {
                mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(csi::volume_capability::AccessType::Mount(
                csi::volume_capability::MountVolume::default(),
            )),
        }],
        parameters: [(names::PARAM_DEVICE_CLASS.into(), "nvme".into())].into(),
        accessibility_requirements: Some(csi::TopologyRequirement {
            requisite: vec![topology.clone()],
            preferred: vec![topology],
        }),
        ..Default::default()
    }
}

struct Figures {
    requests: Vec<usize>,
    lists: usize,
    latency: Vec<Duration>,
}

async fn measure<C: Cluster>(
    server: &FakeApiServer,
    service: &ControllerService<C>,
    prefix: &str,
    nodes: usize,
    calls: usize,
) -> Figures {
    let mut figures = Figures {
        requests: Vec::new(),
        lists: 0,
        latency: Vec::new(),
    };
    for i in 0..calls {
        let before = server.requests().len();
        let started = Instant::now();
        let node = format!("node-{:05}", (i * 7919) % nodes);
        service
            .create_volume(
                request(&format!("{prefix}-{i}"), &node),
                Duration::from_secs(30),
            )
            .await
            .expect("CreateVolume");
        figures.latency.push(started.elapsed());
        let log = server.requests();
        let during: Vec<&String> = log[before.min(log.len())..]
            .iter()
            .filter(|r| !(r.starts_with("PATCH") && r.contains("/status")))
            .collect();
        figures.requests.push(during.len());
        figures.lists += during
            .iter()
            .filter(|r| {
                r.starts_with("GET")
                    && !r.contains("watch=")
                    && !r.contains("fieldSelector=metadata.name")
            })
            .filter(|r| {
                r.split('?')
                    .next()
                    .is_some_and(|p| !p.rsplit('/').next().unwrap_or("").starts_with("pvc-"))
            })
            .filter(|r| {
                let path = r.split('?').next().unwrap_or("");
                path.ends_with("/logicalvolumes")
                    || path.ends_with("/nodestorages")
                    || path.ends_with("/persistentvolumeclaims")
                    || path.ends_with("/storageclasses")
            })
            .count();
    }
    figures
}

fn report(mode: &str, f: &Figures) -> f64 {
    let mut lat = f.latency.clone();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    let mean_requests = f.requests.iter().sum::<usize>() as f64 / f.requests.len() as f64;
    println!(
        "{mode:>9}: {:>3} calls  requests/call mean {:.2} max {}  LISTs {}  latency p50 {:>8.2?} p99 {:>8.2?}",
        f.latency.len(),
        mean_requests,
        f.requests.iter().max().unwrap_or(&0),
        f.lists,
        p(0.5),
        p(0.99),
    );
    p(0.5).as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (nodes, lvs, calls) = (arg(0, 5000), arg(1, 40_000), arg(2, 40));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let server = FakeApiServer::builder()
            .history(200_000)
            .start()
            .await
            .expect("fake API server");
        let seeding = Instant::now();
        for n in 0..nodes {
            server.seed(&node_storage(&format!("node-{n:05}"))).unwrap();
        }
        for i in 0..lvs {
            let node = format!("node-{:05}", i % nodes);
            server
                .seed(&ready_volume(&format!("pvc-seed-{i}"), &node))
                .unwrap();
        }
        println!(
            "controller admission bench: {nodes} nodes, {lvs} LogicalVolumes (seeded in {:.1?})",
            seeding.elapsed()
        );
        let client = server.client().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(agent(client.clone(), stop.clone()));
        let settings = Settings {
            default_placement: Placement::Binpack,
            max_wait: Duration::from_secs(60),
            stale_after: None,
        };

        let baseline = ControllerService::new(
            Arc::new(ListingCluster {
                client: client.clone(),
            }),
            settings.clone(),
        );
        let before = measure(&server, &baseline, "pvc-before", nodes, calls.min(20)).await;

        let started = Instant::now();
        let cached = KubeCluster::start(client.clone(), stop.clone())
            .await
            .expect("caches");
        println!("watched caches ready in {:.1?}", started.elapsed());
        let service = ControllerService::new(Arc::new(cached), settings);
        let after = measure(&server, &service, "pvc-after", nodes, calls).await;

        let b = report("LIST/call", &before);
        let a = report("cached", &after);
        println!("latency p50 ratio cached/LIST-per-call: {:.3}", a / b);
        stop.cancel();
    });
}
