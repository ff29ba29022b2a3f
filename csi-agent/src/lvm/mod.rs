//! The LVM layer: the one narrow interface through which every change to disks goes (no kube).
//! [`Lvm`] runs lvm2 through an [`LvmRunner`] (real: [`CommandRunner`]; tests: [`FakeRunner`]),
//! reads typed JSON reports ([`Pv`], [`Vg`], [`Lv`]) and offers idempotent operations by CSI
//! volume name. Objects without the `strata.io/owner` tag are never modified ([`LvmError::NotOwned`]);
//! devices with any signature are refused (our `blkid -p` check, then pvcreate's own, never `-y`).
//! Operations on one VG are serialised by a per-VG async mutex; different VGs run in parallel.
//! LV names: plain volume names (e.g. `pvc-<uid>`) are used as is, others become
//! `strata_<sha256 prefix>`; the real name lives in a tag (see [`naming`]). Sizes are rounded up
//! to whole extents. With `activate: false` (hosts without device-mapper) LVs are created inactive
//! and unzeroed (`-an -Zn`); otherwise they are activated, zeroed and stale signatures inside the
//! new LV's extents are wiped (`-Wy --yes`: the new LV is ours, unlike a disk handed to pvcreate).
//! A VG's ownership and extent size are kept between calls without a timer: every `vgs` report
//! the layer reads (the claim pass and capacity reports read them anyway) refreshes them, and a
//! failed change or a VG change forgets them. LVs this process created are remembered
//! ([`Lvm::created_lv`]): until this process marks or removes one, it carries no wipe mark (only
//! the agent writes it), and until it is first handed out or grown it is *fresh*: its first
//! 4 KiB were zeroed and every signature libblkid knew in it was wiped by that lvcreate.

pub mod backup;
pub mod blkid;
mod error;
pub mod fake;
pub mod layout;
mod lv;
pub mod naming;
mod pv_vg;
pub mod report;
mod runner;
pub mod snapshot;
pub mod thin;
pub mod wipe;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};

use tokio_util::sync::CancellationToken;

pub use error::{CommandFailure, LvmError, Result};
pub use fake::{FakeRunner, Reply};
pub use naming::{OWNER_TAG, PvcRef, lv_name_for};
pub use report::{Activation, Lv, Pv, PvSegment, Vg, device_path};
pub use runner::{CommandRunner, Invocation, LvmRunner, Output, RunnerConfig, Tool};
pub use snapshot::{
    LvSource, SNAPSHOT_OF_TAG_PREFIX, SNAPSHOT_TAG_PREFIX, Snapshot, is_snapshot, snapshot_lv_name,
};
pub use thin::{THIN_POOL_LV, THIN_POOL_TAG, THIN_TAG, ThinPool, ThinState, is_thin};
pub use wipe::{WIPING_TAG, WipeMethod, is_wiping};

use error::{Subject, classify};
use report::{LV_FIELDS, PV_FIELDS, PVSEG_FIELDS, VG_FIELDS, report_args};

/// Behaviour of the layer.
#[derive(Debug, Clone)]
pub struct LvmOptions {
    /// Activate (and zero) LVs on create. `false` on hosts without device-mapper (tests).
    pub activate: bool,
    /// Extra lvm2 configuration passed as `--config` to every command (e.g. a device filter).
    pub config: Option<String>,
    /// lvm2's metadata backup folder (`backup_dir` of lvm.conf): the record of a VG that is no
    /// longer visible ([`backup`]).
    pub backup_dir: PathBuf,
}

impl Default for LvmOptions {
    fn default() -> Self {
        LvmOptions {
            activate: true,
            config: None,
            backup_dir: PathBuf::from("/etc/lvm/backup"),
        }
    }
}

/// What the layer remembers about a VG between calls (behind the VG's mutex).
#[derive(Debug, Default)]
struct VgSlot {
    facts: Option<VgFacts>,
}

#[derive(Debug, Clone, Copy)]
struct VgFacts {
    owned: bool,
    extent_size: u64,
}

impl VgFacts {
    fn of(vg: &Vg) -> Self {
        VgFacts {
            owned: vg.owned,
            extent_size: vg.extent_size,
        }
    }
}

struct Shared<R> {
    runner: R,
    options: LvmOptions,
    vgs: StdMutex<HashMap<String, Arc<tokio::sync::Mutex<VgSlot>>>>,
    /// Orphan PVs created by this process (orphans cannot carry tags).
    created_pvs: StdMutex<HashSet<PathBuf>>,
    /// LVs this process created and has not marked or removed since, by volume name.
    created_lvs: StdMutex<HashMap<String, Created>>,
}

/// An LV this process created (see [`Lvm::created_lv`]).
#[derive(Debug, Clone)]
struct Created {
    lv: Lv,
    /// Zeroed and signature-wiped by its lvcreate, and not handed out or grown since.
    fresh: bool,
}

/// The LVM layer. Cheap to clone; clones share the runner, the per-VG locks and caches.
pub struct Lvm<R: LvmRunner> {
    shared: Arc<Shared<R>>,
    cancel: CancellationToken,
}

impl<R: LvmRunner> Clone for Lvm<R> {
    fn clone(&self) -> Self {
        Lvm {
            shared: Arc::clone(&self.shared),
            cancel: self.cancel.clone(),
        }
    }
}

impl Lvm<CommandRunner> {
    /// The layer over real lvm2 with these runner settings.
    pub fn system(config: RunnerConfig, options: LvmOptions) -> Self {
        Lvm::new(CommandRunner::new(config), options)
    }
}

impl<R: LvmRunner> Lvm<R> {
    pub fn new(runner: R, options: LvmOptions) -> Self {
        Lvm {
            shared: Arc::new(Shared {
                runner,
                options,
                vgs: StdMutex::new(HashMap::new()),
                created_pvs: StdMutex::new(HashSet::new()),
                created_lvs: StdMutex::new(HashMap::new()),
            }),
            cancel: CancellationToken::new(),
        }
    }

    /// A handle whose commands are stopped (SIGTERM, then SIGKILL) when `token` is cancelled;
    /// it shares locks and caches with `self` (use one per request or for shutdown).
    pub fn with_cancellation(&self, token: CancellationToken) -> Self {
        Lvm {
            shared: Arc::clone(&self.shared),
            cancel: token,
        }
    }

    pub fn runner(&self) -> &R {
        &self.shared.runner
    }

    pub fn options(&self) -> &LvmOptions {
        &self.shared.options
    }

    /// Whether lvm2's metadata backup of `vg` (in `backup_dir`) records Strata volume `volume`:
    /// the evidence that a VG lvm2 no longer sees held it ([`backup`]).
    pub fn backup_records(&self, vg: &str, volume: &str) -> bool {
        backup::records_volume(&self.shared.options.backup_dir, vg, volume)
    }

    // ---- plumbing -------------------------------------------------------------------------

    /// `[subcommand, --config X]`: the head of every lvm2 argument vector.
    fn lvm_args(&self, subcommand: &str) -> Vec<String> {
        let mut args = vec![subcommand.to_owned()];
        if let Some(config) = &self.shared.options.config {
            args.push("--config".into());
            args.push(config.clone());
        }
        args
    }

    fn report(&self, subcommand: &str, fields: &str) -> Vec<String> {
        let mut args = report_args(subcommand, fields);
        if let Some(config) = &self.shared.options.config {
            args.insert(1, "--config".into());
            args.insert(2, config.clone());
        }
        args
    }

    async fn run(&self, inv: Invocation) -> Result<(Invocation, Output)> {
        // The runner logs the command with its exit code and duration.
        let out = self.shared.runner.run(&inv, &self.cancel).await?;
        Ok((inv, out))
    }

    /// Runs and classifies a failure (see [`classify`]).
    async fn run_ok(
        &self,
        args: Vec<String>,
        subject: Subject<'_>,
        requested: u64,
    ) -> Result<Output> {
        let (inv, out) = self.run(Invocation::lvm(args)).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(classify(failure(&inv, &out), subject, requested))
        }
    }

    fn vg_lock(&self, vg: &str) -> Arc<tokio::sync::Mutex<VgSlot>> {
        let mut map = self
            .shared
            .vgs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(vg.to_owned()).or_default())
    }

    /// The VG's ownership and extent size, from the cache or `vgs` (caller holds the VG lock).
    /// No timer: the cache is refreshed by every report the layer reads (see [`Lvm::note_vgs`])
    /// and forgotten when a change of the VG fails or the VG itself changes.
    async fn vg_facts(&self, vg: &str, slot: &mut VgSlot) -> Result<VgFacts> {
        if let Some(facts) = slot.facts {
            return Ok(facts);
        }
        let Some(info) = self.vg(vg).await? else {
            slot.facts = None;
            return Err(LvmError::NotFound {
                what: format!("volume group {vg}"),
            });
        };
        let facts = VgFacts::of(&info);
        slot.facts = Some(facts);
        Ok(facts)
    }

    /// Refreshes the cached facts of the VGs in `vgs` (a report just read); with `complete` (a
    /// report of every VG) the VGs it lacks are forgotten. A VG whose lock is held is skipped:
    /// its holder reads or forgets the facts itself.
    fn note_vgs(&self, vgs: &[Vg], complete: bool) {
        let slots: Vec<(String, Arc<tokio::sync::Mutex<VgSlot>>)> = self
            .shared
            .vgs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, slot)| (name.clone(), Arc::clone(slot)))
            .collect();
        for (name, slot) in slots {
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            match vgs.iter().find(|v| v.name == name) {
                Some(info) => slot.facts = Some(VgFacts::of(info)),
                None if complete => slot.facts = None,
                None => {}
            }
        }
    }

    // ---- LVs created by this process -------------------------------------------------------

    fn created_lvs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Created>> {
        self.shared
            .created_lvs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The LV of `volume` if this process created it and has not marked it for its wipe or
    /// removed it since. Such an LV carries no wipe mark: the mark is written only through
    /// [`Lvm::mark_wiping`] of the one agent of the node, which forgets the LV first.
    pub fn created_lv(&self, volume: &str) -> Option<Lv> {
        self.created_lvs().get(volume).map(|c| c.lv.clone())
    }

    /// Whether the LV of `volume` is *fresh*: created by this process with its first 4 KiB
    /// zeroed and the signatures in it wiped (`-Zy -Wy`), and never handed out, grown, marked
    /// or removed since; so it holds no data and a probe before mkfs would find nothing.
    /// Answering consumes it: the caller is handing the device out. `false` for everything else.
    pub fn take_fresh(&self, volume: &str) -> bool {
        self.created_lvs()
            .get_mut(volume)
            .is_some_and(|c| std::mem::replace(&mut c.fresh, false))
    }

    fn note_created(&self, lv: &Lv, fresh: bool) {
        if let Some(volume) = &lv.volume {
            self.created_lvs().insert(
                volume.clone(),
                Created {
                    lv: lv.clone(),
                    fresh,
                },
            );
        }
    }

    /// Forgets that this process created the LV of `volume` (before it is marked or removed).
    fn forget_created(&self, volume: &str) {
        self.created_lvs().remove(volume);
    }

    /// The LV of `volume` was grown to `size_bytes`: no longer fresh (new extents are not zeroed).
    fn note_grown(&self, volume: &str, size_bytes: u64) {
        if let Some(c) = self.created_lvs().get_mut(volume) {
            c.fresh = false;
            c.lv.size_bytes = size_bytes;
        }
    }

    // ---- reads (no VG lock: lvm2's own read locks make reports consistent) --------------------

    /// Every PV lvm2 sees (Strata's or not), including missing PVs of VGs.
    pub async fn pvs(&self) -> Result<Vec<Pv>> {
        let args = self.report("pvs", PV_FIELDS);
        let out = self.run_ok(args, Subject::Other, 0).await?;
        report::parse_pvs("pvs", &out.stdout)
    }

    /// PVs that carry the owner tag or belong to a Strata VG.
    pub async fn strata_pvs(&self) -> Result<Vec<Pv>> {
        Ok(self.pvs().await?.into_iter().filter(|p| p.owned).collect())
    }

    /// The PVs of one VG, missing ones included (`device: None`, `missing: true`).
    pub async fn vg_pvs(&self, vg: &str) -> Result<Vec<Pv>> {
        Ok(self
            .pvs()
            .await?
            .into_iter()
            .filter(|p| p.vg.as_deref() == Some(vg))
            .collect())
    }

    /// The PV on `device` (any name lvm2 resolves: `/dev/sdX`, `/dev/disk/by-id/...`), or
    /// `None` if the device is not a PV. A device that does not exist is [`LvmError::NotFound`].
    pub async fn pv(&self, device: &Path) -> Result<Option<Pv>> {
        let mut args = self.report("pvs", PV_FIELDS);
        args.push(path_arg(device)?);
        let (inv, out) = self.run(Invocation::lvm(args)).await?;
        if out.success() {
            return Ok(report::parse_pvs("pvs", &out.stdout)?.into_iter().next());
        }
        // "Failed to find physical volume", or lvm2 declining the device ("Cannot use /dev/x:
        // device is partitioned"): not a PV. A device that does not exist is an error.
        let declined =
            out.stderr.contains("Cannot use") && !out.stderr.contains("device not found");
        if out.stderr.contains("Failed to find physical volume") || declined {
            return Ok(None);
        }
        Err(classify(failure(&inv, &out), Subject::Device(device), 0))
    }

    /// Every VG lvm2 sees.
    pub async fn vgs(&self) -> Result<Vec<Vg>> {
        let args = self.report("vgs", VG_FIELDS);
        let out = self.run_ok(args, Subject::Other, 0).await?;
        let vgs = report::parse_vgs("vgs", &out.stdout)?;
        self.note_vgs(&vgs, true);
        Ok(vgs)
    }

    /// VGs that carry the owner tag.
    pub async fn strata_vgs(&self) -> Result<Vec<Vg>> {
        Ok(self.vgs().await?.into_iter().filter(|v| v.owned).collect())
    }

    /// One VG (size, free, extent size, missing PVs, ownership), or `None` if it does not exist.
    pub async fn vg(&self, vg: &str) -> Result<Option<Vg>> {
        let mut args = self.report("vgs", VG_FIELDS);
        args.push(name_arg(vg)?);
        let (inv, out) = self.run(Invocation::lvm(args)).await?;
        if out.success() {
            let vgs = report::parse_vgs("vgs", &out.stdout)?;
            self.note_vgs(&vgs, false);
            return Ok(vgs.into_iter().next());
        }
        match classify(failure(&inv, &out), Subject::Vg(vg), 0) {
            LvmError::NotFound { .. } => {
                self.forget_vg_named(vg);
                Ok(None)
            }
            e => Err(e),
        }
    }

    /// Forgets the cached facts of `vg` unless its lock is held (its holder decides).
    fn forget_vg_named(&self, vg: &str) {
        let slot = self
            .shared
            .vgs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(vg)
            .cloned();
        if let Some(slot) = slot
            && let Ok(mut slot) = slot.try_lock()
        {
            slot.facts = None;
        }
    }

    /// The extent size of a VG in bytes (cached like the VG's ownership).
    pub async fn extent_size(&self, vg: &str) -> Result<u64> {
        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        Ok(self.vg_facts(vg, &mut slot).await?.extent_size)
    }

    /// Every LV lvm2 sees, or those of one VG.
    pub async fn lvs(&self, vg: Option<&str>) -> Result<Vec<Lv>> {
        let mut args = self.report("lvs", LV_FIELDS);
        if let Some(vg) = vg {
            args.push(name_arg(vg)?);
        }
        let out = self
            .run_ok(args, vg.map_or(Subject::Other, Subject::Vg), 0)
            .await?;
        report::parse_lvs("lvs", &out.stdout)
    }

    /// LVs that carry the owner tag (all VGs, or one).
    pub async fn strata_lvs(&self, vg: Option<&str>) -> Result<Vec<Lv>> {
        Ok(self
            .lvs(vg)
            .await?
            .into_iter()
            .filter(|l| l.owned)
            .collect())
    }

    /// The LV of `volume` in `vg`, or `None`. An LV with the volume's name that is not Strata's,
    /// or that carries another volume's tag, is [`LvmError::NotOwned`].
    pub async fn lv(&self, vg: &str, volume: &str) -> Result<Option<Lv>> {
        naming::validate_volume_name(volume)?;
        let lv_name = lv_name_for(volume);
        let Some(lv) = self.lv_by_name(vg, &lv_name).await? else {
            return Ok(None);
        };
        if !lv.owned || lv.volume.as_deref() != Some(volume) {
            return Err(LvmError::NotOwned {
                what: format!("logical volume {vg}/{lv_name}"),
            });
        }
        Ok(Some(lv))
    }

    /// The LV of `volume` in any Strata VG (looked up by its volume tag), or `None`.
    pub async fn find_lv(&self, volume: &str) -> Result<Option<Lv>> {
        naming::validate_volume_name(volume)?;
        Ok(self
            .strata_lvs(None)
            .await?
            .into_iter()
            .find(|l| l.volume.as_deref() == Some(volume)))
    }

    /// The used segments of every PV (of one VG, or all): which LV has extents on which PV,
    /// missing PVs included.
    pub async fn pv_segments(&self, vg: Option<&str>) -> Result<Vec<PvSegment>> {
        let mut args = self.report("pvs", PVSEG_FIELDS);
        args.insert(1, "--segments".into());
        if let Some(vg) = vg {
            args.push("--select".into());
            args.push(format!("vg_name={}", name_arg(vg)?));
        }
        let out = self.run_ok(args, Subject::Other, 0).await?;
        report::parse_pv_segments("pvs --segments", &out.stdout)
    }

    /// The LV named `lv_name` in `vg`, whoever owns it, or `None`.
    async fn lv_by_name(&self, vg: &str, lv_name: &str) -> Result<Option<Lv>> {
        let mut args = self.report("lvs", LV_FIELDS);
        args.push(format!("{}/{lv_name}", name_arg(vg)?));
        let (inv, out) = self.run(Invocation::lvm(args)).await?;
        if out.success() {
            return Ok(report::parse_lvs("lvs", &out.stdout)?.into_iter().next());
        }
        match classify(failure(&inv, &out), Subject::Lv(vg, lv_name), 0) {
            LvmError::NotFound { .. } if out.stderr.contains("Failed to find logical volume") => {
                Ok(None)
            }
            e => Err(e),
        }
    }

    fn forget_vg(&self, slot: &mut VgSlot) {
        slot.facts = None;
    }
}

/// The [`CommandFailure`] of a command that exited non-zero.
fn failure(inv: &Invocation, out: &Output) -> CommandFailure {
    CommandFailure {
        command: inv.display(),
        code: out.code,
        stderr: out.stderr.trim().to_owned(),
    }
}

/// A VG name as an argument: refuses what lvm2 would read as an option or a tag.
fn name_arg(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(LvmError::InvalidArgument(format!(
            "invalid volume group name {name:?}"
        )))
    }
}

/// A device path as an argument: absolute, so it is never read as an option or a name.
fn path_arg(device: &Path) -> Result<String> {
    match device.to_str() {
        Some(s) if device.is_absolute() => Ok(s.to_owned()),
        _ => Err(LvmError::InvalidArgument(format!(
            "device path {} must be absolute UTF-8",
            device.display()
        ))),
    }
}

#[cfg(test)]
mod tests;
