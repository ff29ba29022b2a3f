//! The HTTP face of the extender (axum): `POST /filter`, `POST /prioritize`, `GET /healthz`,
//! `GET /readyz`, `GET /metrics`. Handlers decode the body, take the current [`ClusterView`],
//! and call the pure functions of [`crate::extender`]. Malformed input is a 400 with the decoder's
//! message, a view not yet built a 503; nothing here panics. The routes are served by the shared
//! hardened server (`csi_api::http::serve`) with [`limits`]: bodies past the limit get 413,
//! slow or idle clients are cut off, connections are capped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::value::RawValue;

use crate::Error;
use crate::extender::{self, RejectKind};
use crate::json_out;
use crate::metrics::{Metrics, ReasonLabels, RequestLabels, VerbLabels};
use crate::view::ClusterView;
use crate::wire::ExtenderArgs;

/// Default largest request body, sized for names-only requests (`nodeCacheCapable: true`): a
/// pod as large as the API server allows (~1.5 MiB) and 15,000 node names of 64 characters.
pub const NAMES_ONLY_MAX_BODY_BYTES: usize = 4 << 20;
/// The limit to set (`--max-body-bytes`) when kube-scheduler sends full Node objects
/// (`nodeCacheCapable: false`): ~5,000 nodes of ~12 KiB. Raise the pod's memory limit with it.
pub const FULL_NODES_MAX_BODY_BYTES: usize = 64 << 20;
/// Default cap on open connections: kube-scheduler keeps a few, so 256 leaves room for it while
/// a few hundred slow clients hang on.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Request bytes buffered at once over all connections, at least twice the body limit.
const MIN_BODY_BUDGET_BYTES: usize = 48 << 20;

/// The server limits of the extender for a body limit and a connection cap.
pub fn limits(max_body_bytes: usize, max_connections: usize) -> csi_api::http::Limits {
    csi_api::http::Limits {
        max_body_bytes,
        max_header_bytes: 16 << 10,
        header_read_timeout: Duration::from_secs(5),
        // kube-scheduler gives up after its `httpTimeout` (5 s in deploy/scheduler) anyway.
        request_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        max_connections,
        body_budget_bytes: MIN_BODY_BUDGET_BYTES.max(max_body_bytes.saturating_mul(2)),
    }
}
/// Bodies larger than this are decoded off the async workers.
const BLOCKING_THRESHOLD_BYTES: usize = 256 << 10;

/// The latest view, swapped whole by the cache task; `None` until the caches are synced.
/// Readers load it without a lock (`arc-swap`): a request never waits for the writer, and the
/// writer never waits for a request holding an old snapshot.
#[derive(Clone, Default)]
pub struct ViewHandle(Arc<ArcSwapOption<ClusterView>>);

impl ViewHandle {
    pub fn get(&self) -> Option<Arc<ClusterView>> {
        self.0.load_full()
    }

    pub fn set(&self, view: ClusterView) {
        self.0.store(Some(Arc::new(view)));
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub view: ViewHandle,
    pub metrics: Arc<Metrics>,
}

/// The extender's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/filter", post(filter))
        .route("/prioritize", post(prioritize))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // The body limit is the server's (`limits`), not axum's 2 MB default.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// An extender verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Filter,
    Prioritize,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Filter => "filter",
            Verb::Prioritize => "prioritize",
        }
    }
}

/// A verb's JSON answer, and the reasons of the nodes it filtered out.
pub struct Answer {
    pub body: Vec<u8>,
    pub rejected: Vec<RejectKind>,
}

/// Decodes `ExtenderArgs` from `body` and answers `verb` from `view`: the whole request path
/// short of HTTP, used by the handlers and the benchmarks. The candidate names are borrowed from
/// the body, and the answer is written straight from the verdicts or scores (`json_out`).
pub fn answer(verb: Verb, view: &ClusterView, body: &[u8]) -> Result<Answer, Error> {
    let args: ExtenderArgs = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("invalid ExtenderArgs: {e}")))?;
    let pod = args
        .pod
        .ok_or_else(|| Error::BadRequest("invalid ExtenderArgs: no Pod".into()))?;
    let full_nodes = match (&args.node_names, &args.nodes) {
        (Some(_), _) => None,
        (None, Some(list)) => Some(&list.items),
        (None, None) => {
            return Err(Error::BadRequest(
                "invalid ExtenderArgs: neither NodeNames nor Nodes".into(),
            ));
        }
    };
    let names: Vec<&str> = match (full_nodes, &args.node_names) {
        (Some(items), _) => items.iter().map(|n| n.name.as_str()).collect(),
        (None, Some(names)) => names.iter().map(|n| n.as_ref()).collect(),
        (None, None) => Vec::new(),
    };
    // Names taken verbatim from a JSON string are written back without escaping.
    let verbatim = args
        .node_names
        .as_ref()
        .is_some_and(|names| names.iter().all(|n| n.is_verbatim()));
    let demand = view.demand_of(&pod);
    match verb {
        Verb::Prioritize => {
            let scores = extender::prioritize(view, &demand, &names);
            Ok(Answer {
                body: json_out::priority_list(&names, verbatim, &scores),
                rejected: Vec::new(),
            })
        }
        Verb::Filter => {
            let verdicts = extender::verdicts(view, &demand, &names);
            let raw: Option<Vec<&RawValue>> =
                full_nodes.map(|items| items.iter().map(|n| &*n.raw).collect());
            let body = json_out::filter_result(&names, verbatim, raw.as_deref(), &verdicts);
            let rejected = verdicts
                .of_nodes
                .iter()
                .filter_map(|&v| verdicts.kind(v))
                .collect();
            Ok(Answer { body, rejected })
        }
    }
}

async fn filter(State(state): State<AppState>, body: Bytes) -> Response {
    serve(Verb::Filter, state, body).await
}

async fn prioritize(State(state): State<AppState>, body: Bytes) -> Response {
    serve(Verb::Prioritize, state, body).await
}

async fn serve(verb: Verb, state: AppState, body: Bytes) -> Response {
    let started = Instant::now();
    let result = match state.view.get() {
        None => Err(Error::NotReady),
        Some(view) if body.len() > BLOCKING_THRESHOLD_BYTES => {
            tokio::task::spawn_blocking(move || answer(verb, &view, &body))
                .await
                .unwrap_or_else(|e| Err(Error::Internal(format!("request task failed: {e}"))))
        }
        Some(view) => answer(verb, &view, &body),
    };
    let response = match result {
        Ok(answer) => {
            // One update per reason, not per node.
            let mut counts: Vec<(RejectKind, u64)> = Vec::new();
            for kind in answer.rejected {
                match counts.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((kind, 1)),
                }
            }
            for (kind, n) in counts {
                state
                    .metrics
                    .rejected_nodes
                    .get_or_create(&ReasonLabels {
                        reason: kind.as_str(),
                    })
                    .inc_by(n);
            }
            ([(header::CONTENT_TYPE, "application/json")], answer.body).into_response()
        }
        Err(e) => {
            let status = e.status();
            if status.is_server_error() {
                tracing::warn!(verb = verb.as_str(), error = %e, "extender request failed");
            } else {
                tracing::debug!(verb = verb.as_str(), error = %e, "rejected extender request");
            }
            (status, e.to_string()).into_response()
        }
    };
    let labels = RequestLabels {
        verb: verb.as_str(),
        code: response.status().as_u16(),
    };
    state.metrics.requests.get_or_create(&labels).inc();
    state
        .metrics
        .request_seconds
        .get_or_create(&VerbLabels {
            verb: verb.as_str(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.view.get() {
        Some(_) => (StatusCode::OK, "ok").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, Error::NotReady.to_string()).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            csi_api::http::OPENMETRICS_CONTENT_TYPE,
        )],
        state.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use csi_api::crd::LogicalVolume;
    use csi_api::names::{DeviceClass, Placement};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::fixtures::*;

    const NAMES_FIXTURE: &str = include_str!("../tests/fixtures/filter-names.json");
    const NODES_FIXTURE: &str = include_str!("../tests/fixtures/filter-nodes.json");
    const NO_STRATA_FIXTURE: &str = include_str!("../tests/fixtures/no-strata-volumes.json");

    fn pods() -> Vec<Arc<k8s_openapi::api::core::v1::Pod>> {
        no_pods()
    }

    fn cluster() -> ClusterView {
        let nodes = [
            node_storage(
                "node-a",
                &[
                    (DeviceClass::Nvme, 200 * GIB, true),
                    (DeviceClass::Hdd, 2000 * GIB, true),
                ],
            ),
            node_storage(
                "node-b",
                &[
                    (DeviceClass::Nvme, 20 * GIB, true),
                    (DeviceClass::Hdd, 4000 * GIB, true),
                ],
            ),
            node_storage("node-c", &[(DeviceClass::Nvme, 1000 * GIB, true)]),
            node_storage(
                "node-d",
                &[
                    (DeviceClass::Nvme, 900 * GIB, false),
                    (DeviceClass::Hdd, 900 * GIB, true),
                ],
            ),
            node_storage(
                "node-f",
                &[
                    (DeviceClass::Nvme, 100 * GIB, true),
                    (DeviceClass::Hdd, 900 * GIB, true),
                ],
            ),
        ];
        let claims = [
            Arc::new(claim("apps", "data-db-0", "u1", "fast", "20Gi")),
            Arc::new(claim("apps", "wal-db-0", "u2", "fast", "5Gi")),
        ];
        ClusterView::build::<_, Arc<LogicalVolume>, _, _, _>(
            &nodes,
            &[],
            &claims,
            &standard_classes(),
            &pods(),
            Placement::Binpack,
        )
    }

    fn app(view: Option<ClusterView>) -> (Router, AppState) {
        let state = AppState {
            view: ViewHandle::default(),
            metrics: Arc::new(Metrics::new()),
        };
        if let Some(v) = view {
            state.view.set(v);
        }
        (router(state.clone()), state)
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, Vec<u8>) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        (
            status,
            to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec(),
        )
    }

    async fn post_json(app: &Router, uri: &str, body: &str) -> (StatusCode, Value) {
        let (status, bytes) = call(app, "POST", uri, body.to_owned()).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn filter_names_only_answers_the_go_result_shape() {
        let (app, state) = app(Some(cluster()));
        let (_, result) = post_json(&app, "/filter", NAMES_FIXTURE).await;
        assert_eq!(result["Nodes"], Value::Null);
        assert_eq!(result["Error"], "");
        assert_eq!(result["NodeNames"], json!(["node-a", "node-f"]));
        let failed = result["FailedNodes"].as_object().unwrap();
        let unresolvable = result["FailedAndUnresolvableNodes"].as_object().unwrap();
        assert_eq!(failed.keys().collect::<Vec<_>>(), ["node-b", "node-d"]);
        assert_eq!(
            unresolvable.keys().collect::<Vec<_>>(),
            ["node-c", "node-e"]
        );
        let b = failed["node-b"].as_str().unwrap();
        assert!(
            b.contains("nvme")
                && b.contains(&(25 * GIB).to_string())
                && b.contains(&(20 * GIB).to_string()),
            "{b}"
        );
        assert!(failed["node-d"].as_str().unwrap().contains("degraded"));
        assert!(unresolvable["node-c"].as_str().unwrap().contains("hdd"));
        assert!(
            unresolvable["node-e"]
                .as_str()
                .unwrap()
                .contains("NodeStorage")
        );
        let metrics = state.metrics.encode();
        assert!(
            metrics.contains(r#"strata_scheduler_requests_total{verb="filter",code="200"} 1"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"strata_scheduler_rejected_nodes_total{reason="insufficient"} 1"#)
        );
    }

    #[tokio::test]
    async fn filter_full_nodes_answers_the_passing_node_objects_verbatim() {
        let (app, _) = app(Some(cluster()));
        let (_, result) = post_json(&app, "/filter", NODES_FIXTURE).await;
        let args: Value = serde_json::from_str(NODES_FIXTURE).unwrap();
        let input = args["Nodes"]["items"].as_array().unwrap();
        let kept = result["Nodes"]["items"].as_array().unwrap();
        assert_eq!(kept, &vec![input[0].clone(), input[5].clone()]);
        assert_eq!(result["NodeNames"], Value::Null);
        assert_eq!(result["FailedNodes"].as_object().unwrap().len(), 2);
        assert_eq!(
            result["FailedAndUnresolvableNodes"]
                .as_object()
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn prioritize_scores_every_node_in_order_both_payloads() {
        let (app, _) = app(Some(cluster()));
        // a and f fit. The nvme binpack term (25 of 125 GiB) ranks f (fuller) 1 and a 0; the hdd
        // spread term (100 GiB) is the free fraction left: a 0.95, f 0.80. f: 0.2 + 0.64 = 0.84,
        // a: 0.76, so f gets 10 and a the lowest fitting score.
        let expected = json!([
            {"Host": "node-a", "Score": 0}, {"Host": "node-b", "Score": 0},
            {"Host": "node-c", "Score": 0}, {"Host": "node-d", "Score": 0},
            {"Host": "node-e", "Score": 0}, {"Host": "node-f", "Score": 10}
        ]);
        let (_, names) = post_json(&app, "/prioritize", NAMES_FIXTURE).await;
        assert_eq!(names, expected);
        let (_, full) = post_json(&app, "/prioritize", NODES_FIXTURE).await;
        assert_eq!(full, expected);
        let parsed: Vec<crate::wire::HostPriority> = serde_json::from_value(names).unwrap();
        assert_eq!(parsed.len(), 6);
    }

    #[tokio::test]
    async fn pods_without_strata_volumes_pass_with_zero_scores() {
        let (app, _) = app(Some(cluster()));
        let (_, result) = post_json(&app, "/filter", NO_STRATA_FIXTURE).await;
        assert_eq!(
            result["NodeNames"],
            json!(["node-a", "node-b", "node-c", "node-d", "node-e", "node-f"])
        );
        assert!(result["FailedNodes"].as_object().unwrap().is_empty());
        let (_, scores) = post_json(&app, "/prioritize", NO_STRATA_FIXTURE).await;
        assert!(scores.as_array().unwrap().iter().all(|h| h["Score"] == 0));
    }

    #[tokio::test]
    async fn malformed_input_is_a_clear_400_never_a_500() {
        let (app, _) = app(Some(cluster()));
        let deep = "[".repeat(100_000);
        let bad: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("truncated", NAMES_FIXTURE.as_bytes()[..100].to_vec()),
            ("array", b"[]".to_vec()),
            ("no pod", br#"{"NodeNames":["a"]}"#.to_vec()),
            (
                "no nodes",
                br#"{"Pod":{},"Nodes":null,"NodeNames":null}"#.to_vec(),
            ),
            ("wrong type", br#"{"Pod":5,"NodeNames":["a"]}"#.to_vec()),
            (
                "names not strings",
                br#"{"Pod":{},"NodeNames":[1,2]}"#.to_vec(),
            ),
            (
                "nameless node",
                br#"{"Pod":{},"Nodes":{"items":[{}]}}"#.to_vec(),
            ),
            (
                "volumes not a list",
                br#"{"Pod":{"spec":{"volumes":{}}},"NodeNames":[]}"#.to_vec(),
            ),
            ("deep nesting", deep.into_bytes()),
            ("not utf-8", vec![b'{', 0xff, 0xfe, b'}']),
        ];
        for verb in ["/filter", "/prioritize"] {
            for (what, body) in &bad {
                let (status, text) = call(&app, "POST", verb, body.clone()).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{verb} {what}");
                let text = String::from_utf8(text).unwrap();
                assert!(
                    text.starts_with("invalid ExtenderArgs"),
                    "{verb} {what}: {text}"
                );
            }
        }
        let (status, _) = call(&app, "GET", "/filter", Body::empty()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn large_bodies_are_decoded_off_the_async_workers() {
        let (app, _) = app(Some(cluster()));
        // ~8 MiB of names: decoded off the async workers, every unknown node unresolvable.
        let names: Vec<String> = (0..400_000).map(|i| format!("node-{i:08}")).collect();
        let body = json!({"Pod": {"metadata": {"name": "db-0", "namespace": "apps"}, "spec": {"volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]}},
            "NodeNames": names});
        let (status, bytes) = call(&app, "POST", "/filter", body.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        let result: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            result["FailedAndUnresolvableNodes"]
                .as_object()
                .unwrap()
                .len(),
            400_000
        );
        assert_eq!(result["NodeNames"], json!([]));
    }

    /// The extender's routes on the real server function with its default limits.
    #[tokio::test]
    async fn the_served_extender_refuses_oversize_bodies_and_serves_the_rest() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (app, _) = app(Some(cluster()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let limits = limits(NAMES_ONLY_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS);
        let server = tokio::spawn(csi_api::http::serve(listener, app, limits, stop.clone()));
        let exchange = |head: String, body: Vec<u8>| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            // The server may answer (and close) before the body is all sent.
            let _ = s.write_all(&body).await;
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        };
        let head = |len: usize| {
            format!(
                "POST /filter HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {len}\r\n\r\n"
            )
        };
        let started = Instant::now();
        let answer = exchange(head(64 << 20), Vec::new()).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(started.elapsed() < Duration::from_millis(500));
        let answer = exchange(head(NAMES_FIXTURE.len()), NAMES_FIXTURE.as_bytes().to_vec()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains(r#""NodeNames":["node-a","node-f"]"#),
            "{answer}"
        );
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn not_ready_until_a_view_exists_then_healthy() {
        let (app, state) = app(None);
        let (status, _) = call(&app, "POST", "/filter", NAMES_FIXTURE.to_owned()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _) = call(&app, "GET", "/readyz", Body::empty()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _) = call(&app, "GET", "/healthz", Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        state.view.set(cluster());
        let (status, _) = call(&app, "GET", "/readyz", Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        let (status, metrics) = call(&app, "GET", "/metrics", Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        let metrics = String::from_utf8(metrics).unwrap();
        assert!(
            metrics.contains(r#"strata_scheduler_requests_total{verb="filter",code="503"} 1"#),
            "{metrics}"
        );
        assert!(metrics.ends_with("# EOF\n"));
    }
}
