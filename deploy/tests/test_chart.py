"""The Helm chart (deploy/chart/strata): generated from the kustomize base and up to date,
`helm lint` clean, rendered by the real helm (v3.17, deploy/chart/install-helm) into objects that
validate against the Kubernetes schemas, equal to the kustomize base with default values (and
to the base plus components with the matching values), and each value reaching the objects.
Without helm the tests skip, unless STRATA_REQUIRE_HELM=1 (tests/run-all sets it).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

from test_deploy import DEPLOY, K8S_VERSION, NAMESPACE, check, container, containers, find, one

CHART = DEPLOY / "chart" / "strata"


def helm_binary() -> str | None:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    cached = pathlib.Path(os.environ.get("STRATA_TOOLS", pathlib.Path.home() / ".cache/strata"))
    if (cached / "helm-v3.17" / "helm").exists():
        return str(cached / "helm-v3.17" / "helm")
    return shutil.which("helm")


@pytest.fixture(scope="module")
def helm() -> str:
    exe = helm_binary()
    if exe is None:
        if os.environ.get("STRATA_REQUIRE_HELM") == "1":
            pytest.fail("helm not found: deploy/chart/install-helm")
        pytest.skip("helm not found (deploy/chart/install-helm)")
    version = subprocess.run([exe, "version", "--short"], check=True, capture_output=True,
                             text=True).stdout
    assert version.startswith("v3.17."), version
    return exe


def helm_template(helm, *sets: str) -> list[dict]:
    args = [helm, "template", "strata", str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_key(objects) -> dict:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
            for o in objects}


def overlay(tmp_path, components=(), images=None, patches=None) -> list[dict]:
    d = tmp_path / "overlay"
    d.mkdir()
    k = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
         "resources": [os.path.relpath(DEPLOY, d)],
         "components": [os.path.relpath(DEPLOY / "components" / c, d) for c in components]}
    (d / "kustomization.yaml").write_text(yaml.safe_dump(k))
    return check.render(d)


def test_chart_is_generated_from_the_base():
    out = subprocess.run([str(DEPLOY / "chart" / "generate"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_helm_lint(helm):
    out = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_default_values_render_the_kustomize_base(helm):
    chart = by_key(helm_template(helm, "namespace.create=true"))
    base = by_key(check.render())
    assert set(chart) == set(base), (set(chart) ^ set(base))
    for k in base:
        assert chart[k] == base[k], k


def test_default_values_without_the_namespace(helm):
    chart = by_key(helm_template(helm))
    base = by_key(check.render())
    assert set(base) - set(chart) == {("Namespace", "", NAMESPACE)}


def test_optional_values_render_the_components(helm, tmp_path):
    chart = by_key(helm_template(helm, "namespace.create=true",
                                 "controller.nodeLossPolicy=delete-pvc",
                                 "networkPolicy.enabled=true", "monitoring.enabled=true",
                                 "scheduler.profile.enabled=true", "snapshots.enabled=true"))
    full = by_key(overlay(tmp_path, ["node-loss-delete-pvc", "network-policy", "monitoring",
                                     "strata-scheduler", "snapshots"]))
    assert set(chart) == set(full), (set(chart) ^ set(full))
    for k in full:
        assert chart[k] == full[k], k


def test_rendered_chart_validates(helm):
    objects = helm_template(helm, "controller.nodeLossPolicy=delete-pvc",
                            "networkPolicy.enabled=true")
    report = check.validate_objects(objects, "chart", K8S_VERSION, check.load_crds())
    assert not report.failed, report.failed


def test_values_reach_the_objects(helm):
    objects = helm_template(
        helm, "image.repository=registry.example.com/strata", "image.tag=9.9.9",
        "sidecars.provisioner=registry.example.com/csi-provisioner:v1",
        "kubeletDir=/var/lib/k0s/kubelet", "agent.newNodeClaimMode=auto",
        "agent.heartbeatInterval=45s", "scheduler.defaultPlacement=spread")
    strata = {c["image"] for k in ("DaemonSet", "Deployment") for w in find(objects, k)
              for c in containers(w) if "strata" in c["image"] and "csi-" not in c["image"]}
    assert strata == {"registry.example.com/strata:9.9.9"}
    ctrl = one(objects, "Deployment", "csi-controller")
    assert container(ctrl, "csi-provisioner")["image"] == "registry.example.com/csi-provisioner:v1"
    ds = one(objects, "DaemonSet", "csi-agent")
    text = yaml.safe_dump(ds)
    assert "/var/lib/kubelet" not in text and "/var/lib/k0s/kubelet" in text
    args = container(ds, "agent")["args"]
    assert "--new-node-claim-mode=auto" in args and "--heartbeat-interval=45s" in args
    sched = container(one(objects, "Deployment", "csi-scheduler"), "extender")
    assert "--default-placement=spread" in sched["args"]


def test_thin_pool_values_become_agent_flags(helm):
    args = container(one(helm_template(helm), "DaemonSet", "csi-agent"), "agent")["args"]
    assert not [a for a in args if a.startswith("--thin-")], "thin pools are opt-in"
    objects = helm_template(helm, "agent.thinPools.nvme=50", "agent.thinPools.ssd=30",
                            "agent.thinOverprovisionRatios.nvme=2.5")
    args = container(one(objects, "DaemonSet", "csi-agent"), "agent")["args"]
    assert [a for a in args if a.startswith("--thin-")] == [
        "--thin-pool=nvme=50", "--thin-pool=ssd=30", "--thin-overprovision-ratio=nvme=2.5"]
    assert args[-1] == "--log-format=json", "the other flags stay where they were"
    report = check.validate_objects(objects, "chart", K8S_VERSION, check.load_crds())
    assert not report.failed, report.failed


def test_snapshot_class_only_with_the_value(helm):
    assert not [o for o in helm_template(helm) if o["kind"] == "VolumeSnapshotClass"]
    # Nor in the kustomize base: `kubectl apply -k deploy/` needs no snapshot CRD.
    assert not [o for o in check.render() if o["apiVersion"].startswith("snapshot.storage")]
    (cls,) = [o for o in helm_template(helm, "snapshots.enabled=true")
              if o["kind"] == "VolumeSnapshotClass"]
    assert cls["metadata"]["name"] == "strata-thin"
    assert (cls["driver"], cls["deletionPolicy"]) == ("local.strata.io", "Delete")
    assert "namespace" not in cls["metadata"], "VolumeSnapshotClass is cluster-scoped"
    # The snapshotter sidecar is always there, its image a value.
    objects = helm_template(helm, "sidecars.snapshotter=registry.example.com/csi-snapshotter:v8")
    c = container(one(objects, "Deployment", "csi-controller"), "csi-snapshotter")
    assert c["image"] == "registry.example.com/csi-snapshotter:v8"


def test_second_scheduler_image_is_a_value(helm):
    objects = helm_template(helm, "scheduler.profile.enabled=true",
                            "scheduler.profile.image=registry.example.com/kube-scheduler:v1.33.5")
    c = container(one(objects, "Deployment", "strata-scheduler"), "kube-scheduler")
    assert c["image"] == "registry.example.com/kube-scheduler:v1.33.5"
    config = yaml.safe_load(one(objects, "ConfigMap", "strata-scheduler")["data"]["config.yaml"])
    assert config["extenders"][0]["urlPrefix"] == "http://csi-scheduler.strata-system.svc:8099"
    assert not [o for o in helm_template(helm) if "strata-scheduler" in o["metadata"]["name"]]


def test_extender_off_removes_every_scheduler_object(helm):
    objects = helm_template(helm, "scheduler.extender.enabled=false")
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert not {n for n in names if "csi-scheduler" in n[1]}
    assert ("DaemonSet", "csi-agent") in names and ("Deployment", "csi-controller") in names


def test_another_namespace_moves_the_agent_policy(helm):
    args = [helm, "template", "strata", str(CHART), "--namespace", "storage"]
    objects = [d for d in yaml.safe_load_all(subprocess.run(
        args, check=True, capture_output=True, text=True).stdout) if d]
    vap = one(objects, "ValidatingAdmissionPolicy", "strata-agent-node-scope")
    assert "system:serviceaccount:storage:csi-agent" in yaml.safe_dump(vap)
    assert not [o for o in objects if o["metadata"].get("namespace") not in (None, "storage")]
