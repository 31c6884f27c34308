"""Executors for Python task functions.

Async functions run on the worker's event loop and are cancelled at their
deadline; they must not block (CPU-bound work belongs in a sync function).
One that raises ``CancelledError`` itself, when the worker did not cancel it,
fails its attempt (the worker tells the two apart: see execution.py, "Runs").

Sync functions run in child processes (``tasklease.executors.child``, started
in isolated mode with the worker's import path and a minimal environment),
each in its own process group, so that CPU-bound or GIL-holding code can never
starve the worker's lease keep-alive, and so that a task past its deadline is
really stopped: the child's whole process group is SIGKILLed and a fresh
child takes its place. Children are reused between tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import orjson

from tasklease.errors import Retry, TaskleaseError
from tasklease.executors.base import (
    PARENTS_PARAMETER,
    PermanentError,
    TaskContext,
    TaskError,
    TaskFunction,
    call_args,
    child_environment,
)
from tasklease.models import JSON

log = logging.getLogger("tasklease.executors")


# Run by the child's interpreter (isolated: no current directory, no PYTHON*
# variables, no user site): the import path is the worker's, from argv[1].
_BOOT = (
    "import sys, json; sys.path[:] = json.loads(sys.argv.pop(1)); "
    "from tasklease.executors.child import main; main(sys.argv[1:])"
)


def child_import_path() -> list[str]:
    """The import path a child gets: the worker's ``sys.path`` without ``''`` (the current directory).

    The command line (``tasklease worker``) has already removed the current
    directory that ``python -m`` puts first and added ``--path`` directories
    (``worker.set_import_path``); a worker embedded in an application passes
    on the application's path.
    """
    return [p for p in sys.path if p]


def child_command(modules: tuple[str, ...]) -> list[str]:
    """The child's command line: ``python -I -c BOOT PATH_JSON MODULE...``.

    Isolated mode (``-I``): neither the current directory nor ``PYTHONPATH``
    nor the user's site directory is on its path, so a module planted in the
    worker's working directory (even one named ``tasklease`` or ``json``)
    cannot shadow anything; the path is the worker's, given explicitly.
    """
    return [sys.executable, "-I", "-c", _BOOT, orjson.dumps(child_import_path()).decode(), *modules]


class ChildCrashed(TaskError):
    """The child process running a task died (killed, crashed, out of memory)."""


def with_parents(tf: TaskFunction[Any, Any], kwargs: dict[str, Any], parents: JSON) -> dict[str, Any]:
    """The call's keyword arguments, with ``parents`` (its parents' results) if the function takes it.

    The worker's value wins over a payload key of that name.
    """
    if not tf.wants_parents:
        return kwargs
    return {**kwargs, PARENTS_PARAMETER: dict(parents or {})}


class AsyncFunctionExecutor:
    """Runs an ``async def`` task function on the event loop."""

    def __init__(self, tf: TaskFunction[Any, Any]) -> None:
        self.tf = tf
        self.wants_parents = tf.wants_parents

    async def run(self, ctx: TaskContext) -> JSON:
        """Await the function with the payload's arguments (and ``parents``, if it takes them)."""
        args, kwargs = call_args(ctx.payload)
        return await self.tf.fn(*args, **with_parents(self.tf, kwargs, ctx.parents))


class Child:
    """One child process and its pipes. Used by one task at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, modules: tuple[str, ...], env: Mapping[str, str] | None = None) -> Child:
        """Start a child that imports ``modules`` first.

        Its environment is ``env`` (default: :func:`child_environment`, never the
        worker's whole environment); its import path is the worker's (see
        :func:`child_import_path`), given explicitly.
        """
        proc = await asyncio.create_subprocess_exec(
            *child_command(modules),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=dict(child_environment() if env is None else env),
            start_new_session=True,
        )
        return cls(proc)

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.returncode is None

    async def call(self, module: str, qualname: str, payload: JSON, parents: JSON = None) -> dict[str, Any]:
        """Send one request and read its reply (``parents``: the function's ``parents`` argument, if not None).

        Raises:
            ChildCrashed: If the child died before answering.
        """
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request: dict[str, Any] = {"module": module, "qualname": qualname, "payload": payload}
        if parents is not None:
            request["parents"] = parents
        data = orjson.dumps(request)
        try:
            self.proc.stdin.write(len(data).to_bytes(4, "big") + data)
            await self.proc.stdin.drain()
            header = await self.proc.stdout.readexactly(4)
            reply = await self.proc.stdout.readexactly(int.from_bytes(header, "big"))
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as exc:
            code = await self.proc.wait()
            raise ChildCrashed(f"the task's child process died (exit code {code})") from exc
        result: dict[str, Any] = orjson.loads(reply)
        return result

    async def kill(self) -> None:
        """SIGKILL the child's whole process group and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()

    async def close(self) -> None:
        """Ask the child to exit (end of input); kill it if it does not."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 2.0)
        except TimeoutError:
            await self.kill()


class ProcessPool:
    """Idle children kept for reuse; at most ``size`` exist at once.

    Args:
        size: The worker's concurrency.
        modules: Modules each child imports at start (``--import``).
        env: The children's environment (default: :func:`child_environment`).
    """

    def __init__(self, size: int, modules: tuple[str, ...], env: Mapping[str, str] | None = None) -> None:
        self.size = size
        self.modules = modules
        self.env = dict(child_environment() if env is None else env)
        # Touched only from the event loop.
        self._idle: list[Child] = []
        self._all: set[Child] = set()
        self._closed = False

    async def _take(self) -> Child:
        while self._idle:
            child = self._idle.pop()
            if child.alive:
                return child
            self._all.discard(child)
        child = await Child.spawn(self.modules, self.env)
        self._all.add(child)
        return child

    async def call(self, tf: TaskFunction[Any, Any], payload: JSON, parents: JSON = None) -> JSON:
        """Run ``tf`` with ``payload`` (and ``parents``, if it takes them) in a child; kill it if we are cancelled.

        Raises:
            PermanentError: The function raised one (or its result is not JSON).
            Retry: The function raised one (its delay crosses the process boundary).
            TaskError: The function raised anything else, or its child died.
        """
        child = await self._take()
        try:
            reply = await child.call(
                tf.module, tf.qualname, payload, dict(parents or {}) if tf.wants_parents else None
            )
        except BaseException:
            # Cancelled (timeout, cancel, shutdown) or crashed: the child may
            # still be running the task. Kill it and its whole process group.
            self._all.discard(child)
            await asyncio.shield(child.kill())
            raise
        if self._closed:
            await child.close()
        else:
            self._idle.append(child)
        if "ok" in reply:
            return reply["ok"]
        if isinstance(after := reply.get("retry_after"), int | float):
            raise Retry(str(reply.get("error")), after=after)
        cls = PermanentError if reply.get("permanent") else TaskError
        raise cls(str(reply.get("error")))

    async def close(self) -> None:
        """Stop every child. Idempotent."""
        self._closed = True
        children, self._all, self._idle = list(self._all), set(), []
        await asyncio.gather(*(c.close() for c in children), return_exceptions=True)


class SyncFunctionExecutor:
    """Runs a plain ``def`` task function in a child process of a pool."""

    def __init__(self, tf: TaskFunction[Any, Any], pool: ProcessPool) -> None:
        self.tf = tf
        self.pool = pool
        self.wants_parents = tf.wants_parents

    async def run(self, ctx: TaskContext) -> JSON:
        """Call the function in a child process."""
        try:
            return await self.pool.call(self.tf, ctx.payload, ctx.parents)
        except TaskleaseError:
            raise
        except OSError as exc:
            raise TaskError(f"could not run the task's child process: {exc}") from exc
