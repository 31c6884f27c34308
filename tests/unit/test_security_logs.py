"""Log formats escape control characters: a record is one line, no escape sequence reaches a terminal."""

from __future__ import annotations

import logging
import sys

import orjson

from tasklease.logs import JsonFormatter, TextFormatter, escape_json, escape_text

ERROR = "RuntimeError: boom\n12:00:00.000 INFO    tasklease.worker: forged line \x1b[2J\x1b]0;title\x07\x9b1m"


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"bad\n{ERROR}")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("tasklease.worker", logging.WARNING, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_a_text_log_line_with_a_newline_and_escape_in_a_task_error_is_one_escaped_line() -> None:
    line = TextFormatter().format(
        record("task failed: %s", ERROR, task_id="01J0", worker="w\x1b[31m", error=ERROR)
    )
    assert "\n" not in line, line
    for char in ("\x1b", "\x07", "\x9b"):
        assert char not in line, repr(line)
    assert "task failed: RuntimeError: boom\\n12:00:00.000 INFO" in line
    assert "\\x1b[2J\\x1b]0;title\\x07\\x9b1m" in line
    assert "worker=w\\x1b[31m" in line


def test_a_traceback_is_escaped_and_indented_so_no_line_passes_for_a_record() -> None:
    text = TextFormatter().format(record("crashed", exc=True))
    first, *trace = text.split("\n")
    assert first.endswith("tasklease.worker: crashed"), first
    assert trace, text
    assert all(line.startswith("  ") for line in trace), text
    assert "\x1b" not in text and "\x9b" not in text, repr(text)


def test_the_json_format_escapes_c1_and_del_too_and_stays_valid_json() -> None:
    line = JsonFormatter().format(record("task failed: %s", ERROR + "\x7f\u202e", error=ERROR))
    assert "\n" not in line
    for char in ("\x1b", "\x07", "\x9b", "\x7f", "\u202e"):
        assert char not in line, repr(line)
    entry = orjson.loads(line)
    assert entry["msg"] == "task failed: " + ERROR + "\x7f\u202e"
    assert entry["error"] == ERROR


def test_escape_text_keeps_ordinary_text() -> None:
    assert (
        escape_text("plain text, ünïcödé, 日本語, back\\slash") == "plain text, ünïcödé, 日本語, back\\slash"
    )
    assert escape_text("a\tb\r\n\x00\x7f\x85\u2028\u2066") == "a\\tb\\r\\n\\x00\\x7f\\x85\\u2028\\u2066"
    assert escape_text(42) == "42"
    assert escape_json('{"a": "\x7f"}') == '{"a": "\\u007f"}'
