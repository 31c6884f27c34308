"""Built-in task types: ``noop``, ``sleep``, ``shell`` and ``http``.

``shell`` and ``http`` let whoever can submit a task run commands or make
requests from every worker, so a worker registers them only when started with
``--allow shell`` / ``--allow http``.

Both stop for real at a timeout, a cancel or a shutdown: ``shell`` SIGKILLs
the command's process group; ``http`` runs on asyncio streams
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
from typing import Any

from tasklease.executors.base import PermanentError, Registry, TaskContext, TaskError
from tasklease.executors.http import fetch
from tasklease.models import JSON

OUTPUT_LIMIT = 64 * 1024
# The command dies with the worker (kernel PDEATHSIG, set by util-linux's setpriv
# before it execs the command). No preexec_fn: Python code between fork and exec
# is unsafe in a process with threads (gRPC's).
_SETPRIV = shutil.which("setpriv")
PDEATHSIG_PREFIX: tuple[str, ...] = (_SETPRIV, "--pdeathsig", "KILL", "--") if _SETPRIV else ()
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


async def _read_bounded(stream: asyncio.StreamReader | None, limit: int) -> tuple[str, bool]:
    """Read a stream to its end, keeping the first ``limit`` bytes."""
    if stream is None:
        return "", False
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(65536):
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
        if len(chunk) > room:
            truncated = True
    return kept.decode(errors="replace"), truncated


class Shell:
    """Runs ``payload.argv`` (a list; no shell) and captures exit code and output.

    Payload: ``{"argv": ["cmd", "arg"], "cwd": "/dir", "env": {"K": "V"},
    "stdin": "text", "check": true}``. The result holds ``exit_code`` and the
    first 64 KiB of ``stdout`` and ``stderr``. With ``check`` (the default) a
    non-zero exit code fails the attempt. The command runs in its own process
    group, which is SIGKILLed if the attempt is cancelled or times out.
    """

    async def run(self, ctx: TaskContext) -> JSON:
        """Run the command."""
        p = _payload_dict(ctx)
        argv = p.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise PermanentError("shell needs payload.argv, a non-empty list of strings")
        env = None
        if p.get("env") is not None:
            if not isinstance(p["env"], dict):
                raise PermanentError("shell payload.env must be an object")
            env = {**os.environ, **{str(k): str(v) for k, v in p["env"].items()}}
        stdin_text = p.get("stdin")
        program = shutil.which(argv[0], path=(env or os.environ).get("PATH"))
        if program is None:
            raise PermanentError(f"cannot run {argv[0]!r}: not found or not executable")
        try:
            proc = await asyncio.create_subprocess_exec(
                *PDEATHSIG_PREFIX,
                program,
                *argv[1:],
                cwd=p.get("cwd"),
                env=env,
                stdin=asyncio.subprocess.PIPE if stdin_text is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise PermanentError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
        try:
            if stdin_text is not None and proc.stdin is not None:
                proc.stdin.write(str(stdin_text).encode())
                await proc.stdin.drain()
                proc.stdin.close()
            (out, out_cut), (err, err_cut) = await asyncio.gather(
                _read_bounded(proc.stdout, OUTPUT_LIMIT), _read_bounded(proc.stderr, OUTPUT_LIMIT)
            )
            code = await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
            raise
        result = {
            "exit_code": code,
            "stdout": out,
            "stderr": err,
            "truncated": out_cut or err_cut,
        }
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
    unless the payload says ``"follow_redirects": true`` (at most 5).

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
