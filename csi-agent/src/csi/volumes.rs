//! What the CSI services need from the node's storage, as one trait: find, list, create, extend
//! and remove volumes by CSI volume name, thin volumes (empty, restored from a snapshot or
//! cloned from a volume) and thin snapshots, and the capacity of each device class. The real
//! implementation (`super::lvm_volumes`) sits on the LVM layer and keeps all state in LVM tags;
//! [`memory::MemVolumes`] (tests only) keeps it in a map, so the controller and node logic can be
//! tested without LVM.

use std::path::PathBuf;

use async_trait::async_trait;
use csi_api::names::DeviceClass;
use csi_api::request::ContentSource;

use super::error::Result;

/// One volume as the CSI services see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The CSI volume id (= the CreateVolume name).
    pub id: String,
    pub class: DeviceClass,
    pub size_bytes: u64,
    /// The block device of the LV (`/dev/<vg>/<lv>`).
    pub device: PathBuf,
    /// Why the volume is not healthy (its VG lost a PV, the LV is not active), if it is not.
    pub problem: Option<String>,
    /// A thin volume (on the class's thin pool).
    pub thin: bool,
    /// What it was restored or cloned from (`None`: made empty).
    pub source: Option<ContentSource>,
}

/// One thin snapshot as the CSI services see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The CSI snapshot id (= the CreateSnapshot name).
    pub id: String,
    /// The volume it was taken of (which may be deleted since).
    pub source_volume: String,
    pub class: DeviceClass,
    /// The origin's size when it was taken.
    pub size_bytes: u64,
    /// RFC 3339 UTC.
    pub creation_time: Option<String>,
}

/// One device class of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    pub class: DeviceClass,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Free bytes minus the class's reserve: what new volumes may take.
    pub allocatable_bytes: u64,
    pub extent_bytes: u64,
    /// PVs of the VG that are missing; a degraded class takes no new volumes.
    pub missing_pvs: u32,
    /// Present disks of the VG that the health check found failing, as `slot: evidence`; a
    /// class with one takes no new volumes either.
    pub failing_disks: Vec<String>,
}

impl ClassInfo {
    pub fn healthy(&self) -> bool {
        self.missing_pvs == 0 && self.failing_disks.is_empty()
    }

    /// Why the class takes no new volumes (`None` when healthy), naming the disks.
    pub fn degraded_because(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.missing_pvs > 0 {
            why.push(format!("{} missing disk(s)", self.missing_pvs));
        }
        if !self.failing_disks.is_empty() {
            why.push(format!(
                "failing disk {}",
                self.failing_disks.join("; failing disk ")
            ));
        }
        (!why.is_empty()).then(|| why.join(", "))
    }
}

/// The node's volumes and classes.
#[async_trait]
pub trait Volumes: Send + Sync {
    /// The volume called `id`, if it exists, with its health (`problem`).
    async fn find(&self, id: &str) -> Result<Option<VolumeInfo>>;
    /// The volume called `id` without the health check (cheaper: device, class and size).
    async fn locate(&self, id: &str) -> Result<Option<VolumeInfo>> {
        self.find(id).await
    }
    /// The volume called `id`, for CreateVolume: like [`Volumes::locate`], but an implementation
    /// that creates every volume itself may answer `None` from its own records.
    async fn existing(&self, id: &str) -> Result<Option<VolumeInfo>> {
        self.locate(id).await
    }
    /// The device class as last read, if the implementation keeps a report it trusts enough to
    /// admit a create against (the create itself still arbitrates space); `None`: read
    /// [`Volumes::classes`].
    async fn cached_class(&self, _class: DeviceClass) -> Option<ClassInfo> {
        None
    }
    /// Every Strata volume of the node, sorted by id.
    async fn list(&self) -> Result<Vec<VolumeInfo>>;
    /// The device classes the node has (a class without VG is absent).
    async fn classes(&self) -> Result<Vec<ClassInfo>>;
    /// Creates volume `id` of `bytes` in `class` (the caller checked it does not exist).
    async fn create(&self, id: &str, class: DeviceClass, bytes: u64) -> Result<VolumeInfo>;
    /// Grows volume `id` to `bytes` (the caller checked it is smaller).
    async fn extend(&self, id: &str, bytes: u64) -> Result<VolumeInfo>;
    /// Records the wipe policy (`discard`, `zero`, `none`) volume `id` gets when removed.
    async fn set_wipe_policy(&self, id: &str, policy: &str) -> Result<()>;
    /// Whether volume `id`'s LV carries the wipe mark: read afresh from lvm2, except for an LV
    /// this process created and has not marked since (only this process writes the mark).
    async fn marked_for_deletion(&self, id: &str) -> Result<bool>;
    /// Whether volume `id` is *fresh*: created by this process with its first blocks zeroed and
    /// its signatures wiped, and never handed out or grown since, so that a probe before mkfs
    /// could only find nothing. Answering consumes it (the caller hands the device out); an
    /// implementation that cannot prove it answers `false` and the caller probes.
    async fn take_fresh(&self, _id: &str) -> bool {
        false
    }
    /// The device node of volume `id`, marked for deletion or not (for unpublish/unstage,
    /// which always work); `None` when it has no LV.
    async fn device_for_release(&self, id: &str) -> Result<Option<std::path::PathBuf>>;
    /// Removes volume `id` (wiped first, as its policy says); success when it is already gone.
    async fn remove(&self, id: &str) -> Result<()>;
    /// Creates thin volume `id` of `bytes` in `class`, empty or from `source` (restore, clone;
    /// the caller checked the source is in `class`). A class without a pool is ResourceExhausted.
    async fn create_thin(
        &self,
        id: &str,
        class: DeviceClass,
        bytes: u64,
        source: Option<&ContentSource>,
    ) -> Result<VolumeInfo>;
    /// What a new thin volume of `class` may still be promised (`None`: the class has no pool).
    async fn thin_room(&self, class: DeviceClass) -> Result<Option<u64>>;
    /// Takes snapshot `id` of thin volume `source_volume` (idempotent for the same source).
    async fn create_snapshot(&self, id: &str, source_volume: &str) -> Result<SnapshotInfo>;
    /// Removes snapshot `id`; success when it is already gone.
    async fn delete_snapshot(&self, id: &str) -> Result<()>;
    /// Every Strata snapshot of the node, sorted by id.
    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>>;
}

#[cfg(test)]
pub mod memory {
    //! An in-memory [`Volumes`] with a fixed set of classes, for controller and node tests.

    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::csi::error::Error;

    #[derive(Default)]
    pub struct MemVolumes {
        pub classes: Mutex<BTreeMap<DeviceClass, ClassInfo>>,
        pub volumes: Mutex<BTreeMap<String, VolumeInfo>>,
        /// Volumes marked for deletion (still in `volumes`).
        pub marked: Mutex<std::collections::BTreeSet<String>>,
        /// Volumes that are fresh (see [`Volumes::take_fresh`]).
        pub fresh: Mutex<std::collections::BTreeSet<String>>,
        /// Every mutating call, as text (`create pvc-1 nvme 1073741824`).
        pub calls: Mutex<Vec<String>>,
        /// How long `create` takes (to hold the volume lock in concurrency tests).
        pub create_delay: Duration,
        /// Virtual bytes each class's thin pool may still take (no entry: no pool).
        pub thin_room: Mutex<BTreeMap<DeviceClass, u64>>,
        pub snapshots: Mutex<BTreeMap<String, SnapshotInfo>>,
    }

    impl MemVolumes {
        pub fn with_class(self, class: DeviceClass, total: u64, missing_pvs: u32) -> Self {
            self.classes.lock().unwrap().insert(
                class,
                ClassInfo {
                    class,
                    total_bytes: total,
                    free_bytes: total,
                    allocatable_bytes: total,
                    extent_bytes: 4 << 20,
                    missing_pvs,
                    failing_disks: Vec::new(),
                },
            );
            self
        }

        /// Keeps `reserve` bytes of `class` out of what volumes may take.
        pub fn with_reserve(self, class: DeviceClass, reserve: u64) -> Self {
            if let Some(info) = self.classes.lock().unwrap().get_mut(&class) {
                info.allocatable_bytes = info.free_bytes.saturating_sub(reserve);
            }
            self
        }

        /// Gives `class` a thin pool that may still take `room` virtual bytes.
        pub fn with_pool(self, class: DeviceClass, room: u64) -> Self {
            self.thin_room.lock().unwrap().insert(class, room);
            self
        }

        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Volumes for MemVolumes {
        async fn find(&self, id: &str) -> Result<Option<VolumeInfo>> {
            Ok(self.volumes.lock().unwrap().get(id).cloned())
        }

        async fn list(&self) -> Result<Vec<VolumeInfo>> {
            Ok(self.volumes.lock().unwrap().values().cloned().collect())
        }

        async fn classes(&self) -> Result<Vec<ClassInfo>> {
            Ok(self.classes.lock().unwrap().values().cloned().collect())
        }

        async fn create(&self, id: &str, class: DeviceClass, bytes: u64) -> Result<VolumeInfo> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("create {id} {class} {bytes}"));
            if !self.create_delay.is_zero() {
                tokio::time::sleep(self.create_delay).await;
            }
            let mut classes = self.classes.lock().unwrap();
            let info = classes
                .get_mut(&class)
                .ok_or_else(|| Error::NotFound(format!("no {class} class")))?;
            if info.free_bytes < bytes {
                return Err(Error::ResourceExhausted(format!("{class} is full")));
            }
            info.free_bytes -= bytes;
            info.allocatable_bytes -= bytes;
            let volume = VolumeInfo {
                id: id.to_owned(),
                class,
                size_bytes: bytes,
                device: PathBuf::from(format!("/dev/{}/{id}", class.vg_name())),
                problem: None,
                thin: false,
                source: None,
            };
            self.volumes
                .lock()
                .unwrap()
                .insert(id.to_owned(), volume.clone());
            Ok(volume)
        }

        async fn extend(&self, id: &str, bytes: u64) -> Result<VolumeInfo> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("extend {id} {bytes}"));
            let mut volumes = self.volumes.lock().unwrap();
            let volume = volumes
                .get_mut(id)
                .ok_or_else(|| Error::NotFound(id.to_owned()))?;
            let mut classes = self.classes.lock().unwrap();
            let info = classes.get_mut(&volume.class).expect("class of a volume");
            let more = bytes - volume.size_bytes;
            if info.free_bytes < more {
                return Err(Error::ResourceExhausted("full".into()));
            }
            info.free_bytes -= more;
            info.allocatable_bytes -= more;
            volume.size_bytes = bytes;
            Ok(volume.clone())
        }

        async fn set_wipe_policy(&self, id: &str, policy: &str) -> Result<()> {
            if !self.volumes.lock().unwrap().contains_key(id) {
                return Err(Error::NotFound(format!("volume {id:?}")));
            }
            self.calls
                .lock()
                .unwrap()
                .push(format!("wipe {id} {policy}"));
            Ok(())
        }

        async fn marked_for_deletion(&self, id: &str) -> Result<bool> {
            Ok(self.marked.lock().unwrap().contains(id))
        }

        async fn take_fresh(&self, id: &str) -> bool {
            self.fresh.lock().unwrap().remove(id)
        }

        async fn device_for_release(&self, id: &str) -> Result<Option<PathBuf>> {
            Ok(self
                .volumes
                .lock()
                .unwrap()
                .get(id)
                .map(|v| v.device.clone()))
        }

        async fn create_thin(
            &self,
            id: &str,
            class: DeviceClass,
            bytes: u64,
            source: Option<&ContentSource>,
        ) -> Result<VolumeInfo> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("create_thin {id} {class} {bytes} {source:?}"));
            match source {
                Some(ContentSource::Snapshot(s))
                    if !self.snapshots.lock().unwrap().contains_key(s) =>
                {
                    return Err(Error::NotFound(format!("snapshot {s:?}")));
                }
                Some(ContentSource::Volume(v)) => match self.volumes.lock().unwrap().get(v) {
                    None => return Err(Error::NotFound(format!("volume {v:?}"))),
                    Some(v) if !v.thin => return Err(Error::FailedPrecondition("linear".into())),
                    Some(_) => {}
                },
                _ => {}
            }
            let mut rooms = self.thin_room.lock().unwrap();
            let room = rooms
                .get_mut(&class)
                .ok_or_else(|| Error::ResourceExhausted(format!("--thin-pool {class}=PERCENT")))?;
            if bytes > *room {
                return Err(Error::ResourceExhausted(format!("{class} pool is full")));
            }
            *room -= bytes;
            let volume = VolumeInfo {
                id: id.to_owned(),
                class,
                size_bytes: bytes,
                device: PathBuf::from(format!("/dev/{}/{id}", class.vg_name())),
                problem: None,
                thin: true,
                source: source.cloned(),
            };
            self.volumes
                .lock()
                .unwrap()
                .insert(id.to_owned(), volume.clone());
            Ok(volume)
        }

        async fn thin_room(&self, class: DeviceClass) -> Result<Option<u64>> {
            Ok(self.thin_room.lock().unwrap().get(&class).copied())
        }

        async fn create_snapshot(&self, id: &str, source_volume: &str) -> Result<SnapshotInfo> {
            if let Some(s) = self.snapshots.lock().unwrap().get(id) {
                if s.source_volume != source_volume {
                    return Err(Error::AlreadyExists(format!("snapshot {id:?}")));
                }
                return Ok(s.clone());
            }
            let volume = self
                .volumes
                .lock()
                .unwrap()
                .get(source_volume)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("volume {source_volume:?}")))?;
            if !volume.thin {
                return Err(Error::FailedPrecondition(
                    "linear: use a thin StorageClass".into(),
                ));
            }
            self.calls
                .lock()
                .unwrap()
                .push(format!("snapshot {id} {source_volume}"));
            let snapshot = SnapshotInfo {
                id: id.to_owned(),
                source_volume: source_volume.to_owned(),
                class: volume.class,
                size_bytes: volume.size_bytes,
                creation_time: Some("2026-12-03T00:02:03Z".into()),
            };
            self.snapshots
                .lock()
                .unwrap()
                .insert(id.to_owned(), snapshot.clone());
            Ok(snapshot)
        }

        async fn delete_snapshot(&self, id: &str) -> Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("delete_snapshot {id}"));
            self.snapshots.lock().unwrap().remove(id);
            Ok(())
        }

        async fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
            Ok(self.snapshots.lock().unwrap().values().cloned().collect())
        }

        async fn remove(&self, id: &str) -> Result<()> {
            self.calls.lock().unwrap().push(format!("remove {id}"));
            if let Some(v) = self.volumes.lock().unwrap().remove(id) {
                let mut classes = self.classes.lock().unwrap();
                let info = classes.get_mut(&v.class).expect("class of a volume");
                info.free_bytes += v.size_bytes;
                info.allocatable_bytes += v.size_bytes;
            }
            Ok(())
        }
    }
}
