//! Scenario group 2 (one VM boot): crash consistency. The agent and the controller abort
//! (`STRATA_FAULT_POINT`, like `kill -9`) at each step of create, expand and delete; they are
//! restarted, the CSI call is retried as the sidecars would, and the cluster must converge:
//! every Strata LV in LVM has a LogicalVolume and vice versa, none is lost (a witness volume
//! keeps its data throughout), and deleted volumes lose their finalizer and disappear.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use csi_api::names::DeviceClass;
use serde_json::json;
use strata_tests::e2e::protocol::Op;

use crate::cluster::{self, CONTROLLER_ARGS, Cluster, GIB, MIB};

const AGENT_CREATE: [&str; 2] = ["agent.create.before-lv", "agent.create.after-lv"];
const AGENT_EXTEND: [&str; 2] = ["agent.extend.before-lv", "agent.extend.after-lv"];
const AGENT_REMOVE: [&str; 2] = ["agent.remove.before-lv", "agent.remove.after-lv"];
const CONTROLLER_CREATE: [&str; 2] = [
    "controller.create.before-object",
    "controller.create.after-object",
];
const CONTROLLER_EXPAND: [&str; 2] = [
    "controller.expand.before-resize",
    "controller.expand.after-resize",
];
const CONTROLLER_DELETE: [&str; 2] = [
    "controller.delete.before-delete",
    "controller.delete.after-delete",
];

const WITNESS: &str = "pvc-witness";
const W_STAGING: &str = "/run/e2e/staging/witness";
const W_FILE: &str = "/run/e2e/staging/witness/data";

/// The agent crashes at `point` while the controller waits for it; restarted, it finishes.
async fn agent_crash(c: &Cluster, point: &str, call: impl std::future::Future<Output = bool>) {
    let t = Instant::now();
    c.stop_agent(false).await;
    c.start_agent(Some(point)).await;
    let (ok, ()) = tokio::join!(call, async {
        c.expect_agent_abort(point).await;
        c.start_agent(None).await;
    });
    eprintln!(
        "e2e [{}]: agent crash at {point}: first call {} ({:?})",
        c.at(),
        if ok {
            "succeeded after the restart"
        } else {
            "failed; retried"
        },
        t.elapsed()
    );
}

pub async fn run(c: &mut Cluster) {
    let mut expected = BTreeSet::new();
    let mut sizes = std::collections::BTreeMap::new();

    c.eventually(
        "NodeStorage with three device classes",
        Duration::from_secs(120),
        || async {
            let status = c.node_storage(cluster::NODE).await?.status?;
            (status.device_classes.len() == 3).then_some(())
        },
    )
    .await;

    // the witness: a volume with data that every crash below must leave alone
    c.create_until_ok(WITNESS, DeviceClass::Nvme, GIB).await;
    expected.insert(WITNESS.to_owned());
    c.vm()
        .must(Op::Stage {
            volume_id: WITNESS.into(),
            staging: W_STAGING.into(),
            fs_type: "xfs".into(),
        })
        .await;
    c.vm()
        .must(Op::WriteFile {
            path: W_FILE.into(),
            content: "witness".into(),
        })
        .await;

    // agent: create
    for (i, point) in AGENT_CREATE.iter().enumerate() {
        let name = format!("pvc-agent-create-{i}");
        let csi = c.csi();
        let req = cluster::create_request(&name, DeviceClass::Nvme, 512 * MIB, None);
        agent_crash(c, point, async {
            cluster::create(csi, req, Duration::from_secs(60))
                .await
                .is_ok()
        })
        .await;
        c.create_until_ok(&name, DeviceClass::Nvme, 512 * MIB).await;
        expected.insert(name.clone());
        sizes.insert(name, 512 * MIB);
        c.converged(&expected).await;
    }

    // agent: extend (both on the first volume, 256 MiB more each time)
    let target = "pvc-agent-create-0".to_owned();
    for point in AGENT_EXTEND {
        let size = sizes[&target] + 256 * MIB;
        let csi = c.csi();
        agent_crash(c, point, async {
            cluster::expand(csi, &target, size, Duration::from_secs(60))
                .await
                .is_ok()
        })
        .await;
        let r = c.expand_until_ok(&target, size).await;
        assert_eq!(r.capacity_bytes, size as i64);
        sizes.insert(target.clone(), size);
        let lvs = c.converged(&expected).await;
        assert_eq!(lvs[&target].size, size, "{point}");
    }

    // agent: remove
    for (i, point) in AGENT_REMOVE.iter().enumerate() {
        let name = format!("pvc-agent-create-{i}");
        let csi = c.csi();
        agent_crash(c, point, async {
            cluster::delete(csi, &name).await.is_ok()
        })
        .await;
        c.delete_until_ok(&name).await;
        c.wait_gone(&name).await;
        expected.remove(&name);
        c.converged(&expected).await;
    }

    // a plain kill -9 of the agent in the middle of a burst of creates
    let t = Instant::now();
    let burst: Vec<String> = (0..4).map(|i| format!("pvc-burst-{i}")).collect();
    let calls = burst.iter().map(|n| {
        let csi = c.csi();
        let req = cluster::create_request(n, DeviceClass::Hdd, 256 * MIB, None);
        async move { cluster::create(csi, req, Duration::from_secs(60)).await }
    });
    let killer = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let exit = c.stop_agent(true).await;
        assert_eq!(exit.signal, Some(9), "{exit:?}");
        c.start_agent(None).await;
    };
    let (_, ()) = tokio::join!(futures::future::join_all(calls), killer);
    for name in &burst {
        c.create_until_ok(name, DeviceClass::Hdd, 256 * MIB).await;
        expected.insert(name.clone());
    }
    c.converged(&expected).await;
    eprintln!(
        "e2e [{}]: kill -9 during 4 creates converged ({:?})",
        c.at(),
        t.elapsed()
    );

    // controller: create
    for (i, point) in CONTROLLER_CREATE.iter().enumerate() {
        let t = Instant::now();
        let name = format!("pvc-controller-create-{i}");
        c.restart_controller(CONTROLLER_ARGS, Some(point)).await;
        let first = c.create(&name, DeviceClass::Ssd, 256 * MIB, None).await;
        assert!(first.is_err(), "the controller died at {point}: {first:?}");
        c.expect_controller_abort(point);
        c.restart_controller(CONTROLLER_ARGS, None).await;
        c.create_until_ok(&name, DeviceClass::Ssd, 256 * MIB).await;
        expected.insert(name.clone());
        sizes.insert(name, 256 * MIB);
        c.converged(&expected).await;
        eprintln!(
            "e2e [{}]: controller crash at {point} converged ({:?})",
            c.at(),
            t.elapsed()
        );
    }

    // controller: expand
    let target = "pvc-controller-create-0".to_owned();
    for point in CONTROLLER_EXPAND {
        let t = Instant::now();
        let size = sizes[&target] + 256 * MIB;
        c.restart_controller(CONTROLLER_ARGS, Some(point)).await;
        let first = c.expand(&target, size).await;
        assert!(first.is_err(), "the controller died at {point}: {first:?}");
        c.expect_controller_abort(point);
        c.restart_controller(CONTROLLER_ARGS, None).await;
        let r = c.expand_until_ok(&target, size).await;
        assert_eq!(r.capacity_bytes, size as i64);
        sizes.insert(target.clone(), size);
        let lvs = c.converged(&expected).await;
        assert_eq!(lvs[&target].size, size, "{point}");
        eprintln!(
            "e2e [{}]: controller crash at {point} converged ({:?})",
            c.at(),
            t.elapsed()
        );
    }

    // controller: delete
    for (i, point) in CONTROLLER_DELETE.iter().enumerate() {
        let t = Instant::now();
        let name = format!("pvc-controller-create-{i}");
        c.restart_controller(CONTROLLER_ARGS, Some(point)).await;
        let first = c.delete(&name).await;
        assert!(first.is_err(), "the controller died at {point}: {first:?}");
        c.expect_controller_abort(point);
        c.restart_controller(CONTROLLER_ARGS, None).await;
        c.delete_until_ok(&name).await;
        c.wait_gone(&name).await;
        expected.remove(&name);
        c.converged(&expected).await;
        eprintln!(
            "e2e [{}]: controller crash at {point} converged ({:?})",
            c.at(),
            t.elapsed()
        );
    }

    // nothing lost: the witness kept its data through every crash
    assert_eq!(
        c.vm()
            .must(Op::ReadFile {
                path: W_FILE.into()
            })
            .await,
        json!("witness")
    );
    c.vm()
        .must(Op::NodeUnstage {
            volume_id: WITNESS.into(),
            staging: W_STAGING.into(),
        })
        .await;
    for name in expected.clone() {
        c.delete_until_ok(&name).await;
        c.wait_gone(&name).await;
        expected.remove(&name);
    }
    c.converged(&expected).await;
}
