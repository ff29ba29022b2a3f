//! The cluster through kube-rs. Reads come from reflector stores (watched caches of
//! LogicalVolumes, NodeStorages, PVCs, StorageClasses and pending Pods), so a CreateVolume costs
//! the API server a GET of the one object (only when the cache does not have it) and its POST;
//! the wait for `Ready` is served from the same watch. Writes go to the API server, and a write
//! the admission depends on (create, resize) returns only once the cache reflects it, so that the
//! next admission on the node, which runs under the same node lock, counts it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use csi_api::capacity::{claim_bytes, quantity_bytes};
use csi_api::crd::{LogicalVolume, NodeStorage};
use csi_api::csi;
use csi_api::names::{self, DeviceClass};
use csi_api::request::{self, VolumeParameters};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Cluster, ClusterError, SelectedClaim, VolumeCondition};

/// How long a write may take to show in the cache before the call gives up (retryable).
const CACHE_LAG_LIMIT: Duration = Duration::from_secs(10);

/// See the module documentation.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
    volumes: Store<LogicalVolume>,
    storages: Store<NodeStorage>,
    claims: Store<PersistentVolumeClaim>,
    classes: Store<StorageClass>,
    pods: Store<Pod>,
    /// Woken on every LogicalVolume change the watch sees.
    volume_changed: Arc<Notify>,
}

/// Runs one reflector until `shutdown`, calling `on_change` after each event.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    on_change: Option<Arc<Notify>>,
    shutdown: CancellationToken,
) -> Store<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|obj: &mut K| {
            obj.meta_mut().managed_fields = None;
        })
        .reflect(writer);
    tokio::spawn(drive(stream, on_change, shutdown));
    reader
}

async fn drive<S, K>(stream: S, on_change: Option<Arc<Notify>>, shutdown: CancellationToken)
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            next = stream.next() => match next {
                None => return,
                Some(Err(e)) => warn!(error = %e, "watch failed; retrying with backoff"),
                Some(Ok(_)) => {
                    if let Some(n) = &on_change {
                        n.notify_waiters();
                    }
                }
            },
        }
    }
}

impl KubeCluster {
    /// The watched cache of LogicalVolumes (for the per-phase gauge at scrape time).
    pub fn volume_store(&self) -> Store<LogicalVolume> {
        self.volumes.clone()
    }

    /// Starts the watches and waits until every cache holds its first full listing.
    pub async fn start(client: Client, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let volume_changed = Arc::new(Notify::new());
        let cluster = KubeCluster {
            volumes: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                Some(volume_changed.clone()),
                shutdown.clone(),
            ),
            storages: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                None,
                shutdown.clone(),
            ),
            claims: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                None,
                shutdown.clone(),
            ),
            classes: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                None,
                shutdown.clone(),
            ),
            // Only pods still waiting for their volumes matter to admission.
            pods: reflect(
                Api::all(client.clone()),
                watcher::Config::default().fields("status.phase=Pending"),
                None,
                shutdown.clone(),
            ),
            volume_changed,
            client,
        };
        let ready = async {
            cluster.volumes.wait_until_ready().await?;
            cluster.storages.wait_until_ready().await?;
            cluster.claims.wait_until_ready().await?;
            cluster.classes.wait_until_ready().await?;
            cluster.pods.wait_until_ready().await
        };
        tokio::select! {
            r = ready => r.map_err(|e| anyhow::anyhow!("watch caches: {e}"))?,
            _ = shutdown.cancelled() => anyhow::bail!("stopped before the caches were ready"),
        }
        Ok(cluster)
    }

    fn api(&self) -> Api<LogicalVolume> {
        Api::all(self.client.clone())
    }

    fn cached(&self, name: &str) -> Option<LogicalVolume> {
        self.volumes
            .get(&ObjectRef::new(name))
            .map(|lv| lv.as_ref().clone())
    }

    /// Waits until the cached copy of `name` satisfies `seen` (bounded by [`CACHE_LAG_LIMIT`]).
    async fn until_cached(
        &self,
        name: &str,
        seen: impl Fn(Option<&LogicalVolume>) -> bool + Send + Sync + 'static,
    ) -> Result<(), ClusterError> {
        let (_, done) = self
            .wait_logical_volume(name, &seen, CACHE_LAG_LIMIT)
            .await?;
        if done {
            Ok(())
        } else {
            Err(ClusterError::Api(format!(
                "the watch of LogicalVolumes did not show the write to {name} within {}s",
                CACHE_LAG_LIMIT.as_secs()
            )))
        }
    }

    /// For each claim (namespace, name) that a pending pod uses, the nodes that pod is bound or
    /// nominated to.
    fn claims_of_pending_pods(&self) -> HashMap<(String, String), HashSet<String>> {
        let mut used: HashMap<(String, String), HashSet<String>> = HashMap::new();
        for pod in self.pods.state() {
            let nodes: Vec<String> = [
                pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                pod.status
                    .as_ref()
                    .and_then(|s| s.nominated_node_name.clone()),
            ]
            .into_iter()
            .flatten()
            .collect();
            if nodes.is_empty() {
                continue;
            }
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
                let claim = if let Some(claim) = &volume.persistent_volume_claim {
                    claim.claim_name.clone()
                } else if volume.ephemeral.is_some() {
                    // Generic ephemeral volume: the claim is `<pod>-<volume>`.
                    format!("{pod_name}-{}", volume.name)
                } else {
                    continue;
                };
                used.entry((namespace.clone(), claim))
                    .or_default()
                    .extend(nodes.iter().cloned());
            }
        }
        used
    }

    /// Unbound claims of Strata classes with a selected node (`only` that node, if given).
    fn selected(&self, only: Option<&str>) -> Vec<(String, SelectedClaim)> {
        let strata_classes: Vec<(String, DeviceClass, BTreeMap<String, String>)> = self
            .classes
            .state()
            .iter()
            .filter(|sc| sc.provisioner == names::DRIVER_NAME)
            .filter_map(|sc| {
                let parameters = sc.parameters.clone().unwrap_or_default();
                let class = parameters.get(names::PARAM_DEVICE_CLASS)?.parse().ok()?;
                Some((sc.metadata.name.clone()?, class, parameters))
            })
            .collect();
        if strata_classes.is_empty() {
            return Vec::new();
        }
        let used = self.claims_of_pending_pods();
        self.claims
            .state()
            .iter()
            .filter_map(|pvc| {
                let selected = pvc
                    .metadata
                    .annotations
                    .as_ref()?
                    .get(names::ANNOTATION_SELECTED_NODE)?;
                let spec = pvc.spec.as_ref()?;
                if only.is_some_and(|n| n != selected)
                    || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
                {
                    return None;
                }
                let sc = spec.storage_class_name.as_deref()?;
                let (_, class, parameters) = strata_classes.iter().find(|(n, _, _)| n == sc)?;
                let request = spec.resources.as_ref()?.requests.as_ref()?.get("storage")?;
                let requested = quantity_bytes(&request.0).ok();
                let key = (
                    pvc.metadata.namespace.clone().unwrap_or_default(),
                    pvc.metadata.name.clone().unwrap_or_default(),
                );
                let claim = SelectedClaim {
                    uid: pvc.metadata.uid.clone()?,
                    class: *class,
                    // An unknown value makes the claim invalid (the request validator refuses it).
                    provisioning: parameters
                        .get(names::PARAM_PROVISIONING)
                        .and_then(|p| p.parse().ok())
                        .unwrap_or_default(),
                    bytes: requested.map_or(u64::MAX, claim_bytes),
                    valid: requested.is_some_and(|b| claim_valid(pvc, parameters, b)),
                    pod_on_node: used.get(&key).is_some_and(|nodes| nodes.contains(selected)),
                };
                Some((selected.clone(), claim))
            })
            .collect()
    }
}

/// Maps an API failure by its status code (see [`ClusterError`]).
pub(crate) fn api_error(e: kube::Error) -> ClusterError {
    match &e {
        kube::Error::Api(status) => match status.code {
            409 => ClusterError::Conflict(e.to_string()),
            403 => ClusterError::Forbidden(e.to_string()),
            422 => ClusterError::Invalid(e.to_string()),
            404 => ClusterError::NotFound(e.to_string()),
            _ => ClusterError::Api(e.to_string()),
        },
        _ => ClusterError::Api(e.to_string()),
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

/// Whether the one request validator accepts a claim for a Strata class: its StorageClass
/// parameters, its size and its access modes.
pub(crate) fn claim_valid(
    pvc: &PersistentVolumeClaim,
    class_parameters: &BTreeMap<String, String>,
    bytes: u64,
) -> bool {
    let params: std::collections::HashMap<String, String> = class_parameters
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if VolumeParameters::try_from(&params).is_err() {
        return false;
    }
    let range = csi::CapacityRange {
        required_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
        limit_bytes: 0,
    };
    if request::size_for_range(Some(&range)).is_err() {
        return false;
    }
    let modes = pvc
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    !modes.is_empty()
        && modes
            .iter()
            .all(|m| m == "ReadWriteOnce" || m == "ReadWriteOncePod")
}

#[async_trait]
impl Cluster for KubeCluster {
    async fn logical_volume(&self, name: &str) -> Result<Option<LogicalVolume>, ClusterError> {
        if let Some(lv) = self.cached(name) {
            return Ok(Some(lv));
        }
        // The cache may not have seen an object created moments ago (by another replica).
        self.api().get_opt(name).await.map_err(api_error)
    }

    async fn cached_logical_volume(
        &self,
        name: &str,
    ) -> Result<Option<LogicalVolume>, ClusterError> {
        Ok(self.cached(name))
    }

    async fn logical_volumes(&self) -> Result<Vec<LogicalVolume>, ClusterError> {
        Ok(self
            .volumes
            .state()
            .into_iter()
            .map(|lv| lv.as_ref().clone())
            .collect())
    }

    async fn logical_volumes_on(&self, node: &str) -> Result<Vec<LogicalVolume>, ClusterError> {
        Ok(self
            .volumes
            .state_filter(|lv| lv.spec.node_name == node)
            .into_iter()
            .map(|lv| lv.as_ref().clone())
            .collect())
    }

    async fn create_logical_volume(
        &self,
        lv: &LogicalVolume,
    ) -> Result<Option<LogicalVolume>, ClusterError> {
        let name = lv.metadata.name.clone().unwrap_or_default();
        match self.api().create(&PostParams::default(), lv).await {
            Ok(created) => {
                self.until_cached(&name, |lv| lv.is_some()).await?;
                Ok(Some(created))
            }
            Err(e) if is_code(&e, 409) => Ok(None),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn release_protection(&self, name: &str) -> Result<(), ClusterError> {
        release_finalizer(&self.api(), name, names::FINALIZER_PV_PROTECTION).await
    }

    async fn delete_logical_volume(&self, name: &str) -> Result<(), ClusterError> {
        match self.api().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, 404) => Ok(()),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn resize_logical_volume(&self, name: &str, size_bytes: u64) -> Result<(), ClusterError> {
        let patch = serde_json::json!({ "spec": { "sizeBytes": size_bytes } });
        self.api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_error)?;
        self.until_cached(name, move |lv| {
            lv.is_none_or(|lv| lv.spec.size_bytes >= size_bytes)
        })
        .await
    }

    async fn node_storages(&self) -> Result<Vec<NodeStorage>, ClusterError> {
        Ok(self
            .storages
            .state()
            .into_iter()
            .map(|ns| ns.as_ref().clone())
            .collect())
    }

    async fn node_storage(&self, node: &str) -> Result<Option<NodeStorage>, ClusterError> {
        Ok(self
            .storages
            .get(&ObjectRef::new(node))
            .map(|ns| ns.as_ref().clone()))
    }

    async fn selected_claims(&self, node: &str) -> Result<Vec<SelectedClaim>, ClusterError> {
        Ok(self
            .selected(Some(node))
            .into_iter()
            .map(|(_, claim)| claim)
            .collect())
    }

    async fn selected_claims_by_node(
        &self,
    ) -> Result<HashMap<String, Vec<SelectedClaim>>, ClusterError> {
        let mut by_node: HashMap<String, Vec<SelectedClaim>> = HashMap::new();
        for (node, claim) in self.selected(None) {
            by_node.entry(node).or_default().push(claim);
        }
        Ok(by_node)
    }

    async fn wait_logical_volume(
        &self,
        name: &str,
        done: &VolumeCondition,
        timeout: Duration,
    ) -> Result<(Option<LogicalVolume>, bool), ClusterError> {
        let deadline = super::deadline_after(timeout);
        loop {
            let changed = self.volume_changed.notified();
            let current = self.cached(name);
            if done(current.as_ref()) {
                return Ok((current, true));
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok((current, false));
            }
        }
    }
}

/// Removes one finalizer from a LogicalVolume with a JSON patch that tests the entry it removes
/// (no resourceVersion: unrelated writes do not conflict, and no other finalizer is ever
/// rewritten). Success when the finalizer or the object is already gone.
pub async fn release_finalizer(
    api: &Api<LogicalVolume>,
    name: &str,
    finalizer: &str,
) -> Result<(), ClusterError> {
    for _ in 0..5 {
        let Some(lv) = api.get_opt(name).await.map_err(api_error)? else {
            return Ok(());
        };
        let finalizers = lv.metadata.finalizers.unwrap_or_default();
        let Some(index) = finalizers.iter().position(|f| f == finalizer) else {
            return Ok(());
        };
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            { "op": "test", "path": format!("/metadata/finalizers/{index}"), "value": finalizer },
            { "op": "remove", "path": format!("/metadata/finalizers/{index}") },
        ]))
        .map_err(|e| ClusterError::Api(e.to_string()))?;
        match api
            .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_code(&e, 404) => return Ok(()),
            // The list moved under us (the test op failed): read it again.
            Err(e) if is_code(&e, 422) || is_code(&e, 409) || is_code(&e, 500) => continue,
            Err(e) => return Err(api_error(e)),
        }
    }
    Err(ClusterError::Conflict(format!(
        "the finalizers of {name} kept changing; retry"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
    use std::collections::BTreeMap;

    fn pvc(modes: &[&str]) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn claims_are_valid_only_as_createvolume_would_accept_them() {
        let class = BTreeMap::from([(names::PARAM_DEVICE_CLASS.to_string(), "ssd".to_string())]);
        assert!(claim_valid(&pvc(&["ReadWriteOnce"]), &class, 1 << 30));
        assert!(!claim_valid(&pvc(&["ReadWriteMany"]), &class, 1 << 30));
        assert!(!claim_valid(&pvc(&[]), &class, 1 << 30));
        assert!(!claim_valid(&pvc(&["ReadWriteOnce"]), &class, u64::MAX));
        let bogus = BTreeMap::from([(names::PARAM_DEVICE_CLASS.to_string(), "tape".to_string())]);
        assert!(!claim_valid(&pvc(&["ReadWriteOnce"]), &bogus, 1 << 30));
    }

    #[test]
    fn api_status_codes_map_to_their_cause() {
        let status = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("m", "r")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(matches!(api_error(status(403)), ClusterError::Forbidden(_)));
        assert!(matches!(api_error(status(422)), ClusterError::Invalid(_)));
        assert!(matches!(api_error(status(409)), ClusterError::Conflict(_)));
        assert!(matches!(api_error(status(404)), ClusterError::NotFound(_)));
        assert!(matches!(api_error(status(503)), ClusterError::Api(_)));
    }
}
