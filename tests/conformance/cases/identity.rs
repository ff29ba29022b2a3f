//! Identity: plugin info, probe, and the capabilities every service announces.

use super::*;

pub(super) async fn identity_info_capabilities_probe(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
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

pub(super) async fn controller_and_node_capabilities(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
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
        CtrlRpc::GetCapacity,
        CtrlRpc::ExpandVolume,
    ] {
        ensure!(
            rpcs.contains(&(want as i32)),
            "controller capability {want:?} missing"
        );
    }
    // ListVolumes: the standalone agent offers it; Kubernetes mode does not (the volumes are
    // LogicalVolume objects) and then MUST NOT advertise it and answers UNIMPLEMENTED.
    let lists = rpcs.contains(&(CtrlRpc::ListVolumes as i32));
    if ctx.kube.is_some() {
        ensure!(!lists, "LIST_VOLUMES advertised in Kubernetes mode");
        code(
            "ListVolumes in Kubernetes mode",
            ctx.csi
                .controller
                .clone()
                .list_volumes(csi::ListVolumesRequest::default())
                .await,
            Code::Unimplemented,
        )?;
    } else {
        ensure!(lists, "controller capability ListVolumes missing");
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

pub(super) async fn node_info_has_node_topology(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
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
