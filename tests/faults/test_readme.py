"""README.md's examples run as written, against a real `tasklease dev` cluster.

Every fenced code block in README.md carries a comment right above it:

- ``<!-- readme-test: run -->``: a shell block runs with ``bash -euo pipefail``
  (lines that start a long-running process, ``tasklease dev`` or ``tasklease
  worker``, are started in the background first, and the test waits until their
  workers have registered); a Python block runs with this interpreter;
- ``<!-- readme-test: file PATH -->``: the block is written to PATH (a module the
  other examples import), before any example runs;
- ``<!-- readme-test: skip (reason) -->``: not meant to run here, with the reason.

A block without a comment fails the test, so a new example is either run or
explicitly excused. The only changes made to the text: ``tasklease dev`` gets
``--port`` with a free port (the others find it through ``TASKLEASE_ETCD``),
and everything runs in a temporary directory with its own ``XDG_DATA_HOME``.
At the end, no task may have failed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARK = re.compile(r"<!-- readme-test: (run|skip|file)\s*(.*?)\s*-->")
BACKGROUND = re.compile(r"^tasklease (dev|worker)\b")

pytestmark = pytest.mark.timeout(300)


@dataclass
class Block:
    line: int
    lang: str
    text: str
    mark: str | None
    arg: str


def blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    result = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mark = MARK.search(prev)
        result.append(
            Block(
                start + 1,
                m.group(1),
                "\n".join(lines[start + 1 : j]),
                *(mark.groups() if mark else (None, "")),
            )
        )
        i = j + 1
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined, comments and blanks dropped."""
    joined = text.replace("\\\n", " ")
    return [ln for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_every_readme_block_is_run_or_excused():
    missing = [b.line for b in blocks() if b.mark is None]
    assert not missing, f"README.md code blocks without a readme-test comment at lines {missing}"
    assert all(b.arg for b in blocks() if b.mark in ("skip", "file")), "skip and file need a reason or a path"


def test_readme_examples_run_as_written(tmp_path: Path, tasklease_bin: str):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLEASE_")}
    bindir = str(Path(tasklease_bin).parent)
    env.update(
        PATH=bindir + os.pathsep + env.get("PATH", ""),
        XDG_DATA_HOME=str(tmp_path / "xdg"),
        TASKLEASE_ETCD=f"http://127.0.0.1:{port}",
        TASKLEASE_LOG_LEVEL="warning",
    )
    background: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def tails() -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in logs)

    def run(cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{what} exited {out.returncode}\n{out.stdout}\n{out.stderr}\n{tails()}"
        return out

    def workers() -> int:
        out = subprocess.run(
            [tasklease_bin, "nodes", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        return len(json.loads(out.stdout)) if out.returncode == 0 else -1

    def start(line: str) -> None:
        if line.startswith("tasklease dev"):
            line = f"{line.split('#', 1)[0].strip()} --port {port}"
        log = tmp_path / f"bg-{len(background)}.log"
        logs.append(log)
        expected = max(0, workers()) + (int(m.group(1)) if (m := re.search(r"--workers (\d+)", line)) else 1)
        with log.open("wb") as f:
            background.append(
                subprocess.Popen(
                    ["bash", "-c", "exec " + line.split("#", 1)[0]],
                    cwd=tmp_path,
                    env=env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 90
        while workers() < expected:
            assert all(p.poll() is None for p in background), f"{line!r} exited\n{tails()}"
            assert time.monotonic() < deadline, f"workers of {line!r} did not register\n{tails()}"
            time.sleep(0.2)

    try:
        for block in blocks():  # the modules the examples import, first
            if block.mark == "file":
                path = tmp_path / block.arg
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block.text + "\n")
                (path.parent / "__init__.py").touch()
        ran = 0
        for block in blocks():
            if block.mark == "run" and block.lang == "sh":
                lines = logical_lines(block.text)
                for line in [ln for ln in lines if BACKGROUND.match(ln)]:
                    start(line)
                rest = [ln for ln in lines if not BACKGROUND.match(ln)]
                if rest:
                    run(["bash", "-euo", "pipefail", "-c", "\n".join(rest)], f"README line {block.line}")
                ran += 1
            elif block.mark == "run" and block.lang == "python":
                script = tmp_path / f"readme_{block.line}.py"
                script.write_text(block.text + "\n")
                out = run([sys.executable, str(script)], f"README line {block.line}")
                assert "succeeded" in out.stdout, out.stdout
                ran += 1
        assert ran >= 4

        # Then nothing failed: every task succeeded, or was cancelled on purpose
        deadline = time.monotonic() + 60
        while True:
            stats = json.loads(run([tasklease_bin, "stats", "--json"], "stats").stdout)
            states = stats["states"]
            if states["queued"] + states["running"] + states["pending"] == 0:
                break
            assert time.monotonic() < deadline, f"tasks still waiting: {states}\n{tails()}"
            time.sleep(0.2)
        assert states["failed"] == 0, f"{states}\n{tails()}"
        assert states["succeeded"] >= 100
        assert stats["waiting_without_worker"] == []
    finally:
        for p in reversed(background):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in background:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_logical_lines_join_continuations():
    assert logical_lines("a \\\n  b  # x\n# c\n\nd") == ["a    b  # x", "d"]
    assert shlex.split(logical_lines("tasklease submit x \\\n --wait")[0]) == [
        "tasklease",
        "submit",
        "x",
        "--wait",
    ]
