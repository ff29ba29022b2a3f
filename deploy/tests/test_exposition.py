"""The /metrics of the real csi-agent, csi-controller and csi-scheduler binaries, scraped on the
host and parsed with Prometheus' own OpenMetrics parser (prometheus_client.openmetrics.parser,
strict: `# EOF`, metadata, counter `_total` and histogram series are checked): the content type
is OpenMetrics 1.0.0, every family parses, every name carries its binary's prefix, and time is
in seconds (`_seconds`, never ms/minutes).

The three run against the fake API server of tests/apiserver (the `fake-apiserver` binary), the
agent in Kubernetes mode on an empty sysfs with a stand-in `lvm` on PATH that knows no volume
group (so nothing on this machine is read or touched)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request

import pytest
import yaml

from test_deploy import binary

parser = pytest.importorskip("prometheus_client.openmetrics.parser")

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TIME_UNITS = re.compile(r"_(ms|milliseconds|microseconds|us|ns|nanoseconds|secs|minutes|hours|days)"
                        r"(_total|_bucket|_sum|_count)?$")
TIME_WORDS = {"duration", "latency", "seconds", "elapsed", "age", "time", "timestamp"}

SEED = [
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}},
    {"apiVersion": "strata.io/v1alpha1", "kind": "LogicalVolume",
     "metadata": {"name": "pvc-1", "labels": {"strata.io/node": "n1",
                                              "strata.io/device-class": "nvme"}},
     "spec": {"nodeName": "n1", "deviceClass": "nvme", "sizeBytes": 1 << 30}},
]

# `lvm` as the agent calls it (`lvm <subcommand> ... --reportformat json`): no VG, no PV, no LV.
FAKE_LVM = """#!/bin/sh
case "$1" in
  vgs) echo '{"report":[{"vg":[]}]}' ;;
  pvs) echo '{"report":[{"pv":[]}]}' ;;
  lvs) echo '{"report":[{"lv":[]}]}' ;;
  *) echo "stand-in lvm: $1 not supported in this test" >&2; exit 5 ;;
esac
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, procs, timeout=60.0):
    """(content type, body) of http://127.0.0.1:port/metrics, once it answers."""
    deadline = time.monotonic() + timeout
    while True:
        for name, p, log in procs:
            assert p.poll() is None, f"{name} exited: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.headers["Content-Type"], r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("exposition")
    (d / "seed.yaml").write_text(yaml.safe_dump_all(SEED))
    procs = []

    def start(name, args, env=None):
        log = d / f"{name}.log"
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                             env=dict(os.environ, **(env or {})))
        procs.append((name, p, log))
        return p

    api = subprocess.Popen([str(binary("fake-apiserver")), "--kubeconfig", str(d / "kubeconfig"),
                            "--seed", str(d / "seed.yaml")], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    try:
        assert api.stdout.readline().startswith("listening on")
        env = {"KUBECONFIG": str(d / "kubeconfig"), "STRATA_LOG": "info"}
        ports = {}
        ports["controller"] = free_port()
        start("controller", [str(binary("csi-controller")),
                             "--csi-endpoint", f"unix://{d}/controller.sock",
                             "--metrics-addr", f"127.0.0.1:{ports['controller']}",
                             "--lease-namespace", "default", "--identity", "exposition"], env)
        ports["scheduler"] = free_port()
        start("scheduler", [str(binary("csi-scheduler")),
                            "--listen", f"127.0.0.1:{ports['scheduler']}"], env)
        bin_dir = d / "bin"
        bin_dir.mkdir()
        (bin_dir / "lvm").write_text(FAKE_LVM)
        (bin_dir / "lvm").chmod(0o755)
        for sub in ("sys/block", "dev", "kubelet"):
            (d / sub).mkdir(parents=True)
        ports["agent"] = free_port()
        start("agent", [str(binary("csi-agent")), "serve", "--mode", "kubernetes",
                        "--node-name", "n1", "--csi-endpoint", f"unix://{d}/agent.sock",
                        "--sysfs-root", str(d / "sys"), "--dev-root", str(d / "dev"),
                        "--kubelet-dir", str(d / "kubelet"), "--fstrim-interval", "0",
                        "--metrics-addr", f"127.0.0.1:{ports['agent']}"],
              dict(env, PATH=f"{bin_dir}:{os.environ['PATH']}"))
        yield {name: scrape(port, procs) for name, port in ports.items()}, procs
    finally:
        for _, p, _ in procs:
            p.terminate()
        for _, p, _ in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        api.terminate()
        api.wait(timeout=10)


def families(text: str):
    return list(parser.text_string_to_metric_families(text))


@pytest.mark.parametrize("component", ["agent", "controller", "scheduler"])
def test_metrics_are_openmetrics_that_prometheus_parses(endpoints, component):
    scraped, _ = endpoints
    content_type, text = scraped[component]
    assert content_type == OPENMETRICS
    parsed = families(text)
    assert len(parsed) >= 3, text
    for f in parsed:
        assert f.name.startswith(f"strata_{component}_"), f.name
        assert f.documentation, f"{f.name} has no HELP"
        for s in f.samples:
            assert not TIME_UNITS.search(s.name), f"{s.name}: time is in seconds"
        if TIME_WORDS & set(f.name.split("_")) and f.type in ("histogram", "summary", "gauge"):
            assert f.name.endswith("_seconds") or f.unit == "seconds", f.name


def test_the_parser_refuses_what_prometheus_would():
    with pytest.raises(ValueError):
        families("# TYPE x counter\nx 1\n")          # no # EOF
    with pytest.raises(ValueError):
        families("# TYPE x_total counter\nx_total{a=\"1\" 1\n# EOF\n")


def test_series_an_operator_needs_are_there(endpoints):
    scraped, _ = endpoints
    by_name = {c: {f.name: f for f in families(t)} for c, (_, t) in scraped.items()}
    agent, controller = by_name["agent"], by_name["controller"]
    [info] = agent["strata_agent_build_info"].samples
    assert info.labels.get("version"), info
    volumes = controller["strata_controller_volumes"]
    assert volumes.type == "gauge"
    counts = {(s.labels["phase"], s.labels["class"]): s.value for s in volumes.samples}
    # the seeded LogicalVolume has no status yet: Pending; every phase of every class is there
    assert counts[("Pending", "nvme")] == 1
    assert len(counts) == 12 and sum(counts.values()) == 1
    view = by_name["scheduler"]["strata_scheduler_view_build_duration_seconds"]
    assert view.type == "histogram" and view.samples
