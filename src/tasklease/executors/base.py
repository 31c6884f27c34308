"""The executor protocol, the task context, and the registry of task types.

An executor runs one attempt of one task. The contract:

- ``run`` is a coroutine; it must not block the event loop (blocking work goes
  to a child process or a thread).
- Cancellation (``asyncio.CancelledError``, raised on timeout, on ``cancel``,
  on reassignment and on shutdown) must stop the work before ``run`` returns:
  kill the child process, cancel the coroutine, close the connection. It is
  re-raised, never swallowed. A ``CancelledError`` that the worker did not
  cause (task code that raises it itself, e.g. by awaiting something that
  was cancelled) is a failed attempt, retried per the task's policy.
- A failure is an exception: :class:`PermanentError` (or a subclass) means
  retrying cannot help; any other ``Exception`` is retried per the task's policy.
- The return value is the task's result and must be JSON-serialisable.
- Executors keep no state between attempts that the worker relies on; the same
  attempt may run again on another worker (at-least-once execution).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload, runtime_checkable

from tasklease.errors import InvalidOption
from tasklease.errors import PermanentError as PermanentError  # noqa: PLC0414 (moved to errors.py; re-exported here)
from tasklease.errors import TaskError as TaskError  # noqa: PLC0414 (moved to errors.py; re-exported here)
from tasklease.executors.netpolicy import NetworkPolicy
from tasklease.models import DEFAULT_PRIORITY, DEFAULT_QUEUE, DEFAULT_TIMEOUT_S, JSON, check_type
from tasklease.retry import RetryPolicy
from tasklease.spec import TaskSpec

P = ParamSpec("P")
R = TypeVar("R")


class UnknownTaskType(PermanentError):
    """No executor on this worker runs this task type."""


# What a process started for a task (a shell command, a sync task's child) gets of the
# worker's environment, beside the names the worker is told to pass (``--pass-env``).
# Never the rest: the worker's environment holds its etcd credentials
# (TASKLEASE_ETCD_PASSWORD) and whatever else its deployer put there (cloud keys).
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "HOME", "TZ", "TMPDIR", "USER", "LOGNAME")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_tasklease_variable(name: str) -> bool:
    """``TASKLEASE_*`` (any case): tasklease's own settings and credentials, never passed to tasks."""
    return name.upper().startswith("TASKLEASE_")


def check_pass_env(names: Iterable[str]) -> tuple[str, ...]:
    """Validate the names of ``--pass-env``.

    Raises:
        InvalidOption: A name that is not a variable name, or a ``TASKLEASE_*`` one.
    """
    checked = []
    for name in names:
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise InvalidOption(f"--pass-env {name!r}: not an environment variable name")
        if is_tasklease_variable(name):
            raise InvalidOption(
                f"--pass-env {name}: TASKLEASE_* variables (etcd credentials and settings) "
                "are never passed to tasks"
            )
        checked.append(name)
    return tuple(checked)


def child_environment(
    pass_env: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a process started for a task: :data:`ENV_ALLOWLIST` and ``pass_env``.

    Taken from ``environ`` (default ``os.environ``); names it does not hold are
    left out; ``TASKLEASE_*`` never gets in.
    """
    source = os.environ if environ is None else environ
    names = dict.fromkeys((*ENV_ALLOWLIST, *pass_env))
    return {n: source[n] for n in names if n in source and not is_tasklease_variable(n)}


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What an executor gets for one attempt.

    Attributes:
        task_id: The task.
        attempt: The attempt number (1 for the first).
        type: The task type.
        payload: The JSON payload.
        timeout_s: The attempt's time limit (the worker enforces it by cancelling).
        worker: The worker id.
        env: The environment for processes the attempt starts (the worker's
            minimal one: :func:`child_environment`).
        network: Which addresses the attempt may connect to (``http``).
        parents: The results of the task's parents (``depends_on``), by parent
            id in its order (``None`` for a parent that did not succeed, or
            whose record is gone); read by the worker only for a task with
            parents whose executor has ``wants_parents`` (a task function
            with a ``parents`` parameter), else ``None``.
    """

    task_id: str
    attempt: int
    type: str
    payload: JSON
    timeout_s: float
    worker: str
    env: Mapping[str, str] = field(default_factory=child_environment)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    parents: Mapping[str, JSON] | None = None


@runtime_checkable
class Executor(Protocol):
    """Runs attempts of one task type (see the module docstring for the contract).

    An executor that sets ``wants_parents = True`` (an attribute) receives the
    results of a task's parents in :attr:`TaskContext.parents`; the worker
    reads them only then (docs/workflows.md).
    """

    async def run(self, ctx: TaskContext) -> JSON:
        """Run one attempt and return its JSON result."""
        ...


def call_args(payload: JSON) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Map a payload to call arguments.

    An object becomes keyword arguments, an array positional arguments,
    ``null`` no arguments, and any other value the single argument.
    """
    if payload is None:
        return (), {}
    if isinstance(payload, dict):
        return (), payload
    if isinstance(payload, list):
        return tuple(payload), {}
    return (payload,), {}


PARENTS_PARAMETER = "parents"
"""A task function with a parameter of this name receives its parents' results (docs/workflows.md)."""


def wants_parents(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes a ``parents`` argument by keyword: it then gets its parents' results."""
    try:
        parameter = inspect.signature(fn).parameters.get(PARENTS_PARAMETER)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


class TaskFunction(Generic[P, R]):
    """A Python function registered as a task type.

    Calling it calls the function directly; :meth:`spec` builds a submit
    request whose arguments are type-checked against the function's signature.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        name: str,
        *,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.is_async = inspect.iscoroutinefunction(fn)
        self.wants_parents = wants_parents(fn)
        self.module = fn.__module__
        self.qualname = fn.__qualname__
        if "<locals>" in self.qualname and not self.is_async:
            raise InvalidOption(
                f"task {name}: a sync task must be a module-level function "
                "(it runs in a child process that imports it by name)"
            )
        # Validate the defaults now, when the task is declared, not when it runs.
        self.defaults = TaskSpec(name, None, queue, priority, timeout_s, retry or RetryPolicy())

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function directly (not as a task)."""
        return self.fn(*args, **kwargs)

    def spec(self, *args: P.args, **kwargs: P.kwargs) -> TaskSpec:
        """A :class:`~tasklease.spec.TaskSpec` running this function with these arguments.

        Give either positional or keyword arguments, not both.
        """
        from dataclasses import replace

        if args and kwargs:
            raise InvalidOption(f"task {self.name}: give positional or keyword arguments, not both")
        payload: JSON = list(args) if args else (dict(kwargs) if kwargs else None)
        return replace(self.defaults, payload=payload)


class Registry:
    """Task types and the executors that run them.

    Declare tasks on a registry in an importable module, then start workers
    with ``--import that.module``::

        registry = Registry()

        @registry.task
        def resize(path: str, width: int) -> dict: ...

        @registry.task(name="fetch", timeout_s=30, retry=RetryPolicy(max_retries=3))
        async def fetch(url: str) -> str: ...
    """

    def __init__(self) -> None:
        # Written while modules are imported (before the worker starts), read after.
        self._executors: dict[str, Executor] = {}
        self._functions: dict[str, TaskFunction[Any, Any]] = {}

    @overload
    def task(self, fn: Callable[P, R], /) -> TaskFunction[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...

    def task(
        self, fn: Callable[..., Any] | None = None, *, name: str | None = None, **options: Any
    ) -> TaskFunction[Any, Any] | Callable[[Callable[..., Any]], TaskFunction[Any, Any]]:
        """Register a function as a task type (usable bare or with options).

        The result keeps the function's signature (``ParamSpec``): calling it
        and its :meth:`TaskFunction.spec` are type-checked against it.

        Args:
            fn: The function (sync or async).
            name: The task type; defaults to the function's name.
            **options: Defaults for submits: queue, priority, timeout_s, retry.

        Returns:
            The :class:`TaskFunction` (bare use), or the decorator that makes it.
        """

        def register(f: Callable[..., Any]) -> TaskFunction[Any, Any]:
            tf: TaskFunction[Any, Any] = TaskFunction(f, check_type(name or f.__name__), **options)
            if tf.name in self._executors:
                raise InvalidOption(f"task type {tf.name!r} is registered twice")
            if tf.name in self._functions:
                raise InvalidOption(f"task type {tf.name!r} is registered twice")
            self._functions[tf.name] = tf
            return tf

        return register(fn) if fn is not None else register

    def register(self, name: str, executor: Executor) -> None:
        """Register an executor object under a task type (``[A-Za-z0-9_.:-]{1,128}``)."""
        check_type(name)
        if name in self._executors or name in self._functions:
            raise InvalidOption(f"task type {name!r} is registered twice")
        self._executors[name] = executor

    def get(self, name: str) -> Executor | None:
        """The executor object registered for a task type, if any (not functions)."""
        return self._executors.get(name)

    def function(self, name: str) -> TaskFunction[Any, Any] | None:
        """The registered Python function of a task type, if it is one."""
        return self._functions.get(name)

    @property
    def names(self) -> list[str]:
        """Registered task types, sorted."""
        return sorted({*self._executors, *self._functions})

    def update(self, others: Iterable[Registry]) -> None:
        """Add the task types of other registries."""
        for other in others:
            for name, executor in other._executors.items():
                if self._executors.get(name, executor) is not executor or name in self._functions:
                    raise InvalidOption(f"task type {name!r} is registered twice")
                self._executors[name] = executor
            for name, tf in other._functions.items():
                if self._functions.get(name, tf) is not tf or name in self._executors:
                    raise InvalidOption(f"task type {name!r} is registered twice")
                self._functions[name] = tf
