//! An in-memory stand-in for the Kubernetes API server, for tests that run Strata's binaries as
//! separate processes (or kube clients in process) without a cluster. It speaks the REST
//! conventions kube-rs uses over plain HTTP: get, list (label/field selectors, limit/continue),
//! watch (resourceVersion resume, bookmarks, 410 Expired), create, replace, merge/JSON/apply
//! patch, the status subresource, delete with finalizers, and Status error bodies. What it does
//! not emulate is listed in `tests/apiserver/README.md`. Start it with [`FakeApiServer::start`],
//! or run the `fake-apiserver` binary.

mod faults;
mod http;
pub mod kubeconfig;
mod patch;
mod resources;
mod selector;
mod status;
mod store;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use faults::Fault;
pub use patch::PatchKind;
pub use resources::{Registry, ResourceType};
pub use status::ApiError;

use http::Shared;
use store::Store;

/// Errors of starting, seeding or reaching the fake server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fake API server I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("object rejected: {0}")]
    Api(Box<ApiError>),
    #[error("object does not serialise to JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("seed file {path}: {source}")]
    SeedFile {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    #[error("server URL: {0}")]
    Url(#[from] axum::http::uri::InvalidUri),
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Self::Api(Box::new(e))
    }
}

/// How to start a [`FakeApiServer`].
#[derive(Debug, Clone)]
pub struct Builder {
    listen: SocketAddr,
    registry: Registry,
    history: usize,
    bookmark_interval: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            registry: Registry::default(),
            history: 1000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

impl Builder {
    /// Address to listen on (default `127.0.0.1:0`, a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Serves one more resource type (or replaces a default one).
    pub fn resource(mut self, rt: ResourceType) -> Self {
        self.registry.add(rt);
        self
    }

    /// Watch events kept for resuming (default 1000); older versions are `410 Expired`.
    pub fn history(mut self, events: usize) -> Self {
        self.history = events;
        self
    }

    /// Interval of BOOKMARK events on watches that allow them (default 1 s).
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }

    pub async fn start(self) -> Result<FakeApiServer, Error> {
        let listener = tokio::net::TcpListener::bind(self.listen).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            store: Arc::new(Mutex::new(Store::new(self.registry, self.history))),
            faults: Mutex::default(),
            requests: Mutex::default(),
            answers: Mutex::default(),
            watch_stop: Mutex::new(shutdown.child_token()),
            shutdown: shutdown.clone(),
            bookmark_interval: self.bookmark_interval,
            server_address: addr.to_string(),
        });
        let app = http::router(shared.clone());
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        tracing::info!(%addr, "fake API server listening");
        Ok(FakeApiServer {
            addr,
            shared,
            shutdown,
            task: Some(task),
        })
    }
}

/// A running fake API server; dropping it stops it.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl FakeApiServer {
    /// Starts with the default resource types on a free loopback port.
    pub async fn start() -> Result<Self, Error> {
        Builder::default().start().await
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (plain HTTP, no credentials, default namespace `default`).
    pub fn client(&self) -> Result<kube::Client, Error> {
        let config = kube::Config::new(self.url().parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    /// Writes a kubeconfig for child processes (`KUBECONFIG=<path>`).
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> Result<(), Error> {
        Ok(kubeconfig::write(path, &self.url(), namespace)?)
    }

    /// Stores an object as given, `status` included (it needs `apiVersion`, `kind` and a name;
    /// namespaced objects without a namespace go to `default`). Watches see it as ADDED.
    pub fn seed<T: serde::Serialize>(&self, obj: &T) -> Result<Value, Error> {
        let value = serde_json::to_value(obj)?;
        Ok(self.shared.store().seed(value)?)
    }

    /// Seeds every object of a YAML or JSON file (YAML may hold several `---` documents).
    pub fn seed_file(&self, path: &Path) -> Result<usize, Error> {
        let text = std::fs::read_to_string(path)?;
        let mut n = 0;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc).map_err(|source| {
                Error::SeedFile {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            if value.is_null() {
                continue;
            }
            self.seed(&value)?;
            n += 1;
        }
        Ok(n)
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Makes matching requests fail (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        self.shared.inject(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Ends every open watch stream (clients see the stream end and re-watch).
    pub fn drop_watches(&self) {
        self.shared.drop_watches();
    }

    /// Forgets the watch history: resuming from any earlier version gets `410 Expired`.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Requests served so far, as `METHOD /path?query` lines (admin paths excluded).
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests()
    }

    /// Requests served so far with the HTTP status of each answer, as
    /// (`METHOD /path?query`, code) (admin paths excluded), e.g. to count the 409s of a flow.
    pub fn answers(&self) -> Vec<(String, u16)> {
        self.shared.answers()
    }

    /// How many requests (of `method`, or of any with `None`) were answered with `code`.
    pub fn count_answers(&self, method: Option<&str>, code: u16) -> usize {
        self.answers()
            .iter()
            .filter(|(line, c)| {
                *c == code && method.is_none_or(|m| line.split(' ').next() == Some(m))
            })
            .count()
    }

    /// Stops accepting, ends watches, and waits for open connections to finish (at most 5 s).
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
