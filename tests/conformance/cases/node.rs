//! Node: stage, publish, stats, expansion — their lifecycles, refusals and the spec's error
//! order — and the agent's restart and shutdown.

use super::*;

pub(super) async fn mount_lifecycle_xfs(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
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

pub(super) async fn mount_lifecycle_ext4_with_flags(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
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

pub(super) async fn block_lifecycle(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
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

pub(super) async fn never_reformats(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
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

pub(super) async fn expansion_keeps_data_xfs(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    expansion_keeps_data(ctx, "grow-xfs", "xfs", "nvme").await
}

pub(super) async fn expansion_keeps_data_ext4(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    expansion_keeps_data(ctx, "grow-ext4", "ext4", "hdd").await
}

pub(super) async fn node_bad_input(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
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

pub(super) async fn stats_condition_when_mount_is_lost(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
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
    // The volume is no longer at that path: the spec's NOT_FOUND ("the volume specified by
    // volume_id does not exist on specified volume_path").
    code(
        "stats after the mount was lost",
        ctx.csi
            .node
            .clone()
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: target.to_string_lossy().into_owned(),
                staging_target_path: String::new(),
            })
            .await,
        Code::NotFound,
    )?;
    unpublish(ctx, &id, &target).await?;
    unstage(ctx, &id, &staging).await?;
    delete(ctx, &id).await
}

pub(super) async fn unpublish_refuses_foreign_mounts(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
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

pub(super) async fn restart_keeps_volumes(ctx: &mut Ctx, agent: &mut Option<Agent>) -> Result<()> {
    let v = create(ctx, "survivor", "ssd", 300 * MI, mount_cap("", &[])).await?;
    let status = agent.take().context("agent")?.stop().await?;
    ensure!(status.success(), "agent exit {status}");
    ensure!(!ctx.socket.exists(), "socket left after shutdown");
    let restarted = Agent::start(
        &ctx.socket,
        &ctx.node,
        crate::STANDALONE_FLAGS,
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

pub(super) async fn shutdown_finishes_in_flight_calls(
    ctx: &mut Ctx,
    agent: &mut Option<Agent>,
) -> Result<()> {
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
        // the call may also have arrived after the listener closed (Unavailable), or its stream
        // been refused by the server's GOAWAY (h2 reports that as Internal "h2 protocol error"):
        // either way nothing was made
        Err(s) => ensure!(
            (s.code() == Code::Unavailable
                || (s.code() == Code::Internal && s.message().contains("h2 protocol error")))
                && check::lv_of("in-flight")?.is_none(),
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

/// The CSI spec's error order on the Node service: a missing capability is InvalidArgument
/// before the staging path is looked at; an unknown volume is NotFound whatever the path (even
/// relative or absent); a known volume at a path where it is not mounted is NotFound.
pub(super) async fn node_error_order(ctx: &mut Ctx, _: &mut Option<Agent>) -> Result<()> {
    let cap = mount_cap("xfs", &[]);
    let v = create(ctx, "order", "nvme", 300 * MI, cap.clone()).await?;
    let id = v.volume_id.clone();
    let (staging, target) = paths(ctx, "order");
    let mut node = ctx.csi.node.clone();
    for bogus in [
        "",
        "relative/staging",
        "/run/strata-conformance/never-staged",
    ] {
        let mut p = publish_request(&id, &staging, &target, cap.clone(), false);
        p.volume_capability = None;
        p.staging_target_path = bogus.into();
        code(
            &format!("publish without capability, staging {bogus:?}"),
            node.node_publish_volume(p).await,
            Code::InvalidArgument,
        )?;
    }
    for path in ["", "relative/path", "/run/strata-conformance/nope"] {
        code(
            &format!("stats of an unknown volume at {path:?}"),
            node.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: "no-such-volume".into(),
                volume_path: path.into(),
                staging_target_path: String::new(),
            })
            .await,
            Code::NotFound,
        )?;
        code(
            &format!("expand of an unknown volume at {path:?}"),
            node.node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: "no-such-volume".into(),
                volume_path: path.into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: GI,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await,
            Code::NotFound,
        )?;
    }
    let elsewhere = ctx.dir.join("order-elsewhere");
    std::fs::create_dir_all(&elsewhere)?;
    code(
        "stats of a known volume where it is not mounted",
        node.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: elsewhere.to_string_lossy().into_owned(),
            staging_target_path: String::new(),
        })
        .await,
        Code::NotFound,
    )?;
    code(
        "stats of a known volume without a path",
        node.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: String::new(),
            staging_target_path: String::new(),
        })
        .await,
        Code::InvalidArgument,
    )?;
    ensure!(
        check::mount_at(&staging)?.is_none() && check::mount_at(&target)?.is_none(),
        "a refused call mounted something"
    );
    delete(ctx, &id).await
}

/// A 100Mi request on xfs is raised to xfs's 300 MiB minimum by the shared validator, so the
/// volume is formatted, staged and mounted instead of failing at NodeStage.
pub(super) async fn small_xfs_volume_is_raised_and_mountable(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
    let cap = mount_cap("xfs", &[]);
    let v = create(ctx, "small-xfs", "nvme", 100 * MI, cap.clone()).await?;
    ensure!(
        v.capacity_bytes == 300 * MI,
        "100Mi xfs volume has {} bytes, expected xfs's minimum of 300 MiB",
        v.capacity_bytes
    );
    let (staging, target) = paths(ctx, "small-xfs");
    stage(ctx, &v.volume_id, &staging, cap.clone()).await?;
    publish(ctx, &v.volume_id, &staging, &target, cap, false).await?;
    let (fs, _, _) = check::mount_at(&target)?.context("not mounted at the target")?;
    ensure!(fs == "xfs", "mounted as {fs}");
    std::fs::write(target.join("probe"), b"small")?;
    unpublish(ctx, &v.volume_id, &target).await?;
    unstage(ctx, &v.volume_id, &staging).await?;
    delete(ctx, &v.volume_id).await
}
