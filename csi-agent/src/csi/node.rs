//! The CSI Node service: stage (format an empty device, never reformat; mount), publish (bind
//! mount, read-only honoured; raw block: bind the device node onto a file), unpublish/unstage
//! (idempotent), online expansion, stats and volume condition. A volume's device always comes
//! from the LVM layer (the LV tagged with the volume's name), never from a path in the request;
//! and a path is only unmounted when what is mounted there is this volume (or, with the LV gone,
//! some Strata LV), so a bad request cannot unmount anything else. A restored or cloned volume
//! already holds its source's filesystem: it is never reformatted, xfs mounts it with `nouuid`
//! (its UUID is its source's, maybe mounted on this node too), and after the mount the
//! filesystem is grown to the device (a restore may be larger than its snapshot).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use csi_api::csi::node_service_capability::rpc::Type as RpcType;
use csi_api::csi::node_service_capability::{Rpc, Type as CapType};
use csi_api::csi::volume_usage::Unit;
use csi_api::csi::{self, VolumeCondition, VolumeUsage};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::controller::node_topology;
use super::error::{Error, Result};
use super::validate::{self, ResolvedAccess};
use super::volumes::{VolumeInfo, Volumes};
use crate::fs::{self, FsTools};
use crate::lvm::blkid::Probed;
use crate::mount::mountinfo::{self, MountEntry};
use crate::mount::{MountOptions, Mounter};
use csi_api::volume_lock::VolumeLocks;
use nix::mount::MsFlags;

/// The capabilities this service implements.
pub const CAPABILITIES: [RpcType; 4] = [
    RpcType::StageUnstageVolume,
    RpcType::ExpandVolume,
    RpcType::GetVolumeStats,
    RpcType::VolumeCondition,
];

/// Device paths of Strata's LVs: `/dev/<vg>/<lv>` (what the agent mounts) and the
/// device-mapper name (`strata-nvme` → `/dev/mapper/strata--nvme-<lv>`).
const STRATA_DEVICE_PREFIXES: [&str; 2] = ["/dev/strata-", "/dev/mapper/strata--"];

/// The Node service of this node.
#[derive(Clone)]
pub struct NodeService {
    node: String,
    volumes: Arc<dyn Volumes>,
    mounter: Arc<dyn Mounter>,
    fs: FsTools,
    locks: VolumeLocks,
    /// Target and staging paths must lie under it (`--kubelet-dir`; `/` = any absolute path).
    kubelet_dir: PathBuf,
}

/// How the kernel identifies a block device in the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeviceId {
    /// `major:minor`, as in mountinfo field 3 for a filesystem on the device.
    major_minor: String,
    /// The device node's path under `/dev` without the `/dev` prefix (`/dm-3`), as in mountinfo's
    /// root field for a bind mount of the node from devtmpfs.
    devtmpfs_root: Option<String>,
}

/// Stats the device node inline: `/dev` is devtmpfs, whose calls never wait on a disk (the rule
/// and its figures: docs/architecture.md, "Pseudo-filesystems inline").
fn device_id(device: &Path) -> Result<DeviceId> {
    let meta = std::fs::metadata(device).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(format!(
                "device {} of the volume is missing",
                device.display()
            ))
        } else {
            Error::io(format!("stat {}", device.display()))(e)
        }
    })?;
    if !meta.file_type().is_block_device() {
        return Err(Error::FailedPrecondition(format!(
            "{} is not a block device",
            device.display()
        )));
    }
    let rdev = meta.rdev();
    let canonical = std::fs::canonicalize(device).ok();
    Ok(DeviceId {
        major_minor: format!(
            "{}:{}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        ),
        devtmpfs_root: canonical.and_then(|c| {
            c.strip_prefix("/dev")
                .ok()
                .map(|rest| format!("/{}", rest.display()))
        }),
    })
}

impl DeviceId {
    /// Whether `entry` mounts this device: its filesystem, or the device node itself.
    fn matches(&self, entry: &MountEntry) -> bool {
        entry.major_minor == self.major_minor
            || (entry.fs_type == "devtmpfs"
                && self.devtmpfs_root.as_deref() == Some(entry.root.as_str()))
    }
}

/// Whether `entry` looks like a mount of some Strata LV (used when the LV itself is gone).
fn is_strata_mount(entry: &MountEntry) -> bool {
    entry
        .source
        .as_deref()
        .is_some_and(|s| STRATA_DEVICE_PREFIXES.iter().any(|p| s.starts_with(p)))
        || (entry.fs_type == "devtmpfs" && entry.root.starts_with("/dm-"))
}

/// `path` with symlinks resolved when it exists (mountinfo holds resolved paths).
async fn resolved(path: &Path) -> PathBuf {
    tokio::fs::canonicalize(path)
        .await
        .unwrap_or_else(|_| path.to_path_buf())
}

fn not_on_node(id: &str) -> Error {
    Error::NotFound(format!("volume {id:?} does not exist on this node"))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl NodeService {
    /// `locks` is shared with the Controller service in standalone mode.
    pub fn new(
        node: impl Into<String>,
        volumes: Arc<dyn Volumes>,
        mounter: Arc<dyn Mounter>,
        fs: FsTools,
        locks: VolumeLocks,
    ) -> Self {
        NodeService {
            node: node.into(),
            volumes,
            mounter,
            fs,
            locks,
            kubelet_dir: PathBuf::from("/"),
        }
    }

    /// Accepts target and staging paths only under `dir` (the kubelet directory).
    pub fn with_kubelet_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.kubelet_dir = dir.into();
        self
    }

    /// A required path field, under the kubelet directory.
    fn path(&self, field: &str, value: &str) -> Result<PathBuf> {
        validate::path_under(field, value, &self.kubelet_dir)
    }

    async fn volume(&self, id: &str) -> Result<VolumeInfo> {
        self.volumes
            .locate(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("volume {id:?} does not exist on this node")))
    }

    /// The volume to stage or publish: refused when its LV carries the wipe mark, re-read from
    /// lvm2 at every call (a remembered volume may have been marked since).
    async fn usable_volume(&self, id: &str) -> Result<VolumeInfo> {
        let volume = self.volume(id).await?;
        if self.volumes.marked_for_deletion(id).await? {
            return Err(Error::FailedPrecondition(format!(
                "volume {id:?} is being deleted (its LV is marked for its wipe); it cannot be staged or published"
            )));
        }
        Ok(volume)
    }

    /// What is on the device before a stage formats it: nothing for a fresh volume (created
    /// zeroed by this process and never handed out: the probe could find nothing), else what
    /// `blkid -p` finds. Either way the volume is no longer fresh afterwards.
    async fn signature(&self, id: &str, device: &Path) -> Result<Probed> {
        if self.volumes.take_fresh(id).await {
            tracing::debug!("fresh volume: no probe needed");
            return Ok(Probed::Blank);
        }
        Ok(self.fs.probe(device).await?)
    }

    async fn mounts(&self) -> Result<Vec<MountEntry>> {
        Ok(self.mounter.mounts().await?)
    }

    #[instrument(skip_all, fields(volume_id = %req.volume_id), err)]
    pub async fn stage(&self, req: csi::NodeStageVolumeRequest) -> Result<()> {
        let id = validate::id("volume_id", &req.volume_id)?;
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let cap = validate::required_capability(req.volume_capability.as_ref())?;
        let _guard = self.locks.try_lock(id)?;
        let volume = self.usable_volume(id).await?;
        let device = device_id(&volume.device)?;
        let ResolvedAccess::Mount { fs, options } = &cap.access else {
            // Block volumes are published straight from the device node.
            return Ok(());
        };
        let staging = resolved(&staging).await;
        let mounts = self.mounts().await?;
        if let Some(entry) = mountinfo::mount_at(&mounts, &staging) {
            if device.matches(entry) && entry.fs_type == fs.name() {
                return Ok(());
            }
            return Err(Error::AlreadyExists(format!(
                "{} already holds another mount ({} {})",
                staging.display(),
                entry.fs_type,
                entry.source.as_deref().unwrap_or("-")
            )));
        }
        tokio::fs::create_dir_all(&staging)
            .await
            .map_err(Error::io(format!("create {}", staging.display())))?;
        let existing = match self.signature(id, &volume.device).await? {
            Probed::Blank => {
                tracing::info!(fs = fs.name(), "formatting empty volume");
                self.fs.format(*fs, &volume.device).await?;
                false
            }
            Probed::Signature(sig) if sig.fs_type() == Some(fs.name()) => true,
            other => {
                return Err(Error::FailedPrecondition(format!(
                    "volume holds {other}, not {}; it is never reformatted",
                    fs.name()
                )));
            }
        };
        let options = stage_options(options, *fs, &volume);
        self.mounter
            .mount(&volume.device, &staging, fs.name(), &options)
            .await?;
        if existing {
            self.grow_copied(&volume, *fs, &staging, &options).await?;
        }
        tracing::info!(path = %staging.display(), "volume staged");
        Ok(())
    }

    /// After a restored or cloned volume's filesystem is mounted at `staging`: grows it to the
    /// device (xfs_growfs / resize2fs; a no-op when it already fills it), unless mounted
    /// read-only. A failed growth unmounts it again, so that the retried stage grows it.
    /// Volumes made empty are grown by NodeExpandVolume only (no process here).
    async fn grow_copied(
        &self,
        volume: &VolumeInfo,
        fs: &'static dyn fs::Filesystem,
        staging: &Path,
        options: &MountOptions,
    ) -> Result<()> {
        if volume.source.is_none() || options.flags.contains(MsFlags::MS_RDONLY) {
            return Ok(());
        }
        if let Err(e) = self.fs.grow(fs, &volume.device, staging).await {
            if let Err(u) = self.mounter.unmount(staging).await {
                tracing::warn!(error = %u, "unmount after a failed growth failed");
            }
            return Err(e.into());
        }
        tracing::info!(
            fs = fs.name(),
            bytes = volume.size_bytes,
            source = ?volume.source,
            "filesystem of a restored or cloned volume grown to its device"
        );
        Ok(())
    }

    #[instrument(skip_all, fields(volume_id = %req.volume_id), err)]
    pub async fn unstage(&self, req: csi::NodeUnstageVolumeRequest) -> Result<()> {
        let id = validate::id("volume_id", &req.volume_id)?;
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let _guard = self.locks.try_lock(id)?;
        // The CO owns the staging folder; only the mount goes.
        self.unmount_all(id, &staging).await
    }

    #[instrument(skip_all, fields(volume_id = %req.volume_id), err)]
    pub async fn publish(&self, req: csi::NodePublishVolumeRequest) -> Result<()> {
        let id = validate::id("volume_id", &req.volume_id)?;
        let target = self.path("target_path", &req.target_path)?;
        // The spec's order: a missing or unsupported capability is InvalidArgument before any
        // look at the staging path.
        let cap = validate::required_capability(req.volume_capability.as_ref())?;
        if req.staging_target_path.is_empty() {
            return Err(Error::FailedPrecondition(
                "staging_target_path is required (the plugin stages volumes)".into(),
            ));
        }
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let read_only = req.readonly || cap.read_only_mode();
        let _guard = self.locks.try_lock(id)?;
        let volume = self.usable_volume(id).await?;
        // Handed out from here on (a raw block volume is never staged): no longer fresh.
        self.volumes.take_fresh(id).await;
        let device = device_id(&volume.device)?;
        let target = resolved(&target).await;
        let mounts = self.mounts().await?;
        if let Some(entry) = mountinfo::mount_at(&mounts, &target) {
            if device.matches(entry) && entry.read_only == read_only {
                return Ok(());
            }
            return Err(Error::AlreadyExists(format!(
                "{} is already published with other properties (or holds another mount)",
                target.display()
            )));
        }
        let source = match &cap.access {
            ResolvedAccess::Mount { .. } => {
                let staging = resolved(&staging).await;
                match mountinfo::mount_at(&mounts, &staging) {
                    Some(entry) if device.matches(entry) => {}
                    _ => {
                        return Err(Error::FailedPrecondition(format!(
                            "volume is not staged at {}",
                            staging.display()
                        )));
                    }
                }
                tokio::fs::create_dir_all(&target)
                    .await
                    .map_err(Error::io(format!("create {}", target.display())))?;
                staging
            }
            ResolvedAccess::Block => {
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(Error::io(format!("create {}", parent.display())))?;
                }
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&target)
                    .await
                    .map_err(Error::io(format!("create {}", target.display())))?;
                volume.device.clone()
            }
        };
        self.mounter.bind(&source, &target, read_only).await?;
        tracing::info!(path = %target.display(), read_only, "volume published");
        Ok(())
    }

    #[instrument(skip_all, fields(volume_id = %req.volume_id), err)]
    pub async fn unpublish(&self, req: csi::NodeUnpublishVolumeRequest) -> Result<()> {
        let id = validate::id("volume_id", &req.volume_id)?;
        let target = self.path("target_path", &req.target_path)?;
        let _guard = self.locks.try_lock(id)?;
        self.unmount_all(id, &target).await?;
        // The plugin created the target (folder or file); it removes it.
        match tokio::fs::symlink_metadata(&target).await {
            Ok(meta) if meta.is_dir() => tokio::fs::remove_dir(&target).await,
            Ok(_) => tokio::fs::remove_file(&target).await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(Error::io(format!("remove {}", target.display())))?;
        Ok(())
    }

    /// Unmounts every mount at `path` that is volume `id`'s (or a Strata LV's when the LV is
    /// gone); refuses anything else. Success when nothing is mounted.
    async fn unmount_all(&self, id: &str, path: &Path) -> Result<()> {
        let path = resolved(path).await;
        // Marked or not: a volume can always be released.
        let device = match self.volumes.device_for_release(id).await? {
            Some(path) => device_id(&path).ok(),
            None => None,
        };
        // Stacked mounts come off one at a time; a bounded loop guards against surprises.
        for _ in 0..16 {
            let mounts = self.mounts().await?;
            let Some(entry) = mountinfo::mount_at(&mounts, &path) else {
                return Ok(());
            };
            let ours = match &device {
                Some(d) => d.matches(entry),
                None => is_strata_mount(entry),
            };
            if !ours {
                return Err(Error::FailedPrecondition(format!(
                    "{} holds a mount that is not volume {id:?} ({} {}); refusing to unmount it",
                    path.display(),
                    entry.fs_type,
                    entry.source.as_deref().unwrap_or("-")
                )));
            }
            self.mounter.unmount(&path).await?;
        }
        Err(Error::FailedPrecondition(format!(
            "{} still has mounts after 16 unmounts",
            path.display()
        )))
    }

    #[instrument(skip_all, fields(volume_id = %req.volume_id), err)]
    pub async fn stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> Result<csi::NodeGetVolumeStatsResponse> {
        // The spec's order: an unknown volume is NotFound whatever the path (even relative or
        // absent); a known volume needs a valid path; a path the volume is not at is NotFound.
        let id = validate::id("volume_id", &req.volume_id)?;
        let volume = self.volumes.find(id).await?;
        let path = match (&volume, self.path("volume_path", &req.volume_path)) {
            (_, Ok(path)) => path,
            (None, Err(_)) => return Err(not_on_node(id)),
            (Some(_), Err(e)) => return Err(e),
        };
        let meta = tokio::fs::metadata(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!("volume_path {} does not exist", path.display()))
            } else {
                Error::io(format!("stat {}", path.display()))(e)
            }
        })?;
        let path = resolved(&path).await;
        let mounts = self.mounts().await?;
        let entry = mountinfo::mount_at(&mounts, &path);
        let device = match &volume {
            Some(v) => device_id(&v.device).ok(),
            None => None,
        };
        let not_here = || {
            Error::NotFound(format!(
                "volume {id:?} is not mounted at {}",
                path.display()
            ))
        };
        let condition = match (&volume, entry) {
            // The LV vanished under a mount of it: a volume to report, not an unknown id.
            (None, Some(e)) if is_strata_mount(e) => {
                abnormal(format!("the logical volume of {id:?} is missing"))
            }
            (None, _) => return Err(not_on_node(id)),
            (Some(_), None) => return Err(not_here()),
            (Some(_), Some(e)) if device.as_ref().is_some_and(|d| !d.matches(e)) => {
                return Err(not_here());
            }
            (Some(v), _) if v.problem.is_some() => abnormal(v.problem.clone().unwrap_or_default()),
            (Some(_), Some(_)) => VolumeCondition {
                abnormal: false,
                message: "volume is healthy".into(),
            },
        };
        let usage = if meta.is_dir() {
            let p = path.clone();
            let st = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&p))
                .await
                .map_err(|e| Error::Unavailable(format!("statvfs worker: {e}")))?
                .map_err(|errno| Error::io(format!("statvfs {}", path.display()))(errno.into()))?;
            let frsize = st.fragment_size();
            let blocks = st.blocks();
            vec![
                VolumeUsage {
                    available: to_i64(st.blocks_available().saturating_mul(frsize)),
                    total: to_i64(blocks.saturating_mul(frsize)),
                    used: to_i64(
                        blocks
                            .saturating_sub(st.blocks_free())
                            .saturating_mul(frsize),
                    ),
                    unit: Unit::Bytes as i32,
                },
                VolumeUsage {
                    available: to_i64(st.files_free()),
                    total: to_i64(st.files()),
                    used: to_i64(st.files().saturating_sub(st.files_free())),
                    unit: Unit::Inodes as i32,
                },
            ]
        } else {
            // A raw block volume: its size is all there is to say.
            vec![VolumeUsage {
                available: 0,
                total: to_i64(volume.as_ref().map_or(0, |v| v.size_bytes)),
                used: 0,
                unit: Unit::Bytes as i32,
            }]
        };
        Ok(csi::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(condition),
        })
    }

    #[instrument(skip_all, fields(volume_id = %req.volume_id), err)]
    pub async fn expand(&self, req: csi::NodeExpandVolumeRequest) -> Result<i64> {
        let id = validate::id("volume_id", &req.volume_id)?;
        // The spec's order: an unknown volume is NotFound whatever the paths.
        if self.volumes.find(id).await?.is_none() {
            return Err(not_on_node(id));
        }
        let volume_path = self.path("volume_path", &req.volume_path)?;
        let staging = if req.staging_target_path.is_empty() {
            None
        } else {
            Some(self.path("staging_target_path", &req.staging_target_path)?)
        };
        let block = match req.volume_capability.as_ref() {
            Some(cap) => validate::capability(cap)?.access.is_block(),
            None => false,
        };
        let _guard = self.locks.try_lock(id)?;
        // LVM's size now, not a remembered one: in Kubernetes mode the reconciler grows the LV
        let volume =
            self.volumes.find(id).await?.ok_or_else(|| {
                Error::NotFound(format!("volume {id:?} does not exist on this node"))
            })?;
        let required = req
            .capacity_range
            .as_ref()
            .map_or(0, |r| u64::try_from(r.required_bytes).unwrap_or(0));
        if required > volume.size_bytes {
            return Err(Error::OutOfRange(format!(
                "the volume is {} bytes, less than the {required} requested: \
                 ControllerExpandVolume must grow it first",
                volume.size_bytes
            )));
        }
        let size = to_i64(volume.size_bytes);
        if block {
            return Ok(size);
        }
        let device = device_id(&volume.device)?;
        let mounts = self.mounts().await?;
        let mut candidates = Vec::new();
        if let Some(s) = staging {
            candidates.push(resolved(&s).await);
        }
        candidates.push(resolved(&volume_path).await);
        let found = candidates.iter().find_map(|p| {
            mountinfo::mount_at(&mounts, p)
                .filter(|e| device.matches(e))
                .map(|e| (p.clone(), e.clone()))
        });
        let Some((mount_point, entry)) = found else {
            let meta = tokio::fs::metadata(&volume_path).await.ok();
            if meta.is_some_and(|m| !m.is_dir()) {
                // A raw block volume published as a file: nothing to grow.
                return Ok(size);
            }
            return Err(Error::FailedPrecondition(format!(
                "volume is not mounted at {}",
                volume_path.display()
            )));
        };
        if entry.fs_type == "devtmpfs" {
            return Ok(size);
        }
        let fs =
            fs::by_name(&entry.fs_type).map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        self.fs.grow(fs, &volume.device, &mount_point).await?;
        tracing::info!(
            bytes = volume.size_bytes,
            fs = fs.name(),
            "filesystem grown"
        );
        Ok(size)
    }
}

/// The mount options of a stage: the request's, plus the filesystem's copy option (xfs:
/// `nouuid`) for a restored or cloned volume (it carries its source's UUID).
fn stage_options(
    options: &MountOptions,
    fs: &'static dyn fs::Filesystem,
    volume: &VolumeInfo,
) -> MountOptions {
    let mut out = options.clone();
    let extra = fs.copy_mount_option().filter(|_| volume.source.is_some());
    if let Some(extra) = extra
        && !out.data.split(',').any(|o| o == extra)
    {
        if !out.data.is_empty() {
            out.data.push(',');
        }
        out.data.push_str(extra);
    }
    out
}

fn abnormal(message: String) -> VolumeCondition {
    VolumeCondition {
        abnormal: true,
        message,
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        self.stage(request.into_inner()).await?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        self.unstage(request.into_inner()).await?;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        self.publish(request.into_inner()).await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        self.unpublish(request.into_inner()).await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Ok(Response::new(self.stats(request.into_inner()).await?))
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let capacity_bytes = self.expand(request.into_inner()).await?;
        Ok(Response::new(csi::NodeExpandVolumeResponse {
            capacity_bytes,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let capabilities = CAPABILITIES
            .iter()
            .map(|t| csi::NodeServiceCapability {
                r#type: Some(CapType::Rpc(Rpc { r#type: *t as i32 })),
            })
            .collect();
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(node_topology(&self.node)),
        }))
    }
}

#[cfg(test)]
mod tests {
    //! The spec's error order, checked on requests that must be answered before any mount is
    //! touched: the fake mounter holds no mounts and records nothing it was asked to do.

    use std::sync::Mutex;

    use async_trait::async_trait;
    use csi_api::csi::volume_capability::access_mode::Mode;
    use csi_api::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
    use csi_api::csi::{CapacityRange, VolumeCapability};
    use csi_api::names::DeviceClass;

    use super::*;
    use crate::csi::volumes::memory::MemVolumes;
    use crate::lvm::CommandRunner;
    use crate::lvm::{FakeRunner, Reply};
    use crate::mount::{MountError, MountOptions};

    #[derive(Default)]
    struct NoMounts {
        asked: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Mounter for NoMounts {
        async fn mount(
            &self,
            _device: &Path,
            target: &Path,
            _fs_type: &str,
            _options: &MountOptions,
        ) -> std::result::Result<(), MountError> {
            self.asked
                .lock()
                .unwrap()
                .push(format!("mount {}", target.display()));
            Ok(())
        }
        async fn bind(
            &self,
            _source: &Path,
            target: &Path,
            _read_only: bool,
        ) -> std::result::Result<(), MountError> {
            self.asked
                .lock()
                .unwrap()
                .push(format!("bind {}", target.display()));
            Ok(())
        }
        async fn unmount(&self, target: &Path) -> std::result::Result<(), MountError> {
            self.asked
                .lock()
                .unwrap()
                .push(format!("unmount {}", target.display()));
            Ok(())
        }
        async fn mounts(&self) -> std::result::Result<Vec<MountEntry>, MountError> {
            Ok(Vec::new())
        }
    }

    const GI: u64 = 1 << 30;

    async fn service(root: &Path) -> (NodeService, Arc<NoMounts>) {
        let mem = Arc::new(MemVolumes::default().with_class(DeviceClass::Nvme, 16 * GI, 0));
        mem.create("pvc-known", DeviceClass::Nvme, GI)
            .await
            .unwrap();
        let mounter = Arc::new(NoMounts::default());
        let svc = NodeService::new(
            "node-a",
            mem,
            mounter.clone(),
            FsTools::new(Arc::new(CommandRunner::default())),
            VolumeLocks::new(),
        )
        .with_kubelet_dir(root);
        (svc, mounter)
    }

    fn xfs() -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: "xfs".into(),
                ..Default::default()
            })),
        }
    }

    fn code<T: std::fmt::Debug>(r: Result<T>) -> tonic::Code {
        Status::from(r.unwrap_err()).code()
    }

    /// Records every program it is asked to run; `blkid` finds an xfs signature.
    fn programs() -> Arc<FakeRunner> {
        Arc::new(FakeRunner::from_fn(|_| Reply::ok("TYPE=xfs\n")))
    }

    #[tokio::test]
    async fn only_a_fresh_volume_skips_the_probe_and_only_once() {
        let mem = Arc::new(MemVolumes::default().with_class(DeviceClass::Nvme, 16 * GI, 0));
        for id in ["pvc-fresh", "pvc-old"] {
            mem.create(id, DeviceClass::Nvme, GI).await.unwrap();
        }
        mem.fresh.lock().unwrap().insert("pvc-fresh".into());
        let programs = programs();
        let svc = NodeService::new(
            "node-a",
            mem.clone(),
            Arc::new(NoMounts::default()),
            FsTools::new(programs.clone()),
            VolumeLocks::new(),
        );
        let dev = Path::new("/dev/strata-nvme/x");
        assert_eq!(
            svc.signature("pvc-fresh", dev).await.unwrap(),
            Probed::Blank
        );
        assert!(programs.calls().is_empty(), "no probe for a fresh volume");
        // once handed out it is probed like any other: the data written since is seen
        let xfs = crate::lvm::blkid::parse_export("TYPE=xfs\n");
        assert_eq!(svc.signature("pvc-fresh", dev).await.unwrap(), xfs);
        assert_eq!(svc.signature("pvc-old", dev).await.unwrap(), xfs);
        assert_eq!(programs.calls().len(), 2);
        assert!(programs.calls()[0].display().starts_with("blkid -p"));
    }

    #[tokio::test]
    async fn publish_without_a_capability_is_invalid_before_the_staging_path_is_looked_at() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, mounter) = service(dir.path()).await;
        for staging in ["", "/outside/the/kubelet/dir", "relative"] {
            let req = csi::NodePublishVolumeRequest {
                volume_id: "pvc-known".into(),
                target_path: dir.path().join("target").display().to_string(),
                staging_target_path: staging.into(),
                volume_capability: None,
                ..Default::default()
            };
            assert_eq!(
                code(svc.publish(req).await),
                tonic::Code::InvalidArgument,
                "{staging:?}"
            );
        }
        assert!(mounter.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn unknown_volumes_are_not_found_whatever_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, mounter) = service(dir.path()).await;
        for path in ["", "relative/path", "/elsewhere"] {
            let stats = csi::NodeGetVolumeStatsRequest {
                volume_id: "pvc-unknown".into(),
                volume_path: path.into(),
                ..Default::default()
            };
            assert_eq!(
                code(svc.stats(stats).await),
                tonic::Code::NotFound,
                "{path:?}"
            );
            let expand = csi::NodeExpandVolumeRequest {
                volume_id: "pvc-unknown".into(),
                volume_path: path.into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: GI as i64,
                    limit_bytes: 0,
                }),
                ..Default::default()
            };
            assert_eq!(
                code(svc.expand(expand).await),
                tonic::Code::NotFound,
                "{path:?}"
            );
        }
        // A missing id is still InvalidArgument.
        let no_id = csi::NodeGetVolumeStatsRequest {
            volume_path: dir.path().display().to_string(),
            ..Default::default()
        };
        assert_eq!(code(svc.stats(no_id).await), tonic::Code::InvalidArgument);
        assert!(mounter.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_known_volume_needs_a_path_and_is_not_found_where_it_is_not_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, _) = service(dir.path()).await;
        let stats = |path: String| csi::NodeGetVolumeStatsRequest {
            volume_id: "pvc-known".into(),
            volume_path: path,
            ..Default::default()
        };
        assert_eq!(
            code(svc.stats(stats(String::new())).await),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(svc.stats(stats("relative".into())).await),
            tonic::Code::InvalidArgument
        );
        let empty = dir.path().join("not-mounted");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(
            code(svc.stats(stats(empty.display().to_string())).await),
            tonic::Code::NotFound
        );
    }

    #[tokio::test]
    async fn paths_outside_the_kubelet_dir_are_refused_and_nothing_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, mounter) = service(dir.path()).await;
        let stage = csi::NodeStageVolumeRequest {
            volume_id: "pvc-known".into(),
            staging_target_path: "/tmp/elsewhere/staging".into(),
            volume_capability: Some(xfs()),
            ..Default::default()
        };
        assert_eq!(code(svc.stage(stage).await), tonic::Code::InvalidArgument);
        let unpublish = csi::NodeUnpublishVolumeRequest {
            volume_id: "pvc-known".into(),
            target_path: "/etc".into(),
        };
        assert_eq!(
            code(svc.unpublish(unpublish).await),
            tonic::Code::InvalidArgument
        );
        assert!(mounter.asked.lock().unwrap().is_empty());
    }

    fn block() -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Block(BlockVolume::default())),
        }
    }

    /// A node over one volume `pvc-1` that is marked for its wipe.
    async fn marked_node(root: &Path) -> (NodeService, Arc<MemVolumes>) {
        let mem = Arc::new(MemVolumes::default().with_class(DeviceClass::Ssd, 1 << 30, 0));
        mem.create("pvc-1", DeviceClass::Ssd, 1 << 20)
            .await
            .unwrap();
        mem.marked.lock().unwrap().insert("pvc-1".into());
        let node = NodeService::new(
            "n1",
            mem.clone(),
            Arc::new(crate::mount::SyscallMounter::default()),
            FsTools::new(Arc::new(CommandRunner::default())),
            VolumeLocks::new(),
        )
        .with_kubelet_dir(root);
        (node, mem)
    }

    #[tokio::test]
    async fn a_marked_volume_is_never_staged_or_published_but_always_released() {
        let dir = tempfile::tempdir().unwrap();
        let (node, _) = marked_node(dir.path()).await;
        let staging = dir.path().join("staging");
        let target = dir.path().join("pod/dev");
        let err = node
            .stage(csi::NodeStageVolumeRequest {
                volume_id: "pvc-1".into(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(block()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        assert!(err.to_string().contains("being deleted"), "{err}");
        let err = node
            .publish(csi::NodePublishVolumeRequest {
                volume_id: "pvc-1".into(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(block()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        assert!(!target.exists());
        // The release calls work on the marked volume (nothing mounted here: success).
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, b"").unwrap();
        node.unpublish(csi::NodeUnpublishVolumeRequest {
            volume_id: "pvc-1".into(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap();
        assert!(!target.exists());
        node.unstage(csi::NodeUnstageVolumeRequest {
            volume_id: "pvc-1".into(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap();
    }

    fn copied(id: &str, source: Option<&str>) -> VolumeInfo {
        VolumeInfo {
            id: id.into(),
            class: DeviceClass::Nvme,
            size_bytes: 2 * GI,
            device: PathBuf::from(format!("/dev/strata-nvme/{id}")),
            problem: None,
            thin: true,
            source: source.map(|s| csi_api::request::ContentSource::Snapshot(s.into())),
        }
    }

    #[tokio::test]
    async fn a_restored_filesystem_is_grown_after_its_mount_and_unmounted_if_that_fails() {
        let runs = Arc::new(FakeRunner::from_fn(|inv| {
            if inv.display().contains("broken") {
                Reply::fail(1, "xfs_growfs: cannot grow")
            } else {
                Reply::ok("data blocks changed")
            }
        }));
        let mounter = Arc::new(NoMounts::default());
        let svc = NodeService::new(
            "node-a",
            Arc::new(MemVolumes::default()),
            mounter.clone(),
            FsTools::new(runs.clone()),
            VolumeLocks::new(),
        );
        let xfs = fs::by_name("xfs").unwrap();
        let ext4 = fs::by_name("ext4").unwrap();
        let rw = MountOptions::default();
        let staging = Path::new("/var/lib/kubelet/staging/r");
        svc.grow_copied(&copied("pvc-r", Some("snap-1")), xfs, staging, &rw)
            .await
            .unwrap();
        svc.grow_copied(&copied("pvc-r", Some("snap-1")), ext4, staging, &rw)
            .await
            .unwrap();
        let ran: Vec<String> = runs.calls().iter().map(|c| c.display()).collect();
        assert_eq!(
            ran,
            vec![
                "xfs_growfs -d /var/lib/kubelet/staging/r".to_owned(),
                "resize2fs /dev/strata-nvme/pvc-r".into()
            ]
        );
        // a volume made empty, or mounted read-only: no process
        svc.grow_copied(&copied("pvc-e", None), xfs, staging, &rw)
            .await
            .unwrap();
        let ro = MountOptions {
            flags: MsFlags::MS_RDONLY,
            ..Default::default()
        };
        svc.grow_copied(&copied("pvc-r", Some("snap-1")), xfs, staging, &ro)
            .await
            .unwrap();
        assert_eq!(runs.calls().len(), 2);
        assert!(mounter.asked.lock().unwrap().is_empty());
        // a failed growth: the error, and the mount is undone for the retry
        let broken = Path::new("/var/lib/kubelet/staging/broken");
        let err = svc
            .grow_copied(&copied("pvc-r", Some("snap-1")), xfs, broken, &rw)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot grow"), "{err}");
        assert_eq!(
            *mounter.asked.lock().unwrap(),
            vec!["unmount /var/lib/kubelet/staging/broken".to_owned()]
        );
    }

    #[test]
    fn the_xfs_of_a_restored_volume_is_mounted_nouuid() {
        let xfs = fs::by_name("xfs").unwrap();
        let ext4 = fs::by_name("ext4").unwrap();
        let with = |data: &str| MountOptions {
            data: data.into(),
            ..Default::default()
        };
        let restored = copied("pvc-r", Some("snap-1"));
        assert_eq!(stage_options(&with(""), xfs, &restored).data, "nouuid");
        assert_eq!(
            stage_options(&with("discard"), xfs, &restored).data,
            "discard,nouuid"
        );
        assert_eq!(
            stage_options(&with("nouuid"), xfs, &restored).data,
            "nouuid"
        );
        assert_eq!(stage_options(&with(""), ext4, &restored).data, "");
        assert_eq!(
            stage_options(&with(""), xfs, &copied("pvc-e", None)).data,
            ""
        );
    }
}
