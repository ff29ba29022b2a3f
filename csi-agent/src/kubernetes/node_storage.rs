//! The claim pass and the NodeStorage status of this node. The full pass runs when the set of
//! block devices in sysfs changes (checked every second: one directory read), when a change asks
//! for it, and at the resync period as a safety net: it reads the operator's policy from `spec`,
//! claims eligible disks through `claim` and reads every VG. An LV made, grown or removed asks
//! only for a *VG-only pass*: one `vgs` per changed VG (beside a GET of the policy), spliced into
//! the last status, no disk discovery (see `capacity_sequence` for why that keeps the sequence
//! guarantee). Either publishes `status` by server-side apply (field manager `csi-agent`) only
//! when it differs from the last one published.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use csi_api::crd::{ClaimMode, Condition, DiskState, NodeStorage, NodeStorageStatus};
use csi_api::names;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Context;
use crate::claim::{self, ActionKind, Outcome, Policy};
use crate::discovery::{BlkidProbe, Usage};
use crate::lvm::LvmRunner;

/// Runs until `shutdown`.
pub async fn run<R: LvmRunner>(
    ctx: Arc<Context<R>>,
    resync: Duration,
    shutdown: CancellationToken,
) {
    let api: Api<NodeStorage> = Api::all(ctx.client.clone());
    let mut last: Option<Written> = None;
    // A pass at least every heartbeat: an unchanged status is written again once it is that old,
    // so that `status.updatedAt` shows the agent is alive.
    let resync = resync.min(ctx.heartbeat);
    let recorder = Recorder::new(
        ctx.client.clone(),
        Reporter {
            controller: names::FIELD_MANAGER_AGENT.into(),
            instance: Some(ctx.node.clone()),
        },
    );
    let mut devices = block_devices(&ctx);
    let mut next_resync = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        let seen = block_devices(&ctx);
        if now >= next_resync || seen != devices || ctx.sequencer.full_pass_wanted() {
            devices = seen;
            next_resync = now + resync;
            match pass(&ctx, &api, &recorder, &mut last, &shutdown).await {
                Ok(()) => {}
                Err(e) => warn!(error = %e, "NodeStorage pass failed; retrying"),
            }
        } else if let Some((sequence, vgs)) = ctx.sequencer.begin_vg_pass() {
            let started = tokio::time::Instant::now();
            match vg_pass(&ctx, &api, &recorder, &mut last, &shutdown, sequence, &vgs).await {
                Ok(true) => {
                    info!(
                        ?vgs,
                        sequence,
                        took_ms = started.elapsed().as_millis(),
                        "NodeStorage VG-only pass"
                    );
                    continue;
                }
                Ok(false) => debug!(?vgs, "VG-only pass not possible; full pass"),
                Err(e) => warn!(error = %e, ?vgs, "VG-only pass failed; full pass"),
            }
            // Its VGs were drained: the full pass re-reads them (and everything else).
            ctx.sequencer.want_full_pass();
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // What changed is recorded in the sequencer (a VG, or a full pass wanted).
            _ = ctx.changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The names in `/sys/block` of the kinds of disk discovery considers: a cheap signal that a
/// disk appeared or vanished. Device-mapper nodes are left out: every LV activated or removed
/// adds or drops a `dm-N`, and that change is the VG-only pass's (a full pass for each would
/// cost the claim pass per LV change).
fn block_devices<R: LvmRunner>(ctx: &Context<R>) -> BTreeSet<String> {
    std::fs::read_dir(ctx.roots.sysfs.join("block"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| crate::discovery::is_candidate(name))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Claim(String),
}

async fn pass<R: LvmRunner>(
    ctx: &Context<R>,
    api: &Api<NodeStorage>,
    recorder: &Recorder,
    last: &mut Option<Written>,
    shutdown: &CancellationToken,
) -> Result<(), PassError> {
    let object = match api.get_opt(&ctx.node).await? {
        Some(o) => o,
        None => {
            info!(node = %ctx.node, claim_mode = ?ctx.new_node_claim_mode, "creating NodeStorage");
            let body = new_node_storage(&ctx.node, ctx.new_node_claim_mode);
            let params = PatchParams::apply(names::FIELD_MANAGER_AGENT);
            api.patch(&ctx.node, &params, &Patch::Apply(&body)).await?
        }
    };
    // Taken before LVM is read: see `capacity_sequence`.
    let sequence = ctx.sequencer.begin_pass();
    let status = match Policy::new(&object.spec) {
        Err(e) => failed_status(format!("invalid policy in spec: {e}"), "InvalidPolicy"),
        Ok(policy) => {
            let usage =
                Usage::read(&ctx.roots.proc).map_err(|e| PassError::Claim(e.to_string()))?;
            match claim::reconcile(
                &ctx.roots,
                &usage,
                &BlkidProbe::default(),
                &ctx.lvm,
                &policy,
            )
            .await
            {
                Ok((mut survey, outcomes)) => {
                    for outcome in &outcomes {
                        info!(?outcome, "claim action");
                        if let Some(m) = &ctx.metrics {
                            m.claim_action(action_name(&outcome.kind), outcome.result.is_ok());
                        }
                        let vg = survey
                            .plan
                            .disks
                            .iter()
                            .find(|d| d.slot == outcome.slot)
                            .and_then(|d| d.volume_group.clone());
                        let event = claim_event(outcome, vg.as_deref());
                        if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
                            warn!(error = %e, "cannot publish Event");
                        }
                    }
                    let notes = crate::health::check_disks(
                        &ctx.roots.sysfs,
                        &ctx.roots.dev,
                        &ctx.health,
                        &mut survey.plan.disks,
                    )
                    .await;
                    for note in notes {
                        debug!(%note, "disk health not fully checked");
                    }
                    ctx.health.set_missing_pv_vgs(
                        survey
                            .classes
                            .iter()
                            .filter(|c| c.missing_pv_count > 0)
                            .map(|c| c.vg_name.clone())
                            .collect(),
                    );
                    let known = last
                        .as_ref()
                        .map(|w| w.status.device_classes.clone())
                        .unwrap_or_default();
                    tend_thin(ctx, recorder, &object, &mut survey.classes, &known, true).await;
                    build_status(survey.plan.disks, survey.classes)
                }
                Err(e) => failed_status(e.to_string(), "ClaimFailed"),
            }
        }
    };
    publish(
        ctx, api, recorder, last, shutdown, &object, status, sequence,
    )
    .await
}

/// Re-reads only `vgs` (one `vgs` each, beside a GET of the object for the current reserve) and
/// publishes the last status with their classes replaced, numbered `sequence` (taken with the
/// VGs, before the reads). `Ok(false)` when that cannot stand for a full pass: nothing published
/// yet, the spec changed since, a VG that is not a class of the last status, or a VG whose PVs
/// changed (a disk event: the full pass names the disks).
async fn vg_pass<R: LvmRunner>(
    ctx: &Context<R>,
    api: &Api<NodeStorage>,
    recorder: &Recorder,
    last: &mut Option<Written>,
    shutdown: &CancellationToken,
    sequence: u64,
    vgs: &BTreeSet<String>,
) -> Result<bool, PassError> {
    let Some(previous) = last.as_ref().map(|w| w.status.clone()) else {
        return Ok(false);
    };
    let reads = futures::future::join_all(vgs.iter().map(|vg| ctx.lvm.vg(vg)));
    let (object, reads) = tokio::join!(api.get_opt(&ctx.node), reads);
    let Some(object) = object? else {
        return Ok(false);
    };
    if object.metadata.generation != previous.observed_generation {
        return Ok(false);
    }
    let Ok(policy) = Policy::new(&object.spec) else {
        return Ok(false);
    };
    let mut read = Vec::with_capacity(reads.len());
    for vg in reads {
        match vg {
            Ok(Some(vg)) => read.push(vg),
            Ok(None) => return Ok(false),
            Err(e) => return Err(PassError::Claim(e.to_string())),
        }
    }
    let mut fresh = claim::class_summary(&read, &policy);
    tend_thin(
        ctx,
        recorder,
        &object,
        &mut fresh,
        &previous.device_classes,
        false,
    )
    .await;
    match splice_classes(&previous, &fresh, read.len()) {
        Some(classes) => {
            let status = build_status(previous.disks, classes);
            publish(
                ctx, api, recorder, last, shutdown, &object, status, sequence,
            )
            .await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The classes of `previous` with `fresh` put in place of the entries of the same VG; `None`
/// when a fresh VG is not a class of `previous` (`expected` VGs were read, all must be classes)
/// or its PV counts changed.
fn splice_classes(
    previous: &NodeStorageStatus,
    fresh: &[csi_api::crd::DeviceClassStatus],
    expected: usize,
) -> Option<Vec<csi_api::crd::DeviceClassStatus>> {
    if fresh.len() != expected {
        return None;
    }
    let mut classes = previous.device_classes.clone();
    for class in fresh {
        let slot = classes.iter_mut().find(|c| c.vg_name == class.vg_name)?;
        if slot.pv_count != class.pv_count || slot.missing_pv_count != class.missing_pv_count {
            return None;
        }
        *slot = class.clone();
    }
    Some(classes)
}

/// Publishes `status` numbered `sequence` unless it equals the last one (and no ticket or
/// heartbeat needs it), then records it as the last.
#[allow(clippy::too_many_arguments)]
async fn publish<R: LvmRunner>(
    ctx: &Context<R>,
    api: &Api<NodeStorage>,
    recorder: &Recorder,
    last: &mut Option<Written>,
    shutdown: &CancellationToken,
    object: &NodeStorage,
    status: NodeStorageStatus,
    sequence: u64,
) -> Result<(), PassError> {
    let status = NodeStorageStatus {
        observed_generation: object.metadata.generation,
        capacity_sequence: Some(sequence),
        ..status
    };
    if last
        .as_ref()
        .is_some_and(|l| !heartbeat_due(l, ctx.heartbeat) && same_but_time(&l.status, &status))
        && !ctx.sequencer.must_publish()
    {
        return Ok(());
    }
    // Shutdown cancels the LVM calls of a pass in flight: its "LVM is unavailable" status would
    // replace the node's capacity with none until the next agent publishes.
    if shutdown.is_cancelled() {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": "strata.io/v1alpha1",
        "kind": "NodeStorage",
        "status": status,
    });
    let params = PatchParams::apply(names::FIELD_MANAGER_AGENT).force();
    api.patch_status(&ctx.node, &params, &Patch::Apply(&patch))
        .await?;
    ctx.sequencer.published(sequence);
    let previous = last.as_ref().map(|w| &w.status);
    if degraded_changed(previous, &status) {
        ctx.disks_changed.notify_one();
    }
    if let Some(note) = degraded_news(previous, &status) {
        let event = Event {
            type_: EventType::Warning,
            reason: "DiskProblem".into(),
            note: Some(note),
            action: "CheckDisks".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
            warn!(error = %e, node = %object.name_any(), "cannot record the disk Event");
        }
    }
    if let Some(m) = &ctx.metrics {
        m.node_storage(&status);
    }
    *last = Some(Written {
        status,
        at: tokio::time::Instant::now(),
    });
    Ok(())
}

fn action_name(kind: &ActionKind) -> &'static str {
    match kind {
        ActionKind::CreateVg => "create_vg",
        ActionKind::ExtendVg => "extend_vg",
        ActionKind::Retag { .. } => "retag",
    }
}

/// The Event on the NodeStorage for one claim action: Normal when a disk was claimed into a new
/// or existing volume group (or retagged), Warning when the action failed.
/// Thin pools of the classes (`claim::thin_pool::tend`): made and grown when `change`, reported
/// in `classes`. Events: a pool made or grown (Normal), a failure (Warning), and a pool turning
/// Filling or Full (Warning; once per change of its health against `known`).
async fn tend_thin<R: LvmRunner>(
    ctx: &Context<R>,
    recorder: &Recorder,
    object: &NodeStorage,
    classes: &mut [csi_api::crd::DeviceClassStatus],
    known: &[csi_api::crd::DeviceClassStatus],
    change: bool,
) {
    let notes = claim::thin_pool::tend(&ctx.lvm, &ctx.thin, classes, known, change).await;
    for note in notes {
        let was = |vg: &str| {
            known
                .iter()
                .find(|k| k.vg_name == vg)
                .and_then(|k| k.thin_pool.as_ref())
                .map(|p| p.health)
        };
        let (type_, reason, text) = match &note {
            claim::PoolNote::Created { vg, bytes } => (
                EventType::Normal,
                "ThinPoolCreated",
                format!("thin pool of {vg} created with {bytes} bytes"),
            ),
            claim::PoolNote::Extended { vg, bytes } => (
                EventType::Normal,
                "ThinPoolExtended",
                format!(
                    "thin pool of {vg} grown by {bytes} bytes from the volume group's free space"
                ),
            ),
            claim::PoolNote::Failed { vg, what } => {
                warn!(vg, %what, "thin pool");
                (
                    EventType::Warning,
                    "ThinPoolFailed",
                    format!("{vg}: {what}"),
                )
            }
            claim::PoolNote::Filling {
                vg,
                health,
                fill_percent,
            } => {
                if was(vg) == Some(*health) {
                    continue;
                }
                (
                    EventType::Warning,
                    if *health == csi_api::crd::ThinPoolHealth::Full {
                        "ThinPoolFull"
                    } else {
                        "ThinPoolFilling"
                    },
                    format!(
                        "thin pool of {vg} is {fill_percent:.1} % full{}",
                        if *health == csi_api::crd::ThinPoolHealth::Full {
                            ": new thin volumes are refused and its volumes report abnormal"
                        } else {
                            " and cannot grow: add disks to the class or free space in it"
                        }
                    ),
                )
            }
        };
        info!(reason, %text, "thin pool");
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(text),
            action: "ThinPool".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
            warn!(error = %e, "cannot publish Event");
        }
    }
}

fn claim_event(outcome: &Outcome, vg: Option<&str>) -> Event {
    let vg = vg.unwrap_or("its class's volume group");
    let (type_, reason, note) = match (&outcome.kind, &outcome.result) {
        (ActionKind::CreateVg, Ok(())) => (
            EventType::Normal,
            "VolumeGroupCreated",
            format!("disk {} claimed: created {vg} with it", outcome.slot),
        ),
        (ActionKind::ExtendVg, Ok(())) => (
            EventType::Normal,
            "VolumeGroupExtended",
            format!("disk {} claimed: added to {vg}", outcome.slot),
        ),
        (ActionKind::Retag { .. }, Ok(())) => (
            EventType::Normal,
            "DiskRetagged",
            format!("disk {} of {vg}: identity tags rewritten", outcome.slot),
        ),
        (_, Err(e)) => (
            EventType::Warning,
            "ClaimFailed",
            format!(
                "claiming disk {} failed: {e}; see the troubleshooting guide, disk states",
                outcome.slot
            ),
        ),
    };
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action_name(&outcome.kind).into(),
        secondary: None,
    }
}

/// The status last written, and when.
struct Written {
    status: NodeStorageStatus,
    at: tokio::time::Instant,
}

/// Whether the last write is old enough that an unchanged status must be written again.
fn heartbeat_due(last: &Written, heartbeat: Duration) -> bool {
    last.at.elapsed() >= heartbeat
}

/// The NodeStorage an agent creates for its node when there is none: `claimMode` from
/// `--new-node-claim-mode` (`manual` by default, so that a fresh install claims no disk on a
/// node nobody opted in; an administrator switches it to `auto` or lists `include` slots).
fn new_node_storage(node: &str, mode: ClaimMode) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "strata.io/v1alpha1",
        "kind": "NodeStorage",
        "metadata": { "name": node },
        "spec": { "claimMode": mode },
    })
}

fn same_but_time(a: &NodeStorageStatus, b: &NodeStorageStatus) -> bool {
    let strip = |s: &NodeStorageStatus| {
        let mut s = s.clone();
        s.updated_at = None;
        s.capacity_sequence = None;
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

/// Whether the Degraded condition (status or message) differs from the last one published.
fn degraded_changed(last: Option<&NodeStorageStatus>, now: &NodeStorageStatus) -> bool {
    let degraded = |s: &NodeStorageStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    last.map(degraded) != Some(degraded(now))
}

/// The Degraded message when it is new (a problem appeared or changed), for a Warning Event.
fn degraded_news(last: Option<&NodeStorageStatus>, now: &NodeStorageStatus) -> Option<String> {
    let degraded = |s: &NodeStorageStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
            .map(|c| c.message.clone())
    };
    let message = degraded(now)?;
    (last.and_then(degraded).as_ref() != Some(&message)).then_some(message)
}

fn condition(kind: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(Timestamp::now()),
        observed_generation: None,
    }
}

/// The status from a successful claim pass; pure.
pub fn build_status(
    disks: Vec<csi_api::crd::DiskStatus>,
    mut classes: Vec<csi_api::crd::DeviceClassStatus>,
) -> NodeStorageStatus {
    claim::degrade_failing(&mut classes, &disks);
    let degraded = claim::degraded_reasons(&classes, &disks);
    // Failed claims, and failing disks that are in no VG (those in one are named above).
    let failed: Vec<String> = disks
        .iter()
        .filter(|d| {
            d.state == DiskState::Failed
                || (d.state == DiskState::Failing && d.volume_group.is_none())
        })
        .map(|d| format!("{}: {}", d.slot, d.reason))
        .collect();
    let mut problems = degraded;
    problems.extend(failed);
    let conditions = vec![
        condition(
            "Ready",
            true,
            "Scanned",
            format!(
                "{} disk(s) seen, {} device class(es)",
                disks.len(),
                classes.len()
            ),
        ),
        if problems.is_empty() {
            condition(
                "Degraded",
                false,
                "AllDisksPresent",
                "every claimed disk is present".into(),
            )
        } else {
            condition("Degraded", true, "DiskProblem", problems.join("; "))
        },
    ];
    let mut conditions = conditions;
    let pools: Vec<(&str, csi_api::crd::ThinPoolHealth)> = classes
        .iter()
        .filter_map(|c| c.thin_pool.as_ref().map(|p| (c.vg_name.as_str(), p.health)))
        .collect();
    if !pools.is_empty() {
        let filling: Vec<String> = pools
            .iter()
            .filter(|(_, h)| *h != csi_api::crd::ThinPoolHealth::Healthy)
            .map(|(vg, h)| format!("thin pool of {vg} is {h:?}"))
            .collect();
        conditions.push(if filling.is_empty() {
            condition(
                "ThinPoolFilling",
                false,
                "ThinPoolsHealthy",
                "every thin pool is below its warning threshold".into(),
            )
        } else {
            condition(
                "ThinPoolFilling",
                true,
                "ThinPoolFilling",
                filling.join("; "),
            )
        });
    }
    NodeStorageStatus {
        disks,
        device_classes: classes.into_iter().map(|c| c.with_quantities()).collect(),
        conditions,
        observed_generation: None,
        updated_at: Some(Time(Timestamp::now())),
        capacity_sequence: None,
    }
}

fn failed_status(message: String, reason: &str) -> NodeStorageStatus {
    NodeStorageStatus {
        conditions: vec![condition("Ready", false, reason, message)],
        updated_at: Some(Time(Timestamp::now())),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_api::crd::{ClassHealth, DeviceClassStatus, DiskStatus};
    use csi_api::names::DeviceClass;

    fn class(missing: u32) -> DeviceClassStatus {
        DeviceClassStatus {
            name: DeviceClass::Nvme,
            vg_name: "strata-nvme".into(),
            total_bytes: 16 << 30,
            free_bytes: 8 << 30,
            allocatable_bytes: 8 << 30,
            capacity: None,
            allocatable: None,
            pv_count: 2,
            missing_pv_count: missing,
            lv_count: 1,
            health: if missing > 0 {
                ClassHealth::Degraded
            } else {
                ClassHealth::Healthy
            },
            thin_pool: None,
        }
    }

    #[test]
    fn claim_actions_become_events_on_the_node_storage() {
        let ok = Outcome {
            slot: "pci-0000:00:04.0-nvme-1".into(),
            kind: ActionKind::CreateVg,
            result: Ok(()),
        };
        let e = claim_event(&ok, Some("strata-nvme"));
        assert_eq!(e.type_, EventType::Normal);
        assert_eq!(e.reason, "VolumeGroupCreated");
        assert!(e.note.as_ref().unwrap().contains("strata-nvme"));
        let extend = Outcome {
            kind: ActionKind::ExtendVg,
            ..ok.clone()
        };
        assert_eq!(
            claim_event(&extend, Some("strata-nvme")).reason,
            "VolumeGroupExtended"
        );
        let failed = Outcome {
            result: Err("pvcreate: device busy".into()),
            ..ok
        };
        let e = claim_event(&failed, None);
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.reason, "ClaimFailed");
        assert!(e.note.unwrap().contains("device busy"));
    }

    #[test]
    fn a_created_node_storage_carries_the_configured_claim_mode() {
        let manual = new_node_storage("node-a", ClaimMode::Manual);
        assert_eq!(manual["metadata"]["name"], "node-a");
        assert_eq!(manual["spec"]["claimMode"], "manual");
        // what the API server stores, read back, is a policy that claims nothing
        let object: NodeStorage = serde_json::from_value(manual).unwrap();
        let policy = Policy::new(&object.spec).unwrap();
        assert!(matches!(
            policy.admits("pci-0000:00:04.0-nvme-1"),
            claim::Admission::Denied(_)
        ));
        let auto = new_node_storage("node-a", ClaimMode::Auto);
        let object: NodeStorage = serde_json::from_value(auto).unwrap();
        assert_eq!(object.spec.claim_mode, ClaimMode::Auto);
        assert_eq!(
            Policy::new(&object.spec)
                .unwrap()
                .admits("pci-0000:00:04.0-nvme-1"),
            claim::Admission::Allowed
        );
    }

    #[test]
    fn an_unchanged_status_is_rewritten_once_the_heartbeat_is_due() {
        let status = build_status(vec![], vec![class(0)]);
        let fresh = Written {
            status: status.clone(),
            at: tokio::time::Instant::now(),
        };
        assert!(!heartbeat_due(&fresh, Duration::from_secs(30)));
        let old = Written {
            status,
            at: tokio::time::Instant::now() - Duration::from_secs(31),
        };
        assert!(heartbeat_due(&old, Duration::from_secs(30)));
        assert!(heartbeat_due(&fresh, Duration::ZERO));
    }

    #[test]
    fn degraded_classes_raise_the_degraded_condition() {
        let healthy = build_status(vec![], vec![class(0)]);
        let degraded = healthy
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(degraded.status, "False");
        let sick = build_status(vec![], vec![class(1)]);
        let degraded = sick
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(degraded.status, "True");
        assert!(
            degraded.message.contains("strata-nvme is missing 1"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn failed_disks_are_named_in_the_condition() {
        let disk = DiskStatus {
            slot: "pci-0000:00:04.0-nvme-1".into(),
            kernel_name: "nvme0n1".into(),
            media: DeviceClass::Nvme,
            size_bytes: 8 << 30,
            model: String::new(),
            serial: "B".into(),
            wwn: String::new(),
            state: DiskState::Failed,
            reason: "disk in slot was replaced".into(),
            volume_group: None,
        };
        let status = build_status(vec![disk], vec![class(0)]);
        let degraded = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(degraded.status, "True");
        assert!(degraded.message.contains("pci-0000:00:04.0-nvme-1"));
    }

    #[test]
    fn only_the_timestamps_differing_is_no_change() {
        let a = build_status(vec![], vec![class(0)]);
        std::thread::sleep(Duration::from_millis(2));
        let b = build_status(vec![], vec![class(0)]);
        assert!(same_but_time(&a, &b));
        // A new sequence alone is no change (the sequencer decides when it must be published).
        let later = NodeStorageStatus {
            capacity_sequence: Some(9),
            ..b.clone()
        };
        assert!(same_but_time(&a, &later));
        assert!(!same_but_time(&a, &build_status(vec![], vec![class(1)])));
    }

    #[test]
    fn published_classes_carry_readable_quantities() {
        let status = build_status(vec![], vec![class(0)]);
        let c = &status.device_classes[0];
        assert_eq!(c.capacity.as_deref(), Some("16Gi"));
        assert_eq!(c.allocatable.as_deref(), Some("8Gi"));
    }

    #[test]
    fn a_failing_disk_degrades_its_class_names_the_disk_and_is_news_once() {
        let disk = DiskStatus {
            slot: "pci-0000:00:1f.2-ata-2".into(),
            kernel_name: "sdb".into(),
            media: DeviceClass::Nvme,
            size_bytes: 8 << 30,
            model: String::new(),
            serial: "S".into(),
            wwn: String::new(),
            state: DiskState::Failing,
            reason: "kernel device state is offline".into(),
            volume_group: Some("strata-nvme".into()),
        };
        let healthy = build_status(vec![], vec![class(0)]);
        let status = build_status(vec![disk], vec![class(0)]);
        assert_eq!(status.device_classes[0].health, ClassHealth::Degraded);
        let degraded = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(degraded.status, "True");
        assert_eq!(
            degraded.message,
            "strata-nvme: disk in slot pci-0000:00:1f.2-ata-2 is failing: kernel device state is offline"
        );
        assert_eq!(
            degraded_news(Some(&healthy), &status).as_deref(),
            Some(degraded.message.as_str())
        );
        assert_eq!(
            degraded_news(None, &status).as_deref(),
            Some(degraded.message.as_str())
        );
        assert_eq!(degraded_news(Some(&status), &status), None, "no news twice");
        assert_eq!(degraded_news(Some(&status), &healthy), None);
    }

    #[test]
    fn a_vg_only_pass_replaces_its_class_and_keeps_the_others() {
        let ssd = DeviceClassStatus {
            name: DeviceClass::Ssd,
            vg_name: "strata-ssd".into(),
            ..class(0)
        };
        let previous = build_status(vec![], vec![class(0), ssd.clone()]);
        let grown = DeviceClassStatus {
            free_bytes: 7 << 30,
            allocatable_bytes: 7 << 30,
            lv_count: 2,
            ..class(0)
        };
        let classes = splice_classes(&previous, std::slice::from_ref(&grown), 1).unwrap();
        let status = build_status(vec![], classes);
        assert_eq!(status.device_classes[0].free_bytes, 7 << 30);
        assert_eq!(status.device_classes[0].allocatable.as_deref(), Some("7Gi"));
        assert_eq!(status.device_classes[0].lv_count, 2);
        assert_eq!(status.device_classes[1], ssd.with_quantities());
        // A disk event (PV counts), a VG the last status does not know, a VG that is no class:
        // the full pass decides.
        assert!(splice_classes(&previous, &[class(1)], 1).is_none());
        let hdd = DeviceClassStatus {
            name: DeviceClass::Hdd,
            vg_name: "strata-hdd".into(),
            ..class(0)
        };
        assert!(splice_classes(&previous, &[hdd], 1).is_none());
        assert!(splice_classes(&previous, &[], 1).is_none());
    }
}
