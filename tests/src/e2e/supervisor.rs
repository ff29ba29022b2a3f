//! The supervisor inside the node VM: brings up the VM's network link to the fake API server,
//! then serves the host's commands ([`super::protocol`]) — starting, killing and restarting the
//! agent (`csi-agent serve --mode kubernetes`), CSI Node calls on the agent's socket, LVM
//! inspection — until the host says `shutdown`. It runs as the ignored test `vm_supervisor` of the
//! e2e test binary, started in the VM by [`super::host::Vm::boot`].

use std::collections::{BTreeMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use csi_api::csi;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::protocol::{self, ExecOutput, Exit, Op, Reply};
use crate::csi_client::{self, Csi};

/// Where the agent's socket lives in the VM.
const SOCKET: &str = "/run/e2e/csi.sock";

struct State {
    dir: PathBuf,
    node: String,
    bins: PathBuf,
    agent: Mutex<Option<Child>>,
    /// Processes holding a device open, by path ([`Op::HoldOpen`]).
    holders: Mutex<BTreeMap<String, Child>>,
}

/// Runs the supervisor until the host's `shutdown` command.
pub fn run() -> Result<()> {
    let dir = PathBuf::from(std::env::var(protocol::ENV_DIR).context(protocol::ENV_DIR)?);
    let node = std::env::var(protocol::ENV_NODE).context(protocol::ENV_NODE)?;
    // the first line of vm.log: the guest booted and ran the command (a boot that never gets
    // here shows only in the kernel console the host prints on a boot timeout)
    eprintln!("supervisor: started in the VM for node {node}");
    let bins = super::host::bin_dir();
    network_up()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    rt.block_on(serve(Arc::new(State {
        dir,
        node,
        bins,
        agent: Mutex::new(None),
        holders: Mutex::new(BTreeMap::new()),
    })))
}

fn run_cmd(argv: &[&str]) -> Result<()> {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("starting {argv:?}"))?;
    if !out.status.success() {
        bail!(
            "{argv:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Configures the VM's one network interface on qemu's user network (no DHCP in the image).
fn network_up() -> Result<()> {
    // the image loads only disk drivers at boot
    run_cmd(&["modprobe", "virtio_net"])?;
    let started = Instant::now();
    let iface = loop {
        let found = std::fs::read_dir("/sys/class/net")?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n != "lo");
        match found {
            Some(iface) => break iface,
            None if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            None => bail!("no network interface in the VM: was virtio-net-pci added?"),
        }
    };
    run_cmd(&["ip", "link", "set", "lo", "up"])?;
    run_cmd(&["ip", "addr", "add", protocol::VM_ADDRESS, "dev", &iface])?;
    run_cmd(&["ip", "link", "set", &iface, "up"])?;
    Ok(())
}

async fn client(state: &State) -> Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(state.dir.join("kubeconfig-vm"))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn serve(state: Arc<State>) -> Result<()> {
    let client = client(&state).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), protocol::NAMESPACE);
    let started = Instant::now();
    loop {
        match client.apiserver_version().await {
            Ok(_) => break,
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                eprintln!("supervisor: API server not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => bail!("the fake API server is unreachable from the VM: {e}"),
        }
    }
    let ready = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(protocol::READY.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("node".into(), state.node.clone())])),
        ..Default::default()
    };
    api.create(&PostParams::default(), &ready).await?;
    eprintln!("supervisor: serving commands");

    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut seen = HashSet::new();
    let mut events = watcher(
        api.clone(),
        watcher::Config::default().labels(protocol::LABEL),
    )
    .boxed();
    loop {
        let event = tokio::select! {
            _ = done_rx.recv() => break,
            e = events.next() => e,
        };
        let objects = match event {
            None => bail!("command watch ended"),
            Some(Err(e)) => {
                eprintln!("supervisor: watch error (retrying): {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => vec![o],
            Some(Ok(_)) => continue,
        };
        for cm in objects {
            let data = cm.data.clone().unwrap_or_default();
            let name = cm.name_any();
            if data.contains_key(protocol::KEY_REPLY) || !seen.insert(name.clone()) {
                continue;
            }
            let Some(op) = data.get(protocol::KEY_OP) else {
                continue;
            };
            let op: Op = match serde_json::from_str(op) {
                Ok(op) => op,
                Err(e) => {
                    answer(&api, &name, Reply::Err(format!("bad command: {e}"))).await;
                    continue;
                }
            };
            let state = state.clone();
            let api = api.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let last = op == Op::Shutdown;
                let reply = match handle(&state, op).await {
                    Ok(v) => Reply::Ok(v),
                    Err(e) => Reply::Err(format!("{e:#}")),
                };
                answer(&api, &name, reply).await;
                if last {
                    let _ = done.send(()).await;
                }
            });
        }
    }
    Ok(())
}

async fn answer(api: &Api<ConfigMap>, name: &str, reply: Reply) {
    let text = serde_json::to_string(&reply).unwrap_or_else(|e| format!("{{\"err\":\"{e}\"}}"));
    let patch = json!({ "data": { protocol::KEY_REPLY: text } });
    if let Err(e) = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        eprintln!("supervisor: cannot answer {name}: {e}");
    }
}

fn exit_of(status: std::process::ExitStatus) -> Exit {
    Exit {
        code: status.code(),
        signal: status.signal(),
    }
}

fn csi() -> Result<Csi> {
    Ok(Csi::connect_lazy(Path::new(SOCKET))?)
}

/// The capability of a volume: `block`, or a filesystem name.
fn capability(fs_type: &str) -> csi::VolumeCapability {
    if fs_type == "block" {
        csi_client::block_cap()
    } else {
        csi_client::mount_cap(fs_type, &[])
    }
}

async fn handle(state: &State, op: Op) -> Result<Value> {
    match op {
        Op::StartAgent { fault, args } => start_agent(state, fault, &args).await,
        Op::StopAgent { kill } => {
            let mut guard = state.agent.lock().await;
            let mut child = guard.take().ok_or_else(|| anyhow!("no agent is running"))?;
            if let Some(pid) = child.id() {
                let signal = if kill {
                    nix::sys::signal::Signal::SIGKILL
                } else {
                    nix::sys::signal::Signal::SIGTERM
                };
                let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
                nix::sys::signal::kill(pid, signal)?;
            }
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .context("the agent did not stop within 30 s")??;
            Ok(serde_json::to_value(exit_of(status))?)
        }
        Op::WaitAgentExit { timeout_ms } => {
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            loop {
                {
                    let mut guard = state.agent.lock().await;
                    let child = guard
                        .as_mut()
                        .ok_or_else(|| anyhow!("no agent is running"))?;
                    if let Some(status) = child.try_wait()? {
                        guard.take();
                        return Ok(serde_json::to_value(exit_of(status))?);
                    }
                }
                if Instant::now() > deadline {
                    bail!("the agent is still running after {timeout_ms} ms");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Op::Exec { argv } => {
            let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty argv"))?;
            let out = Command::new(prog)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .await
                .with_context(|| format!("starting {prog}"))?;
            Ok(serde_json::to_value(ExecOutput {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })?)
        }
        Op::Stage {
            volume_id,
            staging,
            fs_type,
        } => {
            std::fs::create_dir_all(&staging)?;
            let req =
                csi_client::stage_request(&volume_id, Path::new(&staging), capability(&fs_type));
            csi()?.node.node_stage_volume(req).await?;
            Ok(Value::Null)
        }
        Op::NodePublish {
            volume_id,
            staging,
            target,
            fs_type,
        } => {
            let req = csi_client::publish_request(
                &volume_id,
                Path::new(&staging),
                Path::new(&target),
                capability(&fs_type),
                false,
            );
            csi()?.node.node_publish_volume(req).await?;
            Ok(Value::Null)
        }
        Op::NodeUnpublish { volume_id, target } => {
            let req = csi_client::unpublish_request(&volume_id, Path::new(&target));
            csi()?.node.node_unpublish_volume(req).await?;
            Ok(Value::Null)
        }
        Op::NodeUnstage { volume_id, staging } => {
            let req = csi_client::unstage_request(&volume_id, Path::new(&staging));
            csi()?.node.node_unstage_volume(req).await?;
            Ok(Value::Null)
        }
        Op::NodeExpand {
            volume_id,
            volume_path,
            staging,
            required_bytes,
            fs_type,
        } => {
            let req = csi::NodeExpandVolumeRequest {
                volume_id,
                volume_path,
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: i64::try_from(required_bytes)?,
                    limit_bytes: 0,
                }),
                staging_target_path: staging,
                volume_capability: Some(csi_client::mount_cap(&fs_type, &[])),
                ..Default::default()
            };
            let resp = csi()?.node.node_expand_volume(req).await?.into_inner();
            Ok(json!({ "capacityBytes": resp.capacity_bytes }))
        }
        Op::Statfs { path } => {
            let st = nix::sys::statvfs::statvfs(path.as_str())?;
            Ok(json!({ "totalBytes": st.blocks() * st.fragment_size() }))
        }
        Op::WriteFile { path, content } => {
            std::fs::write(&path, content)?;
            // durable before a crash test looks at it
            std::fs::File::open(&path)?.sync_all()?;
            Ok(Value::Null)
        }
        Op::ReadFile { path } => Ok(Value::String(std::fs::read_to_string(&path)?)),
        Op::HoldOpen { path } => {
            let mut holders = state.holders.lock().await;
            if holders.contains_key(&path) {
                bail!("{path} is already held open");
            }
            let device = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            let child = Command::new("sleep")
                .arg("infinity")
                .stdin(Stdio::from(device))
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting sleep")?;
            let pid = child.id();
            holders.insert(path, child);
            Ok(json!({ "pid": pid }))
        }
        Op::Release { path } => {
            let mut child = state
                .holders
                .lock()
                .await
                .remove(&path)
                .ok_or_else(|| anyhow!("nothing holds {path} open"))?;
            child.kill().await?;
            Ok(Value::Null)
        }
        Op::Shutdown => {
            let mut guard = state.agent.lock().await;
            if let Some(mut child) = guard.take() {
                if let Some(pid) = child.id() {
                    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                }
                let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
            }
            Ok(Value::Null)
        }
    }
}

async fn start_agent(state: &State, fault: Option<String>, args: &[String]) -> Result<Value> {
    let mut guard = state.agent.lock().await;
    if let Some(child) = guard.as_mut()
        && child.try_wait()?.is_none()
    {
        bail!("an agent is already running");
    }
    std::fs::create_dir_all(Path::new(SOCKET).parent().unwrap_or(Path::new("/")))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.dir.join("agent.log"))?;
    let mut cmd = Command::new(state.bins.join("csi-agent"));
    // The e2e node is opted in: it is the claimed lab the suite checks (a fresh install's
    // default, `manual`, is covered by the agent's unit tests and deploy/tests).
    cmd.args(["serve", "--mode", "kubernetes", "--node-name", &state.node])
        .args(["--new-node-claim-mode", "auto"])
        .arg("--csi-endpoint")
        .arg(format!("unix://{SOCKET}"))
        // The e2e cases stage and publish under /run/e2e, not the kubelet's directory.
        .args(["--kubelet-dir", "/run/e2e"])
        .args(args)
        .env("KUBECONFIG", state.dir.join("kubeconfig-vm"))
        .env("STRATA_LOG", "info")
        .env_remove(csi_api::fault::ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(point) = &fault {
        cmd.env(csi_api::fault::ENV, point);
    }
    let mut child = cmd.spawn().context("starting csi-agent")?;
    let pid = child.id();
    let csi = csi()?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the agent exited before it was ready: {status}");
        }
        if Path::new(SOCKET).exists() && csi.ready().await {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.start_kill();
            bail!("the agent was not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    *guard = Some(child);
    Ok(json!({ "pid": pid, "readyMs": started.elapsed().as_millis() as u64 }))
}
