"""Measure two commits in one run: ``python -m bench.compare BASE [HEAD] [--rounds N]``.

Each commit is exported with ``git archive COMMIT | tar -x`` into a temporary
directory (``WORKTREE``, the default HEAD, is a snapshot of the current files:
tracked and untracked, not ignored, copied once at the start). The benchmark of
each tree (``python -m bench --quick --only tasklease,cpu`` by default) then
runs as a subprocess, alternately A B A B ..., with its cwd in that tree and
``PYTHONPATH=<tree>/src:<tree>``, so that tree's ``tasklease`` and ``bench`` are
imported, not the editable install. Every Python process the benchmark starts is
watched while it runs, and where its ``tasklease`` comes from (given its cwd and
``PYTHONPATH``) is checked afterwards.

Prints, per metric, the median and the min..max of each side, the ratio B/A and
a verdict: "within noise" when the ratio lies inside the spread of A's rounds
around A's median, or within +-10 %; otherwise "slower" or "faster" (for
latencies, CPU and costs, "slower" is the worse direction: higher). Appends the
comparison as a JSON line to ``bench/results/compare.jsonl``. The benchmark's own
results go to each exported tree's ``bench/results/``, which is thrown away.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WORKTREE = "WORKTREE"
NOISE = 0.10  # ratios within +-10 % are noise on this machine whatever A's spread

# Fields of a result row that describe the run rather than measure it.
NOT_METRICS = {
    "tasks",
    "latency_tasks",
    "workers",
    "seconds",
    "bad",
    "ttl_s",
    "rerun_s",
    "backlog",
    "wall_s",
    "rate",
    "rounds",
    "fsync",
    "payload_bytes",
    "instances",
}
NAMES = {
    "throughput_tasks_s": "throughput (tasks/s)",
    "submit_rate_s": "submit rate (/s)",
    "batch_throughput_tasks_s": "batch throughput (tasks/s)",
    "batch_submit_rate_s": "batch submit rate (/s)",
    "p50_ms": "p50 latency (ms)",
    "p95_ms": "p95 latency (ms)",
    "p99_ms": "p99 latency (ms)",
    "scheduler_cpu_ms_per_task": "scheduler CPU (ms/task)",
    "etcd_per_task.grpc_Txn": "etcd txns/task",
    "etcd_per_task.grpc_Range": "etcd ranges/task",
}


def higher_is_better(field: str) -> bool:
    """Rates are better higher; times, latencies, CPU, bytes and counts per task lower."""
    last = field.rsplit(".", 1)[-1]
    return last.endswith(("tasks_s", "rate_s")) or last == "throughput"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def export(ref: str, dest: Path) -> str:
    """Write the tree of ``ref`` (or a snapshot of the working tree) into ``dest``; return its label."""
    dest.mkdir(parents=True)
    if ref == WORKTREE:
        files = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
        for name in files:
            src = ROOT / name
            if not name or not src.is_file() or name.startswith("bench/results/"):
                continue  # deleted but still tracked; old results are not needed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
        head = _git("rev-parse", "--short=10", "HEAD")
        dirty = _git("status", "--porcelain", "--", "src", "bench")
        return f"{head}+worktree" + (" (dirty)" if dirty else "")
    sha = _git("rev-parse", "--verify", "--short=10", f"{ref}^{{commit}}")
    archive = subprocess.Popen(["git", "archive", sha], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {sha} failed")
    return sha


def prepare(tree: Path) -> None:
    """Make every process started in ``tree`` import that tree's tasklease.

    ``tree/tasklease`` points at ``tree/src/tasklease``: a process whose
    ``PYTHONPATH`` was replaced by ``tree`` alone (older bench code started its
    worker hosts that way) still finds it before the editable install of the main
    checkout. Byte-compiling first keeps the first round's imports from paying
    for it.
    """
    link = tree / "tasklease"
    if (tree / "src" / "tasklease").is_dir() and not link.exists():
        link.symlink_to(Path("src") / "tasklease", target_is_directory=True)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "src", "bench"], cwd=tree, check=False, capture_output=True
    )


def tree_env(tree: Path, label: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "BENCH_COMMIT")}
    env["PYTHONPATH"] = f"{tree / 'src'}{os.pathsep}{tree}"
    env["BENCH_COMMIT"] = label
    return env


_PROBE = "import os, tasklease; print(os.path.realpath(tasklease.__file__))"


def where_tasklease(cwd: str, pythonpath: str | None) -> str:
    """The file ``import tasklease`` loads for a ``python -m`` process with this cwd and PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or f"import failed: {out.stderr.strip().splitlines()[-1:]}"


def inside(path: str, tree: Path) -> bool:
    return Path(path).is_absolute() and Path(path).is_relative_to(tree.resolve())


class Watcher(threading.Thread):
    """Records the Python processes a benchmark run starts (cwd, PYTHONPATH, command line)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.seen: dict[tuple[int, float], dict[str, Any]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.poll()
            self.done.wait(0.3)

    def poll(self) -> None:
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        for p in children:
            try:
                key = (p.pid, p.create_time())
                if key in self.seen:
                    continue
                cmd = p.cmdline()
                info: dict[str, Any] = {"process": p, "cmdline": cmd}
                if cmd and "python" in Path(cmd[0]).name:
                    info["cwd"] = p.cwd()
                    info["pythonpath"] = p.environ().get("PYTHONPATH")
                self.seen[key] = info
            except psutil.Error:
                continue

    def alive(self) -> list[psutil.Process]:
        out = []
        for info in self.seen.values():
            p = info["process"]
            try:
                if p.is_running():
                    out.append(p)
            except psutil.Error:
                pass
        return out


def run_bench(
    tree: Path, label: str, bench_args: list[str], timeout_s: float, log: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """One benchmark run in ``tree``: its result rows, the Python processes it started, facts about the run."""
    results = tree / "bench" / "results" / "results.jsonl"
    offset = results.stat().st_size if results.exists() else 0
    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench", *bench_args],
            cwd=tree,
            env=tree_env(tree, label),
            stdout=out,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        watcher = Watcher(proc.pid)
        watcher.start()
        failures: list[str] = []

        def relay() -> None:  # the benchmark's progress lines, prefixed
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                out.write(raw)
                if " failed: " in line or "Traceback" in line:
                    failures.append(line)
                print(f"    {line}", file=sys.stderr, flush=True)

        relayer = threading.Thread(target=relay, daemon=True)
        relayer.start()
        try:
            rc = proc.wait(timeout_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
            stop(proc, watcher)
            if isinstance(exc, KeyboardInterrupt):
                raise
            rc = None
            failures.append(f"timed out after {timeout_s:.0f} s")
        finally:
            watcher.done.set()
            watcher.join()
            relayer.join(10)
    leftover = watcher.alive()
    for p in leftover:  # a stack the run did not stop (its etcd runs in its own session)
        with contextlib.suppress(psutil.Error):
            p.terminate()
    rows = []
    if results.exists():
        with open(results) as f:
            f.seek(offset)
            rows = [json.loads(line) for line in f if line.strip()]
    pythons = [{k: v for k, v in i.items() if k != "process"} for i in watcher.seen.values() if "cwd" in i]
    facts = {
        "rc": rc,
        "wall_s": round(time.perf_counter() - started, 1),
        "load": f"{load0:.1f} -> {os.getloadavg()[0]:.1f}",
        "failures": failures,
        "leftover_processes": len(leftover),
    }
    return rows, pythons, facts


def stop(proc: subprocess.Popen[bytes], watcher: Watcher) -> None:
    """Interrupt a run (its stacks stop themselves), then kill what is left of it."""
    watcher.poll()
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    except (subprocess.TimeoutExpired, OSError):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for p in watcher.alive():
        with contextlib.suppress(psutil.Error):
            p.kill()


# Of etcd's counters per task, the requests tasklease makes (the rest repeat them or stay 0).
ETCD_KEPT = {"grpc_Txn", "grpc_Range"}


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in row.items():
        if k in NOT_METRICS:
            continue
        name = f"{prefix}{k}"
        if k == "etcd_per_task" and isinstance(v, dict):
            out.update({f"{name}.{c}": float(n) for c, n in v.items() if c in ETCD_KEPT})
        elif isinstance(v, dict):
            out.update(flatten(v, name + "."))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[name] = float(v)
    return out


def metrics_of(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``section: field`` -> value for every measured number of one run."""
    out: dict[str, float] = {}
    for r in rows:
        section = r.get("section") or r.get("system") or "?"
        for field, value in flatten(r).items():
            out[f"{section}: {field}"] = value
    return out


def _fmt(v: float) -> str:
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def compare(a: list[float], b: list[float], field: str) -> dict[str, Any]:
    """Medians, spreads, B/A and the verdict of one metric."""
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = mb / ma if ma else None
    lo, hi = (min(a) / ma, max(a) / ma) if ma else (1.0, 1.0)
    if ratio is None:
        verdict = "within noise" if mb == 0 else "n/a (A's median is 0)"
    elif lo <= ratio <= hi or abs(ratio - 1) <= NOISE:
        verdict = "within noise"
    elif (ratio > 1) == higher_is_better(field):
        verdict = "faster"
    else:
        verdict = "slower"
    return {
        "a": a,
        "b": b,
        "a_median": ma,
        "b_median": mb,
        "ratio": ratio,
        "a_spread": [lo, hi],
        "higher_is_better": higher_is_better(field),
        "verdict": verdict,
    }


def render(cmp: dict[str, dict[str, Any]]) -> str:
    rows = [("metric", "A median (min..max)", "B median (min..max)", "B/A", "verdict")]
    for name, c in cmp.items():
        rows.append(
            (
                _label(name),
                f"{_fmt(c['a_median'])} ({_fmt(min(c['a']))}..{_fmt(max(c['a']))})",
                f"{_fmt(c['b_median'])} ({_fmt(min(c['b']))}..{_fmt(max(c['b']))})",
                f"x{c['ratio']:.3f}" if c["ratio"] is not None else "-",
                c["verdict"],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in (1, 2, 3)] + [r[4]]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(
        f"within noise: B/A inside A's rounds' min..max relative to A's median, or within +-{NOISE:.0%}; "
        "slower/faster otherwise (for ms, CPU and etcd requests per task, slower = higher)."
    )
    verdicts: dict[str, list[str]] = {}
    for name, c in cmp.items():
        ratio = f" x{c['ratio']:.2f}" if c["ratio"] is not None else ""
        verdicts.setdefault(c["verdict"], []).append(f"{_label(name)}{ratio}")
    within = len(verdicts.pop("within noise", []))
    others = "; ".join(f"{v}: {', '.join(names)}" for v, names in verdicts.items())
    lines.append(f"Verdict: {within} of {len(cmp)} metrics within noise" + (f"; {others}" if others else "."))
    return "\n".join(lines)


def _label(name: str) -> str:
    section, field = name.split(": ", 1)
    return f"{section}: {NAMES.get(field, field)}"


def _order(name: str) -> tuple[int, str]:
    field = name.split(": ", 1)[1]
    return (list(NAMES).index(field) if field in NAMES else len(NAMES), field)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="Benchmark two commits in one run, alternately, and compare them.",
    )
    parser.add_argument("base", nargs="?", default="HEAD~1", help="A: a commit (default HEAD~1)")
    parser.add_argument(
        "head", nargs="?", default=WORKTREE, help=f"B: a commit or {WORKTREE} (default: the current files)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side, A B A B ... (default 3)")
    parser.add_argument(
        "--only",
        default="tasklease,cpu",
        help="bench sections (default tasklease,cpu: throughput, submit rate, p50/p95/p99, scheduler CPU)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smallest sizes (bench --quick --tasks 300 --latency-tasks 100): a smoke test, too small to judge",
    )
    parser.add_argument(
        "--full", action="store_true", help="bench's full sizes (without --quick; several minutes per run)"
    )
    parser.add_argument("--tasks", type=int, help="bench --tasks (throughput tasks)")
    parser.add_argument("--latency-tasks", type=int, help="bench --latency-tasks")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is stopped")
    parser.add_argument("--keep", action="store_true", help="keep the exported trees and logs")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.quick and args.full:
        parser.error("--quick and --full exclude each other")
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if {"celery", "dramatiq"} & set(sections):
        print(
            "[compare] note: celery/dramatiq do not run tasklease code (and each tree builds its own peer venv)",
            file=sys.stderr,
        )
    bench_args = [] if args.full else ["--quick"]
    bench_args += ["--only", ",".join(sections)]
    tasks = args.tasks or (300 if args.quick else None)
    latency_tasks = args.latency_tasks or (100 if args.quick else None)
    if tasks:
        bench_args += ["--tasks", str(tasks)]
    if latency_tasks:
        bench_args += ["--latency-tasks", str(latency_tasks)]

    tmp = Path(tempfile.mkdtemp(prefix="tasklease-compare-"))
    try:
        trees = {"A": tmp / "a", "B": tmp / "b"}
        labels = {"A": export(args.base, trees["A"]), "B": export(args.head, trees["B"])}
        refs = {"A": args.base, "B": args.head}
        checks: dict[str, Any] = {}
        for side, tree in trees.items():
            prepare(tree)
            check = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import os, tasklease, bench; print(tasklease.__file__); "
                    "print(os.path.realpath(tasklease.__file__)); print(bench.__file__)",
                ],
                cwd=tree,
                env=tree_env(tree, labels[side]),
                capture_output=True,
                text=True,
            )
            lines = check.stdout.split()
            ok = check.returncode == 0 and len(lines) == 3 and all(inside(p, tree) for p in lines)
            print(
                f"[compare] {side} = {refs[side]} ({labels[side]}) in {tree}: tasklease.__file__ = "
                f"{lines[0] if lines else '?'}" + ("" if ok else "  <-- NOT this tree's code"),
                file=sys.stderr,
            )
            if not ok:
                print(check.stderr, file=sys.stderr)
                return 2
            checks[side] = lines[0]
        print(f"[compare] each run: python -m bench {' '.join(bench_args)}", file=sys.stderr)

        values: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        runs: list[dict[str, Any]] = []
        foreign: list[str] = []
        for rnd in range(1, args.rounds + 1):
            for side in ("A", "B"):
                print(
                    f"[compare] round {rnd}/{args.rounds}: {side} ({labels[side]}) ...",
                    file=sys.stderr,
                    flush=True,
                )
                rows, pythons, facts = run_bench(
                    trees[side], labels[side], bench_args, args.timeout, tmp / f"{side}-{rnd}.log"
                )
                got = metrics_of(rows)
                values[side].append(got)
                # where each Python process the run started took tasklease from
                # (the cwd and PYTHONPATH decide it: every one is started with `python -m`)
                places: dict[tuple[str, str | None], set[str]] = {}
                for p in pythons:
                    places.setdefault((p["cwd"], p.get("pythonpath")), set()).add(" ".join(p["cmdline"][1:4]))
                resolved = {
                    ", ".join(sorted(cmds)): where_tasklease(cwd, pp) for (cwd, pp), cmds in places.items()
                }
                bad = {cmd: f for cmd, f in resolved.items() if not inside(f, trees[side])}
                foreign += [f"{side} round {rnd}: {cmd} -> {f}" for cmd, f in bad.items()]
                runs.append(
                    {
                        "side": side,
                        "round": rnd,
                        **facts,
                        "metrics": len(got),
                        "tasklease_from": {cmd: f.removeprefix(str(tmp)) for cmd, f in resolved.items()},
                    }
                )
                print(
                    f"[compare] round {rnd}/{args.rounds}: {side} done in {facts['wall_s']:.0f} s "
                    f"(exit {facts['rc']}, load {facts['load']}, {len(pythons)} python processes "
                    f"{'all on this tree' if not bad else 'NOT ALL ON THIS TREE'}, {len(got)} metrics)",
                    file=sys.stderr,
                    flush=True,
                )

        found = list(dict.fromkeys(k for run in values["A"] + values["B"] for k in run))
        sections_seen = list(dict.fromkeys(n.split(": ", 1)[0] for n in found))
        names = sorted(found, key=lambda n: (sections_seen.index(n.split(": ", 1)[0]), *_order(n)))
        cmp: dict[str, dict[str, Any]] = {}
        missing = []
        for name in names:
            a = [run[name] for run in values["A"] if name in run]
            b = [run[name] for run in values["B"] if name in run]
            if not (a and b):
                missing.append(name)
            elif any(a + b):  # a counter that stayed 0 on both sides says nothing
                cmp[name] = compare(a, b, name.split(": ", 1)[1])
        meta = {
            "run": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "a": {"ref": refs["A"], "commit": labels["A"]},
            "b": {"ref": refs["B"], "commit": labels["B"]},
            "rounds": args.rounds,
            "bench_args": bench_args,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "tasklease_file": checks,
        }
        print(
            f"\nA = {refs['A']} ({labels['A']}), B = {refs['B']} ({labels['B']}); {args.rounds} round(s) "
            f"A B alternately, each `python -m bench {' '.join(bench_args)}`.\n"
        )
        print(render(cmp) if cmp else "no metrics")
        problems = foreign + [
            f"{r['side']} round {r['round']}: " + "; ".join(r["failures"] or [f"exit {r['rc']}"])
            for r in runs
            if r["rc"] != 0 or r["failures"]
        ]
        if args.rounds < 3:
            print(
                f"note: with {args.rounds} round(s) A's spread says little; only the +-{NOISE:.0%} floor "
                "really applies. Use --rounds 3 or more to judge."
            )
        if missing:
            problems.append(f"measured on one side only: {', '.join(missing)}")
        for p in problems:
            print(f"WARNING: {p}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        with open(RESULTS / "compare.jsonl", "a") as f:
            record = {**meta, "runs": runs, "problems": problems, "metrics": cmp}
            f.write(json.dumps(record) + "\n")
        print(f"\n(appended to {RESULTS.relative_to(ROOT) / 'compare.jsonl'})")
        return 1 if problems else 0
    finally:
        if args.keep:
            print(f"[compare] kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
