//! Kubernetes mode only: what the controller and the agent do through the API server — CSI
//! names a Kubernetes object cannot carry, deletion without conflicts, admission in the window
//! between a volume turning Ready and its node's NodeStorage being republished, and the
//! per-class reserve enforced on create and expand by the controller and by the agent's LVM
//! layer alike.

use super::*;

use csi_api::crd::{LogicalVolumePhase, NodeStorage};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const LV_PATH: &str = "/apis/strata.io/v1alpha1/logicalvolumes";
const EXTENT: i64 = 4 * MI;

fn kube(ctx: &Ctx) -> Result<&crate::kubernetes::Kube> {
    ctx.kube
        .as_ref()
        .context("a Kubernetes-mode case without the API server")
}

fn volumes(ctx: &Ctx) -> Result<Api<LogicalVolume>> {
    Ok(Api::all(kube(ctx)?.client.clone()))
}

/// Answers of the fake API server to requests on LogicalVolumes with `code` (of `method`).
fn lv_answers(ctx: &Ctx, method: &str, code: u16) -> Result<usize> {
    Ok(kube(ctx)?
        .api
        .answers()
        .iter()
        .filter(|(line, c)| {
            *c == code
                && line.split(' ').next() == Some(method)
                && line
                    .split(' ')
                    .nth(1)
                    .is_some_and(|p| p.starts_with(LV_PATH))
        })
        .count())
}

fn round_down(bytes: i64) -> i64 {
    bytes / EXTENT * EXTENT
}

/// The published `(free, allocatable)` of `class` on the conformance node.
async fn published(ctx: &Ctx, class: &str) -> Result<(i64, i64)> {
    let api: Api<NodeStorage> = Api::all(kube(ctx)?.client.clone());
    let status = api
        .get(&ctx.node)
        .await?
        .status
        .context("NodeStorage without status")?;
    let c = status
        .device_classes
        .iter()
        .find(|c| c.name.as_str() == class)
        .with_context(|| format!("no class {class} published"))?;
    Ok((
        i64::try_from(c.free_bytes)?,
        i64::try_from(c.allocatable_bytes)?,
    ))
}

/// Waits until `check(free, allocatable)` holds for the published status of `class`.
async fn published_until(
    ctx: &Ctx,
    class: &str,
    what: &str,
    check: impl Fn(i64, i64) -> bool,
) -> Result<(i64, i64)> {
    let start = std::time::Instant::now();
    loop {
        let (free, alloc) = published(ctx, class).await?;
        if check(free, alloc) {
            return Ok((free, alloc));
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "{class}: {what} not published within 60 s (free {free}, allocatable {alloc})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Size in LVM of the LV of `id`.
fn lv_size(id: &str) -> Result<i64> {
    let (vg, lv) = check::lv_of(id)?.context("no LV carries the volume's tag")?;
    let out = std::process::Command::new("lvs")
        .args([
            "--noheadings",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "lv_size",
        ])
        .arg(format!("{vg}/{lv}"))
        .output()?;
    ensure!(out.status.success(), "lvs {vg}/{lv} failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// An uppercase/underscore CSI name becomes a valid object name (`strata-<hash>`, which the API
/// server stand-in accepts where it refuses the raw name with 422), the same one on a repeat,
/// with the original kept in `strata.io/csi-name`; the id works for the Node service and delete.
pub(super) async fn odd_csi_names_become_valid_object_names(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
    let name = "Data_Volume.UPPER-0";
    let cap = mount_cap("xfs", &[]);
    let before = lv_answers(ctx, "POST", 422)?;
    let v = create(ctx, name, "nvme", 300 * MI, cap.clone()).await?;
    let id = v.volume_id.clone();
    ensure!(
        id != name && id.starts_with("strata-"),
        "volume id {id:?} for CSI name {name:?}"
    );
    let again = create(ctx, name, "nvme", 300 * MI, cap.clone()).await?;
    ensure!(
        again.volume_id == id,
        "a repeat answered {}",
        again.volume_id
    );
    let objects = list_ids(ctx).await?;
    ensure!(
        objects.iter().filter(|o| **o == id).count() == 1,
        "objects {objects:?}"
    );
    let lv = volumes(ctx)?.get(&id).await?;
    ensure!(
        lv.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("strata.io/csi-name"))
            .map(String::as_str)
            == Some(name),
        "the original name is not kept: {:?}",
        lv.metadata.annotations
    );
    ensure!(
        lv_answers(ctx, "POST", 422)? == before,
        "the API server refused an object name"
    );
    let (staging, _) = paths(ctx, "odd-name");
    stage(ctx, &id, &staging, cap).await?;
    ensure!(check::mount_at(&staging)?.is_some(), "not staged");
    unstage(ctx, &id, &staging).await?;
    delete(ctx, &id).await
}

/// A create and a delete (with the agent's wipe writing status in between, then releasing its
/// finalizer) draw no 409 from the API server; nor did anything on LogicalVolumes since
/// Kubernetes mode started (every earlier case created and deleted volumes).
pub(super) async fn deletion_answers_no_conflict(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
    let v = create_wiped(ctx, "no-conflict", "hdd", 100 * MI, block_cap()).await?;
    delete(ctx, &v.volume_id).await?;
    let conflicts: Vec<String> = kube(ctx)?
        .api
        .answers()
        .into_iter()
        .filter(|(line, code)| *code == 409 && line.contains(LV_PATH))
        .map(|(line, _)| line)
        .collect();
    ensure!(
        conflicts.is_empty(),
        "409 answered to LogicalVolume requests: {conflicts:?}"
    );
    let deletes = lv_answers(ctx, "DELETE", 200)?;
    ensure!(
        deletes >= 1,
        "no DELETE of a LogicalVolume was answered 200"
    );
    Ok(())
}

/// Two creates that do not both fit: the second, sent the moment the first answers (its
/// volume `Ready`, the node's NodeStorage possibly not yet republished), and two creates at
/// once, are never both admitted: exactly one LogicalVolume is POSTed, the other call is
/// refused by admission (ResourceExhausted) before any object exists.
pub(super) async fn admission_never_books_a_volume_twice(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
    let (free, alloc) = published(ctx, "ssd").await?;
    let avail = free.min(alloc);
    let size = round_down(avail * 55 / 100);
    let mut ctl = ctx.csi.controller.clone();
    for round in 0..3 {
        let posts = lv_answers(ctx, "POST", 201)?;
        let first = format!("book-{round}-a");
        let v = create(ctx, &first, "ssd", size, block_cap()).await?;
        let second = format!("book-{round}-b");
        let refused = ctl
            .create_volume(create_request(&second, "ssd", size, block_cap()))
            .await;
        code(
            &format!("round {round}: a second create right after the first"),
            refused,
            Code::ResourceExhausted,
        )?;
        ensure!(
            lv_answers(ctx, "POST", 201)? == posts + 1,
            "round {round}: {} LogicalVolumes created for one that fits",
            lv_answers(ctx, "POST", 201)? - posts
        );
        ensure!(
            volumes(ctx)?.get_opt(&second).await?.is_none(),
            "round {round}: the refused volume has an object"
        );
        delete(ctx, &v.volume_id).await?;
        // the next round starts from the whole class again
        published_until(ctx, "ssd", "the space back", |f, a| f.min(a) >= avail).await?;
    }
    let posts = lv_answers(ctx, "POST", 201)?;
    let race = ["book-race-a", "book-race-b"].map(|name| {
        let mut ctl = ctx.csi.controller.clone();
        async move {
            ctl.create_volume(create_request(name, "ssd", size, block_cap()))
                .await
        }
    });
    let results = futures::future::join_all(race).await;
    let made: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter_map(|r| r.get_ref().volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    for r in &results {
        if let Err(s) = r {
            ensure!(
                s.code() == Code::ResourceExhausted,
                "racing create: {:?} {}",
                s.code(),
                s.message()
            );
        }
    }
    ensure!(made.len() == 1, "racing creates admitted {made:?}");
    ensure!(
        lv_answers(ctx, "POST", 201)? == posts + 1,
        "racing creates POSTed {} LogicalVolumes",
        lv_answers(ctx, "POST", 201)? - posts
    );
    delete(ctx, &made[0]).await?;
    published_until(ctx, "ssd", "the space back", |f, a| f.min(a) >= avail).await?;
    Ok(())
}

/// NodeStorage `spec.reservedBytes` holds in Kubernetes mode: a create past allocatable and an
/// expansion past it are refused by the controller with nothing changed; a LogicalVolume grown
/// or made behind the controller's back (spec written directly, as a second replica racing
/// could) is refused by the agent's LVM layer (`InsufficientSpace`), the LV unchanged / not made.
pub(super) async fn reserve_holds_across_create_and_expand(
    ctx: &mut Ctx,
    _: &mut Option<Agent>,
) -> Result<()> {
    let class = "ssd";
    let storages: Api<NodeStorage> = Api::all(kube(ctx)?.client.clone());
    let (free, _) = published(ctx, class).await?;
    let reserve = round_down(free / 2);
    let set_reserve = |bytes: Option<i64>| {
        let storages = storages.clone();
        let node = ctx.node.clone();
        async move {
            let patch = json!({"spec": {"reservedBytes": {(class): bytes}}});
            storages
                .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        }
    };
    set_reserve(Some(reserve)).await?;
    let result = reserve_cases(ctx, class, free, reserve).await;
    set_reserve(None).await?;
    published_until(ctx, class, "the reserve lifted", |f, a| a == f).await?;
    result
}

async fn reserve_cases(ctx: &Ctx, class: &str, free: i64, reserve: i64) -> Result<()> {
    let (_, alloc) = published_until(ctx, class, "allocatable = free - reserve", |f, a| {
        a == f - reserve
    })
    .await?;
    ensure!(alloc == free - reserve, "allocatable {alloc}");
    let mut ctl = ctx.csi.controller.clone();
    // create: within allocatable yes, past it no
    let size = round_down(alloc / 2);
    let v = create(ctx, "reserve-a", class, size, block_cap()).await?;
    let id = v.volume_id.clone();
    code(
        "create past allocatable",
        ctl.create_volume(create_request("reserve-b", class, alloc, block_cap()))
            .await,
        Code::ResourceExhausted,
    )?;
    ensure!(
        volumes(ctx)?.get_opt("reserve-b").await?.is_none() && check::lv_of("reserve-b")?.is_none(),
        "a refused create left an object or an LV"
    );
    // expand past allocatable (but within free): refused, nothing changed
    // growth to `target` fits in what LVM has free, not in free − reserve
    let target = round_down(alloc + reserve / 2);
    ensure!(
        target < free,
        "the test's sizes: {target} within {free} free"
    );
    let lv_before = lv_size(&id)?;
    code(
        "expand past allocatable",
        ctl.controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: target,
                limit_bytes: 0,
            }),
            volume_capability: Some(block_cap()),
            ..Default::default()
        })
        .await,
        Code::ResourceExhausted,
    )?;
    let object = volumes(ctx)?.get(&id).await?;
    ensure!(
        i64::try_from(object.spec.size_bytes)? == lv_before,
        "a refused expansion changed spec.sizeBytes to {}",
        object.spec.size_bytes
    );
    ensure!(
        lv_size(&id)? == lv_before,
        "a refused expansion grew the LV"
    );

    // behind the controller's back: the agent itself refuses growth into the reserve
    let api = volumes(ctx)?;
    let grow = json!({"spec": {"sizeBytes": target}});
    api.patch(&id, &PatchParams::default(), &Patch::Merge(&grow))
        .await?;
    let start = std::time::Instant::now();
    loop {
        let status = api.get(&id).await?.status.unwrap_or_default();
        if status.reason.as_deref() == Some("InsufficientSpace") {
            ensure!(
                status.phase == Some(LogicalVolumePhase::Ready),
                "a refused extension left phase {:?}",
                status.phase
            );
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the agent did not refuse an extension into the reserve: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        lv_size(&id)? == lv_before,
        "the agent grew the LV into the reserve"
    );
    let back = json!({"spec": {"sizeBytes": lv_before}});
    api.patch(&id, &PatchParams::default(), &Patch::Merge(&back))
        .await?;

    // a LogicalVolume written directly past allocatable (within free): Failed, no LV
    let direct_size = round_down(alloc - size + reserve / 4);
    let direct: LogicalVolume = serde_json::from_value(json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "LogicalVolume",
        "metadata": {"name": "reserve-direct", "labels": {
            (names::LABEL_NODE): ctx.node, (names::LABEL_DEVICE_CLASS): class}},
        "spec": {"nodeName": ctx.node, "deviceClass": class, "sizeBytes": direct_size},
    }))?;
    api.create(&PostParams::default(), &direct).await?;
    let start = std::time::Instant::now();
    let outcome = loop {
        let status = api.get("reserve-direct").await?.status.unwrap_or_default();
        if status.phase == Some(LogicalVolumePhase::Failed) {
            break status;
        }
        ensure!(
            status.phase != Some(LogicalVolumePhase::Ready),
            "the agent made a volume into the reserve"
        );
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the agent did not refuse a volume into the reserve: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        outcome.reason.as_deref() == Some("InsufficientSpace"),
        "{outcome:?}"
    );
    ensure!(
        check::lv_of("reserve-direct")?.is_none(),
        "an LV was made into the reserve"
    );
    api.delete("reserve-direct", &DeleteParams::default())
        .await?;
    let start = std::time::Instant::now();
    while api.get_opt("reserve-direct").await?.is_some() {
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "reserve-direct not released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delete(ctx, &id).await
}
