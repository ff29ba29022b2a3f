//! csi-controller, the CSI Controller of Kubernetes mode; it never runs LVM, it writes
//! LogicalVolume specs and waits for the node's agent.
//! - [`service`] (Create/Delete/Expand/GetCapacity over [`cluster::Cluster`], names by
//!   [`object_name`], admission queued per node by [`gate`]); [`grpc`] the tonic edge,
//!   [`error`] the one mapping to gRPC codes;
//! - while this replica holds the [`lease`], [`background`] applies [`housekeeping`] (binding,
//!   orphans, node loss) and the recovery policy ([`drift`] decides, [`drift_exec`] acts);
//! - [`metrics`]: Prometheus metrics.

pub mod background;
pub mod cluster;
pub mod drift;
pub mod drift_exec;
pub mod error;
pub mod gate;
pub mod grpc;
pub mod housekeeping;
pub mod lease;
pub mod metrics;
pub mod object_name;
pub mod service;
