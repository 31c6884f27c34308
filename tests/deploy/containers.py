"""Containers on this machine: podman set up to work here, a local base image, the image built offline.

This machine has no Docker engine, no image registry, and its containers cannot
reach the package index. What works (and what the container test and
``docs/deploy.md`` use), step by step:

1. Debian's ``podman``, ``runc`` and ``debootstrap`` (:func:`ensure_tools` installs them
   with apt-get when missing; ``podman-compose`` comes from the dev extra, PyPI).
2. A ``containers.conf`` named by ``CONTAINERS_CONF`` (:func:`podman_env`):
   ``default_ulimits = []`` under ``[containers]`` and ``cgroup_manager =
   "cgroupfs"``, ``runtime = "runc"`` under ``[engine]`` (the default crun fails
   here on rlimits and cgroups).
3. A base image made from Debian packages (:func:`base_image`): ``debootstrap
   --variant=minbase --include=python3,python3-venv,ca-certificates,tini bookworm``
   from the machine's own apt mirror, then ``tar | podman import``. The
   Dockerfile takes it as ``BASE_IMAGE`` (elsewhere: ``python:3.12-slim-bookworm``).
4. A wheelhouse built on the host (:func:`wheelhouse`: ``pip wheel . setuptools
   wheel``), and the image built offline from it (:func:`build_image`:
   ``--build-arg WHEELHOUSE=...``), the path air-gapped users take too.

Run as a script it does steps 1-4 and prints the image's name and size::

    python tests/deploy/containers.py          # install the tools only (what .ci/run does)
    python tests/deploy/containers.py image    # ... and build tasklease:local (about 2 minutes)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# aardvark-dns: containers find each other by service name (only recommended by podman's package);
# iptables: netavark sets up every container network with it, and fails with "netavark: No such
# file or directory" where it is missing (a fresh machine: no package pulls it in)
DEBIAN_PACKAGES = ("podman", "runc", "debootstrap", "netavark", "aardvark-dns", "catatonit", "iptables")
LOCK_PATH = Path("/tmp/tasklease-apt-podman.lock")
BASE_LOCK_PATH = Path("/tmp/tasklease-podman-base.lock")
BASE_IMAGE = "localhost/tasklease-base:bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates,tini"
SUITE = "bookworm"
REPORT: list[str] = []  # what the container test measured, printed at the end of the run (conftest.py)
CONTAINERS_CONF = """\
# podman on this machine (tests/deploy/containers.py): no default rlimits, cgroupfs, runc
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""


def _missing_tools() -> list[str]:
    """The Debian packages of :data:`DEBIAN_PACKAGES` that are not installed."""
    missing = []
    for package in DEBIAN_PACKAGES:
        done = subprocess.run(
            ["dpkg-query", "--show", "--showformat=${Status}", package], capture_output=True, text=True
        )
        if done.returncode != 0 or not done.stdout.endswith(" installed"):
            missing.append(package)
    return missing


def ensure_tools() -> None:
    """Install Debian's podman, runc, debootstrap (and podman's network parts) when any is missing (apt-get, under a file lock).

    Raises:
        RuntimeError: apt-get failed, or a tool is still missing after it.
    """
    if not _missing_tools():
        return
    with LOCK_PATH.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be installing right now
        missing = _missing_tools()
        if not missing:
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES],
        ):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
                )
    if still := _missing_tools():
        raise RuntimeError(f"still missing after apt-get install: {', '.join(still)}")


def podman_env(workdir: Path) -> dict[str, str]:
    """The environment podman and podman-compose run with: ``CONTAINERS_CONF`` names our config."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    path = os.environ.get("PATH", "")
    if "/usr/sbin" not in path.split(os.pathsep):
        path = f"{path}{os.pathsep}/usr/sbin{os.pathsep}/sbin"
    return {**os.environ, "CONTAINERS_CONF": str(conf), "PATH": path}


def podman(env: dict[str, str], *args: str, timeout: float = 600, check: bool = True) -> str:
    """Run ``podman ARGS``; its stdout. Raises RuntimeError (with stderr) when ``check`` and it fails."""
    done = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def unusable(env: dict[str, str]) -> str | None:
    """Why podman cannot run containers here (None: it can): ``podman info`` and a trivial run."""
    if _missing_tools():
        return f"missing: {', '.join(_missing_tools())}"
    try:
        podman(env, "info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"podman info failed: {exc}"
    return None


def apt_mirror() -> str:
    """The machine's Debian mirror (its apt sources), for debootstrap."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        if not path.is_file() or path.name.endswith((".disabled", "-by-farm")):
            continue
        text = path.read_text(errors="replace")
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M
        ):
            if "security" not in uri and uri.rstrip("/").endswith("/debian"):
                return str(uri)
    return "http://deb.debian.org/debian"


def image_exists(env: dict[str, str], name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], env=env, capture_output=True).returncode == 0


def base_image(env: dict[str, str], name: str = BASE_IMAGE) -> str:
    """The local base image (debootstrap + import), made once per machine; its name."""
    with BASE_LOCK_PATH.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image_exists(env, name):
            return name
        with tempfile.TemporaryDirectory(prefix="tasklease-rootfs-") as tmp:
            root = Path(tmp) / "root"
            cmd = [
                "debootstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                SUITE,
                str(root),
                apt_mirror(),
            ]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}")
            # apt's lists and caches stay out of the base (they are big and the image never updates)
            for junk in ("var/lib/apt/lists", "var/cache/apt", "var/cache/debconf"):
                shutil.rmtree(root / junk, ignore_errors=True)
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            assert tar.stdout is not None
            imported = subprocess.run(
                ["podman", "import", "-", name], env=env, stdin=tar.stdout, capture_output=True, text=True
            )
            tar.stdout.close()
            if tar.wait() != 0 or imported.returncode != 0:
                raise RuntimeError(f"podman import failed:\n{imported.stderr}")
    return name


def wheelhouse(dest: Path, extras: str = "etcd") -> Path:
    """Wheels of the project and every dependency (+ setuptools and wheel, to build it) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    target = f"{REPO}[{extras}]" if extras else str(REPO)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        target,
        "setuptools>=68",
        "wheel",
        "-w",
        str(dest),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return dest


def source_digest() -> str:
    """What the image is built from (Dockerfile, pyproject.toml, README.md, src/): a short digest."""
    h = hashlib.sha256()
    files = [REPO / "Dockerfile", REPO / "pyproject.toml", REPO / "README.md"]
    files += sorted(p for p in (REPO / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def build_image(env: dict[str, str], tag: str, *, extras: str = "etcd") -> str:
    """Build the Dockerfile offline on the local base image; ``tag``.

    The wheelhouse goes into the build context as ``wheelhouse/`` (ignored by git)
    and the build's own ``pip`` never reaches the network (``--no-index``).
    """
    base = base_image(env)
    house = REPO / "wheelhouse"
    shutil.rmtree(house, ignore_errors=True)
    wheelhouse(house, extras)
    try:
        podman(
            env,
            "build",
            # docker format: OCI images have no HEALTHCHECK (podman would drop it)
            "--format",
            "docker",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            "WHEELHOUSE=wheelhouse",
            "--build-arg",
            f"EXTRAS={extras}",
            "--build-arg",
            f"REVISION={source_digest()}",
            "--tag",
            tag,
            str(REPO),
            timeout=1200,
        )
    finally:
        shutil.rmtree(house, ignore_errors=True)
    return tag


def image_size(env: dict[str, str], tag: str) -> int:
    """The image's size in bytes (as ``podman image inspect`` reports it)."""
    return int(podman(env, "image", "inspect", "--format", "{{.Size}}", tag).strip())


def main(argv: list[str]) -> int:
    ensure_tools()
    if argv[:1] == ["image"]:
        env = podman_env(Path(tempfile.gettempdir()) / "tasklease-podman")
        tag = argv[1] if len(argv) > 1 else "tasklease:local"
        build_image(env, tag)
        print(f"{tag}: {image_size(env, tag) / 1e6:.0f} MB")
        print(f"podman needs CONTAINERS_CONF={env['CONTAINERS_CONF']} on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
