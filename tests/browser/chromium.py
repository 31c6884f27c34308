"""Chromium for the browser tests: find or install Debian's ``chromium`` and ``chromium-driver``.

The project installs what its tests need: when ``/usr/bin/chromium`` or
``/usr/bin/chromedriver`` is missing, :func:`ensure_chromium` runs ``apt-get
update`` and installs both packages, as ``tests/promtools.py`` does for
Prometheus. A file lock keeps two test runs from running apt at once. The
browser tests never skip for want of a browser: a failed install is a failure.

Selenium is always given these explicit paths, so selenium-manager never
downloads a browser or a driver.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEBIAN_PACKAGES = ("chromium", "chromium-driver")
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LOCK_PATH = Path("/tmp/tasklease-apt-chromium.lock")


@dataclass(frozen=True)
class ChromiumBinaries:
    """Where the browser and its WebDriver are."""

    chromium: str
    chromedriver: str


def _found() -> ChromiumBinaries | None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return ChromiumBinaries(chromium=str(CHROMIUM), chromedriver=str(CHROMEDRIVER))
    return None


def ensure_chromium() -> ChromiumBinaries:
    """Paths of ``chromium`` and ``chromedriver``, installing Debian's packages if either is missing.

    Raises:
        RuntimeError: apt-get failed, or the binaries are still missing after it.
    """
    found = _found()
    if found:
        return found
    with LOCK_PATH.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be installing right now
        found = _found()
        if found:
            return found
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES],
        ):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
                )
    found = _found()
    if not found:
        raise RuntimeError(f"{CHROMIUM} or {CHROMEDRIVER} still missing after apt-get install")
    return found


if __name__ == "__main__":
    # Run as a script before pytest, so no test spends its timeout on apt-get.
    binaries = ensure_chromium()
    version = subprocess.run([binaries.chromium, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"chromium: {binaries.chromium} ({version}), chromedriver: {binaries.chromedriver}")
