//! Issue 16 with a real agent (one VM boot): a StatefulSet volume on a failed disk of another
//! node (its NodeStorage and LogicalVolume status written by the test, as that node's agent
//! would) is drifted by csi-controller under class policy `drift`; the test plays the
//! StatefulSet controller (claim and pod made again), the real extender places the new claim on
//! the VM node, CreateVolume makes its LV there (checked in LVM), and once the claim is Bound
//! the drift completes. The host-only cases (report, NotReady, flapping, the brakes under 20
//! failures, leader change) are in `tests/controller/drift.rs`.

use std::time::Duration;

use csi_api::crd::LogicalVolumePhase;
use csi_api::names::{self, DeviceClass};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use strata_tests::e2e::host::{Scheduler, http};

use crate::cluster::{Cluster, GIB, NODE};

const NS: &str = "shop";
const BAD: &str = "bad-node";

fn owned_pod(name: &str, claim: &str, node: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                          "name": "db", "uid": "uid-sts-db", "controller": true}]},
        "spec": {"containers": [{"name": "db", "image": "db"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    pod
}

fn claim(bound_to: Option<&str>) -> Value {
    let mut c = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-db-0", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "strata-drift",
                 "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Pending"},
    });
    if let Some(pv) = bound_to {
        c["spec"]["volumeName"] = json!(pv);
        c["status"]["phase"] = json!("Bound");
    }
    c
}

pub async fn a_failed_disk_moves_the_claim_to_the_vm_node(c: &Cluster) {
    c.eventually(
        "the VM node's ssd class",
        Duration::from_secs(120),
        || async {
            let status = c.node_storage(NODE).await?.status?;
            status
                .device_classes
                .iter()
                .any(|d| d.name == DeviceClass::Ssd && d.allocatable_bytes >= GIB)
                .then_some(())
        },
    )
    .await;
    let api = &c.api;
    api.seed(&json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "strata-drift"}, "provisioner": names::DRIVER_NAME,
        "volumeBindingMode": "WaitForFirstConsumer",
        "parameters": {(names::PARAM_DEVICE_CLASS): "ssd", (names::PARAM_ON_DISK_FAILURE): "drift"},
    }))
    .unwrap();
    // The other node: its ssd disk failing, class Degraded, one StatefulSet volume on it.
    api.seed(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": BAD}}))
        .unwrap();
    api.seed(&json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "NodeStorage", "metadata": {"name": BAD},
        "spec": {},
        "status": {"deviceClasses": [{"name": "ssd", "vgName": "strata-ssd",
            "totalBytes": 100 * GIB, "freeBytes": 99 * GIB, "allocatableBytes": 99 * GIB,
            "pvCount": 1, "missingPvCount": 0, "lvCount": 1, "health": "Degraded"}]},
    }))
    .unwrap();
    let old = api.seed(&claim(Some("pv-old"))).unwrap();
    let old_uid = old["metadata"]["uid"].as_str().unwrap().to_owned();
    api.seed(&owned_pod("db-0", "data-db-0", Some(BAD)))
        .unwrap();
    api.seed(&json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-old"},
        "spec": {"storageClassName": "strata-drift", "capacity": {"storage": "1Gi"},
                 "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Delete",
                 "claimRef": {"namespace": NS, "name": "data-db-0", "uid": old_uid},
                 "csi": {"driver": names::DRIVER_NAME, "volumeHandle": "pvc-old"}},
    }))
    .unwrap();
    api.seed(&json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "LogicalVolume",
        "metadata": {"name": "pvc-old", "finalizers": [names::FINALIZER, names::FINALIZER_PV_PROTECTION],
                     "labels": {"strata.io/node": BAD, "strata.io/device-class": "ssd"}},
        "spec": {"nodeName": BAD, "deviceClass": "ssd", "sizeBytes": GIB,
                 "pvc": {"namespace": NS, "name": "data-db-0", "uid": old_uid}},
        "status": {"phase": "Ready", "currentSizeBytes": GIB, "conditions": [{
            "type": names::CONDITION_DISK_FAILED, "status": "True", "reason": "DiskFailed",
            "message": "disk in slot SSD-X is failing", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }))
    .unwrap();

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    c.eventually("the drift of db-0", Duration::from_secs(60), || async {
        let claim_gone = claims.get_opt("data-db-0").await.ok()?.is_none();
        let pod_gone = pods.get_opt("db-0").await.ok()?.is_none();
        (claim_gone && pod_gone).then_some(())
    })
    .await;
    let deletes: Vec<String> = c
        .api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE /api/v1/namespaces/shop/"))
        .map(|r| r.split('?').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        deletes,
        [
            "DELETE /api/v1/namespaces/shop/persistentvolumeclaims/data-db-0",
            "DELETE /api/v1/namespaces/shop/pods/db-0",
        ]
    );
    eprintln!("e2e [{}]: drift deleted the claim and the pod", c.at());

    // The StatefulSet makes them again; the extender places the pod on the VM node only.
    let new = api.seed(&claim(None)).unwrap();
    let new_uid = new["metadata"]["uid"].as_str().unwrap().to_owned();
    api.seed(&owned_pod("db-0", "data-db-0", None)).unwrap();
    let scheduler = Scheduler::start(&c.dir, &c.kubeconfig).await;
    let pod = pods.get("db-0").await.unwrap();
    let body = json!({"Pod": pod, "NodeNames": [BAD, NODE]}).to_string();
    c.eventually(
        "the extender to pass the VM node only",
        Duration::from_secs(30),
        || {
            let (addr, body) = (scheduler.addr.clone(), body.clone());
            async move {
                let (code, text) = http(&addr, "POST", "/filter", &body).await.ok()?;
                assert_eq!(code, 200, "{text}");
                let r: Value = serde_json::from_str(&text).ok()?;
                (r["NodeNames"] == json!([NODE])).then_some(())
            }
        },
    )
    .await;
    drop(scheduler);

    // external-provisioner's CreateVolume on the VM node: the agent makes the LV.
    let name = format!("pvc-{new_uid}");
    let volume = c
        .create(&name, DeviceClass::Ssd, GIB, Some((NS, "data-db-0")))
        .await
        .expect("CreateVolume of the drifted claim");
    assert_eq!(
        volume.accessible_topology[0].segments[names::TOPOLOGY_KEY],
        NODE
    );
    let lv = c.volume(&name).await.expect("LogicalVolume");
    assert_eq!(lv.spec.node_name, NODE);
    assert_eq!(
        lv.status.and_then(|s| s.phase),
        Some(LogicalVolumePhase::Ready)
    );
    let lvs = c.strata_lvs().await;
    assert_eq!(
        lvs.get(&name).map(|l| l.vg.as_str()),
        Some("strata-ssd"),
        "{lvs:?}"
    );
    eprintln!(
        "e2e [{}]: the new claim's volume is made on the VM node",
        c.at()
    );

    // Bound: the drift completes (its record leaves the Lease) and the old volume is left alone.
    claims
        .patch(
            "data-db-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"volumeName": "pv-new"}})),
        )
        .await
        .unwrap();
    claims
        .patch_status(
            "data-db-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await
        .unwrap();
    c.eventually("the drift to complete", Duration::from_secs(30), || async {
        let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
            c.client.clone(),
            "strata-system",
        )
        .get_opt(csi_controller::lease::LEASE_NAME)
        .await
        .ok()??;
        let recorded = lease
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(csi_controller::drift_exec::ANNOTATION_DRIFTS);
        (!recorded).then_some(())
    })
    .await;
    assert!(c.volume("pvc-old").await.is_some());
    // Clean up the VM's volume.
    c.delete_until_ok(&name).await;
    c.wait_gone(&name).await;
}
