//! The controller's seam with the Kubernetes API: a narrow trait of the reads and writes the CSI
//! logic needs, a kube-rs implementation, and (in tests) an in-memory one.

mod kube_cluster;
#[cfg(test)]
pub mod memory;

use std::time::Duration;

use async_trait::async_trait;
use csi_api::crd::{LogicalVolume, NodeStorage};
use csi_api::names::DeviceClass;

pub use kube_cluster::KubeCluster;

/// A claim that kube-scheduler placed on a node (annotation `volume.kubernetes.io/selected-node`)
/// whose volume may not exist yet: demand the node has been promised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedClaim {
    /// The PVC's uid; its volume will be named `pvc-<uid>`.
    pub uid: String,
    pub class: DeviceClass,
    pub bytes: u64,
}

/// A failed call to the API server.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Optimistic concurrency lost (409 on update).
    #[error("{0}")]
    Conflict(String),
    /// Anything else: unreachable, forbidden, server error.
    #[error("{0}")]
    Api(String),
}

/// A condition on a LogicalVolume (`None` = it does not exist).
pub type VolumeCondition = dyn Fn(Option<&LogicalVolume>) -> bool + Send + Sync;

/// What the controller reads from and writes to the cluster.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    async fn logical_volume(&self, name: &str) -> Result<Option<LogicalVolume>, ClusterError>;
    async fn logical_volumes(&self) -> Result<Vec<LogicalVolume>, ClusterError>;
    /// Creates the object; `Ok(None)` when one with that name already exists.
    async fn create_logical_volume(
        &self,
        lv: &LogicalVolume,
    ) -> Result<Option<LogicalVolume>, ClusterError>;
    /// Requests deletion; success when the object is already gone.
    async fn delete_logical_volume(&self, name: &str) -> Result<(), ClusterError>;
    /// Sets `spec.sizeBytes`.
    async fn resize_logical_volume(&self, name: &str, size_bytes: u64) -> Result<(), ClusterError>;
    async fn node_storages(&self) -> Result<Vec<NodeStorage>, ClusterError>;
    /// Unbound claims of Strata StorageClasses whose selected node is `node`.
    async fn selected_claims(&self, node: &str) -> Result<Vec<SelectedClaim>, ClusterError>;
    /// Waits until `done` holds for the named volume, at most `timeout`; returns the last state
    /// seen and whether `done` held.
    async fn wait_logical_volume(
        &self,
        name: &str,
        done: &VolumeCondition,
        timeout: Duration,
    ) -> Result<(Option<LogicalVolume>, bool), ClusterError>;
}
