//! End-to-end tests of Kubernetes mode. The host runs the fake API server (in this
//! process), csi-controller and csi-scheduler; the node VM (`tests/nodevm/`) runs
//! `csi-agent serve --mode kubernetes` on the lab disks under a small supervisor (this same test
//! binary, test `vm_supervisor`) that the host drives through ConfigMaps on the API server. Each
//! test boots one VM (tests take turns: one VM at a time) and runs a group of scenarios in it:
//!
//!     cargo nextest run -p strata-tests --test e2e      # or: cargo test -p strata-tests --test e2e
//!
//! The tests build csi-agent, csi-controller and csi-scheduler first (`cargo build`), need qemu
//! (they fail, never skip, without it), and take a few minutes under TCG. Logs of every process
//! stay in `target/tmp/e2e/<test>/` (agent.log, controller.log, scheduler.log, vm.log).

mod cluster;
mod crash;
mod deletion;
mod drift;
mod freshness;
mod lifecycle;
mod snapshot;

use cluster::Cluster;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// NodeStorage, scheduler, a volume's life, capacity freshness, 20 concurrent creates, orphans.
#[test]
fn kubernetes_mode_end_to_end() {
    runtime().block_on(async {
        let mut c = Cluster::start("kubernetes_mode_end_to_end").await;
        let status = lifecycle::node_storage_claims_the_lab(&c).await;
        eprintln!(
            "e2e [{}]: NodeStorage published with the lab claimed",
            c.at()
        );
        lifecycle::scheduler_filters_on_published_capacity(&c).await;
        eprintln!("e2e [{}]: scheduler extender checked", c.at());
        lifecycle::volume_lifecycle(&c, &status).await;
        eprintln!("e2e [{}]: volume lifecycle checked", c.at());
        freshness::capacity_freshness(&c).await;
        eprintln!("e2e [{}]: capacity freshness measured", c.at());
        lifecycle::concurrent_creates_never_overcommit(&c).await;
        eprintln!("e2e [{}]: concurrent creates checked", c.at());
        lifecycle::orphans_are_reported_then_deleted(&mut c).await;
        eprintln!("e2e [{}]: orphans checked", c.at());
        c.shutdown().await;
    });
}

/// Agent and controller killed at every step of create, expand and delete.
#[test]
fn crash_consistency() {
    runtime().block_on(async {
        let mut c = Cluster::start("crash_consistency").await;
        crash::run(&mut c).await;
        c.shutdown().await;
    });
}

/// Deletion safety: held while a PV refers to the volume or it is mounted/open (fs and raw
/// block), completed after release with no trace on reused extents; uninstall with PVs present
/// keeps every byte, reinstall adopts the volumes. Then snapshots, restores and clones on a thin
/// pool (in the same boot).
#[test]
fn deletion_end_to_end() {
    runtime().block_on(async {
        let mut c = Cluster::start("deletion_end_to_end").await;
        lifecycle::node_storage_claims_the_lab(&c).await;
        eprintln!("e2e [{}]: NodeStorage published", c.at());
        deletion::held_while_in_use_fs_and_block(&c).await;
        deletion::uninstall_keeps_every_byte_and_reinstall_finds_the_volumes(&mut c).await;
        snapshot::snapshot_restore_and_clone(&c).await;
        c.shutdown().await;
    });
}

/// Recovery policy `drift` with a real agent: a volume on another node's failed disk is moved,
/// and the StatefulSet's new claim is placed and made on the VM node.
#[test]
fn drift_moves_a_failed_disks_claim_to_a_healthy_node() {
    runtime().block_on(async {
        let c = Cluster::start("drift_moves_a_failed_disks_claim").await;
        drift::a_failed_disk_moves_the_claim_to_the_vm_node(&c).await;
        c.shutdown().await;
    });
}

/// The in-VM supervisor; started by the tests above inside the node VM, never on its own.
#[test]
#[ignore = "runs inside the node VM, started by the e2e tests"]
fn vm_supervisor() {
    let in_vm = std::fs::read_to_string("/proc/cmdline")
        .is_ok_and(|c| c.split_whitespace().any(|a| a == "strata.nodevm=1"));
    assert!(in_vm, "vm_supervisor runs only inside the node VM");
    if let Err(e) = strata_tests::e2e::supervisor::run() {
        panic!("supervisor: {e:#}");
    }
}
