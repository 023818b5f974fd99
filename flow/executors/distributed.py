"""The dask.distributed executor: a LocalCluster, any scheduler, or dask-cuda.

* ``DistributedExecutor()`` starts a ``LocalCluster`` (processes, one thread
  each) bound to 127.0.0.1 with a dashboard on a free local port;
* ``DistributedExecutor("tcp://host:8786")`` connects to a running scheduler;
* when a step needs a GPU backend and no address is given, a dask-cuda
  ``LocalCUDACluster`` is started (imported lazily) with a ``GPU`` resource
  per worker, and GPU tasks ask for ``resources={"GPU": 1}``.

Tasks go through ``client.submit``; :meth:`DistributedExecutor.next_done`
waits on them a few seconds at a time and, between waits, checks that the
cluster still has workers: tasks of a cluster whose every worker died would
otherwise wait for ever, so after ``lost_workers_timeout`` seconds without a
worker the run stops with one line (:class:`~diffraflow.schemas.errors.WorkersLostError`).
The engine keeps a bounded window of tasks in flight. The run's shared data (plan,
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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from diffraflow.flow.executors.base import Executor
from diffraflow.schemas.errors import (
    BackendUnavailableError,
    SchedulerUnreachableError,
    WorkersLostError,
)

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed import Client, Future

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
        :class:`~diffraflow.schemas.errors.SchedulerUnreachableError`.
    lost_workers_timeout
        Seconds a cluster may have no worker at all before the run stops.
    """

    #: Seconds between health checks of the cluster while waiting for tasks.
    poll_seconds = 2.0

    name = "distributed"

    def __init__(self, address: str | None = None, n_workers: int | None = None, threads_per_worker: int = 1,
                 client: Client | None = None, processes: bool = True, connect_timeout: float = 10.0,
                 lost_workers_timeout: float = 30.0) -> None:
        self.address = address
        self.connect_timeout = float(connect_timeout)
        self.lost_workers_timeout = float(lost_workers_timeout)
        self._no_workers_since: float | None = None
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.processes = processes
        self._client = client
        self._own_client = client is None
        self._cluster: Any = None  # LocalCluster or dask_cuda's LocalCUDACluster
        self._futures: dict[Key, tuple[Any, Future[Any]]] = {}  # future key -> (task key, future)
        self._gpu_resources = False

    @property
    def client(self) -> Client:
        if self._client is None:
            self.start()
        assert self._client is not None  # start() connects or raises
        return self._client

    @property
    def workers(self) -> int:
        info = self.client.scheduler_info(n_workers=-1) if _accepts_n_workers() else self.client.scheduler_info()
        return max(1, sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values()))

    def start(self, gpu: bool = False) -> None:
        if self._client is not None:
            self._gpu_resources = self._gpu_resources or (gpu and self._has_gpu_resource())
            return
        from distributed import Client

        if self.address:
            self._client = _connect(self.address, self.connect_timeout)
            self._gpu_resources = gpu and self._has_gpu_resource()
            if gpu and not self._gpu_resources:
                # Without the resource a GPU task would land on any worker, GPU or not, silently.
                raise BackendUnavailableError(f"--scheduler {self.address}", "a step runs on a GPU but no worker "
                                              "of this scheduler offers a GPU resource",
                                              f"start GPU workers with 'dask cuda worker {self.address} "
                                              "--resources GPU=1', or use --scheduler local")
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
        info = self.client.scheduler_info()
        return any("GPU" in (w.get("resources") or {}) for w in info.get("workers", {}).values())

    def share(self, value: Any) -> Any:
        # One copy per worker instead of one per task; kept on the host too, because a worker that
        # dies takes its copy with it and the scheduler then cancels every task that needs it.
        return _Shared(value, self.client.scatter(value, broadcast=True, hash=False))

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any, gpu: bool = False) -> None:
        resources = {"GPU": 1} if gpu and self._gpu_resources else None
        args = tuple(self._refresh(a) if isinstance(a, _Shared) else a for a in args)
        future = self.client.submit(fn, *args, pure=False, resources=resources)
        self._futures[future.key] = (key, future)

    def _refresh(self, shared: _Shared) -> Any:
        if shared.future.status in ("cancelled", "lost", "error"):
            shared.future = self.client.scatter(shared.value, broadcast=True, hash=False)
        return shared.future

    def _wait_one(self, timeout: float | None) -> Future[Any] | None:
        from distributed import wait

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = self.poll_seconds if deadline is None else max(0.0, min(self.poll_seconds,
                                                                           deadline - time.monotonic()))
            futures = [f for _, f in self._futures.values()]
            try:
                done, _ = wait(futures, timeout=step, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            except Exception:  # wait() raises for cancelled futures: those are finished too, badly
                done = {f for f in futures if f.status in ("cancelled", "lost", "error")}
            if done:
                first: Future[Any] = next(iter(done))
                return first
            self._check_cluster()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def next_done(self, timeout: float | None = None) -> tuple[Any, bool, Any] | None:
        if not self._futures:
            return None
        future = self._wait_one(timeout)
        if future is None:
            return None
        key, _ = self._futures.pop(future.key)
        try:
            if future.status == "finished":
                return key, True, future.result()
            exc = future.exception() if future.status == "error" else None
            if exc is None or type(exc).__name__ in ("KilledWorker", "CancelledError", "FutureCancelledError"):
                self._await_workers()
                exc = RuntimeError(f"task {future.status}: {type(exc).__name__ if exc else 'no result'} "
                                   "(its worker died or the connection to it dropped)")
            return key, False, exc
        finally:
            future.release()  # the result now lives in the driver only

    def _await_workers(self) -> None:
        """Block until the cluster has a worker again, or raise WorkersLostError after the grace period."""
        while True:
            self._check_cluster()
            if self._no_workers_since is None:
                return
            time.sleep(min(self.poll_seconds, 0.5))

    def _check_cluster(self, grace: bool = True) -> None:
        """Raise one clear error when the cluster can no longer run anything (no workers, no scheduler).

        With ``grace``, a cluster without workers gets ``lost_workers_timeout``
        seconds for new ones to join (a nanny restarting one, an autoscaler).
        """
        where = f"--scheduler {self.address or 'local'}"
        if self._client is None or self._client.status in ("closed", "closing"):
            raise SchedulerUnreachableError(where, "lost the connection to the scheduler",
                                            "restart the scheduler and re-run the same command to resume")
        try:
            workers = self._client.scheduler_info().get("workers", {})
        except Exception as exc:  # the scheduler itself is gone
            raise SchedulerUnreachableError(where, f"lost the connection to the scheduler ({type(exc).__name__})",
                                            "restart the scheduler and re-run the same command to resume") from None
        if workers:
            self._no_workers_since = None
            return
        now = time.monotonic()
        if self._no_workers_since is None:
            self._no_workers_since = now
        if grace and now - self._no_workers_since < self.lost_workers_timeout:
            return
        fix = ("look at the workers' logs (memory limit?), start workers, then re-run the same command to resume"
               if self._cluster is None else
               "lower --workers or the chunk size (memory?), then re-run the same command to resume")
        raise WorkersLostError(where, f"every dask worker died; none came back within "
                               f"{self.lost_workers_timeout:g} s", fix)

    def close(self) -> None:
        for_cancel = [f for _, f in self._futures.values()]
        self._futures.clear()
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


class _Shared:
    """A round's shared data: the host value and its scattered future (re-scattered if lost)."""

    def __init__(self, value: Any, future: Any) -> None:
        self.value = value
        self.future = future


def _connect(address: str, timeout: float) -> Client:
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


def _cuda_cluster(n_workers: int | None) -> Any:
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise BackendUnavailableError("scheduler", "a GPU step needs dask-cuda, which is not installed",
                                      "pip install 'diffraflow[gpu]', or use --scheduler threads") from None
    kwargs: dict[str, Any] = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", "resources": {"GPU": 1}}
    if n_workers:
        kwargs["n_workers"] = n_workers
    return LocalCUDACluster(**kwargs)
