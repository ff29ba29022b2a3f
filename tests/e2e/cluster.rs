//! The e2e cluster of one test: the fake API server (in this process), the node VM with the
//! agent, csi-controller on the host; CSI calls to the controller, and the checks every scenario
//! shares (LVM vs LogicalVolume objects, NodeStorage, Events).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use csi_agent::lvm::naming::VOLUME_TAG_PREFIX;
use csi_agent::lvm::snapshot::SNAPSHOT_TAG_PREFIX;
use csi_agent::lvm::thin::THIN_POOL_TAG;
use csi_api::crd::{LogicalVolume, LogicalVolumePhase, NodeStorage};
use csi_api::csi::controller_client::ControllerClient;
use csi_api::csi::{self, Topology, TopologyRequirement};
use csi_api::names::{self, DeviceClass};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use strata_tests::apiserver::FakeApiServer;
use strata_tests::csi_client;
use strata_tests::e2e::host::{self, Controller, Vm, VmLock};
use strata_tests::e2e::protocol::{Exit, Op};
use tonic::transport::Channel;

pub const NODE: &str = "e2e-node";
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Controller flags outside the orphan scenario: housekeeping often, orphans after an hour.
pub const CONTROLLER_ARGS: &[&str] = &["--housekeeping-period", "2s"];

/// An LV Strata made, as `lvs` in the VM reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvInfo {
    pub vg: String,
    pub size: u64,
}

pub struct Cluster {
    pub api: FakeApiServer,
    pub client: Client,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub vm: Option<Vm>,
    pub controller: Option<Controller>,
    started: Instant,
    _lock: VmLock,
}

impl Cluster {
    /// Builds the binaries, starts the API server, boots the VM, starts the agent in it and the
    /// controller on the host.
    pub async fn start(test: &str) -> Cluster {
        let started = Instant::now();
        host::build_binaries();
        let lock = VmLock::acquire();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("e2e")
            .join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let api = FakeApiServer::start().await.unwrap();
        api.seed(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
            .unwrap();
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, "strata-system").unwrap();
        let client = api.client().unwrap();
        let vm = Vm::boot(&api, &dir, NODE).await;
        let mut cluster = Cluster {
            api,
            client,
            dir,
            kubeconfig,
            vm: Some(vm),
            controller: None,
            started,
            _lock: lock,
        };
        tokio::spawn(record_node_storage(
            cluster.client.clone(),
            cluster.dir.join("nodestorage.log"),
        ));
        cluster.start_agent(None).await;
        cluster.restart_controller(CONTROLLER_ARGS, None).await;
        eprintln!("e2e: cluster up after {:?}", started.elapsed());
        cluster
    }

    pub fn vm(&self) -> &Vm {
        self.vm.as_ref().expect("the VM is running")
    }

    /// Seconds since the cluster started (for the timing lines in the output).
    pub fn at(&self) -> String {
        format!("{:.1}s", self.started.elapsed().as_secs_f64())
    }

    pub async fn start_agent(&self, fault: Option<&str>) {
        self.start_agent_with(fault, &[]).await;
    }

    /// Starts the agent with `args` after the suite's own flags (e.g. `--thin-pool nvme=50`).
    pub async fn start_agent_with(&self, fault: Option<&str>, args: &[&str]) {
        let reply = self
            .vm()
            .must(Op::StartAgent {
                fault: fault.map(str::to_owned),
                args: args.iter().map(|a| a.to_string()).collect(),
            })
            .await;
        eprintln!(
            "e2e [{}]: agent started (fault {fault:?}, args {args:?}): {reply}",
            self.at()
        );
    }

    pub async fn stop_agent(&self, kill: bool) -> Exit {
        serde_json::from_value(self.vm().must(Op::StopAgent { kill }).await).unwrap()
    }

    /// Waits for the agent to abort at its fault point (SIGABRT), and says where it was.
    pub async fn expect_agent_abort(&self, point: &str) {
        let exit: Exit = serde_json::from_value(
            self.vm()
                .must(Op::WaitAgentExit { timeout_ms: 90_000 })
                .await,
        )
        .unwrap();
        assert_eq!(
            exit.signal,
            Some(6),
            "the agent should have aborted at {point}: {exit:?}\n{}",
            host::tail(&self.dir.join("agent.log"), 30)
        );
    }

    /// (Re)starts csi-controller with `args` and an optional fault point.
    pub async fn restart_controller(&mut self, args: &[&str], fault: Option<&str>) {
        if let Some(mut old) = self.controller.take() {
            old.process.stop();
        }
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.controller = Some(Controller::start(&self.dir, &self.kubeconfig, &args, fault).await);
    }

    /// Waits for the controller to abort at its fault point.
    pub fn expect_controller_abort(&mut self, point: &str) {
        let controller = self.controller.as_mut().expect("controller");
        let status = controller.process.wait_exit(Duration::from_secs(60));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(6),
            "the controller should have aborted at {point}: {status:?}\n{}",
            host::tail(&controller.process.log, 30)
        );
        self.controller = None;
    }

    pub fn csi(&self) -> ControllerClient<Channel> {
        self.controller
            .as_ref()
            .expect("controller")
            .csi
            .controller
            .clone()
    }

    pub async fn create(
        &self,
        name: &str,
        class: DeviceClass,
        bytes: u64,
        pvc: Option<(&str, &str)>,
    ) -> Result<csi::Volume, tonic::Status> {
        create(
            self.csi(),
            create_request(name, class, bytes, pvc),
            Duration::from_secs(120),
        )
        .await
    }

    /// CreateVolume until it succeeds (what external-provisioner does), at most `timeout`.
    pub async fn create_until_ok(&self, name: &str, class: DeviceClass, bytes: u64) -> csi::Volume {
        let start = Instant::now();
        loop {
            match self.create(name, class, bytes, None).await {
                Ok(v) => return v,
                Err(e) if start.elapsed() < Duration::from_secs(180) => {
                    eprintln!("e2e [{}]: CreateVolume {name} retried after {e}", self.at());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("CreateVolume {name} never succeeded: {e}\n{}", self.logs()),
            }
        }
    }

    pub async fn expand(
        &self,
        name: &str,
        bytes: u64,
    ) -> Result<csi::ControllerExpandVolumeResponse, tonic::Status> {
        expand(self.csi(), name, bytes, Duration::from_secs(120)).await
    }

    pub async fn expand_until_ok(
        &self,
        name: &str,
        bytes: u64,
    ) -> csi::ControllerExpandVolumeResponse {
        let start = Instant::now();
        loop {
            match self.expand(name, bytes).await {
                Ok(r) => return r,
                Err(e) if start.elapsed() < Duration::from_secs(180) => {
                    eprintln!(
                        "e2e [{}]: ControllerExpandVolume {name} retried after {e}",
                        self.at()
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!(
                    "ControllerExpandVolume {name} never succeeded: {e}\n{}",
                    self.logs()
                ),
            }
        }
    }

    pub async fn delete(&self, name: &str) -> Result<(), tonic::Status> {
        delete(self.csi(), name).await
    }

    pub async fn delete_until_ok(&self, name: &str) {
        let start = Instant::now();
        loop {
            match self.delete(name).await {
                Ok(()) => return,
                Err(e) if start.elapsed() < Duration::from_secs(60) => {
                    eprintln!("e2e [{}]: DeleteVolume {name} retried after {e}", self.at());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("DeleteVolume {name} never succeeded: {e}"),
            }
        }
    }

    pub fn volumes(&self) -> Api<LogicalVolume> {
        Api::all(self.client.clone())
    }

    pub async fn volume(&self, name: &str) -> Option<LogicalVolume> {
        self.volumes().get_opt(name).await.unwrap()
    }

    /// Waits until the LogicalVolume is gone (its finalizer released by the agent).
    pub async fn wait_gone(&self, name: &str) {
        let start = Instant::now();
        while let Some(lv) = self.volume(name).await {
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "LogicalVolume {name} still exists after 180 s (finalizers {:?}, deleting {}):\n{}",
                lv.finalizers(),
                lv.metadata.deletion_timestamp.is_some(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn node_storage(&self, node: &str) -> Option<NodeStorage> {
        Api::<NodeStorage>::all(self.client.clone())
            .get_opt(node)
            .await
            .unwrap()
    }

    /// Polls `f` every 200 ms until it returns `Some`, at most `timeout`.
    pub async fn eventually<T, F, Fut>(&self, what: &str, timeout: Duration, mut f: F) -> T
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
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Strata's LVs in the VM (those with the owner tag, thin pools aside), by CSI volume name
    /// (or snapshot id for a snapshot LV).
    pub async fn strata_lvs(&self) -> BTreeMap<String, LvInfo> {
        let out = self
            .vm()
            .must(Op::Exec {
                argv: [
                    "lvs",
                    "--reportformat",
                    "json",
                    "--units",
                    "b",
                    "--nosuffix",
                    "-o",
                    "vg_name,lv_name,lv_size,lv_tags",
                ]
                .map(String::from)
                .to_vec(),
            })
            .await;
        assert_eq!(out["code"], 0, "lvs failed: {out}");
        let report: serde_json::Value =
            serde_json::from_str(out["stdout"].as_str().unwrap()).unwrap();
        let mut lvs = BTreeMap::new();
        for lv in report["report"][0]["lv"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let tags: Vec<&str> = lv["lv_tags"].as_str().unwrap_or("").split(',').collect();
            // the thin pool of a class is no volume
            if !tags.contains(&names::LVM_OWNER_TAG) || tags.contains(&THIN_POOL_TAG) {
                continue;
            }
            let volume = tags
                .iter()
                .find_map(|t| {
                    t.strip_prefix(VOLUME_TAG_PREFIX)
                        .or_else(|| t.strip_prefix(SNAPSHOT_TAG_PREFIX))
                })
                .map(unescape_tag)
                .unwrap_or_else(|| panic!("Strata LV without a volume or snapshot tag: {lv}"));
            lvs.insert(
                volume,
                LvInfo {
                    vg: lv["vg_name"].as_str().unwrap().to_owned(),
                    size: lv["lv_size"].as_str().unwrap().parse().unwrap(),
                },
            );
        }
        lvs
    }

    /// The convergence invariant: the LogicalVolume objects are exactly `expected`, none is being
    /// deleted, all are Ready at their LV's size, and LVM holds exactly one Strata LV per object
    /// (in its class's VG, at least the spec's size). Polls until it holds (at most 90 s).
    pub async fn converged(&self, expected: &BTreeSet<String>) -> BTreeMap<String, LvInfo> {
        let start = Instant::now();
        loop {
            let objects = self
                .volumes()
                .list(&ListParams::default())
                .await
                .unwrap()
                .items;
            let lvs = self.strata_lvs().await;
            let problems = convergence_problems(&objects, &lvs, expected);
            if problems.is_empty() {
                return lvs;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "not converged after 90 s:\n  {}\nobjects: {:?}\nLVs: {lvs:?}\n{}",
                problems.join("\n  "),
                objects.iter().map(|o| o.name_any()).collect::<Vec<_>>(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The tails of the agent's and the controller's logs.
    pub fn logs(&self) -> String {
        format!(
            "--- agent log (tail) ---\n{}\n--- controller log (tail) ---\n{}",
            host::tail(&self.dir.join("agent.log"), 25),
            host::tail(&self.dir.join("controller.log"), 25)
        )
    }

    /// Stops the controller and powers the VM off (checking that it ends cleanly).
    pub async fn shutdown(mut self) {
        if let Some(mut c) = self.controller.take() {
            c.process.stop();
        }
        if let Some(vm) = self.vm.take() {
            vm.shutdown().await;
        }
        eprintln!("e2e: done after {}", self.at());
    }
}

/// Appends one line per NodeStorage status change to `path` (a diagnostic for failures).
async fn record_node_storage(client: Client, path: PathBuf) {
    use futures::StreamExt;
    use std::io::Write;
    let mut events = kube::runtime::watcher(
        Api::<NodeStorage>::all(client),
        kube::runtime::watcher::Config::default(),
    )
    .boxed();
    let Ok(mut file) = std::fs::File::create(&path) else {
        return;
    };
    while let Some(event) = events.next().await {
        let Ok(
            kube::runtime::watcher::Event::Apply(ns) | kube::runtime::watcher::Event::InitApply(ns),
        ) = event
        else {
            continue;
        };
        let status = ns.status.unwrap_or_default();
        let classes: Vec<String> = status
            .device_classes
            .iter()
            .map(|c| format!("{}={}/{}", c.name, c.allocatable_bytes, c.total_bytes))
            .collect();
        let conditions: Vec<String> = status
            .conditions
            .iter()
            .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
            .collect();
        let _ = writeln!(
            file,
            "{} {} classes {classes:?} conditions {conditions:?}",
            chrono::Utc::now().format("%H:%M:%S%.3f"),
            ns.metadata.name.unwrap_or_default()
        );
    }
}

/// What is wrong with the cluster against the convergence invariant (empty = converged).
pub fn convergence_problems(
    objects: &[LogicalVolume],
    lvs: &BTreeMap<String, LvInfo>,
    expected: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let names: BTreeSet<String> = objects.iter().map(|o| o.name_any()).collect();
    for missing in expected.difference(&names) {
        problems.push(format!("LogicalVolume {missing} is lost"));
    }
    for extra in names.difference(expected) {
        problems.push(format!("LogicalVolume {extra} should not exist"));
    }
    for lv in objects {
        let name = lv.name_any();
        if lv.metadata.deletion_timestamp.is_some() {
            problems.push(format!(
                "{name} is still being deleted ({:?})",
                lv.finalizers()
            ));
        }
        let status = lv.status.clone().unwrap_or_default();
        if status.phase != Some(LogicalVolumePhase::Ready) {
            problems.push(format!(
                "{name} is {:?} ({:?})",
                status.phase, status.message
            ));
        }
        match lvs.get(&name) {
            None => problems.push(format!("{name} has no LV in LVM")),
            Some(info) => {
                if info.vg != lv.spec.device_class.vg_name() {
                    problems.push(format!("{name} is in VG {}", info.vg));
                }
                if info.size < lv.spec.size_bytes {
                    problems.push(format!(
                        "{name}: LV of {} bytes < spec {}",
                        info.size, lv.spec.size_bytes
                    ));
                }
                if status.current_size_bytes != Some(info.size) {
                    problems.push(format!(
                        "{name}: status says {:?} bytes, LVM {}",
                        status.current_size_bytes, info.size
                    ));
                }
            }
        }
    }
    for leaked in lvs.keys().filter(|n| !names.contains(*n)) {
        problems.push(format!("LV of {leaked} leaked (no LogicalVolume)"));
    }
    problems
}

/// Undoes the agent's tag escaping (`_XX` = the byte 0xXX).
pub fn unescape_tag(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_'
            && let Some(b) = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The CreateVolume request external-provisioner sends for a WaitForFirstConsumer claim whose
/// pod was scheduled on [`NODE`], with `--extra-create-metadata`.
pub fn create_request(
    name: &str,
    class: DeviceClass,
    bytes: u64,
    pvc: Option<(&str, &str)>,
) -> csi::CreateVolumeRequest {
    let mut req = csi_client::create_request(
        name,
        class.as_str(),
        i64::try_from(bytes).unwrap(),
        csi_client::mount_cap("xfs", &[]),
    );
    let topology = Topology {
        segments: [(names::TOPOLOGY_KEY.to_owned(), NODE.to_owned())].into(),
    };
    req.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![topology.clone()],
        preferred: vec![topology],
    });
    if let Some((namespace, claim)) = pvc {
        req.parameters
            .insert("csi.storage.k8s.io/pvc/namespace".into(), namespace.into());
        req.parameters
            .insert("csi.storage.k8s.io/pvc/name".into(), claim.into());
    }
    req
}

fn with_timeout<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

pub async fn create(
    mut csi: ControllerClient<Channel>,
    req: csi::CreateVolumeRequest,
    timeout: Duration,
) -> Result<csi::Volume, tonic::Status> {
    let resp = csi.create_volume(with_timeout(req, timeout)).await?;
    resp.into_inner()
        .volume
        .ok_or_else(|| tonic::Status::internal("CreateVolume answered no volume"))
}

pub async fn expand(
    mut csi: ControllerClient<Channel>,
    name: &str,
    bytes: u64,
    timeout: Duration,
) -> Result<csi::ControllerExpandVolumeResponse, tonic::Status> {
    let req = csi::ControllerExpandVolumeRequest {
        volume_id: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: i64::try_from(bytes).unwrap(),
            limit_bytes: 0,
        }),
        volume_capability: Some(csi_client::mount_cap("xfs", &[])),
        ..Default::default()
    };
    Ok(csi
        .controller_expand_volume(with_timeout(req, timeout))
        .await?
        .into_inner())
}

pub async fn delete(mut csi: ControllerClient<Channel>, name: &str) -> Result<(), tonic::Status> {
    let req = csi::DeleteVolumeRequest {
        volume_id: name.into(),
        ..Default::default()
    };
    csi.delete_volume(with_timeout(req, Duration::from_secs(60)))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_unescape() {
        assert_eq!(unescape_tag("pvc-1"), "pvc-1");
        assert_eq!(unescape_tag("a_2Fb_5F"), "a/b_");
    }
}
