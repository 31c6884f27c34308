"""The dashboard's pages, updated live: tasks submitted with the CLI appear and finish without a reload.

Each test starts its own stack (web server, scheduler, in-process workers) in its
own namespace and drives a real headless Chromium; every page is saved as a
screenshot under tests/browser/artifacts/.
"""

from __future__ import annotations

import re

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from browser.harness import PHONE, Dashboard
from tasklease.models import TaskState
from tasklease.spec import TaskSpec

pytestmark = pytest.mark.browser


def in_row(dash: Dashboard, row: str, testid: str) -> str:
    """The text of ``testid`` inside the element ``row`` (both data-testid values)."""
    return dash.text(testid, dash.el(row))


def rows(dash: Dashboard, prefix: str) -> list[str]:
    """The data-testid values starting with ``prefix`` on the page, in order."""
    found = dash.driver.find_elements(By.CSS_SELECTOR, f'[data-testid^="{prefix}"]')
    return [str(e.get_attribute("data-testid")) for e in found]


def test_cli_tasks_appear_on_the_overview_and_finish_live(dash: Dashboard) -> None:
    stack = dash.start()
    stack.scheduler()
    stack.worker()
    dash.open("/")
    dash.wait_text("workers-live", "1")
    dash.mark_page()

    # A queue no worker serves: the task appears and stays queued (priority 3).
    held = dash.submit_cli("add", {"a": 1, "b": 2}, "--queue", "held", "--priority", "3")
    dash.wait_el("queue-row-held")
    dash.wait(lambda _: in_row(dash, "queue-row-held", "queue-depth-3") == "1")
    dash.wait(lambda _: in_row(dash, "queue-row-held", "queue-queued") == "1")

    ids = [dash.submit_cli("add", {"a": i, "b": 10}) for i in range(3)]
    dash.wait(lambda _: in_row(dash, "queue-row-default", "queue-succeeded") == "3")
    dash.wait_text("state-count-succeeded", "3")
    dash.wait_text("state-count-queued", "1")
    dash.wait_text("chart-succeeded", "3")  # the chart counts the feed's finished tasks
    dash.wait_text("throughput-finished", lambda t: int(t) >= 3)
    dash.assert_same_page()
    dash.shot("overview")

    for i, task_id in enumerate(ids):
        task = stack.run(stack.client.get(task_id))
        assert task.state is TaskState.SUCCEEDED and task.result == i + 10
    assert stack.run(stack.client.get(held)).state is TaskState.QUEUED


def test_task_list_filters_pages_and_updates_rows_live(dash: Dashboard) -> None:
    stack = dash.start()
    stack.scheduler()
    stack.worker()
    specs = [TaskSpec(type="add", payload={"a": i, "b": 0}, queue="bulk") for i in range(55)]
    specs += [TaskSpec(type="async_add", payload={"a": i, "b": 0}, queue="bulk") for i in range(2)]
    stack.run(stack.client.submit_many(specs))

    # cursor paging: 50 then the 7 left (queued: in dequeue order)
    dash.open("/tasks?state=queued&queue=bulk")
    dash.wait(lambda _: len(rows(dash, "task-row-")) == 50)
    first_page = rows(dash, "task-row-")
    dash.click("next-page")
    dash.wait(lambda _: len(rows(dash, "task-row-")) == 7)
    assert not set(rows(dash, "task-row-")) & set(first_page)
    assert not dash.el("next-page").is_displayed()
    dash.click("first-page")
    dash.wait(lambda _: rows(dash, "task-row-") == first_page)

    # the filter form: type
    dash.go("/tasks")
    dash.wait(lambda _: dash.el("filter-type").get_attribute("value") == "")
    dash.el("filter-queue").send_keys("bulk")
    dash.el("filter-type").send_keys("async_add")
    dash.click("filter-apply")
    dash.wait(lambda _: len(rows(dash, "task-row-")) == 2)
    assert "type=async_add" in dash.driver.current_url
    Select(dash.el("filter-state")).select_by_value("succeeded")  # submits the form on change
    dash.wait_el("no-tasks")

    # live: a task submitted now appears on the first page and finishes in place
    dash.go("/tasks?queue=default")
    dash.wait_el("no-tasks")
    dash.mark_page()
    task_id = dash.submit_cli("add", {"a": 2, "b": 2})
    row = f"task-row-{task_id}"
    dash.wait(lambda _: dash.el(row).get_attribute("data-state") == "succeeded")
    assert in_row(dash, row, "row-state") == "succeeded"
    dash.assert_same_page()
    dash.go("/tasks?queue=bulk")
    dash.wait(lambda _: len(rows(dash, "task-row-")) == 50)
    dash.shot("task-list")


def test_task_pages_show_results_errors_and_attempts(dash: Dashboard) -> None:
    stack = dash.start()
    stack.scheduler()
    stack.worker()
    ok = dash.submit_cli("add", {"a": 20, "b": 22})
    failed = dash.submit_cli("fail", {"message": "disk full on /data"}, "--retries", "1", "--backoff", "0.1")

    dash.open(f"/tasks/{ok}")
    dash.wait_text("task-state", "succeeded")
    dash.wait_text("task-result", "42")
    assert '"a": 20' in dash.text("task-payload")  # pretty JSON
    assert dash.text("attempt-worker", dash.el("attempt-1")) == "w0"
    assert dash.text("attempt-outcome", dash.el("attempt-1")) == "succeeded"
    assert not dash.els("action-cancel") and not dash.els("action-rerun")  # nothing to do to a success
    dash.shot("task")

    dash.go(f"/tasks/{failed}")
    dash.wait_text("task-id", failed)
    dash.wait_text("task-state", "failed")
    assert "disk full on /data" in dash.text("task-error")
    dash.wait_el("attempt-2")
    for n in (1, 2):
        attempt = dash.el(f"attempt-{n}")
        assert dash.text("attempt-outcome", attempt) == "failed"
        assert dash.text("attempt-worker", attempt) == "w0"
        assert "disk full on /data" in dash.text("attempt-error", attempt)
        assert re.fullmatch(r"[\d.]+ (ms|s)", dash.text("attempt-duration", attempt))
    assert not dash.els("attempt-3")
    assert dash.el("action-rerun").is_displayed()
    assert not dash.els("action-cancel")
    dash.shot("task-failed")

    # the overview lists it among the latest failures, its error shown
    dash.go("/")
    dash.wait_el(f"failure-row-{failed}")
    assert "disk full on /data" in dash.el(f"failure-row-{failed}").text


def test_workers_page_shows_load_and_running_tasks(dash: Dashboard) -> None:
    stack = dash.start()
    stack.scheduler()
    stack.worker(concurrency=3, tags={"zone": "eu"})
    stack.worker(queues=("other",), concurrency=2)
    task = stack.run(stack.client.submit("probe", {"seconds": 60}))

    dash.open("/workers")
    dash.wait_el("worker-row-w0")
    dash.wait_el("worker-row-w1")
    dash.wait(lambda _: task.id in in_row(dash, "worker-row-w0", "worker-tasks"))
    dash.wait(lambda _: in_row(dash, "worker-row-w0", "worker-load").startswith("1/3"))
    assert in_row(dash, "worker-row-w1", "worker-load").startswith("0/2")
    assert in_row(dash, "worker-row-w0", "worker-draining") == "active"
    dash.wait(lambda _: re.fullmatch(r"[\d.]+ (ms|s) ago", in_row(dash, "worker-row-w0", "worker-heartbeat")))
    dash.shot("workers")

    # the task page shows the running attempt on w0
    dash.go(f"/tasks/{task.id}")
    dash.wait_text("task-state", "running")
    assert dash.text("attempt-worker", dash.el("attempt-1")) == "w0"
    assert dash.text("attempt-duration", dash.el("attempt-1")).startswith("running for")
    assert dash.el("action-cancel").is_displayed()


def test_phone_width_layout(dash: Dashboard) -> None:
    stack = dash.start()
    stack.scheduler()
    stack.worker()
    dash.submit_cli("add", {"a": 1, "b": 1})
    failed = dash.submit_cli("fail", {"message": "a long error message " * 8})
    dash.driver.set_window_size(*PHONE)
    dash.open("/")
    dash.wait_el(f"failure-row-{failed}")
    dash.wait_text("state-count-succeeded", "1")
    # the page itself never scrolls sideways; wide tables scroll inside their wrapper
    page = dash.driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];"
    )
    assert page[0] <= page[1], f"the page scrolls sideways at phone width: {page}"
    wrap = dash.el("overview-queues").find_element(By.XPATH, "..")
    widths = dash.driver.execute_script("return [arguments[0].scrollWidth, arguments[0].clientWidth];", wrap)
    assert widths[0] > widths[1], "the queues table should scroll inside its wrapper"
    dash.shot("phone-overview", PHONE)
    dash.go(f"/tasks/{failed}")
    dash.wait_text("task-state", "failed")
    page = dash.driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];"
    )
    assert page[0] <= page[1], f"the task page scrolls sideways at phone width: {page}"
    dash.shot("phone-task", PHONE)


def test_live_updates_resume_after_a_server_restart(dash: Dashboard) -> None:
    stack = dash.start()
    stack.scheduler()
    stack.worker()
    dash.open("/tasks?queue=default")
    dash.wait_text("live", "live")
    dash.mark_page()
    stack.stop_web()
    dash.wait_text("live", "reconnecting")
    # submitted while the server is down: the page learns of it from the catch-up after the restart
    task_id = dash.submit_cli("add", {"a": 3, "b": 4})
    assert stack.run(stack.client.wait(task_id, 30)).state is TaskState.SUCCEEDED
    stack.serve_web()
    dash.wait_text("live", "live")
    dash.wait(lambda _: dash.el(f"task-row-{task_id}").get_attribute("data-state") == "succeeded")
    dash.assert_same_page()
