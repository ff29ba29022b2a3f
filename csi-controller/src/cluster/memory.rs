//! An in-memory cluster for the controller's unit tests: objects in maps, a `Notify` to wake
//! waiters, and a hook that plays the agent (e.g. mark a new volume Ready).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use csi_api::crd::{LogicalVolume, NodeStorage};
use csi_api::names;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::Notify;

use super::{Cluster, ClusterError, SelectedClaim, VolumeCondition};

type AgentHook = dyn Fn(&mut LogicalVolume) + Send + Sync;

#[derive(Default)]
struct State {
    volumes: BTreeMap<String, LogicalVolume>,
    nodes: Vec<NodeStorage>,
    claims: Vec<(String, SelectedClaim)>,
}

/// See the module documentation.
#[derive(Clone, Default)]
pub struct MemoryCluster {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    agent: Arc<Mutex<Option<Arc<AgentHook>>>>,
    /// Plays a watch that has not seen any object yet (`cached_logical_volume` finds nothing).
    cache_blind: Arc<std::sync::atomic::AtomicBool>,
}

impl MemoryCluster {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_node(&self, node: NodeStorage) {
        self.state().nodes.push(node);
    }

    pub fn add_claim(&self, node: &str, claim: SelectedClaim) {
        self.state().claims.push((node.to_owned(), claim));
    }

    pub fn insert_volume(&self, lv: LogicalVolume) {
        let name = lv.metadata.name.clone().unwrap_or_default();
        self.state().volumes.insert(name, lv);
        self.changed.notify_waiters();
    }

    /// From now on `cached_logical_volume` finds nothing (or, with `false`, what exists), as a
    /// watched cache that lags another replica's creates.
    pub fn blind_cache(&self, blind: bool) {
        self.cache_blind
            .store(blind, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn volume(&self, name: &str) -> Option<LogicalVolume> {
        self.state().volumes.get(name).cloned()
    }

    pub fn volume_count(&self) -> usize {
        self.state().volumes.len()
    }

    /// Plays the agent: `hook` runs on each volume as it is created or resized.
    pub fn set_agent(&self, hook: impl Fn(&mut LogicalVolume) + Send + Sync + 'static) {
        *self.agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    }

    fn run_agent(&self, name: &str) {
        let hook = self.agent.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(hook) = hook {
            let this = self.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if let Some(lv) = this.state().volumes.get_mut(&name) {
                    hook(lv);
                }
                this.changed.notify_waiters();
            });
        }
    }
}

#[async_trait]
impl Cluster for MemoryCluster {
    async fn logical_volume(&self, name: &str) -> Result<Option<LogicalVolume>, ClusterError> {
        Ok(self.volume(name))
    }

    async fn cached_logical_volume(
        &self,
        name: &str,
    ) -> Result<Option<LogicalVolume>, ClusterError> {
        if self.cache_blind.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(self.volume(name))
    }

    async fn logical_volumes(&self) -> Result<Vec<LogicalVolume>, ClusterError> {
        Ok(self.state().volumes.values().cloned().collect())
    }

    async fn selected_claims_by_node(
        &self,
    ) -> Result<std::collections::HashMap<String, Vec<SelectedClaim>>, ClusterError> {
        let mut by_node: std::collections::HashMap<String, Vec<SelectedClaim>> =
            std::collections::HashMap::new();
        for (node, claim) in &self.state().claims {
            by_node.entry(node.clone()).or_default().push(claim.clone());
        }
        Ok(by_node)
    }

    async fn logical_volumes_on(&self, node: &str) -> Result<Vec<LogicalVolume>, ClusterError> {
        Ok(self
            .state()
            .volumes
            .values()
            .filter(|lv| lv.spec.node_name == node)
            .cloned()
            .collect())
    }

    async fn create_logical_volume(
        &self,
        lv: &LogicalVolume,
    ) -> Result<Option<LogicalVolume>, ClusterError> {
        let name = lv.metadata.name.clone().unwrap_or_default();
        if !crate::object_name::is_dns1123_subdomain(&name) {
            return Err(ClusterError::Invalid(format!(
                "LogicalVolume {name:?} is invalid: metadata.name: must be a lowercase RFC 1123 subdomain"
            )));
        }
        {
            let mut state = self.state();
            if state.volumes.contains_key(&name) {
                return Ok(None);
            }
            state.volumes.insert(name.clone(), lv.clone());
        }
        self.changed.notify_waiters();
        self.run_agent(&name);
        Ok(Some(lv.clone()))
    }

    async fn release_protection(&self, name: &str) -> Result<(), ClusterError> {
        if let Some(lv) = self.state().volumes.get_mut(name)
            && let Some(finalizers) = lv.metadata.finalizers.as_mut()
        {
            finalizers.retain(|f| f != names::FINALIZER_PV_PROTECTION);
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Like the API server: an object held by the protection finalizer is only marked deleted
    /// (the `strata.io/lv` finalizer is the agent's business, played by the tests).
    async fn delete_logical_volume(&self, name: &str) -> Result<(), ClusterError> {
        {
            let mut state = self.state();
            let held = state.volumes.get(name).is_some_and(|lv| {
                lv.metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == names::FINALIZER_PV_PROTECTION)
            });
            if held {
                if let Some(lv) = state.volumes.get_mut(name) {
                    lv.metadata
                        .deletion_timestamp
                        .get_or_insert(Time(Timestamp::now()));
                }
            } else {
                state.volumes.remove(name);
            }
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn resize_logical_volume(&self, name: &str, size_bytes: u64) -> Result<(), ClusterError> {
        match self.state().volumes.get_mut(name) {
            Some(lv) => lv.spec.size_bytes = size_bytes,
            None => return Err(ClusterError::NotFound(format!("{name} not found"))),
        }
        self.changed.notify_waiters();
        self.run_agent(name);
        Ok(())
    }

    async fn node_storages(&self) -> Result<Vec<NodeStorage>, ClusterError> {
        Ok(self.state().nodes.clone())
    }

    async fn node_storage(&self, node: &str) -> Result<Option<NodeStorage>, ClusterError> {
        Ok(self
            .state()
            .nodes
            .iter()
            .find(|ns| ns.metadata.name.as_deref() == Some(node))
            .cloned())
    }

    async fn selected_claims(&self, node: &str) -> Result<Vec<SelectedClaim>, ClusterError> {
        let state = self.state();
        Ok(state
            .claims
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, c)| c.clone())
            .collect())
    }

    async fn wait_logical_volume(
        &self,
        name: &str,
        done: &VolumeCondition,
        timeout: Duration,
    ) -> Result<(Option<LogicalVolume>, bool), ClusterError> {
        let deadline = super::deadline_after(timeout);
        loop {
            let notified = self.changed.notified();
            let current = self.volume(name);
            if done(current.as_ref()) {
                return Ok((current, true));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok((current, false));
            }
        }
    }
}
