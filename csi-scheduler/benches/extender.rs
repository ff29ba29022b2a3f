//! Latency and throughput of the extender's request path (`http::answer`: decode ExtenderArgs,
//! resolve the pod's demand, filter or score, encode the answer) at 500, 1,000 and 5,000 nodes,
//! for a pod with three claims of two classes, with names-only and full-Node payloads; the same
//! through the axum router (HTTP layer included, no network); a bare `serde_json` decode of each
//! body for the decode-bound ratio; and the time to rebuild the ClusterView from the caches.
//!
//! Run: `cargo bench -p csi-scheduler --bench extender` (add `-- --quick` for fewer iterations).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::http::Request;
use csi_api::names::Placement;
use csi_scheduler::fixtures::{CLAIMS_PER_NODE, Objects, cluster, node_name};
use csi_scheduler::http::{AppState, FULL_NODES_MAX_BODY_BYTES, Verb, ViewHandle, answer, router};
use csi_scheduler::metrics::Metrics;
use csi_scheduler::view::ClusterView;
use serde_json::{Value, json};
use tower::ServiceExt;

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
        let Objects {
            nodes,
            volumes,
            claims,
            classes,
            pods,
        } = cluster(n);
        let build_view = || {
            ClusterView::build(
                &nodes,
                &volumes,
                &claims,
                &classes,
                &pods,
                Placement::Binpack,
            )
        };
        let build = measure(if quick { 3 } else { 20 }, || {
            black_box(build_view());
        });
        let view = build_view();
        let (names_body, nodes_body) = bodies(&fixture, n);
        assert!(nodes_body.len() < FULL_NODES_MAX_BODY_BYTES);
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
