"""The dashboard's actions, each clicked in a real browser and checked in etcd through the client.

Cancel, change priority, run again (task page), pause and resume (queue page),
drain (workers page); and an API error shows in the message area.
"""

from __future__ import annotations

import pytest
from selenium.webdriver.support.ui import Select

from browser.harness import Dashboard
from tasklease.models import TaskState

pytestmark = pytest.mark.browser


def test_cancel_priority_and_run_again(dash: Dashboard) -> None:
    stack = dash.start()
    stack.scheduler()
    stack.worker()  # serves "default" only: tasks in "held" stay queued
    first = dash.submit_cli("add", {"a": 1, "b": 1}, "--queue", "held")
    second = dash.submit_cli("add", {"a": 2, "b": 2}, "--queue", "held")
    client = stack.client

    # priority
    dash.open(f"/tasks/{second}")
    dash.wait_text("task-state", "queued")
    assert dash.text("task-priority") == "1"
    Select(dash.el("priority-select")).select_by_value("3")
    dash.click("action-priority")
    dash.wait_text("task-priority", "3")
    assert stack.run(client.get(second)).priority == 3
    dash.wait(lambda _: "priority set to 3" in dash.flashes())

    # cancel
    dash.go(f"/tasks/{first}")
    dash.wait_text("task-id", first)
    dash.wait_text("task-state", "queued")
    dash.click("action-cancel")
    dash.wait_text("task-state", "cancelled")
    assert stack.run(client.get(first)).state is TaskState.CANCELLED
    assert not dash.els("action-cancel")

    # run again: the page moves to the new task, linked both ways
    dash.click("action-rerun")
    new_id = dash.wait(lambda _: (shown := dash.text("task-id")) != first and shown)
    dash.wait_text("rerun-of-link", first)
    dash.wait_text("task-state", "queued")
    new = stack.run(client.get(new_id))
    assert new.rerun_of == first and new.state is TaskState.QUEUED and new.payload == {"a": 1, "b": 1}
    assert new_id in stack.run(client.get(first)).reruns
    dash.click("rerun-of-link")
    dash.wait_text("task-id", first)
    dash.wait_el(f"rerun-link-{new_id}")


def test_pause_and_resume_a_queue(dash: Dashboard) -> None:
    stack = dash.start()
    stack.scheduler()
    stack.worker()
    client = stack.client
    dash.open("/queues/default")
    dash.wait_el("queue-active")
    dash.el("pause-reason").send_keys("deploy in progress")
    dash.click("action-pause")
    dash.wait_el("queue-paused")
    assert dash.text("queue-paused-reason") == "deploy in progress"
    paused = stack.run(client.paused())
    assert "default" in paused and paused["default"].reason == "deploy in progress"

    # submits still work; nothing is assigned from the paused queue
    task_id = dash.submit_cli("add", {"a": 1, "b": 2}, "--priority", "2")
    dash.wait_el(f"queued-row-{task_id}")
    dash.wait_text("queue-count-queued", "1")
    dash.wait_text("queue-depth-2", "1")
    dash.shot("queue")

    dash.click("action-resume")
    dash.wait_el("queue-active")
    assert "default" not in stack.run(client.paused())
    dash.wait_el("no-queued")  # assigned and run
    dash.wait_text("queue-count-succeeded", "1")
    assert stack.run(client.wait(task_id, 30)).state is TaskState.SUCCEEDED

    # the overview shows a pause too
    stack.run(client.pause("default", "maintenance"))
    dash.go("/")
    dash.wait(lambda _: dash.text("queue-paused", dash.el("queue-row-default")) == "paused")


def test_drain_a_worker(dash: Dashboard) -> None:
    stack = dash.start()
    stack.scheduler()
    w0 = stack.worker(grace_s=120)  # w0: its drain waits for the running task
    stack.worker(queues=("other",))  # w1
    task = stack.run(stack.client.submit("probe", {"seconds": 120}))
    dash.open("/workers")
    dash.wait(lambda _: task.id in dash.text("worker-tasks", dash.el("worker-row-w0")))
    # assigned is not yet executing (the worker reads the record first): a drain before
    # that hands the task back and the worker stops at once
    dash.wait(lambda _: w0.running >= 1, message="w0 to execute the task")
    dash.click("action-drain", within="worker-row-w0")
    dash.wait(lambda _: dash.text("worker-draining", dash.el("worker-row-w0")) == "draining")
    assert not dash.els("action-drain", within=dash.el("worker-row-w0"))
    nodes = {n.id: n for n in stack.run(stack.client.nodes())}
    assert nodes["w0"].draining is True
    assert nodes["w1"].draining is False
    assert dash.text("worker-draining", dash.el("worker-row-w1")) == "active"
    dash.wait_text("workers-summary", lambda t: "1 draining" in t)
    dash.shot("workers-draining")


def test_api_errors_show_in_the_message_area(dash: Dashboard) -> None:
    dash.start()
    dash.open("/tasks?state=bogus")
    flash = dash.wait_el("flash-error")
    assert "bogus" in flash.text
    dash.open("/tasks/not-a-task-id")
    dash.wait_el("task-missing")
    dash.wait(lambda _: "malformed task id 'not-a-task-id'" in dash.text("flash-error"))
    # a message can be dismissed
    for button in dash.driver.find_elements("css selector", "#flash .flash-close"):
        button.click()
    dash.wait(lambda _: not dash.els("flash-error"))
