"""The browser tests' harness: a stack on a background loop, Chromium options, the page helpers.

:class:`Stack` runs on an event loop of its own in a background thread, so the
blocking Selenium calls of a test never stall it: a client, the web server
(``tasklease.web.server.serve``: uvicorn on a free port of 127.0.0.1), a
scheduler and in-process workers, all against the session's etcd, in the test's
own namespace. :class:`Dashboard` is what a test gets (the ``dash`` fixture of
conftest.py): the browser, its stacks and the helpers the tests share.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar

os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager: never download a browser or driver

from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

import sample_tasks
from browser.chromium import ensure_chromium
from tasklease.client import Client
from tasklease.executors.builtin import builtin_registry
from tasklease.httpserver import HttpAddress
from tasklease.keys import Keyspace
from tasklease.scheduler import Scheduler, SchedulerConfig
from tasklease.store import Store, StoreConfig
from tasklease.web.security import WebConfig
from tasklease.web.server import bind, serve, url_of
from tasklease.worker import Worker, WorkerConfig

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
LAPTOP = (1280, 900)
PHONE = (390, 844)
WAIT_S = 30.0
XSS = "<img src=x onerror=alert(1)>"

T = TypeVar("T")
screenshots: list[Path] = []  # saved this session (conftest prints them at the end)


# the stack -----------------------------------------------------------------------------------
def _registry() -> Any:
    reg = builtin_registry()
    reg.update([sample_tasks.registry])
    return reg


class Stack:
    """Client, web server, schedulers and workers on one event loop in a background thread.

    Args:
        store_config: Where etcd is.
        namespace: The test's namespace.
        token: The dashboard's token (None: none).
        read_only: Serve read-only.
    """

    def __init__(
        self, store_config: StoreConfig, namespace: str, *, token: str | None = None, read_only: bool = False
    ) -> None:
        self.store_config = store_config
        self.namespace = namespace
        self.keys = Keyspace(namespace)
        self.token = token
        self.read_only = read_only
        self.url = ""
        self.port = 0
        self.client: Client
        self.workers: list[Worker] = []
        self.schedulers: list[Scheduler] = []
        self._stores: list[Store] = []
        self._stop: asyncio.Event | None = None
        self._serving: asyncio.Task[None] | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="browser-stack", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on the stack's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Stack:
        """Connect the client and start the web server (a free port on 127.0.0.1)."""
        self.run(self._start())
        return self

    async def _start(self) -> None:
        self.client = await Client.connect(self.store_config, namespace=self.namespace)
        await self._serve()

    def restart_web(self) -> None:
        """Stop the web server (its event streams end), then serve again on the same port."""
        self.run(self._stop_web())
        self.run(self._serve())

    def stop_web(self) -> None:
        """Stop the web server only."""
        self.run(self._stop_web())

    def serve_web(self) -> None:
        """Serve again on the same port."""
        self.run(self._serve())

    async def _stop_web(self) -> None:
        if self._stop is not None and self._serving is not None:
            self._stop.set()
            await asyncio.gather(self._serving, return_exceptions=True)
        self._serving = None

    async def _serve(self) -> None:
        config = WebConfig(
            address=HttpAddress("127.0.0.1", self.port), token=self.token, read_only=self.read_only
        )
        sock = bind(config.address)
        self.port = sock.getsockname()[1]
        self.url = url_of(sock, "127.0.0.1")
        self._stop = asyncio.Event()
        ready = asyncio.Event()

        async def serving() -> None:
            try:
                await serve(self.client, config, sock, stop=self._stop, ready=ready)
            finally:
                sock.close()

        self._serving = asyncio.create_task(serving())
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({waiter, self._serving}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiter.cancel()
            if self._serving.done():
                self._serving.result()  # its error
            raise RuntimeError("the web server did not start within 30 s")

    async def _connect(self) -> Store:
        store = Store(self.store_config)
        await store.connect()
        self._stores.append(store)
        return store

    def scheduler(self, **config: Any) -> Scheduler:
        """Start a scheduler (id ``s0``, ``s1``, ...)."""

        async def start() -> Scheduler:
            config.setdefault("scheduler_id", f"s{len(self.schedulers)}")
            config.setdefault("lease_ttl_s", 3)
            s = Scheduler(await self._connect(), self.keys, SchedulerConfig(**config))
            await s.start()
            self.schedulers.append(s)
            return s

        return self.run(start())

    def worker(self, **config: Any) -> Worker:
        """Start an in-process worker (id ``w0``, ``w1``, ...) running the built-in and sample tasks."""

        async def start() -> Worker:
            config.setdefault("worker_id", f"w{len(self.workers)}")
            config.setdefault("lease_ttl_s", 3)
            config.setdefault("heartbeat_s", 0.5)
            w = Worker(await self._connect(), self.keys, _registry(), WorkerConfig(**config))
            await w.start()
            self.workers.append(w)
            return w

        return self.run(start())

    def close(self) -> None:
        """Stop everything and the loop."""
        try:
            self.run(self._close(), timeout=90)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            self.loop.close()

    async def _close(self) -> None:
        await self._stop_web()
        for w in self.workers:
            await w.kill()
        for s in self.schedulers:
            await s.stop()
        for store in self._stores:
            await store.close()
        if hasattr(self, "client"):
            await self.client.close()


# the browser -----------------------------------------------------------------------------------
def browser_log(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The browser console's entries since the last call (Chromium's ``goog:loggingPrefs``)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


def chrome_options(size: tuple[int, int] = LAPTOP) -> webdriver.ChromeOptions:
    """Headless Chromium at ``size`` with the console log kept (the harness reads it)."""
    binaries = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binaries.chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


class Dashboard:
    """A test's browser and stacks, with the helpers the tests share.

    Args:
        driver: The session's Chromium.
        store_config: Where etcd is.
        namespace: The test's namespace.
        cli_env: The environment of a ``tasklease`` subprocess for this namespace.
        tasklease_bin: The ``tasklease`` executable.
        name: The test's name (screenshot file names).
    """

    def __init__(
        self,
        driver: webdriver.Chrome,
        store_config: StoreConfig,
        namespace: str,
        cli_env: dict[str, str],
        tasklease_bin: str,
        name: str,
    ) -> None:
        self.driver = driver
        self.store_config = store_config
        self.namespace = namespace
        self.cli_env = cli_env
        self.tasklease_bin = tasklease_bin
        self.name = name
        self.stacks: list[Stack] = []
        self.stack: Stack | None = None

    # stack
    def start(self, *, token: str | None = None, read_only: bool = False) -> Stack:
        """Start a stack (web server + client) in the test's namespace; the first one is ``self.stack``."""
        stack = Stack(self.store_config, self.namespace, token=token, read_only=read_only)
        self.stacks.append(stack)
        stack.start()
        if self.stack is None:
            self.stack = stack
        return stack

    @property
    def url(self) -> str:
        assert self.stack is not None
        return self.stack.url

    def submit_cli(self, task_type: str, payload: Any = None, *args: str) -> str:
        """``tasklease submit TYPE --payload JSON ARGS...`` as a subprocess; the new task's id."""
        done = subprocess.run(
            [self.tasklease_bin, "submit", task_type, "--payload", json.dumps(payload), *args],
            env=self.cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"submit failed ({done.returncode}): {done.stdout}\n{done.stderr}"
        return done.stdout.strip().splitlines()[-1]

    # browser
    def open(self, hash_path: str = "/", *, base: str | None = None) -> None:
        """Load the dashboard at ``#hash_path`` (a full page load)."""
        self.driver.get("about:blank")  # else a URL that differs only in its hash would not reload
        self.driver.get(f"{base or self.url}/#{hash_path}")
        self.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#main > section.page"))

    def go(self, hash_path: str) -> None:
        """Change the hash only (the single-page app routes without a reload)."""
        self.driver.execute_script("location.hash = arguments[0];", hash_path)

    def wait(
        self,
        condition: Callable[[Any], T | Literal[False] | None],
        timeout: float = WAIT_S,
        message: str = "",
    ) -> T:
        """``condition(driver)`` once it is truthy (re-evaluated while elements are missing or replaced).

        Raises:
            AssertionError: It never was within ``timeout``; says where the browser is and what the
                message area shows.
        """
        try:
            found: T = WebDriverWait(
                self.driver,
                timeout,
                poll_frequency=0.1,
                ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
            ).until(condition, message)  # type: ignore[assignment]  # never None or False
        except TimeoutException:
            raise AssertionError(
                f"waited {timeout:g} s in vain{': ' + message if message else ''} "
                f"(at {self.driver.current_url}; messages: {self.flashes()!r})"
            ) from None
        return found

    def el(self, testid: str, within: WebElement | None = None) -> WebElement:
        """The element with ``data-testid=testid``."""
        root: Any = within or self.driver
        found: WebElement = root.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
        return found

    def els(self, testid: str, within: WebElement | None = None) -> list[WebElement]:
        root: Any = within or self.driver
        return list(root.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]'))

    def text(self, testid: str, within: WebElement | None = None) -> str:
        return str(self.el(testid, within).text)

    def wait_text(self, testid: str, expected: str | Callable[[str], bool], timeout: float = WAIT_S) -> str:
        """The text of ``testid`` once it equals ``expected`` (or ``expected(text)`` is true)."""
        check = expected if callable(expected) else (lambda t: t == expected)

        def cond(_: Any) -> str | None:
            t = self.text(testid)
            return t if check(t) else None

        try:
            return self.wait(cond, timeout)
        except AssertionError as exc:
            shown = [e.text for e in self.els(testid)]
            raise AssertionError(f"{testid}: waited for {expected!r}, shows {shown!r}; {exc}") from None

    def wait_el(self, testid: str, timeout: float = WAIT_S) -> WebElement:
        """The element with ``testid`` once it is displayed."""
        return self.wait(
            lambda _: (e := self.el(testid)).is_displayed() and e, timeout, f"{testid} not shown"
        )

    def click(self, testid: str, within: str | None = None) -> None:
        """Click ``testid`` (inside the element with testid ``within``) once it is enabled.

        Both are found again on every try: a live update may have replaced them.
        """

        def attempt(_: Any) -> bool:
            button = self.el(testid, self.el(within) if within else None)
            if not button.is_enabled():
                return False
            try:
                button.click()
            except ElementClickInterceptedException:  # under the sticky message area: bring it mid-screen
                self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
                return False
            return True

        self.wait(attempt, message=f"click {testid}")

    def flashes(self) -> str:
        """The text of the message area (empty when there is none)."""
        found = self.driver.find_elements(By.ID, "flash")
        return str(found[0].text) if found else ""

    def mark_page(self) -> None:
        """Remember this page load: :meth:`assert_same_page` fails after a reload."""
        self.driver.execute_script("window.__taskleaseNoReload = 'kept';")

    def assert_same_page(self) -> None:
        assert self.driver.execute_script("return window.__taskleaseNoReload;") == "kept", "the page reloaded"

    def assert_no_alert(self) -> None:
        """No JavaScript dialog is open."""
        try:
            alert = self.driver.switch_to.alert
        except NoAlertPresentException:
            return
        text = alert.text
        alert.dismiss()
        raise AssertionError(f"a JavaScript dialog opened: {text!r}")

    def shot(self, name: str, size: tuple[int, int] | None = None) -> Path:
        """Save a screenshot as artifacts/NAME.png (the whole page's height at the window's width)."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        width, height = size or LAPTOP
        full = self.driver.execute_script("return document.documentElement.scrollHeight;")
        self.driver.set_window_size(width, max(height, min(int(full) + 140, 4000)))
        try:
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(width, height)
        screenshots.append(path)
        print(f"screenshot: {path}")
        return path

    def console_problems(self) -> list[str]:
        """JavaScript errors and CSP violations from the browser's console since the last call."""
        problems = []
        for entry in browser_log(self.driver):
            message = str(entry.get("message", ""))
            if entry.get("source") == "network":
                continue  # a refused request (401, 404, 409, ...): the page shows it
            if "Content Security Policy" in message or entry.get("level") == "SEVERE":
                problems.append(message)
        return problems

    def finish(self) -> None:
        """End of test: no dialog open, no console error; then a blank page and the stacks stopped."""
        try:
            self.assert_no_alert()
            problems = self.console_problems()
            assert not problems, f"browser console: {problems}"
        finally:
            try:
                self.driver.set_window_size(*LAPTOP)
                self.driver.get("about:blank")
                self.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
            finally:
                for stack in reversed(self.stacks):
                    stack.close()
