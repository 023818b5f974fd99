"""Restoration models as artefacts: what a model record may say, and loading one (torch imported lazily).

Importing this module never imports torch (the operator registry imports
every operator module); ``Restorer`` (an attribute resolved on first use:
:class:`diffraflow.operators.restoration._restorer.Restorer`) and
:func:`load_restorer` import it when they are needed.

Model record (``artefact.json`` ``model``) of a restorer:

``restorer``
    ``supervised``, ``diffusion`` or ``latent_diffusion``.
``channels``, ``attention``, ``patch``
    The U-Net (:class:`~diffraflow.operators.restoration._unet.ConditionalUNet`).
``schedule``, ``prediction``, ``default_sampler``
    The diffusion (``{"kind": "linear"|"cosine", "timesteps": T}``; ``v``,
    ``eps`` or ``x0``; the sampler ``auto`` means).
``autoencoder``
    For a latent model, the autoencoder's record (channels, latent channels,
    ``latent_std``); its weights are stored under ``autoencoder.``.
``frame_shape``
    The training frames' shape (the pixel scale the model knows).

Examples
--------
>>> samplers_of_record({"restorer": "diffusion", "prediction": "v"})
('direct', 'ddim', 'ddpm')
>>> import tempfile
>>> path = write_untrained_model(tempfile.mkdtemp() + "/tiny.dfmodel")
>>> load_restorer(path).restore(np.zeros((2, 24, 24), "uint8")).shape
torch.Size([2, 24, 24])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["RESTORERS", "SAMPLERS", "TINY_RECORD", "samplers_of_record", "load_restorer", "write_untrained_model",
           "loadable_weights"]

#: The kinds of restorer a model record may name.
RESTORERS = ("supervised", "diffusion", "latent_diffusion")
#: Every sampler, the production one first.
SAMPLERS = ("direct", "ddim", "ddpm")
#: The model record :func:`write_untrained_model` starts from: a tiny diffusion U-Net on 24 x 24 frames.
TINY_RECORD: dict[str, Any] = {
    "architecture": "pattern_restorer", "restorer": "diffusion", "channels": [4, 8], "attention": True, "patch": 1,
    "radon": 2, "frame_shape": [24, 24], "prediction": "v", "default_sampler": "direct",
    "schedule": {"kind": "linear", "timesteps": 30},
}


def samplers_of_record(record: Mapping[str, Any]) -> tuple[str, ...]:
    """Samplers a model supports: ``direct`` only for a supervised model, all three for a diffusion model.

    An ``eps``-predicting diffusion model has no one-step sampler: at the last
    time its input is pure noise and the noise it predicts says nothing about
    the pattern.

    Examples
    --------
    >>> samplers_of_record({"restorer": "supervised"}), samplers_of_record({"restorer": "diffusion", "prediction": "eps"})
    (('direct',), ('ddim', 'ddpm'))
    """
    if record.get("restorer") == "supervised":
        return ("direct",)
    if record.get("prediction") == "eps":
        return ("ddim", "ddpm")
    return SAMPLERS


def load_restorer(path: str, device: str = "cpu") -> Any:
    """A :class:`Restorer` from a restoration artefact (verified: hashes, safetensors, kind).

    ``default`` names the model shipped with diffraflow; when a checkout
    lacks it, the error says how to make it.

    Examples
    --------
    >>> import tempfile
    >>> load_restorer(write_untrained_model(tempfile.mkdtemp() + "/m.dfmodel")).kind
    'diffusion'
    """
    from diffraflow.operators.learning.artefact import load_artefact
    from diffraflow.operators.restoration._restorer import Restorer as _Restorer
    from diffraflow.operators.restoration.restore_patterns import RESTORER_KIND, check_model_present

    path = check_model_present(path, "model")
    return _Restorer.from_artefact(load_artefact(path, kind=RESTORER_KIND), device)


def write_untrained_model(path: str | os.PathLike, record: Mapping[str, Any] | None = None, seed: int = 0) -> str:
    """Write a restoration artefact with seeded random weights; returns its path.

    For tests, examples and shape checks: the artefact loads and runs like a
    trained one (``restore_patterns``, :func:`load_restorer`) but restores
    nothing. ``record`` entries override :data:`TINY_RECORD`.

    Examples
    --------
    >>> import tempfile
    >>> path = write_untrained_model(tempfile.mkdtemp() + "/m.dfmodel", {"restorer": "supervised"})
    >>> load_restorer(path).kind
    'supervised'
    """
    import torch
    from diffraflow.operators.learning.artefact import write_artefact
    from diffraflow.operators.restoration._restorer import Restorer as _Restorer
    from diffraflow.operators.restoration.restore_patterns import RESTORER_KIND

    full = {**TINY_RECORD, **(record or {})}
    with torch.random.fork_rng(devices=[]):  # seeded weights without disturbing the caller's generator
        torch.manual_seed(int(seed))
        net = _Restorer.untrained(full).net
    weights = loadable_weights({f"net.{k}": v.numpy() for k, v in net.state_dict().items()})
    write_artefact(path, kind=RESTORER_KIND, job="untrained", weights=weights, model=full,
                   config={"untrained": True, "seed": int(seed)}, data={}, training={}, metrics=[])
    return os.fspath(path)


def loadable_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``weights``, plus a tiny ``header_pad`` tensor when the artefact loader would mistake the file for a pickle.

    :func:`~diffraflow.operators.learning.artefact.check_safetensors` refuses
    a file whose first byte is ``0x80`` (a pickle's protocol byte) or whose
    first two bytes are ``PK`` (a zip) before it looks at the safetensors
    structure, but those bytes are the low bytes of a safetensors header's
    length: about one weights file in 32 would be refused. A padding tensor
    changes the header's length; loaders read only the ``net.``/``autoencoder.``
    tensors, so it is never used.

    Examples
    --------
    >>> sorted(loadable_weights({"w": np.zeros(2, "float32")}))
    ['w']
    """
    from safetensors.numpy import save

    out = dict(weights)
    for size in range(1, 65):
        head = save(out)[:8]
        if head[:1] != b"\x80" and head[:2] != b"PK":
            return out
        out["header_pad"] = np.zeros(size, np.uint8)
    return out


def __getattr__(name: str) -> Any:
    if name == "Restorer":
        from diffraflow.operators.restoration._restorer import Restorer

        return Restorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
