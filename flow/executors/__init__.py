"""Executors: inline (reference), threads and dask.distributed, one task protocol.

Examples
--------
>>> get_executor("inline").name
'inline'
>>> get_executor("threads", workers=2).workers
2
"""

from __future__ import annotations

from flow.executors.base import ChunkResult, Executor, RunShared, run_chunk
from flow.executors.inline import InlineExecutor
from flow.executors.threads import ThreadExecutor
from schemas.errors import PipelineError

__all__ = ["Executor", "InlineExecutor", "ThreadExecutor", "RunShared", "ChunkResult", "run_chunk",
           "get_executor", "SCHEDULERS"]

SCHEDULERS = ("inline", "threads", "local")


def get_executor(scheduler: str | Executor = "threads", workers: int | None = None) -> Executor:
    """An executor from a ``--scheduler`` value.

    Parameters
    ----------
    scheduler
        ``inline``, ``threads``, ``local`` (a dask LocalCluster), a scheduler
        address (``tcp://host:port``), or an Executor (returned as is).
    workers
        Threads, or local-cluster workers.
    """
    if isinstance(scheduler, Executor):
        return scheduler
    if scheduler == "inline":
        return InlineExecutor()
    if scheduler == "threads":
        return ThreadExecutor(workers)
    from flow.executors.distributed import DistributedExecutor

    if scheduler == "local":
        return DistributedExecutor(n_workers=workers)
    if "://" in scheduler or ":" in scheduler:
        return DistributedExecutor(address=scheduler)
    raise PipelineError("--scheduler", f"unknown scheduler {scheduler!r}",
                        "use inline, threads, local or a scheduler address like tcp://host:8786")
