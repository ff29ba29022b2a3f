//! LV changes by CSI volume name: create, extend (grow only), remove, activate. Each runs under
//! its VG's mutex and costs one lvm2 command on the common path: ownership and extent size of the
//! VG come from a short-lived cache, existence is learnt from lvcreate's own refusal, and removal
//! is restricted to LVs carrying both the owner and the volume tag with lvm2's `--select`.
//! The slower path (re-reading the LV) only runs to explain a refusal.

use super::error::{LvmError, Result, Subject, classify};
use super::naming::{self, OWNER_TAG, PvcRef, lv_name_for};
use super::report::{Activation, Lv};
use super::runner::LvmRunner;
use super::{Lvm, VgSlot, name_arg};

impl<R: LvmRunner> Lvm<R> {
    /// Creates the LV of `volume` in the Strata VG `vg` with at least `size_bytes` (rounded up
    /// to whole extents), tagged with the owner, the volume name and the PVC (if given).
    /// Idempotent: an LV of this volume with the same rounded size is success (activated if the
    /// layer activates); another size is [`LvmError::AlreadyExistsDifferent`]. Not enough free
    /// extents is [`LvmError::InsufficientSpace`] and creates nothing.
    pub async fn create_lv(
        &self,
        vg: &str,
        volume: &str,
        size_bytes: u64,
        pvc: Option<&PvcRef>,
    ) -> Result<Lv> {
        self.create_lv_within(vg, volume, size_bytes, pvc, 0).await
    }

    /// [`Lvm::create_lv`] that also keeps `reserve_bytes` of the VG free: when the VG's free bytes
    /// minus the reserve are below the (rounded) size, nothing is created and the answer is
    /// [`LvmError::InsufficientSpace`] — unless the LV already exists (an idempotent repeat).
    /// The check and the lvcreate run under the VG's mutex, on a fresh `vgs`.
    pub async fn create_lv_within(
        &self,
        vg: &str,
        volume: &str,
        size_bytes: u64,
        pvc: Option<&PvcRef>,
        reserve_bytes: u64,
    ) -> Result<Lv> {
        naming::validate_volume_name(volume)?;
        let vg_arg = name_arg(vg)?;
        if size_bytes == 0 {
            return Err(LvmError::InvalidArgument(format!(
                "volume {volume:?}: size must be positive"
            )));
        }
        let lv_name = lv_name_for(volume);
        let mut tags = vec![OWNER_TAG.to_owned(), naming::volume_tag(volume)?];
        if let Some(pvc) = pvc {
            tags.push(naming::pvc_tag(pvc)?);
        }

        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        let facts = self.owned_vg(vg, &mut slot).await?;
        let size = rounded(size_bytes, facts.extent_size)?;
        if reserve_bytes > 0
            && let Some(short) = self.short_of_reserve(vg, size, reserve_bytes).await?
            && self.lv_by_name(vg, &lv_name).await?.is_none()
        {
            return Err(short);
        }

        let activate = self.shared.options.activate;
        let mut args = self.lvm_args("lvcreate");
        args.extend(["-n".to_owned(), lv_name.clone()]);
        args.extend(["-L".to_owned(), format!("{size}b")]);
        for tag in &tags {
            args.extend(["--addtag".to_owned(), tag.clone()]);
        }
        if activate {
            args.extend(["-ay", "-Zy", "-Wy", "--yes"].map(String::from));
        } else {
            args.extend(["-an", "-Zn"].map(String::from));
        }
        args.push(vg_arg);

        let (inv, out) = self.run(super::Invocation::lvm(args)).await?;
        let created = Created {
            vg,
            volume,
            lv_name,
            size,
            tags,
            pvc,
            activate,
            thin: false,
        };
        self.finish_lvcreate(&mut slot, created, &inv, &out).await
    }

    /// What an `lvcreate` of a volume's LV answered, turned into the LV: the new LV on success;
    /// on "already exists" the existing LV if it is this volume's, not being removed, and of the
    /// same size and kind (an idempotent repeat; activated if it must be), else
    /// [`LvmError::AlreadyExistsDifferent`]; any other failure classified (and the VG's cached
    /// facts dropped unless it was only short of space). Called with the VG's mutex held.
    pub(super) async fn finish_lvcreate(
        &self,
        slot: &mut VgSlot,
        created: Created<'_>,
        inv: &super::Invocation,
        out: &super::Output,
    ) -> Result<Lv> {
        let Created {
            vg,
            volume,
            lv_name,
            size,
            tags,
            pvc,
            activate,
            thin,
        } = created;
        if out.success() {
            let lv = Lv {
                vg: vg.to_owned(),
                name: lv_name,
                uuid: None,
                size_bytes: size,
                tags,
                active: if activate {
                    Activation::Active
                } else {
                    Activation::Inactive
                },
                volume: Some(volume.to_owned()),
                pvc: pvc.cloned(),
                owned: true,
                open: false,
            };
            // A linear LV is zeroed and signature-wiped only when activated (`-Zy -Wy`); a thin
            // one reads zeroes wherever it was not written (the pool zeroes new chunks).
            self.note_created(&lv, activate);
            return Ok(lv);
        }
        if !out.stderr.contains("already exists") {
            let err = classify(super::failure(inv, out), Subject::Vg(vg), size);
            if !matches!(err, LvmError::InsufficientSpace { .. }) {
                self.forget_vg(slot);
            }
            return Err(err);
        }
        let Some(existing) = self.lv_by_name(vg, &lv_name).await? else {
            return Err(classify(super::failure(inv, out), Subject::Vg(vg), size));
        };
        let existing = check_ours(vg, volume, existing)?;
        if super::wipe::is_wiping(&existing) {
            // Being wiped before its removal: never handed out again (retry once it is gone).
            let mut why = super::failure(inv, out);
            why.stderr = format!("logical volume {vg}/{lv_name} is being wiped for removal");
            return Err(LvmError::Busy(why));
        }
        if existing.size_bytes != size || super::thin::is_thin(&existing) != thin {
            return Err(LvmError::AlreadyExistsDifferent {
                volume: volume.to_owned(),
                vg: vg.to_owned(),
                lv: lv_name,
                existing_bytes: existing.size_bytes,
                requested_bytes: size,
                other_volume: false,
            });
        }
        if activate && existing.active == Activation::Inactive {
            return self.activate_locked(vg, existing).await;
        }
        Ok(existing)
    }

    /// Grows the LV of `volume` to at least `size_bytes` (rounded up to whole extents).
    /// Never shrinks: a smaller or equal request returns the LV unchanged. A missing LV is
    /// [`LvmError::NotFound`]. The filesystem is not touched (the CSI node grows it).
    pub async fn extend_lv(&self, vg: &str, volume: &str, size_bytes: u64) -> Result<Lv> {
        self.extend_lv_within(vg, volume, size_bytes, 0).await
    }

    /// [`Lvm::extend_lv`] that also keeps `reserve_bytes` of the VG free: growth beyond the VG's
    /// free bytes minus the reserve is [`LvmError::InsufficientSpace`] and changes nothing.
    pub async fn extend_lv_within(
        &self,
        vg: &str,
        volume: &str,
        size_bytes: u64,
        reserve_bytes: u64,
    ) -> Result<Lv> {
        naming::validate_volume_name(volume)?;
        let vg_arg = name_arg(vg)?;
        let lv_name = lv_name_for(volume);
        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        let facts = self.owned_vg(vg, &mut slot).await?;
        let size = rounded(size_bytes, facts.extent_size)?;
        let Some(lv) = self.lv_by_name(vg, &lv_name).await? else {
            return Err(LvmError::NotFound {
                what: format!("logical volume {vg}/{lv_name} of volume {volume:?}"),
            });
        };
        let mut lv = check_ours(vg, volume, lv)?;
        if lv.size_bytes >= size {
            return Ok(lv);
        }
        if reserve_bytes > 0
            && let Some(short) = self
                .short_of_reserve(vg, size - lv.size_bytes, reserve_bytes)
                .await?
        {
            return Err(short);
        }
        let mut args = self.lvm_args("lvextend");
        args.extend([
            "-L".to_owned(),
            format!("{size}b"),
            format!("{vg_arg}/{lv_name}"),
        ]);
        if let Err(err) = self.run_ok(args, Subject::Lv(vg, &lv_name), size).await {
            if !matches!(err, LvmError::InsufficientSpace { .. }) {
                self.forget_vg(&mut slot);
            }
            return Err(err);
        }
        lv.size_bytes = size;
        self.note_grown(volume, size);
        Ok(lv)
    }

    /// `Some(InsufficientSpace)` when `more` bytes do not fit in the VG's free bytes minus
    /// `reserve` (read now; the caller holds the VG's mutex).
    async fn short_of_reserve(
        &self,
        vg: &str,
        more: u64,
        reserve: u64,
    ) -> Result<Option<LvmError>> {
        let Some(info) = self.vg(vg).await? else {
            return Err(LvmError::NotFound {
                what: format!("volume group {vg}"),
            });
        };
        let allocatable = info.free_bytes.saturating_sub(reserve);
        Ok((more > allocatable).then(|| LvmError::InsufficientSpace {
            vg: vg.to_owned(),
            requested_bytes: more,
            detail: format!(
                "{more} bytes needed, {} free of which {reserve} are reserved: {allocatable} allocatable",
                info.free_bytes
            ),
        }))
    }

    /// Removes the LV of `volume` from `vg`. Returns `true` if it was removed, `false` if it was
    /// already gone (idempotent). An LV of that name without Strata's tags is never removed
    /// ([`LvmError::NotOwned`]); an open LV is [`LvmError::Busy`]; a VG that does not exist is
    /// [`LvmError::NotFound`] (the LV cannot be proven gone while its disks are away).
    pub async fn remove_lv(&self, vg: &str, volume: &str) -> Result<bool> {
        naming::validate_volume_name(volume)?;
        let lv_name = lv_name_for(volume);
        let volume_tag = naming::volume_tag(volume)?;
        self.remove_tagged(vg, &lv_name, &volume_tag, Some(volume))
            .await
    }

    /// The one `lvremove` of the layer: removes `vg/lv_name` only if it carries both the owner
    /// tag and `name_tag` (lvm2's `--select`), under the VG's mutex. `true` if removed, `false` if
    /// already gone; an LV of that name without both tags is [`LvmError::NotOwned`]; an open LV is
    /// [`LvmError::Busy`]. Volumes ([`Lvm::remove_lv`]) and snapshots
    /// ([`Lvm::remove_snapshot`]) are removed only through here. `created_volume`: the volume
    /// whose memory of creation by this process is forgotten under the lock.
    pub(super) async fn remove_tagged(
        &self,
        vg: &str,
        lv_name: &str,
        name_tag: &str,
        created_volume: Option<&str>,
    ) -> Result<bool> {
        let vg_arg = name_arg(vg)?;
        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        if let Some(volume) = created_volume {
            self.forget_created(volume);
        }
        let mut args = self.lvm_args("lvremove");
        args.extend([
            "-f".to_owned(),
            "-S".to_owned(),
            format!("lv_tags={{{OWNER_TAG},{name_tag}}}"),
            format!("{vg_arg}/{lv_name}"),
        ]);
        let (inv, out) = self.run(super::Invocation::lvm(args)).await?;
        if out.success() {
            if out.stdout.contains("successfully removed") {
                return Ok(true);
            }
            // Nothing matched the selection: either gone meanwhile, or not ours.
            return match self.lv_by_name(vg, lv_name).await? {
                None => Ok(false),
                Some(_) => Err(LvmError::NotOwned {
                    what: format!("logical volume {vg}/{lv_name}"),
                }),
            };
        }
        if out.stderr.contains("Failed to find logical volume") {
            return Ok(false);
        }
        let err = classify(super::failure(&inv, &out), Subject::Lv(vg, lv_name), 0);
        self.forget_vg(&mut slot);
        Err(err)
    }

    /// Activates the LV of `volume` (its device node appears at [`Lv::device_path`]).
    pub async fn activate_lv(&self, vg: &str, volume: &str) -> Result<Lv> {
        naming::validate_volume_name(volume)?;
        name_arg(vg)?;
        let lock = self.vg_lock(vg);
        let _slot = lock.lock().await;
        let lv_name = lv_name_for(volume);
        let Some(lv) = self.lv_by_name(vg, &lv_name).await? else {
            return Err(LvmError::NotFound {
                what: format!("logical volume {vg}/{lv_name} of volume {volume:?}"),
            });
        };
        let lv = check_ours(vg, volume, lv)?;
        self.activate_locked(vg, lv).await
    }

    pub(super) async fn activate_locked(&self, vg: &str, mut lv: Lv) -> Result<Lv> {
        let mut args = self.lvm_args("lvchange");
        args.extend(["-ay".to_owned(), format!("{vg}/{}", lv.name)]);
        self.run_ok(args, Subject::Lv(vg, &lv.name), 0).await?;
        lv.active = Activation::Active;
        Ok(lv)
    }

    /// The VG's facts if it exists and is Strata's (caller holds the VG lock).
    pub(super) async fn owned_vg(&self, vg: &str, slot: &mut VgSlot) -> Result<super::VgFacts> {
        let facts = self.vg_facts(vg, slot).await?;
        if !facts.owned {
            return Err(LvmError::NotOwned {
                what: format!("volume group {vg}"),
            });
        }
        Ok(facts)
    }
}

/// `lv` if it is Strata's LV of `volume`; otherwise the refusal that fits.
pub(super) fn check_ours(vg: &str, volume: &str, lv: Lv) -> Result<Lv> {
    if !lv.owned {
        return Err(LvmError::NotOwned {
            what: format!("logical volume {vg}/{}", lv.name),
        });
    }
    if lv.volume.as_deref() != Some(volume) {
        return Err(LvmError::AlreadyExistsDifferent {
            volume: volume.to_owned(),
            vg: vg.to_owned(),
            lv: lv.name.clone(),
            existing_bytes: lv.size_bytes,
            requested_bytes: 0,
            other_volume: true,
        });
    }
    Ok(lv)
}

/// `bytes` in whole extents (the one rounding, `csi_api::capacity::round_up_to_extent`).
pub(super) fn rounded(bytes: u64, extent: u64) -> Result<u64> {
    csi_api::capacity::round_up_to_extent(bytes, extent.max(1)).ok_or_else(|| {
        LvmError::InvalidArgument(format!("{bytes} bytes is beyond any volume size"))
    })
}

/// The LV an `lvcreate` was asked to make (see `Lvm::finish_lvcreate`).
pub(super) struct Created<'a> {
    pub vg: &'a str,
    pub volume: &'a str,
    pub lv_name: String,
    pub size: u64,
    pub tags: Vec<String>,
    pub pvc: Option<&'a PvcRef>,
    pub activate: bool,
    /// A thin LV (tagged `strata.io/thin`); a repeat must be of the same kind.
    pub thin: bool,
}
