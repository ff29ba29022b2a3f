//! Unit tests of the store's write semantics (no HTTP).

use super::*;
use serde_json::json;

fn store() -> Store {
    Store::new(Registry::default(), 100)
}

fn lv_type(s: &Store) -> ResourceType {
    s.registry
        .find("strata.io", "v1alpha1", "logicalvolumes")
        .unwrap()
        .clone()
}

fn lv(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "LogicalVolume",
        "metadata": {"name": name, "labels": {"strata.io/node": node}},
        "spec": {"nodeName": node, "deviceClass": "nvme", "sizeBytes": 1024},
        "status": {"phase": "Ready"},
    })
}

#[test]
fn create_sets_server_fields_and_drops_status() {
    let mut s = store();
    let rt = lv_type(&s);
    let obj = s.create(&rt, "", lv("a", "n1")).unwrap();
    let meta = &obj["metadata"];
    assert_eq!(meta["resourceVersion"], "1");
    assert_eq!(meta["generation"], 1);
    assert!(meta["uid"].as_str().unwrap().len() == 36);
    assert!(meta["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert!(obj.get("status").is_none());
    let err = s.create(&rt, "", lv("a", "n1")).unwrap_err();
    assert_eq!((err.code(), err.reason()), (409, "AlreadyExists"));
    assert_eq!(s.resource_version(), 1);
}

#[test]
fn seed_keeps_status_and_generate_name_works() {
    let mut s = store();
    let obj = s.seed(lv("a", "n1")).unwrap();
    assert_eq!(obj["status"]["phase"], "Ready");
    let rt = lv_type(&s);
    let mut g = lv("", "n1");
    g["metadata"] = json!({"generateName": "pvc-"});
    let made = s.create(&rt, "", g).unwrap();
    assert!(
        made["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("pvc-")
    );
    let bad = json!({"apiVersion": "v9", "kind": "Nope", "metadata": {"name": "x"}});
    assert_eq!(s.seed(bad).unwrap_err().code(), 400);
}

#[test]
fn status_subresource_isolation_and_generation() {
    let mut s = store();
    let rt = lv_type(&s);
    s.seed(lv("a", "n1")).unwrap();
    // Main resource: a status change is ignored; a spec change bumps generation.
    let mut body = s.get(&rt, "", "a").unwrap();
    body["status"]["phase"] = json!("Failed");
    body["spec"]["sizeBytes"] = json!(2048);
    let out = s.replace(&rt, "", "a", body, false).unwrap();
    assert_eq!(out["status"]["phase"], "Ready");
    assert_eq!(out["spec"]["sizeBytes"], 2048);
    assert_eq!(out["metadata"]["generation"], 2);
    // Status: only status changes, generation stays.
    let patch = json!({"status": {"phase": "Wiping"}, "spec": {"sizeBytes": 1}});
    let out = s
        .patch(&rt, "", "a", PatchKind::Merge, &patch, true)
        .unwrap();
    assert_eq!(out["status"]["phase"], "Wiping");
    assert_eq!(out["spec"]["sizeBytes"], 2048);
    assert_eq!(out["metadata"]["generation"], 2);
}

#[test]
fn stale_resource_version_conflicts_and_noop_keeps_version() {
    let mut s = store();
    let rt = lv_type(&s);
    let first = s.seed(lv("a", "n1")).unwrap();
    let mut newer = first.clone();
    newer["spec"]["sizeBytes"] = json!(4096);
    s.replace(&rt, "", "a", newer, false).unwrap();
    let err = s.replace(&rt, "", "a", first, false).unwrap_err();
    assert_eq!((err.code(), err.reason()), (409, "Conflict"));
    let rv = s.resource_version();
    let same = s.patch(
        &rt,
        "",
        "a",
        PatchKind::Merge,
        &json!({"spec": {"sizeBytes": 4096}}),
        false,
    );
    assert_eq!(same.unwrap()["metadata"]["resourceVersion"], rv.to_string());
    assert_eq!(s.resource_version(), rv);
}

#[test]
fn finalizers_hold_deletion_until_removed() {
    let mut s = store();
    let rt = lv_type(&s);
    let mut o = lv("a", "n1");
    o["metadata"]["finalizers"] = json!(["strata.io/lv"]);
    s.create(&rt, "", o).unwrap();
    let Deleted::Pending(held) = s.delete(&rt, "", "a", &json!({})).unwrap() else {
        panic!("object with a finalizer was removed at once");
    };
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    // Adding a finalizer while deleting is refused; removing the last one removes the object.
    let add = json!({"metadata": {"finalizers": ["strata.io/lv", "other"]}});
    assert_eq!(
        s.patch(&rt, "", "a", PatchKind::Merge, &add, false)
            .unwrap_err()
            .code(),
        422
    );
    let rm = json!({"metadata": {"finalizers": null}});
    s.patch(&rt, "", "a", PatchKind::Merge, &rm, false).unwrap();
    assert_eq!(s.get(&rt, "", "a").unwrap_err().code(), 404);
    let start = s.watch(&rt, Some(0)).unwrap();
    let events: Vec<&str> = start.backlog.iter().map(|c| c.event.as_str()).collect();
    assert_eq!(events, ["ADDED", "MODIFIED", "DELETED"]);
}

#[test]
fn delete_without_finalizers_and_preconditions() {
    let mut s = store();
    let rt = lv_type(&s);
    let obj = s.seed(lv("a", "n1")).unwrap();
    let err = s
        .delete(&rt, "", "a", &json!({"uid": "other"}))
        .unwrap_err();
    assert_eq!(err.code(), 409);
    let uid = obj["metadata"]["uid"].as_str().unwrap();
    let Deleted::Gone(st) = s.delete(&rt, "", "a", &json!({"uid": uid})).unwrap() else {
        panic!("object without finalizers was held");
    };
    assert_eq!(st["status"], "Success");
    assert_eq!(st["details"]["uid"], uid);
    assert_eq!(s.delete(&rt, "", "a", &json!({})).unwrap_err().code(), 404);
}

#[test]
fn apply_creates_then_merges() {
    let mut s = store();
    let rt = lv_type(&s);
    let body = lv("a", "n1");
    let made = s
        .patch(&rt, "", "a", PatchKind::Apply, &body, false)
        .unwrap();
    assert_eq!(made["metadata"]["resourceVersion"], "1");
    assert!(made.get("status").is_none());
    let st = json!({"apiVersion": "strata.io/v1alpha1", "kind": "LogicalVolume",
                    "status": {"phase": "Ready"}});
    let out = s.patch(&rt, "", "a", PatchKind::Apply, &st, true).unwrap();
    assert_eq!(out["status"]["phase"], "Ready");
    assert_eq!(
        s.patch(&rt, "", "b", PatchKind::Apply, &st, true)
            .unwrap_err()
            .code(),
        404
    );
    let no_kind = json!({"metadata": {"name": "c"}});
    assert_eq!(
        s.patch(&rt, "", "c", PatchKind::Apply, &no_kind, false)
            .unwrap_err()
            .code(),
        400
    );
}

#[test]
fn list_pages_keep_first_version_and_expire_after_compaction() {
    let mut s = store();
    let rt = lv_type(&s);
    for (i, node) in ["n1", "n2", "n1", "n1"].iter().enumerate() {
        s.seed(lv(&format!("lv{i}"), node)).unwrap();
    }
    let q = ListQuery {
        labels: LabelSelector::parse("strata.io/node=n1").unwrap(),
        limit: Some(2),
        ..Default::default()
    };
    let page = s.list(&rt, &q).unwrap();
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lv0", "lv2"]);
    assert_eq!(page["metadata"]["resourceVersion"], "4");
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    s.seed(lv("lv9", "n1")).unwrap();
    let q2 = ListQuery {
        continue_token: Some(token.clone()),
        ..q
    };
    let page2 = s.list(&rt, &q2).unwrap();
    assert_eq!(page2["items"].as_array().unwrap().len(), 2);
    assert_eq!(page2["metadata"]["resourceVersion"], "4");
    assert!(page2["metadata"].get("continue").is_none());
    s.compact();
    assert_eq!(s.list(&rt, &q2).unwrap_err().code(), 410);
    assert_eq!(s.watch(&rt, Some(2)).unwrap_err().reason(), "Expired");
}

#[test]
fn history_is_bounded() {
    let mut s = Store::new(Registry::default(), 3);
    let rt = lv_type(&s);
    for i in 0..5 {
        s.seed(lv(&format!("lv{i}"), "n1")).unwrap();
    }
    assert!(s.watch(&rt, Some(1)).is_err());
    let start = s.watch(&rt, Some(2)).unwrap();
    let rvs: Vec<u64> = start.backlog.iter().map(|c| c.rv).collect();
    assert_eq!(rvs, [3, 4, 5]);
    assert_eq!(s.watch(&rt, None).unwrap().backlog.len(), 5);
}

#[test]
fn namespaced_objects_are_separate_per_namespace() {
    let mut s = store();
    let rt = s
        .registry
        .find("coordination.k8s.io", "v1", "leases")
        .unwrap()
        .clone();
    let lease = |ns: &str| json!({"metadata": {"name": "l", "namespace": ns}, "spec": {}});
    s.create(&rt, "a", lease("a")).unwrap();
    s.create(&rt, "b", lease("b")).unwrap();
    assert_eq!(s.create(&rt, "a", lease("b")).unwrap_err().code(), 400);
    let q = ListQuery {
        namespace: Some("b".into()),
        ..Default::default()
    };
    assert_eq!(
        s.list(&rt, &q).unwrap()["items"].as_array().unwrap().len(),
        1
    );
    let all = s.list(&rt, &ListQuery::default()).unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    assert_eq!(all["kind"], "LeaseList");
}

#[test]
fn created_names_must_be_dns1123_subdomains_as_on_a_real_server() {
    let mut s = store();
    let rt = lv_type(&s);
    for bad in [
        "PVC-Upper",
        "pvc_a",
        "pvc-a?x",
        "-pvc",
        "pvc-",
        "a..b",
        &"a".repeat(254),
    ] {
        let err = s.create(&rt, "", lv(bad, "n1")).unwrap_err();
        assert_eq!((err.code(), err.reason()), (422, "Invalid"), "{bad}");
    }
    assert_eq!(s.resource_version(), 0, "a refused create stored nothing");
    for good in ["pvc-0a1b", "strata-0123abcd", "a.b-c", &"a".repeat(253)] {
        s.create(&rt, "", lv(good, "n1")).unwrap();
    }
}
