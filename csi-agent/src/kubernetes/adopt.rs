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
//!
//! Snapshot LVs (tagged `strata.io/snapshot=`, no volume tag) are never taken for volumes: they
//! are adopted as snapshot objects (`spec.role: Snapshot`, source = the `snapshot-of` tag, our
//! finalizer only: a snapshot has no PersistentVolume), so that DeleteSnapshot can still remove
//! them. A restored or cloned LV is adopted as the thin volume it is, its source from its tag.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use csi_api::crd::{
    LogicalVolume, LogicalVolumeSpec, PvcReference, SourceKind, VolumeRole, VolumeSource,
};
use csi_api::names::{self, DeviceClass};
use csi_api::request::ContentSource;
use kube::api::{ListParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Context;
use super::volumes::ReconcileError;
use crate::lvm::{Lv, LvmRunner, Snapshot, is_snapshot, is_wiping};

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
    for lv in lvs
        .iter()
        .filter(|l| l.owned && !is_wiping(l) && !is_snapshot(l))
    {
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
                source: crate::lvm::snapshot::lv_source(lv).map(|source| match source {
                    ContentSource::Snapshot(name) => VolumeSource {
                        kind: SourceKind::Snapshot,
                        name,
                    },
                    ContentSource::Volume(name) => VolumeSource {
                        kind: SourceKind::Volume,
                        name,
                    },
                }),
                role: None,
                volume_snapshot: None,
                wipe: None,
                // A thin LV keeps its kind (the tag tells): its size is virtual.
                provisioning: crate::lvm::is_thin(lv).then_some(csi_api::names::Provisioning::Thin),
            },
        );
        label(&mut obj, node, class, lv);
        obj.metadata.finalizers = Some(vec![
            names::FINALIZER.to_owned(),
            names::FINALIZER_PV_PROTECTION.to_owned(),
        ]);
        out.push(obj);
    }
    out
}

/// The snapshot objects to make for the Strata snapshot LVs of `node` that no object of
/// `existing` names. Pure.
pub fn adoptable_snapshots(
    node: &str,
    existing: &HashSet<String>,
    snapshots: &[Snapshot],
) -> Vec<LogicalVolume> {
    let mut out = Vec::new();
    for snap in snapshots.iter().filter(|s| s.lv.owned) {
        let Some(class) = DeviceClass::from_vg_name(&snap.vg) else {
            continue;
        };
        if existing.contains(&snap.snapshot_id) || !is_object_name(&snap.snapshot_id) {
            continue;
        }
        let mut obj = LogicalVolume::new(
            &snap.snapshot_id,
            LogicalVolumeSpec {
                node_name: node.to_owned(),
                device_class: class,
                size_bytes: snap.size_bytes,
                pvc: None,
                source: Some(VolumeSource {
                    kind: SourceKind::Volume,
                    name: snap.source_volume.clone(),
                }),
                role: Some(VolumeRole::Snapshot),
                volume_snapshot: None,
                wipe: None,
                provisioning: Some(csi_api::names::Provisioning::Thin),
            },
        );
        label(&mut obj, node, class, &snap.lv);
        // No PV-protection: a snapshot has no PersistentVolume.
        obj.metadata.finalizers = Some(vec![names::FINALIZER.to_owned()]);
        out.push(obj);
    }
    out
}

/// The labels the agent watches by and the adoption annotation.
fn label(obj: &mut LogicalVolume, node: &str, class: DeviceClass, lv: &Lv) {
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
    let snapshots = ctx.lvm.snapshots(None).await?;
    let mut objects = adoptable(&ctx.node, &existing, &lvs);
    objects.extend(adoptable_snapshots(&ctx.node, &existing, &snapshots));
    let mut made = 0;
    for obj in objects {
        let name = obj.name_any();
        match api.create(&PostParams::default(), &obj).await {
            Ok(created) => {
                made += 1;
                info!(volume = %name, "LV without a LogicalVolume adopted");
                let event = Event {
                    type_: EventType::Normal,
                    reason: "Adopted".into(),
                    note: Some(if created.spec.is_snapshot() {
                        format!(
                            "Node {} holds the LV of snapshot {name} but no LogicalVolume named \
                             it: the object was made again from the LV's tags. Its \
                             VolumeSnapshotContent's deletion removes it; without one, delete \
                             this object to free the pool",
                            ctx.node
                        )
                    } else {
                        format!(
                            "Node {} holds the LV of volume {name} but no LogicalVolume named it \
                             (e.g. after the CRDs were deleted and reinstalled): the object was made \
                             again from the LV's tags. Its PersistentVolume's deletion wipes it as usual; \
                             without a PersistentVolume it is an orphan",
                            ctx.node
                        )
                    }),
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
    fn snapshot_lvs_are_adopted_as_snapshots_never_as_volumes() {
        let tags = [
            crate::lvm::THIN_TAG,
            "strata.io/snapshot=snapshot-1",
            "strata.io/snapshot-of=pvc-origin",
        ];
        let snap_lv = Lv {
            volume: None,
            pvc: None,
            ..lv("strata-ssd", "h0123456789abcdef", &tags)
        };
        // The volume pass never takes it for a volume, even with a stray volume field.
        let stray = Lv {
            volume: Some("snapshot-1".into()),
            ..snap_lv.clone()
        };
        assert!(adoptable("n1", &HashSet::new(), &[snap_lv.clone(), stray]).is_empty());
        let snap = Snapshot {
            vg: "strata-ssd".into(),
            snapshot_id: "snapshot-1".into(),
            source_volume: "pvc-origin".into(),
            size_bytes: 64 << 20,
            creation_time: None,
            lv: snap_lv,
        };
        let made = adoptable_snapshots("n1", &HashSet::new(), std::slice::from_ref(&snap));
        assert_eq!(made.len(), 1);
        let obj = &made[0];
        assert_eq!(obj.name_any(), "snapshot-1");
        assert!(obj.spec.is_snapshot() && obj.spec.is_thin());
        assert_eq!(
            obj.spec.source,
            Some(VolumeSource {
                kind: SourceKind::Volume,
                name: "pvc-origin".into()
            })
        );
        assert_eq!(obj.spec.pvc, None);
        assert_eq!(obj.finalizers(), [names::FINALIZER]);
        assert_eq!(obj.labels()[names::LABEL_NODE], "n1");
        // An object already names it: nothing made.
        let existing = HashSet::from(["snapshot-1".to_owned()]);
        assert!(adoptable_snapshots("n1", &existing, &[snap]).is_empty());
    }

    #[test]
    fn a_restored_lv_is_adopted_with_its_source() {
        let restored = lv(
            "strata-ssd",
            "pvc-restored",
            &[
                crate::lvm::THIN_TAG,
                "strata.io/source=snapshot_2Fsnapshot-1",
            ],
        );
        let made = adoptable("n1", &HashSet::new(), &[restored]);
        assert_eq!(
            made[0].spec.source,
            Some(VolumeSource {
                kind: SourceKind::Snapshot,
                name: "snapshot-1".into()
            })
        );
        assert!(!made[0].spec.is_snapshot());
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
