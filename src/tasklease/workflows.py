"""Workflows (W1): a DAG of tasks submitted at once, its status, and cancelling what is left of it.

Building. :class:`WorkflowBuilder` (``client.workflow(name=...)``) adds tasks
one at a time; each :meth:`~WorkflowBuilder.add` returns a :class:`Node`
whose id is known at once (ids are made here, client-side), and a node may
only come ``after`` nodes added before it, or tasks that already exist. So a
cycle cannot be built: the order of the calls is a topological order.
Chains, fan-out and fan-in (Celery's chain, group and chord) are
:meth:`~WorkflowBuilder.chain`, :meth:`~WorkflowBuilder.group` and
:meth:`~WorkflowBuilder.chord`. The JSON form (``tasklease workflow submit
FILE``, ``POST /api/workflows``) is read by :func:`builder_from_dict`.

Submitting (:meth:`WorkflowBuilder.submit`). Every task's record names the
workflow (``Task.workflow``); the workflow's record ``workflow/{id}`` (JSON:
name, creation time, the task ids in the order they were added) is written by
the first transaction. A workflow that fits one transaction (128 operations,
``MAX_TXN_BYTES``: 63 tasks of small payloads) is written all or nothing;
a larger one is written in several, in the order the tasks were added
(parents before children), and one that fails part-way raises
``BatchIncomplete`` naming the tasks that were written (those not written show
as ``missing`` in its status; the written ones run, since every parent of a
written task was written before it). Roots are queued, children waiting with
their deps keys: the leader releases them (release.py). Parents outside the
workflow are read first (unknown: ``TaskNotFound``, nothing written).

Status and cancel. :func:`read_status` reads the workflow's record and then its
tasks' records (transactions of 32 gets); :func:`cancel` cancels every task
that has not finished through the client's cancel (one read and one
transaction each, 16 at a time), the waiting ones included; the leader
cancels nothing more, since every descendant is cancelled too.

May import: codec, errors, finished, ids, inspector, keys, models, spec, store,
submitter, editor, transitions. Nothing imports it but client.py and sync.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tasklease import codec
from tasklease.editor import Editor
from tasklease.errors import (
    BatchIncomplete,
    CorruptRecord,
    InvalidOption,
    InvalidTransition,
    StoreError,
    StoreNoSpace,
    StoreUnavailable,
    TaskNotFound,
    WorkflowNotFound,
)
from tasklease.finished import read_kvs
from tasklease.ids import IdGenerator, parse_task_id
from tasklease.keys import Keyspace
from tasklease.models import DEFAULT_PRIORITY, DEFAULT_QUEUE, DEFAULT_TIMEOUT_S, JSON, Task, evolve
from tasklease.purge import explain_nospace
from tasklease.recovery import as_seen
from tasklease.retry import RetryPolicy
from tasklease.spec import TaskSpec, spec_from_dict
from tasklease.store import KV, MAX_TXN_BYTES, MAX_TXN_OPS, Compare, KVStore, Op, Put
from tasklease.submitter import Submitter, encode_queued, txn_cost

MAX_WORKFLOW_TASKS = 10_000
"""A workflow holds at most this many tasks (its record lists them all: ~30 bytes each)."""
MAX_NAME_CHARS = 200
WORKFLOW_VERSION = 1
# Tasks read per group of the status (32 per transaction; at most this many records held at once).
STATUS_GROUP = 256
# Cancels in flight at once when cancelling a workflow.
CANCELS_IN_FLIGHT = 16
_KEY_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True, slots=True)
class Node:
    """One task of a workflow being built (a handle to name as a later task's parent).

    Attributes:
        id: The task's id (made when it was added).
        spec: What it runs; its ``depends_on`` holds every parent.
        key: Its name in the JSON form of the workflow, if given.
    """

    id: str
    spec: TaskSpec
    key: str | None = None


Parent = Node | str
"""A parent: a node added before, or the id of a task that exists."""


@dataclass(frozen=True, slots=True)
class Workflow:
    """A submitted workflow.

    Attributes:
        id: Its id (the shape of a task id): ``client.workflow_status(id)``.
        name: Its name.
        tasks: Its tasks as written, in the order they were added (their
            states: queued, waiting, or pending, as each started).
        transactions: How many transactions wrote it (1: all or nothing).
        keys: The tasks' JSON-form keys (key -> task id), if they had any.
    """

    id: str
    name: str
    tasks: list[Task]
    transactions: int
    keys: dict[str, str]

    @property
    def task_ids(self) -> list[str]:
        """Its tasks' ids, in the order they were added (a topological order)."""
        return [t.id for t in self.tasks]

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``POST /api/workflows``, ``tasklease workflow submit --json``)."""
        return {
            "id": self.id,
            "name": self.name,
            "tasks": [{"id": t.id, "type": t.type, "state": t.state.value} for t in self.tasks],
            "keys": dict(self.keys),
            "transactions": self.transactions,
        }


class WorkflowBuilder:
    """Builds a DAG of tasks, then submits it (see the module docstring).

    Args:
        submitter: The client's submitter (ids, quotas, writes).
        name: The workflow's name (shown by its status; at most 200 characters).
        workflow_id: Its id (default: a new one).
    """

    def __init__(self, submitter: Submitter, *, name: str = "", workflow_id: str | None = None) -> None:
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise InvalidOption(f"a workflow name is printable text of at most {MAX_NAME_CHARS} characters")
        self._submitter = submitter
        self._ids: IdGenerator = submitter.ids
        self.name = name
        self.id = parse_task_id(workflow_id) if workflow_id is not None else self._ids.task_id()
        self.nodes: list[Node] = []
        self._by_id: dict[str, Node] = {}
        self._by_key: dict[str, Node] = {}

    def __len__(self) -> int:
        return len(self.nodes)

    def add(
        self,
        type: str,
        payload: JSON = None,
        *,
        after: Iterable[Parent] = (),
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        retention_s: float | None = None,
        requires: Mapping[str, str] | None = None,
        on_parent_failure: str = "cancel",
        key: str | None = None,
    ) -> Node:
        """Add a task that runs once every task of ``after`` succeeded (``on_parent_failure``: see TaskSpec).

        Returns:
            Its node (its id is known now), to name as a later task's parent.

        Raises:
            InvalidOption: A bad option, a parent that is not a node of this
                workflow added before, or more than 10,000 tasks.
        """
        spec = TaskSpec(
            type,
            payload,
            queue,
            priority,
            timeout_s,
            retry or RetryPolicy(),
            retention_s=retention_s,
            requires=requires,
            on_parent_failure=on_parent_failure,
        )
        return self.add_spec(spec, after=after, key=key)

    def add_spec(self, spec: TaskSpec, *, after: Iterable[Parent] = (), key: str | None = None) -> Node:
        """Add a task from a :class:`TaskSpec` (e.g. a registered function's ``.spec(...)``).

        Its parents are its own ``depends_on`` (tasks that exist) and ``after``.

        Raises:
            InvalidOption: As :meth:`add`, or its ``task_id`` is already in this workflow.
        """
        if len(self.nodes) >= MAX_WORKFLOW_TASKS:
            raise InvalidOption(f"a workflow holds at most {MAX_WORKFLOW_TASKS} tasks")
        if key is not None and (not isinstance(key, str) or not _KEY_RE.fullmatch(key)):
            raise InvalidOption(f"a task key is 1 to 64 characters of [A-Za-z0-9_.:-], got {key!r:.80}")
        if key is not None and key in self._by_key:
            raise InvalidOption(f"task key {key!r} is used twice in the workflow")
        parents = list(spec.depends_on or ())
        for parent in after:
            parents.append(self._parent_id(parent))
        task_id = spec.task_id or self._ids.task_id()
        if task_id in self._by_id:
            raise InvalidOption(f"task id {task_id} is used twice in the workflow")
        node = Node(task_id, replace(spec, task_id=task_id, depends_on=list(dict.fromkeys(parents))), key)
        self.nodes.append(node)
        self._by_id[task_id] = node
        if key is not None:
            self._by_key[key] = node
        return node

    def _parent_id(self, parent: Parent) -> str:
        if isinstance(parent, Node):
            if self._by_id.get(parent.id) is not parent:
                raise InvalidOption(f"task {parent.id} is not a task of this workflow added before")
            return parent.id
        if isinstance(parent, str):
            if parent in self._by_key:
                return self._by_key[parent].id
            return parse_task_id(parent)  # an existing task (checked at submit)
        raise InvalidOption(f"a parent is a node of this workflow or a task id, got {parent!r:.80}")

    def chain(self, specs: Iterable[TaskSpec], *, after: Iterable[Parent] = ()) -> list[Node]:
        """Add tasks that run one after the other (Celery's chain); the first after ``after``."""
        nodes: list[Node] = []
        previous: list[Parent] = list(after)
        for spec in specs:
            node = self.add_spec(spec, after=previous)
            nodes.append(node)
            previous = [node]
        return nodes

    def group(self, specs: Iterable[TaskSpec], *, after: Iterable[Parent] = ()) -> list[Node]:
        """Add tasks that run side by side, each after ``after`` (Celery's group; a fan-out)."""
        parents = list(after)
        return [self.add_spec(spec, after=parents) for spec in specs]

    def chord(
        self, specs: Iterable[TaskSpec], callback: TaskSpec, *, after: Iterable[Parent] = ()
    ) -> tuple[list[Node], Node]:
        """A group and a task that runs once all of it succeeded (Celery's chord; a fan-in).

        Returns:
            The group's nodes and the callback's node.
        """
        header = self.group(specs, after=after)
        return header, self.add_spec(callback, after=header)

    async def submit(self) -> Workflow:
        """Write the workflow (see the module docstring).

        Raises:
            InvalidOption: No task, or a task id already used.
            TaskNotFound: A parent outside the workflow does not exist (nothing written).
            QuotaExceeded: Over a quota (nothing written).
            BatchIncomplete: A later transaction failed after earlier ones were
                committed; its ``written`` lists the tasks that were.
            StoreError: etcd failed before anything was written.
        """
        if not self.nodes:
            raise InvalidOption("a workflow needs at least one task")
        sub = self._submitter
        retention = await sub.default_retention()
        tasks = [evolve(sub.new_task(n.spec, retention), workflow=self.id) for n in self.nodes]
        tasks = await sub.settle_parents(tasks, cancel=False)
        encoded = [encode_queued(t) for t in tasks]
        now = sub.clock.now()
        record = codec.encode_obj(
            {"v": WORKFLOW_VERSION, "name": self.name, "created_at": now, "tasks": [t.id for t in tasks]}
        )
        items = list(zip(tasks, encoded, strict=True))
        await sub.quotas.admit(items)
        try:
            sub.register_queues({t.queue for t in tasks})
            transactions = await _write(sub, self.id, record, items)
        except StoreNoSpace as exc:
            raise explain_nospace(exc, "the workflow was") from exc
        finally:
            sub.quotas.abandon([t.id for t in tasks])
        keys = {n.key: n.id for n in self.nodes if n.key is not None}
        return Workflow(self.id, self.name, tasks, transactions, keys)


Item = tuple[Task, bytes]


def chunks(items: Sequence[Item], record_bytes: int) -> list[list[Item]]:
    """Cut a workflow's tasks, in order, into transactions; the first carries its record too.

    Each transaction holds at most 64 tasks (63 in the first: the record is
    one more operation) and ``MAX_TXN_BYTES``. If the record and the first
    task do not fit together, the first transaction holds the record alone.
    """
    per_txn = MAX_TXN_OPS // 2
    result: list[list[Item]] = []
    current: list[Item] = []
    size = record_bytes + 200
    for task, data in items:
        cost = txn_cost(task, data)
        most = per_txn - 1 if not result else per_txn
        if (current or not result) and (len(current) >= most or size + cost > MAX_TXN_BYTES):
            result.append(current)  # the first may be empty: the record alone
            current, size = [], 0
        current.append((task, data))
        size += cost
    result.append(current)
    return result


async def _write(sub: Submitter, workflow_id: str, record: bytes, items: list[Item]) -> int:
    """Write the record and the tasks in :func:`chunks`; how many transactions it took."""
    keys = sub.keys
    workflow_key = keys.workflow(workflow_id)
    parts = chunks(items, len(record) + len(workflow_key))
    written: list[Task] = []
    for n, part in enumerate(parts):
        compares: list[Compare] = []
        ops: list[Op] = []
        if n == 0:
            compares.append(Compare.absent(workflow_key))
            ops.append(Put(workflow_key, record))
        for task, data in part:
            compare, task_ops = sub.submit_ops(task, data)
            compares.append(compare)
            ops.extend(task_ops)
        try:
            result = await sub.store.txn(compares, ops)
        except StoreUnavailable as exc:
            # The answer was lost: the transaction may have landed (its first key tells).
            check_key, check_value = (
                (workflow_key, record) if n == 0 else (keys.task(part[0][0].id), part[0][1])
            )
            revision = await _stored(sub.store, check_key, check_value)
            if revision is None:
                if written:
                    raise BatchIncomplete(written, str(exc)) from exc
                raise
        except StoreError as exc:
            if written:
                raise BatchIncomplete(written, str(exc)) from exc
            raise
        else:
            if not result.succeeded:
                reason = f"workflow id {workflow_id} or a task id in it is already used"
                if written:
                    raise BatchIncomplete(written, reason)
                raise InvalidOption(reason)
            revision = result.revision
        for task, _ in part:
            sub.stored(task, revision)
            written.append(task)
    return len(parts)


async def _stored(store: KVStore, key: str, value: bytes) -> int | None:
    """The revision that wrote exactly ``value`` at ``key``, if it is there (None also if the read fails)."""
    try:
        kv, _ = await store.get(key)
    except StoreUnavailable:
        return None
    return kv.mod_revision if kv is not None and kv.value == value else None


# the JSON form ---------------------------------------------------------------------------------
NODE_KEYS = {"key", "after"}
MAX_AFTER = 1000


def builder_from_dict(submitter: Submitter, body: object) -> WorkflowBuilder:
    """A builder from the JSON form of a workflow (a file, or ``POST /api/workflows``).

    The form::

        {"name": "etl", "tasks": [
            {"key": "extract", "type": "fetch", "payload": {"url": "..."}},
            {"key": "load", "type": "store", "after": ["extract"], "on_parent_failure": "cancel"}
        ]}

    Each task is a task object of the REST API (``spec_from_dict``) plus
    ``key`` (its name here) and ``after`` (keys of tasks listed before it, or
    ids of tasks that exist).

    Raises:
        InvalidOption: Not of this form (one line naming the task and the field).
    """
    if not isinstance(body, Mapping):
        raise InvalidOption("a workflow must be a JSON object with a list of tasks")
    unknown = sorted(str(k) for k in body if k not in ("name", "tasks", "id"))
    if unknown:
        raise InvalidOption(f"unknown workflow field(s): {', '.join(unknown)}"[:200])
    name = body.get("name", "")
    if name is None:
        name = ""
    if not isinstance(name, str):
        raise InvalidOption("name must be a string")
    given_id = body.get("id")
    if given_id is not None and not isinstance(given_id, str):
        raise InvalidOption("id must be a workflow id (a task id's shape)")
    items = body.get("tasks")
    if not isinstance(items, list) or not items:
        raise InvalidOption("tasks must be a non-empty list of task objects")
    if len(items) > MAX_WORKFLOW_TASKS:
        raise InvalidOption(f"a workflow holds at most {MAX_WORKFLOW_TASKS} tasks, got {len(items)}")
    builder = WorkflowBuilder(submitter, name=name, workflow_id=given_id)
    for i, item in enumerate(items):
        where = f"tasks[{i}]: "
        if not isinstance(item, Mapping):
            raise InvalidOption(f"{where}a task must be a JSON object")
        after = item.get("after") or []
        if (
            not isinstance(after, list)
            or not all(isinstance(a, str) for a in after)
            or len(after) > MAX_AFTER
        ):
            raise InvalidOption(f"{where}after must be a list of task keys or ids (at most {MAX_AFTER})")
        key = item.get("key")
        try:
            spec = spec_from_dict({k: v for k, v in item.items() if k not in NODE_KEYS})
            builder.add_spec(spec, after=after, key=key if key is None else str(key))
        except (InvalidOption, TaskNotFound) as exc:
            raise InvalidOption(f"{where}{exc}"[:300]) from None
    return builder


# status ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkflowTask:
    """One task of a workflow as its status shows it (no payload, no result).

    Attributes:
        id: The task.
        state: Its state's name, or ``"missing"``: its record is gone (expired,
            purged) or was never written (a workflow written in part).
        type: Its type (None if missing).
        queue: Its queue (None if missing).
        parents: Its parents (``depends_on``).
        error: The start of its error (500 characters), if any.
        updated_at: When it last changed (None if missing).
    """

    id: str
    state: str
    type: str | None = None
    queue: str | None = None
    parents: tuple[str, ...] = ()
    error: str | None = None
    updated_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "id": self.id,
            "state": self.state,
            "type": self.type,
            "queue": self.queue,
            "parents": list(self.parents),
            "error": self.error,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A workflow and the state of each of its tasks.

    Attributes:
        id: The workflow.
        name: Its name.
        created_at: When it was submitted.
        tasks: Its tasks in the order they were added (a topological order).
    """

    id: str
    name: str
    created_at: float
    tasks: list[WorkflowTask]

    @property
    def states(self) -> dict[str, int]:
        """Tasks per state (``missing`` included when some are)."""
        return dict(Counter(t.state for t in self.tasks))

    @property
    def finished(self) -> bool:
        """Whether no task is left to run (each finished or missing)."""
        return all(t.state in FINISHED_OR_MISSING for t in self.tasks)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``GET /api/workflows/{id}``, ``tasklease workflow status --json``)."""
        return {
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at,
            "finished": self.finished,
            "states": self.states,
            "tasks": [t.as_dict() for t in self.tasks],
        }


FINISHED_OR_MISSING = frozenset({"succeeded", "failed", "cancelled", "missing"})


def _summary(task_id: str, task: Task | None) -> WorkflowTask:
    if task is None:
        return WorkflowTask(task_id, "missing")
    return WorkflowTask(
        task.id,
        task.state.value,
        task.type,
        task.queue,
        task.depends_on,
        task.error[: codec.SUMMARY_ERROR_CHARS] if task.error else None,
        task.updated_at,
    )


async def read_record(store: KVStore, keys: Keyspace, given: str) -> tuple[str, dict[str, Any]]:
    """The workflow ``given`` names (a workflow id, or the id of one of its tasks) and its record.

    Returns:
        ``(workflow id, its record)``.

    Raises:
        WorkflowNotFound: Neither (or a task in no workflow).
        CorruptRecord: Its record cannot be read.
    """
    workflow_id = parse_task_id(given)
    kv, _ = await store.get(keys.workflow(workflow_id))
    if kv is None:
        task_kv, _ = await store.get(keys.task(workflow_id))
        if task_kv is not None:
            task = codec.decode_task(task_kv.key, task_kv.value)
            if task.workflow is not None:
                workflow_id = task.workflow
                kv, _ = await store.get(keys.workflow(workflow_id))
    if kv is None:
        raise WorkflowNotFound(given)
    record = codec.decode_obj(kv.key, kv.value)
    ids = record.get("tasks")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise CorruptRecord(kv.key, "workflow record without its list of tasks")
    return workflow_id, record


async def read_status(store: KVStore, keys: Keyspace, given: str) -> WorkflowStatus:
    """The status of the workflow ``given`` names (see :func:`read_record`).

    Costs 1-3 ranges, then 1 transaction of gets per 32 tasks (records are
    held a group of 256 at a time, only their summaries kept).
    """
    workflow_id, record = await read_record(store, keys, given)
    ids: list[str] = record["tasks"]
    found: list[WorkflowTask] = []
    for start in range(0, len(ids), STATUS_GROUP):
        group = ids[start : start + STATUS_GROUP]
        kvs = await read_kvs(store, keys, group)
        decoded: dict[str, tuple[KV, Task] | None] = {}
        for task_id in group:
            kv = kvs.get(task_id)
            if kv is None:
                decoded[task_id] = None
                continue
            try:
                decoded[task_id] = (kv, codec.decode_task(kv.key, kv.value))
            except CorruptRecord:
                continue
        read = [pair for pair in decoded.values() if pair is not None]
        # as readers see them: a queued record whose task runs is running
        seen = {t.id: t for t in await as_seen(store, keys, read)}
        for task_id in group:
            if task_id not in decoded:
                found.append(WorkflowTask(task_id, "corrupt"))
                continue
            found.append(_summary(task_id, seen.get(task_id)))
    name = record.get("name")
    created = record.get("created_at")
    return WorkflowStatus(
        workflow_id,
        name if isinstance(name, str) else "",
        float(created) if isinstance(created, int | float) else 0.0,
        found,
    )


async def cancel(
    store: KVStore, keys: Keyspace, editor: Editor, given: str, reason: str
) -> tuple[str, list[Task]]:
    """Cancel every task of the workflow ``given`` names that has not finished (waiting ones too).

    Leaves first (the reverse of the order they were added), 16 at a time,
    each by the client's cancel (1 read + 1 transaction, retried on a race).
    A task that finished meanwhile (or whose record is gone) is left as it is.

    Returns:
        The workflow's id and the tasks this call cancelled.
    """
    status = await read_status(store, keys, given)
    todo = [t.id for t in reversed(status.tasks) if t.state not in FINISHED_OR_MISSING]
    cancelled: list[Task] = []
    gate = asyncio.Semaphore(CANCELS_IN_FLIGHT)

    async def one(task_id: str) -> None:
        async with gate:
            # finished meanwhile (the leader's cascade, or its own end), or gone: left as it is
            with contextlib.suppress(InvalidTransition, TaskNotFound):
                cancelled.append(await editor.cancel(task_id, reason))

    await asyncio.gather(*(one(t) for t in todo))
    return status.id, cancelled
