//! Kubernetes mode for the same suite, in the same VM boot: the fake API server (in this
//! process, on the VM's loopback), `csi-agent serve --mode kubernetes` and `csi-controller` as
//! child processes against it. Controller-service cases talk to the controller's socket,
//! Node-service cases to the agent's; Identity is the controller's (the plugin as the CO's
//! provisioner sees it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use csi_api::crd::NodeStorage;
use kube::Api;
use serde_json::json;
use strata_tests::apiserver::FakeApiServer;
use strata_tests::csi_client::{Csi, agent_bin};
use tokio::process::{Child, Command};

/// What the Kubernetes-mode cases get besides the CSI clients.
pub struct Kube {
    pub api: FakeApiServer,
    pub client: kube::Client,
    agent: Child,
    controller: Child,
}

/// The binary built next to the agent (same profile folder).
fn sibling(name: &str) -> PathBuf {
    agent_bin().with_file_name(name)
}

fn spawn(mut cmd: Command, log: &Path) -> Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

async fn ready(csi: &Csi, child: &mut Child, socket: &Path, what: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before it was ready: {status}");
        }
        if socket.exists() && csi.ready().await {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(90),
            "{what} not ready within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Kube {
    /// Starts the API server stand-in, the agent and the controller; returns once both answer
    /// Probe and the agent has published all three classes. `csi` gets the controller's Identity
    /// and Controller clients and the agent's Node client.
    pub async fn start(dir: &Path, node: &str) -> Result<(Kube, Csi)> {
        // on the VM's loopback (its init brings `lo` up)
        let api = FakeApiServer::start().await?;
        api.seed(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))?;
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, "strata-system")?;
        let client = api.client()?;

        let agent_socket = dir.join("agent.sock");
        let mut cmd = Command::new(agent_bin());
        cmd.args(["serve", "--mode", "kubernetes", "--node-name", node])
            .args(["--new-node-claim-mode", "auto"])
            .arg("--csi-endpoint")
            .arg(format!("unix://{}", agent_socket.display()))
            .arg("--kubelet-dir")
            .arg(dir)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", &kubeconfig)
            .env("STRATA_LOG", "info");
        let mut agent = spawn(cmd, &dir.join("agent-kubernetes.log"))?;

        let controller_socket = dir.join("controller.sock");
        let mut cmd = Command::new(sibling("csi-controller"));
        cmd.arg("--csi-endpoint")
            .arg(format!("unix://{}", controller_socket.display()))
            .args(["--metrics-addr", "127.0.0.1:0", "--identity", "conformance"])
            .env("KUBECONFIG", &kubeconfig)
            .env("STRATA_LOG", "info");
        let mut controller = spawn(cmd, &dir.join("controller.log"))?;

        let node_csi = Csi::connect_lazy(&agent_socket)?;
        let ctl_csi = Csi::connect_lazy(&controller_socket)?;
        ready(&node_csi, &mut agent, &agent_socket, "csi-agent").await?;
        ready(
            &ctl_csi,
            &mut controller,
            &controller_socket,
            "csi-controller",
        )
        .await?;
        let storages: Api<NodeStorage> = Api::all(client.clone());
        let start = Instant::now();
        loop {
            let classes = storages
                .get_opt(node)
                .await?
                .and_then(|ns| ns.status)
                .map_or(0, |s| s.device_classes.len());
            if classes == 3 {
                break;
            }
            ensure!(
                // claiming the lab (pvcreate/vgcreate per disk) takes minutes under TCG on a
                // loaded host
                start.elapsed() < Duration::from_secs(400),
                "the agent did not publish three device classes within 400 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let csi = Csi {
            identity: ctl_csi.identity,
            controller: ctl_csi.controller,
            node: node_csi.node,
        };
        Ok((
            Kube {
                api,
                client,
                agent,
                controller,
            },
            csi,
        ))
    }

    /// SIGTERM to both, and their exit statuses must be success.
    pub async fn stop(mut self) -> Result<()> {
        let mut problems = Vec::new();
        for (what, child) in [
            ("csi-controller", &mut self.controller),
            ("csi-agent", &mut self.agent),
        ] {
            if let Some(pid) = child.id() {
                let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
            }
            match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => problems.push(format!("{what} exit: {status}")),
                Ok(Err(e)) => problems.push(format!("{what}: {e}")),
                Err(_) => problems.push(format!("{what} did not stop within 30 s")),
            }
        }
        self.api.shutdown().await;
        ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(())
    }
}
