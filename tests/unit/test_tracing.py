"""Trace context in the task record, and the OpenTelemetry hook, without etcd.

Events are built by hand, in the order the components emit them; records go
through the codec between "components", as they go through etcd.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tasklease.codec import decode_task, encode_task, task_to_dict
from tasklease.errors import InvalidOption
from tasklease.events import (
    Hooks,
    LoggingHook,
    Lost,
    RecordingHook,
    Retried,
    Started,
    Submitted,
    Succeeded,
    TraceCarrier,
    WorkerLeaseLost,
)
from tasklease.models import (
    MAX_TRACE_BYTES,
    MAX_TRACE_ENTRIES,
    Attempt,
    Outcome,
    Task,
    TaskState,
    bound_trace,
    check_trace,
    evolve,
)
from tasklease.spec import TaskSpec
from tasklease.tracing import TracingHook

KEY = "/t/task/01HZZZZZZZZZZZZZZZZZZZZZZZ"
TASK_ID = "01HZZZZZZZZZZZZZZZZZZZZZZZ"
T0 = 1_700_000_000.0
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SECRET = "do-not-export-me"


def new_task(**changes) -> Task:
    base = Task(
        id=TASK_ID,
        type="resize",
        payload={"password": SECRET},
        queue="images",
        priority=2,
        timeout_s=30.0,
        created_at=T0,
        updated_at=T0,
    )
    return evolve(base, **changes)


def through_etcd(task: Task) -> Task:
    return decode_task(KEY, encode_task(task))


def running(task: Task, number: int, at: float) -> Task:
    return through_etcd(
        evolve(
            task, state=TaskState.RUNNING, updated_at=at, attempts=(*task.attempts, Attempt(number, "w1", at))
        )
    )


def ended(task: Task, outcome: Outcome, state: TaskState, at: float, error: str | None = None) -> Task:
    last = task.attempts[-1]
    done = Attempt(last.number, last.worker, last.started_at, at, outcome, error)
    return through_etcd(
        evolve(task, state=state, updated_at=at, error=error, attempts=(*task.attempts[:-1], done))
    )


@pytest.fixture
def hook(provider):
    return TracingHook(provider, propagator=TraceContextTextMapPropagator())


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    return span.attributes or {}


def by_name(spans, prefix: str) -> list[ReadableSpan]:
    return sorted(
        (s for s in spans if s.name.startswith(prefix)),
        key=lambda s: attrs(s).get("tasklease.attempt", 0),
    )


# the record's field ------------------------------------------------------------------------


def test_a_task_without_trace_context_has_no_trace_field():
    # Given a task nobody gave trace context
    task = new_task()

    # When it is encoded
    d = task_to_dict(task)

    # Then the record has no trace field, as before, and decodes to the same task
    assert "trace" not in d
    assert through_etcd(task) == task
    assert task.trace == ()


def test_trace_context_round_trips_in_order():
    task = new_task(trace=(("traceparent", PARENT), ("tracestate", "congo=t61rcWkgMzE")))

    assert task_to_dict(task)["trace"] == {"traceparent": PARENT, "tracestate": "congo=t61rcWkgMzE"}
    assert through_etcd(task) == task


def test_a_record_with_a_trace_decodes_where_unknown_keys_are_ignored():
    # Given a record as an older version wrote it, plus a trace field (and a field from the future)
    d = task_to_dict(new_task())
    old = dict(d)
    d["trace"] = {"traceparent": PARENT}
    d["from_a_later_version"] = {"x": 1}

    # When it is decoded
    task = decode_task(KEY, orjson.dumps(d))

    # Then it is the same task as without those fields, with the trace kept
    assert evolve(task, trace=()) == decode_task(KEY, orjson.dumps(old))
    assert task.trace == (("traceparent", PARENT),)


@pytest.mark.parametrize(
    "bad",
    [
        "00-abc",
        ["traceparent", PARENT],
        17,
        True,
        {"traceparent": 5},
        {"traceparent": None},
        {"": "x"},
        {"trace parent": PARENT},
        {"traceparent": "bad\nnewline"},
        {"traceparent": "\x1b[31mred"},
        {"traceparent": "é"},
        {"traceparent": ""},
        {"traceparent": "x" * 513},
        {"k" * 65: "v"},
    ],
    ids=repr,
)
def test_a_malformed_trace_in_a_record_is_ignored(bad):
    # Given a record whose trace field is malformed (untrusted input)
    d = task_to_dict(new_task())
    d["trace"] = bad

    # When it is decoded
    task = decode_task(KEY, orjson.dumps(d))

    # Then the record is not corrupt: the trace is dropped
    assert task.trace == ()
    assert "trace" not in task_to_dict(task)


def test_only_the_well_formed_entries_that_fit_are_kept():
    carrier = {
        "traceparent": PARENT,
        "bad key": "x",
        "baggage": "k=" + "v" * (MAX_TRACE_BYTES - 20),  # does not fit after the traceparent
        "tracestate": "a=b",
    }
    assert bound_trace(carrier) == (("traceparent", PARENT), ("tracestate", "a=b"))
    many = {f"k{i}": "v" for i in range(MAX_TRACE_ENTRIES + 5)}
    assert len(bound_trace(many)) == MAX_TRACE_ENTRIES


NO_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
TEXT = st.text(st.characters(exclude_categories=NO_SURROGATES), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | TEXT,
    lambda inner: st.lists(inner, max_size=10) | st.dictionaries(TEXT, inner, max_size=10),
    max_leaves=30,
)


@given(JSON_VALUES)
def test_any_json_as_trace_decodes(value):
    # Given a record whose trace field is any JSON value
    d = task_to_dict(new_task())
    d["trace"] = value

    # When it is decoded (CorruptRecord would fail the test)
    task = decode_task(KEY, orjson.dumps(d))

    # Then what is kept is bounded and printable
    assert sum(len(k) + len(v) for k, v in task.trace) <= MAX_TRACE_BYTES
    assert len(task.trace) <= MAX_TRACE_ENTRIES
    assert all(v.isprintable() and v.isascii() for _, v in task.trace)


def test_a_spec_refuses_a_trace_it_cannot_carry_whole():
    assert TaskSpec("noop", trace={"traceparent": PARENT}).trace == {"traceparent": PARENT}
    assert check_trace({"traceparent": PARENT}) == (("traceparent", PARENT),)
    for bad in ({"traceparent": "x\n"}, {"k": "v" * 600}, {f"k{i}": "v" for i in range(9)}):
        with pytest.raises(InvalidOption):
            TaskSpec("noop", trace=bad)


# the seam ----------------------------------------------------------------------------------


def test_hooks_without_a_carrier_ask_nothing(hook):
    assert Hooks([LoggingHook(), RecordingHook()]).carriers == ()
    assert Hooks([LoggingHook(), hook]).carriers == (hook,)
    assert isinstance(hook, TraceCarrier)


class Broken:
    def on_event(self, event):
        pass

    def trace_context(self, task):
        raise RuntimeError("carrier bug")

    def submit_failed(self, task_ids, error):
        raise RuntimeError("carrier bug")


class Fixed:
    def on_event(self, event):
        pass

    def trace_context(self, task):
        return {"traceparent": PARENT, "bad key": "dropped", "tracestate": "a=b"}

    def submit_failed(self, task_ids, error):
        pass


def test_a_broken_carrier_is_logged_once_and_the_next_carriers_still_give(caplog):
    hooks = Hooks([Broken(), Fixed()])

    with caplog.at_level(logging.ERROR, logger="tasklease.events"):
        first = hooks.trace_context(new_task())
        hooks.trace_context(new_task())
        hooks.submit_failed([TASK_ID], RuntimeError("x"))

    assert first == (("traceparent", PARENT), ("tracestate", "a=b"))
    assert len([r for r in caplog.records if "trace_context" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "submit_failed" in r.getMessage()]) == 1


# the hook ----------------------------------------------------------------------------------


def submit(hooks: Hooks, task: Task, at: float) -> Task:
    """What the client does: ask the carriers, store the record, emit Submitted."""
    task = evolve(task, trace=hooks.trace_context(task))
    stored = through_etcd(task)
    hooks.emit(Submitted(at=at, component="client", task=stored))
    return stored


def test_a_retried_task_gives_one_trace_submit_then_two_attempts(provider, hook, exporter):
    # Given a client and a worker with the hook (as in two processes: records go through the codec)
    client, worker = Hooks([hook]), Hooks([TracingHook(provider)])
    caller = provider.get_tracer("test").start_span("http request")

    # When a task is submitted inside the caller's span, fails once and succeeds on its retry
    with trace.use_span(caller, end_on_exit=True):
        queued = submit(client, new_task(), T0 + 0.01)
    run1 = running(queued, 1, T0 + 1)
    worker.emit(Started(at=T0 + 1.1, component="worker", source="w1", task=run1, attempt=1, worker="w1"))
    retry = ended(run1, Outcome.FAILED, TaskState.QUEUED, T0 + 2, "RuntimeError: boom\n  traceback line")
    worker.emit(
        Retried(
            at=T0 + 2,
            component="worker",
            source="w1",
            task=retry,
            attempt=1,
            worker="w1",
            outcome=Outcome.FAILED,
        )
    )
    run2 = running(retry, 2, T0 + 3)
    worker.emit(Started(at=T0 + 3.1, component="worker", source="w1", task=run2, attempt=2, worker="w1"))
    done = ended(run2, Outcome.SUCCEEDED, TaskState.SUCCEEDED, T0 + 4)
    worker.emit(
        Succeeded(
            at=T0 + 4,
            component="worker",
            source="w1",
            task=done,
            attempt=2,
            worker="w1",
            outcome=Outcome.SUCCEEDED,
        )
    )

    # Then one trace holds the caller's span, the submit span, two waits and two attempts
    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {caller.get_span_context().trace_id}
    (sub,) = by_name(spans, "submit ")
    waits = by_name(spans, "queued ")
    runs = by_name(spans, "run ")
    assert len(spans) == 6 and len(waits) == 2 and len(runs) == 2
    assert sub.parent is not None and sub.parent.span_id == caller.get_span_context().span_id
    assert sub.name == "submit resize" and sub.kind is SpanKind.PRODUCER
    for child in (*waits, *runs):
        assert child.parent is not None and child.parent.span_id == sub.context.span_id
    # the attempts: kind, times, outcome, status
    assert [r.kind for r in runs] == [SpanKind.CONSUMER, SpanKind.CONSUMER]
    assert [attrs(r)["tasklease.outcome"] for r in runs] == ["retried", "succeeded"]
    assert [attrs(r)["tasklease.state"] for r in runs] == ["queued", "succeeded"]
    assert runs[0].status.status_code is StatusCode.ERROR
    assert runs[0].status.description == "retried: RuntimeError: boom"
    assert runs[1].status.status_code is StatusCode.UNSET
    assert (runs[0].start_time, runs[0].end_time) == (int((T0 + 1.1) * 1e9), int((T0 + 2) * 1e9))
    # the waits: creation -> first assignment; first end -> second assignment
    assert [(w.start_time, w.end_time) for w in waits] == [
        (int(T0 * 1e9), int((T0 + 1) * 1e9)),
        (int((T0 + 2) * 1e9), int((T0 + 3) * 1e9)),
    ]
    # attributes name the task, never its payload
    assert attrs(runs[1])["tasklease.task_id"] == TASK_ID
    assert (attrs(runs[1])["tasklease.queue"], attrs(runs[1])["tasklease.attempt"]) == ("images", 2)
    assert all(SECRET not in repr(dict(s.attributes or {})) for s in spans)
    assert hook.open_spans == 0


def test_a_submit_context_given_with_the_spec_is_the_parent_of_the_submit_span(hook, exporter):
    hooks = Hooks([hook])

    submit(hooks, new_task(trace=(("traceparent", PARENT),)), T0)

    (sub,) = exporter.get_finished_spans()
    assert sub.context.trace_id == int(PARENT.split("-")[1], 16)
    assert sub.parent is not None and sub.parent.span_id == int(PARENT.split("-")[2], 16)


def test_a_failed_submit_ends_its_span_with_the_error(hook, exporter):
    hooks = Hooks([hook])
    hooks.trace_context(new_task())

    hooks.submit_failed([TASK_ID, "another"], RuntimeError("etcd said no"))

    (sub,) = exporter.get_finished_spans()
    assert sub.status.status_code is StatusCode.ERROR
    assert [e.name for e in sub.events] == ["exception"]
    assert hook.open_spans == 0


@pytest.mark.parametrize(
    "carried",
    [
        (),
        (("traceparent", "00-zzzz-not-a-context-01"),),
        (("traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"),),
    ],
    ids=["none", "garbage", "invalid ids"],
)
def test_an_attempt_without_a_valid_carried_context_starts_its_own_trace(hook, exporter, carried):
    worker = Hooks([hook])
    run1 = running(new_task(trace=carried), 1, T0 + 1)

    worker.emit(Started(at=T0 + 1, component="worker", source="w1", task=run1, attempt=1, worker="w1"))
    done = ended(run1, Outcome.SUCCEEDED, TaskState.SUCCEEDED, T0 + 2)
    worker.emit(
        Succeeded(
            at=T0 + 2,
            component="worker",
            source="w1",
            task=done,
            attempt=1,
            worker="w1",
            outcome=Outcome.SUCCEEDED,
        )
    )

    (run,) = exporter.get_finished_spans()  # no wait span without a submit to hang it on
    assert run.name == "run resize" and run.parent is None


def test_attempts_without_an_end_event_are_ended_when_the_lease_is_lost_or_their_time_is_up(hook, exporter):
    worker = Hooks([hook])
    run1 = running(new_task(), 1, T0)
    other = running(new_task(id="01HYYYYYYYYYYYYYYYYYYYYYYY", timeout_s=1.0), 1, T0)
    worker.emit(Started(at=T0, component="worker", source="w1", task=run1, attempt=1, worker="w1"))
    worker.emit(Started(at=T0, component="worker", source="w2", task=other, attempt=1, worker="w2"))

    # When w2's attempt outlives its timeout and grace without an end (revoked), and w1 loses its lease
    later = T0 + 1.0 + hook.grace_s + 61
    worker.emit(WorkerLeaseLost(at=later, component="worker", source="w1"))

    # Then both spans end as unknown, with status error
    spans = exporter.get_finished_spans()
    assert sorted(s.status.description for s in spans) == [
        "no end event: lease lost",
        "no end event: the assignment was revoked",
    ]
    assert all(attrs(s)["tasklease.outcome"] == "unknown" for s in spans)
    assert hook.open_spans == 0


def test_an_attempt_the_scheduler_found_lost_gets_a_span_in_the_trace(hook, exporter):
    client, scheduler = Hooks([hook]), Hooks([hook])
    queued = submit(client, new_task(), T0)
    run1 = running(queued, 1, T0 + 1)
    lost = ended(run1, Outcome.LOST, TaskState.QUEUED, T0 + 20, "worker w1 vanished")

    scheduler.emit(
        Lost(
            at=T0 + 20,
            component="scheduler",
            source="s1",
            task=lost,
            attempt=1,
            worker="w1",
            outcome=Outcome.LOST,
        )
    )

    sub, run = sorted(exporter.get_finished_spans(), key=lambda s: s.name, reverse=True)
    assert run.parent is not None and run.parent.span_id == sub.context.span_id
    assert attrs(run)["tasklease.reported_by"] == "scheduler"
    assert attrs(run)["tasklease.outcome"] == "lost"
    assert run.status.status_code is StatusCode.ERROR
    assert (run.start_time, run.end_time) == (int((T0 + 1) * 1e9), int((T0 + 20) * 1e9))


def test_errors_and_wait_spans_can_be_left_out(provider, exporter):
    worker = Hooks([TracingHook(provider, record_errors=False, wait_spans=False)])
    run1 = running(new_task(trace=(("traceparent", PARENT),)), 1, T0)
    worker.emit(Started(at=T0, component="worker", source="w1", task=run1, attempt=1, worker="w1"))
    failed = ended(run1, Outcome.FAILED, TaskState.QUEUED, T0 + 1, f"ValueError: {SECRET}")
    worker.emit(
        Retried(
            at=T0 + 1,
            component="worker",
            source="w1",
            task=failed,
            attempt=1,
            worker="w1",
            outcome=Outcome.FAILED,
        )
    )

    (run,) = exporter.get_finished_spans()  # no queued span
    assert run.status.description == "retried"
    assert run.parent is not None and run.parent.span_id == int(PARENT.split("-")[2], 16)


def test_open_spans_are_bounded(provider, exporter):
    hook = TracingHook(provider, max_open=3)
    hooks = Hooks([hook])
    for i in range(5):
        hooks.trace_context(new_task(id=f"01HZZZZZZZZZZZZZZZZZZZZZZ{i}"))
    assert hook.open_spans == 3
    assert [s.status.description for s in exporter.get_finished_spans()] == ["too many open submit spans"] * 2
