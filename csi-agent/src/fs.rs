//! Filesystems on volumes: a small [`Filesystem`] trait (xfs, ext4) chosen by name, the
//! signature probe (`blkid -p`, which decides whether a device may be formatted: only when it
//! holds no signature of any kind), and [`FsTools`], which runs the mkfs/grow/probe programs
//! through the [`Runner`] seam (argument vectors, `LC_ALL=C`, stderr and exit code kept).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

/// A program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub program: &'static str,
    pub args: Vec<OsString>,
}

impl Cmd {
    fn new(program: &'static str) -> Self {
        Cmd {
            program,
            args: Vec::new(),
        }
    }

    fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program)?;
        for arg in &self.args {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        Ok(())
    }
}

/// A filesystem Strata can create and grow.
pub trait Filesystem: Send + Sync + fmt::Debug {
    /// The name in `fsType` and in blkid's `TYPE`.
    fn name(&self) -> &'static str;
    /// The smallest device mkfs accepts.
    fn min_bytes(&self) -> u64;
    /// Creates the filesystem on an empty device.
    fn mkfs(&self, device: &Path) -> Cmd;
    /// Grows the mounted filesystem to the size of its device.
    fn grow(&self, device: &Path, mount_point: &Path) -> Cmd;
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
    fn mkfs(&self, device: &Path) -> Cmd {
        Cmd::new("mkfs.xfs").arg("-q").arg(device)
    }
    fn grow(&self, _device: &Path, mount_point: &Path) -> Cmd {
        // xfs grows through the mounted path.
        Cmd::new("xfs_growfs").arg("-d").arg(mount_point)
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
    fn mkfs(&self, device: &Path) -> Cmd {
        // -F: the device is a whole LV, not a partition; we probed it empty just before.
        Cmd::new("mkfs.ext4").arg("-q").arg("-F").arg(device)
    }
    fn grow(&self, device: &Path, _mount_point: &Path) -> Cmd {
        // resize2fs grows a mounted ext4 online through its device.
        Cmd::new("resize2fs").arg(device)
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

/// What `blkid -p` found on a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// Nothing: the device may be formatted.
    None,
    /// A filesystem (or other superblock) of this `TYPE`.
    Type(String),
    /// A partition table of this `PTTYPE`.
    PartitionTable(String),
    /// Several conflicting signatures (blkid exit code 8).
    Ambivalent,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signature::None => f.write_str("no signature"),
            Signature::Type(t) => write!(f, "{t} signature"),
            Signature::PartitionTable(t) => write!(f, "{t} partition table"),
            Signature::Ambivalent => f.write_str("ambivalent signatures"),
        }
    }
}

/// Reads `blkid -p -o export` output (`KEY=value` lines).
pub fn parse_blkid_export(text: &str) -> Signature {
    let fields: HashMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    if let Some(t) = fields.get("TYPE") {
        Signature::Type((*t).to_owned())
    } else if let Some(t) = fields.get("PTTYPE") {
        Signature::PartitionTable((*t).to_owned())
    } else if fields.is_empty() {
        Signature::None
    } else {
        // Something was found (e.g. only USAGE/VERSION): not empty.
        Signature::Type("unknown".to_owned())
    }
}

/// A finished program run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Why a program failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("cannot open {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("`{cmd}` failed (exit code {code:?}): {stderr}")]
    Failed {
        cmd: String,
        code: Option<i32>,
        stderr: String,
    },
}

/// Runs programs; faked in tests.
#[async_trait]
pub trait Runner: Send + Sync {
    async fn run(&self, cmd: &Cmd) -> Result<Output, FsError>;

    /// Fails unless `path` can be opened for reading.
    async fn check_readable(&self, path: &Path) -> Result<(), FsError> {
        tokio::fs::File::open(path)
            .await
            .map(drop)
            .map_err(|source| FsError::Open {
                path: path.to_path_buf(),
                source,
            })
    }
}

/// Runs programs as child processes of the agent.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessRunner;

#[async_trait]
impl Runner for ProcessRunner {
    async fn run(&self, cmd: &Cmd) -> Result<Output, FsError> {
        let out = tokio::process::Command::new(cmd.program)
            .args(&cmd.args)
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| FsError::Spawn {
                program: cmd.program,
                source,
            })?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The filesystem programs the node service runs.
#[derive(Clone)]
pub struct FsTools {
    runner: Arc<dyn Runner>,
}

impl FsTools {
    pub fn new(runner: Arc<dyn Runner>) -> Self {
        FsTools { runner }
    }

    async fn run_ok(&self, cmd: Cmd) -> Result<Output, FsError> {
        let out = self.runner.run(&cmd).await?;
        if out.code == Some(0) {
            Ok(out)
        } else {
            Err(FsError::Failed {
                cmd: cmd.to_string(),
                code: out.code,
                stderr: out.stderr,
            })
        }
    }

    /// Probes `device` for any signature (low-level probe, bypassing blkid's cache). The device
    /// is opened first: blkid exits 2 both for "nothing found" and for "cannot open".
    pub async fn probe(&self, device: &Path) -> Result<Signature, FsError> {
        self.runner.check_readable(device).await?;
        let cmd = Cmd::new("blkid")
            .arg("-p")
            .arg("-o")
            .arg("export")
            .arg(device);
        let out = self.runner.run(&cmd).await?;
        match out.code {
            Some(0) => Ok(parse_blkid_export(&out.stdout)),
            Some(2) => Ok(Signature::None),
            Some(8) => Ok(Signature::Ambivalent),
            code => Err(FsError::Failed {
                cmd: cmd.to_string(),
                code,
                stderr: out.stderr,
            }),
        }
    }

    /// Creates `fs` on `device` (the caller has checked it is empty).
    pub async fn format(&self, fs: &dyn Filesystem, device: &Path) -> Result<(), FsError> {
        self.run_ok(fs.mkfs(device)).await.map(drop)
    }

    /// Grows `fs`, mounted at `mount_point`, to the size of `device`.
    pub async fn grow(
        &self,
        fs: &dyn Filesystem,
        device: &Path,
        mount_point: &Path,
    ) -> Result<(), FsError> {
        self.run_ok(fs.grow(device, mount_point)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

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
        let dev = Path::new("/dev/strata-nvme/pvc-1");
        let mnt = Path::new("/mnt/a b");
        assert_eq!(
            by_name("xfs").unwrap().mkfs(dev).to_string(),
            "mkfs.xfs -q /dev/strata-nvme/pvc-1"
        );
        let grow = by_name("xfs").unwrap().grow(dev, mnt);
        assert_eq!(grow.args.last().unwrap(), "/mnt/a b");
        assert_eq!(
            by_name("ext4").unwrap().grow(dev, mnt).to_string(),
            "resize2fs /dev/strata-nvme/pvc-1"
        );
    }

    #[test]
    fn blkid_export_output_is_read() {
        assert_eq!(
            parse_blkid_export("DEVNAME=/dev/x\nUUID=1\nTYPE=xfs\nUSAGE=filesystem\n"),
            Signature::Type("xfs".into())
        );
        assert_eq!(
            parse_blkid_export("DEVNAME=/dev/x\nPTUUID=a\nPTTYPE=gpt\n"),
            Signature::PartitionTable("gpt".into())
        );
        assert_eq!(parse_blkid_export(""), Signature::None);
        assert_eq!(
            parse_blkid_export("USAGE=other\n"),
            Signature::Type("unknown".into())
        );
    }

    /// Answers every command with one canned output and records the commands.
    struct Canned {
        output: Output,
        seen: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Runner for Canned {
        async fn run(&self, cmd: &Cmd) -> Result<Output, FsError> {
            self.seen.lock().unwrap().push(cmd.to_string());
            Ok(self.output.clone())
        }

        async fn check_readable(&self, _path: &Path) -> Result<(), FsError> {
            Ok(())
        }
    }

    fn tools(code: i32, stdout: &str) -> (FsTools, Arc<Canned>) {
        let canned = Arc::new(Canned {
            output: Output {
                code: Some(code),
                stdout: stdout.into(),
                stderr: "boom".into(),
            },
            seen: Mutex::default(),
        });
        (FsTools::new(canned.clone()), canned)
    }

    #[tokio::test]
    async fn probe_reads_blkid_exit_codes() {
        let dev = Path::new("/dev/vg/lv");
        let (t, seen) = tools(2, "");
        assert_eq!(t.probe(dev).await.unwrap(), Signature::None);
        assert_eq!(
            seen.seen.lock().unwrap().as_slice(),
            ["blkid -p -o export /dev/vg/lv"]
        );
        let (t, _) = tools(0, "TYPE=ext4\n");
        assert_eq!(t.probe(dev).await.unwrap(), Signature::Type("ext4".into()));
        let (t, _) = tools(8, "");
        assert_eq!(t.probe(dev).await.unwrap(), Signature::Ambivalent);
        let (t, _) = tools(4, "");
        assert!(t.probe(dev).await.is_err());
    }

    #[tokio::test]
    async fn a_failing_mkfs_keeps_stderr_and_code() {
        let (t, _) = tools(1, "");
        let err = t
            .format(by_name("xfs").unwrap(), Path::new("/dev/vg/lv"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mkfs.xfs -q /dev/vg/lv"), "{text}");
        assert!(text.contains("boom") && text.contains("Some(1)"), "{text}");
    }

    #[tokio::test]
    async fn the_process_runner_keeps_output_and_exit_code() {
        let ok = ProcessRunner
            .run(&Cmd::new("echo").arg("out"))
            .await
            .unwrap();
        assert_eq!((ok.code, ok.stdout.as_str()), (Some(0), "out\n"));
        let failed = ProcessRunner
            .run(&Cmd::new("ls").arg("/nonexistent-strata-path"))
            .await
            .unwrap();
        assert_ne!(failed.code, Some(0));
        assert!(failed.stderr.contains("nonexistent-strata-path"));
        assert!(
            ProcessRunner
                .run(&Cmd::new("no-such-program-strata"))
                .await
                .is_err()
        );
        assert!(
            ProcessRunner
                .check_readable(Path::new("/nonexistent-strata"))
                .await
                .is_err()
        );
        assert!(
            FsTools::new(Arc::new(ProcessRunner))
                .probe(Path::new("/nonexistent-strata"))
                .await
                .is_err()
        );
    }
}
