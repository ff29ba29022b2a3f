//! Verbs and error bodies through `kube::Api`.

use csi_api::crd::{LogicalVolume, NodeStorage};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use strata_tests::apiserver::Fault;

use super::{api_error, lv, lvs, server};

fn names(list: &kube::core::ObjectList<LogicalVolume>) -> Vec<String> {
    list.items.iter().map(|o| o.name_any()).collect()
}

#[tokio::test]
async fn create_get_list_with_selectors() {
    let (_srv, client) = server().await;
    let api = lvs(&client);
    let pp = PostParams::default();
    let a = api.create(&pp, &lv("a", "n1", "nvme")).await.unwrap();
    api.create(&pp, &lv("b", "n2", "ssd")).await.unwrap();
    api.create(&pp, &lv("c", "n1", "hdd")).await.unwrap();
    assert_eq!(a.metadata.generation, Some(1));
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    let got = api.get("a").await.unwrap();
    assert_eq!(got.spec.node_name, "n1");
    assert_eq!(got.resource_version(), a.resource_version());

    for (sel, want) in [
        ("strata.io/node=n1", vec!["a", "c"]),
        ("strata.io/device-class in (ssd,hdd)", vec!["b", "c"]),
        ("strata.io/node,strata.io/node!=n1", vec!["b"]),
        ("!strata.io/node", vec![]),
    ] {
        let list = api.list(&ListParams::default().labels(sel)).await.unwrap();
        assert_eq!(names(&list), want, "{sel}");
    }
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(names(&by_name), ["b"]);
    let bad = api
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap_err();
    assert_eq!(api_error(bad).0, 400);

    // Paging: limit + continue, all pages at the first page's version.
    let p1 = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&p1), ["a", "b"]);
    let token = p1.metadata.continue_.clone().expect("continue token");
    let p2 = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&p2), ["c"]);
    assert_eq!(p2.metadata.resource_version, p1.metadata.resource_version);
}

#[tokio::test]
async fn not_found_conflict_and_already_exists_are_kube_statuses() {
    let (_srv, client) = server().await;
    let api = lvs(&client);
    let err = api.get("missing").await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("not an API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        status.message,
        "logicalvolumes.strata.io \"missing\" not found"
    );
    assert!(status.is_not_found());
    assert!(api.get_opt("missing").await.unwrap().is_none());

    let first = api
        .create(&PostParams::default(), &lv("a", "n1", "nvme"))
        .await
        .unwrap();
    let err = api
        .create(&PostParams::default(), &lv("a", "n1", "nvme"))
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "AlreadyExists".to_string()));

    let mut newer = first.clone();
    newer.spec.size_bytes = 2 << 30;
    let newer = api
        .replace("a", &PostParams::default(), &newer)
        .await
        .unwrap();
    assert_eq!(newer.metadata.generation, Some(2));
    let err = api
        .replace("a", &PostParams::default(), &first)
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".to_string()));
    let stale = json!({"metadata": {"resourceVersion": first.resource_version()}});
    let err = api
        .patch("a", &PatchParams::default(), &Patch::Merge(stale))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).1, "Conflict");
    let err = api
        .patch("zz", &PatchParams::default(), &Patch::Merge(json!({})))
        .await;
    assert_eq!(api_error(err.unwrap_err()).0, 404);
}

#[tokio::test]
async fn merge_json_strategic_and_apply_patches() {
    let (_srv, client) = server().await;
    let api = lvs(&client);
    api.create(&PostParams::default(), &lv("a", "n1", "nvme"))
        .await
        .unwrap();
    let pp = PatchParams::default();
    let merged = api
        .patch(
            "a",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.labels().get("x").map(String::as_str), Some("1"));
    assert_eq!(merged.metadata.generation, Some(1), "labels are not spec");

    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/sizeBytes", "value": 5},
        {"op": "remove", "path": "/metadata/labels/x"},
    ]))
    .unwrap();
    let patched = api.patch("a", &pp, &Patch::Json::<()>(ops)).await.unwrap();
    assert_eq!(patched.spec.size_bytes, 5);
    assert_eq!(patched.metadata.generation, Some(2));
    assert!(!patched.labels().contains_key("x"));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/sizeBytes", "value": 6}]))
            .unwrap();
    let err = api
        .patch("a", &pp, &Patch::Json::<()>(failing))
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (422, "Invalid".to_string()));

    // Server-side apply creates when absent, then merges the applied fields.
    let ap = PatchParams::apply("strata-test").force();
    let mut applied = lv("b", "n2", "ssd");
    applied.metadata.labels = None;
    let created = api.patch("b", &ap, &Patch::Apply(&applied)).await.unwrap();
    assert_eq!(created.spec.node_name, "n2");
    let change = json!({"apiVersion": "strata.io/v1alpha1", "kind": "LogicalVolume",
                        "spec": {"sizeBytes": 7}});
    let out = api.patch("b", &ap, &Patch::Apply(&change)).await.unwrap();
    assert_eq!(
        (out.spec.size_bytes, out.spec.node_name.as_str()),
        (7, "n2")
    );
    let no_manager = api
        .patch("b", &pp, &Patch::Apply(&change))
        .await
        .unwrap_err();
    assert_eq!(api_error(no_manager).0, 400);

    // Strategic merge on a core type is a merge here.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "ns1");
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    pvcs.create(&PostParams::default(), &pvc).await.unwrap();
    let ann = json!({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "n1"}}});
    let out = pvcs
        .patch("data", &pp, &Patch::Strategic(ann))
        .await
        .unwrap();
    assert_eq!(
        out.annotations()["volume.kubernetes.io/selected-node"],
        "n1"
    );
    assert_eq!(out.namespace().as_deref(), Some("ns1"));
}

#[tokio::test]
async fn status_subresource_is_isolated() {
    let (_srv, client) = server().await;
    let api: Api<NodeStorage> = Api::all(client.clone());
    let ns: NodeStorage = serde_json::from_value(json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "NodeStorage",
        "metadata": {"name": "n1"}, "spec": {},
        "status": {"observedGeneration": 9},
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &ns).await.unwrap();
    assert!(created.status.is_none(), "status is dropped on create");
    let ap = PatchParams::apply("csi-agent").force();
    let st = json!({"apiVersion": "strata.io/v1alpha1", "kind": "NodeStorage",
                    "status": {"observedGeneration": 1, "updatedAt": "2025-01-01T00:00:00Z"}});
    let after = api
        .patch_status("n1", &ap, &Patch::Apply(&st))
        .await
        .unwrap();
    let raw = serde_json::to_value(&after).unwrap();
    assert_eq!(raw["status"]["observedGeneration"], 1);
    assert_eq!(after.metadata.generation, Some(1));
    // Status in a main-resource write is ignored; spec in a status write is ignored.
    let both = json!({"status": {"observedGeneration": 5}, "metadata": {"labels": {"l": "v"}}});
    let out = api
        .patch("n1", &PatchParams::default(), &Patch::Merge(both))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&out).unwrap()["status"]["observedGeneration"],
        1
    );
    assert_eq!(out.labels()["l"], "v");
    let spec =
        json!({"metadata": {"labels": {"l": "changed"}}, "status": {"observedGeneration": 2}});
    let out = api
        .patch_status("n1", &PatchParams::default(), &Patch::Merge(spec))
        .await
        .unwrap();
    assert_eq!(out.labels()["l"], "v");
    assert_eq!(
        serde_json::to_value(&out).unwrap()["status"]["observedGeneration"],
        2
    );
    let mut whole = out.clone();
    whole.metadata.labels = None;
    let replaced = api
        .replace_status("n1", &PostParams::default(), &whole)
        .await
        .unwrap();
    assert_eq!(replaced.labels()["l"], "v");
}

#[tokio::test]
async fn finalizers_hold_delete_until_removed() {
    let (_srv, client) = server().await;
    let api = lvs(&client);
    let mut obj = lv("a", "n1", "nvme");
    obj.metadata.finalizers = Some(vec!["strata.io/lv".into()]);
    api.create(&PostParams::default(), &obj).await.unwrap();
    let held = api.delete("a", &DeleteParams::default()).await.unwrap();
    let held = held.left().expect("a held object, not a Status");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        api.get("a")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let add = json!({"metadata": {"finalizers": ["strata.io/lv", "other"]}});
    let err = api
        .patch("a", &PatchParams::default(), &Patch::Merge(add))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 422);
    let rm = json!({"metadata": {"finalizers": null}});
    api.patch("a", &PatchParams::default(), &Patch::Merge(rm))
        .await
        .unwrap();
    assert!(api.get_opt("a").await.unwrap().is_none());

    api.create(&PostParams::default(), &lv("b", "n1", "nvme"))
        .await
        .unwrap();
    let gone = api.delete("b", &DeleteParams::default()).await.unwrap();
    let status = gone.right().expect("a Success Status");
    assert_eq!(
        status.status,
        Some(kube::core::response::StatusSummary::Success)
    );
    let err = api.delete("b", &DeleteParams::default()).await.unwrap_err();
    assert_eq!(api_error(err).0, 404);
}

#[tokio::test]
async fn namespaced_leases_and_injected_faults() {
    let (srv, client) = server().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "strata-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "csi-controller"},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let other: Api<Lease> = Api::namespaced(client.clone(), "other");
    assert!(other.get_opt("csi-controller").await.unwrap().is_none());
    assert_eq!(
        Api::<Lease>::all(client.clone())
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    srv.inject(Fault::new("/apis/coordination.k8s.io", 500, 2).method("GET"));
    for _ in 0..2 {
        let err = leases.get("csi-controller").await.unwrap_err();
        assert_eq!(api_error(err), (500, "InternalError".to_string()));
    }
    assert!(leases.get("csi-controller").await.is_ok(), "rule used up");
    // kube-client retries 429/503/504 by itself: two 503s are invisible to the caller.
    srv.inject(Fault::new(
        "/apis/coordination.k8s.io/v1/namespaces/strata-system",
        503,
        2,
    ));
    let got = leases.get("csi-controller").await.unwrap();
    assert_eq!(got.spec.unwrap().holder_identity.as_deref(), Some("pod-a"));
    let log = srv.requests();
    let gets = log
        .iter()
        .filter(|l| l.starts_with("GET /apis/coordination.k8s.io/v1/namespaces/strata-system/"));
    assert_eq!(gets.count(), 6, "{log:?}");
    // the answers carry their codes: two 500s, two 503s, and the rest 200
    assert_eq!(srv.count_answers(Some("GET"), 500), 2);
    assert_eq!(srv.count_answers(Some("GET"), 503), 2);
    assert_eq!(srv.count_answers(Some("PUT"), 503), 0);
    assert_eq!(srv.answers().len(), log.len());
}

#[tokio::test]
async fn events_recorder_publishes() {
    let (srv, client) = server().await;
    let api = lvs(&client);
    let obj = api
        .create(&PostParams::default(), &lv("a", "n1", "nvme"))
        .await
        .unwrap();
    let reporter = kube::runtime::events::Reporter {
        controller: "csi-controller".into(),
        instance: Some("pod-a".into()),
    };
    let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: "Provisioned".into(),
        note: Some("made".into()),
        action: "Provision".into(),
        secondary: None,
    };
    recorder
        .publish(&event, &obj.object_ref(&()))
        .await
        .unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, "default");
    let list = events.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].reason.as_deref(), Some("Provisioned"));
    assert!(srv.resource_version() >= 2);
}
