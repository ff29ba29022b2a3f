//! Leader election for the controller's background work only (the CSI calls are served by every
//! replica), on a `coordination.k8s.io/v1` Lease kept by the `kube-lease-manager` crate: the
//! holder renews [`RENEW_BEFORE_EXPIRY_SECONDS`] before the lease would expire, i.e. every
//! 5 s for a 15 s lease, and a follower takes over only after the lease expired (the crate's
//! own rule). Leadership is published on a watch channel; dropping every receiver releases the
//! lease. [`Fence`] guards each of the leader's writes against a pause that outlived the lease.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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

/// The name of the controller's Lease.
pub const LEASE_NAME: &str = "strata-csi-controller";
/// The fence trusts a renewal for the lease's duration less this margin (so 10 s after the
/// holder's renewal, which it repeats every 5 s): a follower takes over only after the full
/// duration by its own clock, so clocks may disagree by this much.
pub const FENCE_MARGIN_SECONDS: u64 = 5;

/// Why a leader's write was not made.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error(
        "this replica ({identity}) does not hold the Lease {name} now (holder: {holder}); its background work stops"
    )]
    NotLeader {
        identity: String,
        name: String,
        holder: String,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Fencing for the leader's writes. The lease manager's channel learns of a lost lease only at
/// its next renewal; a replica that was paused (SIGSTOP, a frozen VM, a long GC-like stall)
/// would otherwise go on with the pass it was in while another replica already leads. Before
/// each write, [`Fence::confirm`] checks that this replica's own last renewal, as the Lease
/// object shows it, is younger than the lease's duration less [`FENCE_MARGIN_SECONDS`] — read
/// again only when the time it vouched for has run out on the monotonic clock, which keeps
/// running while the process is stopped. A healthy leader therefore reads the Lease about once
/// per pass; a resumed one reads it before its first write and stops.
pub struct Fence {
    api: Api<Lease>,
    name: String,
    identity: String,
    valid_until: Option<Instant>,
}

impl Fence {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Fence {
        Fence {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            valid_until: None,
        }
    }

    /// Ok when this replica holds the lease for at least a moment longer.
    pub async fn confirm(&mut self) -> Result<(), FenceError> {
        if self.valid_until.is_some_and(|until| Instant::now() < until) {
            return Ok(());
        }
        self.valid_until = None;
        let asked = Instant::now();
        let lease = self.api.get_opt(&self.name).await?;
        match held_for(lease.as_ref(), &self.identity, Timestamp::now()) {
            Ok(left) => {
                self.valid_until = Some(asked + left);
                Ok(())
            }
            Err(holder) => Err(FenceError::NotLeader {
                identity: self.identity.clone(),
                name: self.name.clone(),
                holder,
            }),
        }
    }

    /// The Lease's annotation `key` (the leader's durable notes, e.g. drifts in flight).
    pub async fn annotation(&self, key: &str) -> Result<Option<String>, kube::Error> {
        Ok(self
            .api
            .get_opt(&self.name)
            .await?
            .and_then(|l| l.metadata.annotations)
            .and_then(|mut a| a.remove(key)))
    }

    /// Sets (or, with `None`, removes) annotation `key` on the Lease, as the leader only. A
    /// merge patch of metadata: the lease manager's renewals patch only `spec`.
    pub async fn set_annotation(
        &mut self,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), FenceError> {
        self.confirm().await?;
        let patch = serde_json::json!({ "metadata": { "annotations": { key: value } } });
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }
}

/// How much longer `identity` may trust its hold on `lease` at `now`, or who holds it instead.
fn held_for(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Result<Duration, String> {
    let spec = lease.and_then(|l| l.spec.as_ref());
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    if holder != identity {
        return Err(if holder.is_empty() {
            "nobody".into()
        } else {
            holder
        });
    }
    let (Some(renewed), Some(seconds)) = (
        spec.and_then(|s| s.renew_time.as_ref()),
        spec.and_then(|s| s.lease_duration_seconds),
    ) else {
        return Err(format!("{holder} (without a renewal time)"));
    };
    let trusted = u64::try_from(seconds)
        .unwrap_or(0)
        .saturating_sub(FENCE_MARGIN_SECONDS);
    let end = renewed
        .0
        .checked_add(SignedDuration::from_secs(trusted as i64))
        .unwrap_or(renewed.0);
    match Duration::try_from(end.duration_since(now)) {
        Ok(left) if !left.is_zero() => Ok(left),
        _ => Err(format!("{holder} (expired: last renewed {})", renewed.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: &str, now: Timestamp, renewed_secs_ago: i64, duration: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(
                    now.checked_sub(SignedDuration::from_secs(renewed_secs_ago))
                        .unwrap(),
                )),
                lease_duration_seconds: Some(duration),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_own_renewal_is_trusted_for_the_duration_less_the_margin() {
        let now = Timestamp::now();
        let left = held_for(Some(&lease("one", now, 2, 15)), "one", now).unwrap();
        assert_eq!(left, Duration::from_secs(8));
    }

    #[test]
    fn an_old_renewal_another_holder_or_no_lease_is_not_leadership() {
        let now = Timestamp::now();
        // Paused for 12 s after its renewal: 15 - 5 = 10 s are trusted, no more.
        let err = held_for(Some(&lease("one", now, 12, 15)), "one", now).unwrap_err();
        assert!(err.contains("expired"), "{err}");
        assert_eq!(
            held_for(Some(&lease("two", now, 0, 15)), "one", now).unwrap_err(),
            "two"
        );
        assert_eq!(held_for(None, "one", now).unwrap_err(), "nobody");
        let mut released = lease("one", now, 0, 15);
        released.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(held_for(Some(&released), "one", now).unwrap_err(), "nobody");
    }
}
