//! Tests of the fake API server (`strata_tests::apiserver`) through a real `kube::Client` over
//! loopback HTTP: verbs and error bodies (`crud`), watches, bookmarks and a kube-runtime
//! reflector (`watching`), and the `fake-apiserver` binary with a kubeconfig (`process`).

mod crud;
mod drift;
mod process;
mod watching;

use csi_api::crd::LogicalVolume;
use kube::Api;
use serde_json::json;
use strata_tests::apiserver::FakeApiServer;

/// A started server and a client for it.
async fn server() -> (FakeApiServer, kube::Client) {
    let server = FakeApiServer::start().await.expect("start fake API server");
    let client = server.client().expect("kube client");
    (server, client)
}

fn lvs(client: &kube::Client) -> Api<LogicalVolume> {
    Api::all(client.clone())
}

/// A LogicalVolume for `node`, built from JSON so that it follows the CRD's wire names.
fn lv(name: &str, node: &str, class: &str) -> LogicalVolume {
    serde_json::from_value(json!({
        "apiVersion": "strata.io/v1alpha1",
        "kind": "LogicalVolume",
        "metadata": {
            "name": name,
            "labels": {"strata.io/node": node, "strata.io/device-class": class},
        },
        "spec": {"nodeName": node, "deviceClass": class, "sizeBytes": 1_073_741_824u64},
    }))
    .expect("LogicalVolume from JSON")
}

/// The Status of a failed kube call: (code, reason).
fn api_error(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason.clone()),
        other => panic!("expected an API Status error, got {other:?}"),
    }
}
