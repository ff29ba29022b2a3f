//! [`Volumes`] over the LVM layer: a volume is the LV tagged with its CSI name in one of the class
//! VGs (`strata-nvme`, `strata-ssd`, `strata-hdd`); its class is its VG, its size the LV's size.
//! Nothing else is stored anywhere, so the state survives restarts and is shared with `lvs`.
//! A volume is unhealthy when its VG misses a PV or its LV is not active; an inactive LV is
//! activated when looked up (after a reboot nothing else activates it).

use std::collections::BTreeMap;

use async_trait::async_trait;
use csi_api::names::DeviceClass;

use super::error::{Error, Result};
use super::volumes::{ClassInfo, VolumeInfo, Volumes};
use crate::lvm::{Activation, Lv, Lvm, LvmRunner, Vg};

/// The node's volumes in its class VGs.
pub struct LvmVolumes<R: LvmRunner> {
    lvm: Lvm<R>,
    /// Bytes of each class kept free of volumes.
    reserved: BTreeMap<DeviceClass, u64>,
}

impl<R: LvmRunner> LvmVolumes<R> {
    pub fn new(lvm: Lvm<R>, reserved: BTreeMap<DeviceClass, u64>) -> Self {
        LvmVolumes { lvm, reserved }
    }

    async fn class_vgs(&self) -> Result<Vec<(DeviceClass, Vg)>> {
        Ok(self
            .lvm
            .strata_vgs()
            .await?
            .into_iter()
            .filter_map(|vg| DeviceClass::from_vg_name(&vg.name).map(|c| (c, vg)))
            .collect())
    }

    fn info(lv: &Lv, class: DeviceClass, vg: Option<&Vg>) -> Option<VolumeInfo> {
        let id = lv.volume.clone()?;
        let problem = match (vg, lv.active) {
            (Some(vg), _) if vg.missing_pv_count > 0 => Some(format!(
                "volume group {} lost {} physical volume(s)",
                vg.name, vg.missing_pv_count
            )),
            (None, _) => Some(format!("volume group {} is not readable", lv.vg)),
            (Some(_), Activation::Inactive) => {
                Some(format!("logical volume {} is not active", lv.name))
            }
            (Some(_), Activation::Active | Activation::Unknown) => None,
        };
        Some(VolumeInfo {
            id,
            class,
            size_bytes: lv.size_bytes,
            device: lv.device_path(),
            problem,
        })
    }
}

#[async_trait]
impl<R: LvmRunner> Volumes for LvmVolumes<R> {
    async fn find(&self, id: &str) -> Result<Option<VolumeInfo>> {
        let Some(mut lv) = self.lvm.find_lv(id).await? else {
            return Ok(None);
        };
        let Some(class) = DeviceClass::from_vg_name(&lv.vg) else {
            return Ok(None);
        };
        if lv.active == Activation::Inactive && self.lvm.options().activate {
            lv = self.lvm.activate_lv(&lv.vg, id).await?;
        }
        let vg = self.lvm.vg(&lv.vg).await?;
        Ok(Self::info(&lv, class, vg.as_ref()))
    }

    async fn list(&self) -> Result<Vec<VolumeInfo>> {
        let vgs: BTreeMap<String, (DeviceClass, Vg)> = self
            .class_vgs()
            .await?
            .into_iter()
            .map(|(c, vg)| (vg.name.clone(), (c, vg)))
            .collect();
        let mut out: Vec<VolumeInfo> = self
            .lvm
            .strata_lvs(None)
            .await?
            .iter()
            .filter_map(|lv| {
                let (class, vg) = vgs.get(&lv.vg)?;
                Self::info(lv, *class, Some(vg))
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn classes(&self) -> Result<Vec<ClassInfo>> {
        Ok(self
            .class_vgs()
            .await?
            .into_iter()
            .map(|(class, vg)| {
                let reserved = self.reserved.get(&class).copied().unwrap_or(0);
                ClassInfo {
                    class,
                    total_bytes: vg.size_bytes,
                    free_bytes: vg.free_bytes,
                    allocatable_bytes: vg.free_bytes.saturating_sub(reserved),
                    extent_bytes: vg.extent_size,
                    missing_pvs: u32::try_from(vg.missing_pv_count).unwrap_or(u32::MAX),
                }
            })
            .collect())
    }

    async fn create(&self, id: &str, class: DeviceClass, bytes: u64) -> Result<VolumeInfo> {
        let lv = self.lvm.create_lv(class.vg_name(), id, bytes, None).await?;
        Ok(VolumeInfo {
            id: id.to_owned(),
            class,
            size_bytes: lv.size_bytes,
            device: lv.device_path(),
            problem: None,
        })
    }

    async fn extend(&self, id: &str, bytes: u64) -> Result<VolumeInfo> {
        let current = self
            .find(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("volume {id:?} does not exist")))?;
        let lv = self
            .lvm
            .extend_lv(current.class.vg_name(), id, bytes)
            .await?;
        Ok(VolumeInfo {
            size_bytes: lv.size_bytes,
            ..current
        })
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let Some(lv) = self.lvm.find_lv(id).await? else {
            return Ok(());
        };
        self.lvm.remove_lv(&lv.vg, id).await?;
        Ok(())
    }
}
