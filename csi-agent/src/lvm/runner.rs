//! How the agent runs host programs (lvm2, `blkid`, `blkdiscard`, mkfs and grow tools, `fstrim`):
//! the one [`LvmRunner`] seam, the real [`CommandRunner`] and, for tests, `lvm::fake::FakeRunner`.
//! Commands are argument vectors (never a shell string), run with `LC_ALL=C` (stable messages for
//! error classification), stdin on `/dev/null` (so every lvm2 prompt is answered "no"), an
//! optional private `LVM_SYSTEM_DIR` and a cancellation token; the quick tools also have a timeout
//! ([`Tool::bounded`]). A command that has to be stopped gets SIGTERM, then SIGKILL after a grace
//! period; dropping the future kills it too. Nothing else in the agent spawns a process, so the
//! debug line this runner logs for each command (program, arguments, exit code, milliseconds;
//! target `csi_agent::lvm::runner`) is the complete record of what the agent ran and what it cost.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::error::{LvmError, Result};

/// The program an [`Invocation`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    /// The `lvm` multi-call binary; the first argument is the subcommand (`lvcreate`, `vgs`...).
    Lvm,
    /// util-linux `blkid`, used to refuse devices that carry a signature.
    Blkid,
    /// util-linux `blkdiscard`, used to wipe an LV before it is removed (see `lvm::wipe`).
    Blkdiscard,
    /// `mkfs.xfs`, which creates a filesystem on a volume (see `fs`).
    MkfsXfs,
    /// `mkfs.ext4`.
    MkfsExt4,
    /// `xfs_growfs`, which grows a mounted xfs.
    XfsGrowfs,
    /// `resize2fs`, which grows a mounted ext4.
    Resize2fs,
    /// util-linux `fstrim`, which discards the free space of a mounted filesystem (see `fstrim`).
    Fstrim,
}

impl Tool {
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::Lvm => "lvm",
            Tool::Blkid => "blkid",
            Tool::Blkdiscard => "blkdiscard",
            Tool::MkfsXfs => "mkfs.xfs",
            Tool::MkfsExt4 => "mkfs.ext4",
            Tool::XfsGrowfs => "xfs_growfs",
            Tool::Resize2fs => "resize2fs",
            Tool::Fstrim => "fstrim",
        }
    }

    /// Whether [`RunnerConfig::timeout`] applies. The filesystem tools work in proportion to the
    /// size of the volume (mkfs discards it, fstrim its free space): only cancellation stops them.
    pub fn bounded(self) -> bool {
        match self {
            Tool::Lvm | Tool::Blkid | Tool::Blkdiscard => true,
            Tool::MkfsXfs | Tool::MkfsExt4 | Tool::XfsGrowfs | Tool::Resize2fs | Tool::Fstrim => {
                false
            }
        }
    }
}

/// One command: a program and its argument vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub tool: Tool,
    pub args: Vec<String>,
}

impl Invocation {
    /// `tool` with this argument vector.
    pub fn new<I, S>(tool: Tool, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Invocation {
            tool,
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    pub fn lvm<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Invocation::new(Tool::Lvm, args)
    }

    pub fn blkid<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Invocation::new(Tool::Blkid, args)
    }

    /// The lvm2 subcommand (`lvcreate`, ...) or the program name for other tools.
    pub fn subcommand(&self) -> &str {
        match self.tool {
            Tool::Lvm => self.args.first().map(String::as_str).unwrap_or(""),
            other => other.as_str(),
        }
    }

    /// The command line for messages (arguments joined by spaces; never executed as such).
    pub fn display(&self) -> String {
        let mut s = self.tool.as_str().to_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// What a command that ran produced. A non-zero `code` is not an error at this level: the
/// layer classifies it. `code` is `None` when the process died from a signal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// A successful exit with this stdout.
    pub fn ok(stdout: impl Into<String>) -> Self {
        Output {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// A failed exit with this code and stderr.
    pub fn failed(code: i32, stderr: impl Into<String>) -> Self {
        Output {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs the agent's host commands (the LVM layer's and every other module's). Implementations:
/// [`CommandRunner`] (real processes) and [`super::fake::FakeRunner`] (scripted, recording; for
/// tests of this layer and its callers).
#[async_trait]
pub trait LvmRunner: Send + Sync + 'static {
    /// Runs `inv` to completion. `Ok` whenever the process ran, whatever its exit code;
    /// `Err` only for [`LvmError::Spawn`], [`LvmError::Timeout`] and [`LvmError::Cancelled`].
    async fn run(&self, inv: &Invocation, cancel: &CancellationToken) -> Result<Output>;

    /// Fails unless `device` can be opened for reading. `blkid` exits 2 both for "nothing found"
    /// and for "cannot open", so a probe asks this first; fakes answer for devices that do not
    /// exist.
    async fn check_readable(&self, device: &Path) -> std::io::Result<()> {
        tokio::fs::File::open(device).await.map(drop)
    }
}

/// Settings of the real runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Path of the `lvm` binary (looked up in `PATH` when relative).
    pub lvm_path: PathBuf,
    /// Path of `blkid`.
    pub blkid_path: PathBuf,
    /// `LVM_SYSTEM_DIR` for every lvm2 command (a private `lvm.conf`, used by tests).
    pub system_dir: Option<PathBuf>,
    /// Longest a command may run before it is terminated.
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a command is stopped.
    pub kill_grace: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            lvm_path: PathBuf::from("lvm"),
            blkid_path: PathBuf::from("blkid"),
            system_dir: None,
            timeout: Duration::from_secs(120),
            kill_grace: Duration::from_secs(5),
        }
    }
}

/// The real runner: `tokio::process` with the environment described in the module head.
#[derive(Debug, Clone, Default)]
pub struct CommandRunner {
    config: RunnerConfig,
}

impl CommandRunner {
    pub fn new(config: RunnerConfig) -> Self {
        CommandRunner { config }
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }
}

enum Stop {
    Timeout,
    Cancelled,
}

#[async_trait]
impl LvmRunner for CommandRunner {
    async fn run(&self, inv: &Invocation, cancel: &CancellationToken) -> Result<Output> {
        let by_name = PathBuf::from(inv.tool.as_str());
        let program = match inv.tool {
            Tool::Lvm => &self.config.lvm_path,
            Tool::Blkid => &self.config.blkid_path,
            _ => &by_name,
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&inv.args)
            .env("LC_ALL", "C")
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let (Tool::Lvm, Some(dir)) = (inv.tool, &self.config.system_dir) {
            cmd.env("LVM_SYSTEM_DIR", OsString::from(dir));
        }
        if cancel.is_cancelled() {
            return Err(LvmError::Cancelled {
                command: inv.display(),
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| LvmError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take())
        else {
            return Err(LvmError::Spawn {
                program: program.display().to_string(),
                source: std::io::Error::other("stdout/stderr not captured"),
            });
        };
        let read_out = async {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf).await;
            buf
        };
        let read_err = async {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            buf
        };
        let work = async { tokio::join!(child.wait(), read_out, read_err) };
        let deadline = async {
            if inv.tool.bounded() {
                tokio::time::sleep(self.config.timeout).await
            } else {
                std::future::pending().await
            }
        };
        let finished = tokio::select! {
            done = work => Ok(done),
            _ = deadline => Err(Stop::Timeout),
            _ = cancel.cancelled() => Err(Stop::Cancelled),
        };
        let (status, out, err) = match finished {
            Ok(done) => done,
            Err(stop) => {
                terminate(&mut child, self.config.kill_grace).await;
                tracing::debug!(
                    program = inv.tool.as_str(),
                    args = %inv.args.join(" "),
                    elapsed_ms = millis(started),
                    stopped = if matches!(stop, Stop::Timeout) { "timeout" } else { "cancelled" },
                    "command stopped"
                );
                return Err(match stop {
                    Stop::Timeout => LvmError::Timeout {
                        command: inv.display(),
                        after: self.config.timeout,
                    },
                    Stop::Cancelled => LvmError::Cancelled {
                        command: inv.display(),
                    },
                });
            }
        };
        let status = status.map_err(|source| LvmError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        tracing::debug!(
            program = inv.tool.as_str(),
            args = %inv.args.join(" "),
            code = ?status.code(),
            elapsed_ms = millis(started),
            "command"
        );
        Ok(Output {
            code: status.code(),
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).trim().to_owned(),
        })
    }
}

/// Milliseconds since `started`, with microseconds as the fraction.
fn millis(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// SIGTERM (lvm2 finishes or rolls back its metadata commit), then SIGKILL after `grace`.
async fn terminate(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner_with(lvm: &str, timeout: Duration) -> CommandRunner {
        CommandRunner::new(RunnerConfig {
            lvm_path: PathBuf::from(lvm),
            timeout,
            kill_grace: Duration::from_millis(200),
            ..RunnerConfig::default()
        })
    }

    #[tokio::test]
    async fn real_runner_keeps_exit_code_stderr_and_sets_lc_all() {
        // `sh` stands in for lvm: it proves the argument vector, environment and stdin handling.
        let runner = runner_with("sh", Duration::from_secs(10));
        let inv = Invocation::lvm([
            "-c",
            "echo \"$LC_ALL $LVM_SUPPRESS_FD_WARNINGS\"; read x || echo eof >&2; exit 3",
        ]);
        let out = runner.run(&inv, &CancellationToken::new()).await.unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "C 1\n");
        assert_eq!(out.stderr, "eof");
    }

    #[tokio::test]
    async fn real_runner_times_out_and_terminates() {
        let runner = runner_with("sleep", Duration::from_millis(100));
        let started = std::time::Instant::now();
        let err = runner
            .run(&Invocation::lvm(["30"]), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, LvmError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn real_runner_stops_on_cancellation() {
        let runner = runner_with("sleep", Duration::from_secs(60));
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            trigger.cancel();
        });
        let err = runner
            .run(&Invocation::lvm(["30"]), &cancel)
            .await
            .unwrap_err();
        assert!(matches!(err, LvmError::Cancelled { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn real_runner_reports_missing_program() {
        let runner = runner_with("/nonexistent/lvm", Duration::from_secs(1));
        let err = runner
            .run(&Invocation::lvm(["vgs"]), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, LvmError::Spawn { .. }), "{err:?}");
    }
}
