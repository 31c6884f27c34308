"""OpenTelemetry traces across a real client, scheduler and worker (real etcd).

The client and the worker each have their own ``TracingHook`` (as in two
processes; they share one in-memory exporter), the scheduler has none: the
trace context reaches the worker only through the task record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from faults.procs import until
from tasklease import codec, transitions
from tasklease.client import Client, TaskSpec
from tasklease.errors import InvalidOption
from tasklease.events import RecordingHook, Succeeded, default_hooks
from tasklease.executors.base import Registry
from tasklease.keys import Keyspace
from tasklease.models import TaskState
from tasklease.retry import RetryPolicy
from tasklease.store import Store
from tasklease.tracing import TracingHook
from tasklease.worker import Worker, WorkerConfig

registry = Registry()
CALLS: dict[str, int] = {}


@registry.task
async def flaky(key: str, pad: str = "") -> int:
    """Fails on its first call for ``key``, succeeds after."""
    CALLS[key] = CALLS.get(key, 0) + 1
    if CALLS[key] == 1:
        raise RuntimeError(f"first attempt of {key} fails")
    return CALLS[key]


@registry.task
async def ok() -> str:
    return "ok"


@pytest.fixture
async def traced_client(store: Store, keyspace: Keyspace, provider) -> AsyncIterator[Client]:
    c = Client(store, keyspace, hooks=[*default_hooks(), TracingHook(provider)])
    yield c
    await c.close()


@pytest.fixture
async def traced_worker(store: Store, keyspace: Keyspace, provider, cluster) -> AsyncIterator[Any]:
    """Start a scheduler (no hooks) and a worker with a TracingHook; the recording hook sees its events."""
    await cluster.scheduler()
    rec = RecordingHook()
    worker = Worker(
        store,
        keyspace,
        registry,
        WorkerConfig(worker_id="traced", lease_ttl_s=3, heartbeat_s=0.5, grace_s=1.0),
        hooks=[*default_hooks(), TracingHook(provider), rec],
    )
    await worker.start()
    yield rec
    await worker.kill()


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    return span.attributes or {}


def spans_of(exporter: InMemorySpanExporter, task_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if attrs(s).get("tasklease.task_id") == task_id]


async def test_a_retried_task_is_one_trace_submit_then_both_attempts(
    traced_client, traced_worker, provider, exporter
):
    # Given a caller's span, and a task that fails once and is retried at once
    caller = provider.get_tracer("test").start_span("POST /images")

    # When it is submitted inside that span and runs to success
    with trace.use_span(caller, end_on_exit=True):
        task = await traced_client.submit(
            "flaky", {"key": "retried", "pad": "p" * 4000}, retry=RetryPolicy(max_retries=1, backoff_s=0)
        )
    final = await traced_client.wait(task.id, timeout_s=60)
    assert final.state is TaskState.SUCCEEDED and len(final.attempts) == 2
    await until(lambda: traced_worker.of(Succeeded, task_id=task.id), within_s=10, what="the Succeeded event")

    # Then the record carried a traceparent, and one trace holds submit, waits and attempts
    assert [k for k, _ in final.trace] == ["traceparent"]
    trace_id = caller.get_span_context().trace_id
    spans = [
        s
        for s in exporter.get_finished_spans()
        if s.context.trace_id == trace_id and s.name != "POST /images"
    ]
    assert {s.context.trace_id for s in spans_of(exporter, task.id)} == {trace_id}
    (sub,) = [s for s in spans if s.name == "submit flaky"]
    runs = sorted((s for s in spans if s.name == "run flaky"), key=lambda s: attrs(s)["tasklease.attempt"])
    waits = sorted(
        (s for s in spans if s.name == "queued flaky"), key=lambda s: attrs(s)["tasklease.attempt"]
    )
    assert len(spans) == 5 and len(runs) == 2 and len(waits) == 2
    assert sub.kind is SpanKind.PRODUCER
    assert sub.parent is not None and sub.parent.span_id == caller.get_span_context().span_id
    for child in (*runs, *waits):
        assert child.parent is not None and child.parent.span_id == sub.context.span_id
    assert [attrs(r)["tasklease.outcome"] for r in runs] == ["retried", "succeeded"]
    assert [r.status.status_code for r in runs] == [StatusCode.ERROR, StatusCode.UNSET]
    assert runs[0].status.description == "retried: RuntimeError: first attempt of retried fails"
    assert [attrs(r)["tasklease.worker"] for r in runs] == ["traced", "traced"]
    # in time order (all clocks are this machine's here): submit, attempt 1, attempt 2
    assert (sub.start_time or 0) <= (runs[0].start_time or 0) <= (runs[0].end_time or 0)
    assert (runs[0].end_time or 0) <= (runs[1].start_time or 0)
    assert all("pppp" not in repr(dict(attrs(s))) for s in spans)  # never the payload


async def test_a_task_submitted_without_tracing_has_no_trace_field(
    client, store, keyspace, traced_worker, exporter
):
    # Given a client without the hook (the default)
    task = await client.submit("ok")

    # Then its record has no trace field at all
    kv, _ = await store.get(keyspace.task(task.id))
    assert kv is not None and "trace" not in orjson.loads(kv.value)

    # And a worker with the hook still traces the attempt, as the root of its own trace
    await client.wait(task.id, timeout_s=60)
    await until(lambda: traced_worker.of(Succeeded, task_id=task.id), within_s=10, what="the Succeeded event")
    (run,) = spans_of(exporter, task.id)
    assert run.name == "run ok" and run.parent is None


async def test_a_record_with_a_malformed_trace_still_decodes_and_runs(
    client, store, keyspace, traced_worker, exporter
):
    # Given one task whose carried context is not a valid traceparent (given with the submit),
    # and one whose stored trace field was tampered with (not strings)
    garbage = await client.submit_spec(TaskSpec("ok", trace={"traceparent": "00-not-a-valid-context-01"}))
    tampered = client.submitter.new_task(TaskSpec("ok"))
    record = codec.task_to_dict(tampered)
    record["trace"] = {"traceparent": 5, "bad key": "x", "tracestate": ["a"]}
    txn = transitions.enqueue(keyspace, tampered, orjson.dumps(record))  # as another writer might
    assert (await store.txn(txn.compares, txn.ops)).succeeded

    # When they are read and run
    assert (await client.get(tampered.id)).trace == ()
    assert (await client.get(garbage.id)).trace == (("traceparent", "00-not-a-valid-context-01"),)
    for task in (garbage, tampered):
        done = await client.wait(task.id, timeout_s=60)
        assert done.state is TaskState.SUCCEEDED

    # Then each attempt was traced as the root of its own trace
    for task in (garbage, tampered):
        await until(lambda t=task: traced_worker.of(Succeeded, task_id=t.id), within_s=10, what="Succeeded")
        (run,) = spans_of(exporter, task.id)
        assert run.parent is None and attrs(run)["tasklease.outcome"] == "succeeded"


async def test_a_batch_carries_one_context_per_task_and_a_failed_submit_ends_its_span(
    traced_client, exporter
):
    # When a batch is submitted, then one task again with a used id
    batch = await traced_client.submit_many([TaskSpec("ok") for _ in range(70)])  # two transactions
    with pytest.raises(InvalidOption):
        await traced_client.submit_spec(TaskSpec("ok", task_id=batch.tasks[0].id))

    # Then each task of the batch has its own context, its submit span ended with its record stored
    assert batch.transactions == 2
    parents = {dict(t.trace)["traceparent"] for t in batch.tasks}
    assert len(parents) == 70
    subs = [s for s in exporter.get_finished_spans() if s.name == "submit ok"]
    assert len(subs) == 71
    ok = [s for s in subs if s.status.status_code is StatusCode.UNSET]
    failed = [s for s in subs if s.status.status_code is StatusCode.ERROR]
    assert len(ok) == 70 and len(failed) == 1
    assert failed[0].status.description == "submit failed: InvalidOption"
    stored = await traced_client.get(batch.tasks[-1].id)
    assert stored.trace == batch.tasks[-1].trace
