//! Leader election for the controller's background work only (the CSI calls are served by every
//! replica), on a `coordination.k8s.io/v1` Lease kept by the `kube-lease-manager` crate: the
//! holder renews [`RENEW_BEFORE_EXPIRY_SECONDS`] before the lease would expire, i.e. every
//! 5 s for a 15 s lease, and a follower takes over only after the lease expired (the crate's
//! own rule; this module compares no clocks itself). Leadership is published on a watch channel;
//! dropping every receiver releases the lease.

use anyhow::Context;
use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a lease is valid after its last renewal.
pub const LEASE_SECONDS: u64 = 15;
/// How long before expiry the holder renews (so it renews every `LEASE - this` seconds).
pub const RENEW_BEFORE_EXPIRY_SECONDS: u64 = 10;

/// A running election: `leading` tells whether this replica holds the lease now.
pub struct Election {
    pub leading: watch::Receiver<bool>,
    pub task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Starts electing on Lease `namespace/name` as `identity`.
pub async fn elect(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> anyhow::Result<Election> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(RENEW_BEFORE_EXPIRY_SECONDS)
        .with_field_manager(format!("csi-controller-{identity}"))
        .build()
        .await
        .with_context(|| format!("preparing the Lease {namespace}/{name}"))?;
    let (leading, task) = manager.watch().await;
    Ok(Election { leading, task })
}
