//! The recovery policy's executor (`csi_controller::drift_exec`) against the fake API server:
//! one pass deletes exactly the claim and then the pod of a StatefulSet volume on a failed disk,
//! with uid preconditions, and leaves alone a bare pod's volume and a claim recreated under the
//! same name.

use std::time::Duration;

use csi_controller::drift::{self, Recovery, Verdict};
use csi_controller::drift_exec::Drifter;
use csi_controller::metrics::Metrics;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use strata_tests::apiserver::FakeApiServer;

use super::server;

/// A Lease held by this test for an hour, and the fence on it (the executor writes only as the
/// leader, and keeps its drifts in flight on the Lease).
fn held_lease(srv: &FakeApiServer, client: &kube::Client) -> csi_controller::lease::Fence {
    srv.seed(&json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "strata", "namespace": "default"},
        "spec": {"holderIdentity": "test", "leaseDurationSeconds": 3600,
                 "renewTime": k8s_openapi::jiff::Timestamp::now().to_string()},
    }))
    .expect("seed Lease");
    csi_controller::lease::Fence::new(client.clone(), "default", "strata", "test")
}

/// Seeds claim, pod (owned by `owner`: a StatefulSet name or none), PV and LogicalVolume on a
/// failed disk; the LogicalVolume records `recorded_uid` or, when `None`, the claim's uid.
fn seed_volume(
    srv: &FakeApiServer,
    pod: &str,
    claim: &str,
    owner: Option<&str>,
    recorded_uid: Option<&str>,
) {
    let volume = format!("pvc-{pod}");
    let pv = format!("pv-{pod}");
    let seeded: Value = srv
        .seed(&json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": "db"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                     "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound"},
        }))
        .expect("seed claim");
    let claim_uid = seeded["metadata"]["uid"].as_str().unwrap().to_owned();
    let owners = match owner {
        Some(sts) => json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts,
                              "uid": format!("uid-sts-{sts}"), "controller": true}]),
        None => json!([]),
    };
    srv.seed(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": "db", "ownerReferences": owners},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "db"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
    }))
    .expect("seed pod");
    srv.seed(&json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv},
        "spec": {"storageClassName": "fast", "capacity": {"storage": "1Gi"},
                 "accessModes": ["ReadWriteOnce"],
                 "csi": {"driver": "local.strata.io", "volumeHandle": volume}},
    }))
    .expect("seed PV");
    srv.seed(&json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "LogicalVolume",
        "metadata": {"name": volume, "labels": {"strata.io/node": "n1", "strata.io/device-class": "nvme"}},
        "spec": {"nodeName": "n1", "deviceClass": "nvme", "sizeBytes": 1_073_741_824u64,
                 "pvc": {"namespace": "db", "name": claim,
                         "uid": recorded_uid.unwrap_or(&claim_uid)}},
        "status": {"phase": "Ready", "conditions": [{
            "type": "DiskFailed", "status": "True", "reason": "DiskFailed",
            "message": "disk nvme1n1 is Failing", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }))
    .expect("seed LogicalVolume");
}

#[tokio::test]
async fn a_disk_failure_drifts_exactly_the_statefulset_claim_and_pod() {
    let (srv, client) = server().await;
    let mut fence = held_lease(&srv, &client);
    srv.seed(&json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"conditions": [{"type": "Ready", "status": "True",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }))
    .unwrap();
    srv.seed(&json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "fast"}, "provisioner": "local.strata.io",
        "parameters": {"strata.io/device-class": "nvme", "strata.io/on-disk-failure": "drift"},
    }))
    .unwrap();
    seed_volume(&srv, "web-0", "data-web-0", Some("web"), None);
    seed_volume(&srv, "debug", "data-debug", None, None);
    seed_volume(
        &srv,
        "api-0",
        "data-api-0",
        Some("api"),
        Some("uid-of-an-older-claim"),
    );

    let metrics = Metrics::new();
    let mut drifter = Drifter::new(
        client.clone(),
        drift::Settings {
            disk_default: Recovery::Report,
            node_default: Recovery::Report,
            node_grace: Duration::from_secs(300),
            max_in_flight: 3,
        },
        Duration::from_secs(1800),
        metrics.clone(),
    );
    let verdicts = drifter.pass(&mut fence).await.expect("pass");
    assert!(
        matches!(&verdicts[..], [
            Verdict::Refuse { volume: b, .. },
            Verdict::Drift { volume: c, .. },
        ] if b == "pvc-debug" && c == "pvc-web-0"),
        "{verdicts:?}"
    );

    let deletes: Vec<String> = srv
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE"))
        .map(|r| r.trim_end_matches('?').to_owned())
        .collect();
    assert_eq!(
        deletes,
        [
            "DELETE /api/v1/namespaces/db/persistentvolumeclaims/data-web-0",
            "DELETE /api/v1/namespaces/db/pods/web-0",
        ],
        "exactly the claim, then the pod"
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "db");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "db");
    assert!(claims.get_opt("data-web-0").await.unwrap().is_none());
    assert!(pods.get_opt("web-0").await.unwrap().is_none());
    // The bare pod's volume and the recreated claim are untouched.
    for name in ["data-debug", "data-api-0"] {
        assert!(claims.get_opt(name).await.unwrap().is_some(), "{name}");
    }
    for name in ["debug", "api-0"] {
        assert!(pods.get_opt(name).await.unwrap().is_some(), "{name}");
    }
    let in_flight: Vec<String> = drifter.in_flight().into_iter().map(|f| f.volume).collect();
    assert_eq!(in_flight, ["pvc-web-0"]);

    let reasons: Vec<(String, String)> = Api::<Event>::namespaced(client.clone(), "db")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.regarding.and_then(|r| r.name).unwrap_or_default(),
            )
        })
        .collect();
    for (reason, object) in [
        ("DriftStarted", "data-web-0"),
        ("DriftStarted", "web-0"),
        ("DriftClaimDeleted", "data-web-0"),
        ("DriftPodDeleted", "web-0"),
        ("DriftRefused", "data-debug"),
        ("DriftRefused", "debug"),
    ] {
        assert!(
            reasons.contains(&(reason.into(), object.into())),
            "{reason} on {object}: {reasons:?}"
        );
    }
    let text = metrics.encode();
    for line in [
        r#"strata_controller_drifts_total{trigger="disk",outcome="started"} 1"#,
        r#"strata_controller_drifts_total{trigger="disk",outcome="refused"} 1"#,
        "strata_controller_drifts_in_flight 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }

    // A second pass: nothing new is deleted, the refusal is not told again, and once the
    // StatefulSet's new claim is Bound the drift completes.
    drifter.pass(&mut fence).await.expect("second pass");
    let deletes_after = srv
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE"))
        .count();
    assert_eq!(deletes_after, 2);
    srv.seed(&json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-web-0", "namespace": "db"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                 "volumeName": "pv-new", "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Bound"},
    }))
    .unwrap();
    drifter.pass(&mut fence).await.expect("third pass");
    assert!(drifter.in_flight().is_empty());
    let text = metrics.encode();
    assert!(
        text.contains(r#"strata_controller_drifts_total{trigger="disk",outcome="completed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"strata_controller_drifts_total{trigger="disk",outcome="refused"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_node_not_ready_past_the_grace_drifts_and_one_within_it_does_not() {
    let (srv, client) = server().await;
    let mut fence = held_lease(&srv, &client);
    let down_since = |secs: i64| {
        let t = k8s_openapi::jiff::Timestamp::now()
            .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs))
            .unwrap();
        t.to_string()
    };
    srv.seed(&json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown",
                                   "lastTransitionTime": down_since(600)}]},
    }))
    .unwrap();
    srv.seed(&json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "fast"}, "provisioner": "local.strata.io",
        "parameters": {"strata.io/device-class": "nvme", "strata.io/on-node-failure": "drift"},
    }))
    .unwrap();
    seed_volume(&srv, "web-0", "data-web-0", Some("web"), None);
    // Healthy disk: drop the DiskFailed condition so that only the node counts.
    let lvs: Api<csi_api::crd::LogicalVolume> = Api::all(client.clone());
    lvs.patch_status(
        "pvc-web-0",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"conditions": null}})),
    )
    .await
    .unwrap();
    let settings = |grace| drift::Settings {
        disk_default: Recovery::Report,
        node_default: Recovery::Report,
        node_grace: Duration::from_secs(grace),
        max_in_flight: 1,
    };
    // Down 10 min, grace 15 min: nothing.
    let mut patient = Drifter::new(
        client.clone(),
        settings(900),
        Duration::from_secs(1800),
        Metrics::new(),
    );
    assert!(patient.pass(&mut fence).await.unwrap().is_empty());
    assert!(!srv.requests().iter().any(|r| r.starts_with("DELETE")));
    // Grace 5 min: the claim, then the pod.
    let mut drifter = Drifter::new(
        client.clone(),
        settings(300),
        Duration::from_secs(1800),
        Metrics::new(),
    );
    let verdicts = drifter.pass(&mut fence).await.unwrap();
    assert!(
        matches!(
            &verdicts[..],
            [Verdict::Drift {
                trigger: drift::Trigger::Node,
                ..
            }]
        ),
        "{verdicts:?}"
    );
    let deletes: Vec<String> = srv
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE"))
        .map(|r| r.trim_end_matches('?').to_owned())
        .collect();
    assert_eq!(
        deletes,
        [
            "DELETE /api/v1/namespaces/db/persistentvolumeclaims/data-web-0",
            "DELETE /api/v1/namespaces/db/pods/web-0",
        ]
    );
}
