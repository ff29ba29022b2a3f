//! Placement quality: replays a seeded stream of pods (1–3 device classes each, one claim per
//! class, sizes uniform in 10–500 GiB) on N heterogeneous nodes, placing each pod online through
//! the real `extender::filter` and `extender::prioritize` over a `ClusterView` (a placement is
//! recorded as pending demand, as a selected-node claim would be), until the first pod no node
//! can take. Strategies: binpack, spread, plain worst-fit (lowest bytes-weighted utilisation of
//! the pod's classes after placement, the bar spread must meet), a TopoLVM-like score (log2 of free GiB, min over the
//! pod's classes, random among ties), random fit; and the offline first-fit-decreasing bound
//! (the longest prefix of the same stream FFD packs). Reports capacity placed before the first
//! rejection, fragmentation then, and the max/min node utilisation once half of FFD's bytes are
//! placed.
//!
//! Run: `cargo bench -p csi-scheduler --bench placement` (add `-- --quick` for fewer seeds).

use std::collections::BTreeMap;

use csi_api::capacity::{ClassCapacity, NodeCapacity};
use csi_api::names::{DeviceClass, Placement};
use csi_api::placement::Demand;
use csi_scheduler::extender;
use csi_scheduler::view::{ClusterView, PodDemand};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    Binpack,
    /// Binpack over the sample kube-scheduler hands the extender with the default (adaptive)
    /// `percentageOfNodesToScore`.
    BinpackSampled,
    Spread,
    WorstFit,
    TopoLvm,
    Random,
}

impl Strategy {
    const ALL: [Strategy; 6] = [
        Strategy::Binpack,
        Strategy::BinpackSampled,
        Strategy::Spread,
        Strategy::WorstFit,
        Strategy::TopoLvm,
        Strategy::Random,
    ];

    fn name(self) -> &'static str {
        match self {
            Strategy::Binpack => "binpack",
            Strategy::BinpackSampled => "binpack@adapt",
            Strategy::Spread => "spread",
            Strategy::WorstFit => "worst-fit",
            Strategy::TopoLvm => "topolvm-log2",
            Strategy::Random => "random-fit",
        }
    }
}

type Pod = Vec<(DeviceClass, u64)>;

/// Per seed: share of FFD, share of capacity, pods, fragmentation, free share, max/min at half
/// of FFD's bytes, max/min at the end.
type Row = (f64, f64, f64, f64, f64, f64, f64);

struct Cluster {
    names: Vec<String>,
    totals: Vec<BTreeMap<DeviceClass, u64>>,
}

impl Cluster {
    fn capacity(&self) -> u64 {
        self.totals.iter().flat_map(|t| t.values()).sum()
    }
}

/// N nodes, each with some of: nvme 1.6/3.2/6.4 TiB (80 %), ssd 2/4/8 TiB (60 %), hdd
/// 4/8/16 TiB (50 %); at least one class.
fn cluster(rng: &mut StdRng, n: usize) -> Cluster {
    let mut totals = Vec::with_capacity(n);
    while totals.len() < n {
        let mut classes = BTreeMap::new();
        let options: [(DeviceClass, f64, [u64; 3]); 3] = [
            (
                DeviceClass::Nvme,
                0.8,
                [16 * TIB / 10, 32 * TIB / 10, 64 * TIB / 10],
            ),
            (DeviceClass::Ssd, 0.6, [2 * TIB, 4 * TIB, 8 * TIB]),
            (DeviceClass::Hdd, 0.5, [4 * TIB, 8 * TIB, 16 * TIB]),
        ];
        for (class, p, sizes) in options {
            if rng.random_bool(p) {
                classes.insert(class, *sizes.choose(rng).unwrap());
            }
        }
        if !classes.is_empty() {
            totals.push(classes);
        }
    }
    let names = (0..n).map(|i| format!("node-{i:04}")).collect();
    Cluster { names, totals }
}

/// Pods until their sum is 1.5 times the cluster's capacity.
fn stream(rng: &mut StdRng, capacity: u64) -> Vec<Pod> {
    let mut pods = Vec::new();
    let mut sum = 0;
    while sum < capacity + capacity / 2 {
        let k = rng.random_range(1..=3);
        let mut classes = DeviceClass::ALL.to_vec();
        classes.shuffle(rng);
        let pod: Pod = classes[..k]
            .iter()
            .map(|&c| (c, rng.random_range(10..=500) * GIB))
            .collect();
        sum += pod.iter().map(|p| p.1).sum::<u64>();
        pods.push(pod);
    }
    pods
}

fn bytes_of(pod: &Pod) -> u64 {
    pod.iter().map(|p| p.1).sum()
}

/// Node utilisation (used / total over its classes).
fn utilisations(view: &ClusterView, cluster: &Cluster) -> Vec<f64> {
    cluster
        .names
        .iter()
        .map(|name| {
            let cap = view.node(name).unwrap();
            let total: u64 = cap.classes.values().map(|c| c.total).sum();
            let used: u64 = cap.classes.values().map(|c| c.pending).sum();
            used as f64 / total as f64
        })
        .collect()
}

fn max_min_ratio(utils: &[f64]) -> f64 {
    let max = utils.iter().copied().fold(0.0, f64::max);
    let min = utils.iter().copied().fold(f64::INFINITY, f64::min);
    if min <= 0.0 { f64::INFINITY } else { max / min }
}

/// External fragmentation of the free space: per class 1 − largest free / total free, weighted
/// by each class's free bytes; and the free bytes as a share of capacity.
fn fragmentation(view: &ClusterView, cluster: &Cluster) -> (f64, f64) {
    let mut free: BTreeMap<DeviceClass, (u64, u64)> = BTreeMap::new();
    for name in &cluster.names {
        for (class, cap) in &view.node(name).unwrap().classes {
            let f = cap.available();
            let entry = free.entry(*class).or_default();
            entry.0 += f;
            entry.1 = entry.1.max(f);
        }
    }
    let total_free: u64 = free.values().map(|f| f.0).sum();
    let frag: f64 = free
        .values()
        .filter(|f| f.0 > 0)
        .map(|&(sum, largest)| {
            (sum as f64 / total_free as f64) * (1.0 - largest as f64 / sum as f64)
        })
        .sum();
    (frag, total_free as f64 / cluster.capacity() as f64)
}

/// How many feasible nodes kube-scheduler looks for (and so hands the extender) out of `n` with
/// `percentageOfNodesToScore` `percentage` (0: adaptive, 50 % minus 1 % per 125 nodes, at least
/// 5 %), never fewer than 100 (kube-scheduler's `numFeasibleNodesToFind`).
fn nodes_to_find(n: usize, percentage: usize) -> usize {
    const MIN_FEASIBLE: usize = 100;
    if n < MIN_FEASIBLE || percentage >= 100 {
        return n;
    }
    let percentage = if percentage == 0 {
        50usize.saturating_sub(n / 125).max(5)
    } else {
        percentage
    };
    (n * percentage / 100).max(MIN_FEASIBLE)
}

/// Plain worst-fit's measure: the utilisation of each of the pod's classes once it is placed,
/// weighted by the pod's bytes in the class.
fn weighted_utilisation(cap: &NodeCapacity, pod: &Pod) -> f64 {
    let total: f64 = pod.iter().map(|&(_, b)| b as f64).sum();
    pod.iter()
        .map(|&(class, bytes)| {
            let c = &cap.classes[&class];
            let used = c.total - c.available() + bytes;
            bytes as f64 / total * used as f64 / c.total as f64
        })
        .sum()
}

/// TopoLVM's score: log2 of free GiB, 1..=10, the minimum over the pod's classes.
fn topolvm_score(cap: &NodeCapacity, pod: &Pod) -> i64 {
    pod.iter()
        .map(|(class, _)| {
            let free = cap.classes.get(class).map_or(0, ClassCapacity::available);
            let gib = free >> 30;
            if gib == 0 {
                i64::from(free > 0)
            } else {
                ((gib as f64).log2() as i64).clamp(1, 10)
            }
        })
        .min()
        .unwrap_or(0)
}

struct Outcome {
    placed_bytes: u64,
    placed_pods: usize,
    ratio_half: f64,
    ratio_end: f64,
    fragmentation: f64,
    free_share: f64,
    /// Scheduling cycles in which no node of the sample fitted while a node outside it did:
    /// each makes kube-scheduler mark the pod unschedulable and retry after a backoff.
    failed_cycles: usize,
}

fn run_online(strategy: Strategy, cluster: &Cluster, pods: &[Pod], seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let placement = match strategy {
        Strategy::Spread => Placement::Spread,
        _ => Placement::Binpack,
    };
    let mut view = ClusterView::new(placement);
    for (name, totals) in cluster.names.iter().zip(&cluster.totals) {
        let classes = totals
            .iter()
            .map(|(&c, &t)| {
                (
                    c,
                    ClassCapacity {
                        total: t,
                        allocatable: t,
                        pending: 0,
                        healthy: true,
                        thin: None,
                    },
                )
            })
            .collect();
        view.insert_node(name.clone(), NodeCapacity { classes });
    }
    let all_names: Vec<&str> = cluster.names.iter().map(String::as_str).collect();
    let sample = if strategy == Strategy::BinpackSampled {
        nodes_to_find(all_names.len(), 0)
    } else {
        all_names.len()
    };
    let mut next_start = 0;
    let (half, _) = ffd_bound(cluster, pods);
    let half = half / 2;
    let mut placed_bytes = 0;
    let mut ratio_half = f64::NAN;
    let mut placed_pods = 0;
    let mut failed_cycles = 0;
    for pod in pods {
        let mut demand = Demand::new();
        for &(class, bytes) in pod {
            demand.add(class, placement, bytes);
        }
        let demand = PodDemand::Needs {
            demand,
            own_pending: Vec::new(),
            pins: Vec::new(),
        };
        // kube-scheduler hands the extender the next `sample` nodes (round robin); a pod that
        // fits none of them is retried on the next window, until every node was offered.
        let mut names: Vec<&str> = Vec::new();
        let mut passing: Vec<usize> = Vec::new();
        let mut windows = 0;
        for _ in 0..all_names.len().div_ceil(sample) {
            windows += 1;
            names = (0..sample)
                .map(|k| all_names[(next_start + k) % all_names.len()])
                .collect();
            next_start = (next_start + sample) % all_names.len();
            let verdicts = extender::filter(&view, &demand, &names);
            passing = (0..names.len())
                .filter(|&i| verdicts[i].is_none())
                .collect();
            if !passing.is_empty() {
                break;
            }
        }
        if passing.is_empty() {
            break;
        }
        failed_cycles += windows - 1;
        let scored = |scores: &[i64]| -> Vec<usize> {
            let best = passing.iter().map(|&i| scores[i]).max().unwrap();
            passing
                .iter()
                .copied()
                .filter(|&i| scores[i] == best)
                .collect()
        };
        let chosen = match strategy {
            Strategy::Binpack | Strategy::BinpackSampled | Strategy::Spread => {
                let ties = scored(&extender::prioritize(&view, &demand, &names));
                *ties.choose(&mut rng).unwrap()
            }
            Strategy::TopoLvm => {
                let scores: Vec<i64> = names
                    .iter()
                    .map(|n| topolvm_score(view.node(n).unwrap(), pod))
                    .collect();
                *scored(&scores).choose(&mut rng).unwrap()
            }
            Strategy::WorstFit => *passing
                .iter()
                .min_by(|&&a, &&b| {
                    let (ua, ub) = (
                        weighted_utilisation(view.node(names[a]).unwrap(), pod),
                        weighted_utilisation(view.node(names[b]).unwrap(), pod),
                    );
                    ua.total_cmp(&ub).then(names[a].cmp(names[b]))
                })
                .unwrap(),
            Strategy::Random => *passing.choose(&mut rng).unwrap(),
        };
        let updated = view.update_node(names[chosen], |node| {
            for &(class, bytes) in pod {
                node.classes.get_mut(&class).unwrap().pending += bytes;
            }
        });
        assert!(updated);
        placed_bytes += bytes_of(pod);
        placed_pods += 1;
        if ratio_half.is_nan() && placed_bytes >= half {
            ratio_half = max_min_ratio(&utilisations(&view, cluster));
        }
    }
    let (fragmentation, free_share) = fragmentation(&view, cluster);
    Outcome {
        placed_bytes,
        placed_pods,
        ratio_half,
        ratio_end: max_min_ratio(&utilisations(&view, cluster)),
        fragmentation,
        free_share,
        failed_cycles,
    }
}

/// Whether first-fit-decreasing (pods by bytes, nodes in `order`) packs all of `pods`.
fn ffd_packs(cluster: &Cluster, order: &[usize], pods: &[Pod]) -> bool {
    let mut free: Vec<BTreeMap<DeviceClass, u64>> = cluster.totals.clone();
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(bytes_of(p)));
    'pods: for pod in sorted {
        for &n in order {
            let fits = pod
                .iter()
                .all(|(c, b)| free[n].get(c).is_some_and(|f| f >= b));
            if fits {
                for (c, b) in pod {
                    *free[n].get_mut(c).unwrap() -= b;
                }
                continue 'pods;
            }
        }
        return false;
    }
    true
}

/// Bytes of the longest prefix of `pods` that FFD packs (best of two node orders).
fn ffd_bound(cluster: &Cluster, pods: &[Pod]) -> (u64, usize) {
    let size = |n: usize| cluster.totals[n].values().sum::<u64>();
    let mut big_first: Vec<usize> = (0..cluster.totals.len()).collect();
    big_first.sort_by_key(|&n| std::cmp::Reverse(size(n)));
    let mut small_first = big_first.clone();
    small_first.reverse();
    let mut best = 0;
    for order in [&big_first, &small_first] {
        // Largest k FFD packs: binary search, then step on past any non-monotonic gap.
        let (mut lo, mut hi) = (0, pods.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if ffd_packs(cluster, order, &pods[..mid]) {
                lo = mid
            } else {
                hi = mid - 1
            }
        }
        let mut k = lo;
        for extra in 1..=32 {
            if k + extra <= pods.len() && ffd_packs(cluster, order, &pods[..k + extra]) {
                k += extra;
            }
        }
        best = best.max(k);
    }
    (pods[..best].iter().map(bytes_of).sum(), best)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seeds: Vec<u64> = (1..=if quick { 2 } else { 8 }).collect();
    println!(
        "stream: pods of 1-3 distinct classes, one claim per class, uniform 10-500 GiB, until 1.5x capacity"
    );
    println!(
        "nodes: nvme 1.6/3.2/6.4 TiB (80%), ssd 2/4/8 TiB (60%), hdd 4/8/16 TiB (50%); seeds {seeds:?}; means over seeds"
    );
    for n in [50, 200, 500] {
        let mut rows: BTreeMap<&str, Vec<Row>> = BTreeMap::new();
        let mut ffd_share = Vec::new();
        let mut failed_cycles = Vec::new();
        for &seed in &seeds {
            let mut rng = StdRng::seed_from_u64(seed * 1_000 + n as u64);
            let cluster = cluster(&mut rng, n);
            let pods = stream(&mut rng, cluster.capacity());
            let (bound, _) = ffd_bound(&cluster, &pods);
            ffd_share.push(bound as f64 / cluster.capacity() as f64);
            for strategy in Strategy::ALL {
                let o = run_online(strategy, &cluster, &pods, seed);
                if strategy == Strategy::BinpackSampled {
                    failed_cycles.push((o.failed_cycles, o.placed_pods));
                }
                rows.entry(strategy.name()).or_default().push((
                    o.placed_bytes as f64 / bound as f64,
                    o.placed_bytes as f64 / cluster.capacity() as f64,
                    o.placed_pods as f64,
                    o.fragmentation,
                    o.free_share,
                    o.ratio_half,
                    o.ratio_end,
                ));
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "\nN = {n} nodes; FFD bound places {:.1}% of capacity",
            100.0 * mean(&ffd_share)
        );
        println!(
            "{:<13} {:>10} {:>8} {:>9} {:>7} {:>7} {:>8} {:>10} {:>10}",
            "strategy",
            "% of FFD",
            "min",
            "% of cap",
            "pods",
            "frag",
            "free %",
            "max/min@½",
            "max/min@end"
        );
        for strategy in Strategy::ALL {
            let r = &rows[strategy.name()];
            let col = |f: fn(&Row) -> f64| -> Vec<f64> { r.iter().map(f).collect() };
            let of_ffd = col(|x| x.0);
            let min_of_ffd = of_ffd.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "{:<13} {:>9.1}% {:>7.1}% {:>8.1}% {:>7.0} {:>7.3} {:>7.1}% {:>10.2} {:>10.2}",
                strategy.name(),
                100.0 * mean(&of_ffd),
                100.0 * min_of_ffd,
                100.0 * mean(&col(|x| x.1)),
                mean(&col(|x| x.2)),
                mean(&col(|x| x.3)),
                100.0 * mean(&col(|x| x.4)),
                mean(&col(|x| x.5)),
                mean(&col(|x| x.6)),
            );
        }
        let (failed, placed): (usize, usize) = failed_cycles
            .iter()
            .fold((0, 0), |(f, p), &(a, b)| (f + a, p + b));
        println!(
            "binpack@adapt: {failed} scheduling cycles of {placed} placed pods found no fit in the sample though a node had room (kube-scheduler: unschedulable, retried after a 1-10 s backoff)"
        );
    }
    println!(
        "\nfrag = 1 - largest free / total free per class, weighted by free bytes, at the first rejection"
    );
    println!(
        "max/min = highest / lowest node utilisation (used / total of its classes), once half of FFD's bytes are placed (@½) and at the first rejection (@end); inf if a node is empty"
    );
}
