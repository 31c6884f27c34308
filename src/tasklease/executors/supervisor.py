"""The parent of every ``shell`` command: ``python -I -S supervisor.py WORKER_PID -- PROGRAM ARGS...``.

Standard library only, and run by file name in isolated mode without
``site`` (``-I -S``): it starts in a few milliseconds, and nothing from the
worker's import path or environment (``PYTHON*``) can change what it runs.

Why a process between the worker and the command: the command's process
group must not outlive the worker. The kernel's ``PR_SET_PDEATHSIG`` signals
only a *direct* child when its parent dies, so a command's own children
(``sh -c 'sleep 60 & sleep 60'``) would be left running by a SIGKILLed worker,
a second copy of an attempt that recovery runs again elsewhere. This process
is the leader of the task's process group (the worker starts it in a new
session) and stays in it:

- it asks for SIGTERM when the worker dies (``PR_SET_PDEATHSIG``; also if the
  worker was already gone before it could ask), and on SIGTERM, SIGHUP or
  SIGINT it SIGKILLs its whole process group, itself included;
- it runs the command in that group (``posix_spawn``: exec errors are
  reported, SIGPIPE and SIGXFSZ back to their defaults) and waits for it;
- when the command exits, whatever it left running in the group (background
  jobs holding the output pipes) is SIGKILLed, then this process exits with
  the command's status (a command killed by signal N kills this process with
  N, so the worker sees the same status as if it had run the command itself).

The worker ends an attempt (timeout, cancel, shutdown) by SIGKILLing the
group. If the command cannot be started at all, this process writes one line
starting with :data:`SPAWN_ERROR` to stderr and exits with code 127.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

SPAWN_ERROR = "tasklease-supervisor: cannot run: "
PR_SET_PDEATHSIG = 1
# Leftovers are looked for (and killed) this many times: a process may fork while we look.
SWEEPS = 20


def _kill_group(*_: object) -> None:
    """SIGKILL the whole process group, this process included."""
    with contextlib.suppress(OSError):
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(137)  # only if the group could not be signalled


def _group_members() -> list[int]:
    """Live processes of our process group, other than this one (from /proc)."""
    me, group = os.getpid(), os.getpgrp()
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == group:
            members.append(int(entry))
    return members


def _kill_leftovers() -> None:
    for _ in range(SWEEPS):
        members = _group_members()
        if not members:
            return
        for pid in members:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _die_with_parent(parent: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _kill_group)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        _kill_group()  # the worker died before we could ask to be told


def main(argv: list[str]) -> None:
    """Run ``PROGRAM ARGS`` as described in the module docstring."""
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write(f"{SPAWN_ERROR}usage: supervisor.py WORKER_PID -- PROGRAM ARGS...\n")
        os._exit(127)
    _die_with_parent(int(argv[0]))
    program, args = argv[2], argv[2:]
    try:
        pid = os.posix_spawn(program, args, os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    except OSError as exc:
        sys.stderr.write(f"{SPAWN_ERROR}{exc.strerror or exc}\n")
        sys.stderr.flush()
        os._exit(127)
    # The command holds the pipes now; our copies would keep them open after it ends.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 0
            break
    _kill_leftovers()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)  # SIGKILL cannot be set, nor needs to be
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal that does not terminate by default
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
