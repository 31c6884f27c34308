"""Static typing of the task API: a registered task keeps its function's signature.

Runs mypy (strict, the project's settings) on a small program. Lines marked
``# E`` must be errors and no other line may be; the ``assert_type`` lines and
the annotated assignment check what the decorator and ``spec`` return.
"""

from __future__ import annotations

import re
from pathlib import Path

from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """\
from typing import Any, assert_type

from tasklease.client import TaskSpec
from tasklease.executors.base import Registry, TaskFunction
from tasklease.retry import RetryPolicy
from tasklease.store import KVStore, Store

registry = Registry()


@registry.task
def resize(path: str, width: int) -> dict[str, int]:
    return {"width": width}


@registry.task(name="fetch", timeout_s=30, retry=RetryPolicy(max_retries=3))
async def fetch(url: str) -> str:
    return url


same: TaskFunction[[str, int], dict[str, int]] = resize
assert_type(resize.spec(path="a.png", width=200), TaskSpec)
assert_type(resize.spec("a.png", 200), TaskSpec)
assert_type(resize("a.png", 200), dict[str, int])
assert_type(fetch.spec(url="https://example.com"), TaskSpec)

resize.spec(path="a.png", width="wide")  # E: a str where the function takes an int
resize.spec(path="a.png", height=200)  # E: a parameter the function does not have
resize.spec(path="a.png")  # E: a missing argument
fetch.spec(1)  # E: an int where the function takes a str
resize("a.png", None)  # E: calling it directly is checked too


@registry.task(timeout_s="soon")  # E: an option of the wrong type
def late() -> None: ...


@registry.task(colour="blue")  # E: an option that does not exist
def odd() -> None: ...


def the_real_store_is_a_kvstore(store: Store) -> KVStore:
    return store


def untyped_options(options: dict[str, Any]) -> None:
    resize.spec(**options)  # arguments of unknown type are not an error
"""


def test_a_registered_task_keeps_its_signature_for_the_type_checker(tmp_path):
    # Given a program that declares tasks and calls them right and wrong
    program = tmp_path / "tasks_typed.py"
    program.write_text(PROGRAM)
    expected = {
        n for n, line in enumerate(PROGRAM.splitlines(), 1) if line.rstrip().split("# E")[-1] != line.rstrip()
    }

    # When mypy checks it with the project's settings
    stdout, stderr, _ = mypy_api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            "--hide-error-context",
            str(program),
        ]
    )

    # Then exactly the marked lines are errors (assert_type lines included: they hold)
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    lines = {int(m.group(1)) for e in errors if (m := re.search(r"tasks_typed\.py:(\d+): error", e))}
    assert not stderr, stderr
    assert lines == expected, "\n".join(errors)
