"""The component map of docs/architecture.md, checked: which module may import which.

Imports point one way: the base (models, keys, codec...) imports nothing above it;
the store only the base; the seams (events, transitions) the store and the base;
the shared building blocks (session, election, queue, nodes...) the layers below;
each component family (worker, scheduler, client) the layers below and its own
family only, never another family; the process modules (cli, runners, dev...)
anything. Nothing imports a process module but another one. Executors and
balancers are plug-ins: the base and their own package only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tasklease"

BASE = {"errors", "clock", "ids", "keys", "retry", "routing", "models", "codec", "logs", "spec"}
BASE |= {"groupcommit", "version"}
STORE = {"store", "etcd_server"}
STORE |= {"store_types", "store_errors", "store_channel", "store_paging", "store_leases", "store_watch"}
STORE |= {"store_h2"}  # etcd's KV calls over tasklease's own HTTP/2 client
STORE |= {"etcd_auth"}
SEAMS = {"events", "transitions"}
SHARED = {"session", "election", "retention", "waiters", "queue", "recovery", "nodes", "fleet"}
SHARED |= {"quotas", "purge", "stats"}
SHARED |= {"quota_usage"}
SHARED |= {"tracing"}  # the OpenTelemetry hook: events and models only
SHARED |= {"metrics"}  # observability: reads no component (protocols), fed by events
SHARED |= {"httpserver", "health"}  # the HTTP endpoint and its routes: read no component (callables)
SHARED |= {"overview", "finished", "controls"}  # counts and listings from index keys; pause and drain keys
SHARED |= {"limits"}  # rate and concurrency limits: the model and the client's operations
SHARED |= {"schedules"}  # cron schedules: the expression, the stored schedule, client ops
FAMILIES = {
    "worker": {"worker", "membership", "execution", "recorder", "burst"},
    "scheduler": {"scheduler", "mirror", "assigner", "recoverer", "leader", "limiter", "cron"},
    "client": {"client", "submitter", "inspector", "editor", "waiting", "sync"},
}
FAMILIES["scheduler"] |= {"release"}  # dependencies: the leader's Releaser
FAMILIES["client"] |= {"workflows"}  # dependencies: DAG submit, status, cancel
FAMILIES["client"] |= {"sending"}  # fire and confirm: Client.send's futures
PROCESSES = {"cli", "__main__", "runners", "dev", "demo", "demo_tasks", "soak", "soak_workflows", "tasklease"}
PROCESSES |= {"cli_limits", "web.api_limits"}  # limits: the command and the REST routes
PROCESSES |= {"cli_schedules", "web.api_schedules"}  # cron schedules: the command and the REST routes
FAMILIES["scheduler"].add("expiry")  # W2: the leader's loop that discards tasks not started in time
# The REST API and dashboard (tasklease web): a process that uses the client.
PROCESSES |= {"web", "web.app", "web.api", "web.feed", "web.security", "web.openapi", "web.server"}
PROCESSES |= {"cli_workflows", "web.api_workflows"}
PLUGINS = ("executors", "balancers")
# Imports inside a function, to break a cycle, each with its reason in the code.
LAZY = {
    ("errors", "ids"),  # MalformedTaskId's message names the id length (ids.py imports errors)
    ("store", "etcd_server"),  # StoreConfig finds a local etcd's credentials
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "tasklease"


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasklease"):
            if node.module == "tasklease":
                found |= {a.name for a in node.names}  # from tasklease import codec
            else:
                found.add(node.module.removeprefix("tasklease."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("tasklease.") for a in node.names if a.name.startswith("tasklease")}
    return found


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer(name: str) -> tuple[int, str]:
    """(rank, family) of a module: it may import lower ranks, and its own family at its rank."""
    top = name.split(".", maxsplit=1)[0]
    if top in PLUGINS:
        return 0, top
    for rank, group in enumerate((BASE, STORE, SEAMS, SHARED)):
        if name in group:
            return rank, "common"
    for family, members in FAMILIES.items():
        if name in members:
            return 4, family
    if name in PROCESSES:
        return 5, "processes"
    raise AssertionError(f"{name} is on no layer of the component map: add it (and to docs/architecture.md)")


def allowed(src: str, dst: str) -> bool:
    if (src, dst) in LAZY:
        return True
    src_rank, src_family = layer(src)
    dst_rank, dst_family = layer(dst)
    if src_family in PLUGINS:  # plug-ins: the base and their own package only
        return dst_family == src_family or (dst_rank == 0 and dst_family == "common")
    if dst_family in PLUGINS:
        return src_rank >= 3  # shared blocks, components and processes use plug-ins
    if src_rank == 5:
        return True
    if dst_rank < src_rank:
        return True
    return dst_rank == src_rank and dst_family == src_family


def test_every_module_is_on_the_map():
    for name in MODULES:
        layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_one_way(name):
    bad = sorted(
        dst
        for dst in imports(MODULES[name])
        if dst in MODULES or dst.split(".")[0] in PLUGINS
        if not allowed(name, dst)
    )
    assert not bad, f"{name} may not import {bad} (docs/architecture.md, component map)"


def test_component_families_never_import_each_other():
    for family, members in FAMILIES.items():
        others = set().union(*(m for f, m in FAMILIES.items() if f != family))
        for name in members:
            assert not imports(MODULES[name]) & others, name


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("models", "store"),  # the base imports nothing above it
        ("store", "transitions"),
        ("transitions", "queue"),
        ("queue", "worker"),
        ("worker", "scheduler"),  # families never import each other
        ("recoverer", "submitter"),
        ("client", "cli"),  # nothing imports a process module
        ("executors.base", "store"),  # plug-ins import the base only
        ("balancers.base", "mirror"),
    ],
)
def test_the_map_refuses_imports_against_its_direction(src, dst):
    assert not allowed(src, dst)
