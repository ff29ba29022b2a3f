//! The cases, in the order they run (each cleans up what it made; state checks are on `lvs` and
//! mountinfo). Sizes are small (the lab has 16 GiB of NVMe, 4 GiB SSD, 16 GiB HDD).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use csi_api::csi::controller_service_capability::rpc::Type as CtrlRpc;
use csi_api::csi::node_service_capability::rpc::Type as NodeRpc;
use csi_api::csi::plugin_capability::service::Type as ServiceType;
use csi_api::csi::plugin_capability::volume_expansion::Type as ExpansionType;
use csi_api::csi::volume_capability::access_mode::Mode;
use csi_api::csi::{self, CapacityRange, Topology, TopologyRequirement, volume_usage::Unit};
use csi_api::names;
use strata_tests::csi_client::{
    Agent, block_cap, create_request, mount_cap, mount_cap_mode, publish_request, stage_request,
    unpublish_request, unstage_request,
};
use tonic::Code;

use super::check::{self, code, ok};
use super::{CaseFn, Ctx};

const MI: i64 = 1 << 20;
const GI: i64 = 1 << 30;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        pub const ALL: &[(&str, CaseFn)] = &[
            $((stringify!($name), |ctx, agent| Box::pin($name(ctx, agent))),)*
        ];
    };
}

cases!(
    identity_info_capabilities_probe,
    controller_and_node_capabilities,
    node_info_has_node_topology,
    create_each_class_idempotent_and_tagged,
    create_conflicting_repeat_is_already_exists,
    create_bad_input_changes_nothing,
    create_beyond_capacity_or_topology,
    delete_is_idempotent,
    validate_volume_capabilities,
    list_volumes_paging,
    get_capacity_per_class,
    concurrent_calls_for_one_volume,
    mount_lifecycle_xfs,
    mount_lifecycle_ext4_with_flags,
    block_lifecycle,
    never_reformats,
    expansion_keeps_data_xfs,
    expansion_keeps_data_ext4,
    node_bad_input,
    stats_condition_when_mount_is_lost,
    unpublish_refuses_foreign_mounts,
    restart_keeps_volumes,
    shutdown_finishes_in_flight_calls,
);

// ---- helpers ------------------------------------------------------------------------------

fn params(class: &str) -> HashMap<String, String> {
    HashMap::from([(names::PARAM_DEVICE_CLASS.to_owned(), class.to_owned())])
}

async fn create(
    ctx: &Ctx,
    name: &str,
    class: &str,
    bytes: i64,
    cap: csi::VolumeCapability,
) -> Result<csi::Volume> {
    let resp = ok(
        "CreateVolume",
        ctx.csi
            .controller
            .clone()
            .create_volume(create_request(name, class, bytes, cap))
            .await,
    )?;
    resp.volume.context("CreateVolume returned no volume")
}

/// DeleteVolume, then (the answer comes once the LV is marked; the agent wipes and removes it
/// in the background) waits until no LV carries the volume's tag, as a CO waiting for the space.
async fn delete(ctx: &Ctx, id: &str) -> Result<()> {
    ok(
        "DeleteVolume",
        ctx.csi
            .controller
            .clone()
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.into(),
                secrets: HashMap::new(),
            })
            .await,
    )?;
    let start = std::time::Instant::now();
    while check::lv_of(id)?.is_some() {
        ensure!(
            start.elapsed() < Duration::from_secs(600),
            "LV of {id} not removed 600 s after DeleteVolume"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn list_ids(ctx: &Ctx) -> Result<Vec<String>> {
    let resp = ok(
        "ListVolumes",
        ctx.csi
            .controller
            .clone()
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
    )?;
    Ok(resp
        .entries
        .into_iter()
        .filter_map(|e| e.volume.map(|v| v.volume_id))
        .collect())
}

fn paths(ctx: &Ctx, name: &str) -> (PathBuf, PathBuf) {
    let base = ctx.dir.join(name);
    (base.join("staging"), base.join("pods/target"))
}

async fn stage(ctx: &Ctx, id: &str, staging: &Path, cap: csi::VolumeCapability) -> Result<()> {
    std::fs::create_dir_all(staging)?;
    ok(
        "NodeStageVolume",
        ctx.csi
            .node
            .clone()
            .node_stage_volume(stage_request(id, staging, cap))
            .await,
    )
    .map(drop)
}

async fn publish(
    ctx: &Ctx,
    id: &str,
    staging: &Path,
    target: &Path,
    cap: csi::VolumeCapability,
    ro: bool,
) -> Result<()> {
    ok(
        "NodePublishVolume",
        ctx.csi
            .node
            .clone()
            .node_publish_volume(publish_request(id, staging, target, cap, ro))
            .await,
    )
    .map(drop)
}

async fn unpublish(ctx: &Ctx, id: &str, target: &Path) -> Result<()> {
    ok(
        "NodeUnpublishVolume",
        ctx.csi
            .node
            .clone()
            .node_unpublish_volume(unpublish_request(id, target))
            .await,
    )
    .map(drop)
}

async fn unstage(ctx: &Ctx, id: &str, staging: &Path) -> Result<()> {
    ok(
        "NodeUnstageVolume",
        ctx.csi
            .node
            .clone()
            .node_unstage_volume(unstage_request(id, staging))
            .await,
    )
    .map(drop)
}

async fn stats(ctx: &Ctx, id: &str, path: &Path) -> Result<csi::NodeGetVolumeStatsResponse> {
    ok(
        "NodeGetVolumeStats",
        ctx.csi
            .node
            .clone()
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: id.into(),
                volume_path: path.to_string_lossy().into_owned(),
                staging_target_path: String::new(),
            })
            .await,
    )
}

fn usage(resp: &csi::NodeGetVolumeStatsResponse, unit: Unit) -> Option<csi::VolumeUsage> {
    resp.usage.iter().find(|u| u.unit == unit as i32).cloned()
}

fn device_of(volume: &str) -> Result<PathBuf> {
    let (vg, lv) = check::lv_of(volume)?.context("no LV carries the volume's tag")?;
    Ok(PathBuf::from(format!("/dev/{vg}/{lv}")))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---- Identity -----------------------------------------------------------------------------

async fn identity_info_capabilities_probe(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let mut id = ctx.csi.identity.clone();
    let info = ok(
        "GetPluginInfo",
        id.get_plugin_info(csi::GetPluginInfoRequest {}).await,
    )?;
    ensure!(info.name == names::DRIVER_NAME, "name {}", info.name);
    ensure!(
        !info.vendor_version.is_empty(),
        "vendor_version MUST be set"
    );
    let caps = ok(
        "GetPluginCapabilities",
        id.get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
            .await,
    )?;
    let mut services = Vec::new();
    let mut expansion = Vec::new();
    for c in caps.capabilities {
        match c.r#type {
            Some(csi::plugin_capability::Type::Service(s)) => services.push(s.r#type),
            Some(csi::plugin_capability::Type::VolumeExpansion(e)) => expansion.push(e.r#type),
            None => {}
        }
    }
    ensure!(
        services.contains(&(ServiceType::ControllerService as i32)),
        "CONTROLLER_SERVICE"
    );
    ensure!(
        services.contains(&(ServiceType::VolumeAccessibilityConstraints as i32)),
        "VOLUME_ACCESSIBILITY_CONSTRAINTS"
    );
    ensure!(
        expansion == [ExpansionType::Online as i32],
        "ONLINE expansion: {expansion:?}"
    );
    let probe = ok("Probe", id.probe(csi::ProbeRequest {}).await)?;
    ensure!(probe.ready != Some(false), "Probe not ready after start");
    Ok(())
}

async fn controller_and_node_capabilities(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let caps = ok(
        "ControllerGetCapabilities",
        ctx.csi
            .controller
            .clone()
            .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
            .await,
    )?;
    let rpcs: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|csi::controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    for want in [
        CtrlRpc::CreateDeleteVolume,
        CtrlRpc::ListVolumes,
        CtrlRpc::GetCapacity,
        CtrlRpc::ExpandVolume,
    ] {
        ensure!(
            rpcs.contains(&(want as i32)),
            "controller capability {want:?} missing"
        );
    }
    ensure!(
        !rpcs.contains(&(CtrlRpc::PublishUnpublishVolume as i32)),
        "no ControllerPublish"
    );
    // A call the plugin does not advertise is UNIMPLEMENTED.
    code(
        "ControllerPublishVolume",
        ctx.csi
            .controller
            .clone()
            .controller_publish_volume(csi::ControllerPublishVolumeRequest::default())
            .await,
        Code::Unimplemented,
    )?;
    let node_caps = ok(
        "NodeGetCapabilities",
        ctx.csi
            .node
            .clone()
            .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
            .await,
    )?;
    let rpcs: Vec<i32> = node_caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|csi::node_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    for want in [
        NodeRpc::StageUnstageVolume,
        NodeRpc::ExpandVolume,
        NodeRpc::GetVolumeStats,
        NodeRpc::VolumeCondition,
    ] {
        ensure!(
            rpcs.contains(&(want as i32)),
            "node capability {want:?} missing"
        );
    }
    Ok(())
}

async fn node_info_has_node_topology(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let info = ok(
        "NodeGetInfo",
        ctx.csi
            .node
            .clone()
            .node_get_info(csi::NodeGetInfoRequest {})
            .await,
    )?;
    ensure!(info.node_id == ctx.node, "node_id {}", info.node_id);
    let topo = info.accessible_topology.context("accessible_topology")?;
    ensure!(
        topo.segments.get(names::TOPOLOGY_KEY) == Some(&ctx.node),
        "{topo:?}"
    );
    Ok(())
}

// ---- Controller ---------------------------------------------------------------------------

async fn create_each_class_idempotent_and_tagged(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
    for class in ["nvme", "ssd", "hdd"] {
        let name = format!("cv-{class}");
        let v = create(ctx, &name, class, 500 * MI, mount_cap("", &[])).await?;
        ensure!(
            v.capacity_bytes >= 500 * MI,
            "capacity {} < required",
            v.capacity_bytes
        );
        ensure!(!v.volume_id.is_empty(), "volume_id MUST be set");
        let topo = v
            .accessible_topology
            .first()
            .context("accessible_topology")?;
        ensure!(
            topo.segments.get(names::TOPOLOGY_KEY) == Some(&ctx.node),
            "{topo:?}"
        );
        let (vg, _) = check::lv_of(&v.volume_id)?.context("LV with the volume tag")?;
        ensure!(vg == format!("strata-{class}"), "LV in {vg}");
        // The same call again: the same volume, one LV.
        let again = create(ctx, &name, class, 500 * MI, mount_cap("", &[])).await?;
        ensure!(
            again.volume_id == v.volume_id && again.capacity_bytes == v.capacity_bytes,
            "repeat differs"
        );
        let count = check::lvs()?
            .iter()
            .filter(|(_, lv, _)| *lv == name)
            .count();
        ensure!(count == 1, "{count} LVs named {name}");
        delete(ctx, &v.volume_id).await?;
        ensure!(
            check::lv_of(&v.volume_id)?.is_none(),
            "LV left after DeleteVolume"
        );
    }
    Ok(())
}

async fn create_conflicting_repeat_is_already_exists(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
    let v = create(ctx, "conflict", "nvme", 400 * MI, mount_cap("", &[])).await?;
    let mut ctl = ctx.csi.controller.clone();
    code(
        "bigger repeat",
        ctl.create_volume(create_request(
            "conflict",
            "nvme",
            2 * GI,
            mount_cap("", &[]),
        ))
        .await,
        Code::AlreadyExists,
    )?;
    code(
        "other class",
        ctl.create_volume(create_request(
            "conflict",
            "hdd",
            400 * MI,
            mount_cap("", &[]),
        ))
        .await,
        Code::AlreadyExists,
    )?;
    ensure!(
        check::lv_of("conflict")?.is_some(),
        "the existing volume survives"
    );
    delete(ctx, &v.volume_id).await
}

async fn create_bad_input_changes_nothing(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let before = check::lvs()?.len();
    let listed = list_ids(ctx).await?;
    let base = || create_request("bad-input", "nvme", GI, mount_cap("", &[]));
    let mut cases: Vec<(&str, csi::CreateVolumeRequest, Code)> = Vec::new();
    let mut r = base();
    r.name.clear();
    cases.push(("empty name", r, Code::InvalidArgument));
    let mut r = base();
    r.volume_capabilities.clear();
    cases.push(("no capabilities", r, Code::InvalidArgument));
    let mut r = base();
    r.parameters.clear();
    cases.push(("no device class", r, Code::InvalidArgument));
    cases.push((
        "unknown class",
        create_request("bad-input", "tape", GI, mount_cap("", &[])),
        Code::InvalidArgument,
    ));
    let mut r = base();
    r.parameters.insert("strata.io/speed".into(), "fast".into());
    cases.push(("unknown parameter", r, Code::InvalidArgument));
    cases.push((
        "negative size",
        create_request("bad-input", "nvme", -GI, mount_cap("", &[])),
        Code::InvalidArgument,
    ));
    let mut r = base();
    r.capacity_range = Some(CapacityRange {
        required_bytes: 2 * GI,
        limit_bytes: GI,
    });
    cases.push(("limit below required", r, Code::InvalidArgument));
    cases.push((
        "absurd size",
        create_request("bad-input", "nvme", i64::MAX, mount_cap("", &[])),
        Code::OutOfRange,
    ));
    cases.push((
        "1 PiB",
        create_request("bad-input", "nvme", 1 << 50, mount_cap("", &[])),
        Code::ResourceExhausted,
    ));
    for mode in [
        Mode::MultiNodeMultiWriter,
        Mode::MultiNodeReaderOnly,
        Mode::MultiNodeSingleWriter,
    ] {
        let r = create_request("bad-input", "nvme", GI, mount_cap_mode("", &[], mode));
        cases.push(("multi-node access mode", r, Code::InvalidArgument));
    }
    cases.push((
        "unsupported fs",
        create_request("bad-input", "nvme", GI, mount_cap("btrfs", &[])),
        Code::InvalidArgument,
    ));
    cases.push((
        "forbidden mount flag",
        create_request("bad-input", "nvme", GI, mount_cap("xfs", &["bind"])),
        Code::InvalidArgument,
    ));
    let mut r = base();
    r.volume_content_source = Some(csi::VolumeContentSource::default());
    cases.push(("content source", r, Code::InvalidArgument));
    let mut r = base();
    r.capacity_range = Some(CapacityRange {
        required_bytes: MI,
        limit_bytes: 2 * MI,
    });
    cases.push(("range below xfs minimum", r, Code::OutOfRange));
    for (what, req, want) in cases {
        code(
            what,
            ctx.csi.controller.clone().create_volume(req).await,
            want,
        )?;
    }
    ensure!(check::lvs()?.len() == before, "an LV appeared");
    ensure!(list_ids(ctx).await? == listed, "ListVolumes changed");
    Ok(())
}

async fn create_beyond_capacity_or_topology(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let mut elsewhere = create_request("topo", "nvme", GI, mount_cap("", &[]));
    elsewhere.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![Topology {
            segments: HashMap::from([(names::TOPOLOGY_KEY.to_owned(), "other-node".to_owned())]),
        }],
        preferred: vec![],
    });
    code(
        "requisite topology of another node",
        ctx.csi.controller.clone().create_volume(elsewhere).await,
        Code::ResourceExhausted,
    )?;
    // more than the SSD class holds (one 4 GiB disk)
    code(
        "more than the class",
        ctx.csi
            .controller
            .clone()
            .create_volume(create_request("too-big", "ssd", 5 * GI, mount_cap("", &[])))
            .await,
        Code::ResourceExhausted,
    )?;
    ensure!(
        check::lv_of("topo")?.is_none() && check::lv_of("too-big")?.is_none(),
        "LV made"
    );
    Ok(())
}

async fn delete_is_idempotent(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let v = create(ctx, "del", "hdd", 300 * MI, mount_cap("", &[])).await?;
    delete(ctx, &v.volume_id).await?;
    delete(ctx, &v.volume_id).await?;
    delete(ctx, "never-existed").await?;
    code(
        "empty volume_id",
        ctx.csi
            .controller
            .clone()
            .delete_volume(csi::DeleteVolumeRequest::default())
            .await,
        Code::InvalidArgument,
    )?;
    ensure!(check::lv_of("del")?.is_none(), "LV left");
    Ok(())
}

async fn validate_volume_capabilities(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let v = create(ctx, "vvc", "nvme", 300 * MI, mount_cap("", &[])).await?;
    let req = |id: &str, caps: Vec<csi::VolumeCapability>| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let mut ctl = ctx.csi.controller.clone();
    let yes = ok(
        "supported",
        ctl.validate_volume_capabilities(req(
            &v.volume_id,
            vec![mount_cap("xfs", &[]), block_cap()],
        ))
        .await,
    )?;
    ensure!(
        yes.confirmed.is_some(),
        "supported capabilities MUST be confirmed"
    );
    let no = ok(
        "multi-node",
        ctl.validate_volume_capabilities(req(
            &v.volume_id,
            vec![mount_cap_mode("", &[], Mode::MultiNodeMultiWriter)],
        ))
        .await,
    )?;
    ensure!(
        no.confirmed.is_none() && !no.message.is_empty(),
        "multi-node confirmed"
    );
    code(
        "unknown volume",
        ctl.validate_volume_capabilities(req("nope", vec![block_cap()]))
            .await,
        Code::NotFound,
    )?;
    code(
        "empty id",
        ctl.validate_volume_capabilities(req("", vec![block_cap()]))
            .await,
        Code::InvalidArgument,
    )?;
    code(
        "no capabilities",
        ctl.validate_volume_capabilities(req(&v.volume_id, vec![]))
            .await,
        Code::InvalidArgument,
    )?;
    delete(ctx, &v.volume_id).await
}

async fn list_volumes_paging(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let names: Vec<String> = (0..4).map(|i| format!("list-{i}")).collect();
    for n in &names {
        create(ctx, n, "hdd", 100 * MI, block_cap()).await?;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = ok(
            "ListVolumes page",
            ctx.csi
                .controller
                .clone()
                .list_volumes(csi::ListVolumesRequest {
                    max_entries: 1,
                    starting_token: token.clone(),
                })
                .await,
        )?;
        pages += 1;
        ensure!(page.entries.len() <= 1, "max_entries exceeded");
        for e in &page.entries {
            let v = e.volume.as_ref().context("entry without volume")?;
            ensure!(
                !v.accessible_topology.is_empty(),
                "listed volume without topology"
            );
            seen.push(v.volume_id.clone());
        }
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
        ensure!(pages < 100, "paging does not end");
    }
    for n in &names {
        ensure!(
            seen.iter().filter(|s| *s == n).count() == 1,
            "{n} seen {seen:?}"
        );
    }
    code(
        "bad starting_token",
        ctx.csi
            .controller
            .clone()
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 0,
                starting_token: "invalid-token".into(),
            })
            .await,
        Code::Aborted,
    )?;
    code(
        "negative max_entries",
        ctx.csi
            .controller
            .clone()
            .list_volumes(csi::ListVolumesRequest {
                max_entries: -1,
                starting_token: String::new(),
            })
            .await,
        Code::InvalidArgument,
    )?;
    for n in &names {
        delete(ctx, n).await?;
    }
    Ok(())
}

async fn get_capacity_per_class(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let cap = |class: &str| csi::GetCapacityRequest {
        volume_capabilities: vec![],
        parameters: params(class),
        accessible_topology: None,
    };
    let mut ctl = ctx.csi.controller.clone();
    let mut available = HashMap::new();
    for class in ["nvme", "ssd", "hdd"] {
        let c = ok("GetCapacity", ctl.get_capacity(cap(class)).await)?;
        ensure!(
            c.available_capacity > GI,
            "{class}: {} bytes",
            c.available_capacity
        );
        available.insert(class, c.available_capacity);
    }
    // the two 8 GiB NVMe disks are one class
    ensure!(
        available["nvme"] > 15 * GI,
        "nvme holds both disks: {}",
        available["nvme"]
    );
    let v = create(ctx, "cap", "ssd", GI, block_cap()).await?;
    let after = ok("GetCapacity", ctl.get_capacity(cap("ssd")).await)?;
    ensure!(
        available["ssd"] - after.available_capacity == v.capacity_bytes,
        "ssd capacity went from {} to {} for a {}-byte volume",
        available["ssd"],
        after.available_capacity,
        v.capacity_bytes
    );
    code(
        "unknown class",
        ctl.get_capacity(cap("tape")).await,
        Code::InvalidArgument,
    )?;
    let other = ok(
        "other node",
        ctl.get_capacity(csi::GetCapacityRequest {
            accessible_topology: Some(Topology {
                segments: HashMap::from([(
                    names::TOPOLOGY_KEY.to_owned(),
                    "other-node".to_owned(),
                )]),
            }),
            ..cap("ssd")
        })
        .await,
    )?;
    ensure!(
        other.available_capacity == 0,
        "capacity reported for another node"
    );
    delete(ctx, &v.volume_id).await
}

async fn concurrent_calls_for_one_volume(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let calls = (0..4).map(|_| {
        let mut ctl = ctx.csi.controller.clone();
        async move {
            ctl.create_volume(create_request("race", "nvme", 300 * MI, mount_cap("", &[])))
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let oks = results.iter().filter(|r| r.is_ok()).count();
    for r in &results {
        if let Err(s) = r {
            ensure!(
                s.code() == Code::Aborted,
                "a concurrent call failed with {:?}: {}",
                s.code(),
                s.message()
            );
        }
    }
    ensure!(oks >= 1, "no call succeeded");
    let lvs = check::lvs()?
        .iter()
        .filter(|(_, lv, _)| lv == "race")
        .count();
    ensure!(lvs == 1, "{lvs} LVs for one name");
    delete(ctx, "race").await
}

// ---- Node ---------------------------------------------------------------------------------

async fn mount_lifecycle_xfs(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let cap = mount_cap("xfs", &[]);
    let v = create(ctx, "life-xfs", "nvme", 512 * MI, cap.clone()).await?;
    let id = v.volume_id.clone();
    let (staging, target) = paths(ctx, "life-xfs");
    let ro_target = target.with_file_name("ro-target");
    stage(ctx, &id, &staging, cap.clone()).await?;
    let (fs, _, _) = check::mount_at(&staging)?.context("staging not mounted")?;
    ensure!(fs == "xfs", "staged as {fs}");
    ensure!(
        check::fs_type(&device_of(&id)?)?.as_deref() == Some("xfs"),
        "blkid TYPE"
    );
    stage(ctx, &id, &staging, cap.clone())
        .await
        .context("repeat stage")?;
    publish(ctx, &id, &staging, &target, cap.clone(), false).await?;
    publish(ctx, &id, &staging, &target, cap.clone(), false)
        .await
        .context("repeat publish")?;
    code(
        "publish the same target read-only",
        ctx.csi
            .node
            .clone()
            .node_publish_volume(publish_request(&id, &staging, &target, cap.clone(), true))
            .await,
        Code::AlreadyExists,
    )?;
    let data = pattern(1 << 20, 7);
    std::fs::write(target.join("file"), &data)?;
    ensure!(
        std::fs::read(staging.join("file"))? == data,
        "data not visible through staging"
    );
    publish(ctx, &id, &staging, &ro_target, cap.clone(), true).await?;
    let (_, _, opts) = check::mount_at(&ro_target)?.context("ro target not mounted")?;
    ensure!(
        opts.split(',').any(|o| o == "ro"),
        "read-only publish mounted {opts}"
    );
    let err =
        std::fs::write(ro_target.join("other"), b"x").expect_err("write on a read-only publish");
    ensure!(
        err.raw_os_error() == Some(nix::libc::EROFS),
        "write error {err}"
    );
    ensure!(
        std::fs::read(ro_target.join("file"))? == data,
        "read through ro publish"
    );
    let st = stats(ctx, &id, &target).await?;
    let bytes = usage(&st, Unit::Bytes).context("bytes usage")?;
    let inodes = usage(&st, Unit::Inodes).context("inodes usage")?;
    ensure!(
        bytes.total > 400 * MI && bytes.total <= v.capacity_bytes,
        "total {}",
        bytes.total
    );
    ensure!(
        bytes.used >= 1 << 20 && bytes.available < bytes.total,
        "{bytes:?}"
    );
    ensure!(inodes.total > 0 && inodes.used >= 1, "{inodes:?}");
    ensure!(
        st.volume_condition.as_ref().is_some_and(|c| !c.abnormal),
        "{:?}",
        st.volume_condition
    );
    for t in [&target, &ro_target] {
        unpublish(ctx, &id, t).await?;
        ensure!(check::mount_at(t)?.is_none(), "still mounted");
        ensure!(!t.exists(), "target path MUST be removed by the plugin");
        unpublish(ctx, &id, t).await.context("repeat unpublish")?;
    }
    unstage(ctx, &id, &staging).await?;
    ensure!(
        check::mount_at(&staging)?.is_none(),
        "staging still mounted"
    );
    unstage(ctx, &id, &staging)
        .await
        .context("repeat unstage")?;
    // Staged again: the same filesystem, the data is there.
    stage(ctx, &id, &staging, cap.clone()).await?;
    ensure!(
        std::fs::read(staging.join("file"))? == data,
        "data lost across unstage/stage"
    );
    unstage(ctx, &id, &staging).await?;
    delete(ctx, &id).await
}

async fn mount_lifecycle_ext4_with_flags(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let cap = mount_cap("ext4", &["noatime", "nodev"]);
    let v = create(ctx, "life-ext4", "ssd", 256 * MI, cap.clone()).await?;
    let id = v.volume_id.clone();
    let (staging, target) = paths(ctx, "life-ext4");
    stage(ctx, &id, &staging, cap.clone()).await?;
    let (fs, _, opts) = check::mount_at(&staging)?.context("not staged")?;
    ensure!(fs == "ext4", "staged as {fs}");
    for flag in ["noatime", "nodev"] {
        ensure!(
            opts.split(',').any(|o| o == flag),
            "mount flag {flag} not applied: {opts}"
        );
    }
    publish(ctx, &id, &staging, &target, cap.clone(), false).await?;
    std::fs::write(target.join("hello"), b"strata")?;
    ensure!(
        std::fs::read(target.join("hello"))? == b"strata",
        "read back"
    );
    unpublish(ctx, &id, &target).await?;
    unstage(ctx, &id, &staging).await?;
    delete(ctx, &id).await
}

async fn block_lifecycle(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let cap = block_cap();
    let v = create(ctx, "life-block", "hdd", 64 * MI, cap.clone()).await?;
    let id = v.volume_id.clone();
    let (staging, target) = paths(ctx, "life-block");
    stage(ctx, &id, &staging, cap.clone())
        .await
        .context("block volumes need no staging")?;
    publish(ctx, &id, &staging, &target, cap.clone(), false).await?;
    publish(ctx, &id, &staging, &target, cap.clone(), false)
        .await
        .context("repeat publish")?;
    ensure!(target.is_file() || target.exists(), "target file");
    let data = pattern(64 << 10, 3);
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&target)?;
        f.seek(SeekFrom::Start(1 << 20))?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    let mut back = vec![0u8; data.len()];
    {
        let mut dev = std::fs::File::open(device_of(&id)?)?;
        dev.seek(SeekFrom::Start(1 << 20))?;
        dev.read_exact(&mut back)?;
    }
    ensure!(
        back == data,
        "bytes written through the published file are not on the LV"
    );
    let st = stats(ctx, &id, &target).await?;
    let bytes = usage(&st, Unit::Bytes).context("bytes")?;
    ensure!(
        bytes.total == v.capacity_bytes,
        "block total {}",
        bytes.total
    );
    ensure!(
        check::fs_type(&device_of(&id)?)?.is_none(),
        "a block volume got a filesystem"
    );
    unpublish(ctx, &id, &target).await?;
    ensure!(
        !target.exists() && check::mount_at(&target)?.is_none(),
        "target left"
    );
    unpublish(ctx, &id, &target).await?;
    unstage(ctx, &id, &staging).await?;
    delete(ctx, &id).await
}

async fn never_reformats(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let xfs = mount_cap("xfs", &[]);
    let v = create(ctx, "keep", "nvme", 400 * MI, xfs.clone()).await?;
    let id = v.volume_id.clone();
    let (staging, _) = paths(ctx, "keep");
    stage(ctx, &id, &staging, xfs.clone()).await?;
    std::fs::write(staging.join("precious"), b"do not lose")?;
    unstage(ctx, &id, &staging).await?;
    code(
        "stage as ext4 over xfs",
        ctx.csi
            .node
            .clone()
            .node_stage_volume(stage_request(&id, &staging, mount_cap("ext4", &[])))
            .await,
        Code::FailedPrecondition,
    )?;
    ensure!(
        check::mount_at(&staging)?.is_none(),
        "mounted after a refused stage"
    );
    ensure!(
        check::fs_type(&device_of(&id)?)?.as_deref() == Some("xfs"),
        "reformatted"
    );
    stage(ctx, &id, &staging, xfs.clone()).await?;
    ensure!(
        std::fs::read(staging.join("precious"))? == b"do not lose",
        "data lost"
    );
    unstage(ctx, &id, &staging).await?;
    delete(ctx, &id).await
}

async fn expansion_keeps_data(ctx: &mut Ctx, name: &str, fs: &str, class: &str) -> Result<()> {
    let cap = mount_cap(fs, &[]);
    let v = create(ctx, name, class, 400 * MI, cap.clone()).await?;
    let id = v.volume_id.clone();
    let (staging, target) = paths(ctx, name);
    stage(ctx, &id, &staging, cap.clone()).await?;
    publish(ctx, &id, &staging, &target, cap.clone(), false).await?;
    let data = pattern(8 << 20, 11);
    std::fs::write(target.join("data"), &data)?;
    let before = usage(&stats(ctx, &id, &target).await?, Unit::Bytes)
        .context("bytes")?
        .total;
    let new_size = 2 * v.capacity_bytes;
    let exp = ok(
        "ControllerExpandVolume",
        ctx.csi
            .controller
            .clone()
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: new_size,
                    limit_bytes: 0,
                }),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
    )?;
    ensure!(
        exp.capacity_bytes >= new_size,
        "expanded to {}",
        exp.capacity_bytes
    );
    ensure!(
        exp.node_expansion_required,
        "mount volumes need node expansion"
    );
    let node_req = csi::NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.to_string_lossy().into_owned(),
        capacity_range: Some(CapacityRange {
            required_bytes: new_size,
            limit_bytes: 0,
        }),
        staging_target_path: staging.to_string_lossy().into_owned(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    let grown = ok(
        "NodeExpandVolume",
        ctx.csi
            .node
            .clone()
            .node_expand_volume(node_req.clone())
            .await,
    )?;
    ensure!(
        grown.capacity_bytes >= new_size,
        "node reports {}",
        grown.capacity_bytes
    );
    ok(
        "repeat NodeExpandVolume",
        ctx.csi.node.clone().node_expand_volume(node_req).await,
    )?;
    let after = usage(&stats(ctx, &id, &target).await?, Unit::Bytes)
        .context("bytes")?
        .total;
    ensure!(
        after > before + v.capacity_bytes / 2,
        "filesystem did not grow: {before} -> {after}"
    );
    ensure!(
        std::fs::read(target.join("data"))? == data,
        "data changed by expansion"
    );
    unpublish(ctx, &id, &target).await?;
    unstage(ctx, &id, &staging).await?;
    delete(ctx, &id).await
}

async fn expansion_keeps_data_xfs(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    expansion_keeps_data(ctx, "grow-xfs", "xfs", "nvme").await
}

async fn expansion_keeps_data_ext4(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    expansion_keeps_data(ctx, "grow-ext4", "ext4", "hdd").await
}

async fn node_bad_input(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let cap = mount_cap("xfs", &[]);
    let v = create(ctx, "node-bad", "nvme", 300 * MI, cap.clone()).await?;
    let id = v.volume_id.clone();
    let (staging, target) = paths(ctx, "node-bad");
    let mut node = ctx.csi.node.clone();
    let s =
        |id: &str, path: &str, cap: Option<csi::VolumeCapability>| csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: path.into(),
            volume_capability: cap,
            ..Default::default()
        };
    let st = staging.to_string_lossy().into_owned();
    code(
        "stage: empty id",
        node.node_stage_volume(s("", &st, Some(cap.clone()))).await,
        Code::InvalidArgument,
    )?;
    code(
        "stage: empty path",
        node.node_stage_volume(s(&id, "", Some(cap.clone()))).await,
        Code::InvalidArgument,
    )?;
    code(
        "stage: relative path",
        node.node_stage_volume(s(&id, "relative/dir", Some(cap.clone())))
            .await,
        Code::InvalidArgument,
    )?;
    code(
        "stage: path with ..",
        node.node_stage_volume(s(&id, &format!("{st}/../../etc"), Some(cap.clone())))
            .await,
        Code::InvalidArgument,
    )?;
    code(
        "stage: no capability",
        node.node_stage_volume(s(&id, &st, None)).await,
        Code::InvalidArgument,
    )?;
    code(
        "stage: multi-node mode",
        node.node_stage_volume(s(
            &id,
            &st,
            Some(mount_cap_mode("xfs", &[], Mode::MultiNodeMultiWriter)),
        ))
        .await,
        Code::InvalidArgument,
    )?;
    code(
        "stage: unknown volume",
        node.node_stage_volume(s("no-such-volume", &st, Some(cap.clone())))
            .await,
        Code::NotFound,
    )?;
    ensure!(
        check::mount_at(&staging)?.is_none(),
        "a refused stage mounted something"
    );
    ensure!(
        check::fs_type(&device_of(&id)?)?.is_none(),
        "a refused stage formatted the volume"
    );
    let mut p = publish_request(&id, &staging, &target, cap.clone(), false);
    p.staging_target_path.clear();
    code(
        "publish: no staging path",
        node.node_publish_volume(p).await,
        Code::FailedPrecondition,
    )?;
    code(
        "publish: not staged",
        node.node_publish_volume(publish_request(&id, &staging, &target, cap.clone(), false))
            .await,
        Code::FailedPrecondition,
    )?;
    let mut p = publish_request(&id, &staging, &target, cap.clone(), false);
    p.target_path = "/tmp/../etc".into();
    code(
        "publish: target with ..",
        node.node_publish_volume(p).await,
        Code::InvalidArgument,
    )?;
    code(
        "unpublish: path with ..",
        node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: "/run/../proc".into(),
        })
        .await,
        Code::InvalidArgument,
    )?;
    code(
        "unpublish: relative",
        node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: "proc".into(),
        })
        .await,
        Code::InvalidArgument,
    )?;
    code(
        "unstage: empty id",
        node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: String::new(),
            staging_target_path: st.clone(),
        })
        .await,
        Code::InvalidArgument,
    )?;
    let stats_req = |id: &str, path: &str| csi::NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        staging_target_path: String::new(),
    };
    code(
        "stats: empty id",
        node.node_get_volume_stats(stats_req("", "/run")).await,
        Code::InvalidArgument,
    )?;
    code(
        "stats: missing path",
        node.node_get_volume_stats(stats_req(&id, "/run/strata-conformance/nope"))
            .await,
        Code::NotFound,
    )?;
    code(
        "expand: unknown volume",
        node.node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: "no-such-volume".into(),
            volume_path: st.clone(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    )?;
    code(
        "controller expand: unknown volume",
        ctx.csi
            .controller
            .clone()
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: "no-such-volume".into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: GI,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    )?;
    ensure!(std::path::Path::new("/proc/self").exists(), "proc survived");
    delete(ctx, &id).await
}

async fn stats_condition_when_mount_is_lost(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let cap = mount_cap("xfs", &[]);
    let v = create(ctx, "lost", "nvme", 300 * MI, cap.clone()).await?;
    let id = v.volume_id.clone();
    let (staging, target) = paths(ctx, "lost");
    stage(ctx, &id, &staging, cap.clone()).await?;
    publish(ctx, &id, &staging, &target, cap.clone(), false).await?;
    ensure!(
        stats(ctx, &id, &target)
            .await?
            .volume_condition
            .is_some_and(|c| !c.abnormal),
        "healthy"
    );
    check::umount(&target)?;
    let st = stats(ctx, &id, &target).await?;
    let c = st.volume_condition.context("condition")?;
    ensure!(
        c.abnormal && !c.message.is_empty(),
        "lost mount not reported: {c:?}"
    );
    unpublish(ctx, &id, &target).await?;
    unstage(ctx, &id, &staging).await?;
    delete(ctx, &id).await
}

async fn unpublish_refuses_foreign_mounts(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let v = create(ctx, "foreign", "nvme", 300 * MI, mount_cap("", &[])).await?;
    let path = ctx.dir.join("foreign-tmpfs");
    check::mount_tmpfs(&path)?;
    code(
        "unpublish a tmpfs",
        ctx.csi
            .node
            .clone()
            .node_unpublish_volume(unpublish_request(&v.volume_id, &path))
            .await,
        Code::FailedPrecondition,
    )?;
    ensure!(
        check::mount_at(&path)?.is_some(),
        "the foreign mount was removed"
    );
    check::umount(&path)?;
    delete(ctx, &v.volume_id).await
}

async fn restart_keeps_volumes(ctx: &mut Ctx, agent: &mut Option<Agent>) -> Result<()> {
    let v = create(ctx, "survivor", "ssd", 300 * MI, mount_cap("", &[])).await?;
    let status = agent.take().context("agent")?.stop().await?;
    ensure!(status.success(), "agent exit {status}");
    ensure!(!ctx.socket.exists(), "socket left after shutdown");
    let restarted = Agent::start(
        &ctx.socket,
        &ctx.node,
        &[],
        &ctx.log,
        Duration::from_secs(60),
    )
    .await?;
    ctx.csi = restarted.csi.clone();
    *agent = Some(restarted);
    ensure!(
        list_ids(ctx).await?.contains(&v.volume_id),
        "volume lost across restart"
    );
    let again = create(ctx, "survivor", "ssd", 300 * MI, mount_cap("", &[])).await?;
    ensure!(
        again.capacity_bytes == v.capacity_bytes,
        "repeat after restart differs"
    );
    delete(ctx, &v.volume_id).await
}

async fn shutdown_finishes_in_flight_calls(ctx: &mut Ctx, agent: &mut Option<Agent>) -> Result<()> {
    let running = agent.take().context("agent")?;
    let mut ctl = ctx.csi.controller.clone();
    let call = tokio::spawn(async move {
        ctl.create_volume(create_request(
            "in-flight",
            "hdd",
            300 * MI,
            mount_cap("", &[]),
        ))
        .await
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    running.terminate()?;
    let result = call.await?;
    let status = running.stop().await?;
    ensure!(status.success(), "agent exit {status}");
    match result {
        Ok(_) => ensure!(
            check::lv_of("in-flight")?.is_some(),
            "call succeeded but no LV"
        ),
        // the call may also have arrived after the listener closed: then nothing was made
        Err(s) => ensure!(
            s.code() == Code::Unavailable && check::lv_of("in-flight")?.is_none(),
            "in-flight call failed: {:?} {}",
            s.code(),
            s.message()
        ),
    }
    // leave the node clean for whoever runs next
    if let Some((vg, lv)) = check::lv_of("in-flight")? {
        let out = std::process::Command::new("lvremove")
            .args(["-y", &format!("{vg}/{lv}")])
            .output()?;
        ensure!(
            out.status.success(),
            "lvremove: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
