"""Run the benchmarks: ``python -m bench [--quick] [--only ...]`` (or ``python3 bootstrap.py bench``).

Prints one table (peer x throughput, submit rate, p50/p95/p99) with the
ratios tasklease/peer measured in this run, then recovery, scale, scheduler
CPU and etcd cost per task. Appends every result as a JSON line to
``bench/results/results.jsonl`` and writes ``bench/results/latest.md``
(``--docs`` also rewrites the table in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECTIONS = ("tasklease", "nofsync", "celery", "dramatiq", "recovery", "scale", "cpu")


def _etcd_version() -> str:
    from tasklease.etcd_server import find_etcd_binary

    out = subprocess.run(
        [find_etcd_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout
    return out.splitlines()[0].split(":")[-1].strip() if out else "?"


def _fmt(v: Any, digits: int = 0) -> str:
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--tasks", type=int, default=None, help="throughput tasks (default 5000; quick 1000)")
    parser.add_argument(
        "--latency-tasks", type=int, default=None, help="latency tasks (default 500; quick 200)"
    )
    parser.add_argument(
        "--rate", type=float, default=100.0, help="open-loop submit rate for latency (default 100/s)"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument("--docs", action="store_true", help="also write the table into docs/benchmarks.md")
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    tasks = args.tasks or (1000 if args.quick else 5000)
    latency_tasks = args.latency_tasks or (200 if args.quick else 500)
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S")
    from bench.tasklease_bench import run_recovery, run_scale, run_scheduler_cpu, run_tasklease

    rows: list[dict[str, Any]] = []
    extra: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tasklease-bench-") as tmp_name:
        tmp = Path(tmp_name)

        def section(label: str, fn: Any, **kw: Any) -> dict[str, Any] | None:
            print(f"[bench] {label} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            try:
                res: dict[str, Any] = fn(**kw)
            except Exception as exc:  # one failing section must not lose the others
                print(f"[bench] {label} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return None
            res["section"] = label
            res["wall_s"] = round(time.perf_counter() - started, 1)
            return res

        common = {"tasks": tasks, "latency_tasks": latency_tasks, "rate": args.rate}
        if "tasklease" in only and (
            r := section("tasklease", run_tasklease, workdir=tmp / "tl", fsync=True, **common)
        ):
            rows.append(r)
        if "nofsync" in only and (
            r := section("nofsync", run_tasklease, workdir=tmp / "nf", fsync=False, **common)
        ):
            rows.append(r)
        for peer in ("celery", "dramatiq"):
            if peer in only:
                from bench.peers import run_peer

                if r := section(peer, run_peer, name=peer, workdir=tmp / peer, **common):
                    rows.append(r)
        if "recovery" in only:
            for ttl in (10, 3):
                if r := section(f"recovery ttl {ttl}", run_recovery, ttl_s=ttl, workdir=tmp / f"rec{ttl}"):
                    extra.append(r)
        if "scale" in only:
            for backlog in (1000, 10_000 if args.quick else 100_000):
                n = 1000 if args.quick else 3000
                if r := section(
                    f"scale backlog {backlog}",
                    run_scale,
                    backlog=backlog,
                    tasks=n,
                    workdir=tmp / f"scale{backlog}",
                ):
                    extra.append(r)
        if "cpu" in only:
            for workers in (2, 100):
                n = 1000 if args.quick else 3000
                if r := section(
                    f"scheduler cpu {workers} workers",
                    run_scheduler_cpu,
                    workers=workers,
                    tasks=n,
                    workdir=tmp / f"cpu{workers}",
                ):
                    extra.append(r)

    meta = {
        "run": run_id,
        "quick": args.quick,
        "machine": f"{platform.machine()}, {_cpus()} cores",
        "python": platform.python_version(),
        "etcd": _etcd_version(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "results.jsonl", "a") as f:
        for r in rows + extra:
            f.write(json.dumps({**meta, **r}, default=str) + "\n")
    table = render(rows, extra, meta)
    print(table)
    (RESULTS / "latest.md").write_text(table)
    if args.docs:
        write_docs(table)
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def render(rows: list[dict[str, Any]], extra: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Run {meta['run']} on {meta['machine']}, Python {meta['python']}, etcd {meta['etcd']}{' (quick)' if meta['quick'] else ''}.",
        "",
    ]
    lines.append(
        "| system | version / settings | throughput (tasks/s) | submit rate (/s) | p50 ms | p95 ms | p99 ms |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        settings = " ".join(str(x) for x in (r.get("version", ""), r.get("settings", "")) if x)
        lines.append(
            f"| {r['system']} | {settings} | {_fmt(r.get('throughput_tasks_s'))} | {_fmt(r.get('submit_rate_s'))} | "
            f"{_fmt(r.get('p50_ms'), 1)} | {_fmt(r.get('p95_ms'), 1)} | {_fmt(r.get('p99_ms'), 1)} |"
        )
    tl = next((r for r in rows if r["system"] == "tasklease"), None)
    if tl:
        lines.append("")
        if "batch_throughput_tasks_s" in tl:
            lines.append(
                f"tasklease with the batch submit API: {_fmt(tl['batch_throughput_tasks_s'])} tasks/s, submit rate {_fmt(tl['batch_submit_rate_s'])}/s."
            )
        for peer in rows:
            if peer is tl or peer["system"].startswith("tasklease"):
                continue
            tp = tl["throughput_tasks_s"] / peer["throughput_tasks_s"]
            p50 = tl["p50_ms"] / peer["p50_ms"]
            lines.append(
                f"- tasklease / {peer['system']}: throughput x{tp:.2f}, p50 latency x{p50:.2f} (lower is better), p99 x{tl['p99_ms'] / peer['p99_ms']:.2f}"
            )
        if "etcd_per_task" in tl:
            e = tl["etcd_per_task"]
            lines.append(
                f"- etcd work per task (from etcd's /metrics): {e.get('grpc_Txn', 0):.2f} transactions, {e.get('grpc_Range', 0):.2f} range requests, "
                f"{e.get('etcd_server_proposals_committed_total', 0):.2f} raft proposals (writes)"
            )
    if extra:
        lines.append("")
        lines.append("| measurement | result |")
        lines.append("|---|---|")
        for r in extra:
            if "recovery_s" in r:
                lines.append(
                    f"| recovery, lease TTL {r['ttl_s']} s | 5 s task, worker SIGKILLed 1 s in: succeeded elsewhere {r['recovery_s']:.2f} s after the kill (5 s rerun + {r['overhead_s']:.2f} s) |"
                )
            elif "backlog" in r:
                lines.append(
                    f"| scale, {r['backlog']:,} tasks queued behind | {r['tasks']:,} urgent tasks at {r['throughput_tasks_s']:,.0f} tasks/s |"
                )
            elif "scheduler_cpu_ms_per_task" in r:
                lines.append(
                    f"| scheduler CPU, {r['workers']} workers | {r['scheduler_cpu_ms_per_task']:.3f} ms per task ({r['throughput_tasks_s']:,.0f} tasks/s) |"
                )
    return "\n".join(lines) + "\n"


def write_docs(table: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n<!-- table -->\n<!-- /table -->\n"
    start, end = "<!-- table -->", "<!-- /table -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{table}{end}{tail}"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
