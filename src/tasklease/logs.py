"""Structured logs: one JSON object per line (or a readable line for a terminal).

Components log with ``extra={"task_id": ..., "attempt": ..., "worker": ...}``;
the formatter puts those fields into the record, so every line about a task
names the task and its attempt.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

# Fields of a LogRecord that are not user extras.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
CONTEXT_FIELDS = ("component", "worker", "task_id", "attempt", "queue")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line."""
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """A readable line: time, level, logger, message, then key=value extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the line."""
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {record.name}: "
        line += record.getMessage() + (f" [{extras}]" if extras else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    """Send tasklease's logs to stderr.

    Args:
        level: debug, info, warning or error.
        fmt: ``json`` (one object per line) or ``text``.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # gRPC and the etcd client are chatty at info level.
    logging.getLogger("etcd3aio").setLevel(logging.WARNING)
