//! CreateVolume from a `volume_content_source`: a restore (of a snapshot) or a clone (of a
//! volume). The source must exist, be Ready and thin; the new volume stays in the source's class
//! and thin pool and on its node (a thin snapshot shares the pool's chunks). There is no capacity
//! admission against NodeStorage here: the node is fixed by the source and the agent admits the
//! new LV under its VG mutex (docs/architecture.md "Snapshots, restores and clones"); creates on
//! one node are still serialised by the node's turn.

use std::time::Duration;

use csi_api::crd::{LogicalVolume, LogicalVolumePhase};
use csi_api::csi;
use csi_api::names::Provisioning;
use csi_api::request::{self, ContentSource};

use super::{CreateRequest, check_same_volume, new_volume};
use crate::cluster::Cluster;
use crate::error::Error;
use crate::object_name::object_name;
use crate::service::ControllerService;

impl<C: Cluster> ControllerService<C> {
    /// See the module documentation. The caller holds the volume's guard.
    pub(super) async fn create_from_source(
        &self,
        mut req: CreateRequest,
        source: ContentSource,
        wait: Duration,
    ) -> Result<csi::Volume, Error> {
        // A repeat is answered from what exists (even if its source is gone since).
        if let Some(existing) = self.cluster.cached_logical_volume(&req.object).await? {
            check_same_volume(&existing, &req)?;
            return self.await_ready(existing, wait, &req.access).await;
        }
        let origin = self.source_object(&source).await?;
        check_source(&origin, &source, &req)?;
        let source_bytes = origin.current_size_bytes();
        let range = csi::CapacityRange {
            required_bytes: i64::try_from(req.required).unwrap_or(i64::MAX),
            limit_bytes: i64::try_from(req.limit).unwrap_or(i64::MAX),
        };
        req.size = request::size_from_source(Some(&range), source_bytes, &source)?;
        let node = origin.spec.node_name.clone();
        let created = {
            let _turn = self.nodes.enter(&node).await;
            self.cluster
                .create_logical_volume(&new_volume(&req, &node))
                .await?
        };
        let lv = match created {
            Some(lv) => {
                tracing::info!(volume = %req.name, object = %req.object, %node, size = req.size, source = source.id(), "LogicalVolume created from a source");
                lv
            }
            None => self.existing_after_miss(&req).await?.ok_or_else(|| {
                Error::Aborted(format!(
                    "LogicalVolume {} was created and deleted concurrently; retry",
                    req.object
                ))
            })?,
        };
        self.await_ready(lv, wait, &req.access).await
    }

    /// The LogicalVolume `source` names, of the kind it names (a snapshot id never finds a
    /// volume, nor the reverse), Ready and not being deleted.
    pub(super) async fn source_object(
        &self,
        source: &ContentSource,
    ) -> Result<LogicalVolume, Error> {
        let (kind, want_snapshot) = match source {
            ContentSource::Snapshot(_) => ("snapshot", true),
            ContentSource::Volume(_) => ("volume", false),
        };
        let object = object_name(source.id());
        let origin = self
            .cluster
            .logical_volume(&object)
            .await?
            .filter(|lv| {
                lv.spec.is_snapshot() == want_snapshot && lv.metadata.deletion_timestamp.is_none()
            })
            .ok_or_else(|| {
                Error::NotFound(format!("source {kind} {} does not exist", source.id()))
            })?;
        let phase = origin.status.as_ref().and_then(|s| s.phase);
        if phase != Some(LogicalVolumePhase::Ready) {
            return Err(Error::Unavailable(format!(
                "source {kind} {} is not Ready yet (phase {phase:?}); retry",
                source.id()
            )));
        }
        Ok(origin)
    }
}

/// Whether a volume may be made from `origin` as `req` asks: the origin must be thin
/// (FailedPrecondition), the StorageClass must be thin and of the origin's class
/// (InvalidArgument), and the requested topology must allow the origin's node
/// (ResourceExhausted, so that the provisioner reschedules).
fn check_source(
    origin: &LogicalVolume,
    source: &ContentSource,
    req: &CreateRequest,
) -> Result<(), Error> {
    if !origin.spec.is_thin() {
        return Err(Error::FailedPrecondition(format!(
            "{} is a linear volume: only thin volumes can be restored from or cloned (use a thin \
             StorageClass, strata.io/provisioning: thin)",
            source.id()
        )));
    }
    if req.params.device_class != origin.spec.device_class
        || req.params.provisioning != Provisioning::Thin
    {
        return Err(Error::InvalidArgument(format!(
            "a restore/clone stays in its source's class and thin pool: {} is thin in class {}, \
             the StorageClass asks for {} in class {}",
            source.id(),
            origin.spec.device_class,
            req.params.provisioning,
            req.params.device_class
        )));
    }
    let node = &origin.spec.node_name;
    if !req.nodes.is_empty() && !req.nodes.contains(node) {
        return Err(Error::ResourceExhausted(format!(
            "the source {} is on node {node}, which the accessibility requirements exclude \
             ({}): a restore/clone is made on its source's node",
            source.id(),
            req.nodes.join(", ")
        )));
    }
    Ok(())
}
