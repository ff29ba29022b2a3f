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
use super::volumes::{ClassInfo, VolumeInfo, Volumes};
use crate::lvm::LvmError;
use csi_api::volume_lock::VolumeLocks;

/// The Controller service of one standalone node.
#[derive(Clone)]
pub struct ControllerService {
    node: String,
    volumes: Arc<dyn Volumes>,
    locks: VolumeLocks,
}

/// The capabilities this service implements.
pub const CAPABILITIES: [RpcType; 4] = [
    RpcType::CreateDeleteVolume,
    RpcType::ListVolumes,
    RpcType::GetCapacity,
    RpcType::ExpandVolume,
];

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
            content_source: None,
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
        if params.provisioning == names::Provisioning::Thin {
            // Thin volumes are made by the Kubernetes-mode reconciler; this standalone service
            // would otherwise make a linear volume the request did not ask for.
            return Err(Error::InvalidArgument(format!(
                "{}: thin is served in Kubernetes mode only; standalone mode makes linear volumes",
                names::PARAM_PROVISIONING
            )));
        }
        if req.volume_content_source.is_some() {
            return Err(Error::InvalidArgument(
                "volume_content_source is not supported (no snapshots or clones)".into(),
            ));
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
            return self.reuse(&existing, class, &req, min_bytes, &params).await;
        }

        if !self.topology_allows(req.accessibility_requirements.as_ref()) {
            return Err(Error::ResourceExhausted(format!(
                "accessibility_requirements exclude node {:?}, the only node this plugin serves",
                self.node
            )));
        }
        let bytes = self
            .admit(class, req.capacity_range.as_ref(), min_bytes)
            .await?;
        let created = match self.volumes.create(name, class, bytes).await {
            Ok(created) => created,
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                // An LV of the name that the look-up did not know: compare it like any other.
                return match self.volumes.locate(name).await? {
                    Some(existing) => self.reuse(&existing, class, &req, min_bytes, &params).await,
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
    ) -> Result<Volume> {
        let name = existing.id.as_str();
        if existing.class != class {
            return Err(Error::AlreadyExists(format!(
                "volume {name:?} exists in class {} (requested {class})",
                existing.class
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
        let (range, next_token) = validate::page(&ids, req.max_entries, &req.starting_token)?;
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
        // Standalone mode serves no thin volumes (see `create`): no thin capacity.
        if elsewhere || params.provisioning == names::Provisioning::Thin {
            return Ok(zero);
        }
        if validate::capabilities(&req.volume_capabilities).is_err()
            && !req.volume_capabilities.is_empty()
        {
            return Ok(zero);
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
        let to_i64 = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
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
        _request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        Err(unimplemented("CreateSnapshot"))
    }

    async fn delete_snapshot(
        &self,
        _request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        Err(unimplemented("DeleteSnapshot"))
    }

    async fn list_snapshots(
        &self,
        _request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        Err(unimplemented("ListSnapshots"))
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
        // standalone mode makes no thin volumes: no thin capacity, and a thin create is refused
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
        assert_eq!(code(refused), tonic::Code::InvalidArgument);
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
}
