"""``tasklease limit set | list | remove``: rate and concurrency limits per task type or queue (limits.py).

``cli.py`` hooks this in (it imports this module lazily, in ``build_parser``:
this module imports cli's helpers). Exit codes as everywhere: 2 for bad input
(a bad rate, a missing ``--type``/``--queue``), 1 when etcd fails.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from tasklease.cli import UsageError, _common, _int, _print_json, _say, _table, _when, _with_client
from tasklease.client import Client
from tasklease.limits import Limit, check_limit_name, make_limit
from tasklease.runners import EXIT_OK

Command = Callable[[argparse.Namespace], int]


def add_limit_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Command]:
    """Add ``limit`` and its actions to the command line (``cmd`` makes a command's parser).

    Returns:
        The handlers by command name (``{"limit": ...}``).
    """
    p = cmd(
        "limit", "rate and concurrency limits per task type or queue, enforced cluster-wide by the scheduler"
    )
    actions = p.add_subparsers(dest="limit_action", metavar="ACTION", required=True)
    for name, text in (
        ("set", "set the limit of a task type or a queue (replaces its limit, if any)"),
        ("list", "every limit"),
        ("remove", "remove the limit of a task type or a queue"),
    ):
        a = actions.add_parser(name, help=text, description=text)
        _common(a, top=False)
        if name != "list":
            target = a.add_mutually_exclusive_group(required=True)
            target.add_argument("--type", dest="limit_type", metavar="TYPE", help="a task type")
            target.add_argument("--queue", dest="limit_queue", metavar="QUEUE", help="a queue")
    a = actions.choices["set"]
    a.add_argument("--rate", metavar="N/UNIT", help="most starts: 100/s, 100/min, 5000/h, 20000/d")
    a.add_argument(
        "--burst",
        type=_int,
        metavar="N",
        help="most starts at once after a quiet spell (with --rate; default 0.1 s worth, at least 1)",
    )
    a.add_argument("--concurrency", type=_int, metavar="N", help="most tasks running at once")
    return {"limit": cmd_limit}


def _target(args: argparse.Namespace) -> tuple[str, str]:
    if args.limit_type is not None:
        return "type", args.limit_type
    return "queue", args.limit_queue


def _row(limit: Limit) -> tuple[str, ...]:
    return (
        limit.kind,
        limit.name,
        limit.rate_text or "-",
        "-" if limit.burst is None else str(limit.burst),
        "-" if limit.concurrency is None else str(limit.concurrency),
        _when(limit.set_at),
    )


def cmd_limit(args: argparse.Namespace) -> int:
    """``tasklease limit set|list|remove``."""
    action = args.limit_action
    if action == "set":
        if args.rate is None and args.concurrency is None:
            raise UsageError("limit set needs --rate, --concurrency or both")
        # checked before connecting: bad input exits 2 whether etcd is up or not
        make_limit(*_target(args), rate=args.rate, burst=args.burst, concurrency=args.concurrency)
    elif action == "remove":
        check_limit_name(*_target(args))

    async def run(client: Client) -> int:
        if action == "set":
            kind, name = _target(args)
            limit = await client.set_limit(
                kind, name, rate=args.rate, burst=args.burst, concurrency=args.concurrency
            )
            if args.json:
                _print_json(limit.as_dict())
            else:
                _say(f"{kind} {name}: {limit.describe()}")
        elif action == "remove":
            kind, name = _target(args)
            was = await client.remove_limit(kind, name)
            if args.json:
                _print_json({"kind": kind, "name": name, "removed": was})
            else:
                _say(f"{kind} {name}: limit removed" if was else f"{kind} {name} had no limit")
        else:
            found = await client.limits()
            if args.json:
                _print_json([x.as_dict() for x in found])
            elif not found:
                _say("no limits")
            else:
                _table([_row(x) for x in found], ("KIND", "NAME", "RATE", "BURST", "CONCURRENCY", "SET"))
        return EXIT_OK

    return asyncio.run(_with_client(args, run))
