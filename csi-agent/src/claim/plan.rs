//! The claim planner: a pure function from (inventory, policy, LVM state) to the actions to take
//! and the status of every disk. It never reuses a slot silently: a blank disk in a slot whose
//! recorded Strata PV is missing is reported *Rejected* ("disk in slot X was replaced: serial A →
//! B; ...") until an operator removes the missing PV — Rejected, not Failed, because nothing was
//! attempted (Failed is kept for claims that errored). A missing PV is reported Missing and makes
//! its class Degraded (see `capacity`); nothing is ever removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use csi_api::crd::{DiskState, DiskStatus};
use csi_api::names::DeviceClass;

use super::policy::{Admission, Policy};
use super::tags::{Recorded, identity_tags, is_identity_tag};
use crate::discovery::{Found, Inventory, Verdict};
use crate::lvm::{Pv, Vg};

/// What LVM reported: every PV and VG (Strata's or not).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LvmState {
    pub pvs: Vec<Pv>,
    pub vgs: Vec<Vg>,
}

impl LvmState {
    /// Strata's PVs (owner tag on the PV or its VG) in a Strata class VG.
    fn strata_pvs(&self) -> impl Iterator<Item = (&Pv, DeviceClass)> {
        self.pvs.iter().filter(|p| p.owned).filter_map(|p| {
            p.vg.as_deref()
                .and_then(DeviceClass::from_vg_name)
                .map(|c| (p, c))
        })
    }

    fn pv(&self, uuid: &str) -> Option<&Pv> {
        self.pvs.iter().find(|p| p.uuid == uuid)
    }

    fn vg(&self, name: &str) -> Option<&Vg> {
        self.vgs.iter().find(|v| v.name == name)
    }
}

/// One change to make through the LVM layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub slot: String,
    pub device: PathBuf,
    pub class: DeviceClass,
    pub vg: String,
    pub kind: ActionKind,
    /// Tags to add to the PV (identity tags; the owner tag is the LVM layer's).
    pub tags: Vec<String>,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionKind {
    /// Create the class VG with this disk (the first disk of the class).
    CreateVg,
    /// Add this disk to the existing class VG.
    ExtendVg,
    /// Rewrite the identity tags of an existing Strata PV (moved slot, tags lost); removes these.
    Retag { remove: Vec<String> },
}

/// The actions, in order, and every disk's status as it stands before they run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub disks: Vec<DiskStatus>,
}

/// Plans the claim of a node (see the module head for the rules).
pub fn plan(inv: &Inventory, policy: &Policy, lvm: &LvmState) -> Plan {
    // PVs whose device discovery saw (by the PV UUID blkid read from the disk itself)
    let seen_uuids: BTreeSet<&str> = inv
        .disks
        .iter()
        .filter_map(|f| f.signature.as_ref()?.lvm_pv_uuid())
        .chain(inv.disks.iter().filter_map(|f| match &f.verdict {
            Verdict::StrataPv { pv_uuid, .. } => Some(pv_uuid.as_str()),
            _ => None,
        }))
        .collect();
    // missing Strata PVs by the slot they recorded
    let mut missing_by_slot: BTreeMap<String, Vec<(&Pv, Recorded)>> = BTreeMap::new();
    for (pv, _) in lvm.strata_pvs().filter(|(p, _)| p.missing) {
        let rec = Recorded::from_tags(&pv.tags);
        if let Some(slot) = rec.slot.clone() {
            missing_by_slot.entry(slot).or_default().push((pv, rec));
        }
    }

    let mut actions = Vec::new();
    let mut disks = Vec::new();
    let mut created: BTreeSet<DeviceClass> = BTreeSet::new();
    for found in &inv.disks {
        let slot = found.disk.slot.as_str();
        let mut status = found.status();
        match &found.verdict {
            Verdict::StrataPv { pv_uuid, vg } => {
                if let Some(class) = vg.as_deref().and_then(DeviceClass::from_vg_name) {
                    status.media = class;
                }
                if let (Some(pv), Some(vg)) = (lvm.pv(pv_uuid), vg)
                    && let Some(action) = retag(found, pv, vg)
                {
                    status.reason = action.reason.clone();
                    actions.push(action);
                }
            }
            Verdict::Refused(_) => {
                if let Some(replaced) = replaced_reason(found, missing_by_slot.get(slot)) {
                    status.reason = format!("{replaced}; {}", status.reason);
                }
            }
            Verdict::Eligible => {
                status.media = policy.media(slot, found.disk.media);
                if let Some(replaced) = replaced_reason(found, missing_by_slot.get(slot)) {
                    status.state = DiskState::Rejected;
                    status.reason = replaced;
                } else if let Admission::Denied(why) = policy.admits(slot) {
                    status.reason = why;
                } else {
                    let class = status.media;
                    let vg = class.vg_name();
                    let kind = match lvm.vg(vg) {
                        Some(v) if !v.owned => Err(format!(
                            "not claimed: volume group {vg} exists without Strata's tag"
                        )),
                        Some(v) if v.missing_pv_count > 0 => Err(format!(
                            "not claimed: volume group {vg} is degraded ({} missing PV); it is not extended until repaired",
                            v.missing_pv_count
                        )),
                        Some(_) => Ok(ActionKind::ExtendVg),
                        None if created.contains(&class) => Ok(ActionKind::ExtendVg),
                        None => {
                            created.insert(class);
                            Ok(ActionKind::CreateVg)
                        }
                    };
                    match kind {
                        Err(why) => status.reason = why,
                        Ok(kind) => {
                            let reason = match kind {
                                ActionKind::CreateVg => format!("to be claimed: creates {vg}"),
                                _ => format!("to be claimed into {vg}"),
                            };
                            status.reason = reason.clone();
                            actions.push(Action {
                                slot: slot.to_owned(),
                                device: found.disk.device.clone(),
                                class,
                                vg: vg.to_owned(),
                                kind,
                                tags: identity_tags(slot, &found.disk),
                                reason,
                            });
                        }
                    }
                }
            }
        }
        disks.push(status);
    }

    // Strata PVs discovery did not see: missing ones (LVM knows them from the VG metadata) and
    // present ones on devices that are not whole disks
    for (pv, class) in lvm.strata_pvs() {
        if seen_uuids.contains(pv.uuid.as_str()) {
            continue;
        }
        let rec = Recorded::from_tags(&pv.tags);
        let vg = pv.vg.clone().unwrap_or_default();
        let (state, reason) = if pv.missing {
            let mut reason = format!("PV {} of {vg} is missing", pv.uuid);
            if let Some(now) = rec
                .slot
                .as_deref()
                .and_then(|s| inv.disks.iter().find(|f| f.disk.slot == s))
                && !now.disk.serial.is_empty()
            {
                reason.push_str(&format!("; its slot now holds serial {}", now.disk.serial));
            }
            (DiskState::Missing, reason)
        } else {
            let dev = pv.device.as_ref().map(|d| d.display().to_string());
            (
                DiskState::Claimed,
                format!(
                    "PV on {} (not a whole disk found by discovery)",
                    dev.unwrap_or_default()
                ),
            )
        };
        disks.push(DiskStatus {
            slot: rec.slot.clone().unwrap_or_default(),
            kernel_name: String::new(),
            media: class,
            size_bytes: pv.size_bytes,
            model: String::new(),
            serial: rec.serial.clone().unwrap_or_default(),
            wwn: rec.wwn.clone().unwrap_or_default(),
            state,
            reason,
            volume_group: Some(vg),
        });
    }
    disks.sort_by(|a, b| (a.slot.is_empty(), &a.slot).cmp(&(b.slot.is_empty(), &b.slot)));
    Plan { actions, disks }
}

/// A retag of a claimed PV whose identity tags do not describe its disk any more.
fn retag(found: &Found, pv: &Pv, vg: &str) -> Option<Action> {
    let slot = &found.disk.slot;
    let want = identity_tags(slot, &found.disk);
    let have: Vec<&String> = pv.tags.iter().filter(|t| is_identity_tag(t)).collect();
    let add: Vec<String> = want.iter().filter(|t| !have.contains(t)).cloned().collect();
    let remove: Vec<String> = have
        .iter()
        .filter(|t| !want.contains(t))
        .map(|t| (*t).clone())
        .collect();
    if add.is_empty() && remove.is_empty() {
        return None;
    }
    let rec = Recorded::from_tags(&pv.tags);
    let reason = match rec.slot.as_deref() {
        Some(old) if old != slot => format!("moved from slot {old}; updating its tags"),
        None => "identity tags missing; writing them".to_owned(),
        Some(_) => match rec.difference(&found.disk) {
            Some(d) => format!("identity changed on the same PV ({d}); updating its tags"),
            None => "identity tags incomplete; updating them".to_owned(),
        },
    };
    Some(Action {
        slot: slot.clone(),
        device: found.disk.device.clone(),
        class: DeviceClass::from_vg_name(vg).unwrap_or(found.disk.media),
        vg: vg.to_owned(),
        kind: ActionKind::Retag { remove },
        tags: add,
        reason,
    })
}

/// "disk in slot X was replaced: serial A → B; ..." when `slot` recorded a missing Strata PV.
fn replaced_reason(found: &Found, missing: Option<&Vec<(&Pv, Recorded)>>) -> Option<String> {
    let (pv, rec) = missing?.first()?;
    let slot = &found.disk.slot;
    let vg = pv.vg.as_deref().unwrap_or("?");
    let what = match rec.difference(&found.disk) {
        Some(diff) => format!("disk in slot {slot} was replaced: {diff}"),
        None => format!(
            "slot {slot} held a Strata PV (serial {}) and now holds a disk without it",
            rec.serial.as_deref().unwrap_or("unknown")
        ),
    };
    Some(format!(
        "{what}; PV {} of {vg} is missing — not reused automatically (remove the missing PV with `vgreduce --removemissing {vg}` to let this disk be claimed)",
        pv.uuid
    ))
}

#[cfg(test)]
mod tests;
