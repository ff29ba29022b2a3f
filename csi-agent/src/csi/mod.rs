//! The CSI services of the agent, on top of the LVM layer, the mounter and the filesystem tools:
//! - the Identity service is `csi_api::identity` (shared with the controller), its Probe the
//!   agent's `Readiness` (ready once discovery and LVM are up);
//! - [`node`]: stage/publish/unpublish/unstage, expansion, stats and condition;
//! - [`controller`]: the Controller service of standalone mode (state in LVM tags only);
//! - [`validate`]: every request check, pure; [`error`]: the one mapping to gRPC codes;
//! - [`volumes`]: the storage seam both services use, [`lvm_volumes`] its LVM implementation;
//! - [`server`]: the tonic server on a unix socket with graceful shutdown;
//! - [`standalone`]: standalone mode: discovery and claiming at start and on rescans, then serve.

pub mod controller;
pub mod error;
pub mod lvm_volumes;
pub mod node;
pub mod server;
pub mod standalone;
pub mod validate;
pub mod volumes;

pub use error::{Error, Result};
