//! The contract shared by Strata's three programs (docs/architecture.md): [`csi`] bindings from
//! `proto/csi.proto`; [`names`] (driver name, labels, parameters, device classes); the [`crd`]
//! types; [`capacity`] arithmetic and [`placement`] of the scheduler and the controller; the one
//! request validator ([`request`]), duration grammar ([`duration`]), per-volume call lock
//! ([`volume_lock`]) and Identity service ([`identity`]); the runtime plumbing every binary
//! shares ([`runtime`]: logging, SIGTERM, unix sockets; [`http`]: the hardened HTTP server); and
//! [`fault`], crash points compiled only with the `fault-injection` feature. Nothing here talks
//! to a cluster.

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
