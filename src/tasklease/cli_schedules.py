"""``tasklease schedule add|list|show|pause|resume|remove|next``: cron schedules (docs/schedules.md).

Hooked into the command line by cli.py (:func:`add_parsers`, imported lazily
there: this module imports cli's helpers). Each action is one client call
(schedules.py); an unknown schedule is a usage error (exit 2), like an
unknown task.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tasklease import codec
from tasklease.cli import (
    UsageError,
    _common,
    _duration,
    _int,
    _print_json,
    _say,
    _table,
    _when,
    _with_client,
    add_task_options,
)
from tasklease.client import Client, TaskSpec
from tasklease.errors import ScheduleNotFound
from tasklease.keys import check_name
from tasklease.models import check_type
from tasklease.retry import RetryPolicy
from tasklease.routing import parse_requires
from tasklease.runners import EXIT_OK
from tasklease.schedules import (
    CATCH_UPS,
    DEFAULT_CATCH_UP,
    DEFAULT_OVERLAP,
    MAX_NEXT,
    OVERLAPS,
    CronExpr,
    Schedule,
    zone,
)

Command = Callable[[argparse.Namespace], int]

ACTIONS = {
    "add": "add a schedule: the leading scheduler submits its task at each tick, exactly once",
    "list": "every schedule: its expression, next fire time, last tick, counts",
    "show": "one schedule",
    "pause": "pause a schedule: it does not fire until resumed",
    "resume": "resume a paused schedule (--catch-up decides about the ticks it missed)",
    "remove": "remove a schedule (the tasks it fired stay)",
    "next": "the next fire times of a schedule",
}


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Command]:
    """Add ``schedule`` and its actions to the command line (``cmd`` makes a command's parser).

    Returns:
        The command's handler, by command name (for cli.COMMANDS).
    """
    p = cmd("schedule", "cron schedules: add, list, show, pause, resume, remove, next")
    actions = p.add_subparsers(dest="schedule_action", metavar="ACTION", required=True)
    parsers: dict[str, argparse.ArgumentParser] = {}
    for name, text in ACTIONS.items():
        q = actions.add_parser(name, help=text, description=text)
        _common(q, top=False)
        if name != "list":
            q.add_argument("name", help="the schedule's name ([A-Za-z0-9_.-]{1,64})")
        parsers[name] = q
    q = parsers["add"]
    q.add_argument(
        "--cron",
        required=True,
        metavar="EXPR",
        help="5 fields (minute hour day month weekday), 6 with the SECONDS FIRST, or @hourly/@daily/...",
    )
    q.add_argument(
        "--tz", default="UTC", metavar="ZONE", help="IANA time zone of the expression (default UTC)"
    )
    q.add_argument(
        "--type", dest="task_type", metavar="TYPE", required=True, help="task type (executor name)"
    )
    add_task_options(q)  # the options of tasklease submit: each tick's task
    q.add_argument(
        "--expires",
        type=_duration,
        default=None,
        metavar="AGE",
        help="discard a task not started this long after its tick: 90s, 10m, 1h",
    )
    q.add_argument(
        "--overlap",
        choices=OVERLAPS,
        default=DEFAULT_OVERLAP,
        help="skip: a tick whose previous task has not finished is skipped (default allow)",
    )
    q.add_argument(
        "--catch-up",
        dest="catch_up",
        choices=CATCH_UPS,
        default=DEFAULT_CATCH_UP,
        help="ticks missed in an outage or a pause: none, one (the newest; default) or all",
    )
    q.add_argument("--paused", action="store_true", help="add it paused")
    q.add_argument(
        "--replace", action="store_true", help="replace a schedule of that name (keeps its counts)"
    )
    parsers["next"].add_argument(
        "--count", type=_int, default=5, help=f"how many fire times (1..{MAX_NEXT}; default 5)"
    )
    return {"schedule": cmd_schedule}


def _iso(ts: float, tz: str) -> str:
    return datetime.fromtimestamp(ts, zone(tz)).isoformat()


def _at(ts: float | None, tz: str) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, zone(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def _print_schedule(s: Schedule) -> None:
    spec = s.task
    _say(f"name:      {s.name}{'   (paused)' if s.paused else ''}")
    _say(f"cron:      {s.cron}   tz: {s.tz}")
    _say(
        f"task:      {spec.type} in queue {spec.queue}, priority {spec.priority}, timeout {spec.timeout_s:g} s"
    )
    _say(f"payload:   {codec.encode_json(spec.payload).decode()[:200]}")
    _say(f"policy:    overlap {s.overlap}, catch-up {s.catch_up}")
    _say(f"next:      {_at(s.next_at(), s.tz)}")
    _say(f"last tick: {_at(s.last_tick, s.tz)}   last task: {s.last_task or '-'}")
    _say(f"counts:    {s.fired} fired, {s.skipped} skipped   (added {_when(s.created_at)})")


def _add(args: argparse.Namespace) -> Callable[[Client], Any]:
    check_type(args.task_type)
    check_name(args.name, "schedule")
    CronExpr(args.cron, args.tz)  # a bad expression or zone: exit 2 before connecting
    spec = TaskSpec(
        type=args.task_type,
        payload=codec.parse_json(args.payload),
        queue=args.queue,
        priority=args.priority,
        timeout_s=args.timeout,
        retry=RetryPolicy(max_retries=args.retries, backoff_s=args.backoff),
        retention_s=args.retention,
        requires=parse_requires(args.require) if args.require else None,
        expires_s=args.expires,
    )

    async def run(client: Client) -> Schedule:
        return await client.add_schedule(
            args.name,
            args.cron,
            spec,
            tz=args.tz,
            overlap=args.overlap,
            catch_up=args.catch_up,
            paused=args.paused,
            replace=args.replace,
        )

    return run


def cmd_schedule(args: argparse.Namespace) -> int:
    """``tasklease schedule ACTION``."""
    action: str = args.schedule_action
    add = _add(args) if action == "add" else None  # validated before connecting

    async def run(client: Client) -> int:
        if action == "list":
            found = await client.list_schedules()
            if args.json:
                _print_json([s.as_dict() for s in found])
                return EXIT_OK
            rows = [
                [
                    s.name,
                    s.cron,
                    s.tz,
                    s.task.type,
                    s.task.queue,
                    "paused" if s.paused else "active",
                    _at(s.next_at(), s.tz),
                    _at(s.last_tick, s.tz),
                    str(s.fired),
                    str(s.skipped),
                ]
                for s in found
            ]
            header = ["NAME", "CRON", "TZ", "TYPE", "QUEUE", "STATE", "NEXT", "LAST TICK", "FIRED", "SKIPPED"]
            _table(rows, header)
            return EXIT_OK
        name: str = args.name
        if action == "next":
            schedule = await client.get_schedule(name)
            times = await client.next_fire_times(name, args.count)
            if args.json:
                _print_json({"name": name, "tz": schedule.tz, "times": times})
                return EXIT_OK
            for t in times:
                utc = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                _say(f"{_iso(t, schedule.tz)}  ({utc})")
            return EXIT_OK
        if action == "remove":
            if not await client.remove_schedule(name):
                raise ScheduleNotFound(name)
            if args.json:
                _print_json({"name": name, "removed": True})
            else:
                _say(f"schedule {name} removed (the tasks it fired stay)")
            return EXIT_OK
        if add is not None:
            schedule = await add(client)
            said = f"schedule {name} {'replaced' if args.replace else 'added'}"
        elif action == "pause":
            schedule = await client.pause_schedule(name)
            said = f"schedule {name} paused: it does not fire until `tasklease schedule resume {name}`"
        elif action == "resume":
            schedule = await client.resume_schedule(name)
            said = f"schedule {name} resumed (catch-up {schedule.catch_up})"
        else:  # show
            schedule = await client.get_schedule(name)
            said = ""
        if args.json:
            _print_json(schedule.as_dict())
        elif said:
            _say(f"{said}; next at {_at(schedule.next_at(), schedule.tz)}" if not schedule.paused else said)
        else:
            _print_schedule(schedule)
        return EXIT_OK

    try:
        return asyncio.run(_with_client(args, run))
    except ScheduleNotFound as exc:
        raise UsageError(str(exc)) from None
