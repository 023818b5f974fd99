"""The built-in job ``train_pattern_classifier``: learn a per-point class from the frames.

It trains :class:`~diffraflow.operators.learning._models.PatternCNN` (a few
strided convolutions and a linear layer) with cross-entropy and Adam to
predict an integer ground-truth variable of the cube, by default the phase
id of a multi-phase simulation. Its artefact is applied by the
``classify_patterns`` operator. It is the smallest job that exercises the
whole path (labelled data, seeds, checkpoints, resume, artefact, operator);
the space-group classifiers and restoration models of later work follow the
same shape with their own architectures.

Examples
--------
>>> job = build_job("train_pattern_classifier", {"channels": [4, 8], "learning_rate": 0.01})
>>> job.variables(), job.produces
(('true_phase_id',), 'pattern_classifier')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.flow.jobs import ArtefactContent, Job, JobContext, build_job, param, register_job
from diffraflow.schemas.errors import PipelineError, SchemaError

__all__ = ["TrainPatternClassifier", "build_job"]


@register_job
@dataclass(eq=False)
class TrainPatternClassifier(Job):
    """Train a small CNN to predict an integer per-point variable (phase id, grain id) from each frame.

    Parameters
    ----------
    label
        The ground-truth variable: one whole number per scan point.
    channels
        Output channels of each stride-2 convolution block (each halves the frame).
    learning_rate
        Adam's step size.
    weight_decay
        Adam's L2 penalty.

    Notes
    -----
    Classes are the distinct values of ``label`` in the data, in increasing
    order; with ``true_phase_id`` their names are the cube's phase names. Each
    epoch logs ``train_loss`` and ``train_accuracy`` (over the epoch's
    batches, as trained) and, with a hold-out split, ``holdout_loss`` and
    ``holdout_accuracy`` (after the epoch).
    """

    name = "train_pattern_classifier"
    produces = "pattern_classifier"

    label: str = param("true_phase_id", doc="ground-truth variable to learn: one whole number per scan point")
    channels: list[int] = param([8, 16], doc="channels of each stride-2 convolution block")
    learning_rate: float = param(3e-3, doc="Adam learning rate")
    weight_decay: float = param(0.0, doc="Adam weight decay (L2 penalty)")

    def validate(self, where: str) -> None:
        if not self.channels or any(isinstance(c, bool) or int(c) < 1 for c in self.channels):
            raise PipelineError(f"{where}.channels", f"must be a non-empty list of positive whole numbers, got "
                                f"{self.channels!r}", "e.g. channels: [8, 16]")
        if not self.learning_rate > 0:
            raise PipelineError(f"{where}.learning_rate", f"must be positive, got {self.learning_rate}",
                                "e.g. learning_rate: 0.003")
        if self.weight_decay < 0:
            raise PipelineError(f"{where}.weight_decay", f"must be 0 or more, got {self.weight_decay}",
                                "e.g. weight_decay: 0")

    def variables(self) -> tuple[str, ...]:
        return (self.label,)

    def check(self, data: Any) -> None:
        info = data.variables[self.label]
        if info.per_frame_shape or info.dtype.kind not in "iub":
            raise SchemaError(f"{data.where}: {self.label}", f"is {info.dtype} of shape {list(info.per_frame_shape)} "
                              "per point; a class label is one whole number per point",
                              "choose an integer variable such as true_phase_id or grain_id")
        min_side = 2 ** len(self.channels)
        if min(data.spec.det_shape) < min_side:
            raise SchemaError(f"{data.where}: patterns", f"frames of {list(data.spec.det_shape)} px are too small "
                              f"for {len(self.channels)} stride-2 blocks (each halves them)",
                              "give fewer 'channels' entries, or train on larger frames")

    def _class_names(self, data: Any, classes: np.ndarray) -> list[str]:
        phases = (data.spec.attrs or {}).get("phases") or []
        names = {int(p["id"]): str(p["name"]) for p in phases if isinstance(p, dict) and "id" in p and "name" in p}
        if self.label == "true_phase_id" and all(int(c) in names for c in classes):
            return [names[int(c)] for c in classes]
        return [f"{self.label}={int(c)}" for c in classes]

    def setup(self, ctx: JobContext) -> None:
        import torch
        from diffraflow.operators.learning._models import build_model

        values = ctx.data.label_values(self.label)
        self.classes = np.unique(values.reshape(-1)).astype(np.int64)
        if len(self.classes) < 2:
            raise SchemaError(f"{ctx.data.where}: {self.label}", f"holds one class only ({self.classes.tolist()})",
                              "train on a scan with two or more classes (e.g. simulate --phase ni fe)")
        self.class_names = self._class_names(ctx.data, self.classes)
        self.record = {"architecture": "pattern_cnn", "in_shape": list(ctx.data.spec.det_shape),
                       "channels": [int(c) for c in self.channels], "n_classes": len(self.classes),
                       "label": self.label, "classes": self.classes.tolist(), "class_names": self.class_names,
                       "input": "frames, standardised per frame inside the model"}
        self.device = torch.device(ctx.device)
        self.model = build_model(self.record).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=float(self.learning_rate),
                                          weight_decay=float(self.weight_decay))

    def _targets(self, values: np.ndarray) -> Any:
        import torch

        index = np.searchsorted(self.classes, values.astype(np.int64))
        return torch.as_tensor(index, dtype=torch.long, device=self.device)

    def run_epoch(self, ctx: JobContext, epoch: int) -> dict[str, Any]:
        import torch
        from torch.nn import functional

        self.model.train()
        total, loss_sum, correct = 0, 0.0, 0
        for batch in ctx.data.batches("train", epoch):
            x = torch.as_tensor(batch.frames, device=self.device)
            y = self._targets(batch.labels[self.label])
            logits = self.model(x)
            loss = functional.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            n = len(batch)
            total += n
            loss_sum += float(loss.detach()) * n
            correct += int((logits.detach().argmax(dim=1) == y).sum())
            ctx.advance(n)
        metrics = {"train_loss": loss_sum / max(total, 1), "train_accuracy": correct / max(total, 1)}
        if ctx.data.counts()["holdout"]:
            metrics.update(self.evaluate(ctx, "holdout"))
        return metrics

    def evaluate(self, ctx: JobContext, split: str = "holdout") -> dict[str, float]:
        """Mean loss and accuracy on a split, without training."""
        import torch
        from torch.nn import functional

        self.model.eval()
        total, loss_sum, correct = 0, 0.0, 0
        with torch.no_grad():
            for batch in ctx.data.batches(split):
                y = self._targets(batch.labels[self.label])
                logits = self.model(torch.as_tensor(batch.frames, device=self.device))
                loss_sum += float(functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(dim=1) == y).sum())
                total += len(batch)
        return {f"{split}_loss": loss_sum / max(total, 1), f"{split}_accuracy": correct / max(total, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Any) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def artefact(self) -> ArtefactContent:
        weights = {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}
        return ArtefactContent(weights=weights, model=self.record)
