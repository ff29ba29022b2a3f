//! Scenario (in `deletion_end_to_end`'s VM session, no boot of its own): snapshots, restores and
//! clones with the real agent in Kubernetes mode (issue 20). The agent is restarted with a thin
//! pool for nvme (a class the deletion scenarios leave empty); a thin xfs volume is made through
//! the controller, staged, published and written; CreateSnapshot makes a Ready snapshot object;
//! the origin is then overwritten and cloned live; a larger restore of the snapshot shows the
//! snapshot's bytes with its filesystem grown; the real csi-scheduler pins a claim restoring the
//! VolumeSnapshot to the snapshot's node; the origin is deleted while the snapshot exists and the
//! restore still reads; DeleteSnapshot; nothing is left and the pool's promise is back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use csi_api::crd::{LogicalVolumePhase, VolumeRole, VolumeSnapshotReference};
use csi_api::csi;
use csi_api::csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
use csi_api::names::{self, DeviceClass};
use serde_json::{Value, json};
use strata_tests::e2e::host::{Scheduler, http};
use strata_tests::e2e::protocol::Op;

use crate::cluster::{self, Cluster, MIB, NODE};

/// The origin's size (xfs's minimum is 300 MiB) and the restore's, larger.
const ORIGIN_BYTES: u64 = 320 * MIB;
const RESTORE_BYTES: u64 = 512 * MIB;
/// The VolumeSnapshot the snapshot is made for (csi-snapshotter's `--extra-create-metadata`).
const SNAPSHOT_NAMESPACE: &str = "e2e";
const VOLUME_SNAPSHOT: &str = "snap-e2e";
/// A node with no Strata volume, offered to the extender next to the VM node.
const OTHER_NODE: &str = "other-node";
const STORAGE_CLASS: &str = "strata-thin-nvme";

/// What the origin holds when the snapshot is taken (256 KiB), and after.
fn before() -> String {
    let line = "the bytes of the snapshot's point in time\n";
    line.repeat(256 * 1024 / line.len())
}
const AFTER: &str = "overwritten after the snapshot\n";

/// A thin nvme xfs CreateVolume on the VM node, as external-provisioner sends it.
fn thin(name: &str, bytes: u64, source: Option<Type>) -> csi::CreateVolumeRequest {
    let mut req = cluster::create_request(name, DeviceClass::Nvme, bytes, None);
    req.parameters
        .insert(names::PARAM_PROVISIONING.to_owned(), "thin".to_owned());
    req.volume_content_source = source.map(|t| csi::VolumeContentSource { r#type: Some(t) });
    req
}

async fn create(c: &Cluster, req: csi::CreateVolumeRequest) -> csi::Volume {
    let name = req.name.clone();
    cluster::create(c.csi(), req, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("CreateVolume {name}: {e}\n{}", c.logs()))
}

fn staging(name: &str) -> String {
    format!("/run/e2e/staging/{name}")
}

fn target(name: &str) -> String {
    format!("/run/e2e/pods/{name}/volume")
}

async fn stage_and_publish(c: &Cluster, name: &str) {
    c.vm()
        .must(Op::Stage {
            volume_id: name.into(),
            staging: staging(name),
            fs_type: "xfs".into(),
        })
        .await;
    c.vm()
        .must(Op::NodePublish {
            volume_id: name.into(),
            staging: staging(name),
            target: target(name),
            fs_type: "xfs".into(),
        })
        .await;
}

async fn unpublish_and_unstage(c: &Cluster, name: &str) {
    c.vm()
        .must(Op::NodeUnpublish {
            volume_id: name.into(),
            target: target(name),
        })
        .await;
    c.vm()
        .must(Op::NodeUnstage {
            volume_id: name.into(),
            staging: staging(name),
        })
        .await;
}

async fn read_data(c: &Cluster, name: &str) -> String {
    let read = c
        .vm()
        .must(Op::ReadFile {
            path: format!("{}/data", target(name)),
        })
        .await;
    read.as_str().expect("file content").to_owned()
}

async fn statfs_total(c: &Cluster, name: &str) -> u64 {
    let out = c.vm().must(Op::Statfs { path: target(name) }).await;
    out["totalBytes"].as_u64().expect("totalBytes")
}

/// The nvme thin pool's promised virtual bytes as the agent published them.
async fn promised(c: &Cluster) -> Option<u64> {
    let status = c.node_storage(NODE).await?.status?;
    let class = status
        .device_classes
        .into_iter()
        .find(|d| d.name == DeviceClass::Nvme)?;
    Some(class.thin_pool?.virtual_bytes)
}

/// A pending claim restoring `snapshot` and a pod using it, in namespace `e2e`.
fn restore_claim_and_pod(claim: &str, snapshot: &str) -> (Value, Value) {
    let pvc = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": SNAPSHOT_NAMESPACE, "uid": format!("uid-{claim}")},
        "spec": {
            "storageClassName": STORAGE_CLASS,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "512Mi"}},
            "dataSourceRef": {
                "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot
            }
        }
    });
    let pod = json!({
        "metadata": {"name": format!("app-{claim}"), "namespace": SNAPSHOT_NAMESPACE,
                     "uid": format!("uid-app-{claim}")},
        "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}
    });
    (pvc, pod)
}

/// The real csi-scheduler: a claim restoring the VolumeSnapshot passes only on the node of its
/// snapshot LogicalVolume; one restoring a VolumeSnapshot no Strata snapshot was made for waits
/// on every node.
async fn extender_pins_the_restore(c: &Cluster) {
    c.api
        .seed(&json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS},
            "provisioner": names::DRIVER_NAME,
            "parameters": {(names::PARAM_DEVICE_CLASS): "nvme", (names::PARAM_PROVISIONING): "thin"},
            "volumeBindingMode": "WaitForFirstConsumer"
        }))
        .unwrap();
    c.api
        .seed(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": OTHER_NODE}}))
        .unwrap();
    let (pvc, pod) = restore_claim_and_pod("restored", VOLUME_SNAPSHOT);
    c.api.seed(&pvc).unwrap();
    let (missing_pvc, missing_pod) = restore_claim_and_pod("restored-later", "snap-not-yet");
    c.api.seed(&missing_pvc).unwrap();

    let scheduler = Scheduler::start(&c.dir, &c.kubeconfig).await;
    let filter = |pod: Value| {
        let addr = scheduler.addr.clone();
        let body = json!({"Pod": pod, "NodeNames": [OTHER_NODE, NODE]}).to_string();
        async move {
            let (code, body) = http(&addr, "POST", "/filter", &body).await.ok()?;
            assert_eq!(code, 200, "{body}");
            serde_json::from_str::<Value>(&body).ok()
        }
    };
    // the extender's caches fill asynchronously: wait for the answer that reflects them
    let pinned = c
        .eventually(
            "the extender to pin the restore to the VM node",
            Duration::from_secs(30),
            || {
                let f = filter(pod.clone());
                async move { f.await.filter(|r| r["NodeNames"] == json!([NODE])) }
            },
        )
        .await;
    // unresolvable: preempting pods there would not move the snapshot
    let why = pinned["FailedAndUnresolvableNodes"][OTHER_NODE]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains(&format!(
            "VolumeSnapshot {SNAPSHOT_NAMESPACE}/{VOLUME_SNAPSHOT}"
        )) && why.contains(&format!("on node {NODE}")),
        "{OTHER_NODE} fails naming the source and its node: {pinned}"
    );
    // resolvable: the pod waits for the snapshot to be made
    let waiting = filter(missing_pod).await.expect("filter answer");
    assert_eq!(waiting["NodeNames"], json!([]), "{waiting}");
    for node in [NODE, OTHER_NODE] {
        let why = waiting["FailedNodes"][node].as_str().unwrap_or_default();
        assert!(why.contains("waiting for source"), "{node}: {waiting}");
    }
    drop(scheduler);
}

pub async fn snapshot_restore_and_clone(c: &Cluster) {
    let t = Instant::now();
    c.stop_agent(false).await;
    c.start_agent_with(None, &["--thin-pool", "nvme=50"]).await;
    let promised_before = c
        .eventually("an nvme thin pool", Duration::from_secs(120), || {
            promised(c)
        })
        .await;
    eprintln!(
        "e2e [{}]: nvme thin pool published ({promised_before} bytes promised)",
        c.at()
    );

    // The origin: thin, staged, published, written.
    let origin = "pvc-snap-origin";
    create(c, thin(origin, ORIGIN_BYTES, None)).await;
    stage_and_publish(c, origin).await;
    let data = format!("{}/data", target(origin));
    c.vm()
        .must(Op::WriteFile {
            path: data.clone(),
            content: before(),
        })
        .await;
    let sync = c
        .vm()
        .must(Op::Exec {
            argv: vec!["sync".into()],
        })
        .await;
    assert_eq!(sync["code"], 0, "sync: {sync}");

    // CreateSnapshot through the controller, for a VolumeSnapshot.
    let snapshot_id = "snapshot-e2e-uid";
    let snapshot = c
        .csi()
        .create_snapshot(csi::CreateSnapshotRequest {
            name: snapshot_id.into(),
            source_volume_id: origin.into(),
            parameters: [
                (
                    "csi.storage.k8s.io/volumesnapshot/name".to_owned(),
                    VOLUME_SNAPSHOT.to_owned(),
                ),
                (
                    "csi.storage.k8s.io/volumesnapshot/namespace".to_owned(),
                    SNAPSHOT_NAMESPACE.to_owned(),
                ),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("CreateSnapshot: {e}\n{}", c.logs()))
        .into_inner()
        .snapshot
        .expect("a snapshot");
    assert_eq!(snapshot.snapshot_id, snapshot_id);
    assert_eq!(snapshot.source_volume_id, origin);
    assert!(snapshot.ready_to_use, "{snapshot:?}");
    assert!(snapshot.creation_time.is_some(), "{snapshot:?}");
    assert_eq!(snapshot.size_bytes, ORIGIN_BYTES as i64);
    let lv = c.volume(snapshot_id).await.expect("the snapshot object");
    assert_eq!(lv.spec.role, Some(VolumeRole::Snapshot));
    assert_eq!(lv.spec.node_name, NODE);
    assert_eq!(
        lv.spec.volume_snapshot,
        Some(VolumeSnapshotReference {
            namespace: SNAPSHOT_NAMESPACE.into(),
            name: VOLUME_SNAPSHOT.into(),
        })
    );
    let status = lv.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(LogicalVolumePhase::Ready), "{status:?}");
    assert!(status.creation_time.is_some(), "{status:?}");
    assert!(status.device_path.is_none(), "never activated: {status:?}");
    // the snapshot's LV is there, as the objects say
    c.converged(&[origin, snapshot_id].map(String::from).into())
        .await;
    // the snapshot's virtual size counts in the pool's promise like the origin's
    c.eventually(
        "the snapshot in the pool's promised bytes",
        Duration::from_secs(30),
        || async {
            promised(c)
                .await
                .filter(|p| *p == promised_before + 2 * ORIGIN_BYTES)
        },
    )
    .await;
    eprintln!("e2e [{}]: snapshot Ready after {:?}", c.at(), t.elapsed());

    // The origin moves on; the snapshot keeps its point in time.
    c.vm()
        .must(Op::WriteFile {
            path: data.clone(),
            content: AFTER.into(),
        })
        .await;

    // A clone of the live origin holds what the origin holds now.
    let clone = "pvc-snap-clone";
    let volume = create(
        c,
        thin(
            clone,
            ORIGIN_BYTES,
            Some(Type::Volume(VolumeSource {
                volume_id: origin.into(),
            })),
        ),
    )
    .await;
    assert!(
        matches!(
            volume.content_source.and_then(|s| s.r#type),
            Some(Type::Volume(VolumeSource { volume_id })) if volume_id == origin
        ),
        "the clone answers its source"
    );
    stage_and_publish(c, clone).await;
    assert_eq!(read_data(c, clone).await, AFTER, "the clone's content");
    unpublish_and_unstage(c, clone).await;
    c.delete_until_ok(clone).await;
    eprintln!("e2e [{}]: live clone checked", c.at());

    // A larger restore of the snapshot: the snapshot's bytes, the filesystem grown.
    let restore = "pvc-snap-restore";
    let volume = create(
        c,
        thin(
            restore,
            RESTORE_BYTES,
            Some(Type::Snapshot(SnapshotSource {
                snapshot_id: snapshot_id.into(),
            })),
        ),
    )
    .await;
    assert_eq!(volume.capacity_bytes, RESTORE_BYTES as i64);
    assert!(
        matches!(
            volume.content_source.and_then(|s| s.r#type),
            Some(Type::Snapshot(SnapshotSource { snapshot_id: id })) if id == snapshot_id
        ),
        "the restore answers its source"
    );
    stage_and_publish(c, restore).await;
    assert!(
        read_data(c, restore).await == before(),
        "the restore does not hold the snapshot's bytes"
    );
    assert_eq!(read_data(c, origin).await, AFTER, "the origin's content");
    let (origin_fs, restore_fs) = (
        statfs_total(c, origin).await,
        statfs_total(c, restore).await,
    );
    let grown = restore_fs.saturating_sub(origin_fs);
    assert!(
        grown > (RESTORE_BYTES - ORIGIN_BYTES) * 9 / 10 && restore_fs < RESTORE_BYTES,
        "the restore's filesystem grows to the larger size: {restore_fs} bytes vs the origin's \
         {origin_fs}"
    );
    eprintln!(
        "e2e [{}]: restore checked (filesystem {origin_fs} → {restore_fs} bytes)",
        c.at()
    );

    extender_pins_the_restore(c).await;
    eprintln!("e2e [{}]: extender pins the restore", c.at());

    // The origin goes while the snapshot and the restore stay.
    unpublish_and_unstage(c, origin).await;
    c.delete(origin)
        .await
        .unwrap_or_else(|e| panic!("DeleteVolume of the origin of a snapshot: {e}"));
    c.wait_gone(origin).await;
    c.converged(&[restore, snapshot_id].map(String::from).into())
        .await;
    // read from the disk again, not from the page cache
    unpublish_and_unstage(c, restore).await;
    stage_and_publish(c, restore).await;
    assert!(
        read_data(c, restore).await == before(),
        "the restore lost the snapshot's bytes with its origin"
    );
    unpublish_and_unstage(c, restore).await;
    c.delete_until_ok(restore).await;

    c.csi()
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snapshot_id.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("DeleteSnapshot: {e}\n{}", c.logs()));
    for name in [clone, restore, snapshot_id] {
        c.wait_gone(name).await;
    }
    c.converged(&BTreeSet::new()).await;
    c.eventually(
        &format!("the pool's promise back at {promised_before} bytes"),
        Duration::from_secs(60),
        || async { promised(c).await.filter(|p| *p == promised_before) },
    )
    .await;
    eprintln!(
        "e2e [{}]: snapshot, clone and restore checked in {:?}",
        c.at(),
        t.elapsed()
    );
}
