"""Least privilege in deploy/ (issue 15), checked on what `kubectl kustomize` renders:

- RBAC: every (apiGroup, resource, verb) a ServiceAccount is granted is in the table of calls
  below, and every call in the table is granted. A Strata call names the source file and a
  pattern that must still be there (so a removed call fails the test until its rule goes); a
  sidecar call names the sidecar container that must still run under that ServiceAccount.
- PVC delete only through the optional component deploy/components/node-loss-delete-pvc.
- The LogicalVolume CRD's CEL rules (spec immutable except sizeBytes growing), evaluated with a
  CEL implementation (cel-python) on old/new object pairs.
- The ValidatingAdmissionPolicy that scopes csi-agent to its own node, evaluated the same way:
  no cross-node write passes.
- The optional NetworkPolicy component renders and validates.
"""

from __future__ import annotations

import os
import pathlib
import re

import celpy
import pytest
import yaml

from test_deploy import DEPLOY, K8S_VERSION, NAMESPACE, REPO, check, container, find, one

AGENT_SA = f"system:serviceaccount:{NAMESPACE}:csi-agent"
NODE_CLAIM = "authentication.kubernetes.io/node-name"

# --- the table of calls -------------------------------------------------------------------------
# (service account, apiGroup, resource, verbs, where) where `where` is ("code", file, regex) for a
# call in Strata's source (or, for a call a crate makes for us, the Cargo.lock entry of the version
# whose source was read), or ("sidecar", container) for a call of an upstream sidecar (its verbs
# from the sidecar's own deploy/kubernetes/rbac.yaml at the pinned version).

AGENT_VOLUMES = "csi-agent/src/kubernetes/volumes.rs"
AGENT_NODE_STORAGE = "csi-agent/src/kubernetes/node_storage.rs"
AGENT_ADOPT = "csi-agent/src/kubernetes/adopt.rs"
CTRL_CLUSTER = "csi-controller/src/cluster/kube_cluster.rs"
CTRL_BACKGROUND = "csi-controller/src/background.rs"
CTRL_LEASE = "csi-controller/src/lease.rs"
CARGO_LOCK = "Cargo.lock"
SCHED_CACHE = "csi-scheduler/src/cache.rs"

CALLS = [
    # csi-agent: the LogicalVolume reconciler of its node, the NodeStorage pass, Events.
    ("csi-agent", "strata.io", "logicalvolumes", ["list", "watch"],
     ("code", AGENT_VOLUMES, r"Controller::new\(api, watcher::Config::default\(\)\.labels")),
    ("csi-agent", "strata.io", "logicalvolumes", ["patch"],
     ("code", AGENT_VOLUMES, r"\"finalizers\"[\s\S]*api\.patch\(")),
    # the finalizer is removed from the object as it is now: re-read first
    ("csi-agent", "strata.io", "logicalvolumes", ["get"],
     ("code", AGENT_VOLUMES, r"fn release_finalizer[\s\S]*?api\.get_opt\(&name\)")),
    # adoption of an LV of its node without an object (after an uninstall that kept the LVs)
    ("csi-agent", "strata.io", "logicalvolumes", ["list", "create"],
     ("code", AGENT_ADOPT, r"api\s*\.list\([\s\S]*api\.create\(")),
    ("csi-agent", "strata.io", "logicalvolumes/status", ["patch"],
     ("code", AGENT_VOLUMES, r"api\.patch_status\(")),
    ("csi-agent", "strata.io", "nodestorages", ["get"],
     ("code", AGENT_NODE_STORAGE, r"api\.get_opt\(&ctx\.node\)")),
    # spec.reservedBytes, read afresh before every create and extend
    ("csi-agent", "strata.io", "nodestorages", ["get"],
     ("code", AGENT_VOLUMES, r"fn reserve_of[\s\S]*?\.get_opt\(&ctx\.node\)")),
    # server-side apply of a missing object creates it: create + patch
    ("csi-agent", "strata.io", "nodestorages", ["create", "patch"],
     ("code", AGENT_NODE_STORAGE, r"api\.patch\(&ctx\.node, &params, &Patch::Apply")),
    ("csi-agent", "strata.io", "nodestorages/status", ["patch"],
     ("code", AGENT_NODE_STORAGE, r"api\.patch_status\(&ctx\.node")),
    ("csi-agent", "events.k8s.io", "events", ["create", "patch"],
     ("code", AGENT_VOLUMES, r"Recorder::new\(")),
    # DiskFailed also on the volume's PVC: an Event in the claim's namespace, no PVC access
    ("csi-agent", "events.k8s.io", "events", ["create", "patch"],
     ("code", AGENT_VOLUMES, r"kind: Some\(\"PersistentVolumeClaim\"[\s\S]*recorder\.publish\(")),
    # csi-controller: five reflectors (watched caches) feed admission
    ("csi-controller", "strata.io", "logicalvolumes", ["list", "watch"],
     ("code", CTRL_CLUSTER, r"volumes: Store<LogicalVolume>[\s\S]*volumes: reflect\(")),
    ("csi-controller", "strata.io", "nodestorages", ["list", "watch"],
     ("code", CTRL_CLUSTER, r"storages: Store<NodeStorage>[\s\S]*storages: reflect\(")),
    ("csi-controller", "", "persistentvolumeclaims", ["list", "watch"],
     ("code", CTRL_CLUSTER, r"claims: Store<PersistentVolumeClaim>[\s\S]*claims: reflect\(")),
    ("csi-controller", "storage.k8s.io", "storageclasses", ["list", "watch"],
     ("code", CTRL_CLUSTER, r"classes: Store<StorageClass>[\s\S]*classes: reflect\(")),
    ("csi-controller", "", "pods", ["list", "watch"],
     ("code", CTRL_CLUSTER, r"pods: Store<Pod>[\s\S]*pods: reflect\(")),
    # csi-controller: LogicalVolume writes (a get when the cache has not seen a new object yet)
    ("csi-controller", "strata.io", "logicalvolumes", ["get"],
     ("code", CTRL_CLUSTER, r"self\.api\(\)\.get_opt\(name\)")),
    ("csi-controller", "strata.io", "logicalvolumes", ["create"],
     ("code", CTRL_CLUSTER, r"self\.api\(\)\.create\(")),
    ("csi-controller", "strata.io", "logicalvolumes", ["delete"],
     ("code", CTRL_CLUSTER, r"self\.api\(\)\.delete\(")),
    ("csi-controller", "strata.io", "logicalvolumes", ["patch"],
     ("code", CTRL_CLUSTER, r"\"sizeBytes\"[\s\S]*\.patch\(name")),
    # the pv-protection finalizer released with a test-and-remove JSON patch of the fresh object
    ("csi-controller", "strata.io", "logicalvolumes", ["get", "patch"],
     ("code", CTRL_CLUSTER, r"fn release_finalizer[\s\S]*?api\.get_opt\(name\)"
      r"[\s\S]*?Patch::<\(\)>::Json")),
    # csi-controller: the leader's housekeeping (lists, annotations, orphan deletion, Events)
    ("csi-controller", "strata.io", "logicalvolumes", ["list"],
     ("code", CTRL_BACKGROUND, r"volumes_api\.list\(")),
    ("csi-controller", "strata.io", "logicalvolumes", ["patch"],
     ("code", CTRL_BACKGROUND, r"Action::AnnotateBound[\s\S]*?api\.patch\(")),
    ("csi-controller", "strata.io", "logicalvolumes", ["delete"],
     ("code", CTRL_BACKGROUND, r"Action::DeleteOrphan[\s\S]*?api\.delete\(")),
    ("csi-controller", "strata.io", "nodestorages", ["list"],
     ("code", CTRL_BACKGROUND, r"Api::<NodeStorage>::all\(client\.clone\(\)\)\s*\.list\(")),
    # the Stale condition of a NodeStorage (server-side apply of that one condition type)
    ("csi-controller", "strata.io", "nodestorages/status", ["patch"],
     ("code", CTRL_BACKGROUND, r"fn mark_stale[\s\S]*?\.patch_status\(node, &params, &Patch::Apply")),
    ("csi-controller", "", "persistentvolumes", ["list"],
     ("code", CTRL_BACKGROUND, r"Api::<PersistentVolume>::all\(client\.clone\(\)\)\s*\.list\(")),
    ("csi-controller", "", "nodes", ["list"],
     ("code", CTRL_BACKGROUND, r"Api::<Node>::all\(client\.clone\(\)\)\s*\.list_metadata\(")),
    ("csi-controller", "events.k8s.io", "events", ["create", "patch"],
     ("code", CTRL_BACKGROUND, r"Recorder::new\(")),
    # csi-controller: its Lease, kept by kube-lease-manager (create mode AutoCreate). The crate's
    # src/state.rs at 0.13.1 calls api.get, api.create (when the Lease is missing) and
    # api.patch (strategic merge: acquire, renew, release); no update, list, watch or delete
    # outside its tests. A new version of the crate fails here until its calls are read again.
    ("csi-controller", "coordination.k8s.io", "leases", ["get", "create", "patch"],
     ("code", CTRL_LEASE, r"LeaseManagerBuilder::new\(")),
    ("csi-controller", "coordination.k8s.io", "leases", ["get", "create", "patch"],
     ("code", CARGO_LOCK, r"name = \"kube-lease-manager\"\nversion = \"0\.13\.1\"\n")),
    # external-provisioner
    ("csi-controller", "", "persistentvolumes", ["get", "list", "watch", "create", "delete", "patch"],
     ("sidecar", "csi-provisioner")),
    ("csi-controller", "", "persistentvolumeclaims", ["get", "list", "watch", "update"],
     ("sidecar", "csi-provisioner")),
    ("csi-controller", "storage.k8s.io", "storageclasses", ["get", "list", "watch"],
     ("sidecar", "csi-provisioner")),
    ("csi-controller", "storage.k8s.io", "csinodes", ["get", "list", "watch"],
     ("sidecar", "csi-provisioner")),
    ("csi-controller", "", "nodes", ["get", "list", "watch"], ("sidecar", "csi-provisioner")),
    ("csi-controller", "storage.k8s.io", "volumeattachments", ["get", "list", "watch"],
     ("sidecar", "csi-provisioner")),
    ("csi-controller", "storage.k8s.io", "volumeattributesclasses", ["get", "list", "watch"],
     ("sidecar", "csi-provisioner")),
    ("csi-controller", "", "events", ["list", "watch", "create", "update", "patch"],
     ("sidecar", "csi-provisioner")),
    ("csi-controller", "coordination.k8s.io", "leases",
     ["get", "watch", "list", "delete", "update", "create"], ("sidecar", "csi-provisioner")),
    ("csi-controller", "storage.k8s.io", "csistoragecapacities",
     ["get", "list", "watch", "create", "update", "patch", "delete"], ("sidecar", "csi-provisioner")),
    ("csi-controller", "", "pods", ["get"], ("sidecar", "csi-provisioner")),
    ("csi-controller", "apps", "replicasets", ["get"], ("sidecar", "csi-provisioner")),
    # external-resizer
    ("csi-controller", "", "persistentvolumes", ["get", "list", "watch", "patch"],
     ("sidecar", "csi-resizer")),
    ("csi-controller", "", "persistentvolumeclaims", ["get", "list", "watch"],
     ("sidecar", "csi-resizer")),
    ("csi-controller", "", "persistentvolumeclaims/status", ["patch"], ("sidecar", "csi-resizer")),
    ("csi-controller", "", "pods", ["get", "list", "watch"], ("sidecar", "csi-resizer")),
    ("csi-controller", "", "events", ["list", "watch", "create", "update", "patch"],
     ("sidecar", "csi-resizer")),
    ("csi-controller", "storage.k8s.io", "volumeattributesclasses", ["get", "list", "watch"],
     ("sidecar", "csi-resizer")),
    # external-snapshotter's csi-snapshotter (v8, rbac-csi-snapshotter.yaml less the group
    # snapshot rules: Strata offers no group snapshots, and `create` of contents is only for them)
    ("csi-controller", "snapshot.storage.k8s.io", "volumesnapshotclasses", ["get", "list", "watch"],
     ("sidecar", "csi-snapshotter")),
    ("csi-controller", "snapshot.storage.k8s.io", "volumesnapshotcontents",
     ["get", "list", "watch", "update", "patch"], ("sidecar", "csi-snapshotter")),
    ("csi-controller", "snapshot.storage.k8s.io", "volumesnapshotcontents/status",
     ["update", "patch"], ("sidecar", "csi-snapshotter")),
    ("csi-controller", "", "events", ["list", "watch", "create", "update", "patch"],
     ("sidecar", "csi-snapshotter")),
    ("csi-controller", "coordination.k8s.io", "leases",
     ["get", "watch", "list", "delete", "update", "create"], ("sidecar", "csi-snapshotter")),
    # csi-scheduler: five watches (cache.rs)
    ("csi-scheduler", "strata.io", "nodestorages", ["list", "watch"],
     ("code", SCHED_CACHE, r"spawn_watch::<NodeStorage\b")),
    ("csi-scheduler", "strata.io", "logicalvolumes", ["list", "watch"],
     ("code", SCHED_CACHE, r"spawn_watch::<LogicalVolume\b")),
    ("csi-scheduler", "", "persistentvolumeclaims", ["list", "watch"],
     ("code", SCHED_CACHE, r"spawn_watch::<PersistentVolumeClaim\b")),
    ("csi-scheduler", "storage.k8s.io", "storageclasses", ["list", "watch"],
     ("code", SCHED_CACHE, r"spawn_watch::<StorageClass\b")),
    # which node a claim's pod is bound or nominated to
    ("csi-scheduler", "", "pods", ["list", "watch"],
     ("code", SCHED_CACHE, r"spawn_watch::<Pod\b")),
]

# Only with --node-loss-policy=delete-pvc: the claim is re-read (get, granted by the base for
# external-provisioner) and deleted with a uid precondition (delete, granted by the optional
# component only).
DELETE_PVC_READ = ("csi-controller", "", "persistentvolumeclaims", ["get"],
                   ("code", CTRL_BACKGROUND, r"claims\.get_opt\(&pvc\.name\)"))
DELETE_PVC_CALL = ("csi-controller", "", "persistentvolumeclaims", ["delete"],
                   ("code", CTRL_BACKGROUND, r"claims\.delete\(&pvc\.name, &params\)"))

# Only for the recovery policy `drift`, granted by the optional component recovery-drift.
CTRL_DRIFT = "csi-controller/src/drift_exec.rs"
DRIFT_CALLS = [
    ("csi-controller", "", "persistentvolumeclaims", ["delete"],
     ("code", CTRL_DRIFT, r"claims\.delete\(&claim\.name, &params\)")),
    ("csi-controller", "", "pods", ["delete"],
     ("code", CTRL_DRIFT, r"pods\.delete\(&d\.pod\.name, &params\)")),
]

WORKLOADS = {"csi-agent": "DaemonSet", "csi-controller": "Deployment",
             "csi-scheduler": "Deployment"}


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return check.render()


def grants(objects, sa) -> set[tuple[str, str, str]]:
    """What the (Cluster)RoleBindings of `sa` in the rendered objects grant it."""
    out = set()
    for b in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa
                   and s["namespace"] == NAMESPACE for s in b["subjects"]):
            continue
        role = one(objects, b["roleRef"]["kind"], b["roleRef"]["name"])
        for rule in role["rules"]:
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        out.add((g, r, v))
    return out


def table(calls, sa) -> set[tuple[str, str, str]]:
    return {(g, r, v) for s, g, r, verbs, _ in calls if s == sa for v in verbs}


@pytest.mark.parametrize("call", CALLS + [DELETE_PVC_READ, DELETE_PVC_CALL] + DRIFT_CALLS,
                         ids=lambda c: f"{c[0]}:{c[2]}:{','.join(c[3])}")
def test_each_call_in_the_table_is_real(rendered, call):
    sa, _, _, _, where = call
    if where[0] == "code":
        text = (REPO / where[1]).read_text()
        assert re.search(where[2], text), f"{where[1]} no longer matches {where[2]!r}: " \
            "update the table and the RBAC rule"
    else:
        assert container(one(rendered, WORKLOADS[sa], sa), where[1]), where


@pytest.mark.parametrize("sa", sorted(WORKLOADS))
def test_rbac_grants_exactly_the_calls(rendered, sa):
    granted = grants(rendered, sa)
    needed = table(CALLS, sa)
    assert not needed - granted, f"{sa} lacks {sorted(needed - granted)}"
    assert not granted - needed, f"{sa} is granted what no code uses: {sorted(granted - needed)}"


def test_agent_cannot_delete_volumes_or_touch_claims(rendered):
    # The agent may create LogicalVolumes (adoption, csi-agent/src/kubernetes/adopt.rs), only of
    # its own node: the node-scope policy refuses any other (checked below).
    granted = grants(rendered, "csi-agent")
    assert not {g for g in granted if g[2] == "delete"}
    assert not {g for g in granted if g[1] in ("persistentvolumes", "persistentvolumeclaims",
                                               "pods", "nodes", "secrets")}


def test_scheduler_only_reads(rendered):
    assert {v for _, _, v in grants(rendered, "csi-scheduler")} == {"list", "watch"}


# --- PVC delete: the optional component -------------------------------------------------------


def component_overlay(tmp_path, component):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, overlay)],
        "components": [os.path.relpath(DEPLOY / "components" / component, overlay)],
    }))
    return overlay


def controller_args(objects):
    return container(one(objects, "Deployment", "csi-controller"), "controller")["args"]


def test_base_has_no_pvc_delete_and_the_report_policy(rendered):
    assert ("", "persistentvolumeclaims", "delete") not in grants(rendered, "csi-controller")
    assert "--node-loss-policy=report" in controller_args(rendered)


def test_delete_pvc_component_grants_delete_and_switches_the_policy(tmp_path):
    objects = check.render(component_overlay(tmp_path, "node-loss-delete-pvc"))
    assert not check.validate_objects(objects, "overlay", K8S_VERSION, check.load_crds()).failed
    granted = grants(objects, "csi-controller")
    needed = table(CALLS + [DELETE_PVC_READ, DELETE_PVC_CALL], "csi-controller")
    assert granted == needed, (sorted(granted - needed), sorted(needed - granted))
    args = controller_args(objects)
    assert "--node-loss-policy=delete-pvc" in args
    assert not [a for a in args if a == "--node-loss-policy=report"]
    # the delete right sits in its own ClusterRole, nothing else in it
    role = one(objects, "ClusterRole", "strata-csi-controller-delete-pvc")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["persistentvolumeclaims"],
                              "verbs": ["delete"]}]


def test_recovery_drift_component_grants_only_the_drift_deletes(tmp_path):
    objects = check.render(component_overlay(tmp_path, "recovery-drift"))
    assert not check.validate_objects(objects, "overlay", K8S_VERSION, check.load_crds()).failed
    granted = grants(objects, "csi-controller")
    needed = table(CALLS + DRIFT_CALLS, "csi-controller")
    assert granted == needed, (sorted(granted - needed), sorted(needed - granted))
    role = one(objects, "ClusterRole", "strata-csi-controller-recovery-drift")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["persistentvolumeclaims", "pods"],
                              "verbs": ["delete"]}]
    # the base keeps neither right
    base = grants(check.render(), "csi-controller")
    assert ("", "pods", "delete") not in base
    assert ("", "persistentvolumeclaims", "delete") not in base


def test_network_policy_component(tmp_path):
    objects = check.render(component_overlay(tmp_path, "network-policy"))
    assert not check.validate_objects(objects, "overlay", K8S_VERSION, check.load_crds()).failed
    policies = {p["metadata"]["name"]: p for p in find(objects, "NetworkPolicy")}
    assert set(policies) == {"csi-scheduler", "csi-controller", "csi-agent"}
    ports = {"csi-scheduler": 8099, "csi-controller": 9808, "csi-agent": 9809}
    for name, policy in policies.items():
        spec = policy["spec"]
        assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert spec["policyTypes"] == ["Ingress"]
        [rule] = spec["ingress"]
        assert [p["port"] for p in rule["ports"]] == [ports[name]]
        peers = [p["podSelector"]["matchLabels"] for p in rule["from"]]
        assert {"app.kubernetes.io/name": "prometheus"} in peers
        if name == "csi-scheduler":
            assert {"component": "kube-scheduler"} in peers
        else:
            assert len(peers) == 1
        # the port is the one the workload listens on
        w = one(objects, WORKLOADS[name], name)
        declared = {p["containerPort"] for c in w["spec"]["template"]["spec"]["containers"]
                    for p in c.get("ports", [])}
        assert ports[name] in declared
    base = check.render()
    assert not [o for o in base if o["kind"] == "NetworkPolicy"], "the base must not carry them"


# --- CEL: a small evaluator over cel-python ------------------------------------------------------

ENV = celpy.Environment()


def cel(expr: str, **activation):
    program = ENV.program(ENV.compile(expr))
    return program.evaluate({k: celpy.json_to_cel(v) for k, v in activation.items()})


# --- LogicalVolume spec immutability (CRD x-kubernetes-validations) -----------------------------


def spec_rules():
    [crd] = check.load_yaml_file(DEPLOY / "crds" / "logicalvolumes.strata.io.yaml")
    [version] = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec["x-kubernetes-validations"]


def spec_violations(old: dict, new: dict) -> list[str]:
    return [r["message"] for r in spec_rules() if not cel(r["rule"], self=new, oldSelf=old)]


BASE_SPEC = {"nodeName": "node-a", "deviceClass": "nvme", "sizeBytes": 1 << 30,
             "pvc": {"namespace": "ns", "name": "data-0", "uid": "u-1"}}


def changed(**fields):
    spec = yaml.safe_load(yaml.safe_dump(BASE_SPEC))
    for k, v in fields.items():
        if v is None:
            spec.pop(k, None)
        else:
            spec[k] = v
    return spec


def test_crd_spec_rules_are_transition_rules_with_messages():
    rules = spec_rules()
    assert len(rules) == 9
    for r in rules:
        assert "oldSelf" in r["rule"] and r["message"]


@pytest.mark.parametrize("new,violated", [
    (changed(), []),
    (changed(sizeBytes=2 << 30), []),
    (changed(sizeBytes=1 << 29), ["spec.sizeBytes may only grow"]),
    (changed(nodeName="node-b"), ["spec.nodeName is immutable"]),
    (changed(deviceClass="hdd"), ["spec.deviceClass is immutable"]),
    (changed(pvc={"namespace": "ns", "name": "other", "uid": "u-2"}), ["spec.pvc is immutable"]),
    (changed(pvc=None), ["spec.pvc is immutable"]),
    (changed(wipe="none"), ["spec.wipe is immutable"]),
    (changed(source={"kind": "Volume", "name": "x"}), ["spec.source is immutable"]),
    (changed(provisioning="thin"), ["spec.provisioning is immutable"]),
    (changed(role="Snapshot"), ["spec.role is immutable"]),
    (changed(volumeSnapshot={"namespace": "ns", "name": "s"}), ["spec.volumeSnapshot is immutable"]),
    (changed(nodeName="node-b", sizeBytes=2 << 30, wipe="none"),
     ["spec.nodeName is immutable", "spec.wipe is immutable"]),
], ids=["same", "grow", "shrink", "node", "class", "pvc", "pvc-removed", "wipe-added", "source",
        "provisioning-added", "role-added", "volume-snapshot-added", "several"])
def test_crd_spec_immutability(new, violated):
    assert spec_violations(BASE_SPEC, new) == violated


def test_crd_a_snapshot_stays_a_snapshot_of_its_origin():
    old = changed(pvc=None, provisioning="thin", role="Snapshot",
                  source={"kind": "Volume", "name": "pvc-1"},
                  volumeSnapshot={"namespace": "ns", "name": "s"})
    new = yaml.safe_load(yaml.safe_dump(old))
    assert spec_violations(old, new) == []
    new["role"] = "Volume"
    new["source"] = {"kind": "Volume", "name": "pvc-2"}
    assert spec_violations(old, new) == ["spec.source is immutable", "spec.role is immutable"]


def test_crd_thin_stays_thin():
    old = changed(provisioning="thin")
    assert spec_violations(old, changed(provisioning="linear")) == ["spec.provisioning is immutable"]
    assert spec_violations(old, changed(provisioning=None)) == ["spec.provisioning is immutable"]
    assert spec_violations(old, changed(provisioning="thin", sizeBytes=2 << 30)) == []


def test_crd_wipe_once_set_cannot_be_turned_off():
    old = changed(wipe="zero")
    assert spec_violations(old, changed(wipe="none")) == ["spec.wipe is immutable"]
    assert spec_violations(old, changed(wipe=None)) == ["spec.wipe is immutable"]
    assert spec_violations(old, old) == []


# --- the agent's node scope (ValidatingAdmissionPolicy) -----------------------------------------


@pytest.fixture(scope="module")
def policy(rendered):
    vap = one(rendered, "ValidatingAdmissionPolicy", "strata-agent-node-scope")
    binding = one(rendered, "ValidatingAdmissionPolicyBinding", "strata-agent-node-scope")
    assert binding["spec"]["policyName"] == "strata-agent-node-scope"
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert vap["spec"]["failurePolicy"] == "Fail"
    return vap["spec"]


def lv(node: str, **spec) -> dict:
    return {"metadata": {"name": "pvc-1", "labels": {"strata.io/node": node},
                         "finalizers": ["strata.io/lv"]},
            "spec": {**BASE_SPEC, "nodeName": node, **spec}}


def ns(name: str, **spec) -> dict:
    return {"metadata": {"name": name}, "spec": spec}


def admit(policy, *, user=AGENT_SA, node="node-a", resource, sub="", op="UPDATE", name,
          obj=None, old=None) -> list[str] | None:
    """None if the policy does not apply; else the messages of the validations that fail (an
    evaluation error counts as a failure: failurePolicy is Fail)."""
    extra = {NODE_CLAIM: [node]} if node else {}
    request = {"userInfo": {"username": user, "extra": extra},
               "resource": {"group": "strata.io", "version": "v1alpha1", "resource": resource},
               "subResource": sub, "operation": op, "name": name}
    rules = policy["matchConstraints"]["resourceRules"]
    wanted = resource + (f"/{sub}" if sub else "")
    if not any(wanted in r["resources"] and op in r["operations"] for r in rules):
        return None
    act = {"request": request, "object": obj, "oldObject": old}
    if not all(cel(m["expression"], **act) for m in policy["matchConditions"]):
        return None
    variables = {}
    for v in policy["variables"]:
        variables[v["name"]] = cel(v["expression"], **act, variables=variables)
    failed = []
    for v in policy["validations"]:
        try:
            ok = cel(v["expression"], **act, variables=variables)
        except Exception:  # noqa: BLE001 - the API server denies on an evaluation error
            ok = False
        if not ok:
            failed.append(v["message"].strip())
    return failed


def test_policy_lets_the_agent_do_its_work_on_its_node(policy):
    # NodeStorage: create by apply, status, re-apply
    assert admit(policy, resource="nodestorages", op="CREATE", name="node-a",
                 obj=ns("node-a")) == []
    assert admit(policy, resource="nodestorages", sub="status", name="node-a",
                 obj=ns("node-a"), old=ns("node-a")) == []
    # LogicalVolume: finalizer added and removed, status
    old = lv("node-a")
    new = lv("node-a")
    new["metadata"]["finalizers"] = []
    assert admit(policy, resource="logicalvolumes", name="pvc-1", obj=new, old=old) == []
    assert admit(policy, resource="logicalvolumes", sub="status", name="pvc-1",
                 obj=old, old=old) == []
    # adoption: a LogicalVolume of its own node made again for an LV that has none
    assert admit(policy, resource="logicalvolumes", op="CREATE", name="pvc-1",
                 obj=lv("node-a")) == []


@pytest.mark.parametrize("case", [
    dict(resource="nodestorages", op="CREATE", name="node-b", obj=ns("node-b")),
    dict(resource="nodestorages", name="node-b", obj=ns("node-b"), old=ns("node-b")),
    dict(resource="nodestorages", sub="status", name="node-b", obj=ns("node-b"),
         old=ns("node-b")),
    dict(resource="logicalvolumes", name="pvc-1", obj=lv("node-b"), old=lv("node-b")),
    dict(resource="logicalvolumes", sub="status", name="pvc-1", obj=lv("node-b"),
         old=lv("node-b")),
    # relabelling another node's volume to its own node
    dict(resource="logicalvolumes", name="pvc-1", obj=lv("node-a"), old=lv("node-b")),
    dict(resource="logicalvolumes", op="DELETE", name="pvc-1", old=lv("node-b")),
    # adopting a volume for another node
    dict(resource="logicalvolumes", op="CREATE", name="pvc-1", obj=lv("node-b")),
], ids=["ns-create", "ns-update", "ns-status", "lv-update", "lv-status", "lv-relabel",
        "lv-delete", "lv-create"])
def test_policy_refuses_every_cross_node_write(policy, case):
    failed = admit(policy, **case)
    assert failed, case


@pytest.mark.parametrize("change", ["spec", "label", "annotation"])
def test_policy_refuses_spec_and_metadata_changes_on_its_own_node(policy, change):
    old = lv("node-a")
    new = lv("node-a")
    if change == "spec":
        new["spec"]["wipe"] = "none"
    elif change == "label":
        new["metadata"]["labels"]["extra"] = "x"
    else:
        new["metadata"]["annotations"] = {"a": "b"}
    failed = admit(policy, resource="logicalvolumes", name="pvc-1", obj=new, old=old)
    assert failed == ["csi-agent may change only status and finalizers, never spec, labels "
                      "or annotations"]
    ns_old, ns_new = ns("node-a"), ns("node-a", claimMode="auto")
    assert admit(policy, resource="nodestorages", name="node-a", obj=ns_new, old=ns_old)


def test_policy_refuses_a_token_without_a_node(policy):
    failed = admit(policy, node="", resource="nodestorages", op="CREATE", name="node-a",
                   obj=ns("node-a"))
    assert failed and any("names no node" in f for f in failed)


def test_policy_applies_only_to_the_agent(policy):
    other = "system:serviceaccount:strata-system:csi-controller"
    assert admit(policy, user=other, resource="logicalvolumes", name="pvc-1",
                 obj=lv("node-b", wipe="none"), old=lv("node-b")) is None


def test_policy_names_the_agents_service_account(rendered, policy):
    ds = one(rendered, "DaemonSet", "csi-agent")
    sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
    assert f"'system:serviceaccount:{ds['metadata']['namespace']}:{sa}'" in \
        policy["matchConditions"][0]["expression"]
    covered = {r for rule in policy["matchConstraints"]["resourceRules"]
               for r in rule["resources"]}
    written = {r for g, r, v in grants(rendered, "csi-agent")
               if g == "strata.io" and v in ("create", "update", "patch", "delete")}
    assert written <= covered, written - covered
