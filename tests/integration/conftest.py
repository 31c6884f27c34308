"""Fixtures of the integration tests beyond the shared ones (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

INDEX = b"<!doctype html><title>placeholder</title><script src=/static/app.js></script>"


@pytest.fixture
def static(tmp_path: Path) -> Path:
    """A static directory for ``tasklease web`` in-process: an index, files, a hidden one, one outside."""
    root = tmp_path / "static"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "app.js").write_text("export const x = 1;\n")
    (root / "sub" / "style.css").write_text("body{}\n")
    (root / ".hidden").write_text("secret\n")
    (tmp_path / "outside.txt").write_text("outside\n")
    return root
