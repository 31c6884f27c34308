"""What the leading scheduler's parts share: one context, handed to each part.

The assigner, the recoverer, the promoter and the failer all write under the
same fence (the election), read the same mirror, use the same store, keyspace,
hooks, retention leases and id generator. :class:`LeaderContext` holds them
once; :class:`LeaderPart` is the base that exposes them as attributes, so each
part's constructor takes only what is its own.

May import: election, events, ids, keys, mirror, retention, store. Part of the
scheduler family (scheduler.py builds the context).
"""

from __future__ import annotations

from dataclasses import dataclass

from tasklease.election import Election
from tasklease.events import Hooks
from tasklease.ids import IdGenerator
from tasklease.keys import Keyspace
from tasklease.mirror import Mirror
from tasklease.retention import RetentionLeases
from tasklease.store import KVStore


@dataclass(frozen=True, slots=True)
class LeaderContext:
    """The leader's shared dependencies.

    Attributes:
        store: The etcd connection.
        keys: The namespace.
        election: The leadership (its fence guards every write).
        mirror: The leader's mirror (fed by the watch; wakes the loops).
        hooks: Where the parts' events go.
        scheduler_id: For log fields and events.
        retention: Retention leases for the records the parts finish.
        ids: Sequences for tasks put back in a queue.
    """

    store: KVStore
    keys: Keyspace
    election: Election
    mirror: Mirror
    hooks: Hooks
    scheduler_id: str
    retention: RetentionLeases
    ids: IdGenerator


class LeaderPart:
    """Base of the leader's parts: the context's members as attributes (read-only by convention)."""

    def __init__(self, ctx: LeaderContext) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.keys = ctx.keys
        self.election = ctx.election
        self.mirror = ctx.mirror
        self.clock = ctx.mirror.clock
        self.hooks = ctx.hooks
        self.id = ctx.scheduler_id
        self.retention = ctx.retention
        self._ids = ctx.ids


class LeaderLoop(LeaderPart):
    """A leader part with a loop of its own (dependencies, schedules, expiry, limits).

    The seam for new leader capabilities: the scheduler builds each one once
    (``Scheduler.loops``) and, each time it starts leading, calls
    :meth:`reset` and then runs :meth:`run` beside the assigner and the
    recoverer until the leadership ends (it is cancelled then). :meth:`run`
    starts after the mirror's first load: it reads what it needs from the view
    (``mirror.view``, e.g. ``view.plain``), learns of changes through
    ``mirror.subscribe`` (registered once, in the constructor), and writes
    only under ``election.fence()``. After a reload of the view (a compacted
    watch) the scheduler calls :meth:`reloaded`: read the view again.
    """

    name = "loop"

    def reset(self) -> None:
        """Forget what an earlier leadership saw (called before each :meth:`run`)."""

    def reloaded(self) -> None:
        """The view was read again from scratch (``mirror.view`` is a new one): look at it again."""

    async def run(self) -> None:
        """Run until cancelled (the leadership ended)."""
        raise NotImplementedError
