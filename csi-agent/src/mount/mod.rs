//! Mounting, behind the [`Mounter`] trait so the node service can be driven by a fake in tests.
//! [`SyscallMounter`] uses `mount(2)`/`umount2(2)` through `nix` and reads the mount table from
//! `/proc/self/mountinfo` (parsed in [`mountinfo`]); the syscalls run on tokio's blocking pool
//! because mounting a filesystem may replay a journal. [`MountOptions`] turns the CSI
//! `mount_flags` into kernel flags plus a filesystem data string, refusing the flags that would
//! change what is mounted (`bind`, `remount`, `move`, ...).

pub mod mountinfo;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use csi_api::request;
use nix::mount::{MntFlags, MsFlags};

pub use mountinfo::MountEntry;

/// Why a mount operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{op} {target}: {errno}")]
    Syscall {
        op: &'static str,
        target: PathBuf,
        errno: nix::Error,
    },
    #[error("cannot read the mount table {path}: {source}")]
    Table {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] mountinfo::ParseError),
    #[error("mount worker failed: {0}")]
    Join(String),
}

/// A mount flag the plugin refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("mount flag {0:?} is not allowed")]
pub struct BadMountFlag(pub String);

/// Kernel flags and filesystem data for one mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Comma-separated filesystem-specific options (`nouuid`, `discard`, ...).
    pub data: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            data: String::new(),
        }
    }
}

impl MountOptions {
    /// Parses CSI `mount_flags`: each entry may itself hold several comma-separated options.
    pub fn from_csi_flags<S: AsRef<str>>(csi_flags: &[S]) -> Result<Self, BadMountFlag> {
        let mut flags = MsFlags::empty();
        let mut data: Vec<&str> = Vec::new();
        for entry in csi_flags {
            for opt in entry.as_ref().split(',') {
                let bad = || BadMountFlag(opt.to_owned());
                if request::malformed_mount_option(opt) {
                    return Err(bad());
                }
                match opt {
                    "ro" => flags |= MsFlags::MS_RDONLY,
                    "rw" => flags &= !MsFlags::MS_RDONLY,
                    "noatime" => flags |= MsFlags::MS_NOATIME,
                    "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
                    "relatime" => flags |= MsFlags::MS_RELATIME,
                    "strictatime" => flags |= MsFlags::MS_STRICTATIME,
                    "lazytime" => flags |= MsFlags::MS_LAZYTIME,
                    "nosuid" => flags |= MsFlags::MS_NOSUID,
                    "nodev" => flags |= MsFlags::MS_NODEV,
                    "noexec" => flags |= MsFlags::MS_NOEXEC,
                    "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
                    "dirsync" => flags |= MsFlags::MS_DIRSYNC,
                    "defaults" | "async" | "atime" | "suid" | "dev" | "exec" => {}
                    o if request::REFUSED_MOUNT_OPTIONS.contains(&o) => return Err(bad()),
                    other => data.push(other),
                }
            }
        }
        Ok(MountOptions {
            flags,
            data: data.join(","),
        })
    }

    pub fn read_only(&self) -> bool {
        self.flags.contains(MsFlags::MS_RDONLY)
    }
}

/// Mounts, unmounts and lists mounts.
#[async_trait]
pub trait Mounter: Send + Sync {
    /// Mounts the filesystem on `device` at `target`.
    async fn mount(
        &self,
        device: &Path,
        target: &Path,
        fs_type: &str,
        options: &MountOptions,
    ) -> Result<(), MountError>;
    /// Bind-mounts `source` (a folder, or a device node onto a file) at `target`.
    async fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError>;
    /// Unmounts the topmost mount at `target`.
    async fn unmount(&self, target: &Path) -> Result<(), MountError>;
    /// The current mount table.
    async fn mounts(&self) -> Result<Vec<MountEntry>, MountError>;
}

/// The real mounter: syscalls and procfs.
#[derive(Clone, Debug)]
pub struct SyscallMounter {
    mountinfo: PathBuf,
}

impl Default for SyscallMounter {
    fn default() -> Self {
        SyscallMounter {
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        }
    }
}

/// Runs the syscalls `f` of `op` on the blocking pool; logs how long they took (debug, with the
/// wait for a blocking thread) next to the runner's line for each command.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, MountError> + Send + 'static,
) -> Result<T, MountError> {
    let started = std::time::Instant::now();
    let done = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MountError::Join(e.to_string()))?;
    tracing::debug!(
        op,
        ok = done.is_ok(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "syscall"
    );
    done
}

fn syscall(op: &'static str, target: &Path) -> impl FnOnce(nix::Error) -> MountError {
    let target = target.to_path_buf();
    move |errno| MountError::Syscall { op, target, errno }
}

#[async_trait]
impl Mounter for SyscallMounter {
    async fn mount(
        &self,
        device: &Path,
        target: &Path,
        fs_type: &str,
        options: &MountOptions,
    ) -> Result<(), MountError> {
        let (device, target, fs_type, options) = (
            device.to_path_buf(),
            target.to_path_buf(),
            fs_type.to_owned(),
            options.clone(),
        );
        blocking("mount", move || {
            let data = (!options.data.is_empty()).then_some(options.data.as_str());
            nix::mount::mount(
                Some(&device),
                &target,
                Some(fs_type.as_str()),
                options.flags,
                data,
            )
            .map_err(syscall("mount", &target))
        })
        .await
    }

    async fn bind(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        let (source, target) = (source.to_path_buf(), target.to_path_buf());
        blocking("bind mount", move || {
            nix::mount::mount(
                Some(&source),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(syscall("bind mount", &target))?;
            if read_only {
                // A bind mount takes MS_RDONLY only on a remount of the bind.
                let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                if let Err(errno) =
                    nix::mount::mount(None::<&str>, &target, None::<&str>, remount, None::<&str>)
                {
                    let _ = nix::mount::umount2(&target, MntFlags::empty());
                    return Err(syscall("read-only remount", &target)(errno));
                }
            }
            Ok(())
        })
        .await
    }

    async fn unmount(&self, target: &Path) -> Result<(), MountError> {
        let target = target.to_path_buf();
        blocking("unmount", move || {
            nix::mount::umount2(&target, MntFlags::UMOUNT_NOFOLLOW)
                .map_err(syscall("unmount", &target))
        })
        .await
    }

    async fn mounts(&self) -> Result<Vec<MountEntry>, MountError> {
        // Read inline: procfs never waits on a disk, and a trip through the blocking pool would
        // cost more than the read.
        let text =
            std::fs::read_to_string(&self.mountinfo).map_err(|source| MountError::Table {
                path: self.mountinfo.clone(),
                source,
            })?;
        Ok(mountinfo::parse(&text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csi_flags_split_into_kernel_flags_and_data() {
        let opts =
            MountOptions::from_csi_flags(&["noatime", "nouuid,discard", "ro", "nodev"]).unwrap();
        assert_eq!(
            opts.flags,
            MsFlags::MS_NOATIME | MsFlags::MS_RDONLY | MsFlags::MS_NODEV
        );
        assert_eq!(opts.data, "nouuid,discard");
        assert!(opts.read_only());
        let rw = MountOptions::from_csi_flags(&["ro", "rw"]).unwrap();
        assert!(!rw.read_only());
        assert_eq!(
            MountOptions::from_csi_flags::<&str>(&[]).unwrap(),
            MountOptions::default()
        );
    }

    #[test]
    fn flags_that_change_what_is_mounted_are_refused() {
        for bad in [
            "bind",
            "noatime,remount",
            "rshared",
            "",
            "a b",
            "x,,y",
            "nul\0",
        ] {
            assert!(
                MountOptions::from_csi_flags(&[bad]).is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[tokio::test]
    async fn the_real_table_of_this_process_parses() {
        let mounts = SyscallMounter::default().mounts().await.unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
