"""The blocking facade over the async client, for WSGI apps and scripts.

:class:`SyncClient` runs one :class:`tasklease.client.Client` on an event loop
in a background thread and waits for each call: it is a facade, never a second
implementation (every method has the async client's meaning and errors).

May import: client (at construction, since client.py re-exports this class),
submitter, inspector's result types, models, nodes, purge, quotas, stats, store,
workflows (its result types).
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from tasklease.controls import Pause
from tasklease.events import Hook, Hooks
from tasklease.inspector import TaskPage
from tasklease.limits import Limit
from tasklease.models import JSON, Task
from tasklease.nodes import NodeRecord
from tasklease.overview import Overview
from tasklease.purge import PurgeResult
from tasklease.quotas import Quota
from tasklease.schedules import Schedule
from tasklease.sending import SubmitFuture
from tasklease.stats import Stats
from tasklease.store import StoreConfig
from tasklease.submitter import BatchResult, SubmitResult, TaskSpec
from tasklease.workflows import Workflow, WorkflowBuilder, WorkflowStatus

if TYPE_CHECKING:
    from tasklease.client import Client

T = TypeVar("T")


# How long closing waits for the tasks left on the background loop to end once cancelled.
LEFTOVER_TASKS_TIMEOUT_S = 5.0


async def _end_leftover_tasks() -> None:
    """Cancel every other task of the running loop and wait until they have ended."""
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


class SyncClient:
    """A blocking facade over :class:`tasklease.Client` for WSGI apps and scripts.

    It runs the async client on an event loop in a background thread; every
    method has the async client's meaning and errors.

    Args:
        config: Where etcd is.
        namespace: The deployment's namespace.
        hooks: The client's hooks (see :mod:`tasklease.events`); they run on
            the background thread's event loop.
    """

    def __init__(
        self,
        config: StoreConfig | None = None,
        *,
        namespace: str = "tasklease",
        hooks: Hooks | Iterable[Hook] | None = None,
    ) -> None:
        # Imported here: client.py re-exports SyncClient, so it imports this module first.
        from tasklease.client import Client

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self._client: Client = self._run(Client.connect(config, namespace=namespace, hooks=hooks))
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        # As asyncio.run does before it closes its loop: what is left on it (e.g. gRPC's
        # own task that waits for a cancelled stream's status) is cancelled and allowed
        # to end, so that closing the loop never prints "Task was destroyed but it is
        # pending!" on the application's stderr.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_end_leftover_tasks(), self._loop).result(
                LEFTOVER_TASKS_TIMEOUT_S
            )
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        """Close the connection and the background loop."""
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._stop_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, type: str, payload: JSON = None, **options: Any) -> Task:
        """See :meth:`Client.submit`."""
        return self._run(self._client.submit(type, payload, **options))

    def send(self, type: str, payload: JSON = None, **options: Any) -> concurrent.futures.Future[Task]:
        """See :meth:`Client.send`: returns once the submit is on its way.

        The returned future's ``result()`` blocks until the task is durably
        stored (the task) or raises the submit's error; the task's id is
        ``future.task_id``. A bad task raises here, nothing sent.
        """
        return self._future(self._run(self._client.send(type, payload, **options)))

    def send_spec(self, spec: TaskSpec) -> concurrent.futures.Future[Task]:
        """See :meth:`Client.send_spec` (and :meth:`send`)."""
        return self._future(self._run(self._client.send_spec(spec)))

    @staticmethod
    def _future(sent: SubmitFuture) -> concurrent.futures.Future[Task]:
        done: concurrent.futures.Future[Task] = concurrent.futures.Future()
        done.task_id = sent.id  # type: ignore[attr-defined]

        def settle(_: SubmitFuture) -> None:
            exc = sent.exception()
            if exc is None:
                done.set_result(sent.result())
            else:
                done.set_exception(exc)

        sent.add_done_callback(settle)
        return done

    def flush(self) -> builtins.list[str]:
        """See :meth:`Client.flush`: wait for every send so far; the ids of those that failed."""
        return [f.id for f in self._run(self._client.flush())]

    def submit_unique(self, spec: TaskSpec) -> SubmitResult:
        """See :meth:`Client.submit_unique`."""
        return self._run(self._client.submit_unique(spec))

    def submit_many(self, specs: Iterable[TaskSpec]) -> BatchResult:
        """See :meth:`Client.submit_many`."""
        return self._run(self._client.submit_many(builtins.list(specs)))

    def workflow(self, name: str = "", *, workflow_id: str | None = None) -> WorkflowBuilder:
        """See :meth:`Client.workflow`; submit the builder with :meth:`submit_workflow`."""
        return self._client.workflow(name, workflow_id=workflow_id)

    def submit_workflow(self, workflow: WorkflowBuilder | Mapping[str, Any]) -> Workflow:
        """See :meth:`Client.submit_workflow`."""
        return self._run(self._client.submit_workflow(workflow))

    def workflow_status(self, workflow_id: str) -> WorkflowStatus:
        """See :meth:`Client.workflow_status`."""
        return self._run(self._client.workflow_status(workflow_id))

    def cancel_workflow(
        self, workflow_id: str, reason: str = "workflow cancelled by request"
    ) -> builtins.list[Task]:
        """See :meth:`Client.cancel_workflow`."""
        return self._run(self._client.cancel_workflow(workflow_id, reason))

    def get(self, task_id: str) -> Task:
        """See :meth:`Client.get`."""
        return self._run(self._client.get(task_id))

    def list(self, **filters: Any) -> builtins.list[Task]:
        """See :meth:`Client.list`."""
        return self._run(self._client.list(**filters))

    def list_page(self, **filters: Any) -> TaskPage:
        """See :meth:`Client.list_page`."""
        return self._run(self._client.list_page(**filters))

    def stats(self, window_s: float = 60.0) -> Stats:
        """See :meth:`Client.stats`."""
        return self._run(self._client.stats(window_s))

    def nodes(self) -> builtins.list[NodeRecord]:
        """See :meth:`Client.nodes`."""
        return self._run(self._client.nodes())

    def cancel(self, task_id: str) -> Task:
        """See :meth:`Client.cancel`."""
        return self._run(self._client.cancel(task_id))

    def set_priority(self, task_id: str, priority: int) -> Task:
        """See :meth:`Client.set_priority`."""
        return self._run(self._client.set_priority(task_id, priority))

    def run_again(self, task_id: str) -> Task:
        """See :meth:`Client.run_again`."""
        return self._run(self._client.run_again(task_id))

    def overview(self, window_s: float = 60.0) -> Overview:
        """See :meth:`Client.overview`."""
        return self._run(self._client.overview(window_s))

    def pause(self, queue: str, reason: str = "") -> Pause:
        """See :meth:`Client.pause`."""
        return self._run(self._client.pause(queue, reason))

    def resume(self, queue: str) -> bool:
        """See :meth:`Client.resume`."""
        return self._run(self._client.resume(queue))

    def paused(self) -> dict[str, Pause]:
        """See :meth:`Client.paused`."""
        return self._run(self._client.paused())

    def drain(self, worker_id: str) -> None:
        """See :meth:`Client.drain`."""
        self._run(self._client.drain(worker_id))

    def set_limit(
        self,
        kind: str,
        name: str,
        *,
        rate: str | None = None,
        burst: int | None = None,
        concurrency: int | None = None,
    ) -> Limit:
        """See :meth:`Client.set_limit`."""
        return self._run(self._client.set_limit(kind, name, rate=rate, burst=burst, concurrency=concurrency))

    def limits(self) -> builtins.list[Limit]:
        """See :meth:`Client.limits`."""
        return self._run(self._client.limits())

    def remove_limit(self, kind: str, name: str) -> bool:
        """See :meth:`Client.remove_limit`."""
        return self._run(self._client.remove_limit(kind, name))

    def wait(self, task_id: str, timeout_s: float | None = None) -> Task:
        """See :meth:`Client.wait`."""
        return self._run(self._client.wait(task_id, timeout_s))

    def result(self, task_id: str, timeout_s: float | None = None) -> JSON:
        """See :meth:`Client.result`."""
        return self._run(self._client.result(task_id, timeout_s))

    def quota(self) -> Quota | None:
        """See :meth:`Client.quota`."""
        return self._run(self._client.quota())

    def set_quota(self, quota: Quota | None) -> int:
        """See :meth:`Client.set_quota`."""
        return self._run(self._client.set_quota(quota))

    def purge(self, older_than_s: float, **options: Any) -> PurgeResult:
        """See :meth:`Client.purge`."""
        return self._run(self._client.purge(older_than_s, **options))

    def add_schedule(self, name: str, cron: str, task: TaskSpec, **options: Any) -> Schedule:
        """See :meth:`Client.add_schedule`."""
        return self._run(self._client.add_schedule(name, cron, task, **options))

    def get_schedule(self, name: str) -> Schedule:
        """See :meth:`Client.get_schedule`."""
        return self._run(self._client.get_schedule(name))

    def list_schedules(self) -> builtins.list[Schedule]:
        """See :meth:`Client.list_schedules`."""
        return self._run(self._client.list_schedules())

    def pause_schedule(self, name: str) -> Schedule:
        """See :meth:`Client.pause_schedule`."""
        return self._run(self._client.pause_schedule(name))

    def resume_schedule(self, name: str) -> Schedule:
        """See :meth:`Client.resume_schedule`."""
        return self._run(self._client.resume_schedule(name))

    def remove_schedule(self, name: str) -> bool:
        """See :meth:`Client.remove_schedule`."""
        return self._run(self._client.remove_schedule(name))

    def next_fire_times(self, name: str, count: int = 5) -> builtins.list[float]:
        """See :meth:`Client.next_fire_times`."""
        return self._run(self._client.next_fire_times(name, count))
