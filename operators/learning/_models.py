"""Network architectures shared by training jobs and the operators that apply their artefacts.

A model is rebuilt from the JSON **model record** its artefact stores
(``{"architecture": "pattern_cnn", "in_shape": [24, 24], ...}``), so a job
and an operator can never disagree about the network: both call
:func:`build_model`. New architectures (space-group classifiers, orientation
regressors, diffusion U-Nets) register a builder with
:func:`register_architecture`.

This module imports torch; import it lazily (inside ``setup``/``run``), so
that the operator registry and the CPU paths that do not learn never load it.

Examples
--------
>>> import torch
>>> net = build_model({"architecture": "pattern_cnn", "in_shape": [12, 10], "channels": [4], "n_classes": 3})
>>> net(torch.zeros(5, 12, 10, dtype=torch.uint8)).shape
torch.Size([5, 3])
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffraflow.schemas.errors import InputFileError
from torch import nn

__all__ = ["register_architecture", "build_model", "standardise", "PatternCNN", "ARCHITECTURES"]

#: Architecture name -> builder taking the model record.
ARCHITECTURES: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {}


def register_architecture(name: str):
    """Decorator registering a builder ``record -> nn.Module`` under ``name``.

    Examples
    --------
    >>> @register_architecture("identity_example")
    ... def _identity(record):
    ...     return nn.Identity()
    >>> type(build_model({"architecture": "identity_example"})).__name__
    'Identity'
    """
    def decorate(builder: Callable[[Mapping[str, Any]], nn.Module]):
        ARCHITECTURES[name] = builder
        return builder

    return decorate


def build_model(record: Mapping[str, Any], where: str = "model") -> nn.Module:
    """The untrained network a model record describes (weights are loaded by the caller).

    Examples
    --------
    >>> build_model({"architecture": "pattern_cnm"})
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.InputFileError: model: unknown architecture 'pattern_cnm' (fix: did you mean 'pattern_cnn'? (an artefact from a newer diffraflow needs that version))
    """
    name = record.get("architecture")
    if name not in ARCHITECTURES:
        close = difflib.get_close_matches(str(name), list(ARCHITECTURES), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(ARCHITECTURES))}"
        raise InputFileError(where, f"unknown architecture {name!r}",
                             f"{hint} (an artefact from a newer diffraflow needs that version)")
    try:
        return ARCHITECTURES[str(name)](record)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputFileError(where, f"model record of {name!r} is incomplete or invalid ({exc!r})",
                             "re-create the artefact with 'diffraflow train'") from None


def standardise(frames: torch.Tensor) -> torch.Tensor:
    """Frames ``(n, h, w)`` of any dtype as float32 with zero mean and unit variance per frame.

    Per-frame scaling makes a model independent of dose and exposure, so a
    network trained on one simulated dose applies to another.

    Examples
    --------
    >>> standardise(torch.tensor([[[0, 2], [0, 2]]])).round(decimals=4).tolist()
    [[[-1.0, 1.0], [-1.0, 1.0]]]
    """
    x = frames.to(torch.float32)
    flat = x.reshape(len(x), -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / (std + 1e-6)).reshape(x.shape)


class PatternCNN(nn.Module):
    """A small convolutional classifier of single frames.

    ``len(channels)`` blocks of a 3x3 convolution with stride 2 and ReLU halve
    the frame each time; a linear layer maps the flattened features to one
    logit per class. Frames are standardised per frame first (:func:`standardise`).

    Parameters
    ----------
    in_shape
        ``(det_y, det_x)`` the model takes.
    channels
        Output channels of each convolution block.
    n_classes
        Number of classes.

    Examples
    --------
    >>> sum(p.numel() for p in PatternCNN((24, 24), (8, 16), 2).parameters())
    2402
    """

    def __init__(self, in_shape: tuple[int, int], channels: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous, (h, w) = 1, (int(in_shape[0]), int(in_shape[1]))
        for width in channels:
            layers += [nn.Conv2d(previous, int(width), kernel_size=3, stride=2, padding=1), nn.ReLU()]
            previous, h, w = int(width), (h + 1) // 2, (w + 1) // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous * h * w, int(n_classes))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = standardise(frames).unsqueeze(1)
        return self.head(self.features(x).flatten(1))


@register_architecture("pattern_cnn")
def _pattern_cnn(record: Mapping[str, Any]) -> nn.Module:
    in_shape = tuple(int(v) for v in record["in_shape"])
    if len(in_shape) != 2 or min(in_shape) < 1:
        raise ValueError(f"in_shape {list(in_shape)} is not a frame shape")
    return PatternCNN(in_shape, tuple(int(c) for c in record["channels"]), int(record["n_classes"]))  # type: ignore[arg-type]


# The networks of the learned operators register themselves here, so build_model knows them.
from diffraflow.operators.learning import _networks  # noqa: E402,F401
