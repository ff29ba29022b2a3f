//! Scenario group 3 (one VM boot): deletion never destroys data in use, in Kubernetes mode.
//!
//! - A filesystem volume, staged, published and written, with a PersistentVolume: a direct
//!   delete of its LogicalVolume is held (`PvProtected`); the CO's DeleteVolume while it is
//!   mounted is held (`VolumeInUse`); unpublish and unstage still work; once released the
//!   deletion completes, and a new volume on the same extents holds no trace of the data.
//! - The same for a raw block volume held open by a process in the VM.
//! - Uninstall while PVs exist (the CRDs deleted: the real API server deletes every custom
//!   object, which then waits on its finalizers; the fake API server has no CRD objects, so the
//!   test deletes every object itself), in the order docs/install.md documents: nothing wiped;
//!   reinstall: the agent adopts the LVs again (`strata.io/adopted`), stage/publish of the old
//!   volumes work, and the PVs' DeleteVolume wipes and removes them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use csi_api::crd::{LogicalVolume, NodeStorage};
use csi_api::names::{self, DeviceClass};
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use strata_tests::csi_client;
use strata_tests::e2e::protocol::Op;

use crate::cluster::{self, Cluster, MIB};

/// xfs's minimum; block volumes may be smaller.
const FS_BYTES: u64 = 320 * MIB;
const BLOCK_BYTES: u64 = 64 * MIB;
/// Bytes of each volume's pattern.
const PATTERN_BYTES: usize = 256 * 1024;

/// A pattern unique to `name` (the marker searched for on reused extents).
fn pattern(name: &str) -> String {
    let line = format!("strata-e2e-pattern {name} ");
    line.repeat(PATTERN_BYTES / line.len() + 1)[..PATTERN_BYTES].to_owned()
}

fn marker(name: &str) -> String {
    format!("strata-e2e-pattern {name} ")
}

fn persistent_volume(volume: &str, bytes: u64, block: bool) -> Value {
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": volume},
        "spec": {
            "capacity": {"storage": bytes.to_string()},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "csi": {"driver": names::DRIVER_NAME, "volumeHandle": volume}
        }
    });
    if block {
        pv["spec"]["volumeMode"] = json!("Block");
    } else {
        pv["spec"]["csi"]["fsType"] = json!("xfs");
    }
    pv
}

async fn exec(c: &Cluster, argv: &[&str]) -> Value {
    c.vm()
        .must(Op::Exec {
            argv: argv.iter().map(|a| a.to_string()).collect(),
        })
        .await
}

/// CreateVolume through the controller (a block or xfs volume on the VM node, with its PV),
/// as external-provisioner does it; `wipe_none` for probe volumes nothing was written to.
async fn create(c: &Cluster, name: &str, class: DeviceClass, block: bool, wipe_none: bool) {
    let bytes = if block { BLOCK_BYTES } else { FS_BYTES };
    let mut req = cluster::create_request(name, class, bytes, None);
    if block {
        req.volume_capabilities = vec![csi_client::block_cap()];
    }
    if wipe_none {
        req.parameters
            .insert(names::PARAM_WIPE.to_owned(), "none".to_owned());
    }
    cluster::create(c.csi(), req, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("CreateVolume {name}: {e}\n{}", c.logs()));
}

/// `vg/lv` of the LV of `name` as the agent reported it, and its device.
async fn lv_of(c: &Cluster, name: &str) -> (String, String) {
    let status = c
        .volume(name)
        .await
        .and_then(|v| v.status)
        .unwrap_or_else(|| panic!("{name} has no status"));
    let vg = status.vg_name.expect("vgName");
    let lv = status.lv_name.expect("lvName");
    (
        format!("{vg}/{lv}"),
        status.device_path.expect("devicePath"),
    )
}

/// The LV's physical extents (`pv:first-last`), and its tags.
async fn extents_and_tags(c: &Cluster, vg_lv: &str) -> (String, String) {
    let out = exec(
        c,
        &[
            "lvs",
            "--noheadings",
            "--separator",
            "|",
            "-o",
            "seg_pe_ranges,lv_tags",
            vg_lv,
        ],
    )
    .await;
    assert_eq!(out["code"], 0, "lvs {vg_lv}: {out}");
    let line = out["stdout"].as_str().unwrap().trim().to_owned();
    let (ranges, tags) = line.split_once('|').unwrap_or((&line, ""));
    (ranges.trim().to_owned(), tags.trim().to_owned())
}

/// Whether `marker` appears anywhere on the device (reads all of it).
async fn device_holds(c: &Cluster, device: &str, marker: &str) -> bool {
    let out = exec(c, &["grep", "-c", "-a", "-F", marker, device]).await;
    match out["code"].as_i64() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("grep {device}: {out}"),
    }
}

/// The notes of the agent's Warning Events `reason` on the LogicalVolume `volume`.
async fn warning_events(c: &Cluster, volume: &str, reason: &str) -> Vec<String> {
    Api::<Event>::all(c.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
                && e.reporting_controller.as_deref() == Some(names::FIELD_MANAGER_AGENT)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(volume)
        })
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

/// Waits until the deleted LogicalVolume is held with `reason` and a Warning Event says so;
/// returns the Event's note.
async fn held(c: &Cluster, name: &str, reason: &str) -> String {
    let note = c
        .eventually(
            &format!("{name} held with {reason}"),
            Duration::from_secs(90),
            || async {
                let lv = c.volume(name).await?;
                let status = lv.status.clone()?;
                if status.reason.as_deref() != Some(reason) {
                    return None;
                }
                warning_events(c, name, reason).await.into_iter().next()
            },
        )
        .await;
    let lv = c.volume(name).await.expect("held, not gone");
    assert!(lv.metadata.deletion_timestamp.is_some());
    assert!(
        lv.finalizers().iter().any(|f| f == names::FINALIZER),
        "the agent's finalizer stays: {:?}",
        lv.finalizers()
    );
    note
}

/// The LV is there, unmarked, on the same extents.
async fn untouched(c: &Cluster, vg_lv: &str, extents: &str) {
    let (now, tags) = extents_and_tags(c, vg_lv).await;
    assert_eq!(now, extents, "{vg_lv} moved");
    assert!(
        !tags.contains("strata.io/wiping") && !tags.contains("strata.io/wiped"),
        "{vg_lv} was marked for wiping: {tags}"
    );
}

/// One volume (filesystem or raw block) through the held deletions described in the module head.
async fn held_while_in_use(c: &Cluster, name: &str, class: DeviceClass, block: bool) {
    let fs = if block { "block" } else { "xfs" };
    let bytes = if block { BLOCK_BYTES } else { FS_BYTES };
    create(c, name, class, block, false).await;
    c.api.seed(&persistent_volume(name, bytes, block)).unwrap();
    let (vg_lv, device) = lv_of(c, name).await;
    let (extents, _) = extents_and_tags(c, &vg_lv).await;
    let staging = format!("/run/e2e/staging/{name}");
    let target = format!("/run/e2e/pods/{name}/volume");
    let vm = c.vm();
    vm.must(Op::Stage {
        volume_id: name.into(),
        staging: staging.clone(),
        fs_type: fs.into(),
    })
    .await;
    if block {
        exec(c, &["mkdir", "-p", &format!("/run/e2e/pods/{name}")]).await;
    }
    vm.must(Op::NodePublish {
        volume_id: name.into(),
        staging: staging.clone(),
        target: target.clone(),
        fs_type: fs.into(),
    })
    .await;
    let pattern = pattern(name);
    let source = format!("/run/e2e/pattern-{name}");
    vm.must(Op::WriteFile {
        path: source.clone(),
        content: pattern.clone(),
    })
    .await;
    // The data: a file on the filesystem, or the first bytes of the published device.
    let intact = || async {
        if block {
            let out = exec(
                c,
                &["cmp", "-n", &PATTERN_BYTES.to_string(), &source, &device],
            )
            .await;
            assert_eq!(out["code"], 0, "{name}: the pattern changed: {out}");
        } else {
            let file = format!("{target}/pattern");
            let read = c.vm().must(Op::ReadFile { path: file }).await;
            assert!(
                read.as_str() == Some(pattern.as_str()),
                "{name}: the file changed"
            );
        }
    };
    if block {
        let out = exec(
            c,
            &[
                "dd",
                &format!("if={source}"),
                &format!("of={target}"),
                "bs=64K",
                "oflag=direct",
                "conv=fsync,notrunc",
            ],
        )
        .await;
        assert_eq!(out["code"], 0, "dd: {out}");
        // In use by a process, not by a mount: published and staged no more.
        vm.must(Op::HoldOpen {
            path: device.clone(),
        })
        .await;
        vm.must(Op::NodeUnpublish {
            volume_id: name.into(),
            target: target.clone(),
        })
        .await;
        vm.must(Op::NodeUnstage {
            volume_id: name.into(),
            staging: staging.clone(),
        })
        .await;
    } else {
        vm.must(Op::WriteFile {
            path: format!("{target}/pattern"),
            content: pattern.clone(),
        })
        .await;
    }
    intact().await;

    // `kubectl delete logicalvolume`: the PV still refers to it.
    c.volumes()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let note = held(c, name, names::REASON_PV_PROTECTED).await;
    assert!(note.contains("delete the PersistentVolumeClaim"), "{note}");
    untouched(c, &vg_lv, &extents).await;
    intact().await;
    eprintln!("e2e [{}]: {name}: direct delete held (PvProtected)", c.at());

    // The CO's DeleteVolume (reclaim policy Delete; the PV goes after it) while still in use.
    c.delete(name)
        .await
        .unwrap_or_else(|e| panic!("DeleteVolume {name}: {e}"));
    Api::<PersistentVolume>::all(c.client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let note = held(c, name, names::REASON_VOLUME_IN_USE).await;
    if block {
        assert!(note.contains("sleep"), "the holder is named: {note}");
    } else {
        assert!(note.contains("mounted"), "the mount is named: {note}");
    }
    untouched(c, &vg_lv, &extents).await;
    intact().await;
    eprintln!("e2e [{}]: {name}: DeleteVolume held (VolumeInUse)", c.at());

    // Release it: unpublish and unstage work on a volume whose deletion is held.
    let released = Instant::now();
    if block {
        vm.must(Op::Release { path: device }).await;
    } else {
        vm.must(Op::NodeUnpublish {
            volume_id: name.into(),
            target,
        })
        .await;
        vm.must(Op::NodeUnstage {
            volume_id: name.into(),
            staging,
        })
        .await;
    }
    c.wait_gone(name).await;
    assert!(!c.strata_lvs().await.contains_key(name), "{name}: LV left");
    eprintln!(
        "e2e [{}]: {name}: deletion completed {:?} after release",
        c.at(),
        released.elapsed()
    );

    // A new volume on the same extents shows no trace of the pattern.
    let probe = format!("{name}-probe");
    create(c, &probe, class, block, true).await;
    let (probe_lv, probe_device) = lv_of(c, &probe).await;
    let (probe_extents, _) = extents_and_tags(c, &probe_lv).await;
    let first = |ranges: &str| ranges.split('-').next().unwrap_or_default().to_owned();
    assert_eq!(
        first(&probe_extents),
        first(&extents),
        "the probe starts on the old volume's first extent"
    );
    assert!(
        !device_holds(c, &probe_device, &marker(name)).await,
        "{probe} ({probe_extents}) holds the pattern of {name} ({extents})"
    );
    c.delete(&probe).await.unwrap();
    c.wait_gone(&probe).await;
}

pub async fn held_while_in_use_fs_and_block(c: &Cluster) {
    let t = Instant::now();
    tokio::join!(
        held_while_in_use(c, "pvc-del-fs", DeviceClass::Ssd, false),
        held_while_in_use(c, "pvc-del-blk", DeviceClass::Nvme, true),
    );
    c.converged(&BTreeSet::new()).await;
    eprintln!(
        "e2e [{}]: held deletions (fs, block) checked in {:?}",
        c.at(),
        t.elapsed()
    );
}

/// A volume with its PV and a pattern (a file, or the device's first bytes), left unstaged:
/// only its PV protects it. Returns `(name, vg/lv, device, extents, block)`.
async fn kept_volume(
    c: &Cluster,
    name: &'static str,
    class: DeviceClass,
    block: bool,
) -> (&'static str, String, String, String, bool) {
    let fs = if block { "block" } else { "xfs" };
    let bytes = if block { BLOCK_BYTES } else { FS_BYTES };
    create(c, name, class, block, false).await;
    c.api.seed(&persistent_volume(name, bytes, block)).unwrap();
    let (vg_lv, device) = lv_of(c, name).await;
    let (extents, _) = extents_and_tags(c, &vg_lv).await;
    let staging = format!("/run/e2e/staging/{name}");
    let target = format!("/run/e2e/pods/{name}/volume");
    let vm = c.vm();
    let source = format!("/run/e2e/pattern-{name}");
    vm.must(Op::WriteFile {
        path: source.clone(),
        content: pattern(name),
    })
    .await;
    vm.must(Op::Stage {
        volume_id: name.into(),
        staging: staging.clone(),
        fs_type: fs.into(),
    })
    .await;
    if block {
        let out = exec(
            c,
            &[
                "dd",
                &format!("if={source}"),
                &format!("of={device}"),
                "bs=64K",
                "oflag=direct",
                "conv=fsync,notrunc",
            ],
        )
        .await;
        assert_eq!(out["code"], 0, "dd: {out}");
    } else {
        vm.must(Op::NodePublish {
            volume_id: name.into(),
            staging: staging.clone(),
            target: target.clone(),
            fs_type: fs.into(),
        })
        .await;
        vm.must(Op::WriteFile {
            path: format!("{target}/pattern"),
            content: pattern(name),
        })
        .await;
        vm.must(Op::NodeUnpublish {
            volume_id: name.into(),
            target,
        })
        .await;
    }
    // Not in use: only the PV protects it.
    vm.must(Op::NodeUnstage {
        volume_id: name.into(),
        staging,
    })
    .await;
    (name, vg_lv, device, extents, block)
}

/// Uninstall with PVs present, then reinstall.
pub async fn uninstall_keeps_every_byte_and_reinstall_finds_the_volumes(c: &mut Cluster) {
    let t = Instant::now();
    let volumes = [
        ("pvc-keep-fs", DeviceClass::Ssd, false),
        ("pvc-keep-blk", DeviceClass::Hdd, true),
    ];
    // Both made at once (each step waits on the VM).
    let lvs = futures::future::join_all(
        volumes
            .into_iter()
            .map(|(name, class, block)| kept_volume(c, name, class, block)),
    )
    .await;

    // `kubectl delete -k deploy/`: the CRDs go, and with them every object (held by finalizers).
    for (name, ..) in &lvs {
        c.volumes()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for (name, vg_lv, _, extents, _) in &lvs {
        held(c, name, names::REASON_PV_PROTECTED).await;
        untouched(c, vg_lv, extents).await;
    }
    eprintln!(
        "e2e [{}]: CRDs deleted with agents running: every LV kept (PvProtected)",
        c.at()
    );
    // Then, as docs/install.md says: the agents stop (the DaemonSet is gone), then the
    // finalizers go; the controller is gone with its Deployment.
    if let Some(mut controller) = c.controller.take() {
        controller.process.stop();
    }
    c.stop_agent(false).await;
    for (name, ..) in &lvs {
        let patch = json!({"metadata": {"finalizers": null}});
        c.volumes()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        assert!(c.volume(name).await.is_none(), "{name} is gone");
    }
    let _ = Api::<NodeStorage>::all(c.client.clone())
        .delete(cluster::NODE, &DeleteParams::default())
        .await;
    let left = c.strata_lvs().await;
    for (name, vg_lv, device, extents, _) in &lvs {
        assert!(left.contains_key(*name), "{name}: LV kept after uninstall");
        untouched(c, vg_lv, extents).await;
        assert!(
            device_holds(c, device, &marker(name)).await,
            "{name}: pattern on the LV"
        );
    }
    eprintln!(
        "e2e [{}]: uninstalled: LVs and patterns intact, no object left",
        c.at()
    );

    // Reinstall: CRDs (always served by the fake), agent and controller back.
    c.start_agent(None).await;
    c.restart_controller(cluster::CONTROLLER_ARGS, None).await;
    let names_kept: BTreeSet<String> = lvs.iter().map(|l| l.0.to_owned()).collect();
    c.converged(&names_kept).await;
    for (name, ..) in &lvs {
        let lv: LogicalVolume = c.volume(name).await.unwrap();
        assert!(
            lv.annotations()
                .contains_key(csi_agent_adopted_annotation()),
            "{name} adopted: {:?}",
            lv.annotations()
        );
        assert_eq!(
            lv.finalizers(),
            [names::FINALIZER, names::FINALIZER_PV_PROTECTION]
        );
    }
    eprintln!("e2e [{}]: reinstalled: both volumes adopted", c.at());

    // Stage/publish of the old volumes work again, with their data.
    let vm = c.vm();
    for (name, _, device, _, block) in &lvs {
        let fs = if *block { "block" } else { "xfs" };
        let staging = format!("/run/e2e/staging/{name}");
        let target = format!("/run/e2e/pods/{name}/volume");
        vm.must(Op::Stage {
            volume_id: name.to_string(),
            staging: staging.clone(),
            fs_type: fs.into(),
        })
        .await;
        if *block {
            let source = format!("/run/e2e/pattern-{name}");
            let out = exec(
                c,
                &["cmp", "-n", &PATTERN_BYTES.to_string(), &source, device],
            )
            .await;
            assert_eq!(out["code"], 0, "{name}: the pattern changed: {out}");
        } else {
            vm.must(Op::NodePublish {
                volume_id: name.to_string(),
                staging: staging.clone(),
                target: target.clone(),
                fs_type: fs.into(),
            })
            .await;
            let read = vm
                .must(Op::ReadFile {
                    path: format!("{target}/pattern"),
                })
                .await;
            assert!(
                read.as_str() == Some(pattern(name).as_str()),
                "{name}: file changed"
            );
            vm.must(Op::NodeUnpublish {
                volume_id: name.to_string(),
                target,
            })
            .await;
        }
        vm.must(Op::NodeUnstage {
            volume_id: name.to_string(),
            staging,
        })
        .await;
    }
    // The PVs' DeleteVolume wipes and removes them.
    for (name, ..) in &lvs {
        c.delete(name).await.unwrap();
        Api::<PersistentVolume>::all(c.client.clone())
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for (name, ..) in &lvs {
        c.wait_gone(name).await;
    }
    c.converged(&BTreeSet::new()).await;
    eprintln!(
        "e2e [{}]: uninstall and reinstall checked in {:?}",
        c.at(),
        t.elapsed()
    );
}

/// The annotation the agent puts on an object it made again for an LV (csi-agent's
/// `kubernetes::adopt::ANNOTATION_ADOPTED`).
fn csi_agent_adopted_annotation() -> &'static str {
    csi_agent::kubernetes::adopt::ANNOTATION_ADOPTED
}
