"""Celery app for the peer benchmark (run with bench/.venv-peers/bin/python).

Broker and result backend: the Redis server that bench/peers.py started, whose
URL comes in ``BENCH_REDIS_URL`` (broker on db 0, results on db 1). Everything
else is Celery's default (JSON serializer, prefetch multiplier 4, early ack).
"""

import os

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")

app = Celery("bench_peer", broker=f"{REDIS_URL}/0", backend=f"{REDIS_URL}/1")
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)


@app.task(name="bench.noop")
def noop(x):
    """Return the argument: the no-op task of every benchmark workload."""
    return x
