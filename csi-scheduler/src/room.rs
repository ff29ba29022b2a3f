//! Per node, the room each pool (device class × provisioning) has for a new volume, computed
//! once when the view's entry for the node is written (the index rewrites a node's entry per
//! change to it), so that the extender's fit check of a candidate is one array read and one
//! comparison per pool of the demand instead of a walk of the node's class map. The rule is
//! csi-api's (`NodeCapacity::room`, `PoolRoom::shortfall`, what `NodeCapacity::check` applies
//! pool by pool in the same order); the extender's tests compare the two on random nodes.

use csi_api::capacity::{ClassBytes, NodeCapacity, Pool, Shortfall};
use csi_api::names::{DeviceClass, Provisioning};

/// Number of pools a node can have: every device class, linear and thin.
pub const POOLS: usize = DeviceClass::ALL.len() * 2;

/// What one pool of one node can take (csi-api's rule, precomputed here).
pub use csi_api::capacity::PoolRoom as Room;

/// A node's capacity with the room of each pool precomputed: what the view holds per node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub capacity: NodeCapacity,
    room: [Room; POOLS],
}

impl NodeEntry {
    pub fn new(capacity: NodeCapacity) -> Self {
        let mut room = [Room::NoSuchClass; POOLS];
        for class in DeviceClass::ALL {
            for provisioning in [Provisioning::Linear, Provisioning::Thin] {
                let pool = Pool::new(class, provisioning);
                room[slot(pool)] = capacity.room(pool);
            }
        }
        NodeEntry { capacity, room }
    }
}

/// The position of `pool` in [`NodeEntry`]'s table.
fn slot(pool: Pool) -> usize {
    let class = match pool.class {
        DeviceClass::Nvme => 0,
        DeviceClass::Ssd => 1,
        DeviceClass::Hdd => 2,
    };
    class * 2 + usize::from(pool.is_thin())
}

/// A demand's pools flattened for checking many nodes: (pool, slot, bytes needed), in the
/// demand's pool order (the order `NodeCapacity::check` reports the first shortfall in).
#[derive(Clone, Debug)]
pub struct FitCheck {
    pools: Vec<(Pool, usize, u64)>,
}

/// The first pool of a demand a node cannot take: its position in the demand, and its room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Miss {
    pub at: usize,
    pub room: Room,
}

impl FitCheck {
    pub fn new(demand: &ClassBytes) -> Self {
        FitCheck {
            pools: demand
                .iter()
                .map(|(&pool, &needed)| (pool, slot(pool), needed))
                .collect(),
        }
    }

    /// Number of pools of the demand.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// Whether the demand has no pool (fits everywhere).
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Pool and bytes needed at position `at`.
    pub fn pool(&self, at: usize) -> (Pool, u64) {
        let (pool, _, needed) = self.pools[at];
        (pool, needed)
    }

    /// Whether the node takes every pool of the demand; the first miss otherwise.
    pub fn check(&self, entry: &NodeEntry) -> Result<(), Miss> {
        for (at, &(_, slot, needed)) in self.pools.iter().enumerate() {
            match entry.room[slot] {
                Room::Bytes(available) if available >= needed => {}
                room => return Err(Miss { at, room }),
            }
        }
        Ok(())
    }

    /// The shortfall of a miss, as `NodeCapacity::check` reports it.
    pub fn shortfall(&self, miss: Miss) -> Shortfall {
        let (pool, needed) = self.pool(miss.at);
        miss.room
            .shortfall(pool, needed)
            .expect("a miss is a room that does not take its pool's bytes (FitCheck::check)")
    }
}
