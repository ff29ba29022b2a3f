//! Issue 15 through the real csi-controller binary against the fake API server: two replicas,
//! the leader stopped (SIGSTOP, at the fault point after its first housekeeping action) in the
//! middle of a pass, the other takes over, the first is continued — and no action is taken twice
//! (counted in the API server's request log); and a claim recreated with a new uid before the
//! controller acts is refused under `--node-loss-policy=delete-pvc`.
//!
//! Also the replica helper the drift tests share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csi_api::crd::LogicalVolume;
use csi_api::names;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use strata_tests::apiserver::FakeApiServer;
use strata_tests::csi_client::Csi;
use strata_tests::e2e::host::{self, Process};

/// One csi-controller process on the host.
pub struct Replica {
    pub process: Process,
    pub csi: Csi,
}

impl Replica {
    /// Starts csi-controller as `identity` (Lease in namespace `default`), with its socket and
    /// log in `dir/<identity>/`, and waits until Probe answers.
    pub async fn start(
        dir: &Path,
        kubeconfig: &Path,
        identity: &str,
        args: &[&str],
        fault: Option<&str>,
    ) -> Replica {
        let own = dir.join(identity);
        std::fs::create_dir_all(&own).unwrap();
        let socket = own.join("controller.sock");
        let mut cmd = host::controller_command(&socket, identity, kubeconfig, args, fault);
        cmd.args(["--lease-namespace", "default"]);
        let mut process = Process::spawn(cmd, &own.join("controller.log"));
        let csi = Csi::connect_lazy(&socket).expect("controller channel");
        let start = Instant::now();
        loop {
            if let Some(status) = process.exited() {
                panic!(
                    "csi-controller {identity} exited at start ({status}):\n{}",
                    host::tail(&process.log, 30)
                );
            }
            // A replica told to stop at a fault point may stop before it answers: a stopped
            // process accepts connections and never replies, so every probe has a deadline.
            if fault.is_some_and(|f| f.starts_with(csi_api::fault::STOP_PREFIX))
                && stopped(&process)
            {
                break;
            }
            let ready = tokio::time::timeout(Duration::from_secs(2), csi.ready()).await;
            if socket.exists() && ready == Ok(true) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "csi-controller {identity} not ready within 30 s:\n{}",
                host::tail(&process.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Replica { process, csi }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.process.child.id()).unwrap())
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// Whether the process is stopped (state `T` in /proc/<pid>/stat).
    pub fn stopped(&self) -> bool {
        stopped(&self.process)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }
}

fn stopped(process: &Process) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", process.child.id()))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        == Some('T')
}

/// A fresh folder for a test's processes, and a fake API server with its kubeconfig.
pub async fn cluster(test: &str) -> (FakeApiServer, kube::Client, PathBuf, PathBuf) {
    host::build_binaries();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("controller")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let srv = FakeApiServer::start().await.expect("fake API server");
    let kubeconfig = dir.join("kubeconfig");
    srv.write_kubeconfig(&kubeconfig, "default").unwrap();
    let client = srv.client().unwrap();
    (srv, client, dir, kubeconfig)
}

/// Polls `f` every 200 ms until it returns `Some`, at most `timeout`; `logs` explains a failure.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    logs: impl Fn() -> String,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The request log as `METHOD /path` (query dropped), counted.
pub fn request_counts(srv: &FakeApiServer) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in srv.requests() {
        let line = r.split('?').next().unwrap_or_default().to_owned();
        *counts.entry(line).or_insert(0) += 1;
    }
    counts
}

const LVS: &str = "/apis/strata.io/v1alpha1/logicalvolumes";

fn volume(name: &str, node: &str, finalizers: &[&str]) -> Value {
    json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "LogicalVolume",
        "metadata": {"name": name, "finalizers": finalizers,
                     "labels": {"strata.io/node": node, "strata.io/device-class": "ssd"}},
        "spec": {"nodeName": node, "deviceClass": "ssd", "sizeBytes": 1_073_741_824u64},
        "status": {"phase": "Ready"},
    })
}

fn strata_pv(name: &str, volume: &str, claim: Option<(&str, &str)>) -> Value {
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {"storageClassName": "strata-ssd", "capacity": {"storage": "1Gi"},
                 "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Delete",
                 "csi": {"driver": names::DRIVER_NAME, "volumeHandle": volume}},
    });
    if let Some((ns, claim)) = claim {
        pv["spec"]["claimRef"] = json!({"namespace": ns, "name": claim});
    }
    pv
}

/// The leader stops (SIGSTOP) after the first action of a pass; the second replica takes over
/// after the lease expires and does the rest; the first is continued and writes nothing more:
/// every LogicalVolume is patched and deleted exactly once.
#[tokio::test]
async fn a_leader_paused_mid_housekeeping_takes_no_action_twice() {
    let (srv, client, dir, kubeconfig) = cluster("paused_leader").await;
    srv.seed(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}))
        .unwrap();
    // First in name order: a bound volume whose PV is not yet recorded (one merge patch).
    srv.seed(&volume(
        "a-bound",
        "n1",
        &[names::FINALIZER, names::FINALIZER_PV_PROTECTION],
    ))
    .unwrap();
    srv.seed(&strata_pv("pv-a", "a-bound", None)).unwrap();
    // Then orphans (no PV) to delete: protection released (one JSON patch), then DELETE.
    let orphans: Vec<String> = (0..6).map(|i| format!("b-orphan-{i}")).collect();
    for name in &orphans {
        srv.seed(&volume(name, "n1", &[names::FINALIZER_PV_PROTECTION]))
            .unwrap();
    }
    let args = [
        "--housekeeping-period",
        "1s",
        "--orphan-policy",
        "delete",
        "--orphan-grace",
        "0s",
    ];
    let one = Replica::start(
        &dir,
        &kubeconfig,
        "one",
        &args,
        Some("stop:controller.housekeeping.after-action"),
    )
    .await;
    let logs = || host::tail(&dir.join("one/controller.log"), 30);
    eventually(
        "replica one to stop after its first action",
        Duration::from_secs(30),
        logs,
        || async { one.stopped().then_some(()) },
    )
    .await;
    let counts = request_counts(&srv);
    assert_eq!(
        counts.get(&format!("PATCH {LVS}/a-bound")),
        Some(&1),
        "{counts:?}"
    );
    assert!(
        !counts.keys().any(|k| k.starts_with("DELETE")),
        "replica one stopped before any deletion: {counts:?}"
    );

    let two = Replica::start(&dir, &kubeconfig, "two", &args, None).await;
    let api: Api<LogicalVolume> = Api::all(client.clone());
    let logs2 = || {
        format!(
            "--- one ---\n{}\n--- two ---\n{}",
            host::tail(&dir.join("one/controller.log"), 20),
            host::tail(&dir.join("two/controller.log"), 30)
        )
    };
    // The lease (15 s) expires, two leads and deletes every orphan.
    eventually(
        "replica two to delete the orphans",
        Duration::from_secs(60),
        logs2,
        || async {
            let left = api.list(&Default::default()).await.ok()?.items.len();
            (left == 1).then_some(())
        },
    )
    .await;
    assert!(one.stopped(), "replica one stayed stopped");

    // One is continued in the middle of its pass: it must notice it no longer leads before its
    // next write — either the pass's own check before the write ("does not hold the Lease") or
    // the lease manager, which may see the expired lease first and cancel the pass ("leadership
    // lost"). Both are logged only after the SIGCONT (the whole process was stopped), and the
    // request counts below show that no action was taken twice either way.
    one.signal(Signal::SIGCONT);
    eventually(
        "replica one to see it lost the lease",
        Duration::from_secs(30),
        logs2,
        || async {
            let log = one.log();
            (log.contains("does not hold the Lease") || log.contains("leadership lost"))
                .then_some(())
        },
    )
    .await;
    // A few more periods of both.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let counts = request_counts(&srv);
    assert_eq!(
        counts.get(&format!("PATCH {LVS}/a-bound")),
        Some(&1),
        "{counts:?}"
    );
    assert_eq!(
        counts.get(&format!("DELETE {LVS}/a-bound")),
        None,
        "{counts:?}"
    );
    for name in &orphans {
        for method in ["PATCH", "DELETE"] {
            assert_eq!(
                counts.get(&format!("{method} {LVS}/{name}")),
                Some(&1),
                "{method} {name} exactly once: {counts:?}\n{}",
                logs2()
            );
        }
    }
    assert!(api.get_opt("a-bound").await.unwrap().is_some());
    drop(one);
    drop(two);
}

fn claim(name: &str, volume_name: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "db"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "strata-ssd",
                 "volumeName": volume_name, "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Bound"},
    }))
    .unwrap()
}

/// `--node-loss-policy=delete-pvc` through the binary: the claim of a lost volume is deleted
/// when it is the recorded one, and refused (kept) when the StatefulSet recreated it under the
/// same name (new uid) before the controller acted.
#[tokio::test]
async fn a_lost_volumes_claim_recreated_with_a_new_uid_is_not_deleted() {
    let (srv, client, dir, kubeconfig) = cluster("stale_uid").await;
    // Node "gone" does not exist: both volumes are lost.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "db");
    let right = claims
        .create(&PostParams::default(), &claim("data-web-1", "pv-right"))
        .await
        .unwrap();
    let first = claims
        .create(&PostParams::default(), &claim("data-web-0", "pv-stale"))
        .await
        .unwrap();
    for (lv, pv, claim_name, uid) in [
        ("pvc-right", "pv-right", "data-web-1", right.uid().unwrap()),
        ("pvc-stale", "pv-stale", "data-web-0", first.uid().unwrap()),
    ] {
        let mut v = volume(
            lv,
            "gone",
            &[names::FINALIZER, names::FINALIZER_PV_PROTECTION],
        );
        v["spec"]["pvc"] = json!({"namespace": "db", "name": claim_name, "uid": uid});
        srv.seed(&v).unwrap();
        srv.seed(&strata_pv(pv, lv, Some(("db", claim_name))))
            .unwrap();
    }
    // The StatefulSet recreates data-web-0 before the controller acts (same name and PV name,
    // new uid).
    claims
        .delete("data-web-0", &DeleteParams::default())
        .await
        .unwrap();
    let recreated = claims
        .create(&PostParams::default(), &claim("data-web-0", "pv-stale"))
        .await
        .unwrap();
    assert_ne!(recreated.uid(), first.uid());
    let deletes_before = request_counts(&srv)
        .get("DELETE /api/v1/namespaces/db/persistentvolumeclaims/data-web-0")
        .copied();

    let one = Replica::start(
        &dir,
        &kubeconfig,
        "one",
        &[
            "--housekeeping-period",
            "1s",
            "--node-loss-policy",
            "delete-pvc",
        ],
        None,
    )
    .await;
    let logs = || host::tail(&dir.join("one/controller.log"), 30);
    eventually(
        "the recorded claim to be deleted",
        Duration::from_secs(40),
        logs,
        || async {
            claims
                .get_opt("data-web-1")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    let lvs: Api<LogicalVolume> = Api::all(client.clone());
    eventually(
        "both volumes marked lost",
        Duration::from_secs(20),
        logs,
        || async {
            let all = lvs.list(&Default::default()).await.ok()?.items;
            all.iter()
                .all(|lv| lv.annotations().contains_key("strata.io/node-lost"))
                .then_some(())
        },
    )
    .await;
    // Two more passes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = claims.get_opt("data-web-0").await.unwrap().expect("kept");
    assert_eq!(kept.uid(), recreated.uid());
    assert_eq!(
        request_counts(&srv)
            .get("DELETE /api/v1/namespaces/db/persistentvolumeclaims/data-web-0")
            .copied(),
        deletes_before,
        "no DELETE of the recreated claim was even sent\n{}",
        logs()
    );
    assert!(
        one.log().contains("pvc-stale"),
        "the refusal is logged:\n{}",
        logs()
    );
    drop(one);
}
