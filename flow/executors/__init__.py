"""Executors: inline (reference), threads and dask.distributed, one task protocol.

Examples
--------
>>> get_executor("inline").name
'inline'
>>> get_executor("threads", workers=2).workers
2
"""

from __future__ import annotations

from diffraflow.flow.executors.base import ChunkResult, Executor, RunShared, run_chunk
from diffraflow.flow.executors.inline import InlineExecutor
from diffraflow.flow.executors.threads import ThreadExecutor
from diffraflow.schemas.errors import PipelineError

__all__ = ["Executor", "InlineExecutor", "ThreadExecutor", "RunShared", "ChunkResult", "run_chunk",
           "get_executor", "SCHEDULERS"]

SCHEDULERS = ("inline", "threads", "local")


#: Seconds to wait for a scheduler address to answer before a one-line error.
DEFAULT_CONNECT_TIMEOUT = 10.0


def get_executor(scheduler: str | Executor = "threads", workers: int | None = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Executor:
    """An executor from a ``--scheduler`` value.

    Parameters
    ----------
    scheduler
        ``inline``, ``threads``, ``local`` (a dask LocalCluster), a scheduler
        address (``tcp://host:port``), or an Executor (returned as is).
    workers
        Threads, or local-cluster workers (a positive number).
    connect_timeout
        Seconds a scheduler address has to answer.

    Examples
    --------
    >>> get_executor("threads", workers=0)
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: --workers: must be a positive number of workers, got 0 (fix: pass --workers 1 or more, or leave it out for the default)
    """
    if isinstance(scheduler, Executor):
        return scheduler
    if workers is not None and (isinstance(workers, bool) or int(workers) != workers or workers < 1):
        raise PipelineError("--workers", f"must be a positive number of workers, got {workers}",
                            "pass --workers 1 or more, or leave it out for the default")
    if scheduler == "inline":
        return InlineExecutor()
    if scheduler == "threads":
        return ThreadExecutor(workers)
    from diffraflow.flow.executors.distributed import DistributedExecutor

    if scheduler == "local":
        return DistributedExecutor(n_workers=workers)
    if "://" in scheduler or ":" in scheduler:
        return DistributedExecutor(address=scheduler, connect_timeout=connect_timeout)
    raise PipelineError("--scheduler", f"unknown scheduler {scheduler!r}",
                        "use inline, threads, local or a scheduler address like tcp://host:8786")
