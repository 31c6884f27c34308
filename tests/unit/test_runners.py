"""The process runners' pure parts: the task registry a worker loads (no etcd, no process)."""

from __future__ import annotations

import pytest

from tasklease.errors import InvalidOption
from tasklease.runners import load_registry


def test_the_registry_holds_the_builtins_and_the_imported_tasks():
    registry = load_registry(["sample_tasks"], frozenset())
    assert {"noop", "sleep", "add"} <= set(registry.names)
    assert "shell" not in registry.names
    assert "shell" in load_registry([], frozenset({"shell"})).names


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("no_such_module_here", "cannot import no_such_module_here: ModuleNotFoundError: .* add --path DIR"),
        ("tasklease.clock", "module tasklease.clock has no tasklease Registry"),
    ],
)
def test_a_module_that_gives_no_tasks_is_a_usage_error(module, message):
    with pytest.raises(InvalidOption, match=message):
        load_registry([module], frozenset())
