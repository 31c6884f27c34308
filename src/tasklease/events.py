"""The event seam: what happens to tasks and processes, as typed events, and the hooks that see them.

Every component (``Client``, ``Worker``, ``Scheduler``) emits an event once a
change it made is durable in etcd (or, for process events, once it happened),
and hands it to its :class:`Hooks`. Logging of task and process life is one
hook (:class:`LoggingHook`); metrics, the dashboard's live feed and tests
(:class:`RecordingHook`) are others. Nothing patches the components.

**Order.** A component calls its hooks in the order of its list, one event at
a time, in the order the events happened in that component. Across components
there is no order (each has its own clock and process). One task's events
come in this order, each from the component that made the change:

1. :class:`Submitted` (client), then for each attempt:
2. :class:`Assigned` (scheduler), :class:`Started` (worker),
3. how the attempt ended (:class:`AttemptEnded`, :func:`attempt_ended` picks
   the type), exactly one of: :class:`Succeeded`, :class:`Failed` (the task
   failed for good), :class:`Retried` (it failed and will run again),
   :class:`TimedOut` (``task.state`` says whether it runs again),
   :class:`HandedBack` (a type the worker does not run), :class:`Rejected`
   (its outcome was fenced off: the task had been cancelled or reassigned) —
   from the worker; :class:`TimedOut`, :class:`Lost` from the scheduler's
   repairs; :class:`Cancelled` from a client.

A pending task's return to its queue is :class:`Promoted` (scheduler); a
waiting task that no transaction can carry ends with :class:`Failed` from the
scheduler.

**Contract for hooks.** ``on_event`` runs on the component's event loop: it
must not block (hand slow work to a queue or a thread) and must not raise.
If it raises anyway, the error is logged once per hook and event type and the
component goes on: a hook never breaks the component that calls it.

**Defaults.** :func:`default_hooks` is the explicit default list (logging
only). Components take ``hooks=`` as the whole list: pass
``[*default_hooks(), mine]`` to keep logging and add yours.

**Carrying trace context (optional).** A hook given to a ``Client`` may also
have the methods of :class:`TraceCarrier` (looked up once, when the
:class:`Hooks` are built): ``trace_context(task)`` is called as each new
task's record is built, in the submitting caller's context (so a tracer sees
the caller's current span), and what it returns is carried in the record's
``trace`` field, bounded by ``models.bound_trace``; the scheduler copies the
record as is, so each attempt's :class:`Started` has it. Then exactly one of
:class:`Submitted` or ``submit_failed(task_ids, error)`` follows for each such
task. Without such a hook (the default) nothing is called and no record gets
a ``trace``. The same rules hold: never block, never raise (an error is logged
once and the record carries nothing from that hook). ``tracing.TracingHook``
is the OpenTelemetry one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from tasklease.models import Outcome, Task, TaskState, TraceContext, bound_trace

log = logging.getLogger("tasklease.events")


# events -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something that happened, as seen by one component.

    Attributes:
        at: When, in epoch seconds on the emitting component's clock.
        component: ``"client"``, ``"worker"`` or ``"scheduler"``.
        source: The emitting process's id (worker or scheduler id; ``""`` for a client).
    """

    at: float
    component: str
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskEvent(Event):
    """A change of one task, durable in etcd when emitted.

    Attributes:
        task: The record as written by the change (its state is the new state).
        attempt: The attempt concerned (None before the first assignment).
        worker: The worker of that attempt, if any.
    """

    task: Task
    attempt: int | None = None
    worker: str | None = None

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self.task.id


@dataclass(frozen=True, slots=True, kw_only=True)
class Submitted(TaskEvent):
    """A task was written to its queue (client)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Assigned(TaskEvent):
    """A queued task was given to a worker (scheduler); ``task`` is the running record.

    The leader assigns from the queue keys, which hold the record without its
    payload: here ``task.payload`` is None and ``task.payload_omitted`` True
    (the worker's ``Started`` carries the whole record).

    Attributes:
        queued_at: When it entered its queue this time (the queued record's
            ``updated_at``): ``at - queued_at`` is its queue wait. None if unknown.
    """

    queued_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchAssigned(Event):
    """One assignment transaction landed (scheduler), after the ``Assigned`` of its tasks.

    Attributes:
        size: How many tasks it assigned.
    """

    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Started(TaskEvent):
    """A worker began running an attempt (worker; nothing is written for it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptEnded(TaskEvent):
    """Base of the events that end an attempt.

    Attributes:
        outcome: How the attempt ended (``None`` for a task that never ran).
    """

    outcome: Outcome | None = None

    @property
    def error(self) -> str | None:
        """The task's error as recorded (untrusted text from task code)."""
        return self.task.error


@dataclass(frozen=True, slots=True, kw_only=True)
class Succeeded(AttemptEnded):
    """The attempt succeeded; the result is recorded (worker)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed(AttemptEnded):
    """The task failed for good (worker, or scheduler for a task no transaction can carry)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Retried(AttemptEnded):
    """The attempt failed and the task will run again: queued, or pending until ``task.not_before``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TimedOut(AttemptEnded):
    """The attempt ran past its timeout (worker) or its deadline without a report (scheduler).

    ``task.state`` says what next (queued or pending again, or failed).
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class Lost(AttemptEnded):
    """The attempt's worker vanished or stopped heartbeating (scheduler); ``task.state`` says what next."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancelled(AttemptEnded):
    """The task was cancelled (client)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandedBack(AttemptEnded):
    """A worker gave the task back to its queue, keeping its place (a type it does not run)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected(AttemptEnded):
    """A worker's outcome was fenced off: the assignment was revoked (cancelled or reassigned).

    Nothing was written; ``task`` is the record the worker tried to write.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class Promoted(TaskEvent):
    """A pending task whose delay passed went back to its queue (scheduler)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reprioritised(TaskEvent):
    """A waiting task's priority changed (client)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRegistered(Event):
    """A worker's node record and lease exist; it takes assignments (worker).

    Attributes:
        lease: Its lease id.
    """

    lease: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRefreshed(Event):
    """A worker's lease keep-alive was answered (worker, every heartbeat).

    Attributes:
        latency_s: How long the keep-alive took.
    """

    latency_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerDraining(Event):
    """A worker stopped taking assignments and finishes what it runs (worker)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLeaseLost(Event):
    """A worker's lease ended under it: it stops everything and writes nothing more (worker)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStopped(Event):
    """A worker stopped (worker)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderElected(Event):
    """This scheduler leads (scheduler).

    Attributes:
        token: The fencing token (the leader key's create revision).
    """

    token: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderResigned(Event):
    """This scheduler no longer leads (scheduler).

    Attributes:
        reason: Why (stopped, deposed, lease lost, error).
    """

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryRan(Event):
    """The leader repaired tasks (scheduler).

    Attributes:
        kind: ``"lost"``, ``"overdue"`` or ``"promoted"``.
        count: How many it repaired.
    """

    kind: str
    count: int


# hooks ------------------------------------------------------------------------------------
class Hook(Protocol):
    """Receives events. See the module docstring for the contract (non-blocking, never raises)."""

    def on_event(self, event: Event) -> None:
        """Handle one event."""


@runtime_checkable
class TraceCarrier(Protocol):
    """The optional methods of a hook that carries trace context in new records (module docstring)."""

    def trace_context(self, task: Task) -> Mapping[str, str] | None:
        """What to carry in the record of ``task``, as a propagator's carrier (None: nothing).

        ``task`` is the new record being built by a submit; its ``trace`` is the
        submit's own (``TaskSpec.trace``), if it gave one.
        """

    def submit_failed(self, task_ids: Sequence[str], error: BaseException) -> None:
        """The submit of these tasks raised ``error``: those without a :class:`Submitted` were not stored."""


class Hooks:
    """An ordered list of hooks, called one after the other for each event.

    A hook that raises is logged (once per hook and event type) and skipped;
    the next hooks still see the event and the component goes on.

    Attributes:
        carriers: The hooks that carry trace context (:class:`TraceCarrier`);
            empty unless one was given, and then a submit asks nothing.
    """

    def __init__(self, hooks: Iterable[Hook] | None = None) -> None:
        self.hooks: tuple[Hook, ...] = tuple(default_hooks() if hooks is None else hooks)
        self.carriers: tuple[TraceCarrier, ...] = tuple(h for h in self.hooks if isinstance(h, TraceCarrier))
        self._reported: set[tuple[int, type[Event]]] = set()  # touched only by emit()
        self._reported_calls: set[tuple[int, str]] = set()  # touched only by _report()

    def emit(self, event: Event) -> None:
        """Give ``event`` to every hook, in order."""
        for hook in self.hooks:
            try:
                hook.on_event(event)
            except Exception:
                mark = (id(hook), type(event))
                if mark not in self._reported:
                    self._reported.add(mark)
                    log.exception(
                        "hook %s raised on %s (ignored; reported once per hook and event type)",
                        type(hook).__name__,
                        type(event).__name__,
                    )

    def trace_context(self, task: Task) -> TraceContext:
        """The trace context the carriers give for ``task``, bounded (``models.bound_trace``).

        Carriers are asked in list order; a key given by an earlier one is
        kept. ``()`` if none gives anything (the record keeps its own).
        """
        carried: dict[str, str] = {}
        for carrier in self.carriers:
            try:
                given = carrier.trace_context(task)
            except Exception:
                self._report(carrier, "trace_context")
                continue
            if given:
                for key, value in given.items():
                    carried.setdefault(key, value)
        return bound_trace(carried)

    def submit_failed(self, task_ids: Sequence[str], error: BaseException) -> None:
        """Tell the carriers that the submit of ``task_ids`` raised ``error``."""
        for carrier in self.carriers:
            try:
                carrier.submit_failed(task_ids, error)
            except Exception:
                self._report(carrier, "submit_failed")

    def _report(self, hook: object, what: str) -> None:
        mark = (id(hook), what)
        if mark not in self._reported_calls:
            self._reported_calls.add(mark)
            log.exception("hook %s raised in %s (ignored; reported once)", type(hook).__name__, what)

    def __bool__(self) -> bool:
        return bool(self.hooks)


def as_hooks(hooks: Hooks | Iterable[Hook] | None) -> Hooks:
    """A component's ``hooks=`` argument as :class:`Hooks` (None: :func:`default_hooks`)."""
    return hooks if isinstance(hooks, Hooks) else Hooks(hooks)


def default_hooks() -> list[Hook]:
    """The hooks a component has unless told otherwise: logging only."""
    return [LoggingHook()]


class LoggingHook:
    """Logs task and process life: one line per event, with its task id, attempt and worker.

    Task text (errors) is escaped by the log formatters (logs.py). Levels:
    problems (lost, timed out, failed, rejected) are warnings or errors, the
    ordinary life of a task is debug, process life is info.
    """

    # (component, event type) -> (level, message); the logger is tasklease.{component}.
    # Messages may use {state}, {outcome}, {error}, {priority}, {worker}, {count}, {kind}.
    LINES: ClassVar[dict[tuple[str, type[Event]], tuple[int, str]]] = {
        ("client", Submitted): (logging.DEBUG, "submitted"),
        ("client", Cancelled): (logging.DEBUG, "cancelled"),
        ("client", Reprioritised): (logging.DEBUG, "priority changed to {priority}"),
        ("scheduler", Assigned): (logging.DEBUG, "assigned to worker {worker}"),
        ("scheduler", TimedOut): (logging.WARNING, "attempt {outcome}: task {state}"),
        ("scheduler", Lost): (logging.WARNING, "attempt {outcome}: task {state}"),
        ("scheduler", Failed): (logging.ERROR, "task failed: {error}"),
        ("scheduler", Promoted): (logging.DEBUG, "queued again after its delay"),
        ("scheduler", RecoveryRan): (logging.DEBUG, "recovery: {count} {kind}"),
        ("worker", Started): (logging.DEBUG, "task started"),
        ("worker", Succeeded): (logging.DEBUG, "outcome recorded: task {state}"),
        ("worker", Failed): (logging.DEBUG, "outcome recorded: task {state}"),
        ("worker", Retried): (logging.DEBUG, "outcome recorded: task {state}"),
        ("worker", TimedOut): (logging.DEBUG, "outcome recorded: task {state}"),
        ("worker", HandedBack): (logging.DEBUG, "outcome recorded: task {state}"),
        ("worker", Rejected): (
            logging.WARNING,
            "outcome rejected: the assignment was revoked (task cancelled or reassigned)",
        ),
    }

    def __init__(self) -> None:
        self._loggers: dict[str, logging.Logger] = {}

    def on_event(self, event: Event) -> None:
        """Log ``event`` if it has a line (see :attr:`LINES`)."""
        line = self.LINES.get((event.component, type(event)))
        if line is None:
            return
        level, message = line
        logger = self._loggers.get(event.component)
        if logger is None:
            logger = self._loggers[event.component] = logging.getLogger(f"tasklease.{event.component}")
        if not logger.isEnabledFor(level):
            return
        logger.log(level, "%s", message.format_map(_Fields(event)), extra=context(event))


def attempt_ended(outcome: Outcome, new: Task) -> type[AttemptEnded]:
    """The event type for an attempt that ended with ``outcome``, ``new`` being the record written.

    One mapping for every component: succeeded, timed out, lost, cancelled and
    handed back name the outcome (``new.state`` says whether the task runs
    again); a failed attempt is :class:`Failed` if the task failed for good,
    else :class:`Retried`.
    """
    match outcome:
        case Outcome.SUCCEEDED:
            return Succeeded if new.state is TaskState.SUCCEEDED else Failed
        case Outcome.TIMEOUT:
            return TimedOut
        case Outcome.LOST:
            return Lost
        case Outcome.CANCELLED:
            return Cancelled
        case Outcome.HANDED_BACK:
            return HandedBack
    return Failed if new.state.terminal else Retried


def context(event: Event) -> dict[str, Any]:
    """The structured log fields of ``event`` (component, its id, task id, attempt, worker)."""
    extra: dict[str, Any] = {"component": event.component}
    if event.component in ("worker", "scheduler") and event.source:
        extra[event.component] = event.source
    if isinstance(event, TaskEvent):
        extra["task_id"] = event.task.id
        if event.attempt is not None:
            extra["attempt"] = event.attempt
        if event.worker is not None and event.component != "worker":
            extra["worker"] = event.worker
    return extra


class _Fields(dict[str, object]):
    """Lazy message fields for :meth:`LoggingHook.on_event`."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event

    def __missing__(self, name: str) -> object:
        event = self.event
        if isinstance(event, TaskEvent):
            match name:
                case "state":
                    return event.task.state.value
                case "priority":
                    return event.task.priority
                case "error":
                    return event.task.error
        if isinstance(event, AttemptEnded) and name == "outcome":
            return event.outcome.value if event.outcome is not None else "none"
        return getattr(event, name, "?")


@dataclass
class RecordingHook:
    """Keeps every event it sees, in order (tests, debugging).

    Attributes:
        events: What it saw.
    """

    events: list[Event] = field(default_factory=list)

    def on_event(self, event: Event) -> None:
        """Remember ``event``."""
        self.events.append(event)

    def of(self, *kinds: type[Event], task_id: str | None = None) -> list[Event]:
        """The events of the given types (all if none), optionally for one task."""
        return [
            e
            for e in self.events
            if (not kinds or isinstance(e, kinds))
            and (task_id is None or (isinstance(e, TaskEvent) and e.task.id == task_id))
        ]

    def kinds(self, task_id: str | None = None) -> Sequence[str]:
        """The names of the event types seen (for one task, if given), in order."""
        return [type(e).__name__ for e in self.of(task_id=task_id)]
