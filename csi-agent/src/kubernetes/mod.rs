//! Kubernetes mode of the agent: the thin kube-facing layer over the plain-Rust node logic.
//! - [`volumes`]: the LogicalVolume reconciler (kube-runtime Controller on this node's label):
//!   finalizer, LV create/extend through the LVM layer, status, removal on deletion;
//! - [`node_storage`]: the claim pass and the NodeStorage status, published by server-side apply
//!   (field manager `csi-agent`) on every change the agent makes or sees, with a periodic resync.

pub mod node_storage;
pub mod volumes;

use std::sync::Arc;

use kube::Client;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::discovery::Roots;
use crate::lvm::{Lvm, LvmRunner};

/// What the Kubernetes-mode tasks share.
pub struct Context<R: LvmRunner> {
    pub client: Client,
    pub node: String,
    pub lvm: Lvm<R>,
    pub roots: Roots,
    /// Wakes the NodeStorage publisher after a change.
    pub changed: Arc<Notify>,
}

/// Runs the reconciler and the publisher until `shutdown`.
pub async fn run<R: LvmRunner + 'static>(
    ctx: Arc<Context<R>>,
    resync: std::time::Duration,
    shutdown: CancellationToken,
) {
    let publisher = tokio::spawn(node_storage::run(ctx.clone(), resync, shutdown.clone()));
    volumes::run(ctx, shutdown).await;
    publisher.await.ok();
}
