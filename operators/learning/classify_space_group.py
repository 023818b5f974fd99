"""``classify_space_group``: the space group of every pattern from a trained network, as a pipeline operator.

The network is a ``space_group_classifier`` artefact written by ``diffraflow
train`` with the job ``train_space_group``; by default the small classifier
that ships with diffraflow (:data:`DEFAULT_MODEL`, six cubic space groups
221, 223, 225, 227, 229 and 230, trained on simulated patterns of 28
materials; reproduced by ``bench/train_default_models.py``). It answers
"what phase is this?" without a phase list: the probabilities of each class
form the ``class_probabilities`` product, the most probable class a phase map.

Frames of any size are resized to the model's inside it, and the smooth
background is removed there too, so the operator runs on raw frames or after
background correction, on any detector.

Examples
--------
>>> import numpy as np
>>> from diffraflow.operators.base import ChunkContext, InputSpec
>>> op = ClassifySpaceGroup()                                  # the shipped model
>>> spec = InputSpec((1, 2), (60, 60), np.dtype("uint8"))
>>> op.resolve(spec)["probabilities"].extra_shape, op.result_attrs(spec)["classes"]
((6,), [221, 223, 225, 227, 229, 230])
>>> frames = np.random.default_rng(0).poisson(20, (2, 60, 60)).astype("uint8")
>>> out = op.process(frames, ChunkContext(spec, constants=op.setup(spec, "torch-cpu")))
>>> tuple(out["probabilities"].shape), [int(v) in (221, 223, 225, 227, 229, 230) for v in out["space_group"]]
((2, 6), [True, True])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
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

__all__ = ["ClassifySpaceGroup", "DEFAULT_MODEL", "SPACE_GROUP_KIND", "load_network"]

#: The artefact kind this operator applies (what ``train_space_group`` produces).
SPACE_GROUP_KIND = "space_group_classifier"
#: The classifier shipped with diffraflow.
DEFAULT_MODEL = str(Path(__file__).resolve().parent / "models" / "space_group_small_cnn.dfmodel")


def load_network(path: str, kind: str, backend: str = "torch-cpu") -> tuple[Any, Any]:
    """A verified artefact and its network, in eval mode on the backend's device.

    Examples
    --------
    >>> art, net = load_network(DEFAULT_MODEL, SPACE_GROUP_KIND)
    >>> art.kind, net.training
    ('space_group_classifier', False)
    """
    import torch
    from diffraflow.operators.learning._models import build_model

    art = load_artefact(path, kind=kind, weights=True)
    device = torch.device("cuda" if backend == "torch-cuda" else "cpu")
    net = build_model(art.model, where=str(art.path))
    try:
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in art.weights.items()}, strict=True)
    except RuntimeError as exc:
        raise PipelineError(f"{art.path}", f"weights do not fit the model record ({str(exc).splitlines()[0]})",
                            "re-create the artefact with 'diffraflow train'") from None
    return art, net.eval().to(device)


def _check_batch(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PipelineError(where, f"must be a whole number of 1 or more, got {value!r}", "e.g. batch_frames: 256")


def frames_to_tensor(frames: Any, device: Any) -> Any:
    """A chunk of frames (NumPy, CuPy or torch, any dtype) as a torch tensor on ``device`` the networks accept.

    Examples
    --------
    >>> frames_to_tensor(np.zeros((1, 2, 2), "uint16"), "cpu").dtype
    torch.float32
    """
    import torch

    if isinstance(frames, torch.Tensor):
        x = frames
    elif type(frames).__module__.startswith("cupy"):
        x = torch.as_tensor(frames, device="cuda")
    else:
        x = torch.as_tensor(np.ascontiguousarray(frames))
    if x.dtype not in (torch.uint8, torch.float32):
        x = x.to(torch.float32)  # torch has few kernels for unsigned 16/32-bit integers
    return x.to(device)


@register_operator
@dataclass(frozen=True)
class ClassifySpaceGroup(Operator):
    """Space-group probabilities of every pattern, and a phase map of the most probable group.

    Parameters
    ----------
    model
        A ``space_group_classifier`` artefact directory (``diffraflow train``
        with ``train_space_group``); default the shipped classifier. Its
        content hash is part of the operator's token.
    batch_frames
        Frames per forward pass.
    min_probability
        Points whose most probable class is below this are ``-1`` in the phase map.

    Outputs
    -------
    probabilities : nav ``(class,)``
        float32 softmax probability of each class (product ``class_probabilities``).
    space_group : nav
        int32 space-group number of the most probable class.
    phase_id : nav
        int32 index of that class in the ``phases`` attribute (``-1`` below ``min_probability``).
    confidence : nav
        float32 probability of that class.
    """

    name = "classify_space_group"
    backends = ("torch-cpu", "torch-cuda")
    max_concurrency = 1  # torch spreads one forward pass over every core already

    model: str = param(DEFAULT_MODEL, doc="space_group_classifier artefact (default: the shipped classifier)",
                       file=True)
    batch_frames: int = param(256, doc="frames per forward pass")
    min_probability: float = param(0.0, doc="phase map: -1 where the best class is less probable than this")

    def __post_init__(self) -> None:
        if isinstance(self.model, str) and self.model:
            object.__setattr__(self, "model", os.path.abspath(os.path.expanduser(self.model)))

    def _record(self) -> dict[str, Any]:
        return dict(load_artefact(self.model, kind=SPACE_GROUP_KIND, weights=False).model)

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        _check_batch(self.batch_frames, f"{self.name}.batch_frames")
        if not 0 <= self.min_probability <= 1:
            raise PipelineError(f"{self.name}.min_probability", f"must lie in [0, 1], got {self.min_probability}",
                                "e.g. min_probability: 0.5 (0 keeps every point)")
        if len(spec.det_shape) != 2 or min(spec.det_shape) < 8:
            raise PipelineError(self.name, f"frames must be 2-D and at least 8 x 8 px, got {spec.det_shape}",
                                "classify detector frames")
        k = int(self._record()["n_classes"])
        return {
            "probabilities": OutputSpec("nav", "float32", (k,), ("class",), "softmax probability of each space group",
                                        "class_probabilities"),
            "space_group": OutputSpec("nav", "int32", (), (), "space-group number of the most probable class"),
            "phase_id": OutputSpec("nav", "int32", (), (), "index of the most probable class in 'phases'; -1 "
                                   "below min_probability"),
            "confidence": OutputSpec("nav", "float32", (), (), "probability of the most probable class"),
        }

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """Class names and numbers, the phase map's ``phases``, and the model's identity.

        Examples
        --------
        >>> attrs = ClassifySpaceGroup().result_attrs(InputSpec((1, 1), (60, 60), np.dtype("uint8")))
        >>> attrs["class_names"][2], attrs["phases"][2]
        ('Fm-3m (225)', {'id': 2, 'name': 'Fm-3m (225)', 'space_group': 225})
        """
        art = load_artefact(self.model, kind=SPACE_GROUP_KIND, weights=False)
        classes = [int(c) for c in art.model.get("classes", [])]
        names = list(art.model.get("class_names", [str(c) for c in classes]))
        return {"class_names": names, "classes": classes, "label": art.model.get("label"),
                "phases": [{"id": i, "name": n, "space_group": c} for i, (n, c) in enumerate(zip(names, classes,
                                                                                            strict=True))],
                "min_probability": float(self.min_probability), "model": str(self.model),
                "model_sha256": art.content_hash}

    def setup(self, spec: InputSpec, backend: str = "torch-cpu") -> dict[str, Any]:
        import torch

        art, net = load_network(self.model, SPACE_GROUP_KIND, backend)
        device = next(net.parameters()).device
        classes = torch.as_tensor(np.asarray(art.model["classes"], dtype=np.int32), device=device)
        return {"net": net, "classes": classes, "device": device}

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        import torch

        net, classes, device = ctx.constants["net"], ctx.constants["classes"], ctx.constants["device"]
        x = frames_to_tensor(frames, device)
        parts = []
        with torch.inference_mode():
            for start in range(0, len(x), int(self.batch_frames)):
                parts.append(torch.softmax(net(x[start:start + int(self.batch_frames)]).float(), dim=1))
        probabilities = torch.cat(parts) if parts else torch.zeros((0, len(classes)), device=device)
        confidence, best = probabilities.max(dim=1)
        phase = torch.where(confidence >= float(self.min_probability), best.to(torch.int32),
                            torch.full_like(best, -1, dtype=torch.int32))
        return {"probabilities": probabilities, "space_group": classes[best], "phase_id": phase,
                "confidence": confidence}
