//! Helpers shared by Strata's slow test suites (node VM, end to end). The suites themselves are
//! test targets of this crate, declared in `tests/Cargo.toml`; the VM harness is `tests/nodevm/`.

pub mod apiserver;
pub mod csi_client;
pub mod e2e;
