//! Thin provisioning in a Strata class VG: one thin pool per VG ([`THIN_POOL_LV`], tagged with the
//! owner tag and [`THIN_POOL_TAG`]) and thin LVs on it (tagged like linear LVs plus [`THIN_TAG`],
//! so a restarted agent tells them apart without asking device-mapper). The pool is made with
//! `--zero y` (a chunk handed to a thin LV is zeroed before it can be read, so a new thin LV never
//! shows a deleted one's blocks), `--discards passdown` and [`THIN_CHUNK_BYTES`] chunks; it is
//! grown by the agent (never shrunk). [`Lvm::thin_state`] reads the pool's fill and the virtual
//! bytes promised on it in one `lvs`. Creation, growth and removal of thin LVs run under the VG's
//! mutex like linear ones; growth and removal of a thin LV use [`Lvm::extend_lv`] and
//! [`Lvm::remove_lv`] unchanged (lvm2 treats both kinds alike there).
//! lvm2 cannot create a thin pool or a thin LV without device-mapper (the pool's metadata is
//! formatted through the kernel target), so host tests use the fake runner; the real commands run
//! in the node VM (`tests/node_thin`); `tests/thin_loop.rs` shows lvm2 refusing a pool on the host.

use serde::Deserialize;

use super::error::{LvmError, Result, Subject, classify};
use super::lv::rounded;
use super::naming::{self, OWNER_TAG, PvcRef, lv_name_for};
use super::report::{self, Activation, LV_FIELDS, Lv, report_args};
use super::runner::LvmRunner;
use super::{Invocation, Lvm, name_arg};

/// The name of the thin pool LV of a class VG. It contains `_` and is not a 40-hex-digit hash, so
/// no volume's LV name can take it (see [`naming`]).
pub const THIN_POOL_LV: &str = "strata_thinpool";
/// Tag of a Strata thin pool (beside the owner tag).
pub const THIN_POOL_TAG: &str = "strata.io/thin-pool";
/// Tag of a Strata thin LV (beside the owner and volume tags).
pub const THIN_TAG: &str = "strata.io/thin";
/// Chunk size of the pool: 64 KiB, lvm2's smallest; zeroing a chunk on its first partial write
/// then costs little, and snapshots (later) share at a fine grain.
pub const THIN_CHUNK_BYTES: u64 = 64 << 10;
/// Smallest pool metadata the layer makes (lvm2's own minimum is 2 MiB).
pub const MIN_METADATA_BYTES: u64 = 4 << 20;
/// lvm2's largest thin pool metadata (16 GiB less a little; 15.81 GiB).
pub const MAX_METADATA_BYTES: u64 = 16_192 << 20;

/// Fields asked of `lvs` for [`Lvm::thin_state`]: the common LV fields plus the thin ones.
pub const THIN_FIELDS: &str = "lv_name,vg_name,lv_uuid,lv_size,lv_tags,lv_active,lv_attr,\
segtype,pool_lv,data_percent,metadata_percent,lv_metadata_size";

/// Whether an LV is a Strata thin LV (carries [`THIN_TAG`]).
pub fn is_thin(lv: &Lv) -> bool {
    lv.tags.iter().any(|t| t == THIN_TAG)
}

/// The metadata size for a pool of `data_bytes`: twice lvm2's estimate of what the mappings of
/// a fully provisioned pool take (64 bytes per chunk), within [`MIN_METADATA_BYTES`] and
/// [`MAX_METADATA_BYTES`]; metadata is also grown with the data (see [`Lvm::extend_thin_pool`]).
pub fn metadata_bytes_for(data_bytes: u64) -> u64 {
    (data_bytes / THIN_CHUNK_BYTES)
        .saturating_mul(128)
        .clamp(MIN_METADATA_BYTES, MAX_METADATA_BYTES)
}

/// A class VG's thin pool as lvm2 reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ThinPool {
    pub vg: String,
    pub name: String,
    /// Data size: what the pool can physically hold.
    pub size_bytes: u64,
    /// lvm2's `data_percent` (0–100) of `size_bytes` in use.
    pub data_percent: f64,
    pub metadata_size_bytes: u64,
    /// lvm2's `metadata_percent` (0–100). Both percents read 0 while the pool is inactive.
    pub metadata_percent: f64,
    /// Carries the owner tag.
    pub owned: bool,
    pub active: Activation,
}

impl ThinPool {
    /// Data bytes in use (from `data_percent`, rounded up).
    pub fn used_bytes(&self) -> u64 {
        percent_of(self.data_percent, self.size_bytes)
    }

    /// Metadata bytes in use (from `metadata_percent`, rounded up).
    pub fn metadata_used_bytes(&self) -> u64 {
        percent_of(self.metadata_percent, self.metadata_size_bytes)
    }
}

fn percent_of(percent: f64, bytes: u64) -> u64 {
    // u64 → f64 loses precision only beyond 2^53 bytes (8 PiB), far beyond a pool.
    let used = (percent.clamp(0.0, 100.0) / 100.0 * bytes as f64).ceil();
    (used as u64).min(bytes)
}

/// A class VG's pool and what is promised on it.
#[derive(Debug, Clone, PartialEq)]
pub struct ThinState {
    pub pool: ThinPool,
    /// Sum of the virtual sizes of the thin LVs on the pool (Strata's or not).
    pub virtual_bytes: u64,
    /// The Strata thin LVs on the pool.
    pub volumes: Vec<Lv>,
}

#[derive(Deserialize)]
struct RawThin {
    #[serde(default)]
    segtype: String,
    #[serde(default)]
    pool_lv: String,
    #[serde(default)]
    data_percent: String,
    #[serde(default)]
    metadata_percent: String,
    #[serde(default)]
    lv_metadata_size: String,
}

fn parse_percent(command: &str, field: &str, value: &str) -> Result<f64> {
    if value.is_empty() {
        return Ok(0.0);
    }
    value
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite())
        .ok_or_else(|| LvmError::Parse {
            command: command.to_owned(),
            detail: format!("{field} {value:?} is not a percentage"),
        })
}

/// Parses an `lvs` report made with [`THIN_FIELDS`] for the pool named `pool`: `None` without
/// such a pool.
pub fn parse_thin_state(command: &str, json: &str, pool: &str) -> Result<Option<ThinState>> {
    let lvs = report::parse_lvs(command, json)?;
    let thin: Vec<RawThin> = report::rows(command, json)?;
    if thin.len() != lvs.len() {
        return Err(LvmError::Parse {
            command: command.to_owned(),
            detail: "rows differ between readings".into(),
        });
    }
    let mut found = None;
    let mut virtual_bytes = 0u64;
    let mut volumes = Vec::new();
    for (lv, t) in lvs.into_iter().zip(thin) {
        if lv.name == pool && t.segtype == "thin-pool" {
            let metadata_size_bytes = if t.lv_metadata_size.is_empty() {
                0
            } else {
                t.lv_metadata_size.parse().map_err(|_| LvmError::Parse {
                    command: command.to_owned(),
                    detail: format!("lv_metadata_size {:?}", t.lv_metadata_size),
                })?
            };
            found = Some(ThinPool {
                vg: lv.vg.clone(),
                name: lv.name.clone(),
                size_bytes: lv.size_bytes,
                data_percent: parse_percent(command, "data_percent", &t.data_percent)?,
                metadata_size_bytes,
                metadata_percent: parse_percent(command, "metadata_percent", &t.metadata_percent)?,
                owned: lv.owned,
                active: lv.active,
            });
        } else if t.segtype == "thin" && t.pool_lv.trim_matches(['[', ']']) == pool {
            virtual_bytes = virtual_bytes.saturating_add(lv.size_bytes);
            if lv.owned && lv.volume.is_some() {
                volumes.push(lv);
            }
        }
    }
    Ok(found.map(|pool| ThinState {
        pool,
        virtual_bytes,
        volumes,
    }))
}

impl<R: LvmRunner> Lvm<R> {
    /// The thin pool of `vg` with its fill and the virtual bytes promised on it (one `lvs` of
    /// the VG), or `None` when the VG has no pool.
    pub async fn thin_state(&self, vg: &str) -> Result<Option<ThinState>> {
        let mut args = report_args("lvs", THIN_FIELDS);
        if let Some(config) = &self.shared.options.config {
            args.insert(1, "--config".into());
            args.insert(2, config.clone());
        }
        args.push(name_arg(vg)?);
        let out = self.run_ok(args, Subject::Vg(vg), 0).await?;
        parse_thin_state("lvs", &out.stdout, THIN_POOL_LV)
    }

    /// Creates the thin pool of the Strata VG `vg` with `data_bytes` of data (rounded up to
    /// extents) and [`metadata_bytes_for`] metadata: `--zero y`, `--discards passdown`, 64 KiB
    /// chunks, owner and pool tags. Idempotent: an existing Strata pool is returned as it is
    /// (whatever its size: it may have grown). An LV of that name that is not Strata's pool is
    /// [`LvmError::NotOwned`]; not enough free extents is [`LvmError::InsufficientSpace`].
    pub async fn create_thin_pool(&self, vg: &str, data_bytes: u64) -> Result<ThinPool> {
        let vg_arg = name_arg(vg)?;
        if data_bytes == 0 {
            return Err(LvmError::InvalidArgument(format!(
                "thin pool of {vg}: size must be positive"
            )));
        }
        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        let facts = self.owned_vg(vg, &mut slot).await?;
        let size = rounded(data_bytes, facts.extent_size)?;
        let metadata = rounded(metadata_bytes_for(size), facts.extent_size)?;
        let activate = self.shared.options.activate;
        let mut args = self.lvm_args("lvcreate");
        args.extend(
            [
                "--type",
                "thin-pool",
                "-n",
                THIN_POOL_LV,
                "-L",
                &format!("{size}b"),
                "--poolmetadatasize",
                &format!("{metadata}b"),
                "--chunksize",
                &format!("{}k", THIN_CHUNK_BYTES >> 10),
                "--zero",
                "y",
                "--discards",
                "passdown",
                "--addtag",
                OWNER_TAG,
                "--addtag",
                THIN_POOL_TAG,
                if activate { "-ay" } else { "-an" },
            ]
            .map(String::from),
        );
        args.push(vg_arg);
        let (inv, out) = self.run(Invocation::lvm(args)).await?;
        if !out.success() && !out.stderr.contains("already exists") {
            let err = classify(super::failure(&inv, &out), Subject::Vg(vg), size);
            if !matches!(err, LvmError::InsufficientSpace { .. }) {
                self.forget_vg(&mut slot);
            }
            return Err(err);
        }
        drop(slot);
        let state = self.thin_state(vg).await?;
        match state {
            Some(s) if s.pool.owned => Ok(s.pool),
            Some(_) => Err(LvmError::NotOwned {
                what: format!("thin pool {vg}/{THIN_POOL_LV}"),
            }),
            None => Err(LvmError::NotOwned {
                what: format!("logical volume {vg}/{THIN_POOL_LV} (not a thin pool)"),
            }),
        }
    }

    /// Grows the data of the Strata pool of `vg` by `more_bytes` (rounded up to extents) from
    /// the VG's free extents, and its metadata to [`metadata_bytes_for`] the new size when that is
    /// larger. Never shrinks. A pool that is not Strata's is [`LvmError::NotOwned`].
    pub async fn extend_thin_pool(&self, vg: &str, more_bytes: u64) -> Result<ThinPool> {
        let vg_arg = name_arg(vg)?;
        let Some(state) = self.thin_state(vg).await? else {
            return Err(LvmError::NotFound {
                what: format!("thin pool {vg}/{THIN_POOL_LV}"),
            });
        };
        if !state.pool.owned {
            return Err(LvmError::NotOwned {
                what: format!("thin pool {vg}/{THIN_POOL_LV}"),
            });
        }
        if more_bytes == 0 {
            return Ok(state.pool);
        }
        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        let facts = self.owned_vg(vg, &mut slot).await?;
        let more = rounded(more_bytes, facts.extent_size)?;
        let target = state.pool.size_bytes.saturating_add(more);
        let pool_arg = format!("{vg_arg}/{THIN_POOL_LV}");
        let mut args = self.lvm_args("lvextend");
        args.extend(["-L".to_owned(), format!("{target}b"), pool_arg.clone()]);
        if let Err(err) = self.run_ok(args, Subject::Lv(vg, THIN_POOL_LV), more).await {
            if !matches!(err, LvmError::InsufficientSpace { .. }) {
                self.forget_vg(&mut slot);
            }
            return Err(err);
        }
        let metadata = rounded(metadata_bytes_for(target), facts.extent_size)?;
        if metadata > state.pool.metadata_size_bytes {
            let mut args = self.lvm_args("lvextend");
            args.extend([
                "--poolmetadatasize".to_owned(),
                format!("{metadata}b"),
                pool_arg,
            ]);
            // The data grew; metadata that cannot follow now is retried on the next check.
            if let Err(err) = self
                .run_ok(args, Subject::Lv(vg, THIN_POOL_LV), metadata)
                .await
            {
                tracing::warn!(vg, error = %err, "thin pool metadata not grown");
            }
        }
        drop(slot);
        self.thin_state(vg)
            .await?
            .map(|s| s.pool)
            .ok_or_else(|| LvmError::NotFound {
                what: format!("thin pool {vg}/{THIN_POOL_LV}"),
            })
    }

    /// Creates the thin LV of `volume` with `virtual_bytes` (rounded up to extents) on the pool
    /// of `vg`, tagged with the owner, the volume, [`THIN_TAG`] and the PVC (if given).
    /// Idempotent like [`Lvm::create_lv`]. Admission: under the VG's mutex (so two creates on
    /// one pool never both take the last room) the pool is read and `promisable` says what a new
    /// thin volume may still be promised on it; a larger (rounded) size, or a VG without a pool,
    /// is [`LvmError::InsufficientSpace`] and creates nothing — unless the LV already exists (an
    /// idempotent repeat). A new thin LV reads zeroes everywhere, so with activation it counts as
    /// fresh ([`Lvm::take_fresh`]).
    pub async fn create_thin_lv(
        &self,
        vg: &str,
        volume: &str,
        virtual_bytes: u64,
        pvc: Option<&PvcRef>,
        promisable: impl FnOnce(&ThinState) -> u64 + Send,
    ) -> Result<Lv> {
        let (lv_name, tags) = new_thin_volume(volume, virtual_bytes, pvc)?;
        let vg_arg = name_arg(vg)?;
        let lock = self.vg_lock(vg);
        let mut slot = lock.lock().await;
        let facts = self.owned_vg(vg, &mut slot).await?;
        let size = rounded(virtual_bytes, facts.extent_size)?;
        let state = self.thin_state(vg).await?;
        let repeat = state
            .as_ref()
            .is_some_and(|s| s.volumes.iter().any(|l| l.name == lv_name));
        if !repeat {
            let room = state.as_ref().map_or(0, promisable);
            if size > room {
                return Err(LvmError::InsufficientSpace {
                    vg: vg.to_owned(),
                    requested_bytes: size,
                    detail: match state {
                        Some(_) => format!(
                            "the thin pool {vg}/{THIN_POOL_LV} may still promise {room} bytes"
                        ),
                        None => {
                            format!("{vg} has no thin pool (the class serves no thin volumes here)")
                        }
                    },
                });
            }
        }
        let activate = self.shared.options.activate;
        let mut args = self.lvm_args("lvcreate");
        args.extend(["--type".to_owned(), "thin".to_owned()]);
        args.extend(["-n".to_owned(), lv_name.clone()]);
        args.extend(["-V".to_owned(), format!("{size}b")]);
        args.extend(["--thinpool".to_owned(), THIN_POOL_LV.to_owned()]);
        for tag in &tags {
            args.extend(["--addtag".to_owned(), tag.clone()]);
        }
        args.push(if activate { "-ay" } else { "-an" }.to_owned());
        args.push(vg_arg);
        let (inv, out) = self.run(Invocation::lvm(args)).await?;
        let created = super::lv::Created {
            vg,
            volume,
            lv_name,
            size,
            tags,
            pvc,
            activate,
            thin: true,
        };
        self.finish_lvcreate(&mut slot, created, &inv, &out).await
    }
}

/// `LV_FIELDS` is a prefix of [`THIN_FIELDS`] (the thin report parses as an LV report too).
const _: () = {
    let (a, b) = (LV_FIELDS.as_bytes(), THIN_FIELDS.as_bytes());
    assert!(a.len() < b.len());
    let mut i = 0;
    while i < a.len() {
        assert!(a[i] == b[i]);
        i += 1;
    }
};

/// The LV name and tags of a new thin volume `volume` (owner, volume, [`THIN_TAG`], the PVC if
/// given), after checking the name and that `bytes` is positive: what every thin create shares.
pub(super) fn new_thin_volume(
    volume: &str,
    bytes: u64,
    pvc: Option<&PvcRef>,
) -> Result<(String, Vec<String>)> {
    naming::validate_volume_name(volume)?;
    if bytes == 0 {
        return Err(LvmError::InvalidArgument(format!(
            "volume {volume:?}: size must be positive"
        )));
    }
    let mut tags = vec![
        OWNER_TAG.to_owned(),
        naming::volume_tag(volume)?,
        THIN_TAG.to_owned(),
    ];
    if let Some(pvc) = pvc {
        tags.push(naming::pvc_tag(pvc)?);
    }
    Ok((lv_name_for(volume), tags))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::{FakeRunner, LvmOptions, Reply};

    const VG: &str = "strata-ssd";
    const VOL: &str = "pvc-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const MIB: u64 = 1 << 20;

    fn vg_json(owned: bool) -> String {
        format!(
            r#"{{"report":[{{"vg":[{{"vg_name":"{VG}","vg_uuid":"U","vg_size":"1073741824","vg_free":"536870912","vg_extent_size":"4194304","vg_extent_count":"256","vg_free_count":"128","pv_count":"1","lv_count":"1","vg_missing_pv_count":"0","vg_tags":"{}"}}]}}]}}"#,
            if owned { OWNER_TAG } else { "" }
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        name: &str,
        size: u64,
        tags: &str,
        segtype: &str,
        pool: &str,
        data: &str,
        meta: &str,
        msize: &str,
    ) -> String {
        format!(
            r#"{{"lv_name":"{name}","vg_name":"{VG}","lv_uuid":"L","lv_size":"{size}","lv_tags":"{tags}","lv_active":"active","lv_attr":"twi-aotz--","segtype":"{segtype}","pool_lv":"{pool}","data_percent":"{data}","metadata_percent":"{meta}","lv_metadata_size":"{msize}"}}"#
        )
    }

    fn report(rows: &[String]) -> String {
        format!(r#"{{"report":[{{"lv":[{}]}}]}}"#, rows.join(","))
    }

    fn pool_row(size: u64, data: &str, meta: &str) -> String {
        row(
            THIN_POOL_LV,
            size,
            &format!("{OWNER_TAG},{THIN_POOL_TAG}"),
            "thin-pool",
            "",
            data,
            meta,
            &(8 * MIB).to_string(),
        )
    }

    fn thin_row(volume: &str, size: u64) -> String {
        let tags = format!(
            "{OWNER_TAG},{},{THIN_TAG}",
            naming::volume_tag(volume).unwrap()
        );
        row(
            &lv_name_for(volume),
            size,
            &tags,
            "thin",
            THIN_POOL_LV,
            "10.00",
            "",
            "",
        )
    }

    fn lvm(fake: FakeRunner, activate: bool) -> Lvm<FakeRunner> {
        Lvm::new(
            fake,
            LvmOptions {
                activate,
                ..LvmOptions::default()
            },
        )
    }

    #[test]
    fn parses_the_pool_fill_and_the_virtual_bytes_promised_on_it() {
        let linear = row("pvc-linear", 64 * MIB, OWNER_TAG, "linear", "", "", "", "");
        let json = report(&[
            pool_row(256 * MIB, "25.00", "12.50"),
            thin_row("pvc-a", 200 * MIB),
            thin_row("pvc-b", 300 * MIB),
            linear,
        ]);
        let s = parse_thin_state("lvs", &json, THIN_POOL_LV)
            .unwrap()
            .unwrap();
        assert_eq!(s.pool.size_bytes, 256 * MIB);
        assert_eq!(s.pool.used_bytes(), 64 * MIB);
        assert_eq!(s.pool.metadata_size_bytes, 8 * MIB);
        assert_eq!(s.pool.metadata_used_bytes(), MIB);
        assert!(s.pool.owned);
        assert_eq!(s.virtual_bytes, 500 * MIB);
        assert_eq!(s.volumes.len(), 2);
        assert!(s.volumes.iter().all(is_thin));
        // no pool: None; a bad percentage: a parse error
        let none = report(&[row("pvc-linear", MIB, OWNER_TAG, "linear", "", "", "", "")]);
        assert!(
            parse_thin_state("lvs", &none, THIN_POOL_LV)
                .unwrap()
                .is_none()
        );
        let bad = report(&[pool_row(MIB, "lots", "1")]);
        assert!(matches!(
            parse_thin_state("lvs", &bad, THIN_POOL_LV),
            Err(LvmError::Parse { .. })
        ));
    }

    #[test]
    fn metadata_is_sized_from_the_data_within_limits() {
        assert_eq!(metadata_bytes_for(MIB), MIN_METADATA_BYTES);
        // 64 GiB of 64 KiB chunks: 1 Mi chunks × 128 bytes = 128 MiB
        assert_eq!(metadata_bytes_for(64 << 30), 128 * MIB);
        assert_eq!(metadata_bytes_for(u64::MAX), MAX_METADATA_BYTES);
    }

    #[tokio::test]
    async fn creates_the_pool_zeroing_with_passdown_and_tags() {
        let fake = FakeRunner::scripted()
            .expect(&["vgs"], &[VG], Reply::ok(vg_json(true)))
            .expect(
                &[
                    "lvcreate",
                    "--type",
                    "thin-pool",
                    "-n",
                    THIN_POOL_LV,
                    "-L",
                    "104857600b",
                ],
                &[
                    "--poolmetadatasize",
                    "4194304b",
                    "--chunksize",
                    "64k",
                    "--zero",
                    "y",
                    "--discards",
                    "passdown",
                    "--addtag",
                    OWNER_TAG,
                    THIN_POOL_TAG,
                    "-ay",
                    VG,
                ],
                Reply::ok(""),
            )
            .expect(
                &["lvs"],
                &[VG],
                Reply::ok(report(&[pool_row(100 * MIB, "0.00", "10.00")])),
            );
        let lvm = lvm(fake, true);
        // 99 MiB rounds up to 25 extents of 4 MiB
        let pool = lvm.create_thin_pool(VG, 99 * MIB).await.unwrap();
        assert_eq!(pool.size_bytes, 100 * MIB);
        lvm.runner().assert_done();
    }

    #[tokio::test]
    async fn pool_refusals_change_nothing() {
        // a VG that is not Strata's: nothing runs after the vgs
        let fake = FakeRunner::scripted().expect(&["vgs"], &[VG], Reply::ok(vg_json(false)));
        let first = lvm(fake, true);
        assert!(matches!(
            first.create_thin_pool(VG, MIB).await,
            Err(LvmError::NotOwned { .. })
        ));
        first.runner().assert_done();
        // an LV of the pool's name that is not a Strata pool
        let foreign = row(THIN_POOL_LV, MIB, "", "thin-pool", "", "0", "0", "4194304");
        let fake = FakeRunner::scripted()
            .expect(&["vgs"], &[VG], Reply::ok(vg_json(true)))
            .expect(
                &["lvcreate"],
                &[],
                Reply::fail(5, r#"Logical Volume "strata_thinpool" already exists in volume group "strata-ssd""#),
            )
            .expect(&["lvs"], &[VG], Reply::ok(report(&[foreign])));
        let lvm2 = super::super::Lvm::new(fake, LvmOptions::default());
        assert!(matches!(
            lvm2.create_thin_pool(VG, MIB).await,
            Err(LvmError::NotOwned { .. })
        ));
        // too big: InsufficientSpace
        let fake = FakeRunner::scripted()
            .expect(&["vgs"], &[VG], Reply::ok(vg_json(true)))
            .expect(
                &["lvcreate"],
                &[],
                Reply::fail(5, r#"Volume group "strata-ssd" has insufficient free space (128 extents): 1024 required."#),
            );
        let lvm3 = lvm(fake, true);
        assert!(matches!(
            lvm3.create_thin_pool(VG, 4 << 30).await,
            Err(LvmError::InsufficientSpace { .. })
        ));
        assert!(matches!(
            lvm3.create_thin_pool("-bad", MIB).await,
            Err(LvmError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn grows_the_pool_data_then_its_metadata() {
        let grown = 64u64 << 30;
        let fake = FakeRunner::scripted()
            .expect(
                &["lvs"],
                &[VG],
                Reply::ok(report(&[pool_row(grown / 2, "90.00", "5.00")])),
            )
            .expect(&["vgs"], &[VG], Reply::ok(vg_json(true)))
            .expect(
                &[
                    "lvextend",
                    "-L",
                    &format!("{grown}b"),
                    &format!("{VG}/{THIN_POOL_LV}"),
                ],
                &[],
                Reply::ok(""),
            )
            .expect(
                &["lvextend", "--poolmetadatasize", &format!("{}b", 128 * MIB)],
                &[],
                Reply::ok(""),
            )
            .expect(
                &["lvs"],
                &[VG],
                Reply::ok(report(&[pool_row(grown, "45.00", "2.50")])),
            );
        let grower = lvm(fake, true);
        let pool = grower.extend_thin_pool(VG, grown / 2).await.unwrap();
        assert_eq!(pool.size_bytes, grown);
        grower.runner().assert_done();
        // without a pool: NotFound, nothing changed
        let fake = FakeRunner::scripted().expect(&["lvs"], &[VG], Reply::ok(report(&[])));
        let lvm = super::super::Lvm::new(fake, LvmOptions::default());
        assert!(matches!(
            lvm.extend_thin_pool(VG, MIB).await,
            Err(LvmError::NotFound { .. })
        ));
        lvm.runner().assert_done();
    }

    #[tokio::test]
    async fn creates_a_tagged_thin_lv_idempotently() {
        let exists = format!(r#"Logical Volume "{VOL}" already exists in volume group "{VG}""#);
        let pool_only = report(&[pool_row(64 * MIB, "0.00", "1.00")]);
        let with_vol = report(&[pool_row(64 * MIB, "0.00", "1.00"), thin_row(VOL, 8 * MIB)]);
        let fake = FakeRunner::scripted()
            .expect(&["vgs"], &[VG], Reply::ok(vg_json(true)))
            .expect(&["lvs"], &[VG], Reply::ok(pool_only))
            .expect(
                &["lvcreate", "--type", "thin", "-n", VOL, "-V", "8388608b"],
                &[
                    "--thinpool",
                    THIN_POOL_LV,
                    OWNER_TAG,
                    THIN_TAG,
                    &naming::volume_tag(VOL).unwrap(),
                    "-ay",
                    VG,
                ],
                Reply::ok(""),
            )
            // repeats: already on the pool, so no admission (the closure would refuse)
            .expect(&["lvs"], &[VG], Reply::ok(with_vol.clone()))
            .expect(
                &["lvcreate", "--type", "thin"],
                &[],
                Reply::fail(5, exists.clone()),
            )
            .expect(&["lvs"], &[], Reply::ok(report(&[thin_row(VOL, 8 * MIB)])))
            .expect(&["lvs"], &[VG], Reply::ok(with_vol))
            .expect(&["lvcreate", "--type", "thin"], &[], Reply::fail(5, exists))
            .expect(&["lvs"], &[], Reply::ok(report(&[thin_row(VOL, 8 * MIB)])));
        let layer = lvm(fake, true);
        let lv = layer
            .create_thin_lv(VG, VOL, 5 * MIB, None, |_| 8 * MIB)
            .await
            .unwrap();
        assert!(is_thin(&lv));
        assert_eq!(lv.size_bytes, 8 * MIB);
        assert!(layer.take_fresh(VOL), "a new thin LV reads zeroes");
        let again = layer
            .create_thin_lv(VG, VOL, 8 * MIB, None, |_| 0)
            .await
            .unwrap();
        assert_eq!(again.size_bytes, 8 * MIB);
        let other = layer.create_thin_lv(VG, VOL, 16 * MIB, None, |_| 0).await;
        assert!(
            matches!(other, Err(LvmError::AlreadyExistsDifferent { .. })),
            "{other:?}"
        );
        layer.runner().assert_done();
        assert!(matches!(
            layer.create_thin_lv(VG, VOL, 0, None, |_| u64::MAX).await,
            Err(LvmError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn a_thin_lv_beyond_what_the_pool_may_promise_is_refused_and_nothing_is_made() {
        let fake = FakeRunner::scripted()
            .expect(&["vgs"], &[VG], Reply::ok(vg_json(true)))
            .expect(
                &["lvs"],
                &[VG],
                Reply::ok(report(&[pool_row(64 * MIB, "0.00", "1.00")])),
            )
            .expect(&["lvs"], &[VG], Reply::ok(report(&[])));
        let layer = lvm(fake, true);
        let seen = std::sync::Mutex::new(None);
        let err = layer
            .create_thin_lv(VG, VOL, 8 * MIB, None, |s| {
                *seen.lock().unwrap() = Some(s.pool.size_bytes);
                4 * MIB
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LvmError::InsufficientSpace { requested_bytes, .. } if *requested_bytes == 8 * MIB),
            "{err:?}"
        );
        assert_eq!(*seen.lock().unwrap(), Some(64 * MIB));
        // no pool in the VG: refused the same way
        let err = layer
            .create_thin_lv(VG, VOL, 8 * MIB, None, |_| u64::MAX)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no thin pool"), "{err}");
        layer.runner().assert_done();
        assert!(layer.runner().calls_of("lvcreate").is_empty());
    }
}
