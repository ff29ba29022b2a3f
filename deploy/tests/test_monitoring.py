"""Monitoring in deploy/: the Grafana dashboard and the alert rules parse and query only metrics
(and labels) the code defines, grepped from the crates' metrics.rs; the PodMonitors and the agent
Service point at ports the workloads declare; the alert rules' job labels are the PodMonitors'.
"""

from __future__ import annotations

import json
import re

import pytest

from test_deploy import DEPLOY, REPO, check, find, one
from test_least_privilege import component_overlay

DASHBOARD = DEPLOY / "monitoring" / "strata-dashboard.json"
# labels Prometheus adds to every scraped series (PodMonitor), and PromQL's own
TARGET_LABELS = {"pod", "job", "instance", "namespace", "container", "endpoint", "le",
                 "quantile"}
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "rate", "increase",
                "histogram_quantile", "time", "absent", "or", "and", "unless", "on",
                "ignoring", "group_left", "group_right", "label_values", "offset", "bool"}


def defined_metrics() -> tuple[set[str], set[str]]:
    """Every series name the three binaries export (with the suffixes prometheus-client adds),
    and every label name of their label sets."""
    names, labels = set(), set()
    for src in sorted(REPO.glob("csi-*/src/metrics.rs")):
        text = src.read_text()
        prefix = re.search(r'with_prefix\("([a-z_]+)"\)', text).group(1)
        for name in re.findall(r'register\(\s*"([a-z_]+)"', text):
            base = f"{prefix}_{name}"
            names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        for body in re.findall(r"struct \w*Labels \{([^}]*)\}", text):
            labels |= set(re.findall(r"(\w+):", body))
    assert names and labels
    return names, labels


def series_in(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)          # label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)          # ranges
    expr = re.sub(r"\{[^}]*\}", "", expr)           # selectors
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("__")}


def labels_in(expr: str) -> set[str]:
    out = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        out |= {w.strip() for w in group.split(",") if w.strip()}
    for sel in re.findall(r"\{([^}]*)\}", expr):
        out |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", sel))
    return out


def check_expr(expr: str, where: str):
    names, labels = defined_metrics()
    series = series_in(expr)
    assert series, f"{where}: no metric in {expr!r}"
    unknown = series - names - {"up"}
    assert not unknown, f"{where}: {sorted(unknown)} not defined in csi-*/src/metrics.rs"
    bad = labels_in(expr) - labels - TARGET_LABELS
    assert not bad, f"{where}: labels {sorted(bad)} are not exported"


def test_the_expression_checker_catches_unknown_metrics_and_labels():
    with pytest.raises(AssertionError):
        check_expr("sum(strata_agent_no_such_metric)", "x")
    with pytest.raises(AssertionError):
        check_expr("sum by (colour) (strata_agent_vg_free_bytes)", "x")
    check_expr('sum by (class) (strata_agent_vg_free_bytes{pod=~"a"})', "x")


def dashboard_targets():
    d = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in d["panels"] for t in p.get("targets", [])]


def test_dashboard_parses_and_has_panels():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"] and len(d["panels"]) >= 8
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "pod"} <= names


@pytest.mark.parametrize("title,expr", dashboard_targets())
def test_dashboard_queries_only_defined_metrics(title, expr):
    check_expr(expr.replace("$__rate_interval", "5m").replace("$pod", ".*"), title)


def test_dashboard_covers_the_node_metrics():
    exprs = " ".join(e for _, e in dashboard_targets())
    for m in ("vg_size_bytes", "vg_free_bytes", "vg_allocatable_bytes", "class_degraded",
              "disks", "claim_actions_total", "build_info"):
        assert f"strata_agent_{m}" in exprs, m
    assert "strata_controller_volumes" in exprs


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory):
    return check.render(component_overlay(tmp_path_factory.mktemp("mon"), "monitoring"))


def alert_rules(objects):
    rule = one(objects, "PrometheusRule", "strata")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def test_alert_rules_parse_and_cover_the_failures(monitoring):
    rules = alert_rules(monitoring)
    names = {r["alert"] for r in rules}
    assert {"StrataDeviceClassDegraded", "StrataDiskFailing", "StrataWipeNotFinishing",
            "StrataOrphanVolumes", "StrataNodeStorageStale", "StrataExtenderDown",
            "StrataAgentDown"} <= names
    for r in rules:
        assert r["labels"]["severity"] in ("info", "warning", "critical"), r
        assert r["annotations"]["summary"], r
        if "for" in r:
            assert re.fullmatch(r"\d+[smh]", r["for"]), r
        # balanced brackets: a cheap parse of the expression's structure
        for o, c in ("()", "{}", "[]"):
            assert r["expr"].count(o) == r["expr"].count(c), r["alert"]


def test_alert_rules_query_only_defined_metrics(monitoring):
    for r in alert_rules(monitoring):
        check_expr(r["expr"], r["alert"])


def test_alert_jobs_are_the_podmonitors(monitoring):
    jobs = {f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            for p in find(monitoring, "PodMonitor")}
    for r in alert_rules(monitoring):
        for job in re.findall(r'job="([^"]+)"', r["expr"]):
            assert job in jobs, (r["alert"], job)


def test_podmonitors_and_agent_service_use_declared_ports(monitoring):
    workloads = {o["metadata"]["name"]: o for o in monitoring
                 if o["kind"] in ("DaemonSet", "Deployment")}
    for pm in find(monitoring, "PodMonitor"):
        name = pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        ports = {p["name"] for c in workloads[name]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for ep in pm["spec"]["podMetricsEndpoints"]:
            assert ep["port"] in ports, (name, ep)
    svc = one(check.render(), "Service", "csi-agent-metrics")
    ds = one(check.render(), "DaemonSet", "csi-agent")
    assert svc["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]
    agent_ports = {p["name"] for c in ds["spec"]["template"]["spec"]["containers"]
                   for p in c.get("ports", [])}
    assert svc["spec"]["ports"][0]["targetPort"] in agent_ports
