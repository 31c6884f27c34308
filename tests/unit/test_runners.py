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


def test_the_import_hint_names_what_is_missing(tmp_path, monkeypatch):
    # A newcomer's worker with --path . and a misspelt module, or a module whose own
    # dependency is missing: "add --path" would send them the wrong way.
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "needs_dep.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InvalidOption, match=r"package myapp was found, but it has no module myapp\.nosuch"):
        load_registry(["myapp.nosuch"], frozenset())
    with pytest.raises(InvalidOption, match="imports no_such_dependency_xyz, which is not installed"):
        load_registry(["myapp.needs_dep"], frozenset())
    with pytest.raises(InvalidOption, match="not on the import path: add --path DIR"):
        load_registry(["otherapp.tasks"], frozenset())
