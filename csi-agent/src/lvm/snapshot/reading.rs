//! The one `lvs` a snapshot, restore or clone create decides on, under the VG's mutex: every LV
//! of the VG with the snapshot fields and the thin fields ([`CREATE_FIELDS`]). From it come the
//! existing snapshot or volume of the name asked (idempotency, other source), the source LV
//! (missing, not ours, linear) and the pool's state for admission — what used to be three
//! separate `lvs` (issue 20 bench: each costs 0.3–0.5 s under the VM's emulation).

use super::{Snapshot, parse_snapshots, snapshot_lv_name};
use crate::lvm::error::{LvmError, Result};
use crate::lvm::lv::check_ours;
use crate::lvm::naming::lv_name_for;
use crate::lvm::report::{self, Lv};
use crate::lvm::thin::{THIN_POOL_LV, ThinState, is_thin, parse_thin_state};

/// Fields of the create's `lvs`: [`super::SNAPSHOT_FIELDS`] plus the thin fields of
/// [`crate::lvm::thin::THIN_FIELDS`].
pub const CREATE_FIELDS: &str = "lv_name,vg_name,lv_uuid,lv_size,lv_tags,lv_active,lv_attr,\
lv_time,segtype,pool_lv,data_percent,metadata_percent,lv_metadata_size";

/// One VG as the create's `lvs` showed it.
#[derive(Debug)]
pub(super) struct VgReading {
    vg: String,
    lvs: Vec<Lv>,
    snapshots: Vec<Snapshot>,
    /// The pool and what is promised on it; `None` without a pool.
    pub thin: Option<ThinState>,
}

impl VgReading {
    /// Parses an `lvs` report of the whole VG `vg` made with [`CREATE_FIELDS`].
    pub fn parse(command: &str, vg: &str, json: &str) -> Result<Self> {
        Ok(VgReading {
            vg: vg.to_owned(),
            lvs: report::parse_lvs(command, json)?,
            snapshots: parse_snapshots(command, json)?,
            thin: parse_thin_state(command, json, THIN_POOL_LV)?,
        })
    }

    /// The LV named `lv_name`, whoever owns it.
    pub fn lv(&self, lv_name: &str) -> Option<&Lv> {
        self.lvs.iter().find(|l| l.name == lv_name)
    }

    /// The snapshot `snapshot_id`, by its LV name; an LV of that name that is not this Strata
    /// snapshot is [`LvmError::NotOwned`].
    pub fn snapshot(&self, snapshot_id: &str) -> Result<Option<Snapshot>> {
        let lv_name = snapshot_lv_name(snapshot_id);
        if self.lv(&lv_name).is_none() {
            return Ok(None);
        }
        match self.snapshots.iter().find(|s| s.lv.name == lv_name) {
            Some(s) if s.snapshot_id == snapshot_id => Ok(Some(s.clone())),
            _ => Err(LvmError::NotOwned {
                what: format!("logical volume {}/{lv_name}", self.vg),
            }),
        }
    }

    /// The thin LV of Strata volume `volume`: missing (or not ours) is [`LvmError::NotFound`],
    /// linear [`LvmError::NotThin`].
    pub fn thin_origin(&self, volume: &str) -> Result<Lv> {
        let vg = &self.vg;
        let lv_name = lv_name_for(volume);
        let not_found = || LvmError::NotFound {
            what: format!("volume {volume:?} in volume group {vg}"),
        };
        let lv = self.lv(&lv_name).cloned().ok_or_else(not_found)?;
        let lv = check_ours(vg, volume, lv).map_err(|_| not_found())?;
        if !is_thin(&lv) {
            return Err(LvmError::NotThin {
                what: format!("volume {volume:?} ({vg}/{lv_name})"),
            });
        }
        Ok(lv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_create_report_asks_every_field_its_parsers_read() {
        let have: Vec<&str> = CREATE_FIELDS.split(',').collect();
        for field in super::super::SNAPSHOT_FIELDS
            .split(',')
            .chain(crate::lvm::thin::THIN_FIELDS.split(','))
        {
            assert!(have.contains(&field), "{field} missing");
        }
    }
}
