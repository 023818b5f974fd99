"""Short exposures made from clean patterns: the random degradations a restorer is trained to undo.

A restorer learns pairs (short exposure, clean pattern). Simulated scans give
clean Kikuchi patterns; :class:`Degradation` turns each into a fresh
low-dose frame every time it is drawn, so a training set of clean patterns
yields an unlimited stream of pairs across doses, backgrounds and camera
responses. Per pattern, with the clean pattern :math:`K` scaled to
``[0, 1]``:

.. math::

    I = g\\,K^{\\gamma} + s\\,\\overline{g K^{\\gamma}}\\,B, \\qquad
    \\text{counts} = \\max\\bigl(0, \\mathrm{round}(\\mathrm{Poisson}(D\\, I / \\bar I)
    + \\mathcal N(0, r^2))\\bigr)

with a smooth background :math:`B` (a broad Gaussian hump, peak 1, its
centre and widths drawn per pattern) of strength :math:`s` relative to the
mean signal, a smooth multiplicative gain :math:`g = 1 - a + a\\,B'` (phosphor
and vignetting, depth :math:`a`), a contrast exponent :math:`\\gamma`, dose
:math:`D` (mean counts per pixel, drawn log-uniformly so the hardest low doses
are well represented) and read noise :math:`r`. The *target* is the clean
pattern itself: restored patterns carry no background, which is what Hough
indexing wants.

Pure NumPy; every draw comes from the generator it is given.

Examples
--------
>>> import numpy as np
>>> clean = np.random.default_rng(0).random((4, 20, 30)).astype("float32")
>>> noisy, info = Degradation(dose=(2.0, 2.0)).apply(clean, np.random.default_rng(1))
>>> noisy.shape, noisy.dtype.name, round(float(noisy.mean()), 0), info["dose"].tolist()
((4, 20, 30), 'float32', 2.0, [2.0, 2.0, 2.0, 2.0])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from diffraflow.schemas.errors import PipelineError

__all__ = ["Degradation", "unit_range", "smooth_humps"]


def unit_range(frames: np.ndarray) -> np.ndarray:
    """Each frame scaled to ``[0, 1]`` (a constant frame becomes zeros), float32.

    Examples
    --------
    >>> unit_range(np.array([[[2.0, 4.0]], [[3.0, 3.0]]])).tolist()
    [[[0.0, 1.0]], [[0.0, 0.0]]]
    """
    x = np.asarray(frames, dtype=np.float32)
    flat = x.reshape(len(x), -1)
    lo = flat.min(axis=1)[:, None, None]
    span = flat.max(axis=1)[:, None, None] - lo
    return ((x - lo) / np.where(span > 0, span, 1.0)).astype(np.float32)


def smooth_humps(n: int, shape: tuple[int, int], rng: np.random.Generator, width: tuple[float, float] = (0.4, 1.2),
                 centre_y: tuple[float, float] = (0.0, 0.8)) -> np.ndarray:
    """``n`` broad Gaussian humps, peak 1, with random centres and widths (fractions of the frame).

    Examples
    --------
    >>> h = smooth_humps(3, (10, 12), np.random.default_rng(0))
    >>> h.shape, bool(h.max() <= 1.0 and h.min() > 0)
    ((3, 10, 12), True)
    """
    hgt, wid = int(shape[0]), int(shape[1])
    cy = rng.uniform(*centre_y, n) * hgt
    cx = rng.uniform(0.2, 0.8, n) * wid
    sy = rng.uniform(*width, n) * hgt
    sx = rng.uniform(*width, n) * wid
    y = (np.arange(hgt, dtype=np.float32)[None, :] - cy[:, None]) / sy[:, None]
    x = (np.arange(wid, dtype=np.float32)[None, :] - cx[:, None]) / sx[:, None]
    return np.exp(-0.5 * (y[:, :, None] ** 2 + x[:, None, :] ** 2)).astype(np.float32)


@dataclass(frozen=True)
class Degradation:
    """Ranges the degradations are drawn from, uniformly unless said otherwise.

    Attributes
    ----------
    dose
        Mean counts per pixel, log-uniform.
    background
        Strength :math:`s` of the smooth background relative to the mean signal.
    gain
        Depth :math:`a` of the smooth multiplicative gain.
    gamma
        Contrast exponent, log-uniform.
    read_noise
        Gaussian read noise, counts (standard deviation).

    Examples
    --------
    >>> Degradation(dose=(4.0, 1.0)).check("params.degradation")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: params.degradation.dose: range [4.0, 1.0] is reversed (fix: give [low, high] with low <= high)
    """

    dose: tuple[float, float] = (0.7, 30.0)
    background: tuple[float, float] = (0.0, 3.0)
    gain: tuple[float, float] = (0.0, 0.7)
    gamma: tuple[float, float] = (0.8, 1.25)
    read_noise: tuple[float, float] = (0.0, 1.5)

    @classmethod
    def from_record(cls, record: dict[str, Any] | None, where: str) -> Degradation:
        """Build from a mapping of ``name: [low, high]`` (missing names keep their defaults), checked.

        Examples
        --------
        >>> Degradation.from_record({"dose": [1, 2]}, "params.degradation").dose
        (1.0, 2.0)
        >>> Degradation.from_record({"dos": [1, 2]}, "params.degradation")
        Traceback (most recent call last):
        ...
        diffraflow.schemas.errors.PipelineError: params.degradation: unknown range 'dos' (fix: use dose, background, gain, gamma, read_noise)
        """
        record = dict(record or {})
        names = [f for f in asdict(cls())]
        values: dict[str, tuple[float, float]] = {}
        for key, value in record.items():
            if key not in names:
                raise PipelineError(where, f"unknown range {key!r}", f"use {', '.join(names)}")
            ok = isinstance(value, list | tuple) and len(value) == 2 and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            if not ok:
                raise PipelineError(f"{where}.{key}", f"must be two numbers [low, high], got {value!r}",
                                    f"e.g. {key}: [{', '.join(str(v) for v in getattr(cls(), key))}]")
            values[key] = (float(value[0]), float(value[1]))
        out = cls(**values)
        out.check(where)
        return out

    def check(self, where: str) -> None:
        """Raise PipelineError for a reversed, non-finite or impossible range."""
        for name, (low, high) in asdict(self).items():
            if not (math.isfinite(low) and math.isfinite(high)):
                raise PipelineError(f"{where}.{name}", f"range [{low}, {high}] is not finite", "give two numbers")
            if low > high:
                raise PipelineError(f"{where}.{name}", f"range [{low}, {high}] is reversed",
                                    "give [low, high] with low <= high")
            if low < 0:
                raise PipelineError(f"{where}.{name}", f"range [{low}, {high}] goes below 0",
                                    "give values of 0 or more")
        if self.dose[0] <= 0 or self.gamma[0] <= 0:
            raise PipelineError(f"{where}.{'dose' if self.dose[0] <= 0 else 'gamma'}",
                                "must be positive", "e.g. dose: [0.7, 30]")
        if self.gain[1] > 1:
            raise PipelineError(f"{where}.gain", f"depth {self.gain[1]} exceeds 1 (the gain would go negative)",
                                "keep gain within [0, 1]")

    def record(self) -> dict[str, list[float]]:
        """JSON-friendly ranges.

        Examples
        --------
        >>> Degradation().record()["dose"]
        [0.7, 30.0]
        """
        return {k: [float(v) for v in value] for k, value in asdict(self).items()}

    def apply(self, clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Fresh short exposures of ``clean`` ``(n, h, w)``: float32 counts, and the drawn parameters.

        Parameters
        ----------
        clean
            Clean patterns (any scale; each is mapped to ``[0, 1]`` first).
        rng
            The generator every draw comes from.

        Returns
        -------
        noisy : numpy.ndarray
            ``(n, h, w)`` float32 whole counts.
        info : dict
            ``dose``, ``background``, ``gain``, ``gamma``, ``read_noise`` per pattern.
        """
        k = unit_range(clean)
        n, h, w = k.shape
        draw = {
            "dose": np.exp(rng.uniform(math.log(self.dose[0]), math.log(self.dose[1]), n)),
            "background": rng.uniform(*self.background, n),
            "gain": rng.uniform(*self.gain, n),
            "gamma": np.exp(rng.uniform(math.log(self.gamma[0]), math.log(self.gamma[1]), n)),
            "read_noise": rng.uniform(*self.read_noise, n),
        }
        signal = np.power(k, draw["gamma"][:, None, None].astype(np.float32))
        gain = 1.0 - draw["gain"][:, None, None] + draw["gain"][:, None, None] * smooth_humps(n, (h, w), rng)
        signal = (signal * gain).astype(np.float32)
        mean_signal = signal.reshape(n, -1).mean(axis=1)
        ideal = signal + (draw["background"] * mean_signal)[:, None, None] * smooth_humps(n, (h, w), rng)
        mean = np.maximum(ideal.reshape(n, -1).mean(axis=1), 1e-12)
        lam = ideal * (draw["dose"] / mean)[:, None, None]
        counts = rng.poisson(lam).astype(np.float32)
        counts += rng.standard_normal(counts.shape, dtype=np.float32) * draw["read_noise"][:, None, None].astype(
            np.float32)
        np.rint(counts, out=counts)
        np.maximum(counts, 0.0, out=counts)
        return counts, {key: value.astype(np.float64) for key, value in draw.items()}
