//! The claim pass and the NodeStorage status of this node. Runs when told that something changed
//! (an LV made or removed), when the set of block devices in sysfs changes (checked every second:
//! one directory read), and at the resync period as a safety net. Reads the operator's policy
//! from `spec`, claims eligible disks through `claim`, and publishes `status` by server-side apply
//! (field manager `csi-agent`) only when it differs from the last one published.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use csi_api::crd::{Condition, DiskState, NodeStorage, NodeStorageStatus};
use csi_api::names;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Context;
use crate::claim::{self, Policy};
use crate::discovery::{BlkidProbe, Usage};
use crate::lvm::LvmRunner;

/// Runs until `shutdown`.
pub async fn run<R: LvmRunner>(
    ctx: Arc<Context<R>>,
    resync: Duration,
    shutdown: CancellationToken,
) {
    let api: Api<NodeStorage> = Api::all(ctx.client.clone());
    let recorder = Recorder::new(
        ctx.client.clone(),
        Reporter {
            controller: names::FIELD_MANAGER_AGENT.into(),
            instance: Some(ctx.node.clone()),
        },
    );
    let mut last: Option<NodeStorageStatus> = None;
    let mut devices = block_devices(&ctx);
    let mut next_resync = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        let seen = block_devices(&ctx);
        if now >= next_resync || seen != devices {
            devices = seen;
            next_resync = now + resync;
            match pass(&ctx, &api, &recorder, &mut last, &shutdown).await {
                Ok(()) => {}
                Err(e) => warn!(error = %e, "NodeStorage pass failed; retrying"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ctx.changed.notified() => next_resync = tokio::time::Instant::now(),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The names in `/sys/block`: a cheap signal that a disk appeared or vanished.
fn block_devices<R: LvmRunner>(ctx: &Context<R>) -> BTreeSet<String> {
    std::fs::read_dir(ctx.roots.sysfs.join("block"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
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
    last: &mut Option<NodeStorageStatus>,
    shutdown: &CancellationToken,
) -> Result<(), PassError> {
    let object = match api.get_opt(&ctx.node).await? {
        Some(o) => o,
        None => {
            info!(node = %ctx.node, "creating NodeStorage with the default policy");
            let body = serde_json::json!({
                "apiVersion": "strata.io/v1alpha1",
                "kind": "NodeStorage",
                "metadata": { "name": ctx.node },
                "spec": {},
            });
            let params = PatchParams::apply(names::FIELD_MANAGER_AGENT);
            api.patch(&ctx.node, &params, &Patch::Apply(&body)).await?
        }
    };
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
                    build_status(survey.plan.disks, survey.classes)
                }
                Err(e) => failed_status(e.to_string(), "ClaimFailed"),
            }
        }
    };
    let status = NodeStorageStatus {
        observed_generation: object.metadata.generation,
        ..status
    };
    if last.as_ref().is_some_and(|l| same_but_time(l, &status)) {
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
    if degraded_changed(last.as_ref(), &status) {
        ctx.disks_changed.notify_one();
    }
    if let Some(note) = degraded_news(last.as_ref(), &status) {
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
    *last = Some(status);
    Ok(())
}

fn same_but_time(a: &NodeStorageStatus, b: &NodeStorageStatus) -> bool {
    let strip = |s: &NodeStorageStatus| {
        let mut s = s.clone();
        s.updated_at = None;
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
    NodeStorageStatus {
        disks,
        device_classes: classes,
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
            pv_count: 2,
            missing_pv_count: missing,
            lv_count: 1,
            health: if missing > 0 {
                ClassHealth::Degraded
            } else {
                ClassHealth::Healthy
            },
        }
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
        assert!(!same_but_time(&a, &build_status(vec![], vec![class(1)])));
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
}
