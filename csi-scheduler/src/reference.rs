//! The request path as it was before the precomputed pool room and the direct JSON writer
//! (`filter`, `prioritize` and `answer`; with the served path's source pins and name decoder,
//! so that both answer the same questions): a straightforward
//! reference that the equivalence tests compare the served path with on random views, and the
//! baseline the churn bench measures it against in the same run. Not used by the binary.

use std::borrow::Cow;
use std::collections::BTreeMap;

use csi_api::capacity::{NodeCapacity, Shortfall};
use csi_api::placement;
use serde::Serialize;

use crate::Error;
use crate::extender::{RejectKind, Rejection};
use crate::http::{Answer, Verb};
use crate::view::{ClusterView, PodDemand};
use crate::wire::{ExtenderArgs, ExtenderFilterResult, NodeListOut};
/// The verdict for each candidate, aligned with the input: `None` passes.
pub fn filter(view: &ClusterView, demand: &PodDemand, nodes: &[&str]) -> Vec<Option<Rejection>> {
    match demand {
        PodDemand::Nothing => vec![None; nodes.len()],
        PodDemand::Invalid(message) => {
            let rejection = Rejection {
                kind: RejectKind::InvalidClaim,
                message: format!("strata: {message}"),
            };
            vec![Some(rejection); nodes.len()]
        }
        PodDemand::Unsynced(message) => {
            let rejection = Rejection {
                kind: RejectKind::ClaimNotSynced,
                message: format!("strata: {message}"),
            };
            vec![Some(rejection); nodes.len()]
        }
        PodDemand::SourceMissing(message) => {
            let rejection = Rejection {
                kind: RejectKind::SourceNotFound,
                message: format!("strata: {message}"),
            };
            vec![Some(rejection); nodes.len()]
        }
        PodDemand::Needs {
            demand,
            own_pending,
            pins,
        } => nodes
            .iter()
            .map(|&name| {
                if let Some(pin) = pins.iter().find(|p| p.node != name) {
                    return Some(Rejection {
                        kind: RejectKind::SourceElsewhere,
                        message: format!(
                            "strata: {} on node {}: a restore or clone is made on its source's node",
                            pin.why, pin.node
                        ),
                    });
                }
                let Some(cap) = node_capacity(view, own_pending, name) else {
                    return Some(Rejection {
                        kind: RejectKind::NoNodeStorage,
                        message: "strata: node has no NodeStorage, or it is marked Stale (no Strata agent runs there, or it stopped reporting)"
                            .to_owned(),
                    });
                };
                let shortfall = cap.check(demand.by_class()).err()?;
                let kind = match shortfall {
                    Shortfall::NoSuchClass(_) => RejectKind::NoSuchClass,
                    Shortfall::Degraded(_) => RejectKind::Degraded,
                    Shortfall::NoThinPool(_) => RejectKind::NoThinPool,
                    Shortfall::ThinPoolFull(_) => RejectKind::ThinPoolFull,
                    Shortfall::Insufficient { .. } => RejectKind::Insufficient,
                };
                Some(Rejection {
                    kind,
                    message: format!("strata: {shortfall}"),
                })
            })
            .collect(),
    }
}

/// Scores 0..=10 for each candidate, aligned with the input: 0 everywhere for a pod without
/// Strata demand, 0 for nodes the demand does not fit, and exactly one 10 otherwise.
pub fn prioritize(view: &ClusterView, demand: &PodDemand, nodes: &[&str]) -> Vec<i64> {
    let mut scores = vec![0; nodes.len()];
    let PodDemand::Needs {
        demand,
        own_pending,
        pins,
    } = demand
    else {
        return scores;
    };
    let mut positions = Vec::with_capacity(nodes.len());
    let mut caps = Vec::with_capacity(nodes.len());
    for (i, &name) in nodes.iter().enumerate() {
        if pins.iter().any(|p| p.node != name) {
            continue;
        }
        if let Some(cap) = node_capacity(view, own_pending, name) {
            positions.push(i);
            caps.push((name, cap));
        }
    }
    let candidates: Vec<(&str, &NodeCapacity)> = caps
        .iter()
        .map(|(name, cap)| (*name, cap.as_ref()))
        .collect();
    for (i, s) in positions
        .into_iter()
        .zip(placement::score(&candidates, demand))
    {
        scores[i] = s;
    }
    scores
}

/// A node's capacity, with the pod's own claims (already counted as pending on the node they
/// selected) taken back out of pending.
fn node_capacity<'v>(
    view: &'v ClusterView,
    own_pending: &[(String, csi_api::capacity::Pool, u64)],
    name: &str,
) -> Option<Cow<'v, NodeCapacity>> {
    let cap = view.node(name)?;
    if own_pending.iter().all(|(node, ..)| node != name) {
        return Some(Cow::Borrowed(cap));
    }
    let mut adjusted = cap.clone();
    for (_, pool, bytes) in own_pending.iter().filter(|(node, ..)| node == name) {
        if let Some(pending) = adjusted
            .classes
            .get_mut(&pool.class)
            .and_then(|c| c.pending_mut(pool.provisioning))
        {
            *pending = pending.saturating_sub(*bytes);
        }
    }
    Some(Cow::Owned(adjusted))
}

#[derive(Serialize)]
struct HostPriorityOut<'a> {
    #[serde(rename = "Host")]
    host: &'a str,
    #[serde(rename = "Score")]
    score: i64,
}

/// Decodes `ExtenderArgs` from `body` and answers `verb` from `view`: the whole request path
/// short of HTTP, used by the handlers and the benchmarks.
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
    let demand = view.demand_of(&pod);
    match verb {
        Verb::Prioritize => {
            let scores = prioritize(view, &demand, &names);
            let list: Vec<HostPriorityOut> = names
                .iter()
                .zip(scores)
                .map(|(host, score)| HostPriorityOut { host, score })
                .collect();
            Ok(Answer {
                body: to_json(&list)?,
                rejected: Vec::new(),
            })
        }
        Verb::Filter => {
            let verdicts = filter(view, &demand, &names);
            let mut result = ExtenderFilterResult::default();
            let mut passed = Vec::with_capacity(names.len());
            let mut rejected = Vec::new();
            for (i, verdict) in verdicts.into_iter().enumerate() {
                match verdict {
                    None => passed.push(i),
                    Some(r) => {
                        rejected.push(r.kind);
                        let failed: &mut BTreeMap<_, _> = if r.kind.is_unresolvable() {
                            &mut result.failed_and_unresolvable_nodes
                        } else {
                            &mut result.failed_nodes
                        };
                        failed.insert(names[i], r.message);
                    }
                }
            }
            match full_nodes {
                Some(items) => {
                    let kept = passed.iter().map(|&i| &*items[i].raw).collect();
                    result.nodes = Some(NodeListOut::new(kept));
                }
                None => result.node_names = Some(passed.iter().map(|&i| names[i]).collect()),
            }
            Ok(Answer {
                body: to_json(&result)?,
                rejected,
            })
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(format!("encoding the answer: {e}")))
}
