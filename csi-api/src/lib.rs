//! The contract shared by Strata's three programs (see `docs/architecture.md`):
//! - [`csi`]: CSI v1 gRPC bindings generated from `proto/csi.proto`;
//! - [`names`]: the driver name, API group, labels, parameters and device classes;
//! - [`crd`]: the `NodeStorage` and `LogicalVolume` custom resources;
//! - [`capacity`]: the fit arithmetic used by both the scheduler and the controller;
//! - [`request`]: validation of CSI requests (parameters, sizes, capabilities, topology);
//! - [`runtime`]: logging, shutdown signal and socket endpoint helpers every binary uses;
//! - [`http`]: the one hardened HTTP server (extender, every `/metrics`);
//! - [`fault`]: crash points for the crash-consistency tests (`STRATA_FAULT_POINT`).
//!
//! Beyond pure functions it holds only the runtime plumbing every binary shares (logging,
//! sockets, the HTTP server); nothing here talks to a cluster.

pub mod capacity;
pub mod crd;
pub mod duration;
pub mod fault;
pub mod http;
pub mod identity;
pub mod names;
pub mod placement;
pub mod request;
pub mod runtime;
pub mod volume_lock;

/// CSI v1 messages and services (`package csi.v1`).
#[allow(clippy::all, missing_docs)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}
