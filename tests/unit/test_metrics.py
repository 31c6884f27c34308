"""The metrics hook, store observer and scrape-time gauges (metrics.py), fed synthetic events: no etcd."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

import tasklease.metrics as metrics_module
from tasklease import codec
from tasklease.clock import FakeClock
from tasklease.errors import (
    StoreAuthError,
    StoreAuthRequired,
    StoreCompacted,
    StoreError,
    StoreLeaseNotFound,
    StoreNoSpace,
    StoreRequestTooLarge,
    StoreUnavailable,
    WatchCompacted,
    WatchTooLarge,
)
from tasklease.events import (
    Assigned,
    BatchAssigned,
    Cancelled,
    Failed,
    HandedBack,
    Hooks,
    LeaderElected,
    LeaderResigned,
    LeaseRefreshed,
    Lost,
    Promoted,
    RecordingHook,
    Rejected,
    Retried,
    Started,
    Submitted,
    Succeeded,
    TimedOut,
    WorkerLeaseLost,
)
from tasklease.keys import Keyspace
from tasklease.metrics import Metrics
from tasklease.mirror import ClusterView
from tasklease.models import Attempt, Outcome, Task, TaskState
from tasklease.nodes import NodeRecord
from tasklease.store import KV
from tasklease.store_types import error_kind
from tasklease.version import __version__

K = Keyspace("ns")
DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
CLUSTER_GAUGES = {
    "tasklease_queue_depth",
    "tasklease_running_tasks",
    "tasklease_delayed_tasks",
    "tasklease_workers",
    "tasklease_free_capacity",
}


def tid(n: int) -> str:
    return f"01ARZ3NDEKTSV4RRFFQ69{n:05d}"


def task(
    n: int, state: TaskState, *, created=100.0, updated=110.0, finished=None, queue="q", type="t", priority=1
):
    attempt = Attempt(1, "w1", started_at=101.0, finished_at=finished)
    return Task(
        id=tid(n),
        type=type,
        payload=None,
        queue=queue,
        priority=priority,
        state=state,
        created_at=created,
        updated_at=updated,
        attempts=(attempt,),
    )


def value(m: Metrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def exported(m: Metrics) -> set[str]:
    return {family.name for family in m.registry.collect()}


def worker_event(kind, n, state, *, at=110.0, finished=None, outcome=Outcome.SUCCEEDED, **task_kw):
    return kind(
        at=at,
        component="worker",
        source="w1",
        task=task(n, state, finished=finished, **task_kw),
        attempt=1,
        worker="w1",
        outcome=outcome,
    )


def started(n: int, at: float = 102.0, source: str = "w1") -> Started:
    return Started(
        at=at, component="worker", source=source, task=task(n, TaskState.RUNNING), attempt=1, worker=source
    )


# worker -------------------------------------------------------------------------------------
def test_each_worker_outcome_counts_once_with_its_queue_type_and_outcome():
    m = Metrics("worker")
    hook = m.hook()
    ends = [
        (Succeeded, TaskState.SUCCEEDED, "succeeded"),
        (Failed, TaskState.FAILED, "failed"),
        (Retried, TaskState.PENDING, "retried"),
        (TimedOut, TaskState.QUEUED, "timed_out"),
        (HandedBack, TaskState.QUEUED, "handed_back"),
        (Rejected, TaskState.SUCCEEDED, "rejected"),
    ]
    for n, (kind, state, _) in enumerate(ends):
        hook.on_event(started(n))
        hook.on_event(worker_event(kind, n, state, finished=105.0))

    for _, _, outcome in ends:
        assert value(m, "tasklease_worker_attempts_total", queue="q", type="t", outcome=outcome) == 1
    assert value(m, "tasklease_worker_handed_back_total", queue="q", type="t") == 1
    # execution: Started.at -> the attempt's finished_at, for every attempt that started here
    assert value(m, "tasklease_worker_execution_seconds_count", type="t") == 6
    assert value(m, "tasklease_worker_execution_seconds_sum", type="t") == pytest.approx(6 * 3.0)
    # end to end: only where a task finished (succeeded, failed), not a retry nor a fenced-off outcome
    assert value(m, "tasklease_task_end_to_end_seconds_count", queue="q", type="t", state="succeeded") == 1
    assert value(m, "tasklease_task_end_to_end_seconds_count", queue="q", type="t", state="failed") == 1
    assert value(m, "tasklease_task_end_to_end_seconds_sum", queue="q", type="t", state="failed") == 10.0


def test_every_outcome_series_of_a_queue_and_type_exists_at_zero_from_its_first_start():
    # rate() cannot see the increment that creates a series: the first failure of a
    # new queue and type would be invisible to the failure-ratio alert.
    m = Metrics("worker")
    hook = m.hook()
    hook.on_event(started(1))
    samples = {
        s.labels["outcome"]: s.value
        for family in m.registry.collect()
        if family.name == "tasklease_worker_attempts"
        for s in family.samples
        if s.name == "tasklease_worker_attempts_total"
    }
    assert samples == dict.fromkeys(
        ["succeeded", "failed", "retried", "timed_out", "handed_back", "rejected"], 0.0
    )
    hook.on_event(worker_event(Failed, 1, TaskState.FAILED, finished=105.0))
    assert value(m, "tasklease_worker_attempts_total", queue="q", type="t", outcome="failed") == 1


def test_execution_time_falls_back_to_the_event_time_and_needs_a_start_seen_here():
    m = Metrics("worker")
    hook = m.hook()
    hook.on_event(started(1, at=100.0))
    hook.on_event(worker_event(Succeeded, 1, TaskState.SUCCEEDED, at=107.5, finished=None))
    # an end without a start seen here (the process restarted): counted, not timed
    hook.on_event(worker_event(Succeeded, 2, TaskState.SUCCEEDED, finished=105.0))
    assert value(m, "tasklease_worker_execution_seconds_count", type="t") == 1
    assert value(m, "tasklease_worker_execution_seconds_sum", type="t") == 7.5
    assert value(m, "tasklease_worker_attempts_total", queue="q", type="t", outcome="succeeded") == 2


def test_a_lost_lease_is_counted_and_forgets_that_workers_started_attempts():
    m = Metrics("worker")
    hook = m.hook()
    hook.on_event(started(1, source="w1"))
    hook.on_event(started(2, source="w2"))
    hook.on_event(WorkerLeaseLost(at=1.0, component="worker", source="w1"))
    assert value(m, "tasklease_worker_leases_lost_total") == 1
    assert [k[0] for k in hook._started] == ["w2"]  # type: ignore[attr-defined]


def test_started_attempts_whose_end_never_comes_are_bounded(monkeypatch):
    monkeypatch.setattr(metrics_module, "MAX_STARTED", 10)
    m = Metrics("worker")
    hook = m.hook()
    for n in range(50):  # e.g. revoked attempts: stopped without an end event
        hook.on_event(started(n))
    assert len(hook._started) == 10  # type: ignore[attr-defined]


def test_lease_refresh_latency_is_a_histogram():
    m = Metrics("worker")
    for latency in (0.002, 0.004, 0.3):
        m.hook().on_event(LeaseRefreshed(at=1.0, component="worker", source="w1", latency_s=latency))
    assert value(m, "tasklease_worker_lease_refresh_seconds_count") == 3
    assert value(m, "tasklease_worker_lease_refresh_seconds_bucket", le="0.005") == 2
    assert value(m, "tasklease_worker_lease_refresh_seconds_sum") == pytest.approx(0.306)


def test_worker_gauges_are_read_at_scrape_time_and_summed_over_tracked_workers():
    m = Metrics("dev")
    assert "tasklease_worker_running_tasks" not in exported(m)  # nothing tracked: nothing said
    a = SimpleNamespace(running=2, config=SimpleNamespace(concurrency=4))
    b = SimpleNamespace(running=1, config=SimpleNamespace(concurrency=8))
    m.track_worker(a)
    m.track_worker(b)
    assert value(m, "tasklease_worker_running_tasks") == 3
    assert value(m, "tasklease_worker_capacity") == 12
    a.running = 0
    assert value(m, "tasklease_worker_running_tasks") == 1


# scheduler ----------------------------------------------------------------------------------
def test_assignments_queue_wait_and_batch_sizes():
    m = Metrics("scheduler")
    hook = m.hook()
    for n, (queue, priority, queued_at) in enumerate([("a", 3, 99.0), ("a", 3, 99.5), ("b", 0, 90.0)]):
        run = task(n, TaskState.RUNNING, queue=queue, priority=priority)
        hook.on_event(
            Assigned(
                at=100.0,
                component="scheduler",
                source="s",
                task=run,
                attempt=1,
                worker="w",
                queued_at=queued_at,
            )
        )
    # queued_at unknown: counted, no wait observed
    run = task(9, TaskState.RUNNING, queue="a", priority=3)
    hook.on_event(Assigned(at=100.0, component="scheduler", source="s", task=run, attempt=1, worker="w"))
    hook.on_event(BatchAssigned(at=100.0, component="scheduler", source="s", size=3))
    hook.on_event(BatchAssigned(at=100.0, component="scheduler", source="s", size=1))

    assert value(m, "tasklease_scheduler_assignments_total", queue="a") == 3
    assert value(m, "tasklease_scheduler_assignments_total", queue="b") == 1
    assert value(m, "tasklease_scheduler_queue_wait_seconds_count", queue="a", priority="3") == 2
    assert value(m, "tasklease_scheduler_queue_wait_seconds_sum", queue="a", priority="3") == 1.5
    assert value(m, "tasklease_scheduler_queue_wait_seconds_sum", queue="b", priority="0") == 10.0
    assert value(m, "tasklease_scheduler_batch_size_count") == 2
    assert value(m, "tasklease_scheduler_batch_size_sum") == 4


def test_recoveries_by_reason_and_tasks_the_scheduler_failed_finish_there():
    m = Metrics("scheduler")
    hook = m.hook()

    def sched(kind, n, state, **kw):
        return kind(
            at=120.0, component="scheduler", source="s", task=task(n, state, updated=120.0), attempt=1, **kw
        )

    hook.on_event(sched(Lost, 1, TaskState.QUEUED, outcome=Outcome.LOST))
    hook.on_event(sched(Lost, 2, TaskState.FAILED, outcome=Outcome.LOST))  # out of losses: failed
    hook.on_event(sched(TimedOut, 3, TaskState.PENDING, outcome=Outcome.TIMEOUT))
    hook.on_event(sched(Promoted, 4, TaskState.QUEUED))
    hook.on_event(sched(Failed, 5, TaskState.FAILED))  # no transaction could carry it
    assert value(m, "tasklease_scheduler_recoveries_total", reason="lost") == 2
    assert value(m, "tasklease_scheduler_recoveries_total", reason="overdue") == 1
    assert value(m, "tasklease_scheduler_recoveries_total", reason="promoted") == 1
    assert value(m, "tasklease_task_end_to_end_seconds_count", queue="q", type="t", state="failed") == 2
    assert value(m, "tasklease_task_end_to_end_seconds_sum", queue="q", type="t", state="failed") == 40.0
    # the scheduler's events are not worker attempts
    assert not any(
        s.name.startswith("tasklease_worker_attempts") for f in m.registry.collect() for s in f.samples
    )


def test_leader_changes_count_both_ways():
    m = Metrics("scheduler")
    m.hook().on_event(LeaderElected(at=1.0, component="scheduler", source="s", token=7))
    m.hook().on_event(LeaderResigned(at=2.0, component="scheduler", source="s", reason="stopped"))
    assert value(m, "tasklease_scheduler_leader_changes_total") == 2


def test_events_it_does_not_measure_change_nothing():
    m = Metrics("client")
    before = generate_latest(m.registry)
    m.hook().on_event(Submitted(at=1.0, component="client", task=task(1, TaskState.QUEUED)))
    m.hook().on_event(
        Cancelled(at=1.0, component="client", task=task(1, TaskState.CANCELLED), outcome=Outcome.CANCELLED)
    )
    assert generate_latest(m.registry) == before


def test_the_hook_rides_the_event_seam_with_the_default_hooks():
    m = Metrics("worker")
    rec = RecordingHook()
    hooks = Hooks([m.hook(), rec])
    hooks.emit(worker_event(Succeeded, 1, TaskState.SUCCEEDED))
    assert value(m, "tasklease_worker_attempts_total", queue="q", type="t", outcome="succeeded") == 1
    assert len(rec.events) == 1


# labels -------------------------------------------------------------------------------------
def test_no_label_ever_holds_a_task_id_or_a_worker_id():
    # Given every kind of event the hook measures, for many tasks
    m = Metrics("dev")
    hook = m.hook()
    for n in range(30):
        hook.on_event(started(n))
        kind, state = [
            (Succeeded, TaskState.SUCCEEDED),
            (Failed, TaskState.FAILED),
            (Retried, TaskState.PENDING),
        ][n % 3]
        hook.on_event(worker_event(kind, n, state, finished=104.0))
        run = task(n, TaskState.RUNNING)
        hook.on_event(
            Assigned(
                at=100.0, component="scheduler", source="s", task=run, attempt=1, worker="w1", queued_at=99.0
            )
        )
        hook.on_event(Lost(at=1.0, component="scheduler", source="s", task=run, attempt=1, worker="w1"))
    m.store_observer().request("txn", 0.001, None)

    # Then the label values are low-cardinality words, never an id
    ids = {tid(n) for n in range(30)} | {"w1", "s"}
    allowed = {"queue", "type", "priority", "outcome", "reason", "operation", "kind", "state", "le"}
    allowed |= {"version", "component"}
    series = 0
    for family in m.registry.collect():
        for sample in family.samples:
            series += 1
            assert set(sample.labels) <= allowed, sample
            assert not ids & set(sample.labels.values()), sample
    assert series < 400  # bounded by queues x types x outcomes, not by tasks


# store observer -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (StoreUnavailable("x"), "unavailable"),
        (StoreAuthError("x"), "auth"),
        (StoreAuthRequired("x"), "auth"),
        (StoreRequestTooLarge("x"), "too_large"),
        (StoreNoSpace("x"), "no_space"),
        (StoreCompacted("x"), "compacted"),
        (WatchCompacted("x"), "compacted"),
        (WatchTooLarge("x"), "compacted"),
        (StoreLeaseNotFound("x"), "lease_not_found"),
        (StoreError("x"), "other"),
        (RuntimeError("x"), "other"),
    ],
)
def test_store_errors_map_to_their_kind(error, kind):
    assert error_kind(error) == kind


def test_store_requests_errors_and_watch_restarts():
    m = Metrics("worker")
    observer = m.store_observer()
    observer.request("txn", 0.002, None)
    observer.request("txn", 0.004, "unavailable")
    observer.request("keepalive", 0.001, None)
    observer.watch_restarted()
    assert value(m, "tasklease_etcd_request_seconds_count", operation="txn") == 2
    assert value(m, "tasklease_etcd_request_seconds_sum", operation="txn") == pytest.approx(0.006)
    assert value(m, "tasklease_etcd_request_seconds_count", operation="keepalive") == 1
    assert value(m, "tasklease_etcd_errors_total", kind="unavailable") == 1
    assert value(m, "tasklease_watch_restarts_total") == 1


def test_build_info_names_the_version_and_component():
    assert (
        value(Metrics("scheduler"), "tasklease_build_info", version=__version__, component="scheduler") == 1
    )


# cluster gauges -----------------------------------------------------------------------------
def node_kv(worker: str, *, capacity: int, queues=("q",), draining=False) -> KV:
    rec = NodeRecord(id=worker, queues=queues, capacity=capacity, draining=draining, lease_ttl=10)
    return KV(K.node(worker), codec.encode_obj(rec.to_json()), 2, 2, 1, lease=5)


def loaded_view(clock: FakeClock) -> ClusterView:
    """A leader's mirror: 2 live workers (one busy), 1 draining, queued tasks at two priorities."""
    view = ClusterView(K, clock)
    for kv in (
        node_kv("w1", capacity=4),
        node_kv("w2", capacity=2, queues=("q", "other")),
        node_kv("w3", capacity=8, draining=True),
    ):
        view.apply(kv, deleted=False)
    n = 0
    for priority, count in ((3, 2), (1, 5)):
        for _ in range(count):
            route = ("noop", "add&zone=eu")[n % 2]  # two route groups of one queue: summed
            view.apply(
                KV(K.queue_entry("q", priority, 10**15 + n, tid(n), route), b"", 3, 3, 1), deleted=False
            )
            n += 1
    view.apply(KV(K.assignment("w1", tid(90)), b"{}", 4, 4, 1, lease=5), deleted=False)
    view.apply(
        KV(K.running_entry(tid(90)), b'{"worker": "w1", "n": 1, "deadline": 1e12, "t": 60}', 4, 4, 1),
        deleted=False,
    )
    view.apply(KV(K.delayed_entry(2e9, tid(91)), tid(91).encode(), 4, 4, 1), deleted=False)
    view.revision = 4
    return view


def scheduler(view: ClusterView, leading: bool) -> SimpleNamespace:
    flag = asyncio.Event()
    if leading:
        flag.set()
    return SimpleNamespace(leading=flag, view=view)


def test_the_leader_exports_the_cluster_gauges_from_its_mirror():
    clock = FakeClock()
    m = Metrics("scheduler")
    m.track_scheduler(scheduler(loaded_view(clock), leading=True))

    assert value(m, "tasklease_scheduler_is_leader") == 1
    assert value(m, "tasklease_queue_depth", queue="q", priority="3") == 2
    assert value(m, "tasklease_queue_depth", queue="q", priority="1") == 5
    assert value(m, "tasklease_queue_depth", queue="q", priority="0") == 0
    assert (
        value(m, "tasklease_queue_depth", queue="other", priority="2") == 0
    )  # a served queue: 0, not absent
    assert m.registry.get_sample_value("tasklease_queue_depth", {"queue": "other", "priority": "2"}) == 0
    assert value(m, "tasklease_running_tasks") == 1
    assert value(m, "tasklease_delayed_tasks") == 1
    assert value(m, "tasklease_workers", state="live") == 2
    assert value(m, "tasklease_workers", state="draining") == 1
    assert value(m, "tasklease_free_capacity") == 3 + 2  # w1 holds one task; w3 drains


def test_a_queue_that_drains_reads_zero_and_a_stale_worker_is_neither_live_nor_draining():
    clock = FakeClock()
    view = loaded_view(clock)
    m = Metrics("scheduler")
    m.track_scheduler(scheduler(view, leading=True))
    assert value(m, "tasklease_queue_depth", queue="q", priority="1") == 5
    for key in list(view.queue_kv):
        view.apply(KV(key, b"", 3, 6, 0), deleted=True)
    clock.advance(60)  # no heartbeat for longer than the TTL + margin
    assert m.registry.get_sample_value("tasklease_queue_depth", {"queue": "q", "priority": "1"}) == 0
    assert value(m, "tasklease_workers", state="live") == 0
    assert value(m, "tasklease_workers", state="draining") == 0
    assert value(m, "tasklease_free_capacity") == 0


def test_a_standby_exports_no_cluster_gauge():
    m = Metrics("scheduler")
    m.track_scheduler(scheduler(loaded_view(FakeClock()), leading=False))
    assert value(m, "tasklease_scheduler_is_leader") == 0
    assert not exported(m) & CLUSTER_GAUGES
    assert not any(name in generate_latest(m.registry).decode() for name in CLUSTER_GAUGES)


def test_a_leader_still_loading_its_mirror_exports_no_cluster_gauge():
    view = ClusterView(K, FakeClock())  # revision 0: the take-over read is not applied yet
    m = Metrics("scheduler")
    m.track_scheduler(scheduler(view, leading=True))
    assert value(m, "tasklease_scheduler_is_leader") == 1
    assert not exported(m) & CLUSTER_GAUGES


def test_of_two_tracked_schedulers_only_the_leaders_mirror_is_read():
    clock = FakeClock()
    m = Metrics("dev")
    m.track_scheduler(scheduler(ClusterView(K, clock), leading=False))
    m.track_scheduler(scheduler(loaded_view(clock), leading=True))
    assert value(m, "tasklease_scheduler_is_leader") == 1
    assert value(m, "tasklease_queue_depth", queue="q", priority="1") == 5


# the contract -------------------------------------------------------------------------------
def documented() -> dict[str, tuple[str, set[str]]]:
    """docs/observability.md's metric table: name -> (type, labels)."""
    rows = re.findall(r"^\| `(tasklease_\w+)` \| (\w+) \| ([^|]*) \|", DOC.read_text(), re.MULTILINE)
    assert len(rows) >= 20
    return {
        name: (kind, {label.strip() for label in labels.split(",") if label.strip() not in ("", "—")})
        for name, kind, labels in rows
    }


def test_every_documented_metric_is_exported_with_its_type_and_labels():
    # Given a process that runs a worker and the leading scheduler, and has seen every event
    m = Metrics("dev")
    m.track_worker(SimpleNamespace(running=0, config=SimpleNamespace(concurrency=1)))
    m.track_scheduler(scheduler(loaded_view(FakeClock()), leading=True))
    hook = m.hook()
    hook.on_event(started(1))
    hook.on_event(worker_event(Succeeded, 1, TaskState.SUCCEEDED, finished=105.0))
    hook.on_event(worker_event(HandedBack, 2, TaskState.QUEUED))
    hook.on_event(WorkerLeaseLost(at=1.0, component="worker", source="w1"))
    hook.on_event(LeaseRefreshed(at=1.0, component="worker", source="w1", latency_s=0.01))
    run = task(3, TaskState.RUNNING)
    hook.on_event(
        Assigned(at=100.0, component="scheduler", source="s", task=run, attempt=1, worker="w", queued_at=99.0)
    )
    hook.on_event(BatchAssigned(at=100.0, component="scheduler", source="s", size=1))
    hook.on_event(Promoted(at=1.0, component="scheduler", source="s", task=task(4, TaskState.QUEUED)))
    hook.on_event(LeaderElected(at=1.0, component="scheduler", source="s", token=7))
    m.store_observer().request("txn", 0.001, "other")
    m.store_observer().watch_restarted()

    # Then every metric of the table is there, with its type and exactly its labels
    families = {f.name: f for f in m.registry.collect()}
    for name, (kind, labels) in documented().items():
        family = families.get(name.removesuffix("_total"))
        assert family is not None, f"{name} is documented but not exported"
        assert family.type == kind, name
        samples = [s for s in family.samples if s.name in (name, f"{name}_bucket")]
        assert samples, name
        assert {label for s in samples for label in s.labels if label != "le"} == labels, name
    # and nothing is exported under our prefix that the table does not document
    ours = {n for n in families if n.startswith("tasklease_")}
    assert ours <= {n.removesuffix("_total") for n in documented()}


def test_histogram_buckets_are_cumulative_and_a_bound_is_in_its_own_bucket():
    m = Metrics("worker")
    observer = m.store_observer()
    for seconds in (0.005, 0.0051, 10.0):  # on a bound, just above it, above the last bound
        observer.request("get", seconds, None)
    assert value(m, "tasklease_etcd_request_seconds_bucket", operation="get", le="0.0025") == 0
    assert value(m, "tasklease_etcd_request_seconds_bucket", operation="get", le="0.005") == 1
    assert value(m, "tasklease_etcd_request_seconds_bucket", operation="get", le="0.01") == 2
    assert value(m, "tasklease_etcd_request_seconds_bucket", operation="get", le="5.0") == 2
    assert value(m, "tasklease_etcd_request_seconds_bucket", operation="get", le="+Inf") == 3
    assert value(m, "tasklease_etcd_request_seconds_count", operation="get") == 3
    assert value(m, "tasklease_etcd_request_seconds_sum", operation="get") == pytest.approx(10.0101)


def test_the_text_exposition_parses_back_to_the_same_values():
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics("worker")
    m.store_observer().request("txn", 0.002, "unavailable")
    m.hook().on_event(LeaseRefreshed(at=1.0, component="worker", source="w1", latency_s=0.01))
    text = generate_latest(m.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["tasklease_etcd_errors"].type == "counter"
    assert families["tasklease_etcd_request_seconds"].type == "histogram"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("tasklease_etcd_errors_total", (("kind", "unavailable"),))] == 1
    assert samples[("tasklease_worker_lease_refresh_seconds_count", ())] == 1
