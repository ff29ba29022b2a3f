//! Latency and throughput of the extender's request path (`http::answer`: decode ExtenderArgs,
//! resolve the pod's demand, filter or score, encode the answer) at 500, 1,000 and 5,000 nodes,
//! for a pod with three claims of two classes, with names-only and full-Node payloads; the same
//! through the axum router (HTTP layer included, no network); a bare `serde_json` decode of each
//! body for the decode-bound ratio; and the time to rebuild the ClusterView from the caches.
//!
//! Run: `cargo bench -p csi-scheduler --bench extender` (add `-- --quick` for fewer iterations).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::http::Request;
use csi_api::crd::{
    ClassHealth, DeviceClassStatus, LogicalVolume, LogicalVolumePhase, LogicalVolumeSpec,
    LogicalVolumeStatus, NodeStorage, NodeStorageSpec, NodeStorageStatus,
};
use csi_api::names::{ANNOTATION_SELECTED_NODE, DRIVER_NAME, DeviceClass, Placement};
use csi_scheduler::http::{AppState, MAX_BODY_BYTES, Verb, ViewHandle, answer, router};
use csi_scheduler::metrics::Metrics;
use csi_scheduler::view::ClusterView;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus,
    VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use tower::ServiceExt;

const GIB: u64 = 1 << 30;
/// Claims (and LogicalVolumes) per node in the cluster the view is built from.
const CLAIMS_PER_NODE: usize = 8;

fn node_name(i: usize) -> String {
    format!("worker-{i:05}")
}

type Objects = (
    Vec<Arc<NodeStorage>>,
    Vec<Arc<LogicalVolume>>,
    Vec<Arc<PersistentVolumeClaim>>,
    Vec<Arc<StorageClass>>,
);

/// A cluster of `n` nodes: NodeStorage with two or three classes, a few LogicalVolumes and
/// claims per node (some pending), the pod's three claims, and the StorageClasses.
fn cluster(n: usize) -> Objects {
    let mut nodes = Vec::with_capacity(n);
    let mut volumes = Vec::new();
    let mut claims = Vec::new();
    for i in 0..n {
        let name = node_name(i);
        let class = |c: DeviceClass, total: u64, free: u64| DeviceClassStatus {
            name: c,
            vg_name: c.vg_name().into(),
            total_bytes: total,
            free_bytes: free,
            allocatable_bytes: free,
            pv_count: 2,
            missing_pv_count: 0,
            lv_count: 3,
            health: ClassHealth::Healthy,
        };
        let mut classes = vec![
            class(
                DeviceClass::Nvme,
                3200 * GIB,
                (100 + (i as u64 * 37) % 3000) * GIB,
            ),
            class(
                DeviceClass::Hdd,
                16_000 * GIB,
                (500 + (i as u64 * 101) % 15_000) * GIB,
            ),
        ];
        if i % 3 == 0 {
            classes.push(class(DeviceClass::Ssd, 8000 * GIB, 4000 * GIB));
        }
        let mut ns = NodeStorage::new(&name, NodeStorageSpec::default());
        ns.status = Some(NodeStorageStatus {
            device_classes: classes,
            ..Default::default()
        });
        nodes.push(Arc::new(ns));
        for k in 0..CLAIMS_PER_NODE {
            let uid = format!("{i:05}-{k}");
            let phase = if k == 0 {
                LogicalVolumePhase::Pending
            } else {
                LogicalVolumePhase::Ready
            };
            let mut lv = LogicalVolume::new(
                &format!("pvc-{uid}"),
                LogicalVolumeSpec {
                    node_name: name.clone(),
                    device_class: DeviceClass::Nvme,
                    size_bytes: 10 * GIB,
                    pvc: None,
                    source: None,
                    wipe: None,
                },
            );
            lv.status = Some(LogicalVolumeStatus {
                phase: Some(phase),
                ..Default::default()
            });
            volumes.push(Arc::new(lv));
            let mut pvc = claim(&format!("claim-{uid}"), &uid, "strata-nvme", "10Gi");
            pvc.spec.as_mut().unwrap().volume_name = Some(format!("pvc-{uid}"));
            claims.push(Arc::new(pvc));
        }
        // One claim selected for the node, its volume not made yet.
        let mut pending = claim(
            &format!("selected-{i:05}"),
            &format!("sel-{i:05}"),
            "strata-nvme",
            "5Gi",
        );
        pending.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_SELECTED_NODE.to_string(),
            name.clone(),
        )]));
        claims.push(Arc::new(pending));
    }
    claims.push(Arc::new(claim("data-db-0", "p1", "strata-nvme", "200Gi")));
    claims.push(Arc::new(claim("wal-db-0", "p2", "strata-nvme", "20Gi")));
    claims.push(Arc::new(claim("archive-db-0", "p3", "strata-hdd", "1Ti")));
    let classes = vec![
        storage_class("strata-nvme", &[("strata.io/device-class", "nvme")]),
        storage_class(
            "strata-hdd",
            &[
                ("strata.io/device-class", "hdd"),
                ("strata.io/placement", "spread"),
            ],
        ),
    ];
    (nodes, volumes, claims, classes)
}

fn claim(name: &str, uid: &str, class: &str, size: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("apps".into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            storage_class_name: Some(class.into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity(size.into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    }
}

fn storage_class(name: &str, params: &[(&str, &str)]) -> Arc<StorageClass> {
    Arc::new(StorageClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        provisioner: DRIVER_NAME.into(),
        parameters: Some(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    })
}

/// The pod of the fixtures, its volumes replaced by three claims of two classes.
fn pod(fixture: &Value) -> Value {
    let mut pod = fixture["Pod"].clone();
    pod["spec"]["volumes"] = json!([
        {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
        {"name": "wal", "persistentVolumeClaim": {"claimName": "wal-db-0"}},
        {"name": "archive", "persistentVolumeClaim": {"claimName": "archive-db-0"}},
        {"name": "kube-api-access", "projected": {"sources": [], "defaultMode": 420}}
    ]);
    pod
}

/// ExtenderArgs as kube-scheduler marshals them, names-only or with full Node objects.
fn bodies(fixture: &Value, n: usize) -> (Vec<u8>, Vec<u8>) {
    let names: Vec<String> = (0..n).map(node_name).collect();
    let names_body = json!({"Pod": pod(fixture), "Nodes": null, "NodeNames": names});
    let template = &fixture["Nodes"]["items"][0];
    let items: Vec<Value> = names
        .iter()
        .map(|name| {
            let mut node = template.clone();
            node["metadata"]["name"] = json!(name);
            node["metadata"]["labels"]["kubernetes.io/hostname"] = json!(name);
            node["metadata"]["labels"]["topology.strata.io/node"] = json!(name);
            node["status"]["addresses"][1]["address"] = json!(name);
            node
        })
        .collect();
    let nodes_body =
        json!({"Pod": pod(fixture), "Nodes": {"metadata": {}, "items": items}, "NodeNames": null});
    (
        serde_json::to_vec(&names_body).unwrap(),
        serde_json::to_vec(&nodes_body).unwrap(),
    )
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
}

fn measure(iterations: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..iterations.div_ceil(10) {
        f();
    }
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        max: samples[samples.len() - 1],
        mean: samples.iter().sum::<Duration>() / samples.len() as u32,
    }
}

/// Requests per second with `threads` threads answering back to back for `window`.
fn throughput(threads: usize, window: Duration, f: impl Fn() + Sync) -> f64 {
    let counts: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let start = Instant::now();
                    let mut count = 0;
                    while start.elapsed() < window {
                        f();
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    counts.iter().sum::<usize>() as f64 / window.as_secs_f64()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let fixture: Value =
        serde_json::from_str(include_str!("../tests/fixtures/filter-nodes.json")).expect("fixture");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "pod: 3 claims (200Gi + 20Gi nvme binpack, 1Ti hdd spread); {CLAIMS_PER_NODE} volumes + 1 selected claim per node; times in ms"
    );
    println!(
        "{:>5} {:<6} {:<10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9} {:>7}",
        "nodes",
        "body",
        "verb",
        "body KiB",
        "p50",
        "p99",
        "max",
        "mean",
        "req/s x1",
        "req/s x2",
        "http p99",
        "decode",
        "ratio"
    );
    for n in [500, 1000, 5000] {
        let (nodes, volumes, claims, classes) = cluster(n);
        let build = measure(if quick { 3 } else { 20 }, || {
            black_box(ClusterView::build(
                &nodes,
                &volumes,
                &claims,
                &classes,
                Placement::Binpack,
            ));
        });
        let view = ClusterView::build(&nodes, &volumes, &claims, &classes, Placement::Binpack);
        let (names_body, nodes_body) = bodies(&fixture, n);
        assert!(nodes_body.len() < MAX_BODY_BYTES);
        let state = AppState {
            view: ViewHandle::default(),
            metrics: Arc::new(Metrics::new()),
        };
        state.view.set(view.clone());
        let app = router(state);
        for (kind, body) in [("names", &names_body), ("nodes", &nodes_body)] {
            let big = body.len() > 1 << 20;
            let iterations = match (quick, big) {
                (true, true) => 10,
                (true, false) => 200,
                (false, true) => 60,
                (false, false) => 2000,
            };
            let decode = measure(iterations, || {
                black_box(serde_json::from_slice::<Value>(black_box(body)).unwrap());
            });
            for (verb, verb_name) in [(Verb::Filter, "filter"), (Verb::Prioritize, "prioritize")] {
                let run = || {
                    black_box(answer(verb, &view, black_box(body)).unwrap());
                };
                let stats = measure(iterations, run);
                let window = Duration::from_millis(if quick { 300 } else { 1500 });
                let one = throughput(1, window, run);
                let two = throughput(2, window, run);
                let uri = format!("/{verb_name}");
                let http = measure(iterations, || {
                    let request = Request::builder()
                        .method("POST")
                        .uri(&uri)
                        .body(Body::from(body.clone()))
                        .unwrap();
                    runtime.block_on(async {
                        let response = app.clone().oneshot(request).await.unwrap();
                        assert!(response.status().is_success());
                        black_box(to_bytes(response.into_body(), usize::MAX).await.unwrap());
                    });
                });
                println!(
                    "{:>5} {:<6} {:<10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9.0} {:>9.0} {:>8} {:>9} {:>7.2}",
                    n,
                    kind,
                    verb_name,
                    body.len() / 1024,
                    ms(stats.p50),
                    ms(stats.p99),
                    ms(stats.max),
                    ms(stats.mean),
                    one,
                    two,
                    ms(http.p99),
                    ms(decode.p50),
                    stats.p50.as_secs_f64() / decode.p50.as_secs_f64()
                );
            }
        }
        println!(
            "{n:>5} view build from caches ({} NodeStorage, {} LogicalVolumes, {} claims): p50 {} ms",
            nodes.len(),
            volumes.len(),
            claims.len(),
            ms(build.p50)
        );
    }
    println!("ratio = handler p50 / bare serde_json::Value decode p50 of the same body");
}
