//! The commands the host side of the e2e suite sends to the supervisor in the node VM, and their
//! replies. They travel through the fake API server the VM already reaches: one ConfigMap per
//! command in namespace [`NAMESPACE`] (`data.op` = the JSON of an [`Op`]), answered by the
//! supervisor with a merge patch setting `data.reply` (the JSON of a [`Reply`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Namespace of the command ConfigMaps.
pub const NAMESPACE: &str = "e2e-vm";
/// Label on every command ConfigMap (the supervisor watches by it).
pub const LABEL: &str = "strata.io/e2e-command";
/// ConfigMap the supervisor creates once it serves commands.
pub const READY: &str = "vm-ready";
/// Key of the command in `data`.
pub const KEY_OP: &str = "op";
/// Key of the reply in `data`.
pub const KEY_REPLY: &str = "reply";

/// Address of the fake API server as the VM sees it (qemu `guestfwd`).
pub const VM_API_HOST: &str = "10.0.2.100";
pub const VM_API_PORT: u16 = 6443;
/// The VM's own address on qemu's user network.
pub const VM_ADDRESS: &str = "10.0.2.15/24";

/// Environment of the supervisor (the `NODEVM_TEST_` prefix passes into the VM).
pub const ENV_DIR: &str = "NODEVM_TEST_E2E_DIR";
pub const ENV_NODE: &str = "NODEVM_TEST_E2E_NODE";

/// One command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Op {
    /// Starts `csi-agent serve --mode kubernetes` (with `STRATA_FAULT_POINT=fault` if set, and
    /// `args` after the suite's own flags, e.g. `--thin-pool nvme=50`) and waits until its Probe
    /// is ready; fails if an agent is running. Replies `{"pid": N}`.
    StartAgent {
        fault: Option<String>,
        #[serde(default)]
        args: Vec<String>,
    },
    /// Sends SIGKILL (`kill`) or SIGTERM to the agent and waits for it. Replies an [`Exit`].
    StopAgent {
        kill: bool,
    },
    /// Waits at most `timeout_ms` for the agent to exit by itself. Replies an [`Exit`].
    WaitAgentExit {
        timeout_ms: u64,
    },
    /// Runs a program (argument vector). Replies an [`ExecOutput`].
    Exec {
        argv: Vec<String>,
    },
    /// NodeStageVolume of a mount volume (the staging folder is created first); `fs_type`
    /// `block` stages a raw block volume instead (the same for the publish below).
    Stage {
        volume_id: String,
        staging: String,
        fs_type: String,
    },
    NodePublish {
        volume_id: String,
        staging: String,
        target: String,
        fs_type: String,
    },
    NodeUnpublish {
        volume_id: String,
        target: String,
    },
    NodeUnstage {
        volume_id: String,
        staging: String,
    },
    /// NodeExpandVolume; replies `{"capacityBytes": N}`.
    NodeExpand {
        volume_id: String,
        volume_path: String,
        staging: String,
        required_bytes: u64,
        fs_type: String,
    },
    /// statvfs of a path; replies `{"totalBytes": N}`.
    Statfs {
        path: String,
    },
    WriteFile {
        path: String,
        content: String,
    },
    /// Replies the content as a JSON string.
    ReadFile {
        path: String,
    },
    /// Starts a process (`sleep`) that holds `path` open (its stdin) until [`Op::Release`].
    /// Replies `{"pid": N}`.
    HoldOpen {
        path: String,
    },
    /// Ends the process holding `path` open and waits for it.
    Release {
        path: String,
    },
    /// Stops the agent and ends the supervisor (the VM powers off).
    Shutdown,
}

/// How a process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// The output of [`Op::Exec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// The answer to one command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    Ok(Value),
    Err(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_with_camel_case_fields() {
        let op = Op::NodeExpand {
            volume_id: "pvc-1".into(),
            volume_path: "/t".into(),
            staging: "/s".into(),
            required_bytes: 7,
            fs_type: "xfs".into(),
        };
        let json = serde_json::to_value(&op).unwrap();
        assert_eq!(json["op"], "nodeExpand");
        assert_eq!(json["volumeId"], "pvc-1");
        assert_eq!(serde_json::from_value::<Op>(json).unwrap(), op);
        // a StartAgent without `args` (older hosts) starts the agent with the suite's flags
        let start: Op = serde_json::from_str(r#"{"op":"startAgent","fault":null}"#).unwrap();
        assert_eq!(
            start,
            Op::StartAgent {
                fault: None,
                args: Vec::new()
            }
        );
        let reply = serde_json::to_string(&Reply::Err("x".into())).unwrap();
        assert_eq!(reply, r#"{"err":"x"}"#);
    }
}
