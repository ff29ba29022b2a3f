//! `ViewIndex`: the [`ClusterView`] kept up to date change by change. The cache task applies
//! each watch event (one NodeStorage, LogicalVolume, PVC or Pod) and publishes; a change costs
//! work proportional to what it touches (the node's volumes and selected claims, the pod's
//! claims), never to the cluster. Only a StorageClass change re-derives every claim (classes
//! change rarely, and a claim's class decides whether it is Strata's at all).
//!
//! How: the index keeps the source objects keyed, plus reverse maps (volumes by node, claims by
//! UID, claims selected on a node, the nodes pods put each claim on, snapshot volumes by the
//! VolumeSnapshot they were made for). A change marks claims and
//! nodes dirty; [`ViewIndex::publish`] recomputes the dirty claims (which may dirty the node
//! they count on), then the dirty nodes, writes only those entries into its working
//! `ClusterView`, and hands out a clone of it. The view's maps are persistent (`imbl`), so the
//! clone is O(1) and shares every untouched entry with the snapshot readers still hold.
//!
//! The arithmetic is the one [`ClusterView::build`] used to run over the whole cluster
//! (`csi_api::capacity`'s pending rule and credibility rule), applied per node; `build` itself is
//! now this index fed with every object once, and a test checks random change sequences against
//! a fresh build.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use csi_api::capacity::{self, ClassBytes, Pool};
use csi_api::names::Placement;
use k8s_openapi::api::storage::v1::StorageClass;

use crate::record::{
    ClaimFields, ClaimRecord, PodRecord, StorageFields, StorageRecord, VolumeFields, VolumeRecord,
};
use crate::room::NodeEntry;
use crate::view::{ClassParams, ClusterView, ObjectKey};

/// The incrementally maintained view. Owned by one task; readers get [`ClusterView`] snapshots.
#[derive(Debug, Default)]
pub struct ViewIndex {
    /// The working copy, published by cloning.
    view: ClusterView,
    storages: HashMap<String, StorageFields>,
    volumes: HashMap<String, VolumeFields>,
    volumes_by_node: HashMap<String, HashSet<String>>,
    claims: HashMap<ObjectKey, ClaimFields>,
    claim_by_uid: HashMap<String, ObjectKey>,
    /// node → claims whose `selected-node` names it (their credibility depends on the node).
    selected_on: HashMap<String, HashSet<ObjectKey>>,
    /// node → claims counted as pending there, with their pool (class, provisioning) and bytes.
    counted_on: HashMap<String, HashMap<ObjectKey, (Pool, u64)>>,
    /// pod → what it contributes to `claim_nodes`.
    pods: HashMap<ObjectKey, Vec<(ObjectKey, Vec<String>)>>,
    /// claim → the nodes pods using it are bound or nominated to (with repeats, one per pod).
    claim_nodes: HashMap<ObjectKey, Vec<String>>,
    storage_classes: HashMap<String, Arc<StorageClass>>,
    /// VolumeSnapshot → the snapshot LogicalVolumes made for it (one, normally); the view's
    /// `snapshot_nodes` holds the node of the first by name.
    snapshots_by_ref: HashMap<ObjectKey, BTreeSet<String>>,
    dirty_claims: HashSet<ObjectKey>,
    dirty_nodes: HashSet<String>,
}

impl ViewIndex {
    /// An empty index; StorageClasses without `strata.io/placement` use `default_placement`.
    pub fn new(default_placement: Placement) -> Self {
        ViewIndex {
            view: ClusterView::new(default_placement),
            ..Default::default()
        }
    }

    /// Recomputes what changed since the last call and returns the new snapshot.
    pub fn publish(&mut self) -> ClusterView {
        for key in std::mem::take(&mut self.dirty_claims) {
            self.recompute_claim(key);
        }
        for node in std::mem::take(&mut self.dirty_nodes) {
            self.recompute_node(node);
        }
        self.view.clone()
    }

    /// Claims and nodes waiting to be recomputed by the next [`publish`](Self::publish).
    pub fn pending_changes(&self) -> usize {
        self.dirty_claims.len() + self.dirty_nodes.len()
    }

    // ---- NodeStorage ----

    pub fn apply_node_storage(&mut self, ns: StorageRecord) {
        if ns.name.is_empty() {
            return;
        }
        self.storages.insert(ns.name.clone(), ns.fields);
        self.node_changed(ns.name);
    }

    pub fn delete_node_storage(&mut self, name: &str) {
        if self.storages.remove(name).is_some() {
            self.node_changed(name.to_owned());
        }
    }

    /// The node's capacity and sequence changed: its volumes' pending bytes and the
    /// credibility of the claims selected on it may have too.
    fn node_changed(&mut self, name: String) {
        if let Some(selected) = self.selected_on.get(&name) {
            self.dirty_claims.extend(selected.iter().cloned());
        }
        self.dirty_nodes.insert(name);
    }

    // ---- LogicalVolume ----

    pub fn apply_volume(&mut self, lv: VolumeRecord) {
        let VolumeRecord { name, fields } = lv;
        if name.is_empty() {
            return;
        }
        let node = fields.node.clone();
        let snapshot_of = fields.volume_snapshot.clone();
        let old = self.volumes.insert(name.clone(), fields);
        let old_snapshot_of = old.as_ref().and_then(|o| o.volume_snapshot.clone());
        if let Some(key) = old_snapshot_of.filter(|k| Some(k) != snapshot_of.as_ref()) {
            self.unlink_snapshot(key, &name);
        }
        if let Some(key) = snapshot_of {
            // A status update of a snapshot already linked changes nothing here.
            let linked = self
                .snapshots_by_ref
                .entry(key.clone())
                .or_default()
                .insert(name.clone());
            let moved = old.as_ref().is_some_and(|o| o.node != node);
            if linked || moved {
                self.refresh_snapshot_node(key);
            }
        }
        match old {
            // Its phase, size or sequence changed: its node's pending bytes may have.
            Some(old) if old.node == node => {
                self.dirty_nodes.insert(node);
            }
            Some(old) => {
                self.unlink_volume(&old.node, &name);
                // Its claim records the volume's node (where a clone of it must go).
                self.volume_existence_changed(&name);
                self.link_volume(node, name);
            }
            None => {
                self.volume_existence_changed(&name);
                self.link_volume(node, name);
            }
        }
    }

    pub fn delete_volume(&mut self, name: &str) {
        if let Some(old) = self.volumes.remove(name) {
            if let Some(key) = old.volume_snapshot {
                self.unlink_snapshot(key, name);
            }
            self.unlink_volume(&old.node, name);
            self.volume_existence_changed(name);
        }
    }

    fn unlink_snapshot(&mut self, key: ObjectKey, name: &str) {
        if let Some(set) = self.snapshots_by_ref.get_mut(&key) {
            set.remove(name);
            if set.is_empty() {
                self.snapshots_by_ref.remove(&key);
            }
        }
        self.refresh_snapshot_node(key);
    }

    /// Writes the node of the VolumeSnapshot's (first) snapshot volume into the view.
    fn refresh_snapshot_node(&mut self, key: ObjectKey) {
        let node = self
            .snapshots_by_ref
            .get(&key)
            .and_then(|set| set.first())
            .and_then(|name| self.volumes.get(name))
            .map(|v| v.node.clone());
        match node {
            Some(node) if self.view.snapshot_nodes.get(&key) != Some(&node) => {
                self.view.snapshot_nodes.insert(key, node);
            }
            Some(_) => {}
            None => {
                self.view.snapshot_nodes.remove(&key);
            }
        }
    }

    fn link_volume(&mut self, node: String, name: String) {
        self.volumes_by_node
            .entry(node.clone())
            .or_default()
            .insert(name);
        self.dirty_nodes.insert(node);
    }

    fn unlink_volume(&mut self, node: &str, name: &str) {
        if let Some(set) = self.volumes_by_node.get_mut(node) {
            set.remove(name);
            if set.is_empty() {
                self.volumes_by_node.remove(node);
            }
        }
        self.dirty_nodes.insert(node.to_owned());
    }

    /// A volume `pvc-<uid>` appeared or went: the claim of that UID has (no longer) a volume.
    fn volume_existence_changed(&mut self, name: &str) {
        if let Some(key) = name
            .strip_prefix("pvc-")
            .and_then(|uid| self.claim_by_uid.get(uid))
        {
            self.dirty_claims.insert(key.clone());
        }
    }

    // ---- PersistentVolumeClaim ----

    pub fn apply_claim(&mut self, pvc: ClaimRecord) {
        let ClaimRecord { key, fields } = pvc;
        let uid = fields.uid.clone();
        if let Some(old) = self.claims.insert(key.clone(), fields)
            && old.uid != uid
            && let Some(old_uid) = &old.uid
        {
            self.claim_by_uid.remove(old_uid);
        }
        if let Some(uid) = uid {
            self.claim_by_uid.insert(uid, key.clone());
        }
        self.dirty_claims.insert(key);
    }

    pub fn delete_claim(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(old) = self.claims.remove(&key) {
            if let Some(uid) = &old.uid
                && self.claim_by_uid.get(uid) == Some(&key)
            {
                self.claim_by_uid.remove(uid);
            }
            self.dirty_claims.insert(key);
        }
    }

    // ---- Pod ----

    pub fn apply_pod(&mut self, pod: PodRecord) {
        let PodRecord { key, uses } = pod;
        if self.pods.get(&key) == Some(&uses) {
            // Most pod updates (status, conditions) change nothing placement reads.
            return;
        }
        self.remove_pod_uses(&key);
        for (claim, nodes) in &uses {
            self.claim_nodes
                .entry(claim.clone())
                .or_default()
                .extend(nodes.iter().cloned());
            self.dirty_claims.insert(claim.clone());
        }
        if !uses.is_empty() {
            self.pods.insert(key, uses);
        }
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        self.remove_pod_uses(&(namespace.to_owned(), name.to_owned()));
    }

    fn remove_pod_uses(&mut self, key: &ObjectKey) {
        let Some(old) = self.pods.remove(key) else {
            return;
        };
        for (claim, nodes) in old {
            if let Some(list) = self.claim_nodes.get_mut(&claim) {
                for node in &nodes {
                    if let Some(i) = list.iter().position(|n| n == node) {
                        list.swap_remove(i);
                    }
                }
                if list.is_empty() {
                    self.claim_nodes.remove(&claim);
                }
            }
            self.dirty_claims.insert(claim);
        }
    }

    // ---- StorageClass ----

    /// Replaces every StorageClass. Re-derives every claim: work proportional to the claims,
    /// acceptable for a kind that changes a few times in a cluster's life.
    pub fn set_storage_classes(&mut self, classes: impl IntoIterator<Item = Arc<StorageClass>>) {
        self.storage_classes = classes
            .into_iter()
            .filter_map(|sc| Some((sc.metadata.name.clone()?, sc)))
            .collect();
        self.classes_changed();
    }

    pub fn apply_storage_class(&mut self, sc: Arc<StorageClass>) {
        let Some(name) = sc.metadata.name.clone() else {
            return;
        };
        if self.storage_classes.get(&name) == Some(&sc) {
            return;
        }
        self.storage_classes.insert(name, sc);
        self.classes_changed();
    }

    pub fn delete_storage_class(&mut self, name: &str) {
        if self.storage_classes.remove(name).is_some() {
            self.classes_changed();
        }
    }

    fn classes_changed(&mut self) {
        self.view
            .set_storage_classes(self.storage_classes.values().map(|s| &**s));
        self.dirty_claims.extend(self.claims.keys().cloned());
        // Claims of a class that went away leave the view too.
        self.dirty_claims.extend(self.view.claims.keys().cloned());
    }

    // ---- Names present, for a re-list (the watch restarted) ----

    /// Names of the NodeStorages the index holds.
    pub fn node_storage_names(&self) -> Vec<String> {
        self.storages.keys().cloned().collect()
    }

    pub fn volume_names(&self) -> Vec<String> {
        self.volumes.keys().cloned().collect()
    }

    pub fn claim_keys(&self) -> Vec<ObjectKey> {
        self.claims.keys().cloned().collect()
    }

    pub fn pod_keys(&self) -> Vec<ObjectKey> {
        self.pods.keys().cloned().collect()
    }

    pub fn storage_class_names(&self) -> Vec<String> {
        self.storage_classes.keys().cloned().collect()
    }

    // ---- Recomputation ----

    fn recompute_claim(&mut self, key: ObjectKey) {
        // Take the claim's old contribution out.
        if let Some(Some(old)) = self.view.claims.get(&key) {
            let old = old.clone();
            if let Some(node) = &old.selected_node
                && let Some(set) = self.selected_on.get_mut(node)
            {
                set.remove(&key);
                if set.is_empty() {
                    self.selected_on.remove(node);
                }
            }
            if let Some(node) = &old.counted_on {
                if let Some(map) = self.counted_on.get_mut(node) {
                    map.remove(&key);
                    if map.is_empty() {
                        self.counted_on.remove(node);
                    }
                }
                self.dirty_nodes.insert(node.clone());
            }
        }
        let Some(pvc) = self.claims.get(&key) else {
            if let Some(old) = self.view.claims.remove(&key)
                && old.is_some()
            {
                self.view.strata_claims -= 1;
            }
            return;
        };
        let volumes = &self.volumes;
        let mut info = self
            .view
            .claim_info(pvc, |name| volumes.get(name).map(|v| v.node.clone()));
        if let Some(info) = &mut info {
            let on_node = |node: &str| {
                self.claim_nodes
                    .get(&key)
                    .is_some_and(|nodes| nodes.iter().any(|n| n == node))
            };
            let storages = &self.storages;
            info.counted_on = self.view.selected_pending(info, on_node, |node| {
                storages.get(node).and_then(|s| s.reported.as_ref())
            });
            if let Some(node) = &info.selected_node {
                self.selected_on
                    .entry(node.clone())
                    .or_default()
                    .insert(key.clone());
            }
            if let (
                Some(node),
                Ok(bytes),
                Some(ClassParams::Strata {
                    class,
                    provisioning,
                    ..
                }),
            ) = (
                &info.counted_on,
                &info.bytes,
                self.view.classes.get(&info.storage_class),
            ) {
                self.counted_on
                    .entry(node.clone())
                    .or_default()
                    .insert(key.clone(), (Pool::new(*class, *provisioning), *bytes));
                self.dirty_nodes.insert(node.clone());
            }
        }
        let is_strata = info.is_some();
        let old = self.view.claims.insert(key, info.map(Arc::new));
        match (old.is_some_and(|o| o.is_some()), is_strata) {
            (false, true) => self.view.strata_claims += 1,
            (true, false) => self.view.strata_claims -= 1,
            _ => {}
        }
    }

    fn recompute_node(&mut self, name: String) {
        let Some(StorageFields {
            sequence,
            reported: Some(reported),
        }) = self.storages.get(&name)
        else {
            self.view.nodes.remove(&name);
            return;
        };
        let mut pending = ClassBytes::new();
        for lv in self
            .volumes_by_node
            .get(&name)
            .into_iter()
            .flatten()
            .filter_map(|v| self.volumes.get(v))
        {
            if let Some((pool, bytes)) = lv.pending_bytes(*sequence) {
                capacity::add_class_bytes(&mut pending, pool, bytes);
            }
        }
        for &(pool, bytes) in self
            .counted_on
            .get(&name)
            .into_iter()
            .flat_map(|m| m.values())
        {
            capacity::add_class_bytes(&mut pending, pool, bytes);
        }
        let capacity = reported.clone().with_pending(&pending);
        if self.view.nodes.get(&name).map(|e| &e.capacity) != Some(&capacity) {
            self.view
                .nodes
                .insert(name, Arc::new(NodeEntry::new(capacity)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use csi_api::crd::{LogicalVolume, LogicalVolumePhase, NodeStorage};
    use csi_api::names::DeviceClass;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::fixtures::*;

    const NODES: [&str; 4] = ["n0", "n1", "n2", "n3"];

    /// The cluster as the API server holds it, to build a fresh view from.
    #[derive(Default)]
    struct World {
        storages: BTreeMap<String, Arc<NodeStorage>>,
        volumes: BTreeMap<String, Arc<LogicalVolume>>,
        claims: BTreeMap<String, Arc<PersistentVolumeClaim>>,
        pods: BTreeMap<String, Arc<Pod>>,
        classes: Vec<Arc<StorageClass>>,
    }

    impl World {
        fn fresh(&self) -> ClusterView {
            fn all<T>(m: &BTreeMap<String, Arc<T>>) -> Vec<Arc<T>> {
                m.values().cloned().collect()
            }
            ClusterView::build(
                &all(&self.storages),
                &all(&self.volumes),
                &all(&self.claims),
                &self.classes,
                &all(&self.pods),
                Placement::Binpack,
            )
        }
    }

    fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
        &items[rng.random_range(0..items.len())]
    }

    fn classes(with_bulk: bool) -> Vec<Arc<StorageClass>> {
        standard_classes()
            .into_iter()
            .filter(|c| with_bulk || c.metadata.name.as_deref() != Some("bulk"))
            .collect()
    }

    /// One random change, applied to both the world and the index.
    fn step(rng: &mut StdRng, world: &mut World, index: &mut ViewIndex) {
        let delete = rng.random_bool(0.2);
        match rng.random_range(0..9) {
            0 | 1 => {
                let node = *pick(rng, &NODES);
                if delete {
                    world.storages.remove(node);
                    index.delete_node_storage(node);
                    return;
                }
                let alloc = *pick(rng, &[5, 20, 100]) * GIB;
                let mut ns = (*node_storage(
                    node,
                    &[
                        (DeviceClass::Nvme, alloc, rng.random_bool(0.9)),
                        (DeviceClass::Hdd, 900 * GIB, true),
                    ],
                ))
                .clone();
                // Totals of 5 or 20 GiB make 10Gi selected claims incredible there.
                for c in &mut ns.status.as_mut().unwrap().device_classes {
                    if c.name == DeviceClass::Nvme {
                        c.total_bytes = alloc;
                    }
                }
                ns.status.as_mut().unwrap().capacity_sequence =
                    rng.random_bool(0.7).then(|| rng.random_range(0..4));
                if rng.random_bool(0.1) {
                    ns.metadata.deletion_timestamp =
                        Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
                }
                let ns = Arc::new(ns);
                index.apply_node_storage(StorageRecord::from(&*ns));
                world.storages.insert(node.to_owned(), ns);
            }
            2 | 3 => {
                let name = format!("pvc-u{}", rng.random_range(0..6));
                if delete {
                    world.volumes.remove(&name);
                    index.delete_volume(&name);
                    return;
                }
                let phase = *pick(
                    rng,
                    &[
                        LogicalVolumePhase::Pending,
                        LogicalVolumePhase::Ready,
                        LogicalVolumePhase::Failed,
                        LogicalVolumePhase::Wiping,
                    ],
                );
                let mut lv = (*volume(
                    &name,
                    pick::<&str>(rng, &NODES),
                    *pick(rng, &[DeviceClass::Nvme, DeviceClass::Hdd]),
                    *pick(rng, &[1, 10]) * GIB,
                    phase,
                ))
                .clone();
                let status = lv.status.as_mut().unwrap();
                status.capacity_sequence = rng.random_bool(0.7).then(|| rng.random_range(1..4));
                status.current_size_bytes = rng.random_bool(0.5).then_some(GIB);
                // Some are snapshots made for one of a few VolumeSnapshots (two may share one).
                if rng.random_bool(0.3) {
                    lv.spec.role = Some(csi_api::crd::VolumeRole::Snapshot);
                    lv.spec.volume_snapshot = Some(csi_api::crd::VolumeSnapshotReference {
                        namespace: "apps".into(),
                        name: format!("snap{}", rng.random_range(0..3)),
                    });
                }
                let lv = Arc::new(lv);
                index.apply_volume(VolumeRecord::from(&*lv));
                world.volumes.insert(name, lv);
            }
            4..=6 => {
                let i = rng.random_range(0..6);
                let name = format!("c{i}");
                if delete {
                    world.claims.remove(&name);
                    index.delete_claim("apps", &name);
                    return;
                }
                // Sometimes a claim recreated under the same name (another UID).
                let uid = if rng.random_bool(0.2) {
                    format!("u{}", i + 10)
                } else {
                    format!("u{i}")
                };
                let class = *pick(rng, &["fast", "bulk", "ebs", "broken"]);
                let size = *pick(rng, &["1Gi", "10Gi", "lots"]);
                let mut pvc = claim("apps", &name, &uid, class, size);
                if rng.random_bool(0.7) {
                    pvc = selected(pvc, pick::<&str>(rng, &NODES));
                }
                if rng.random_bool(0.1) {
                    pvc = bound(pvc);
                }
                let pvc = Arc::new(pvc);
                index.apply_claim(ClaimRecord::from(&*pvc));
                world.claims.insert(name, pvc);
            }
            7 => {
                let name = format!("p{}", rng.random_range(0..4));
                if delete {
                    world.pods.remove(&name);
                    index.delete_pod("apps", &name);
                    return;
                }
                let uses: Vec<String> = (0..6)
                    .filter(|_| rng.random_bool(0.3))
                    .map(|i| format!("c{i}"))
                    .collect();
                let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
                let node = *pick(rng, &["n0", "n1", "n2", ""]);
                let pod = pod_on("apps", &name, node, rng.random_bool(0.5), &uses);
                index.apply_pod(PodRecord::from(&*pod));
                world.pods.insert(name, pod);
            }
            _ => {
                world.classes = classes(rng.random_bool(0.7));
                if rng.random_bool(0.5) {
                    index.set_storage_classes(world.classes.clone());
                } else if world.classes.len() == standard_classes().len() {
                    index.apply_storage_class(pick(rng, &world.classes).clone());
                    index.set_storage_classes(world.classes.clone());
                } else {
                    index.delete_storage_class("bulk");
                }
            }
        }
    }

    fn assert_same(incremental: &ClusterView, fresh: &ClusterView, seed: u64, step: usize) {
        assert_eq!(
            incremental.nodes, fresh.nodes,
            "nodes, seed {seed} step {step}"
        );
        assert_eq!(
            incremental.claims, fresh.claims,
            "claims, seed {seed} step {step}"
        );
        assert_eq!(incremental.claim_count(), fresh.claim_count());
        assert_eq!(
            incremental.snapshot_nodes, fresh.snapshot_nodes,
            "snapshots, seed {seed} step {step}"
        );
        assert_eq!(incremental.classes, fresh.classes);
    }

    #[test]
    fn random_changes_give_the_view_a_fresh_build_gives() {
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut world = World {
                classes: classes(true),
                ..Default::default()
            };
            let mut index = ViewIndex::new(Placement::Binpack);
            index.set_storage_classes(world.classes.clone());
            let mut counted = 0;
            for i in 0..300 {
                step(&mut rng, &mut world, &mut index);
                // Publish after bursts of 1-3 changes, as the cache task does.
                if rng.random_bool(0.5) {
                    let view = index.publish();
                    assert_same(&view, &world.fresh(), seed, i);
                    counted += view
                        .nodes
                        .values()
                        .filter(|e| e.capacity.classes.values().any(|c| c.pending > 0))
                        .count();
                }
            }
            assert_same(&index.publish(), &world.fresh(), seed, 300);
            assert!(counted > 0, "seed {seed}: the sequence never made pending");
        }
    }

    #[test]
    fn a_change_touches_only_its_node_and_old_snapshots_stay_as_they_were() {
        let Objects {
            nodes,
            volumes,
            claims,
            classes,
            pods,
        } = cluster(50);
        let mut index = ViewIndex::new(Placement::Binpack);
        index.set_storage_classes(classes.iter().cloned());
        for ns in &nodes {
            index.apply_node_storage(StorageRecord::from(&**ns));
        }
        for lv in &volumes {
            index.apply_volume(VolumeRecord::from(&**lv));
        }
        for pvc in &claims {
            index.apply_claim(ClaimRecord::from(&**pvc));
        }
        for pod in &pods {
            index.apply_pod(PodRecord::from(&**pod));
        }
        let before = index.publish();
        let node = node_name(7);
        let new_volume = volume(
            "pvc-new",
            &node,
            DeviceClass::Nvme,
            40 * GIB,
            LogicalVolumePhase::Pending,
        );
        index.apply_volume(VolumeRecord::from(&*new_volume));
        assert_eq!(index.pending_changes(), 1, "one node to recompute");
        let after = index.publish();
        let pending = |v: &ClusterView| v.node(&node).unwrap().classes[&DeviceClass::Nvme].pending;
        assert_eq!(pending(&after), pending(&before) + 40 * GIB);
        // Every other node's entry is the same allocation as before (shared, not rebuilt).
        for i in (0..50).filter(|&i| i != 7) {
            let name = node_name(i);
            assert!(Arc::ptr_eq(&before.nodes[&name], &after.nodes[&name]));
        }
        // A pod status update that changes nothing placement reads recomputes nothing.
        index.apply_pod(PodRecord::from(&*pods[0]));
        assert_eq!(index.pending_changes(), 0);
    }
}
