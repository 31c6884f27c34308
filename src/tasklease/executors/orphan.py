"""Children must not outlive a worker that is SIGKILLed (or OOM-killed).

A task's child process runs in its own process group (so a timeout can kill
the whole group). If the worker dies without a chance to kill it, its lease
expires and recovery runs the task elsewhere; an orphaned child still running
the old attempt would be a second copy. Two guards stop it:

- ``PR_SET_PDEATHSIG`` (Linux): the kernel sends SIGKILL to the child when its
  parent dies, even if the child's code holds the GIL;
- :func:`watch_parent`: a thread that notices the parent changed and kills
  the child's whole process group (grandchildren included).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only; else no-op)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def watch_parent(interval_s: float = 0.2) -> None:
    """Start a daemon thread that kills our process group once our parent is gone."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                os._exit(1)

    threading.Thread(target=watch, name="tasklease-parent-watch", daemon=True).start()
