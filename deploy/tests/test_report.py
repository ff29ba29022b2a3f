"""`kubectl strata report` (deploy/kubectl-strata) against the fake API server of tests/apiserver
(the `fake-apiserver` binary, seeded with a small cluster), through the real kubectl."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from test_deploy import DEPLOY, binary, check

PLUGIN = DEPLOY / "kubectl-strata"
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
GI = 1 << 30


def node_storage(name, classes, updated=NOW):
    return {"apiVersion": "strata.io/v1alpha1", "kind": "NodeStorage",
            "metadata": {"name": name}, "spec": {},
            "status": {"updatedAt": updated.isoformat().replace("+00:00", "Z"),
                       "disks": [], "conditions": [],
                       "deviceClasses": [{"name": c, "vgName": f"strata-{c}",
                                          "totalBytes": 16 * GI, "freeBytes": 8 * GI,
                                          "allocatableBytes": 7 * GI, "pvCount": 2,
                                          "missingPvCount": 1 if h == "Degraded" else 0,
                                          "lvCount": 1, "health": h}
                                         for c, h in classes]}}


def lv(name, node, cls, pvc=None):
    spec = {"nodeName": node, "deviceClass": cls, "sizeBytes": GI}
    if pvc:
        spec["pvc"] = {"namespace": "apps", "name": pvc, "uid": f"uid-{pvc}"}
    return {"apiVersion": "strata.io/v1alpha1", "kind": "LogicalVolume",
            "metadata": {"name": name, "labels": {"strata.io/node": node}}, "spec": spec}


def pvc(name, cls, volume):
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {"storageClassName": cls, "volumeName": volume,
                     "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound"}}


def pv(name):
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "csi": {"driver": "local.strata.io", "volumeHandle": name}}}


CLUSTER = [
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in ("n1", "n2")
] + [
    {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "strata-nvme"},
     "provisioner": "local.strata.io"},
    {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "other"},
     "provisioner": "example.com/other"},
    node_storage("n1", [("nvme", "Healthy")]),
    node_storage("n2", [("hdd", "Degraded")], updated=NOW - dt.timedelta(minutes=10)),
    lv("pvc-used", "n1", "nvme", "data-0"), pv("pvc-used"), pvc("data-0", "strata-nvme", "pvc-used"),
    lv("pvc-idle", "n2", "hdd", "data-1"), pv("pvc-idle"), pvc("data-1", "strata-nvme", "pvc-idle"),
    pvc("foreign", "other", "vol-x"),
    pvc("app-1-scratch", "strata-nvme", ""),
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app-1", "namespace": "apps"},
     "spec": {"containers": [{"name": "c", "image": "x"}],
              "volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
                  "accessModes": ["ReadWriteOnce"], "storageClassName": "strata-nvme",
                  "resources": {"requests": {"storage": "1Gi"}}}}}}]}},
    lv("pvc-nopv", "n1", "nvme", "gone"),
    lv("pvc-lostnode", "n3", "nvme"), pv("pvc-lostnode"),
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app-0", "namespace": "apps"},
     "spec": {"containers": [{"name": "c", "image": "x"}],
              "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data-0"}}]}},
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    exe = binary("fake-apiserver")
    d = tmp_path_factory.mktemp("report")
    (d / "seed.yaml").write_text(yaml.safe_dump_all(CLUSTER))
    proc = subprocess.Popen([str(exe), "--kubeconfig", str(d / "kubeconfig"),
                             "--seed", str(d / "seed.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on"), line
        yield d / "kubeconfig"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run(kubeconfig, *args):
    env = dict(os.environ, KUBECONFIG=str(kubeconfig),
               KUBECTL=" ".join(shlex.quote(a) for a in check.kubectl()))
    return subprocess.run([sys.executable, str(PLUGIN), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_report_json(cluster):
    out = run(cluster, "report", "-o", "json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert [(c["node"], c["class"], c["health"]) for c in r["capacity"]] == \
        [("n1", "nvme", "Healthy"), ("n2", "hdd", "Degraded")]
    n1, n2 = r["capacity"]
    assert n1["allocatableBytes"] == 7 * GI and n1["updatedSecondsAgo"] < 300
    assert n2["updatedSecondsAgo"] >= 600
    assert [(u["namespace"], u["name"]) for u in r["unused"]] == [("apps", "data-1")]
    assert {o["name"]: o["reason"] for o in r["orphans"]} == {
        "pvc-nopv": "no PersistentVolume", "pvc-lostnode": "node does not exist"}
    assert [d["name"] for d in r["degraded"]] == ["pvc-idle"]


def test_report_table(cluster):
    out = run(cluster, "report")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "== Capacity per node and class (2)" in text
    assert "16.0Gi" in text and "7.0Gi" in text
    assert "== Claims no pod uses (1)" in text and "data-1" in text
    assert "== Orphan LogicalVolumes (2)" in text and "node does not exist" in text
    assert "== Volumes on Degraded classes (1)" in text
    only = run(cluster, "report", "--section", "orphans")
    assert "Capacity" not in only.stdout and "pvc-nopv" in only.stdout


def test_report_fails_clearly_without_a_cluster(tmp_path):
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
        "users": [{"name": "x", "user": {}}]}))
    out = run(cfg, "report")
    assert out.returncode == 1 and out.stderr.startswith("kubectl strata: kubectl get --raw")
