//! The `fake-apiserver` binary as a child process, reached through a kubeconfig as Strata's
//! binaries reach it; and discovery as kube-rs runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use csi_api::crd::LogicalVolume;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::server;

#[tokio::test]
async fn binary_serves_seeded_objects_via_kubeconfig_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(
        &seed,
        "apiVersion: strata.io/v1alpha1\nkind: LogicalVolume\nmetadata:\n  name: seeded\n  \
         labels: {strata.io/node: n1}\nspec: {nodeName: n1, deviceClass: ssd, sizeBytes: 42}\n\
         status: {phase: Ready}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
    )
    .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--seed")
        .arg(&seed)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn fake-apiserver");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.starts_with("listening on http://127.0.0.1:"),
        "{first}"
    );

    let kc = Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<LogicalVolume> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().labels("strata.io/node=n1"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let status = serde_json::to_value(&list.items[0].status).unwrap();
    assert_eq!(status["phase"], "Ready", "seeding keeps status");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    assert!(nodes.get_opt("n1").await.unwrap().is_some());

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
}

#[tokio::test]
async fn discovery_and_version_work_for_kube() {
    let (_srv, client) = server().await;
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "strata.io",
            "v1alpha1",
            "LogicalVolume",
        ))
        .expect("LogicalVolume discovered");
    assert_eq!(ar.plural, "logicalvolumes");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    assert!(
        caps.subresources
            .iter()
            .any(|(sub, _)| sub.plural == "logicalvolumes/status" || sub.plural == "status")
    );
    let core = discovery.get("").expect("core group");
    assert!(
        core.recommended_resources()
            .iter()
            .any(|(r, _)| r.plural == "persistentvolumeclaims")
    );
}
