//! PV and VG changes: create a PV, create or extend a VG. A device is accepted only when it is
//! blank (`blkid -p` finds nothing, and lvm2's own pvcreate check agrees — no `-y`, no `-ff`), an
//! orphan PV this process created, or already a PV of the target Strata VG (idempotent retry).
//! `create_vg`/`extend_vg` take blank devices directly (lvm2 makes the PV and joins it in one
//! command), so a crash never leaves an untagged orphan PV behind; PVs get the owner tag as soon
//! as they are in the VG (lvm2 cannot tag orphan PVs).

use std::path::{Path, PathBuf};

use super::error::{CommandFailure, LvmError, Result, Subject};
use super::naming::{self, OWNER_TAG};
use super::report::{Pv, Vg};
use super::runner::{Invocation, LvmRunner};
use super::{Lvm, blkid, failure, name_arg, path_arg};

/// What a device is, as far as joining a VG is concerned.
enum DeviceState {
    /// No PV, no signature.
    Blank,
    /// An orphan PV made by this process.
    OurOrphan,
    /// A PV of this VG already.
    Member(Pv),
}

impl<R: LvmRunner> Lvm<R> {
    /// Makes `device` a PV (an orphan until a VG takes it). Refuses a device with any signature
    /// ([`LvmError::HasSignature`]) and any PV that is not Strata's ([`LvmError::NotOwned`]).
    /// Idempotent: a device that is already a Strata PV (or one this process created) is success.
    pub async fn create_pv(&self, device: &Path) -> Result<Pv> {
        let dev = path_arg(device)?;
        if let Some(pv) = self.pv(device).await? {
            if pv.owned || (pv.vg.is_none() && self.created(device)) {
                return Ok(pv);
            }
            return Err(not_owned_pv(device, &pv));
        }
        self.refuse_signature(device).await?;
        let mut args = self.lvm_args("pvcreate");
        args.push(dev);
        self.run_ok(args, Subject::Device(device), 0).await?;
        self.shared
            .created_pvs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(device.to_path_buf());
        self.pv(device).await?.ok_or_else(|| LvmError::NotFound {
            what: format!("physical volume {} after pvcreate", device.display()),
        })
    }

    /// Creates the Strata VG `vg` on `devices` (blank devices or PVs from [`Lvm::create_pv`]),
    /// tagging the VG and its PVs. Idempotent: an existing Strata VG is extended with whichever
    /// of `devices` it lacks; a VG of that name without the owner tag is [`LvmError::NotOwned`].
    pub async fn create_vg(&self, vg: &str, devices: &[PathBuf]) -> Result<Vg> {
        name_arg(vg)?;
        if devices.is_empty() {
            return Err(LvmError::InvalidArgument(format!(
                "volume group {vg} needs at least one device"
            )));
        }
        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        self.forget_vg(&mut slot);
        match self.vg(vg).await? {
            Some(existing) if !existing.owned => Err(LvmError::NotOwned {
                what: format!("volume group {vg}"),
            }),
            Some(_) => {
                for device in devices {
                    self.add_device(vg, device).await?;
                }
                self.read_vg(vg).await
            }
            None => {
                let mut paths = Vec::with_capacity(devices.len());
                for device in devices {
                    match self.device_state(vg, device).await? {
                        DeviceState::Blank | DeviceState::OurOrphan => {
                            paths.push(path_arg(device)?)
                        }
                        DeviceState::Member(_) => unreachable_member(vg, device)?,
                    }
                }
                let mut args = self.lvm_args("vgcreate");
                args.extend(["--addtag".to_owned(), OWNER_TAG.to_owned(), vg.to_owned()]);
                args.extend(paths.iter().cloned());
                let subject = match devices {
                    [one] => Subject::Device(one),
                    _ => Subject::Vg(vg),
                };
                self.run_ok(args, subject, 0).await?;
                self.tag_pvs(&paths).await?;
                self.read_vg(vg).await
            }
        }
    }

    /// Adds `device` (blank, or a PV from [`Lvm::create_pv`]) to the existing Strata VG `vg`.
    /// Idempotent: a device already in `vg` is success.
    pub async fn extend_vg(&self, vg: &str, device: &Path) -> Result<Vg> {
        name_arg(vg)?;
        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        self.forget_vg(&mut slot);
        match self.vg(vg).await? {
            None => Err(LvmError::NotFound {
                what: format!("volume group {vg}"),
            }),
            Some(existing) if !existing.owned => Err(LvmError::NotOwned {
                what: format!("volume group {vg}"),
            }),
            Some(_) => {
                self.add_device(vg, device).await?;
                self.read_vg(vg).await
            }
        }
    }

    /// Removes the missing PVs from the Strata VG `vg` (`vgreduce --removemissing`, never
    /// `--force`) once no LV has extents on them; refuses with the list of LVs otherwise.
    /// Returns the UUIDs of the PVs removed (none: nothing was missing, nothing run).
    pub async fn remove_missing_pvs(&self, vg: &str) -> Result<Vec<String>> {
        name_arg(vg)?;
        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        self.forget_vg(&mut slot);
        match self.vg(vg).await? {
            None => {
                return Err(LvmError::NotFound {
                    what: format!("volume group {vg}"),
                });
            }
            Some(existing) if !existing.owned => {
                return Err(LvmError::NotOwned {
                    what: format!("volume group {vg}"),
                });
            }
            Some(_) => {}
        }
        let missing: Vec<String> = self
            .vg_pvs(vg)
            .await?
            .into_iter()
            .filter(|p| p.missing)
            .map(|p| p.uuid)
            .collect();
        if missing.is_empty() {
            return Ok(missing);
        }
        let mut volumes: Vec<String> = self
            .pv_segments(Some(vg))
            .await?
            .into_iter()
            .filter(|s| s.pv_missing)
            .map(|s| naming::volume_from_tags(s.lv_tags.iter().map(String::as_str)).unwrap_or(s.lv))
            .collect();
        volumes.sort();
        volumes.dedup();
        if !volumes.is_empty() {
            return Err(LvmError::MissingPvInUse {
                vg: vg.to_owned(),
                volumes,
            });
        }
        let mut args = self.lvm_args("vgreduce");
        args.extend(["--removemissing".to_owned(), vg.to_owned()]);
        self.run_ok(args, Subject::Vg(vg), 0).await?;
        Ok(missing)
    }

    /// Puts `device` into the (owned, locked) VG `vg` unless it is there already.
    async fn add_device(&self, vg: &str, device: &Path) -> Result<()> {
        let dev = path_arg(device)?;
        match self.device_state(vg, device).await? {
            DeviceState::Member(pv) if pv.tags.iter().any(|t| t == OWNER_TAG) => Ok(()),
            DeviceState::Member(_) => self.tag_pvs(&[dev]).await,
            DeviceState::Blank | DeviceState::OurOrphan => {
                let mut args = self.lvm_args("vgextend");
                args.extend([vg.to_owned(), dev.clone()]);
                self.run_ok(args, Subject::Device(device), 0).await?;
                self.tag_pvs(&[dev]).await
            }
        }
    }

    async fn device_state(&self, vg: &str, device: &Path) -> Result<DeviceState> {
        match self.pv(device).await? {
            Some(pv) if pv.vg.as_deref() == Some(vg) => Ok(DeviceState::Member(pv)),
            Some(pv) if pv.vg.is_none() && self.created(device) => Ok(DeviceState::OurOrphan),
            Some(pv) => Err(not_owned_pv(device, &pv)),
            None => {
                self.refuse_signature(device).await?;
                Ok(DeviceState::Blank)
            }
        }
    }

    /// `blkid -p`: any superblock or partition table found means the device is refused.
    async fn refuse_signature(&self, device: &Path) -> Result<()> {
        let inv = Invocation::blkid(["-p", "-o", "export", &path_arg(device)?]);
        let (inv, out) = self.run(inv).await?;
        match out.code {
            // 2: nothing found.
            Some(2) => Ok(()),
            // 0: something found; 8: several things found ("ambivalent").
            Some(0) | Some(8) => {
                let found: Vec<String> = match blkid::parse_export(&out.stdout) {
                    blkid::Probed::Signature(sig) => ["TYPE", "PTTYPE"]
                        .into_iter()
                        .filter_map(|key| sig.get(key).map(|v| format!("{key}={v}")))
                        .collect(),
                    blkid::Probed::Blank | blkid::Probed::Ambivalent => Vec::new(),
                };
                let detail = if found.is_empty() {
                    "ambivalent probe result".to_owned()
                } else {
                    found.join(", ")
                };
                Err(LvmError::HasSignature {
                    device: device.to_path_buf(),
                    detail,
                })
            }
            _ => Err(LvmError::Other(failure(&inv, &out))),
        }
    }

    async fn tag_pvs(&self, devices: &[String]) -> Result<()> {
        let mut args = self.lvm_args("pvchange");
        args.extend(["--addtag".to_owned(), OWNER_TAG.to_owned()]);
        args.extend(devices.iter().cloned());
        self.run_ok(args, Subject::Other, 0).await.map(drop)
    }

    async fn read_vg(&self, vg: &str) -> Result<Vg> {
        self.vg(vg).await?.ok_or_else(|| LvmError::NotFound {
            what: format!("volume group {vg}"),
        })
    }

    fn created(&self, device: &Path) -> bool {
        self.shared
            .created_pvs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(device)
    }
}

fn not_owned_pv(device: &Path, pv: &Pv) -> LvmError {
    LvmError::NotOwned {
        what: match &pv.vg {
            Some(vg) => format!("device {} (PV of volume group {vg})", device.display()),
            None => format!(
                "device {} (orphan PV not created by Strata in this run; orphan PVs cannot carry tags)",
                device.display()
            ),
        },
    }
}

/// A device reported as a member of a VG that does not exist: lvm2 contradicted itself.
fn unreachable_member(vg: &str, device: &Path) -> Result<()> {
    Err(LvmError::Other(CommandFailure {
        command: format!("pvs {}", device.display()),
        code: Some(0),
        stderr: format!("reported as a PV of {vg}, but the volume group was not found"),
    }))
}
