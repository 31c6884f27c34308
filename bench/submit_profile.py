"""Where a lone submit's time goes (issue step 12): etcd alone, then gRPC, then the client.

One local etcd with fsync (no scheduler, no worker: an idle cluster), one
process, each call awaited before the next (a sequential producer). For each
layer, the round trip p50 / p99 and this process's CPU time per call:

1. ``grpc.aio``: etcd's ``Txn`` with one put of a 300-byte value, the request
   built in advance (the floor of any asyncio client: gRPC + etcd + fsync);
2. the synchronous gRPC stack: the same call blocking on this thread, then
   from asyncio through a one-thread executor (the issue asks whether the
   synchronous stack in a thread beats ``grpc.aio``);
3. ``Store.txn`` (tasklease's store layer over etcd3aio): the same put;
4. ``Client.submit("noop", {"i": i})``: the whole submit (record, queue key,
   quota check, group commit, the hub's bookkeeping, the hooks);
5. ``bench.h2probe``: the same ``Txn`` through a minimal HTTP/2 client of ~150
   lines on asyncio (no TLS, auth, deadlines or error handling: a probe of what a
   call could cost without gRPC's machinery, not a transport tasklease uses).

Then the same ``Txn`` with 64 calls in flight, through ``grpc.aio`` and the probe
(CPU per call: what a busy process pays).

The difference between 4 and 3 is the client's own cost per submit; between 3
and 1 the store layer's. CPU per call includes gRPC's own threads.

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

from bench.h2probe import H2Probe
from tasklease.client import Client
from tasklease.etcd_server import EtcdServer
from tasklease.store import Put, Store, StoreConfig

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


TXN_PATH = "/etcdserverpb.KV/Txn"


async def _probe_txn(probe: H2Probe, i: int) -> TxnResponse:
    answer = TxnResponse()
    answer.ParseFromString(await probe.call(TXN_PATH, _request(i).SerializeToString()))
    if answer.header.revision <= 0:
        raise RuntimeError("the probe's Txn did not commit")
    return answer


async def _h2probe(address: str, n: int) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    probe = await H2Probe.connect(host, int(port))
    try:
        return await _timed_async(
            "minimal HTTP/2 on asyncio (bench.h2probe) Txn", n, lambda i: _probe_txn(probe, i)
        )
    finally:
        probe.close()


async def _in_flight(address: str, n: int, width: int = 64) -> dict[str, float]:
    """CPU per call with ``width`` calls in flight: grpc.aio, then the probe."""
    out: dict[str, float] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = KVStub(channel)
        cpu0 = _cpu()
        for start in range(0, n, width):
            await asyncio.gather(*(stub.Txn(_request(i), timeout=5) for i in range(start, start + width)))
        out["grpc.aio Txn"] = (_cpu() - cpu0) / (-(-n // width) * width) * 1000
    host, _, port = address.rpartition(":")
    probe = await H2Probe.connect(host, int(port))
    try:
        cpu0 = _cpu()
        for start in range(0, n, width):
            await asyncio.gather(*(_probe_txn(probe, i) for i in range(start, start + width)))
        out["minimal HTTP/2 on asyncio (bench.h2probe) Txn"] = (
            (_cpu() - cpu0) / (-(-n // width) * width) * 1000
        )
    finally:
        probe.close()
    return out


async def _store(config: StoreConfig, n: int) -> dict[str, Any]:
    async with Store(config) as store:
        return await _timed_async("Store.txn (1 put)", n, lambda i: store.txn([], [Put(f"st/{i}", VALUE)]))


async def _client(config: StoreConfig, n: int) -> dict[str, Any]:
    client = await Client.connect(config, namespace="profile")
    try:
        return await _timed_async("Client.submit", n, lambda i: client.submit("noop", {"i": i}))
    finally:
        await client.close()


def run(calls: int, rounds: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every layer, ``rounds`` times in turn on one etcd; each layer's figures of its median round.

    Also the CPU per call with 64 in flight (grpc.aio, the probe), median of the rounds.
    """
    results: dict[str, list[dict[str, Any]]] = {}
    in_flight: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = EtcdServer(Path(tmp) / "data")
        server.start()
        try:
            address = f"127.0.0.1:{server.client_port}"
            config = StoreConfig.from_text(server.endpoint)
            for _ in range(rounds):
                for figures in (
                    asyncio.run(_grpc_aio(address, calls)),
                    _grpc_sync(address, calls),
                    asyncio.run(_grpc_thread(address, calls)),
                    asyncio.run(_store(config, calls)),
                    asyncio.run(_client(config, calls)),
                    asyncio.run(_h2probe(address, calls)),
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
