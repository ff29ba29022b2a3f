//! Adoption: the agent makes a LogicalVolume object again for each Strata LV of its node that
//! has none. That happens only when objects were removed while their LVs stayed: an uninstall
//! that deleted the CRDs (the documented order stops the agents and then removes the
//! finalizers, keeping every LV), or a node that comes back after its Node was deleted. Without
//! an object such an LV could be staged (the node service reads LVM) but never deleted: the CO's
//! DeleteVolume would find nothing and answer OK, leaking the LV. With the object back, the
//! PersistentVolume's DeleteVolume wipes and removes it as usual.
//!
//! The object is built from the LV's tags alone: name = the volume tag (in Kubernetes mode the
//! object name), class = the VG, size = the LV's size, claim = the PVC tag; annotation
//! [`ANNOTATION_ADOPTED`]; both finalizers, so that a PersistentVolume still referring to it
//! protects it as before (the controller releases the protection only in DeleteVolume or when
//! no PV refers to it). Never adopted: LVs being wiped (the wiper finishes them), names that are
//! no Kubernetes object name (LVs of standalone mode). A pass lists this node's objects first
//! and LVM second, so an LV removed with its object in between is never seen without it; an
//! object made meanwhile makes the create answer 409, which is ignored.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use csi_api::crd::{LogicalVolume, LogicalVolumeSpec, PvcReference};
use csi_api::names::{self, DeviceClass};
use kube::api::{ListParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Context;
use super::volumes::ReconcileError;
use crate::lvm::{Lv, LvmRunner, is_wiping};

/// Annotation on an object the agent made for an LV that had none (value: why).
pub const ANNOTATION_ADOPTED: &str = "strata.io/adopted";
/// Period of the adoption pass after a successful one, and the retry after a failed one
/// (e.g. the CRD not installed yet).
const PERIOD: Duration = Duration::from_secs(300);
const RETRY: Duration = Duration::from_secs(10);

/// Whether `name` can be a LogicalVolume's name as the controller makes them (a DNS-1123
/// subdomain of at most 63 characters).
fn is_object_name(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| alnum(c) || *c == b'-' || *c == b'.')
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
}

/// The objects to make for the Strata LVs of `node` that no object of `existing` names. Pure.
pub fn adoptable(node: &str, existing: &HashSet<String>, lvs: &[Lv]) -> Vec<LogicalVolume> {
    let mut out = Vec::new();
    for lv in lvs.iter().filter(|l| l.owned && !is_wiping(l)) {
        let (Some(volume), Some(class)) = (lv.volume.as_deref(), DeviceClass::from_vg_name(&lv.vg))
        else {
            continue;
        };
        if existing.contains(volume) || !is_object_name(volume) {
            continue;
        }
        let mut obj = LogicalVolume::new(
            volume,
            LogicalVolumeSpec {
                node_name: node.to_owned(),
                device_class: class,
                size_bytes: lv.size_bytes,
                pvc: lv.pvc.as_ref().map(|p| PvcReference {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                }),
                source: None,
                role: None,
                volume_snapshot: None,
                wipe: None,
                // A thin LV keeps its kind (the tag tells): its size is virtual.
                provisioning: crate::lvm::is_thin(lv).then_some(csi_api::names::Provisioning::Thin),
            },
        );
        obj.metadata.labels = Some(BTreeMap::from([
            (names::LABEL_NODE.to_owned(), node.to_owned()),
            (
                names::LABEL_DEVICE_CLASS.to_owned(),
                class.as_str().to_owned(),
            ),
        ]));
        obj.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_ADOPTED.to_owned(),
            format!("LV {}/{} had no LogicalVolume", lv.vg, lv.name),
        )]));
        obj.metadata.finalizers = Some(vec![
            names::FINALIZER.to_owned(),
            names::FINALIZER_PV_PROTECTION.to_owned(),
        ]);
        out.push(obj);
    }
    out
}

/// Runs an adoption pass at start and then every [`PERIOD`] until `shutdown`.
pub async fn run<R: LvmRunner>(ctx: Arc<Context<R>>, shutdown: CancellationToken) {
    let recorder = Recorder::new(
        ctx.client.clone(),
        Reporter {
            controller: names::FIELD_MANAGER_AGENT.into(),
            instance: Some(ctx.node.clone()),
        },
    );
    let mut delay = Duration::ZERO;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = match pass(&ctx, &recorder).await {
            Ok(_) => PERIOD,
            Err(e) => {
                warn!(error = %e, "adoption pass failed; retrying");
                RETRY
            }
        };
    }
}

/// One pass; returns how many objects were made.
pub async fn pass<R: LvmRunner>(
    ctx: &Context<R>,
    recorder: &Recorder,
) -> Result<usize, ReconcileError> {
    let api: Api<LogicalVolume> = Api::all(ctx.client.clone());
    let selector = format!("{}={}", names::LABEL_NODE, ctx.node);
    // Objects first, LVM second (see the module head).
    let existing: HashSet<String> = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let lvs = ctx.lvm.strata_lvs(None).await?;
    let mut made = 0;
    for obj in adoptable(&ctx.node, &existing, &lvs) {
        let name = obj.name_any();
        match api.create(&PostParams::default(), &obj).await {
            Ok(created) => {
                made += 1;
                info!(volume = %name, "LV without a LogicalVolume adopted");
                let event = Event {
                    type_: EventType::Normal,
                    reason: "Adopted".into(),
                    note: Some(format!(
                        "Node {} holds the LV of volume {name} but no LogicalVolume named it \
                         (e.g. after the CRDs were deleted and reinstalled): the object was made \
                         again from the LV's tags. Its PersistentVolume's deletion wipes it as usual; \
                         without a PersistentVolume it is an orphan",
                        ctx.node
                    )),
                    action: "AdoptLV".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&event, &created.object_ref(&())).await {
                    warn!(error = %e, "cannot publish Event");
                }
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::{Activation, PvcRef, WIPING_TAG};

    fn lv(vg: &str, volume: &str, tags: &[&str]) -> Lv {
        Lv {
            vg: vg.into(),
            name: volume.into(),
            uuid: None,
            size_bytes: 64 << 20,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            active: Activation::Active,
            volume: Some(volume.into()),
            pvc: Some(PvcRef {
                namespace: "ns".into(),
                name: "data-0".into(),
                uid: "u1".into(),
            }),
            owned: true,
            open: false,
        }
    }

    #[test]
    fn only_strata_lvs_without_an_object_are_adopted() {
        let lvs = vec![
            lv("strata-ssd", "pvc-kept", &[]),
            lv("strata-ssd", "pvc-has-object", &[]),
            lv("strata-hdd", "pvc-wiping", &[WIPING_TAG]),
            lv("strata-ssd", "Standalone_Name", &[]),
            lv("other-vg", "pvc-foreign-vg", &[]),
            Lv {
                owned: false,
                ..lv("strata-ssd", "pvc-not-ours", &[])
            },
        ];
        let existing = HashSet::from(["pvc-has-object".to_owned()]);
        let made = adoptable("node-a", &existing, &lvs);
        assert_eq!(made.len(), 1, "{made:?}");
        let obj = &made[0];
        assert_eq!(obj.name_any(), "pvc-kept");
        assert_eq!(obj.spec.node_name, "node-a");
        assert_eq!(obj.spec.device_class, DeviceClass::Ssd);
        assert_eq!(obj.spec.size_bytes, 64 << 20);
        let pvc = obj.spec.pvc.as_ref().unwrap();
        assert_eq!((pvc.namespace.as_str(), pvc.uid.as_str()), ("ns", "u1"));
        assert_eq!(obj.labels()[names::LABEL_NODE], "node-a");
        assert_eq!(obj.labels()[names::LABEL_DEVICE_CLASS], "ssd");
        assert!(obj.annotations().contains_key(ANNOTATION_ADOPTED));
        // Protected as a volume the controller made: a PV referring to it keeps it.
        assert_eq!(
            obj.finalizers(),
            [names::FINALIZER, names::FINALIZER_PV_PROTECTION]
        );
    }

    #[test]
    fn an_adopted_thin_lv_stays_thin_and_linear_ones_stay_linear() {
        let lvs = vec![
            lv("strata-ssd", "pvc-thin", &[crate::lvm::THIN_TAG]),
            lv("strata-ssd", "pvc-linear", &[]),
        ];
        let out = adoptable("n1", &HashSet::new(), &lvs);
        let kind = |n: &str| {
            out.iter()
                .find(|o| o.metadata.name.as_deref() == Some(n))
                .unwrap()
                .spec
                .provisioning
        };
        assert_eq!(kind("pvc-thin"), Some(csi_api::names::Provisioning::Thin));
        assert_eq!(kind("pvc-linear"), None);
    }

    #[test]
    fn object_names_are_dns_subdomains() {
        assert!(is_object_name("pvc-0b1c"));
        assert!(is_object_name("strata-0123abcd"));
        assert!(!is_object_name("Standalone_Name"));
        assert!(!is_object_name("-x"));
        assert!(!is_object_name(&"a".repeat(64)));
    }
}
