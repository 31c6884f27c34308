"""deploy/: the alert rules, their promtool unit tests, the example config and the Grafana dashboard.

`promtool` runs for real (Debian's ``prometheus`` package, installed by
tests/promtools.py when missing): nothing here skips. The end-to-end check of
the same expressions against a live Prometheus scraping a real cluster is
tests/faults/test_prometheus.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

import promtools
from promtools import (
    ALERT_TESTS,
    ALERTS,
    DASHBOARD,
    EXAMPLE_CONFIG,
    alert_rules,
    alert_test_cases,
    as_promql,
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    doc_metrics,
    metric_names,
    promtool,
)

# What the issue asks the rules to cover, and the alert that covers it.
REQUIRED_ALERTS = {
    "no live worker while tasks are queued": "TaskleaseNoLiveWorker",
    "backlog growing for N minutes": "TaskleaseBacklogGrowing",
    "failure ratio high": "TaskleaseHighFailureRatio",
    "no leader": "TaskleaseNoLeader",
    "leader flapping": "TaskleaseLeaderFlapping",
    "worker leases lost": "TaskleaseWorkerLeaseLost",
    "workers lost (killed: they cannot tell)": "TaskleaseWorkersLost",
    "etcd latency high": "TaskleaseEtcdLatencyHigh",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def why(done) -> str:
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"


# alert rules ------------------------------------------------------------------------------
def test_promtool_check_rules_accepts_the_alerts():
    # Given the rule file, when promtool checks it, then every rule parses.
    done = promtool("check", "rules", ALERTS)
    assert done.returncode == 0, why(done)
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout, why(done)


def test_promtool_rule_unit_tests_pass():
    # Given synthetic series for every alert, when promtool evaluates the rules, then each
    # fires exactly when its test says (labels and rendered annotations included).
    done = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert done.returncode == 0, why(done)
    assert "SUCCESS" in done.stdout, why(done)


def test_the_alerts_the_issue_asks_for_exist_and_no_others():
    assert set(alert_rules()) == set(REQUIRED_ALERTS.values())


@pytest.mark.parametrize("name", sorted(REQUIRED_ALERTS.values()))
def test_each_alert_has_for_a_severity_and_annotations(name):
    rule = alert_rules()[name]
    assert re.fullmatch(r"\d+[smh]", rule.for_), f"{name}: for: {rule.for_!r}"
    assert rule.severity in ("critical", "warning"), f"{name}: severity {rule.severity!r}"
    assert {"summary", "description"} <= rule.annotations, f"{name}: {sorted(rule.annotations)}"
    assert rule.expr, name


@pytest.mark.parametrize("name", sorted(REQUIRED_ALERTS.values()))
def test_each_alert_is_unit_tested_firing_and_not_firing(name):
    cases = [fires for alert, fires in alert_test_cases() if alert == name]
    assert True in cases, f"{name}: no promtool test where it fires"
    assert False in cases, f"{name}: no promtool test where it must not fire"


def test_the_rule_tests_name_only_real_alerts():
    assert {alert for alert, _ in alert_test_cases()} <= set(alert_rules())


def test_the_example_config_is_valid_and_loads_the_alerts():
    # promtool check config also checks the rule files the config names.
    done = promtool("check", "config", EXAMPLE_CONFIG)
    assert done.returncode == 0, why(done)
    assert "alerts.yml" in EXAMPLE_CONFIG.read_text()
    assert f"{len(alert_rules())} rules found" in done.stdout, why(done)


def test_every_metric_the_alerts_name_is_in_the_contract():
    known = doc_metrics()
    used = metric_names(ALERTS.read_text(), known)
    assert used, "no metric found in alerts.yml"
    assert used <= set(known), f"not in docs/observability.md: {sorted(used - set(known))}"


# the dashboard ----------------------------------------------------------------------------
def load_generator():
    path = DASHBOARD.with_name("dashboard.py")
    spec = importlib.util.spec_from_file_location("tasklease_dashboard", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_the_dashboard_is_the_generators_output():
    # Given deploy/grafana/dashboard.py, the committed JSON is exactly what it writes
    # (edit the script, then run it).
    assert DASHBOARD.read_text() == load_generator().render()


def test_the_dashboard_is_importable_json():
    board = json.loads(DASHBOARD.read_text())
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] == "tasklease"
    assert board["title"]
    assert board["id"] is None  # an import creates it; a fixed id would clash
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_the_datasource_is_a_prometheus_variable():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    # Every other variable queries through it.
    for name, variable in variables.items():
        if name != "datasource" and variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, name


def test_no_datasource_uid_is_hard_coded():
    # Any "uid" in the file is the variable (or Grafana's own built-in annotations).
    uids = set(re.findall(r'"uid": "([^"]*)"', DASHBOARD.read_text()))
    assert uids <= {"${datasource}", "-- Grafana --", "tasklease"}, uids


def test_every_panel_and_target_uses_the_datasource_variable():
    panels = dashboard_panels()
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, (panel["title"], target["refId"])
            assert target["expr"].strip(), (panel["title"], target["refId"])


def test_the_dashboard_has_the_panels_the_issue_asks_for():
    titles = {p["title"] for p in dashboard_panels()}
    exprs = " ".join(e for _, e in dashboard_exprs())
    assert {
        "Throughput by outcome",
        "Queue depth by priority",
        "Queue wait",
        "Execution time by type",
        "Workers and free capacity",
        "Leader",
        "Recoveries by reason",
        "etcd request latency p99",
    } <= titles
    # p50 and p99: histogram_quantile over the rate of the buckets
    for histogram in ("tasklease_scheduler_queue_wait_seconds", "tasklease_worker_execution_seconds"):
        quantiles = {
            expr.split(",")[0]
            for _, expr in dashboard_exprs()
            if f"rate({histogram}_bucket" in expr and expr.startswith("histogram_quantile(")
        }
        assert quantiles == {"histogram_quantile(0.5", "histogram_quantile(0.99"}, (histogram, quantiles)
    assert "tasklease_worker_attempts_total" in exprs


def test_every_metric_the_dashboard_names_is_in_the_contract():
    known = doc_metrics()
    assert len(known) >= 20, "the metric table of docs/observability.md was not found"
    board_text = json.dumps(dashboard())
    for where, expr in dashboard_exprs():
        used = metric_names(expr, known)
        assert used, f"{where}: no tasklease metric in {expr}"
        assert used <= set(known), f"{where}: not in docs/observability.md: {sorted(used - set(known))}"
    # the queue variable's query too
    assert metric_names(board_text, known) <= set(known)


def test_histograms_are_read_through_their_series_only():
    # A histogram's name alone is no series: a panel reads _bucket, _sum or _count.
    known = doc_metrics()
    for where, expr in dashboard_exprs():
        for token in re.findall(r"\btasklease_[a-z0-9_]+", expr):
            assert known.get(token) != "histogram", f"{where}: bare histogram name {token}"


def test_every_panel_expression_parses(tmp_path: Path):
    # promtool parses PromQL offline when it checks rules: each panel's expression
    # (Grafana's variables replaced) becomes a recording rule.
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(dashboard_exprs()):
        lines += [f"      - record: dashboard:expr_{i}", f"        expr: {json.dumps(as_promql(expr))}"]
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    done = promtool("check", "rules", rules)
    assert done.returncode == 0, why(done)
    assert f"SUCCESS: {len(dashboard_exprs())} rules found" in done.stdout, why(done)


def test_promtools_finds_both_binaries():
    found = promtools.ensure_prometheus()
    assert Path(found.prometheus).exists()
    assert Path(found.promtool).exists()
