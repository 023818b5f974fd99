"""The dask.distributed executor: a LocalCluster, any scheduler, or dask-cuda.

* ``DistributedExecutor()`` starts a ``LocalCluster`` (processes, one thread
  each) bound to 127.0.0.1 with a dashboard on a free local port;
* ``DistributedExecutor("tcp://host:8786")`` connects to a running scheduler;
* when a step needs a GPU backend and no address is given, a dask-cuda
  ``LocalCUDACluster`` is started (imported lazily) with a ``GPU`` resource
  per worker, and GPU tasks ask for ``resources={"GPU": 1}``.

Tasks go through ``client.submit`` and :class:`distributed.as_completed`; the
engine keeps a bounded window of them in flight. The run's shared data (plan,
source, states) is scattered once per round to every worker. Tasks whose
worker dies are rescheduled by the scheduler (``allowed-failures``) and, if
they still fail, retried by the engine.

Examples
--------
>>> # with DistributedExecutor(n_workers=2) as ex:
>>> #     ex.start(); print(ex.dashboard_link)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flow.executors.base import Executor
from schemas.errors import BackendUnavailableError, SchedulerUnreachableError, WorkersLostError

if TYPE_CHECKING:
    from distributed import as_completed

__all__ = ["DistributedExecutor"]


class DistributedExecutor(Executor):
    """Run tasks on a dask.distributed cluster.

    Parameters
    ----------
    address
        Scheduler address (``tcp://...``); ``None`` starts a local cluster.
    n_workers
        Workers of a local cluster (default: CPU count, or GPU count with dask-cuda).
    threads_per_worker
        Threads per local worker.
    client
        An existing ``distributed.Client`` to use (not closed by :meth:`close`).
    connect_timeout
        Seconds a scheduler address has to answer before a one-line
        :class:`~schemas.errors.SchedulerUnreachableError`.
    """

    name = "distributed"

    def __init__(self, address: str | None = None, n_workers: int | None = None, threads_per_worker: int = 1,
                 client: Any = None, processes: bool = True, connect_timeout: float = 10.0) -> None:
        self.address = address
        self.connect_timeout = float(connect_timeout)
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.processes = processes
        self._client = client
        self._own_client = client is None
        self._cluster: Any = None  # LocalCluster or dask_cuda's LocalCUDACluster
        self._ac: as_completed | None = None
        self._futures: dict[Any, Any] = {}
        self._gpu_resources = False

    @property
    def client(self):
        if self._client is None:
            self.start()
        return self._client

    @property
    def workers(self) -> int:
        info = self.client.scheduler_info(n_workers=-1) if _accepts_n_workers() else self.client.scheduler_info()
        return max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))

    def start(self, gpu: bool = False) -> None:
        if self._client is not None:
            self._gpu_resources = self._gpu_resources or (gpu and self._has_gpu_resource())
            return
        from distributed import Client

        if self.address:
            self._client = _connect(self.address, self.connect_timeout)
            self._gpu_resources = gpu and self._has_gpu_resource()
        elif gpu:
            self._cluster = _cuda_cluster(self.n_workers)
            self._client = Client(self._cluster)
            self._gpu_resources = True
        else:
            from distributed import LocalCluster

            self._cluster = LocalCluster(
                n_workers=self.n_workers or os.cpu_count() or 1, threads_per_worker=self.threads_per_worker,
                processes=self.processes, host="127.0.0.1", dashboard_address="127.0.0.1:0",
            )
            self._client = Client(self._cluster)
        self.dashboard_link = getattr(self._client, "dashboard_link", None)

    def _has_gpu_resource(self) -> bool:
        info = self._client.scheduler_info()
        return any("GPU" in (w.get("resources") or {}) for w in info.get("workers", {}).values())

    def share(self, value: Any) -> Any:
        # One copy per worker instead of one per task.
        return self.client.scatter(value, broadcast=True, hash=False)

    def submit(self, key: Any, fn: Callable, *args: Any, gpu: bool = False) -> None:
        from distributed import as_completed

        resources = {"GPU": 1} if gpu and self._gpu_resources else None
        future = self.client.submit(fn, *args, pure=False, resources=resources)
        self._futures[future.key] = key
        if self._ac is None:
            self._ac = as_completed([future])
        else:
            self._ac.add(future)

    def next_done(self) -> tuple[Any, bool, Any]:
        assert self._ac is not None
        future = next(self._ac)
        key = self._futures.pop(future.key)
        try:
            if future.status == "finished":
                return key, True, future.result()
            exc = future.exception() if future.status == "error" else None
            if exc is None or type(exc).__name__ in ("KilledWorker", "CancelledError", "FutureCancelledError"):
                self._check_cluster()
                exc = RuntimeError(f"task {future.status}: {type(exc).__name__ if exc else 'no result'} "
                                   "(its worker died or the connection to it dropped)")
            return key, False, exc
        finally:
            future.release()  # the result now lives in the driver only

    def _check_cluster(self) -> None:
        """Raise one clear error when the cluster can no longer run anything (no workers, no scheduler)."""
        where = f"--scheduler {self.address or 'local'}"
        try:
            info = self._client.scheduler_info()
        except Exception as exc:  # the scheduler itself is gone
            raise SchedulerUnreachableError(where, f"lost the connection to the scheduler ({type(exc).__name__})",
                                            "restart the scheduler and re-run the same command to resume") from None
        if not info.get("workers") and self._cluster is None:
            raise WorkersLostError(where, "every dask worker died; the scheduler has none left",
                                   "look at the workers' logs (memory limit?), start workers, then re-run the same "
                                   "command to resume")
        if self._cluster is not None and not info.get("workers"):
            raise WorkersLostError(where, "every worker of the local cluster died",
                                   "lower --workers or the chunk size (memory?), then re-run the same command to "
                                   "resume")

    def close(self) -> None:
        for_cancel = list(self._futures)
        self._futures.clear()
        self._ac = None
        if self._client is not None and for_cancel:
            try:
                self._client.cancel(for_cancel)
            except Exception:
                pass
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _connect(address: str, timeout: float):
    """A Client for ``address`` within ``timeout`` seconds, or a one-line SchedulerUnreachableError."""
    import logging
    import socket
    from urllib.parse import urlsplit

    from distributed import Client

    where = f"--scheduler {address}"
    url = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = url.hostname, url.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise SchedulerUnreachableError(where, "not a scheduler address", "write it as tcp://HOST:PORT, "
                                        "e.g. tcp://127.0.0.1:8786") from None
    try:
        socket.getaddrinfo(host, port)
    except OSError as exc:
        raise SchedulerUnreachableError(where, f"unknown host {host!r} ({exc.strerror or exc})",
                                        "check the host name of the scheduler") from None
    # distributed logs every failed attempt at length; the one line below says it all.
    quiet = [logging.getLogger(n) for n in ("distributed.comm", "distributed.client", "distributed.core")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.CRITICAL)
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise SchedulerUnreachableError(where, f"no scheduler answered within {timeout:g} s "
                                        f"({type(exc).__name__})", "start one there ('dask scheduler'), check the "
                                        "address and port, raise --connect-timeout, or use --scheduler local") from None
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)


def _accepts_n_workers() -> bool:
    import inspect

    from distributed import Client

    return "n_workers" in inspect.signature(Client.scheduler_info).parameters


def _cuda_cluster(n_workers: int | None):
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise BackendUnavailableError("scheduler", "a GPU step needs dask-cuda, which is not installed",
                                      "pip install 'diffraflow[gpu]', or use --scheduler threads") from None
    kwargs: dict[str, Any] = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", "resources": {"GPU": 1}}
    if n_workers:
        kwargs["n_workers"] = n_workers
    return LocalCUDACluster(**kwargs)
