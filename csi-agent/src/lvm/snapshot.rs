//! Thin snapshots of Strata thin volumes, and new thin volumes made from a snapshot or a volume
//! (restores and clones). A snapshot LV is an lvm2 thin snapshot (`lvcreate -s`, no size) made
//! read-only (`-p r`) with lvm2's activation-skip flag kept (`-ky`: never activated, so never
//! open), tagged with the owner tag, [`THIN_TAG`], `strata.io/snapshot=<id>` and
//! `strata.io/snapshot-of=<origin volume>` — never `strata.io/volume=`, so every listing of
//! volumes skips it; its LV name is always the hashed form of `snapshot/<id>`. A restore or clone
//! is `lvcreate -s -kn -p rw` of the source LV tagged like a thin volume plus
//! `strata.io/source=`, then `lvextend` when asked larger. Admission of both runs under the VG
//! mutex against the caller's room closure. Removal goes through the layer's one `lvremove`
//! ([`Lvm::remove_tagged`]). The tags are the whole state (standalone mode lists them).

use csi_api::request::ContentSource;
use serde::Deserialize;

use super::error::{LvmError, Result, Subject, classify};
use super::lv::{check_ours, rounded};
use super::naming::{self, OWNER_TAG, PvcRef, lv_name_for};
use super::report::{self, Activation, Lv};
use super::runner::LvmRunner;
use super::thin::{THIN_POOL_LV, THIN_TAG, ThinState, is_thin};
use super::{Invocation, Lvm, VgSlot, name_arg};
use reading::{CREATE_FIELDS, VgReading};

/// Prefix of the tag holding the (escaped) CSI snapshot id of a snapshot LV.
pub const SNAPSHOT_TAG_PREFIX: &str = "strata.io/snapshot=";
/// Prefix of the tag holding the (escaped) volume id a snapshot was taken of.
pub const SNAPSHOT_OF_TAG_PREFIX: &str = "strata.io/snapshot-of=";
/// Prefix of the tag of a restored or cloned volume: escaped `snapshot/<id>` or `volume/<id>`.
pub const SOURCE_TAG_PREFIX: &str = "strata.io/source=";
/// Fields asked of `lvs` for snapshots: the common LV fields plus the creation time.
pub const SNAPSHOT_FIELDS: &str =
    "lv_name,vg_name,lv_uuid,lv_size,lv_tags,lv_active,lv_attr,lv_time";

/// The LV name of a snapshot: always the hashed form (`snapshot/` is never plain).
pub fn snapshot_lv_name(snapshot_id: &str) -> String {
    lv_name_for(&format!("snapshot/{snapshot_id}"))
}

/// The snapshot tag of a snapshot id.
pub fn snapshot_tag(snapshot_id: &str) -> String {
    format!("{SNAPSHOT_TAG_PREFIX}{}", naming::escape(snapshot_id))
}

/// The snapshot-of tag of an origin volume id.
pub fn snapshot_of_tag(volume: &str) -> String {
    format!("{SNAPSHOT_OF_TAG_PREFIX}{}", naming::escape(volume))
}

/// Whether an LV is a Strata snapshot (carries a snapshot tag).
pub fn is_snapshot(lv: &Lv) -> bool {
    lv.tags.iter().any(|t| t.starts_with(SNAPSHOT_TAG_PREFIX))
}

fn tag_value(lv: &Lv, prefix: &str) -> Option<String> {
    lv.tags
        .iter()
        .find_map(|t| t.strip_prefix(prefix))
        .and_then(naming::unescape)
}

/// A Strata snapshot as its LV's tags and lvm2 tell it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub vg: String,
    pub snapshot_id: String,
    /// The volume id it was taken of (which may have been deleted since).
    pub source_volume: String,
    /// The virtual size: the origin's at the time.
    pub size_bytes: u64,
    /// RFC 3339 UTC, from lvm2's `lv_time`.
    pub creation_time: Option<String>,
    pub lv: Lv,
}

/// Where a restored or cloned volume comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LvSource<'a> {
    /// A snapshot id.
    Snapshot(&'a str),
    /// A volume id.
    Volume(&'a str),
}

impl LvSource<'_> {
    /// The value kept (escaped) in the source tag: `snapshot/<id>` or `volume/<id>`.
    fn key(&self) -> String {
        match self {
            LvSource::Snapshot(id) => format!("snapshot/{id}"),
            LvSource::Volume(id) => format!("volume/{id}"),
        }
    }

    fn tag(&self) -> String {
        format!("{SOURCE_TAG_PREFIX}{}", naming::escape(&self.key()))
    }
}

impl<'a> From<&'a ContentSource> for LvSource<'a> {
    fn from(source: &'a ContentSource) -> Self {
        match source {
            ContentSource::Snapshot(id) => LvSource::Snapshot(id),
            ContentSource::Volume(id) => LvSource::Volume(id),
        }
    }
}

/// The source of a restored or cloned volume's LV, from its source tag. `None` for a volume
/// made empty (or a tag of a kind this agent does not know).
pub fn lv_source(lv: &Lv) -> Option<ContentSource> {
    let key = tag_value(lv, SOURCE_TAG_PREFIX)?;
    match key.split_once('/')? {
        ("snapshot", id) => Some(ContentSource::Snapshot(id.to_owned())),
        ("volume", id) => Some(ContentSource::Volume(id.to_owned())),
        _ => None,
    }
}

/// lvm2's `lv_time` (`2026-12-02 23:58:32 +0000`) as RFC 3339 UTC (`2026-12-02T23:58:32Z`).
pub fn rfc3339_of_lv_time(value: &str) -> Option<String> {
    let t = chrono::DateTime::parse_from_str(value.trim(), "%Y-%m-%d %H:%M:%S %z").ok()?;
    Some(
        t.with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

#[derive(Deserialize)]
struct RawTime {
    #[serde(default)]
    lv_time: String,
}

/// Parses an `lvs` report made with [`SNAPSHOT_FIELDS`]: the Strata snapshots in it (rows without
/// the owner, snapshot and snapshot-of tags are skipped).
pub fn parse_snapshots(command: &str, json: &str) -> Result<Vec<Snapshot>> {
    let lvs = report::parse_lvs(command, json)?;
    let times: Vec<RawTime> = report::rows(command, json)?;
    if times.len() != lvs.len() {
        return Err(LvmError::Parse {
            command: command.to_owned(),
            detail: "rows differ between readings".into(),
        });
    }
    Ok(lvs
        .into_iter()
        .zip(times)
        .filter_map(|(lv, t)| snapshot_of_lv(lv, rfc3339_of_lv_time(&t.lv_time)))
        .collect())
}

fn snapshot_of_lv(lv: Lv, creation_time: Option<String>) -> Option<Snapshot> {
    if !lv.owned || lv.volume.is_some() {
        return None;
    }
    let snapshot_id = tag_value(&lv, SNAPSHOT_TAG_PREFIX)?;
    let source_volume = tag_value(&lv, SNAPSHOT_OF_TAG_PREFIX)?;
    Some(Snapshot {
        vg: lv.vg.clone(),
        snapshot_id,
        source_volume,
        size_bytes: lv.size_bytes,
        creation_time,
        lv,
    })
}

impl<R: LvmRunner> Lvm<R> {
    /// Thin snapshot `snapshot_id` of the Strata thin volume `origin_volume` in `vg` (see the
    /// module head for its shape). Idempotent: the same id of the same origin is the existing
    /// snapshot; of another origin [`LvmError::OtherSource`]. A missing origin is
    /// [`LvmError::NotFound`], a linear one [`LvmError::NotThin`]. Admission under the VG mutex:
    /// the origin's size must be at most `room(&ThinState)`, else [`LvmError::InsufficientSpace`]
    /// and nothing is made.
    pub async fn create_snapshot(
        &self,
        vg: &str,
        origin_volume: &str,
        snapshot_id: &str,
        room: impl FnOnce(&ThinState) -> u64 + Send,
    ) -> Result<Snapshot> {
        naming::validate_volume_name(origin_volume)?;
        naming::validate_volume_name(snapshot_id)?;
        let vg_arg = name_arg(vg)?;
        let lv_name = snapshot_lv_name(snapshot_id);
        let tags = [
            OWNER_TAG.to_owned(),
            THIN_TAG.to_owned(),
            snapshot_tag(snapshot_id),
            snapshot_of_tag(origin_volume),
        ];
        for tag in &tags {
            checked_tag(tag)?;
        }
        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        self.owned_vg(vg, &mut slot).await?;
        let reading = self.read_for_create(vg).await?;
        if let Some(existing) = reading.snapshot(snapshot_id)? {
            return same_origin(existing, origin_volume);
        }
        let origin = reading.thin_origin(origin_volume)?;
        admit(vg, reading.thin.as_ref(), origin.size_bytes, room)?;
        let mut args = self.lvm_args("lvcreate");
        args.extend(["-s".to_owned(), "-n".to_owned(), lv_name.clone()]);
        args.extend(["-ky", "-p", "r"].map(String::from));
        for tag in &tags {
            args.extend(["--addtag".to_owned(), tag.clone()]);
        }
        args.push(format!("{vg_arg}/{}", origin.name));
        self.run_create(&mut slot, vg, args, origin.size_bytes)
            .await?;
        // Re-read for lvm2's `lv_time`: the creation time every later reading reports.
        match self.snapshot_locked(vg, snapshot_id).await? {
            Some(made) => Ok(made),
            None => Err(LvmError::NotFound {
                what: format!("snapshot {snapshot_id:?} just made as {vg}/{lv_name}"),
            }),
        }
    }

    /// Strata's snapshots (of every VG, or of one), from one `lvs`.
    pub async fn snapshots(&self, vg: Option<&str>) -> Result<Vec<Snapshot>> {
        let mut args = self.report("lvs", SNAPSHOT_FIELDS);
        if let Some(vg) = vg {
            args.push(name_arg(vg)?);
        }
        let out = self
            .run_ok(args, vg.map_or(Subject::Other, Subject::Vg), 0)
            .await?;
        parse_snapshots("lvs", &out.stdout)
    }

    /// The snapshot `snapshot_id` in any VG, or `None`.
    pub async fn find_snapshot(&self, snapshot_id: &str) -> Result<Option<Snapshot>> {
        naming::validate_volume_name(snapshot_id)?;
        Ok(self
            .snapshots(None)
            .await?
            .into_iter()
            .find(|s| s.snapshot_id == snapshot_id))
    }

    /// Removes the snapshot `snapshot_id` from `vg` through the layer's one `lvremove`, restricted
    /// to an LV carrying the owner tag and this snapshot's tag. `true` if removed, `false` if
    /// already gone. Never wiped (thin: the pool zeroes a freed chunk before reuse).
    pub async fn remove_snapshot(&self, vg: &str, snapshot_id: &str) -> Result<bool> {
        naming::validate_volume_name(snapshot_id)?;
        let tag = snapshot_tag(snapshot_id);
        checked_tag(&tag)?;
        self.remove_tagged(vg, &snapshot_lv_name(snapshot_id), &tag, None)
            .await
    }

    /// A new thin volume `volume` in `vg` from a snapshot or a thin volume (restore or clone):
    /// `lvcreate -s -kn -p rw` of the source LV, tagged like a thin volume plus the source tag,
    /// then `lvextend` to `size_bytes` (rounded up to extents) when larger than the source.
    /// Smaller than the source is [`LvmError::InvalidArgument`]. Admission as for a snapshot,
    /// against the new LV's virtual size. Idempotent: an LV of this volume from the same source
    /// is completed to the size and returned; another source is [`LvmError::OtherSource`],
    /// another size [`LvmError::AlreadyExistsDifferent`]. The result is a normal thin volume,
    /// never fresh (it has content).
    pub async fn create_lv_from_source(
        &self,
        vg: &str,
        source: LvSource<'_>,
        volume: &str,
        size_bytes: u64,
        pvc: Option<&PvcRef>,
        room: impl FnOnce(&ThinState) -> u64 + Send,
    ) -> Result<Lv> {
        let (lv_name, mut tags) = super::thin::new_thin_volume(volume, size_bytes, pvc)?;
        let (LvSource::Snapshot(source_id) | LvSource::Volume(source_id)) = source;
        naming::validate_volume_name(source_id)?;
        let vg_arg = name_arg(vg)?;
        let source_tag = source.tag();
        checked_tag(&source_tag)?;
        tags.push(source_tag);
        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        let facts = self.owned_vg(vg, &mut slot).await?;
        let size = rounded(size_bytes, facts.extent_size)?;
        let reading = self.read_for_create(vg).await?;
        let existing = match reading.lv(&lv_name) {
            Some(lv) => Some(check_ours(vg, volume, lv.clone())?),
            None => None,
        };
        let lv = match existing {
            Some(lv) => {
                let from = lv_source(&lv);
                let from = from.as_ref().map(LvSource::from);
                if !is_thin(&lv) || from != Some(source) {
                    return Err(LvmError::OtherSource {
                        what: format!("volume {volume:?} ({vg}/{lv_name})"),
                        existing: from.map_or_else(|| "nothing (made empty)".into(), |f| f.key()),
                        requested: source.key(),
                    });
                }
                if lv.size_bytes > size {
                    return Err(LvmError::AlreadyExistsDifferent {
                        volume: volume.to_owned(),
                        vg: vg.to_owned(),
                        lv: lv_name,
                        existing_bytes: lv.size_bytes,
                        requested_bytes: size,
                        other_volume: false,
                    });
                }
                lv
            }
            None => {
                let source_lv = match source {
                    LvSource::Snapshot(id) => {
                        reading
                            .snapshot(id)?
                            .ok_or_else(|| LvmError::NotFound {
                                what: format!("snapshot {id:?} in volume group {vg}"),
                            })?
                            .lv
                    }
                    LvSource::Volume(id) => reading.thin_origin(id)?,
                };
                if size < source_lv.size_bytes {
                    return Err(LvmError::InvalidArgument(format!(
                        "volume {volume:?} of {size} bytes is smaller than its source {} \
                         ({} bytes)",
                        source.key(),
                        source_lv.size_bytes
                    )));
                }
                admit(vg, reading.thin.as_ref(), size, room)?;
                let activate = self.shared.options.activate;
                let mut args = self.lvm_args("lvcreate");
                args.extend(["-s".to_owned(), "-n".to_owned(), lv_name.clone()]);
                args.extend(["-kn", "-p", "rw"].map(String::from));
                for tag in &tags {
                    args.extend(["--addtag".to_owned(), tag.clone()]);
                }
                args.push(if activate { "-ay" } else { "-an" }.to_owned());
                args.push(format!("{vg_arg}/{}", source_lv.name));
                self.run_create(&mut slot, vg, args, size).await?;
                // Known without a re-read: a thin snapshot has its source's virtual size.
                Lv {
                    vg: vg.to_owned(),
                    name: lv_name,
                    uuid: None,
                    size_bytes: source_lv.size_bytes,
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
                }
            }
        };
        let lv = if lv.size_bytes < size {
            self.grow_locked(&mut slot, vg, lv, size).await?
        } else {
            lv
        };
        self.note_created(&lv, false);
        Ok(lv)
    }

    // ---- helpers (the caller holds the VG's mutex) ---------------------------------------------

    /// The snapshot `snapshot_id` of `vg` by its LV name; an LV of that name that is not this
    /// Strata snapshot is [`LvmError::NotOwned`].
    async fn snapshot_locked(&self, vg: &str, snapshot_id: &str) -> Result<Option<Snapshot>> {
        let lv_name = snapshot_lv_name(snapshot_id);
        let mut args = self.report("lvs", SNAPSHOT_FIELDS);
        args.push(format!("{}/{lv_name}", name_arg(vg)?));
        let (inv, out) = self.run(Invocation::lvm(args)).await?;
        if !out.success() {
            return match classify(super::failure(&inv, &out), Subject::Lv(vg, &lv_name), 0) {
                LvmError::NotFound { .. }
                    if out.stderr.contains("Failed to find logical volume") =>
                {
                    Ok(None)
                }
                e => Err(e),
            };
        }
        let rows = report::parse_lvs("lvs", &out.stdout)?.len();
        let found = parse_snapshots("lvs", &out.stdout)?.into_iter().next();
        match found {
            Some(s) if s.snapshot_id == snapshot_id => Ok(Some(s)),
            None if rows == 0 => Ok(None),
            _ => Err(LvmError::NotOwned {
                what: format!("logical volume {vg}/{lv_name}"),
            }),
        }
    }

    /// The one `lvs` of the whole VG a create decides on ([`VgReading`]).
    async fn read_for_create(&self, vg: &str) -> Result<VgReading> {
        let mut args = self.report("lvs", CREATE_FIELDS);
        args.push(name_arg(vg)?);
        let out = self.run_ok(args, Subject::Vg(vg), 0).await?;
        VgReading::parse("lvs", vg, &out.stdout)
    }

    /// Runs an `lvcreate` and classifies its failure (the VG's facts forgotten unless it was
    /// only short of space).
    async fn run_create(
        &self,
        slot: &mut VgSlot,
        vg: &str,
        args: Vec<String>,
        requested: u64,
    ) -> Result<()> {
        let (inv, out) = self.run(Invocation::lvm(args)).await?;
        if out.success() {
            return Ok(());
        }
        let err = classify(super::failure(&inv, &out), Subject::Vg(vg), requested);
        if !matches!(err, LvmError::InsufficientSpace { .. }) {
            self.forget_vg(slot);
        }
        Err(err)
    }

    /// `lvextend -L size` of `lv` (the caller holds the VG's mutex).
    async fn grow_locked(&self, slot: &mut VgSlot, vg: &str, mut lv: Lv, size: u64) -> Result<Lv> {
        let mut args = self.lvm_args("lvextend");
        args.extend([
            "-L".to_owned(),
            format!("{size}b"),
            format!("{}/{}", name_arg(vg)?, lv.name),
        ]);
        if let Err(err) = self.run_ok(args, Subject::Lv(vg, &lv.name), size).await {
            if !matches!(err, LvmError::InsufficientSpace { .. }) {
                self.forget_vg(slot);
            }
            return Err(err);
        }
        lv.size_bytes = size;
        Ok(lv)
    }
}

/// Refuses `virtual_bytes` more on the pool of `vg` (`state`, read under the VG's mutex) beyond
/// `room`, or without a pool.
fn admit(
    vg: &str,
    state: Option<&ThinState>,
    virtual_bytes: u64,
    room: impl FnOnce(&ThinState) -> u64,
) -> Result<()> {
    let room = state.map_or(0, room);
    if virtual_bytes <= room {
        return Ok(());
    }
    Err(LvmError::InsufficientSpace {
        vg: vg.to_owned(),
        requested_bytes: virtual_bytes,
        detail: match state {
            Some(_) => {
                format!("the thin pool {vg}/{THIN_POOL_LV} may still take {room} virtual bytes")
            }
            None => format!("{vg} has no thin pool (the class serves no thin volumes here)"),
        },
    })
}

/// `existing` if it was taken of `origin_volume`, else [`LvmError::OtherSource`].
fn same_origin(existing: Snapshot, origin_volume: &str) -> Result<Snapshot> {
    if existing.source_volume == origin_volume {
        return Ok(existing);
    }
    Err(LvmError::OtherSource {
        what: format!("snapshot {:?}", existing.snapshot_id),
        existing: format!("volume/{}", existing.source_volume),
        requested: format!("volume/{origin_volume}"),
    })
}

fn checked_tag(tag: &str) -> Result<()> {
    if tag.len() > naming::MAX_TAG_LEN || !naming::is_legal_tag(tag) {
        return Err(LvmError::InvalidArgument(format!(
            "tag of {} bytes is not one lvm2 takes",
            tag.len()
        )));
    }
    Ok(())
}

mod reading;
#[cfg(test)]
mod tests;
