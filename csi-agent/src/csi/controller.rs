//! The CSI Controller service of standalone mode: volumes are placed on this node's class VGs and
//! all state lives in LVM (the LV and its tags), so every call is idempotent by volume name and a
//! restart loses nothing. Order of CreateVolume: validate → lock the name → look it up → compare
//! (`AlreadyExists` on a mismatch) → check the class and space → create. The look-up and the class
//! check use what the storage layer already knows when it can vouch for it; every refusal is
//! decided on a fresh read, and the create itself arbitrates space. One call per volume at a
//! time ([`VolumeLocks`]); a second one gets `Aborted`.

use std::collections::HashMap;
use std::sync::Arc;

use csi_api::csi::controller_service_capability::rpc::Type as RpcType;
use csi_api::csi::controller_service_capability::{Rpc, Type as CapType};
use csi_api::csi::list_volumes_response::{Entry, VolumeStatus};
use csi_api::csi::validate_volume_capabilities_response::Confirmed;
use csi_api::csi::{self, Topology, Volume};
use csi_api::names::{self, DeviceClass};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::error::{Error, Result};
use super::validate::{self, Params, ResolvedAccess};
use super::volumes::{ClassInfo, SnapshotInfo, VolumeInfo, Volumes};
use crate::lvm::LvmError;
use csi_api::request::{self, ContentSource};
use csi_api::volume_lock::VolumeLocks;

/// The Controller service of one standalone node.
#[derive(Clone)]
pub struct ControllerService {
    node: String,
    volumes: Arc<dyn Volumes>,
    locks: VolumeLocks,
}

/// The capabilities this service implements (GetSnapshot, alpha in the spec, is not).
pub const CAPABILITIES: [RpcType; 7] = [
    RpcType::CreateDeleteVolume,
    RpcType::ListVolumes,
    RpcType::GetCapacity,
    RpcType::ExpandVolume,
    RpcType::CreateDeleteSnapshot,
    RpcType::ListSnapshots,
    RpcType::CloneVolume,
];

fn source_kind(source: &ContentSource) -> &'static str {
    match source {
        ContentSource::Snapshot(_) => "snapshot",
        ContentSource::Volume(_) => "volume",
    }
}

/// A snapshot as CSI reports it (always ready: a thin snapshot is complete when made).
fn snapshot_to_csi(s: &SnapshotInfo) -> csi::Snapshot {
    let creation_time = s
        .creation_time
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: 0,
        });
    csi::Snapshot {
        size_bytes: i64::try_from(s.size_bytes).unwrap_or(i64::MAX),
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume.clone(),
        creation_time,
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

/// Topology of every volume and of the node: `topology.strata.io/node = <node>`.
pub fn node_topology(node: &str) -> Topology {
    Topology {
        segments: HashMap::from([(names::TOPOLOGY_KEY.to_owned(), node.to_owned())]),
    }
}

impl ControllerService {
    /// `locks` is shared with the Node service: one operation per volume across both.
    pub fn new(node: impl Into<String>, volumes: Arc<dyn Volumes>, locks: VolumeLocks) -> Self {
        ControllerService {
            node: node.into(),
            volumes,
            locks,
        }
    }

    fn to_csi(&self, v: &VolumeInfo) -> Volume {
        Volume {
            capacity_bytes: i64::try_from(v.size_bytes).unwrap_or(i64::MAX),
            volume_id: v.id.clone(),
            volume_context: HashMap::from([(
                names::PARAM_DEVICE_CLASS.to_owned(),
                v.class.to_string(),
            )]),
            content_source: v.source.as_ref().map(request::content_source_message),
            accessible_topology: vec![node_topology(&self.node)],
        }
    }

    /// Whether the requisite topology (if any) includes this node.
    fn topology_allows(&self, req: Option<&csi::TopologyRequirement>) -> bool {
        let Some(req) = req else { return true };
        let on_node = |t: &Topology| {
            t.segments.get(names::TOPOLOGY_KEY) == Some(&self.node) && t.segments.len() == 1
        };
        if req.requisite.is_empty() {
            return req.preferred.is_empty() || req.preferred.iter().any(on_node);
        }
        req.requisite.iter().any(on_node)
    }

    async fn class(&self, class: DeviceClass) -> Result<Option<ClassInfo>> {
        Ok(self
            .volumes
            .classes()
            .await?
            .into_iter()
            .find(|c| c.class == class))
    }

    #[instrument(skip_all, fields(volume_id = %req.name), err)]
    pub async fn create(&self, req: csi::CreateVolumeRequest) -> Result<Volume> {
        let name = validate::id("name", &req.name)?;
        let caps = validate::capabilities(&req.volume_capabilities)?;
        let params = Params::try_from(&req.parameters)?;
        let class = params.required_class()?;
        let thin = params.provisioning == names::Provisioning::Thin;
        let source = request::content_source(req.volume_content_source.as_ref())?;
        if source.is_some() && !thin {
            return Err(Error::InvalidArgument(format!(
                "volume_content_source needs a thin class ({}: thin, in the source's device \
                 class): a copy into a linear volume or across classes is not supported",
                names::PARAM_PROVISIONING
            )));
        }
        if !req.mutable_parameters.is_empty() {
            return Err(Error::InvalidArgument(
                "mutable_parameters are not supported".into(),
            ));
        }
        // The largest minimum of the requested filesystems (xfs needs 300 MiB).
        let min_bytes = caps
            .iter()
            .map(|c| match &c.access {
                ResolvedAccess::Block => 0,
                ResolvedAccess::Mount { fs, .. } => fs.min_bytes(),
            })
            .max()
            .unwrap_or(0);
        let _guard = self.locks.try_lock(name)?;

        if let Some(existing) = self.volumes.existing(name).await? {
            return self
                .reuse(&existing, class, &req, min_bytes, &params, source.as_ref())
                .await;
        }

        if !self.topology_allows(req.accessibility_requirements.as_ref()) {
            return Err(Error::ResourceExhausted(format!(
                "accessibility_requirements exclude node {:?}, the only node this plugin serves",
                self.node
            )));
        }
        if thin {
            return self
                .create_thin(name, class, &req, min_bytes, &params, source.as_ref())
                .await;
        }
        let bytes = self
            .admit(class, req.capacity_range.as_ref(), min_bytes)
            .await?;
        let created = match self.volumes.create(name, class, bytes).await {
            Ok(created) => created,
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                // An LV of the name that the look-up did not know: compare it like any other.
                return match self.volumes.locate(name).await? {
                    Some(existing) => {
                        self.reuse(&existing, class, &req, min_bytes, &params, None)
                            .await
                    }
                    None => Err(e),
                };
            }
            Err(Error::Lvm(LvmError::DeviceMissing(_))) => {
                return Err(Error::ResourceExhausted(format!(
                    "{class} device class is degraded (a disk is missing); it takes no new volumes"
                )));
            }
            Err(Error::Lvm(LvmError::NotFound { .. })) => {
                return Err(Error::ResourceExhausted(format!(
                    "node {} has no {class} device class",
                    self.node
                )));
            }
            Err(e) => return Err(e),
        };
        if let Some(wipe) = &params.wipe {
            self.volumes.set_wipe_policy(name, wipe).await?;
        }
        tracing::info!(class = %class, bytes, device = %created.device.display(), "volume created");
        Ok(self.to_csi(&created))
    }

    /// CreateVolume of a name that exists: the volume if it matches the request, else
    /// `AlreadyExists`.
    async fn reuse(
        &self,
        existing: &VolumeInfo,
        class: DeviceClass,
        req: &csi::CreateVolumeRequest,
        min_bytes: u64,
        params: &Params,
        source: Option<&ContentSource>,
    ) -> Result<Volume> {
        let name = existing.id.as_str();
        if existing.class != class {
            return Err(Error::AlreadyExists(format!(
                "volume {name:?} exists in class {} (requested {class})",
                existing.class
            )));
        }
        let thin = params.provisioning == names::Provisioning::Thin;
        if existing.thin != thin {
            return Err(Error::AlreadyExists(format!(
                "volume {name:?} exists {} (requested {})",
                if existing.thin { "thin" } else { "linear" },
                if thin { "thin" } else { "linear" }
            )));
        }
        if existing.source.as_ref() != source {
            let text = |s: Option<&ContentSource>| match s {
                None => "empty".to_owned(),
                Some(ContentSource::Snapshot(id)) => format!("from snapshot {id:?}"),
                Some(ContentSource::Volume(id)) => format!("from volume {id:?}"),
            };
            return Err(Error::AlreadyExists(format!(
                "volume {name:?} exists {} (requested {})",
                text(existing.source.as_ref()),
                text(source)
            )));
        }
        if !validate::size_fits(existing.size_bytes, req.capacity_range.as_ref())
            || existing.size_bytes < min_bytes
        {
            return Err(Error::AlreadyExists(format!(
                "volume {name:?} exists with {} bytes, outside the requested range",
                existing.size_bytes
            )));
        }
        if let Some(wipe) = &params.wipe {
            // A repeat after a crash between the create and the record finishes the record.
            self.volumes.set_wipe_policy(name, wipe).await?;
        }
        Ok(self.to_csi(existing))
    }

    /// CreateVolume of a thin volume (the name is locked and has no volume): empty, sized and
    /// admitted by the LVM layer against the pool; or restored/cloned from `source`, which must
    /// exist (NotFound) in the same class (InvalidArgument: no copy across classes), be thin
    /// (FailedPrecondition) and fit the range (OutOfRange).
    async fn create_thin(
        &self,
        name: &str,
        class: DeviceClass,
        req: &csi::CreateVolumeRequest,
        min_bytes: u64,
        params: &Params,
        source: Option<&ContentSource>,
    ) -> Result<Volume> {
        let range = req.capacity_range.as_ref();
        // A cloned volume is not deleted, expanded or staged while it is read.
        let _source = match source {
            Some(ContentSource::Volume(id)) => Some(self.locks.try_lock(id)?),
            _ => None,
        };
        let bytes = match source {
            None => {
                let info = self.class(class).await?.ok_or_else(|| {
                    Error::ResourceExhausted(format!(
                        "node {} has no {class} device class",
                        self.node
                    ))
                })?;
                validate::capacity(range, min_bytes, info.extent_bytes)?
            }
            Some(source) => {
                let (source_class, source_bytes) = self.source_of(source).await?;
                if source_class != class {
                    return Err(Error::InvalidArgument(format!(
                        "{} {:?} is in the {source_class} device class, the request asks for \
                         {class}: a copy across classes is not supported",
                        source_kind(source),
                        source.id()
                    )));
                }
                let bytes = request::size_from_source(range, source_bytes, source)?;
                if bytes < min_bytes {
                    return Err(Error::OutOfRange(format!(
                        "{bytes} bytes is below the filesystem's minimum of {min_bytes}"
                    )));
                }
                bytes
            }
        };
        let created = self.volumes.create_thin(name, class, bytes, source).await?;
        if let Some(wipe) = &params.wipe {
            self.volumes.set_wipe_policy(name, wipe).await?;
        }
        tracing::info!(class = %class, bytes = created.size_bytes, source = ?source, "thin volume created");
        Ok(self.to_csi(&created))
    }

    /// The class and size of a restore's or clone's source; NotFound when it does not exist,
    /// FailedPrecondition when a volume source is linear.
    async fn source_of(&self, source: &ContentSource) -> Result<(DeviceClass, u64)> {
        match source {
            ContentSource::Snapshot(id) => {
                let snapshot = self
                    .volumes
                    .snapshots()
                    .await?
                    .into_iter()
                    .find(|s| &s.id == id)
                    .ok_or_else(|| Error::NotFound(format!("snapshot {id:?} does not exist")))?;
                Ok((snapshot.class, snapshot.size_bytes))
            }
            ContentSource::Volume(id) => {
                let volume = self
                    .volumes
                    .locate(id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("volume {id:?} does not exist")))?;
                if !volume.thin {
                    return Err(Error::FailedPrecondition(format!(
                        "volume {id:?} is linear and cannot be cloned: use a thin StorageClass \
                         ({}: thin)",
                        names::PARAM_PROVISIONING
                    )));
                }
                Ok((volume.class, volume.size_bytes))
            }
        }
    }

    /// The size to create in `class`. The cached class report admits when it shows a healthy
    /// class with room (lvcreate still arbitrates space and refuses a VG with a missing disk);
    /// anything else is decided on a fresh report.
    async fn admit(
        &self,
        class: DeviceClass,
        range: Option<&csi::CapacityRange>,
        min_bytes: u64,
    ) -> Result<u64> {
        if let Some(cached) = self.volumes.cached_class(class).await
            && cached.healthy()
            && let Ok(bytes) = validate::capacity(range, min_bytes, cached.extent_bytes)
            && bytes <= cached.allocatable_bytes
        {
            return Ok(bytes);
        }
        let info = self.class(class).await?.ok_or_else(|| {
            Error::ResourceExhausted(format!("node {} has no {class} device class", self.node))
        })?;
        if let Some(why) = info.degraded_because() {
            return Err(Error::ResourceExhausted(format!(
                "{class} device class is degraded ({why}); it takes no new volumes until the disk is replaced (csi-agent replace-disk)"
            )));
        }
        let bytes = validate::capacity(range, min_bytes, info.extent_bytes)?;
        if bytes > info.allocatable_bytes {
            return Err(Error::ResourceExhausted(format!(
                "not enough {class} capacity: {bytes} bytes requested, {} allocatable",
                info.allocatable_bytes
            )));
        }
        Ok(bytes)
    }

    #[instrument(skip_all, fields(volume_id = %req.volume_id), err)]
    pub async fn delete(&self, req: csi::DeleteVolumeRequest) -> Result<()> {
        let id = validate::id("volume_id", &req.volume_id)?;
        let _guard = self.locks.try_lock(id)?;
        // Idempotent: removing a volume that is gone is success.
        self.volumes.remove(id).await?;
        tracing::info!("volume deleted");
        Ok(())
    }

    #[instrument(skip_all, fields(volume_id = %req.volume_id), err)]
    pub async fn validate_capabilities(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse> {
        let id = validate::id("volume_id", &req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::InvalidArgument(
                "volume_capabilities is required".into(),
            ));
        }
        let volume = self
            .volumes
            .find(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("volume {id:?} does not exist")))?;
        let params = Params::try_from(&req.parameters)?;
        match params.class {
            Some(class) if class != volume.class => {
                return Ok(not_confirmed(format!(
                    "volume is of class {}, not {class}",
                    volume.class
                )));
            }
            _ => {}
        }
        if let Err(problem) = validate::capabilities(&req.volume_capabilities) {
            return Ok(not_confirmed(Error::from(problem).to_string()));
        }
        Ok(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: HashMap::new(),
            }),
            message: String::new(),
        })
    }

    #[instrument(skip_all, err)]
    pub async fn list(&self, req: csi::ListVolumesRequest) -> Result<csi::ListVolumesResponse> {
        let volumes = self.volumes.list().await?;
        let ids: Vec<&str> = volumes.iter().map(|v| v.id.as_str()).collect();
        let (range, next_token) =
            validate::page_by_token(&ids, req.max_entries, &req.starting_token)?;
        let entries = volumes[range]
            .iter()
            .map(|v| Entry {
                volume: Some(self.to_csi(v)),
                status: Some(VolumeStatus {
                    published_node_ids: Vec::new(),
                    volume_condition: None,
                }),
            })
            .collect();
        Ok(csi::ListVolumesResponse {
            entries,
            next_token,
        })
    }

    #[instrument(skip_all, err)]
    pub async fn capacity(&self, req: csi::GetCapacityRequest) -> Result<csi::GetCapacityResponse> {
        let params = Params::try_from(&req.parameters)?;
        let zero = csi::GetCapacityResponse {
            available_capacity: 0,
            maximum_volume_size: Some(0),
            minimum_volume_size: None,
        };
        let elsewhere = req
            .accessible_topology
            .as_ref()
            .is_some_and(|t| t.segments.get(names::TOPOLOGY_KEY) != Some(&self.node));
        if elsewhere {
            return Ok(zero);
        }
        if validate::capabilities(&req.volume_capabilities).is_err()
            && !req.volume_capabilities.is_empty()
        {
            return Ok(zero);
        }
        let to_i64 = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        if params.provisioning == names::Provisioning::Thin {
            // What the pools may still promise a new thin volume (0 without a pool).
            let mut available = 0u64;
            let mut largest = 0u64;
            for class in self.volumes.classes().await? {
                if params.class.is_some_and(|want| want != class.class) || !class.healthy() {
                    continue;
                }
                let room = self.volumes.thin_room(class.class).await?.unwrap_or(0);
                available = available.saturating_add(room);
                largest = largest.max(room);
            }
            return Ok(csi::GetCapacityResponse {
                available_capacity: to_i64(available),
                maximum_volume_size: Some(to_i64(largest)),
                minimum_volume_size: None,
            });
        }
        let classes: Vec<ClassInfo> = self
            .volumes
            .classes()
            .await?
            .into_iter()
            .filter(|c| params.class.is_none_or(|want| want == c.class))
            .filter(ClassInfo::healthy)
            .collect();
        let available: u64 = classes.iter().map(|c| c.allocatable_bytes).sum();
        let largest = classes
            .iter()
            .map(|c| c.allocatable_bytes / c.extent_bytes.max(1) * c.extent_bytes.max(1))
            .max()
            .unwrap_or(0);
        Ok(csi::GetCapacityResponse {
            available_capacity: to_i64(available),
            maximum_volume_size: Some(to_i64(largest)),
            minimum_volume_size: None,
        })
    }

    #[instrument(skip_all, fields(volume_id = %req.volume_id), err)]
    pub async fn expand(
        &self,
        req: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse> {
        let id = validate::id("volume_id", &req.volume_id)?;
        let range = req
            .capacity_range
            .as_ref()
            .filter(|r| r.required_bytes > 0)
            .ok_or_else(|| {
                Error::InvalidArgument("capacity_range.required_bytes is required".into())
            })?;
        let block = match req.volume_capability.as_ref() {
            None => false,
            Some(cap) => validate::capability(cap)?.access.is_block(),
        };
        let _guard = self.locks.try_lock(id)?;
        let volume = self
            .volumes
            .find(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("volume {id:?} does not exist")))?;
        let info = self.class(volume.class).await?.ok_or_else(|| {
            Error::FailedPrecondition(format!("the {} device class is gone", volume.class))
        })?;
        let wanted = validate::capacity(Some(range), 0, info.extent_bytes)?;
        let volume = if wanted > volume.size_bytes {
            // Growth takes allocatable bytes (free − the class's reserve), like a new volume;
            // the LVM layer checks the reserve again under the VG's lock.
            if wanted - volume.size_bytes > info.allocatable_bytes {
                return Err(Error::ResourceExhausted(format!(
                    "not enough {} capacity to grow by {} bytes: {} allocatable",
                    volume.class,
                    wanted - volume.size_bytes,
                    info.allocatable_bytes
                )));
            }
            let grown = self.volumes.extend(id, wanted).await?;
            tracing::info!(bytes = grown.size_bytes, "volume extended");
            grown
        } else {
            volume
        };
        if range.limit_bytes > 0 && volume.size_bytes > range.limit_bytes.unsigned_abs() {
            return Err(Error::OutOfRange(format!(
                "volume is already {} bytes, above limit_bytes (volumes never shrink)",
                volume.size_bytes
            )));
        }
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: i64::try_from(volume.size_bytes).unwrap_or(i64::MAX),
            node_expansion_required: !block,
        })
    }
}

impl ControllerService {
    /// CreateSnapshot: the name is the snapshot id; the source must be a thin volume of this
    /// node (NotFound, FailedPrecondition for a linear one); a name taken by a snapshot of
    /// another volume is AlreadyExists; a repeat answers the same snapshot.
    #[instrument(skip_all, fields(snapshot_id = %req.name), err)]
    pub async fn create_snapshot(&self, req: csi::CreateSnapshotRequest) -> Result<csi::Snapshot> {
        let name = validate::id("name", &req.name)?;
        let source = validate::id("source_volume_id", &req.source_volume_id)?;
        request::parse_snapshot_parameters(&req.parameters)?;
        // The snapshot's name and its source volume: no DeleteVolume or second create meanwhile.
        let _snapshot = self.locks.try_lock(&snapshot_lock(name))?;
        let _source = self.locks.try_lock(source)?;
        let made = self.volumes.create_snapshot(name, source).await?;
        tracing::info!(source, bytes = made.size_bytes, "snapshot created");
        Ok(snapshot_to_csi(&made))
    }

    /// DeleteSnapshot: success when the snapshot is already gone.
    #[instrument(skip_all, fields(snapshot_id = %req.snapshot_id), err)]
    pub async fn delete_snapshot(&self, req: csi::DeleteSnapshotRequest) -> Result<()> {
        let id = validate::id("snapshot_id", &req.snapshot_id)?;
        let _guard = self.locks.try_lock(&snapshot_lock(id))?;
        self.volumes.delete_snapshot(id).await?;
        tracing::info!("snapshot deleted");
        Ok(())
    }

    /// ListSnapshots: sorted by id, filtered by snapshot id or source volume (an unknown one
    /// gives an empty list), paged like ListVolumes (a bad token is Aborted).
    #[instrument(skip_all, err)]
    pub async fn list_snapshots(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse> {
        let snapshots: Vec<SnapshotInfo> = self
            .volumes
            .snapshots()
            .await?
            .into_iter()
            .filter(|s| req.snapshot_id.is_empty() || s.id == req.snapshot_id)
            .filter(|s| req.source_volume_id.is_empty() || s.source_volume == req.source_volume_id)
            .collect();
        let ids: Vec<&str> = snapshots.iter().map(|s| s.id.as_str()).collect();
        let (range, next_token) =
            validate::page_by_token(&ids, req.max_entries, &req.starting_token)?;
        let entries = snapshots[range]
            .iter()
            .map(|s| csi::list_snapshots_response::Entry {
                snapshot: Some(snapshot_to_csi(s)),
            })
            .collect();
        Ok(csi::ListSnapshotsResponse {
            entries,
            next_token,
        })
    }
}

/// The lock key of a snapshot id (snapshot and volume ids share the lock table; CSI ids never
/// contain `/`).
fn snapshot_lock(id: &str) -> String {
    format!("snapshot/{id}")
}

fn not_confirmed(message: String) -> csi::ValidateVolumeCapabilitiesResponse {
    csi::ValidateVolumeCapabilitiesResponse {
        confirmed: None,
        message,
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by {}", names::DRIVER_NAME))
}

#[tonic::async_trait]
impl csi::controller_server::Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let volume = self.create(request.into_inner()).await?;
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        self.delete(request.into_inner()).await?;
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        Err(unimplemented("ControllerPublishVolume"))
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        Err(unimplemented("ControllerUnpublishVolume"))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        Ok(Response::new(
            self.validate_capabilities(request.into_inner()).await?,
        ))
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        Ok(Response::new(self.capacity(request.into_inner()).await?))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        let capabilities = CAPABILITIES
            .iter()
            .map(|t| csi::ControllerServiceCapability {
                r#type: Some(CapType::Rpc(Rpc { r#type: *t as i32 })),
            })
            .collect();
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let snapshot = ControllerService::create_snapshot(self, request.into_inner()).await?;
        Ok(Response::new(csi::CreateSnapshotResponse {
            snapshot: Some(snapshot),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        ControllerService::delete_snapshot(self, request.into_inner()).await?;
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        Ok(Response::new(
            ControllerService::list_snapshots(self, request.into_inner()).await?,
        ))
    }

    async fn get_snapshot(
        &self,
        _request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        Err(unimplemented("GetSnapshot"))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        Ok(Response::new(self.expand(request.into_inner()).await?))
    }

    async fn controller_get_volume(
        &self,
        _request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        Err(unimplemented("ControllerGetVolume"))
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(unimplemented("ControllerModifyVolume"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use csi::volume_capability::access_mode::Mode;
    use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
    use csi::{CapacityRange, TopologyRequirement, VolumeCapability};

    use super::*;
    use crate::csi::volumes::memory::MemVolumes;

    const MI: i64 = 1 << 20;
    const GI: u64 = 1 << 30;

    fn mount(mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    fn block() -> VolumeCapability {
        VolumeCapability {
            access_type: Some(AccessType::Block(BlockVolume {})),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        }
    }

    fn request(name: &str, class: &str, required: i64) -> csi::CreateVolumeRequest {
        csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: required,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount(Mode::SingleNodeWriter)],
            parameters: HashMap::from([(names::PARAM_DEVICE_CLASS.into(), class.into())]),
            ..Default::default()
        }
    }

    fn service(mem: MemVolumes) -> (ControllerService, Arc<MemVolumes>) {
        let mem = Arc::new(mem);
        (
            ControllerService::new("node-a", mem.clone(), VolumeLocks::new()),
            mem,
        )
    }

    fn lab() -> MemVolumes {
        MemVolumes::default()
            .with_class(DeviceClass::Nvme, 16 * GI, 0)
            .with_class(DeviceClass::Ssd, 4 * GI, 0)
    }

    fn code(e: Error) -> tonic::Code {
        Status::from(e).code()
    }

    #[tokio::test]
    async fn create_is_idempotent_by_name_and_carries_node_topology() {
        let (svc, mem) = service(lab());
        let first = svc
            .create(request("pvc-1", "nvme", GI as i64))
            .await
            .unwrap();
        assert_eq!(first.volume_id, "pvc-1");
        assert_eq!(first.capacity_bytes, GI as i64);
        assert_eq!(first.accessible_topology, vec![node_topology("node-a")]);
        assert_eq!(first.volume_context[names::PARAM_DEVICE_CLASS], "nvme");
        let again = svc
            .create(request("pvc-1", "nvme", GI as i64))
            .await
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(mem.calls(), vec![format!("create pvc-1 nvme {GI}")]);
    }

    #[tokio::test]
    async fn a_conflicting_repeat_is_already_exists_and_changes_nothing() {
        let (svc, mem) = service(lab());
        svc.create(request("pvc-1", "nvme", GI as i64))
            .await
            .unwrap();
        let other_class = svc
            .create(request("pvc-1", "ssd", GI as i64))
            .await
            .unwrap_err();
        assert_eq!(code(other_class), tonic::Code::AlreadyExists);
        let bigger = svc
            .create(request("pvc-1", "nvme", 2 * GI as i64))
            .await
            .unwrap_err();
        assert_eq!(code(bigger), tonic::Code::AlreadyExists);
        assert_eq!(mem.calls().len(), 1);
    }

    #[tokio::test]
    async fn bad_input_is_invalid_argument_with_no_state_change() {
        let (svc, mem) = service(lab());
        let mut no_class = request("pvc-x", "nvme", GI as i64);
        no_class.parameters.clear();
        let mut unknown_key = request("pvc-x", "nvme", GI as i64);
        unknown_key.parameters.insert("speed".into(), "fast".into());
        let mut multi_node = request("pvc-x", "nvme", GI as i64);
        multi_node.volume_capabilities = vec![mount(Mode::MultiNodeMultiWriter)];
        let mut no_caps = request("pvc-x", "nvme", GI as i64);
        no_caps.volume_capabilities.clear();
        let mut limit_below = request("pvc-x", "nvme", GI as i64);
        limit_below.capacity_range = Some(CapacityRange {
            required_bytes: GI as i64,
            limit_bytes: MI,
        });
        let mut clone = request("pvc-x", "nvme", GI as i64);
        clone.volume_content_source = Some(csi::VolumeContentSource::default());
        for (what, req) in [
            ("empty name", request("", "nvme", GI as i64)),
            ("unknown class", request("pvc-x", "tape", GI as i64)),
            ("negative size", request("pvc-x", "nvme", -1)),
            ("no class", no_class),
            ("unknown key", unknown_key),
            ("multi-node", multi_node),
            ("no capabilities", no_caps),
            ("limit below required", limit_below),
            ("content source", clone),
        ] {
            let err = svc.create(req).await.unwrap_err();
            assert_eq!(code(err), tonic::Code::InvalidArgument, "{what}");
        }
        assert!(mem.calls().is_empty());
        assert!(mem.volumes.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn sizes_beyond_the_class_or_the_range_are_refused() {
        let (svc, mem) = service(lab().with_class(DeviceClass::Hdd, 8 * GI, 1));
        let absurd = svc
            .create(request("a", "nvme", i64::MAX))
            .await
            .unwrap_err();
        assert_eq!(code(absurd), tonic::Code::OutOfRange);
        let too_big = svc
            .create(request("b", "ssd", 5 * GI as i64))
            .await
            .unwrap_err();
        assert_eq!(code(too_big), tonic::Code::ResourceExhausted);
        let degraded = svc
            .create(request("c", "hdd", GI as i64))
            .await
            .unwrap_err();
        assert_eq!(code(degraded), tonic::Code::ResourceExhausted);
        let (svc_no_hdd, _) = service(lab());
        let absent = svc_no_hdd
            .create(request("d", "hdd", GI as i64))
            .await
            .unwrap_err();
        assert_eq!(code(absent), tonic::Code::ResourceExhausted);
        let mut elsewhere = request("e", "nvme", GI as i64);
        elsewhere.accessibility_requirements = Some(TopologyRequirement {
            requisite: vec![node_topology("node-b")],
            preferred: vec![],
        });
        assert_eq!(
            code(svc.create(elsewhere).await.unwrap_err()),
            tonic::Code::ResourceExhausted
        );
        let mut here = request("f", "nvme", GI as i64);
        here.accessibility_requirements = Some(TopologyRequirement {
            requisite: vec![node_topology("node-b"), node_topology("node-a")],
            preferred: vec![node_topology("node-a")],
        });
        assert!(svc.create(here).await.is_ok());
        assert_eq!(mem.calls(), vec![format!("create f nvme {GI}")]);
    }

    #[tokio::test]
    async fn small_requests_meet_the_filesystem_minimum_and_whole_extents() {
        let (svc, _) = service(lab());
        let xfs = svc.create(request("xfs", "nvme", 10 * MI)).await.unwrap();
        assert_eq!(xfs.capacity_bytes, 300 * MI);
        let mut raw = request("raw", "nvme", 10 * MI);
        raw.volume_capabilities = vec![block()];
        assert_eq!(svc.create(raw).await.unwrap().capacity_bytes, 12 * MI);
        let mut xfs_capped = request("capped", "nvme", 10 * MI);
        xfs_capped.capacity_range = Some(CapacityRange {
            required_bytes: 10 * MI,
            limit_bytes: 100 * MI,
        });
        assert_eq!(
            code(svc.create(xfs_capped).await.unwrap_err()),
            tonic::Code::OutOfRange
        );
    }

    #[tokio::test]
    async fn a_second_call_for_a_busy_volume_is_aborted() {
        let mem = MemVolumes {
            create_delay: Duration::from_millis(200),
            ..lab()
        };
        let (svc, mem) = service(mem);
        let (a, b) = tokio::join!(svc.create(request("pvc-1", "nvme", GI as i64)), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            svc.create(request("pvc-1", "nvme", GI as i64)).await
        });
        assert!(a.is_ok());
        assert_eq!(code(b.unwrap_err()), tonic::Code::Aborted);
        // once the first finished, the same call succeeds
        assert!(
            svc.create(request("pvc-1", "nvme", GI as i64))
                .await
                .is_ok()
        );
        assert_eq!(mem.calls().len(), 1);
    }

    #[tokio::test]
    async fn delete_is_idempotent() {
        let (svc, mem) = service(lab());
        svc.create(request("pvc-1", "nvme", GI as i64))
            .await
            .unwrap();
        let del = |id: &str| csi::DeleteVolumeRequest {
            volume_id: id.into(),
            secrets: HashMap::new(),
        };
        svc.delete(del("pvc-1")).await.unwrap();
        svc.delete(del("pvc-1")).await.unwrap();
        svc.delete(del("never-existed")).await.unwrap();
        assert_eq!(
            code(svc.delete(del("")).await.unwrap_err()),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            mem.calls(),
            vec![
                format!("create pvc-1 nvme {GI}"),
                "remove pvc-1".to_owned(),
                "remove pvc-1".to_owned(),
                "remove never-existed".to_owned(),
            ]
        );
        let class = &mem.classes.lock().unwrap()[&DeviceClass::Nvme];
        assert_eq!(class.free_bytes, 16 * GI);
    }

    #[tokio::test]
    async fn list_pages_through_every_volume_once() {
        let (svc, _) = service(lab());
        for i in 0..5 {
            svc.create(request(&format!("pvc-{i}"), "nvme", GI as i64))
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = svc
                .list(csi::ListVolumesRequest {
                    max_entries: 2,
                    starting_token: token.clone(),
                })
                .await
                .unwrap();
            assert!(page.entries.len() <= 2);
            seen.extend(
                page.entries
                    .iter()
                    .map(|e| e.volume.as_ref().unwrap().volume_id.clone()),
            );
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
        }
        assert_eq!(seen, ["pvc-0", "pvc-1", "pvc-2", "pvc-3", "pvc-4"]);
        let bad = svc
            .list(csi::ListVolumesRequest {
                max_entries: 0,
                starting_token: "invalid-token".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(code(bad), tonic::Code::Aborted);
        let negative = svc
            .list(csi::ListVolumesRequest {
                max_entries: -1,
                starting_token: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(code(negative), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn capacity_is_per_class_and_zero_elsewhere() {
        let (svc, _) = service(lab().with_class(DeviceClass::Hdd, 8 * GI, 1));
        svc.create(request("pvc-1", "ssd", GI as i64))
            .await
            .unwrap();
        let cap = |params: &[(&str, &str)], topology: Option<Topology>| csi::GetCapacityRequest {
            volume_capabilities: vec![],
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            accessible_topology: topology,
        };
        let ssd = svc
            .capacity(cap(&[(names::PARAM_DEVICE_CLASS, "ssd")], None))
            .await
            .unwrap();
        assert_eq!(ssd.available_capacity, 3 * GI as i64);
        assert_eq!(ssd.maximum_volume_size, Some(3 * GI as i64));
        let all = svc.capacity(cap(&[], None)).await.unwrap();
        assert_eq!(
            all.available_capacity,
            19 * GI as i64,
            "degraded hdd excluded"
        );
        let degraded = svc
            .capacity(cap(&[(names::PARAM_DEVICE_CLASS, "hdd")], None))
            .await
            .unwrap();
        assert_eq!(degraded.available_capacity, 0);
        let elsewhere = svc
            .capacity(cap(&[], Some(node_topology("node-b"))))
            .await
            .unwrap();
        assert_eq!(elsewhere.available_capacity, 0);
        // no thin pool in the class: no thin capacity, and a thin create is refused naming the flag
        let thin = [
            (names::PARAM_DEVICE_CLASS, "ssd"),
            (names::PARAM_PROVISIONING, "thin"),
        ];
        assert_eq!(
            svc.capacity(cap(&thin, None))
                .await
                .unwrap()
                .available_capacity,
            0
        );
        let mut thin_req = request("pvc-thin", "ssd", GI as i64);
        thin_req
            .parameters
            .insert(names::PARAM_PROVISIONING.into(), "thin".into());
        let refused = svc.create(thin_req).await.unwrap_err();
        assert!(refused.to_string().contains("--thin-pool"), "{refused}");
        assert_eq!(code(refused), tonic::Code::ResourceExhausted);
        assert!(svc.volumes.existing("pvc-thin").await.unwrap().is_none());
        let bad = svc
            .capacity(cap(&[(names::PARAM_DEVICE_CLASS, "tape")], None))
            .await
            .unwrap_err();
        assert_eq!(code(bad), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_small_xfs_volume_is_made_at_the_xfs_minimum() {
        let (svc, mem) = service(lab());
        let v = svc
            .create(request("pvc-small", "nvme", 100 << 20))
            .await
            .unwrap();
        assert_eq!(v.capacity_bytes, csi_api::request::XFS_MIN_BYTES as i64);
        assert_eq!(
            mem.calls(),
            vec![format!(
                "create pvc-small nvme {}",
                csi_api::request::XFS_MIN_BYTES
            )]
        );
    }

    #[tokio::test]
    async fn expansion_is_admitted_against_allocatable_not_free() {
        // 20 GiB class with 10 GiB reserved: 9 GiB fits, growing it to 19 GiB does not.
        let mem = MemVolumes::default()
            .with_class(DeviceClass::Nvme, 20 * GI, 0)
            .with_reserve(DeviceClass::Nvme, 10 * GI);
        let (svc, mem) = service(mem);
        svc.create(request("pvc-1", "nvme", 9 * GI as i64))
            .await
            .unwrap();
        let grow = csi::ControllerExpandVolumeRequest {
            volume_id: "pvc-1".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 19 * GI as i64,
                limit_bytes: 0,
            }),
            ..Default::default()
        };
        let refused = svc.expand(grow).await.unwrap_err();
        assert_eq!(code(refused), tonic::Code::ResourceExhausted);
        assert_eq!(mem.calls(), vec![format!("create pvc-1 nvme {}", 9 * GI)]);
        assert_eq!(mem.volumes.lock().unwrap()["pvc-1"].size_bytes, 9 * GI);
    }

    #[tokio::test]
    async fn expand_grows_never_shrinks_and_asks_for_node_expansion_of_mounts() {
        let (svc, mem) = service(lab());
        svc.create(request("pvc-1", "nvme", GI as i64))
            .await
            .unwrap();
        let expand =
            |bytes: i64, cap: Option<VolumeCapability>| csi::ControllerExpandVolumeRequest {
                volume_id: "pvc-1".into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: bytes,
                    limit_bytes: 0,
                }),
                secrets: HashMap::new(),
                volume_capability: cap,
            };
        let grown = svc
            .expand(expand(2 * GI as i64, Some(mount(Mode::SingleNodeWriter))))
            .await
            .unwrap();
        assert_eq!(grown.capacity_bytes, 2 * GI as i64);
        assert!(grown.node_expansion_required);
        let same = svc.expand(expand(GI as i64, Some(block()))).await.unwrap();
        assert_eq!(same.capacity_bytes, 2 * GI as i64);
        assert!(!same.node_expansion_required);
        let too_big = svc.expand(expand(64 * GI as i64, None)).await.unwrap_err();
        assert_eq!(code(too_big), tonic::Code::ResourceExhausted);
        let mut missing = expand(GI as i64, None);
        missing.volume_id = "nope".into();
        assert_eq!(
            code(svc.expand(missing).await.unwrap_err()),
            tonic::Code::NotFound
        );
        let mut no_range = expand(GI as i64, None);
        no_range.capacity_range = None;
        assert_eq!(
            code(svc.expand(no_range).await.unwrap_err()),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            mem.calls(),
            vec![
                format!("create pvc-1 nvme {GI}"),
                format!("extend pvc-1 {}", 2 * GI)
            ]
        );
    }

    #[tokio::test]
    async fn validate_confirms_only_supported_capabilities_of_existing_volumes() {
        let (svc, _) = service(lab());
        svc.create(request("pvc-1", "nvme", GI as i64))
            .await
            .unwrap();
        let validate =
            |id: &str, caps: Vec<VolumeCapability>| csi::ValidateVolumeCapabilitiesRequest {
                volume_id: id.into(),
                volume_capabilities: caps,
                ..Default::default()
            };
        let ok = svc
            .validate_capabilities(validate(
                "pvc-1",
                vec![mount(Mode::SingleNodeWriter), block()],
            ))
            .await
            .unwrap();
        assert!(ok.confirmed.is_some());
        let multi = svc
            .validate_capabilities(validate("pvc-1", vec![mount(Mode::MultiNodeReaderOnly)]))
            .await
            .unwrap();
        assert!(multi.confirmed.is_none() && !multi.message.is_empty());
        let missing = svc
            .validate_capabilities(validate("nope", vec![block()]))
            .await
            .unwrap_err();
        assert_eq!(code(missing), tonic::Code::NotFound);
        let empty = svc
            .validate_capabilities(validate("pvc-1", vec![]))
            .await
            .unwrap_err();
        assert_eq!(code(empty), tonic::Code::InvalidArgument);
    }

    fn thin(mut req: csi::CreateVolumeRequest) -> csi::CreateVolumeRequest {
        req.parameters
            .insert(names::PARAM_PROVISIONING.into(), "thin".into());
        req
    }

    fn from_snapshot(mut req: csi::CreateVolumeRequest, id: &str) -> csi::CreateVolumeRequest {
        req.volume_content_source = Some(request::content_source_message(
            &ContentSource::Snapshot(id.into()),
        ));
        req
    }

    fn from_volume(mut req: csi::CreateVolumeRequest, id: &str) -> csi::CreateVolumeRequest {
        req.volume_content_source = Some(request::content_source_message(&ContentSource::Volume(
            id.into(),
        )));
        req
    }

    fn snap(name: &str, source: &str) -> csi::CreateSnapshotRequest {
        csi::CreateSnapshotRequest {
            name: name.into(),
            source_volume_id: source.into(),
            ..Default::default()
        }
    }

    /// nvme and ssd with a pool each, a thin nvme volume `pvc-t`, a linear nvme one `pvc-l`.
    async fn thin_lab() -> (ControllerService, Arc<MemVolumes>) {
        let (svc, mem) = service(
            lab()
                .with_pool(DeviceClass::Nvme, 8 * GI)
                .with_pool(DeviceClass::Ssd, 8 * GI),
        );
        svc.create(thin(request("pvc-t", "nvme", GI as i64)))
            .await
            .unwrap();
        svc.create(request("pvc-l", "nvme", GI as i64))
            .await
            .unwrap();
        (svc, mem)
    }

    #[tokio::test]
    async fn the_snapshot_and_clone_capabilities_are_advertised_but_not_get_snapshot() {
        for t in [
            RpcType::CreateDeleteSnapshot,
            RpcType::ListSnapshots,
            RpcType::CloneVolume,
        ] {
            assert!(CAPABILITIES.contains(&t), "{t:?}");
        }
        assert!(!CAPABILITIES.contains(&RpcType::GetSnapshot));
    }

    #[tokio::test]
    async fn thin_volumes_are_made_on_the_pool_and_capacity_is_what_it_may_promise() {
        let (svc, mem) = thin_lab().await;
        let t = svc.volumes.existing("pvc-t").await.unwrap().unwrap();
        assert!(t.thin && t.source.is_none());
        let cap = csi::GetCapacityRequest {
            parameters: HashMap::from([
                (names::PARAM_DEVICE_CLASS.into(), "nvme".into()),
                (names::PARAM_PROVISIONING.into(), "thin".into()),
            ]),
            ..Default::default()
        };
        let room = svc.capacity(cap).await.unwrap();
        assert_eq!(room.available_capacity, 7 * GI as i64);
        // beyond the room: ResourceExhausted, nothing made
        let big = svc
            .create(thin(request("pvc-big", "nvme", 8 * GI as i64)))
            .await
            .unwrap_err();
        assert_eq!(code(big), tonic::Code::ResourceExhausted);
        assert!(mem.volumes.lock().unwrap().get("pvc-big").is_none());
        // a repeat as linear of a thin volume: AlreadyExists
        let linear = svc
            .create(request("pvc-t", "nvme", GI as i64))
            .await
            .unwrap_err();
        assert_eq!(code(linear), tonic::Code::AlreadyExists);
    }

    #[tokio::test]
    async fn create_snapshot_follows_the_spec_and_refusals_change_nothing() {
        let (svc, mem) = thin_lab().await;
        let made = svc.create_snapshot(snap("snap-1", "pvc-t")).await.unwrap();
        assert_eq!(made.snapshot_id, "snap-1");
        assert_eq!(made.source_volume_id, "pvc-t");
        assert_eq!(made.size_bytes, GI as i64);
        assert!(made.ready_to_use);
        let t = made.creation_time.unwrap();
        assert_eq!((t.seconds, t.nanos), (1_796_256_123, 0));
        // a repeat is the same snapshot
        let again = svc.create_snapshot(snap("snap-1", "pvc-t")).await.unwrap();
        assert_eq!(again.snapshot_id, "snap-1");
        let before = mem.calls();
        for (what, req, want) in [
            ("no name", snap("", "pvc-t"), tonic::Code::InvalidArgument),
            (
                "bad name",
                snap("a/b", "pvc-t"),
                tonic::Code::InvalidArgument,
            ),
            (
                "no source",
                snap("snap-2", ""),
                tonic::Code::InvalidArgument,
            ),
            (
                "unknown source",
                snap("snap-2", "pvc-nope"),
                tonic::Code::NotFound,
            ),
            (
                "linear source",
                snap("snap-2", "pvc-l"),
                tonic::Code::FailedPrecondition,
            ),
            (
                "other source",
                snap("snap-1", "pvc-l"),
                tonic::Code::AlreadyExists,
            ),
        ] {
            let err = svc.create_snapshot(req).await.unwrap_err();
            assert_eq!(code(err), want, "{what}");
        }
        let mut param = snap("snap-2", "pvc-t");
        param.parameters.insert("speed".into(), "fast".into());
        let err = svc.create_snapshot(param).await.unwrap_err();
        assert_eq!(code(err), tonic::Code::InvalidArgument);
        assert_eq!(mem.calls(), before, "refusals make nothing");
        assert_eq!(mem.snapshots.lock().unwrap().len(), 1);
        // DeleteSnapshot: gone, then gone again (OK), unknown OK, bad id InvalidArgument
        for id in ["snap-1", "snap-1", "never"] {
            svc.delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        assert!(mem.snapshots.lock().unwrap().is_empty());
        let err = svc
            .delete_snapshot(csi::DeleteSnapshotRequest::default())
            .await
            .unwrap_err();
        assert_eq!(code(err), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn list_snapshots_filters_and_pages_in_id_order() {
        let (svc, _) = thin_lab().await;
        svc.create(thin(request("pvc-u", "nvme", GI as i64)))
            .await
            .unwrap();
        for (id, src) in [("s-c", "pvc-t"), ("s-a", "pvc-u"), ("s-b", "pvc-t")] {
            svc.create_snapshot(snap(id, src)).await.unwrap();
        }
        let list = |req: csi::ListSnapshotsRequest| {
            let svc = svc.clone();
            async move {
                let r = svc.list_snapshots(req).await?;
                Ok::<_, Error>((
                    r.entries
                        .iter()
                        .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
                        .collect::<Vec<_>>(),
                    r.next_token,
                ))
            }
        };
        let (all, next) = list(Default::default()).await.unwrap();
        assert_eq!(
            (all, next.as_str()),
            (vec!["s-a".into(), "s-b".into(), "s-c".into()], "")
        );
        let (of_t, _) = list(csi::ListSnapshotsRequest {
            source_volume_id: "pvc-t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(of_t, vec!["s-b".to_owned(), "s-c".into()]);
        let (one, _) = list(csi::ListSnapshotsRequest {
            snapshot_id: "s-c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(one, vec!["s-c".to_owned()]);
        for unknown in [
            csi::ListSnapshotsRequest {
                snapshot_id: "nope".into(),
                ..Default::default()
            },
            csi::ListSnapshotsRequest {
                source_volume_id: "nope".into(),
                ..Default::default()
            },
        ] {
            assert!(list(unknown).await.unwrap().0.is_empty());
        }
        let (first, token) = list(csi::ListSnapshotsRequest {
            max_entries: 2,
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(first, vec!["s-a".to_owned(), "s-b".into()]);
        let (rest, end) = list(csi::ListSnapshotsRequest {
            max_entries: 2,
            starting_token: token,
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!((rest, end.as_str()), (vec!["s-c".to_owned()], ""));
        let bad = list(csi::ListSnapshotsRequest {
            starting_token: "bogus".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert_eq!(code(bad), tonic::Code::Aborted);
    }

    #[tokio::test]
    async fn restores_and_clones_check_the_source_and_report_it() {
        let (svc, mem) = thin_lab().await;
        svc.create_snapshot(snap("snap-1", "pvc-t")).await.unwrap();
        let restored = svc
            .create(from_snapshot(
                thin(request("pvc-r", "nvme", 2 * GI as i64)),
                "snap-1",
            ))
            .await
            .unwrap();
        assert_eq!(restored.capacity_bytes, 2 * GI as i64);
        assert_eq!(
            restored.content_source,
            Some(request::content_source_message(&ContentSource::Snapshot(
                "snap-1".into()
            )))
        );
        // no size asked: the source's
        let mut unsized_clone = from_volume(thin(request("pvc-c", "nvme", 0)), "pvc-t");
        unsized_clone.capacity_range = None;
        let clone = svc.create(unsized_clone.clone()).await.unwrap();
        assert_eq!(clone.capacity_bytes, GI as i64);
        // repeats: the same source is the volume; another source (or none) AlreadyExists
        svc.create(unsized_clone).await.unwrap();
        let other = svc
            .create(from_snapshot(
                thin(request("pvc-c", "nvme", GI as i64)),
                "snap-1",
            ))
            .await
            .unwrap_err();
        assert_eq!(code(other), tonic::Code::AlreadyExists);
        let empty = svc
            .create(thin(request("pvc-c", "nvme", GI as i64)))
            .await
            .unwrap_err();
        assert_eq!(code(empty), tonic::Code::AlreadyExists);
        let before = mem.calls();
        let mut too_small = from_snapshot(thin(request("pvc-x", "nvme", 0)), "snap-1");
        too_small.capacity_range = Some(CapacityRange {
            required_bytes: 0,
            limit_bytes: 512 * MI,
        });
        for (what, req, want) in [
            (
                "into linear",
                from_snapshot(request("pvc-x", "nvme", GI as i64), "snap-1"),
                tonic::Code::InvalidArgument,
            ),
            (
                "across classes",
                from_snapshot(thin(request("pvc-x", "ssd", GI as i64)), "snap-1"),
                tonic::Code::InvalidArgument,
            ),
            (
                "unknown snapshot",
                from_snapshot(thin(request("pvc-x", "nvme", GI as i64)), "nope"),
                tonic::Code::NotFound,
            ),
            (
                "unknown volume",
                from_volume(thin(request("pvc-x", "nvme", GI as i64)), "nope"),
                tonic::Code::NotFound,
            ),
            (
                "linear volume",
                from_volume(thin(request("pvc-x", "nvme", GI as i64)), "pvc-l"),
                tonic::Code::FailedPrecondition,
            ),
            ("too small", too_small, tonic::Code::OutOfRange),
        ] {
            let err = svc.create(req).await.unwrap_err();
            assert_eq!(code(err), want, "{what}");
        }
        assert_eq!(mem.calls(), before, "refusals make nothing");
        assert!(mem.volumes.lock().unwrap().get("pvc-x").is_none());
        // a source volume busy with another call: Aborted (the CO retries), nothing made
        let busy = svc.locks.try_lock("pvc-t").unwrap();
        let err = svc
            .create(from_volume(
                thin(request("pvc-y", "nvme", GI as i64)),
                "pvc-t",
            ))
            .await
            .unwrap_err();
        assert_eq!(code(err), tonic::Code::Aborted);
        drop(busy);
        assert_eq!(mem.calls(), before);
    }
}
