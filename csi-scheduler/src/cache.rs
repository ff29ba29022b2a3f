//! The kube-facing side: one watch per kind the extender reads (NodeStorage, LogicalVolume,
//! PersistentVolumeClaim, StorageClass and Pod; it never writes), each object reduced on arrival
//! to what placement reads ([`crate::record`]). Each watch event goes to one task that applies it to the [`ViewIndex`] (work proportional to
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
use crate::record::{ClaimRecord, Keyed, PodRecord, StorageRecord, VolumeRecord};
use crate::view::ObjectKey;

/// Most events applied before a snapshot is published, so that a flood (a re-list of 40,000
/// volumes) still publishes now and then instead of holding the previous snapshot for long.
const MAX_BURST: usize = 4096;

/// A watch event of one of the five kinds, the object already reduced to what the index keeps
/// ([`crate::record`]; StorageClasses whole).
#[allow(
    clippy::large_enum_variant,
    reason = "each event is moved once through the channel; boxing would add an allocation"
)]
pub enum Change {
    NodeStorage(Event<StorageRecord>),
    Volume(Event<VolumeRecord>),
    Claim(Event<ClaimRecord>),
    Class(Event<StorageClass>),
    Pod(Event<PodRecord>),
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

impl Keyed for StorageClass {
    fn key(&self) -> ObjectKey {
        (
            String::new(),
            self.metadata.name.clone().unwrap_or_default(),
        )
    }
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
                ViewIndex::apply_node_storage,
                |i, (_, name)| i.delete_node_storage(&name),
            ),
            Change::Volume(e) => {
                self.event(Kind::Volume, e, ViewIndex::apply_volume, |i, (_, name)| {
                    i.delete_volume(&name)
                })
            }
            Change::Claim(e) => {
                self.event(Kind::Claim, e, ViewIndex::apply_claim, |i, (ns, name)| {
                    i.delete_claim(&ns, &name)
                })
            }
            Change::Class(e) => self.event(
                Kind::Class,
                e,
                |i, o| i.apply_storage_class(Arc::new(o)),
                |i, (_, name)| i.delete_storage_class(&name),
            ),
            Change::Pod(e) => self.event(Kind::Pod, e, ViewIndex::apply_pod, |i, (ns, name)| {
                i.delete_pod(&ns, &name)
            }),
        }
    }

    fn event<K: Keyed>(
        &mut self,
        kind: Kind,
        event: Event<K>,
        apply: impl Fn(&mut ViewIndex, K),
        delete: impl Fn(&mut ViewIndex, (String, String)),
    ) {
        match event {
            Event::Apply(o) => apply(&mut self.index, o),
            Event::Delete(o) => delete(&mut self.index, o.key()),
            Event::Init => {
                self.listing.retain(|(k, _)| *k != kind);
                self.listing.push((kind, HashSet::new()));
            }
            Event::InitApply(o) => {
                if let Some((_, seen)) = self.listing.iter_mut().find(|(k, _)| *k == kind) {
                    seen.insert(o.key());
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
    spawn_watch::<NodeStorage, _>(
        Api::all(client.clone()),
        &tx,
        Change::NodeStorage,
        &shutdown,
    );
    spawn_watch::<LogicalVolume, _>(Api::all(client.clone()), &tx, Change::Volume, &shutdown);
    spawn_watch::<PersistentVolumeClaim, _>(
        Api::all(client.clone()),
        &tx,
        Change::Claim,
        &shutdown,
    );
    spawn_watch::<StorageClass, _>(Api::all(client.clone()), &tx, Change::Class, &shutdown);
    spawn_watch::<Pod, _>(Api::all(client), &tx, Change::Pod, &shutdown);
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

/// The event with its object reduced by `keep` (what the index keeps of it).
fn reduce<K, R>(event: Event<K>, keep: impl FnOnce(K) -> R) -> Event<R> {
    match event {
        Event::Apply(o) => Event::Apply(keep(o)),
        Event::Delete(o) => Event::Delete(keep(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(keep(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// Starts a watch on `K` that sends every event to `tx` with the object reduced to what the
/// index keeps (`R`, [`crate::record`]) as it arrives, so that the whole object is dropped at
/// once, in the watch task; watch errors are logged and retried with backoff (the watcher
/// re-lists, and [`Applier`] drops what went meanwhile).
fn spawn_watch<K, R>(
    api: Api<K>,
    tx: &mpsc::UnboundedSender<Change>,
    wrap: fn(Event<R>) -> Change,
    shutdown: &CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    R: From<K> + Send + 'static,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let tx = tx.clone();
    let shutdown = shutdown.clone();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut K| {
            // Only StorageClasses are kept whole; the others are reduced below anyway.
            o.managed_fields_mut().clear();
            o.annotations_mut().remove(LAST_APPLIED);
        })
        .for_each(move |event| {
            match event {
                Ok(event) => {
                    // The receiver is gone only at shutdown.
                    let _ = tx.send(wrap(reduce(event, R::from)));
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

    fn list<K, R: From<K>>(wrap: fn(Event<R>) -> Change, objects: Vec<K>) -> Vec<Change> {
        let mut out = vec![wrap(Event::Init)];
        out.extend(
            objects
                .into_iter()
                .map(|o| wrap(Event::InitApply(R::from(o)))),
        );
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
        for change in list::<StorageClass, _>(Change::Class, classes)
            .into_iter()
            .chain(list::<LogicalVolume, _>(Change::Volume, vec![]))
            .chain(list::<PersistentVolumeClaim, _>(Change::Claim, vec![]))
            .chain(list::<Pod, _>(Change::Pod, vec![]))
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
        applier.apply(Change::NodeStorage(Event::Delete(storage("b").into())));
        assert_eq!(applier.index().publish().node_count(), 1);
    }
}
