"""Run the benchmarks: ``python -m bench [--quick] [--only ...]`` (or ``python3 bootstrap.py bench``).

Prints one table (peer x throughput, submit rate, p50/p95/p99) with the
ratios tasklease/peer measured in this run, then recovery, scale, scheduler
CPU and etcd cost per task, then the realistic-payload sections (4.5 KB
against empty payloads, take-over with a deep queue of 4.5 KB tasks, etcd
bytes per task by payload size: bench/payload_bench.py). Appends every result
as a JSON line to ``bench/results/results.jsonl`` and writes
``bench/results/latest.md`` (``--docs`` also rewrites the tables in
docs/benchmarks.md: the comparison table if its sections ran, the payload
tables if theirs did).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECTIONS = (
    "tasklease",
    "nofsync",
    "celery",
    "dramatiq",
    "recovery",
    "scale",
    "cpu",
    "payload",
    "takeover",
    "etcdbytes",
)


def _git_commit() -> str:
    """The commit measured, with ``+dirty (files)`` if src/ or bench/ had uncommitted changes.

    ``$BENCH_COMMIT`` overrides it (for a run from an exported tree: ``git archive``).
    """
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "bench"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "?"
    files = [line[3:] for line in dirty if line.strip() and not line[3:].startswith("bench/results")]
    return f"{head}+dirty ({', '.join(files)})" if files else head


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
    from bench.payload_bench import run_etcd_bytes, run_payloads, run_takeover
    from bench.tasklease_bench import run_recovery, run_scale, run_scheduler_cpu, run_tasklease

    commit = _git_commit()  # before the run: what is measured
    load_before = os.getloadavg()[0]

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
                import traceback

                where = traceback.extract_tb(exc.__traceback__)
                at = ", ".join(f"{Path(f.filename).name}:{f.lineno}" for f in where[-4:])
                print(f"[bench] {label} failed: {type(exc).__name__}: {exc} (at {at})", file=sys.stderr)
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
        payload: list[dict[str, Any]] = []
        if "payload" in only and (
            r := section(
                "payload 4.5 KB vs empty",
                run_payloads,
                tasks=tasks,
                latency_tasks=latency_tasks,
                rate=args.rate,
                rounds=2 if args.quick else 3,
                workdir=tmp / "payload",
            )
        ):
            payload.append(r)
        if "takeover" in only:
            backlog = 10_000 if args.quick else 100_000
            if r := section(
                f"takeover {backlog} queued", run_takeover, backlog=backlog, workdir=tmp / "takeover"
            ):
                payload.append(r)
        if "etcdbytes" in only and (
            r := section(
                "etcd bytes by payload size", run_etcd_bytes, quick=args.quick, workdir=tmp / "bytes"
            )
        ):
            payload.append(r)

    meta = {
        "run": run_id,
        "quick": args.quick,
        "machine": f"{platform.machine()}, {_cpus()} cores",
        "python": platform.python_version(),
        "etcd": _etcd_version(),
        "commit": commit,
        # the 1-minute load average before and after: the machine is shared
        "load": f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "results.jsonl", "a") as f:
        for r in rows + extra + payload:
            f.write(json.dumps({**meta, **r}, default=str) + "\n")
    table = render(rows, extra, meta) if rows or extra else ""
    payload_table = render_payloads(payload, meta) if payload else ""
    print(table + ("\n" if table and payload_table else "") + payload_table)
    if table:
        (RESULTS / "latest.md").write_text(table)
    if payload_table:
        (RESULTS / "latest-payloads.md").write_text(payload_table)
    if args.docs:
        if table:
            write_docs(table)
        if payload_table:
            write_docs(payload_table, "<!-- payload-table -->", "<!-- /payload-table -->")
    return 0


def _cpus() -> int:
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
        celery = next((r for r in rows if r["system"] == "celery"), None)
        for key, label in (("sequential", "async"), ("sequential_sync", "sync")):
            if key in tl:
                q = tl[key]
                vs = (
                    f"; x{q['throughput_tasks_s'] / celery['throughput_tasks_s']:.2f} Celery's {_fmt(celery['throughput_tasks_s'])} tasks/s (its producer is sequential too)"
                    if celery
                    else ""
                )
                lines.append(
                    f"tasklease, sequential producer ({label} API: each submit awaited before the next): "
                    f"{_fmt(q['throughput_tasks_s'])} tasks/s, submits {_fmt(q['submit_rate_s'])}/s, "
                    f"submit round trip p50 {q['submit_p50_ms']:.2f} ms, p99 {q['submit_p99_ms']:.2f} ms{vs}."
                )
        if "pipelined" in tl:
            q = tl["pipelined"]
            vs = f"; x{q['throughput_tasks_s'] / celery['throughput_tasks_s']:.2f} Celery's" if celery else ""
            lines.append(
                f"tasklease, pipelined producer (fire and confirm: a loop of `send`, then `flush`): "
                f"{_fmt(q['throughput_tasks_s'])} tasks/s, submits {_fmt(q['submit_rate_s'])}/s{vs}."
            )
        for key, label in (("cpu_ms_per_task", "concurrent producer"), ("sequential", "sequential producer")):
            cpu = tl.get(key) if key == "cpu_ms_per_task" else tl.get(key, {}).get("cpu_ms_per_task")
            if cpu:
                parts = ", ".join(f"{k} {v:.3f}" for k, v in cpu.items() if k != "total")
                lines.append(
                    f"CPU per task, {label} (ms, every process of the stack and the client): "
                    f"{cpu['total']:.3f} in all ({parts})."
                )
        if "etcd_bytes_per_task" in tl:
            b = tl["etcd_bytes_per_task"]
            lines.append(
                f"etcd bytes per task, concurrent producer, payload {tl.get('payload_bytes', 0)} B of JSON: "
                f"in {_kb(b.get('received', 0))}, out {_kb(b.get('sent', 0))}, "
                f"mvcc put {_kb(b.get('put', 0))}, WAL {_kb(b.get('wal', 0))}."
            )
        if "idle_submit" in tl:
            q = tl["idle_submit"]
            lines.append(
                f"tasklease submit round trip on an idle cluster (each after the previous task finished): "
                f"p50 {q['submit_p50_ms']:.2f} ms, p99 {q['submit_p99_ms']:.2f} ms."
            )
            if "settled_submit_p50_ms" in q:
                lines.append(
                    f"The same after a 20 ms pause (all quiet): p50 {q['settled_submit_p50_ms']:.2f} ms, "
                    f"p99 {q['settled_submit_p99_ms']:.2f} ms; a bare one-put etcd transaction after the same "
                    f"pause: p50 {q['settled_etcd_put_p50_ms']:.2f} ms."
                )
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
    if tl:
        lines.extend(["", *targets(rows)])
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


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """Issue step 12's targets, each marked met or missed from this run's figures."""
    tl = next(r for r in rows if r["system"] == "tasklease")
    celery = next((r for r in rows if r["system"] == "celery"), None)
    dramatiq = next((r for r in rows if r["system"] == "dramatiq"), None)
    checks: list[tuple[str, float | None, str, bool]] = []

    def add(label: str, value: float | None, shown: str, ok: bool) -> None:
        checks.append((label, value, shown, ok))

    for key, api in (("sequential", "async"), ("sequential_sync", "sync")):
        if key in tl and celery:
            x = tl[key]["throughput_tasks_s"] / celery["throughput_tasks_s"]
            add(f"sequential producer ({api}) >= x1.00 Celery", x, f"x{x:.2f}", x >= 1.0)
    if "idle_submit" in tl:
        q = tl["idle_submit"]
        v = q["submit_p50_ms"]
        shown = f"{v:.2f} ms"
        if "settled_submit_p50_ms" in q:
            shown += f" (after a 20 ms pause {q['settled_submit_p50_ms']:.2f}; bare etcd put {q['settled_etcd_put_p50_ms']:.2f})"
        add("submit round trip p50 on an idle cluster <= 1 ms", v, shown, v <= 1.0)
    if dramatiq:
        x = tl["throughput_tasks_s"] / dramatiq["throughput_tasks_s"]
        add("concurrent producer >= x1.00 Dramatiq", x, f"x{x:.2f}", x >= 1.0)
    if celery and "p50_ms" in tl:
        add(
            "latency p50 <= Celery's",
            tl["p50_ms"],
            f"{tl['p50_ms']:.1f} ms vs {celery['p50_ms']:.1f} ms",
            tl["p50_ms"] <= celery["p50_ms"],
        )
    if "p99_ms" in tl:
        add("latency p99 <= 10 ms", tl["p99_ms"], f"{tl['p99_ms']:.1f} ms", tl["p99_ms"] <= 10.0)
    if "cpu_ms_per_task" in tl:
        v = tl["cpu_ms_per_task"]["total"]
        add("CPU per task, all processes incl. etcd <= 0.8 ms", v, f"{v:.2f} ms", v <= 0.8)
    out = ["| target (issue step 12) | this run | |", "|---|---:|---|"]
    out += [f"| {label} | {shown} | {'met' if ok else 'missed'} |" for label, _, shown, ok in checks]
    return out


def _kb(n: float) -> str:
    return f"{n / 1000:,.1f} KB" if n >= 1000 else f"{n:,.0f} B"


def render_payloads(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The realistic-payload sections as Markdown."""
    lines = [
        f"Run {meta['run']} on {meta['machine']}, Python {meta['python']}, etcd {meta['etcd']}"
        f"{' (quick)' if meta['quick'] else ''}, code at commit {meta['commit']}; "
        f"load average {meta['load']}.",
    ]
    for r in results:
        lines.append("")
        if r.get("kind") == "payloads":
            lines.append(
                f"Throughput ({r['tasks']:,} tasks, {SUBMIT_NOTE}) and latency ({r['latency_tasks']} tasks "
                f"open-loop at {r['rate']:g}/s), medians of {r['rounds']} interleaved round(s) on one stack:"
            )
            lines.append("")
            lines.append(
                "| task | payload | throughput (tasks/s) | submit rate (/s) | p50 ms | p99 ms | etcd bytes in / out / WAL per task |"
            )
            lines.append("|---|---:|---:|---:|---:|---:|---:|")
            for v in r["variants"].values():
                b = v["etcd_bytes_per_task"]
                task = "noop (result = payload)" if v["task"] == "noop" else "sleep 0 s (small result)"
                payload = _kb(v["payload_bytes"]) if v["payload_bytes"] else 'empty (`{"i": n}`)'
                lines.append(
                    f"| {task} | {payload} | {_fmt(v['throughput_tasks_s'])} | {_fmt(v['submit_rate_s'])} | "
                    f"{_fmt(v['p50_ms'], 1)} | {_fmt(v['p99_ms'], 1)} | "
                    f"{_kb(b.get('received', 0))} / {_kb(b.get('sent', 0))} / {_kb(b.get('wal', 0))} |"
                )
            lines.append("")
            for kind, ratio in r["ratios"].items():
                lines.append(
                    f"- {kind}, 4.5 KB / empty: throughput x{ratio['throughput']:.2f} "
                    f"({(ratio['throughput'] - 1) * 100:+.0f} %; target >= x0.80), "
                    f"p50 x{ratio['p50']:.2f}, p99 x{ratio['p99']:.2f}"
                )
        elif r.get("kind") == "takeover":
            e, d = r["empty"], r["deep"]
            lines.append(
                f"Take-over: a scheduler started with {r['backlog']:,} tasks of {_kb(r['payload_bytes'])} queued "
                f"(queued by submit_many at {r['submit_rate_s']:,.0f} tasks/s; etcd db {r['etcd_db_in_use_mb']:,.0f} MB in use), "
                "beside one started with 1 task queued, same etcd and workers:"
            )
            lines.append("")
            lines.append(
                "| queued | leading after | first assignment after | of which after leading | "
                "scheduler CPU then | scheduler RSS then |"
            )
            lines.append("|---|---:|---:|---:|---:|---:|")
            for label, x in (("1", e), (f"{r['backlog']:,} x {_kb(r['payload_bytes'])}", d)):
                lines.append(
                    f"| {label} | {x['leading_s']:.2f} s | {x['first_assignment_s']:.2f} s | "
                    f"{x['first_assignment_s'] - x['leading_s']:.2f} s | "
                    f"{x['scheduler_cpu_s']:.2f} s | {x['scheduler_rss_mb']:,.0f} MB |"
                )
        elif r.get("kind") == "etcd_bytes":
            c = r["calibration_per_value_byte"]
            lines.append(
                f"etcd bytes per task by payload size ({r['task']} tasks, from etcd's /metrics; "
                f"calibration, per byte of a plain 10 KB put: in {c.get('received', 0):.2f}, "
                f"mvcc put {c.get('put', 0):.2f}, WAL {c.get('wal', 0):.2f}, db {c.get('db_in_use', 0):.2f}):"
            )
            lines.append("")
            lines.append(
                "| payload | tasks | in (client -> etcd) | out (etcd -> clients) | mvcc put | WAL | db growth | "
                "per payload byte: in / out / put / WAL |"
            )
            lines.append("|---:|---:|---:|---:|---:|---:|---:|---|")
            for size, x in r["per_task"].items():
                pb = r["per_payload_byte"].get(size)
                ratio = (
                    f"{pb['received']:.1f} / {pb['sent']:.1f} / {pb['put']:.1f} / {pb['wal']:.1f}"
                    if pb
                    else "-"
                )
                lines.append(
                    f"| {_kb(int(size)) if int(size) else 'empty'} | {x['tasks']:,} | {_kb(x['received'])} | "
                    f"{_kb(x['sent'])} | {_kb(x['put'])} | {_kb(x['wal'])} | {_kb(x['db_in_use'])} | {ratio} |"
                )
            copies = [pb["put"] for pb in r["per_payload_byte"].values() if pb]
            if copies:
                worst = max(copies)
                lines.append("")
                lines.append(
                    f"- copies of the payload written per task (mvcc put per payload byte, one attempt, small result): "
                    f"at most {worst:.1f}; target <= 2: {'met' if worst <= 2.05 else 'missed'}"
                )
    return "\n".join(lines) + "\n"


SUBMIT_NOTE = "one client, 64 submits in flight"


def write_docs(table: str, start: str = "<!-- table -->", end: str = "<!-- /table -->") -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{table}{end}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{start}\n{table}{end}\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
