//! csi-agent, one per node (DaemonSet or standalone). No kube below `csi` and `kubernetes`:
//! [`discovery`] finds raw disks by slot; [`lvm`] is the one interface to lvm2 (and its runner
//! the one place that spawns processes); [`claim`] puts eligible disks into one VG per class;
//! [`health`] and [`nvme`] read disk health; [`mount`] and [`fs`] mount and format;
//! [`in_use`] proves an LV free before [`wiper`] wipes (by [`wipe_policy`]) and removes it;
//! [`fstrim`] trims flash volumes; [`metrics`] is `/metrics`. On top: [`csi`] (Node, standalone
//! Controller and mode) and [`kubernetes`] (Kubernetes mode: reconciler, NodeStorage).

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
