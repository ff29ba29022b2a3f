//! Filesystems on volumes: a small [`Filesystem`] trait (xfs, ext4) chosen by name, and
//! [`FsTools`], which runs the mkfs and grow programs and the signature probe
//! ([`crate::lvm::blkid`], which decides whether a device may be formatted: only when it holds no
//! signature of any kind) through the one runner seam, [`LvmRunner`] (argument vectors,
//! `LC_ALL=C`, stderr and exit code kept).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::lvm::blkid::{self, ProbeError, Probed};
use crate::lvm::{Invocation, LvmError, LvmRunner, Output, Tool};

/// A filesystem Strata can create and grow.
pub trait Filesystem: Send + Sync + fmt::Debug {
    /// The name in `fsType` and in blkid's `TYPE`.
    fn name(&self) -> &'static str;
    /// The smallest device mkfs accepts.
    fn min_bytes(&self) -> u64;
    /// Creates the filesystem on an empty device.
    fn mkfs(&self, device: &str) -> Invocation;
    /// Grows the mounted filesystem to the size of its device.
    fn grow(&self, device: &str, mount_point: &str) -> Invocation;
    /// The mount option a block-level copy of this filesystem needs to be mounted beside its
    /// original (a restore or clone keeps its source's UUID), if any.
    fn copy_mount_option(&self) -> Option<&'static str> {
        None
    }
}

#[derive(Debug)]
struct Xfs;

impl Filesystem for Xfs {
    fn name(&self) -> &'static str {
        "xfs"
    }
    fn min_bytes(&self) -> u64 {
        csi_api::request::XFS_MIN_BYTES
    }
    fn mkfs(&self, device: &str) -> Invocation {
        Invocation::new(Tool::MkfsXfs, ["-q", device])
    }
    fn grow(&self, _device: &str, mount_point: &str) -> Invocation {
        // xfs grows through the mounted path.
        Invocation::new(Tool::XfsGrowfs, ["-d", mount_point])
    }
    fn copy_mount_option(&self) -> Option<&'static str> {
        // xfs refuses a second mount of one UUID.
        Some("nouuid")
    }
}

#[derive(Debug)]
struct Ext4;

impl Filesystem for Ext4 {
    fn name(&self) -> &'static str {
        "ext4"
    }
    fn min_bytes(&self) -> u64 {
        csi_api::request::EXT4_MIN_BYTES
    }
    fn mkfs(&self, device: &str) -> Invocation {
        // -F: the device is a whole LV, not a partition; we probed it empty just before.
        Invocation::new(Tool::MkfsExt4, ["-q", "-F", device])
    }
    fn grow(&self, device: &str, _mount_point: &str) -> Invocation {
        // resize2fs grows a mounted ext4 online through its device.
        Invocation::new(Tool::Resize2fs, [device])
    }
}

static XFS: Xfs = Xfs;
static EXT4: Ext4 = Ext4;

/// The filesystems Strata supports, default first.
pub fn supported() -> [&'static dyn Filesystem; 2] {
    [&XFS, &EXT4]
}

/// An `fsType` Strata does not support.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported filesystem {0:?}: expected xfs or ext4")]
pub struct UnknownFilesystem(pub String);

/// The filesystem called `name`; the default (xfs) when `name` is empty.
pub fn by_name(name: &str) -> Result<&'static dyn Filesystem, UnknownFilesystem> {
    if name.is_empty() {
        return Ok(&XFS);
    }
    supported()
        .into_iter()
        .find(|fs| fs.name() == name)
        .ok_or_else(|| UnknownFilesystem(name.to_owned()))
}

/// Why a program failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The program could not be started, or was stopped.
    #[error(transparent)]
    Run(#[from] LvmError),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{cmd}` failed (exit code {code:?}): {stderr}")]
    Failed {
        cmd: String,
        code: Option<i32>,
        stderr: String,
    },
    /// A path the programs cannot be given as an argument.
    #[error("{0:?} is not a UTF-8 path")]
    NotUtf8(PathBuf),
}

impl From<ProbeError> for FsError {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Open { path, source } => FsError::Open { path, source },
            ProbeError::Run(e) => FsError::Run(e),
            ProbeError::Failed { path, code, stderr } => FsError::Failed {
                cmd: format!("blkid -p -o export {}", path.display()),
                code,
                stderr,
            },
        }
    }
}

fn arg(path: &Path) -> Result<&str, FsError> {
    path.to_str()
        .ok_or_else(|| FsError::NotUtf8(path.to_path_buf()))
}

/// The filesystem programs the node service runs.
#[derive(Clone)]
pub struct FsTools {
    runner: Arc<dyn LvmRunner>,
}

impl FsTools {
    pub fn new(runner: Arc<dyn LvmRunner>) -> Self {
        FsTools { runner }
    }

    /// Runs `inv` (never cancelled: a stopped mkfs would leave a half-made filesystem).
    async fn run_ok(&self, inv: Invocation) -> Result<Output, FsError> {
        let out = self.runner.run(&inv, &CancellationToken::new()).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(FsError::Failed {
                cmd: inv.display(),
                code: out.code,
                stderr: out.stderr,
            })
        }
    }

    /// Probes `device` for any signature (`blkid -p`, see [`blkid::probe`]).
    pub async fn probe(&self, device: &Path) -> Result<Probed, FsError> {
        Ok(blkid::probe(self.runner.as_ref(), device, &CancellationToken::new()).await?)
    }

    /// Creates `fs` on `device` (the caller has checked it is empty).
    pub async fn format(&self, fs: &dyn Filesystem, device: &Path) -> Result<(), FsError> {
        self.run_ok(fs.mkfs(arg(device)?)).await.map(drop)
    }

    /// Grows `fs`, mounted at `mount_point`, to the size of `device`.
    pub async fn grow(
        &self,
        fs: &dyn Filesystem,
        device: &Path,
        mount_point: &Path,
    ) -> Result<(), FsError> {
        self.run_ok(fs.grow(arg(device)?, arg(mount_point)?))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::{CommandRunner, FakeRunner, Reply};

    #[test]
    fn filesystems_by_name_with_xfs_default() {
        assert_eq!(by_name("").unwrap().name(), "xfs");
        assert_eq!(by_name("xfs").unwrap().name(), "xfs");
        assert_eq!(by_name("ext4").unwrap().name(), "ext4");
        assert_eq!(
            by_name("btrfs").unwrap_err(),
            UnknownFilesystem("btrfs".into())
        );
        assert!(by_name("XFS").is_err());
    }

    #[test]
    fn commands_are_argument_vectors() {
        let dev = "/dev/strata-nvme/pvc-1";
        let mnt = "/mnt/a b";
        assert_eq!(
            by_name("xfs").unwrap().mkfs(dev).display(),
            "mkfs.xfs -q /dev/strata-nvme/pvc-1"
        );
        let grow = by_name("xfs").unwrap().grow(dev, mnt);
        assert_eq!(grow.args.last().unwrap(), "/mnt/a b");
        assert_eq!(
            by_name("ext4").unwrap().grow(dev, mnt).display(),
            "resize2fs /dev/strata-nvme/pvc-1"
        );
    }

    fn tools(reply: Reply) -> (FsTools, Arc<FakeRunner>) {
        let fake = Arc::new(FakeRunner::from_fn(move |_| reply.clone()));
        (FsTools::new(fake.clone()), fake)
    }

    #[tokio::test]
    async fn probe_runs_blkid_through_the_runner() {
        let dev = Path::new("/dev/vg/lv");
        let (t, fake) = tools(Reply::fail(2, ""));
        assert_eq!(t.probe(dev).await.unwrap(), Probed::Blank);
        let calls: Vec<String> = fake.calls().iter().map(Invocation::display).collect();
        assert_eq!(calls, ["blkid -p -o export /dev/vg/lv"]);
        let (t, _) = tools(Reply::ok("TYPE=ext4\n"));
        assert_eq!(
            t.probe(dev).await.unwrap(),
            blkid::parse_export("TYPE=ext4\n")
        );
        let (t, _) = tools(Reply::fail(4, "boom"));
        let err = t.probe(dev).await.unwrap_err().to_string();
        assert!(
            err.contains("blkid -p -o export /dev/vg/lv") && err.contains("boom"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_failing_mkfs_keeps_stderr_and_code() {
        let (t, _) = tools(Reply::fail(1, "boom"));
        let err = t
            .format(by_name("xfs").unwrap(), Path::new("/dev/vg/lv"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mkfs.xfs -q /dev/vg/lv"), "{text}");
        assert!(text.contains("boom") && text.contains("Some(1)"), "{text}");
    }

    #[tokio::test]
    async fn the_process_runner_checks_the_device_before_blkid() {
        assert!(
            CommandRunner::default()
                .check_readable(Path::new("/nonexistent-strata"))
                .await
                .is_err()
        );
        let err = FsTools::new(Arc::new(CommandRunner::default()))
            .probe(Path::new("/nonexistent-strata"))
            .await
            .unwrap_err();
        assert!(matches!(err, FsError::Open { .. }), "{err:?}");
    }
}
