//! The extender's decisions as pure functions over a [`ClusterView`] and a pod's [`PodDemand`]:
//! `filter` (does the demand fit each candidate, and if not, why) and `prioritize` (0..=10 by
//! the StorageClasses' placement). The fit test is `csi_api::capacity`, the scores
//! `csi_api::placement`, so the controller's admission and node choice agree with them.

use std::borrow::Cow;

use csi_api::capacity::{NodeCapacity, Shortfall};
use csi_api::placement;

use crate::room::{FitCheck, Miss, NodeEntry, Room};
use crate::view::{ClusterView, PodDemand};

/// Why a node was filtered out, for messages and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    /// The node has no NodeStorage (no Strata agent): unresolvable.
    NoNodeStorage,
    /// The node has no volume group of a class the pod needs: unresolvable.
    NoSuchClass,
    /// A class the pod needs lost a disk and takes no new volumes.
    Degraded,
    /// The node's agent serves no thin pool for the class of a thin claim: unresolvable.
    NoThinPool,
    /// The class's thin pool is Full: no new thin volume until it is grown or data is freed.
    ThinPoolFull,
    /// Not enough bytes of a class (or promisable bytes of its thin pool) right now.
    Insufficient,
    /// The pod's claims cannot be placed anywhere (invalid StorageClass or size).
    InvalidClaim,
    /// A claim of the pod is not in the extender's cache yet: retry shortly.
    ClaimNotSynced,
    /// A claim restores or clones a source on another node: unresolvable.
    SourceElsewhere,
    /// A claim restores or clones a source the extender does not know (yet): wait.
    SourceNotFound,
}

impl RejectKind {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::NoNodeStorage => "no_node_storage",
            RejectKind::NoSuchClass => "no_such_class",
            RejectKind::Degraded => "degraded",
            RejectKind::NoThinPool => "no_thin_pool",
            RejectKind::ThinPoolFull => "thin_pool_full",
            RejectKind::Insufficient => "insufficient",
            RejectKind::InvalidClaim => "invalid_claim",
            RejectKind::ClaimNotSynced => "claim_not_synced",
            RejectKind::SourceElsewhere => "source_elsewhere",
            RejectKind::SourceNotFound => "source_not_found",
        }
    }

    /// Whether waiting (or preemption) cannot make the node fit: `FailedAndUnresolvableNodes`.
    pub fn is_unresolvable(self) -> bool {
        match self {
            RejectKind::NoNodeStorage
            | RejectKind::NoSuchClass
            | RejectKind::NoThinPool
            | RejectKind::InvalidClaim
            | RejectKind::SourceElsewhere => true,
            RejectKind::Degraded
            | RejectKind::ThinPoolFull
            | RejectKind::Insufficient
            | RejectKind::ClaimNotSynced
            | RejectKind::SourceNotFound => false,
        }
    }
}

/// A node filtered out and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectKind,
    pub message: String,
}

/// One candidate's verdict: passes, or the reason (an index into [`Verdicts`]'s table) and, for
/// a pool too small, the bytes it has (the one per-node part of that message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    reason: u32,
    available: u64,
}

impl Verdict {
    const PASS: Verdict = Verdict {
        reason: u32::MAX,
        available: 0,
    };

    fn rejected(reason: usize, available: u64) -> Verdict {
        Verdict {
            reason: u32::try_from(reason).expect("a few reasons per request"),
            available,
        }
    }

    /// Whether the node passes.
    pub fn passes(self) -> bool {
        self.reason == u32::MAX
    }
}

/// A reason for rejecting nodes, built once per request: its kind and its message, the latter
/// split around the available bytes for [`RejectKind::Insufficient`] (`tail` is then `Some`).
/// The `json_*` forms are the same text escaped for a JSON string.
#[derive(Clone, Debug)]
struct Reason {
    kind: RejectKind,
    head: String,
    tail: Option<String>,
    json_head: String,
    json_tail: Option<String>,
}

impl Reason {
    fn new(kind: RejectKind, head: String, tail: Option<String>) -> Self {
        Reason {
            kind,
            json_head: json_escaped(&head),
            json_tail: tail.as_deref().map(json_escaped),
            head,
            tail,
        }
    }
}

/// `text` escaped as the inside of a JSON string (no quotes).
fn json_escaped(text: &str) -> String {
    let quoted = serde_json::to_string(text).expect("a string always encodes");
    quoted[1..quoted.len() - 1].to_owned()
}

/// The filter's answer for a request: a verdict per candidate (aligned with the input) and the
/// few reasons they point to.
#[derive(Clone, Debug)]
pub struct Verdicts {
    reasons: Vec<Reason>,
    pub of_nodes: Vec<Verdict>,
}

impl Verdicts {
    /// The reason a node was rejected, if it was.
    pub fn kind(&self, verdict: Verdict) -> Option<RejectKind> {
        (!verdict.passes()).then(|| self.reasons[verdict.reason as usize].kind)
    }

    /// The message of a rejected node.
    pub fn message(&self, verdict: Verdict) -> Option<String> {
        if verdict.passes() {
            return None;
        }
        let reason = &self.reasons[verdict.reason as usize];
        Some(match &reason.tail {
            None => reason.head.clone(),
            Some(tail) => format!("{}{}{tail}", reason.head, verdict.available),
        })
    }

    /// Appends the message of a rejected node as a JSON string (quoted); nothing for a pass.
    pub fn write_message_json(&self, verdict: Verdict, out: &mut Vec<u8>) {
        if verdict.passes() {
            return;
        }
        let reason = &self.reasons[verdict.reason as usize];
        out.push(b'"');
        out.extend_from_slice(reason.json_head.as_bytes());
        if let Some(tail) = &reason.json_tail {
            crate::json_out::write_num(out, verdict.available);
            out.extend_from_slice(tail.as_bytes());
        }
        out.push(b'"');
    }
}

/// The reasons of a request with a demand, made on first use: (pool position, room kind) →
/// index in the table.
struct ReasonTable<'a> {
    fit: &'a FitCheck,
    reasons: Vec<Reason>,
    /// Per pool of the demand, per [`room_kind`], the reason's index.
    by_pool: Vec<[Option<usize>; 5]>,
}

/// The position of a room's kind in [`ReasonTable::by_pool`].
fn room_kind(room: Room) -> usize {
    match room {
        Room::NoSuchClass => 0,
        Room::Degraded => 1,
        Room::NoThinPool => 2,
        Room::ThinPoolFull => 3,
        Room::Bytes(_) => 4,
    }
}

impl ReasonTable<'_> {
    fn reason_of(&mut self, miss: Miss) -> usize {
        let slot = &mut self.by_pool[miss.at][room_kind(miss.room)];
        if let Some(index) = *slot {
            return index;
        }
        let shortfall = self.fit.shortfall(miss);
        let kind = match shortfall {
            Shortfall::NoSuchClass(_) => RejectKind::NoSuchClass,
            Shortfall::Degraded(_) => RejectKind::Degraded,
            Shortfall::NoThinPool(_) => RejectKind::NoThinPool,
            Shortfall::ThinPoolFull(_) => RejectKind::ThinPoolFull,
            Shortfall::Insufficient { .. } => RejectKind::Insufficient,
        };
        let reason = match shortfall {
            Shortfall::Insufficient { pool, needed, .. } => {
                // The text is the shortfall's own, cut where the available bytes go: it is
                // rendered once with a marker value there (the last number in the text).
                let marker = u64::MAX.to_string();
                let text = format!(
                    "strata: {}",
                    Shortfall::Insufficient {
                        pool,
                        needed,
                        available: u64::MAX,
                    }
                );
                match text.rsplit_once(&marker) {
                    Some((head, tail)) => Reason::new(kind, head.to_owned(), Some(tail.to_owned())),
                    None => Reason::new(kind, text, None),
                }
            }
            other => Reason::new(kind, format!("strata: {other}"), None),
        };
        self.reasons.push(reason);
        *slot = Some(self.reasons.len() - 1);
        self.reasons.len() - 1
    }
}

/// The verdict for each candidate, aligned with the input. Per candidate: the pins, one lookup
/// of the node, and the precomputed room of each pool of the demand; every message is built
/// once per request and reason.
pub fn verdicts(view: &ClusterView, demand: &PodDemand, nodes: &[&str]) -> Verdicts {
    let everywhere = |kind: RejectKind, message: &str| Verdicts {
        reasons: vec![Reason::new(kind, format!("strata: {message}"), None)],
        of_nodes: vec![Verdict::rejected(0, 0); nodes.len()],
    };
    match demand {
        PodDemand::Nothing => Verdicts {
            reasons: Vec::new(),
            of_nodes: vec![Verdict::PASS; nodes.len()],
        },
        PodDemand::Invalid(message) => everywhere(RejectKind::InvalidClaim, message),
        PodDemand::Unsynced(message) => everywhere(RejectKind::ClaimNotSynced, message),
        PodDemand::SourceMissing(message) => everywhere(RejectKind::SourceNotFound, message),
        PodDemand::Needs {
            demand,
            own_pending,
            pins,
        } => {
            let fit = FitCheck::new(demand.by_class());
            let mut table = ReasonTable {
                fit: &fit,
                reasons: Vec::with_capacity(pins.len() + 4),
                by_pool: vec![[None; 5]; fit.len()],
            };
            table.reasons.push(Reason::new(
                RejectKind::NoNodeStorage,
                "strata: node has no NodeStorage, or it is marked Stale (no Strata agent runs there, or it stopped reporting)"
                    .to_owned(),
                None,
            ));
            for pin in pins {
                table.reasons.push(Reason::new(
                    RejectKind::SourceElsewhere,
                    format!(
                        "strata: {} on node {}: a restore or clone is made on its source's node",
                        pin.why, pin.node
                    ),
                    None,
                ));
            }
            let of_nodes = nodes
                .iter()
                .map(|&name| {
                    if let Some(p) = pins.iter().position(|p| p.node != name) {
                        return Verdict::rejected(1 + p, 0);
                    }
                    let Some(entry) = node_entry(view, own_pending, name) else {
                        return Verdict::rejected(0, 0);
                    };
                    match fit.check(&entry) {
                        Ok(()) => Verdict::PASS,
                        Err(miss) => {
                            let available = match miss.room {
                                Room::Bytes(available) => available,
                                _ => 0,
                            };
                            Verdict::rejected(table.reason_of(miss), available)
                        }
                    }
                })
                .collect();
            Verdicts {
                reasons: table.reasons,
                of_nodes,
            }
        }
    }
}

/// The verdict for each candidate as a kind and a message, aligned with the input: `None`
/// passes. [`verdicts`] with its messages rendered.
pub fn filter(view: &ClusterView, demand: &PodDemand, nodes: &[&str]) -> Vec<Option<Rejection>> {
    let verdicts = verdicts(view, demand, nodes);
    verdicts
        .of_nodes
        .iter()
        .map(|&v| {
            Some(Rejection {
                kind: verdicts.kind(v)?,
                message: verdicts.message(v)?,
            })
        })
        .collect()
}

/// Scores 0..=10 for each candidate, aligned with the input: 0 everywhere for a pod without
/// Strata demand, 0 for nodes the demand does not fit, and exactly one 10 otherwise. Only the
/// nodes that fit (by their precomputed room) are weighed.
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
    let fit = FitCheck::new(demand.by_class());
    // The fitting nodes: position, name, and the entry in the view or (a node with some of the
    // pod's own claims counted as pending) an index into `adjusted`.
    let mut fitting: Vec<(usize, &str, Result<&NodeCapacity, usize>)> = Vec::new();
    let mut adjusted = Vec::new();
    for (i, &name) in nodes.iter().enumerate() {
        if pins.iter().any(|p| p.node != name) {
            continue;
        }
        match node_entry(view, own_pending, name) {
            Some(Cow::Borrowed(entry)) if fit.check(entry).is_ok() => {
                fitting.push((i, name, Ok(&entry.capacity)));
            }
            Some(Cow::Owned(entry)) if fit.check(&entry).is_ok() => {
                fitting.push((i, name, Err(adjusted.len())));
                adjusted.push(entry.capacity);
            }
            _ => {}
        }
    }
    let candidates: Vec<(&str, &NodeCapacity)> = fitting
        .iter()
        .map(|&(_, name, cap)| (name, cap.unwrap_or_else(|k| &adjusted[k])))
        .collect();
    let positions = fitting.iter().map(|&(i, ..)| i);
    for (i, s) in positions.zip(placement::score(&candidates, demand)) {
        scores[i] = s;
    }
    scores
}

/// A node's entry, with the pod's own claims (already counted as pending on the node they
/// selected) taken back out of pending.
fn node_entry<'v>(
    view: &'v ClusterView,
    own_pending: &[(String, csi_api::capacity::Pool, u64)],
    name: &str,
) -> Option<Cow<'v, NodeEntry>> {
    let entry = view.node_entry(name)?;
    if own_pending.iter().all(|(node, ..)| node != name) {
        return Some(Cow::Borrowed(entry));
    }
    let mut adjusted = entry.capacity.clone();
    for (_, pool, bytes) in own_pending.iter().filter(|(node, ..)| node == name) {
        if let Some(pending) = adjusted
            .classes
            .get_mut(&pool.class)
            .and_then(|c| c.pending_mut(pool.provisioning))
        {
            *pending = pending.saturating_sub(*bytes);
        }
    }
    Some(Cow::Owned(NodeEntry::new(adjusted)))
}

#[cfg(test)]
mod equivalence_tests;
#[cfg(test)]
mod source_tests;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use csi_api::crd::{LogicalVolume, LogicalVolumePhase};
    use csi_api::names::{DeviceClass, Placement};

    use super::*;
    use crate::fixtures::*;

    fn view(
        claims: Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim>,
        volumes: &[Arc<LogicalVolume>],
    ) -> ClusterView {
        let nodes = [
            node_storage(
                "both",
                &[
                    (DeviceClass::Nvme, 100 * GIB, true),
                    (DeviceClass::Hdd, 900 * GIB, true),
                ],
            ),
            node_storage("nvme-only", &[(DeviceClass::Nvme, 500 * GIB, true)]),
            node_storage(
                "tight",
                &[
                    (DeviceClass::Nvme, 30 * GIB, true),
                    (DeviceClass::Hdd, 200 * GIB, true),
                ],
            ),
            node_storage(
                "sick",
                &[
                    (DeviceClass::Nvme, 900 * GIB, false),
                    (DeviceClass::Hdd, 900 * GIB, true),
                ],
            ),
            node_storage(
                "roomy",
                &[
                    (DeviceClass::Nvme, 800 * GIB, true),
                    (DeviceClass::Hdd, 950 * GIB, true),
                ],
            ),
        ];
        let claims: Vec<_> = claims.into_iter().map(Arc::new).collect();
        ClusterView::build(
            &nodes,
            volumes,
            &claims,
            &standard_classes(),
            &pods(),
            Placement::Binpack,
        )
    }

    /// Pods on "tight": one bound there using the claim "other", and "db-0" nominated there
    /// (so that claims selected on "tight" for either count as pending).
    fn pods() -> Vec<Arc<k8s_openapi::api::core::v1::Pod>> {
        vec![
            pod_on("apps", "other-0", "tight", true, &["other"]),
            pod_on("apps", "db-0", "tight", false, &["data", "wal", "archive"]),
        ]
    }

    fn multi_class_pod() -> crate::wire::Pod {
        pod(
            "db-0",
            serde_json::json!([
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "wal", "persistentVolumeClaim": {"claimName": "wal"}},
                {"name": "archive", "persistentVolumeClaim": {"claimName": "archive"}}
            ]),
        )
    }

    fn multi_class_claims() -> Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim> {
        vec![
            claim("apps", "data", "u1", "fast", "20Gi"),
            claim("apps", "wal", "u2", "fast", "5Gi"),
            claim("apps", "archive", "u3", "bulk", "100Gi"),
        ]
    }

    const NODES: [&str; 6] = ["both", "nvme-only", "tight", "sick", "roomy", "no-agent"];

    fn kinds(verdicts: &[Option<Rejection>]) -> Vec<Option<RejectKind>> {
        verdicts
            .iter()
            .map(|v| v.as_ref().map(|r| r.kind))
            .collect()
    }

    #[test]
    fn multi_class_pod_passes_only_where_every_class_fits() {
        let v = view(multi_class_claims(), &[]);
        let demand = v.demand_of(&multi_class_pod());
        let verdicts = filter(&v, &demand, &NODES);
        assert_eq!(
            kinds(&verdicts),
            [
                None,
                Some(RejectKind::NoSuchClass),
                None,
                Some(RejectKind::Degraded),
                None,
                Some(RejectKind::NoNodeStorage)
            ]
        );
        assert!(RejectKind::NoSuchClass.is_unresolvable());
        assert!(RejectKind::NoNodeStorage.is_unresolvable());
        assert!(!RejectKind::Degraded.is_unresolvable());
        assert!(verdicts[1].as_ref().unwrap().message.contains("hdd"));
    }

    #[test]
    fn pending_demand_makes_a_node_fail_with_class_needed_and_available() {
        // 10 GiB of "tight"'s 30 GiB nvme is promised to a volume not yet Ready.
        let volumes = [volume(
            "pvc-z",
            "tight",
            DeviceClass::Nvme,
            10 * GIB,
            LogicalVolumePhase::Pending,
        )];
        let v = view(multi_class_claims(), &volumes);
        let demand = v.demand_of(&multi_class_pod());
        let verdicts = filter(&v, &demand, &["tight"]);
        let r = verdicts[0].as_ref().unwrap();
        assert_eq!(r.kind, RejectKind::Insufficient);
        assert!(r.message.contains("nvme"), "{}", r.message);
        assert!(r.message.contains(&(25 * GIB).to_string()), "{}", r.message);
        assert!(r.message.contains(&(20 * GIB).to_string()), "{}", r.message);

        // The same through a claim another pod's scheduling selected the node for.
        let mut claims = multi_class_claims();
        claims.push(selected(
            claim("apps", "other", "u9", "fast", "6Gi"),
            "tight",
        ));
        let v = view(claims, &[]);
        let verdicts = filter(&v, &v.demand_of(&multi_class_pod()), &["tight"]);
        assert_eq!(kinds(&verdicts), [Some(RejectKind::Insufficient)]);
    }

    #[test]
    fn an_exhausted_class_fails_and_exact_fit_passes() {
        let claims = vec![claim("apps", "big", "u1", "bulk", "900Gi")];
        let v = view(claims, &[]);
        let p = pod(
            "p",
            serde_json::json!([{"name": "v", "persistentVolumeClaim": {"claimName": "big"}}]),
        );
        let demand = v.demand_of(&p);
        let verdicts = filter(&v, &demand, &["both", "tight", "roomy"]);
        assert_eq!(
            kinds(&verdicts),
            [None, Some(RejectKind::Insufficient), None]
        );
    }

    #[test]
    fn a_rescheduled_pod_is_not_counted_twice_on_its_selected_node() {
        // 25 GiB nvme selected on "tight" (30 GiB) for this very pod.
        let claims = vec![
            selected(claim("apps", "data", "u1", "fast", "20Gi"), "tight"),
            selected(claim("apps", "wal", "u2", "fast", "5Gi"), "tight"),
            claim("apps", "archive", "u3", "bulk", "100Gi"),
        ];
        let v = view(claims, &[]);
        assert_eq!(
            v.node("tight").unwrap().classes[&DeviceClass::Nvme].available(),
            5 * GIB
        );
        let demand = v.demand_of(&multi_class_pod());
        assert_eq!(kinds(&filter(&v, &demand, &["tight"])), [None]);
        // Another pod asking the same is refused there.
        let other = pod(
            "other",
            serde_json::json!([{"name": "v", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "storageClassName": "fast", "resources": {"requests": {"storage": "25Gi"}}}}}}]),
        );
        let demand = v.demand_of(&other);
        assert_eq!(
            kinds(&filter(&v, &demand, &["tight"])),
            [Some(RejectKind::Insufficient)]
        );
    }

    #[test]
    fn a_claim_not_in_the_cache_fails_every_node_as_resolvable() {
        // The PVC cache lags: "data" exists in the API server but not in the view yet.
        let v = view(vec![], &[]);
        let p = pod(
            "p",
            serde_json::json!([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]),
        );
        let demand = v.demand_of(&p);
        let verdicts = filter(&v, &demand, &NODES);
        for verdict in &verdicts {
            let r = verdict.as_ref().expect("never passed");
            assert_eq!(r.kind, RejectKind::ClaimNotSynced);
            assert!(!r.kind.is_unresolvable(), "kube-scheduler must retry");
            assert!(r.message.contains("apps/data"), "{}", r.message);
        }
        assert_eq!(prioritize(&v, &demand, &NODES), vec![0; NODES.len()]);
    }

    #[test]
    fn pods_without_demand_pass_everywhere_with_zero_scores() {
        let v = view(vec![], &[]);
        let p = pod("p", serde_json::json!([{"name": "t", "emptyDir": {}}]));
        let demand = v.demand_of(&p);
        assert_eq!(filter(&v, &demand, &NODES), vec![None; NODES.len()]);
        assert_eq!(prioritize(&v, &demand, &NODES), vec![0; NODES.len()]);
    }

    #[test]
    fn invalid_claims_fail_every_node_as_unresolvable() {
        let v = view(vec![claim("apps", "x", "u1", "broken", "1Gi")], &[]);
        let p = pod(
            "p",
            serde_json::json!([{"name": "v", "persistentVolumeClaim": {"claimName": "x"}}]),
        );
        let verdicts = filter(&v, &v.demand_of(&p), &NODES);
        assert!(
            verdicts
                .iter()
                .all(|r| r.as_ref().unwrap().kind == RejectKind::InvalidClaim)
        );
        let v = view(vec![claim("apps", "x", "u1", "fast", "lots")], &[]);
        let verdicts = filter(&v, &v.demand_of(&p), &["both"]);
        assert!(verdicts[0].as_ref().unwrap().message.contains("lots"));
    }

    #[test]
    fn prioritize_weighs_binpack_nvme_against_spread_hdd() {
        let v = view(multi_class_claims(), &[]);
        let demand = v.demand_of(&multi_class_pod());
        let scores = prioritize(&v, &demand, &NODES);
        // Fitting: both (free 1000 GiB → 875 left; hdd 900 → 800 of 1000), tight (230 → 105;
        // hdd 200 → 100), roomy (1750 → 1625; hdd 950 → 850). The nvme binpack term (weight
        // 25/125) favours tight, then both; the hdd spread term (100/125) favours roomy, then
        // both, closely (free fraction 0.85 against 0.80, used as it is): both wins overall
        // (0.2 × 0.49 + 0.8 × 0.80 = 0.74), roomy second (0.68), tight last (0.28).
        assert_eq!(scores, vec![10, 0, 0, 0, 7, 0]);
        // Deterministic.
        assert_eq!(prioritize(&v, &demand, &NODES), scores);
    }

    /// Nodes with an NVMe thin pool in every state, and a thin StorageClass.
    fn thin_view(
        claims: Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim>,
        volumes: &[Arc<LogicalVolume>],
        pods: &[Arc<k8s_openapi::api::core::v1::Pod>],
    ) -> ClusterView {
        use csi_api::crd::ThinPoolHealth;
        let nvme = |name: &str, alloc: u64, healthy: bool| {
            node_storage(name, &[(DeviceClass::Nvme, alloc, healthy)])
        };
        let pool =
            |ns, promisable, health| with_thin_pool(ns, DeviceClass::Nvme, promisable, health);
        let nodes = [
            // Little VG space, 30 GiB promisable: thin is admitted against the pool only.
            pool(
                nvme("pool", 10 * GIB, true),
                30 * GIB,
                ThinPoolHealth::Healthy,
            ),
            pool(nvme("full", 500 * GIB, true), 0, ThinPoolHealth::Full),
            nvme("nopool", 500 * GIB, true),
            pool(
                nvme("sick", 500 * GIB, false),
                100 * GIB,
                ThinPoolHealth::Healthy,
            ),
        ];
        let mut classes = standard_classes();
        classes.push(storage_class(
            "thin",
            csi_api::names::DRIVER_NAME,
            &[
                ("strata.io/device-class", "nvme"),
                ("strata.io/provisioning", "thin"),
            ],
        ));
        let claims: Vec<_> = claims.into_iter().map(Arc::new).collect();
        ClusterView::build(&nodes, volumes, &claims, &classes, pods, Placement::Binpack)
    }

    const THIN_NODES: [&str; 4] = ["pool", "full", "nopool", "sick"];

    fn thin_pod() -> crate::wire::Pod {
        pod(
            "p",
            serde_json::json!([{"name": "v", "persistentVolumeClaim": {"claimName": "t"}}]),
        )
    }

    #[test]
    fn thin_claims_fit_against_promisable_and_no_pool_or_full_is_refused() {
        let v = thin_view(vec![claim("apps", "t", "u1", "thin", "20Gi")], &[], &[]);
        let demand = v.demand_of(&thin_pod());
        let verdicts = filter(&v, &demand, &THIN_NODES);
        assert_eq!(
            kinds(&verdicts),
            [
                None,
                Some(RejectKind::ThinPoolFull),
                Some(RejectKind::NoThinPool),
                Some(RejectKind::Degraded),
            ]
        );
        assert!(RejectKind::NoThinPool.is_unresolvable());
        assert!(!RejectKind::ThinPoolFull.is_unresolvable());
        let message = &verdicts[2].as_ref().unwrap().message;
        assert!(
            message.contains("serves no thin pool for class nvme"),
            "{message}"
        );
        assert_eq!(prioritize(&v, &demand, &THIN_NODES), [10, 0, 0, 0]);
        // Exactly the promisable fits, one extent more does not.
        let v = thin_view(vec![claim("apps", "t", "u1", "thin", "30Gi")], &[], &[]);
        assert_eq!(
            kinds(&filter(&v, &v.demand_of(&thin_pod()), &["pool"])),
            [None]
        );
        let v = thin_view(vec![claim("apps", "t", "u1", "thin", "30724Mi")], &[], &[]);
        let verdicts = filter(&v, &v.demand_of(&thin_pod()), &["pool"]);
        assert_eq!(kinds(&verdicts), [Some(RejectKind::Insufficient)]);
        let message = &verdicts[0].as_ref().unwrap().message;
        assert!(message.contains("thin pool"), "{message}");
    }

    #[test]
    fn a_burst_of_pending_thin_volumes_uses_up_promisable_and_linear_is_apart() {
        let lvs = |n: usize| -> Vec<Arc<LogicalVolume>> {
            let mut v: Vec<_> = (0..n)
                .map(|i| {
                    thin_volume(
                        &format!("pvc-t{i}"),
                        "pool",
                        DeviceClass::Nvme,
                        5 * GIB,
                        LogicalVolumePhase::Pending,
                    )
                })
                .collect();
            // A linear volume filling the VG takes nothing from the pool's promise.
            v.push(volume(
                "pvc-l",
                "pool",
                DeviceClass::Nvme,
                10 * GIB,
                LogicalVolumePhase::Pending,
            ));
            v
        };
        let claims = || vec![claim("apps", "t", "u1", "thin", "5Gi")];
        // 30 GiB promisable, 5 GiB each: after five pending, the sixth fits exactly; not a seventh.
        let v = thin_view(claims(), &lvs(5), &[]);
        assert_eq!(
            kinds(&filter(&v, &v.demand_of(&thin_pod()), &["pool"])),
            [None]
        );
        let v = thin_view(claims(), &lvs(6), &[]);
        assert_eq!(
            kinds(&filter(&v, &v.demand_of(&thin_pod()), &["pool"])),
            [Some(RejectKind::Insufficient)]
        );
        // A thin claim scheduled there (selected node, its pod bound there) counts as thin demand.
        let mut with_selected = claims();
        with_selected.push(selected(claim("apps", "o", "u2", "thin", "26Gi"), "pool"));
        let pods = [pod_on("apps", "o-0", "pool", true, &["o"])];
        let v = thin_view(with_selected, &[], &pods);
        assert_eq!(
            kinds(&filter(&v, &v.demand_of(&thin_pod()), &["pool"])),
            [Some(RejectKind::Insufficient)]
        );
        let thin = v.node("pool").unwrap().classes[&DeviceClass::Nvme]
            .thin
            .unwrap();
        assert_eq!(thin.pending, 26 * GIB);
        assert_eq!(
            v.node("pool").unwrap().classes[&DeviceClass::Nvme].pending,
            0
        );
    }
}
