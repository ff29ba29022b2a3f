//! The gRPC edge: tonic's Controller trait, each call in a tracing span with the volume id
//! (requests are never logged whole: they may carry secrets), errors mapped to status once through
//! `From<Error> for Status`. RPCs Strata does not offer answer UNIMPLEMENTED and are not
//! advertised in the capabilities. Identity is the shared `csi_api::identity`, [`ApiProbe`] its
//! Probe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_api::csi;
use csi_api::csi::controller_server::Controller;
use csi_api::names;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::service::ControllerService;

/// The tonic services of the controller.
pub struct Grpc<C> {
    service: Arc<ControllerService<C>>,
    metrics: Metrics,
}

impl<C> Clone for Grpc<C> {
    fn clone(&self) -> Self {
        Grpc {
            service: self.service.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<C: Cluster> Grpc<C> {
    pub fn new(service: Arc<ControllerService<C>>, metrics: Metrics) -> Self {
        Grpc { service, metrics }
    }
}

/// The caller's deadline (`grpc-timeout` header), if it sent one.
pub fn deadline<T>(req: &Request<T>) -> Option<Duration> {
    let value = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long to wait for the agent when the caller sends no `grpc-timeout`: bounded, so that a
/// call without a deadline still answers (DeadlineExceeded, retryable) instead of waiting forever.
pub const NO_DEADLINE_WAIT: Duration = Duration::from_secs(60);

/// How long to wait for the agent: a little less than the caller's deadline, so that the answer
/// arrives before the caller gives up; [`NO_DEADLINE_WAIT`] without one.
fn wait_budget<T>(req: &Request<T>) -> Duration {
    match deadline(req) {
        Some(d) => d.saturating_sub(d / 10).max(Duration::from_millis(100)),
        None => NO_DEADLINE_WAIT,
    }
}

impl<C: Cluster> Grpc<C> {
    fn observe<T>(&self, rpc: &str, started: Instant, result: &Result<T, crate::error::Error>) {
        let code = result
            .as_ref()
            .map_or_else(|e| e.code(), |_| tonic::Code::Ok);
        self.metrics.observe(rpc, code, started.elapsed());
    }
}

/// The controller's answer to Probe: ready while the API server answers.
pub struct ApiProbe<C>(Arc<ControllerService<C>>);

impl<C: Cluster> csi_api::identity::Probe for ApiProbe<C> {
    async fn ready(&self) -> bool {
        self.0.probe().await.is_ok()
    }
}

impl<C: Cluster> Grpc<C> {
    /// The Probe of the shared Identity service (`csi_api::identity`).
    pub fn probe(&self) -> ApiProbe<C> {
        ApiProbe(self.service.clone())
    }
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not offered by {}", names::DRIVER_NAME))
}

#[tonic::async_trait]
impl<C: Cluster> Controller for Grpc<C> {
    #[instrument(skip_all, fields(volume_id = %req.get_ref().name), err)]
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let started = Instant::now();
        let wait = wait_budget(&req);
        let result = self.service.create_volume(req.into_inner(), wait).await;
        self.observe("CreateVolume", started, &result);
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(result?),
        }))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id), err)]
    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let started = Instant::now();
        let result = self.service.delete_volume(req.into_inner()).await;
        self.observe("DeleteVolume", started, &result);
        result?;
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id), err)]
    async fn controller_expand_volume(
        &self,
        req: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let started = Instant::now();
        let wait = wait_budget(&req);
        let result = self.service.expand_volume(req.into_inner(), wait).await;
        self.observe("ControllerExpandVolume", started, &result);
        Ok(Response::new(result?))
    }

    #[instrument(skip_all, err)]
    async fn get_capacity(
        &self,
        req: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        Ok(Response::new(
            self.service.get_capacity(req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id), err)]
    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        Ok(Response::new(
            self.service.validate_capabilities(req.into_inner()).await?,
        ))
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use csi::controller_service_capability::{Rpc, Type, rpc};
        let rpc = |t: rpc::Type| csi::ControllerServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: vec![
                rpc(rpc::Type::CreateDeleteVolume),
                rpc(rpc::Type::GetCapacity),
                rpc(rpc::Type::ExpandVolume),
                rpc(rpc::Type::SingleNodeMultiWriter),
                rpc(rpc::Type::CreateDeleteSnapshot),
                rpc(rpc::Type::ListSnapshots),
                rpc(rpc::Type::CloneVolume),
            ],
        }))
    }

    async fn controller_publish_volume(
        &self,
        _req: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        Err(unimplemented("ControllerPublishVolume"))
    }

    async fn controller_unpublish_volume(
        &self,
        _req: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        Err(unimplemented("ControllerUnpublishVolume"))
    }

    async fn list_volumes(
        &self,
        _req: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        Err(unimplemented("ListVolumes"))
    }

    #[instrument(skip_all, fields(snapshot_id = %req.get_ref().name, volume_id = %req.get_ref().source_volume_id), err)]
    async fn create_snapshot(
        &self,
        req: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let started = Instant::now();
        let wait = wait_budget(&req);
        let result = self.service.create_snapshot(req.into_inner(), wait).await;
        self.observe("CreateSnapshot", started, &result);
        Ok(Response::new(csi::CreateSnapshotResponse {
            snapshot: Some(result?),
        }))
    }

    #[instrument(skip_all, fields(snapshot_id = %req.get_ref().snapshot_id), err)]
    async fn delete_snapshot(
        &self,
        req: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let started = Instant::now();
        let result = self.service.delete_snapshot(req.into_inner()).await;
        self.observe("DeleteSnapshot", started, &result);
        result?;
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    #[instrument(skip_all, err)]
    async fn list_snapshots(
        &self,
        req: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        Ok(Response::new(
            self.service.list_snapshots(req.into_inner()).await?,
        ))
    }

    async fn get_snapshot(
        &self,
        _req: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        Err(unimplemented("GetSnapshot"))
    }

    async fn controller_get_volume(
        &self,
        _req: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        Err(unimplemented("ControllerGetVolume"))
    }

    async fn controller_modify_volume(
        &self,
        _req: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(unimplemented("ControllerModifyVolume"))
    }
}
