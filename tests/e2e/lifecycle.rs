//! Scenario group 1 (one VM boot): NodeStorage published with the lab's disks claimed, the
//! scheduler extender against the agent's real capacity, a volume's whole life (create → stage →
//! publish → expand → unpublish → unstage → delete) with capacity following it, 20 concurrent
//! creates on one node (exactly as many succeed as fit), and orphan detection and deletion.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use csi_api::capacity::claim_bytes;
use csi_api::crd::{
    ClassHealth, DeviceClassStatus, DiskState, LogicalVolumePhase, NodeStorage, NodeStorageSpec,
    NodeStorageStatus,
};
use csi_api::names::{self, DeviceClass};
use futures::future::join_all;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use strata_tests::e2e::host::{Scheduler, http};
use strata_tests::e2e::protocol::Op;

use crate::cluster::{self, CONTROLLER_ARGS, Cluster, GIB, MIB, NODE};

/// Slots and serials of the lab (tests/nodevm/README.md) and what the agent must make of them.
const CLAIMED: [(&str, &str); 4] = [
    ("NVME-A", "strata-nvme"),
    ("NVME-B", "strata-nvme"),
    ("SSD-A", "strata-ssd"),
    ("HDD-A", "strata-hdd"),
];
const REJECTED: [&str; 4] = ["HDD-GPT", "SSD-EXT4", "SWAP-A", "PV-FOREIGN"];

fn class_of(status: &NodeStorageStatus, class: DeviceClass) -> Option<DeviceClassStatus> {
    status
        .device_classes
        .iter()
        .find(|c| c.name == class)
        .cloned()
}

/// The agent's NodeStorage once its claim pass has published all three classes.
pub async fn node_storage_claims_the_lab(c: &Cluster) -> NodeStorageStatus {
    let status = c
        .eventually(
            "NodeStorage with three device classes",
            Duration::from_secs(120),
            || async {
                let status = c.node_storage(NODE).await?.status?;
                (status.device_classes.len() == 3).then_some(status)
            },
        )
        .await;
    for (serial, vg) in CLAIMED {
        let disk = status
            .disks
            .iter()
            .find(|d| d.serial == serial)
            .unwrap_or_else(|| panic!("disk {serial} missing from {:#?}", status.disks));
        assert_eq!(disk.state, DiskState::Claimed, "{disk:#?}");
        assert_eq!(disk.volume_group.as_deref(), Some(vg), "{disk:#?}");
        assert!(
            disk.slot.starts_with("pci-0000:00:"),
            "slot, not a kernel name: {disk:#?}"
        );
    }
    for serial in REJECTED {
        let disk = status
            .disks
            .iter()
            .find(|d| d.serial == serial)
            .unwrap_or_else(|| panic!("disk {serial} missing from {:#?}", status.disks));
        assert_eq!(disk.state, DiskState::Rejected, "{disk:#?}");
        assert!(!disk.reason.is_empty(), "a rejection says why: {disk:#?}");
        assert_eq!(disk.volume_group, None);
    }
    let nvme = class_of(&status, DeviceClass::Nvme).unwrap();
    assert_eq!(nvme.vg_name, "strata-nvme");
    assert_eq!(nvme.pv_count, 2);
    // two 8 GiB disks less LVM metadata
    assert!(
        nvme.total_bytes > 15 * GIB && nvme.total_bytes <= 16 * GIB,
        "{nvme:?}"
    );
    let ssd = class_of(&status, DeviceClass::Ssd).unwrap();
    assert!(
        ssd.total_bytes > 3 * GIB && ssd.total_bytes <= 4 * GIB,
        "{ssd:?}"
    );
    let hdd = class_of(&status, DeviceClass::Hdd).unwrap();
    assert!(
        hdd.total_bytes > 15 * GIB && hdd.total_bytes <= 16 * GIB,
        "{hdd:?}"
    );
    for class in &status.device_classes {
        assert_eq!(class.health, ClassHealth::Healthy, "{class:?}");
        assert_eq!(class.lv_count, 0, "{class:?}");
        assert_eq!(
            class.allocatable_bytes, class.free_bytes,
            "no reserve: {class:?}"
        );
    }
    status
}

/// Waits until the published allocatable bytes of `class` equal `bytes`.
async fn allocatable_becomes(c: &Cluster, class: DeviceClass, bytes: u64) -> Duration {
    let start = Instant::now();
    c.eventually(
        &format!("{class} allocatable = {bytes}"),
        Duration::from_secs(30),
        || async {
            let status = c.node_storage(NODE).await?.status?;
            (class_of(&status, class)?.allocatable_bytes == bytes).then_some(())
        },
    )
    .await;
    start.elapsed()
}

fn pod(name: &str, claim: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "e2e", "uid": format!("uid-{name}")},
        "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}
    })
}

pub async fn claim(c: &Cluster, name: &str, size: &str) -> PersistentVolumeClaim {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "e2e"},
        "spec": {
            "storageClassName": "strata-ssd",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}}
        }
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(c.client.clone(), "e2e")
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap()
}

/// The real csi-scheduler reading the same API server: a node with room passes, one without
/// fails, and the VM node's answer follows the capacity its agent published.
pub async fn scheduler_filters_on_published_capacity(c: &Cluster) {
    c.api
        .seed(&json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "strata-ssd"},
            "provisioner": names::DRIVER_NAME,
            "parameters": {(names::PARAM_DEVICE_CLASS): "ssd"},
            "volumeBindingMode": "WaitForFirstConsumer"
        }))
        .unwrap();
    // a second node whose (seeded) NodeStorage has only 64 MiB of SSD left
    c.api
        .seed(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "full-node"}}))
        .unwrap();
    let mut full = NodeStorage::new("full-node", NodeStorageSpec::default());
    full.status = Some(NodeStorageStatus {
        device_classes: vec![DeviceClassStatus {
            name: DeviceClass::Ssd,
            vg_name: "strata-ssd".into(),
            total_bytes: 4 * GIB,
            free_bytes: 64 * MIB,
            allocatable_bytes: 64 * MIB,
            capacity: None,
            allocatable: None,
            pv_count: 1,
            missing_pv_count: 0,
            lv_count: 9,
            health: ClassHealth::Healthy,
            thin_pool: None,
        }],
        ..Default::default()
    });
    c.api.seed(&full).unwrap();
    claim(c, "small", "1Gi").await;
    claim(c, "huge", "8Gi").await;

    let scheduler = Scheduler::start(&c.dir, &c.kubeconfig).await;
    let nodes = json!([NODE, "full-node"]);
    let filter = |pod: Value| {
        let addr = scheduler.addr.clone();
        let body = json!({"Pod": pod, "NodeNames": nodes}).to_string();
        async move {
            let (code, body) = http(&addr, "POST", "/filter", &body).await.ok()?;
            assert_eq!(code, 200, "{body}");
            serde_json::from_str::<Value>(&body).ok()
        }
    };
    // the extender's caches fill asynchronously: wait for the answer that reflects them all
    let small = c
        .eventually(
            "the extender to pass only the VM node",
            Duration::from_secs(30),
            || {
                let f = filter(pod("app-small", "small"));
                async move { f.await.filter(|r| r["NodeNames"] == json!([NODE])) }
            },
        )
        .await;
    let why = small["FailedNodes"]["full-node"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("ssd"),
        "full-node fails for lack of ssd: {small}"
    );

    let huge = filter(pod("app-huge", "huge")).await.unwrap();
    assert_eq!(
        huge["NodeNames"],
        json!([]),
        "8 GiB fits on no node: {huge}"
    );
    assert!(
        huge["FailedNodes"].get(NODE).is_some(),
        "the VM node's 4 GiB SSD cannot take 8 GiB: {huge}"
    );

    let body = json!({"Pod": pod("app-small", "small"), "NodeNames": nodes}).to_string();
    let (code, scores) = http(&scheduler.addr, "POST", "/prioritize", &body)
        .await
        .unwrap();
    assert_eq!(code, 200, "{scores}");
    let scores: Vec<Value> = serde_json::from_str(&scores).unwrap();
    let score = |host: &str| {
        scores
            .iter()
            .find(|s| s["Host"] == host)
            .and_then(|s| s["Score"].as_i64())
    };
    assert_eq!(score(NODE), Some(10), "{scores:?}");
    assert_eq!(score("full-node"), Some(0), "{scores:?}");
    drop(scheduler);
}

/// A PersistentVolume for a volume, as external-provisioner makes one after CreateVolume.
fn persistent_volume(volume: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": volume},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "csi": {"driver": names::DRIVER_NAME, "volumeHandle": volume, "fsType": "xfs"}
        }
    })
}

/// One volume through its whole life, with NodeStorage following it.
pub async fn volume_lifecycle(c: &Cluster, before: &NodeStorageStatus) {
    let ssd_free = class_of(before, DeviceClass::Ssd)
        .unwrap()
        .allocatable_bytes;
    let pvc = claim(c, "data-0", "1Gi").await;
    let name = format!("pvc-{}", pvc.uid().unwrap());

    let t = Instant::now();
    let volume = c
        .create(&name, DeviceClass::Ssd, GIB, Some(("e2e", "data-0")))
        .await
        .unwrap_or_else(|e| panic!("CreateVolume: {e}\n{}", c.logs()));
    eprintln!(
        "e2e [{}]: CreateVolume 1 GiB Ready in {:?}",
        c.at(),
        t.elapsed()
    );
    assert_eq!(volume.volume_id, name);
    assert_eq!(volume.capacity_bytes, GIB as i64);
    assert_eq!(
        volume.accessible_topology[0].segments[names::TOPOLOGY_KEY],
        NODE
    );
    let lv = c.volume(&name).await.expect("LogicalVolume");
    assert_eq!(lv.labels()[names::LABEL_NODE], NODE);
    assert_eq!(lv.labels()[names::LABEL_DEVICE_CLASS], "ssd");
    assert_eq!(
        lv.finalizers(),
        [names::FINALIZER, names::FINALIZER_PV_PROTECTION]
    );
    let pvc_ref = lv.spec.pvc.clone().expect("PVC reference");
    assert_eq!(
        (pvc_ref.namespace.as_str(), pvc_ref.name.as_str()),
        ("e2e", "data-0")
    );
    assert_eq!(pvc_ref.uid, pvc.uid().unwrap());
    let status = lv.status.clone().unwrap();
    assert_eq!(status.phase, Some(LogicalVolumePhase::Ready));
    let lvs = c.converged(&BTreeSet::from([name.clone()])).await;
    assert_eq!(lvs[&name].vg, "strata-ssd");
    assert_eq!(lvs[&name].size, GIB);
    let took = allocatable_becomes(c, DeviceClass::Ssd, ssd_free - GIB).await;
    eprintln!(
        "e2e [{}]: NodeStorage ssd allocatable down by 1 GiB within {took:?}",
        c.at()
    );
    c.api.seed(&persistent_volume(&name)).unwrap();

    // the node side, in the VM
    let staging = format!("/run/e2e/staging/{name}");
    let target = format!("/run/e2e/pods/{name}/mount");
    let vm = c.vm();
    vm.must(Op::Stage {
        volume_id: name.clone(),
        staging: staging.clone(),
        fs_type: "xfs".into(),
    })
    .await;
    vm.must(Op::NodePublish {
        volume_id: name.clone(),
        staging: staging.clone(),
        target: target.clone(),
        fs_type: "xfs".into(),
    })
    .await;
    let file = format!("{target}/hello");
    vm.must(Op::WriteFile {
        path: file.clone(),
        content: "strata e2e".into(),
    })
    .await;
    let small = vm
        .must(Op::Statfs {
            path: target.clone(),
        })
        .await["totalBytes"]
        .as_u64()
        .unwrap();
    assert!(small > 900 * MIB && small <= GIB, "xfs on 1 GiB: {small}");

    // expand: controller, then node
    let t = Instant::now();
    let grown = c
        .expand(&name, 2 * GIB)
        .await
        .unwrap_or_else(|e| panic!("ControllerExpandVolume: {e}\n{}", c.logs()));
    eprintln!(
        "e2e [{}]: ControllerExpandVolume to 2 GiB in {:?}",
        c.at(),
        t.elapsed()
    );
    assert_eq!(grown.capacity_bytes, 2 * GIB as i64);
    assert!(grown.node_expansion_required);
    let lvs = c.converged(&BTreeSet::from([name.clone()])).await;
    assert_eq!(lvs[&name].size, 2 * GIB);
    allocatable_becomes(c, DeviceClass::Ssd, ssd_free - 2 * GIB).await;
    vm.must(Op::NodeExpand {
        volume_id: name.clone(),
        volume_path: target.clone(),
        staging: staging.clone(),
        required_bytes: 2 * GIB,
        fs_type: "xfs".into(),
    })
    .await;
    let big = vm
        .must(Op::Statfs {
            path: target.clone(),
        })
        .await["totalBytes"]
        .as_u64()
        .unwrap();
    assert!(big > small + 900 * MIB, "xfs grew online: {small} -> {big}");
    assert_eq!(
        vm.must(Op::ReadFile { path: file }).await,
        json!("strata e2e")
    );

    vm.must(Op::NodeUnpublish {
        volume_id: name.clone(),
        target,
    })
    .await;
    vm.must(Op::NodeUnstage {
        volume_id: name.clone(),
        staging,
    })
    .await;

    // delete: the object goes once the agent removed the LV and released the finalizer
    let t = Instant::now();
    c.delete(&name).await.unwrap();
    c.wait_gone(&name).await;
    eprintln!(
        "e2e [{}]: DeleteVolume → object gone in {:?}",
        c.at(),
        t.elapsed()
    );
    c.converged(&BTreeSet::new()).await;
    allocatable_becomes(c, DeviceClass::Ssd, ssd_free).await;
}

/// 20 CreateVolume calls at once for one node's SSD class: exactly as many succeed as fit, the
/// rest are ResourceExhausted, and LVM holds exactly the volumes that succeeded.
pub async fn concurrent_creates_never_overcommit(c: &Cluster) {
    const CALLS: usize = 20;
    // At least xfs's minimum (300 MiB): a smaller filesystem volume is sized up to it.
    const SIZE: u64 = 320 * MIB;
    let status = c
        .eventually("an empty ssd class", Duration::from_secs(30), || async {
            let status = c.node_storage(NODE).await?.status?;
            (class_of(&status, DeviceClass::Ssd)?.lv_count == 0).then_some(status)
        })
        .await;
    let allocatable = class_of(&status, DeviceClass::Ssd)
        .unwrap()
        .allocatable_bytes;
    let fits = usize::try_from(allocatable / claim_bytes(SIZE)).unwrap();
    assert!(fits > 0 && fits < CALLS, "{allocatable} bytes: {fits} fit");

    let t = Instant::now();
    let calls = (0..CALLS).map(|i| {
        let name = format!("pvc-burst-{i:02}");
        let mut req = cluster::create_request(&name, DeviceClass::Ssd, SIZE, None);
        // nothing written: no need to zero 15 LVs before removal (slow under TCG)
        req.parameters
            .insert(names::PARAM_WIPE.to_owned(), "none".to_owned());
        let csi = c.csi();
        async move {
            (
                name,
                cluster::create(csi, req, Duration::from_secs(240)).await,
            )
        }
    });
    let results = join_all(calls).await;
    eprintln!(
        "e2e [{}]: {CALLS} concurrent CreateVolume of 320 MiB answered in {:?}",
        c.at(),
        t.elapsed()
    );
    let mut made = BTreeSet::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for (name, result) in &results {
        match result {
            Ok(v) => {
                assert_eq!(v.capacity_bytes, SIZE as i64);
                made.insert(name.clone());
            }
            Err(e) => *codes.entry(format!("{:?}", e.code())).or_default() += 1,
        }
    }
    assert_eq!(
        made.len(),
        fits,
        "{fits} volumes fit in {allocatable} bytes; results: {codes:?} {:?}\n{}",
        results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
            .collect::<Vec<_>>(),
        c.logs()
    );
    assert_eq!(
        codes,
        BTreeMap::from([("ResourceExhausted".to_owned(), CALLS - fits)]),
        "every refusal is ResourceExhausted"
    );
    // refused volumes leave nothing behind (objects deleted, finalizers released, no LV)
    let lvs = c.converged(&made).await;
    assert!(
        lvs.values()
            .all(|lv| lv.vg == "strata-ssd" && lv.size == SIZE)
    );
    let t = Instant::now();
    join_all(made.iter().map(|n| c.delete(n)))
        .await
        .into_iter()
        .for_each(|r| r.unwrap());
    for name in &made {
        c.wait_gone(name).await;
    }
    c.converged(&BTreeSet::new()).await;
    eprintln!(
        "e2e [{}]: {} deletions converged in {:?}",
        c.at(),
        made.len(),
        t.elapsed()
    );
}

async fn events_for(c: &Cluster, volume: &str, reason: &str) -> usize {
    Api::<Event>::all(c.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(volume)
        })
        .count()
}

/// A LogicalVolume without a PV past `--orphan-grace` gets an `Orphaned` Event (and with
/// `--orphan-policy=delete` is deleted, LV and all); a bound one is annotated and kept.
pub async fn orphans_are_reported_then_deleted(c: &mut Cluster) {
    c.restart_controller(
        &["--housekeeping-period", "1s", "--orphan-grace", "3s"],
        None,
    )
    .await;
    let orphan = "pvc-orphan";
    let bound = "pvc-bound";
    // the PV exists before the grace period can run out, whatever the creation takes
    c.api.seed(&persistent_volume(bound)).unwrap();
    c.create(orphan, DeviceClass::Hdd, GIB, None).await.unwrap();
    c.create(bound, DeviceClass::Hdd, GIB, None).await.unwrap();
    let t = Instant::now();
    c.eventually("an Orphaned Event", Duration::from_secs(30), || async {
        (events_for(c, orphan, "Orphaned").await > 0).then_some(())
    })
    .await;
    eprintln!(
        "e2e [{}]: Orphaned Event {:?} after creation",
        c.at(),
        t.elapsed()
    );
    c.eventually(
        "the bound volume annotated",
        Duration::from_secs(30),
        || async {
            let lv = c.volume(bound).await?;
            (lv.annotations().get("strata.io/pv").map(String::as_str) == Some(bound)).then_some(())
        },
    )
    .await;
    assert_eq!(
        events_for(c, bound, "Orphaned").await,
        0,
        "a bound volume is no orphan"
    );
    // report only: nothing deleted
    c.converged(&BTreeSet::from([orphan.to_owned(), bound.to_owned()]))
        .await;

    c.restart_controller(
        &[
            "--housekeeping-period",
            "1s",
            "--orphan-grace",
            "3s",
            "--orphan-policy",
            "delete",
        ],
        None,
    )
    .await;
    c.wait_gone(orphan).await;
    c.converged(&BTreeSet::from([bound.to_owned()])).await;
    c.restart_controller(CONTROLLER_ARGS, None).await;
    c.delete(bound).await.unwrap();
    c.wait_gone(bound).await;
    c.converged(&BTreeSet::new()).await;
}
