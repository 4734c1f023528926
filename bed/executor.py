"""Where the loop's independent tasks run: in this process, or on a Dask cluster.

The loop has one code path: it hands a list of independent calls (the simulator at each of a
batch's ``q`` designs, black-box EIG estimates of the GP route) to an executor and gets the
results back **in the order given**. Two executors share that contract:

- :class:`SerialExecutor` (the default): runs the calls here, one after another, retrying a
  call that raises up to ``retries`` more times;
- :class:`DaskExecutor`: wraps a ``dask.distributed.Client``; each call is a future submitted
  with ``retries=retries`` (Dask reruns a task that raised), and a task whose worker died is
  rescheduled on another worker by the scheduler (up to the ``distributed.scheduler.
  allowed-failures`` setting, 3 by default).

A call that still fails raises :class:`TaskError`, which carries the index of the call, so the
loop can name the design. Task functions and their arguments must be picklable (cloudpickle:
lambdas and closures are fine); tensors are best sent on the CPU.

Example:
    >>> ex = as_executor(None)
    >>> ex.map(pow, [(2, 3), (3, 2)])
    [8, 9]
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "DaskExecutor",
    "Executor",
    "SerialExecutor",
    "TaskError",
    "as_executor",
    "local_cluster",
]


class TaskError(RuntimeError):
    """Call ``index`` of a ``map`` failed after ``attempts`` attempts; ``cause`` is its error."""

    def __init__(self, index: int, attempts: int, cause: BaseException) -> None:
        self.index, self.attempts, self.cause = index, attempts, cause
        super().__init__(
            f"task {index} failed after {attempts} attempt(s): {type(cause).__name__}: {cause}"
        )


class Executor:
    """The executor contract: ``map(fn, args_list) -> [fn(*args) for args in args_list]``.

    Args:
        retries: how many more times a call that raised is run before it is reported.
    """

    workers = 1

    def __init__(self, retries: int = 2) -> None:
        if int(retries) < 0:
            raise ValueError(f"retries: expected a non-negative count, got {retries}")
        self.retries = int(retries)

    def map(self, fn: Callable, args_list: Sequence[tuple], name: str = "bed") -> list[Any]:
        """Results of ``fn(*args)`` for each ``args``, in order.

        Raises:
            TaskError: the first call (by index) that failed after ``1 + retries`` attempts.
        """
        raise TypeError(f"{type(self).__name__} does not implement map")

    def close(self) -> None:
        """Release what the executor started (nothing for a borrowed client)."""


class SerialExecutor(Executor):
    """Runs every call in this process, in order (the default executor)."""

    def map(self, fn: Callable, args_list: Sequence[tuple], name: str = "bed") -> list[Any]:
        out = []
        for i, args in enumerate(args_list):
            for attempt in range(self.retries + 1):
                try:
                    out.append(fn(*args))
                    break
                except Exception as exc:
                    if attempt == self.retries:
                        raise TaskError(i, attempt + 1, exc) from exc
        return out

    def __repr__(self) -> str:
        return f"SerialExecutor(retries={self.retries})"


class DaskExecutor(Executor):
    """Submits every call as a future to a ``dask.distributed.Client`` and gathers in order.

    Args:
        client: a connected ``dask.distributed.Client`` (a ``LocalCluster``, or a
            dask-jobqueue cluster such as ``SLURMCluster``; see docs/scaling.md).
        retries: Dask's ``retries`` for each task (reruns after an exception).
        owns_client: close the client (and its cluster) on :meth:`close`.
    """

    def __init__(self, client, retries: int = 2, owns_client: bool = False) -> None:
        super().__init__(retries)
        self.client, self.owns_client = client, owns_client

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def map(self, fn: Callable, args_list: Sequence[tuple], name: str = "bed") -> list[Any]:
        tag = uuid.uuid4().hex[:8]
        futures = [
            self.client.submit(
                fn, *args, retries=self.retries, pure=False, key=f"{name}-{i}-{tag}"
            )
            for i, args in enumerate(args_list)
        ]
        try:
            out = []
            for i, fut in enumerate(futures):
                try:
                    out.append(fut.result())
                except Exception as exc:
                    raise TaskError(i, self.retries + 1, exc) from exc
            return out
        finally:
            for fut in futures:
                fut.release()

    def close(self) -> None:
        if self.owns_client:
            cluster = getattr(self.client, "cluster", None)
            self.client.close()
            if cluster is not None:
                cluster.close()

    def __repr__(self) -> str:
        return f"DaskExecutor({self.client!r}, retries={self.retries})"


def as_executor(executor: Any = None, retries: int = 2) -> Executor:
    """An :class:`Executor` for ``None`` (serial), an ``Executor``, or a Dask ``Client``."""
    if executor is None:
        return SerialExecutor(retries)
    if isinstance(executor, Executor):
        return executor
    if hasattr(executor, "submit") and hasattr(executor, "scheduler_info"):
        return DaskExecutor(executor, retries)
    raise TypeError(
        f"executor: expected None, a bed.executor.Executor or a dask.distributed.Client, got "
        f"{type(executor).__name__}"
    )


def local_cluster(workers: int, retries: int = 2) -> DaskExecutor:
    """A ``LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)`` and its
    client, closed together by :meth:`DaskExecutor.close`."""
    from dask.distributed import Client, LocalCluster

    if int(workers) < 1:
        raise ValueError(f"workers: expected at least 1 worker process, got {workers}")
    cluster = LocalCluster(
        n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    return DaskExecutor(Client(cluster), retries, owns_client=True)
