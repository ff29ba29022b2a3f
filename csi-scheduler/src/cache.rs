//! The kube-facing side: one reflector per kind the extender reads (NodeStorage, LogicalVolume,
//! PersistentVolumeClaim, StorageClass, and Pod trimmed to its volumes and node; it never writes), and a task that rebuilds the
//! [`ClusterView`] after every burst of changes, so that requests only read a finished snapshot.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_api::crd::{LogicalVolume, NodeStorage};
use csi_api::names::Placement;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::http::ViewHandle;
use crate::metrics::Metrics;
use crate::view::ClusterView;

/// Changes arriving within this window are folded into one rebuild.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Watches the four kinds and keeps `view` current until `shutdown`.
pub async fn run(
    client: Client,
    view: ViewHandle,
    metrics: Arc<Metrics>,
    default_placement: Placement,
    shutdown: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    let nodes = spawn_reflector::<NodeStorage>(Api::all(client.clone()), &changed, &shutdown);
    let volumes = spawn_reflector::<LogicalVolume>(Api::all(client.clone()), &changed, &shutdown);
    let claims =
        spawn_reflector::<PersistentVolumeClaim>(Api::all(client.clone()), &changed, &shutdown);
    let classes = spawn_reflector::<StorageClass>(Api::all(client.clone()), &changed, &shutdown);
    let pods = spawn_reflector::<Pod>(Api::all(client), &changed, &shutdown);

    let synced = async {
        nodes.wait_until_ready().await?;
        volumes.wait_until_ready().await?;
        claims.wait_until_ready().await?;
        classes.wait_until_ready().await?;
        pods.wait_until_ready().await
    };
    tokio::select! {
        () = shutdown.cancelled() => return,
        ready = synced => if let Err(e) = ready {
            tracing::error!(error = %e, "a reflector stopped before its first list");
            return;
        },
    }
    tracing::info!("caches synced; serving placement");
    loop {
        let started = Instant::now();
        let next = ClusterView::build(
            &nodes.state(),
            &volumes.state(),
            &claims.state(),
            &classes.state(),
            &pods.state(),
            default_placement,
        );
        metrics
            .view_nodes
            .set(i64::try_from(next.node_count()).unwrap_or(i64::MAX));
        metrics
            .view_claims
            .set(i64::try_from(next.claim_count()).unwrap_or(i64::MAX));
        view.set(next);
        metrics.view_builds.inc();
        metrics
            .view_build_seconds
            .observe(started.elapsed().as_secs_f64());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = changed.notified() => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What each kind keeps in the cache beyond its metadata. Pods keep only what placement reads
/// (namespace, name, volumes, `spec.nodeName`, `status.nominatedNodeName`), so that the pod
/// cache costs little at thousands of pods.
trait Trim {
    fn trim(&mut self) {}
}
impl Trim for NodeStorage {}
impl Trim for LogicalVolume {}
impl Trim for PersistentVolumeClaim {}
impl Trim for StorageClass {}
impl Trim for Pod {
    fn trim(&mut self) {
        self.metadata.labels = None;
        self.metadata.annotations = None;
        self.metadata.owner_references = None;
        if let Some(spec) = &mut self.spec {
            let node_name = spec.node_name.take();
            let volumes = spec.volumes.take();
            *spec = Default::default();
            spec.node_name = node_name;
            spec.volumes = volumes.map(|volumes| {
                volumes
                    .into_iter()
                    .filter(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
                    .map(|v| k8s_openapi::api::core::v1::Volume {
                        name: v.name,
                        persistent_volume_claim: v.persistent_volume_claim,
                        // The template itself is not needed, only that the volume is one.
                        ephemeral: v.ephemeral.map(|_| Default::default()),
                        ..Default::default()
                    })
                    .collect()
            });
        }
        if let Some(status) = &mut self.status {
            let nominated = status.nominated_node_name.take();
            *status = Default::default();
            status.nominated_node_name = nominated;
        }
    }
}

fn trim<K: Trim>(o: &mut K) {
    o.trim();
}

/// Starts a reflector for `K` (managed fields dropped to save memory) that wakes `changed` on
/// every event; watch errors are logged and retried with backoff.
fn spawn_reflector<K>(api: Api<K>, changed: &Arc<Notify>, shutdown: &CancellationToken) -> Store<K>
where
    K: Resource + Trim + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer): (Store<K>, Writer<K>) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let changed = changed.clone();
    let shutdown = shutdown.clone();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut K| {
            o.managed_fields_mut().clear();
            o.annotations_mut().remove(LAST_APPLIED);
            trim(o);
        })
        .reflect(writer)
        .for_each(move |event| {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(kind = %kind, error = %e, "watch failed; retrying"),
            }
            futures::future::ready(())
        });
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = events => {}
        }
    });
    reader
}
