//! Claim: turns eligible disks into PVs of one VG per media class (`strata-nvme`, `strata-ssd`,
//! `strata-hdd`), through the LVM layer only. [`plan`](plan::plan) is a pure function (inventory +
//! policy + LVM state → actions with reasons, and every disk's status); [`execute`] applies the
//! actions (probing each device again right before pvcreate); [`class_summary`] is the per-class
//! capacity. PVs carry Strata's owner tag plus slot/serial/WWN tags, so they are found again by
//! UUID and slot after a reboot, and a replaced disk is reported, never silently reused.
//! [`survey`] and [`reconcile`] tie discovery, LVM and the planner together for the agent and for
//! `csi-agent discover` (a survey that changes nothing).

mod capacity;
mod execute;
mod plan;
mod policy;
mod tags;
pub mod thin_pool;

use std::collections::BTreeMap;

use csi_api::crd::{DeviceClassStatus, DiskState, NodeStorageSpec};

pub use capacity::{class_summary, degrade_failing, degraded_reasons};
pub use execute::{Outcome, execute};
pub use plan::{Action, ActionKind, LvmState, Plan, plan};
pub use policy::{Admission, InvalidPattern, Policy};
pub use tags::{Recorded, SERIAL_TAG_PREFIX, SLOT_TAG_PREFIX, WWN_TAG_PREFIX, identity_tags};
pub use thin_pool::{PoolNote, ThinSettings};

use crate::discovery::{
    self, BlkidProbe, DiscoveryError, Inventory, KnownPv, PvView, Roots, SignatureProbe, Usage,
};
use crate::lvm::{Lvm, LvmError, LvmOptions, LvmRunner, RunnerConfig};

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Policy(#[from] InvalidPattern),
    #[error("cannot read mounts and swaps: {0}")]
    Usage(std::io::Error),
    #[error(transparent)]
    Lvm(#[from] LvmError),
    #[error("LVM is unavailable: {0}")]
    LvmUnavailable(String),
}

/// A look at the node: what discovery found, what LVM holds, and what the planner would do.
#[derive(Clone, Debug)]
pub struct Survey {
    pub inventory: Inventory,
    /// LVM's state, or why LVM could not be asked.
    pub lvm: Result<LvmState, String>,
    pub plan: Plan,
    pub classes: Vec<DeviceClassStatus>,
    /// What could not be checked (also shown by `discover`).
    pub notes: Vec<String>,
}

/// Every PV and VG lvm2 reports.
pub async fn read_lvm<R: LvmRunner>(lvm: &Lvm<R>) -> Result<LvmState, LvmError> {
    Ok(LvmState {
        pvs: lvm.pvs().await?,
        vgs: lvm.vgs().await?,
    })
}

/// What discovery needs to know about PVs: which UUIDs are Strata's.
pub fn pv_view(state: &Result<LvmState, String>) -> PvView {
    match state {
        Ok(s) => PvView::Known(
            s.pvs
                .iter()
                .map(|p| {
                    let strata = p.owned
                        && p.vg
                            .as_deref()
                            .and_then(csi_api::names::DeviceClass::from_vg_name)
                            .is_some();
                    (
                        p.uuid.clone(),
                        KnownPv {
                            vg: p.vg.clone(),
                            strata,
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        ),
        Err(why) => PvView::Unavailable(why.clone()),
    }
}

/// Scans the node and plans, changing nothing. Without LVM, eligible disks stay Available with
/// a note and nothing is planned.
pub async fn survey<R: LvmRunner>(
    roots: &Roots,
    usage: &Usage,
    probe: &dyn SignatureProbe,
    lvm: &Lvm<R>,
    policy: &Policy,
) -> Result<Survey, ClaimError> {
    let state = read_lvm(lvm).await.map_err(|e| e.to_string());
    let inventory = discovery::scan(roots, usage, probe, &pv_view(&state)).await?;
    let notes = inventory.notes.clone();
    let (plan, classes) = match &state {
        Ok(s) => (
            plan::plan(&inventory, policy, s),
            class_summary(&s.vgs, policy),
        ),
        Err(why) => {
            let disks = inventory
                .disks
                .iter()
                .map(|f| {
                    let mut d = f.status();
                    if d.state == DiskState::Available {
                        d.reason = format!("cannot be claimed while LVM is unavailable ({why})");
                    }
                    d
                })
                .collect();
            (
                Plan {
                    actions: Vec::new(),
                    disks,
                },
                Vec::new(),
            )
        }
    };
    Ok(Survey {
        inventory,
        lvm: state,
        plan,
        classes,
        notes,
    })
}

/// Scans, plans and applies: the claim pass of the agent. Returns the survey with the disks'
/// status after the actions and the class summary read back from LVM.
pub async fn reconcile<R: LvmRunner>(
    roots: &Roots,
    usage: &Usage,
    probe: &dyn SignatureProbe,
    lvm: &Lvm<R>,
    policy: &Policy,
) -> Result<(Survey, Vec<Outcome>), ClaimError> {
    let mut survey = survey(roots, usage, probe, lvm, policy).await?;
    if let Err(why) = &survey.lvm {
        return Err(ClaimError::LvmUnavailable(why.clone()));
    }
    let outcomes = execute(&mut survey.plan, lvm, probe).await;
    if !outcomes.is_empty() {
        let state = read_lvm(lvm).await?;
        survey.classes = class_summary(&state.vgs, policy);
        survey.lvm = Ok(state);
    }
    Ok((survey, outcomes))
}

/// `csi-agent discover`: the node's disks as a table or as `{"disks":[...]}`; changes nothing.
/// Returns what goes to stdout and the notes (for stderr in JSON mode).
pub async fn discover(
    roots: &Roots,
    json: bool,
    spec: &NodeStorageSpec,
) -> Result<(String, Vec<String>), ClaimError> {
    let usage = Usage::read(&roots.proc).map_err(ClaimError::Usage)?;
    let policy = Policy::new(spec)?;
    let lvm = Lvm::system(RunnerConfig::default(), LvmOptions::default());
    let survey = survey(roots, &usage, &BlkidProbe::default(), &lvm, &policy).await?;
    let out = if json {
        discovery::render_json(&survey.plan.disks)
    } else {
        discovery::render_table(&survey.plan.disks, &survey.notes)
    };
    Ok((out, survey.notes))
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::lvm::{Invocation, Output};

    /// lvm2 is not installed.
    struct NoLvm;

    #[async_trait]
    impl LvmRunner for NoLvm {
        async fn run(&self, _: &Invocation, _: &CancellationToken) -> Result<Output, LvmError> {
            Err(LvmError::Spawn {
                program: "lvm".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        }
    }

    struct Blank;

    #[async_trait]
    impl SignatureProbe for Blank {
        async fn probe(
            &self,
            _: &std::path::Path,
        ) -> Result<crate::lvm::blkid::Probed, crate::lvm::blkid::ProbeError> {
            Ok(crate::lvm::blkid::Probed::Blank)
        }
    }

    fn lab() -> Roots {
        let tree =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sysfs/lab");
        Roots {
            sysfs: tree.join("sys"),
            dev: tree.join("dev"),
            proc: tree.join("proc"),
        }
    }

    #[tokio::test]
    async fn without_lvm_the_survey_degrades_with_a_note_and_reconcile_refuses() {
        let roots = lab();
        let usage = Usage::read(&roots.proc).unwrap();
        let lvm = Lvm::new(NoLvm, LvmOptions::default());
        let policy = Policy::new(&NodeStorageSpec::default()).unwrap();
        // a probe that finds nothing: the raw disks stay Available, the others Rejected
        let probe = Blank;
        let s = survey(&roots, &usage, &probe, &lvm, &policy).await.unwrap();
        assert!(s.lvm.is_err());
        assert!(s.plan.actions.is_empty());
        assert!(s.classes.is_empty());
        assert_eq!(s.notes.len(), 1);
        assert!(s.notes[0].contains("LVM is unavailable"), "{:?}", s.notes);
        assert_eq!(s.plan.disks.len(), 8);
        let nvme = s.plan.disks.iter().find(|d| d.serial == "NVME-A").unwrap();
        assert_eq!(nvme.state, DiskState::Available);
        assert!(
            nvme.reason.contains("while LVM is unavailable"),
            "{}",
            nvme.reason
        );
        let err = reconcile(&roots, &usage, &probe, &lvm, &policy)
            .await
            .unwrap_err();
        assert!(matches!(err, ClaimError::LvmUnavailable(_)), "{err}");
    }
}
