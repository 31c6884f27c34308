"""``tasklease workflow submit | status | cancel``: workflows from the command line (docs/workflows.md).

:func:`add_parser` adds the ``workflow`` command to the parser that ``cli.py``
builds and returns its handler; ``cli.py`` imports this module lazily (this
one imports cli's helpers). ``tasklease submit --after ID[,ID]`` is cli.py's.

Exit codes as everywhere: 0 done; 1 a workflow waited for (``--wait``) that did
not all succeed, or etcd unreachable; 2 bad input, an unknown workflow or task
id, a bad JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from tasklease import codec
from tasklease.cli import (
    UsageError,
    _common,
    _positive_float,
    _print_json,
    _say,
    _table,
    _when,
    _with_client,
)
from tasklease.client import Client
from tasklease.models import TaskState
from tasklease.runners import EXIT_OK, EXIT_RUNTIME
from tasklease.workflows import WorkflowStatus

Command = Callable[[argparse.Namespace], int]
MAX_FILE_BYTES = 64 * 1024 * 1024


def add_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Command]:
    """Add ``workflow`` (with ``cmd``, cli's command factory); return ``{"workflow": handler}``."""
    p = cmd("workflow", "submit a DAG of tasks (a JSON file), show one with each task's state, cancel one")
    actions = p.add_subparsers(dest="workflow_action", metavar="ACTION", required=True)
    for name, text in (
        ("submit", "submit a workflow from a JSON file (- for stdin): one transaction when it fits"),
        ("status", "a workflow (by its id or any of its tasks' ids): each task's state and parents"),
        ("cancel", "cancel every task of a workflow that has not finished (waiting ones too)"),
    ):
        q = actions.add_parser(name, help=text, description=text)
        _common(q, top=False)
    q = actions.choices["submit"]
    q.add_argument(
        "file", metavar="FILE", help='{"name": ..., "tasks": [{"key", "type", "after": [...]}, ...]}'
    )
    q.add_argument(
        "--wait", action="store_true", help="wait until every task finished; exit 1 unless all succeeded"
    )
    q.add_argument("--wait-timeout", type=_positive_float, default=None, help="give up waiting after S s")
    q = actions.choices["status"]
    q.add_argument("id", help="a workflow id, or the id of any of its tasks")
    q = actions.choices["cancel"]
    q.add_argument("id", help="a workflow id, or the id of any of its tasks")
    q.add_argument("--reason", default="workflow cancelled by request", help="recorded as each task's error")
    return {"workflow": cmd_workflow}


def cmd_workflow(args: argparse.Namespace) -> int:
    """``tasklease workflow ACTION``."""
    action = {"submit": _submit, "status": _status, "cancel": _cancel}[args.workflow_action]
    return asyncio.run(_with_client(args, lambda client: action(client, args)))


def _read_file(name: str) -> bytes:
    try:
        if name == "-":
            data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with Path(name).open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(f"{name} is over {MAX_FILE_BYTES} bytes")
    return data


async def _submit(client: Client, args: argparse.Namespace) -> int:
    body = codec.parse_json(_read_file(args.file), "workflow file")
    workflow = await client.submit_workflow(body)
    if not args.wait:
        if args.json:
            _print_json(workflow.as_dict())
        else:
            _say(workflow.id)
            for key, task_id in workflow.keys.items():
                _say(f"  {key}: {task_id}")
        return EXIT_OK
    finals = []
    for task in workflow.tasks:
        finals.append(await client.wait(task.id, args.wait_timeout))
    status = await client.workflow_status(workflow.id)
    _show(status, args)
    return EXIT_OK if all(t.state is TaskState.SUCCEEDED for t in finals) else EXIT_RUNTIME


async def _status(client: Client, args: argparse.Namespace) -> int:
    _show(await client.workflow_status(args.id), args)
    return EXIT_OK


def _show(status: WorkflowStatus, args: argparse.Namespace) -> None:
    if args.json:
        _print_json(status.as_dict())
        return
    states = ", ".join(f"{n} {s}" for s, n in sorted(status.states.items()))
    _say(f"workflow {status.id}" + (f"  {status.name}" if status.name else ""))
    _say(f"created {_when(status.created_at)}; {len(status.tasks)} tasks: {states}")
    # Parents inside the workflow by their row number (#n), others by id: the DAG at a glance.
    row = {t.id: n for n, t in enumerate(status.tasks, start=1)}
    rows = [
        (
            f"#{n}",
            t.id,
            t.state,
            t.type or "-",
            ",".join(f"#{row[p]}" if p in row else p for p in t.parents) or "-",
            (t.error or "")[:80],
        )
        for n, t in enumerate(status.tasks, start=1)
    ]
    _table(rows, ("#", "ID", "STATE", "TYPE", "AFTER", "ERROR"))


async def _cancel(client: Client, args: argparse.Namespace) -> int:
    cancelled = await client.cancel_workflow(args.id, args.reason)
    if args.json:
        _print_json({"cancelled": [t.id for t in cancelled]})
    else:
        _say(f"{len(cancelled)} task(s) cancelled")
    return EXIT_OK
