//! Placement strategies shared by the scheduler's prioritize and the controller's choice of node
//! for Immediate-binding volumes: among the nodes a [`Demand`] fits, `binpack` prefers the node
//! left fullest — the fewest free bytes over all its classes once the demand is placed (best fit,
//! which also keeps nodes offering several classes for pods that need several), `spread` the node
//! left with the lowest utilisation of the class. Each binpack term (class × placement) is ranked
//! across the candidates from exact byte counts, each spread term is the class's free fraction
//! after placement (never rescaled, so spread is exactly worst-fit), terms are weighted by their
//! bytes, and the result is
//! mapped to the extender's 0..=10: the single best node (ties broken by node name) gets 10, the
//! others 0..=9. A thin term is weighed in its own currency: free means promisable minus thin
//! pending (binpack sums it over the node's thin pools), utilisation is of pool size × ratio.

use crate::capacity::{ClassBytes, ClassCapacity, NodeCapacity, Pool, add_class_bytes};
use crate::names::{DeviceClass, Placement, Provisioning};

/// The highest score (kube-scheduler's `MaxExtenderPriority`).
pub const MAX_SCORE: i64 = 10;

/// One part of a demand: bytes of a class (linear or thin), placed with a strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    pub class: DeviceClass,
    pub provisioning: Provisioning,
    pub placement: Placement,
    pub bytes: u64,
}

/// What a pod (or a volume) needs: bytes per class, each with its StorageClass's placement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    terms: Vec<Term>,
    by_class: ClassBytes,
}

impl Demand {
    /// An empty demand (fits everywhere, scores nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` of `pool` (a bare [`DeviceClass`] is linear) placed with `placement` (merged
    /// with an equal pool and placement).
    pub fn add(&mut self, pool: impl Into<Pool>, placement: Placement, bytes: u64) {
        let pool = pool.into();
        add_class_bytes(&mut self.by_class, pool, bytes);
        match self.terms.iter_mut().find(|t| {
            t.class == pool.class && t.provisioning == pool.provisioning && t.placement == placement
        }) {
            Some(term) => term.bytes = term.bytes.saturating_add(bytes),
            None => self.terms.push(Term {
                class: pool.class,
                provisioning: pool.provisioning,
                placement,
                bytes,
            }),
        }
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Bytes per pool, what the fit check compares with each node's available bytes.
    pub fn by_class(&self) -> &ClassBytes {
        &self.by_class
    }

    /// The (class, placement) parts, in the order they were first added.
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }
}

/// How bad a node is for one term, lower is better. Binpack: the node's free bytes of the term's
/// provisioning over all its classes once the whole demand of that provisioning is placed.
/// Spread: the pool's utilisation once its demand is placed (a fraction of the pool's total).
fn badness(node: &NodeCapacity, cap: &ClassCapacity, demand: &Demand, term: &Term) -> f64 {
    let provisioning = term.provisioning;
    match term.placement {
        Placement::Binpack => {
            let free: u64 = node
                .classes
                .values()
                .map(|c| c.available_for(provisioning))
                .sum();
            let placed: u64 = demand
                .by_class()
                .iter()
                .filter(|(pool, _)| pool.provisioning == provisioning)
                .map(|(_, bytes)| bytes)
                .sum();
            free.saturating_sub(placed) as f64
        }
        Placement::Spread => {
            let pool = Pool::new(term.class, provisioning);
            let needed = demand.by_class().get(&pool).copied().unwrap_or(0);
            let left = cap.available_for(provisioning).saturating_sub(needed);
            match cap.total_for(provisioning) {
                None | Some(0) => 1.0,
                Some(total) => 1.0 - (left.min(total) as f64 / total as f64),
            }
        }
    }
}

/// Scores `candidates` for `demand`, aligned with the input: 0 for a node the demand does not
/// fit (or for every node when the demand is empty), otherwise 0..=10 with exactly one 10.
pub fn score(candidates: &[(&str, &NodeCapacity)], demand: &Demand) -> Vec<i64> {
    let mut scores = vec![0; candidates.len()];
    if demand.is_empty() {
        return scores;
    }
    let fitting: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].1.check(demand.by_class()).is_ok())
        .collect();
    let Some(goodness) = combined_goodness(candidates, &fitting, demand) else {
        return scores;
    };
    let best = best_of(candidates, &fitting, &goodness);
    let (lo, hi) = min_max(goodness.iter().copied());
    for (k, &i) in fitting.iter().enumerate() {
        scores[i] = if k == best {
            MAX_SCORE
        } else if hi > lo {
            let scaled = ((goodness[k] - lo) / (hi - lo) * (MAX_SCORE - 1) as f64).floor();
            (scaled as i64).clamp(0, MAX_SCORE - 1)
        } else {
            MAX_SCORE - 1
        };
    }
    scores
}

/// The index of the best candidate for `demand` (the one [`score`] gives 10), if any fits.
pub fn best(candidates: &[(&str, &NodeCapacity)], demand: &Demand) -> Option<usize> {
    let fitting: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].1.check(demand.by_class()).is_ok())
        .collect();
    if demand.is_empty() {
        // Nothing to weigh: the first fitting node by name.
        return fitting.into_iter().min_by_key(|&i| candidates[i].0);
    }
    let goodness = combined_goodness(candidates, &fitting, demand)?;
    Some(fitting[best_of(candidates, &fitting, &goodness)])
}

/// Per fitting candidate (aligned with `fitting`), the bytes-weighted mean over the demand's
/// terms of how good the node is for the term, in 0..=1: binpack terms ranked min-max across the
/// fitting nodes, spread terms as the class's free fraction after placement (so an all-spread
/// demand picks exactly the worst fit by bytes-weighted utilisation). `None` when nothing fits.
fn combined_goodness(
    candidates: &[(&str, &NodeCapacity)],
    fitting: &[usize],
    demand: &Demand,
) -> Option<Vec<f64>> {
    if fitting.is_empty() {
        return None;
    }
    let total_weight: f64 = demand.terms().iter().map(|t| t.bytes as f64).sum();
    let mut goodness = vec![0.0; fitting.len()];
    let mut bad = vec![0.0; fitting.len()];
    for term in demand.terms() {
        for (slot, &i) in bad.iter_mut().zip(fitting) {
            // Fitting nodes have every class of the demand.
            let node = candidates[i].1;
            *slot = node
                .classes
                .get(&term.class)
                .map_or(f64::MAX, |cap| badness(node, cap, demand, term));
        }
        let (lo, hi) = min_max(bad.iter().copied());
        let weight = if total_weight > 0.0 {
            term.bytes as f64 / total_weight
        } else {
            1.0 / demand.terms().len() as f64
        };
        for (g, &b) in goodness.iter_mut().zip(&bad) {
            let normalised = match term.placement {
                // Free bytes have no natural scale: rank them across the candidates.
                Placement::Binpack if hi > lo => (hi - b) / (hi - lo),
                Placement::Binpack => 1.0,
                // Utilisation is a fraction already: use it as it is. Rescaling it across the
                // candidates would blow up a small difference in one class against a large one
                // in another and leave the choice looser than plain worst-fit.
                Placement::Spread => 1.0 - b,
            };
            *g += weight * normalised;
        }
    }
    Some(goodness)
}

/// Position in `fitting` of the highest goodness, ties going to the smallest node name.
fn best_of(candidates: &[(&str, &NodeCapacity)], fitting: &[usize], goodness: &[f64]) -> usize {
    let mut best = 0;
    for k in 1..fitting.len() {
        let better = goodness[k] > goodness[best]
            || (goodness[k] == goodness[best]
                && candidates[fitting[k]].0 < candidates[fitting[best]].0);
        if better {
            best = k;
        }
    }
    best
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(classes: &[(DeviceClass, u64, u64)]) -> NodeCapacity {
        NodeCapacity {
            classes: classes
                .iter()
                .map(|&(class, total, available)| {
                    let cap = ClassCapacity {
                        total,
                        allocatable: available,
                        pending: 0,
                        healthy: true,
                        thin: None,
                    };
                    (class, cap)
                })
                .collect(),
        }
    }

    fn demand(parts: &[(DeviceClass, Placement, u64)]) -> Demand {
        let mut d = Demand::new();
        for &(c, p, b) in parts {
            d.add(c, p, b);
        }
        d
    }

    #[test]
    fn binpack_prefers_the_tightest_fit_and_spread_the_emptiest_node() {
        let a = node(&[(DeviceClass::Nvme, 1000 * GIB, 100 * GIB)]);
        let b = node(&[(DeviceClass::Nvme, 1000 * GIB, 900 * GIB)]);
        let c = node(&[(DeviceClass::Nvme, 1000 * GIB, 500 * GIB)]);
        let small = node(&[(DeviceClass::Nvme, 10 * GIB, 10 * GIB)]);
        let nodes = [("a", &a), ("b", &b), ("c", &c), ("small", &small)];
        let pack = demand(&[(DeviceClass::Nvme, Placement::Binpack, 50 * GIB)]);
        assert_eq!(score(&nodes, &pack), vec![10, 0, 4, 0]);
        assert_eq!(best(&nodes, &pack), Some(0));
        let spread = demand(&[(DeviceClass::Nvme, Placement::Spread, 50 * GIB)]);
        assert_eq!(score(&nodes, &spread), vec![0, 10, 4, 0]);
        assert_eq!(best(&nodes, &spread), Some(1));
    }

    #[test]
    fn spread_compares_utilisation_not_free_bytes() {
        // Big node has more free bytes but is fuller.
        let big = node(&[(DeviceClass::Hdd, 10_000 * GIB, 3_000 * GIB)]);
        let little = node(&[(DeviceClass::Hdd, 1_000 * GIB, 900 * GIB)]);
        let d = demand(&[(DeviceClass::Hdd, Placement::Spread, 100 * GIB)]);
        assert_eq!(best(&[("big", &big), ("little", &little)], &d), Some(1));
    }

    #[test]
    fn ties_go_to_the_smallest_name_whatever_the_order() {
        let n = node(&[(DeviceClass::Ssd, 100 * GIB, 100 * GIB)]);
        let d = demand(&[(DeviceClass::Ssd, Placement::Binpack, GIB)]);
        assert_eq!(
            score(&[("b", &n), ("a", &n), ("c", &n)], &d),
            vec![9, 10, 9]
        );
        assert_eq!(best(&[("c", &n), ("b", &n)], &d), Some(1));
    }

    #[test]
    fn byte_precise_differences_decide() {
        let a = node(&[(DeviceClass::Nvme, 1 << 40, (1 << 39) + 1)]);
        let b = node(&[(DeviceClass::Nvme, 1 << 40, 1 << 39)]);
        let d = demand(&[(DeviceClass::Nvme, Placement::Binpack, GIB)]);
        assert_eq!(score(&[("a", &a), ("b", &b)], &d), vec![0, 10]);
        let d = demand(&[(DeviceClass::Nvme, Placement::Spread, GIB)]);
        assert_eq!(score(&[("a", &a), ("b", &b)], &d), vec![10, 0]);
    }

    #[test]
    fn binpack_counts_every_class_of_the_node_and_keeps_multi_class_nodes() {
        // Same nvme room; "multi" also has hdd free: an nvme-only claim goes to "plain".
        let plain = node(&[(DeviceClass::Nvme, 100 * GIB, 60 * GIB)]);
        let multi = node(&[
            (DeviceClass::Nvme, 100 * GIB, 50 * GIB),
            (DeviceClass::Hdd, 1000 * GIB, 900 * GIB),
        ]);
        let nodes = [("multi", &multi), ("plain", &plain)];
        let d = demand(&[(DeviceClass::Nvme, Placement::Binpack, 10 * GIB)]);
        assert_eq!(score(&nodes, &d), vec![0, 10]);
    }

    #[test]
    fn terms_are_weighted_by_bytes_across_classes() {
        // x is fuller in nvme, y in hdd: spread prefers y for nvme, x for hdd.
        let x = node(&[
            (DeviceClass::Nvme, 100 * GIB, 20 * GIB),
            (DeviceClass::Hdd, 1000 * GIB, 900 * GIB),
        ]);
        let y = node(&[
            (DeviceClass::Nvme, 100 * GIB, 90 * GIB),
            (DeviceClass::Hdd, 1000 * GIB, 100 * GIB),
        ]);
        let nodes = [("x", &x), ("y", &y)];
        let d = demand(&[
            (DeviceClass::Nvme, Placement::Spread, 10 * GIB),
            (DeviceClass::Hdd, Placement::Spread, 50 * GIB),
        ]);
        assert_eq!(best(&nodes, &d), Some(0));
        let d = demand(&[
            (DeviceClass::Nvme, Placement::Spread, 15 * GIB),
            (DeviceClass::Hdd, Placement::Spread, GIB),
        ]);
        assert_eq!(best(&nodes, &d), Some(1));
        // Mixed strategies: heavy nvme binpack (y is left with fewer bytes overall) against a
        // light hdd spread (x is emptier in hdd).
        let d = demand(&[
            (DeviceClass::Nvme, Placement::Binpack, 15 * GIB),
            (DeviceClass::Hdd, Placement::Spread, GIB),
        ]);
        assert_eq!(score(&nodes, &d), vec![0, 10]);
        let d = demand(&[
            (DeviceClass::Nvme, Placement::Binpack, GIB),
            (DeviceClass::Hdd, Placement::Spread, 15 * GIB),
        ]);
        assert_eq!(score(&nodes, &d), vec![10, 0]);
    }

    #[test]
    fn nodes_that_do_not_fit_score_zero_and_empty_demand_scores_nothing() {
        let full = node(&[(DeviceClass::Nvme, 100 * GIB, GIB)]);
        let ok = node(&[(DeviceClass::Nvme, 100 * GIB, 50 * GIB)]);
        let other = node(&[(DeviceClass::Ssd, 100 * GIB, 50 * GIB)]);
        let nodes = [("full", &full), ("ok", &ok), ("other", &other)];
        let d = demand(&[(DeviceClass::Nvme, Placement::Spread, 2 * GIB)]);
        assert_eq!(score(&nodes, &d), vec![0, 10, 0]);
        assert_eq!(score(&nodes, &Demand::new()), vec![0, 0, 0]);
        let huge = demand(&[(DeviceClass::Nvme, Placement::Spread, u64::MAX)]);
        assert_eq!(score(&nodes, &huge), vec![0, 0, 0]);
        assert_eq!(best(&nodes, &huge), None);
        assert_eq!(best(&nodes, &Demand::new()), Some(0));
    }

    #[test]
    fn demand_merges_equal_terms_and_sums_classes() {
        let d = demand(&[
            (DeviceClass::Nvme, Placement::Binpack, 1),
            (DeviceClass::Nvme, Placement::Spread, 2),
            (DeviceClass::Nvme, Placement::Binpack, 3),
            (DeviceClass::Hdd, Placement::Spread, u64::MAX),
            (DeviceClass::Hdd, Placement::Spread, 1),
        ]);
        assert_eq!(d.terms().len(), 3);
        assert_eq!(d.terms()[0].bytes, 4);
        assert_eq!(
            d.by_class(),
            &ClassBytes::from([
                (Pool::linear(DeviceClass::Nvme), 6),
                (Pool::linear(DeviceClass::Hdd), u64::MAX)
            ])
        );
    }

    #[test]
    fn thin_terms_fit_and_rank_by_the_thin_pool_not_the_vg() {
        use crate::capacity::ThinCapacity;
        let with_pool = |vg_free: u64, promisable: u64| {
            let mut n = node(&[(DeviceClass::Nvme, 1000 * GIB, vg_free)]);
            n.classes.get_mut(&DeviceClass::Nvme).expect("nvme").thin = Some(ThinCapacity {
                total: 1000 * GIB,
                promisable,
                pending: 0,
                full: false,
            });
            n
        };
        // a: lots of VG space, little promisable; b: the reverse; c: no pool at all.
        let a = with_pool(900 * GIB, 100 * GIB);
        let b = with_pool(10 * GIB, 800 * GIB);
        let c = node(&[(DeviceClass::Nvme, 1000 * GIB, 900 * GIB)]);
        let nodes = [("a", &a), ("b", &b), ("c", &c)];
        let thin = Pool::thin(DeviceClass::Nvme);
        let spread = demand_of(thin, Placement::Spread, 50 * GIB);
        assert_eq!(best(&nodes, &spread), Some(1));
        assert_eq!(score(&nodes, &spread)[2], 0, "no thin pool: does not fit");
        let pack = demand_of(thin, Placement::Binpack, 50 * GIB);
        assert_eq!(best(&nodes, &pack), Some(0));
        // Larger than any promisable: nowhere, although the VGs have room.
        assert_eq!(
            best(&nodes, &demand_of(thin, Placement::Binpack, 801 * GIB)),
            None
        );
    }

    fn demand_of(pool: Pool, placement: Placement, bytes: u64) -> Demand {
        let mut d = Demand::new();
        d.add(pool, placement, bytes);
        d
    }
}
