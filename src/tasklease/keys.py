"""Every etcd key tasklease uses is built here; this docstring is the schema.

All keys live under ``/{namespace}/`` (default ``tasklease``), so several
deployments can share one etcd. ``{id}`` is a task id (26 characters, Crockford
base32, sortable by creation time); ``{queue}`` matches ``[A-Za-z0-9_.-]{1,64}``.

=====================================  ==============================  ==============  =========
key                                    value                           written by      lease
=====================================  ==============================  ==============  =========
``/{ns}/task/{id}``                    task record (JSON, codec.py)    client,         none
                                                                       scheduler,
                                                                       worker
``/{ns}/queue/{queue}/{band}/{seq}/    the queued task record (same    client,         none
{id}/{route}``                         bytes and mod revision as       scheduler,
                                       ``task/{id}``)                  worker
``/{ns}/node/{worker}``                node record (JSON)              worker          worker's
``/{ns}/assign/{worker}/{id}``         the running task record as the  scheduler       worker's
                                       assignment wrote it
``/{ns}/running/{id}``                 JSON: worker, attempt ``n``,    with the        none
                                       ``deadline``, timeout ``t``     assignment
``/{ns}/delayed/{due}/{id}``           JSON: id, queue ``q``, record   client,         none
                                       size ``n`` (a pending task: a   worker,
                                       delayed submit or a retry       scheduler
                                       backoff; older: the bare id)
``/{ns}/leader``                       the leading scheduler's id      scheduler       leader's
``/{ns}/scheduler/{id}``               a scheduler's registration      scheduler       scheduler's
                                       (JSON: host, pid, ttl,          (election)
                                       instance): one live process
                                       per scheduler id
``/{ns}/retention/{r}/{bucket}``       id of the lease that finished   whoever         itself
                                       records of retention r seconds  finishes a
                                       in this time bucket are under   task first in
                                                                       the bucket
``/{ns}/paused/{queue}``               JSON: when and why the queue    client          none
                                       was paused (the scheduler       (``tasklease
                                       assigns nothing from it)        pause``)
``/{ns}/queues/{queue}``               empty: the queue registry (a    client, with    none
                                       queue's name, once it had a     its first
                                       task)                           submit to it
``/{ns}/drain/{worker}``               JSON: when a drain was asked    client          worker's
                                       (the worker stops as on         (``tasklease
                                       SIGTERM)                        drain``)
``/{ns}/terminal/{state}/{queue}/      JSON: the finished task's       whoever         the
{inv}/{id}``                           type and error (the finished    finishes the    record's
                                       index, newest first)            task            retention
``/{ns}/deps/{queue}/{id}``            JSON: the parents a waiting     client (submit  none
                                       task waits for, its queue       with parents),
                                       (``q``) and ``on_parent_        scheduler
                                       failure`` (``p``)               (release)
``/{ns}/expiring/{due}/{id}``          JSON: id, queue ``q``, record   client,         none
                                       size ``n`` (a task with an      scheduler
                                       expiry, until it expires or
                                       its key is dropped when due)
``/{ns}/cron/{name}``                  a cron schedule (JSON,          client, leader  none
                                       schedules.py): its definition   (each fired
                                       and the last tick fired         tick)
``/{ns}/limit/{kind}/{name}``          JSON: rate, burst, concurrency  client          none
                                       of a task type or queue         (``tasklease
                                       (limits.py)                     limit set``)
``/{ns}/unique/{sha256}``              JSON: the task holding an       client (in the  the record's
                                       idempotency key                 submit), whoever retention (or
                                                                       finishes it     unique_for)
``/{ns}/workflow/{id}``                JSON: a workflow's tasks        client (DAG     none
                                       (workflows.py)                  submit)
``/{ns}/settings/quota``               the namespace's quota (JSON,    an admin        none
                                       quotas.py): most waiting tasks, (``tasklease
                                       bytes of waiting records, most  quota set``);
                                       retention                       read and
                                                                       watched by
                                                                       clients
=====================================  ==============================  ==============  =========

Queue order. ``band`` is ``3 - priority`` as one digit, so priority 3 (urgent)
sorts first; ``seq`` is a 20-digit zero-padded monotonic sequence (microseconds
of a hybrid clock that never goes backwards in one process, see ``ids.py``).
A plain ascending range read of ``/{ns}/queue/{queue}/`` therefore returns the
next task first: higher priority before lower, FIFO within a priority.
``route`` is the task's type and required tags (routing.py), so the scheduler
knows which workers may run a queued task from its key alone.

The assignment key is the fencing token of an attempt: its create revision is
compared by every write the worker makes about that attempt, and it lives under
the worker's lease, so it vanishes when the worker does. ``running/{id}`` is
the lease-less index that lets recovery find what a vanished worker held.

``scheduler/{id}`` is created only if absent, under the lease the scheduler
campaigns with, so a second live process with the same id is refused (see
election.py). It sorts after ``running/`` and before ``task/``: outside the
range the leading scheduler mirrors and outside the task records.

The leading scheduler mirrors exactly :attr:`Keyspace.scheduler_prefixes`:
``assign/``, ``cron/``, ``delayed/``, ``deps/``, ``expiring/``, ``limit/``,
``node/``, ``paused/``, ``queue/`` and ``running/`` (``cron/``, ``deps/``,
``expiring/`` and ``limit/`` as plain key -> KV maps, :attr:`Keyspace.plain_prefixes`,
which the leader's parts read and subscribe to: ``Mirror.subscribe``). It reads and
watches them as one range, :attr:`Keyspace.scheduler_range` (``[assign/,
running/~)``: one watch stream), so it also receives the keys that sort inside
that range under other names (``drain/``, ``leader``, ``retention/``, and any prefix added
later between ``assign/`` and ``running/``);
its mirror (``ClusterView.apply``) ignores every key outside those prefixes.
A new prefix the scheduler must see is added to ``scheduler_prefixes``.

The finished index. Every transaction that writes a finished record
(succeeded, failed, cancelled) also writes ``terminal/{state}/{queue}/{inv}/{id}``
under the same retention lease, so the entry lives exactly as long as the
record. ``inv`` is ``10**20 - 1 - finished_us`` (20 digits): an ascending read
lists the newest first. Listing failed tasks newest first, or counting finished
tasks per state and queue (``count_only``), reads only this index. It sorts
after ``task/``: outside the leading scheduler's range and the dashboard's feed.

The queue registry (``queues/{queue}``) lets the readers that count or list per
queue (overview.py, finished.py) name the queues without a scan: etcd 3.5
walks every key of a range even to return one, so finding queue names by
reading "the next key" of the indexes would cost as much as counting them. A
client puts the key (one put, no transaction) with its first submit to a
queue, beside the submit (in the background, never in its transaction); nothing
deletes it.

``paused/`` sorts between ``node/`` and ``queue/``, inside the scheduler's range
(it is one of :attr:`Keyspace.scheduler_prefixes`): the leader sees a pause by
its watch. ``drain/{worker}`` is written under the worker's own lease (it
vanishes with the worker) and watched by that worker only; it sorts inside the
scheduler's range, which ignores it.

Parsing. Every key kind built here has its parser here (``task_id_of``,
``parse_queue_entry``, ``parse_node``, ``parse_assignment``, ``parse_running``,
``parse_delayed``, ``parse_scheduler``, ``parse_retention``, ``parse_finished``,
``parse_paused``, ``parse_drain``, ``parse_known_queue``). Each raises
``ValueError`` for a key that is not of its kind: another prefix, or the wrong
number of parts, an empty part, or a number part that is not digits.
``settings/quota`` sorts after ``scheduler/`` and before ``task/``, outside the
leading scheduler's range too: a quota change wakes no scheduler. Clients read
it once and then watch it (one watch stream per client, started by the first
submit).
See docs/architecture.md for every transaction and its compares.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from tasklease.errors import InvalidOption, InvalidQueueName

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SEQ_DIGITS = 20
MAX_PRIORITY = 3


def check_name(name: str, what: str = "queue") -> str:
    """Validate a queue (or namespace, or worker) name.

    Args:
        name: The name to check.
        what: What the name is, for the error message.

    Returns:
        The name unchanged.

    Raises:
        InvalidQueueName: For a queue name outside ``[A-Za-z0-9_.-]{1,64}``.
        InvalidOption: For any other kind of name that does not match.
    """
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None or name in {".", ".."}:
        message = f"invalid {what} name {name!r}: use 1 to 64 characters from [A-Za-z0-9_.-]"
        if what == "queue":
            raise InvalidQueueName(message)
        raise InvalidOption(message)
    return name


def prefix_end(prefix: str) -> str:
    """Return the exclusive end of the range of keys that start with ``prefix``.

    Our keys are ASCII, and every prefix we range over ends with ``/``, so
    bumping the last character is enough.
    """
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True, slots=True)
class QueueKey:
    """The parts of a queue key."""

    queue: str
    priority: int
    seq: int
    task_id: str
    route: str | None = None
    """The task's route (type and required tags, routing.py); None in keys of older versions."""


class FinishedKey(NamedTuple):
    """The parts of a finished-index key."""

    state: str
    queue: str
    finished_us: int
    """When the task finished, in microseconds since the epoch."""
    task_id: str

    @property
    def finished_at(self) -> float:
        """When the task finished, in seconds since the epoch."""
        return self.finished_us / 1_000_000


INV_MAX: int = int("9" * SEQ_DIGITS)


def inverted_us(at: float) -> int:
    """``at`` (epoch seconds) as the finished index's inverted time: newer sorts first."""
    micros: int = min(INV_MAX, max(0, int(at * 1_000_000)))
    return INV_MAX - micros


class DelayedKey(NamedTuple):
    """The parts of a delayed key."""

    due_us: int
    """When the task may run again, in microseconds since the epoch."""
    task_id: str

    @property
    def not_before(self) -> float:
        """When the task may run again, in seconds since the epoch."""
        return self.due_us / 1_000_000


def _digits(text: str, key: str) -> int:
    """A number part of a key: ASCII digits only (``int()`` would also take ``+1``, `` 1``, ``1_0``)."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"not a number in key {key}: {text!r}")
    return int(text)


@dataclass(frozen=True)
class Keyspace:
    """Builds and parses the keys of one namespace.

    Args:
        namespace: The deployment's namespace (``[A-Za-z0-9_.-]{1,64}``).
    """

    namespace: str = "tasklease"

    def __post_init__(self) -> None:
        check_name(self.namespace, "namespace")

    @cached_property
    def root(self) -> str:
        """The prefix of every key of this namespace."""
        return f"/{self.namespace}/"

    # tasks ------------------------------------------------------------------
    @cached_property
    def tasks(self) -> str:
        """Prefix of all task records."""
        return f"{self.root}task/"

    def task(self, task_id: str) -> str:
        """Key of one task record."""
        return f"{self.tasks}{task_id}"

    def task_id_of(self, key: str) -> str:
        """Task id from a task record key.

        Raises:
            ValueError: If the key is not a task record key of this namespace.
        """
        return self._one_part(key, self.tasks, "task")

    def _one_part(self, key: str, prefix: str, what: str) -> str:
        """The rest of ``key`` after ``prefix``: one non-empty part (no ``/``)."""
        if not key.startswith(prefix):
            raise ValueError(f"not a {what} key: {key}")
        rest = key[len(prefix) :]
        if not rest or "/" in rest:
            raise ValueError(f"malformed {what} key: {key}")
        return rest

    def _two_parts(self, key: str, prefix: str, what: str) -> tuple[str, str]:
        """The rest of ``key`` after ``prefix``: two non-empty parts split at ``/``."""
        if not key.startswith(prefix):
            raise ValueError(f"not a {what} key: {key}")
        first, sep, second = key[len(prefix) :].partition("/")
        if not sep or not first or not second or "/" in second:
            raise ValueError(f"malformed {what} key: {key}")
        return first, second

    # queues -----------------------------------------------------------------
    @cached_property
    def queues(self) -> str:
        """Prefix of every queue."""
        return f"{self.root}queue/"

    def queue(self, queue: str) -> str:
        """Prefix of one queue; ascending order is dequeue order."""
        return f"{self.queues}{check_name(queue)}/"

    def queue_band(self, queue: str, priority: int) -> str:
        """Prefix of one priority band of one queue."""
        return f"{self.queue(queue)}{MAX_PRIORITY - priority}/"

    def queue_entry(self, queue: str, priority: int, seq: int, task_id: str, route: str = "") -> str:
        """Key of one queued task; ``route`` (routing.route) is its last part."""
        if isinstance(priority, bool) or not 0 <= priority <= MAX_PRIORITY:
            raise InvalidOption(f"priority {priority} outside 0..{MAX_PRIORITY}")
        if not 0 <= seq < 10**SEQ_DIGITS:
            raise InvalidOption(f"sequence {seq} out of range")
        key = f"{self.queue_band(queue, priority)}{seq:0{SEQ_DIGITS}d}/{task_id}"
        return f"{key}/{route}" if route else key

    def parse_queue_entry(self, key: str) -> QueueKey:
        """Split a queue key into its parts.

        Raises:
            ValueError: If the key is not a queue key of this namespace.
        """
        if not key.startswith(self.queues):
            raise ValueError(f"not a queue key: {key}")
        parts = key[len(self.queues) :].split("/")
        if len(parts) == 4:  # written by a version without routes
            queue, band, seq, task_id = parts
            return QueueKey(queue, MAX_PRIORITY - _digits(band, key), _digits(seq, key), task_id)
        if len(parts) != 5:
            raise ValueError(f"malformed queue key: {key}")
        queue, band, seq, task_id, route = parts
        if not route:
            raise ValueError(f"empty route in queue key: {key}")
        return QueueKey(queue, MAX_PRIORITY - _digits(band, key), _digits(seq, key), task_id, route)

    def parse_queue_group(self, key: str) -> tuple[str, str]:
        """The queue and the route of a queue key, without the numbers (cheap: for bulk loads).

        Returns:
            ``(queue, route)``; route ``""`` for a key of a version without routes.

        Raises:
            ValueError: If the key is not under the queue prefix, or has the
                wrong number of parts or an empty route. (Its numbers are not
                checked: :meth:`parse_queue_entry` does that.)
        """
        if not key.startswith(self.queues):
            raise ValueError(f"not a queue key: {key}")
        parts = key[len(self.queues) :].split("/")
        if len(parts) == 5 and parts[4]:
            return parts[0], parts[4]
        if len(parts) == 4:
            return parts[0], ""
        raise ValueError(f"malformed queue key: {key}")

    @cached_property
    def known_queues(self) -> str:
        """Prefix of the queue registry (a queue's name once it had a task)."""
        return f"{self.root}queues/"

    def known_queue(self, queue: str) -> str:
        """Registry key of one queue."""
        return f"{self.known_queues}{check_name(queue)}"

    def parse_known_queue(self, key: str) -> str:
        """Queue name from a registry key.

        Raises:
            ValueError: If the key is not a registry key of this namespace.
        """
        return self._one_part(key, self.known_queues, "queue registry")

    # workers ----------------------------------------------------------------
    @cached_property
    def nodes(self) -> str:
        """Prefix of live worker records (each under its worker's lease)."""
        return f"{self.root}node/"

    def node(self, worker_id: str) -> str:
        """Key of one worker's record."""
        return f"{self.nodes}{worker_id}"

    def parse_node(self, key: str) -> str:
        """Worker id from a node key.

        Raises:
            ValueError: If the key is not a node key of this namespace.
        """
        return self._one_part(key, self.nodes, "node")

    @cached_property
    def assignments(self) -> str:
        """Prefix of every assignment."""
        return f"{self.root}assign/"

    def worker_assignments(self, worker_id: str) -> str:
        """Prefix one worker watches for its work."""
        return f"{self.assignments}{worker_id}/"

    def assignment(self, worker_id: str, task_id: str) -> str:
        """Key of one assignment (the attempt's fencing token)."""
        return f"{self.worker_assignments(worker_id)}{task_id}"

    def parse_assignment(self, key: str) -> tuple[str, str]:
        """Worker id and task id from an assignment key.

        Returns:
            ``(worker_id, task_id)``.

        Raises:
            ValueError: If the key is not an assignment key of this namespace.
        """
        return self._two_parts(key, self.assignments, "assignment")

    @cached_property
    def running(self) -> str:
        """Prefix of the index of assigned tasks (no lease)."""
        return f"{self.root}running/"

    def running_entry(self, task_id: str) -> str:
        """Key of one entry of the running index."""
        return f"{self.running}{task_id}"

    def parse_running(self, key: str) -> str:
        """Task id from a running-index key.

        Raises:
            ValueError: If the key is not a running-index key of this namespace.
        """
        return self._one_part(key, self.running, "running")

    @cached_property
    def leader(self) -> str:
        """The election key: who leads; its create revision is the fencing token."""
        return f"{self.root}leader"

    @cached_property
    def schedulers(self) -> str:
        """Prefix of scheduler registrations (each under its scheduler's lease)."""
        return f"{self.root}scheduler/"

    def scheduler(self, scheduler_id: str) -> str:
        """Key registering one live scheduler process under its id (created only if absent)."""
        return f"{self.schedulers}{check_name(scheduler_id, 'scheduler')}"

    def parse_scheduler(self, key: str) -> str:
        """Scheduler id from a scheduler registration key.

        Raises:
            ValueError: If the key is not a scheduler registration key of this namespace.
        """
        return self._one_part(key, self.schedulers, "scheduler")

    @cached_property
    def retentions(self) -> str:
        """Prefix of the retention lease keys."""
        return f"{self.root}retention/"

    def retention(self, retention_s: int, bucket: int) -> str:
        """Key holding the id of the shared retention lease of one time bucket."""
        return f"{self.retentions}{retention_s}/{bucket}"

    def parse_retention(self, key: str) -> tuple[int, int]:
        """Retention (seconds) and time bucket from a retention lease key.

        Returns:
            ``(retention_s, bucket)``.

        Raises:
            ValueError: If the key is not a retention lease key of this namespace.
        """
        retention_s, bucket = self._two_parts(key, self.retentions, "retention")
        return _digits(retention_s, key), _digits(bucket, key)

    @cached_property
    def quota(self) -> str:
        """Key of the namespace's quota record (written by an admin, watched by clients)."""
        return f"{self.root}settings/quota"

    @cached_property
    def delayed(self) -> str:
        """Prefix of pending tasks waiting for a retry backoff, soonest first."""
        return f"{self.root}delayed/"

    def delayed_entry(self, not_before: float, task_id: str) -> str:
        """Key of one waiting task; ``due`` is microseconds since the epoch, 20 digits."""
        due_us = max(0, int(not_before * 1_000_000))
        return f"{self.delayed}{due_us:0{SEQ_DIGITS}d}/{task_id}"

    def parse_delayed(self, key: str) -> DelayedKey:
        """When a delayed task may run again, and its id, from a delayed key.

        Raises:
            ValueError: If the key is not a delayed key of this namespace.
        """
        due, task_id = self._two_parts(key, self.delayed, "delayed")
        return DelayedKey(_digits(due, key), task_id)

    # the finished index --------------------------------------------------------------------
    @cached_property
    def finished(self) -> str:
        """Prefix of the finished index (see the module docstring)."""
        return f"{self.root}terminal/"

    def finished_state(self, state: str) -> str:
        """Prefix of the finished tasks of one state (``succeeded``, ``failed``, ``cancelled``)."""
        return f"{self.finished}{state}/"

    def finished_queue(self, state: str, queue: str) -> str:
        """Prefix of the finished tasks of one state and queue, newest first."""
        return f"{self.finished_state(state)}{check_name(queue)}/"

    def finished_entry(self, state: str, queue: str, finished_at: float, task_id: str) -> str:
        """Key of one finished task in the index."""
        return f"{self.finished_queue(state, queue)}{inverted_us(finished_at):0{SEQ_DIGITS}d}/{task_id}"

    def parse_finished(self, key: str) -> FinishedKey:
        """State, queue, finish time and id from a finished-index key.

        Raises:
            ValueError: If the key is not a finished-index key of this namespace.
        """
        if not key.startswith(self.finished):
            raise ValueError(f"not a finished-index key: {key}")
        parts = key[len(self.finished) :].split("/")
        if len(parts) != 4 or not all(parts):
            raise ValueError(f"malformed finished-index key: {key}")
        state, queue, inv, task_id = parts
        return FinishedKey(state, queue, INV_MAX - _digits(inv, key), task_id)

    # operator controls -------------------------------------------------------------------
    @cached_property
    def pauses(self) -> str:
        """Prefix of the paused queues."""
        return f"{self.root}paused/"

    def paused(self, queue: str) -> str:
        """Key that pauses one queue while it exists."""
        return f"{self.pauses}{check_name(queue)}"

    def parse_paused(self, key: str) -> str:
        """Queue name from a pause key.

        Raises:
            ValueError: If the key is not a pause key of this namespace.
        """
        return self._one_part(key, self.pauses, "paused")

    @cached_property
    def drains(self) -> str:
        """Prefix of drain requests."""
        return f"{self.root}drain/"

    def drain(self, worker_id: str) -> str:
        """Key asking one worker to drain (under that worker's lease)."""
        return f"{self.drains}{worker_id}"

    def parse_drain(self, key: str) -> str:
        """Worker id from a drain key.

        Raises:
            ValueError: If the key is not a drain key of this namespace.
        """
        return self._one_part(key, self.drains, "drain")

    # workflows: dependencies, expiry, schedules, limits, idempotency -----------------------
    @cached_property
    def deps(self) -> str:
        """Prefix of the tasks waiting for their parents (``deps/{queue}/{child}``)."""
        return f"{self.root}deps/"

    def deps_queue(self, queue: str) -> str:
        """Prefix of the tasks of one queue waiting for their parents (counted per queue)."""
        return f"{self.deps}{check_name(queue)}/"

    def deps_entry(self, queue: str, task_id: str) -> str:
        """Key of one waiting task: its value names its parents (transitions.deps_value)."""
        return f"{self.deps_queue(queue)}{task_id}"

    def parse_deps(self, key: str) -> tuple[str, str]:
        """Queue and task id from a deps key.

        Returns:
            ``(queue, task_id)``.

        Raises:
            ValueError: If the key is not a deps key of this namespace.
        """
        return self._two_parts(key, self.deps, "deps")

    @cached_property
    def expiring(self) -> str:
        """Prefix of the tasks that expire if not started in time, soonest first."""
        return f"{self.root}expiring/"

    def expiring_entry(self, expires_at: float, task_id: str) -> str:
        """Key of one task with an expiry; ``expires_at`` in microseconds, 20 digits."""
        due_us = max(0, int(expires_at * 1_000_000))
        return f"{self.expiring}{due_us:0{SEQ_DIGITS}d}/{task_id}"

    def parse_expiring(self, key: str) -> DelayedKey:
        """When a task expires (``due_us``), and its id, from an expiring key.

        Raises:
            ValueError: If the key is not an expiring key of this namespace.
        """
        due, task_id = self._two_parts(key, self.expiring, "expiring")
        return DelayedKey(_digits(due, key), task_id)

    @cached_property
    def crons(self) -> str:
        """Prefix of the cron schedules (``cron/{name}``)."""
        return f"{self.root}cron/"

    def cron(self, name: str) -> str:
        """Key of one cron schedule (its definition and the last tick fired)."""
        return f"{self.crons}{check_name(name, 'schedule')}"

    def parse_cron(self, key: str) -> str:
        """Schedule name from a cron key.

        Raises:
            ValueError: If the key is not a cron key of this namespace.
        """
        return self._one_part(key, self.crons, "cron")

    @cached_property
    def limits(self) -> str:
        """Prefix of the rate and concurrency limits (``limit/{kind}/{name}``)."""
        return f"{self.root}limit/"

    def limit(self, kind: str, name: str) -> str:
        """Key of one limit; ``kind`` is ``type`` or ``queue``."""
        if kind not in ("type", "queue"):
            raise InvalidOption(f"a limit applies to a type or a queue, not {kind!r}")
        return f"{self.limits}{kind}/{name}"

    def parse_limit(self, key: str) -> tuple[str, str]:
        """Kind (``type`` or ``queue``) and name from a limit key.

        Raises:
            ValueError: If the key is not a limit key of this namespace.
        """
        kind, name = self._two_parts(key, self.limits, "limit")
        if kind not in ("type", "queue"):
            raise ValueError(f"malformed limit key: {key}")
        return kind, name

    @cached_property
    def uniques(self) -> str:
        """Prefix of the held idempotency keys (``unique/{sha256 of the key}``)."""
        return f"{self.root}unique/"

    def unique(self, idempotency_key: str) -> str:
        """Key holding one idempotency key: the SHA-256 of the key, in hex (any text fits)."""
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        return f"{self.uniques}{digest}"

    @cached_property
    def workflows(self) -> str:
        """Prefix of the workflow records (``workflow/{id}``)."""
        return f"{self.root}workflow/"

    def workflow(self, workflow_id: str) -> str:
        """Key of one workflow record (its tasks)."""
        return f"{self.workflows}{workflow_id}"

    def parse_workflow(self, key: str) -> str:
        """Workflow id from a workflow key.

        Raises:
            ValueError: If the key is not a workflow key of this namespace.
        """
        return self._one_part(key, self.workflows, "workflow")

    # the scheduler's range ----------------------------------------------------------------
    @cached_property
    def plain_prefixes(self) -> tuple[str, ...]:
        """The scheduler prefixes its mirror keeps as plain key -> KV maps (``ClusterView.plain``)."""
        return (self.crons, self.deps, self.expiring, self.limits)

    @cached_property
    def scheduler_prefixes(self) -> tuple[str, ...]:
        """The prefixes the leading scheduler mirrors, in key order (see the module docstring)."""
        return (
            self.assignments,
            self.crons,
            self.delayed,
            self.deps,
            self.expiring,
            self.limits,
            self.nodes,
            self.pauses,
            self.queues,
            self.running,
        )

    @cached_property
    def scheduler_range(self) -> tuple[str, str]:
        """The one range ``[start, end)`` the leading scheduler reads and watches.

        It spans :attr:`scheduler_prefixes` and also holds keys under other
        names that sort between them (``leader``, ``retention/``), which the
        scheduler's mirror ignores.
        """
        return self.scheduler_prefixes[0], prefix_end(self.scheduler_prefixes[-1])
