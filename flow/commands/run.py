"""``diffraflow run PIPELINE --input IN.zarr --output OUT.zarr``: run a pipeline, resumably.

The pipeline file is read and checked (operators, parameters, schema) and the
whole pipeline resolved against the input's metadata before any frame is
read. Re-running the same command on the same output resumes it, skipping
finished chunks.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from diffraflow.flow.cli import non_negative_int, positive_float, positive_int
from diffraflow.flow.executors import DEFAULT_CONNECT_TIMEOUT

if TYPE_CHECKING:
    import argparse

    from diffraflow.flow.cli import Subparsers
    from diffraflow.flow.executors import Executor
    from diffraflow.flow.pipeline import ResolvedPipeline
    from diffraflow.flow.results import ResultSink


def register(subparsers: Subparsers) -> None:
    """Add the ``run`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser(
        "run", help="run a pipeline file on a scan cube into a result store (resumable)",
        description="Run a pipeline on a scan cube. Re-running the same command resumes an interrupted run.")
    parser.add_argument("pipeline", help="pipeline file (YAML); see 'diffraflow schema pipeline'")
    parser.add_argument("--input", "-i", required=True, help="input scan cube (.zarr)")
    parser.add_argument("--output", "-o", required=True, help="result store to write (.zarr)")
    parser.add_argument("--scheduler", default="threads",
                        help="inline, threads (default), local (a dask LocalCluster) or a scheduler address "
                             "tcp://host:port")
    parser.add_argument("--workers", type=positive_int, default=None, help="threads, or local-cluster workers")
    parser.add_argument("--connect-timeout", type=positive_float, default=DEFAULT_CONNECT_TIMEOUT, metavar="S",
                        help=f"seconds a scheduler address has to answer (default {DEFAULT_CONNECT_TIMEOUT:g})")
    parser.add_argument("--chunk-frames", type=positive_int, default=None,
                        help="frames per chunk (default: the pipeline's output.chunk_frames, else the input's chunks)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output instead of resuming it")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import this module first (it registers extra operators); repeatable")
    parser.add_argument("--retries", type=non_negative_int, default=2,
                        help="extra attempts for a failing chunk (default 2)")
    parser.add_argument("--png", metavar="PREFIX", default=None,
                        help="also draw every picturable output as PREFIX_<step>_<output>.png")
    parser.add_argument("--window", type=positive_int, default=None,
                        help="chunk tasks in flight at once (default: twice the workers)")
    parser.set_defaults(func=run)


def import_plugins(modules: list[str]) -> None:
    """Import operator plugin modules, with a one-line error naming a missing one.

    Examples
    --------
    >>> import_plugins(["no_such_plugin_module"])
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: --plugin no_such_plugin_module: cannot import it: No module named 'no_such_plugin_module' (fix: check the module name and that its directory is on PYTHONPATH)
    """
    from diffraflow.schemas.errors import PipelineError

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise PipelineError(f"--plugin {name}", f"cannot import it: {exc}",
                                "check the module name and that its directory is on PYTHONPATH") from None


def say_how_it_starts(executor: Executor, plan: ResolvedPipeline, sink: ResultSink) -> None:
    """Tell the user, once the executor is up, that a run resumes and where the dask dashboard is.

    Every command that runs a pipeline passes this as ``on_start``.

    Examples
    --------
    >>> from diffraflow.flow.executors import InlineExecutor
    >>> from diffraflow.flow.results import MemorySink
    >>> say_how_it_starts(InlineExecutor(), None, MemorySink())  # says nothing: new run, no dashboard
    """
    if getattr(sink, "resumed", False):
        print(f"resuming {sink.path}", file=sys.stderr)
    if executor.dashboard_link:
        print(f"dask dashboard: {executor.dashboard_link}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from diffraflow.flow.engine import run_pipeline
    from diffraflow.flow.pipeline import Pipeline

    import_plugins(args.plugin)
    pipeline = Pipeline.from_file(args.pipeline)  # fails here, before any data, on a bad file

    report = run_pipeline(pipeline, args.input, args.output, executor=args.scheduler, workers=args.workers,
                          chunk_frames=args.chunk_frames, overwrite=args.overwrite, progress=not args.quiet,
                          retries=args.retries, window=args.window, collect=False, on_start=say_how_it_starts,
                          connect_timeout=args.connect_timeout)
    total = report.n_chunks * report.n_rounds
    if report.already_complete:
        print(f"{report.output}: already complete; skipped {report.skipped} of {total} chunks")
    else:
        print(f"{report.output}: complete; {report.summary()}")
    if args.png:
        from diffraflow.flow.result_plots import plot_result_store
        from diffraflow.flow.store import read_scan_attrs

        scan = read_scan_attrs(args.input).model_dump(mode="json")
        for path in plot_result_store(args.output, args.png, scan_attrs=scan):
            print(f"picture: {path}")
    return 0
