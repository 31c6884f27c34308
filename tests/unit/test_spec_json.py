"""The JSON form of a submit (spec_from_dict) and of a listed task (codec.task_summary)."""

from __future__ import annotations

import pytest

from tasklease import codec
from tasklease.errors import InvalidOption, InvalidPriority
from tasklease.models import Attempt, Task, TaskState
from tasklease.spec import spec_from_dict

TASK_ID = "01HZZZZZZZZZZZZZZZZZZZZZZZ"


def test_every_key_of_the_json_form_reaches_the_spec():
    spec = spec_from_dict(
        {
            "type": "report.build",
            "payload": {"rows": ["x" * 1000] * 4},
            "queue": "reports",
            "priority": 3,
            "timeout_s": 12.5,
            "retries": 2,
            "backoff_s": 0.5,
            "backoff_max_s": 10,
            "max_losses": 4,
            "retention_s": 3600,
            "requires": {"zone": "eu"},
            "task_id": TASK_ID,
            "trace": {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
        }
    )
    assert (spec.type, spec.queue, spec.priority, spec.timeout_s) == ("report.build", "reports", 3, 12.5)
    assert (
        spec.retry.max_retries,
        spec.retry.backoff_s,
        spec.retry.backoff_max_s,
        spec.retry.max_losses,
    ) == (
        2,
        0.5,
        10.0,
        4,
    )
    assert spec.retention_s == 3600.0 and spec.task_id == TASK_ID and spec.requires == {"zone": "eu"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "a task must be a JSON object"),
        ({}, "a task needs a type"),
        ({"type": 7}, "type must be a string"),
        ({"type": "t", "prio": 1}, "unknown task field(s): prio"),
        ({"type": "t", "priority": True}, "priority must be an integer"),
        ({"type": "t", "timeout_s": "5"}, "timeout_s must be a number"),
        ({"type": "t", "requires": {"zone": 1}}, "requires must be an object of string values"),
        ({"type": "<img src=x>"}, "task type"),
    ],
)
def test_a_bad_json_task_gets_one_line_naming_what_is_wrong(body, message):
    with pytest.raises(InvalidOption) as err:
        spec_from_dict(body)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_range_checks_are_the_specs_own():
    with pytest.raises(InvalidPriority):
        spec_from_dict({"type": "t", "priority": 9})


def test_a_summary_has_no_payload_or_result_and_cuts_the_error():
    task = Task(
        id=TASK_ID,
        type="t",
        payload={"big": "x" * 10_000},
        state=TaskState.FAILED,
        attempts=(Attempt(number=1, worker="w1", started_at=1.0),),
        result=None,
        error="E" * 5000,
        rerun_of=None,
        reruns=("01HZZZZZZZZZZZZZZZZZZZZZZY",),
    )
    summary = codec.task_summary(task)
    assert "payload" not in summary and "result" not in summary
    assert len(summary["error"]) == codec.SUMMARY_ERROR_CHARS
    assert (summary["attempts"], summary["worker"], summary["reruns"]) == (
        1,
        "w1",
        ["01HZZZZZZZZZZZZZZZZZZZZZZY"],
    )


def test_rerun_links_survive_the_record_codec_and_bad_links_are_dropped():
    task = Task(id=TASK_ID, type="t", payload=None, rerun_of="01HZZZZZZZZZZZZZZZZZZZZZZY")
    again = codec.decode_task("k", codec.encode_task(task))
    assert again.rerun_of == task.rerun_of and again.reruns == ()
    d = codec.task_to_dict(task)
    d["reruns"] = ["<script>", TASK_ID]
    d["rerun_of"] = 5
    decoded = codec.task_from_dict(d)
    assert decoded.reruns == (TASK_ID,) and decoded.rerun_of is None
