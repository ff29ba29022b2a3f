//! Leader election on a `coordination.k8s.io/v1` Lease, for the controller's background work only
//! (the CSI calls are served by every replica). The decision is a pure function; `Elector` keeps
//! the Lease through kube with optimistic concurrency (a lost race is simply "not leader").

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// What this replica should do with the Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Absent, expired or ours: write it with us as holder.
    Take,
    /// Someone else holds it and it has not expired.
    Follow,
}

/// Decides from the Lease's holder and last renewal.
pub fn decide(
    holder: Option<&str>,
    renewed: Option<Timestamp>,
    duration: Duration,
    me: &str,
    now: Timestamp,
) -> Decision {
    match (holder, renewed) {
        (Some(h), _) if h == me => Decision::Take,
        (Some(h), Some(t)) if !h.is_empty() => {
            let expiry = t.checked_add(duration).unwrap_or(Timestamp::MAX);
            if now > expiry {
                Decision::Take
            } else {
                Decision::Follow
            }
        }
        _ => Decision::Take,
    }
}

/// Holds or follows one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    me: String,
    duration: Duration,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, duration: Duration) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            me: me.into(),
            duration,
        }
    }

    /// Tries to take or renew the Lease; `Ok(true)` when this replica leads now.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.name).await?;
        let spec = existing
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        if decide(
            spec.holder_identity.as_deref(),
            renewed,
            self.duration,
            &self.me,
            now,
        ) == Decision::Follow
        {
            return Ok(false);
        }
        let ours = spec.holder_identity.as_deref() == Some(self.me.as_str());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: existing
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.me.clone()),
                lease_duration_seconds: Some(self.duration.as_secs() as i32),
                acquire_time: if ours {
                    spec.acquire_time
                } else {
                    Some(MicroTime(now))
                },
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours)),
                ..Default::default()
            }),
        };
        let written = match existing {
            None => self.api.create(&PostParams::default(), &lease).await,
            Some(_) => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    #[test]
    fn takes_a_free_or_expired_lease_and_follows_a_live_one() {
        let now = Timestamp::now();
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, None, d, "me", now), Decision::Take);
        assert_eq!(decide(Some("me"), Some(now), d, "me", now), Decision::Take);
        assert_eq!(
            decide(
                Some("other"),
                Some(now.checked_sub(SignedDuration::from_secs(5)).unwrap()),
                d,
                "me",
                now
            ),
            Decision::Follow
        );
        assert_eq!(
            decide(
                Some("other"),
                Some(now.checked_sub(SignedDuration::from_secs(16)).unwrap()),
                d,
                "me",
                now
            ),
            Decision::Take
        );
        assert_eq!(decide(Some("other"), None, d, "me", now), Decision::Take);
    }
}
