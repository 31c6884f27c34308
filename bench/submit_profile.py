"""Where a lone submit's time goes (issue step 12): etcd alone, then gRPC, then the client.

One local etcd with fsync (no scheduler, no worker: an idle cluster), one
process, each call awaited before the next (a sequential producer). For each
layer, the round trip p50 / p99 and this process's CPU time per call:

1. ``grpc.aio``: etcd's ``Txn`` with one put of a 300-byte value, the request
   built in advance (the floor of any asyncio client: gRPC + etcd + fsync);
2. the synchronous gRPC stack: the same call blocking on this thread, then
   from asyncio through a one-thread executor (the issue asks whether the
   synchronous stack in a thread beats ``grpc.aio``);
3. ``store_h2.UnaryClient``: the same ``Txn`` through tasklease's own HTTP/2
   client on asyncio (the default transport of KV calls);
4. ``Store.txn``: the same put through the store layer, over each transport
   (``h2``, the default, and ``grpc``, etcd3aio's stub);
5. ``Client.submit("noop", {"i": i})``: the whole submit (record, queue key,
   quota check, group commit, the hub's bookkeeping, the hooks), each transport.

Then the same ``Txn`` with 64 calls in flight, through ``grpc.aio`` and
``store_h2`` (CPU per call: what a busy process pays).

The difference between 5 and 4 is the client's own cost per submit; between 4
and 1 (or 3) the store layer's. CPU per call includes gRPC's own threads.

    python -m bench.submit_profile [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from etcd3aio._protobuf import KVStub, PutRequest, RequestOp, TxnRequest, TxnResponse

from tasklease.client import Client
from tasklease.etcd_server import EtcdServer
from tasklease.store import TRANSPORTS, Put, Store, StoreConfig
from tasklease.store_h2 import Endpoint, UnaryClient

VALUE = b"x" * 300


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _request(i: int) -> Any:
    return TxnRequest(success=[RequestOp(request_put=PutRequest(key=f"raw/{i}".encode(), value=VALUE))])


def _figures(name: str, rtts: list[float], cpu_s: float) -> dict[str, Any]:
    rtts = sorted(rtts)
    return {
        "layer": name,
        "p50_ms": statistics.median(rtts),
        "p99_ms": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))],
        "cpu_ms_per_call": cpu_s / len(rtts) * 1000,
    }


async def _timed_async(name: str, n: int, call: Callable[[int], Awaitable[Any]]) -> dict[str, Any]:
    for i in range(min(100, n)):  # warm up (channel, caches)
        await call(i)
    rtts: list[float] = []
    cpu0 = _cpu()
    for i in range(n):
        start = time.perf_counter()
        await call(i)
        rtts.append((time.perf_counter() - start) * 1000)
    return _figures(name, rtts, _cpu() - cpu0)


def _timed_sync(name: str, n: int, call: Callable[[int], Any]) -> dict[str, Any]:
    for i in range(min(100, n)):
        call(i)
    rtts: list[float] = []
    cpu0 = _cpu()
    for i in range(n):
        start = time.perf_counter()
        call(i)
        rtts.append((time.perf_counter() - start) * 1000)
    return _figures(name, rtts, _cpu() - cpu0)


async def _grpc_aio(address: str, n: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = KVStub(channel)
        return await _timed_async("grpc.aio Txn", n, lambda i: stub.Txn(_request(i), timeout=5))


def _grpc_sync(address: str, n: int) -> dict[str, Any]:
    with grpc.insecure_channel(address) as channel:
        stub = KVStub(channel)
        return _timed_sync("sync gRPC Txn, blocking", n, lambda i: stub.Txn(_request(i), timeout=5))


async def _grpc_thread(address: str, n: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    with grpc.insecure_channel(address) as channel, concurrent.futures.ThreadPoolExecutor(1) as pool:
        stub = KVStub(channel)
        return await _timed_async(
            "sync gRPC Txn in a thread",
            n,
            lambda i: loop.run_in_executor(pool, lambda: stub.Txn(_request(i), timeout=5)),
        )


H2_LAYER = "store_h2.UnaryClient Txn"


def _unary(address: str) -> UnaryClient:
    host, _, port = address.rpartition(":")
    return UnaryClient([Endpoint(host, int(port))], max_receive=64 * 1024 * 1024)


async def _unary_txn(client: UnaryClient, i: int) -> TxnResponse:
    answer = TxnResponse.FromString(
        await client.call("Txn", _request(i).SerializeToString(), timeout_s=5.0, retry=False)
    )
    if answer.header.revision <= 0:
        raise RuntimeError("the Txn did not commit")
    return answer


async def _h2(address: str, n: int) -> dict[str, Any]:
    client = _unary(address)
    try:
        return await _timed_async(H2_LAYER, n, lambda i: _unary_txn(client, i))
    finally:
        await client.close()


async def _in_flight(address: str, n: int, width: int = 64) -> dict[str, float]:
    """CPU per call with ``width`` calls in flight: grpc.aio, then store_h2."""
    out: dict[str, float] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = KVStub(channel)
        cpu0 = _cpu()
        for start in range(0, n, width):
            await asyncio.gather(*(stub.Txn(_request(i), timeout=5) for i in range(start, start + width)))
        out["grpc.aio Txn"] = (_cpu() - cpu0) / (-(-n // width) * width) * 1000
    client = _unary(address)
    try:
        cpu0 = _cpu()
        for start in range(0, n, width):
            await asyncio.gather(*(_unary_txn(client, i) for i in range(start, start + width)))
        out[H2_LAYER] = (_cpu() - cpu0) / (-(-n // width) * width) * 1000
    finally:
        await client.close()
    return out


async def _store(config: StoreConfig, n: int) -> dict[str, Any]:
    async with Store(config) as store:
        return await _timed_async(
            f"Store.txn (1 put), {config.transport}", n, lambda i: store.txn([], [Put(f"st/{i}", VALUE)])
        )


async def _client(config: StoreConfig, n: int) -> dict[str, Any]:
    client = await Client.connect(config, namespace="profile")
    try:
        return await _timed_async(
            f"Client.submit, {config.transport}", n, lambda i: client.submit("noop", {"i": i})
        )
    finally:
        await client.close()


def run(calls: int, rounds: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every layer, ``rounds`` times in turn on one etcd; each layer's figures of its median round.

    Also the CPU per call with 64 in flight (grpc.aio, store_h2), median of the rounds.
    """
    results: dict[str, list[dict[str, Any]]] = {}
    in_flight: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = EtcdServer(Path(tmp) / "data")
        server.start()
        try:
            address = f"127.0.0.1:{server.client_port}"
            configs = [StoreConfig.from_text(server.endpoint, transport=t) for t in TRANSPORTS]
            for _ in range(rounds):
                for figures in (
                    asyncio.run(_grpc_aio(address, calls)),
                    _grpc_sync(address, calls),
                    asyncio.run(_grpc_thread(address, calls)),
                    asyncio.run(_h2(address, calls)),
                    *(asyncio.run(_store(config, calls)) for config in configs),
                    *(asyncio.run(_client(config, calls)) for config in configs),
                ):
                    results.setdefault(figures["layer"], []).append(figures)
                for name, cpu_ms in asyncio.run(_in_flight(address, calls)).items():
                    in_flight.setdefault(name, []).append(cpu_ms)
        finally:
            server.stop()
    out = []
    for runs in results.values():
        runs.sort(key=lambda f: f["p50_ms"])
        out.append(runs[len(runs) // 2])
    return out, {name: statistics.median(values) for name, values in in_flight.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per layer and round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds (each layer in turn); the median is shown"
    )
    args = parser.parse_args()
    rows, in_flight = run(args.calls, args.rounds)
    print(f"lone calls on an idle etcd (fsync on), {args.calls} per layer, median of {args.rounds} rounds")
    print("| layer | p50 ms | p99 ms | CPU ms per call (this process) |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['layer']} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['cpu_ms_per_call']:.3f} |"
        )
    print()
    print("64 calls in flight: CPU ms per call (this process)")
    for name, cpu_ms in in_flight.items():
        print(f"- {name}: {cpu_ms:.3f}")


if __name__ == "__main__":
    main()
