#!/usr/bin/env python3
"""Install everything into ./.venv and run one job. Needs only Python >= 3.11.

    python3 bootstrap.py demo    # install, then run `tasklease demo`
    python3 bootstrap.py test    # install, then lint, type-check and run every test
    python3 bootstrap.py bench   # install, then run the benchmarks (bench/)

Installing is idempotent: a second run only checks that the venv is current.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".tasklease-installed"


def run(*cmd: str | Path) -> None:
    """Echo and run a command in the repository; raise if it fails."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True)


def install() -> None:
    """Create .venv and install the project with its dev extra (skipped if up to date)."""
    if sys.version_info < (3, 11):  # noqa: UP036 (this script may run under any python3)
        sys.exit(f"tasklease needs Python >= 3.11, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    STAMP.write_text(digest)


def main() -> int:
    """Install, then run the job named on the command line."""
    job = sys.argv[1] if len(sys.argv) > 1 else "test"
    rest = sys.argv[2:]
    install()
    env_bin = str(BIN)
    os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")
    try:
        if job == "install":
            return 0
        if job == "demo":
            run(BIN / "tasklease", "demo", *rest)
        elif job == "test":
            paths = [p for p in ("src", "tests", "bench", "deploy") if (ROOT / p).exists()]
            run(BIN / "ruff", "check", *paths)
            run(BIN / "ruff", "format", "--check", *paths)
            run(BIN / "mypy")  # src and tests ([tool.mypy] files in pyproject.toml)
            # Debian's prometheus (prometheus, promtool) for the deploy/ tests: apt-get when missing
            run(BIN / "python", "tests/promtools.py")
            # Debian's chromium + chromium-driver for the browser tests (tests/browser): apt-get when missing
            run(BIN / "python", "tests/browser/chromium.py")
            # Debian's podman, runc, debootstrap for the container test (tests/deploy): apt-get when missing
            run(BIN / "python", "tests/deploy/containers.py")
            run(BIN / "python", "-m", "pytest", *(rest or ["-q"]))
        elif job == "bench":
            run(BIN / "python", "-m", "bench", *rest)
        else:
            sys.exit(f"unknown job {job!r}: use demo, test, bench or install")
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
