//! The executor: applies a [`Plan`]'s actions one by one through the LVM layer and updates the
//! disks' status with each outcome (Claimed, or Failed with the error; Rejected when the disk grew
//! a signature since the scan — the signature is probed again right before each claim). Identity
//! tags are written with `pvchange` once the PV is in its (owned) VG: the LVM layer has no call
//! for PV tags other than its owner tag yet, so this one command goes through its runner.

use std::path::Path;

use csi_api::crd::{DiskState, DiskStatus};
use tokio_util::sync::CancellationToken;

use super::plan::{Action, ActionKind, Plan};
use crate::discovery::{SignatureProbe, recheck_blank};
use crate::lvm::{Invocation, Lvm, LvmError, LvmRunner};

/// What happened to one action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub slot: String,
    pub kind: ActionKind,
    pub result: Result<(), String>,
}

/// Applies every action of `plan` in order and rewrites `plan.disks` accordingly.
pub async fn execute<R: LvmRunner>(
    plan: &mut Plan,
    lvm: &Lvm<R>,
    probe: &dyn SignatureProbe,
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(plan.actions.len());
    for action in &plan.actions {
        let (state, reason, result) = apply(action, lvm, probe).await;
        if let Some(status) = find(&mut plan.disks, &action.slot) {
            status.state = state;
            status.reason = reason;
            if state == DiskState::Claimed {
                status.volume_group = Some(action.vg.clone());
            }
        }
        outcomes.push(Outcome {
            slot: action.slot.clone(),
            kind: action.kind.clone(),
            result,
        });
    }
    outcomes
}

fn find<'a>(disks: &'a mut [DiskStatus], slot: &str) -> Option<&'a mut DiskStatus> {
    disks
        .iter_mut()
        .find(|d| d.slot == slot && matches!(d.state, DiskState::Available | DiskState::Claimed))
}

async fn apply<R: LvmRunner>(
    action: &Action,
    lvm: &Lvm<R>,
    probe: &dyn SignatureProbe,
) -> (DiskState, String, Result<(), String>) {
    let vg = action.vg.as_str();
    match &action.kind {
        ActionKind::CreateVg | ActionKind::ExtendVg => {
            if let Err(refusal) = recheck_blank(probe, &action.device).await {
                let why = format!("not claimed: {refusal} (found right before pvcreate)");
                return (DiskState::Rejected, why.clone(), Err(why));
            }
            let joined = match action.kind {
                ActionKind::CreateVg => {
                    lvm.create_vg(vg, std::slice::from_ref(&action.device))
                        .await
                }
                _ => match lvm.extend_vg(vg, &action.device).await {
                    // the VG this plan meant to create first failed: create it with this disk
                    Err(LvmError::NotFound { .. }) => {
                        lvm.create_vg(vg, std::slice::from_ref(&action.device))
                            .await
                    }
                    other => other,
                },
            };
            if let Err(e) = joined {
                let why = format!("claim into {vg} failed: {e}");
                tracing::warn!(slot = %action.slot, error = %e, "claim failed");
                return (DiskState::Failed, why.clone(), Err(why));
            }
            tracing::info!(slot = %action.slot, vg, "disk claimed");
            match change_tags(lvm, &action.device, &action.tags, &[]).await {
                Ok(()) => (DiskState::Claimed, String::new(), Ok(())),
                Err(e) => (
                    DiskState::Claimed,
                    format!("identity tags not written (retried on the next pass): {e}"),
                    Err(e.to_string()),
                ),
            }
        }
        ActionKind::Retag { remove } => {
            match change_tags(lvm, &action.device, &action.tags, remove).await {
                Ok(()) => (DiskState::Claimed, String::new(), Ok(())),
                Err(e) => (
                    DiskState::Claimed,
                    format!("{}; retag failed: {e}", action.reason),
                    Err(e.to_string()),
                ),
            }
        }
    }
}

/// `pvchange [--deltag T]... [--addtag T]... DEVICE` on a PV already in an owned Strata VG.
async fn change_tags<R: LvmRunner>(
    lvm: &Lvm<R>,
    device: &Path,
    add: &[String],
    remove: &[String],
) -> Result<(), LvmError> {
    if add.is_empty() && remove.is_empty() {
        return Ok(());
    }
    let Some(dev) = device.to_str().filter(|_| device.is_absolute()) else {
        return Err(LvmError::InvalidArgument(format!(
            "device path {} must be absolute UTF-8",
            device.display()
        )));
    };
    let pv = lvm.pv(device).await?.ok_or_else(|| LvmError::NotFound {
        what: format!("physical volume {dev}"),
    })?;
    if !pv.owned {
        return Err(LvmError::NotOwned {
            what: format!("physical volume {dev}"),
        });
    }
    let mut args = vec!["pvchange".to_owned()];
    if let Some(config) = &lvm.options().config {
        args.extend(["--config".to_owned(), config.clone()]);
    }
    for t in remove {
        args.extend(["--deltag".to_owned(), t.clone()]);
    }
    for t in add {
        args.extend(["--addtag".to_owned(), t.clone()]);
    }
    args.push(dev.to_owned());
    let inv = Invocation::lvm(args);
    let out = lvm.runner().run(&inv, &CancellationToken::new()).await?;
    if out.success() {
        Ok(())
    } else {
        Err(LvmError::Other(crate::lvm::CommandFailure {
            command: inv.display(),
            code: out.code,
            stderr: out.stderr.trim().to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use async_trait::async_trait;
    use csi_api::names::DeviceClass;

    use super::*;
    use crate::lvm::blkid::{ProbeError, Probed, parse_export};
    use crate::lvm::{FakeRunner, LvmOptions, Reply};

    /// Answers every probe with the same result.
    struct Fixed(Probed);

    #[async_trait]
    impl SignatureProbe for Fixed {
        async fn probe(&self, _: &Path) -> Result<Probed, ProbeError> {
            Ok(self.0.clone())
        }
    }

    fn one_claim() -> Plan {
        let slot = "pci-0000:00:04.0-nvme-1";
        Plan {
            actions: vec![Action {
                slot: slot.into(),
                device: PathBuf::from("/dev/nvme0n1"),
                class: DeviceClass::Nvme,
                vg: "strata-nvme".into(),
                kind: ActionKind::CreateVg,
                tags: vec!["strata.io/slot=x".into()],
                reason: "to be claimed: creates strata-nvme".into(),
            }],
            disks: vec![DiskStatus {
                slot: slot.into(),
                kernel_name: "nvme0n1".into(),
                media: DeviceClass::Nvme,
                size_bytes: 8 << 30,
                model: String::new(),
                serial: "NVME-A".into(),
                wwn: String::new(),
                state: DiskState::Available,
                reason: "to be claimed: creates strata-nvme".into(),
                volume_group: None,
            }],
        }
    }

    #[tokio::test]
    async fn a_signature_found_right_before_pvcreate_stops_the_claim() {
        let lvm = Lvm::new(FakeRunner::scripted(), LvmOptions::default());
        let probe = Fixed(parse_export("TYPE=xfs\nUSAGE=filesystem\n"));
        let mut plan = one_claim();
        let out = execute(&mut plan, &lvm, &probe).await;
        assert!(out[0].result.is_err());
        assert!(lvm.runner().calls().is_empty(), "no LVM command may run");
        let d = &plan.disks[0];
        assert_eq!(d.state, DiskState::Rejected);
        assert_eq!(
            d.reason,
            "not claimed: has xfs filesystem (found right before pvcreate)"
        );
    }

    #[tokio::test]
    async fn an_lvm_failure_marks_the_disk_failed() {
        let runner =
            FakeRunner::from_fn(|_| Reply::fail(5, "  Device /dev/nvme0n1 excluded by a filter."));
        let lvm = Lvm::new(runner, LvmOptions::default());
        let mut plan = one_claim();
        let out = execute(&mut plan, &lvm, &Fixed(Probed::Blank)).await;
        assert!(out[0].result.is_err());
        let d = &plan.disks[0];
        assert_eq!(d.state, DiskState::Failed);
        assert!(
            d.reason.starts_with("claim into strata-nvme failed:"),
            "{}",
            d.reason
        );
        assert_eq!(d.volume_group, None);
    }
}
