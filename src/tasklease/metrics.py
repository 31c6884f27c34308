"""Prometheus metrics: a hook on the event seam, a store observer, and scrape-time collectors.

One :class:`Metrics` per process holds a ``prometheus_client``
:class:`~prometheus_client.CollectorRegistry` (what ``/metrics`` serves) and
feeds it three ways, nothing sprinkled through the components:

- :meth:`Metrics.hook`: a hook (events.py) that counts and times what the
  components tell (attempts and their outcomes, assignments, queue wait, batch
  sizes, recoveries, leadership changes, lease refreshes);
- :meth:`Metrics.store_observer`: a :class:`~tasklease.store_types.StoreObserver`
  given to ``Store(config, observer=...)``: every etcd request's latency and
  error kind, and watch restarts;
- :meth:`Metrics.track_worker` and :meth:`Metrics.track_scheduler`: gauges read
  from a component when Prometheus scrapes (a worker's running tasks and
  capacity; a scheduler's leadership and, from the LEADER only, the cluster
  gauges read from its mirror, so standbys never double count and nothing is
  read from etcd at scrape time).

The names, types and labels are the contract in docs/observability.md
("Metrics"). Labels are of low cardinality only (queue, type, priority,
outcome, reason, operation, kind, state): never a task id or a worker id.

Cost. The hook is on every component's hot path: it dispatches on the event's
type through one dict, keeps the labelled children it has made (one dict
lookup per label set), and updates plain accumulators on the event loop, no
lock (:class:`CounterFamily` says why and how a scrape reads them safely).
``bench/metrics_bench.py`` measures it (docs/benchmarks.md).

May import: events, keys, models, store_types, version (it reads no component:
the gauges' sources are the small protocols :class:`WorkerGauges` and
:class:`SchedulerGauges`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from itertools import accumulate
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from tasklease.events import (
    Assigned,
    BatchAssigned,
    Event,
    Failed,
    HandedBack,
    Hook,
    LeaderElected,
    LeaderResigned,
    LeaseRefreshed,
    Lost,
    Promoted,
    Rejected,
    Retried,
    Started,
    Succeeded,
    TaskEvent,
    TimedOut,
    WorkerLeaseLost,
    WorkerStopped,
)
from tasklease.keys import MAX_PRIORITY, Keyspace, prefix_end
from tasklease.models import TaskState
from tasklease.store_types import StoreObserver
from tasklease.version import __version__

__all__ = ["Metrics", "SchedulerGauges", "WorkerGauges"]

# Bucket bounds, in seconds unless said otherwise.
EXECUTION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)
END_TO_END_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
QUEUE_WAIT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
)
LEASE_REFRESH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
ETCD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 3, 5, 10, 15, 20, 25, 30)  # tasks (a batch holds at most 30)

# Started attempts whose end this process has not seen yet (a revoked attempt ends
# without an event): at most this many are remembered, the oldest forgotten first.
MAX_STARTED = 100_000

# A worker's attempt end, by event type: the ``outcome`` label.
WORKER_OUTCOMES: dict[type[Event], str] = {
    Succeeded: "succeeded",
    Failed: "failed",
    Retried: "retried",
    TimedOut: "timed_out",
    HandedBack: "handed_back",
    Rejected: "rejected",
}
# A scheduler's repair, by event type: the ``reason`` label of the recoveries.
RECOVERY_REASONS: dict[type[Event], str] = {Lost: "lost", TimedOut: "overdue", Promoted: "promoted"}
FINISHED = (TaskState.SUCCEEDED, TaskState.FAILED)


# what the scrape-time gauges read ---------------------------------------------------------
class _Config(Protocol):
    @property
    def concurrency(self) -> int: ...


class WorkerGauges(Protocol):
    """What :meth:`Metrics.track_worker` reads at scrape time (a ``Worker`` is one)."""

    @property
    def running(self) -> int:
        """Attempts executing now."""

    @property
    def config(self) -> _Config:
        """Its configuration (``concurrency`` is its capacity)."""


class _Flag(Protocol):
    def is_set(self) -> bool: ...


class _NodeView(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def capacity(self) -> int: ...


class _Node(Protocol):
    @property
    def view(self) -> _NodeView: ...
    @property
    def queues(self) -> Collection[str]: ...
    @property
    def draining(self) -> bool: ...


class _Keys(Protocol):
    def __len__(self) -> int: ...
    def bisect_left(self, value: str) -> int: ...


class _Clock(Protocol):
    def monotonic(self) -> float: ...


class ClusterGauges(Protocol):
    """What the cluster gauges read of a leader's mirror (``mirror.ClusterView`` is one)."""

    @property
    def keys(self) -> Keyspace:
        """The namespace."""

    @property
    def clock(self) -> _Clock:
        """Its time source."""

    @property
    def revision(self) -> int:
        """The last revision applied (0 until the take-over read is loaded)."""

    @property
    def queue_keys(self) -> Mapping[tuple[str, str], _Keys]:
        """(queue, route) -> sorted queue keys."""

    @property
    def running(self) -> Mapping[str, object]:
        """The running index."""

    @property
    def delayed(self) -> Mapping[str, object]:
        """The delayed retries."""

    @property
    def nodes(self) -> Mapping[str, _Node]:
        """The workers."""

    @property
    def assigned(self) -> Mapping[str, Collection[str]]:
        """Worker -> the task ids assigned to it."""

    def live_nodes(self) -> Sequence[_Node]:
        """Workers that take work (not draining, heartbeating)."""

    def stale(self, node: Any, mono: float) -> bool:
        """Whether ``node`` stopped heartbeating."""


class SchedulerGauges(Protocol):
    """What :meth:`Metrics.track_scheduler` reads at scrape time (a ``Scheduler`` is one)."""

    @property
    def leading(self) -> _Flag:
        """Set while it leads."""

    @property
    def view(self) -> ClusterGauges:
        """Its mirror (only the leader's is read)."""


# the metrics ----------------------------------------------------------------------------
class Metrics:
    """One per process; holds a ``prometheus_client.CollectorRegistry`` (what ``/metrics`` serves).

    The counters and histograms fed by the hook and the store observer are
    plain accumulators updated on the event loop (see :class:`CounterFamily`),
    exposed through ``prometheus_client`` metric families when scraped.

    Args:
        component: What the process is (``worker``, ``scheduler``, ``dev``...):
            the ``component`` label of ``tasklease_build_info``.
        registry: Where to register (default: a new registry of its own).
    """

    def __init__(self, component: str, *, registry: CollectorRegistry | None = None) -> None:
        self.component = component
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # worker
        self.worker_attempts = CounterFamily(
            r, "tasklease_worker_attempts", "Attempts this worker ended, by how", ("queue", "type", "outcome")
        )
        self.worker_execution = HistogramFamily(
            r,
            "tasklease_worker_execution_seconds",
            "Time from an attempt's start to its end on this worker",
            ("type",),
            EXECUTION_BUCKETS,
        )
        self.lease_refresh = HistogramFamily(
            r, "tasklease_worker_lease_refresh_seconds", "Lease keep-alive latency", (), LEASE_REFRESH_BUCKETS
        ).labels()
        self.leases_lost = CounterFamily(
            r, "tasklease_worker_leases_lost", "Leases that ended under this worker", ()
        ).labels()
        self.handed_back = CounterFamily(
            r, "tasklease_worker_handed_back", "Tasks handed back (a type it does not run)", ("queue", "type")
        )
        self.end_to_end = HistogramFamily(
            r,
            "tasklease_task_end_to_end_seconds",
            "Created to finished, observed where the task finished",
            ("queue", "type", "state"),
            END_TO_END_BUCKETS,
        )
        # scheduler
        self.leader_changes = CounterFamily(
            r,
            "tasklease_scheduler_leader_changes",
            "Times this scheduler became leader or stopped leading",
            (),
        ).labels()
        self.assignments = CounterFamily(r, "tasklease_scheduler_assignments", "Tasks assigned", ("queue",))
        self.batch_size = HistogramFamily(
            r, "tasklease_scheduler_batch_size", "Tasks per assignment transaction", (), BATCH_BUCKETS
        ).labels()
        self.queue_wait = HistogramFamily(
            r,
            "tasklease_scheduler_queue_wait_seconds",
            "Time in the queue before assignment (submit or requeue to assignment)",
            ("queue", "priority"),
            QUEUE_WAIT_BUCKETS,
        )
        self.recoveries = CounterFamily(
            r, "tasklease_scheduler_recoveries", "Repairs: lost, overdue, promoted", ("reason",)
        )
        # every process
        self.etcd_requests = HistogramFamily(
            r, "tasklease_etcd_request_seconds", "etcd request latency", ("operation",), ETCD_BUCKETS
        )
        self.etcd_errors = CounterFamily(r, "tasklease_etcd_errors", "etcd errors", ("kind",))
        self.watch_restarts = CounterFamily(
            r, "tasklease_watch_restarts", "Watches started over", ()
        ).labels()
        self.build_info = Gauge(
            "tasklease_build_info", "1, labelled with the version", ["version", "component"], registry=r
        )
        self.build_info.labels(__version__, component).set(1)
        # scrape-time gauges
        self._workers = _WorkerCollector()
        self._schedulers = _SchedulerCollector()
        r.register(self._workers)
        r.register(self._schedulers)
        self._hook = MetricsHook(self)
        self._observer = _StoreMetrics(self)

    def hook(self) -> Hook:
        """The hook to add to a component: ``hooks=[*default_hooks(), metrics.hook()]``.

        The same hook may be given to several components of the process (on
        its one event loop).
        """
        return self._hook

    def store_observer(self) -> StoreObserver:
        """The observer to give a store: ``Store(config, observer=metrics.store_observer())``."""
        return self._observer

    def track_worker(self, worker: WorkerGauges) -> None:
        """Export ``worker``'s running tasks and capacity (summed over the tracked workers)."""
        self._workers.workers.append(worker)

    def track_scheduler(self, scheduler: SchedulerGauges) -> None:
        """Export whether ``scheduler`` leads and, while it does, the cluster gauges from its mirror."""
        self._schedulers.schedulers.append(scheduler)


# accumulators -------------------------------------------------------------------------------
class CounterChild:
    """One labelled counter: a float, incremented on the event loop."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0)."""
        self.value += amount


class HistogramChild:
    """One labelled histogram: a count per bucket (not cumulative) and the sum, on the event loop."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        """Count ``amount`` in the first bucket whose bound is >= it (``le``), and in the sum."""
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class CounterFamily:
    """A counter family: its children by label values; a ``prometheus_client`` collector.

    Why not ``prometheus_client.Counter``: its ``inc`` and ``Histogram.observe``
    take a lock per value (two and more per observation) and check their state
    each time, some microseconds per call; these are bare attribute updates
    (~0.2 µs), which matters on a path taken several times per task. They are
    updated only on the event loop that runs the components (one thread); a
    scrape (on that loop or on another thread) copies a family's children and a
    histogram's counts before reading them, each copy atomic under the GIL, so
    it never sees a half-made child (at worst an observation's count without
    its sum, which the next scrape corrects).

    Args:
        registry: Where it is registered.
        name: Its name without ``_total``.
        documentation: Its help text.
        labelnames: Its labels.
    """

    kind = "counter"

    def __init__(
        self, registry: CollectorRegistry, name: str, documentation: str, labelnames: tuple[str, ...]
    ):
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.children: dict[tuple[str, ...], Any] = {}  # added on the event loop, copied by scrapes
        if not labelnames:
            self.labels()  # an unlabelled metric exists (at 0) from the start
        registry.register(self)

    def _child(self) -> Any:
        return CounterChild()

    def labels(self, *values: str) -> Any:
        """The child of these label values (made on first use; keep it: this is a dict lookup)."""
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} has labels {self.labelnames}, got {values}")
            child = self.children[values] = self._child()
        return child

    def describe(self) -> Iterable[Metric]:
        """The family, without samples (the registry checks names with it)."""
        return [Metric(self.name, self.documentation, self.kind)]

    def collect(self) -> Iterable[Metric]:
        """The family with a sample per child."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            family.add_metric(values, child.value)
        return [family]


class HistogramFamily(CounterFamily):
    """A histogram family (see :class:`CounterFamily`): bucket bounds in the metric's unit.

    Args:
        registry: Where it is registered.
        name: Its name.
        documentation: Its help text.
        labelnames: Its labels (never ``le``).
        bounds: The buckets' upper bounds, ascending (``+Inf`` is added).
    """

    kind = "histogram"

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        bounds: tuple[float, ...],
    ) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        # as prometheus_client writes them (repr of the float: 0.005, 1.0, 86400.0)
        self._le = [repr(b) for b in self.bounds] + ["+Inf"]
        super().__init__(registry, name, documentation, labelnames)

    def _child(self) -> Any:
        return HistogramChild(self.bounds)

    def collect(self) -> Iterable[Metric]:
        """The family with the cumulative buckets, count and sum of each child."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            counts, total = list(child.counts), child.sum
            family.add_metric(values, list(zip(self._le, accumulate(counts), strict=True)), total)
        return [family]


class MetricsHook:
    """The event hook of a :class:`Metrics` (see :meth:`Metrics.hook`).

    Touched only by the event loop of the components it is given to (one per
    process in practice): its caches need no lock.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        # Labelled children made so far, by label values (labels() takes a lock and builds a key).
        self._attempts: dict[tuple[str, str, str], Any] = {}
        self._execution: dict[str, Any] = {}
        self._handed_back: dict[tuple[str, str], Any] = {}
        self._end_to_end: dict[tuple[str, str, str], Any] = {}
        self._assignments: dict[str, Any] = {}
        self._queue_wait: dict[tuple[str, int], Any] = {}
        self._recoveries = {reason: metrics.recoveries.labels(reason) for reason in RECOVERY_REASONS.values()}
        # (source, task id, attempt) -> when it started: attempts started and not yet ended here
        self._started: dict[tuple[str, str, int], float] = {}
        self._dispatch: dict[type[Event], Callable[[Any], None]] = {
            Started: self._on_started,
            Assigned: self._on_assigned,
            BatchAssigned: self._on_batch,
            Lost: self._on_lost,
            Promoted: self._on_promoted,
            LeaseRefreshed: self._on_refreshed,
            WorkerLeaseLost: self._on_lease_lost,
            WorkerStopped: self._on_worker_stopped,
            LeaderElected: self._on_leader_change,
            LeaderResigned: self._on_leader_change,
        }
        for kind in WORKER_OUTCOMES:
            self._dispatch[kind] = self._on_ended
        self._dispatch[TimedOut] = self._on_timed_out
        self._dispatch[Failed] = self._on_failed

    def on_event(self, event: Event) -> None:
        """Count or time ``event`` (events this hook does not measure cost one dict lookup)."""
        handler = self._dispatch.get(type(event))
        if handler is not None:
            handler(event)

    # worker --------------------------------------------------------------------------------
    def _on_started(self, event: Started) -> None:
        task = event.task
        if (task.queue, task.type, "succeeded") not in self._attempts:
            # First attempt of this queue and type here: every outcome's series starts
            # at 0, so rate() sees the first failure too (a series born at its first
            # increment hides that increment from rate() and increase()).
            for outcome in WORKER_OUTCOMES.values():
                key = (task.queue, task.type, outcome)
                if key not in self._attempts:
                    self._attempts[key] = self.m.worker_attempts.labels(*key)
        started = self._started
        if len(started) >= MAX_STARTED:
            del started[next(iter(started))]  # the oldest: its end was never seen
        started[(event.source, event.task.id, event.attempt or 0)] = event.at

    def _on_ended(self, event: TaskEvent) -> None:
        if event.component != "worker":
            return
        task = event.task
        outcome = WORKER_OUTCOMES[type(event)]
        key = (task.queue, task.type, outcome)
        child = self._attempts.get(key)
        if child is None:
            child = self._attempts[key] = self.m.worker_attempts.labels(*key)
        child.inc()
        started = self._started.pop((event.source, task.id, event.attempt or 0), None)
        if started is not None:
            # The attempt's end as the worker recorded it (before its write), else the event's time.
            last = task.attempts[-1] if task.attempts else None
            ended = last.finished_at if last is not None and last.finished_at is not None else event.at
            execution = self._execution.get(task.type)
            if execution is None:
                execution = self._execution[task.type] = self.m.worker_execution.labels(task.type)
            execution.observe(max(0.0, ended - started))
        if outcome == "handed_back":
            back_key = (task.queue, task.type)
            back = self._handed_back.get(back_key)
            if back is None:
                back = self._handed_back[back_key] = self.m.handed_back.labels(*back_key)
            back.inc()
        elif outcome != "rejected" and task.state in FINISHED:
            self._finished(event)

    def _finished(self, event: TaskEvent) -> None:
        """A task reached a final state here: observe its end-to-end latency."""
        task = event.task
        key = (task.queue, task.type, task.state.value)
        child = self._end_to_end.get(key)
        if child is None:
            child = self._end_to_end[key] = self.m.end_to_end.labels(*key)
        child.observe(max(0.0, task.updated_at - task.created_at))

    def _on_refreshed(self, event: LeaseRefreshed) -> None:
        self.m.lease_refresh.observe(event.latency_s)

    def _on_lease_lost(self, event: WorkerLeaseLost) -> None:
        self.m.leases_lost.inc()
        self._forget_started(event.source)

    def _on_worker_stopped(self, event: WorkerStopped) -> None:
        self._forget_started(event.source)

    def _forget_started(self, source: str) -> None:
        """Its attempts were stopped without an end event (lease lost, worker stopped)."""
        for key in [k for k in self._started if k[0] == source]:
            del self._started[key]

    # scheduler -----------------------------------------------------------------------------
    def _on_assigned(self, event: Assigned) -> None:
        task = event.task
        queue = task.queue
        child = self._assignments.get(queue)
        if child is None:
            child = self._assignments[queue] = self.m.assignments.labels(queue)
        child.inc()
        if event.queued_at is not None:
            key = (queue, task.priority)
            wait = self._queue_wait.get(key)
            if wait is None:
                wait = self._queue_wait[key] = self.m.queue_wait.labels(queue, str(task.priority))
            wait.observe(max(0.0, event.at - event.queued_at))

    def _on_batch(self, event: BatchAssigned) -> None:
        self.m.batch_size.observe(event.size)

    def _on_lost(self, event: Lost) -> None:
        self._recoveries["lost"].inc()
        if event.task.state in FINISHED:
            self._finished(event)

    def _on_timed_out(self, event: TimedOut) -> None:
        if event.component == "worker":
            self._on_ended(event)
            return
        self._recoveries["overdue"].inc()
        if event.task.state in FINISHED:
            self._finished(event)

    def _on_failed(self, event: Failed) -> None:
        if event.component == "worker":
            self._on_ended(event)
        elif event.task.state in FINISHED:  # the scheduler failed a task no transaction can carry
            self._finished(event)

    def _on_promoted(self, event: Promoted) -> None:
        self._recoveries["promoted"].inc()

    def _on_leader_change(self, event: Event) -> None:
        self.m.leader_changes.inc()


class _StoreMetrics:
    """The :class:`~tasklease.store_types.StoreObserver` of a :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self._requests: dict[str, Any] = {}
        self._errors: dict[str, Any] = {}

    def request(self, operation: str, seconds: float, error_kind: str | None) -> None:
        """One etcd request ended (see ``StoreObserver.request``)."""
        child = self._requests.get(operation)
        if child is None:
            child = self._requests[operation] = self.m.etcd_requests.labels(operation)
        child.observe(seconds)
        if error_kind is not None:
            errors = self._errors.get(error_kind)
            if errors is None:
                errors = self._errors[error_kind] = self.m.etcd_errors.labels(error_kind)
            errors.inc()

    def watch_restarted(self) -> None:
        """A watch started over."""
        self.m.watch_restarts.inc()


# scrape-time collectors -------------------------------------------------------------------
class _WorkerCollector:
    """``tasklease_worker_running_tasks`` and ``tasklease_worker_capacity``, read at scrape time."""

    def __init__(self) -> None:
        self.workers: list[WorkerGauges] = []  # appended by track_worker, read by scrapes

    def describe(self) -> Iterable[Metric]:
        return self._families(0, 0)

    def collect(self) -> Iterable[Metric]:
        workers = list(self.workers)
        if not workers:
            return []
        running = sum(w.running for w in workers)
        capacity = sum(w.config.concurrency for w in workers)
        return self._families(running, capacity)

    @staticmethod
    def _families(running: int, capacity: int) -> list[Metric]:
        return [
            GaugeMetricFamily("tasklease_worker_running_tasks", "Attempts executing now", value=running),
            GaugeMetricFamily("tasklease_worker_capacity", "The worker's concurrency", value=capacity),
        ]


class _SchedulerCollector:
    """``tasklease_scheduler_is_leader`` and, from the leader's mirror only, the cluster gauges."""

    def __init__(self) -> None:
        self.schedulers: list[SchedulerGauges] = []  # appended by track_scheduler, read by scrapes
        # queues this process has seen while leading: their depth is exported (0 when empty),
        # so a series does not vanish when a queue drains (bounded by the number of queues)
        self.known_queues: set[str] = set()

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("tasklease_scheduler_is_leader", "1 while this scheduler leads")
        yield from _cluster_families()

    def collect(self) -> Iterable[Metric]:
        schedulers = list(self.schedulers)
        if not schedulers:
            return
        leader = next((s for s in schedulers if s.leading.is_set()), None)
        yield GaugeMetricFamily(
            "tasklease_scheduler_is_leader", "1 while this scheduler leads", value=int(leader is not None)
        )
        if leader is None:
            return  # a standby exports no cluster gauge (no double counting)
        view = leader.view
        if view.revision == 0:
            return  # still loading its take-over read: nothing true to say yet
        yield from self._cluster(view)

    def _cluster(self, view: ClusterGauges) -> Iterator[Metric]:
        depth, running, delayed, workers, free = _cluster_families()
        keys = view.keys
        counts: dict[tuple[str, int], int] = {}
        for (queue, _route), queued in view.queue_keys.items():
            self.known_queues.add(queue)
            if not len(queued):
                continue
            for priority in range(MAX_PRIORITY + 1):
                band = keys.queue_band(queue, priority)
                # the group's keys are sorted, band first: two bisections count a band
                n = queued.bisect_left(prefix_end(band)) - queued.bisect_left(band)
                if n:
                    counts[(queue, priority)] = counts.get((queue, priority), 0) + n
        nodes = list(view.nodes.values())
        for node in nodes:
            self.known_queues.update(node.queues)
        for queue in sorted(self.known_queues):
            for priority in range(MAX_PRIORITY + 1):
                depth.add_metric([queue, str(priority)], counts.get((queue, priority), 0))
        yield depth
        running.add_metric([], len(view.running))
        yield running
        delayed.add_metric([], len(view.delayed))
        yield delayed
        live = view.live_nodes()
        mono = view.clock.monotonic()
        draining = sum(1 for n in nodes if n.draining and not view.stale(n, mono))
        workers.add_metric(["live"], len(live))
        workers.add_metric(["draining"], draining)
        yield workers
        assigned = view.assigned
        free.add_metric([], sum(max(0, n.view.capacity - len(assigned.get(n.view.id, ()))) for n in live))
        yield free


def _cluster_families() -> tuple[GaugeMetricFamily, ...]:
    """The leader-only gauges, empty (``_SchedulerCollector`` fills them)."""
    return (
        GaugeMetricFamily(
            "tasklease_queue_depth", "Queued tasks (from the leader's mirror)", labels=["queue", "priority"]
        ),
        GaugeMetricFamily("tasklease_running_tasks", "Running tasks (running index)", labels=[]),
        GaugeMetricFamily("tasklease_delayed_tasks", "Pending tasks waiting for their delay", labels=[]),
        GaugeMetricFamily(
            "tasklease_workers", "Live workers: live (taking work), draining", labels=["state"]
        ),
        GaugeMetricFamily("tasklease_free_capacity", "Free slots over live, non-draining workers", labels=[]),
    )
