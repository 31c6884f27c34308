"""OpenTelemetry traces of tasks: one trace shows a submit, its queue waits and its attempts.

Optional: ``pip install 'tasklease[otel]'`` (opentelemetry-api and -sdk). Nothing in
tasklease imports this module; without a :class:`TracingHook` no tracing code runs and
no record carries a trace. Add the hook to the ``hooks=`` of the ``Client`` that
submits and of the ``Worker`` that runs (and, optionally, of the ``Scheduler``)::

    hooks = [*default_hooks(), TracingHook()]
    client = Client(store, keys, hooks=hooks)

One task's trace (span names; the type is the task type)::

    submit {type}       client, PRODUCER: the caller's current span is its parent
    ├── queued {type}   worker, INTERNAL: queued -> assigned, before each attempt
    ├── run {type}      worker, CONSUMER: attempt 1, Started -> how it ended
    ├── queued {type}
    ├── run {type}      attempt 2 (a retry)
    └── run {type}      scheduler: an attempt it found lost or overdue

How it is linked. The hook is a :class:`tasklease.events.TraceCarrier`: as a client
builds a new record, it starts the submit span (parent: the current context, or the
context the submit gave in ``TaskSpec.trace``) and returns that span's context,
injected by the propagator (W3C ``traceparent`` by default); the client stores it in
the record's ``trace`` field. The scheduler copies the record as is, so a worker's
:class:`~tasklease.events.Started` carries it: the worker's hook extracts it and opens
the attempt's span under it. The submit span ends at
:class:`~tasklease.events.Submitted` (or with an error when the submit raised).

Spans and attributes (never the payload, the result or the worker's environment):

- ``submit``, ``run``: ``tasklease.task_id``, ``tasklease.type``, ``tasklease.queue``,
  ``tasklease.priority``;
- ``queued``, ``run``: ``tasklease.attempt``; ``run`` also ``tasklease.worker``,
  ``tasklease.outcome`` (``succeeded``, ``failed``, ``retried``, ``timed_out``,
  ``handed_back``, ``rejected``, ``lost``, or ``unknown`` when no end was seen) and
  ``tasklease.state`` (the task's state after the attempt).
- Status ERROR for ``failed``, ``retried``, ``timed_out``, ``lost`` and ``unknown``,
  with the task's error (first line, 200 characters) as its description unless
  ``record_errors=False`` (error texts come from task code: they may quote its input).

Times are the components' clocks (the events' ``at``): a ``queued`` span runs from
the task's creation (attempt 1) or the previous attempt's end (a retry, its backoff
included) to the assignment, as recorded in the task record.

Open spans are bounded. An attempt the worker stopped without an end event (its
assignment was revoked: the task was cancelled or reassigned) is ended as ``unknown``
once its timeout plus ``grace_s`` has passed (checked at most once a minute, on the
worker's next event), or when its worker loses its lease or stops. At most
``max_open`` submit spans and attempt spans are open at once (the oldest is ended
first). A malformed ``trace`` in a record is dropped when it is decoded
(``models.bound_trace``), and a ``traceparent`` the propagator rejects starts a new
trace: record content never breaks the hook.

Cost. Without the hook: nothing (a submit checks one empty tuple). With it: a span
start and end per submit and per attempt, one more per attempt for ``queued``, and
about 60 bytes per record (docs/observability.md, "Traces", gives the measured times).

May import: events, models, version (and opentelemetry). Nothing imports it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from tasklease.events import (
    AttemptEnded,
    Event,
    Failed,
    HandedBack,
    Lost,
    Rejected,
    Retried,
    Started,
    Submitted,
    Succeeded,
    TimedOut,
    WorkerLeaseLost,
    WorkerStopped,
)
from tasklease.models import Task
from tasklease.version import __version__

# The outcome attribute of an attempt's span, by its end event (as the metrics' labels).
OUTCOMES: dict[type[AttemptEnded], str] = {
    Succeeded: "succeeded",
    Failed: "failed",
    Retried: "retried",
    TimedOut: "timed_out",
    HandedBack: "handed_back",
    Rejected: "rejected",
    Lost: "lost",
}
ERROR_OUTCOMES = frozenset({"failed", "retried", "timed_out", "lost", "unknown"})
MAX_DESCRIPTION = 200
SWEEP_EVERY_S = 60.0


def _ns(at: float) -> int:
    """Epoch seconds as the nanoseconds OpenTelemetry takes."""
    return int(at * 1e9)


@dataclass(slots=True)
class _Run:
    """An attempt's open span and when it should have ended."""

    span: Span
    deadline: float


_RunKey = tuple[str, str, int]
"""(worker id, task id, attempt number)."""


class TracingHook:
    """Spans for submits and attempts, linked through trace context in the task record.

    A hook (events.py) and a trace carrier (``events.TraceCarrier``). One instance
    may serve several components of one process. Called on the event loop only:
    its tables are touched by nothing else.

    Args:
        tracer_provider: Where spans go (default: OpenTelemetry's global provider).
        propagator: How context is written into and read from records (default:
            the global propagator, W3C trace context and baggage unless configured).
        record_errors: Put the task's error text in the status of a failed attempt.
        wait_spans: Make a ``queued`` span before each attempt (a third of the
            spans of a task that runs once: leave them out to save that).
        grace_s: How long past its timeout an attempt without an end event stays open.
        max_open: At most this many submit spans, and this many attempt spans, open.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        propagator: TextMapPropagator | None = None,
        record_errors: bool = True,
        wait_spans: bool = True,
        grace_s: float = 60.0,
        max_open: int = 10_000,
    ) -> None:
        self._tracer: Tracer = trace.get_tracer("tasklease", __version__, tracer_provider=tracer_provider)
        self._propagator = propagator
        self.record_errors = record_errors
        self.wait_spans = wait_spans
        self.grace_s = grace_s
        self.max_open = max_open
        # Submit spans by task id, oldest first (until Submitted or submit_failed).
        self._submits: OrderedDict[str, Span] = OrderedDict()
        # Attempt spans by (worker id, task id, attempt), oldest first (until the attempt's end).
        self._runs: OrderedDict[_RunKey, _Run] = OrderedDict()
        self._next_sweep = 0.0

    # the carrier (client) -----------------------------------------------------------------
    def trace_context(self, task: Task) -> Mapping[str, str] | None:
        """Start the submit span of ``task``; its context, to carry in the record."""
        parent = self._extract(task) if task.trace else None
        span = self._tracer.start_span(
            f"submit {task.type}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=_task_attributes(task),
            start_time=_ns(task.created_at),
        )
        if len(self._submits) >= self.max_open:
            _, oldest = self._submits.popitem(last=False)
            _end(oldest, None, StatusCode.ERROR, "too many open submit spans")
        self._submits[task.id] = span
        carrier: dict[str, str] = {}
        self._textmap.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def submit_failed(self, task_ids: Sequence[str], error: BaseException) -> None:
        """End the submit spans of ``task_ids`` still open (not stored), with the error."""
        for task_id in task_ids:
            span = self._submits.pop(task_id, None)
            if span is not None:
                span.record_exception(error)
                _end(span, None, StatusCode.ERROR, f"submit failed: {type(error).__name__}")

    # events -------------------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        """Open or end the span ``event`` concerns (others are ignored)."""
        if event.component == "client":
            if isinstance(event, Submitted):
                span = self._submits.pop(event.task.id, None)
                if span is not None:
                    span.end(end_time=_ns(event.at))
        elif event.component == "worker":
            self._on_worker_event(event)
        elif event.component == "scheduler" and isinstance(event, Lost | TimedOut):
            self._repaired(event)

    def _on_worker_event(self, event: Event) -> None:
        if isinstance(event, Started):
            self._started(event)
        elif isinstance(event, AttemptEnded) and event.attempt is not None:
            run = self._runs.pop((event.source, event.task.id, event.attempt), None)
            if run is not None:
                self._ended(run.span, event)
        elif isinstance(event, WorkerLeaseLost | WorkerStopped):
            why = "lease lost" if isinstance(event, WorkerLeaseLost) else "worker stopped"
            self._end_runs(event.at, f"no end event: {why}", lambda key, _run: key[0] == event.source)
        if event.at >= self._next_sweep:
            self._next_sweep = event.at + SWEEP_EVERY_S
            self._end_runs(
                event.at, "no end event: the assignment was revoked", lambda _k, r: r.deadline <= event.at
            )

    def _started(self, event: Started) -> None:
        task, number = event.task, event.attempt or 0
        parent = self._extract(task) if task.trace else None
        attempt = task.current_attempt
        if self.wait_spans and parent is not None and attempt is not None and attempt.number == number:
            queued_at = _queued_at(task)
            if queued_at is not None:
                wait = self._tracer.start_span(
                    f"queued {task.type}",
                    context=parent,
                    attributes={"tasklease.attempt": number},  # the rest is on its siblings
                    start_time=_ns(queued_at),
                )
                wait.end(end_time=_ns(max(queued_at, attempt.started_at)))
        span = self._tracer.start_span(
            f"run {task.type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **_task_attributes(task),
                "tasklease.attempt": number,
                "tasklease.worker": event.worker or event.source,
            },
            start_time=_ns(event.at),
        )
        if len(self._runs) >= self.max_open:
            _, oldest = self._runs.popitem(last=False)
            _end(oldest.span, None, StatusCode.ERROR, "too many open attempt spans", "unknown")
        self._runs[(event.source, task.id, number)] = _Run(span, event.at + task.timeout_s + self.grace_s)

    def _ended(self, span: Span, event: AttemptEnded) -> None:
        outcome = OUTCOMES.get(type(event), "unknown")
        span.set_attribute("tasklease.state", event.task.state.value)
        if outcome in ERROR_OUTCOMES:
            _end(span, event.at, StatusCode.ERROR, self._description(event.task, outcome), outcome)
        else:
            _end(span, event.at, StatusCode.UNSET, None, outcome)

    def _repaired(self, event: AttemptEnded) -> None:
        """The scheduler ended an attempt (lost, overdue): a span for it, from its assignment."""
        task = event.task
        started = next((a.started_at for a in task.attempts if a.number == event.attempt), event.at)
        span = self._tracer.start_span(
            f"run {task.type}",
            context=self._extract(task) if task.trace else None,
            kind=SpanKind.CONSUMER,
            attributes={
                **_task_attributes(task),
                "tasklease.attempt": event.attempt or 0,
                "tasklease.worker": event.worker or "",
                "tasklease.reported_by": "scheduler",
            },
            start_time=_ns(min(started, event.at)),
        )
        self._ended(span, event)

    def _end_runs(self, at: float, why: str, which: Callable[[_RunKey, _Run], bool]) -> None:
        for key, run in [(k, r) for k, r in self._runs.items() if which(k, r)]:
            del self._runs[key]
            _end(run.span, at, StatusCode.ERROR, why, "unknown")

    # helpers ------------------------------------------------------------------------------
    @property
    def _textmap(self) -> TextMapPropagator:
        # The global propagator is looked up each time: it may be set after the hook is built.
        return self._propagator if self._propagator is not None else get_global_textmap()

    def _extract(self, task: Task) -> Context | None:
        """The context carried in ``task``'s record; None if it holds no valid span context."""
        context = self._textmap.extract(dict(task.trace))
        return context if trace.get_current_span(context).get_span_context().is_valid else None

    def _description(self, task: Task, outcome: str) -> str:
        if not self.record_errors or not task.error:
            return outcome
        first_line = task.error.split("\n", 1)[0]
        return f"{outcome}: {first_line[:MAX_DESCRIPTION]}"

    @property
    def open_spans(self) -> int:
        """Submit and attempt spans open now (tests, debugging)."""
        return len(self._submits) + len(self._runs)


def _task_attributes(task: Task) -> dict[str, str | int]:
    return {
        "tasklease.task_id": task.id,
        "tasklease.type": task.type,
        "tasklease.queue": task.queue,
        "tasklease.priority": task.priority,
    }


def _queued_at(task: Task) -> float | None:
    """When the current attempt's wait began: creation, or the previous attempt's end."""
    attempts = task.attempts
    if attempts[-1].number == 1:
        return task.created_at
    if len(attempts) >= 2:
        return attempts[-2].finished_at
    return None


def _end(span: Span, at: float | None, code: StatusCode, description: str | None, outcome: str = "") -> None:
    if outcome:
        span.set_attribute("tasklease.outcome", outcome)
    if code is not StatusCode.UNSET:
        span.set_status(Status(code, description))
    span.end(end_time=None if at is None else _ns(at))
