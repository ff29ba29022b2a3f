//! The heartbeat/stale path end to end on the host: the real csi-controller binary against the
//! fake API server. A NodeStorage whose agent stops refreshing `status.updatedAt` is marked
//! `Stale=True` (the agent's own conditions kept) with a Warning Event past `--stale-after`, and
//! CreateVolume on its node is refused with a message that names the cause; once the heartbeat
//! comes back the condition turns False with a Normal Event and the node takes volumes again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use csi_api::crd::NodeStorage;
use csi_api::csi;
use csi_api::names;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use strata_tests::apiserver::FakeApiServer;
use strata_tests::csi_client::{create_request, mount_cap};
use strata_tests::e2e::host::{Controller, build_binaries, tail};

const GIB: u64 = 1 << 30;

/// What the agent of `node` would apply: one nvme class and its own conditions, refreshed at
/// `updated`.
async fn agent_heartbeat(client: &Client, node: &str, updated: Timestamp) {
    let status = json!({
        "apiVersion": "strata.io/v1alpha1", "kind": "NodeStorage",
        "status": {
            "updatedAt": updated,
            "capacitySequence": updated.as_millisecond(),
            "disks": [],
            "deviceClasses": [{"name": "nvme", "vgName": "strata-nvme",
                               "totalBytes": 100 * GIB, "freeBytes": 100 * GIB,
                               "allocatableBytes": 100 * GIB, "pvCount": 1,
                               "health": "Healthy"}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "Scanned",
                            "message": "1 disk(s) seen", "lastTransitionTime": updated}],
        },
    });
    Api::<NodeStorage>::all(client.clone())
        .patch_status(
            node,
            &PatchParams::apply(names::FIELD_MANAGER_AGENT).force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("agent status");
}

fn condition(ns: &NodeStorage, type_: &str) -> Option<String> {
    ns.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Polls until the NodeStorage's `Stale` condition is `status` (30 s at most).
async fn wait_stale(
    client: &Client,
    node: &str,
    status: &str,
    log: &std::path::Path,
) -> NodeStorage {
    let api: Api<NodeStorage> = Api::all(client.clone());
    let start = Instant::now();
    loop {
        let ns = api.get(node).await.unwrap();
        if condition(&ns, names::CONDITION_STALE).as_deref() == Some(status) {
            return ns;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Stale never became {status}: {:?}\n{}",
            ns.status.map(|s| s.conditions),
            tail(log, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn events(client: &Client, reason: &str) -> Vec<Event> {
    Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

fn on_node(name: &str, node: &str) -> csi::CreateVolumeRequest {
    let topology = csi::Topology {
        segments: HashMap::from([(names::TOPOLOGY_KEY.to_owned(), node.to_owned())]),
    };
    csi::CreateVolumeRequest {
        accessibility_requirements: Some(csi::TopologyRequirement {
            requisite: vec![topology.clone()],
            preferred: vec![topology],
        }),
        ..create_request(name, "nvme", GIB as i64, mount_cap("xfs", &[]))
    }
}

#[tokio::test]
async fn a_silent_agent_marks_its_node_storage_stale_and_a_fresh_one_clears_it() {
    build_binaries();
    let server = FakeApiServer::start().await.expect("fake API server");
    let client = server.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig, "default").unwrap();

    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let ns: NodeStorage =
        serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": {}})).unwrap();
    Api::<NodeStorage>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    // The agent's last word was 60 s ago.
    let silent_since = Timestamp::now() - SignedDuration::from_secs(60);
    agent_heartbeat(&client, "n1", silent_since).await;

    let args: Vec<String> = [
        "--stale-after",
        "5s",
        "--housekeeping-period",
        "1s",
        "--lease-namespace",
        "default",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut controller = Controller::start(dir.path(), &kubeconfig, &args, None).await;
    let log = controller.process.log.clone();

    // Stale: the condition (beside the agent's own), one Warning Event, admission refuses.
    let ns = wait_stale(&client, "n1", "True", &log).await;
    assert_eq!(
        condition(&ns, "Ready").as_deref(),
        Some("True"),
        "agent's condition kept"
    );
    let warnings = events(&client, "Stale").await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    assert!(
        warnings[0]
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("csi-agent pod on node n1"),
        "{warnings:?}"
    );
    let refused = controller
        .csi
        .controller
        .create_volume(on_node("pvc-stale", "n1"))
        .await
        .expect_err("a stale node takes no volume");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("stale") && refused.message().contains("csi-agent"),
        "{}",
        refused.message()
    );
    // Later passes keep it marked without repeating the Event.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(events(&client, "Stale").await.len(), 1);

    // The agent is back and keeps its heartbeat.
    let heartbeat = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                agent_heartbeat(&client, "n1", Timestamp::now()).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let ns = wait_stale(&client, "n1", "False", &log).await;
    assert_eq!(condition(&ns, "Ready").as_deref(), Some("True"));
    let fresh = events(&client, "Fresh").await;
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_eq!(fresh[0].type_.as_deref(), Some("Normal"));
    // Admission takes the node again: the LogicalVolume is made (CreateVolume then waits for an
    // agent that is not here, so the call itself runs into its deadline).
    let mut request = tonic::Request::new(on_node("pvc-fresh", "n1"));
    request.set_timeout(Duration::from_secs(3));
    let waited = controller.csi.controller.create_volume(request).await;
    assert!(
        waited
            .as_ref()
            .err()
            .is_none_or(|e| e.code() != tonic::Code::ResourceExhausted),
        "{waited:?}"
    );
    let made = Api::<csi_api::crd::LogicalVolume>::all(client.clone())
        .get_opt("pvc-fresh")
        .await
        .unwrap()
        .expect("the LogicalVolume was created");
    assert_eq!(made.spec.node_name, "n1");
    heartbeat.abort();
    controller.process.stop();
}
