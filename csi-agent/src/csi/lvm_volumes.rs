//! [`Volumes`] over the LVM layer: a volume is the LV tagged with its CSI name in one of the class
//! VGs (`strata-nvme`, `strata-ssd`, `strata-hdd`); its class is its VG, its size the LV's size.
//! Nothing else is stored anywhere, so the state survives restarts and is shared with `lvs`.
//! A volume is unhealthy when a disk holding its extents is missing or failing (`pvs --segments`
//! and the health [`Board`]; the other volumes of the VG stay healthy), when lvm2 reports the LV
//! unhealthy, or when its LV is not active; an inactive LV is
//! activated when looked up (after a reboot nothing else activates it). The class VGs' report is
//! adjusted by this process's own creates, grows and removals; CreateVolume admits against it
//! (fresh within seconds for a class with a reserve, any age otherwise: lvcreate arbitrates space
//! and refuses a VG with missing PVs). Volumes this process created or looked up are remembered
//! (id → LV) for the node calls, used only while their device node still exists; `find` (health)
//! always asks lvm2. The Strata LVs are listed once (`warm_up`, or the first create); after that
//! a name neither listed, remembered nor forgotten since is known absent, so the common
//! CreateVolume is one `lvcreate` (standalone: this process creates every Strata volume).
//! Removal goes through the [`Wiper`] (wipe, then remove); an LV marked as being wiped is never
//! handed out again (lookups answer Aborted, listings leave it out) until it is gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileTypeExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use csi_api::names::DeviceClass;

use super::error::{Error, Result};
use super::volumes::{ClassInfo, SnapshotInfo, VolumeInfo, Volumes};
use crate::claim::Recorded;
use crate::claim::thin_pool::{self, ThinSettings};
use crate::health::{self, Board, DiskProblem};
use crate::lvm::snapshot::lv_source;
use crate::lvm::{Activation, Lv, LvSource, Lvm, LvmRunner, Snapshot, Vg, is_thin, is_wiping};
use crate::wiper::{Marked, WipeConfig, Wiper};
use csi_api::request::ContentSource;

/// The node's volumes in its class VGs.
pub struct LvmVolumes<R: LvmRunner> {
    lvm: Lvm<R>,
    /// Bytes of each class kept free of volumes.
    reserved: BTreeMap<DeviceClass, u64>,
    /// The class VGs as last read, and when.
    classes: Mutex<Option<(Vec<ClassInfo>, Instant)>>,
    /// Volumes seen by this process and the names that may exist (see [`Memory`]).
    memory: Mutex<Memory>,
    /// Held while the Strata LVs are listed (one listing at a time).
    listing: tokio::sync::Mutex<()>,
    /// Wipes LVs before their removal.
    wiper: Wiper<R>,
    /// The disks found failing by the last health check.
    health: Board,
    /// Thin pool settings per class (`--thin-pool`, `--thin-overprovision-ratio`).
    thin: ThinSettings,
}

/// How long the class VGs' report is reused (always, to admit into a class with a reserve).
const CLASS_CACHE_TTL: Duration = Duration::from_secs(5);

/// Past this many unsure names the LVs are listed again (which forgets the removed ones).
const UNSURE_LIMIT: usize = 4096;

/// What this process knows about volume names. Invariant, once `listed`: every Strata LV is in
/// `volumes` or in `unsure` (the listing puts every name in `unsure`; `remember` moves a name
/// to `volumes`, `forget` moves it back), so a name in neither has no LV.
#[derive(Default)]
struct Memory {
    /// Volumes seen by this process (created, looked up), by id.
    volumes: HashMap<String, VolumeInfo>,
    /// Whether the Strata LVs have been listed since the process started (or `unsure` was pruned).
    listed: bool,
    /// Names that may have an LV this process has not looked up: listed ones, forgotten ones
    /// (removed, maybe not completely), ones found missing or being wiped.
    unsure: HashSet<String>,
}

impl<R: LvmRunner> LvmVolumes<R> {
    pub fn new(lvm: Lvm<R>, reserved: BTreeMap<DeviceClass, u64>) -> Self {
        let wiper = Wiper::new(lvm.clone(), WipeConfig::default(), None);
        LvmVolumes {
            lvm,
            reserved,
            classes: Mutex::new(None),
            memory: Mutex::new(Memory::default()),
            listing: tokio::sync::Mutex::new(()),
            wiper,
            health: Board::default(),
            thin: ThinSettings::default(),
        }
    }

    /// The same volumes with the agent's thin settings (the ratio each class admits against).
    pub fn with_thin(mut self, thin: ThinSettings) -> Self {
        self.thin = thin;
        self
    }

    /// The same volumes, judged against the failing disks on `board`.
    pub fn with_health(mut self, board: Board) -> Self {
        self.health = board;
        self
    }

    /// The board of failing disks these volumes are judged against.
    pub fn health(&self) -> &Board {
        &self.health
    }

    /// Volume → the problems of the disks under it, read only when there can be any (a VG with
    /// a missing PV, or a failing disk). If lvm2 cannot say which LVs use which PV, every volume
    /// of a VG with a missing PV is reported (the old, coarse answer) with the reason.
    async fn disk_problems(&self, vgs: &[&Vg]) -> BTreeMap<String, Vec<DiskProblem>> {
        let failing = self.health.failing();
        let mut out = BTreeMap::new();
        for vg in vgs {
            if vg.missing_pv_count == 0 && failing.is_empty() {
                continue;
            }
            match self.lvm.vg_layout(&vg.name).await {
                Ok(layout) => out.extend(health::volume_problems(&layout, &failing)),
                Err(e) if vg.missing_pv_count > 0 => {
                    let lvs = self
                        .lvm
                        .strata_lvs(Some(&vg.name))
                        .await
                        .unwrap_or_default();
                    for id in lvs.into_iter().filter_map(|l| l.volume) {
                        out.insert(
                            id,
                            vec![DiskProblem {
                                disk: String::new(),
                                message: format!(
                                    "volume group {} lost {} physical volume(s) and lvm2 cannot \
                                     say which volumes used them: {e}",
                                    vg.name, vg.missing_pv_count
                                ),
                            }],
                        );
                    }
                }
                Err(e) => tracing::warn!(vg = %vg.name, error = %e, "pvs --segments failed"),
            }
        }
        out
    }

    /// The failing disks (`slot: evidence`) of each VG, by the slot tag of its PVs: one `pvs`,
    /// only when some disk is failing.
    async fn failing_by_vg(
        &self,
        failing: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Vec<String>>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if failing.is_empty() {
            return Ok(out);
        }
        for pv in self.lvm.strata_pvs().await? {
            let (Some(vg), Some(slot)) = (pv.vg, Recorded::from_tags(&pv.tags).slot) else {
                continue;
            };
            if let Some(evidence) = failing.get(&slot) {
                out.entry(vg)
                    .or_default()
                    .push(format!("{slot}: {evidence}"));
            }
        }
        Ok(out)
    }

    /// The same volumes, wiped on removal by `wiper` (its policies and metrics).
    pub fn with_wiper(mut self, wiper: Wiper<R>) -> Self {
        self.wiper = wiper;
        self
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, v: &VolumeInfo) {
        let mut memory = self.memory();
        memory.unsure.remove(&v.id);
        memory.volumes.insert(
            v.id.clone(),
            VolumeInfo {
                problem: None,
                ..v.clone()
            },
        );
    }

    /// Drops what is remembered of `id`; its LV may still exist (a removal can fail).
    fn forget(&self, id: &str) {
        let mut memory = self.memory();
        memory.volumes.remove(id);
        memory.unsure.insert(id.to_owned());
    }

    /// A remembered volume (or one the LVM layer created in this process) whose device node is
    /// still a block device (stat inline: devtmpfs never waits on a disk).
    async fn remembered(&self, id: &str) -> Option<VolumeInfo> {
        let known = self.memory().volumes.get(id).cloned();
        let v = match known {
            Some(v) => v,
            None => {
                let lv = self.lvm.created_lv(id)?;
                volume_info(&lv, id, DeviceClass::from_vg_name(&lv.vg)?, None)
            }
        };
        let meta = std::fs::metadata(&v.device).ok()?;
        meta.file_type().is_block_device().then_some(v)
    }

    /// Applies this process's own change of `delta` bytes in `class` to the cached report.
    fn adjust(&self, class: DeviceClass, delta: i128) {
        let mut cache = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((classes, _)) = cache.as_mut() {
            for c in classes.iter_mut().filter(|c| c.class == class) {
                let apply = |v: u64| u64::try_from((i128::from(v) - delta).max(0)).unwrap_or(0);
                c.free_bytes = apply(c.free_bytes);
                c.allocatable_bytes = apply(c.allocatable_bytes);
            }
        }
    }

    /// Looks the LV up by its volume tag; activates it if it is inactive.
    async fn lookup(&self, id: &str) -> Result<Option<(Lv, DeviceClass)>> {
        let Some(mut lv) = self.lvm.find_lv(id).await? else {
            return Ok(None);
        };
        let Some(class) = DeviceClass::from_vg_name(&lv.vg) else {
            return Ok(None);
        };
        if is_wiping(&lv) {
            return Err(Error::FailedPrecondition(format!(
                "volume {id:?} is being deleted (its LV is marked for its wipe)"
            )));
        }
        if lv.active == Activation::Inactive && self.lvm.options().activate {
            lv = self.lvm.activate_lv(&lv.vg, id).await?;
        }
        Ok(Some((lv, class)))
    }

    /// Lists the Strata LVs unless done (or `unsure` outgrew [`UNSURE_LIMIT`]): one `lvs`.
    async fn list_names(&self) -> Result<()> {
        let due = |m: &Memory| !m.listed || m.unsure.len() > UNSURE_LIMIT;
        if !due(&self.memory()) {
            return Ok(());
        }
        let _listing = self.listing.lock().await;
        {
            let mut memory = self.memory();
            if !due(&memory) {
                return Ok(());
            }
            // Cleared before the listing starts: every LV that still exists is listed again.
            memory.listed = false;
            memory.unsure.clear();
        }
        let lvs = self.lvm.strata_lvs(None).await?;
        let mut memory = self.memory();
        memory
            .unsure
            .extend(lvs.into_iter().filter_map(|lv| lv.volume));
        memory.listed = true;
        Ok(())
    }

    /// Reads ahead what CreateVolume needs (the Strata LVs' names, the class VGs' report, each
    /// class VG's facts in the LVM layer), so that the first create pays no more than the next.
    pub async fn warm_up(&self) -> Result<()> {
        self.list_names().await?;
        *self.classes.lock().unwrap_or_else(|p| p.into_inner()) = None;
        for class in self.classes().await? {
            self.lvm.extent_size(class.class.vg_name()).await?;
        }
        Ok(())
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

    fn info(
        lv: &Lv,
        class: DeviceClass,
        vg: Option<&Vg>,
        disks: &BTreeMap<String, Vec<DiskProblem>>,
    ) -> Option<VolumeInfo> {
        let id = lv.volume.clone()?;
        let problem = match (vg, lv.active) {
            _ if disks.contains_key(&id) => Some(health::volumes::message(&disks[&id])),
            (None, _) => Some(format!("volume group {} is not readable", lv.vg)),
            (Some(_), Activation::Inactive) => {
                Some(format!("logical volume {} is not active", lv.name))
            }
            (Some(_), Activation::Active | Activation::Unknown) => None,
        };
        Some(volume_info(lv, &id, class, problem))
    }
}

#[async_trait]
impl<R: LvmRunner> Volumes for LvmVolumes<R> {
    async fn find(&self, id: &str) -> Result<Option<VolumeInfo>> {
        let Some((lv, class)) = self.lookup(id).await? else {
            self.forget(id);
            return Ok(None);
        };
        let vg = self.lvm.vg(&lv.vg).await?;
        let disks = self.disk_problems(&vg.iter().collect::<Vec<_>>()).await;
        let mut info = Self::info(&lv, class, vg.as_ref(), &disks);
        if let Some(v) = info.as_mut()
            && v.problem.is_none()
            && crate::lvm::is_thin(&lv)
        {
            v.problem = crate::claim::thin_pool::pool_problem(&self.lvm, &lv.vg).await;
        }
        Ok(info)
    }

    async fn locate(&self, id: &str) -> Result<Option<VolumeInfo>> {
        if let Some(v) = self.remembered(id).await {
            return Ok(Some(v));
        }
        let Some((lv, class)) = self.lookup(id).await? else {
            self.forget(id);
            return Ok(None);
        };
        let found = lv
            .volume
            .as_deref()
            .map(|id| volume_info(&lv, id, class, None));
        if let Some(v) = &found {
            self.remember(v);
        }
        Ok(found)
    }

    async fn existing(&self, id: &str) -> Result<Option<VolumeInfo>> {
        if let Some(v) = self.remembered(id).await {
            return Ok(Some(v));
        }
        self.list_names().await?;
        let absent = {
            let memory = self.memory();
            memory.listed && !memory.volumes.contains_key(id) && !memory.unsure.contains(id)
        };
        if absent {
            return Ok(None);
        }
        self.locate(id).await
    }

    async fn cached_class(&self, class: DeviceClass) -> Option<ClassInfo> {
        if !self.health.failing().is_empty() {
            // Which class a failing disk belongs to is read afresh (`classes`).
            return None;
        }
        let cache = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        let (classes, at) = cache.as_ref()?;
        let reserved = self.reserved.get(&class).copied().unwrap_or(0);
        if reserved > 0 && at.elapsed() >= CLASS_CACHE_TTL {
            // lvcreate knows nothing of the reserve: only a fresh report may admit.
            return None;
        }
        classes.iter().find(|c| c.class == class).cloned()
    }

    async fn list(&self) -> Result<Vec<VolumeInfo>> {
        let vgs: BTreeMap<String, (DeviceClass, Vg)> = self
            .class_vgs()
            .await?
            .into_iter()
            .map(|(c, vg)| (vg.name.clone(), (c, vg)))
            .collect();
        let disks = self
            .disk_problems(&vgs.values().map(|(_, vg)| vg).collect::<Vec<_>>())
            .await;
        let mut out: Vec<VolumeInfo> = self
            .lvm
            .strata_lvs(None)
            .await?
            .iter()
            .filter(|lv| !is_wiping(lv))
            .filter_map(|lv| {
                let (class, vg) = vgs.get(&lv.vg)?;
                Self::info(lv, *class, Some(vg), &disks)
            })
            .collect();
        // A full pool makes its thin volumes abnormal (as in `find`): one read per VG with a
        // thin volume not already abnormal.
        let mut pools: BTreeMap<String, Option<String>> = BTreeMap::new();
        for v in out.iter_mut().filter(|v| v.thin && v.problem.is_none()) {
            let Some((_, vg)) = vgs.values().find(|(c, _)| *c == v.class) else {
                continue;
            };
            if !pools.contains_key(&vg.name) {
                let problem = crate::claim::thin_pool::pool_problem(&self.lvm, &vg.name).await;
                pools.insert(vg.name.clone(), problem);
            }
            v.problem.clone_from(&pools[&vg.name]);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn classes(&self) -> Result<Vec<ClassInfo>> {
        let failing = self.health.failing();
        if failing.is_empty() {
            let cache = self.classes.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = cache.as_ref().filter(|(classes, at)| {
                at.elapsed() < CLASS_CACHE_TTL && classes.iter().all(|c| c.failing_disks.is_empty())
            });
            if let Some((classes, _)) = fresh {
                return Ok(classes.clone());
            }
        }
        let failing_by_vg = self.failing_by_vg(&failing).await?;
        let classes: Vec<ClassInfo> = self
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
                    failing_disks: failing_by_vg.get(&vg.name).cloned().unwrap_or_default(),
                }
            })
            .collect();
        *self.classes.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((classes.clone(), Instant::now()));
        Ok(classes)
    }

    async fn create(&self, id: &str, class: DeviceClass, bytes: u64) -> Result<VolumeInfo> {
        let reserve = self.reserved.get(&class).copied().unwrap_or(0);
        let created = self
            .lvm
            .create_lv_within(class.vg_name(), id, bytes, None, reserve)
            .await;
        let lv = match created {
            Ok(lv) => lv,
            Err(e) => {
                // The report admitted what lvm2 refused: the next create reads it afresh.
                *self.classes.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Err(e.into());
            }
        };
        self.adjust(class, i128::from(lv.size_bytes));
        let created = volume_info(&lv, id, class, None);
        self.remember(&created);
        Ok(created)
    }

    async fn extend(&self, id: &str, bytes: u64) -> Result<VolumeInfo> {
        let current = self
            .locate(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("volume {id:?} does not exist")))?;
        let reserve = self.reserved.get(&current.class).copied().unwrap_or(0);
        let lv = self
            .lvm
            .extend_lv_within(current.class.vg_name(), id, bytes, reserve)
            .await?;
        self.adjust(
            current.class,
            i128::from(lv.size_bytes) - i128::from(current.size_bytes),
        );
        let grown = VolumeInfo {
            size_bytes: lv.size_bytes,
            ..current
        };
        self.remember(&grown);
        Ok(grown)
    }

    async fn set_wipe_policy(&self, id: &str, policy: &str) -> Result<()> {
        let Some(lv) = self.lvm.find_lv(id).await? else {
            return Err(Error::NotFound(format!("volume {id:?} does not exist")));
        };
        self.lvm.record_wipe_policy(&lv.vg, id, policy).await?;
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.forget(id);
        let Some(lv) = self.lvm.find_lv(id).await? else {
            return self.prove_absent(id).await;
        };
        match self.wiper.mark(&lv.vg, id, None).await? {
            Marked::Gone => {}
            Marked::Removed => {
                if let Some(class) = DeviceClass::from_vg_name(&lv.vg) {
                    self.adjust(class, -i128::from(lv.size_bytes));
                }
            }
            // The extents stay allocated (and the volume hidden) until the worker removes it.
            Marked::Marked => self.wiper.enqueue(&lv.vg, id),
        }
        Ok(())
    }

    async fn marked_for_deletion(&self, id: &str) -> Result<bool> {
        if self.lvm.created_lv(id).is_some() {
            // Created by this process and not marked since: the mark is written only by this
            // process's wiper, which makes the layer forget the LV before it marks it.
            return Ok(false);
        }
        Ok(self.lvm.find_lv(id).await?.is_some_and(|lv| is_wiping(&lv)))
    }

    async fn take_fresh(&self, id: &str) -> bool {
        self.lvm.take_fresh(id)
    }

    async fn device_for_release(&self, id: &str) -> Result<Option<std::path::PathBuf>> {
        if let Some(v) = self.remembered(id).await {
            return Ok(Some(v.device));
        }
        Ok(self.lvm.find_lv(id).await?.map(|lv| lv.device_path()))
    }

    async fn create_thin(
        &self,
        id: &str,
        class: DeviceClass,
        bytes: u64,
        source: Option<&ContentSource>,
    ) -> Result<VolumeInfo> {
        let ratio = self.thin_ratio(class).await?;
        let vg = class.vg_name();
        let lv = match source {
            None => {
                self.lvm
                    .create_thin_lv(vg, id, bytes, None, |s| {
                        thin_pool::status(s, ratio).promisable_bytes
                    })
                    .await?
            }
            Some(source) => {
                self.lvm
                    .create_lv_from_source(vg, LvSource::from(source), id, bytes, None, |s| {
                        thin_pool::virtual_room(s, ratio)
                    })
                    .await?
            }
        };
        let created = volume_info(&lv, id, class, None);
        self.remember(&created);
        Ok(created)
    }

    async fn thin_room(&self, class: DeviceClass) -> Result<Option<u64>> {
        let ratio = self.thin.ratio(class);
        Ok(self
            .lvm
            .thin_state(class.vg_name())
            .await?
            .map(|s| thin_pool::status(&s, ratio).promisable_bytes))
    }

    async fn create_snapshot(&self, id: &str, source_volume: &str) -> Result<SnapshotInfo> {
        if let Some(existing) = self.lvm.find_snapshot(id).await? {
            if existing.source_volume != source_volume {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {id:?} exists of volume {:?}, not of {source_volume:?}",
                    existing.source_volume
                )));
            }
            return snapshot_info(existing)
                .ok_or_else(|| Error::NotFound(format!("snapshot {id:?} is in no class VG")));
        }
        let Some((lv, class)) = self.lookup(source_volume).await? else {
            return Err(Error::NotFound(format!(
                "source volume {source_volume:?} does not exist"
            )));
        };
        if !is_thin(&lv) {
            return Err(Error::FailedPrecondition(format!(
                "volume {source_volume:?} is linear: snapshots need a thin volume (use a thin \
                 StorageClass, strata.io/provisioning: thin)"
            )));
        }
        let ratio = self.thin_ratio(class).await?;
        let made = self
            .lvm
            .create_snapshot(&lv.vg, source_volume, id, |s| {
                thin_pool::virtual_room(s, ratio)
            })
            .await?;
        snapshot_info(made).ok_or_else(|| Error::NotFound(format!("snapshot {id:?}")))
    }

    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        if let Some(s) = self.lvm.find_snapshot(id).await? {
            self.lvm.remove_snapshot(&s.vg, id).await?;
        }
        Ok(())
    }

    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let mut out: Vec<SnapshotInfo> = self
            .lvm
            .snapshots(None)
            .await?
            .into_iter()
            .filter_map(snapshot_info)
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// The [`VolumeInfo`] of Strata volume `id`'s LV: thin and source from its tags.
fn volume_info(lv: &Lv, id: &str, class: DeviceClass, problem: Option<String>) -> VolumeInfo {
    VolumeInfo {
        id: id.to_owned(),
        class,
        size_bytes: lv.size_bytes,
        device: lv.device_path(),
        problem,
        thin: is_thin(lv),
        source: lv_source(lv),
    }
}

fn snapshot_info(s: Snapshot) -> Option<SnapshotInfo> {
    Some(SnapshotInfo {
        class: DeviceClass::from_vg_name(&s.vg)?,
        id: s.snapshot_id,
        source_volume: s.source_volume,
        size_bytes: s.size_bytes,
        creation_time: s.creation_time,
    })
}

impl<R: LvmRunner> LvmVolumes<R> {
    /// The thin pool settings of `class` (ratio), or the refusal naming the flag when the
    /// class VG has no pool.
    async fn thin_ratio(&self, class: DeviceClass) -> Result<f64> {
        if self.lvm.thin_state(class.vg_name()).await?.is_none() {
            return Err(Error::ResourceExhausted(format!(
                "the {class} device class of this node has no thin pool: start the agent with \
                 --thin-pool {class}=PERCENT to serve thin volumes, snapshots and clones"
            )));
        }
        Ok(self.thin.ratio(class))
    }

    /// A volume whose LV is not found is gone only if no class VG misses a disk, and no class
    /// VG that lvm2 no longer sees at all recorded it (its metadata backup, see
    /// [`crate::lvm::backup`]): an LV on an absent disk is not listed, and answering success
    /// would leak it. Unavailable makes the CO retry until the disks are back (or the operator
    /// removes the missing PVs, or the stale backup of a VG whose disks are gone for good).
    async fn prove_absent(&self, id: &str) -> Result<()> {
        let visible = self.class_vgs().await?;
        let mut incomplete: Vec<String> = visible
            .iter()
            .filter(|(_, vg)| vg.missing_pv_count > 0)
            .map(|(_, vg)| format!("{} misses {} disk(s)", vg.name, vg.missing_pv_count))
            .collect();
        let backups = &self.lvm.options().backup_dir;
        for class in DeviceClass::ALL {
            let vg = class.vg_name();
            if !visible.iter().any(|(c, _)| *c == class) && self.lvm.backup_records(vg, id) {
                incomplete.push(format!(
                    "it was in volume group {vg}, which lvm2 no longer sees (all of its disks \
                     are absent; lvm2's record of it is {})",
                    backups.join(vg).display()
                ));
            }
        }
        if incomplete.is_empty() {
            return Ok(());
        }
        Err(Error::Unavailable(format!(
            "volume {id:?} is not found, but {}: it may be on an absent disk; retry once the disks are back",
            incomplete.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use csi_api::csi;
    use csi_api::csi::volume_capability::access_mode::Mode;
    use csi_api::csi::volume_capability::{AccessMode, AccessType, MountVolume};

    use super::*;
    use crate::csi::controller::ControllerService;
    use crate::lvm::naming::volume_tag;
    use crate::lvm::{FakeRunner, Invocation, LvmOptions, OWNER_TAG, Reply};
    use csi_api::volume_lock::VolumeLocks;

    const GIB: u64 = 1 << 30;

    /// A tiny lvm2: one owned VG `strata-nvme` of 8 GiB and the LVs created through it.
    fn fake_lvm(lvs: Arc<Mutex<Vec<(String, u64)>>>) -> FakeRunner {
        FakeRunner::from_fn(move |inv: &Invocation| {
            let lvs_now = lvs.lock().unwrap().clone();
            match inv.subcommand() {
                "vgs" => {
                    let used: u64 = lvs_now.iter().map(|(_, s)| s).sum();
                    Reply::ok(format!(
                        r#"{{"report":[{{"vg":[{{"vg_name":"strata-nvme","vg_uuid":"U","vg_size":"{}","vg_free":"{}","vg_extent_size":"4194304","vg_extent_count":"2048","vg_free_count":"0","pv_count":"2","lv_count":"{}","vg_missing_pv_count":"0","vg_tags":"{OWNER_TAG}"}}]}}]}}"#,
                        8 * GIB,
                        8 * GIB - used,
                        lvs_now.len()
                    ))
                }
                "lvs" => {
                    let rows: Vec<String> = lvs_now
                        .iter()
                        .map(|(name, size)| {
                            format!(
                                r#"{{"lv_name":"{name}","vg_name":"strata-nvme","lv_uuid":"L","lv_size":"{size}","lv_tags":"{OWNER_TAG},{}","lv_active":"","lv_attr":"-wi-------"}}"#,
                                volume_tag(name).unwrap()
                            )
                        })
                        .collect();
                    Reply::ok(format!(r#"{{"report":[{{"lv":[{}]}}]}}"#, rows.join(",")))
                }
                "lvcreate" => {
                    let arg = |flag: &str| {
                        let i = inv.args.iter().position(|a| a == flag).unwrap();
                        inv.args[i + 1].clone()
                    };
                    let size: u64 = arg("-L").trim_end_matches('b').parse().unwrap();
                    lvs.lock().unwrap().push((arg("-n"), size));
                    Reply::ok("  Logical volume created.")
                }
                other => Reply::fail(5, format!("unexpected lvm2 command {other}")),
            }
        })
    }

    fn mount_request(name: &str, bytes: i64) -> csi::CreateVolumeRequest {
        csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![csi::VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
            }],
            parameters: HashMap::from([("strata.io/device-class".into(), "nvme".into())]),
            ..Default::default()
        }
    }

    /// lvm2 with one nvme VG holding a thin volume `pvc-t`, a snapshot of it and (`pool`) the
    /// thin pool.
    fn thin_lvm(pool: bool) -> Lvm<FakeRunner> {
        thin_lvm_with(pool, "1.00", false)
    }

    /// [`thin_lvm`] with the pool's data fill (`data_percent`) and (`linear`) a linear volume
    /// `pvc-l` in the same VG.
    fn thin_lvm_with(pool: bool, pool_fill: &str, linear: bool) -> Lvm<FakeRunner> {
        use crate::lvm::snapshot::{snapshot_lv_name, snapshot_of_tag, snapshot_tag};
        use crate::lvm::{THIN_POOL_LV, THIN_POOL_TAG, THIN_TAG};
        let row = |name: &str, tags: String, segtype: &str, pool_lv: &str| {
            let fill = if segtype == "thin-pool" {
                pool_fill
            } else {
                "1.00"
            };
            format!(
                r#"{{"lv_name":"{name}","vg_name":"strata-nvme","lv_uuid":"L","lv_size":"{GIB}","lv_tags":"{tags}","lv_active":"active","lv_attr":"Vwi-a-tz--","lv_time":"2026-12-03 00:00:00 +0000","segtype":"{segtype}","pool_lv":"{pool_lv}","data_percent":"{fill}","metadata_percent":"1.00","lv_metadata_size":"8388608"}}"#
            )
        };
        let mut rows = vec![
            row(
                "pvc-t",
                format!("{OWNER_TAG},{},{THIN_TAG}", volume_tag("pvc-t").unwrap()),
                "thin",
                THIN_POOL_LV,
            ),
            row(
                &snapshot_lv_name("snap-1"),
                format!(
                    "{OWNER_TAG},{THIN_TAG},{},{}",
                    snapshot_tag("snap-1"),
                    snapshot_of_tag("pvc-t")
                ),
                "thin",
                THIN_POOL_LV,
            ),
        ];
        if linear {
            rows.push(row(
                "pvc-l",
                format!("{OWNER_TAG},{}", volume_tag("pvc-l").unwrap()),
                "linear",
                "",
            ));
        }
        if pool {
            rows.push(row(
                THIN_POOL_LV,
                format!("{OWNER_TAG},{THIN_POOL_TAG}"),
                "thin-pool",
                "",
            ));
        }
        let lvs = format!(r#"{{"report":[{{"lv":[{}]}}]}}"#, rows.join(","));
        Lvm::new(
            FakeRunner::from_fn(move |inv: &Invocation| match inv.subcommand() {
                "vgs" => Reply::ok(format!(
                    r#"{{"report":[{{"vg":[{{"vg_name":"strata-nvme","vg_uuid":"U","vg_size":"{}","vg_free":"{}","vg_extent_size":"4194304","vg_extent_count":"2048","vg_free_count":"0","pv_count":"1","lv_count":"3","vg_missing_pv_count":"0","vg_tags":"{OWNER_TAG}"}}]}}]}}"#,
                    8 * GIB,
                    4 * GIB
                )),
                "lvs" => Reply::ok(lvs.clone()),
                other => Reply::fail(5, format!("unexpected lvm2 command {other}")),
            }),
            LvmOptions::default(),
        )
    }

    #[tokio::test]
    async fn snapshots_are_listed_as_snapshots_and_never_as_volumes() {
        let volumes = LvmVolumes::new(thin_lvm(true), BTreeMap::new());
        let listed = volumes.list().await.unwrap();
        assert_eq!(
            listed.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
            ["pvc-t"]
        );
        assert!(listed[0].thin && listed[0].source.is_none());
        let snaps = volumes.snapshots().await.unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(
            (snaps[0].id.as_str(), snaps[0].source_volume.as_str()),
            ("snap-1", "pvc-t")
        );
        assert_eq!(snaps[0].class, DeviceClass::Nvme);
        assert_eq!(
            snaps[0].creation_time.as_deref(),
            Some("2026-12-03T00:00:00Z")
        );
        assert_eq!(volumes.thin_room(DeviceClass::Nvme).await.unwrap(), Some(0));
        // a snapshot id is no volume id
        assert!(volumes.find("snap-1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_full_pool_makes_its_thin_volumes_abnormal_and_the_linear_ones_not() {
        for (fill, full) in [("94.00", false), ("100.00", true)] {
            let volumes = LvmVolumes::new(thin_lvm_with(true, fill, true), BTreeMap::new());
            let thin = volumes.find("pvc-t").await.unwrap().unwrap();
            let linear = volumes.find("pvc-l").await.unwrap().unwrap();
            assert_eq!(linear.problem, None, "pool at {fill} %");
            let listed = volumes.list().await.unwrap();
            assert_eq!(
                listed.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
                ["pvc-l", "pvc-t"]
            );
            assert_eq!(listed[0].problem, None, "pool at {fill} %");
            if full {
                let m = thin.problem.expect("a full pool's thin volume is abnormal");
                assert!(m.contains("is full") && m.contains("100.0 %"), "{m}");
                assert_eq!(
                    listed[1].problem.as_ref(),
                    Some(&m),
                    "ListVolumes says the same"
                );
            } else {
                assert_eq!(thin.problem, None, "pool at {fill} %");
                assert_eq!(listed[1].problem, None, "pool at {fill} %");
            }
        }
    }

    #[tokio::test]
    async fn without_a_pool_thin_volumes_and_snapshots_name_the_flag_and_make_nothing() {
        let lvm = thin_lvm(false);
        let volumes = LvmVolumes::new(lvm.clone(), BTreeMap::new());
        let err = volumes
            .create_thin("pvc-n", DeviceClass::Nvme, GIB, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::ResourceExhausted(m) if m.contains("--thin-pool nvme=PERCENT")),
            "{err:?}"
        );
        let err = volumes
            .create_snapshot("snap-2", "pvc-t")
            .await
            .unwrap_err();
        assert!(matches!(&err, Error::ResourceExhausted(_)), "{err:?}");
        assert_eq!(volumes.thin_room(DeviceClass::Nvme).await.unwrap(), None);
        assert!(lvm.runner().calls_of("lvcreate").is_empty());
    }

    #[tokio::test]
    async fn create_volume_becomes_one_tagged_lvcreate_and_repeats_read_the_tags() {
        let state = Arc::new(Mutex::new(Vec::new()));
        let lvm = Lvm::new(
            fake_lvm(state.clone()),
            LvmOptions {
                activate: false,
                ..LvmOptions::default()
            },
        );
        let volumes = Arc::new(LvmVolumes::new(lvm.clone(), BTreeMap::new()));
        let svc = ControllerService::new("n1", volumes.clone(), VolumeLocks::new());

        let v = svc
            .create(mount_request("pvc-1", GIB as i64))
            .await
            .unwrap();
        assert_eq!(v.capacity_bytes, GIB as i64);
        let creates = lvm.runner().calls_of("lvcreate");
        assert_eq!(creates.len(), 1);
        let args = &creates[0].args;
        assert!(args.windows(2).any(|w| w == ["-n", "pvc-1"]), "{args:?}");
        assert!(
            args.windows(2).any(|w| w == ["-L", "1073741824b"]),
            "{args:?}"
        );
        assert!(args.contains(&volume_tag("pvc-1").unwrap()), "{args:?}");
        assert!(args.contains(&OWNER_TAG.to_owned()), "{args:?}");
        assert_eq!(args.last().map(String::as_str), Some("strata-nvme"));

        // The repeat finds the LV by its tag and creates nothing.
        let again = svc
            .create(mount_request("pvc-1", GIB as i64))
            .await
            .unwrap();
        assert_eq!(again, v);
        assert_eq!(lvm.runner().calls_of("lvcreate").len(), 1);
        // A bigger repeat conflicts.
        let err = svc
            .create(mount_request("pvc-1", 2 * GIB as i64))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");

        // The class report is read once and kept up to date by our own create.
        let classes = volumes.classes().await.unwrap();
        assert_eq!(classes[0].free_bytes, 7 * GIB);
        assert_eq!(classes[0].class, DeviceClass::Nvme);
        let found = volumes.find("pvc-1").await.unwrap().unwrap();
        assert_eq!(
            found.device,
            std::path::PathBuf::from("/dev/strata-nvme/pvc-1")
        );
        // lvm2 reports the LV inactive (activation is off in this fake): that is a problem.
        assert!(
            found
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("not active")),
            "{found:?}"
        );
        assert_eq!(volumes.list().await.unwrap(), vec![found]);
        assert!(volumes.find("pvc-2").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn after_the_warm_up_a_create_is_one_lvcreate_and_names_seen_before_are_still_checked() {
        // An LV from before this process started.
        let state = Arc::new(Mutex::new(vec![("pvc-old".to_owned(), GIB)]));
        let lvm = Lvm::new(
            fake_lvm(state.clone()),
            LvmOptions {
                activate: false,
                ..LvmOptions::default()
            },
        );
        let volumes = Arc::new(LvmVolumes::new(lvm.clone(), BTreeMap::new()));
        let svc = ControllerService::new("n1", volumes.clone(), VolumeLocks::new());
        volumes.warm_up().await.unwrap();
        let before = lvm.runner().calls().len();

        svc.create(mount_request("pvc-new", GIB as i64))
            .await
            .unwrap();
        let calls: Vec<String> = lvm.runner().calls()[before..]
            .iter()
            .map(|c| c.subcommand().to_owned())
            .collect();
        assert_eq!(calls, ["lvcreate"]);

        // The listed name is looked up, not created again: a repeat in another class conflicts.
        let mut other_class = mount_request("pvc-old", GIB as i64);
        other_class
            .parameters
            .insert("strata.io/device-class".into(), "ssd".into());
        let err = svc.create(other_class).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
        // A name found missing is looked up again by the next create (it may appear meanwhile).
        assert!(volumes.find("pvc-gone").await.unwrap().is_none());
        let lookups = lvm.runner().calls_of("lvs").len();
        svc.create(mount_request("pvc-gone", GIB as i64))
            .await
            .unwrap();
        assert_eq!(lvm.runner().calls_of("lvs").len(), lookups + 1);
        assert_eq!(lvm.runner().calls_of("lvcreate").len(), 2);
    }

    #[tokio::test]
    async fn a_volume_created_here_is_known_unmarked_without_reading_lvm() {
        let state = Arc::new(Mutex::new(Vec::new()));
        let lvm = Lvm::new(
            fake_lvm(state.clone()),
            LvmOptions {
                activate: false,
                ..LvmOptions::default()
            },
        );
        let volumes = LvmVolumes::new(lvm.clone(), BTreeMap::new());
        volumes
            .create("pvc-1", DeviceClass::Nvme, GIB)
            .await
            .unwrap();
        let lvs = lvm.runner().calls_of("lvs").len();
        assert!(!volumes.marked_for_deletion("pvc-1").await.unwrap());
        assert_eq!(lvm.runner().calls_of("lvs").len(), lvs, "no lvs");
        // created unzeroed (activation off): never fresh, so stage probes it
        assert!(!volumes.take_fresh("pvc-1").await);
        // a volume this process did not create is read from lvm2
        state.lock().unwrap().push(("pvc-2".into(), GIB));
        assert!(!volumes.marked_for_deletion("pvc-2").await.unwrap());
        assert_eq!(lvm.runner().calls_of("lvs").len(), lvs + 1);
    }

    #[tokio::test]
    async fn a_cached_report_admits_but_only_a_fresh_one_refuses() {
        let state = Arc::new(Mutex::new(Vec::new()));
        let lvm = Lvm::new(
            fake_lvm(state.clone()),
            LvmOptions {
                activate: false,
                ..LvmOptions::default()
            },
        );
        let volumes = Arc::new(LvmVolumes::new(lvm.clone(), BTreeMap::new()));
        let svc = ControllerService::new("n1", volumes.clone(), VolumeLocks::new());
        volumes.warm_up().await.unwrap();
        age(&volumes);
        let vgs = lvm.runner().calls_of("vgs").len();
        // The class has 8 GiB: 9 GiB is refused after a fresh read, with nothing created.
        let err = svc
            .create(mount_request("pvc-big", 9 * GIB as i64))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
        assert!(lvm.runner().calls_of("vgs").len() > vgs);
        assert!(lvm.runner().calls_of("lvcreate").is_empty());
        // A reserve makes a stale report unusable for admission.
        let reserved = LvmVolumes::new(lvm.clone(), BTreeMap::from([(DeviceClass::Nvme, GIB)]));
        reserved.warm_up().await.unwrap();
        assert!(reserved.cached_class(DeviceClass::Nvme).await.is_some());
        age(&reserved);
        assert!(reserved.cached_class(DeviceClass::Nvme).await.is_none());
        age(&volumes);
        assert!(volumes.cached_class(DeviceClass::Nvme).await.is_some());
    }

    /// Makes the class report older than [`CLASS_CACHE_TTL`].
    fn age<R: LvmRunner>(volumes: &LvmVolumes<R>) {
        let mut cache = volumes.classes.lock().unwrap();
        *cache = cache.take().map(|(c, at)| (c, at - CLASS_CACHE_TTL));
    }

    /// A VG of two disks, one of them missing: `pvc-a` has extents on the missing disk `slot-a`,
    /// `pvc-b` only on the present disk `slot-b`.
    fn degraded_lvm(missing: u32) -> FakeRunner {
        FakeRunner::from_fn(move |inv: &Invocation| {
            let lv = |name: &str| {
                format!(
                    r#"{{"lv_name":"{name}","vg_name":"strata-ssd","lv_uuid":"L{name}","lv_size":"{GIB}","lv_tags":"{OWNER_TAG},{}","lv_active":"active","lv_attr":"-wi-a-----"}}"#,
                    volume_tag(name).unwrap()
                )
            };
            let seg = |pv: &str, slot: &str, gone: bool, name: &str| {
                format!(
                    r#"{{"pv_name":"{pv}","pv_uuid":"uuid-{slot}","vg_name":"strata-ssd","pv_tags":"{OWNER_TAG},strata.io/slot={slot}","pv_missing":"{}","lv_name":"{name}","lv_tags":"{OWNER_TAG},{}","lv_health_status":"{}"}}"#,
                    if gone { "missing" } else { "" },
                    volume_tag(name).unwrap(),
                    if gone { "partial" } else { "" }
                )
            };
            match inv.subcommand() {
                "vgs" => Reply::ok(format!(
                    r#"{{"report":[{{"vg":[{{"vg_name":"strata-ssd","vg_uuid":"U","vg_size":"{}","vg_free":"0","vg_extent_size":"4194304","vg_extent_count":"512","vg_free_count":"0","pv_count":"2","lv_count":"2","vg_missing_pv_count":"{missing}","vg_tags":"{OWNER_TAG}"}}]}}]}}"#,
                    2 * GIB
                )),
                "lvs" => Reply::ok(format!(
                    r#"{{"report":[{{"lv":[{},{}]}}]}}"#,
                    lv("pvc-a"),
                    lv("pvc-b")
                )),
                "pvs" if inv.args.iter().any(|a| a == "--segments") => Reply::ok(format!(
                    r#"{{"report":[{{"pvseg":[{},{},{{"pv_name":"/dev/sdc","pv_uuid":"uuid-slot-b","vg_name":"strata-ssd","pv_tags":"","pv_missing":"","lv_name":"","lv_tags":"","lv_health_status":""}}]}}]}}"#,
                    seg(
                        if missing > 0 { "[unknown]" } else { "/dev/sdb" },
                        "slot-a",
                        missing > 0,
                        "pvc-a"
                    ),
                    seg("/dev/sdc", "slot-b", false, "pvc-b"),
                )),
                "pvs" => Reply::ok(format!(
                    r#"{{"report":[{{"pv":[{{"pv_name":"{}","pv_uuid":"uuid-slot-a","vg_name":"strata-ssd","pv_size":"{GIB}","pv_free":"0","pv_tags":"{OWNER_TAG},strata.io/slot=slot-a","pv_missing":"{}","vg_tags":"{OWNER_TAG}"}},{{"pv_name":"/dev/sdc","pv_uuid":"uuid-slot-b","vg_name":"strata-ssd","pv_size":"{GIB}","pv_free":"0","pv_tags":"{OWNER_TAG},strata.io/slot=slot-b","pv_missing":"","vg_tags":"{OWNER_TAG}"}}]}}]}}"#,
                    if missing > 0 { "[unknown]" } else { "/dev/sdb" },
                    if missing > 0 { "missing" } else { "" },
                )),
                other => Reply::fail(5, format!("unexpected {other}")),
            }
        })
    }

    #[tokio::test]
    async fn only_volumes_on_the_lost_or_failing_disk_are_abnormal() {
        let opts = LvmOptions {
            activate: false,
            ..LvmOptions::default()
        };
        let lvm = Lvm::new(degraded_lvm(1), opts.clone());
        let volumes = LvmVolumes::new(lvm, BTreeMap::new());
        let a = volumes.find("pvc-a").await.unwrap().unwrap();
        assert_eq!(
            a.problem.as_deref(),
            Some("disk in slot slot-a (PV uuid-slot-a) is missing")
        );
        let b = volumes.find("pvc-b").await.unwrap().unwrap();
        assert_eq!(b.problem, None, "same VG, other disk: healthy");
        let listed = volumes.list().await.unwrap();
        assert_eq!(listed[0].problem, a.problem);
        assert_eq!(listed[1].problem, None);

        // No disk missing, but slot-b failing: now only pvc-b is abnormal.
        let board = Board::default();
        board.mark("slot-b", "kernel device state is offline");
        let volumes =
            LvmVolumes::new(Lvm::new(degraded_lvm(0), opts), BTreeMap::new()).with_health(board);
        assert_eq!(volumes.find("pvc-a").await.unwrap().unwrap().problem, None);
        assert_eq!(
            volumes
                .find("pvc-b")
                .await
                .unwrap()
                .unwrap()
                .problem
                .as_deref(),
            Some("disk in slot slot-b is failing: kernel device state is offline")
        );
    }

    /// Only strata-ssd is visible (no LVs); strata-nvme vanished with all its disks.
    fn nvme_vanished() -> FakeRunner {
        FakeRunner::from_fn(|inv: &Invocation| match inv.subcommand() {
            "vgs" => Reply::ok(format!(
                r#"{{"report":[{{"vg":[{{"vg_name":"strata-ssd","vg_uuid":"U","vg_size":"{GIB}","vg_free":"{GIB}","vg_extent_size":"4194304","vg_extent_count":"256","vg_free_count":"256","pv_count":"1","lv_count":"0","vg_missing_pv_count":"0","vg_tags":"{OWNER_TAG}"}}]}}]}}"#
            )),
            "lvs" => Reply::ok(r#"{"report":[{"lv":[]}]}"#),
            other => Reply::fail(5, format!("unexpected {other}")),
        })
    }

    #[tokio::test]
    async fn a_delete_whose_vg_vanished_is_not_done() {
        let backups = tempfile::tempdir().unwrap();
        std::fs::write(
            backups.path().join("strata-nvme"),
            "strata-nvme {\n\tlogical_volumes {\n\t\tpvc-gone {\n\t\t\ttags = [\"strata.io/owner\", \"strata.io/volume=pvc-gone\"]\n\t\t}\n\t}\n}\n",
        )
        .unwrap();
        let lvm = Lvm::new(
            nvme_vanished(),
            LvmOptions {
                activate: false,
                backup_dir: backups.path().to_path_buf(),
                ..LvmOptions::default()
            },
        );
        let volumes = LvmVolumes::new(lvm.clone(), BTreeMap::new());
        let err = volumes.remove("pvc-gone").await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("strata-nvme") && text.contains("no longer sees"),
            "{text}"
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::Unavailable,
            "the CO retries"
        );
        // A repeat is refused the same way; nothing was changed.
        assert!(volumes.remove("pvc-gone").await.is_err());
        assert!(lvm.runner().calls_of("lvremove").is_empty());
        assert!(lvm.runner().calls_of("lvchange").is_empty());
        // A volume the vanished VG never held is gone: OK.
        volumes.remove("pvc-other").await.unwrap();
        // Once the stale record goes (the disks are gone for good), the delete completes.
        std::fs::remove_file(backups.path().join("strata-nvme")).unwrap();
        volumes.remove("pvc-gone").await.unwrap();
    }

    #[tokio::test]
    async fn a_class_with_a_failing_disk_names_it_and_takes_no_new_volume() {
        let opts = LvmOptions {
            activate: false,
            ..LvmOptions::default()
        };
        let lvm = Lvm::new(degraded_lvm(0), opts);
        let board = Board::default();
        let volumes =
            Arc::new(LvmVolumes::new(lvm.clone(), BTreeMap::new()).with_health(board.clone()));
        // Healthy: the class report carries no failing disk and `pvs` is not read.
        let classes = volumes.classes().await.unwrap();
        assert!(classes[0].healthy(), "{classes:?}");
        assert!(lvm.runner().calls_of("pvs").is_empty());

        board.mark("slot-b", "NVMe critical warning: media in read-only mode");
        // The cached report no longer admits; a fresh one maps the slot to its class.
        assert!(volumes.cached_class(DeviceClass::Ssd).await.is_none());
        let classes = volumes.classes().await.unwrap();
        assert_eq!(
            classes[0].failing_disks,
            ["slot-b: NVMe critical warning: media in read-only mode"]
        );
        assert!(!classes[0].healthy());

        let svc = ControllerService::new("n1", volumes.clone(), VolumeLocks::new());
        let mut req = mount_request("pvc-new", GIB as i64);
        req.parameters
            .insert("strata.io/device-class".into(), "ssd".into());
        let err = svc.create(req).await.unwrap_err();
        assert!(
            matches!(&err, Error::ResourceExhausted(m) if m.contains("failing disk slot-b")),
            "{err:?}"
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::ResourceExhausted
        );
        assert!(
            lvm.runner().calls_of("lvcreate").is_empty(),
            "nothing created"
        );
    }
}
