//! Snapshots, restores and clones of the standalone agent (thin volumes on the `hdd` class's pool,
//! which the suite's agent makes with `--thin-pool hdd=10`): a restore holds the snapshot's bytes
//! exactly, a clone the live volume's, a snapshot outlives its origin, ListSnapshots filters and
//! pages, each refusal (linear source, unknown source, too small, another class) changes nothing,
//! and a larger restore of a mounted xfs is mounted beside its origin and grown at NodeStage.

use super::*;

const THIN_CLASS: &str = "hdd";

fn thin_request(name: &str, bytes: i64, cap: csi::VolumeCapability) -> csi::CreateVolumeRequest {
    let mut req = create_request(name, THIN_CLASS, bytes, cap);
    req.parameters
        .insert(names::PARAM_PROVISIONING.to_owned(), "thin".to_owned());
    req
}

fn restore_request(
    name: &str,
    bytes: i64,
    cap: csi::VolumeCapability,
    source: csi::volume_content_source::Type,
) -> csi::CreateVolumeRequest {
    let mut req = thin_request(name, bytes, cap);
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(source),
    });
    req
}

fn from_snapshot(id: &str) -> csi::volume_content_source::Type {
    csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource {
        snapshot_id: id.into(),
    })
}

fn from_volume(id: &str) -> csi::volume_content_source::Type {
    csi::volume_content_source::Type::Volume(csi::volume_content_source::VolumeSource {
        volume_id: id.into(),
    })
}

async fn snapshot(ctx: &Ctx, name: &str, source: &str) -> Result<csi::Snapshot> {
    let resp = ok(
        "CreateSnapshot",
        ctx.csi
            .controller
            .clone()
            .create_snapshot(csi::CreateSnapshotRequest {
                name: name.into(),
                source_volume_id: source.into(),
                ..Default::default()
            })
            .await,
    )?;
    resp.snapshot.context("CreateSnapshot returned no snapshot")
}

async fn delete_snapshot(ctx: &Ctx, id: &str) -> Result<()> {
    ok(
        "DeleteSnapshot",
        ctx.csi
            .controller
            .clone()
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: id.into(),
                ..Default::default()
            })
            .await,
    )
    .map(drop)
}

async fn list_snapshots(
    ctx: &Ctx,
    req: csi::ListSnapshotsRequest,
) -> Result<(Vec<String>, String)> {
    let resp = ok(
        "ListSnapshots",
        ctx.csi.controller.clone().list_snapshots(req).await,
    )?;
    Ok((
        resp.entries
            .into_iter()
            .filter_map(|e| e.snapshot.map(|s| s.snapshot_id))
            .collect(),
        resp.next_token,
    ))
}

/// The LVs carrying the snapshot tag of `id`.
fn snapshot_lvs(id: &str) -> Result<usize> {
    let tag = format!("strata.io/snapshot={id}");
    Ok(check::lvs()?
        .iter()
        .filter(|(_, _, tags)| tags.split(',').any(|t| t == tag))
        .count())
}

/// Writes `data` at `offset` of a volume's block device and flushes it.
fn write_at(volume: &str, offset: u64, data: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(device_of(volume)?)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

fn read_at(volume: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(device_of(volume)?)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

const AT: [u64; 2] = [0, 40 << 20];

fn holds(volume: &str, seed: u8) -> Result<bool> {
    for (i, at) in AT.iter().enumerate() {
        if read_at(volume, *at, 1 << 20)? != pattern(1 << 20, seed + i as u8) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn fill(volume: &str, seed: u8) -> Result<()> {
    for (i, at) in AT.iter().enumerate() {
        write_at(volume, *at, &pattern(1 << 20, seed + i as u8))?;
    }
    Ok(())
}

pub(super) async fn thin_snapshot_restore_clone_bytes(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
    let origin = create_with(ctx, thin_request("t-origin", 64 * MI, block_cap())).await?;
    fill(&origin.volume_id, 10)?;
    let snap = snapshot(ctx, "t-snap-1", &origin.volume_id).await?;
    ensure!(snap.ready_to_use, "snapshot not ready");
    ensure!(
        snap.size_bytes == origin.capacity_bytes,
        "size {}",
        snap.size_bytes
    );
    ensure!(snap.source_volume_id == origin.volume_id, "source");
    ensure!(snap.creation_time.is_some(), "no creation_time");
    let again = snapshot(ctx, "t-snap-1", &origin.volume_id).await?;
    ensure!(again.creation_time == snap.creation_time, "repeat differs");
    ensure!(snapshot_lvs("t-snap-1")? == 1, "one snapshot LV");
    // the origin moves on; the restore is the snapshot's bytes, the clone the live ones
    fill(&origin.volume_id, 20)?;
    let restored = create_with(
        ctx,
        restore_request("t-restore", 64 * MI, block_cap(), from_snapshot("t-snap-1")),
    )
    .await?;
    ensure!(
        restored.content_source.is_some(),
        "restore without content_source"
    );
    ensure!(holds("t-restore", 10)?, "restore differs from the snapshot");
    let clone = create_with(
        ctx,
        restore_request("t-clone", 64 * MI, block_cap(), from_volume("t-origin")),
    )
    .await?;
    ensure!(
        holds(&clone.volume_id, 20)?,
        "clone differs from its source"
    );
    ensure!(holds("t-origin", 20)?, "origin changed");
    // writes to a restore do not reach the snapshot
    fill("t-restore", 30)?;
    // the snapshot outlives its origin and still restores
    delete(ctx, "t-origin").await?;
    let (all, _) = list_snapshots(ctx, Default::default()).await?;
    ensure!(
        all.contains(&"t-snap-1".to_owned()),
        "snapshot gone with its origin"
    );
    let late = create_with(
        ctx,
        restore_request(
            "t-restore-2",
            64 * MI,
            block_cap(),
            from_snapshot("t-snap-1"),
        ),
    )
    .await?;
    ensure!(holds(&late.volume_id, 10)?, "late restore differs");
    for id in ["t-restore", "t-restore-2", "t-clone"] {
        delete(ctx, id).await?;
    }
    delete_snapshot(ctx, "t-snap-1").await?;
    delete_snapshot(ctx, "t-snap-1").await?;
    ensure!(snapshot_lvs("t-snap-1")? == 0, "snapshot LV left");
    Ok(())
}

pub(super) async fn thin_list_snapshots_and_refusals(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
    let a = create_with(ctx, thin_request("t-list-a", 64 * MI, block_cap())).await?;
    let b = create_with(ctx, thin_request("t-list-b", 64 * MI, block_cap())).await?;
    for (id, src) in [("t-s-c", &a), ("t-s-a", &b), ("t-s-b", &a)] {
        snapshot(ctx, id, &src.volume_id).await?;
    }
    let (of_a, _) = list_snapshots(
        ctx,
        csi::ListSnapshotsRequest {
            source_volume_id: a.volume_id.clone(),
            ..Default::default()
        },
    )
    .await?;
    ensure!(of_a == ["t-s-b", "t-s-c"], "by source: {of_a:?}");
    let (one, _) = list_snapshots(
        ctx,
        csi::ListSnapshotsRequest {
            snapshot_id: "t-s-a".into(),
            ..Default::default()
        },
    )
    .await?;
    ensure!(one == ["t-s-a"], "by id: {one:?}");
    for unknown in [
        csi::ListSnapshotsRequest {
            snapshot_id: "t-none".into(),
            ..Default::default()
        },
        csi::ListSnapshotsRequest {
            source_volume_id: "t-none".into(),
            ..Default::default()
        },
    ] {
        ensure!(
            list_snapshots(ctx, unknown).await?.0.is_empty(),
            "unknown filter"
        );
    }
    // pages of 2 walk the three (and whatever else exists) once, in order
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let (page, next) = list_snapshots(
            ctx,
            csi::ListSnapshotsRequest {
                max_entries: 2,
                starting_token: token.clone(),
                ..Default::default()
            },
        )
        .await?;
        ensure!(page.len() <= 2, "page of {}", page.len());
        seen.extend(page);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    ensure!(seen == sorted, "pages out of order or repeated: {seen:?}");
    for id in ["t-s-a", "t-s-b", "t-s-c"] {
        ensure!(seen.contains(&id.to_owned()), "{id} not paged");
    }
    code(
        "ListSnapshots: bad token",
        ctx.csi
            .controller
            .clone()
            .list_snapshots(csi::ListSnapshotsRequest {
                starting_token: "not-a-token".into(),
                ..Default::default()
            })
            .await,
        Code::Aborted,
    )?;
    // refusals change nothing
    let linear = create(ctx, "t-linear", THIN_CLASS, 64 * MI, block_cap()).await?;
    let before = check::lvs()?.len();
    let mut snap_ctl = ctx.csi.controller.clone();
    let snap_req = |name: &str, src: &str| csi::CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: src.into(),
        ..Default::default()
    };
    let refused = snap_ctl
        .create_snapshot(snap_req("t-s-x", &linear.volume_id))
        .await;
    match &refused {
        Err(s)
            if s.code() == Code::FailedPrecondition
                && s.message().contains("thin StorageClass") => {}
        other => anyhow::bail!("snapshot of a linear volume: {other:?}"),
    }
    code(
        "snapshot of an unknown volume",
        snap_ctl.create_snapshot(snap_req("t-s-x", "t-none")).await,
        Code::NotFound,
    )?;
    code(
        "snapshot name of another source",
        snap_ctl
            .create_snapshot(snap_req("t-s-a", &a.volume_id))
            .await,
        Code::AlreadyExists,
    )?;
    code(
        "snapshot without a name",
        snap_ctl.create_snapshot(snap_req("", &a.volume_id)).await,
        Code::InvalidArgument,
    )?;
    let mut ctl = ctx.csi.controller.clone();
    let mut small = restore_request("t-x", 0, block_cap(), from_snapshot("t-s-a"));
    small.capacity_range = Some(CapacityRange {
        required_bytes: 0,
        limit_bytes: 32 * MI,
    });
    code(
        "restore too small",
        ctl.create_volume(small).await,
        Code::OutOfRange,
    )?;
    code(
        "restore of an unknown snapshot",
        ctl.create_volume(restore_request(
            "t-x",
            64 * MI,
            block_cap(),
            from_snapshot("t-none"),
        ))
        .await,
        Code::NotFound,
    )?;
    code(
        "clone of a linear volume",
        ctl.create_volume(restore_request(
            "t-x",
            64 * MI,
            block_cap(),
            from_volume(&linear.volume_id),
        ))
        .await,
        Code::FailedPrecondition,
    )?;
    let mut into_linear = restore_request("t-x", 64 * MI, block_cap(), from_snapshot("t-s-a"));
    into_linear.parameters.remove(names::PARAM_PROVISIONING);
    code(
        "restore into a linear class",
        ctl.create_volume(into_linear).await,
        Code::InvalidArgument,
    )?;
    let mut other_class = restore_request("t-x", 64 * MI, block_cap(), from_snapshot("t-s-a"));
    other_class
        .parameters
        .insert(names::PARAM_DEVICE_CLASS.to_owned(), "nvme".to_owned());
    code(
        "restore into another class",
        ctl.create_volume(other_class).await,
        Code::InvalidArgument,
    )?;
    ensure!(check::lvs()?.len() == before, "a refusal made an LV");
    for id in ["t-s-a", "t-s-b", "t-s-c"] {
        delete_snapshot(ctx, id).await?;
    }
    for id in ["t-list-a", "t-list-b", "t-linear"] {
        delete(ctx, id).await?;
    }
    Ok(())
}

pub(super) async fn thin_restore_of_mounted_xfs_is_grown(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
    let cap = mount_cap("xfs", &[]);
    let origin = create_with(ctx, thin_request("t-xfs", 300 * MI, cap.clone())).await?;
    let (staging, target) = paths(ctx, "t-xfs");
    stage(ctx, &origin.volume_id, &staging, cap.clone()).await?;
    publish(
        ctx,
        &origin.volume_id,
        &staging,
        &target,
        cap.clone(),
        false,
    )
    .await?;
    let data = pattern(4 << 20, 5);
    {
        let mut f = std::fs::File::create(target.join("data"))?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    snapshot(ctx, "t-xfs-snap", &origin.volume_id).await?;
    std::fs::write(target.join("data"), b"changed")?;
    // twice the size, staged while the origin (same xfs UUID) is still mounted
    let restored = create_with(
        ctx,
        restore_request(
            "t-xfs-r",
            600 * MI,
            cap.clone(),
            from_snapshot("t-xfs-snap"),
        ),
    )
    .await?;
    ensure!(
        restored.capacity_bytes >= 600 * MI,
        "size {}",
        restored.capacity_bytes
    );
    let (rstaging, rtarget) = paths(ctx, "t-xfs-r");
    stage(ctx, &restored.volume_id, &rstaging, cap.clone()).await?;
    publish(
        ctx,
        &restored.volume_id,
        &rstaging,
        &rtarget,
        cap.clone(),
        false,
    )
    .await?;
    ensure!(
        std::fs::read(rtarget.join("data"))? == data,
        "restored file differs from the snapshot's"
    );
    let total = usage(
        &stats(ctx, &restored.volume_id, &rtarget).await?,
        Unit::Bytes,
    )
    .context("bytes")?
    .total;
    ensure!(
        total > 450 * MI,
        "filesystem not grown at NodeStage: {total} bytes"
    );
    ensure!(
        std::fs::read(target.join("data"))? == b"changed",
        "origin changed"
    );
    for (id, staging, target) in [
        (&restored.volume_id, &rstaging, &rtarget),
        (&origin.volume_id, &staging, &target),
    ] {
        unpublish(ctx, id, target).await?;
        unstage(ctx, id, staging).await?;
        delete(ctx, id).await?;
    }
    delete_snapshot(ctx, "t-xfs-snap").await
}
