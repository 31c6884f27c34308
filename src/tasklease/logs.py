r"""Structured logs: one JSON object per line (or a readable line for a terminal).

Components log with ``extra={"task_id": ..., "attempt": ..., "worker": ...}``;
the formatter puts those fields into the record, so every line about a task
names the task and its attempt.

Terminal safety: task errors, results, node tags and worker ids come from
records that a submitter or a worker wrote, so they are untrusted text. Both
formats escape control characters: the text format shows C0 and C1 control
characters, DEL, the Unicode bidirectional controls and line separators as
``\x1b`` / ``\u202e`` (:func:`escape_text`), so one record is one line and
nothing reaches the terminal as an escape sequence; the JSON format escapes
the same characters as JSON ``\u`` escapes (:func:`escape_json`). The CLI
prints every value through the same functions.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

# C0 controls (newline and tab included), DEL, C1 controls, the Unicode
# bidirectional controls (a "Trojan source" reordering), the line and paragraph
# separators, and lone surrogates (they cannot be encoded for the terminal).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
# In JSON text C0 controls are already escaped; the others may appear raw.
_UNSAFE_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_text(value: object) -> str:
    r"""``value`` as text that is safe to print: control characters shown as ``\x1b``, ``\n``, ``\u202e``.

    Newlines and tabs are escaped too (the result is one line); every other
    character, backslashes included, is kept as it is.
    """
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, text)


def escape_json(text: str) -> str:
    r"""JSON text with DEL, C1 and bidirectional controls as ``\u`` escapes (still valid JSON).

    For the output of ``orjson.dumps`` (which escapes C0 controls itself):
    these characters can only occur inside its strings.
    """
    return _UNSAFE_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# Fields of a LogRecord that are not user extras.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


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
        return escape_json(orjson.dumps(entry, default=str).decode())


class TextFormatter(logging.Formatter):
    """A readable line: time, level, logger, message, then key=value extras.

    The message and the extras are escaped (:func:`escape_text`): a record is
    one line whatever its text holds. A traceback follows on lines of its own,
    each escaped and indented, so none can pass for a record.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the line."""
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{escape_text(k)}={escape_text(v)}" for k, v in _extras(record).items())
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {escape_text(record.name)}: "
        line += escape_text(record.getMessage()) + (f" [{extras}]" if extras else "")
        if record.exc_info:
            trace = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n  {escape_text(t)}" for t in trace)
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
