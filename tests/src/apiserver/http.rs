//! The HTTP face: Kubernetes REST paths (`/api/v1/...`, `/apis/{group}/{version}/...`, with or
//! without `namespaces/{ns}/`, optional `/status`) mapped onto the store, discovery and
//! `/version`, and the `/_fake/...` admin paths (faults, dropping watches, compaction, request log).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::faults::{Fault, Faults};
use super::patch::PatchKind;
use super::resources::{Registry, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Deleted, ListQuery, Store};
use super::watch::{self, WatchSpec};

/// Kept request lines at most (oldest dropped first).
const REQUEST_LOG_CAP: usize = 10_000;

/// State shared by the handlers and the in-process handle.
pub struct Shared {
    pub store: Arc<Mutex<Store>>,
    pub faults: Mutex<Faults>,
    pub requests: Mutex<Vec<String>>,
    /// The same request lines with the HTTP status each was answered with (fault answers
    /// included; a watch counts with the status its stream started with).
    pub answers: Mutex<Vec<(String, u16)>>,
    /// Cancelled (and replaced) to end every open watch.
    pub watch_stop: Mutex<CancellationToken>,
    pub shutdown: CancellationToken,
    pub bookmark_interval: Duration,
    pub server_address: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is a bug in this crate; the data is still usable for tests.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub fn inject(&self, fault: Fault) {
        lock(&self.faults).add(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    pub fn requests(&self) -> Vec<String> {
        lock(&self.requests).clone()
    }

    pub fn answers(&self) -> Vec<(String, u16)> {
        lock(&self.answers).clone()
    }

    fn answered(&self, line: String, code: StatusCode) {
        let mut log = lock(&self.answers);
        if log.len() >= REQUEST_LOG_CAP {
            log.remove(0);
        }
        log.push((line, code.as_u16()));
    }

    pub fn drop_watches(&self) {
        let mut token = lock(&self.watch_stop);
        token.cancel();
        *token = self.shutdown.child_token();
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.to_status())
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    json_response(StatusCode::OK, &body)
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_fake/faults", post(add_fault).delete(clear_faults))
        .route("/_fake/watches/drop", post(drop_watches))
        .route("/_fake/compact", post(compact))
        .route("/_fake/requests", axum::routing::get(requests))
        .fallback(kube_api)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            log_and_faults,
        ))
        .with_state(shared)
}

async fn log_and_faults(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/_fake/") {
        return next.run(req).await;
    }
    let line = match req.uri().query() {
        Some(q) => format!("{} {path}?{q}", req.method()),
        None => format!("{} {path}", req.method()),
    };
    {
        let mut log = lock(&shared.requests);
        if log.len() >= REQUEST_LOG_CAP {
            log.remove(0);
        }
        log.push(line.clone());
    }
    let query = req.uri().query().unwrap_or_default();
    let fault = lock(&shared.faults).take(req.method().as_str(), &path, query);
    let response = match fault {
        Some(err) => err.into_response(),
        None => next.run(req).await,
    };
    shared.answered(line, response.status());
    response
}

async fn add_fault(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Fault>(&body) {
        Ok(fault) => {
            shared.inject(fault);
            ok(json!({"status": "ok"}))
        }
        Err(e) => ApiError::BadRequest(format!("fault: {e}")).into_response(),
    }
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> Response {
    shared.clear_faults();
    ok(json!({"status": "ok"}))
}

async fn drop_watches(State(shared): State<Arc<Shared>>) -> Response {
    shared.drop_watches();
    ok(json!({"status": "ok"}))
}

async fn compact(State(shared): State<Arc<Shared>>) -> Response {
    let mut store = shared.store();
    store.compact();
    ok(json!({"compactedAt": store.resource_version().to_string()}))
}

async fn requests(State(shared): State<Arc<Shared>>) -> Response {
    ok(json!(shared.requests()))
}

/// A parsed resource path.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

/// Either discovery for `(group, version)` or a resource target.
enum Parsed {
    Discovery(String, String),
    Resource(Target),
}

fn parse_path(registry: &Registry, path: &str) -> Result<Parsed, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::UnknownResource),
    };
    let (namespace, rest) = match rest {
        [] => return Ok(Parsed::Discovery(group.into(), version.into())),
        ["namespaces", ns, more @ ..]
            if more.len() > 1 || more.first().is_some_and(|m| *m != "status") =>
        {
            (Some(ns.to_string()), more)
        }
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some(name.to_string()), false),
        [plural, name, "status"] => (*plural, Some(name.to_string()), true),
        _ => return Err(ApiError::UnknownResource),
    };
    let rt = registry.find(group, version, plural).cloned();
    let rt = rt.ok_or(ApiError::UnknownResource)?;
    // Namespaced objects are addressed under their namespace; a cluster path only lists them.
    let fits = match (&namespace, &name) {
        (Some(_), _) => rt.namespaced,
        (None, Some(_)) => !rt.namespaced,
        (None, None) => true,
    };
    if !fits {
        return Err(ApiError::UnknownResource);
    }
    Ok(Parsed::Resource(Target {
        rt,
        namespace,
        name,
        status,
    }))
}

async fn kube_api(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: axum::http::Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match serve(&shared, &method, uri.path(), &query, &headers, &body) {
        Ok(Served::Json(v)) => ok(v),
        Ok(Served::Created(v)) => json_response(StatusCode::CREATED, &v),
        Ok(Served::Text(t)) => (StatusCode::OK, t).into_response(),
        Ok(Served::Watch(spec, since)) => start_watch(&shared, *spec, since),
        Err(e) => e.into_response(),
    }
}

enum Served {
    Json(Value),
    Created(Value),
    Text(&'static str),
    Watch(Box<WatchSpec>, Option<u64>),
}

fn serve(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Served, ApiError> {
    match (method, path.trim_end_matches('/')) {
        (&Method::GET, "/healthz" | "/readyz" | "/livez") => return Ok(Served::Text("ok")),
        (&Method::GET, "/version") => return Ok(Served::Json(version())),
        (&Method::GET, "/api") => {
            return Ok(Served::Json(
                shared
                    .store()
                    .registry
                    .core_versions(&shared.server_address),
            ));
        }
        (&Method::GET, "/apis") => return Ok(Served::Json(shared.store().registry.groups())),
        (&Method::GET, p) if p.starts_with("/apis/") && p.matches('/').count() == 2 => {
            let group = &p["/apis/".len()..];
            return shared
                .store()
                .registry
                .group(group)
                .map(Served::Json)
                .ok_or(ApiError::UnknownResource);
        }
        _ => {}
    }
    if query.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::BadRequest(
            "dryRun is not supported by the fake API server".into(),
        ));
    }
    let parsed = parse_path(&shared.store().registry, path)?;
    let target = match parsed {
        Parsed::Discovery(group, version) if *method == Method::GET => {
            return shared
                .store()
                .registry
                .resource_list(&group, &version)
                .map(Served::Json)
                .ok_or(ApiError::UnknownResource);
        }
        Parsed::Discovery(..) => return Err(ApiError::MethodNotAllowed),
        Parsed::Resource(t) => t,
    };
    let Target {
        rt,
        namespace,
        name,
        status,
    } = target;
    let ns = namespace.clone().unwrap_or_default();
    let parse_json = || {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding body: {e}")))
    };
    match (method, name) {
        (&Method::GET, Some(name)) => Ok(Served::Json(shared.store().get(&rt, &ns, &name)?)),
        (&Method::GET, None)
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch_spec(shared, rt, namespace, query)
        }
        (&Method::GET, None) => {
            let q = ListQuery {
                namespace,
                labels: LabelSelector::parse(
                    query.get("labelSelector").map_or("", String::as_str),
                )?,
                fields: FieldSelector::parse(
                    query.get("fieldSelector").map_or("", String::as_str),
                    &rt,
                )?,
                limit: match query.get("limit") {
                    Some(l) => Some(
                        l.parse()
                            .map_err(|_| ApiError::BadRequest(format!("invalid limit {l}")))?,
                    ),
                    None => None,
                },
                continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
            };
            Ok(Served::Json(shared.store().list(&rt, &q)?))
        }
        (&Method::POST, None) if !status => Ok(Served::Created(shared.store().create(
            &rt,
            &ns,
            parse_json()?,
        )?)),
        (&Method::PUT, Some(name)) => Ok(Served::Json(shared.store().replace(
            &rt,
            &ns,
            &name,
            parse_json()?,
            status,
        )?)),
        (&Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = PatchKind::from_content_type(ct)?;
            if kind == PatchKind::Apply && query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                return Err(ApiError::BadRequest(
                    "PATCH requests with apply content type must specify a fieldManager".into(),
                ));
            }
            let patch = kind.parse_body(body)?;
            let mut store = shared.store();
            let existed = store.get(&rt, &ns, &name).is_ok();
            let out = store.patch(&rt, &ns, &name, kind, &patch, status)?;
            Ok(if existed {
                Served::Json(out)
            } else {
                Served::Created(out)
            })
        }
        (&Method::DELETE, Some(name)) if !status => {
            let opts = if body.is_empty() {
                json!({})
            } else {
                parse_json()?
            };
            if opts["dryRun"].as_array().is_some_and(|d| !d.is_empty()) {
                return Err(ApiError::BadRequest(
                    "dryRun is not supported by the fake API server".into(),
                ));
            }
            match shared
                .store()
                .delete(&rt, &ns, &name, &opts["preconditions"])?
            {
                Deleted::Gone(status) => Ok(Served::Json(status)),
                Deleted::Pending(obj) => Ok(Served::Json(obj)),
            }
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn watch_spec(
    shared: &Shared,
    rt: ResourceType,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Result<Served, ApiError> {
    if query.get("sendInitialEvents").is_some_and(|v| v == "true") {
        return Err(ApiError::BadRequest(
            "sendInitialEvents (streaming lists) is not supported by the fake API server".into(),
        ));
    }
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv}")))?,
        ),
    };
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
            ApiError::BadRequest(format!("invalid timeoutSeconds {t}"))
        })?)),
        None => None,
    };
    let spec = WatchSpec {
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str), &rt)?,
        rt,
        namespace,
        bookmarks: query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true"),
        bookmark_interval: shared.bookmark_interval,
        timeout,
    };
    Ok(Served::Watch(Box::new(spec), since))
}

/// Answers 200 and streams events; a too-old version is one `ERROR` event carrying a 410
/// `Expired` Status, as the real server sends it (kube-runtime relists on it).
fn start_watch(shared: &Shared, spec: WatchSpec, since: Option<u64>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let start = shared.store().watch(&spec.rt, since);
    match start {
        Ok(start) => {
            let stop = lock(&shared.watch_stop).clone();
            tokio::spawn(watch::run(spec, start, shared.store.clone(), tx, stop));
        }
        Err(err) => {
            // The channel has room: the line is queued before the stream is read.
            let _ = tx.try_send(watch::line("ERROR", &err.to_status()));
        }
    }
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = Body::from_stream(futures::StreamExt::map(
        stream,
        Ok::<_, std::convert::Infallible>,
    ));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| ApiError::MethodNotAllowed.into_response())
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0-strata-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "none",
        "compiler": "none",
        "platform": "linux/amd64",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Result<(String, Option<String>, Option<String>, bool), u16> {
        match parse_path(&Registry::default(), path) {
            Ok(Parsed::Resource(t)) => Ok((t.rt.plural, t.namespace, t.name, t.status)),
            Ok(Parsed::Discovery(g, v)) => Ok((format!("discovery {g}/{v}"), None, None, false)),
            Err(e) => Err(e.code()),
        }
    }

    #[test]
    fn resource_paths() {
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            target("/api/v1/nodes/n1"),
            Ok(("nodes".into(), None, s("n1"), false))
        );
        assert_eq!(
            target("/api/v1/namespaces/x"),
            Ok(("namespaces".into(), None, s("x"), false))
        );
        assert_eq!(
            target("/api/v1/namespaces/x/status"),
            Ok(("namespaces".into(), None, s("x"), true))
        );
        assert_eq!(
            target("/api/v1/namespaces/ns/persistentvolumeclaims/d/status"),
            Ok(("persistentvolumeclaims".into(), s("ns"), s("d"), true))
        );
        assert_eq!(
            target("/apis/strata.io/v1alpha1/logicalvolumes"),
            Ok(("logicalvolumes".into(), None, None, false))
        );
        assert_eq!(
            target("/api/v1/pods"),
            Ok(("pods".into(), None, None, false))
        );
        assert_eq!(
            target("/apis/strata.io/v1alpha1"),
            Ok(("discovery strata.io/v1alpha1".into(), None, None, false))
        );
    }

    #[test]
    fn wrong_scope_or_unknown_is_not_found() {
        assert_eq!(
            target("/api/v1/pods/p"),
            Err(404),
            "namespaced object without namespace"
        );
        assert_eq!(
            target("/apis/strata.io/v1alpha1/namespaces/x/logicalvolumes"),
            Err(404)
        );
        assert_eq!(target("/api/v1/secrets"), Err(404));
        assert_eq!(target("/api/v1/nodes/n1/proxy"), Err(404));
        assert_eq!(target("/metrics"), Err(404));
    }
}
