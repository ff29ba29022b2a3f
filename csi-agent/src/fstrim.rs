//! Periodic TRIM of the filesystems on Strata volumes (flash classes only), instead of the
//! `discard` mount option, which issues a discard with every freed extent and slows writes.
//! Each pass matches the mount table (by `major:minor`) against the Strata LVs of the `nvme` and
//! `ssd` VGs and runs util-linux `fstrim` once per mounted LV, on one writable mount point (a
//! staging path and its bind mounts share one filesystem). Spinning disks are skipped.
//! Schedule: the first pass runs soon after start (a jittered delay), then a pass runs whenever a
//! volume is due. The last pass per volume is kept with its LV (tag `strata.io/trimmed=<unix
//! seconds>`), so a restart never postpones a trim: a volume trimmed six days ago is trimmed a
//! day after, not an interval after the restart. The planning, the due dates and the output
//! parsing are pure and unit tested; the pass itself runs in the VM test. `fstrim` runs through
//! the LVM layer's runner.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use csi_api::names::DeviceClass;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::lvm::{Invocation, Lvm, LvmRunner, Tool};
use crate::metrics::Metrics;
use crate::mount::mountinfo::{self, MountEntry};

/// Default time between passes: one week.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Prefix of the tag holding when a volume was last trimmed (unix seconds).
pub const TRIMMED_TAG_PREFIX: &str = "strata.io/trimmed=";
/// The first pass runs between this and twice this after start (never all nodes at once).
pub const FIRST_PASS: Duration = Duration::from_secs(60);
/// Never wake up more often than this to look for due volumes.
const MIN_WAKE: Duration = Duration::from_secs(60);

/// Why a pass could not run.
#[derive(Debug, thiserror::Error)]
pub enum FstrimError {
    #[error(transparent)]
    Lvm(#[from] crate::lvm::LvmError),
    #[error("cannot read the mount table: {0}")]
    Mounts(String),
}

/// One mount point to trim: the volume and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub volume: String,
    pub mount_point: PathBuf,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub trimmed: Vec<(String, u64)>,
    pub failed: Vec<(String, String)>,
}

/// The mount points to trim: for each flash volume (`major:minor` → volume), its first writable
/// mount. Pure.
pub fn plan(mounts: &[MountEntry], flash: &BTreeMap<String, String>) -> Vec<Target> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in mounts.iter().filter(|m| !m.read_only) {
        if let Some(volume) = flash.get(&m.major_minor)
            && seen.insert(m.major_minor.clone())
        {
            out.push(Target {
                volume: volume.clone(),
                mount_point: m.mount_point.clone(),
            });
        }
    }
    out
}

/// When `lv` was last trimmed (unix seconds), from its tag.
pub fn last_trimmed(lv: &crate::lvm::Lv) -> Option<u64> {
    lv.tags
        .iter()
        .find_map(|t| t.strip_prefix(TRIMMED_TAG_PREFIX))
        .and_then(|v| v.parse().ok())
}

/// Whether a volume last trimmed at `last` is due at `now` (unix seconds). Pure.
pub fn is_due(last: Option<u64>, now: u64, every: Duration) -> bool {
    last.is_none_or(|l| now.saturating_sub(l) >= every.as_secs())
}

/// How long to sleep until the next volume is due, given the last trims of the flash volumes.
/// Pure; at least [`MIN_WAKE`], at most `every`.
pub fn until_next(lasts: &[Option<u64>], now: u64, every: Duration) -> Duration {
    let next = lasts
        .iter()
        .map(|l| match l {
            None => 0,
            Some(l) => (l + every.as_secs()).saturating_sub(now),
        })
        .min()
        .unwrap_or(every.as_secs());
    Duration::from_secs(next).clamp(MIN_WAKE.min(every), every)
}

/// The first pass's delay: [`FIRST_PASS`] plus up to as much again, from the clock's nanoseconds.
pub fn first_delay(nanos: u32) -> Duration {
    let span = FIRST_PASS.as_millis() as u64;
    FIRST_PASS + Duration::from_millis(u64::from(nanos) % span.max(1))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Bytes from `fstrim -v` output (`/mnt: 1.2 GiB (1288490188 bytes) trimmed`).
pub fn parse_trimmed(stdout: &str) -> Option<u64> {
    let open = stdout.rfind('(')?;
    let rest = &stdout[open + 1..];
    rest.split_whitespace().next()?.parse().ok()
}

/// `major:minor` → volume of the Strata LVs in flash VGs whose device node exists and that are
/// due (`every`; `None`: all), and the LVs by volume.
async fn flash_devices<R: LvmRunner>(
    lvm: &Lvm<R>,
    every: Option<Duration>,
) -> Result<(BTreeMap<String, String>, BTreeMap<String, crate::lvm::Lv>), FstrimError> {
    let mut out = BTreeMap::new();
    let mut lvs = BTreeMap::new();
    let now = now_secs();
    for lv in lvm.strata_lvs(None).await? {
        if every.is_some_and(|e| !is_due(last_trimmed(&lv), now, e)) {
            continue;
        }
        let flash = DeviceClass::from_vg_name(&lv.vg).is_some_and(DeviceClass::is_flash);
        let (true, Some(volume)) = (flash, lv.volume.clone()) else {
            continue;
        };
        if let Ok(meta) = tokio::fs::metadata(lv.device_path()).await {
            let rdev = meta.rdev();
            let key = format!(
                "{}:{}",
                nix::sys::stat::major(rdev),
                nix::sys::stat::minor(rdev)
            );
            out.insert(key, volume.clone());
            lvs.insert(volume, lv);
        }
    }
    Ok((out, lvs))
}

/// Runs `fstrim -v` on one mount point through the runner; the bytes trimmed.
async fn fstrim<R: LvmRunner>(runner: &R, mount_point: &Path) -> Result<u64, String> {
    let Some(path) = mount_point.to_str() else {
        return Err(format!("{} is not a UTF-8 path", mount_point.display()));
    };
    let inv = Invocation::new(Tool::Fstrim, ["-v", path]);
    let out = runner
        .run(&inv, &CancellationToken::new())
        .await
        .map_err(|e| format!("cannot run fstrim: {e}"))?;
    if !out.success() {
        return Err(out.stderr);
    }
    Ok(parse_trimmed(&out.stdout).unwrap_or(0))
}

/// One pass over the mounted flash volumes (mount table read from `proc_root`): all of them.
pub async fn pass<R: LvmRunner>(
    lvm: &Lvm<R>,
    proc_root: &Path,
    metrics: Option<&Metrics>,
) -> Result<PassReport, FstrimError> {
    pass_due(lvm, proc_root, None, metrics).await
}

/// One pass over the mounted flash volumes due after `every` (`None`: all); each trimmed one
/// gets its last-pass tag.
pub async fn pass_due<R: LvmRunner>(
    lvm: &Lvm<R>,
    proc_root: &Path,
    every: Option<Duration>,
    metrics: Option<&Metrics>,
) -> Result<PassReport, FstrimError> {
    let text = tokio::fs::read_to_string(proc_root.join("self/mountinfo"))
        .await
        .map_err(|e| FstrimError::Mounts(e.to_string()))?;
    let mounts = mountinfo::parse(&text).map_err(|e| FstrimError::Mounts(e.to_string()))?;
    let (flash, lvs) = flash_devices(lvm, every).await?;
    let mut report = PassReport::default();
    for t in plan(&mounts, &flash) {
        let result = fstrim(lvm.runner(), &t.mount_point).await;
        if let Some(m) = metrics {
            m.fstrim_run(result.is_ok());
        }
        match result {
            Ok(bytes) => {
                info!(volume = %t.volume, mount = %t.mount_point.display(), bytes, "fstrim");
                if let Some(lv) = lvs.get(&t.volume)
                    && let Err(e) = lvm
                        .replace_tag(lv, TRIMMED_TAG_PREFIX, &now_secs().to_string())
                        .await
                {
                    warn!(volume = %t.volume, error = %e, "cannot record the fstrim pass");
                }
                report.trimmed.push((t.volume, bytes));
            }
            Err(e) => {
                warn!(volume = %t.volume, mount = %t.mount_point.display(), error = %e, "fstrim failed");
                report.failed.push((t.volume, e));
            }
        }
    }
    if let Some(m) = metrics {
        let total: u64 = report.trimmed.iter().map(|(_, b)| b).sum();
        m.fstrim_last_bytes
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }
    Ok(report)
}

/// Trims each mounted flash volume every `every` until `shutdown`: the first pass soon after
/// start ([`first_delay`]), then whenever a volume is due (see the module head).
pub async fn run<R: LvmRunner>(
    lvm: Lvm<R>,
    proc_root: PathBuf,
    every: Duration,
    metrics: Option<Metrics>,
    shutdown: CancellationToken,
) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut wait = first_delay(nanos);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if let Err(e) = pass_due(&lvm, &proc_root, Some(every), metrics.as_ref()).await {
            warn!(error = %e, "fstrim pass failed");
        }
        wait = match lvm.strata_lvs(None).await {
            Ok(lvs) => {
                let lasts: Vec<Option<u64>> = lvs
                    .iter()
                    .filter(|lv| {
                        DeviceClass::from_vg_name(&lv.vg).is_some_and(DeviceClass::is_flash)
                    })
                    // A volume never trimmed because it is not mounted must not spin the loop.
                    .map(|lv| Some(last_trimmed(lv).unwrap_or_else(now_secs)))
                    .collect();
                until_next(&lasts, now_secs(), every)
            }
            Err(_) => MIN_WAKE.min(every),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 253:0 / / rw,relatime - ext4 /dev/vda1 rw
30 22 253:3 / /var/lib/kubelet/plugins/kubernetes.io/csi/local.strata.io/abc/globalmount rw,relatime - xfs /dev/mapper/strata--nvme-pvc--1 rw
31 22 253:3 / /var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pvc-1/mount rw,relatime - xfs /dev/mapper/strata--nvme-pvc--1 rw
32 22 253:4 / /ro/first ro,relatime - xfs /dev/mapper/strata--ssd-pvc--2 ro
33 22 253:4 / /rw/second rw,relatime - xfs /dev/mapper/strata--ssd-pvc--2 rw
34 22 253:5 / /hdd rw,relatime - xfs /dev/mapper/strata--hdd-pvc--3 rw
";

    #[test]
    fn one_writable_mount_per_flash_volume() {
        let mounts = mountinfo::parse(MOUNTINFO).unwrap();
        // pvc-3 is on hdd: not in the flash map, so never trimmed.
        let flash = BTreeMap::from([
            ("253:3".to_owned(), "pvc-1".to_owned()),
            ("253:4".to_owned(), "pvc-2".to_owned()),
        ]);
        let targets = plan(&mounts, &flash);
        assert_eq!(
            targets,
            vec![
                Target {
                    volume: "pvc-1".into(),
                    mount_point:
                        "/var/lib/kubelet/plugins/kubernetes.io/csi/local.strata.io/abc/globalmount"
                            .into(),
                },
                Target {
                    volume: "pvc-2".into(),
                    mount_point: "/rw/second".into(),
                },
            ]
        );
    }

    #[test]
    fn the_schedule_survives_restarts() {
        let week = DEFAULT_INTERVAL;
        let day = 24 * 3600;
        let now = 100 * day;
        // Never trimmed, or trimmed a week ago: due now.
        assert!(is_due(None, now, week));
        assert!(is_due(Some(now - 7 * day), now, week));
        // Trimmed six days ago (before a restart): due in one day, not in a week.
        assert!(!is_due(Some(now - 6 * day), now, week));
        let wait = until_next(&[Some(now - 6 * day), Some(now - day)], now, week);
        assert_eq!(wait, Duration::from_secs(day));
        // Nothing to trim: wake up after an interval; something overdue: soon, not in a loop.
        assert_eq!(until_next(&[], now, week), week);
        assert_eq!(until_next(&[Some(0)], now, week), MIN_WAKE);
        // The first pass is soon after start, spread over a minute.
        assert_eq!(first_delay(0), FIRST_PASS);
        assert!(first_delay(u32::MAX) < FIRST_PASS * 2);
    }

    #[tokio::test]
    async fn fstrim_runs_through_the_runner_and_keeps_stderr() {
        use crate::lvm::{FakeRunner, Reply};
        let refused = "fstrim: /mnt/y: the discard operation is not supported";
        let fake = FakeRunner::scripted()
            .expect_tool(
                Tool::Fstrim,
                &["-v", "/mnt/x"],
                &[],
                Reply::ok("/mnt/x: 4 KiB (4096 bytes) trimmed\n"),
            )
            .expect_tool(
                Tool::Fstrim,
                &["-v", "/mnt/y"],
                &[],
                Reply::fail(1, refused),
            );
        assert_eq!(fstrim(&fake, Path::new("/mnt/x")).await, Ok(4096));
        assert_eq!(
            fstrim(&fake, Path::new("/mnt/y")).await,
            Err(refused.to_owned())
        );
        fake.assert_done();
    }

    #[test]
    fn parses_fstrim_verbose_output() {
        assert_eq!(
            parse_trimmed("/mnt/x: 1.2 GiB (1288490188 bytes) trimmed\n"),
            Some(1_288_490_188)
        );
        assert_eq!(parse_trimmed("/mnt/x: 0 B (0 bytes) trimmed"), Some(0));
        assert_eq!(parse_trimmed("garbage"), None);
    }
}
