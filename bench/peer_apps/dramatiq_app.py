"""Dramatiq app for the peer benchmark (run with bench/.venv-peers/bin/python).

Broker: RedisBroker on the Redis server that bench/peers.py started, whose URL
comes in ``BENCH_REDIS_URL`` (db 0); the Results middleware with RedisBackend
(db 1) stores every result. Dramatiq's default middleware stays in place.
"""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")

broker = RedisBroker(url=f"{REDIS_URL}/0")
result_backend = RedisBackend(url=f"{REDIS_URL}/1")
broker.add_middleware(Results(backend=result_backend))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_noop", store_results=True)
def noop(x):
    """Return the argument: the no-op task of every benchmark workload."""
    return x
