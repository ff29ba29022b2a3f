//! csi-agent: the per-node half of Strata (one per node, DaemonSet or standalone).
//! - `discovery` finds raw disks by slot and says which are eligible (reads only, no kube);
//! - `lvm` is the one narrow interface through which every change to disks goes (no kube);
//! - `claim` turns eligible disks into PVs of one VG per media class, through `lvm`.
//!
//! The CSI services and the Kubernetes reconciler sit on top of these and come in later modules.

pub mod claim;
pub mod csi;
pub mod discovery;
pub mod fs;
pub mod fstrim;
pub mod health;
pub mod in_use;
pub mod kubernetes;
pub mod lvm;
pub mod metrics;
pub mod mount;
pub mod nvme;
pub mod wipe_policy;
pub mod wiper;
