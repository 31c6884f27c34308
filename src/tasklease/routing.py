"""Which workers may run which task: task types and tag constraints (pure logic, no I/O).

A task's *route* is its type plus the tags it requires (``submit --require
zone=eu,gpu=true``). A worker is **eligible** for a task when it serves the
task's queue, runs its type (the ``types`` of its node record) and has every
required tag with the required value (its ``tags``). The scheduler assigns a
task only to an eligible worker; the balancers choose among eligible workers.

The route is the last part of the queue key (``queue/{q}/{band}/{seq}/{id}/{route}``),
so the scheduler knows every queued task's route from its keys alone: a new
leader reads queue keys without values, and groups them by queue and route, so
tasks nobody can run cost nothing per batch however many there are.

Route text: the type and each tag key and value percent-encoded (no ``/``,
``&``, ``,`` or ``=`` left in them), the tags sorted, ``type&k=v,k2=v2``; a task
without requirements has the bare type as its route.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

from tasklease.errors import InvalidOption
from tasklease.keys import check_name

Requires = tuple[tuple[str, str], ...]
"""Required tags as sorted ``(key, value)`` pairs (hashable, canonical)."""

MAX_TAG_VALUE = 128
MAX_REQUIRES = 16


def check_requires(requires: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Requires:
    """Validate required tags; return them canonical (sorted pairs).

    Keys follow the queue-name rules (``[A-Za-z0-9_.-]{1,64}``); values are
    strings of at most 128 printable characters.

    Raises:
        InvalidOption: On a bad key or value, or more than 16 requirements.
    """
    if requires is None:
        return ()
    pairs = list(requires.items()) if isinstance(requires, Mapping) else list(requires)
    if len(pairs) > MAX_REQUIRES:
        raise InvalidOption(f"at most {MAX_REQUIRES} required tags, got {len(pairs)}")
    seen: dict[str, str] = {}
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise InvalidOption(f"a required tag must be a key and a value, got {pair!r}")
        key, value = pair
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidOption(f"required tag {key!r}={value!r}: key and value must be strings")
        check_name(key, "required tag key")
        if len(value) > MAX_TAG_VALUE or not value.isprintable():
            raise InvalidOption(
                f"required tag {key}: value must be at most {MAX_TAG_VALUE} printable characters"
            )
        if key in seen and seen[key] != value:
            raise InvalidOption(f"required tag {key} given twice with different values")
        seen[key] = value
    return tuple(sorted(seen.items()))


def parse_requires(text: str) -> Requires:
    """Parse ``zone=eu,gpu=true`` (the CLI's ``--require``).

    Raises:
        InvalidOption: On an item without ``=`` or a bad key or value.
    """
    pairs = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidOption(f"bad required tag {item!r}: expected key=value")
        pairs.append((key.strip(), value.strip()))
    return check_requires(pairs)


def route(task_type: str, requires: Requires = ()) -> str:
    """The route text of a task (the last part of its queue key)."""
    text = quote(task_type, safe="")
    if requires:
        text += "&" + ",".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in requires)
    return text


@dataclass(frozen=True, slots=True)
class Route:
    """A parsed route: a task type and its required tags."""

    type: str
    requires: Requires = ()

    def describe(self) -> str:
        """``type resize`` or ``type resize with zone=eu,gpu=true`` (for messages)."""
        if not self.requires:
            return f"type {self.type}"
        return f"type {self.type} with " + ",".join(f"{k}={v}" for k, v in self.requires)


def parse_route(text: str) -> Route:
    """Parse a route text.

    Raises:
        ValueError: If it is not one.
    """
    type_part, sep, tags = text.partition("&")
    if not type_part:
        raise ValueError(f"empty task type in route {text!r}")
    requires: list[tuple[str, str]] = []
    if sep:
        for item in tags.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ValueError(f"bad required tag {item!r} in route {text!r}")
            requires.append((unquote(key), unquote(value)))
    return Route(unquote(type_part), tuple(sorted(requires)))


def satisfies(tags: Mapping[str, object], requires: Requires) -> bool:
    """Whether a worker with ``tags`` has every required tag with its value."""
    return all(str(tags.get(key)) == value and key in tags for key, value in requires)


def eligible(types: Iterable[str], tags: Mapping[str, object], task: Route) -> bool:
    """Whether a worker running ``types`` with ``tags`` may run ``task`` (its queue aside)."""
    return task.type in types and satisfies(tags, task.requires)
