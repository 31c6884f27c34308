"""The ``tasklease`` command: a thin layer over :mod:`tasklease.client`.

Commands parse their options and call the client, or one of the long-running
processes of :mod:`tasklease.runners` (worker, scheduler, etcd, dev).

Exit codes: 0 success; 1 a runtime failure (etcd unreachable, a task that did
not succeed, a wait that timed out); 2 bad input (bad option or environment
variable, unknown or malformed task id, invalid transition, a scheduler id that
another live scheduler uses). Errors are one line on stderr, never a traceback.

Every option and environment variable is parsed inside the error handler of
:func:`main`: environment values are read after the command line (an option
wins over its variable) and checked like the option. Numbers must be finite
(NaN and infinity are refused everywhere). Task ids are read case-insensitively
(Crockford base32).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson

from tasklease import codec
from tasklease.client import Client, TaskSpec
from tasklease.errors import (
    InvalidTransition,
    TaskleaseError,
    TaskNotFound,
    ValidationError,
    WorkerNotFound,
)
from tasklease.fleet import eligible_workers, waiting_without_worker
from tasklease.ids import default_process_id, parse_task_id
from tasklease.logs import escape_json, escape_text
from tasklease.models import Task, TaskState, check_type
from tasklease.retry import RetryPolicy
from tasklease.routing import Route, parse_requires
from tasklease.runners import EXIT_OK, EXIT_RUNTIME
from tasklease.store import DEFAULT_ENDPOINT, TRANSPORTS, StoreConfig

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as the shell reports a tool killed by it
EXIT_USAGE = 2

USER_ERRORS = (ValidationError, TaskNotFound, WorkerNotFound, InvalidTransition)


class UsageError(Exception):
    """A mistake on the command line or in the environment (exit 2)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        """Report a bad command line (each argument it quotes cut to a readable length)."""
        _fail(f"{shorten_words(message)} (see: {self.prog} --help)", EXIT_USAGE)


# argparse quotes the arguments it refuses: a payload of kilobytes given in the wrong place
# must not be echoed back whole.
LONGEST_QUOTED_WORD = 80


def shorten_words(message: str, longest: int = LONGEST_QUOTED_WORD) -> str:
    """``message`` with each run of more than ``longest`` non-space characters cut, saying how long it was."""
    return re.sub(
        rf"\S{{{longest + 1},}}",
        lambda m: f"{m.group()[: longest - 20]}... [{len(m.group()):,} characters]",
        message,
    )


LOG_LEVELS = ("debug", "info", "warning", "error")


# Numbers: parsed by these, on the command line and from the environment alike.
def _finite_float(text: str) -> float:
    """A finite number (its range is checked where it is used)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _finite_float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown log level {text!r} (use {', '.join(LOG_LEVELS)})")
    return level


# Durations (90s, 30m, 12h, 7d), sizes (64MiB) and quota limits ("none" removes one).
NO_LIMIT = "none"


def _task_ids(text: str) -> list[str]:
    """``ID[,ID]``: task ids, read case-insensitively (a malformed one: exit 2)."""
    return [parse_task_id(part) for part in text.split(",") if part.strip()]


def _duration(text: str) -> float:
    from tasklease.quotas import parse_duration

    try:
        return parse_duration(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time(text: str) -> float:
    """A time: ISO 8601 with a zone (2026-12-01T10:00:00Z) or epoch seconds."""
    from tasklease.spec import parse_time

    try:
        return parse_time(float(text) if _is_number(text) else text, "the time")
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _expiry(text: str) -> tuple[str, float]:
    """``--expires``: a duration from now (10m, 2h, 90) -> ("s", seconds), or a time -> ("at", epoch)."""
    from tasklease.quotas import parse_duration
    from tasklease.spec import parse_time

    try:
        seconds = parse_duration(text)
    except ValidationError:
        pass
    else:
        if seconds <= 0:
            raise argparse.ArgumentTypeError(f"an expiry must be > 0, got {text!r}")
        return "s", seconds
    try:
        return "at", parse_time(text, "the time")
    except ValidationError as exc:
        if "time zone" in str(exc):
            raise argparse.ArgumentTypeError(str(exc)) from None
        raise argparse.ArgumentTypeError(
            f"bad expiry {text!r}: use a duration (90s, 10m, 2h, 1d) or an ISO 8601 time "
            "with a zone (2026-12-01T10:00:00Z)"
        ) from None


def _limit(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def limit(text: str) -> Any:
        if text.strip().lower() in (NO_LIMIT, "off"):
            return NO_LIMIT
        try:
            value = parse(text)
        except (ValidationError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"{exc} (or {NO_LIMIT!r} for no limit)") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    limit.__name__ = f"{parse.__name__}_limit"
    return limit


def _http_address(text: str) -> Any:
    """``HOST:PORT``, ``[IPv6]:PORT`` or a bare port (``127.0.0.1:PORT``), for ``--http``."""
    from tasklease.httpserver import HttpAddress

    try:
        return HttpAddress.parse(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _web_address(text: str) -> Any:
    """``--web``: an address as for ``--http``, or ``off`` (None)."""
    return None if text.strip().lower() == "off" else _http_address(text)


HTTP_VARIABLE = "TASKLEASE_HTTP"


def _http_option(args: argparse.Namespace, environ: Any = None) -> Any:
    """``--http``, else ``TASKLEASE_HTTP`` (an empty value is off), else None (no HTTP endpoint).

    Raises:
        UsageError: ``TASKLEASE_HTTP`` is not an address (named in the message).
    """
    if args.http is not None:
        return args.http
    raw = (os.environ if environ is None else environ).get(HTTP_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        return _http_address(raw)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"environment variable {HTTP_VARIABLE}: {exc}") from None


def _add_http(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--http",
        type=_http_address,
        default=None,
        metavar="HOST:PORT",
        help=f"{what} (env {HTTP_VARIABLE}; a bare PORT is 127.0.0.1:PORT; off unless given)",
    )


def _size(text: str) -> int:
    from tasklease.quotas import parse_size

    return parse_size(text)


def _transport(text: str) -> str:
    if text not in TRANSPORTS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(TRANSPORTS)}, got {text!r}")
    return text


# Options that an environment variable may give: (dest, variable, parse or None).
ENV_OPTIONS: tuple[tuple[str, str, Callable[[str], Any] | None], ...] = (
    ("etcd", "TASKLEASE_ETCD", None),
    ("namespace", "TASKLEASE_NAMESPACE", None),
    ("etcd_timeout", "TASKLEASE_ETCD_TIMEOUT", _positive_float),
    ("etcd_user", "TASKLEASE_ETCD_USER", None),
    ("etcd_password", "TASKLEASE_ETCD_PASSWORD", None),
    ("etcd_password_file", "TASKLEASE_ETCD_PASSWORD_FILE", None),
    ("etcd_ca", "TASKLEASE_ETCD_CA", None),
    ("etcd_cert", "TASKLEASE_ETCD_CERT", None),
    ("etcd_key", "TASKLEASE_ETCD_KEY", None),
    ("etcd_tls_server_name", "TASKLEASE_ETCD_TLS_SERVER_NAME", None),
    ("etcd_transport", "TASKLEASE_ETCD_TRANSPORT", _transport),
    ("log_level", "TASKLEASE_LOG_LEVEL", _log_level),
)
DEFAULTS: dict[str, Any] = {
    "etcd": DEFAULT_ENDPOINT,
    "namespace": "tasklease",
    "etcd_timeout": 5.0,
    "etcd_transport": TRANSPORTS[0],
}


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options every command takes, before or after the command name."""

    # On the top parser they default to None (filled from the environment, then
    # DEFAULTS, by resolve_environment); on sub-parsers SUPPRESS keeps a value
    # given before the command from being reset.
    def d(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    def h(text: str) -> str:
        return text if top else argparse.SUPPRESS

    g = parser.add_argument_group("etcd connection")
    g.add_argument(
        "--etcd",
        metavar="ENDPOINTS",
        default=d(None),
        help=h(f"comma-separated etcd endpoints (env TASKLEASE_ETCD; default {DEFAULT_ENDPOINT})"),
    )
    g.add_argument("--namespace", default=d(None), help=h("key namespace (env TASKLEASE_NAMESPACE)"))
    g.add_argument(
        "--etcd-timeout",
        type=_positive_float,
        default=d(None),
        help=h("seconds to wait for one etcd request (env TASKLEASE_ETCD_TIMEOUT; default 5)"),
    )
    g.add_argument("--etcd-user", default=d(None), help=argparse.SUPPRESS)
    g.add_argument("--etcd-password", default=d(None), help=argparse.SUPPRESS)
    g.add_argument(
        "--etcd-password-file",
        metavar="FILE",
        default=d(None),
        help=h("file whose first line is the etcd password (env TASKLEASE_ETCD_PASSWORD_FILE)"),
    )
    g.add_argument("--etcd-ca", default=d(None), help=argparse.SUPPRESS)
    g.add_argument("--etcd-cert", default=d(None), help=argparse.SUPPRESS)
    g.add_argument("--etcd-key", default=d(None), help=argparse.SUPPRESS)
    g.add_argument("--etcd-tls-server-name", metavar="NAME", default=d(None), help=argparse.SUPPRESS)
    g.add_argument(
        "--etcd-transport",
        type=_transport,
        default=d(None),
        help=h(
            "how reads, writes and watches travel to etcd: h2 (default) or grpc (env TASKLEASE_ETCD_TRANSPORT)"
        ),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=d(False),
        help=h("print machine-readable JSON"),
    )
    parser.add_argument("--log-level", type=_log_level, default=d(None), help=argparse.SUPPRESS)


def resolve_environment(args: argparse.Namespace, environ: Any = None) -> argparse.Namespace:
    """Fill options not given on the command line from the environment, then defaults.

    Endpoints and the namespace are checked where they are used (by the
    commands that connect), inside the same error handler.

    Raises:
        UsageError: An environment variable's value is invalid (named in the message).
    """
    environ = os.environ if environ is None else environ
    # A password and a password file exclude each other; one on the command line
    # hides the other's environment variable.
    given = {d for d in ("etcd_password", "etcd_password_file") if getattr(args, d, None) is not None}
    if len(given) == 2:
        raise UsageError("give --etcd-password or --etcd-password-file, not both")
    for dest, variable, parse in ENV_OPTIONS:
        if getattr(args, dest, None) is not None:
            continue
        if given and dest in ("etcd_password", "etcd_password_file"):
            setattr(args, dest, None)
            continue
        raw = environ.get(variable)
        if not raw:  # unset or empty: the default
            value = DEFAULTS.get(dest)
        elif parse is None:
            value = raw
        else:
            try:
                value = parse(raw)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"environment variable {variable}: {exc}") from None
        setattr(args, dest, value)
    if getattr(args, "etcd_password", None) is not None and getattr(args, "etcd_password_file", None):
        raise UsageError("TASKLEASE_ETCD_PASSWORD and TASKLEASE_ETCD_PASSWORD_FILE are both set: keep one")
    return args


def store_config(args: argparse.Namespace) -> StoreConfig:
    """The etcd connection the options describe.

    Without any user or password given, a local embedded etcd (``tasklease
    etcd`` or ``dev`` on this loopback port, started by this user and still
    running) is logged in to with its root password file.
    """
    return StoreConfig.from_options(
        args.etcd,
        timeout_s=args.etcd_timeout,
        user=args.etcd_user,
        password=args.etcd_password,
        password_file=args.etcd_password_file,
        ca_file=args.etcd_ca,
        cert_file=args.etcd_cert,
        key_file=args.etcd_key,
        tls_server_name=args.etcd_tls_server_name,
        transport=args.etcd_transport,
    )


def add_task_options(p: argparse.ArgumentParser) -> None:
    """What a task is given (``submit``, ``schedule add``): payload, priority, queue, timeout, retries, retention, tags."""
    p.add_argument("--payload", default="null", help="JSON payload")
    p.add_argument("--priority", type=_int, default=1, help="0 (low) .. 3 (urgent); default 1")
    p.add_argument("--queue", default="default")
    p.add_argument("--timeout", type=_finite_float, default=300.0, help="seconds per attempt")
    p.add_argument("--retries", type=_int, default=0, help="retries after a failure")
    p.add_argument("--backoff", type=_finite_float, default=1.0, help="first retry delay (s)")
    p.add_argument(
        "--retention",
        type=_finite_float,
        default=None,
        help="seconds the record is kept once finished (default 7 days, or the quota's maximum if lower)",
    )
    p.add_argument(
        "--require", default=None, help="tags a worker must have to run it: zone=eu,gpu=true (its --tags)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = Parser(prog="tasklease", description="A distributed task scheduler coordinated by etcd.")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p, top=False)
        return p

    p = cmd("etcd", "run a single-node etcd on 127.0.0.1 in the foreground")
    p.add_argument("--data-dir", type=Path, default=None, help="data directory")
    p.add_argument("--port", type=_int, default=2379, help="client port (default 2379)")
    p.add_argument("--peer-port", type=_int, default=0, help="peer port (default: a free one)")
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="run without etcd authentication (any local process or web page's request may write)",
    )

    p = cmd("submit", "submit a task")
    p.add_argument("type", help="task type (executor name)")
    add_task_options(p)
    p.add_argument(
        "--key",
        default=None,
        metavar="TEXT",
        help="idempotency key: if a task with this key exists, print its id (stderr says "
        '"already submitted") instead of submitting another; held until its record expires',
    )
    p.add_argument(
        "--unique-for",
        type=_duration,
        default=None,
        metavar="AGE",
        help="hold --key this long after the submit instead (90s, 30m, 1h, 7d)",
    )
    p.add_argument(
        "--after",
        type=_task_ids,
        default=None,
        metavar="ID[,ID]",
        help="run only after these tasks succeeded (it waits in state waiting until then)",
    )
    p.add_argument(
        "--on-parent-failure",
        choices=["cancel", "run"],
        default="cancel",
        help="a parent that fails or is cancelled: cancel this task (default) or run it anyway",
    )
    p.add_argument(
        "--delay",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="run no sooner than this: 30s, 10m, 2h",
    )
    p.add_argument(
        "--at",
        type=_time,
        default=None,
        metavar="TIME",
        help="run no sooner than this time: 2026-12-01T10:00:00Z",
    )
    p.add_argument(
        "--expires",
        type=_expiry,
        default=None,
        metavar="DURATION|TIME",
        help="discard it (cancelled, reason recorded) if not started by then: 10m, or 2026-12-01T10:00:00Z",
    )
    p.add_argument("--wait", action="store_true", help="wait and print the final record")
    p.add_argument("--wait-timeout", type=_positive_float, default=None, help="give up waiting after S s")

    p = cmd("status", "show a task")
    p.add_argument("id")

    p = cmd("list", "list tasks (finished ones newest first, from the finished index)")
    p.add_argument("--state", default=None)
    p.add_argument("--queue", default=None)
    p.add_argument("--type", dest="task_type", default=None, help="only this task type")
    p.add_argument(
        "--since",
        type=_non_negative_float,
        default=None,
        help="finished in the last S seconds (needs --state)",
    )
    p.add_argument("--limit", type=_int, default=100)

    p = cmd("rerun", "run a failed or cancelled task again (a new task, linked to the old one)")
    p.add_argument("id")

    p = cmd("pause", "pause a queue: nothing is assigned from it until resumed")
    p.add_argument("queue")
    p.add_argument("--reason", default="", help="why (shown by queues and the dashboard)")

    p = cmd("resume", "resume a paused queue")
    p.add_argument("queue")

    p = cmd("drain", "ask a live worker to stop as on SIGTERM (it finishes its tasks first)")
    p.add_argument("worker")

    cmd("queues", "queues: depth per priority, running, pending, failed, paused")

    p = cmd("cancel", "cancel a queued or running task")
    p.add_argument("id")

    p = cmd("priority", "change a waiting task's priority")
    p.add_argument("id")
    p.add_argument("priority", type=_int)

    p = cmd("wait", "wait for a task to finish")
    p.add_argument("id")
    p.add_argument("--timeout", type=_positive_float, default=None)

    cmd("stats", "tasks per state and queue")

    p = cmd("worker", "run a worker in the foreground")
    p.add_argument("--id", default=None, help="worker id (default host-pid-random)")
    p.add_argument("--concurrency", type=_int, default=4, help="most tasks at once (default 4)")
    p.add_argument("--queues", default="default", help="comma-separated queues (default: default)")
    p.add_argument(
        "--weight", type=_positive_float, default=1.0, help="relative capacity (weighted balancer)"
    )
    p.add_argument("--tags", default="", help="k=v,... labels published with the node")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE at start (its Registry task functions are served); repeatable",
    )
    p.add_argument("--lease-ttl", type=_int, default=10, help="lease TTL in seconds (default 10)")
    p.add_argument(
        "--heartbeat", type=_positive_float, default=3.0, help="seconds between heartbeats (default 3)"
    )
    p.add_argument(
        "--grace",
        type=_non_negative_float,
        default=30.0,
        help="seconds running tasks get on SIGTERM (default 30)",
    )
    p.add_argument("--allow", default="", help="enable sensitive built-ins: shell,http")
    p.add_argument(
        "--pass-env",
        dest="pass_env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass environment variable NAME to task processes (shell, sync tasks); repeatable; "
        "never TASKLEASE_*",
    )
    p.add_argument(
        "--path",
        dest="paths",
        action="append",
        default=[],
        metavar="DIR",
        help="import task modules from DIR too (e.g. --path .); repeatable; "
        "the current directory is not on the import path otherwise",
    )
    p.add_argument(
        "--http-allow-net",
        dest="http_allow_nets",
        action="append",
        default=[],
        metavar="CIDR",
        help="let http tasks reach this network although denied by default "
        "(loopback, private, link-local...); repeatable",
    )
    p.add_argument(
        "--http-deny-net",
        dest="http_deny_nets",
        action="append",
        default=[],
        metavar="CIDR",
        help="never let http tasks reach this network; repeatable",
    )
    p.add_argument(
        "--burst",
        action="store_true",
        help="run until its queues hold no task it may run and it runs nothing, then drain and "
        "exit 0 (batch jobs, CI); pending retries waiting for their backoff do not keep it",
    )
    _add_http(p, "serve /metrics, /healthz and /readyz on this address")
    p.add_argument("--log-format", choices=["json", "text"], default="json")

    p = cmd("nodes", "list live workers and their load")

    p = cmd("scheduler", "run a scheduler in the foreground (one of several leads)")
    p.add_argument(
        "--id",
        default=None,
        help="scheduler id, unique among live schedulers (default sched-HOST-PID-RANDOM)",
    )
    p.add_argument(
        "--balancer", default="least_load", choices=["round_robin", "random", "least_load", "weighted"]
    )
    p.add_argument(
        "--batch-size",
        type=_int,
        default=30,
        help="most tasks per assignment transaction, 1..30 (default 30)",
    )
    p.add_argument("--lease-ttl", type=_int, default=10, help="leadership lease TTL in seconds (default 10)")
    p.add_argument(
        "--deadline-grace",
        type=_non_negative_float,
        default=5.0,
        help="seconds past a task's timeout before the scheduler ends it",
    )
    p.add_argument(
        "--unroutable-after",
        type=_positive_float,
        default=None,
        help="fail queued tasks no live worker may run (type or tags) after S s (default: wait forever)",
    )
    _add_http(p, "serve /metrics, /healthz and /readyz on this address")
    p.add_argument("--log-format", choices=["json", "text"], default="json")

    p = cmd("dev", "run a local etcd, a scheduler and workers in the foreground until Ctrl-C")
    p.add_argument("--workers", type=_int, default=2, help="worker processes (default 2; 0 is fine)")
    p.add_argument("--port", type=_int, default=2379, help="etcd client port (default 2379)")
    p.add_argument("--data-dir", type=Path, default=None, help="etcd data directory")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="task module for the workers; repeatable",
    )
    p.add_argument(
        "--path",
        dest="paths",
        action="append",
        default=[],
        metavar="DIR",
        help="the workers import task modules from DIR too (e.g. --path .); repeatable",
    )
    p.add_argument("--allow", default="", help="let the workers run shell,http tasks (needs auth)")
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="run etcd without authentication (refused with --allow shell or http)",
    )
    p.add_argument("--concurrency", type=_int, default=4, help="per worker (default 4)")
    p.add_argument(
        "--http",
        type=_http_address,
        nargs="?",
        const=_http_address("127.0.0.1:0"),
        default=None,
        metavar="HOST:PORT",
        help="one HTTP endpoint (/metrics, /healthz, /readyz) per process: the scheduler on PORT, "
        f"worker i on PORT+i; without a value (or port 0), free ports; printed at start (env {HTTP_VARIABLE})",
    )
    p.add_argument(
        "--web",
        type=_web_address,
        default=_http_address("127.0.0.1:8080"),
        metavar="HOST:PORT",
        help="serve the dashboard and REST API here (tasklease web; port 0: a free one; 'off': none; "
        "default 127.0.0.1:8080); its URL is printed at start",
    )

    p = cmd("soak", "run a workload under chaos (killed workers and leaders), then check every invariant")
    p.add_argument("--tasks", type=_int, default=2000)
    p.add_argument("--workers", type=_int, default=3)
    p.add_argument("--seed", type=_int, default=1)
    p.add_argument("--chaos-interval", type=_positive_float, default=2.0, help="mean seconds between kills")
    p.add_argument("--timeout", type=_positive_float, default=900.0, help="give up after S seconds")
    p.add_argument(
        "--payload-bytes",
        default="0",
        metavar="SIZES",
        help="payload bytes per task: 4500, or a mix drawn per task by the seed: 0,4500,65536,204800 "
        "(weighted: 0:50,4500:40,65536:8,204800:2); 0 = tiny (default)",
    )

    p = cmd("demo", "start etcd, a scheduler and 2 workers, run a mixed workload, print a summary, stop")
    p.add_argument("--data-dir", type=Path, default=None, help="keep etcd's data and the logs here")
    p.add_argument("--workers", type=_int, default=2, help="worker processes (default 2)")
    p.add_argument(
        "--http",
        action="store_true",
        help="give each process an HTTP endpoint (/metrics, /healthz, /readyz) on a free port; printed",
    )

    p = cmd("health", "check a process's HTTP endpoint (/readyz unless the URL has a path): exit 0 if 200")
    p.add_argument(
        "url",
        nargs="?",
        default=None,
        metavar="URL",
        help=f"http://HOST:PORT[/PATH], HOST:PORT or PORT (default: env {HTTP_VARIABLE})",
    )
    p.add_argument("--timeout", type=_positive_float, default=5.0, help="seconds to wait (default 5)")

    p = cmd("web", "serve the REST API and the live dashboard (docs/api.md) in the foreground")
    p.add_argument(
        "--http",
        type=_http_address,
        default=None,
        metavar="HOST:PORT",
        help="listen here (env TASKLEASE_WEB; default 127.0.0.1:8080; a bare PORT is 127.0.0.1:PORT)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="every request must carry it (env TASKLEASE_WEB_TOKEN, better: a command line is visible "
        "to every local user); required unless HOST is a loopback address",
    )
    p.add_argument("--read-only", action="store_true", help="refuse every change (403); the UI hides actions")
    p.add_argument(
        "--max-body",
        type=_size,
        default=4 * 1024 * 1024,
        metavar="SIZE",
        help="largest request body (default 4MiB)",
    )
    p.add_argument("--log-format", choices=["json", "text"], default="json")

    p = cmd("purge", "delete finished tasks older than an age (a dry run unless --yes)")
    p.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="AGE",
        help="finished at least this long ago: 90s, 30m, 12h, 7d (0s: all)",
    )
    p.add_argument(
        "--state",
        action="append",
        default=None,
        help="succeeded, failed or cancelled (repeatable or comma-separated; default: all three)",
    )
    p.add_argument("--queue", default=None, help="only this queue")
    p.add_argument("--yes", action="store_true", help="delete (without it: say what would be deleted)")

    p = cmd("quota", "show, set or clear the namespace's quotas (enforced at submit)")
    actions = p.add_subparsers(dest="quota_action", metavar="ACTION", required=True)
    for name, text in (
        ("show", "the limits and what waits now"),
        ("set", "set some limits (the others are kept; 'none' removes one)"),
        ("clear", "remove every limit"),
    ):
        q = actions.add_parser(name, help=text, description=text)
        _common(q, top=False)
    q = actions.choices["set"]
    q.add_argument(
        "--max-queued", type=_limit(_int), metavar="N", help="most waiting tasks (queued + pending)"
    )
    q.add_argument(
        "--max-queued-bytes",
        type=_limit(_size),
        metavar="SIZE",
        help="most bytes of waiting task records: 1048576, 512KiB, 64MiB, 1GiB",
    )
    q.add_argument(
        "--max-retention", type=_limit(_duration), metavar="AGE", help="longest --retention: 3600, 12h, 7d"
    )
    from tasklease.cli_limits import add_limit_parser  # lazily: cli_limits imports this module

    COMMANDS.update(add_limit_parser(cmd))

    from tasklease.cli_schedules import add_parsers as schedule_parsers  # lazy: it imports this module

    COMMANDS.update(schedule_parsers(cmd))
    # imported here: cli_workflows imports this module's helpers
    from tasklease.cli_workflows import add_parser as add_workflow

    COMMANDS.update(add_workflow(cmd))
    return parser


# output ----------------------------------------------------------------------------------
# Records hold untrusted text (types, errors, results, tags, worker ids): every
# value printed goes through escape_text (one line, control characters shown as
# \x1b) or, for --json, escape_json (DEL, C1 and bidi controls as \u escapes).
def _print_json(value: Any) -> None:
    sys.stdout.write(escape_json(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()) + "\n")


def _say(text: str, *, file: Any = None) -> None:
    """Print one line of text output, control characters escaped."""
    print(escape_text(text), file=file or sys.stdout, flush=file is sys.stderr)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def _from_now(ts: float) -> str:
    """`` (in 4m 30s)`` or `` (12s ago)``."""
    delta = ts - time.time()
    seconds = round(abs(delta))
    text = f"{seconds // 60}m {seconds % 60}s" if seconds >= 60 else f"{seconds}s"
    return f" (in {text})" if delta >= 0 else f" ({text} ago)"


def _print_task(task: Task) -> None:
    _say(f"id:        {task.id}")
    _say(f"type:      {task.type}")
    _say(f"state:     {task.state.value}")
    _say(f"queue:     {task.queue}   priority: {task.priority}   timeout: {task.timeout_s:g} s")
    _say(f"retries:   {task.retry.max_retries} (backoff {task.retry.backoff_s:g} s)")
    _say(f"created:   {_when(task.created_at)}   updated: {_when(task.updated_at)}")
    if task.not_before:
        _say(f"not before: {_when(task.not_before)}{_from_now(task.not_before)}")
    if task.expires_at:
        _say(f"expires:   {_when(task.expires_at)}{_from_now(task.expires_at)} (if not started by then)")
    _say(f"payload:   {orjson.dumps(task.payload).decode()}")
    if task.state is TaskState.SUCCEEDED:
        _say(f"result:    {orjson.dumps(task.result).decode()}")
    if task.error:
        _say(f"error:     {task.error}")
    if task.rerun_of:
        _say(f"rerun of:  {task.rerun_of}")
    if task.reruns:
        _say(f"rerun as:  {', '.join(task.reruns)}")
    if task.depends_on:
        _say(f"after:     {', '.join(task.depends_on)} (on parent failure: {task.on_parent_failure})")
    if task.workflow:
        _say(f"workflow:  {task.workflow}")
    if task.attempts:
        _say("attempts:")
        for a in task.attempts:
            outcome = a.outcome.value if a.outcome else "running"
            err = f"  {a.error}" if a.error else ""
            _say(f"  #{a.number} {a.worker} {_when(a.started_at)} -> {_when(a.finished_at)} {outcome}{err}")


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    cells = [[escape_text(x) for x in row] for row in (header, *rows)]
    widths = [max(len(x) for x in col) for col in zip(*cells, strict=False)]
    for row in cells:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=False)).rstrip())


# commands --------------------------------------------------------------------------------
async def _with_client(args: argparse.Namespace, fn: Callable[[Client], Awaitable[int]]) -> int:
    client = await Client.connect(store_config(args), namespace=args.namespace)
    try:
        return await fn(client)
    finally:
        await client.close()


def cmd_submit(args: argparse.Namespace) -> int:
    """``tasklease submit``."""
    check_type(args.type)  # [A-Za-z0-9_.:-]{1,128}: a new type is plain text (exit 2 otherwise)
    payload = codec.parse_json(args.payload)
    spec = TaskSpec(
        type=args.type,
        payload=payload,
        queue=args.queue,
        priority=args.priority,
        timeout_s=args.timeout,
        retry=RetryPolicy(max_retries=args.retries, backoff_s=args.backoff),
        retention_s=args.retention,
        requires=parse_requires(args.require) if args.require else None,
        idempotency_key=args.key,
        unique_for_s=args.unique_for,
        depends_on=args.after,
        on_parent_failure=args.on_parent_failure,
        delay_s=args.delay,
        run_at=args.at,
        expires_s=args.expires[1] if args.expires and args.expires[0] == "s" else None,
        expires_at=args.expires[1] if args.expires and args.expires[0] == "at" else None,
    )

    async def run(client: Client) -> int:
        if spec.idempotency_key is None:
            task, created = await client.submit_spec(spec), True
        else:
            result = await client.submit_unique(spec)
            task, created = result.task, result.created
        route = Route(task.type, task.requires)
        if not created:
            # Not an error (exit 0): the key did its job. The id printed is the existing task's.
            _say(
                f"tasklease: already submitted: idempotency key held by task {task.id} "
                f"({task.state.value}); nothing new was submitted",
                file=sys.stderr,
            )
        elif task.state.terminal:
            # Its parent had already failed (or was cancelled): it will never run.
            _say(f"tasklease: note: {task.id} was {task.state.value} at once: {task.error}", file=sys.stderr)
        elif not await eligible_workers(client.store, client.keys, task.queue, route):
            # Not an error: a worker may come later (the task waits queued).
            _say(
                f"tasklease: warning: no live worker runs {route.describe()} in queue {task.queue}; "
                "the task waits until one does",
                file=sys.stderr,
            )
        if not args.wait:
            if args.json:
                _print_json({"id": task.id, "created": created})
            else:
                _say(task.id)
            return EXIT_OK
        final = await client.wait(task.id, args.wait_timeout)
        return _show_final(args, final)

    return asyncio.run(_with_client(args, run))


def _show_final(args: argparse.Namespace, task: Task) -> int:
    if args.json:
        _print_json(codec.task_to_dict(task))
    else:
        _print_task(task)
    return EXIT_OK if task.state is TaskState.SUCCEEDED else EXIT_RUNTIME


def cmd_status(args: argparse.Namespace) -> int:
    """``tasklease status``."""

    async def run(client: Client) -> int:
        task = await client.get(args.id)
        if args.json:
            _print_json(codec.task_to_dict(task))
        else:
            _print_task(task)
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_list(args: argparse.Namespace) -> int:
    """``tasklease list``."""
    state = TaskState.parse(args.state) if args.state else None

    async def run(client: Client) -> int:
        since = None if args.since is None else client.clock.now() - args.since
        page = await client.list_page(
            state=state, queue=args.queue, limit=args.limit, task_type=args.task_type, since=since
        )
        tasks = page.tasks
        if args.json:
            _print_json([codec.task_to_dict(t) for t in tasks])
            return EXIT_OK
        rows = [
            (
                t.id,
                t.state.value,
                t.queue,
                str(t.priority),
                t.type,
                str(len(t.attempts)),
                _when(t.created_at),
                _when(t.updated_at),
            )
            for t in tasks
        ]
        _table(rows, ("ID", "STATE", "QUEUE", "PRIO", "TYPE", "ATTEMPTS", "CREATED", "UPDATED"))
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_rerun(args: argparse.Namespace) -> int:
    """``tasklease rerun``."""

    async def run(client: Client) -> int:
        task = await client.run_again(args.id)
        if args.json:
            _print_json(codec.task_to_dict(task))
        else:
            _say(task.id)
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_pause(args: argparse.Namespace) -> int:
    """``tasklease pause``."""

    async def run(client: Client) -> int:
        pause = await client.pause(args.queue, args.reason)
        if args.json:
            _print_json(pause.as_dict())
        else:
            _say(
                f"queue {pause.queue} paused: nothing is assigned from it until `tasklease resume {pause.queue}`"
            )
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_resume(args: argparse.Namespace) -> int:
    """``tasklease resume``."""

    async def run(client: Client) -> int:
        was = await client.resume(args.queue)
        if args.json:
            _print_json({"queue": args.queue, "was_paused": was})
        else:
            _say(f"queue {args.queue} resumed" if was else f"queue {args.queue} was not paused")
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_drain(args: argparse.Namespace) -> int:
    """``tasklease drain``."""

    async def run(client: Client) -> int:
        await client.drain(args.worker)
        if args.json:
            _print_json({"worker": args.worker, "draining": True})
        else:
            _say(f"worker {args.worker} asked to drain: it takes no new task and stops once its tasks finish")
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_queues(args: argparse.Namespace) -> int:
    """``tasklease queues``."""

    async def run(client: Client) -> int:
        view = (await client.overview()).as_dict()
        if args.json:
            _print_json(view["queues"])
            return EXIT_OK
        rows = [
            (
                q["name"],
                "/".join(str(q["depth"][p]) for p in ("3", "2", "1", "0")),
                str(q["queued"]),
                str(q["running"]),
                str(q["pending"]),
                str(q["waiting"]),
                str(q["failed"]),
                "paused" if q["paused"] else "",
            )
            for q in view["queues"]
        ]
        _table(rows, ("QUEUE", "DEPTH 3/2/1/0", "QUEUED", "RUNNING", "PENDING", "WAITING", "FAILED", ""))
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_cancel(args: argparse.Namespace) -> int:
    """``tasklease cancel``."""

    async def run(client: Client) -> int:
        task = await client.cancel(args.id)
        if args.json:
            _print_json(codec.task_to_dict(task))
        else:
            _say(f"{task.id} cancelled")
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_priority(args: argparse.Namespace) -> int:
    """``tasklease priority``."""

    async def run(client: Client) -> int:
        task = await client.set_priority(args.id, args.priority)
        if args.json:
            _print_json(codec.task_to_dict(task))
        else:
            _say(f"{task.id} priority {task.priority}")
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_wait(args: argparse.Namespace) -> int:
    """``tasklease wait``."""

    async def run(client: Client) -> int:
        return _show_final(args, await client.wait(args.id, args.timeout))

    return asyncio.run(_with_client(args, run))


def _print_waiting(waiting: list[dict[str, Any]]) -> None:
    """Say which types and constraints have queued tasks but no live worker (stats, nodes)."""
    for w in waiting:
        route = Route(w["type"], tuple(sorted(w["requires"].items())))
        _say(f"waiting without a worker: {w['queued']} task(s) of {route.describe()} in queue {w['queue']}")


def cmd_stats(args: argparse.Namespace) -> int:
    """``tasklease stats``."""

    async def run(client: Client) -> int:
        stats = await client.stats()
        if args.json:
            _print_json(stats.as_dict())
            return EXIT_OK
        states = [s.value for s in TaskState]
        rows = [(q, *(str(c[s]) for s in states)) for q, c in stats.queues.items()]
        rows.append(("TOTAL", *(str(stats.states[s]) for s in states)))
        _table(rows, ("QUEUE", *(s.upper() for s in states)))
        w, t = stats.workers, stats.throughput
        _say("")
        _say(f"workers: {w.live} live, {w.running}/{w.capacity} slots busy")
        _say(f"throughput: {t.finished} tasks finished in the last {t.window_s:g} s ({t.per_s:g}/s)")
        _print_waiting([g.as_dict() for g in stats.waiting_without_worker])
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_etcd(args: argparse.Namespace) -> int:
    """``tasklease etcd``: a local etcd in the foreground until SIGINT/SIGTERM.

    Auth is on unless ``--no-auth``: the root password is in
    ``DATA_DIR/root-password`` (0600), and local tasklease commands pointed at
    this port find it while the etcd runs (see :func:`store_config`).
    """
    from tasklease.etcd_server import EtcdServer, local_state_dir
    from tasklease.runners import run_etcd

    data_dir = args.data_dir or local_state_dir() / f"etcd-{args.port}"
    server = EtcdServer(
        data_dir=data_dir, client_port=args.port, peer_port=args.peer_port, auth=not args.no_auth
    )

    def ready() -> None:
        credentials = server.credentials
        access = (
            f"auth on: user {credentials[0]}, password file {credentials[1]}"
            if credentials
            else "auth OFF: any local process may read and write it"
        )
        msg = f"etcd {server.endpoint} ready (data dir {data_dir}, {access}, metrics {server.metrics_url})"
        if args.json:
            _print_json(
                {
                    "endpoint": server.endpoint,
                    "data_dir": str(data_dir),
                    "pid": server.process.pid if server.process else None,
                    "user": credentials[0] if credentials else None,
                    "password_file": str(credentials[1]) if credentials else None,
                }
            )
        else:
            _say(msg)

    code = run_etcd(server, on_ready=ready)
    if code == EXIT_OK and not args.json:
        print("etcd stopped", flush=True)
    return code


def _parse_tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"bad tag {item!r}: use key=value")
        tags[key] = value
    return tags


def cmd_worker(args: argparse.Namespace) -> int:
    """``tasklease worker``: serve until SIGTERM/SIGINT (graceful), a second one stops at once.

    With ``--burst`` it also stops by itself (exit 0) once nothing is left for it.
    """
    from tasklease.keys import Keyspace
    from tasklease.logs import setup_logging
    from tasklease.runners import load_registry, run_worker, tune_gc
    from tasklease.worker import WorkerConfig, default_worker_id, set_import_path

    setup_logging(args.log_level or "info", args.log_format)
    tune_gc()
    set_import_path(args.paths)  # --path DIRs first; the current directory only if given
    allow = frozenset(a.strip() for a in args.allow.split(",") if a.strip())
    registry = load_registry(args.imports, allow)
    config = WorkerConfig(
        worker_id=args.id or default_worker_id(),
        queues=tuple(q.strip() for q in args.queues.split(",") if q.strip()),
        concurrency=args.concurrency,
        weight=args.weight,
        tags=_parse_tags(args.tags),
        lease_ttl_s=args.lease_ttl,
        heartbeat_s=args.heartbeat,
        grace_s=args.grace,
        imports=tuple(args.imports),
        pass_env=tuple(args.pass_env),
        http_allow_nets=tuple(args.http_allow_nets),
        http_deny_nets=tuple(args.http_deny_nets),
        burst=args.burst,
    )
    keys = Keyspace(args.namespace)
    return run_worker(store_config(args), keys, registry, config, http=_http_option(args))


def cmd_scheduler(args: argparse.Namespace) -> int:
    """``tasklease scheduler``: campaign and lead until SIGTERM/SIGINT, then resign at once."""
    from tasklease.logs import setup_logging
    from tasklease.runners import run_scheduler, tune_gc
    from tasklease.scheduler import SchedulerConfig

    setup_logging(args.log_level or "info", args.log_format)
    tune_gc()
    config = SchedulerConfig(
        scheduler_id=args.id or default_process_id("sched"),
        balancer=args.balancer,
        batch_size=args.batch_size,
        lease_ttl_s=args.lease_ttl,
        deadline_grace_s=args.deadline_grace,
        unroutable_after_s=args.unroutable_after,
    )
    return run_scheduler(store_config(args), args.namespace, config, http=_http_option(args))


def cmd_nodes(args: argparse.Namespace) -> int:
    """``tasklease nodes``."""

    async def run(client: Client) -> int:
        nodes = await client.nodes()
        if args.json:
            _print_json([n.to_json() for n in nodes])
            return EXIT_OK
        rows = [
            (
                n.id,
                ",".join(n.queues),
                f"{n.running}/{n.capacity}",
                f"{n.cpu:.0f}%",
                f"{n.memory:.0f}%",
                f"{n.weight:g}",
                ",".join(f"{k}={v}" for k, v in n.tags.items()),
                "draining" if n.draining else "up",
                _when(n.heartbeat_at),
            )
            for n in nodes
        ]
        _table(rows, ("ID", "QUEUES", "RUNNING", "CPU", "MEM", "WEIGHT", "TAGS", "STATE", "HEARTBEAT"))
        _print_waiting([w.as_dict() for w in await waiting_without_worker(client.store, client.keys)])
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_demo(args: argparse.Namespace) -> int:
    """``tasklease demo``."""
    from tasklease.demo import run_demo

    if args.workers < 1:
        raise UsageError("the demo needs at least one worker")
    return run_demo(args.data_dir, args.workers, http=args.http)


def cmd_health(args: argparse.Namespace) -> int:
    """``tasklease health [URL]``: GET the URL (``/readyz`` by default), print the answer's body.

    Exit 0 for a 200, 1 for any other status or no answer, 2 for a bad URL.
    """
    from tasklease.health import check, health_url

    given = args.url if args.url is not None else os.environ.get(HTTP_VARIABLE, "").strip()
    if not given:
        raise UsageError(f"give the URL to check (or set {HTTP_VARIABLE})")
    url = health_url(given)  # InvalidOption: exit 2
    try:
        status, body = check(url, timeout_s=args.timeout)
    except OSError as exc:
        _fail(f"{url}: no answer: {exc}", EXIT_RUNTIME)
    _say(body.splitlines()[0] if body else f"HTTP {status}")
    return EXIT_OK if status == 200 else EXIT_RUNTIME


def cmd_soak(args: argparse.Namespace) -> int:
    """``tasklease soak``: exit 0 if no invariant was violated."""
    from tasklease.soak import run_from_args

    return run_from_args(args)  # too few tasks or workers, a bad --payload-bytes: InvalidOption, exit 2


def cmd_dev(args: argparse.Namespace) -> int:
    """``tasklease dev``: the embedded stack in the foreground until SIGINT/SIGTERM."""
    from tasklease.dev import Stack
    from tasklease.etcd_server import local_state_dir
    from tasklease.runners import run_dev

    if args.workers < 0:
        raise UsageError("--workers must be >= 0")
    sensitive = {a.strip() for a in args.allow.split(",")} & {"shell", "http"}
    if sensitive and args.no_auth:
        raise UsageError(
            f"--allow {','.join(sorted(sensitive))} needs etcd auth: without it any local process "
            "(or a web page) could submit tasks that run as you; drop --no-auth"
        )
    if args.web is not None:
        from tasklease.web.security import web_config

        web_config(args.web, None)  # off loopback without TASKLEASE_WEB_TOKEN: exit 2 before starting
    data_dir = args.data_dir or local_state_dir() / f"dev-{args.port}"
    worker_args = ["--concurrency", str(args.concurrency)]
    for module in args.imports:
        worker_args += ["--import", module]
    for directory in args.paths:
        worker_args += ["--path", os.path.abspath(directory)]
    if args.allow:
        worker_args += ["--allow", args.allow]
    stack = Stack(
        data_dir,
        port=args.port,
        workers=args.workers,
        namespace=args.namespace,
        worker_args=worker_args,
        auth=not args.no_auth,
        http=_http_option(args),
        web=args.web,
    )

    def ready() -> None:
        credentials = stack.etcd.credentials
        access = (
            f"auth on: user {credentials[0]}, password file {credentials[1]}" if credentials else "auth OFF"
        )
        _say(
            f"tasklease dev: etcd {stack.endpoint} (data {data_dir}; {access}), 1 scheduler, "
            f"{args.workers} workers; namespace {args.namespace}. Ctrl-C stops everything.",
            file=sys.stderr,
        )
        for name, url in stack.http_urls.items():
            _say(f"tasklease dev: {name} serves {url}/metrics, /healthz, /readyz", file=sys.stderr)
        if stack.web_url:
            _say(f"tasklease dev: dashboard and REST API at {stack.web_url}/", file=sys.stderr)

    return run_dev(stack, on_ready=ready)


def cmd_web(args: argparse.Namespace) -> int:
    """``tasklease web``: the REST API and the dashboard until SIGTERM/SIGINT (tasklease.web.server)."""
    from tasklease.logs import setup_logging
    from tasklease.web.security import web_config
    from tasklease.web.server import run_web

    setup_logging(args.log_level or "info", args.log_format)
    config = web_config(args.http, args.token, read_only=args.read_only, max_body=args.max_body)
    return run_web(store_config(args), args.namespace, config)


def cmd_purge(args: argparse.Namespace) -> int:
    """``tasklease purge``: count (or, with ``--yes``, delete) finished tasks older than ``--older-than``."""
    from dataclasses import asdict

    from tasklease.purge import check_states
    from tasklease.quotas import format_duration, format_size

    states = None
    if args.state:
        states = check_states([s.strip() for item in args.state for s in item.split(",") if s.strip()])

    async def run(client: Client) -> int:
        r = await client.purge(args.older_than, states=states, queue=args.queue, dry_run=not args.yes)
        if args.json:
            _print_json(asdict(r))
            return EXIT_OK
        where = f"queue {r.queue}" if r.queue else "all queues"
        scope = f"{', '.join(r.states)}; {where}; finished {format_duration(r.older_than_s)} ago or more"
        if r.corrupt:
            _say(f"{r.corrupt} records could not be decoded and were left alone (see the log)")
        if r.dry_run:
            _say(
                f"dry run: {r.matched} finished tasks ({format_size(r.matched_bytes)}) would be deleted "
                f"({scope}); run again with --yes to delete them"
            )
            return EXIT_OK
        _say(
            f"deleted {r.deleted} finished tasks ({format_size(r.deleted_bytes)}) ({scope}); "
            f"{r.kept} changed or expired meanwhile and were kept; {r.remaining} task records remain"
        )
        if r.deleted:
            _say(
                f"etcd gives the space back once compacted and defragmented: etcdctl compact {r.revision}, "
                "then etcdctl defrag (each member); then etcdctl alarm disarm if etcd raised its NOSPACE alarm"
            )
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


def cmd_quota(args: argparse.Namespace) -> int:
    """``tasklease quota show|set|clear``."""
    from tasklease.quotas import change_quota, format_duration, format_size, read_quota, write_quota

    async def run(client: Client) -> int:
        ns = client.keys.namespace
        if args.quota_action == "set":
            given = {
                "max_queued": args.max_queued,
                "max_queued_bytes": args.max_queued_bytes,
                "max_retention_s": args.max_retention,
            }
            changes = {k: (None if v == NO_LIMIT else v) for k, v in given.items() if v is not None}
            if not changes:
                raise UsageError("quota set needs --max-queued, --max-queued-bytes or --max-retention")
            quota, _ = await change_quota(client.store, client.keys, changes, now=time.time())
        elif args.quota_action == "clear":
            _, kv = await read_quota(client.store, client.keys)
            await write_quota(client.store, client.keys, None, expect=kv)
            quota = None
        else:
            quota, _ = await read_quota(client.store, client.keys)
        with_bytes = quota is not None and quota.max_queued_bytes is not None
        usage = await client.quota_usage(with_bytes=with_bytes)
        if args.json:
            _print_json(
                {
                    "namespace": ns,
                    "quota": quota.to_dict() if quota is not None else None,
                    "usage": {"waiting": usage.waiting, "waiting_bytes": usage.waiting_bytes},
                }
            )
            return EXIT_OK
        if quota is None:
            _say(f"namespace {ns}: no quota; {usage.waiting} tasks waiting")
            return EXIT_OK
        _say(f"namespace {ns}:")
        if quota.max_queued is not None:
            _say(f"  max queued:        {quota.max_queued} tasks (waiting now: {usage.waiting})")
        if quota.max_queued_bytes is not None and usage.waiting_bytes is not None:
            _say(
                f"  max queued bytes:  {format_size(quota.max_queued_bytes)} "
                f"(waiting now: {format_size(usage.waiting_bytes)})"
            )
        if quota.max_retention_s is not None:
            _say(f"  max retention:     {format_duration(quota.max_retention_s)}")
        return EXIT_OK

    return asyncio.run(_with_client(args, run))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo,
    "health": cmd_health,
    "dev": cmd_dev,
    "soak": cmd_soak,
    "worker": cmd_worker,
    "nodes": cmd_nodes,
    "scheduler": cmd_scheduler,
    "etcd": cmd_etcd,
    "submit": cmd_submit,
    "status": cmd_status,
    "list": cmd_list,
    "cancel": cmd_cancel,
    "priority": cmd_priority,
    "wait": cmd_wait,
    "stats": cmd_stats,
    "rerun": cmd_rerun,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "drain": cmd_drain,
    "queues": cmd_queues,
    "purge": cmd_purge,
    "quota": cmd_quota,
    "web": cmd_web,
}


def _auth_hint(exc: TaskleaseError) -> str:
    """What to do when etcd wants credentials that were not given."""
    from tasklease.errors import StoreAuthRequired

    if isinstance(exc, StoreAuthRequired):
        return (
            "; this etcd has auth on: give --etcd-user and --etcd-password-file "
            "(a local `tasklease etcd` or `dev` prints where its password file is)"
        )
    return ""


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"tasklease: error: {escape_text(message)}\n")
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    from tasklease.logs import setup_logging

    try:
        args = build_parser().parse_args(argv)
        if args.etcd_password is not None:
            sys.stderr.write(
                "tasklease: warning: --etcd-password is visible to every local user (ps, /proc); "
                "use --etcd-password-file or TASKLEASE_ETCD_PASSWORD_FILE\n"
            )
        args = resolve_environment(args)
        setup_logging(args.log_level or "warning", "text")
        return COMMANDS[args.command](args)
    except (*USER_ERRORS, UsageError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except TaskleaseError as exc:
        _fail(str(exc) + _auth_hint(exc), EXIT_RUNTIME)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader went away (`tasklease status ID | head`): stop quietly, like a tool
        # killed by SIGPIPE. Point stdout at /dev/null so the interpreter's final flush
        # does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
