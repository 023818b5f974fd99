"""Run a training job: validate, lock, seed, train epoch by epoch with checkpoints, publish the artefact.

:func:`run_job` is what ``diffraflow train`` calls. In order:

1. the job file is validated and the job built (:mod:`diffraflow.flow.training.config`)
   before any data is read;
2. the source is opened (metadata only) and the job checks its variables;
3. the output's writer lock is taken (:class:`diffraflow.flow.locks.StoreLock`):
   one run per artefact;
4. an interrupted run of the *same* config and data (same fingerprint) is
   resumed from the hidden work folder ``.NAME.training`` beside the output:
   its checkpoint (:mod:`~diffraflow.flow.training.checkpoint`) is written
   atomically after every epoch, with the metrics log ``metrics.jsonl``;
5. every RNG is seeded from the job's seed (model initialisation) and again
   from ``(seed, epoch)`` at each epoch, so a run killed at any instant and
   resumed ends with the same artefact bytes as an uninterrupted one (on the
   CPU with the same thread count; on CUDA torch's deterministic algorithms
   are switched on, as far as torch provides them);
6. the artefact (:mod:`diffraflow.operators.learning.artefact`) is written under
   a temporary name and renamed into place; ``overwrite`` replaces only an
   earlier diffraflow model artefact, never anything else.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> rng = np.random.default_rng(0)
>>> frames = rng.poisson(5, size=(4, 6, 8, 8)).astype("uint8")
>>> labels = {"true_phase_id": (np.arange(24).reshape(4, 6) % 2).astype("int32")}
>>> frames[labels["true_phase_id"] == 1, :, :4] += 20  # class 1: a bright left half
>>> config = {"training": 1, "job": "train_pattern_classifier", "epochs": 2, "data": {"batch_size": 8},
...           "params": {"channels": [4]}}
>>> out = pathlib.Path(tempfile.mkdtemp()) / "toy.dfmodel"
>>> report = run_job(config, out, source=frames, labels=labels, progress=False, threads=1)
>>> report.epochs_run, report.artefact.name, len(report.content_hash)
(2, 'toy.dfmodel', 64)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffraflow.flow.jobs import STREAM_INIT, JobContext, derive_seed, seed_everything
from diffraflow.flow.locks import HOST, StoreLock, pid_alive
from diffraflow.flow.notices import notify
from diffraflow.flow.training.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from diffraflow.flow.training.config import TrainingConfig, load_config
from diffraflow.flow.training.data import LabelledFrames
from diffraflow.schemas.errors import (
    DataCorruptionError,
    DestinationNotWritableError,
    IncompleteStoreError,
    InputFileError,
    OutputExistsError,
    PipelineError,
    SchemaError,
    UnsafeRecordError,
)

__all__ = ["run_job", "JobReport", "open_data", "work_dir", "CHECKPOINT_FILE", "LOG_FILE", "WORK_MARKER"]

CHECKPOINT_FILE = "checkpoint.safetensors"
LOG_FILE = "metrics.jsonl"
WORK_MARKER = "job.json"
_WORK_KIND = "training_work"


@dataclass(frozen=True)
class JobReport:
    """What :func:`run_job` did.

    Attributes
    ----------
    artefact
        The artefact directory.
    content_hash
        Its content hash (:func:`~diffraflow.operators.learning.artefact.artefact_hash`).
    job
        The job's registered name.
    epochs
        Epochs the artefact was trained for.
    epochs_run
        Epochs this call ran (fewer after a resume; 0 when already complete).
    resumed_from
        Epochs a checkpoint had already done (0: a fresh start).
    already_complete
        The output already held the artefact of this config and data: nothing was done.
    seconds
        Wall time of the call.
    metrics
        Metrics of the last epoch.
    """

    artefact: Path
    content_hash: str
    job: str
    epochs: int
    epochs_run: int
    resumed_from: int = 0
    already_complete: bool = False
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the command line.

        Examples
        --------
        >>> JobReport(Path("m"), "ab" * 32, "j", 3, 1, resumed_from=2, seconds=1.5, metrics={"loss": 0.25}).summary()
        'trained j for 3 epochs (resumed after 2) in 1.5 s; loss 0.25; content sha256 abababababab'
        """
        if self.already_complete:
            return f"already complete ({self.job}, {self.epochs} epochs); content sha256 {self.content_hash[:12]}"
        resumed = f" (resumed after {self.resumed_from})" if self.resumed_from else ""
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in self.metrics.items() if k != "epoch")
        return (f"trained {self.job} for {self.epochs} epochs{resumed} in {self.seconds:.1f} s"
                f"{'; ' + shown if shown else ''}; content sha256 {self.content_hash[:12]}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def work_dir(final: str | os.PathLike[str]) -> Path:
    """The hidden folder beside the artefact where an unfinished run keeps its checkpoint and log.

    Examples
    --------
    >>> work_dir("/models/phase.dfmodel").as_posix()
    '/models/.phase.dfmodel.training'
    """
    final = Path(final).expanduser().absolute()
    return final.parent / f".{final.name}.training"


def open_data(cfg: TrainingConfig, source: Any = None, labels: Mapping[str, Any] | None = None) -> LabelledFrames:
    """The job's labelled frames: the config's cube, or ``source`` (a 4-d array or ChunkSource) with ``labels``.

    Reads metadata only; the job's variables are checked to exist and be per-point.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.flow.training.config import parse_config
    >>> cfg = parse_config({"training": 1, "job": "train_pattern_classifier"}, need_source=False)
    >>> open_data(cfg, np.zeros((2, 2, 4, 4)), {"true_phase_id": np.zeros((2, 2), int)}).counts()
    {'train': 4, 'holdout': 0}
    """
    from diffraflow.flow.sources import ArraySource, ZarrCubeSource

    d = cfg.data
    if source is None:
        src: Any = ZarrCubeSource(d.source, chunk_frames=d.chunk_frames, variable=d.frames)  # type: ignore[arg-type]
    elif hasattr(source, "regions"):
        src = source
    else:
        src = ArraySource(source, chunk_frames=d.chunk_frames)
    return LabelledFrames(src, list(cfg.job.variables()), arrays=labels, batch_size=d.batch_size,
                          holdout=d.holdout, holdout_group=d.holdout_group, split_seed=d.split_seed, seed=cfg.seed,
                          shuffle_buffer_mib=d.shuffle_buffer_mib,
                          where=d.source if source is None and d.source else "data")


@contextlib.contextmanager
def _torch_settings(device: str, threads: int | None) -> Iterator[None]:
    """Thread count and, on CUDA, deterministic algorithms while the job runs (restored afterwards).

    On the CPU the operations jobs use are deterministic already, and switching
    torch's deterministic mode on would import its compiler stack (about a
    second); CUDA kernels (atomics, cuDNN autotuning) need it.
    """
    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    cuda = device == "cuda"
    if cuda:
        # cuBLAS needs a fixed workspace for reproducible matrix products; set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        previous = (torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        if cuda:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
            torch.backends.cudnn.benchmark = previous[2]


def _check_destination(final: Path, overwrite: bool) -> None:
    if final.exists() or final.is_symlink():
        from diffraflow.flow.store import diffraflow_kind
        from diffraflow.operators.learning.artefact import is_artefact

        if not overwrite:
            return  # decided under the lock: it may be this very config's finished artefact
        if not is_artefact(final):
            kind = diffraflow_kind(final) if final.is_dir() else None
            made = f"is a diffraflow {kind} store" if kind else "was not made by diffraflow (no artefact manifest)"
            raise OutputExistsError(str(final), f"exists and {made}; --overwrite replaces only a model artefact",
                                    "choose another output path, or move it away yourself")
    parent = final.parent
    if not parent.is_dir():
        raise DestinationNotWritableError(str(final), f"parent directory {parent} does not exist",
                                          "create the directory first or choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DestinationNotWritableError(str(final), f"directory {parent} is not writable",
                                          "choose an output path in a directory you can write to")


def _existing(final: Path, fingerprint: str, overwrite: bool, resume: bool) -> Any:
    """The finished artefact of this very config at ``final`` (to report), or None to (re)train."""
    from diffraflow.operators.learning.artefact import is_artefact, load_artefact

    if not (final.exists() or final.is_symlink()):
        return None
    if overwrite:
        if not is_artefact(final):  # checked again under the lock: it may have changed
            raise OutputExistsError(str(final), "exists and is not a diffraflow model artefact; --overwrite "
                                    "replaces only a model artefact", "choose another output path")
        return None
    if not is_artefact(final):
        raise OutputExistsError(str(final), "output already exists and is not a diffraflow model artefact",
                                "choose another output path")
    try:
        art = load_artefact(final, weights=False)
    except (DataCorruptionError, InputFileError, UnsafeRecordError) as exc:
        raise OutputExistsError(str(final), f"holds a damaged model artefact ({exc.problem})",
                                "pass --overwrite to replace it, or choose another output path") from None
    if art.info.get("training", {}).get("fingerprint") == fingerprint:
        if resume:
            return art
        raise OutputExistsError(str(final), "already holds the artefact of this config and data",
                                "pass --overwrite to train it again")
    raise OutputExistsError(str(final), "holds a model artefact trained from another config or data",
                            "choose another output path, or pass --overwrite to replace it")


def _read_marker(work: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((work / WORK_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("diffraflow", {}).get("kind") != _WORK_KIND:
        return None
    return record


def _prepare_work(work: Path, fingerprint: str, resume: bool, record: dict[str, Any]) -> Any:
    """Create or reuse the work folder; returns the checkpoint to resume from, or None."""
    if work.exists():
        marker = _read_marker(work)
        if marker is None:
            if any(work.iterdir()):
                raise OutputExistsError(str(work), "exists and was not made by a diffraflow training run",
                                        "move it away yourself")
            work.rmdir()  # empty: nothing in it to lose
        elif not resume:
            shutil.rmtree(work)
            notify(f"discarded the interrupted training in {work} (--no-resume)")
        elif marker.get("fingerprint") != fingerprint:
            raise IncompleteStoreError(str(work), "holds an interrupted training of another config or data",
                                       "re-run with --no-resume to discard it, or with the job file and data it "
                                       "was started with")
    if not work.exists():
        work.mkdir()
        atomic_write(work / WORK_MARKER, json.dumps({"diffraflow": {"kind": _WORK_KIND}, "fingerprint": fingerprint,
                                                     "config": record}, sort_keys=True, indent=1).encode())
        return None
    for leftover in work.glob(f".{CHECKPOINT_FILE}.tmp-*"):
        leftover.unlink(missing_ok=True)  # a checkpoint write cut short: the previous checkpoint stands
    checkpoint = work / CHECKPOINT_FILE
    if not checkpoint.exists():
        return None
    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        raise IncompleteStoreError(str(checkpoint), "checkpoint of another config or data",
                                   "re-run with --no-resume to start afresh")
    return state


def _rewrite_log(path: Path, history: list[dict[str, Any]]) -> None:
    """Keep the log lines of the checkpointed epochs (with their timings), drop any later ones."""
    old: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                old[int(record["epoch"])] = record
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill
    lines = [json.dumps(old.get(int(r["epoch"]), r), sort_keys=True) for r in history]
    atomic_write(path, "".join(line + "\n" for line in lines).encode())


def _remove_stale_partials(final: Path) -> None:
    prefix = f".{final.name}.partial-"
    for candidate in final.parent.glob(f"{prefix}*"):
        host, _, pid = candidate.name[len(prefix):].rpartition("-")
        if host != HOST or not pid.isdigit() or pid_alive(int(pid)) or not candidate.is_dir():
            continue
        from diffraflow.operators.learning.artefact import (
            CONFIG_FILE,
            INFO_FILE,
            MANIFEST_FILE,
            METRICS_FILE,
            WEIGHTS_FILE,
        )

        ours = {WEIGHTS_FILE, CONFIG_FILE, INFO_FILE, METRICS_FILE, MANIFEST_FILE}
        if all(p.name in ours for p in candidate.iterdir()):
            shutil.rmtree(candidate, ignore_errors=True)
            notify(f"removed {candidate}, a partial artefact left by a run that died (pid {pid})")


def _publish(temp: Path, final: Path) -> None:
    from diffraflow.operators.learning.artefact import is_artefact

    if final.exists() or final.is_symlink():
        if not is_artefact(final):
            raise OutputExistsError(str(final), "appeared while training and is not a diffraflow model artefact",
                                    "choose another output path")
        trash = final.parent / f".{final.name}.old-{HOST}-{os.getpid()}"
        os.replace(final, trash)  # keep the old artefact until the new one is in place
        os.replace(temp, final)
        shutil.rmtree(trash, ignore_errors=True)
        notify(f"replaced the earlier model artefact at {final}")
    else:
        os.replace(temp, final)


def _write_and_publish(final: Path, cfg: TrainingConfig, content: Any, identity: dict[str, Any],
                       history: list[dict[str, Any]], fingerprint: str) -> str:
    """Write the artefact under a temporary name beside ``final`` and rename it into place; its content hash."""
    import torch
    from diffraflow.operators.learning.artefact import (
        SHIPPED_MAX_BYTES,
        WEIGHTS_FILE,
        write_artefact,
    )

    job = cfg.job
    _remove_stale_partials(final)
    temp = final.parent / f".{final.name}.partial-{HOST}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        digest = write_artefact(
            temp, kind=job.produces or job.name, job=job.name, weights=content.weights, model=content.model,
            config=cfg.to_record(), data=identity, metrics=history,
            training={"seed": cfg.seed, "epochs": cfg.epochs, "device": cfg.device, "fingerprint": fingerprint,
                      "torch_version": torch.__version__.split("+")[0]})
        size = (temp / WEIGHTS_FILE).stat().st_size
        _publish(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if size > SHIPPED_MAX_BYTES:
        notify(f"{final}: weights are {size / 2**20:.1f} MiB; models shipped with diffraflow stay below "
               f"{SHIPPED_MAX_BYTES / 2**20:.0f} MiB")
    return digest


class _Progress:
    """A tqdm bar counting training frames on a terminal; one line per epoch otherwise."""

    def __init__(self, enabled: bool, cfg: TrainingConfig, n_train: int, start_epoch: int) -> None:
        self.enabled = enabled
        self.cfg = cfg
        self.n_train = max(1, n_train)
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.epochs * self.n_train, initial=start_epoch * self.n_train, unit="frame",
                            unit_scale=True, desc=f"train {cfg.job.name}", file=sys.stderr, leave=False)

    def advance(self, frames: int) -> None:
        if self.bar is not None:
            self.bar.update(frames)

    def epoch(self, record: dict[str, Any]) -> None:
        text = ", ".join(f"{k} {_fmt(v)}" for k, v in record.items() if k not in ("epoch", "seconds"))
        if self.bar is not None:
            self.bar.n = int(record["epoch"]) * self.n_train
            self.bar.set_postfix_str(f"epoch {record['epoch']}/{self.cfg.epochs}: {text}")
        elif self.enabled:
            print(f"diffraflow train: epoch {record['epoch']}/{self.cfg.epochs}: {text} "
                  f"({record.get('seconds', 0):.2f} s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_job(config: Any, output_dir: str | os.PathLike[str] | None = None, *, resume: bool = True,
            overwrite: bool = False, progress: bool = True, device: str | None = None, threads: int | None = None,
            source: Any = None, labels: Mapping[str, Any] | None = None) -> JobReport:
    """Train the job a config describes and write its versioned artefact to ``output_dir``.

    Parameters
    ----------
    config
        A job-file path (YAML/JSON), a mapping, or a :class:`~diffraflow.flow.training.config.TrainingConfig`.
    output_dir
        The artefact directory to write (default: the file's ``output``).
    resume
        Continue an interrupted run of the same config and data from its last
        checkpoint (``False``: discard it and start afresh).
    overwrite
        Replace an existing diffraflow model artefact at ``output_dir`` (never anything else).
    progress
        A progress bar with per-epoch metrics on a terminal; one line per epoch otherwise.
    device
        ``cpu`` or ``cuda``; overrides the file's ``device``.
    threads
        Torch CPU threads while training (default: torch's own choice). An
        execution setting, not part of the config: bit-identical artefacts
        on the CPU need the same thread count, and small models train
        fastest on one thread.
    source, labels
        Train on in-memory data instead of the file's ``data.source``: a 4-d
        array or a ChunkSource, and its label arrays by variable name.

    Returns
    -------
    JobReport

    Raises
    ------
    SchemaError, PipelineError
        The config is invalid (raised before any data is read).
    OutputExistsError
        The output exists and may not be replaced.
    StoreLockedError
        Another run is writing the same artefact.
    """
    from diffraflow.flow.store import check_not_an_input

    t0 = time.perf_counter()
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise SchemaError("--threads", f"must be a whole number of 1 or more, got {threads!r}", "e.g. --threads 1")
    cfg = load_config(config, need_source=source is None).with_device(device)
    job = cfg.job
    where = f"job {job.name}"
    target = output_dir if output_dir is not None else cfg.output
    if target is None:
        raise SchemaError("--output", "no output given", "pass --output DIR, or set 'output:' in the job file")
    final = Path(target).expanduser().absolute()
    check_not_an_input(final, [p for p in (cfg.data.source if source is None else None, cfg.path) if p])
    _check_destination(final, overwrite)
    if cfg.device == "cuda":
        from diffraflow.schemas.backends import require_backend

        require_backend("torch-cuda", f"{cfg.path or 'job file'}: device")
    data = open_data(cfg, source, labels)
    job.check(data)
    counts = data.counts()
    if counts["train"] == 0:
        raise SchemaError(f"{cfg.path or 'job file'}: data.holdout", f"no frame is left for training "
                          f"({counts['holdout']} held out)", "lower data.holdout")
    if cfg.data.holdout > 0 and counts["holdout"] == 0:
        notify(f"{where}: the hold-out split of {cfg.data.holdout:g} selected no frame of this small data set")
    identity = data.identity()
    fingerprint = cfg.fingerprint(identity)

    with StoreLock(final, where=str(final)):
        done = _existing(final, fingerprint, overwrite, resume)
        if done is not None:
            leftover = work_dir(final)
            marker = _read_marker(leftover) if leftover.exists() else None
            if marker is not None and marker.get("fingerprint") == fingerprint:
                shutil.rmtree(leftover, ignore_errors=True)  # a run killed between publishing and cleaning up
            return JobReport(final, done.content_hash, job.name, cfg.epochs, 0, already_complete=True,
                             seconds=time.perf_counter() - t0, metrics=dict(done.metrics[-1] if done.metrics else {}))
        work = work_dir(final)
        state = _prepare_work(work, fingerprint, resume, cfg.to_record())
        ctx = JobContext(data=data, seed=cfg.seed, epochs_total=cfg.epochs, device=cfg.device, where=where)
        log_path = work / LOG_FILE
        bar = _Progress(progress, cfg, counts["train"], int(state["epochs_done"]) if state else 0)
        clock = {"epoch": time.perf_counter()}

        def on_epoch_end(epoch: int, record: dict[str, Any]) -> None:
            save_checkpoint(work / CHECKPOINT_FILE, {"fingerprint": fingerprint, "epochs_done": epoch + 1,
                                                     "history": ctx.history, "job": job.state_dict()})
            line = {**record, "seconds": round(time.perf_counter() - clock["epoch"], 3)}
            with open(log_path, "a") as fh:
                fh.write(json.dumps(line, sort_keys=True) + "\n")
            bar.epoch(line)
            clock["epoch"] = time.perf_counter()

        ctx.on_epoch_end = on_epoch_end
        ctx.on_progress = bar.advance
        try:
            with _torch_settings(cfg.device, threads):
                seed_everything(derive_seed(cfg.seed, STREAM_INIT))
                job.setup(ctx)
                if state is not None:
                    job.load_state_dict(state["job"])
                    ctx.start_epoch = int(state["epochs_done"])
                    ctx.history = list(state["history"])
                    notify(f"{where}: resuming after epoch {ctx.start_epoch} of {cfg.epochs} from {work}")
                _rewrite_log(log_path, ctx.history)
                resumed_from = ctx.start_epoch
                clock["epoch"] = time.perf_counter()
                job.run(ctx)
        finally:
            bar.close()
        if not ctx.finished:
            raise PipelineError(where, f"run() returned after {ctx.start_epoch} of {cfg.epochs} epochs",
                                "iterate over ctx.epochs() to its end in the job's run()")
        digest = _write_and_publish(final, cfg, job.artefact(), identity, ctx.history, fingerprint)
        shutil.rmtree(work, ignore_errors=True)
    return JobReport(final, digest, job.name, cfg.epochs, cfg.epochs - resumed_from, resumed_from=resumed_from,
                     seconds=time.perf_counter() - t0, metrics=dict(ctx.history[-1]) if ctx.history else {})
