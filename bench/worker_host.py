"""Many worker instances in one process (to simulate many workers cheaply).

    python -m bench.worker_host --instances 50 --name host-0 --concurrency 2

Each instance registers its own node under its own lease, exactly like a
``tasklease worker`` process; they share one etcd connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.store import Store, StoreConfig
from tasklease.worker import Worker, WorkerConfig


async def main(args: argparse.Namespace) -> None:
    store = Store(StoreConfig.from_text(os.environ["TASKLEASE_ETCD"]))
    await store.connect()
    keys = Keyspace(os.environ.get("TASKLEASE_NAMESPACE", "tasklease"))
    workers = [
        Worker(
            store,
            keys,
            builtin_registry(),
            WorkerConfig(
                worker_id=f"{args.name}-{i}", concurrency=args.concurrency, heartbeat_s=3, lease_ttl_s=10
            ),
        )
        for i in range(args.instances)
    ]
    for w in workers:
        await w.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.gather(*(w.stop(grace_s=1) for w in workers))
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--name", default="host")
    parser.add_argument("--concurrency", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
