"""A loaded restoration model and the one function every caller uses: :meth:`Restorer.restore`.

The model record (``artefact.json`` ``model``) says which restorer it is:

``supervised``
    a :class:`~diffraflow.operators.restoration._unet.ConditionalUNet` from
    the short-exposure pattern to the clean one (MSE): one call per batch.
``diffusion``
    the same U-Net as a conditional diffusion denoiser on ``[x_t, condition]``;
    sampled with ``direct`` (one step), ``ddim`` or ``ddpm``
    (:func:`~diffraflow.operators.restoration._diffusion.sample`).
``latent_diffusion``
    a diffusion denoiser on the latent grid of a
    :class:`~diffraflow.operators.restoration._unet.PatternAutoencoder`
    (whose weights the artefact carries under ``autoencoder.``), conditioned on
    the short exposure folded into channels; the decoder maps the sampled
    latent back to a pattern.

Frames in, in any dtype, are standardised per frame (zero mean, unit
variance): the models are blind to the absolute dose. Patterns out are the
restored clean patterns, standardised the same way, float32.

Detector size: a model learns Kikuchi bands at the pixel scale of its
training frames. Frames whose shorter side differs from the training
frames' by more than a quarter are resampled to that scale first (area
averaging when shrinking: binning adds counts exactly as a smaller camera
would) and the restored pattern is resampled back to the frame size.

Examples
--------
>>> import numpy as np, torch
>>> r = Restorer.untrained({"restorer": "supervised", "channels": [4, 8], "frame_shape": [16, 16]})
>>> r.restore(np.zeros((3, 16, 20), "uint8")).shape
torch.Size([3, 16, 20])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from diffraflow.operators.learning._models import build_model, register_architecture, standardise
from diffraflow.operators.restoration._diffusion import FrameNoise, NoiseSchedule, sample
from diffraflow.operators.restoration._unet import (
    PatternAutoencoder,
    pad_to_multiple,
    space_to_depth,
)
from diffraflow.operators.restoration.models import RESTORERS, samplers_of_record
from diffraflow.schemas.errors import InputFileError, PipelineError
from torch.nn import functional

__all__ = ["Restorer", "unet_record", "working_shape", "resample"]
# Within this factor of the training scale, frames are restored as they are.
_SCALE_TOLERANCE = 1.25


def unet_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The U-Net's own record (for :func:`~diffraflow.operators.learning._models.build_model`) from a restorer's.

    Examples
    --------
    >>> unet_record({"restorer": "diffusion", "channels": [8, 16]})["in_channels"]
    2
    """
    kind = record["restorer"]
    if kind == "latent_diffusion":
        ae = record["autoencoder"]
        factor = 2 ** len(ae["autoencoder_channels"])
        latent = int(ae["latent_channels"])
        in_channels, out_channels = latent + factor * factor, latent
    else:
        in_channels, out_channels = (2 if kind == "diffusion" else 1), 1
    return {"architecture": "restoration_unet", "in_channels": in_channels, "out_channels": out_channels,
            "channels": [int(c) for c in record["channels"]], "attention": bool(record.get("attention", True)),
            "time_embedding": kind != "supervised", "patch": int(record.get("patch", 1)),
            "radon": 0 if kind == "latent_diffusion" else int(record.get("radon", 0))}


@register_architecture("pattern_restorer")
def _restorer_network(record: Mapping[str, Any]) -> torch.nn.Module:
    return build_model(unet_record(record))


def working_shape(frame_shape: Sequence[int], training_shape: Sequence[int]) -> tuple[int, int]:
    """The shape frames are restored at: their own, or rescaled to the training frames' pixel scale.

    Examples
    --------
    >>> working_shape((60, 80), (60, 60)), working_shape((120, 160), (60, 60)), working_shape((40, 40), (60, 60))
    ((60, 80), (60, 80), (60, 60))
    """
    h, w = int(frame_shape[0]), int(frame_shape[1])
    scale = min(h, w) / float(min(int(v) for v in training_shape))
    if 1 / _SCALE_TOLERANCE <= scale <= _SCALE_TOLERANCE:
        return h, w
    return max(2, int(round(h / scale))), max(2, int(round(w / scale)))


def resample(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Frames ``(n, c, h, w)`` resized to ``shape``: area averaging when shrinking, bilinear when growing.

    Examples
    --------
    >>> resample(torch.ones(1, 1, 8, 8), (4, 4)).shape
    torch.Size([1, 1, 4, 4])
    """
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    if shape[0] <= x.shape[-2] and shape[1] <= x.shape[-1]:
        return functional.interpolate(x, size=shape, mode="area")
    return functional.interpolate(x, size=shape, mode="bilinear", align_corners=False)


class Restorer:
    """Networks of one restoration model on one device, ready to restore batches of frames.

    Parameters
    ----------
    record
        The artefact's model record.
    weights
        Tensor name -> array: ``net.*`` (the U-Net) and, for a latent model, ``autoencoder.*``.
    device
        A torch device.
    where
        Name used in error messages (the artefact path).
    """

    def __init__(self, record: Mapping[str, Any], weights: Mapping[str, Any] | None, device: Any = "cpu",
                 where: str = "model") -> None:
        self.record = dict(record)
        self.where = where
        self.kind = self.record.get("restorer")
        if self.kind not in RESTORERS:
            raise InputFileError(where, f"unknown restorer {self.kind!r}", f"use one of {', '.join(RESTORERS)} "
                                 "(an artefact from a newer diffraflow needs that version)")
        self.device = torch.device(device)
        self.net = build_model(unet_record(self.record), where=where)
        self.autoencoder: PatternAutoencoder | None = None
        if self.kind == "latent_diffusion":
            ae_record = {"architecture": "pattern_autoencoder", **self.record["autoencoder"]}
            self.autoencoder = build_model(ae_record, where=where)  # type: ignore[assignment]
        if weights is not None:
            self._load(weights)
        self.net.eval().to(self.device)
        if self.autoencoder is not None:
            self.autoencoder.eval().to(self.device)
        self.schedule = NoiseSchedule.from_record(self.record["schedule"]) if self.kind != "supervised" else None
        self.training_shape = tuple(int(v) for v in self.record.get("frame_shape", (60, 60)))

    @classmethod
    def untrained(cls, record: Mapping[str, Any], device: Any = "cpu") -> Restorer:
        """A restorer with freshly initialised weights (tests, shape checks).

        Examples
        --------
        >>> Restorer.untrained({"restorer": "diffusion", "channels": [4], "schedule": {"kind": "linear",
        ...                     "timesteps": 10}}).kind
        'diffusion'
        """
        return cls(record, None, device)

    @classmethod
    def from_artefact(cls, art: Any, device: Any = "cpu") -> Restorer:
        """Build from a loaded :class:`~diffraflow.operators.learning.artefact.Artefact`."""
        return cls(art.model, art.weights, device, where=str(art.path))

    def _load(self, weights: Mapping[str, Any]) -> None:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.items()
                    if k.startswith(prefix)}

        try:
            self.net.load_state_dict(part("net."), strict=True)
            if self.autoencoder is not None:
                self.autoencoder.load_state_dict(part("autoencoder."), strict=True)
        except RuntimeError as exc:
            raise PipelineError(self.where, f"weights do not fit the model record ({str(exc).splitlines()[0]})",
                                "re-create the artefact with 'diffraflow train'") from None

    # -- restoration ------------------------------------------------------------------------------
    def default_sampler(self) -> str:
        """The sampler used when none is asked for: the model's recorded choice, else ``direct``."""
        return str(self.record.get("default_sampler") or samplers_of_record(self.record)[0])

    def check_sampler(self, sampler: str, where: str) -> str:
        """The sampler to use for ``sampler`` (``auto`` -> the default); PipelineError if the model lacks it."""
        chosen = self.default_sampler() if sampler == "auto" else sampler
        allowed = samplers_of_record(self.record)
        if chosen not in allowed:
            raise PipelineError(where, f"a {self.kind} model ({self.where}) cannot sample with {chosen!r}",
                                f"use sampler: {' or '.join(allowed)}")
        return chosen

    def restore(self, frames: Any, sampler: str = "auto", steps: int | None = None, eta: float = 0.0,
                seed: int = 0, indices: Sequence[int] | None = None, batch: int = 256) -> torch.Tensor:
        """Restored patterns ``(n, h, w)`` float32 (standardised) of short exposures ``(n, h, w)``.

        Parameters
        ----------
        frames
            NumPy array or torch tensor of any real dtype.
        sampler, steps, eta
            See :func:`~diffraflow.operators.restoration._diffusion.sample` (ignored by supervised models).
        seed, indices
            The noise of frame ``indices[i]`` comes from ``(seed, indices[i])``
            (default indices ``0..n-1``): a frame restores the same whatever its batch.
        batch
            Frames per network call.
        """
        sampler = self.check_sampler(sampler, "sampler")
        x = frames if isinstance(frames, torch.Tensor) else torch.as_tensor(np.asarray(frames, dtype=np.float32))
        x = x.to(self.device, torch.float32)
        n, h, w = (int(v) for v in x.shape)
        if indices is None:
            indices = range(n)
        indices = [int(i) for i in indices]
        work = working_shape((h, w), self.training_shape)
        out = torch.empty((n, h, w), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for start in range(0, n, int(batch)):
                stop = min(n, start + int(batch))
                cond = resample(x[start:stop, None], work)
                cond = standardise(cond[:, 0])[:, None]
                y = self._restore_batch(cond, sampler, steps, eta, seed, indices[start:stop])
                y = resample(y, (h, w))
                out[start:stop] = standardise(y[:, 0])
        return out

    def _restore_batch(self, cond: torch.Tensor, sampler: str, steps: int | None, eta: float, seed: int,
                       indices: Sequence[int]) -> torch.Tensor:
        if self.kind == "supervised":
            return self.net(cond)
        assert self.schedule is not None
        prediction = str(self.record.get("prediction", "v"))
        clip = self.record.get("clip")
        if self.kind == "diffusion":
            def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.net(torch.cat([x_t, cond], dim=1), t)

            noise = FrameNoise(seed, indices, tuple(cond.shape[1:]), self.device)
            return sample(model, self.schedule, prediction, noise, sampler, steps, eta,
                          None if clip is None else float(clip))
        ae = self.autoencoder
        assert ae is not None
        size = (int(cond.shape[-2]), int(cond.shape[-1]))
        padded, _ = pad_to_multiple(cond, ae.factor)
        folded = space_to_depth(padded, ae.factor)
        scale = float(self.record["autoencoder"].get("latent_std", 1.0))

        def latent_model(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net(torch.cat([z_t, folded], dim=1), t)

        shape = (ae.latent_channels, *ae.latent_shape(size))
        z0 = sample(latent_model, self.schedule, prediction, FrameNoise(seed, indices, shape, self.device), sampler,
                    steps, eta, None)
        return ae.decode(z0 * scale, size)
