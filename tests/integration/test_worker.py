"""A worker (in this process) against a real etcd: assignment -> execution -> fenced result."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

import sample_tasks
from faults.procs import until
from tasklease import codec
from tasklease.client import Client
from tasklease.errors import InvalidTransition
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Outcome, TaskState
from tasklease.queue import assign_next, decode_assignment
from tasklease.retry import RetryPolicy
from tasklease.store import Store
from tasklease.worker import Worker, WorkerConfig


def registry(allow: frozenset[str] = frozenset()):
    reg = builtin_registry(allow)
    reg.update([sample_tasks.registry])
    return reg


@pytest.fixture
async def make_worker(store: Store, keyspace: Keyspace) -> AsyncIterator:
    workers: list[Worker] = []

    async def make(allow: frozenset[str] = frozenset(), **config) -> Worker:
        config.setdefault("lease_ttl_s", 3)
        config.setdefault("heartbeat_s", 0.5)
        config.setdefault("grace_s", 1.0)
        config.setdefault("worker_id", f"w{len(workers)}")
        worker = Worker(store, keyspace, registry(allow), WorkerConfig(**config))
        await worker.start()
        workers.append(worker)
        return worker

    yield make
    for w in workers:
        await w.kill()


async def state_is_not(client: Client, task_id: str, state: TaskState):
    """The record, once its state is no longer ``state`` (else None: keep polling)."""
    record = await client.get(task_id)
    return record if record.state is not state else None


async def run_one(
    client: Client, store: Store, keyspace: Keyspace, worker: Worker, type_: str, payload=None, **opts
):
    """Submit, assign to `worker` (as the scheduler will), wait for the end."""
    task = await client.submit(type_, payload, **opts)
    assigned = await assign_next(store, keyspace, task.queue, worker.id, worker.lease_id, time.time())
    assert assigned is not None and assigned.id == task.id
    return await client.wait(task.id, timeout_s=20)


async def test_noop_result_is_recorded_with_its_attempt(client, store, keyspace, make_worker):
    worker = await make_worker()
    final = await run_one(client, store, keyspace, worker, "noop", {"x": [1, 2]})
    assert final.state is TaskState.SUCCEEDED
    assert final.result == {"x": [1, 2]}
    (attempt,) = final.attempts
    assert attempt.worker == worker.id
    assert attempt.outcome is Outcome.SUCCEEDED
    assert attempt.finished_at is not None and attempt.finished_at >= attempt.started_at
    # nothing is left assigned or indexed as running
    for prefix in (keyspace.assignments, keyspace.running):
        assert (await store.range(prefix, prefix_end(prefix))).kvs == []


async def test_sync_and_async_functions_get_payload_arguments(client, store, keyspace, make_worker):
    worker = await make_worker()
    assert (await run_one(client, store, keyspace, worker, "add", {"a": 2, "b": 3})).result == 5
    assert (await run_one(client, store, keyspace, worker, "add", [4, 5])).result == 9
    assert (await run_one(client, store, keyspace, worker, "async_add", {"a": 1, "b": 1})).result == 2


async def test_sleep_builtin(client, store, keyspace, make_worker):
    worker = await make_worker()
    final = await run_one(client, store, keyspace, worker, "sleep", {"seconds": 0.05})
    assert final.result == {"slept": 0.05}
    bad = await run_one(
        client, store, keyspace, worker, "sleep", {"seconds": "x"}, retry=RetryPolicy(max_retries=3)
    )
    assert bad.state is TaskState.FAILED
    assert len(bad.attempts) == 1  # a bad payload is permanent


async def test_shell_builtin_captures_exit_code_and_bounded_output(client, store, keyspace, make_worker):
    worker = await make_worker(allow=frozenset({"shell"}))
    ok = await run_one(
        client, store, keyspace, worker, "shell", {"argv": ["sh", "-c", "echo hi; echo err >&2"]}
    )
    assert ok.state is TaskState.SUCCEEDED
    assert ok.result == {"exit_code": 0, "stdout": "hi\n", "stderr": "err\n", "truncated": False}
    big = await run_one(
        client, store, keyspace, worker, "shell", {"argv": ["sh", "-c", "head -c 200000 /dev/zero"]}
    )
    assert big.result["truncated"] is True
    assert len(big.result["stdout"]) == 64 * 1024
    failed = await run_one(
        client, store, keyspace, worker, "shell", {"argv": ["sh", "-c", "echo bad >&2; exit 3"]}
    )
    assert failed.state is TaskState.FAILED
    assert "exited with code 3" in (failed.error or "")
    missing = await run_one(client, store, keyspace, worker, "shell", {"argv": ["/no/such/program"]})
    assert missing.state is TaskState.FAILED
    assert "cannot run" in (missing.error or "")


@pytest.fixture
def http_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            code = 503 if self.path == "/down" else (404 if self.path == "/missing" else 201)
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"got " + body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


async def test_http_builtin(client, store, keyspace, make_worker, http_server):
    # The server is on loopback, which http tasks may reach only if the worker allows it
    worker = await make_worker(allow=frozenset({"http"}), http_allow_nets=("127.0.0.0/8",))
    ok = await run_one(
        client,
        store,
        keyspace,
        worker,
        "http",
        {"method": "POST", "url": f"{http_server}/x", "body": {"a": 1}},
    )
    assert ok.state is TaskState.SUCCEEDED
    assert ok.result["status"] == 201
    assert ok.result["body"] == 'got {"a":1}'
    down = await run_one(
        client, store, keyspace, worker, "http", {"method": "POST", "url": f"{http_server}/down", "body": "x"}
    )
    assert down.state is TaskState.FAILED
    assert "503" in (down.error or "")
    missing = await run_one(
        client,
        store,
        keyspace,
        worker,
        "http",
        {"method": "POST", "url": f"{http_server}/missing", "body": "x"},
    )
    assert missing.state is TaskState.FAILED and "404" in (missing.error or "")


async def handed_back(
    client: Client, store: Store, keyspace: Keyspace, worker: Worker, type_: str, payload=None, **opts
):
    """Submit, assign to `worker`, wait until it is queued again; cancel it (it would stay at the head)."""
    task = await client.submit(type_, payload, **opts)
    assigned = await assign_next(store, keyspace, task.queue, worker.id, worker.lease_id, time.time())
    assert assigned is not None and assigned.id == task.id
    record = await until(
        lambda: state_is_not(client, task.id, TaskState.RUNNING), within_s=20, what="the attempt to end"
    )
    await client.cancel(task.id)
    return record


async def test_shell_and_http_are_off_unless_allowed(client, store, keyspace, make_worker):
    # A worker without --allow does not run them: such a task assigned to it anyway (a
    # restart under other options) is handed back to its queue, never run and never failed.
    worker = await make_worker()
    for type_ in ("shell", "http"):
        record = await handed_back(
            client, store, keyspace, worker, type_, {"argv": ["true"]}, retry=RetryPolicy(max_retries=3)
        )
        assert record.state is TaskState.QUEUED
        assert [a.outcome for a in record.attempts] == [Outcome.HANDED_BACK]
        error = record.attempts[0].error or ""
        assert f"unknown task type {type_!r}" in error
        assert "noop" in error and "sleep" in error


async def test_unknown_type_and_bad_results_fail_with_clear_errors(client, store, keyspace, make_worker):
    worker = await make_worker()
    unknown = await handed_back(client, store, keyspace, worker, "no_such_type")
    assert unknown.state is TaskState.QUEUED  # handed back: another worker may have the type
    assert "unknown task type 'no_such_type'" in (unknown.attempts[-1].error or "")
    for type_ in ("not_json", "async_not_json"):
        final = await run_one(client, store, keyspace, worker, type_)
        assert final.state is TaskState.FAILED
        assert "not JSON-serialisable" in (final.error or ""), final.error


async def test_async_timeout_cancels_the_coroutine(client, store, keyspace, make_worker):
    worker = await make_worker()
    final = await run_one(client, store, keyspace, worker, "sleep", {"seconds": 30}, timeout_s=0.3)
    assert final.state is TaskState.FAILED
    assert final.attempts[-1].outcome is Outcome.TIMEOUT
    assert "timed out after 0.3 s" in (final.error or "")
    assert worker.running == 0


async def test_failed_task_with_retries_goes_back_to_its_queue(client, store, keyspace, make_worker):
    worker = await make_worker()
    task = await client.submit("fail", {"message": "nope"}, retry=RetryPolicy(max_retries=2, backoff_s=0))
    # attempts 1 and 2 fail and re-queue; attempt 3 fails for good
    for attempt in (1, 2, 3):
        assigned = await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
        assert assigned is not None and len(assigned.attempts) == attempt
        current = await until(
            lambda: state_is_not(client, task.id, TaskState.RUNNING), within_s=10, what="the attempt's end"
        )
        expected = TaskState.QUEUED if attempt < 3 else TaskState.FAILED
        assert current.state is expected
        assert current.error == "RuntimeError: nope"
    assert [a.outcome for a in current.attempts] == [Outcome.FAILED] * 3


async def test_retry_with_backoff_waits_as_pending(client, store, keyspace, make_worker):
    worker = await make_worker()
    before = time.time()
    final_attempt = await client.submit("fail", retry=RetryPolicy(max_retries=1, backoff_s=30, jitter=0))
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    task = await until(
        lambda: state_is_not(client, final_attempt.id, TaskState.RUNNING),
        within_s=10,
        what="the attempt's end",
    )
    assert task.state is TaskState.PENDING
    assert task.not_before is not None and task.not_before >= before + 30
    delayed = await store.range(keyspace.delayed, prefix_end(keyspace.delayed))
    assert [kv.key for kv in delayed.kvs] == [keyspace.delayed_entry(task.not_before, task.id)]
    # not in the queue while it waits; a cancel removes the delayed key too
    assert (await store.range(keyspace.queues, prefix_end(keyspace.queues))).kvs == []
    await client.cancel(task.id)
    assert (await store.range(keyspace.delayed, prefix_end(keyspace.delayed))).kvs == []


async def test_concurrency_limit_is_never_exceeded(client, store, keyspace, make_worker):
    # Given a worker of concurrency 2 and six tasks assigned to it at once
    sample_tasks.PROBE.update(now=0, max=0)
    worker = await make_worker(concurrency=2)
    tasks = [await client.submit("probe", {"seconds": 0.3}) for _ in range(6)]
    for _ in tasks:
        await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())

    # Then the node record shows 2 running while they run ...
    async def node_shows_two_running() -> bool:
        kv, _ = await store.get(keyspace.node(worker.id))
        assert kv is not None
        assert worker.running <= 2
        return bool(codec.decode_obj(kv.key, kv.value)["running"] == 2)

    await until(node_shows_two_running, within_s=10, what="running == 2 in the node record")
    finals = [await client.wait(t.id, timeout_s=20) for t in tasks]
    # ... all succeed, and no more than 2 ever overlapped (observed by the tasks themselves)
    assert all(f.state is TaskState.SUCCEEDED for f in finals)
    assert sample_tasks.PROBE["max"] == 2


async def test_fencing_rejects_an_outcome_for_a_revoked_assignment(client, store, keyspace, make_worker):
    # Given a task assigned to a worker ...
    worker = await make_worker()
    task = await client.submit("sleep", {"seconds": 30})
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    kv, _ = await store.get(keyspace.assignment(worker.id, task.id))
    assert kv is not None
    record_kv, _ = await store.get(keyspace.task(task.id))
    stale = decode_assignment(keyspace, worker.id, kv, record_kv)
    assert stale is not None and stale.task.state is TaskState.RUNNING
    # ... whose assignment is deleted and re-created (the task was given out again)
    await store.delete(kv.key)
    # the worker stops the task when its assignment vanishes
    await until(lambda: worker.running == 0, within_s=10, what="the worker to stop the task")
    record_before, _ = await store.get(keyspace.task(task.id))
    # When the old attempt's outcome is written anyway (a zombie's late report)
    await worker._record(stale, Outcome.SUCCEEDED, {"late": True}, None, False)
    # Then it is rejected: the record is untouched
    record_after, _ = await store.get(keyspace.task(task.id))
    assert record_after == record_before
    # (as it was queued: an assignment writes no record, its running entry holds the attempt)
    assert codec.decode_task(record_after.key, record_after.value).state is TaskState.QUEUED


async def test_cancel_of_a_running_async_task(client, store, keyspace, make_worker):
    worker = await make_worker()
    task = await client.submit("sleep", {"seconds": 30})
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    await until(lambda: worker.running == 1, within_s=10, what="the task to start")
    await client.cancel(task.id)
    final = await client.wait(task.id, timeout_s=5)
    assert final.state is TaskState.CANCELLED
    await until(lambda: worker.running == 0, within_s=10, what="the worker to stop the task")
    # and the worker serves the next task
    assert (await run_one(client, store, keyspace, worker, "noop", 1)).result == 1


async def test_lease_loss_stops_tasks_writes_nothing_and_re_registers(client, store, keyspace, make_worker):
    worker = await make_worker(lease_ttl_s=2, heartbeat_s=0.3)
    old_lease = worker.lease_id
    task = await client.submit("sleep", {"seconds": 30})
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    await until(lambda: worker.running == 1, within_s=10, what="the task to start")
    running_record, _ = await store.get(keyspace.task(task.id))
    # When its lease is revoked behind its back (as if it had expired)
    await store.revoke(old_lease)

    # Then it stops the task without writing, and registers again under a new lease
    async def registered_again():
        kv, _ = await store.get(keyspace.node(worker.id))
        return kv if kv is not None and kv.lease not in (0, old_lease) else None

    kv = await until(registered_again, within_s=15, what="a node record under a new lease")
    assert kv.lease != old_lease
    assert worker.running == 0
    assert (await store.get(keyspace.task(task.id)))[0] == running_record
    # and it works under the new lease
    assert (await run_one(client, store, keyspace, worker, "noop", "again")).result == "again"


async def test_assignment_under_a_stale_lease_is_ignored(client, store, keyspace, make_worker):
    worker = await make_worker()
    task = await client.submit("noop")
    # An assignment written under some other lease (e.g. the worker's previous one)
    other_lease = await store.grant(5)
    await assign_next(store, keyspace, "default", worker.id, other_lease, time.time())
    # The watch delivers in revision order: once a later assignment (under the
    # worker's own lease) has run, the stale one has been seen, and ignored.
    later = await run_one(client, store, keyspace, worker, "noop", "later")
    assert later.state is TaskState.SUCCEEDED
    assert (await client.get(task.id)).state is TaskState.RUNNING
    await store.revoke(other_lease)


async def test_graceful_stop_hands_back_what_does_not_finish(client, store, keyspace, make_worker):
    # quick finishes well within the grace period, slow does not
    worker = await make_worker(grace_s=2.0)
    quick = await client.submit("sleep", {"seconds": 0.3})
    slow = await client.submit("sleep", {"seconds": 30})
    for _ in range(2):
        await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    await until(lambda: worker.running == 2, within_s=10, what="both tasks running")
    await worker.stop()
    assert (await client.get(quick.id)).state is TaskState.SUCCEEDED
    back = await client.get(slow.id)
    assert back.state is TaskState.QUEUED
    assert back.attempts[-1].outcome is Outcome.HANDED_BACK
    queue = await store.range(keyspace.queues, prefix_end(keyspace.queues))
    assert [kv.key for kv in queue.kvs] == [
        keyspace.queue_entry("default", back.priority, back.seq, back.id, back.route)
    ]
    # its node record is gone at once (lease revoked)
    assert (await store.get(keyspace.node(worker.id)))[0] is None


async def test_node_record_fields(store, keyspace, make_worker):
    worker = await make_worker(queues=("a", "b"), weight=2.5, tags={"zone": "x"}, concurrency=3)
    kv, _ = await store.get(keyspace.node(worker.id))
    assert kv is not None and kv.lease == worker.lease_id
    node = codec.decode_obj(kv.key, kv.value)
    for field in (
        "id",
        "host",
        "pid",
        "queues",
        "capacity",
        "running",
        "cpu",
        "memory",
        "weight",
        "tags",
        "version",
        "started_at",
    ):
        assert field in node
    assert node["queues"] == ["a", "b"]
    assert node["capacity"] == 3
    assert node["weight"] == 2.5
    assert node["tags"] == {"zone": "x"}
    assert "noop" in node["types"] and "add" in node["types"]


async def test_records_replace_only_through_fenced_transactions(client, store, keyspace, make_worker):
    """A cancel racing the worker's own result: exactly one of them wins, never both."""
    worker = await make_worker()
    for _ in range(20):
        task = await client.submit("noop")
        await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
        with contextlib.suppress(InvalidTransition):  # the worker may have finished first
            await client.cancel(task.id)
        final = await client.wait(task.id, timeout_s=5)
        assert final.state in (TaskState.SUCCEEDED, TaskState.CANCELLED)
        outcomes = [a.outcome for a in final.attempts]
        assert outcomes in ([Outcome.SUCCEEDED], [Outcome.CANCELLED])
        assert replace(final, attempts=()).state is final.state


async def test_an_assignment_written_by_an_older_version_still_runs(client, store, keyspace, make_worker):
    # Given an assignment as an older scheduler wrote it: the record rewritten running, and
    # the same running record as the assignment's value (its running entry without "rv")
    from tasklease import transitions
    from tasklease.store import Compare, Delete, Put

    worker = await make_worker()
    task = await client.submit("noop", {"blob": "x" * 4500})
    prefix = keyspace.queue("default")
    (qkv,) = (await store.range(prefix, prefix_end(prefix), limit=1)).kvs
    record_kv, _ = await store.get(keyspace.task(task.id))
    assert record_kv is not None
    now = time.time()
    running = transitions.running_record(codec.decode_task(record_kv.key, record_kv.value), worker.id, 1, now)
    data = codec.encode_task(running)
    entry = codec.encode_obj(
        {
            "worker": worker.id,
            "n": 1,
            "deadline": now + running.timeout_s,
            "t": running.timeout_s,
            "q": "default",
        }
    )
    result = await store.txn(
        [Compare.unchanged(qkv), Compare.unchanged(record_kv)],
        [
            Delete(qkv.key),
            Put(record_kv.key, data),
            Put(keyspace.assignment(worker.id, task.id), data, lease=worker.lease_id),
            Put(keyspace.running_entry(task.id), entry),
        ],
    )
    assert result.succeeded
    # When the (new) worker sees it, Then it runs it and records the outcome, fenced on the
    # assignment's revision, which is the record's
    final = await client.wait(task.id, timeout_s=10)
    assert final.state is TaskState.SUCCEEDED and final.result == {"blob": "x" * 4500}
    assert [(a.number, a.worker, a.outcome) for a in final.attempts] == [(1, worker.id, Outcome.SUCCEEDED)]
    for key in (keyspace.assignment(worker.id, task.id), keyspace.running_entry(task.id)):
        assert (await store.get(key))[0] is None


async def test_an_assignment_not_yet_delivered_at_stop_is_handed_back(client, store, keyspace, make_worker):
    # An assignment the scheduler made just before it saw the worker draining, which the
    # worker's watch has not delivered when it stops: read at stop and handed back at once,
    # not left behind (the lease's revocation would delete the assignment and leave the
    # task to the scheduler's recovery as a lost attempt).
    worker = await make_worker(worker_id="w-late", grace_s=5.0)
    held: list[object] = []
    accept = worker.execution.accept

    def hold_back(kv, record_kv=None) -> None:  # the watch's delivery, delayed past the stop
        if not worker.execution.draining:
            held.append(kv)
            return
        accept(kv, record_kv)

    worker.execution.accept = hold_back
    task = await client.submit("noop", {"pad": "x" * 4500}, retry=RetryPolicy(max_retries=3))
    assigned = await assign_next(store, keyspace, task.queue, worker.id, worker.lease_id, time.time())
    assert assigned is not None and assigned.id == task.id
    await until(lambda: bool(held), within_s=10, what="the assignment reaching the worker")
    await worker.stop()
    record = await client.get(task.id)
    assert record.state is TaskState.QUEUED
    assert [a.outcome for a in record.attempts] == [Outcome.HANDED_BACK]
    assert "shut down" not in (record.attempts[0].error or "x")  # never started: nothing to stop
