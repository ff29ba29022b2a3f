//! csi-controller pieces against the fake API server (no VM): leader election handing over
//! between two replicas, claim deletion refused for a stale uid or another volume, and the
//! protection finalizer released alone.
//!
//!     cargo nextest run -p strata-tests --test controller
//!
//! `leadership`, `drift` and `stale` run the real csi-controller (and csi-scheduler) binaries
//! against the fake API server (built first unless `STRATA_E2E_SKIP_BUILD=1`); [`admission`]
//! drives the gRPC service with its watched caches in process.

mod admission;
mod drift;
mod leadership;
mod snapshots;

use std::time::Duration;

use csi_api::crd::{LogicalVolume, PvcReference};
use csi_api::names;
use csi_controller::background::{ClaimOutcome, delete_lost_claim};
use csi_controller::cluster::release_finalizer;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use strata_tests::apiserver::FakeApiServer;

mod stale;

async fn server() -> (FakeApiServer, kube::Client) {
    let server = FakeApiServer::start().await.expect("fake API server");
    let client = server.client().expect("client");
    (server, client)
}

fn claim(name: &str, volume: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "db"},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": volume,
                 "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_claim_is_deleted_only_with_its_recorded_uid_and_volume() {
    let (_server, client) = server().await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "db");
    let first = claims
        .create(&PostParams::default(), &claim("data-0", "pv-lost"))
        .await
        .unwrap();
    let recorded = PvcReference {
        namespace: "db".into(),
        name: "data-0".into(),
        uid: first.uid().unwrap(),
    };
    // Bound to another PV: refused, still there.
    let other = delete_lost_claim(&client, "pvc-x", &recorded, "pv-other")
        .await
        .unwrap();
    assert!(matches!(other, ClaimOutcome::Refused(_)), "{other:?}");
    assert!(claims.get_opt("data-0").await.unwrap().is_some());

    // The StatefulSet recreated the claim under the same name: the stale uid is refused.
    claims
        .delete("data-0", &DeleteParams::default())
        .await
        .unwrap();
    let second = claims
        .create(&PostParams::default(), &claim("data-0", "pv-lost"))
        .await
        .unwrap();
    assert_ne!(second.uid(), first.uid());
    let stale = delete_lost_claim(&client, "pvc-x", &recorded, "pv-lost")
        .await
        .unwrap();
    assert!(matches!(stale, ClaimOutcome::Refused(_)), "{stale:?}");
    let kept = claims.get_opt("data-0").await.unwrap().expect("kept");
    assert_eq!(kept.uid(), second.uid());

    // The right uid and volume: deleted.
    let current = PvcReference {
        uid: second.uid().unwrap(),
        ..recorded
    };
    let deleted = delete_lost_claim(&client, "pvc-x", &current, "pv-lost")
        .await
        .unwrap();
    assert_eq!(deleted, ClaimOutcome::Deleted);
    assert!(claims.get_opt("data-0").await.unwrap().is_none());
}

#[tokio::test]
async fn releasing_the_protection_keeps_the_agents_finalizer() {
    let (_server, client) = server().await;
    let api: Api<LogicalVolume> = Api::all(client.clone());
    let lv: LogicalVolume = serde_json::from_value(json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "LogicalVolume",
        "metadata": {"name": "pvc-1",
                     "finalizers": [names::FINALIZER, names::FINALIZER_PV_PROTECTION]},
        "spec": {"nodeName": "a", "deviceClass": "ssd", "sizeBytes": 1_073_741_824u64},
    }))
    .unwrap();
    api.create(&PostParams::default(), &lv).await.unwrap();
    api.delete("pvc-1", &DeleteParams::default()).await.unwrap();
    release_finalizer(&api, "pvc-1", names::FINALIZER_PV_PROTECTION)
        .await
        .unwrap();
    let held = api.get("pvc-1").await.unwrap();
    assert_eq!(held.finalizers(), [names::FINALIZER]);
    assert!(held.metadata.deletion_timestamp.is_some());
    // Idempotent: already released.
    release_finalizer(&api, "pvc-1", names::FINALIZER_PV_PROTECTION)
        .await
        .unwrap();
    release_finalizer(&api, "gone", names::FINALIZER_PV_PROTECTION)
        .await
        .unwrap();
}

#[tokio::test]
async fn leadership_is_held_by_one_replica_and_handed_over_when_it_stops() {
    let (_server, client) = server().await;
    let mut first = csi_controller::lease::elect(client.clone(), "default", "strata", "one")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), first.leading.wait_for(|l| *l))
        .await
        .expect("the first replica leads")
        .unwrap();
    let mut second = csi_controller::lease::elect(client.clone(), "default", "strata", "two")
        .await
        .unwrap();
    // While the first renews (every 5 s), the second follows: watch it for longer than a lease.
    let follows = tokio::time::timeout(
        Duration::from_secs(csi_controller::lease::LEASE_SECONDS + 5),
        second.leading.wait_for(|l| *l),
    )
    .await
    .is_err();
    assert!(follows, "two leaders at once");
    assert!(*first.leading.borrow());
    // The first stops (drops its receiver): it releases the lease and the second takes over.
    drop(first.leading);
    let _ = tokio::time::timeout(Duration::from_secs(10), first.task).await;
    tokio::time::timeout(
        Duration::from_secs(csi_controller::lease::LEASE_SECONDS + 10),
        second.leading.wait_for(|l| *l),
    )
    .await
    .expect("the second replica takes over")
    .unwrap();
}
