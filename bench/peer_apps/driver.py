"""Client driver of the peer benchmark (run with bench/.venv-peers/bin/python).

``python driver.py {celery,dramatiq} --tasks N --latency-tasks M --rate R``
runs, against workers that bench/peers.py has started, a warm-up (one task,
then ``--warmup`` tasks like the throughput workload; peers.py passes
min(500, N) as tasklease_bench does) and then:

* throughput: N no-op tasks submitted back to back through the peer's normal
  client API (Celery ``noop.delay(i)``, Dramatiq ``noop.send(i)``), then the
  client waits for every result in submission order (Celery
  ``AsyncResult.get()``, Dramatiq ``Message.get_result(block=True)``).
  tasks/s = N / (first submit .. last result); submits/s = N / (first
  submit .. return of the last submit call).
* latency: M tasks submitted open loop at R/s on a fixed schedule (submit i is
  due at t0 + i/R, whatever happened before); every submit hands its result
  handle to a thread pool whose thread blocks on the same result API, so
  waiting never delays a later submit. Latency = from just before the submit
  call to the moment the waiting thread has the result (at most 256 waiting
  threads). p50 is the median, p95/p99 the rounded nearest rank, as in
  bench/tasklease_bench.py. ``--raw FILE`` keeps every latency and the lag of
  every submit behind its schedule.

It prints one JSON line with the figures on stdout.
"""

import argparse
import gc
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

RESULT_TIMEOUT_S = 120.0
WARMUP_TIMEOUT_S = 60.0


class CeleryClient:
    name = "celery"
    latency_method = (
        "noop.delay(i) on the schedule; AsyncResult.get() for each task in a "
        "ThreadPoolExecutor thread (Redis result backend, pub/sub)"
    )

    def __init__(self):
        import celery
        import kombu
        import redis
        from celery_app import noop

        self._noop = noop
        self.version = celery.__version__
        self.versions = {
            "celery": celery.__version__,
            "kombu": kombu.__version__,
            "redis-py": redis.__version__,
        }

    def submit(self, i):
        return self._noop.delay(i)

    def wait(self, handle, timeout):
        return handle.get(timeout=timeout)


class DramatiqClient:
    name = "dramatiq"
    latency_method = (
        "noop.send(i) on the schedule; Message.get_result(block=True) for each "
        "task in a ThreadPoolExecutor thread (Results middleware, RedisBackend, BRPOPLPUSH)"
    )

    def __init__(self):
        import dramatiq
        import redis
        from dramatiq_app import noop

        self._noop = noop
        self.version = dramatiq.__version__
        self.versions = {"dramatiq": dramatiq.__version__, "redis-py": redis.__version__}

    def submit(self, i):
        return self._noop.send(i)

    def wait(self, handle, timeout):
        return handle.get_result(block=True, timeout=int(timeout * 1000))


def percentile(sorted_values, q):
    """Nearest rank, rounded: the same definition as bench/tasklease_bench.py."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))]


def check(value, expected):
    if value != expected:
        raise RuntimeError(f"wrong result: {value!r} != {expected!r}")


def warmup(client, count):
    """One task to see that the workers are up, then ``count`` like the throughput workload."""
    first = client.submit(-1)
    check(client.wait(first, WARMUP_TIMEOUT_S), -1)
    handles = [client.submit(-2 - i) for i in range(count)]
    for i, handle in enumerate(handles):
        check(client.wait(handle, RESULT_TIMEOUT_S), -2 - i)


def throughput(client, n):
    start = time.perf_counter()
    handles = [client.submit(i) for i in range(n)]
    submitted = time.perf_counter()
    for i, handle in enumerate(handles):
        check(client.wait(handle, RESULT_TIMEOUT_S), i)
    done = time.perf_counter()
    # Drop the N result handles before the latency workload starts: Celery's
    # AsyncResult unsubscribes from its result channel when collected, which
    # would otherwise happen during the first latency tasks.
    handles.clear()
    gc.collect()
    cleanup = time.perf_counter() - done
    return {
        "throughput_cleanup_s": cleanup,
        "throughput_tasks_s": n / (done - start),
        "submit_rate_s": n / (submitted - start),
        "throughput_elapsed_s": done - start,
        "submit_elapsed_s": submitted - start,
    }


def latency(client, m, rate, raw=None):
    latencies = [None] * m
    errors = []
    lock = threading.Lock()

    def waiter(i, handle, t_submit):
        try:
            value = client.wait(handle, RESULT_TIMEOUT_S)
            t_result = time.perf_counter()
            check(value, i)
            latencies[i] = t_result - t_submit
        except Exception as exc:  # reported after the run
            with lock:
                errors.append(f"task {i}: {exc!r}")

    lags = []
    interval = 1.0 / rate
    with ThreadPoolExecutor(max_workers=min(m, 256), thread_name_prefix="wait") as pool:
        t0 = time.perf_counter() + 0.05
        for i in range(m):
            due = t0 + i * interval
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            t_submit = time.perf_counter()
            lags.append(t_submit - due)
            handle = client.submit(i)
            pool.submit(waiter, i, handle, t_submit)
        schedule_s = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} latency tasks failed, first: {errors[0]}")
    if raw:
        with open(raw, "w") as f:
            json.dump(
                {
                    "rate": rate,
                    "lag_ms": [v * 1000.0 for v in lags],
                    "latency_ms": [v * 1000.0 for v in latencies],
                },
                f,
            )
    ms = sorted(v * 1000.0 for v in latencies)
    lags.sort()
    return {
        "p50_ms": statistics.median(ms),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms),
        "max_ms": ms[-1],
        "achieved_submit_rate_s": m / schedule_s if schedule_s > 0 else float("nan"),
        "submit_lag_p99_ms": percentile([v * 1000.0 for v in lags], 99),
        "submit_lag_max_ms": lags[-1] * 1000.0,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=("celery", "dramatiq"))
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--latency-tasks", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--warmup", type=int, default=500, help="warm-up tasks before the workloads")
    parser.add_argument("--raw", help="write the per-task latencies (in submit order) to this JSON file")
    args = parser.parse_args(argv)

    client = CeleryClient() if args.system == "celery" else DramatiqClient()
    warmup(client, args.warmup)
    result = {
        "system": client.name,
        "version": client.version,
        "versions": client.versions,
        "tasks": args.tasks,
        "latency_tasks": args.latency_tasks,
        "rate": args.rate,
        "latency_method": client.latency_method,
    }
    result.update(throughput(client, args.tasks))
    result.update(latency(client, args.latency_tasks, args.rate, args.raw))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
