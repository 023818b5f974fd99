"""``restore_patterns``: restore short-exposure Kikuchi patterns with a trained model, as a pipeline step.

The step maps every frame to its restored pattern (a ``frames`` output of the
``restored_patterns`` product), so later steps, such as ``hough_index``,
index the restored patterns instead of the raw ones::

    steps:
      - op: restore_patterns            # the Ni model shipped with diffraflow
        params: {sampler: direct}
      - op: hough_index

The model is a ``diffraflow train`` artefact of one of the restoration jobs
(:mod:`diffraflow.flow.training.restoration`): a supervised U-Net, a
conditional diffusion U-Net, or a latent diffusion model on a pattern
autoencoder; ``model: default`` is the small Ni model shipped in the package
(:data:`DEFAULT_MODEL`). It is verified and loaded once per worker
(:meth:`RestorePatterns.setup`), and its content hash is part of the step's
identity, so a retrained file is never mistaken for the old one.

Restoration is expensive (a network per frame, several for multi-step
samplers): the engine stores the restored frames once when later passes need
them (``expensive = True``). On a GPU (``backend: torch-cuda``) the frames
stay on the device between the network calls.

Examples
--------
>>> import numpy as np, tempfile
>>> from diffraflow.operators.base import ChunkContext, InputSpec
>>> from diffraflow.operators.restoration.models import write_untrained_model
>>> op = RestorePatterns(model=write_untrained_model(tempfile.mkdtemp() + "/tiny.dfmodel"))
>>> spec = InputSpec((1, 2), (60, 60), np.dtype("uint8"))
>>> op.resolve(spec)["patterns"].product, op.result_attrs(spec)["method"]
('restored_patterns', 'diffusion (direct sampler)')
>>> frames = np.random.default_rng(0).poisson(2.0, (2, 60, 60)).astype("uint8")
>>> out = op.process(frames, ChunkContext(spec, constants=op.setup(spec, "torch-cpu")))
>>> tuple(out["patterns"].shape), str(out["patterns"].dtype)
((2, 60, 60), 'torch.float32')
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
from diffraflow.schemas.errors import PipelineError

__all__ = ["RestorePatterns", "RESTORER_KIND", "DEFAULT_MODEL", "default_model_path", "check_model_present"]

#: The artefact kind every restoration job produces (what this operator loads).
RESTORER_KIND = "pattern_restorer"
#: The model shipped with diffraflow (``model: default``).
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "ni_restorer.dfmodel"
_SAMPLERS = ("auto", "direct", "ddim", "ddpm")


def default_model_path() -> str:
    """Where the shipped default restoration model lives.

    Examples
    --------
    >>> default_model_path().endswith("ni_restorer.dfmodel")
    True
    """
    return str(DEFAULT_MODEL)


def check_model_present(model: str, where: str) -> str:
    """``model`` (``default`` resolved to the shipped model), or a one-line error if the shipped model is absent.

    A checkout in which the default model was never trained and installed
    gets an error that says how to make it, not a missing-file traceback.
    Any other path is returned as given (the artefact loader reports its own
    problems).

    Examples
    --------
    >>> check_model_present("/some/model.dfmodel", "model")
    '/some/model.dfmodel'
    """
    path = default_model_path() if model in ("default", "", None) else str(model)
    if os.path.abspath(path) == default_model_path() and not os.path.exists(path):
        raise PipelineError(where, f"the default restoration model {path} is not in this installation",
                            "train and install it with 'python bench/train_restoration_models.py default "
                            "--install', or give model: PATH of a model from 'diffraflow train'")
    return path


@register_operator
@dataclass(frozen=True)
class RestorePatterns(Operator):
    """Restore short-exposure patterns with a trained restoration model (supervised, diffusion or latent).

    Parameters
    ----------
    model
        A restoration model artefact written by ``diffraflow train``, or
        ``default`` for the Ni model shipped with diffraflow.
    sampler
        ``auto`` (the model's own choice: ``direct`` for the shipped model),
        ``direct`` (one network call: the model's estimate of the clean
        pattern), ``ddim`` (deterministic, few steps) or ``ddpm`` (ancestral,
        stochastic). Supervised models only know ``direct``.
    steps
        Network calls per frame for ``ddim``/``ddpm`` (default: 10 for ddim,
        the model's whole chain for ddpm).
    eta
        DDIM's stochasticity (0: deterministic).
    seed
        Seed of the sampling noise: frame ``i`` always draws from
        ``(seed, i)``, so results do not depend on chunking or workers.
    batch_frames
        Frames per network call (bounds the memory of the activations).

    Outputs
    -------
    patterns : frames ``(det_y, det_x)``
        float32 restored patterns, standardised per frame (zero mean, unit
        variance), background removed (product ``restored_patterns``);
        later steps see these frames.

    Notes
    -----
    Frames are standardised per frame before the network (the models are
    blind to the absolute dose); detectors whose shorter side is more than a
    quarter off the model's training frames are resampled to its pixel scale
    and back (:func:`~diffraflow.operators.restoration._restorer.working_shape`).
    A cube's ``static_background`` is not used: the models remove the
    background themselves, so a later ``hough_index`` step should be given
    ``use_static_background: false`` on cubes that carry one.
    """

    name = "restore_patterns"
    backends = ("torch-cpu", "torch-cuda")
    max_concurrency = 1  # torch already spreads one network call over every core
    expensive = True

    model: str = param("default", doc="restoration model artefact from 'diffraflow train', or 'default' (the "
                                      "shipped Ni model)", file=True)
    sampler: str = param("auto", doc="auto (the model's choice), direct (one step), ddim (few steps) or ddpm",
                         choices=_SAMPLERS)
    steps: int | None = param(None, doc="network calls per frame for ddim/ddpm (default 10 for ddim, the whole "
                                        "chain for ddpm)")
    eta: float = param(0.0, doc="DDIM stochasticity (0: deterministic)")
    seed: int = param(0, doc="seed of the sampling noise (per frame: independent of chunking)")
    batch_frames: int = param(256, doc="frames per network call")

    def __post_init__(self) -> None:
        if self.model in ("default", "", None):
            object.__setattr__(self, "model", default_model_path())
        elif isinstance(self.model, str):
            # Workers may start elsewhere: keep the path they must open absolute.
            object.__setattr__(self, "model", os.path.abspath(os.path.expanduser(self.model)))

    def _artefact(self, weights: bool) -> Any:
        from diffraflow.operators.learning.artefact import load_artefact

        return load_artefact(check_model_present(self.model, f"{self.name}.model"), kind=RESTORER_KIND,
                             weights=weights)

    def _check_params(self) -> None:
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise PipelineError(f"{self.name}.steps", f"must be a whole number of 1 or more, got {self.steps!r}",
                                "e.g. steps: 10, or leave it out")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise PipelineError(f"{self.name}.eta", f"must lie in [0, 1], got {self.eta}", "e.g. eta: 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PipelineError(f"{self.name}.seed", f"must be a whole number of 0 or more, got {self.seed!r}",
                                "e.g. seed: 0")
        if isinstance(self.batch_frames, bool) or not isinstance(self.batch_frames, int) or self.batch_frames < 1:
            raise PipelineError(f"{self.name}.batch_frames", f"must be a whole number of 1 or more, got "
                                f"{self.batch_frames!r}", "e.g. batch_frames: 256")

    def sampler_for(self, record: dict[str, Any]) -> str:
        """The sampler this step uses with a model of ``record`` (``auto`` resolved); PipelineError if unknown to it.

        Examples
        --------
        >>> RestorePatterns(model="m", sampler="ddim").sampler_for({"restorer": "supervised"})
        Traceback (most recent call last):
        ...
        diffraflow.schemas.errors.PipelineError: restore_patterns.sampler: a supervised model cannot sample with 'ddim' (fix: use sampler: direct (or auto))
        """
        from diffraflow.operators.restoration.models import samplers_of_record

        allowed = samplers_of_record(record)
        chosen = str(record.get("default_sampler") or allowed[0]) if self.sampler == "auto" else self.sampler
        if chosen not in allowed:
            raise PipelineError(f"{self.name}.sampler", f"a {record.get('restorer')} model cannot sample with "
                                f"{chosen!r}", f"use sampler: {' or '.join(allowed)} (or auto)")
        return chosen

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        self._check_params()
        if len(spec.det_shape) != 2 or min(spec.det_shape) < 4:
            raise PipelineError(self.name, f"frames must be 2-D patterns of 4 px or more, got {spec.det_shape}",
                                "restore detector frames")
        modality = (spec.attrs or {}).get("modality", "ebsd")
        if modality not in ("ebsd", "tkd"):
            raise PipelineError(self.name, f"the restoration models know Kikuchi patterns, not {modality} frames",
                                "restore EBSD or TKD scans")
        self.sampler_for(self._artefact(weights=False).model)
        return {"patterns": OutputSpec("frames", "float32", tuple(spec.det_shape), ("det_y", "det_x"),
                                       "restored pattern, standardised per frame", "restored_patterns")}

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """The product's ``method`` (restorer and sampler), the model, its hash and the sampling settings.

        Examples
        --------
        >>> import tempfile
        >>> from diffraflow.operators.restoration.models import write_untrained_model
        >>> model = write_untrained_model(tempfile.mkdtemp() + "/tiny.dfmodel")
        >>> attrs = RestorePatterns(model=model, sampler="ddim", steps=4).result_attrs(InputSpec((1, 1), (60, 60), np.dtype("uint8")))
        >>> attrs["method"], attrs["steps"]
        ('diffusion (ddim sampler, 4 steps)', 4)
        """
        art = self._artefact(weights=False)
        record = art.model
        sampler = self.sampler_for(record)
        steps = None if sampler == "direct" else self.steps
        detail = f"{sampler} sampler" + (f", {steps} steps" if steps else "")
        return {"method": f"{record.get('restorer')} ({detail})", "model": str(self.model),
                "model_sha256": art.content_hash, "sampler": sampler, "steps": steps, "eta": float(self.eta),
                "seed": int(self.seed), "output": "restored patterns standardised per frame, background removed"}

    def setup(self, spec: InputSpec, backend: str = "torch-cpu") -> Any:
        from diffraflow.operators.restoration._restorer import Restorer

        device = "cuda" if backend == "torch-cuda" else "cpu"
        restorer = Restorer.from_artefact(self._artefact(weights=True), device)
        return {"restorer": restorer, "sampler": self.sampler_for(restorer.record)}

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        restorer = ctx.constants["restorer"]
        n = len(frames)
        if ctx.scan_index is not None:
            indices = ctx.scan_index[:, 0] * ctx.spec.scan_shape[1] + ctx.scan_index[:, 1]
        else:
            indices = ctx.flat_start + np.arange(n)
        restored = restorer.restore(frames, ctx.constants["sampler"], self.steps, float(self.eta), int(self.seed),
                                    indices=indices.tolist(), batch=int(self.batch_frames))
        return {"patterns": restored}
