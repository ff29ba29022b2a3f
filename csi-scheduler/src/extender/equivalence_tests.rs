//! The served request path (precomputed pool room, reasons built once per request, the answer
//! written directly) against the straightforward reference (`crate::reference`: the map walk
//! per node, a message per failed node, serde over owned maps) on random views and demands:
//! the same verdicts, messages and scores, and the same JSON answers.

use std::sync::Arc;

use csi_api::capacity::{ClassCapacity, NodeCapacity, Pool, ThinCapacity};
use csi_api::names::{DeviceClass, Placement, Provisioning};
use csi_api::placement::Demand;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::{filter, prioritize, verdicts};
use crate::fixtures::*;
use crate::http::{Verb, answer};
use crate::reference;
use crate::view::{ClusterView, Pin, PodDemand};

const GIB: u64 = 1 << 30;

fn random_capacity(rng: &mut StdRng) -> NodeCapacity {
    let mut cap = NodeCapacity::default();
    for class in DeviceClass::ALL {
        if rng.random_bool(0.3) {
            continue;
        }
        let total = rng.random_range(1..40) * 25 * GIB;
        let thin = rng.random_bool(0.5).then(|| {
            let full = rng.random_bool(0.15);
            ThinCapacity {
                total: total * 2,
                promisable: if full {
                    0
                } else {
                    rng.random_range(0..80) * 25 * GIB
                },
                pending: rng.random_range(0..4) * 25 * GIB,
                full,
            }
        });
        cap.classes.insert(
            class,
            ClassCapacity {
                total,
                allocatable: rng.random_range(0..=total / GIB) * GIB,
                pending: rng.random_range(0..4) * 25 * GIB,
                healthy: rng.random_bool(0.9),
                thin,
            },
        );
    }
    cap
}

fn random_demand(rng: &mut StdRng, names: &[String]) -> PodDemand {
    let mut demand = Demand::new();
    for _ in 0..rng.random_range(0..4) {
        let class = DeviceClass::ALL[rng.random_range(0..3)];
        let provisioning = if rng.random_bool(0.3) {
            Provisioning::Thin
        } else {
            Provisioning::Linear
        };
        let placement = if rng.random_bool(0.5) {
            Placement::Binpack
        } else {
            Placement::Spread
        };
        demand.add(
            Pool::new(class, provisioning),
            placement,
            rng.random_range(1..30) * 25 * GIB,
        );
    }
    let mut own_pending = Vec::new();
    if rng.random_bool(0.3) {
        for (&pool, &bytes) in demand.by_class() {
            own_pending.push((names[rng.random_range(0..names.len())].clone(), pool, bytes));
        }
    }
    let mut pins = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        if rng.random_bool(0.15) {
            pins.push(Pin {
                node: names[rng.random_range(0..names.len())].clone(),
                why: "claim apps/r is made from VolumeSnapshot apps/s".into(),
            });
        }
    }
    if demand.is_empty() && pins.is_empty() {
        return PodDemand::Nothing;
    }
    PodDemand::Needs {
        demand,
        own_pending,
        pins,
    }
}

#[test]
fn filter_and_prioritize_agree_with_the_reference_on_random_views() {
    for seed in 0..60 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut view = ClusterView::new(Placement::Binpack);
        let count = rng.random_range(1..60);
        // Some candidates have no NodeStorage.
        let names: Vec<String> = (0..count + 3).map(|i| format!("node-{i}")).collect();
        for name in &names[..count] {
            view.insert_node(name.clone(), random_capacity(&mut rng));
        }
        for _ in 0..20 {
            let demand = random_demand(&mut rng, &names);
            let mut candidates: Vec<&str> = names
                .iter()
                .filter(|_| rng.random_bool(0.8))
                .map(String::as_str)
                .collect();
            if rng.random_bool(0.1) {
                candidates.push(candidates.first().copied().unwrap_or("node-0"));
            }
            let served = filter(&view, &demand, &candidates);
            assert_eq!(
                served,
                reference::filter(&view, &demand, &candidates),
                "seed {seed} {demand:?}"
            );
            assert_eq!(
                prioritize(&view, &demand, &candidates),
                reference::prioritize(&view, &demand, &candidates),
                "seed {seed} {demand:?}"
            );
        }
        // A node changed after insertion has its room recomputed.
        let changed = &names[0];
        assert!(view.update_node(changed, |cap| {
            for c in cap.classes.values_mut() {
                c.pending = c.pending.saturating_add(100 * GIB);
            }
        }));
        let demand = random_demand(&mut rng, &names);
        assert_eq!(
            filter(&view, &demand, &[changed.as_str()]),
            reference::filter(&view, &demand, &[changed.as_str()])
        );
    }
}

#[test]
fn every_demand_kind_gives_the_references_verdicts() {
    let mut view = ClusterView::new(Placement::Binpack);
    let mut rng = StdRng::seed_from_u64(7);
    view.insert_node("a", random_capacity(&mut rng));
    let names = ["a", "b"];
    for demand in [
        PodDemand::Nothing,
        PodDemand::Invalid("volume \"v\": bad".into()),
        PodDemand::Unsynced("claim apps/x is not in the cache".into()),
        PodDemand::SourceMissing("waiting for source".into()),
    ] {
        assert_eq!(
            filter(&view, &demand, &names),
            reference::filter(&view, &demand, &names)
        );
        assert_eq!(verdicts(&view, &demand, &names).of_nodes.len(), 2);
        assert_eq!(prioritize(&view, &demand, &names), [0, 0]);
    }
}

/// A built view (claims, classes, thin pools) of random nodes, and pods of each kind.
fn built_view(rng: &mut StdRng, nodes: usize) -> ClusterView {
    let mut classes = standard_classes();
    classes.push(storage_class(
        "thin",
        csi_api::names::DRIVER_NAME,
        &[
            ("strata.io/device-class", "nvme"),
            ("strata.io/provisioning", "thin"),
        ],
    ));
    let storages: Vec<_> = (0..nodes)
        .map(|i| {
            let ns = node_storage(
                &format!("node-{i}"),
                &[
                    (
                        DeviceClass::Nvme,
                        rng.random_range(0..60) * 10 * GIB,
                        rng.random_bool(0.9),
                    ),
                    (
                        DeviceClass::Hdd,
                        rng.random_range(0..60) * 50 * GIB,
                        rng.random_bool(0.9),
                    ),
                ],
            );
            if rng.random_bool(0.5) {
                with_thin_pool(
                    ns,
                    DeviceClass::Nvme,
                    rng.random_range(0..60) * 10 * GIB,
                    if rng.random_bool(0.2) {
                        csi_api::crd::ThinPoolHealth::Full
                    } else {
                        csi_api::crd::ThinPoolHealth::Healthy
                    },
                )
            } else {
                ns
            }
        })
        .collect();
    let claims = [
        claim("apps", "data", "u1", "fast", "20Gi"),
        claim("apps", "wal", "u2", "fast", "5Gi"),
        claim("apps", "archive", "u3", "bulk", "100Gi"),
        claim("apps", "t", "u4", "thin", "40Gi"),
        claim("apps", "x", "u5", "broken", "1Gi"),
    ]
    .map(Arc::new);
    ClusterView::build::<_, Arc<csi_api::crd::LogicalVolume>, _, _, _>(
        &storages,
        &[],
        &claims,
        &classes,
        &no_pods(),
        Placement::Binpack,
    )
}

fn args(volumes: Value, names: &[String], full: bool) -> Vec<u8> {
    let pod = json!({"metadata": {"name": "db-0", "namespace": "apps"},
        "spec": {"volumes": volumes}});
    let body = if full {
        let items: Vec<Value> = names
            .iter()
            .map(|n| json!({"metadata": {"name": n, "labels": {"zone": "z1"}}, "status": {}}))
            .collect();
        json!({"Pod": pod, "Nodes": {"items": items}})
    } else {
        json!({"Pod": pod, "NodeNames": names})
    };
    serde_json::to_vec(&body).unwrap()
}

#[test]
fn answers_are_the_references_json_on_random_views() {
    let claim_volume = |c: &str| json!({"name": c, "persistentVolumeClaim": {"claimName": c}});
    let pods = [
        json!([
            claim_volume("data"),
            claim_volume("wal"),
            claim_volume("archive")
        ]),
        json!([claim_volume("t"), claim_volume("archive")]),
        json!([claim_volume("x")]),
        json!([claim_volume("unknown")]),
        json!([{"name": "e", "emptyDir": {}}]),
    ];
    for seed in 0..8 {
        let mut rng = StdRng::seed_from_u64(seed);
        let view = built_view(&mut rng, 40);
        let plain: Vec<String> = (0..44).map(|i| format!("node-{i}")).collect();
        // A name with a JSON escape: every name is then escaped as needed when written.
        let mut odd = plain.clone();
        odd.push("odd\"name".into());
        for (volumes, names) in pods.iter().flat_map(|p| [(p, &plain), (p, &odd)]) {
            for full in [false, true] {
                let body = args(volumes.clone(), names, full);
                for verb in [Verb::Filter, Verb::Prioritize] {
                    let served = answer(verb, &view, &body).unwrap();
                    let expected = reference::answer(verb, &view, &body).unwrap();
                    let (a, b): (Value, Value) = (
                        serde_json::from_slice(&served.body).unwrap(),
                        serde_json::from_slice(&expected.body).unwrap(),
                    );
                    assert_eq!(a, b, "seed {seed} {volumes} full {full}");
                    let mut kinds = served.rejected.clone();
                    let mut expected_kinds = expected.rejected.clone();
                    kinds.sort_by_key(|k| k.as_str());
                    expected_kinds.sort_by_key(|k| k.as_str());
                    assert_eq!(kinds, expected_kinds);
                }
            }
        }
    }
}
