"""Scheduler integration in deploy/: the extender is addressed by the csi-scheduler Service's DNS
name (never a cluster IP) both in deploy/scheduler/kube-scheduler-config.yaml and in the optional
second scheduler (deploy/components/strata-scheduler), and that name, port and the extender's
verbs are the ones the base's Service and csi-scheduler serve; the second scheduler renders and
validates, runs one profile `strata-scheduler`, leader-elects on a Lease its own Role grants, and
the NetworkPolicy component admits it to the extender."""

from __future__ import annotations

import re

import pytest
import yaml

from test_deploy import DEPLOY, K8S_VERSION, NAMESPACE, REPO, check, container, find, one
from test_least_privilege import component_overlay

HOST_CONFIG = DEPLOY / "scheduler" / "kube-scheduler-config.yaml"


@pytest.fixture(scope="module")
def rendered_profile(tmp_path_factory):
    return check.render(component_overlay(tmp_path_factory.mktemp("sched"), "strata-scheduler"))


def extender_service(objects) -> str:
    """`http://<service>.<namespace>.svc:<port>` of the base's csi-scheduler Service."""
    svc = one(objects, "Service", "csi-scheduler")
    [port] = svc["spec"]["ports"]
    ns = svc["metadata"]["namespace"]
    # the Service's port reaches the port the extender container declares
    deploy = one(objects, "Deployment", "csi-scheduler")
    declared = {p.get("name"): p["containerPort"] for c in
                deploy["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    target = port.get("targetPort", port["port"])
    assert target in declared or target in declared.values(), (target, declared)
    return f"http://{svc['metadata']['name']}.{ns}.svc:{port['port']}"


def check_extender(ext: dict, url: str):
    assert ext["urlPrefix"] == url
    assert not re.search(r"\d+\.\d+\.\d+\.\d+|CLUSTER_IP", ext["urlPrefix"])
    assert ext["filterVerb"] == "filter" and ext["prioritizeVerb"] == "prioritize"
    assert ext["nodeCacheCapable"] is True and ext["ignorable"] is True
    # the verbs are routes of the extender's HTTP server
    routes = (REPO / "csi-scheduler" / "src" / "http.rs").read_text()
    for verb in ("filter", "prioritize"):
        assert f'"/{verb}"' in routes, verb


def test_host_config_uses_the_service_dns_name(rendered_profile):
    config = yaml.safe_load(HOST_CONFIG.read_text())
    assert config["kind"] == "KubeSchedulerConfiguration"
    [ext] = config["extenders"]
    check_extender(ext, extender_service(rendered_profile))


def test_second_scheduler_renders_and_validates(rendered_profile):
    report = check.validate_objects(rendered_profile, "overlay", K8S_VERSION, check.load_crds())
    assert not report.failed, report.failed
    # nothing of the base changes
    base = {(o["kind"], o["metadata"]["name"]) for o in check.render()}
    added = {(o["kind"], o["metadata"]["name"]) for o in rendered_profile} - base
    assert {n for _, n in added} <= {"strata-scheduler", "strata-scheduler-kube-scheduler",
                                     "strata-scheduler-volume-scheduler",
                                     "strata-scheduler-authentication-reader",
                                     "strata-scheduler-lease"}, added


def test_second_scheduler_runs_one_profile_with_the_extender(rendered_profile):
    cm = one(rendered_profile, "ConfigMap", "strata-scheduler")
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert [p["schedulerName"] for p in config["profiles"]] == ["strata-scheduler"]
    [ext] = config["extenders"]
    check_extender(ext, extender_service(rendered_profile))
    # the same extender settings as the host configuration
    host = yaml.safe_load(HOST_CONFIG.read_text())["extenders"][0]
    assert ext == host
    # leader election on its own Lease, which its Role lets it get and update
    le = config["leaderElection"]
    assert le["leaderElect"] is True and le["resourceNamespace"] == NAMESPACE
    role = one(rendered_profile, "Role", "strata-scheduler-lease")
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resourceNames": [le["resourceName"]], "verbs": ["get", "update"]}]
    deploy = one(rendered_profile, "Deployment", "strata-scheduler")
    c = container(deploy, "kube-scheduler")
    assert c["image"].startswith("registry.k8s.io/kube-scheduler:v1.")
    [mount] = c["volumeMounts"]
    assert f"--config={mount['mountPath']}/config.yaml" in c["command"]
    [vol] = deploy["spec"]["template"]["spec"]["volumes"]
    assert vol["configMap"]["name"] == "strata-scheduler"
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "strata-scheduler"
    bound = {b["roleRef"]["name"] for b in find(rendered_profile, "ClusterRoleBinding")
             + find(rendered_profile, "RoleBinding")
             if any(s["name"] == "strata-scheduler" for s in b["subjects"])}
    assert bound == {"system:kube-scheduler", "system:volume-scheduler",
                     "extension-apiserver-authentication-reader", "strata-scheduler-lease"}


def test_network_policy_admits_the_second_scheduler(tmp_path):
    objects = check.render(component_overlay(tmp_path, "network-policy"))
    policy = one(objects, "NetworkPolicy", "csi-scheduler")
    peers = [p.get("podSelector", {}).get("matchLabels") for p in policy["spec"]["ingress"][0]["from"]]
    assert {"app.kubernetes.io/name": "strata-scheduler"} in peers


def test_install_docs_name_the_removal_steps():
    text = (REPO / "docs" / "install.md").read_text()
    readme = (DEPLOY / "scheduler" / "README.md").read_text()
    assert "schedulerName: strata-scheduler" in text and "ClusterFirstWithHostNet" in text
    assert "**Removal**" in readme
