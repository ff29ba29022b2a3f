//! The kube-facing side: one watch per kind the extender reads (NodeStorage, LogicalVolume,
//! PersistentVolumeClaim, StorageClass, and Pod trimmed to its volumes and node; it never writes).
//! Each watch event goes to one task that applies it to the [`ViewIndex`] (work proportional to
//! the object's node or pod, not the cluster) and publishes a new snapshot after every burst, so
//! that requests only read a finished snapshot and a change is visible to the next request
//! within milliseconds.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Instant;

use csi_api::crd::{LogicalVolume, NodeStorage};
use csi_api::names::Placement;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::http::ViewHandle;
use crate::index::ViewIndex;
use crate::metrics::Metrics;

/// Most events applied before a snapshot is published, so that a flood (a re-list of 40,000
/// volumes) still publishes now and then instead of holding the previous snapshot for long.
const MAX_BURST: usize = 4096;

/// A watch event of one of the five kinds.
#[allow(
    clippy::large_enum_variant,
    reason = "each event is moved once through the channel; boxing would add an allocation"
)]
pub enum Change {
    NodeStorage(Event<NodeStorage>),
    Volume(Event<LogicalVolume>),
    Claim(Event<PersistentVolumeClaim>),
    Class(Event<StorageClass>),
    Pod(Event<Pod>),
}

/// The five kinds, for bookkeeping of (re-)lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    NodeStorage,
    Volume,
    Claim,
    Class,
    Pod,
}

const KINDS: usize = 5;

/// Applies watch events to a [`ViewIndex`], handling re-lists: objects not seen again between
/// a watch's `Init` and `InitDone` were deleted while it was down.
pub struct Applier {
    index: ViewIndex,
    /// Names seen since the kind's `Init`, while a (re-)list is in progress.
    listing: Vec<(Kind, HashSet<(String, String)>)>,
    /// Kinds listed completely at least once.
    synced: HashSet<Kind>,
}

fn key<K: Resource>(o: &K) -> (String, String) {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

impl Applier {
    pub fn new(default_placement: Placement) -> Self {
        Applier {
            index: ViewIndex::new(default_placement),
            listing: Vec::new(),
            synced: HashSet::new(),
        }
    }

    /// Whether every kind has been listed once (before that, the view would be partial).
    pub fn synced(&self) -> bool {
        self.synced.len() == KINDS
    }

    /// The index, to publish a snapshot.
    pub fn index(&mut self) -> &mut ViewIndex {
        &mut self.index
    }

    pub fn apply(&mut self, change: Change) {
        match change {
            Change::NodeStorage(e) => self.event(
                Kind::NodeStorage,
                e,
                |i, o| i.apply_node_storage(&o),
                |i, (_, name)| i.delete_node_storage(&name),
            ),
            Change::Volume(e) => self.event(
                Kind::Volume,
                e,
                |i, o| i.apply_volume(Arc::new(o)),
                |i, (_, name)| i.delete_volume(&name),
            ),
            Change::Claim(e) => self.event(
                Kind::Claim,
                e,
                |i, o| i.apply_claim(Arc::new(o)),
                |i, (ns, name)| i.delete_claim(&ns, &name),
            ),
            Change::Class(e) => self.event(
                Kind::Class,
                e,
                |i, o| i.apply_storage_class(Arc::new(o)),
                |i, (_, name)| i.delete_storage_class(&name),
            ),
            Change::Pod(e) => self.event(
                Kind::Pod,
                e,
                |i, o| i.apply_pod(&o),
                |i, (ns, name)| i.delete_pod(&ns, &name),
            ),
        }
    }

    fn event<K: Resource>(
        &mut self,
        kind: Kind,
        event: Event<K>,
        apply: impl Fn(&mut ViewIndex, K),
        delete: impl Fn(&mut ViewIndex, (String, String)),
    ) {
        match event {
            Event::Apply(o) => apply(&mut self.index, o),
            Event::Delete(o) => delete(&mut self.index, key(&o)),
            Event::Init => {
                self.listing.retain(|(k, _)| *k != kind);
                self.listing.push((kind, HashSet::new()));
            }
            Event::InitApply(o) => {
                if let Some((_, seen)) = self.listing.iter_mut().find(|(k, _)| *k == kind) {
                    seen.insert(key(&o));
                }
                apply(&mut self.index, o);
            }
            Event::InitDone => {
                let Some(at) = self.listing.iter().position(|(k, _)| *k == kind) else {
                    return;
                };
                let (_, seen) = self.listing.swap_remove(at);
                for gone in self.keys(kind).into_iter().filter(|k| !seen.contains(k)) {
                    delete(&mut self.index, gone);
                }
                self.synced.insert(kind);
            }
        }
    }

    /// Keys of the objects of `kind` the index holds (namespace empty for cluster-scoped kinds).
    fn keys(&self, kind: Kind) -> Vec<(String, String)> {
        let cluster = |names: Vec<String>| names.into_iter().map(|n| (String::new(), n)).collect();
        match kind {
            Kind::NodeStorage => cluster(self.index.node_storage_names()),
            Kind::Volume => cluster(self.index.volume_names()),
            Kind::Class => cluster(self.index.storage_class_names()),
            Kind::Claim => self.index.claim_keys(),
            Kind::Pod => self.index.pod_keys(),
        }
    }
}

/// Watches the five kinds and keeps `view` current until `shutdown`.
pub async fn run(
    client: Client,
    view: ViewHandle,
    metrics: Arc<Metrics>,
    default_placement: Placement,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_watch::<NodeStorage>(
        Api::all(client.clone()),
        &tx,
        Change::NodeStorage,
        &shutdown,
    );
    spawn_watch::<LogicalVolume>(Api::all(client.clone()), &tx, Change::Volume, &shutdown);
    spawn_watch::<PersistentVolumeClaim>(Api::all(client.clone()), &tx, Change::Claim, &shutdown);
    spawn_watch::<StorageClass>(Api::all(client.clone()), &tx, Change::Class, &shutdown);
    spawn_watch::<Pod>(Api::all(client), &tx, Change::Pod, &shutdown);
    drop(tx);

    let mut applier = Applier::new(default_placement);
    let mut announced = false;
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            change = rx.recv() => match change {
                Some(change) => change,
                None => return,
            },
        };
        let started = Instant::now();
        applier.apply(first);
        let mut burst = 1;
        while burst < MAX_BURST
            && let Ok(change) = rx.try_recv()
        {
            applier.apply(change);
            burst += 1;
        }
        if !applier.synced() {
            continue;
        }
        if !announced {
            tracing::info!("caches synced; serving placement");
            announced = true;
        }
        let next = applier.index().publish();
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

/// Starts a watch on `K` (managed fields and the last-applied annotation dropped, the object
/// trimmed to what placement reads) that sends every event to `tx`; watch errors are logged and
/// retried with backoff (the watcher re-lists, and [`Applier`] drops what went meanwhile).
fn spawn_watch<K>(
    api: Api<K>,
    tx: &mpsc::UnboundedSender<Change>,
    wrap: fn(Event<K>) -> Change,
    shutdown: &CancellationToken,
) where
    K: Resource + Trim + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let tx = tx.clone();
    let shutdown = shutdown.clone();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut K| {
            o.managed_fields_mut().clear();
            o.annotations_mut().remove(LAST_APPLIED);
            trim(o);
        })
        .for_each(move |event| {
            match event {
                Ok(event) => {
                    // The receiver is gone only at shutdown.
                    let _ = tx.send(wrap(event));
                }
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
}

#[cfg(test)]
mod tests {
    use csi_api::names::DeviceClass;

    use super::*;
    use crate::fixtures::*;

    fn list<K>(wrap: fn(Event<K>) -> Change, objects: Vec<K>) -> Vec<Change> {
        let mut out = vec![wrap(Event::Init)];
        out.extend(objects.into_iter().map(|o| wrap(Event::InitApply(o))));
        out.push(wrap(Event::InitDone));
        out
    }

    #[test]
    fn a_relist_drops_what_went_while_the_watch_was_down_and_sync_needs_every_kind() {
        let mut applier = Applier::new(Placement::Binpack);
        let storage = |name: &str| (*node_storage(name, &[(DeviceClass::Nvme, GIB, true)])).clone();
        for change in list(Change::NodeStorage, vec![storage("a"), storage("b")]) {
            applier.apply(change);
        }
        assert!(!applier.synced(), "four kinds not listed yet");
        let classes = standard_classes().iter().map(|c| (**c).clone()).collect();
        for change in list(Change::Class, classes)
            .into_iter()
            .chain(list(Change::Volume, vec![]))
            .chain(list(Change::Claim, vec![]))
            .chain(list(Change::Pod, vec![]))
        {
            applier.apply(change);
        }
        assert!(applier.synced());
        assert_eq!(applier.index().publish().node_count(), 2);
        // The watch restarts; "a" was deleted meanwhile, "c" created.
        for change in list(Change::NodeStorage, vec![storage("b"), storage("c")]) {
            applier.apply(change);
        }
        let view = applier.index().publish();
        assert!(view.node("a").is_none());
        assert!(view.node("b").is_some() && view.node("c").is_some());
        // A plain delete event.
        applier.apply(Change::NodeStorage(Event::Delete(storage("b"))));
        assert_eq!(applier.index().publish().node_count(), 1);
    }
}
