//! Controller: CreateVolume (ids, parameters, sizes, capacity, topology), DeleteVolume,
//! ValidateVolumeCapabilities, ListVolumes, GetCapacity, one call per volume.

use super::*;

pub(super) async fn create_each_class_idempotent_and_tagged(
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

pub(super) async fn create_conflicting_repeat_is_already_exists(
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

pub(super) async fn create_bad_input_changes_nothing(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
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

pub(super) async fn create_beyond_capacity_or_topology(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
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

pub(super) async fn delete_is_idempotent(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let v = create_wiped(ctx, "del", "hdd", 300 * MI, mount_cap("", &[])).await?;
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

pub(super) async fn validate_volume_capabilities(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
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

pub(super) async fn list_volumes_paging(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
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

pub(super) async fn get_capacity_per_class(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
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

pub(super) async fn concurrent_calls_for_one_volume(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
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

/// Ids and names use one strict charset (they end up in URLs, LVM names and tags): `?`, `%`,
/// `#`, `/`, spaces and non-ASCII are InvalidArgument and create nothing; delete and expand
/// refuse them too instead of acting on a prefix.
pub(super) async fn ids_with_url_characters_are_refused(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
    let before = check::lvs()?.len();
    for bad in ["pvc-A?x", "pvc-a%2Fb", "pvc-a#b", "pvc a", "pvc-é"] {
        code(
            &format!("create {bad:?}"),
            ctx.csi
                .controller
                .clone()
                .create_volume(create_request(bad, "nvme", GI, mount_cap("", &[])))
                .await,
            Code::InvalidArgument,
        )?;
        code(
            &format!("delete {bad:?}"),
            ctx.csi
                .controller
                .clone()
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: bad.into(),
                    secrets: HashMap::new(),
                })
                .await,
            Code::InvalidArgument,
        )?;
    }
    ensure!(check::lvs()?.len() == before, "a refused create made an LV");
    Ok(())
}
