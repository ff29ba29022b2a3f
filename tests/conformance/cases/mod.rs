//! The cases, in the order they run (each cleans up what it made; state checks are on `lvs` and
//! mountinfo). Sizes are small (the lab has 16 GiB of NVMe, 4 GiB SSD, 16 GiB HDD). One file per
//! service: [`identity`] (plugin info and capabilities), [`controller`] (volumes and capacity),
//! [`node`] (stage, publish, stats, expansion, the agent's restarts), [`kubernetes`] (what only
//! Kubernetes mode has: admission against NodeStorage, the reserve, the API server's answers),
//! [`snapshots`] (standalone snapshots, restores and clones on a thin pool);
//! the helpers live here. Each case is marked with the modes it applies to.

mod controller;
mod identity;
mod kubernetes;
mod node;
mod snapshots;

use controller::*;
use identity::*;
use kubernetes::*;
use node::*;
use snapshots::*;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use csi_api::crd::LogicalVolume;
use csi_api::csi::controller_service_capability::rpc::Type as CtrlRpc;
use csi_api::csi::node_service_capability::rpc::Type as NodeRpc;
use csi_api::csi::plugin_capability::service::Type as ServiceType;
use csi_api::csi::plugin_capability::volume_expansion::Type as ExpansionType;
use csi_api::csi::volume_capability::access_mode::Mode;
use csi_api::csi::{self, CapacityRange, Topology, TopologyRequirement, volume_usage::Unit};
use csi_api::names;
use strata_tests::csi_client::{
    self, Agent, block_cap, mount_cap, mount_cap_mode, publish_request, stage_request,
    unpublish_request, unstage_request,
};
use tonic::Code;

use super::check::{self, code, ok};
use super::{CaseFn, Ctx, Modes};

const MI: i64 = 1 << 20;
const GI: i64 = 1 << 30;

macro_rules! cases {
    ($($modes:ident $name:ident),* $(,)?) => {
        pub const ALL: &[(&str, Modes, CaseFn)] = &[
            $((stringify!($name), Modes::$modes, |ctx, agent| Box::pin($name(ctx, agent))),)*
        ];
    };
}

// Both = standalone and Kubernetes mode; Standalone / Kubernetes = that mode only.
cases!(
    Both identity_info_capabilities_probe,
    Both controller_and_node_capabilities,
    Both node_info_has_node_topology,
    Both create_each_class_idempotent_and_tagged,
    Both create_conflicting_repeat_is_already_exists,
    Both create_bad_input_changes_nothing,
    Both ids_with_url_characters_are_refused,
    Both create_beyond_capacity_or_topology,
    Both delete_is_idempotent,
    Both validate_volume_capabilities,
    Standalone list_volumes_paging,
    Both get_capacity_per_class,
    Both concurrent_calls_for_one_volume,
    Both mount_lifecycle_xfs,
    Both mount_lifecycle_ext4_with_flags,
    Both block_lifecycle,
    Both never_reformats,
    Both expansion_keeps_data_xfs,
    Both expansion_keeps_data_ext4,
    Both node_bad_input,
    Both node_error_order,
    Both small_xfs_volume_is_raised_and_mountable,
    Both stats_condition_when_mount_is_lost,
    Both unpublish_refuses_foreign_mounts,
    Standalone thin_snapshot_restore_clone_bytes,
    Standalone thin_list_snapshots_and_refusals,
    Standalone thin_restore_of_mounted_xfs_is_grown,
    Kubernetes odd_csi_names_become_valid_object_names,
    Kubernetes deletion_answers_no_conflict,
    Kubernetes admission_never_books_a_volume_twice,
    Kubernetes reserve_holds_across_create_and_expand,
    Standalone restart_keeps_volumes,
    Standalone shutdown_finishes_in_flight_calls,
);

// ---- helpers ------------------------------------------------------------------------------

fn params(class: &str) -> HashMap<String, String> {
    HashMap::from([(names::PARAM_DEVICE_CLASS.to_owned(), class.to_owned())])
}

/// A CreateVolume request of the suite's StorageClass, which says `strata.io/wipe: none`: the
/// wipe on delete is the subject of tests/node_wipe and of the e2e deletion test, and here it
/// would only cost time (under TCG, zeroing the 2 GiB SATA SSD volumes of the admission cases
/// takes about 20 s per delete). The cases about deletion itself use [`create_wiped`].
fn create_request(
    name: &str,
    class: &str,
    bytes: i64,
    cap: csi::VolumeCapability,
) -> csi::CreateVolumeRequest {
    let mut req = csi_client::create_request(name, class, bytes, cap);
    req.parameters.insert(
        names::PARAM_WIPE.to_owned(),
        names::WipePolicy::None.as_str().to_owned(),
    );
    req
}

/// CreateVolume with the class's default wipe policy (discard on flash, zeroes on HDDs).
async fn create_wiped(
    ctx: &Ctx,
    name: &str,
    class: &str,
    bytes: i64,
    cap: csi::VolumeCapability,
) -> Result<csi::Volume> {
    create_with(ctx, csi_client::create_request(name, class, bytes, cap)).await
}

/// CreateVolume of the suite's StorageClass ([`create_request`]).
async fn create(
    ctx: &Ctx,
    name: &str,
    class: &str,
    bytes: i64,
    cap: csi::VolumeCapability,
) -> Result<csi::Volume> {
    create_with(ctx, create_request(name, class, bytes, cap)).await
}

async fn create_with(ctx: &Ctx, req: csi::CreateVolumeRequest) -> Result<csi::Volume> {
    let resp = ok(
        "CreateVolume",
        ctx.csi.controller.clone().create_volume(req).await,
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
    // Kubernetes mode: the agent releases its finalizer after the LV is gone
    if let Some(kube) = &ctx.kube {
        let api: kube::Api<LogicalVolume> = kube::Api::all(kube.client.clone());
        while api.get_opt(id).await?.is_some() {
            ensure!(
                start.elapsed() < Duration::from_secs(600),
                "LogicalVolume {id} still there 600 s after DeleteVolume"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The volumes the plugin knows: ListVolumes standalone, the LogicalVolume objects in
/// Kubernetes mode (whose controller does not offer ListVolumes).
async fn list_ids(ctx: &Ctx) -> Result<Vec<String>> {
    if let Some(kube) = &ctx.kube {
        let api: kube::Api<LogicalVolume> = kube::Api::all(kube.client.clone());
        let mut names: Vec<String> = api
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter_map(|lv| lv.metadata.name)
            .collect();
        names.sort();
        return Ok(names);
    }
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
