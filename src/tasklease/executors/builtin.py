"""Built-in task types: ``noop``, ``sleep``, ``shell`` and ``http``.

``shell`` and ``http`` let whoever can submit a task run commands or make
requests from every worker, so a worker registers them only when started with
``--allow shell`` / ``--allow http``.

Both stop for real at a timeout, a cancel or a shutdown: ``shell`` SIGKILLs
the command's process group (which also dies with the worker: see
executors/supervisor.py); ``http`` runs on asyncio streams
(executors/http.py), so its connection is closed at once and no thread is
left reading. ``http`` does not follow redirects unless the payload asks
(``"follow_redirects": true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasklease.executors.base import PermanentError, Registry, TaskContext, TaskError
from tasklease.executors.http import fetch
from tasklease.executors.supervisor import SPAWN_ERROR
from tasklease.models import JSON

OUTPUT_LIMIT = 64 * 1024
# The parent of every shell command (see its docstring): run by file name, isolated.
SUPERVISOR = str(Path(__file__).with_name("supervisor.py"))
SENSITIVE = frozenset({"shell", "http"})


def _payload_dict(ctx: TaskContext) -> dict[str, Any]:
    if not isinstance(ctx.payload, dict):
        raise PermanentError(f"{ctx.type} needs a JSON object payload, got {type(ctx.payload).__name__}")
    return ctx.payload


class Noop:
    """Returns its payload."""

    async def run(self, ctx: TaskContext) -> JSON:
        """Return the payload unchanged."""
        return ctx.payload


class Sleep:
    """Sleeps ``payload.seconds`` and returns ``{"slept": seconds}``."""

    async def run(self, ctx: TaskContext) -> JSON:
        """Sleep (cancellable)."""
        seconds = _payload_dict(ctx).get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise PermanentError("sleep needs payload.seconds, a number >= 0")
        await asyncio.sleep(seconds)
        return {"slept": seconds}


class _Capture(asyncio.SubprocessProtocol):
    """Keeps the first ``limit`` bytes of stdout and stderr; reads (and drops) the rest.

    Reading never stops, so a command that writes a lot never blocks on a full
    pipe. ``done`` is set once the process has exited and every pipe is closed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out = bytearray()
        self.err = bytearray()
        self.truncated = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        kept = self.out if fd == 1 else self.err
        room = self.limit - len(kept)
        if room > 0:
            kept += data[:room] if isinstance(data, bytes) else data[:room].encode()
        if len(data) > room:
            self.truncated = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Shell:
    """Runs ``payload.argv`` (a list; no shell) and captures exit code and output.

    Payload: ``{"argv": ["cmd", "arg"], "cwd": "/dir", "env": {"K": "V"},
    "stdin": "text", "check": true}``. The result holds ``exit_code`` and the
    first 64 KiB of ``stdout`` and ``stderr`` (the rest is read and dropped).
    With ``check`` (the default) a non-zero exit code fails the attempt.

    The environment is the worker's minimal one (``TaskContext.env``: an
    allowlist and ``--pass-env``), plus the payload's ``env``. ``stdin`` is
    written while the output is read, so any size within the payload limit
    works. The command runs in its own process group, under
    executors/supervisor.py: the group is SIGKILLed at a timeout, a cancel or a
    shutdown (then the pipes are closed, and only then is the exit awaited),
    when the worker dies (even by SIGKILL), and, for whatever the command left
    running in the background, when the command exits.
    """

    async def run(self, ctx: TaskContext) -> JSON:
        """Run the command."""
        p = _payload_dict(ctx)
        argv = p.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise PermanentError("shell needs payload.argv, a non-empty list of strings")
        env = dict(ctx.env)
        if p.get("env") is not None:
            if not isinstance(p["env"], dict):
                raise PermanentError("shell payload.env must be an object")
            env.update({str(k): str(v) for k, v in p["env"].items()})
        stdin_text = p.get("stdin")
        program = shutil.which(argv[0], path=env.get("PATH", os.defpath))
        if program is None:
            raise PermanentError(f"cannot run {argv[0]!r}: not found or not executable")
        loop = asyncio.get_running_loop()
        try:
            transport, capture = await loop.subprocess_exec(
                lambda: _Capture(OUTPUT_LIMIT),
                sys.executable,
                "-I",
                "-S",
                SUPERVISOR,
                str(os.getpid()),
                "--",
                program,
                *argv[1:],
                cwd=p.get("cwd"),
                env=env,
                stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise PermanentError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
        try:
            stdin = transport.get_pipe_transport(0)
            if stdin is not None:
                # Buffered by the transport and written as the command reads it, while
                # the output is read: no deadlock. Closed once written (end of input).
                assert isinstance(stdin, asyncio.WriteTransport)
                stdin.write(str(stdin_text).encode())
                stdin.close()
            await capture.done
        except BaseException:
            # Timeout, cancel or shutdown: kill the whole group, close our ends of the
            # pipes (nothing may wait on a pipe nobody reads), then reap.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(transport.get_pid(), signal.SIGKILL)
            transport.close()
            await asyncio.shield(capture.done)
            raise
        finally:
            transport.close()
        code = transport.get_returncode()
        assert code is not None
        out = capture.out.decode(errors="replace")
        err = capture.err.decode(errors="replace")
        if code == 127 and err.startswith(SPAWN_ERROR):
            raise PermanentError(f"cannot run {argv[0]!r}: {err[len(SPAWN_ERROR) :].strip()}")
        result = {"exit_code": code, "stdout": out, "stderr": err, "truncated": capture.truncated}
        if code != 0 and p.get("check", True):
            tail = err.strip().splitlines()[-1:] or [""]
            raise TaskError(f"command exited with code {code}: {tail[0][:500]}")
        return result


class Http:
    """Makes an HTTP request: ``{"method": "POST", "url": ..., "body": ..., "headers": {...}}``.

    A JSON ``body`` that is not a string is sent as JSON. The result holds
    ``status``, ``headers`` and the first 64 KiB of ``body`` (the rest is not
    downloaded; ``truncated`` says there was more). 5xx and network errors
    fail the attempt (retryable); 4xx fails it permanently. Redirects are not
    followed: a 3xx response is the result (its ``Location`` in ``headers``),
    unless the payload says ``"follow_redirects": true`` (at most 5, same scheme
    only). Every connection (each redirect hop's too) goes only to a resolved
    address the worker's ``TaskContext.network`` permits: loopback, private,
    link-local (cloud metadata) and other internal networks are refused by
    default (a permanent failure naming the rule) unless the worker allows them
    (``--http-allow-net``).

    The request runs on the worker's event loop (executors/http.py, asyncio
    streams): at the attempt's timeout, a cancel or a shutdown the connection
    is closed at once; no thread is left reading.
    """

    async def run(self, ctx: TaskContext) -> JSON:
        """Make the request (within the attempt's timeout)."""
        p = _payload_dict(ctx)
        url = p.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise PermanentError("http needs payload.url, an http:// or https:// URL")
        method = str(p.get("method", "GET")).upper()
        raw_headers = p.get("headers") or {}
        if not isinstance(raw_headers, dict):
            raise PermanentError("http payload.headers must be an object")
        headers = {str(k): str(v) for k, v in raw_headers.items()}
        follow = p.get("follow_redirects", False)
        if not isinstance(follow, bool):
            raise PermanentError("http payload.follow_redirects must be true or false")
        body = p.get("body")
        data: bytes | None = None
        if isinstance(body, str):
            data = body.encode()
        elif body is not None:
            import orjson

            data = orjson.dumps(body)
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        response = await fetch(
            method,
            url,
            headers=headers,
            body=data,
            timeout_s=ctx.timeout_s,
            body_limit=OUTPUT_LIMIT,
            follow_redirects=follow,
            network=ctx.network,
        )
        result = {
            "status": response.status,
            "headers": response.headers,
            "body": response.body.decode(errors="replace"),
            "truncated": response.truncated,
        }
        if response.status >= 500:
            raise TaskError(f"http status {response.status}")
        if response.status >= 400:
            raise PermanentError(f"http status {response.status}")
        return result


def builtin_registry(allow: frozenset[str] = frozenset()) -> Registry:
    """The built-in task types; ``shell`` and ``http`` only if allowed.

    Raises:
        InvalidOption: For an unknown name in ``allow``.
    """
    from tasklease.errors import InvalidOption

    unknown = allow - SENSITIVE
    if unknown:
        raise InvalidOption(
            f"--allow takes {', '.join(sorted(SENSITIVE))}; unknown: {', '.join(sorted(unknown))}"
        )
    registry = Registry()
    registry.register("noop", Noop())
    registry.register("sleep", Sleep())
    if "shell" in allow:
        registry.register("shell", Shell())
    if "http" in allow:
        registry.register("http", Http())
    return registry
