"""Task types are a documented character set at submit; stored records with others still decode."""

from __future__ import annotations

import orjson
import pytest

from tasklease import codec
from tasklease.errors import InvalidOption
from tasklease.models import Task, TaskState, check_type

TASK_ID = "01J00000000000000000000000"


@pytest.mark.parametrize(
    "task_type",
    ["noop", "resize", "myapp.tasks:resize", "a-b_c.d:e", "X" * 128, "0"],
)
def test_types_of_the_character_set_are_accepted(task_type: str) -> None:
    assert check_type(task_type) == task_type


@pytest.mark.parametrize(
    "task_type",
    [
        "",
        "x" * 129,
        "a\x1b[2Jb",  # clear the screen
        "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\",  # an OSC-8 link
        "\x1b]0;title\x07",  # set the window title
        "line\nforged",
        "tab\there",
        "del\x7f",
        "c1\x9b2J",  # the 8-bit CSI
        "space here",
        "caf\u00e9",
        "rtl\u202eoverride",
        "a/b",
        None,
        5,
    ],
)
def test_other_types_are_refused_with_the_type_escaped(task_type: object) -> None:
    with pytest.raises(InvalidOption, match=r"\[A-Za-z0-9_\.:-\]") as caught:
        check_type(task_type)
    message = str(caught.value)
    assert message.isprintable(), message
    assert message.isascii(), message


def test_a_stored_record_with_another_type_still_decodes() -> None:
    # A record written before the character set was enforced (or by hand) is read,
    # not refused as corrupt: validation is at submit and registration only.
    record = Task(id=TASK_ID, type="noop", payload=None, state=TaskState.FAILED)
    data = orjson.loads(codec.encode_task(record))
    data["type"] = "old type\x1b[2J"
    decoded = codec.decode_task("/ns/task/" + TASK_ID, orjson.dumps(data))
    assert decoded.type == "old type\x1b[2J"


def test_registering_a_task_type_outside_the_character_set_is_refused():
    from tasklease.executors.base import Registry
    from tasklease.executors.builtin import Noop

    registry = Registry()
    with pytest.raises(InvalidOption):
        registry.register("bad\x1b[2Jtype", Noop())
    with pytest.raises(InvalidOption):
        registry.task(name="has space")(lambda: None)
    registry.register("ok.type:v2", Noop())
    assert "ok.type:v2" in registry.names
