//! The CSI Controller logic for Kubernetes mode, over the [`Cluster`] seam: validate → look up by
//! name → compare (AlreadyExists on mismatch) → admit on the node (serialised per node) → create
//! the LogicalVolume → wait for the node's agent to make it Ready within the call's deadline.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use csi_api::capacity::{
    ClassBytes, NodeCapacity, Pool, pending_from_volumes, pool_total, selected_claim_counts,
    volume_name_for_claim,
};
use csi_api::crd::{
    LogicalVolume, LogicalVolumePhase, LogicalVolumeSpec, NodeStorage, PvcReference, SourceKind,
    VolumeSource,
};
use csi_api::csi;
use csi_api::names::{self, DeviceClass, Placement, Provisioning};
use csi_api::placement::{self, Demand};
use csi_api::request::{self, Access, ContentSource, VolumeParameters};
use csi_api::volume_lock::{VolumeGuard, VolumeLocks};
use kube::api::ObjectMeta;
use tracing::{info, warn};

use crate::cluster::{Cluster, ClusterError, SelectedClaim};
use crate::error::Error;
use crate::gate::NodeGate;
use crate::object_name::{ANNOTATION_CSI_NAME, object_name};

/// What `admit_and_create` did on the node it admitted the volume on.
enum Admitted {
    Created(Box<LogicalVolume>),
    /// The create conflicted: an object of that name exists (made by another replica or an
    /// earlier call the cache has not seen yet).
    Exists,
}

pub use csi_api::names::REASON_INSUFFICIENT_SPACE;

/// Settings of the controller service.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Placement for classes whose StorageClass does not say.
    pub default_placement: Placement,
    /// Longest wait for the agent, whatever the caller's deadline.
    pub max_wait: Duration,
    /// A NodeStorage whose `status.updatedAt` is older than this is stale: its node takes no new
    /// volumes and reports no capacity. `None` disables the check.
    pub stale_after: Option<Duration>,
}

/// See the module documentation.
pub struct ControllerService<C> {
    cluster: Arc<C>,
    settings: Settings,
    volumes: VolumeLocks,
    nodes: NodeGate,
}

/// The fields of a request to create a volume, validated.
struct CreateRequest {
    /// The CSI name, as the CO sent it.
    name: String,
    /// The LogicalVolume's name ([`object_name`] of `name`).
    object: String,
    params: VolumeParameters,
    access: Access,
    size: u64,
    limit: u64,
    required: u64,
    nodes: Vec<String>,
    /// What the volume starts from (a restore or a clone), if anything.
    source: Option<ContentSource>,
}

impl<C: Cluster> ControllerService<C> {
    pub fn new(cluster: Arc<C>, settings: Settings) -> Self {
        ControllerService {
            cluster,
            settings,
            volumes: VolumeLocks::default(),
            nodes: NodeGate::default(),
        }
    }

    fn enter(&self, name: &str) -> Result<VolumeGuard, Error> {
        self.volumes
            .try_lock(name)
            .map_err(|busy| Error::Aborted(busy.to_string()))
    }

    /// Whether the API server answers.
    pub async fn probe(&self) -> Result<(), Error> {
        self.cluster
            .node_storages()
            .await
            .map(drop)
            .map_err(Error::from)
    }

    /// Why `storage` cannot be trusted now (its agent stopped publishing), if so.
    fn stale(&self, storage: &NodeStorage) -> Option<String> {
        let limit = self.settings.stale_after?;
        let updated = storage.status.as_ref()?.updated_at.as_ref()?.0;
        let age = k8s_openapi::jiff::Timestamp::now().duration_since(updated);
        let age = Duration::try_from(age).unwrap_or_default();
        (age > limit).then(|| {
            format!(
                "NodeStorage is stale (last published {}s ago, limit {}s): is the csi-agent running on this node?",
                age.as_secs(),
                limit.as_secs()
            )
        })
    }

    pub async fn create_volume(
        &self,
        req: csi::CreateVolumeRequest,
        wait: Duration,
    ) -> Result<csi::Volume, Error> {
        let req = validate_create(req)?;
        let _guard = self.enter(&req.object)?;
        let wait = wait.min(self.settings.max_wait);
        if let Some(source) = req.source.clone() {
            return self.create_from_source(req, source, wait).await;
        }

        // The watched cache answers a repeat without a request. A miss is not confirmed with a
        // GET: the create below conflicts if another replica made the object moments ago, and
        // only then (or when admission refuses) is the API server asked.
        if let Some(existing) = self.cluster.cached_logical_volume(&req.object).await? {
            check_same_volume(&existing, &req)?;
            return self.await_ready(existing, wait, &req.access).await;
        }
        let lv = match self.admit_and_create(&req).await {
            Ok(Admitted::Created(lv)) => {
                csi_api::fault::point("controller.create.after-object");
                info!(volume = %req.name, object = %req.object, node = %lv.spec.node_name, size = req.size, class = %req.params.device_class, "LogicalVolume created");
                *lv
            }
            Ok(Admitted::Exists) => self.existing_after_miss(&req).await?.ok_or_else(|| {
                Error::Aborted(format!(
                    "LogicalVolume {} was created and deleted concurrently; retry",
                    req.object
                ))
            })?,
            Err(refused) => match self.existing_after_miss(&req).await? {
                Some(existing) => existing,
                None => return Err(refused),
            },
        };
        self.await_ready(lv, wait, &req.access).await
    }

    /// The object of a request the cache did not know, read from the API server and compared
    /// with the request (AlreadyExists on a mismatch); `None` if it does not exist.
    async fn existing_after_miss(
        &self,
        req: &CreateRequest,
    ) -> Result<Option<LogicalVolume>, Error> {
        let Some(existing) = self.cluster.logical_volume(&req.object).await? else {
            return Ok(None);
        };
        check_same_volume(&existing, req)?;
        Ok(Some(existing))
    }

    /// Picks the node (the first candidate that fits; with no candidates, the best by placement),
    /// admits under that node's gate and creates the object. Capacity and pending demand are read
    /// only once the node's turn is held, so that no create admitted before ours is missed.
    async fn admit_and_create(&self, req: &CreateRequest) -> Result<Admitted, Error> {
        let pool = Pool::new(req.params.device_class, req.params.provisioning);
        let demand = ClassBytes::from([(pool, req.size)]);
        let candidates = if req.nodes.is_empty() {
            self.rank_nodes(req).await?
        } else {
            req.nodes.clone()
        };
        let mut refusals = Vec::new();
        for node in candidates {
            let _turn = self.nodes.enter(&node).await;
            let Some(storage) = self.cluster.node_storage(&node).await? else {
                refusals.push(format!(
                    "{node}: no NodeStorage (is the csi-agent running there?)"
                ));
                continue;
            };
            if let Some(stale) = self.stale(&storage) {
                refusals.push(format!("{node}: {stale}"));
                continue;
            }
            let capacity = self.node_capacity(&storage, &node, &req.object).await?;
            if let Err(shortfall) = capacity.check(&demand) {
                refusals.push(format!("{node}: {shortfall}"));
                continue;
            }
            let lv = new_volume(req, &node);
            csi_api::fault::point("controller.create.before-object");
            return Ok(match self.cluster.create_logical_volume(&lv).await? {
                Some(created) => Admitted::Created(Box::new(created)),
                None => Admitted::Exists,
            });
        }
        if refusals.is_empty() {
            refusals.push("no node has a NodeStorage".into());
        }
        Err(Error::ResourceExhausted(format!(
            "no room for {} bytes of {pool}: {}",
            req.size,
            refusals.join("; ")
        )))
    }

    /// Capacity of `node` for new volumes (see [`capacity_of`]).
    async fn node_capacity(
        &self,
        storage: &NodeStorage,
        node: &str,
        creating: &str,
    ) -> Result<NodeCapacity, ClusterError> {
        let volumes = self.cluster.logical_volumes_on(node).await?;
        let claims = self.cluster.selected_claims(node).await?;
        Ok(capacity_of(storage, node, &volumes, &claims, creating))
    }

    /// The capacity of every non-stale node, from one read of the volumes and claims (not one
    /// per node).
    async fn all_capacities(
        &self,
        storages: &[NodeStorage],
        creating: &str,
    ) -> Result<Vec<(String, NodeCapacity)>, ClusterError> {
        let mut volumes: HashMap<String, Vec<LogicalVolume>> = HashMap::new();
        for lv in self.cluster.logical_volumes().await? {
            volumes
                .entry(lv.spec.node_name.clone())
                .or_default()
                .push(lv);
        }
        let claims = self.cluster.selected_claims_by_node().await?;
        let mut capacities = Vec::new();
        for storage in storages {
            let Some(node) = storage.metadata.name.clone() else {
                continue;
            };
            if self.stale(storage).is_some() {
                continue;
            }
            let cap = capacity_of(
                storage,
                &node,
                volumes.get(&node).map_or(&[][..], Vec::as_slice),
                claims.get(&node).map_or(&[][..], Vec::as_slice),
                creating,
            );
            capacities.push((node, cap));
        }
        Ok(capacities)
    }

    /// All nodes ordered by the class's placement, best first (Immediate binding). A first guess
    /// only: each candidate is admitted afresh under its node's lock.
    async fn rank_nodes(&self, req: &CreateRequest) -> Result<Vec<String>, Error> {
        let storages = self.cluster.node_storages().await?;
        let mut capacities = self.all_capacities(&storages, &req.object).await?;
        let placement = req
            .params
            .placement
            .unwrap_or(self.settings.default_placement);
        let mut demand = Demand::new();
        let pool = Pool::new(req.params.device_class, req.params.provisioning);
        demand.add(pool, placement, req.size);
        let mut ranked = Vec::new();
        while !capacities.is_empty() {
            let view: Vec<(&str, &NodeCapacity)> =
                capacities.iter().map(|(n, c)| (n.as_str(), c)).collect();
            let Some(i) = placement::best(&view, &demand) else {
                break;
            };
            ranked.push(capacities.remove(i).0);
        }
        Ok(ranked)
    }

    /// Waits for the agent: Ready → the CSI volume; Failed for space → the object is deleted and
    /// the caller told ResourceExhausted, so that a retry is admitted afresh.
    async fn await_ready(
        &self,
        lv: LogicalVolume,
        wait: Duration,
        access: &Access,
    ) -> Result<csi::Volume, Error> {
        let ready = self.await_settled(lv, wait, "volume").await?;
        Ok(to_csi_volume(&ready, access))
    }

    /// Waits until the agent settles `lv` (a volume or a snapshot, `what` in messages): the
    /// object once Ready; once Failed it is deleted (never made: nothing to protect) and the
    /// caller told ResourceExhausted (no room) or Internal, so that a retry starts afresh.
    pub(crate) async fn await_settled(
        &self,
        lv: LogicalVolume,
        wait: Duration,
        what: &str,
    ) -> Result<LogicalVolume, Error> {
        let name = lv.metadata.name.clone().unwrap_or_default();
        let settled = |lv: Option<&LogicalVolume>| {
            lv.is_none_or(|lv| {
                matches!(
                    lv.status.as_ref().and_then(|s| s.phase),
                    Some(LogicalVolumePhase::Ready | LogicalVolumePhase::Failed)
                )
            })
        };
        let (current, done) = self
            .cluster
            .wait_logical_volume(&name, &settled, wait)
            .await?;
        let Some(current) = current else {
            return Err(Error::Aborted(format!(
                "LogicalVolume {name} was deleted while being created"
            )));
        };
        if !done {
            return Err(Error::DeadlineExceeded(format!(
                "waiting for node {} to create {what} {name}; the call can be retried",
                current.spec.node_name
            )));
        }
        let status = current.status.clone().unwrap_or_default();
        match status.phase {
            Some(LogicalVolumePhase::Ready) => Ok(current),
            _ => {
                let message = status.message.unwrap_or_default();
                warn!(object = %name, node = %current.spec.node_name, reason = ?status.reason, %message, "agent failed the {what}; deleting it");
                // Never made: nothing to protect, nothing for a PV to refer to (a snapshot never
                // carries the protection: no request for it).
                if kube::ResourceExt::finalizers(&current)
                    .iter()
                    .any(|f| f == names::FINALIZER_PV_PROTECTION)
                {
                    self.cluster.release_protection(&name).await?;
                }
                self.cluster.delete_logical_volume(&name).await?;
                Err(Error::agent_failed(
                    status.reason.as_deref(),
                    &current.spec.node_name,
                    what,
                    &name,
                    &message,
                ))
            }
        }
    }

    /// The CO's DeleteVolume for the volume's PV: the one path that releases the
    /// `strata.io/pv-protection` finalizer before deleting, so that the agent may wipe.
    pub async fn delete_volume(&self, req: csi::DeleteVolumeRequest) -> Result<(), Error> {
        request::check_id("volume_id", &req.volume_id)?;
        let object = object_name(&req.volume_id);
        let _guard = self.enter(&object)?;
        // A snapshot id is not a volume id: DeleteVolume never removes a snapshot.
        if let Some(lv) = self.cluster.logical_volume(&object).await?
            && lv.spec.is_snapshot()
        {
            return Err(Error::InvalidArgument(format!(
                "{} is a snapshot, not a volume: delete it with DeleteSnapshot",
                req.volume_id
            )));
        }
        csi_api::fault::point("controller.delete.before-delete");
        self.cluster.release_protection(&object).await?;
        self.cluster.delete_logical_volume(&object).await?;
        csi_api::fault::point("controller.delete.after-delete");
        info!(volume = %req.volume_id, %object, "LogicalVolume deletion requested");
        Ok(())
    }

    pub async fn expand_volume(
        &self,
        req: csi::ControllerExpandVolumeRequest,
        wait: Duration,
    ) -> Result<csi::ControllerExpandVolumeResponse, Error> {
        request::check_id("volume_id", &req.volume_id)?;
        let new_size = request::size_for_range(req.capacity_range.as_ref())?;
        let node_expansion_required = match req.volume_capability.as_ref() {
            Some(cap) => matches!(request::check_capability(cap)?, Access::Mount { .. }),
            None => true,
        };
        let wait = wait.min(self.settings.max_wait);
        let object = object_name(&req.volume_id);
        let _guard = self.enter(&object)?;
        let lv = self
            .cluster
            .logical_volume(&object)
            .await?
            .filter(|lv| !lv.spec.is_snapshot())
            .ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        let current = lv.spec.size_bytes;
        if new_size > current {
            let node = lv.spec.node_name.clone();
            // The growth is admitted like a create: capacity and pending demand (including other
            // volumes' growth) read under the node's turn.
            let _turn = self.nodes.enter(&node).await;
            let storage = self.cluster.node_storage(&node).await?.ok_or_else(|| {
                Error::FailedPrecondition(format!("node {node} has no NodeStorage"))
            })?;
            if let Some(stale) = self.stale(&storage) {
                return Err(Error::ResourceExhausted(format!(
                    "cannot grow {} on {node}: {stale}",
                    req.volume_id
                )));
            }
            let capacity = self.node_capacity(&storage, &node, &object).await?;
            // A thin volume's growth is a promise on the class's thin pool.
            let pool = Pool::new(
                lv.spec.device_class,
                lv.spec.provisioning.unwrap_or_default(),
            );
            let growth = ClassBytes::from([(pool, new_size - current)]);
            capacity.check(&growth).map_err(|s| {
                Error::ResourceExhausted(format!("cannot grow {} on {node}: {s}", req.volume_id))
            })?;
            csi_api::fault::point("controller.expand.before-resize");
            self.cluster
                .resize_logical_volume(&object, new_size)
                .await?;
            csi_api::fault::point("controller.expand.after-resize");
        }
        let target = new_size.max(current);
        let grown = move |lv: Option<&LogicalVolume>| {
            lv.is_none_or(|lv| {
                let status = lv.status.as_ref();
                status.and_then(|s| s.current_size_bytes).unwrap_or(0) >= target
                    || status.and_then(|s| s.reason.as_deref()) == Some(REASON_INSUFFICIENT_SPACE)
            })
        };
        let (now, done) = self
            .cluster
            .wait_logical_volume(&object, &grown, wait)
            .await?;
        let now =
            now.ok_or_else(|| Error::NotFound(format!("volume {} was deleted", req.volume_id)))?;
        let status = now.status.unwrap_or_default();
        let size = status.current_size_bytes.unwrap_or(0);
        if size >= target {
            return Ok(csi::ControllerExpandVolumeResponse {
                capacity_bytes: size as i64,
                node_expansion_required,
            });
        }
        if done {
            return Err(Error::ResourceExhausted(format!(
                "node {} could not grow {}: {}",
                now.spec.node_name,
                req.volume_id,
                status.message.unwrap_or_default()
            )));
        }
        Err(Error::DeadlineExceeded(format!(
            "waiting for node {} to grow {}; the call can be retried",
            now.spec.node_name, req.volume_id
        )))
    }

    pub async fn get_capacity(
        &self,
        req: csi::GetCapacityRequest,
    ) -> Result<csi::GetCapacityResponse, Error> {
        let class = match req.parameters.get(names::PARAM_DEVICE_CLASS) {
            Some(c) => Some(
                c.parse::<DeviceClass>()
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?,
            ),
            None => None,
        };
        // Thin parameters ask what a new thin volume may still be promised.
        let provisioning = match req.parameters.get(names::PARAM_PROVISIONING) {
            Some(p) => p
                .parse::<Provisioning>()
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
            None => Provisioning::Linear,
        };
        let node = req
            .accessible_topology
            .as_ref()
            .and_then(|t| t.segments.get(names::TOPOLOGY_KEY))
            .cloned();
        let capacities = match node.as_deref() {
            Some(n) => match self.cluster.node_storage(n).await? {
                Some(storage) if self.stale(&storage).is_none() => {
                    vec![(n.to_owned(), self.node_capacity(&storage, n, "").await?)]
                }
                _ => Vec::new(),
            },
            None => {
                let storages = self.cluster.node_storages().await?;
                self.all_capacities(&storages, "").await?
            }
        };
        let (mut total, mut largest) = (0u64, 0u64);
        for (_, capacity) in &capacities {
            for (c, cap) in &capacity.classes {
                if class.is_some_and(|want| want != *c) || !cap.healthy {
                    continue;
                }
                // Thin: promisable minus pending thin demand; 0 without a pool or when Full.
                let available = match provisioning {
                    Provisioning::Linear => cap.available(),
                    Provisioning::Thin => cap.thin.filter(|t| !t.full).map_or(0, |t| t.available()),
                };
                total = total.saturating_add(available);
                largest = largest.max(available);
            }
        }
        Ok(csi::GetCapacityResponse {
            available_capacity: clamp_i64(total),
            maximum_volume_size: Some(clamp_i64(largest)),
            minimum_volume_size: None,
        })
    }

    pub async fn validate_capabilities(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse, Error> {
        request::check_id("volume_id", &req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::InvalidArgument(
                "volume_capabilities must not be empty".into(),
            ));
        }
        let object = object_name(&req.volume_id);
        let volume = self.cluster.logical_volume(&object).await?;
        if volume.is_none_or(|lv| lv.spec.is_snapshot()) {
            return Err(Error::NotFound(format!(
                "volume {} does not exist",
                req.volume_id
            )));
        }
        Ok(
            match request::check_capabilities(&req.volume_capabilities) {
                Ok(_) => csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                        volume_context: req.volume_context,
                        volume_capabilities: req.volume_capabilities,
                        parameters: req.parameters,
                        mutable_parameters: req.mutable_parameters,
                    }),
                    message: String::new(),
                },
                Err(e) => csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: e.to_string(),
                },
            },
        )
    }
}

/// Capacity of `node` for new volumes: reported allocatable (linear) and thin promisable minus
/// the demand of each it does not reflect yet (volumes not made or not yet published, growth
/// asked for, credible claims scheduled there without a volume, except `creating`'s own).
fn capacity_of(
    storage: &NodeStorage,
    node: &str,
    volumes: &[LogicalVolume],
    claims: &[SelectedClaim],
    creating: &str,
) -> NodeCapacity {
    let published = storage.status.as_ref().and_then(|s| s.capacity_sequence);
    let mut pending = pending_from_volumes(volumes, node, published);
    let status = storage.status.clone().unwrap_or_default();
    let reported = NodeCapacity::from_status(&status);
    for claim in claims {
        let volume = volume_name_for_claim(&claim.uid);
        if volume == creating
            || volumes
                .iter()
                .any(|lv| lv.metadata.name.as_deref() == Some(volume.as_str()))
        {
            continue;
        }
        let pool = Pool::new(claim.class, claim.provisioning);
        let pool_size = pool_total(&reported, pool);
        if !selected_claim_counts(claim.valid, claim.pod_on_node, claim.bytes, pool_size) {
            continue;
        }
        csi_api::capacity::add_class_bytes(&mut pending, pool, claim.bytes);
    }
    reported.with_pending(&pending)
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn validate_create(req: csi::CreateVolumeRequest) -> Result<CreateRequest, Error> {
    request::check_id("name", &req.name)?;
    let params = VolumeParameters::try_from(&req.parameters)?;
    let access = request::check_capabilities(&req.volume_capabilities)?;
    let source = request::content_source(req.volume_content_source.as_ref())?;
    let size = request::size_for_volume(req.capacity_range.as_ref(), &access)?;
    let (required, limit) = req
        .capacity_range
        .map(|r| (r.required_bytes.max(0) as u64, r.limit_bytes.max(0) as u64))
        .unwrap_or((0, 0));
    let nodes = request::candidate_nodes(req.accessibility_requirements.as_ref());
    Ok(CreateRequest {
        object: object_name(&req.name),
        name: req.name,
        params,
        access,
        size,
        limit,
        required,
        nodes,
        source,
    })
}

/// A repeat of CreateVolume must describe the volume that exists.
fn check_same_volume(existing: &LogicalVolume, req: &CreateRequest) -> Result<(), Error> {
    let spec = &existing.spec;
    let mut differences = Vec::new();
    if spec.is_snapshot() {
        differences.push(format!("object {} is a snapshot", req.object));
    }
    let wanted = req.source.as_ref().map(volume_source);
    if spec.source != wanted {
        differences.push(format!(
            "source {} ≠ {}",
            describe_source(spec.source.as_ref()),
            describe_source(wanted.as_ref())
        ));
    }
    let recorded = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_CSI_NAME));
    if recorded.is_some_and(|n| *n != req.name) {
        differences.push(format!(
            "object {} belongs to CSI name {:?}",
            req.object,
            recorded.map(String::as_str).unwrap_or_default()
        ));
    }
    if spec.device_class != req.params.device_class {
        differences.push(format!(
            "device class {} ≠ {}",
            spec.device_class, req.params.device_class
        ));
    }
    let provisioning = spec.provisioning.unwrap_or_default();
    if provisioning != req.params.provisioning {
        differences.push(format!(
            "provisioning {provisioning} ≠ {}",
            req.params.provisioning
        ));
    }
    if spec.size_bytes < req.required || (req.limit != 0 && spec.size_bytes > req.limit) {
        differences.push(format!(
            "size {} outside the requested range",
            spec.size_bytes
        ));
    }
    if !req.nodes.is_empty() && !req.nodes.contains(&spec.node_name) {
        differences.push(format!(
            "node {} not in the requested topology",
            spec.node_name
        ));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Error::AlreadyExists(format!(
            "volume {} exists with a different spec: {}",
            req.name,
            differences.join(", ")
        )))
    }
}

/// The metadata of a LogicalVolume the controller makes: its object name, the node and class
/// labels, the CSI name it was asked under, and its finalizers.
pub(crate) fn object_meta(
    object: &str,
    csi_name: &str,
    node: &str,
    class: DeviceClass,
    finalizers: &[&str],
) -> ObjectMeta {
    ObjectMeta {
        name: Some(object.to_owned()),
        labels: Some(BTreeMap::from([
            (names::LABEL_NODE.to_owned(), node.to_owned()),
            (
                names::LABEL_DEVICE_CLASS.to_owned(),
                class.as_str().to_owned(),
            ),
        ])),
        annotations: Some(BTreeMap::from([(
            ANNOTATION_CSI_NAME.to_owned(),
            csi_name.to_owned(),
        )])),
        finalizers: Some(finalizers.iter().map(|f| (*f).to_owned()).collect()),
        ..Default::default()
    }
}

fn new_volume(req: &CreateRequest, node: &str) -> LogicalVolume {
    let pvc = match (&req.params.pvc_namespace, &req.params.pvc_name) {
        (Some(namespace), Some(name)) => Some(PvcReference {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: req.name.strip_prefix("pvc-").unwrap_or_default().to_owned(),
        }),
        _ => None,
    };
    LogicalVolume {
        // `strata.io/lv`: the agent removes it once the LV is gone; `strata.io/pv-protection`:
        // only DeleteVolume (or housekeeping, once no PV refers to the volume) removes it, and
        // the agent never wipes while it is present.
        metadata: object_meta(
            &req.object,
            &req.name,
            node,
            req.params.device_class,
            &[names::FINALIZER, names::FINALIZER_PV_PROTECTION],
        ),
        spec: LogicalVolumeSpec {
            node_name: node.to_owned(),
            device_class: req.params.device_class,
            size_bytes: req.size,
            pvc,
            source: req.source.as_ref().map(volume_source),
            role: None,
            volume_snapshot: None,
            wipe: req.params.wipe.clone(),
            // Absent for linear, so that linear objects stay as they were before thin existed.
            provisioning: (req.params.provisioning == Provisioning::Thin)
                .then_some(Provisioning::Thin),
        },
        status: None,
    }
}

fn to_csi_volume(lv: &LogicalVolume, access: &Access) -> csi::Volume {
    let size = lv.current_size_bytes();
    let mut context = std::collections::HashMap::from([(
        names::PARAM_DEVICE_CLASS.to_owned(),
        lv.spec.device_class.as_str().to_owned(),
    )]);
    if let Access::Mount { fs_type, .. } = access {
        context.insert(names::PARAM_FS_TYPE.to_owned(), fs_type.clone());
    }
    csi::Volume {
        capacity_bytes: clamp_i64(size),
        volume_id: lv.metadata.name.clone().unwrap_or_default(),
        volume_context: context,
        content_source: lv.spec.source.as_ref().map(content_source_of),
        accessible_topology: vec![csi::Topology {
            segments: [(names::TOPOLOGY_KEY.to_owned(), lv.spec.node_name.clone())].into(),
        }],
    }
}

/// The `spec.source` of a volume made from `source` (its object name is the id).
fn volume_source(source: &ContentSource) -> VolumeSource {
    match source {
        ContentSource::Snapshot(id) => VolumeSource {
            kind: SourceKind::Snapshot,
            name: object_name(id),
        },
        ContentSource::Volume(id) => VolumeSource {
            kind: SourceKind::Volume,
            name: object_name(id),
        },
    }
}

/// The CSI `content_source` of a volume with `spec.source` (ids are object names).
fn content_source_of(source: &VolumeSource) -> csi::VolumeContentSource {
    request::content_source_message(&match source.kind {
        SourceKind::Snapshot => ContentSource::Snapshot(source.name.clone()),
        SourceKind::Volume => ContentSource::Volume(source.name.clone()),
    })
}

fn describe_source(source: Option<&VolumeSource>) -> String {
    match source {
        None => "none".into(),
        Some(s) => format!("{:?} {}", s.kind, s.name),
    }
}

mod content_source;
#[cfg(test)]
mod snapshot_tests;
mod snapshots;
#[cfg(test)]
mod tests;
