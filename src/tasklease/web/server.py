"""``tasklease web``: one client, one event feed, one uvicorn server, until SIGTERM or SIGINT.

The options come from :func:`tasklease.web.security.web_config` (``--http``
else ``TASKLEASE_WEB``, else 127.0.0.1:8080; ``--token`` else
``TASKLEASE_WEB_TOKEN``; a non-loopback address needs a token). :func:`run_web` binds the address first
(a port in use is a one-line error), connects to etcd, starts the feed (the
process's one watch), then serves. SIGTERM or SIGINT ends the open event
streams and stops uvicorn (requests in flight get a few seconds), then the
feed and the client stop: exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from tasklease.client import Client
from tasklease.errors import InvalidOption
from tasklease.httpserver import HttpAddress
from tasklease.store import StoreConfig
from tasklease.web.api import WebState
from tasklease.web.app import create_app
from tasklease.web.feed import EventFeed
from tasklease.web.security import WebConfig

log = logging.getLogger("tasklease.web")

GRACE_S = 5.0


def bind(address: HttpAddress) -> socket.socket:
    """A listening-ready socket bound to ``address`` (port 0: a free one).

    Raises:
        InvalidOption: The address cannot be bound (in use, not an address of this host).
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    # proto IPPROTO_TCP (not create_server's 0): asyncio turns TCP_NODELAY on only for such
    # sockets, and without it every keep-alive answer's body waits for the client's delayed ACK
    # (40 ms a request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InvalidOption(f"--http {address}: cannot listen: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    """The base URL of a bound socket (a wildcard host shown as loopback)."""
    port = sock.getsockname()[1]
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{HttpAddress(shown, port)}"


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to :func:`serve` (uvicorn's own handler re-raises them).

    Its ``ready`` event is set once it accepts connections.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then set ``ready``."""
        await super().startup(sockets=sockets)
        if self.started:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: the caller handles SIGTERM and SIGINT."""
        yield


def uvicorn_config(app: Any, *, grace_s: float = GRACE_S) -> uvicorn.Config:
    """The settings of uvicorn: no logging setup of its own, no access log, no Server header."""
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=max(1, round(grace_s)),
        ws="none",
    )


async def serve(
    client: Client,
    config: WebConfig,
    sock: socket.socket,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    static: Any = None,
) -> None:
    """Serve on ``sock`` until ``stop`` is set, or SIGTERM/SIGINT when ``stop`` is None.

    Starts the event feed first and stops it last.

    Args:
        client: The client (kept open; the caller closes it).
        config: The options.
        sock: The bound socket (:func:`bind`).
        stop: Set it to stop (None: on SIGTERM or SIGINT).
        ready: Set once the server accepts connections.
        static: The dashboard's files (None: the package's).
    """
    feed = EventFeed(client.store, client.keys)
    await feed.start()
    state = WebState(client=client, feed=feed, max_body=config.max_body, static=static)
    app = create_app(state, config.guard)
    server = _Server(uvicorn_config(app))
    loop = asyncio.get_running_loop()
    signals = stop is None
    stop = stop or asyncio.Event()
    if signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    async def stopper() -> None:
        await stop.wait()
        log.info("stopping", extra={"component": "web"})
        state.stopping.set()
        await feed.stop()  # open event streams end, so the graceful shutdown need not wait for them
        server.should_exit = True

    watcher = asyncio.create_task(stopper())
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        started = asyncio.create_task(server.ready.wait())
        await asyncio.wait({started, serving}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if server.started:
            url = url_of(sock, config.address.host)
            mode = ", read-only" if config.read_only else ""
            auth = ", token required" if config.token else ""
            log.info(
                "dashboard and API at %s/ (namespace %s%s%s)",
                url,
                client.keys.namespace,
                mode,
                auth,
                extra={"component": "web", "url": url},
            )
            if ready is not None:
                ready.set()
        await serving
    finally:
        watcher.cancel()
        if not serving.done():
            server.should_exit = True
            await asyncio.gather(serving, return_exceptions=True)
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await feed.stop()


async def _run(store_config: StoreConfig, namespace: str, config: WebConfig) -> int:
    logging.getLogger("uvicorn").setLevel(logging.WARNING)  # its start and stop lines: ours say it
    sock = bind(config.address)
    try:
        client = await Client.connect(store_config, namespace=namespace)
        try:
            await serve(client, config, sock)
        finally:
            await client.close()
    finally:
        sock.close()
    log.info("stopped", extra={"component": "web"})
    return 0


def run_web(store_config: StoreConfig, namespace: str, config: WebConfig) -> int:
    """Serve the API and the dashboard until SIGTERM or SIGINT; return the exit code (0).

    Raises:
        InvalidOption: The address cannot be bound.
        StoreError: etcd failed at the start (the feed's first read).
    """
    return asyncio.run(_run(store_config, namespace, config))
