//! Replay of a seeded stream of pods through the extender's view with the agent's real order of
//! writes: the controller creates a LogicalVolume, the agent makes the LV and writes `Ready`
//! (with the capacity sequence of the allocation) first, and republishes NodeStorage only
//! later. Every intermediate state is a view the extender could serve; in none of them may a pod
//! be passed onto a node that cannot hold it once everything already promised there is made.
//! The same replay with an agent that writes no sequence (trusting `Ready` alone) must show the
//! double-booking window, so that the check is known to be able to fail.

use std::collections::BTreeMap;
use std::sync::Arc;

use csi_api::crd::{LogicalVolume, LogicalVolumePhase, NodeStorage};
use csi_api::names::{DeviceClass, Placement};
use csi_scheduler::extender;
use csi_scheduler::fixtures::{GIB, claim, node_storage, pod_on, selected, volume};
use csi_scheduler::view::ClusterView;
use csi_scheduler::wire;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NODES: usize = 6;
const NODE_BYTES: u64 = 100 * GIB;
const PODS: usize = 400;

/// What is left to happen to a placed claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The controller creates the LogicalVolume (phase Pending).
    Create,
    /// The agent makes the LV and writes `Ready`.
    Make,
    /// The claim's volume is bound; nothing left.
    Done,
}

struct Placed {
    node: usize,
    claim: String,
    uid: String,
    bytes: u64,
    step: Step,
}

/// The API server's objects, and the agent's truth per node.
struct World {
    nodes: Vec<Arc<NodeStorage>>,
    volumes: BTreeMap<String, Arc<LogicalVolume>>,
    claims: BTreeMap<String, Arc<PersistentVolumeClaim>>,
    pods: BTreeMap<String, Arc<Pod>>,
    classes: Vec<Arc<StorageClass>>,
    /// Bytes the agent has allocated on each node.
    allocated: Vec<u64>,
    /// The agent's capacity sequence on each node (bumped by every allocation).
    sequence: Vec<u64>,
    /// Nodes whose NodeStorage is stale (an allocation not yet republished).
    stale: Vec<bool>,
    /// Bytes promised to each node (every placement so far): the truth a pass is judged by.
    promised: Vec<u64>,
    with_sequence: bool,
}

fn node(i: usize) -> String {
    format!("n{i}")
}

impl World {
    fn new(with_sequence: bool) -> Self {
        let mut world = World {
            nodes: Vec::new(),
            volumes: BTreeMap::new(),
            claims: BTreeMap::new(),
            pods: BTreeMap::new(),
            classes: csi_scheduler::fixtures::standard_classes(),
            allocated: vec![0; NODES],
            sequence: vec![0; NODES],
            stale: vec![false; NODES],
            promised: vec![0; NODES],
            with_sequence,
        };
        for i in 0..NODES {
            world.nodes.push(node_storage(&node(i), &[]));
            world.publish(i);
        }
        world
    }

    /// The agent republishes node `i`'s NodeStorage with what it has allocated.
    fn publish(&mut self, i: usize) {
        let mut ns = (*node_storage(
            &node(i),
            &[(DeviceClass::Nvme, NODE_BYTES - self.allocated[i], true)],
        ))
        .clone();
        let status = ns.status.as_mut().expect("fixture has a status");
        status.device_classes[0].total_bytes = NODE_BYTES;
        if self.with_sequence {
            status.capacity_sequence = Some(self.sequence[i]);
        }
        self.nodes[i] = Arc::new(ns);
        self.stale[i] = false;
    }

    fn view(&self) -> ClusterView {
        let volumes: Vec<_> = self.volumes.values().cloned().collect();
        let claims: Vec<_> = self.claims.values().cloned().collect();
        let pods: Vec<_> = self.pods.values().cloned().collect();
        ClusterView::build(
            &self.nodes,
            &volumes,
            &claims,
            &self.classes,
            &pods,
            Placement::Binpack,
        )
    }
}

/// Replays the stream; returns (wrong passes, pods placed).
fn replay(seed: u64, with_sequence: bool) -> (usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut world = World::new(with_sequence);
    let mut placed: Vec<Placed> = Vec::new();
    let mut next_pod = 0;
    let mut wrong = 0;
    let names: Vec<String> = (0..NODES).map(node).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    loop {
        // Everything that may happen next, chosen at random: the next pod is scheduled, a
        // placed claim moves one step, or a stale node is republished.
        let movable: Vec<usize> = (0..placed.len())
            .filter(|&k| placed[k].step != Step::Done)
            .collect();
        let stale: Vec<usize> = (0..NODES).filter(|&i| world.stale[i]).collect();
        let choices = usize::from(next_pod < PODS) + movable.len() + stale.len();
        if choices == 0 {
            break;
        }
        let pick = rng.random_range(0..choices);
        if pick < movable.len() {
            let p = &mut placed[movable[pick]];
            let lv_name = format!("pvc-{}", p.uid);
            match p.step {
                Step::Create => {
                    let lv = volume(
                        &lv_name,
                        &node(p.node),
                        DeviceClass::Nvme,
                        p.bytes,
                        LogicalVolumePhase::Pending,
                    );
                    world.volumes.insert(lv_name, lv);
                    p.step = Step::Make;
                }
                Step::Make if world.allocated[p.node] + p.bytes > NODE_BYTES => {
                    // LVM is the final arbiter: the LV does not fit and fails cleanly.
                    let mut lv = (*world.volumes[&lv_name]).clone();
                    let status = lv.status.as_mut().expect("fixture has a status");
                    status.phase = Some(LogicalVolumePhase::Failed);
                    world.volumes.insert(lv_name, Arc::new(lv));
                    p.step = Step::Done;
                }
                Step::Make => {
                    // The agent's order: the LV's `Ready` first, NodeStorage later.
                    world.allocated[p.node] += p.bytes;
                    world.sequence[p.node] += 1;
                    world.stale[p.node] = true;
                    let mut lv = (*world.volumes[&lv_name]).clone();
                    let status = lv.status.as_mut().expect("fixture has a status");
                    status.phase = Some(LogicalVolumePhase::Ready);
                    status.current_size_bytes = Some(p.bytes);
                    if world.with_sequence {
                        status.capacity_sequence = Some(world.sequence[p.node]);
                    }
                    world.volumes.insert(lv_name.clone(), Arc::new(lv));
                    let mut pvc = (*world.claims[&p.claim]).clone();
                    if let Some(spec) = pvc.spec.as_mut() {
                        spec.volume_name = Some(lv_name);
                    }
                    world.claims.insert(p.claim.clone(), Arc::new(pvc));
                    p.step = Step::Done;
                }
                Step::Done => unreachable!("filtered out above"),
            }
            continue;
        }
        let pick = pick - movable.len();
        if pick < stale.len() {
            world.publish(stale[pick]);
            continue;
        }
        // Schedule the next pod: its claim is in the cache, filter and score every node.
        let id = next_pod;
        next_pod += 1;
        let claim_name = format!("data-{id}");
        let uid = format!("u{id}");
        let bytes = rng.random_range(1..=30) * GIB;
        let pvc = claim(
            "apps",
            &claim_name,
            &uid,
            "fast",
            &format!("{}Gi", bytes / GIB),
        );
        world.claims.insert(claim_name.clone(), Arc::new(pvc));
        let view = world.view();
        let pod: wire::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("pod-{id}"), "namespace": "apps"},
            "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}]}
        }))
        .expect("pod");
        let demand = view.demand_of(&pod);
        let verdicts = extender::filter(&view, &demand, &name_refs);
        for (i, verdict) in verdicts.iter().enumerate() {
            if verdict.is_none() && world.promised[i] + bytes > NODE_BYTES {
                wrong += 1;
            }
        }
        let scores = extender::prioritize(&view, &demand, &name_refs);
        let best = (0..NODES)
            .filter(|&i| verdicts[i].is_none())
            .max_by_key(|&i| (scores[i], std::cmp::Reverse(i)));
        let Some(target) = best else {
            continue;
        };
        // kube-scheduler's volume binder selects the node; the pod waits there for its volume.
        world.promised[target] += bytes;
        let pvc = selected((*world.claims[&claim_name]).clone(), &node(target));
        world.claims.insert(claim_name.clone(), Arc::new(pvc));
        let pod = pod_on(
            "apps",
            &format!("pod-{id}"),
            &node(target),
            false,
            &[&claim_name],
        );
        world.pods.insert(format!("pod-{id}"), pod);
        placed.push(Placed {
            node: target,
            claim: claim_name,
            uid,
            bytes,
            step: Step::Create,
        });
    }
    (wrong, placed.len())
}

#[test]
fn no_pod_is_passed_onto_a_node_that_cannot_hold_it() {
    for seed in 0..5 {
        let (wrong, placed) = replay(seed, true);
        assert_eq!(wrong, 0, "seed {seed}: {wrong} wrong passes");
        // The cluster was filled: the replay exercised full nodes, not an empty cluster.
        let capacity_pods = (NODES as u64 * NODE_BYTES / (31 * GIB)) as usize;
        assert!(placed >= capacity_pods, "seed {seed}: only {placed} placed");
    }
}

#[test]
fn without_the_sequence_the_window_double_books() {
    let wrong: usize = (0..5).map(|seed| replay(seed, false).0).sum();
    assert!(
        wrong > 0,
        "the replay no longer reaches the Ready-first window"
    );
}
