"""The dashboard in a hostile world: markup in task data stays text, tokens are enforced, read-only hides actions.

Every test also passes the harness's end-of-test checks: no JavaScript dialog
open and no CSP violation or script error in the browser's console.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import urllib.error
import urllib.request
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from browser.harness import XSS, Dashboard
from tasklease import codec
from tasklease.models import TaskState

pytestmark = pytest.mark.browser


def http(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, str]:
    """Status and body of one request (errors included), without the browser."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def assert_inert(dash: Dashboard) -> None:
    """The payload is on the page as text: no dialog, no <img> element, the literal markup visible."""
    with pytest.raises(NoAlertPresentException):
        dash.driver.switch_to.alert  # noqa: B018 (the property raises when no dialog is open)
    assert dash.driver.find_elements(By.TAG_NAME, "img") == []
    assert dash.driver.find_elements(By.CSS_SELECTOR, "[onerror]") == []
    assert XSS in dash.driver.find_element(By.TAG_NAME, "body").text


def test_markup_in_task_data_shows_as_text(dash: Dashboard) -> None:
    stack = dash.start()
    stack.scheduler()
    stack.worker()
    client = stack.client
    # payload and error: a failing task whose message is markup
    failed = dash.submit_cli("fail", {"message": XSS})
    # a queued task with markup in its payload, in a queue paused with markup as the reason
    queued = dash.submit_cli("add", {"a": XSS, "b": 1}, "--queue", "held")
    stack.run(client.pause("held", XSS))
    # type: new types are plain text, but a record written by an older version is not checked
    odd = stack.run(client.submit("add", {"a": 1, "b": 1}, queue="odd"))

    async def retype() -> None:
        task = await client.get(odd.id)
        await client.store.put(
            client.keys.task(odd.id), codec.encode_task(dataclasses.replace(task, type=XSS))
        )

    assert stack.run(client.wait(failed, 30)).state is TaskState.FAILED

    dash.open("/")
    dash.wait_el(f"failure-row-{failed}")
    dash.mark_page()
    stack.run(retype())  # arrives through the live feed
    assert_inert(dash)

    dash.go(f"/tasks/{failed}")
    dash.wait_text("task-state", "failed")
    assert XSS in dash.text("task-error")
    assert XSS in dash.text("attempt-error", dash.el("attempt-1"))
    assert XSS in dash.text("task-payload")
    assert_inert(dash)
    dash.shot("xss-as-text")

    dash.go(f"/tasks/{queued}")
    dash.wait_text("task-id", queued)
    dash.wait(lambda _: XSS in dash.text("task-payload"))
    assert_inert(dash)

    dash.go(f"/tasks/{odd.id}")
    dash.wait_text("task-type", XSS)
    assert_inert(dash)

    dash.go("/tasks?queue=odd")
    dash.wait(lambda _: XSS in dash.el(f"task-row-{odd.id}").text)
    assert_inert(dash)

    dash.go("/queues/held")
    dash.wait_text("queue-paused-reason", XSS)
    assert_inert(dash)
    dash.assert_same_page()


def test_a_token_guards_pages_and_api(dash: Dashboard) -> None:
    token = secrets.token_urlsafe(24)
    stack = dash.start(token=token)
    stack.scheduler()
    stack.worker()
    url = stack.url

    # without the token: the API, the page and its files are refused
    for path in ("/api/config", "/api/tasks", "/api/events", "/static/app.js", "/"):
        status, _ = http(f"{url}{path}")
        assert status == 401, path
    status, body = http(f"{url}/api/config", headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert status == 401 and "error" in json.loads(body)
    status, body = http(f"{url}/api/config", headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and json.loads(body)["auth"] is True
    dash.driver.get(f"{url}/")
    assert "401" in dash.driver.find_element(By.TAG_NAME, "body").text
    assert not dash.driver.find_elements(By.CSS_SELECTOR, "#main")
    dash.driver.get(f"{url}/?token=wrong-token-0123456789")
    assert "401" in dash.driver.find_element(By.TAG_NAME, "body").text

    # ?token= sets the cookie and leaves the token out of the address
    dash.driver.get(f"{url}/?token={token}")
    dash.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#main > section.page"))
    assert "token" not in dash.driver.current_url
    dash.wait_text("live", "live")
    dash.wait_text("workers-live", "1")
    dash.mark_page()
    task_id = dash.submit_cli("add", {"a": 5, "b": 5})
    dash.go(f"/tasks/{task_id}")
    dash.wait_text("task-state", "succeeded")
    dash.wait_text("task-result", "10")
    dash.assert_same_page()
    # actions work with the cookie (the API checks the token on POST too)
    dash.go("/queues/default")
    dash.click("action-pause")
    dash.wait_el("queue-paused")
    assert "default" in stack.run(stack.client.paused())


def test_read_only_mode_hides_every_action(dash: Dashboard) -> None:
    stack = dash.start(read_only=True)
    stack.scheduler()
    stack.worker()
    failed = dash.submit_cli("fail", {"message": "nope"})
    queued = dash.submit_cli("add", {"a": 1, "b": 1}, "--queue", "held")

    dash.open(f"/tasks/{failed}")
    dash.wait_text("task-state", "failed")
    assert dash.el("read-only").is_displayed()
    assert not dash.els("action-rerun")
    dash.go(f"/tasks/{queued}")
    dash.wait_text("task-id", queued)
    dash.wait_text("task-state", "queued")
    assert (
        not dash.els("action-cancel") and not dash.els("action-priority") and not dash.els("priority-select")
    )
    dash.go("/queues/default")
    dash.wait_el("queue-active")
    assert not dash.els("action-pause") and not dash.els("action-resume")
    dash.go("/workers")
    dash.wait_el("worker-row-w0")
    assert not dash.els("action-drain")
    dash.shot("read-only-workers")

    # and the API refuses writes anyway
    status, body = http(
        f"{stack.url}/api/tasks/{queued}/cancel",
        method="POST",
        headers={"Content-Type": "application/json", "X-Tasklease-Request": "1"},
        body={},
    )
    assert status == 403 and json.loads(body) == {"error": "read-only dashboard"}
    assert stack.run(stack.client.get(queued)).state is TaskState.QUEUED
