"""Writes tasklease.json, the Grafana dashboard of a tasklease cluster (docs/observability.md).

    python3 deploy/grafana/dashboard.py          # rewrite deploy/grafana/tasklease.json
    python3 deploy/grafana/dashboard.py --check  # exit 1 if the file is not what this writes

Why a script rather than hand-edited JSON: every panel, target and variable
needs the same datasource reference and a grid position, and a dashboard
exported from Grafana carries hundreds of lines of defaults; here each panel is
one line of intent, and tests/unit/test_deploy_rules.py checks that the
committed JSON is this script's output. Standard library only (no
grafana-foundation-sdk: one more dependency for ~20 panels is not worth it).

The JSON is Grafana's dashboard model (schemaVersion 39, Grafana 10.4 and
later). The datasource is a template variable (``${datasource}``, any
Prometheus datasource), never a hard-coded uid, so the file imports as is.
Queries use ``$__rate_interval`` and the ``$queue`` variable (all by default).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("tasklease.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
Q = 'queue=~"$queue"'
RI = "$__rate_interval"
WIDTH = 24


@dataclass(frozen=True)
class Target:
    """One query of a panel: a PromQL expression and its legend."""

    expr: str
    legend: str = "__auto"


@dataclass(frozen=True)
class Panel:
    """One panel: a title, its kind, its unit and its queries."""

    title: str
    targets: tuple[Target, ...]
    description: str
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)


def q(quantile: float, metric: str, by: str = "", selector: str = "") -> str:
    """``histogram_quantile`` over the rate of ``metric``'s buckets, summed by ``le`` and ``by``."""
    labels = f"le, {by}" if by else "le"
    matcher = f"{{{selector}}}" if selector else ""
    return f"histogram_quantile({quantile}, sum by ({labels}) (rate({metric}_bucket{matcher}[{RI}])))"


def quantiles(metric: str, by: str = "", selector: str = "", what: str = "") -> tuple[Target, ...]:
    """p50 and p99 of a histogram, as two targets."""
    suffix = f" {{{{{by}}}}}" if by else ""
    return tuple(
        Target(q(quantile, metric, by, selector), f"p{int(quantile * 100)}{suffix}{what}")
        for quantile in (0.5, 0.99)
    )


def stat(title: str, expr: str, description: str, unit: str = "short") -> Panel:
    """A small single-value panel (the cluster row)."""
    return Panel(title, (Target(expr, title),), description, unit, kind="stat", width=4, height=4)


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Cluster",
        (
            stat(
                "Leaders",
                "sum(tasklease_scheduler_is_leader)",
                "Schedulers that lead now: 1 is right, 0 means nothing is assigned or recovered.",
            ),
            stat(
                "Live workers",
                'sum(tasklease_workers{state="live"})',
                "Workers taking work (leader's view).",
            ),
            stat(
                "Free capacity",
                "sum(tasklease_free_capacity)",
                "Free slots over live, non-draining workers (leader's view).",
            ),
            stat(
                "Queued",
                f"sum(tasklease_queue_depth{{{Q}}})",
                "Queued tasks in the selected queues (leader's view).",
            ),
            stat("Running", "sum(tasklease_running_tasks)", "Running tasks (leader's view)."),
            stat(
                "Delayed",
                "sum(tasklease_delayed_tasks)",
                "Pending tasks waiting for their delay (retry backoff), leader's view.",
            ),
        ),
    ),
    (
        "Tasks",
        (
            Panel(
                "Throughput by outcome",
                (
                    Target(
                        f"sum by (outcome) (rate(tasklease_worker_attempts_total{{{Q}}}[{RI}]))",
                        "{{outcome}}",
                    ),
                ),
                "Attempts ended per second on all workers, by outcome.",
                unit="ops",
            ),
            Panel(
                "Queue depth by priority",
                (Target(f"sum by (priority) (tasklease_queue_depth{{{Q}}})", "priority {{priority}}"),),
                "Queued tasks by priority (3 = most urgent, 0 = lowest), from the leader's mirror.",
                options={"stack": True},
            ),
            Panel(
                "Queue wait",
                quantiles("tasklease_scheduler_queue_wait_seconds", "queue", Q),
                "Time in the queue before assignment (submit or requeue to assignment), p50 and p99.",
                unit="s",
            ),
            Panel(
                "Execution time by type",
                quantiles("tasklease_worker_execution_seconds", "type"),
                "Time from an attempt's start to its end on the worker, p50 and p99 by task type.",
                unit="s",
            ),
            Panel(
                "End-to-end latency",
                quantiles("tasklease_task_end_to_end_seconds", "state", Q),
                "Created to finished, by final state, p50 and p99.",
                unit="s",
            ),
            Panel(
                "Assignments by queue",
                (
                    Target(
                        f"sum by (queue) (rate(tasklease_scheduler_assignments_total{{{Q}}}[{RI}]))",
                        "{{queue}}",
                    ),
                ),
                "Tasks assigned per second by the leader.",
                unit="ops",
            ),
        ),
    ),
    (
        "Workers",
        (
            Panel(
                "Workers and free capacity",
                (
                    Target("sum by (state) (tasklease_workers)", "workers {{state}}"),
                    Target("sum(tasklease_free_capacity)", "free slots"),
                    Target("sum(tasklease_worker_capacity)", "slots"),
                    Target("sum(tasklease_worker_running_tasks)", "running"),
                ),
                "Live and draining workers and free slots (leader's view); slots and running "
                "attempts as the workers report them.",
            ),
            Panel(
                "Lease refresh latency",
                quantiles("tasklease_worker_lease_refresh_seconds", "instance"),
                "Workers' lease keep-alive latency, p50 and p99 by worker; near the TTL, leases are lost.",
                unit="s",
            ),
            Panel(
                "Leases lost and hand-backs",
                (
                    Target(
                        f"sum by (instance) (increase(tasklease_worker_leases_lost_total[{RI}]))",
                        "leases lost {{instance}}",
                    ),
                    Target(
                        f"sum by (queue, type) (increase(tasklease_worker_handed_back_total{{{Q}}}[{RI}]))",
                        "handed back {{queue}} {{type}}",
                    ),
                ),
                "Leases that ended under a running worker, and tasks handed back (a type the worker "
                "does not run).",
            ),
            Panel(
                "Running attempts by worker",
                (Target("sum by (instance) (tasklease_worker_running_tasks)", "{{instance}}"),),
                "Attempts executing now on each worker.",
            ),
        ),
    ),
    (
        "Scheduler",
        (
            Panel(
                "Leader",
                (Target("max by (instance) (tasklease_scheduler_is_leader)", "{{instance}}"),),
                "1 while a scheduler leads: exactly one line at 1 at any time.",
                options={"steps": True},
            ),
            Panel(
                "Leader changes",
                (
                    Target(
                        f"sum by (instance) (increase(tasklease_scheduler_leader_changes_total[{RI}]))",
                        "{{instance}}",
                    ),
                ),
                "Times a scheduler became leader or stopped leading.",
            ),
            Panel(
                "Recoveries by reason",
                (
                    Target(
                        f"sum by (reason) (increase(tasklease_scheduler_recoveries_total[{RI}]))",
                        "{{reason}}",
                    ),
                ),
                "Repairs by the leader: lost (worker died), overdue (past its timeout), promoted "
                "(delayed retry due).",
            ),
            Panel(
                "Batch size",
                quantiles("tasklease_scheduler_batch_size"),
                "Tasks per assignment transaction, p50 and p99.",
            ),
        ),
    ),
    (
        "etcd",
        (
            Panel(
                "etcd request latency p99",
                (Target(q(0.99, "tasklease_etcd_request_seconds", "operation"), "{{operation}}"),),
                "p99 of etcd requests by operation, over every tasklease process.",
                unit="s",
            ),
            Panel(
                "etcd request latency p50",
                (Target(q(0.5, "tasklease_etcd_request_seconds", "operation"), "{{operation}}"),),
                "p50 of etcd requests by operation, over every tasklease process.",
                unit="s",
            ),
            Panel(
                "etcd errors and watch restarts",
                (
                    Target(
                        f"sum by (kind) (rate(tasklease_etcd_errors_total[{RI}]))",
                        "errors {{kind}}",
                    ),
                    Target(
                        f"sum(rate(tasklease_watch_restarts_total[{RI}]))",
                        "watch restarts",
                    ),
                ),
                "etcd errors per second by kind, and watches started over.",
                unit="ops",
            ),
            Panel(
                "Processes by version",
                (
                    Target(
                        "count by (component, version) (tasklease_build_info)",
                        "{{component}} {{version}}",
                    ),
                ),
                "tasklease processes scraped, by component and version.",
            ),
        ),
    ),
)


def field_config(panel: Panel) -> dict[str, Any]:
    """The panel's ``fieldConfig``: unit, and for time series line style and stacking."""
    custom: dict[str, Any] = {}
    if panel.kind == "timeseries":
        custom = {
            "drawStyle": "line",
            "lineInterpolation": "stepAfter" if panel.options.get("steps") else "linear",
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.options.get("stack") else "none", "group": "A"},
        }
    return {
        "defaults": {"unit": panel.unit, "custom": custom, "color": {"mode": "palette-classic"}},
        "overrides": [],
    }


def panel_options(panel: Panel) -> dict[str, Any]:
    """The panel's ``options``: the stat's reduction, or the time series' legend and tooltip."""
    if panel.kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        }
    return {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def build() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict."""
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row_panels:
            if x + panel.width > WIDTH:
                x, y, row_height = 0, y + row_height, 0
            panels.append(
                {
                    "id": next_id,
                    "type": panel.kind,
                    "title": panel.title,
                    "description": panel.description,
                    "datasource": DS,
                    "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
                    "fieldConfig": field_config(panel),
                    "options": panel_options(panel),
                    "targets": [
                        {
                            "refId": chr(ord("A") + i),
                            "datasource": DS,
                            "editorMode": "code",
                            "expr": target.expr,
                            "legendFormat": target.legend,
                            "range": True,
                        }
                        for i, target in enumerate(panel.targets)
                    ],
                }
            )
            next_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    queue_query = (
        'label_values({__name__=~"tasklease_queue_depth|tasklease_scheduler_assignments_total"}, queue)'
    )
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "A tasklease cluster: throughput, queues, latencies, workers, leadership, etcd.",
        "editable": True,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["tasklease"],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                },
                {
                    "name": "queue",
                    "label": "Queue",
                    "type": "query",
                    "datasource": DS,
                    "definition": queue_query,
                    "query": {"query": queue_query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "hide": 0,
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "options": [],
                    "refresh": 2,
                    "regex": "",
                    "sort": 1,
                },
            ]
        },
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "tasklease",
        "uid": "tasklease",
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    """The file's text: the dashboard as indented JSON, newline-terminated."""
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    """Write the file, or with ``--check`` compare it; the exit code."""
    text = render()
    if "--check" in argv:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python3 {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
