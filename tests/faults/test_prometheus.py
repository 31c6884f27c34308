"""A real Prometheus scrapes a real cluster; every dashboard panel and alert is evaluated through it.

Given etcd (the session fixture), a `tasklease scheduler` and two `tasklease
worker` processes serving ``--http`` on free ports, and a real `prometheus`
(Debian's package, installed by tests/promtools.py when missing) scraping them
every second with deploy/prometheus/alerts.yml loaded; when a workload runs
that succeeds, fails for good, retries, times out, and loses a task with a
SIGKILLed worker (a third worker then finishes it); then:

- every PromQL expression of every panel of deploy/grafana/tasklease.json
  parses and returns data through ``/api/v1/query`` (the few that may
  legitimately be empty are listed with their reason, and must still parse
  and name a metric family the processes export);
- every alert parses, Prometheus evaluates it without error (``/api/v1/rules``),
  and the quantity it thresholds returns data; the alert this run must trip
  (tasks recovered from the killed worker) is pending, and those it gives no
  cause for are not;
- promtool's linter accepts what each live process exports;
- the values agree with the run: succeeded / failed / retried / timed-out
  attempts, assignments, end-to-end observations, recoveries, queue depth,
  leaders, live workers and free capacity.

Every wait polls with a bound; nothing asserts on durations.
"""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faults.procs import Procs, process_env, until
from promtools import (
    ALERTS,
    PrometheusServer,
    alert_rules,
    as_promql,
    dashboard,
    dashboard_exprs,
    doc_metrics,
    ensure_prometheus,
    free_port,
    metric_names,
)
from tasklease.client import Client
from tasklease.models import Outcome, Task, TaskState
from tasklease.retry import RetryPolicy

pytestmark = pytest.mark.timeout(420)

WAIT_S = 90.0  # bound of every wait for Prometheus to show something
# tasks per round: add() succeeds; fail_permanently() fails for good at once; fail() with one
# retry is retried, then fails; sync_sleep() runs past its timeout, with no retry
WARM_UP = (2, 2, 2, 2)
MAIN = (20, 3, 3, 1)
N_OK, N_PERMANENT, N_RETRIED, N_TIMED_OUT = (a + b for a, b in zip(WARM_UP, MAIN, strict=True))
SUCCEEDED = N_OK + 1  # + the task of the killed worker, finished by the third one
RUN_WINDOW = "10m"  # longer than the run: this Prometheus holds nothing older

# Panel queries that may legitimately return nothing in this run; each must still parse, and
# its metric family must be exported by the processes (Prometheus knows its metadata).
MAY_BE_EMPTY = {
    "tasklease_worker_handed_back_total": (
        "a hand-back needs a worker restarted under the same id without a task type the scheduler "
        "had assigned to it; nothing here does that"
    ),
    "tasklease_etcd_errors_total": "etcd answers every request in this run: no error, so no labelled series",
}

# Each alert's quantity without its threshold (``> 0.2`` etc.), so that it returns data while the
# alert does not fire. Each must appear verbatim in the alert's expression.
ALERT_SIGNALS = {
    "TaskleaseNoLiveWorker": ["sum(tasklease_queue_depth)", 'sum(tasklease_workers{state="live"})'],
    "TaskleaseBacklogGrowing": [
        "deriv(sum by (queue) (tasklease_queue_depth)[10m:30s])",
        "sum by (queue) (tasklease_queue_depth)",
    ],
    "TaskleaseHighFailureRatio": [
        'sum by (queue) (rate(tasklease_worker_attempts_total{outcome=~"failed|retried|timed_out"}[5m])) '
        '/ sum by (queue) (rate(tasklease_worker_attempts_total{outcome=~"succeeded|failed|retried|timed_out"}[5m]))'
    ],
    "TaskleaseNoLeader": ["sum(tasklease_scheduler_is_leader)"],
    "TaskleaseLeaderFlapping": ["sum(increase(tasklease_scheduler_leader_changes_total[30m]))"],
    "TaskleaseWorkerLeaseLost": ["sum by (instance) (increase(tasklease_worker_leases_lost_total[10m]))"],
    "TaskleaseWorkersLost": ['sum(increase(tasklease_scheduler_recoveries_total{reason="lost"}[10m]))'],
    "TaskleaseEtcdLatencyHigh": [
        "histogram_quantile(0.99, sum by (le, operation) (rate(tasklease_etcd_request_seconds_bucket[5m])))"
    ],
}
# What this run must trip, and what it gives no cause for. Not asserted either way:
# TaskleaseHighFailureRatio (1 attempt in 3 fails, but a labelled counter's series appears at its
# first increment, so rate() over a run this short may not see the failures) and
# TaskleaseEtcdLatencyHigh (depends on the machine's load).
MUST_TRIP = {"TaskleaseWorkersLost"}
MUST_NOT_TRIP = {
    "TaskleaseNoLiveWorker",
    "TaskleaseBacklogGrowing",
    "TaskleaseNoLeader",
    "TaskleaseLeaderFlapping",
    "TaskleaseWorkerLeaseLost",
}


@pytest.fixture
def procs(tasklease_bin: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tasklease_bin, process_env(cli_env), tmp_path)
    try:
        yield group
    finally:
        group.cleanup()


@pytest.fixture
def addresses() -> dict[str, str]:
    return {name: f"127.0.0.1:{free_port()}" for name in ("s1", "w1", "w2", "w3")}


@pytest.fixture
def prometheus(tmp_path: Path, addresses: dict[str, str]) -> Iterator[PrometheusServer]:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = PrometheusServer(
        workdir,
        {
            "tasklease-scheduler": [addresses["s1"]],
            # w3 is started late: until then its target is down (up == 0).
            "tasklease-worker": [addresses["w1"], addresses["w2"], addresses["w3"]],
        },
        rule_files=(ALERTS,),
        scrape_interval_s=1.0,
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


class Observer:
    """Prometheus as the test reads it: its HTTP API off the event loop, every wait bounded."""

    def __init__(self, prom: PrometheusServer, procs: Procs) -> None:
        self.prom = prom
        self.procs = procs

    async def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        return await asyncio.to_thread(self.prom.api, path, params)

    async def query(self, expr: str) -> list[dict]:
        """An instant query's series (a parse or evaluation error raises)."""
        return await asyncio.to_thread(self.prom.query, expr)

    async def value(self, expr: str) -> float | None:
        """The single value of ``expr``, None while it has no series yet."""
        result = await self.query(expr)
        assert len(result) <= 1, f"{expr}: more than one series: {result}"
        return float(result[0]["value"][1]) if result else None

    async def until_value(self, expr: str, want: float) -> None:
        """Wait until Prometheus answers ``want`` (it follows the processes a scrape behind)."""
        last: list[float | None] = [None]

        async def equal() -> bool:
            last[0] = await self.value(expr)
            return last[0] == want

        try:
            await until(equal, within_s=WAIT_S, what=f"{expr} == {want}", poll_s=0.25)
        except AssertionError as exc:
            message = f"{exc}; last answer {last[0]}\n{self.prom.tail(10)}"
            raise AssertionError(self.procs.why(message)) from None

    async def until_data(self, expr: str, what: str) -> list[dict]:
        """Wait until ``expr`` has a series with a number (not NaN: a quantile of nothing)."""

        async def numbers() -> list[dict]:
            return [r for r in await self.query(expr) if not math.isnan(float(r["value"][1]))]

        try:
            return list(await until(numbers, within_s=WAIT_S, what=f"data for {what}: {expr}", poll_s=0.5))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast answer: {await self.query(expr)}") from None


def normalize(expr: str) -> str:
    return " ".join(expr.split())


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def promtool_lint(text: str) -> str:
    """``promtool check metrics`` on an exposition: its complaints ('' when none)."""
    done = subprocess.run(
        [ensure_prometheus().promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (done.stdout + done.stderr).strip() if done.returncode else ""


def up(addresses: dict[str, str], name: str) -> str:
    return f'up{{instance="{addresses[name]}"}}'


def attempts_of(tasks: list[Task]) -> int:
    return sum(len(t.attempts) for t in tasks)


async def run_round(
    client: Client, obs: Observer, before: list[Task], counts: tuple[int, int, int, int]
) -> list[Task]:
    """Submit one round, wait for every task, check how each ended, and wait until Prometheus has
    every worker's counts (w2's final ones before it is killed); ``before`` gets the round."""
    n_ok, n_permanent, n_retried, n_timed_out = counts
    retry_once = RetryPolicy(max_retries=1, backoff_s=0.2, jitter=0)
    submitted: list[Task] = []
    for i in range(n_ok):
        submitted.append(await client.submit("add", {"a": i, "b": 1}))
    for _ in range(n_permanent):
        submitted.append(await client.submit("fail_permanently"))
    for _ in range(n_retried):
        submitted.append(await client.submit("fail", {"message": "flaky"}, retry=retry_once))
    for _ in range(n_timed_out):
        submitted.append(await client.submit("sync_sleep", {"seconds": 60}, timeout_s=1.0))
    ended = [await client.wait(t.id, timeout_s=WAIT_S) for t in submitted]
    by_state = {s: sum(1 for t in ended if t.state is s) for s in TaskState}
    why = obs.procs.why
    assert by_state[TaskState.SUCCEEDED] == n_ok, why(f"{by_state}")
    assert by_state[TaskState.FAILED] == n_permanent + n_retried + n_timed_out, why(f"{by_state}")
    retried = [t for t in ended if t.type == "fail"]
    assert [len(t.attempts) for t in retried] == [2] * n_retried, why(f"{retried}")
    before.extend(ended)
    await obs.until_value("sum(tasklease_worker_attempts_total)", attempts_of(before))
    return ended


async def check_values(obs: Observer, tasks: list[Task]) -> None:
    """The counters and gauges agree with the run.

    w2's series ended with it: its last scraped values count, hence ``max_over_time``
    over the run for the workers' counters (each series' last value: counters only grow).
    """

    def total(metric: str, selector: str = "") -> str:
        return f"sum(max_over_time({metric}{{{selector}}}[{RUN_WINDOW}]))"

    def count(state: TaskState) -> int:
        return sum(1 for t in tasks if t.state is state)

    attempts = "tasklease_worker_attempts_total"
    assert count(TaskState.SUCCEEDED) == SUCCEEDED
    await obs.until_value(total(attempts, 'outcome="succeeded"'), SUCCEEDED)
    await obs.until_value(total(attempts, 'outcome="failed"'), N_PERMANENT + N_RETRIED)
    await obs.until_value(total(attempts, 'outcome="retried"'), N_RETRIED)
    await obs.until_value(total(attempts, 'outcome="timed_out"'), N_TIMED_OUT)
    ended = count(TaskState.SUCCEEDED) + count(TaskState.FAILED)
    await obs.until_value(total("tasklease_task_end_to_end_seconds_count"), ended)
    await obs.until_value(
        total("tasklease_task_end_to_end_seconds_count", 'state="failed"'), count(TaskState.FAILED)
    )
    # the scheduler lived through it all: its counters are plain sums
    assignments = attempts_of(tasks)
    await obs.until_value("sum(tasklease_scheduler_assignments_total)", assignments)
    await obs.until_value("sum(tasklease_scheduler_queue_wait_seconds_count)", assignments)
    await obs.until_value('sum(tasklease_scheduler_assignments_total{queue="victim"})', 2)
    await obs.until_value('sum(tasklease_scheduler_recoveries_total{reason="lost"})', 1)
    # the cluster at rest: the leader's gauges
    await obs.until_value("sum(tasklease_queue_depth)", 0)
    await obs.until_value("sum(tasklease_running_tasks)", 0)
    await obs.until_value("sum(tasklease_scheduler_is_leader)", 1)
    await obs.until_value('sum(tasklease_workers{state="live"})', 2)
    await obs.until_value("sum(tasklease_worker_capacity)", 8)
    await obs.until_value("sum(tasklease_free_capacity)", 8)


async def check_panels(obs: Observer) -> dict[str, str]:
    """Every query of every panel parses and returns data; returns those empty, as allowed."""
    known = doc_metrics()
    exported = set(await obs.api("metadata"))
    assert set(known) <= exported, f"documented but not exported: {sorted(set(known) - exported)}"
    empty: dict[str, str] = {}
    for where, expr in dashboard_exprs():
        promql = as_promql(expr, rate_interval=RUN_WINDOW)
        if metric_names(promql, known) & set(MAY_BE_EMPTY):
            if not await obs.query(promql):  # it parses (an error raises), but may be empty
                empty[where] = promql
            continue
        await obs.until_data(promql, f"panel {where}")
    # the Grafana queue variable finds both queues
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "queue")
    selector = variable["definition"].removeprefix("label_values(").rsplit(",", 1)[0]
    queues = await obs.api("label/queue/values", {"match[]": selector})
    assert {"default", "victim"} <= set(queues), queues
    return empty


async def check_alerts(obs: Observer) -> set[str]:
    """Every alert parses and evaluates, its quantity returns data; returns those pending or firing."""
    rules = alert_rules()
    assert set(ALERT_SIGNALS) == set(rules), "each alert needs its threshold-free quantity here"
    for name, rule in rules.items():
        await obs.query(rule.expr)  # parses and evaluates (the result may be empty: not firing)
        for quantity in ALERT_SIGNALS[name]:
            assert normalize(quantity) in normalize(rule.expr), (name, quantity)
            await obs.until_data(quantity, f"alert {name}")

    async def evaluated() -> dict[str, dict] | None:
        groups = (await obs.api("rules", {"type": "alert"}))["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        done = set(loaded) == set(rules) and all(
            r.get("lastEvaluation", "").startswith("2") for r in loaded.values()
        )
        return loaded if done else None

    loaded = await until(evaluated, within_s=WAIT_S, what="every alert rule evaluated")
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))

    seen: list[object] = []

    async def active() -> set[str] | None:
        alerts = (await obs.api("alerts"))["alerts"]
        seen[:] = alerts
        names = {a["labels"]["alertname"] for a in alerts if a["state"] in ("pending", "firing")}
        return names if names >= MUST_TRIP else None

    try:
        return set(await until(active, within_s=WAIT_S, what=f"alerts {sorted(MUST_TRIP)} pending"))
    except AssertionError as exc:
        quantities = {q: await obs.query(q) for name in MUST_TRIP for q in ALERT_SIGNALS[name]}
        raise AssertionError(f"{exc}\nalerts: {seen}\nquantities: {quantities}") from None


async def test_prometheus_scrapes_the_cluster_and_every_panel_and_alert_evaluates(
    procs: Procs,
    prometheus: PrometheusServer,
    addresses: dict[str, str],
    client: Client,
    tmp_path: Path,
):
    obs = Observer(prometheus, procs)

    # Given a scheduler and two workers serving /metrics, scraped every second
    procs.scheduler("s1", "--http", addresses["s1"], "--balancer", "round_robin")
    procs.worker("w1", "--http", addresses["w1"], "--queues", "default")
    procs.worker("w2", "--http", addresses["w2"], "--queues", "default,victim")
    for name in ("s1", "w1", "w2"):
        await obs.until_value(up(addresses, name), 1)
    await obs.until_value("sum(tasklease_scheduler_is_leader)", 1)
    await obs.until_value('sum(tasklease_workers{state="live"})', 2)

    # When a workload runs: successes, permanent failures, retries, timeouts. A labelled series
    # is born at its first increment, and rate() cannot see the increment that made it: a
    # warm-up round of every kind first creates the series the panels read, so the main
    # round's increments show in their rates.
    tasks: list[Task] = []
    await run_round(client, obs, tasks, WARM_UP)
    await run_round(client, obs, tasks, MAIN)

    # ... and w2 is SIGKILLed while it runs a task (queue "victim" is served by w2 only)
    gate = tmp_path / "gate"
    victim = await client.submit(
        "wait_for_file", {"path": str(gate), "within_s": 120}, queue="victim", retry=RetryPolicy(max_losses=3)
    )

    async def running_on_w2() -> bool:
        task = await client.get(victim.id)
        return task.state is TaskState.RUNNING and bool(task.attempts) and task.attempts[-1].worker == "w2"

    await until(running_on_w2, within_s=WAIT_S, what="the victim task running on w2", log=procs.tails)
    procs["w2"].signal(signal.SIGKILL)
    await procs["w2"].wait_exit(within_s=30)

    # Then the leader recovers it (reason lost) and it waits in its queue: no live worker serves it
    await obs.until_value('sum(tasklease_scheduler_recoveries_total{reason="lost"})', 1)
    await obs.until_value('sum(tasklease_queue_depth{queue="victim"})', 1)
    await obs.until_value(up(addresses, "w2"), 0)
    await obs.until_value('sum(tasklease_workers{state="live"})', 1)

    # When a third worker serving "victim" starts, it finishes the task
    gate.write_text("open")
    procs.worker("w3", "--http", addresses["w3"], "--queues", "victim")
    done = await client.wait(victim.id, timeout_s=WAIT_S)
    assert done.state is TaskState.SUCCEEDED, procs.why(f"victim ended {done.state}: {done.attempts}")
    assert done.attempts[0].outcome is Outcome.LOST, done.attempts
    tasks.append(done)
    await obs.until_value(up(addresses, "w3"), 1)

    # Then the values in Prometheus agree with the run
    await check_values(obs, tasks)

    # ... every panel's every query parses and returns data
    empty = await check_panels(obs)
    print(f"[prometheus] {len(dashboard_exprs())} panel queries; empty, as allowed: {sorted(empty)}")

    # ... every alert parses and evaluates; the lost worker trips its alert, nothing unfounded trips
    tripped = await check_alerts(obs)
    assert tripped >= MUST_TRIP, tripped
    assert not tripped & MUST_NOT_TRIP, tripped
    ratio = await obs.query(normalize(ALERT_SIGNALS["TaskleaseHighFailureRatio"][0]))
    print(f"[prometheus] alerts pending or firing: {sorted(tripped)}; failure ratio by queue: {ratio}")

    # ... and promtool's linter accepts what each live process exports
    for name in ("s1", "w1", "w3"):
        text = await asyncio.to_thread(http_get, f"http://{addresses[name]}/metrics")
        lint = await asyncio.to_thread(promtool_lint, text)
        assert lint == "", f"{name}: promtool check metrics:\n{lint}"
