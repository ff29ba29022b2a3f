"""The invariants of Strata's install manifests, checked on what `kubectl kustomize deploy/`
renders: schema validity (via deploy/check), least-privilege RBAC, the storage classes, the
agent's host access, the controller's and the extender's lockdown, sidecar wiring, and that the
flags in the manifests exist in the binaries. Run: python3 -m pytest deploy/tests
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml

DEPLOY = pathlib.Path(__file__).resolve().parents[1]
REPO = DEPLOY.parent
NAMESPACE = "strata-system"
DRIVER = "local.strata.io"
STRATA_IMAGE = "ghcr.io/strata-io/strata"
SIDECAR_REGISTRY = "registry.k8s.io/sig-storage/"
K8S_VERSION = "1.37.0"


def _load_check():
    loader = importlib.machinery.SourceFileLoader("deploy_check", str(DEPLOY / "check"))
    spec = importlib.util.spec_from_loader("deploy_check", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_check"] = module  # dataclasses look their module up here
    loader.exec_module(module)
    return module


check = _load_check()


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return check.render()


def find(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''} rendered"
    return found


def one(objects, kind, name):
    (obj,) = find(objects, kind, name)
    return obj


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def containers(workload):
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def container(workload, name):
    (c,) = [c for c in containers(workload) if c["name"] == name]
    return c


def flag_values(c, flag):
    """Values of `--flag=value` (or a bare `--flag`, as True) in a container's command+args."""
    values = []
    for arg in c.get("command", []) + c.get("args", []):
        if arg == flag:
            values.append(True)
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


# --- schemas (deploy/check) ---------------------------------------------------------------------


def test_every_rendered_object_validates_strictly():
    report = check.check_base(K8S_VERSION)
    assert not report.failed, "\n".join(report.failed)
    assert len(report.passed) >= 20


def test_examples_validate_against_kubernetes_and_crd_schemas():
    report = check.check_examples(K8S_VERSION)
    assert not report.failed, "\n".join(report.failed)
    kinds = {line.split(": ")[1].split("/")[0] for line in report.passed}
    assert {"NodeStorage", "LogicalVolume", "StatefulSet"} <= kinds


def test_crd_validation_rejects_what_the_api_server_would():
    custom = check.load_crds()
    (lv,) = check.load_yaml_file(DEPLOY / "examples" / "logicalvolume.yaml")
    bad_field = copy.deepcopy(lv)
    bad_field["spec"]["sizeGiB"] = 10
    bad_enum = copy.deepcopy(lv)
    bad_enum["spec"]["deviceClass"] = "optane"
    missing = copy.deepcopy(lv)
    del missing["spec"]["nodeName"]
    bad_meta = copy.deepcopy(lv)
    bad_meta["metadata"]["labelz"] = {}
    namespaced = copy.deepcopy(lv)
    namespaced["metadata"]["namespace"] = "default"
    for obj in (bad_field, bad_enum, missing, bad_meta, namespaced):
        report = check.validate_objects([obj], "test", K8S_VERSION, custom)
        assert report.failed and not report.passed, obj
    assert not check.validate_objects([lv], "test", K8S_VERSION, custom).failed


def test_builtin_validation_rejects_unknown_fields_and_unknown_kinds(rendered):
    ds = copy.deepcopy(one(rendered, "DaemonSet", "csi-agent"))
    pod_spec(ds)["containers"][0]["securityContext"]["privilegd"] = True
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    for obj in (ds, unknown):
        report = check.validate_objects([obj], "test", K8S_VERSION, {})
        assert report.failed, obj


def test_structural_schema_rules_catch_bad_crds():
    assert check.structural_errors({"type": "object", "properties": {"a": {}}})
    assert check.structural_errors({"type": "object", "properties": {"a": {"$ref": "#/x"}}})
    assert check.structural_errors({"type": "array"})
    assert check.structural_errors({"type": "string", "enum": ["a", 1]})
    assert not check.structural_errors(
        {"type": "object", "properties": {"a": {"type": "string", "nullable": True,
                                                 "enum": ["x", None]}}})


def test_generated_crds_are_installed_unchanged(rendered):
    for path in sorted((DEPLOY / "crds").glob("*.yaml")):
        (crd,) = check.load_yaml_file(path)
        installed = one(rendered, "CustomResourceDefinition", crd["metadata"]["name"])
        assert installed["spec"] == crd["spec"]
        assert installed["spec"]["scope"] == "Cluster"
    names = {c["metadata"]["name"] for c in find(rendered, "CustomResourceDefinition")}
    assert names == {"nodestorages.strata.io", "logicalvolumes.strata.io"}


# --- namespace, CSIDriver, storage classes ------------------------------------------------------


def test_namespaced_objects_live_in_strata_system(rendered):
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole",
                      "ClusterRoleBinding", "CSIDriver", "StorageClass"}
    one(rendered, "Namespace", NAMESPACE)
    for obj in rendered:
        ns = obj["metadata"].get("namespace")
        if obj["kind"] in cluster_scoped:
            assert ns is None, check.name_of(obj)
        else:
            assert ns == NAMESPACE, check.name_of(obj)


def test_csidriver(rendered):
    spec = one(rendered, "CSIDriver", DRIVER)["spec"]
    assert spec["attachRequired"] is False
    assert spec["podInfoOnMount"] is True
    assert spec["storageCapacity"] is True
    assert spec["fsGroupPolicy"] == "File"
    assert spec["volumeLifecycleModes"] == ["Persistent"]


@pytest.mark.parametrize("cls", ["nvme", "ssd", "hdd"])
def test_storage_classes_wait_for_first_consumer(rendered, cls):
    sc = one(rendered, "StorageClass", f"strata-{cls}")
    assert sc["provisioner"] == DRIVER
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["reclaimPolicy"] == "Delete"
    assert sc["allowVolumeExpansion"] is True
    params = sc["parameters"]
    assert params["strata.io/device-class"] == cls
    assert params["strata.io/placement"] in ("binpack", "spread")
    assert params["csi.storage.k8s.io/fstype"] == "xfs"
    assert set(params) == {"strata.io/device-class", "strata.io/placement",
                           "csi.storage.k8s.io/fstype"}


def test_examples_use_only_strata_classes_and_are_not_installed(rendered):
    installed = {sc["metadata"]["name"] for sc in find(rendered, "StorageClass")}
    rendered_names = {check.name_of(o) for o in rendered}
    for path in sorted((DEPLOY / "examples").glob("*.yaml")):
        for obj in check.load_yaml_file(path):
            if obj["kind"] != "Namespace":
                assert check.name_of(obj) not in rendered_names, f"{path} is in the base"
            if obj["kind"] == "StatefulSet":
                for tpl in obj["spec"]["volumeClaimTemplates"]:
                    assert tpl["spec"]["storageClassName"] in installed
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert not any("examples" in r for r in kustomization["resources"])


# --- RBAC -----------------------------------------------------------------------------------


def rules_of(rendered):
    for kind in ("ClusterRole", "Role"):
        for role in find(rendered, kind):
            for rule in role.get("rules", []):
                yield role["metadata"]["name"], rule


def test_rbac_has_no_wildcards(rendered):
    for name, rule in rules_of(rendered):
        for key in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
            for value in rule.get(key, []):
                assert "*" not in value, f"{name}: wildcard in {key}: {rule}"
        assert "nonResourceURLs" not in rule, name


def test_rbac_grants_no_escalation_or_secrets(rendered):
    for name, rule in rules_of(rendered):
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), name
        assert not {"secrets", "serviceaccounts", "serviceaccounts/token", "clusterroles",
                    "roles", "rolebindings", "clusterrolebindings"} & set(rule["resources"]), name


def granted(rendered, role_kind, role_name):
    allowed = set()
    for rule in one(rendered, role_kind, role_name)["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    allowed.add((group, res, verb))
    return allowed


# The per-binary least-privilege checks (each rule used by code, the node-scope policy, the
# delete-pvc component) are in test_least_privilege.py.


def test_each_workload_runs_as_its_own_bound_service_account(rendered):
    bindings = find(rendered, "ClusterRoleBinding") + find(rendered, "RoleBinding")
    for kind, name in (("DaemonSet", "csi-agent"), ("Deployment", "csi-controller"),
                       ("Deployment", "csi-scheduler")):
        sa = pod_spec(one(rendered, kind, name))["serviceAccountName"]
        assert sa == name
        one(rendered, "ServiceAccount", sa)
        bound = [b for b in bindings if any(
            s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == NAMESPACE
            for s in b["subjects"])]
        assert bound, sa
        for b in bound:
            one(rendered, b["roleRef"]["kind"], b["roleRef"]["name"])


# --- the agent --------------------------------------------------------------------------------


def volume_for_mount(workload, mount):
    (vol,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
    return vol


def test_agent_is_the_only_privileged_container(rendered):
    for kind in ("DaemonSet", "Deployment"):
        for workload in find(rendered, kind):
            for c in containers(workload):
                privileged = (c.get("securityContext") or {}).get("privileged", False)
                expected = workload["metadata"]["name"] == "csi-agent" and c["name"] == "agent"
                assert privileged is expected, f"{workload['metadata']['name']}/{c['name']}"
            spec = pod_spec(workload)
            for key in ("hostNetwork", "hostPID", "hostIPC"):
                assert not spec.get(key), f"{workload['metadata']['name']}: {key}"


def test_agent_kubelet_dir_is_bidirectional(rendered):
    ds = one(rendered, "DaemonSet", "csi-agent")
    agent = container(ds, "agent")
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    kubelet = mounts["/var/lib/kubelet"]
    assert kubelet.get("mountPropagation") == "Bidirectional"
    assert volume_for_mount(ds, kubelet)["hostPath"]["path"] == "/var/lib/kubelet"
    # No other container, and no other mount, propagates mounts back to the host.
    for c in containers(ds):
        for m in c.get("volumeMounts", []):
            if m is not kubelet:
                assert m.get("mountPropagation") in (None, "None", "HostToContainer"), m


def test_agent_host_devices_are_read_only(rendered):
    ds = one(rendered, "DaemonSet", "csi-agent")
    mounts = {m["mountPath"]: m for m in container(ds, "agent")["volumeMounts"]}
    for path in ("/dev", "/sys", "/run/udev"):
        assert mounts[path].get("readOnly") is True, path
        assert volume_for_mount(ds, mounts[path])["hostPath"]["path"] == path
    for path in ("/run/lock/lvm", "/run/lvm", "/etc/lvm/backup", "/etc/lvm/archive"):
        assert volume_for_mount(ds, mounts[path])["hostPath"]["path"] == path, path
    # The host's mount table and open files (checked before any wipe or removal): the host's
    # /proc, read-only, where --host-proc-root points; never the host's /proc over the
    # container's own.
    proc = mounts["/host/proc"]
    assert proc.get("readOnly") is True
    assert volume_for_mount(ds, proc)["hostPath"]["path"] == "/proc"
    assert "--host-proc-root=/host/proc" in container(ds, "agent")["args"]
    assert "/proc" not in mounts
    # The host's lvm.conf, filters and devices file are not the agent's.
    assert "/etc/lvm" not in mounts
    assert container(ds, "agent")["securityContext"]["readOnlyRootFilesystem"] is True


def test_agent_sidecars_and_socket(rendered):
    ds = one(rendered, "DaemonSet", "csi-agent")
    agent = container(ds, "agent")
    assert agent["command"] == ["/usr/local/bin/csi-agent"]
    assert agent["args"][0] == "serve"
    assert flag_values(agent, "--mode") == ["kubernetes"]
    assert flag_values(agent, "--csi-endpoint") == ["unix:///csi/csi.sock"]
    assert flag_values(agent, "--node-name") == ["$(NODE_NAME)"]
    (env,) = [e for e in agent["env"] if e["name"] == "NODE_NAME"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"

    plugin_dir = f"/var/lib/kubelet/plugins/{DRIVER}"
    registrar = container(ds, "node-driver-registrar")
    assert flag_values(registrar, "--csi-address") == ["/csi/csi.sock"]
    assert flag_values(registrar, "--kubelet-registration-path") == [f"{plugin_dir}/csi.sock"]
    probe = container(ds, "liveness-probe")
    assert flag_values(probe, "--csi-address") == ["/csi/csi.sock"]
    for c in (agent, registrar, probe):
        (m,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/csi"]
        assert volume_for_mount(ds, m)["hostPath"]["path"] == plugin_dir
    (reg,) = [m for m in registrar["volumeMounts"] if m["mountPath"] == "/registration"]
    assert volume_for_mount(ds, reg)["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry"

    # Liveness and readiness both go through the livenessprobe sidecar (the CSI Probe RPC).
    port = flag_values(probe, "--http-endpoint")[0].rsplit(":", 1)[1]
    named = {p["name"]: str(p["containerPort"]) for p in agent["ports"]}
    for kind in ("livenessProbe", "readinessProbe"):
        target = str(agent[kind]["httpGet"]["port"])
        assert named.get(target, target) == port, kind


def test_listening_ports_are_unique_and_declared(rendered):
    """Containers of a pod share its network: no two may listen on one port, and every port a
    probe or Service names must have a listener."""
    for kind in ("DaemonSet", "Deployment"):
        for workload in find(rendered, kind):
            listening = []
            for c in containers(workload):
                for flag in ("--http-endpoint", "--metrics-addr", "--listen"):
                    listening += [int(v.rsplit(":", 1)[1]) for v in flag_values(c, flag)]
            assert len(listening) == len(set(listening)), (workload["metadata"]["name"], listening)
            declared = [p["containerPort"] for c in containers(workload) for p in c.get("ports", [])]
            assert set(declared) <= set(listening), (workload["metadata"]["name"], declared)


# --- controller and extender -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["csi-controller", "csi-scheduler"])
def test_controller_and_extender_are_locked_down(rendered, name):
    deploy = one(rendered, "Deployment", name)
    pod_sc = pod_spec(deploy).get("securityContext", {})
    for c in containers(deploy):
        sc = c.get("securityContext") or {}
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        assert run_as_non_root is True, c["name"]
        assert uid not in (None, 0), c["name"]
        assert sc.get("readOnlyRootFilesystem") is True, c["name"]
        assert sc.get("allowPrivilegeEscalation") is False, c["name"]
        assert sc.get("privileged", False) is False, c["name"]
        caps = sc.get("capabilities") or {}
        assert caps.get("drop") == ["ALL"], c["name"]
        assert not caps.get("add"), c["name"]
    assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    for vol in pod_spec(deploy).get("volumes", []):
        assert "hostPath" not in vol, vol


def test_controller_sidecars(rendered):
    deploy = one(rendered, "Deployment", "csi-controller")
    assert deploy["spec"]["replicas"] == 2
    ctrl = container(deploy, "controller")
    assert ctrl["command"] == ["/usr/local/bin/csi-controller"]
    assert flag_values(ctrl, "--csi-endpoint") == ["unix:///csi/csi.sock"]
    assert flag_values(ctrl, "--metrics-addr") == ["0.0.0.0:9808"]
    prov = container(deploy, "csi-provisioner")
    for flag in ("--leader-election", "--extra-create-metadata", "--enable-capacity"):
        assert flag_values(prov, flag) == [True], flag
    assert flag_values(prov, "--feature-gates") == ["Topology=true"]
    assert flag_values(prov, "--capacity-ownerref-level") == ["2"]
    env = {e["name"] for e in prov["env"]}
    assert {"NAMESPACE", "POD_NAME"} <= env  # --enable-capacity names its owner from these
    resizer = container(deploy, "csi-resizer")
    assert flag_values(resizer, "--leader-election") == [True]
    # VolumeSnapshots: the VolumeSnapshot's namespace/name reach CreateSnapshot (the extender
    # places restores through them).
    snapshotter = container(deploy, "csi-snapshotter")
    for flag in ("--leader-election", "--extra-create-metadata"):
        assert flag_values(snapshotter, flag) == [True], flag
    assert snapshotter["image"].startswith("registry.k8s.io/sig-storage/csi-snapshotter:v8.")
    container(deploy, "liveness-probe")
    for c in containers(deploy):
        if c["name"] != "controller":
            assert flag_values(c, "--csi-address") == ["/csi/csi.sock"], c["name"]
    one(rendered, "PodDisruptionBudget", "csi-controller")


def test_extender_listens_where_its_service_points(rendered):
    deploy = one(rendered, "Deployment", "csi-scheduler")
    ext = container(deploy, "extender")
    assert ext["command"] == ["/usr/local/bin/csi-scheduler"]
    port = int(flag_values(ext, "--listen")[0].rsplit(":", 1)[1])
    svc = one(rendered, "Service", "csi-scheduler")
    named = {p["name"]: p["containerPort"] for p in ext["ports"]}
    (sp,) = svc["spec"]["ports"]
    assert named.get(sp["targetPort"], sp["targetPort"]) == port
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()


# --- images and resources ----------------------------------------------------------------------


def test_images_are_pinned(rendered):
    for kind in ("DaemonSet", "Deployment"):
        for workload in find(rendered, kind):
            for c in containers(workload):
                image = c["image"]
                repo, _, tag = image.rpartition(":")
                assert repo and tag and tag != "latest" and "/" not in tag, image
                assert repo == STRATA_IMAGE or repo.startswith(SIDECAR_REGISTRY), image
                assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), image


def test_every_container_has_requests_and_a_memory_limit(rendered):
    for kind in ("DaemonSet", "Deployment"):
        for workload in find(rendered, kind):
            for c in containers(workload):
                res = c.get("resources") or {}
                assert {"cpu", "memory"} <= set(res.get("requests", {})), c["name"]
                assert "memory" in res.get("limits", {}), c["name"]


def overlay_copy(tmp_path, sample):
    """A sample overlay from deploy/examples/overlays/, copied outside deploy/ the way
    docs/install.md says (its `../../..` becomes the relative path to deploy/)."""
    overlay = tmp_path / sample
    overlay.mkdir()
    text = (DEPLOY / "examples" / "overlays" / sample / "kustomization.yaml").read_text()
    assert "../../.." in text
    text = text.replace("../../..", os.path.relpath(DEPLOY, overlay))
    (overlay / "kustomization.yaml").write_text(text)
    return overlay


def test_sample_image_overlay(tmp_path):
    objects = check.render(overlay_copy(tmp_path, "image"))
    assert not check.validate_objects(objects, "overlay", K8S_VERSION, check.load_crds()).failed
    strata = {c["image"] for k in ("DaemonSet", "Deployment") for w in find(objects, k)
              for c in containers(w) if "strata" in c["image"]}
    assert strata == {"registry.example.com/platform/strata:0.1.0"}


def test_sample_kubelet_dir_overlay_moves_every_kubelet_path(tmp_path):
    objects = check.render(overlay_copy(tmp_path, "kubelet-dir"))
    assert not check.validate_objects(objects, "overlay", K8S_VERSION, check.load_crds()).failed
    ds = one(objects, "DaemonSet", "csi-agent")
    text = yaml.safe_dump(ds)
    assert "/var/lib/kubelet" not in text.replace("/var/snap/microk8s/common/var/lib/kubelet", "")
    kubelet = [m for m in container(ds, "agent")["volumeMounts"] if m["name"] == "kubelet-dir"][0]
    assert kubelet["mountPath"] == volume_for_mount(ds, kubelet)["hostPath"]["path"]
    assert kubelet["mountPropagation"] == "Bidirectional"


def test_docs_reference_existing_files_and_parse_as_bash():
    docs = sorted((REPO / "docs").glob("*.md"))
    mine = {"install.md", "operations.md", "troubleshooting.md"}
    assert mine <= {d.name for d in docs}
    for doc in docs:
        if doc.name not in mine:
            continue
        text = doc.read_text()
        for path in set(re.findall(r"\b(deploy/[\w./-]*\w|docs/[\w.-]+\.md)", text)):
            assert (REPO / path).exists(), f"{doc.name} names {path}, which does not exist"
        for target, anchor in re.findall(r"\]\(([\w.-]*\.md)?#([\w-]+)\)", text):
            linked = (REPO / "docs" / target).read_text() if target else text
            slugs = {re.sub(r"[^\w -]", "", h.strip().lower()).replace(" ", "-")
                     for h in re.findall(r"^#+ (.*)$", linked, re.M)}
            assert anchor in slugs, f"{doc.name} links to {target}#{anchor}, which has no heading"
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            out = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
            assert out.returncode == 0, f"{doc.name}: {out.stderr}\n{block}"


# --- the image ---------------------------------------------------------------------------------


def test_dockerfile_builds_the_three_binaries_onto_a_runtime_with_the_node_tools():
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2, "multi-stage build expected"
    for binary in ("csi-agent", "csi-controller", "csi-scheduler"):
        assert f"-p {binary}" in text and f"target/release/{binary}" in text, binary
    runtime = text[text.rindex("\nFROM "):]
    for pkg in ("lvm2", "xfsprogs", "e2fsprogs", "util-linux"):
        assert re.search(rf"\b{pkg}\b", runtime), pkg
    assert "COPY deploy/image/lvm.conf /etc/lvm/lvm.conf" in runtime
    assert not re.search(r"^USER\s", runtime, re.M), "the agent and node debugging need root"


@pytest.mark.skipif(shutil.which("lvmconfig") is None, reason="lvm2 is not installed")
def test_image_lvm_conf_is_valid(tmp_path):
    (tmp_path / "lvm.conf").write_text((DEPLOY / "image" / "lvm.conf").read_text())
    env = dict(os.environ, LVM_SYSTEM_DIR=str(tmp_path), LVM_SUPPRESS_FD_WARNINGS="1")
    out = subprocess.run(["lvmconfig", "--validate"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "valid" in out.stdout, out.stdout + out.stderr
    values = subprocess.run(
        ["lvmconfig", "activation/udev_sync", "activation/udev_rules", "devices/use_devicesfile",
         "global/locking_dir"], env=env, capture_output=True, text=True, check=True).stdout
    assert values.split() == ["udev_sync=0", "udev_rules=1", "use_devicesfile=0",
                              'locking_dir="/run/lock/lvm"']


# --- flags: what the manifests pass must exist in the binaries ------------------------------


def binary(name):
    for profile in ("debug", "release"):
        path = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / profile / name
        if path.exists():
            return path
    if os.environ.get("STRATA_REQUIRE_BINARIES") == "1":
        pytest.fail(f"{name} is not built: cargo build -p {name}")
    pytest.skip(f"{name} is not built (cargo build -p {name}; STRATA_REQUIRE_BINARIES=1 to fail)")


@pytest.mark.parametrize("workload,container_name,name", [
    ("csi-agent", "agent", "csi-agent"),
    ("csi-controller", "controller", "csi-controller"),
    ("csi-scheduler", "extender", "csi-scheduler"),
])
def test_manifest_flags_exist_in_the_binaries(rendered, workload, container_name, name):
    exe = binary(name)
    kind = "DaemonSet" if workload == "csi-agent" else "Deployment"
    c = container(one(rendered, kind, workload), container_name)
    args = list(c["args"])
    sub = [] if args[0].startswith("--") else [args.pop(0)]
    help_text = subprocess.run([str(exe), *sub, "--help"], capture_output=True, text=True,
                               check=True).stdout
    for arg in args:
        flag = arg.split("=", 1)[0]
        assert re.search(rf"(^|\s){re.escape(flag)}[\s=<,]", help_text), \
            f"{name} {' '.join(sub)} has no {flag}"
