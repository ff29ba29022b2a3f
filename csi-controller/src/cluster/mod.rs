//! The controller's seam with the Kubernetes API: a narrow trait of the reads and writes the CSI
//! logic needs, a kube-rs implementation, and (in tests) an in-memory one.

mod kube_cluster;
#[cfg(test)]
pub mod memory;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use csi_api::crd::{LogicalVolume, NodeStorage};
use csi_api::names::{DeviceClass, Provisioning};

pub use kube_cluster::{KubeCluster, release_finalizer};

/// A claim that kube-scheduler placed on a node (annotation `volume.kubernetes.io/selected-node`)
/// whose volume may not exist yet: demand the node may have been promised. Whether it counts is
/// decided by [`csi_api::capacity::selected_claim_counts`] from the facts gathered here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedClaim {
    /// The PVC's uid; its volume will be named `pvc-<uid>`.
    pub uid: String,
    pub class: DeviceClass,
    /// The StorageClass's `strata.io/provisioning`: thin claims are thin demand on the node.
    pub provisioning: Provisioning,
    pub bytes: u64,
    /// The shared request validator accepts the claim for its class (size, access modes,
    /// StorageClass parameters).
    pub valid: bool,
    /// A pod that uses the claim is bound (`spec.nodeName`) or nominated
    /// (`status.nominatedNodeName`) to the selected node.
    pub pod_on_node: bool,
}

/// A failed call to the API server, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Optimistic concurrency lost or the object changed under us (409): retry.
    #[error("{0}")]
    Conflict(String),
    /// The controller's ServiceAccount may not do this (403): an RBAC problem, retrying as is
    /// does not help.
    #[error("{0}")]
    Forbidden(String),
    /// The API server refused the object as invalid (422): a bug or a schema mismatch.
    #[error("{0}")]
    Invalid(String),
    /// The object does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// Anything else: unreachable, timeouts, server errors (retryable).
    #[error("{0}")]
    Api(String),
}

/// The longest any wait on the API server lasts, whatever the caller asked for.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// `now + timeout`, with `timeout` capped at [`MAX_WAIT`]: never an overflowing Instant.
pub fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout.min(MAX_WAIT)).unwrap_or(now)
}

/// A condition on a LogicalVolume (`None` = it does not exist).
pub type VolumeCondition = dyn Fn(Option<&LogicalVolume>) -> bool + Send + Sync;

/// What the controller reads from and writes to the cluster.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// The object as the API server has it: from a watched cache where there is one, confirmed
    /// with a GET when the cache has not seen it (it may lag a create by another replica).
    async fn logical_volume(&self, name: &str) -> Result<Option<LogicalVolume>, ClusterError>;
    /// What a watched cache has seen of `name`, without a request (it may lag a create by another
    /// replica; a miss is confirmed by the create's conflict, not by a GET). Where there is no
    /// cache this is [`Cluster::logical_volume`].
    async fn cached_logical_volume(
        &self,
        name: &str,
    ) -> Result<Option<LogicalVolume>, ClusterError> {
        self.logical_volume(name).await
    }
    /// Every LogicalVolume (from a watched cache where there is one).
    async fn logical_volumes(&self) -> Result<Vec<LogicalVolume>, ClusterError>;
    /// The LogicalVolumes of one node (from a watched cache where there is one).
    async fn logical_volumes_on(&self, node: &str) -> Result<Vec<LogicalVolume>, ClusterError>;
    /// Creates the object; `Ok(None)` when one with that name already exists.
    async fn create_logical_volume(
        &self,
        lv: &LogicalVolume,
    ) -> Result<Option<LogicalVolume>, ClusterError>;
    /// Removes the `strata.io/pv-protection` finalizer (only that entry, without a stale
    /// resourceVersion); success when it or the object is already gone.
    async fn release_protection(&self, name: &str) -> Result<(), ClusterError>;
    /// Requests deletion; success when the object is already gone.
    async fn delete_logical_volume(&self, name: &str) -> Result<(), ClusterError>;
    /// Sets `spec.sizeBytes`.
    async fn resize_logical_volume(&self, name: &str, size_bytes: u64) -> Result<(), ClusterError>;
    async fn node_storages(&self) -> Result<Vec<NodeStorage>, ClusterError>;
    async fn node_storage(&self, node: &str) -> Result<Option<NodeStorage>, ClusterError>;
    /// Unbound claims of Strata StorageClasses whose selected node is `node`.
    async fn selected_claims(&self, node: &str) -> Result<Vec<SelectedClaim>, ClusterError>;
    /// [`Cluster::selected_claims`] of every node at once, by node.
    async fn selected_claims_by_node(
        &self,
    ) -> Result<HashMap<String, Vec<SelectedClaim>>, ClusterError>;
    /// Waits until `done` holds for the named volume, at most `timeout`; returns the last state
    /// seen and whether `done` held.
    async fn wait_logical_volume(
        &self,
        name: &str,
        done: &VolumeCondition,
        timeout: Duration,
    ) -> Result<(Option<LogicalVolume>, bool), ClusterError>;
}
