"""``diffraflow train JOB.yaml --output MODEL``: train a model from a cube's ground truth, resumably.

A thin command over :func:`diffraflow.flow.training.runner.run_job`: the job
file is validated before any data is read; re-running the same command
resumes an interrupted training from its last checkpoint, and on a finished
artefact of the same config reports it complete. ``--overwrite`` replaces only
an earlier diffraflow model artefact.

Examples
--------
>>> import contextlib, io
>>> from diffraflow.flow.cli import main
>>> with contextlib.redirect_stdout(io.StringIO()) as listing:
...     status = main(["train", "--list"])
>>> status, "train_pattern_classifier  (produces pattern_classifier)" in listing.getvalue()
(0, True)
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from diffraflow.flow.cli import positive_int

if TYPE_CHECKING:
    from diffraflow.flow.cli import Subparsers

__all__ = ["register", "run", "describe_jobs"]


def register(subparsers: Subparsers) -> None:
    """Add the ``train`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser(
        "train", help="train a model from a scan cube's ground truth into a versioned artefact (resumable)",
        description="Train a model (a job file names the job, its parameters and the scan cube) and write a "
                    "versioned model artefact: weights (safetensors), config, training-data identity, metrics and "
                    "a manifest of SHA-256 hashes. Re-running the same command resumes an interrupted training.")
    parser.add_argument("config", nargs="?", help="job file (YAML or JSON); see the module docs of "
                                                  "diffraflow.flow.training.config")
    parser.add_argument("--output", "-o", default=None, metavar="DIR",
                        help="artefact directory to write (default: the job file's 'output')")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue an interrupted training of the same job file and data (default yes); "
                             "--no-resume discards its checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier diffraflow model artefact at DIR (never anything else)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="train on this torch device (default: the job file's, else cpu)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's choice; small models train fastest on 1; the same "
                             "count gives bit-identical artefacts)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-epoch lines")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import this module first (it registers extra jobs); repeatable")
    parser.add_argument("--list", action="store_true", help="list the registered jobs and their parameters")
    parser.set_defaults(func=run)


def describe_jobs() -> str:
    """The registered jobs with their parameters, as ``--list`` prints them.

    Examples
    --------
    >>> "learning_rate" in describe_jobs()
    True
    """
    from diffraflow.flow.jobs import job_parameters, list_jobs

    lines = []
    for name, cls in list_jobs().items():
        lines.append(f"{name}  (produces {cls.produces or name})")
        for p in job_parameters(cls):
            default = "required" if p["required"] else f"default {p['default']!r}"
            lines.append(f"    {p['name']}: {p['doc']} ({default})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from diffraflow.flow.commands.run import import_plugins
    from diffraflow.flow.training.runner import run_job
    from diffraflow.schemas.errors import SchemaError

    import_plugins(args.plugin)
    if args.list:
        print(describe_jobs())
        return 0
    if not args.config:
        raise SchemaError("diffraflow train", "no job file given", "pass JOB.yaml, or --list to see the jobs")
    report = run_job(args.config, args.output, resume=args.resume, overwrite=args.overwrite,
                     progress=not args.quiet, device=args.device, threads=args.threads)
    print(f"{report.artefact}: {report.summary()}")
    return 0
