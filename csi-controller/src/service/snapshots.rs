//! CreateSnapshot, DeleteSnapshot and ListSnapshots. A snapshot is a LogicalVolume with
//! `spec.role: Snapshot` on its origin's node, class and thin pool (the agent makes the thin
//! snapshot LV); its object name is the snapshot id. Create follows CreateVolume's order
//! (validate → look up → compare → create → wait for Ready); List reads only the watched cache
//! and pages in object-name order, the token being the first name of the next page.

use std::time::Duration;

use csi_api::crd::{
    LogicalVolume, LogicalVolumePhase, LogicalVolumeSpec, SourceKind, VolumeRole,
    VolumeSnapshotReference, VolumeSource,
};
use csi_api::csi;
use csi_api::names::{self, Provisioning};
use csi_api::request::{self, ContentSource, SnapshotParameters};
use tracing::info;

use crate::cluster::Cluster;
use crate::error::Error;
use crate::object_name::{ANNOTATION_CSI_NAME, object_name};
use crate::service::{ControllerService, object_meta};

/// The fields of a CreateSnapshot, validated.
struct SnapshotRequest {
    /// The CSI name, as the CO sent it.
    name: String,
    /// The LogicalVolume's name (the snapshot id).
    object: String,
    /// The origin's object name.
    source: String,
    /// The origin's volume id, as the CO sent it.
    source_volume_id: String,
    params: SnapshotParameters,
}

impl<C: Cluster> ControllerService<C> {
    pub async fn create_snapshot(
        &self,
        req: csi::CreateSnapshotRequest,
        wait: Duration,
    ) -> Result<csi::Snapshot, Error> {
        request::check_id("name", &req.name)?;
        request::check_id("source_volume_id", &req.source_volume_id)?;
        let req = SnapshotRequest {
            params: request::parse_snapshot_parameters(&req.parameters)?,
            object: object_name(&req.name),
            source: object_name(&req.source_volume_id),
            name: req.name,
            source_volume_id: req.source_volume_id,
        };
        let _guard = self.enter(&req.object)?;
        let wait = wait.min(self.settings.max_wait);
        if let Some(existing) = self.cluster.cached_logical_volume(&req.object).await? {
            check_same_snapshot(&existing, &req)?;
            let ready = self.await_settled(existing, wait, "snapshot").await?;
            return Ok(to_csi_snapshot(&ready));
        }
        let origin = self
            .source_object(&ContentSource::Volume(req.source_volume_id.clone()))
            .await?;
        if !origin.spec.is_thin() {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is linear: only thin volumes can be snapshotted (use a thin \
                 StorageClass, strata.io/provisioning: thin)",
                req.source_volume_id
            )));
        }
        let snapshot = new_snapshot(&req, &origin);
        let node = origin.spec.node_name.clone();
        let created = {
            let _turn = self.nodes.enter(&node).await;
            self.cluster.create_logical_volume(&snapshot).await?
        };
        let lv = match created {
            Some(lv) => {
                info!(snapshot = %req.name, object = %req.object, %node, source = %req.source_volume_id, "snapshot LogicalVolume created");
                lv
            }
            None => {
                let existing =
                    self.cluster
                        .logical_volume(&req.object)
                        .await?
                        .ok_or_else(|| {
                            Error::Aborted(format!(
                                "snapshot {} was created and deleted concurrently; retry",
                                req.object
                            ))
                        })?;
                check_same_snapshot(&existing, &req)?;
                existing
            }
        };
        let ready = self.await_settled(lv, wait, "snapshot").await?;
        Ok(to_csi_snapshot(&ready))
    }

    /// Deletes the snapshot's object (its agent removes the LV); an unknown id is success, a
    /// volume id is refused and changes nothing.
    pub async fn delete_snapshot(&self, req: csi::DeleteSnapshotRequest) -> Result<(), Error> {
        request::check_id("snapshot_id", &req.snapshot_id)?;
        let object = object_name(&req.snapshot_id);
        let _guard = self.enter(&object)?;
        let Some(lv) = self.cluster.logical_volume(&object).await? else {
            return Ok(());
        };
        if !lv.spec.is_snapshot() {
            return Err(Error::InvalidArgument(format!(
                "{} is a volume, not a snapshot: delete it with DeleteVolume",
                req.snapshot_id
            )));
        }
        self.cluster.delete_logical_volume(&object).await?;
        info!(snapshot = %req.snapshot_id, %object, "snapshot deletion requested");
        Ok(())
    }

    /// Lists snapshots from the watched cache (no LIST per call), filtered by id or source,
    /// in object-name order.
    pub async fn list_snapshots(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse, Error> {
        let size = request::page_size(req.max_entries)?;
        let token = req.starting_token.as_str();
        if !token.is_empty()
            && (request::check_id("starting_token", token).is_err() || object_name(token) != token)
        {
            return Err(Error::Aborted(format!(
                "starting_token {:?} is not a token this plugin gave out",
                token.escape_debug().to_string()
            )));
        }
        let want_id = (!req.snapshot_id.is_empty()).then(|| object_name(&req.snapshot_id));
        let want_source =
            (!req.source_volume_id.is_empty()).then(|| object_name(&req.source_volume_id));
        let mut snapshots: Vec<LogicalVolume> = self
            .cluster
            .logical_volumes()
            .await?
            .into_iter()
            .filter(|lv| listed(lv, want_id.as_deref(), want_source.as_deref()))
            .collect();
        snapshots.sort_by(|a, b| object_name_of(a).cmp(object_name_of(b)));
        let page = request::page(
            &snapshots,
            object_name_of,
            size,
            (!token.is_empty()).then_some(token),
        );
        let next_token = page
            .next
            .map(|i| object_name_of(&snapshots[i]).to_owned())
            .unwrap_or_default();
        Ok(csi::ListSnapshotsResponse {
            entries: snapshots[page.range]
                .iter()
                .map(|lv| csi::list_snapshots_response::Entry {
                    snapshot: Some(to_csi_snapshot(lv)),
                })
                .collect(),
            next_token,
        })
    }
}

/// A snapshot's object name: the sort key of ListSnapshots and its page token.
fn object_name_of(lv: &LogicalVolume) -> &str {
    lv.metadata.name.as_deref().unwrap_or_default()
}

/// Whether `lv` is a live snapshot that matches the filters (object names).
fn listed(lv: &LogicalVolume, id: Option<&str>, source: Option<&str>) -> bool {
    let failed = lv.status.as_ref().and_then(|s| s.phase) == Some(LogicalVolumePhase::Failed);
    lv.spec.is_snapshot()
        && !failed
        && lv.metadata.deletion_timestamp.is_none()
        && id.is_none_or(|id| lv.metadata.name.as_deref() == Some(id))
        && source.is_none_or(|s| lv.spec.source.as_ref().is_some_and(|src| src.name == s))
}

/// A repeat CreateSnapshot must name the snapshot that exists: same CSI name, a snapshot, of the
/// same source volume.
fn check_same_snapshot(existing: &LogicalVolume, req: &SnapshotRequest) -> Result<(), Error> {
    let recorded = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_CSI_NAME));
    let problem = if !existing.spec.is_snapshot() {
        Some(format!("{} is a volume", req.object))
    } else if recorded.is_some_and(|n| *n != req.name) {
        Some(format!("object {} belongs to another CSI name", req.object))
    } else {
        let source = existing.spec.source.as_ref().map(|s| s.name.as_str());
        (source != Some(req.source.as_str())).then(|| {
            format!(
                "it is a snapshot of {}, not of {}",
                source.unwrap_or("nothing"),
                req.source_volume_id
            )
        })
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(Error::AlreadyExists(format!(
            "snapshot name {} is taken: {p}",
            req.name
        ))),
    }
}

/// The snapshot LogicalVolume of `origin`: same node, class and pool, the origin's current size.
fn new_snapshot(req: &SnapshotRequest, origin: &LogicalVolume) -> LogicalVolume {
    let node = origin.spec.node_name.clone();
    let volume_snapshot = match (
        &req.params.volume_snapshot_namespace,
        &req.params.volume_snapshot_name,
    ) {
        (Some(namespace), Some(name)) => Some(VolumeSnapshotReference {
            namespace: namespace.clone(),
            name: name.clone(),
        }),
        _ => None,
    };
    LogicalVolume {
        // Only the agent's finalizer: a snapshot has no PV to protect, and is never wiped (thin).
        metadata: object_meta(
            &req.object,
            &req.name,
            &node,
            origin.spec.device_class,
            &[names::FINALIZER],
        ),
        spec: LogicalVolumeSpec {
            node_name: node,
            device_class: origin.spec.device_class,
            size_bytes: origin.current_size_bytes(),
            pvc: None,
            provisioning: Some(Provisioning::Thin),
            source: Some(VolumeSource {
                kind: SourceKind::Volume,
                name: req.source.clone(),
            }),
            role: Some(VolumeRole::Snapshot),
            volume_snapshot,
            wipe: None,
        },
        status: None,
    }
}

/// The CSI view of a snapshot object: ready once the agent says Ready; the point in time is the
/// agent's `status.creationTime` (lvm2's), else the object's creation.
fn to_csi_snapshot(lv: &LogicalVolume) -> csi::Snapshot {
    let status = lv.status.clone().unwrap_or_default();
    let size = lv.current_size_bytes();
    let created = status
        .creation_time
        .as_deref()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .or_else(|| lv.metadata.creation_timestamp.as_ref().map(|t| t.0));
    csi::Snapshot {
        size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
        snapshot_id: lv.metadata.name.clone().unwrap_or_default(),
        source_volume_id: lv
            .spec
            .source
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        creation_time: created.map(|t| prost_types::Timestamp {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        }),
        ready_to_use: status.phase == Some(LogicalVolumePhase::Ready),
        group_snapshot_id: String::new(),
    }
}
