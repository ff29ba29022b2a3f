//! Shared code of the end-to-end suite (`tests/e2e/`): Kubernetes mode with the fake API server,
//! csi-controller and csi-scheduler on the host, and csi-agent in the node VM.
//! - [`protocol`]: the commands the host sends to the VM (through ConfigMaps on the API server);
//! - [`supervisor`]: the VM side, which starts/kills the agent and makes CSI Node calls;
//! - [`host`]: building the binaries, booting the VM, the host processes, a tiny HTTP client.

pub mod host;
pub mod protocol;
pub mod supervisor;
