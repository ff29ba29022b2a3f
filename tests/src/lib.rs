//! Helpers shared by Strata's slow test suites: the fake API server ([`apiserver`]), the CSI
//! client ([`csi_client`]), the end-to-end harness ([`e2e`]) and what the in-VM suites need from
//! the VM ([`vm`]). The suites are test targets of this crate (`tests/Cargo.toml`); the node VM
//! harness is `tests/nodevm/`.

pub mod apiserver;
pub mod csi_client;
pub mod e2e;
pub mod vm;
