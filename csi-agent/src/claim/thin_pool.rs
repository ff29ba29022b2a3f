//! Thin pools of the class VGs (see docs/architecture.md, "Thin provisioning"): the per-class
//! settings (`--thin-pool CLASS=PERCENT`, `--thin-overprovision-ratio CLASS=RATIO`), the pure
//! rules (health from the fill, [`promisable`], the first pool's size, the autoextend step) and
//! [`tend`], the part of the capacity pass that makes a configured class's pool, grows a filling
//! one from the VG's allocatable bytes and fills `deviceClasses[].thinPool`.

use std::collections::BTreeMap;

use csi_api::crd::{DeviceClassStatus, ThinPoolHealth, ThinPoolStatus};
use csi_api::names::DeviceClass;

use crate::lvm::{Lvm, LvmRunner, ThinPool, ThinState};

/// Fill (data or metadata, %) at which the pool is grown and, if it stays there, `Filling`.
pub const WARN_PERCENT: f64 = 80.0;
/// Fill (%) at which the pool is `Full`: no new thin volume is admitted.
pub const FULL_PERCENT: f64 = 95.0;
/// Autoextend step: this share (%) of the pool's data size, at least one extent.
pub const AUTOEXTEND_STEP_PERCENT: u64 = 20;
/// Overprovision ratio of a class that has a pool but no `--thin-overprovision-ratio`.
pub const DEFAULT_RATIO: f64 = 1.0;
/// The smallest pool the agent makes (a smaller one would be mostly metadata).
pub const MIN_POOL_BYTES: u64 = 64 << 20;

/// Thin settings of one class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassThin {
    /// Share (%) of the class VG's size given to the pool when it is made; `None` when only a
    /// ratio was given (the class then serves thin volumes only if a pool already exists).
    pub pool_percent: Option<u8>,
    pub ratio: f64,
}

/// The agent's thin settings per class (empty: no class gets a pool).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThinSettings {
    pub classes: BTreeMap<DeviceClass, ClassThin>,
}

impl ThinSettings {
    /// From the flags' pairs. A ratio must be finite and at least 0.1; a percent 1–100.
    pub fn new(pools: &[(DeviceClass, u8)], ratios: &[(DeviceClass, f64)]) -> Result<Self, String> {
        let mut classes: BTreeMap<DeviceClass, ClassThin> = BTreeMap::new();
        for &(class, percent) in pools {
            if !(1..=100).contains(&percent) {
                return Err(format!(
                    "--thin-pool {class}={percent}: expected 1 to 100 (%)"
                ));
            }
            classes
                .entry(class)
                .or_insert(ClassThin {
                    pool_percent: None,
                    ratio: DEFAULT_RATIO,
                })
                .pool_percent = Some(percent);
        }
        for &(class, ratio) in ratios {
            if !ratio.is_finite() || ratio < 0.1 {
                return Err(format!(
                    "--thin-overprovision-ratio {class}={ratio}: expected a number of at least 0.1"
                ));
            }
            classes
                .entry(class)
                .or_insert(ClassThin {
                    pool_percent: None,
                    ratio,
                })
                .ratio = ratio;
        }
        Ok(ThinSettings { classes })
    }

    pub fn ratio(&self, class: DeviceClass) -> f64 {
        self.classes.get(&class).map_or(DEFAULT_RATIO, |c| c.ratio)
    }

    /// Whether the capacity pass must look for a pool in this class VG.
    pub fn concerns(&self, class: DeviceClass) -> bool {
        self.classes.contains_key(&class)
    }
}

/// The fuller of data and metadata, in %.
pub fn fill_percent(pool: &ThinPool) -> f64 {
    pool.data_percent.max(pool.metadata_percent)
}

/// Health from the fill: Full at [`FULL_PERCENT`], Filling at [`WARN_PERCENT`].
pub fn health(pool: &ThinPool) -> ThinPoolHealth {
    let fill = fill_percent(pool);
    if fill >= FULL_PERCENT {
        ThinPoolHealth::Full
    } else if fill >= WARN_PERCENT {
        ThinPoolHealth::Filling
    } else {
        ThinPoolHealth::Healthy
    }
}

/// What a new thin volume may still be promised: the overprovisioning room
/// `floor(size × ratio) − virtual` and the physical room before the refusal threshold
/// `floor(size × FULL_PERCENT %) − used`, whichever is smaller; 0 when the pool is Full.
pub fn promisable(
    size_bytes: u64,
    used_bytes: u64,
    ratio: f64,
    virtual_bytes: u64,
    health: ThinPoolHealth,
) -> u64 {
    if health == ThinPoolHealth::Full {
        return 0;
    }
    // f64 → u64 `as` saturates; u64 → f64 is exact below 8 PiB.
    let promised_limit = (size_bytes as f64 * ratio.max(0.0)).floor() as u64;
    let physical_limit = (size_bytes as f64 * FULL_PERCENT / 100.0).floor() as u64;
    promised_limit
        .saturating_sub(virtual_bytes)
        .min(physical_limit.saturating_sub(used_bytes))
}

/// What a snapshot, restore or clone may still add in virtual bytes on the pool:
/// `floor(S × R) − V` (floored at 0), and 0 when the pool is Full. Unlike [`promisable`] the
/// physical term is not applied: a thin snapshot takes no data chunks when it is made.
pub fn virtual_room(state: &ThinState, ratio: f64) -> u64 {
    if health(&state.pool) == ThinPoolHealth::Full {
        return 0;
    }
    // f64 → u64 `as` saturates; u64 → f64 is exact below 8 PiB.
    let limit = (state.pool.size_bytes as f64 * ratio.max(0.0)).floor() as u64;
    limit.saturating_sub(state.virtual_bytes)
}

/// The `thinPool` entry of a class from the pool's state and the class's ratio.
pub fn status(state: &ThinState, ratio: f64) -> ThinPoolStatus {
    let pool = &state.pool;
    let health = health(pool);
    ThinPoolStatus {
        lv_name: pool.name.clone(),
        size_bytes: pool.size_bytes,
        used_bytes: pool.used_bytes(),
        metadata_size_bytes: pool.metadata_size_bytes,
        metadata_used_bytes: pool.metadata_used_bytes(),
        overprovision_ratio: ratio,
        virtual_bytes: state.virtual_bytes,
        promisable_bytes: promisable(
            pool.size_bytes,
            pool.used_bytes(),
            ratio,
            state.virtual_bytes,
            health,
        ),
        health,
    }
}

/// Data size of a new pool: `percent` of the VG's size, at most the class's allocatable bytes
/// less room for the metadata and lvm2's spare metadata LV; `None` below [`MIN_POOL_BYTES`].
pub fn initial_pool_bytes(vg_size: u64, allocatable: u64, percent: u8) -> Option<u64> {
    let wanted = vg_size / 100 * u64::from(percent.min(100));
    // data + 2 × metadata (the pool's and the spare) must fit; 8 MiB covers extent rounding.
    let fits = |d: u64| {
        d.saturating_add(2 * crate::lvm::thin::metadata_bytes_for(d))
            .saturating_add(8 << 20)
            <= allocatable
    };
    let mut data = wanted;
    while data >= MIN_POOL_BYTES && !fits(data) {
        data -= data / 16 + 1;
    }
    (data >= MIN_POOL_BYTES).then_some(data)
}

/// Bytes to grow a pool at or over [`WARN_PERCENT`] by: [`AUTOEXTEND_STEP_PERCENT`] of its data
/// size, capped by the class's allocatable bytes (less room for the metadata's growth); `None`
/// when it is below the threshold or nothing can be taken.
pub fn autoextend_bytes(pool: &ThinPool, allocatable: u64, extent: u64) -> Option<u64> {
    if fill_percent(pool) < WARN_PERCENT {
        return None;
    }
    let step = (pool.size_bytes / 100 * AUTOEXTEND_STEP_PERCENT).max(extent.max(1));
    let room = allocatable.saturating_sub(2 * extent.max(1));
    let more = step.min(room);
    (more >= extent.max(1)).then_some(more)
}

/// The problem of every thin volume on `pool` when it is Full (writes to blocks the volume has
/// not written before fail or wait), else `None`.
pub fn full_message(pool: &ThinPool) -> Option<String> {
    (health(pool) == ThinPoolHealth::Full).then(|| {
        format!(
            "thin pool {}/{} is full (data {:.1} %, metadata {:.1} %): writes to new blocks fail",
            pool.vg, pool.name, pool.data_percent, pool.metadata_percent
        )
    })
}

/// [`full_message`] of the pool of `vg`, read now; a pool that cannot be read is a problem too.
pub async fn pool_problem<R: LvmRunner>(lvm: &Lvm<R>, vg: &str) -> Option<String> {
    match lvm.thin_state(vg).await {
        Ok(Some(s)) => full_message(&s.pool),
        Ok(None) => Some(format!("the thin pool of {vg} is missing")),
        Err(e) => Some(format!("the thin pool of {vg} cannot be read: {e}")),
    }
}

/// What [`tend`] did or found, for Events and logs.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolNote {
    Created {
        vg: String,
        bytes: u64,
    },
    Extended {
        vg: String,
        bytes: u64,
    },
    /// Still at or over the warning threshold after any growth (Filling or Full).
    Filling {
        vg: String,
        health: ThinPoolHealth,
        fill_percent: f64,
    },
    Failed {
        vg: String,
        what: String,
    },
}

/// Makes the pools of configured classes that lack one (when `change`), grows pools at the
/// threshold (when `change`), and sets `thinPool` of every class with a pool (configured or
/// found). A class whose VG changed has its free and allocatable bytes lowered by what the pool
/// took. Classes neither configured nor carrying a pool in `known` are not read (one `lvs` per
/// class that is).
pub async fn tend<R: LvmRunner>(
    lvm: &Lvm<R>,
    settings: &ThinSettings,
    classes: &mut [DeviceClassStatus],
    known: &[DeviceClassStatus],
    change: bool,
) -> Vec<PoolNote> {
    let mut notes = Vec::new();
    for class in classes.iter_mut() {
        let had_pool = known
            .iter()
            .any(|k| k.vg_name == class.vg_name && k.thin_pool.is_some());
        if !settings.concerns(class.name) && !had_pool {
            continue;
        }
        let vg = class.vg_name.clone();
        let mut state = match lvm.thin_state(&vg).await {
            Ok(s) => s,
            Err(e) => {
                notes.push(PoolNote::Failed {
                    vg,
                    what: format!("cannot read the thin pool: {e}"),
                });
                continue;
            }
        };
        let configured = settings.classes.get(&class.name).copied();
        if change {
            let extent = lvm.extent_size(&vg).await.unwrap_or(4 << 20);
            let grow = match (&state, configured) {
                (
                    None,
                    Some(ClassThin {
                        pool_percent: Some(percent),
                        ..
                    }),
                ) if class.missing_pv_count == 0 => {
                    initial_pool_bytes(class.total_bytes, class.allocatable_bytes, percent)
                        .map(|b| (true, b))
                }
                (Some(s), Some(_)) if s.pool.owned && class.missing_pv_count == 0 => {
                    autoextend_bytes(&s.pool, class.allocatable_bytes, extent).map(|b| (false, b))
                }
                _ => None,
            };
            if let Some((create, bytes)) = grow {
                let done = if create {
                    lvm.create_thin_pool(&vg, bytes).await.map(|_| ())
                } else {
                    lvm.extend_thin_pool(&vg, bytes).await.map(|_| ())
                };
                match done {
                    Ok(()) => {
                        notes.push(if create {
                            PoolNote::Created {
                                vg: vg.clone(),
                                bytes,
                            }
                        } else {
                            PoolNote::Extended {
                                vg: vg.clone(),
                                bytes,
                            }
                        });
                        if let Ok(Some(info)) = lvm.vg(&vg).await {
                            let reserve =
                                class.free_bytes - class.allocatable_bytes.min(class.free_bytes);
                            class.free_bytes = info.free_bytes;
                            class.allocatable_bytes = info.free_bytes.saturating_sub(reserve);
                            class.lv_count = u32::try_from(info.lv_count).unwrap_or(u32::MAX);
                        }
                        match lvm.thin_state(&vg).await {
                            Ok(s) => state = s,
                            Err(e) => notes.push(PoolNote::Failed {
                                vg: vg.clone(),
                                what: format!("cannot read the thin pool: {e}"),
                            }),
                        }
                    }
                    Err(e) => notes.push(PoolNote::Failed {
                        vg: vg.clone(),
                        what: format!(
                            "cannot {} the thin pool by {bytes} bytes: {e}",
                            if create { "create" } else { "grow" }
                        ),
                    }),
                }
            }
        }
        class.thin_pool = state
            .as_ref()
            .map(|s| status(s, settings.ratio(class.name)));
        if let Some(s) = &state {
            let h = health(&s.pool);
            if h != ThinPoolHealth::Healthy {
                notes.push(PoolNote::Filling {
                    vg: vg.clone(),
                    health: h,
                    fill_percent: fill_percent(&s.pool),
                });
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::Activation;

    const GIB: u64 = 1 << 30;

    fn pool(size: u64, data: f64, meta: f64) -> ThinPool {
        ThinPool {
            vg: "strata-ssd".into(),
            name: crate::lvm::THIN_POOL_LV.into(),
            size_bytes: size,
            data_percent: data,
            metadata_size_bytes: 64 << 20,
            metadata_percent: meta,
            owned: true,
            active: Activation::Active,
        }
    }

    #[test]
    fn promisable_is_the_smaller_of_the_ratio_room_and_the_physical_room() {
        use ThinPoolHealth::*;
        // 10 GiB pool, ratio 3: 30 GiB may be promised; 12 promised: 18 left by the ratio,
        // physical room 9.5 GiB − 1 GiB used = 8.5 GiB.
        let p = promisable(10 * GIB, GIB, 3.0, 12 * GIB, Healthy);
        assert_eq!(p, (10 * GIB) / 20 * 19 - GIB);
        // ratio room smaller: 29 GiB promised of 30
        assert_eq!(promisable(10 * GIB, GIB, 3.0, 29 * GIB, Healthy), GIB);
        // over-promised (the ratio was lowered): 0, never negative
        assert_eq!(promisable(10 * GIB, GIB, 1.0, 40 * GIB, Healthy), 0);
        // used beyond the refusal threshold but reported Filling: physical room 0
        assert_eq!(promisable(10 * GIB, 10 * GIB, 5.0, 0, Filling), 0);
        // Full: 0 whatever the ratio says
        assert_eq!(promisable(10 * GIB, 0, 10.0, 0, Full), 0);
        // ratio 1, empty pool: the physical room (95 %) bounds it
        assert_eq!(promisable(100 * GIB, 0, 1.0, 0, Healthy), 95 * GIB);
    }

    #[test]
    fn virtual_room_is_the_ratio_room_only_and_zero_when_full() {
        let state = |data: f64, virtual_bytes: u64| ThinState {
            pool: pool(10 * GIB, data, 5.0),
            virtual_bytes,
            volumes: Vec::new(),
        };
        // 10 GiB at ratio 2: 20 GiB may be promised, 15 are: 5 left, whatever the fill (90 %)
        assert_eq!(virtual_room(&state(90.0, 15 * GIB), 2.0), 5 * GIB);
        // ratio 1.5 floors: 15 GiB exactly, 1 byte over-promised: 0, never negative
        assert_eq!(virtual_room(&state(0.0, 15 * GIB), 1.5), 0);
        assert_eq!(virtual_room(&state(0.0, 15 * GIB + 1), 1.5), 0);
        assert_eq!(virtual_room(&state(0.0, 0), 0.25), 10 * GIB / 4);
        // Full (data or metadata at 95 %): 0
        assert_eq!(virtual_room(&state(95.0, 0), 10.0), 0);
        let meta_full = ThinState {
            pool: pool(10 * GIB, 1.0, 99.0),
            virtual_bytes: 0,
            volumes: Vec::new(),
        };
        assert_eq!(virtual_room(&meta_full, 10.0), 0);
    }

    #[test]
    fn health_follows_the_fuller_of_data_and_metadata() {
        assert_eq!(health(&pool(GIB, 10.0, 10.0)), ThinPoolHealth::Healthy);
        assert_eq!(health(&pool(GIB, 80.0, 10.0)), ThinPoolHealth::Filling);
        assert_eq!(health(&pool(GIB, 10.0, 96.0)), ThinPoolHealth::Full);
        assert_eq!(health(&pool(GIB, 100.0, 0.0)), ThinPoolHealth::Full);
    }

    #[test]
    fn only_a_full_pool_makes_its_volumes_abnormal() {
        assert_eq!(full_message(&pool(GIB, 94.0, 10.0)), None);
        let m = full_message(&pool(GIB, 100.0, 10.0)).unwrap();
        assert!(m.contains("is full") && m.contains("100.0 %"), "{m}");
        assert!(full_message(&pool(GIB, 1.0, 97.0)).is_some());
    }

    #[test]
    fn status_counts_promises_and_is_zero_when_full() {
        let state = ThinState {
            pool: pool(10 * GIB, 50.0, 5.0),
            virtual_bytes: 15 * GIB,
            volumes: Vec::new(),
        };
        let s = status(&state, 2.0);
        assert_eq!(s.used_bytes, 5 * GIB);
        assert_eq!(s.virtual_bytes, 15 * GIB);
        // the ratio allows 20 − 15 = 5 GiB, the pool physically 9.5 − 5 = 4.5 GiB
        assert_eq!(s.promisable_bytes, 10 * GIB / 20 * 19 - 5 * GIB);
        assert_eq!(s.health, ThinPoolHealth::Healthy);
        let full = ThinState {
            pool: pool(10 * GIB, 99.0, 5.0),
            ..state
        };
        assert_eq!(status(&full, 2.0).promisable_bytes, 0);
        assert_eq!(status(&full, 2.0).health, ThinPoolHealth::Full);
    }

    #[test]
    fn the_first_pool_takes_its_share_within_what_is_allocatable() {
        // 50 % of 100 GiB with plenty free
        assert_eq!(initial_pool_bytes(100 * GIB, 100 * GIB, 50), Some(50 * GIB));
        // only 10 GiB allocatable: less than 10 GiB (metadata and spare fit too)
        let d = initial_pool_bytes(100 * GIB, 10 * GIB, 50).unwrap();
        assert!(d < 10 * GIB && d > 9 * GIB, "{d}");
        // nothing worth a pool
        assert_eq!(initial_pool_bytes(100 * GIB, 32 << 20, 50), None);
    }

    #[test]
    fn autoextend_steps_at_the_threshold_within_allocatable() {
        let ext = 4 << 20;
        assert_eq!(
            autoextend_bytes(&pool(10 * GIB, 79.0, 1.0), 100 * GIB, ext),
            None
        );
        assert_eq!(
            autoextend_bytes(&pool(10 * GIB, 85.0, 1.0), 100 * GIB, ext),
            Some(10 * GIB / 100 * 20)
        );
        // metadata at the threshold grows the pool too (its metadata follows the data)
        assert!(autoextend_bytes(&pool(10 * GIB, 1.0, 90.0), 100 * GIB, ext).is_some());
        // little allocatable: what is left less room for metadata; none: None
        assert_eq!(
            autoextend_bytes(&pool(10 * GIB, 85.0, 1.0), 20 << 20, ext),
            Some(12 << 20)
        );
        assert_eq!(autoextend_bytes(&pool(10 * GIB, 85.0, 1.0), 0, ext), None);
    }

    #[test]
    fn settings_refuse_nonsense_and_default_the_ratio() {
        let s = ThinSettings::new(&[(DeviceClass::Ssd, 50)], &[(DeviceClass::Nvme, 4.0)]).unwrap();
        assert_eq!(s.ratio(DeviceClass::Ssd), DEFAULT_RATIO);
        assert_eq!(s.ratio(DeviceClass::Nvme), 4.0);
        assert!(s.concerns(DeviceClass::Nvme) && !s.concerns(DeviceClass::Hdd));
        assert_eq!(s.classes[&DeviceClass::Nvme].pool_percent, None);
        assert!(ThinSettings::new(&[(DeviceClass::Ssd, 0)], &[]).is_err());
        assert!(ThinSettings::new(&[(DeviceClass::Ssd, 101)], &[]).is_err());
        assert!(ThinSettings::new(&[], &[(DeviceClass::Ssd, f64::NAN)]).is_err());
        assert!(ThinSettings::new(&[], &[(DeviceClass::Ssd, 0.0)]).is_err());
    }
}
