//! Admission serialised per node (callers queue), so that two volumes admitted together never
//! over-commit one node. The other exclusion, one in-flight call per volume (`Aborted` for the
//! second), is `csi_api::volume_lock`, shared with the agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// One queue per node for admission.
#[derive(Clone, Default)]
pub struct NodeGate {
    nodes: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

impl NodeGate {
    /// Waits for this node's admission turn.
    pub async fn enter(&self, node: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes.entry(node.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_on_one_node_is_serialised_and_other_nodes_proceed() {
        let gate = NodeGate::default();
        let held = gate.enter("a").await;
        let other =
            tokio::time::timeout(std::time::Duration::from_millis(50), gate.enter("b")).await;
        assert!(other.is_ok(), "node b must not wait for node a");
        let same =
            tokio::time::timeout(std::time::Duration::from_millis(50), gate.enter("a")).await;
        assert!(same.is_err(), "node a must wait");
        drop(held);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), gate.enter("a"))
                .await
                .is_ok()
        );
    }
}
