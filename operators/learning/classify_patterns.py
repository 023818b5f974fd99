"""Apply a trained pattern classifier (a ``diffraflow train`` artefact) to every frame."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import (
    ChunkContext,
    InputSpec,
    Operator,
    OutputSpec,
    param,
    register_operator,
)
from diffraflow.operators.learning.artefact import load_artefact
from diffraflow.schemas.errors import PipelineError

__all__ = ["ClassifyPatterns", "CLASSIFIER_KIND"]

#: The artefact kind this operator applies (what ``train_pattern_classifier`` produces).
CLASSIFIER_KIND = "pattern_classifier"


@register_operator
@dataclass(frozen=True)
class ClassifyPatterns(Operator):
    """Class probabilities of every frame from a trained classifier artefact.

    Parameters
    ----------
    model
        The artefact directory written by ``diffraflow train`` with the job
        ``train_pattern_classifier``. Its content hash is part of the
        operator's token, so a retrained model is never confused with the old one.
    batch_frames
        Frames per forward pass (bounds the memory of the activations).

    Outputs
    -------
    probabilities : nav ``(class,)``
        float32 softmax probability of each class (product ``class_probabilities``).
    class_id : nav
        int32 most probable class, as a value of the label the model learned
        (e.g. the phase id).
    confidence : nav
        float32 probability of that class.

    Notes
    -----
    The artefact is verified (format version, SHA-256 of every file, weights
    in safetensors) and loaded once per worker in :meth:`setup`; frames are
    standardised per frame inside the model, as in training.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from diffraflow.flow.jobs import run_job
    >>> frames = np.random.default_rng(0).poisson(5, (4, 4, 8, 8)).astype("uint8")
    >>> truth = (np.arange(16).reshape(4, 4) % 2).astype("int32")
    >>> frames[truth == 1, :4] += 30
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "c.dfmodel"
    >>> _ = run_job({"training": 1, "job": "train_pattern_classifier", "epochs": 3, "data": {"batch_size": 4},
    ...              "params": {"channels": [4]}}, out, source=frames, labels={"true_phase_id": truth},
    ...             progress=False)
    >>> op = ClassifyPatterns(model=str(out))
    >>> spec = InputSpec((4, 4), (8, 8), np.dtype("uint8"))
    >>> op.resolve(spec)["probabilities"].extra_shape
    (2,)
    >>> result = op.process(frames.reshape(16, 8, 8), ChunkContext(spec, constants=op.setup(spec, "torch-cpu")))
    >>> tuple(result["class_id"].shape), round(float(result["probabilities"].sum(dim=1).mean()), 5)
    ((16,), 1.0)
    """

    name = "classify_patterns"
    backends = ("torch-cpu", "torch-cuda")
    max_concurrency = 1  # torch already spreads one forward pass over every core

    model: str = param(doc="model artefact directory written by 'diffraflow train' (a pattern classifier)",
                       file=True)
    batch_frames: int = param(256, doc="frames per forward pass")

    def __post_init__(self) -> None:
        if isinstance(self.model, str) and self.model:
            # Workers may start elsewhere: keep the path they must open absolute.
            object.__setattr__(self, "model", os.path.abspath(os.path.expanduser(self.model)))

    def _artefact(self, weights: bool):
        return load_artefact(self.model, kind=CLASSIFIER_KIND, weights=weights)

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        if isinstance(self.batch_frames, bool) or not isinstance(self.batch_frames, int) or self.batch_frames < 1:
            raise PipelineError(f"{self.name}.batch_frames", f"must be a whole number of 1 or more, got "
                                f"{self.batch_frames!r}", "e.g. batch_frames: 256")
        record = self._artefact(weights=False).model
        expected = tuple(int(v) for v in record.get("in_shape", ()))
        if expected != tuple(spec.det_shape):
            raise PipelineError(f"{self.name}.model", f"the model takes {' x '.join(map(str, expected))} frames, "
                                f"this step sees {spec.det_shape[0]} x {spec.det_shape[1]}",
                                "bin the patterns to the model's frame size in an earlier step, or train a model "
                                "on frames of this size")
        k = int(record["n_classes"])
        return {
            "probabilities": OutputSpec("nav", "float32", (k,), ("class",), "softmax probability of each class",
                                        "class_probabilities"),
            "class_id": OutputSpec("nav", "int32", (), (), f"most probable class (a value of {record.get('label')})"),
            "confidence": OutputSpec("nav", "float32", (), (), "probability of the most probable class"),
        }

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        art = self._artefact(weights=False)
        return {"class_names": list(art.model.get("class_names", [])), "classes": list(art.model.get("classes", [])),
                "label": art.model.get("label"), "model": str(self.model), "model_sha256": art.content_hash}

    def setup(self, spec: InputSpec, backend: str = "torch-cpu") -> Any:
        import torch
        from diffraflow.operators.learning._models import build_model

        art = self._artefact(weights=True)
        device = torch.device("cuda" if backend == "torch-cuda" else "cpu")
        net = build_model(art.model, where=str(art.path))
        try:
            net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in art.weights.items()}, strict=True)
        except RuntimeError as exc:
            raise PipelineError(f"{art.path}", f"weights do not fit the model record ({str(exc).splitlines()[0]})",
                                "re-create the artefact with 'diffraflow train'") from None
        net.eval().to(device)
        classes = torch.as_tensor(np.asarray(art.model["classes"], dtype=np.int32), device=device)
        return {"net": net, "classes": classes, "device": device}

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        import torch

        net, classes, device = ctx.constants["net"], ctx.constants["classes"], ctx.constants["device"]
        x = torch.as_tensor(frames).to(device)
        parts = []
        with torch.inference_mode():
            for start in range(0, len(x), int(self.batch_frames)):
                parts.append(torch.softmax(net(x[start:start + int(self.batch_frames)]), dim=1))
        k = len(classes)
        probabilities = torch.cat(parts) if parts else torch.zeros((0, k), device=device)
        confidence, best = probabilities.max(dim=1)
        return {"probabilities": probabilities.to(torch.float32), "class_id": classes[best],
                "confidence": confidence.to(torch.float32)}
