//! A CSI client for the suites and tools that drive a running `csi-agent` (the conformance suite,
//! the demo, the benchmark): a tonic channel over the agent's unix socket, the three service
//! clients, the agent as a child process (started, waited for until Probe is ready, stopped with
//! SIGTERM), and request builders for the common shapes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use csi_api::csi::controller_client::ControllerClient;
use csi_api::csi::identity_client::IdentityClient;
use csi_api::csi::node_client::NodeClient;
use csi_api::csi::volume_capability::access_mode::Mode;
use csi_api::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use csi_api::csi::{self, CapacityRange, VolumeCapability};
use csi_api::names;
use hyper_util::rt::TokioIo;
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint, Uri};

/// Why the agent could not be reached or started.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent exited before it was ready ({0})")]
    Exited(std::process::ExitStatus),
    #[error("the agent was not ready within {0:?}")]
    NotReady(Duration),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The three CSI clients on one channel.
#[derive(Clone)]
pub struct Csi {
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

impl Csi {
    /// Connects to the agent's unix socket (lazily: the first call dials).
    pub fn connect_lazy(socket: &Path) -> Result<Csi, ClientError> {
        let socket = socket.to_path_buf();
        // The URI is required by tonic but unused: every connection dials the socket.
        let channel = Endpoint::try_from("http://[::1]:50051")?.connect_with_connector_lazy(
            tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }),
        );
        Ok(Csi {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
        })
    }

    /// Whether Probe answers ready.
    pub async fn ready(&self) -> bool {
        match self.identity.clone().probe(csi::ProbeRequest {}).await {
            Ok(r) => r.into_inner().ready != Some(false),
            Err(_) => false,
        }
    }
}

/// `csi-agent serve --mode standalone` as a child process.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub node: String,
    pub csi: Csi,
    /// How long the agent took from spawn to Probe ready.
    pub ready_after: Duration,
}

/// The agent binary: `$STRATA_AGENT_BIN`, else the `csi-agent` cargo built into the same profile
/// folder as the running binary (a bin sits in it, a test in its `deps/`), wherever the target
/// directory is, else `target/debug/csi-agent` of this workspace.
pub fn agent_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("STRATA_AGENT_BIN") {
        return PathBuf::from(bin);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let dir = exe.parent()?;
            let profile = if dir.ends_with("deps") {
                dir.parent()?
            } else {
                dir
            };
            Some(profile.join("csi-agent"))
        })
        .filter(|p| p.is_file())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/csi-agent"))
}

impl Agent {
    /// Starts the standalone agent on `socket` for node `node` and waits until Probe is ready.
    /// The agent's stderr goes to `log` (appended) so that a failure can be explained.
    pub async fn start(
        socket: &Path,
        node: &str,
        extra_args: &[&str],
        log: &Path,
        timeout: Duration,
    ) -> Result<Agent, ClientError> {
        let bin = agent_bin();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(&bin)
            .args(["serve", "--mode", "standalone", "--node-name", node])
            .arg("--csi-endpoint")
            .arg(format!("unix://{}", socket.display()))
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ClientError::Spawn {
                bin: bin.clone(),
                source,
            })?;
        let csi = Csi::connect_lazy(socket)?;
        let mut agent = Agent {
            child,
            socket: socket.to_path_buf(),
            node: node.to_owned(),
            csi,
            ready_after: Duration::ZERO,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = agent.child.try_wait()? {
                return Err(ClientError::Exited(status));
            }
            if socket.exists() && agent.csi.ready().await {
                agent.ready_after = start.elapsed();
                return Ok(agent);
            }
            if start.elapsed() > timeout {
                return Err(ClientError::NotReady(timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn stop(mut self) -> Result<std::process::ExitStatus, ClientError> {
        self.terminate()?;
        Ok(self.child.wait().await?)
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) -> Result<(), ClientError> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)?;
        }
        Ok(())
    }
}

/// A mount capability (`fs` empty = the driver's default) with a single-node writer mode.
pub fn mount_cap(fs: &str, flags: &[&str]) -> VolumeCapability {
    mount_cap_mode(fs, flags, Mode::SingleNodeWriter)
}

/// A mount capability with the given access mode.
pub fn mount_cap_mode(fs: &str, flags: &[&str], mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            volume_mount_group: String::new(),
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// A raw block capability, single-node writer.
pub fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// A CreateVolume request for `class` with `required` bytes.
pub fn create_request(
    name: &str,
    class: &str,
    required: i64,
    cap: VolumeCapability,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap],
        parameters: HashMap::from([(names::PARAM_DEVICE_CLASS.to_owned(), class.to_owned())]),
        ..Default::default()
    }
}

/// A NodeStageVolume request.
pub fn stage_request(
    id: &str,
    staging: &Path,
    cap: VolumeCapability,
) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        volume_capability: Some(cap),
        ..Default::default()
    }
}

/// A NodePublishVolume request.
pub fn publish_request(
    id: &str,
    staging: &Path,
    target: &Path,
    cap: VolumeCapability,
    readonly: bool,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(cap),
        readonly,
        ..Default::default()
    }
}

/// A NodeUnpublishVolume request.
pub fn unpublish_request(id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.to_string_lossy().into_owned(),
    }
}

/// A NodeUnstageVolume request.
pub fn unstage_request(id: &str, staging: &Path) -> csi::NodeUnstageVolumeRequest {
    csi::NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.to_string_lossy().into_owned(),
    }
}
