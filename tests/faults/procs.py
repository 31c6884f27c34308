"""Real `tasklease` processes for the fault tests: start, signal, wait for, read, clean up.

A :class:`Procs` group starts `tasklease scheduler` and `tasklease worker`
processes from the venv's binary, each with its own log file (text format),
and kills whatever is left (with its descendants) at teardown. Every wait has a
deadline; probes are polled at ~50 ms. Assertion messages carry the log tails.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import psutil

TESTS_DIR = Path(__file__).resolve().parents[1]
POLL_S = 0.05


async def until(
    probe: Callable[..., Any],
    *,
    within_s: float,
    what: str,
    log: Callable[[], str] | None = None,
    poll_s: float = POLL_S,
) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy; fail after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            tail = f"\n{log()}" if log else ""
            raise AssertionError(f"timed out after {within_s:g} s waiting for {what}{tail}")
        await asyncio.sleep(poll_s)


def pid_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may never be reaped in a container)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_env(cli_env: Mapping[str, str], log_level: str = "info") -> dict[str, str]:
    """``cli_env`` plus the tests directory on PYTHONPATH (for ``--import sample_tasks``)."""
    env = dict(cli_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    env["TASKLEASE_LOG_LEVEL"] = log_level
    return env


class Proc:
    """One `tasklease` process and its log file."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path, log_file: IO[bytes]) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self._log_file = log_file
        self._descendants: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self, start: int = 0) -> str:
        """The log from byte offset ``start``."""
        with contextlib.suppress(ValueError):
            self._log_file.flush()
        try:
            with self.log_path.open("rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def status(self) -> str:
        code = self.proc.poll()
        return f"{self.name} pid {self.pid} " + ("running" if code is None else f"exit code {code}")

    def why(self, message: str, lines: int = 30) -> str:
        """An assertion message with this process's status and log tail."""
        return f"{message}\n--- {self.status()}; log tail ---\n{self.tail(lines)}"

    def signal(self, sig: signal.Signals) -> None:
        if sig is signal.SIGKILL:
            self.remember_descendants()
        self.proc.send_signal(sig)

    def remember_descendants(self) -> None:
        """Note our children now, so cleanup can kill them even after we are gone."""
        with contextlib.suppress(psutil.Error):
            self._descendants |= {c.pid for c in psutil.Process(self.pid).children(recursive=True)}

    async def wait_exit(self, within_s: float) -> int:
        await until(lambda: not self.alive, within_s=within_s, what=f"{self.name} to exit", log=self.tail)
        return self.proc.returncode

    async def wait_log(self, text: str, within_s: float, start: int = 0) -> None:
        """Wait until ``text`` appears in the log (after byte offset ``start``)."""

        def seen() -> bool:
            if text in self.log_text(start):
                return True
            if not self.alive:
                raise AssertionError(self.why(f"{self.name} exited before logging {text!r}"))
            return False

        await until(seen, within_s=within_s, what=f"{text!r} in {self.name}'s log", log=self.tail)

    def cleanup(self) -> None:
        """Kill the process and whatever it started, reap it, close its log. Idempotent."""
        try:
            if self.alive:
                self.remember_descendants()
                self.proc.kill()  # SIGKILL also ends a SIGSTOPped process
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            for pid in self._descendants:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
        finally:
            self._log_file.close()


class Procs:
    """Starts `tasklease` processes with log files; :meth:`cleanup` kills whatever is left.

    Args:
        tasklease_bin: The venv's `tasklease` executable.
        env: Their environment (see :func:`process_env`).
        workdir: Their working directory; the logs go there too.
    """

    def __init__(self, tasklease_bin: str, env: Mapping[str, str], workdir: Path) -> None:
        self.bin = tasklease_bin
        self.env = dict(env)
        self.workdir = workdir
        self.all: list[Proc] = []
        self.by_name: dict[str, Proc] = {}

    def spawn(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Proc:
        """Start ``tasklease ARGS`` as process ``name`` (its log: ``{name}.log``)."""
        assert name not in self.by_name, f"{name} started twice"
        log_path = self.workdir / f"{name}.log"
        log_file = log_path.open("wb")
        try:
            proc = subprocess.Popen(
                [self.bin, *args],
                env={**self.env, **(env or {})},
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            log_file.close()
            raise
        p = Proc(name, proc, log_path, log_file)
        self.all.append(p)
        self.by_name[name] = p
        return p

    def scheduler(
        self, sched_id: str, *args: str, lease_ttl: int = 2, env: Mapping[str, str] | None = None
    ) -> Proc:
        """Start `tasklease scheduler --id SCHED_ID`."""
        return self.spawn(
            sched_id,
            "scheduler", "--id", sched_id, "--log-format", "text", "--lease-ttl", str(lease_ttl), *args,
            env=env,
        )  # fmt: skip

    def worker(
        self,
        worker_id: str,
        *args: str,
        lease_ttl: int = 2,
        heartbeat: float = 0.5,
        concurrency: int = 4,
    ) -> Proc:
        """Start `tasklease worker --id WORKER_ID --import sample_tasks`."""
        return self.spawn(
            worker_id,
            "worker", "--id", worker_id, "--log-format", "text", "--import", "sample_tasks",
            "--lease-ttl", str(lease_ttl), "--heartbeat", str(heartbeat),
            "--concurrency", str(concurrency), *args,
        )  # fmt: skip

    def __getitem__(self, name: str) -> Proc:
        return self.by_name[name]

    def tails(self, lines: int = 20) -> str:
        """Every process's status and log tail, for an assertion message."""
        return "\n".join(f"--- {p.status()}; log tail ---\n{p.tail(lines)}" for p in self.all)

    def why(self, message: str, lines: int = 20) -> str:
        return f"{message}\n{self.tails(lines)}"

    def cleanup(self) -> None:
        errors: list[BaseException] = []
        for p in self.all:
            try:
                p.cleanup()
            except Exception as exc:  # keep cleaning the others
                errors.append(exc)
        if errors:
            raise errors[0]
