"""The child process that runs sync task functions (started by executors/python.py, ``child_command``).

Protocol on the pipes: the parent writes frames to our stdin, we write frames
to the original stdout; a frame is a 4-byte big-endian length and a JSON
object. Request ``{"module", "qualname", "payload"}`` (and ``"parents"``, the
function's ``parents`` argument, when it takes one); reply ``{"ok": result}``
or ``{"error", "kind", "permanent"}``. Task code's own prints go to stderr so
they cannot corrupt the protocol. The parent kills our process group at a
deadline; we never need to clean up.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any, BinaryIO

import orjson

from tasklease.errors import Retry
from tasklease.executors.base import PARENTS_PARAMETER, PermanentError, TaskFunction, call_args
from tasklease.executors.orphan import die_with_parent, watch_parent


def read_frame(stream: BinaryIO) -> bytes | None:
    """Read one frame; None at end of input."""
    header = stream.read(4)
    if len(header) < 4:
        return None
    size = int.from_bytes(header, "big")
    return stream.read(size)


def write_frame(stream: BinaryIO, obj: Any) -> None:
    """Write one frame."""
    data = orjson.dumps(obj)
    stream.write(len(data).to_bytes(4, "big") + data)
    stream.flush()


def resolve(module: str, qualname: str) -> Any:
    """Import ``module`` and walk ``qualname`` to the function."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj.fn if isinstance(obj, TaskFunction) else obj


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer requests until the parent closes our stdin."""
    while (frame := read_frame(inp)) is not None:
        request = orjson.loads(frame)
        try:
            fn = resolve(request["module"], request["qualname"])
            args, kwargs = call_args(request["payload"])
            if "parents" in request:  # the function takes its parents' results (PARENTS_PARAMETER)
                kwargs = {**kwargs, PARENTS_PARAMETER: request["parents"]}
            result = fn(*args, **kwargs)
            try:
                reply: dict[str, Any] = {"ok": orjson.loads(orjson.dumps(result))}
            except TypeError as exc:
                reply = {
                    "error": f"result is not JSON-serialisable: {exc}",
                    "kind": "TypeError",
                    "permanent": True,
                }
        except Exception as exc:
            reply = {
                "error": f"{type(exc).__name__}: {exc}",
                "kind": type(exc).__name__,
                "permanent": isinstance(exc, PermanentError),
                **({"retry_after": exc.after} if isinstance(exc, Retry) else {}),
                "traceback": traceback.format_exc(limit=20)[-4000:],
            }
        write_frame(out, reply)


def main(modules: list[str]) -> None:
    """Entry point: import the worker's modules, then serve.

    Started by the worker (executors/python.py, ``child_command``) as
    ``python -I -c BOOT PATH_JSON MODULE...``: the bootstrap sets ``sys.path``
    to the worker's before importing this module, then calls this.
    """
    die_with_parent()
    watch_parent()
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # task prints go to stderr
    for module in modules:
        importlib.import_module(module)
    serve(sys.stdin.buffer, proto_out)
