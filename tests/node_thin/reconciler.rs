//! The agent's LogicalVolume reconciler (Kubernetes mode) on snapshots, restores and clones, with
//! real device-mapper: the in-process fake API server holds the objects, the reconciler's
//! `volumes::run` makes the LVs. A snapshot object becomes Ready with its creation time and no
//! device (Event `SnapshotCreated`); a restore from it holds the snapshot's bytes; refusals fail
//! the object with the reason the controller reads (`InsufficientSpace`, `SourceNotFound`,
//! `SourceNotThin`) and make nothing; the origin deleted, the snapshot still restores; deleting
//! the snapshot object removes its LV and releases the finalizer.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_agent::claim::ThinSettings;
use csi_agent::kubernetes::{Context, capacity_sequence, volumes};
use csi_agent::lvm::{CommandRunner, Lvm, snapshot_lv_name};
use csi_api::crd::{
    ClaimMode, LogicalVolume, LogicalVolumePhase, LogicalVolumeSpec, SourceKind, VolumeRole,
    VolumeSource,
};
use csi_api::names::{self, DeviceClass, Provisioning};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use strata_tests::apiserver::FakeApiServer;
use strata_tests::vm;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{MARK, MIB, VG, VgGuard, layer, runtime, write_pattern};

const NODE: &str = "node-vm";

fn object(name: &str, size: u64, thin: bool, source: Option<(SourceKind, &str)>) -> LogicalVolume {
    let mut lv = LogicalVolume::new(
        name,
        LogicalVolumeSpec {
            node_name: NODE.into(),
            device_class: DeviceClass::Nvme,
            size_bytes: size,
            pvc: None,
            provisioning: thin.then_some(Provisioning::Thin),
            source: source.map(|(kind, name)| VolumeSource {
                kind,
                name: name.into(),
            }),
            role: None,
            volume_snapshot: None,
            wipe: None,
        },
    );
    lv.metadata.labels = Some(BTreeMap::from([
        (names::LABEL_NODE.to_owned(), NODE.to_owned()),
        (names::LABEL_DEVICE_CLASS.to_owned(), "nvme".to_owned()),
    ]));
    lv
}

fn snapshot(name: &str, origin: &str, size: u64) -> LogicalVolume {
    let mut lv = object(name, size, true, Some((SourceKind::Volume, origin)));
    lv.spec.role = Some(VolumeRole::Snapshot);
    lv
}

/// Waits until the object satisfies `ok` (at most two minutes: TCG is slow).
async fn wait_for(
    api: &Api<LogicalVolume>,
    name: &str,
    what: &str,
    ok: impl Fn(&LogicalVolume) -> bool,
) -> LogicalVolume {
    let start = Instant::now();
    loop {
        let got = api.get_opt(name).await.unwrap();
        if let Some(lv) = got.as_ref().filter(|lv| ok(lv)) {
            return lv.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{name}: not {what} after 120 s: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn phase(lv: &LogicalVolume) -> Option<LogicalVolumePhase> {
    lv.status.as_ref().and_then(|s| s.phase)
}

fn reason(lv: &LogicalVolume) -> Option<&str> {
    lv.status.as_ref().and_then(|s| s.reason.as_deref())
}

async fn failed_with(api: &Api<LogicalVolume>, name: &str, why: &str) {
    let lv = wait_for(api, name, "Failed", |lv| {
        phase(lv) == Some(LogicalVolumePhase::Failed)
    })
    .await;
    assert_eq!(reason(&lv), Some(why), "{:?}", lv.status);
}

async fn gone(api: &Api<LogicalVolume>, name: &str) {
    let start = Instant::now();
    while api.get_opt(name).await.unwrap().is_some() {
        assert!(start.elapsed() < Duration::from_secs(120), "{name} stays");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The Event reasons recorded about `name`.
async fn event_reasons(client: &kube::Client, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::all(client.clone());
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

fn head(dev: &std::path::Path) -> Vec<u8> {
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let mut buf = vec![0u8; MARK.len()];
    std::fs::File::open(dev)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

/// A kube client over plain HTTP that needs no CA store (the VM has none, so
/// [`FakeApiServer::client`], which loads the system's roots for rustls, cannot be used here).
fn plain_http_client(url: &str) -> kube::Client {
    use kube::client::ConfigExt;
    let config = kube::Config::new(url.parse().unwrap());
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .service(http);
    kube::Client::new(service, config.default_namespace)
}

#[test]
fn the_reconciler_makes_snapshots_restores_and_refuses_cleanly() {
    let Some(_lab) = vm::enter("the_reconciler_makes_snapshots_restores_and_refuses_cleanly")
    else {
        return;
    };
    let disk = vm::by_serial("NVME-B");
    let _guard = VgGuard {
        pvs: vec![disk.dev.clone()],
    };
    runtime().block_on(async {
        let lvm: Lvm<CommandRunner> = layer();
        lvm.create_vg(VG, std::slice::from_ref(&disk.dev))
            .await
            .unwrap();
        lvm.create_thin_pool(VG, 256 * MIB).await.unwrap();
        let server = FakeApiServer::start().await.unwrap();
        let client = plain_http_client(&server.url());
        let ctx = Arc::new(Context {
            client: client.clone(),
            node: NODE.into(),
            lvm: lvm.clone(),
            roots: Default::default(),
            changed: Arc::new(Notify::new()),
            wiper: csi_agent::wiper::Wiper::new(lvm.clone(), Default::default(), None),
            health: Default::default(),
            disks_changed: Arc::new(Notify::new()),
            sequencer: capacity_sequence::Sequencer::starting_after(
                None,
                capacity_sequence::unix_millis(),
            ),
            new_node_claim_mode: ClaimMode::Manual,
            heartbeat: Duration::from_secs(60),
            metrics: None,
            // ratio 1: the 256 MiB pool may promise 256 MiB of virtual size
            thin: ThinSettings::new(&[(DeviceClass::Nvme, 1)], &[(DeviceClass::Nvme, 1.0)])
                .unwrap(),
        });
        let shutdown = CancellationToken::new();
        let reconciler = tokio::spawn(volumes::run(ctx, shutdown.clone()));
        let api: Api<LogicalVolume> = Api::all(client.clone());
        let pp = PostParams::default();
        let ready = |lv: &LogicalVolume| phase(lv) == Some(LogicalVolumePhase::Ready);

        // a thin origin, written
        api.create(&pp, &object("pvc-origin", 64 * MIB, true, None))
            .await
            .unwrap();
        let origin = wait_for(&api, "pvc-origin", "Ready", ready).await;
        let odev = std::path::PathBuf::from(origin.status.unwrap().device_path.unwrap());
        write_pattern(&odev, 16 * MIB);

        // the snapshot object: Ready, lvm2's time, no device, an Event
        api.create(&pp, &snapshot("snapshot-1", "pvc-origin", 64 * MIB))
            .await
            .unwrap();
        let snap = wait_for(&api, "snapshot-1", "Ready", ready).await;
        let status = snap.status.clone().unwrap();
        assert!(status.creation_time.is_some(), "{status:?}");
        assert_eq!(status.device_path, None);
        assert_eq!(status.current_size_bytes, Some(64 * MIB));
        assert_eq!(
            status.lv_name.as_deref(),
            Some(snapshot_lv_name("snapshot-1").as_str())
        );
        assert!(status.capacity_sequence.is_some());
        assert!(snap.finalizers().iter().any(|f| f == names::FINALIZER));
        assert!(
            event_reasons(&client, "snapshot-1")
                .await
                .iter()
                .any(|r| r == names::EVENT_SNAPSHOT_CREATED)
        );

        // the origin overwritten; a larger restore holds the snapshot's bytes
        vm::run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", odev.display()),
                "bs=1M",
                "count=16",
                "oflag=direct",
            ],
        );
        assert_ne!(head(&odev), MARK);
        api.create(
            &pp,
            &object(
                "pvc-restore",
                96 * MIB,
                true,
                Some((SourceKind::Snapshot, "snapshot-1")),
            ),
        )
        .await
        .unwrap();
        let restore = wait_for(&api, "pvc-restore", "Ready", ready).await;
        let rdev = std::path::PathBuf::from(restore.status.unwrap().device_path.unwrap());
        assert_eq!(vm::dev_size(&rdev), 96 * MIB);
        assert_eq!(head(&rdev), MARK);

        // refusals: no room by the ratio (64 + 64 + 96 promised, 32 left), no source, linear
        let lvs = || vm::run("lvs", &["--noheadings", "-o", "lv_name", VG]);
        let before = lvs();
        api.create(&pp, &snapshot("snapshot-big", "pvc-restore", 96 * MIB))
            .await
            .unwrap();
        failed_with(&api, "snapshot-big", "InsufficientSpace").await;
        api.create(&pp, &snapshot("snapshot-none", "pvc-nothing", 8 * MIB))
            .await
            .unwrap();
        failed_with(&api, "snapshot-none", names::REASON_SOURCE_NOT_FOUND).await;
        api.create(
            &pp,
            &object(
                "pvc-from-nothing",
                8 * MIB,
                true,
                Some((SourceKind::Snapshot, "snapshot-nothing")),
            ),
        )
        .await
        .unwrap();
        failed_with(&api, "pvc-from-nothing", names::REASON_SOURCE_NOT_FOUND).await;
        assert_eq!(lvs(), before, "a refusal made nothing");
        api.create(&pp, &object("pvc-linear", 8 * MIB, false, None))
            .await
            .unwrap();
        wait_for(&api, "pvc-linear", "Ready", ready).await;
        let with_linear = lvs();
        api.create(&pp, &snapshot("snapshot-linear", "pvc-linear", 8 * MIB))
            .await
            .unwrap();
        failed_with(&api, "snapshot-linear", names::REASON_SOURCE_NOT_THIN).await;
        assert_eq!(lvs(), with_linear, "a refusal made nothing");
        assert!(
            event_reasons(&client, "snapshot-linear")
                .await
                .iter()
                .any(|r| r == names::REASON_SOURCE_NOT_THIN)
        );

        // the origin deleted: its snapshot stays and still restores exactly
        api.delete("pvc-origin", &DeleteParams::default())
            .await
            .unwrap();
        gone(&api, "pvc-origin").await;
        assert!(lvm.lv(VG, "pvc-origin").await.unwrap().is_none());
        assert!(lvm.find_snapshot("snapshot-1").await.unwrap().is_some());
        api.create(
            &pp,
            &object(
                "pvc-late",
                64 * MIB,
                true,
                Some((SourceKind::Snapshot, "snapshot-1")),
            ),
        )
        .await
        .unwrap();
        let late = wait_for(&api, "pvc-late", "Ready", ready).await;
        let ldev = std::path::PathBuf::from(late.status.unwrap().device_path.unwrap());
        assert_eq!(head(&ldev), MARK);

        // the snapshot object deleted: its LV goes, then the object
        api.delete("snapshot-1", &DeleteParams::default())
            .await
            .unwrap();
        gone(&api, "snapshot-1").await;
        assert!(lvm.find_snapshot("snapshot-1").await.unwrap().is_none());
        assert!(lvm.lv(VG, "pvc-late").await.unwrap().is_some());

        shutdown.cancel();
        let _ = reconciler.await;
    });
}
