//! Two kinds of exclusion: one in-flight operation per volume (a second caller is told `Aborted`
//! at once, as the CSI spec asks), and admission serialised per node (callers queue), so that two
//! volumes admitted together never over-commit one node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Names of volumes with an operation in flight.
#[derive(Clone, Default)]
pub struct VolumeGate {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Held while an operation on one volume runs; releases the name on drop.
pub struct VolumeGuard {
    busy: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl VolumeGate {
    /// Claims `name`, or `None` when another operation on it is in flight.
    pub fn try_enter(&self, name: &str) -> Option<VolumeGuard> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(name.to_owned()) {
            return None;
        }
        Some(VolumeGuard {
            busy: self.busy.clone(),
            name: name.to_owned(),
        })
    }
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.name);
    }
}

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

    #[test]
    fn a_second_operation_on_a_volume_is_refused_until_the_first_ends() {
        let gate = VolumeGate::default();
        let first = gate.try_enter("pvc-1").expect("free");
        assert!(gate.try_enter("pvc-1").is_none());
        assert!(gate.try_enter("pvc-2").is_some());
        drop(first);
        assert!(gate.try_enter("pvc-1").is_some());
    }

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
