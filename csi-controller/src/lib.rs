//! csi-controller: the CSI Controller service of Strata in Kubernetes mode.
//! - [`service`]: CreateVolume/DeleteVolume/Expand/GetCapacity as plain Rust over [`cluster::Cluster`];
//! - [`cluster`]: the narrow seam with the API server (kube-rs), and an in-memory one for tests;
//! - [`gate`]: one in-flight call per volume, admission serialised per node;
//! - [`grpc`]: the tonic edge (Identity + Controller), [`error`]: the one mapping to gRPC codes;
//! - [`housekeeping`]: binding, orphans and node loss as a pure planner, applied by [`background`]
//!   while this replica holds the [`lease`];
//! - [`metrics`]: Prometheus metrics.
//!
//! The controller never runs LVM: it writes LogicalVolume specs and waits for the node's agent.

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
