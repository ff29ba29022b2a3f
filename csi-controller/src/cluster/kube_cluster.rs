use std::time::Duration;

use async_trait::async_trait;
use csi_api::capacity::{claim_bytes, quantity_bytes};
use csi_api::crd::{LogicalVolume, NodeStorage};
use csi_api::names::{self, DeviceClass};
use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};

use super::{Cluster, ClusterError, SelectedClaim, VolumeCondition};

/// The cluster through kube-rs.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
}

impl KubeCluster {
    pub fn new(client: Client) -> Self {
        KubeCluster { client }
    }

    fn volumes(&self) -> Api<LogicalVolume> {
        Api::all(self.client.clone())
    }
}

fn api_error(e: kube::Error) -> ClusterError {
    match &e {
        kube::Error::Api(status) if status.code == 409 => ClusterError::Conflict(e.to_string()),
        _ => ClusterError::Api(e.to_string()),
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

#[async_trait]
impl Cluster for KubeCluster {
    async fn logical_volume(&self, name: &str) -> Result<Option<LogicalVolume>, ClusterError> {
        self.volumes().get_opt(name).await.map_err(api_error)
    }

    async fn logical_volumes(&self) -> Result<Vec<LogicalVolume>, ClusterError> {
        let list = self
            .volumes()
            .list(&ListParams::default())
            .await
            .map_err(api_error)?;
        Ok(list.items)
    }

    async fn create_logical_volume(
        &self,
        lv: &LogicalVolume,
    ) -> Result<Option<LogicalVolume>, ClusterError> {
        match self.volumes().create(&PostParams::default(), lv).await {
            Ok(created) => Ok(Some(created)),
            Err(e) if is_code(&e, 409) => Ok(None),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn delete_logical_volume(&self, name: &str) -> Result<(), ClusterError> {
        match self.volumes().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, 404) => Ok(()),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn resize_logical_volume(&self, name: &str, size_bytes: u64) -> Result<(), ClusterError> {
        let patch = serde_json::json!({ "spec": { "sizeBytes": size_bytes } });
        self.volumes()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(api_error)
    }

    async fn node_storages(&self) -> Result<Vec<NodeStorage>, ClusterError> {
        let api: Api<NodeStorage> = Api::all(self.client.clone());
        Ok(api
            .list(&ListParams::default())
            .await
            .map_err(api_error)?
            .items)
    }

    async fn selected_claims(&self, node: &str) -> Result<Vec<SelectedClaim>, ClusterError> {
        let classes: Api<StorageClass> = Api::all(self.client.clone());
        let strata_classes: Vec<(String, DeviceClass)> = classes
            .list(&ListParams::default())
            .await
            .map_err(api_error)?
            .items
            .into_iter()
            .filter(|sc| sc.provisioner == names::DRIVER_NAME)
            .filter_map(|sc| {
                let class = sc
                    .parameters
                    .as_ref()?
                    .get(names::PARAM_DEVICE_CLASS)?
                    .parse()
                    .ok()?;
                Some((sc.metadata.name?, class))
            })
            .collect();
        if strata_classes.is_empty() {
            return Ok(Vec::new());
        }
        let claims: Api<PersistentVolumeClaim> = Api::all(self.client.clone());
        let items = claims
            .list(&ListParams::default())
            .await
            .map_err(api_error)?
            .items;
        Ok(items
            .into_iter()
            .filter_map(|pvc| {
                let selected = pvc
                    .metadata
                    .annotations
                    .as_ref()?
                    .get(names::ANNOTATION_SELECTED_NODE)?;
                let spec = pvc.spec.as_ref()?;
                if selected != node || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
                    return None;
                }
                let sc = spec.storage_class_name.as_deref()?;
                let class = strata_classes.iter().find(|(n, _)| n == sc)?.1;
                let request = spec.resources.as_ref()?.requests.as_ref()?.get("storage")?;
                Some(SelectedClaim {
                    uid: pvc.metadata.uid.clone()?,
                    class,
                    bytes: claim_bytes(quantity_bytes(&request.0).ok()?),
                })
            })
            .collect())
    }

    async fn wait_logical_volume(
        &self,
        name: &str,
        done: &VolumeCondition,
        timeout: Duration,
    ) -> Result<(Option<LogicalVolume>, bool), ClusterError> {
        let mut events = watcher::watch_object(self.volumes(), name).boxed();
        let mut last = None;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Err(_) => return Ok((last, false)),
                Ok(None) => return Err(ClusterError::Api("watch ended".into())),
                Ok(Some(Err(e))) => return Err(ClusterError::Api(e.to_string())),
                Ok(Some(Ok(obj))) => {
                    if done(obj.as_ref()) {
                        return Ok((obj, true));
                    }
                    last = obj;
                }
            }
        }
    }
}
