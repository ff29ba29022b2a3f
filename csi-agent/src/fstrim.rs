//! Periodic TRIM of the filesystems on Strata volumes (flash classes only), instead of the
//! `discard` mount option, which issues a discard with every freed extent and slows writes.
//! Each pass matches the mount table (by `major:minor`) against the Strata LVs of the `nvme` and
//! `ssd` VGs and runs util-linux `fstrim` once per mounted LV, on one writable mount point (a
//! staging path and its bind mounts share one filesystem). Spinning disks are skipped. The
//! planning and the output parsing are pure and unit tested; the pass itself runs in the VM test.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use csi_api::names::DeviceClass;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::lvm::{Lvm, LvmRunner};
use crate::metrics::Metrics;
use crate::mount::mountinfo::{self, MountEntry};

/// Default time between passes: one week.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

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

/// Bytes from `fstrim -v` output (`/mnt: 1.2 GiB (1288490188 bytes) trimmed`).
pub fn parse_trimmed(stdout: &str) -> Option<u64> {
    let open = stdout.rfind('(')?;
    let rest = &stdout[open + 1..];
    rest.split_whitespace().next()?.parse().ok()
}

/// `major:minor` → volume of the Strata LVs in flash VGs whose device node exists.
async fn flash_devices<R: LvmRunner>(
    lvm: &Lvm<R>,
) -> Result<BTreeMap<String, String>, FstrimError> {
    let mut out = BTreeMap::new();
    for lv in lvm.strata_lvs(None).await? {
        let flash = matches!(
            DeviceClass::from_vg_name(&lv.vg),
            Some(DeviceClass::Nvme | DeviceClass::Ssd)
        );
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
            out.insert(key, volume);
        }
    }
    Ok(out)
}

/// Runs `fstrim -v` on one mount point; the bytes trimmed.
async fn fstrim(mount_point: &Path) -> Result<u64, String> {
    let out = tokio::process::Command::new("fstrim")
        .arg("-v")
        .arg(mount_point)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run fstrim: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(parse_trimmed(&String::from_utf8_lossy(&out.stdout)).unwrap_or(0))
}

/// One pass over the mounted flash volumes (mount table read from `proc_root`).
pub async fn pass<R: LvmRunner>(
    lvm: &Lvm<R>,
    proc_root: &Path,
    metrics: Option<&Metrics>,
) -> Result<PassReport, FstrimError> {
    let text = tokio::fs::read_to_string(proc_root.join("self/mountinfo"))
        .await
        .map_err(|e| FstrimError::Mounts(e.to_string()))?;
    let mounts = mountinfo::parse(&text).map_err(|e| FstrimError::Mounts(e.to_string()))?;
    let flash = flash_devices(lvm).await?;
    let mut report = PassReport::default();
    for t in plan(&mounts, &flash) {
        let result = fstrim(&t.mount_point).await;
        if let Some(m) = metrics {
            m.fstrim_run(result.is_ok());
        }
        match result {
            Ok(bytes) => {
                info!(volume = %t.volume, mount = %t.mount_point.display(), bytes, "fstrim");
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

/// Runs a pass every `every` until `shutdown` (the first after one interval).
pub async fn run<R: LvmRunner>(
    lvm: Lvm<R>,
    proc_root: PathBuf,
    every: Duration,
    metrics: Option<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = pass(&lvm, &proc_root, metrics.as_ref()).await {
            warn!(error = %e, "fstrim pass failed");
        }
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
    fn parses_fstrim_verbose_output() {
        assert_eq!(
            parse_trimmed("/mnt/x: 1.2 GiB (1288490188 bytes) trimmed\n"),
            Some(1_288_490_188)
        );
        assert_eq!(parse_trimmed("/mnt/x: 0 B (0 bytes) trimmed"), Some(0));
        assert_eq!(parse_trimmed("garbage"), None);
    }
}
