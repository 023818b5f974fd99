"""The built-in jobs of the learned operators: space-group classification and orientation regression.

``train_space_group``
    learns the space group of each pattern (the ``class_probabilities`` of
    ``classify_space_group``) from a cube whose ``true_phase_id`` points at
    phase records with their space group (``diffraflow simulate ebsd --phase
    ni fe si``, or a training set of
    :func:`~diffraflow.flow.training.datasets.write_pattern_set`), or from any
    integer per-point variable of class labels.
``train_orientation``
    learns the orientation of each pattern of one phase (the ``crystal_map``
    of ``predict_orientation``) from ``true_rotation``, with a loss that is
    blind to the crystal's symmetry (the disorientation under its proper
    point group, :func:`~diffraflow.operators.learning.rotations.symmetry_aware_loss`)
    on the 6-D rotation representation.

Both share :class:`NetworkJob`: a network of
:mod:`~diffraflow.operators.learning._networks` (``architecture``:
``small_cnn``, ``xception``, ``densenet``, ``swin_tiny``), AdamW with a
cosine, exponential or constant learning-rate schedule (and a linear
warm-up), an exponential moving average of the weights (evaluated and
shipped instead of the raw weights), and early stopping on a hold-out
metric. Early stopping never cuts the runner's epoch loop short: the epochs
after the stop are recorded as ``stopped`` and cost nothing, so a run's
checkpoints, resume and artefact bytes stay those of the runner's contract;
the artefact then holds the weights of the best epoch.

Examples
--------
>>> job = build_job("train_space_group", {"architecture": "small_cnn", "width": 4, "schedule": "exponential"})
>>> job.variables(), job.produces
(('true_phase_id',), 'space_group_classifier')
>>> build_job("train_orientation", {"architecture": "resnet"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
diffraflow.schemas.errors.PipelineError: job: train_orientation.architecture: 'resnet' is not one of [...] (fix: ...)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from diffraflow.flow.jobs import (
    ArtefactContent,
    Job,
    JobContext,
    build_job,
    param,
    register_job,
)
from diffraflow.schemas.errors import PipelineError, SchemaError

__all__ = ["NetworkJob", "TrainSpaceGroup", "TrainOrientation", "learning_rate_at", "frames_tensor", "build_job",
           "SPACE_GROUP_KIND", "ORIENTATION_KIND"]

#: Artefact kinds (what ``classify_space_group`` and ``predict_orientation`` load).
SPACE_GROUP_KIND = "space_group_classifier"
ORIENTATION_KIND = "orientation_regressor"
_ARCHITECTURES = ("small_cnn", "xception", "densenet", "swin_tiny")
_SCHEDULES = ("cosine", "exponential", "constant")
_MODEL_OPTIONS = ("middle_blocks", "block_layers", "depths", "heads", "window", "hidden", "highpass_sigma")
_STREAM_AUGMENT = 7


def learning_rate_at(progress: float, base: float, schedule: str, epochs: int, decay_rate: float = 0.9,
                     warmup_epochs: float = 0.0, min_factor: float = 0.01) -> float:
    """The learning rate after ``progress`` epochs (a fraction counts: the rate changes every step).

    Parameters
    ----------
    progress
        Epochs done, e.g. ``2.5`` half-way through the third epoch.
    base
        Peak learning rate.
    schedule
        ``cosine``: from ``base`` down to ``min_factor * base`` over ``epochs``;
        ``exponential``: ``base * decay_rate ** progress``; ``constant``.
    warmup_epochs
        Rise linearly from 0 over this many epochs first.

    Examples
    --------
    >>> [round(learning_rate_at(p, 1.0, "cosine", 4), 3) for p in (0, 2, 4)]
    [1.0, 0.505, 0.01]
    >>> round(learning_rate_at(2, 1.0, "exponential", 4, decay_rate=0.5), 3), learning_rate_at(0.5, 1.0, "constant", 4, warmup_epochs=1)
    (0.25, 0.5)
    """
    if schedule == "cosine":
        t = min(1.0, max(0.0, progress / max(epochs, 1e-9)))
        rate = base * (min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t)))
    elif schedule == "exponential":
        rate = base * decay_rate ** progress
    else:
        rate = base
    if warmup_epochs > 0 and progress < warmup_epochs:
        rate *= progress / warmup_epochs
    return float(rate)


def frames_tensor(frames: np.ndarray, device: Any = "cpu") -> Any:
    """Frames as a torch tensor on ``device``: uint8 as is, other dtypes as float32 (torch lacks unsigned 16/32-bit ops).

    Examples
    --------
    >>> frames_tensor(np.zeros((1, 2, 2), "uint16")).dtype, frames_tensor(np.zeros((1, 2, 2), "uint8")).dtype
    (torch.float32, torch.uint8)
    """
    import torch

    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = frames.astype(np.float32, copy=False)
    return torch.as_tensor(np.ascontiguousarray(frames), device=device)


def _finite_positive(value: Any, where: str, name: str, example: str, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value)) and \
        (float(value) >= 0 if allow_zero else float(value) > 0)
    if not ok:
        raise PipelineError(f"{where}.{name}", f"must be {'0 or more' if allow_zero else 'positive'}, got {value!r}",
                            f"e.g. {name}: {example}")


@dataclass(eq=False)
class NetworkJob(Job):
    """Shared training loop of the learned-operator jobs: network, AdamW, schedule, EMA, early stopping.

    Subclasses define :meth:`_task_setup`, :meth:`_loss` (a batch's loss and
    metric sums), :meth:`_evaluate` and :meth:`_record` (the model record).

    Parameters
    ----------
    architecture, width, model_options
        The network (see :mod:`diffraflow.operators.learning._networks`).
    in_shape
        Frame size of the model (default: the data's); other sizes are resized inside it.
    learning_rate, weight_decay
        AdamW's peak step size and decoupled weight decay.
    schedule, decay_rate, warmup_epochs
        See :func:`learning_rate_at` (the rate changes every step).
    ema_decay
        Exponential moving average of the weights per step (``0``: off). The
        hold-out metrics and the artefact use the averaged weights.
    early_stopping
        Stop after this many epochs without a better hold-out metric (``0``: never; needs ``data.holdout``).
    gradient_clip
        Largest gradient norm (``0``: no clipping).
    dropout
        Dropout before the head.
    """

    architecture: str = param("small_cnn", doc="network: small_cnn, xception, densenet or swin_tiny",
                              choices=_ARCHITECTURES)
    width: int = param(16, doc="channels of the first stage (growth rate for densenet, embedding for swin_tiny)")
    model_options: dict[str, Any] = param({}, doc="backbone options: middle_blocks (xception), block_layers "
                                          "(densenet), depths, heads, window (swin_tiny), hidden (orientation head), "
                                          "highpass_sigma (background removal, fraction of the frame height)")
    in_shape: list[int] | None = param(None, doc="frame size (det_y, det_x) of the model; default the data's")
    learning_rate: float = param(2e-3, doc="AdamW peak learning rate")
    weight_decay: float = param(0.05, doc="AdamW decoupled weight decay")
    schedule: str = param("cosine", doc="learning-rate schedule", choices=_SCHEDULES)
    decay_rate: float = param(0.9, doc="exponential schedule: factor per epoch")
    warmup_epochs: float = param(0.0, doc="linear warm-up of the learning rate, epochs")
    ema_decay: float = param(0.998, doc="moving average of the weights per step; 0 for none")
    early_stopping: int = param(0, doc="stop after this many epochs without a better hold-out metric; 0 never")
    gradient_clip: float = param(5.0, doc="largest gradient norm; 0 for no clipping")
    dropout: float = param(0.1, doc="dropout before the head")

    #: The hold-out metric early stopping watches, and whether larger is better.
    monitor: ClassVar[str] = ""
    monitor_larger: ClassVar[bool] = False

    def validate(self, where: str) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise PipelineError(f"{where}.width", f"must be a whole number of 1 or more, got {self.width!r}",
                                "e.g. width: 16")
        unknown = sorted(set(self.model_options) - set(_MODEL_OPTIONS))
        if unknown:
            raise PipelineError(f"{where}.model_options", f"unknown option {unknown[0]!r}",
                                f"use {', '.join(_MODEL_OPTIONS)}")
        if self.in_shape is not None and (len(self.in_shape) != 2 or min(int(v) for v in self.in_shape) < 8):
            raise PipelineError(f"{where}.in_shape", f"must be two sizes of at least 8 px, got {self.in_shape!r}",
                                "e.g. in_shape: [60, 60]")
        _finite_positive(self.learning_rate, where, "learning_rate", "0.002")
        _finite_positive(self.weight_decay, where, "weight_decay", "0.05", allow_zero=True)
        _finite_positive(self.warmup_epochs, where, "warmup_epochs", "1", allow_zero=True)
        _finite_positive(self.gradient_clip, where, "gradient_clip", "5", allow_zero=True)
        if not 0 < self.decay_rate <= 1:
            raise PipelineError(f"{where}.decay_rate", f"must lie in (0, 1], got {self.decay_rate}",
                                "e.g. decay_rate: 0.9")
        if not 0 <= self.ema_decay < 1:
            raise PipelineError(f"{where}.ema_decay", f"must lie in [0, 1), got {self.ema_decay}",
                                "e.g. ema_decay: 0.998 (0 for none)")
        if isinstance(self.early_stopping, bool) or self.early_stopping < 0:
            raise PipelineError(f"{where}.early_stopping", f"must be a whole number of 0 or more, got "
                                f"{self.early_stopping!r}", "e.g. early_stopping: 5 (0 never)")
        if not 0 <= self.dropout < 1:
            raise PipelineError(f"{where}.dropout", f"must lie in [0, 1), got {self.dropout}", "e.g. dropout: 0.1")

    # -- to be defined by each task ------------------------------------------------
    def _task_setup(self, ctx: JobContext) -> dict[str, Any]:
        raise NotImplementedError

    def _loss(self, net: Any, batch: Any, train: bool, rng: np.random.Generator) -> tuple[Any, dict[str, float]]:
        raise NotImplementedError

    def _evaluate(self, net: Any, ctx: JobContext) -> dict[str, float]:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    def check(self, data: Any) -> None:
        shape = tuple(int(v) for v in (self.in_shape or data.spec.det_shape))
        if min(shape) < 8:
            raise SchemaError(f"{data.where}: patterns", f"frames of {list(shape)} px are too small for a network",
                              "train on frames of at least 8 x 8 px")
        if self.early_stopping and data.holdout <= 0:
            raise SchemaError("data.holdout", f"is 0, but early_stopping ({self.early_stopping}) watches a hold-out "
                              "metric", "set data.holdout (e.g. 0.05), or early_stopping: 0")

    def _base_record(self, ctx: JobContext) -> dict[str, Any]:
        record = {"architecture": self.architecture, "width": int(self.width),
                  "in_shape": [int(v) for v in (self.in_shape or ctx.data.spec.det_shape)],
                  "dropout": float(self.dropout), **{k: v for k, v in self.model_options.items()}}
        return record

    def setup(self, ctx: JobContext) -> None:
        import torch
        from diffraflow.operators.learning._models import build_model

        self.device = torch.device(ctx.device)
        self.record = {**self._base_record(ctx), **self._task_setup(ctx)}
        self.model = build_model(self.record).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(self.learning_rate),
                                           weight_decay=float(self.weight_decay))
        self.ema = copy.deepcopy(self.model).eval() if self.ema_decay > 0 else None
        if self.ema is not None:
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self.step = 0
        self.best: dict[str, Any] = {"metric": None, "epoch": 0, "state": None}
        self.stopped = False
        self.steps_per_epoch = max(1, math.ceil(ctx.data.counts()["train"] / ctx.data.batch_size))

    def _update_ema(self) -> None:
        import torch

        # A short warm-up: early on the average follows the weights, not the random initialisation.
        decay = min(float(self.ema_decay), (1 + self.step) / (10 + self.step))
        assert self.ema is not None
        averaged = self.ema.state_dict()
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                target = averaged[name]
                if value.dtype.is_floating_point:
                    target.mul_(decay).add_(value.detach(), alpha=1 - decay)
                else:
                    target.copy_(value)

    @property
    def evaluated(self) -> Any:
        """The network judged and shipped: the moving average when there is one."""
        return self.ema if self.ema is not None else self.model

    def run_epoch(self, ctx: JobContext, epoch: int) -> dict[str, Any]:
        import torch

        if self.stopped:
            return {"stopped": 1, "best_epoch": int(self.best["epoch"])}
        self.model.train()
        rng = ctx.rng(epoch, _STREAM_AUGMENT)
        sums: dict[str, float] = {}
        total = 0
        for batch in ctx.data.batches("train", epoch):
            lr = learning_rate_at(self.step / self.steps_per_epoch, float(self.learning_rate), self.schedule,
                                  ctx.epochs_total, float(self.decay_rate), float(self.warmup_epochs))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss, metrics = self._loss(self.model, batch, True, rng)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.gradient_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.gradient_clip))
            self.optimizer.step()
            self.step += 1
            if self.ema is not None:
                self._update_ema()
            n = len(batch)
            total += n
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            ctx.advance(n)
        out: dict[str, Any] = {f"train_{k}": v / max(total, 1) for k, v in sums.items()}
        out["learning_rate"] = learning_rate_at(self.step / self.steps_per_epoch, float(self.learning_rate),
                                                self.schedule, ctx.epochs_total, float(self.decay_rate),
                                                float(self.warmup_epochs))
        if ctx.data.counts()["holdout"]:
            out.update(self._evaluate(self.evaluated, ctx))
            self._watch(out, epoch)
        return out

    def _watch(self, metrics: dict[str, Any], epoch: int) -> None:
        value = metrics.get(self.monitor)
        if value is None or self.early_stopping <= 0:
            return
        best = self.best["metric"]
        better = best is None or (value > best if self.monitor_larger else value < best)
        if better:
            state = {k: v.detach().clone() for k, v in self.evaluated.state_dict().items()}
            self.best = {"metric": float(value), "epoch": epoch + 1, "state": state}
        elif epoch + 1 - int(self.best["epoch"]) >= int(self.early_stopping):
            self.stopped = True
            metrics["stopped"] = 1
            metrics["best_epoch"] = int(self.best["epoch"])

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "step": int(self.step),
                "stopped": bool(self.stopped), "best": dict(self.best)}

    def load_state_dict(self, state: Any) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.stopped = bool(state["stopped"])
        best = dict(state["best"])
        self.best = {"metric": best.get("metric"), "epoch": int(best.get("epoch", 0)), "state": best.get("state")}

    def artefact(self) -> ArtefactContent:
        weights = self.best["state"] if self.early_stopping > 0 and self.best["state"] is not None else \
            self.evaluated.state_dict()
        record = dict(self.record)
        if self.early_stopping > 0 and self.best["state"] is not None:
            record["best_epoch"] = int(self.best["epoch"])
        return ArtefactContent(weights={k: v.detach().cpu().numpy() for k, v in weights.items()}, model=record)


def _class_table(data: Any, label: str) -> tuple[dict[int, int], dict[int, str]]:
    """Value of ``label`` -> class value (space group), and class value -> phase names (for the record)."""
    phases = (data.spec.attrs or {}).get("phases") or []
    if label != "true_phase_id":
        return {}, {}
    table: dict[int, int] = {}
    names: dict[int, list[str]] = {}
    for record in phases:
        if not isinstance(record, dict) or "id" not in record:
            continue
        group = record.get("space_group")
        if group is None:
            raise SchemaError(f"{data.where}: phases", f"phase {record.get('name')!r} has no space group",
                              "simulate with library phases or CIFs that give their space group")
        table[int(record["id"])] = int(group)
        names.setdefault(int(group), []).append(str(record.get("name")))
    if not table:
        raise SchemaError(f"{data.where}: phases", "the cube lists no phases, so true_phase_id names no space group",
                          "train on a simulated cube (it lists its phases), or name a label variable of classes")
    return table, {g: ", ".join(v) for g, v in names.items()}


@register_job
@dataclass(eq=False)
class TrainSpaceGroup(NetworkJob):
    """Train a network to tell the space group of each pattern (cross-entropy with label smoothing).

    Parameters
    ----------
    label
        ``true_phase_id`` (each phase record's space group is the class), or
        an integer per-point variable whose values are the classes.
    classes
        The class values in output order (default: those present in the
        training data); e.g. ``[221, 223, 225, 227, 229, 230]``.
    label_smoothing
        Cross-entropy label smoothing.
    flip
        Mirror frames left-right at random while training (a mirrored cubic
        pattern is a pattern of the same space group).

    Notes
    -----
    Each epoch logs ``train_loss``, ``train_accuracy`` and, with a hold-out
    split, ``holdout_loss``, ``holdout_accuracy`` and ``holdout_accuracy_<class>``;
    early stopping watches ``holdout_loss``.
    """

    name = "train_space_group"
    produces = SPACE_GROUP_KIND
    monitor = "holdout_loss"
    monitor_larger = False

    label: str = param("true_phase_id", doc="true_phase_id (classes are the phases' space groups) or an integer "
                                            "variable of class values")
    classes: list[int] | None = param(None, doc="class values in output order; default those in the data")
    label_smoothing: float = param(0.05, doc="cross-entropy label smoothing")
    flip: bool = param(True, doc="mirror frames left-right at random while training")

    def validate(self, where: str) -> None:
        super().validate(where)
        if not 0 <= self.label_smoothing < 1:
            raise PipelineError(f"{where}.label_smoothing", f"must lie in [0, 1), got {self.label_smoothing}",
                                "e.g. label_smoothing: 0.05")
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise PipelineError(f"{where}.classes", f"need two or more distinct classes, got {self.classes!r}",
                                "e.g. classes: [221, 223, 225, 227, 229, 230]")

    def variables(self) -> tuple[str, ...]:
        return (self.label,)

    def check(self, data: Any) -> None:
        super().check(data)
        info = data.variables[self.label]
        if info.per_frame_shape or info.dtype.kind not in "iu":
            raise SchemaError(f"{data.where}: {self.label}", f"is {info.dtype} of shape {list(info.per_frame_shape)} "
                              "per point; a class label is one whole number per point",
                              "use true_phase_id or an integer variable such as space_group")
        _class_table(data, self.label)

    def _task_setup(self, ctx: JobContext) -> dict[str, Any]:
        from diffraflow.operators.learning.materials import class_name

        table, materials = _class_table(ctx.data, self.label)
        values = ctx.data.label_values(self.label).reshape(-1).astype(np.int64)
        if table:
            missing = sorted(set(np.unique(values).tolist()) - set(table))
            if missing:
                raise SchemaError(f"{ctx.data.where}: {self.label}", f"values {missing[:5]} name no phase record",
                                  "write true_phase_id as ids of scan.phases")
        mapped = np.array([table.get(int(v), int(v)) for v in values]) if table else values
        present = sorted(set(np.unique(mapped).tolist()))
        classes = [int(c) for c in self.classes] if self.classes is not None else present
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise SchemaError(f"{ctx.data.where}: {self.label}", f"holds classes {unknown} not in 'classes' {classes}",
                              "add them to 'classes', or leave 'classes' out")
        if len(classes) < 2:
            raise SchemaError(f"{ctx.data.where}: {self.label}", f"holds one class only ({classes})",
                              "train on patterns of two or more space groups")
        self.classes_ = np.asarray(classes, dtype=np.int64)
        # Label value (a phase id, or the class itself) -> output index.
        pairs = table.items() if table else ((c, c) for c in present)
        self.lookup = {int(k): classes.index(int(v)) for k, v in pairs if int(v) in classes}
        names = [class_name(c) if self.label == "true_phase_id" else f"{self.label}={c}" for c in classes]
        return {"task": "classify", "n_classes": len(classes), "classes": classes, "class_names": names,
                "label": self.label, "trained_materials": {str(c): materials.get(c, "") for c in classes},
                "input": "frames of any size: resized to in_shape, background removed and standardised inside"}

    def _targets(self, values: np.ndarray) -> Any:
        import torch

        try:
            index = [self.lookup[int(v)] for v in values]
        except KeyError as exc:
            raise SchemaError(f"{self.label}", f"value {exc.args[0]} is not a known class",
                              "train on data whose labels are all in 'classes'") from None
        return torch.as_tensor(index, dtype=torch.long, device=self.device)

    def _loss(self, net: Any, batch: Any, train: bool, rng: np.random.Generator) -> tuple[Any, dict[str, float]]:
        from torch.nn import functional

        frames = batch.frames
        if train and self.flip:
            mirror = rng.random(len(frames)) < 0.5
            frames = frames.copy()
            frames[mirror] = frames[mirror][..., ::-1]
        x = frames_tensor(frames, self.device)
        y = self._targets(batch.labels[self.label])
        logits = net(x)
        loss = functional.cross_entropy(logits, y, label_smoothing=float(self.label_smoothing) if train else 0.0)
        n = len(y)
        return loss, {"loss": float(loss.detach()) * n, "accuracy": float((logits.detach().argmax(1) == y).sum())}

    def _evaluate(self, net: Any, ctx: JobContext) -> dict[str, float]:
        import torch
        from torch.nn import functional

        net.eval()
        total, loss_sum = 0, 0.0
        hits = np.zeros(len(self.classes_))
        counts = np.zeros(len(self.classes_))
        with torch.no_grad():
            for batch in ctx.data.batches("holdout"):
                y = self._targets(batch.labels[self.label])
                logits = net(frames_tensor(batch.frames, self.device))
                predicted = logits.argmax(1)
                loss_sum += float(functional.cross_entropy(logits, y, reduction="sum"))
                total += len(y)
                np.add.at(counts, y.cpu().numpy(), 1)
                np.add.at(hits, y.cpu().numpy(), (predicted == y).cpu().numpy().astype(float))
        out = {"holdout_loss": loss_sum / max(total, 1), "holdout_accuracy": float(hits.sum() / max(total, 1))}
        for value, hit, count in zip(self.classes_, hits, counts, strict=True):
            if count:
                out[f"holdout_accuracy_{int(value)}"] = float(hit / count)
        return out


@register_job
@dataclass(eq=False)
class TrainOrientation(NetworkJob):
    """Train a network to regress the orientation of each pattern of one phase, blind to its symmetry.

    Parameters
    ----------
    rotation
        The per-point unit-quaternion variable (orix convention).
    pc_variable
        A per-point projection-centre variable (Bruker) fed to the network
        with each frame, or ``None``: the cube's ``detector.pc`` for all.
    use_pc
        Feed the projection centre to the network (needed when it varies).
    n_hypotheses
        Rotations the network proposes per pattern. The loss takes the best
        (winner takes all) and trains a score to pick it; several hypotheses
        let the network keep the symmetry-equivalent choices apart instead of
        averaging them.
    phase_id
        The phase the model is for (default: the cube's only phase; frames of
        other phases are refused).

    Notes
    -----
    Loss: :math:`\\min_{h, S} \\|S R_h - R\\|_F` (the chordal disorientation of
    the best hypothesis, ``S`` over the proper rotations of the phase's Laue
    group) plus the cross-entropy of the scores against that best hypothesis.
    Each epoch logs ``train_loss``, ``train_mean_deg`` and, with a hold-out
    split, ``holdout_mean_deg``, ``holdout_median_deg``; early stopping
    watches ``holdout_mean_deg``.
    """

    name = "train_orientation"
    produces = ORIENTATION_KIND
    monitor = "holdout_mean_deg"
    monitor_larger = False

    rotation: str = param("true_rotation", doc="per-point unit-quaternion variable (orix convention)")
    pc_variable: str | None = param(None, doc="per-point projection-centre variable (Bruker); default the "
                                              "cube's detector.pc for every frame")
    use_pc: bool = param(True, doc="feed each frame's projection centre to the network")
    n_hypotheses: int = param(1, doc="rotations proposed per pattern (the best is scored and kept)")
    phase_id: int | None = param(None, doc="phase the model is for; default the cube's only phase")

    def validate(self, where: str) -> None:
        super().validate(where)
        if isinstance(self.n_hypotheses, bool) or not isinstance(self.n_hypotheses, int) or not \
                1 <= self.n_hypotheses <= 16:
            raise PipelineError(f"{where}.n_hypotheses", f"must be a whole number from 1 to 16, got "
                                f"{self.n_hypotheses!r}", "e.g. n_hypotheses: 1")

    def variables(self) -> tuple[str, ...]:
        names = [self.rotation, "true_phase_id"]
        if self.pc_variable:
            names.append(self.pc_variable)
        return tuple(names)

    def check(self, data: Any) -> None:
        super().check(data)
        info = data.variables[self.rotation]
        if info.per_frame_shape != (4,) or info.dtype.kind != "f":
            raise SchemaError(f"{data.where}: {self.rotation}", f"is {info.dtype} of shape "
                              f"{list(info.per_frame_shape)} per point, not a quaternion",
                              "name a (scan_y, scan_x, 4) float variable such as true_rotation")
        if self.pc_variable and data.variables[self.pc_variable].per_frame_shape != (3,):
            raise SchemaError(f"{data.where}: {self.pc_variable}", "is not three numbers per point",
                              "name a (scan_y, scan_x, 3) projection-centre variable, or leave pc_variable out")
        detector = (data.spec.attrs or {}).get("detector") or {}
        if not self.pc_variable and self.use_pc and detector.get("pc") is None:
            raise SchemaError(f"{data.where}: detector.pc", "the projection centre is unknown",
                              "give pc_variable, or set use_pc: false")
        self._phase_record(data)

    def _phase_record(self, data: Any) -> dict[str, Any]:
        phases = [p for p in ((data.spec.attrs or {}).get("phases") or []) if isinstance(p, dict)]
        if self.phase_id is None:
            if len(phases) != 1:
                raise SchemaError(f"{data.where}: phases", f"lists {len(phases)} phases; an orientation model is "
                                  "for one", "set phase_id, or train on a single-phase cube")
            return phases[0]
        match = [p for p in phases if int(p.get("id", -1)) == int(self.phase_id)]
        if not match:
            raise SchemaError(f"{data.where}: phases", f"has no phase with id {self.phase_id}",
                              f"use one of {[p.get('id') for p in phases]}")
        return match[0]

    def _task_setup(self, ctx: JobContext) -> dict[str, Any]:
        from diffraflow.operators.learning.rotations import proper_point_group_matrices

        phase = self._phase_record(ctx.data)
        ids = np.unique(ctx.data.label_values("true_phase_id"))
        if set(ids.tolist()) - {int(phase.get("id", 0))}:
            raise SchemaError(f"{ctx.data.where}: true_phase_id", f"holds phases {ids.tolist()}; this model is for "
                              f"phase {phase.get('id')} ({phase.get('name')}) only",
                              "train on a single-phase cube")
        point_group = phase.get("point_group") or "m-3m"
        self.symmetry = proper_point_group_matrices(point_group, device=self.device)
        attrs = ctx.data.spec.attrs or {}
        detector = attrs.get("detector") or {}
        if self.pc_variable:
            pcs = ctx.data.label_values(self.pc_variable).reshape(-1, 3).astype(np.float64)
            self.fixed_pc = None
        else:
            pcs = np.asarray(detector.get("pc") or (0.5, 0.25, 0.6), dtype=np.float64).reshape(1, 3)
            self.fixed_pc = pcs[0]
        low, high = pcs.min(axis=0), pcs.max(axis=0)
        centre = (low + high) / 2
        scale = np.maximum((high - low) / 2, 0.01)
        training = (attrs.get("original_metadata") or {}).get("training_set") or \
            (attrs.get("original_metadata") or {}).get("simulation") or {}
        return {"task": "orientation", "n_hypotheses": int(self.n_hypotheses), "use_pc": bool(self.use_pc),
                "pc_centre": centre.tolist(), "pc_scale": scale.tolist(), "pc_range": [low.tolist(), high.tolist()],
                "phase": {k: v for k, v in phase.items() if k != "color"}, "point_group": point_group,
                "rotation": "sample to crystal, orix convention (as true_rotation)",
                "geometry": {"sample_tilt": detector.get("sample_tilt"), "camera_tilt": detector.get("camera_tilt"),
                             "pc_convention": detector.get("pc_convention", "bruker"),
                             "beam_energy_kv": attrs.get("beam_energy_kv"),
                             "master_pattern_kinds": training.get("master_pattern_kinds")},
                "input": "frames resized to in_shape, background removed and standardised inside; the projection "
                         "centre (Bruker) of each frame when use_pc"}

    def _pc_tensor(self, batch: Any) -> Any:
        import torch

        if not self.use_pc:
            return None
        if self.pc_variable:
            pc = np.asarray(batch.labels[self.pc_variable], dtype=np.float32)
        else:
            pc = np.broadcast_to(np.asarray(self.fixed_pc, dtype=np.float32), (len(batch), 3))
        return torch.as_tensor(pc, device=self.device)

    def _loss(self, net: Any, batch: Any, train: bool, rng: np.random.Generator) -> tuple[Any, dict[str, float]]:
        import torch
        from diffraflow.operators.learning.rotations import (
            disorientation_deg,
            quaternion_to_matrix,
            rotation_6d_to_matrix,
            symmetry_aware_loss,
        )
        from torch.nn import functional

        x = frames_tensor(batch.frames, self.device)
        R_true = quaternion_to_matrix(torch.as_tensor(np.asarray(batch.labels[self.rotation]), dtype=torch.float32,
                                                      device=self.device))
        rot6d, scores = net(x, pc=self._pc_tensor(batch))
        R = rotation_6d_to_matrix(rot6d)                                     # (n, h, 3, 3)
        per = symmetry_aware_loss(R, R_true[:, None], self.symmetry)        # (n, h)
        best = per.detach().argmin(dim=1)
        loss = per.gather(1, best[:, None]).mean()
        if R.shape[1] > 1:
            # A little of every hypothesis' loss keeps the losers alive; the score learns which one wins.
            loss = loss + 0.05 * per.mean() + 0.1 * functional.cross_entropy(scores, best)
        with torch.no_grad():
            chosen = R[torch.arange(len(R)), scores.argmax(dim=1)]
            angle = disorientation_deg(chosen, R_true, self.symmetry)
        n = len(x)
        return loss, {"loss": float(loss.detach()) * n, "mean_deg": float(angle.sum())}

    def _evaluate(self, net: Any, ctx: JobContext) -> dict[str, float]:
        import torch
        from diffraflow.operators.learning.rotations import (
            disorientation_deg,
            quaternion_to_matrix,
            rotation_6d_to_matrix,
        )

        net.eval()
        angles = []
        with torch.no_grad():
            for batch in ctx.data.batches("holdout"):
                rot6d, scores = net(frames_tensor(batch.frames, self.device), pc=self._pc_tensor(batch))
                R = rotation_6d_to_matrix(rot6d)
                chosen = R[torch.arange(len(R)), scores.argmax(dim=1)]
                R_true = quaternion_to_matrix(torch.as_tensor(np.asarray(batch.labels[self.rotation]),
                                                              dtype=torch.float32, device=self.device))
                angles.append(disorientation_deg(chosen, R_true, self.symmetry).cpu().numpy())
        a = np.concatenate(angles) if angles else np.zeros(0)
        if not len(a):
            return {}
        return {"holdout_mean_deg": float(a.mean()), "holdout_median_deg": float(np.median(a)),
                "holdout_within_2deg": float((a <= 2.0).mean())}
