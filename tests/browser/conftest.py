"""Browser tests: a real headless Chromium drives the dashboard of a real stack.

The stack (:class:`Stack`) runs on an event loop of its own in a background
thread, so the blocking Selenium calls of a test never stall it: a client, the
web server (``tasklease.web.server.serve`` with uvicorn on a free port), a
scheduler and in-process workers, all against the session's etcd (tests/conftest.py),
in the test's own namespace. Tasks are submitted with the ``tasklease`` command
(a subprocess, ``cli_env``) or the stack's client; what the UI did is checked in
etcd through that client.

Chromium and chromedriver are Debian's (:func:`chromium.ensure_chromium` installs
them when missing); Selenium is given both paths, and ``SE_OFFLINE`` keeps
selenium-manager from ever downloading anything.

After each test the harness fails it if a JavaScript dialog is open (an
``alert`` from injected markup) or if the browser's console has a JavaScript
error or a Content-Security-Policy violation.

Screenshots go to ``tests/browser/artifacts/`` (gitignored); their paths are
printed at the end of the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from browser.chromium import ensure_chromium
from browser.harness import Dashboard, browser_log, chrome_options, screenshots
from tasklease.store import StoreConfig


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real headless Chromium (tests/browser)")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if screenshots:
        terminalreporter.write_sep("-", "dashboard screenshots")
        for path in screenshots:
            terminalreporter.write_line(str(path))


@pytest.fixture(scope="session")
def driver() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the session (each test starts from a blank page, no cookies)."""
    binaries = ensure_chromium()
    d = webdriver.Chrome(service=Service(executable_path=binaries.chromedriver), options=chrome_options())
    d.set_page_load_timeout(60)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def dash(
    driver: webdriver.Chrome,
    store_config: StoreConfig,
    namespace: str,
    cli_env: dict[str, str],
    tasklease_bin: str,
    request: pytest.FixtureRequest,
) -> Iterator[Dashboard]:
    """The browser (blank, no cookies) and a way to start stacks; checks dialogs and the console after."""
    driver.get("about:blank")
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    browser_log(driver)  # drop what earlier tests left
    d = Dashboard(driver, store_config, namespace, cli_env, tasklease_bin, request.node.name)
    try:
        yield d
    finally:
        d.finish()
