"""Labelled EBSD patterns for learning: many materials, random orientations and geometries, seeded.

:func:`plan_patterns` draws, for ``n`` patterns, everything that varies from
one pattern to the next (material, orientation, projection centre, sample and
camera tilt, detector size, dose, background, blur, contrast); the
:class:`PatternPlan` it returns then renders them block by block
(:meth:`PatternPlan.blocks`) with the torch master-pattern projector
(:mod:`~diffraflow.operators.learning.projector`), on the CPU or a GPU.

Image model of one pattern, on a detector of its own size, from the clean
kinematical (or the shipped dynamical) pattern :math:`K \\in [0, 1]`:

.. math::

    K' = (G_\\sigma * K)^\\gamma, \\qquad
    I = g \\cdot (K' + s\\,B), \\qquad
    \\text{counts} = \\mathrm{Poisson}(D\\, I/\\bar I) + \\mathcal N(0, r^2)

with a Gaussian blur :math:`G_\\sigma` (a finite source and screen),
contrast exponent :math:`\\gamma`, a smooth background :math:`B` (a broad
Gaussian whose centre, width and strength :math:`s` vary), a smooth
multiplicative gain :math:`g` (phosphor and vignetting), dose :math:`D`
(mean counts per pixel) and read noise :math:`r`. The frame is then resized
(bilinear, antialiased) to the output shape every model of one training set
shares, and stored as ``uint8`` scaled to its own range: the networks
standardise each frame, so only the pattern's shape matters, and the
Poisson noise is far above the quantisation step.

Everything is drawn from named random streams of one seed
(:func:`~diffraflow.operators.simulate.noise.stream_rng`): the same seed and
plan give the same patterns (on another device, the same up to float
rounding and the device's own Poisson generator), and rendering can resume
at any block.

Examples
--------
>>> plan = plan_patterns(["ni", "fe"], 8, out_shape=(24, 24), seed=0, variety=Variety(detector_shapes=((30, 30),)),
...                      block_size=8)
>>> block = next(plan.blocks())
>>> block.frames.shape, block.frames.dtype.name, sorted(set(block.material.tolist())) == [0, 1]
((8, 24, 24), 'uint8', True)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from diffraflow.operators.simulate.noise import stream_rng
from diffraflow.schemas.errors import SchemaError

__all__ = ["Variety", "PatternPlan", "PatternBlock", "plan_patterns", "random_quaternions", "NI_ORIENTATION_VARIETY",
           "SPACE_GROUP_VARIETY"]

# Stream numbers of the training-data generator (independent of the scan simulator's).
_STREAM_MATERIAL, _STREAM_ROTATION, _STREAM_GEOMETRY, _STREAM_IMAGE, _STREAM_NOISE = 101, 102, 103, 104, 105


@dataclass(frozen=True)
class Variety:
    """The ranges the patterns of a training set are drawn from (uniform unless said otherwise).

    Attributes
    ----------
    detector_shapes
        ``(det_y, det_x)`` choices, one per block of patterns; each pattern
        is simulated at its detector's size, then resized to the output shape.
    pc_x, pc_y, pc_z
        Projection-centre ranges (Bruker convention).
    sample_tilt, camera_tilt
        Degrees; one draw per block (a session's geometry).
    dose
        Mean counts per pixel, drawn log-uniformly.
    background
        Strength :math:`s` of the smooth background.
    read_noise
        Counts (standard deviation).
    blur_px
        Gaussian blur of the clean pattern, pixels of the output shape.
    gamma
        Contrast exponent, drawn log-uniformly.
    gain
        Peak-to-peak depth of the smooth multiplicative gain.
    energy_kv
        Beam energy of the master patterns.
    """

    detector_shapes: tuple[tuple[int, int], ...] = ((60, 60), (80, 80), (120, 120), (60, 80), (90, 120), (48, 48))
    pc_x: tuple[float, float] = (0.35, 0.65)
    pc_y: tuple[float, float] = (0.10, 0.40)
    pc_z: tuple[float, float] = (0.45, 0.80)
    sample_tilt: tuple[float, float] = (65.0, 75.0)
    camera_tilt: tuple[float, float] = (-5.0, 10.0)
    dose: tuple[float, float] = (5.0, 300.0)
    background: tuple[float, float] = (0.0, 1.5)
    read_noise: tuple[float, float] = (0.0, 2.0)
    blur_px: tuple[float, float] = (0.0, 0.8)
    gamma: tuple[float, float] = (0.7, 1.4)
    gain: tuple[float, float] = (0.0, 0.3)
    energy_kv: float = 20.0

    def check(self) -> None:
        """Raise SchemaError for an empty or reversed range.

        Examples
        --------
        >>> Variety(dose=(10.0, 1.0)).check()
        Traceback (most recent call last):
        ...
        diffraflow.schemas.errors.SchemaError: variety.dose: range (10.0, 1.0) is reversed (fix: give (low, high) with low <= high)
        """
        for name, value in asdict(self).items():
            if name in ("detector_shapes", "energy_kv"):
                continue
            low, high = (float(v) for v in value)
            if not (math.isfinite(low) and math.isfinite(high)):
                raise SchemaError(f"variety.{name}", f"range {tuple(value)} is not finite", "give two finite numbers")
            if low > high:
                raise SchemaError(f"variety.{name}", f"range {tuple(value)} is reversed",
                                  "give (low, high) with low <= high")
        if not self.detector_shapes or any(len(s) != 2 or min(s) < 8 for s in self.detector_shapes):
            raise SchemaError("variety.detector_shapes", f"need (det_y, det_x) pairs of at least 8 px, got "
                              f"{self.detector_shapes!r}", "e.g. ((60, 60), (120, 120))")
        if self.dose[0] <= 0:
            raise SchemaError("variety.dose", f"doses must be positive, got {self.dose}", "e.g. (5, 300)")
        if not (0.05 <= self.pc_z[0] and 0 <= self.pc_x[0] and self.pc_x[1] <= 1 and 0 <= self.pc_y[0]
                and self.pc_y[1] <= 1):
            raise SchemaError("variety.pc", f"projection centres outside the detector: x {self.pc_x}, y {self.pc_y}, "
                              f"z {self.pc_z}", "keep x and y in [0, 1] and z >= 0.05")

    def record(self) -> dict[str, Any]:
        """A JSON-friendly copy (lists instead of tuples).

        Examples
        --------
        >>> Variety().record()["dose"]
        [5.0, 300.0]
        """
        return {k: ([list(s) for s in v] if k == "detector_shapes" else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}


#: The default variety of space-group training sets: detectors from 48 x 48 to 120 x 90,
#: geometries and doses of everyday EBSD.
SPACE_GROUP_VARIETY = Variety()
#: Noisy 60 x 60 Ni patterns near kikuchipy's Ni scan geometry, for orientation regression.
NI_ORIENTATION_VARIETY = Variety(detector_shapes=((60, 60),), pc_x=(0.39, 0.45), pc_y=(0.19, 0.25),
                                 pc_z=(0.47, 0.54), sample_tilt=(70.0, 70.0), camera_tilt=(0.0, 0.0),
                                 dose=(3.0, 200.0), background=(0.2, 1.0), read_noise=(0.0, 2.0), blur_px=(0.0, 0.0),
                                 gamma=(1.0, 1.0), gain=(0.0, 0.0))


def random_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit quaternions uniformly distributed over SO(3), scalar first and ``w >= 0``.

    Examples
    --------
    >>> q = random_quaternions(1000, np.random.default_rng(0))
    >>> q.shape, bool(np.allclose(np.linalg.norm(q, axis=1), 1)), bool((q[:, 0] >= 0).all())
    ((1000, 4), True, True)
    """
    q = rng.standard_normal((int(n), 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    return q


@dataclass(frozen=True)
class PatternBlock:
    """Rendered patterns ``start:start+len(frames)`` of a plan and their truth."""

    start: int
    frames: np.ndarray
    material: np.ndarray
    rotation: np.ndarray
    pc: np.ndarray
    dose: np.ndarray
    detector_shape: tuple[int, int]


def _uniform(rng: np.random.Generator, bounds: Sequence[float], n: int, log: bool = False) -> np.ndarray:
    low, high = float(bounds[0]), float(bounds[1])
    if log:
        return np.exp(rng.uniform(math.log(low), math.log(high), n))
    return rng.uniform(low, high, n)


@dataclass(frozen=True, eq=False)
class PatternPlan:
    """Per-pattern draws of a training set; render with :meth:`blocks`. Build it with :func:`plan_patterns`."""

    materials: tuple[str, ...]
    master_pattern_kinds: tuple[str, ...]
    out_shape: tuple[int, int]
    variety: Variety
    seed: int
    material: np.ndarray
    rotation: np.ndarray
    pc: np.ndarray
    sample_tilt: np.ndarray
    camera_tilt: np.ndarray
    dose: np.ndarray
    background: np.ndarray
    read_noise: np.ndarray
    blur_px: np.ndarray
    gamma: np.ndarray
    gain: np.ndarray
    shape_draws: np.ndarray
    block_size: int = 256
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of patterns."""
        return int(len(self.material))

    def detector_shape_of_block(self, index: int) -> tuple[int, int]:
        """The detector size of block ``index`` (blocks of :attr:`block_size` patterns)."""
        shapes = self.variety.detector_shapes
        choice = int(stream_rng(self.seed, _STREAM_GEOMETRY, 10_000_000 + index).integers(len(shapes)))
        return int(shapes[choice][0]), int(shapes[choice][1])

    def master_arrays(self) -> list[np.ndarray]:
        """The Lambert master patterns ``(2, n, n)`` of each material, in material order (cached on disk)."""
        from diffraflow.operators.simulate.master_patterns import get_master_pattern

        return [np.asarray(get_master_pattern(name, self.variety.energy_kv, kind=kind).data)
                for name, kind in zip(self.materials, self.master_pattern_kinds, strict=True)]

    def blocks(self, device: str = "cpu", start: int = 0) -> Iterator[PatternBlock]:
        """Render the patterns in order, one block (:attr:`block_size` patterns, one detector size) at a time.

        Parameters
        ----------
        device
            Torch device of the projection and image model.
        start
            First pattern (a multiple of :attr:`block_size`), to resume a partly written set.
        """
        import torch
        from diffraflow.operators.learning.projector import (
            MasterPatternProjector,
            detector_directions,
        )
        from diffraflow.operators.learning.rotations import quaternion_to_matrix

        size = int(self.block_size)
        if int(start) % size:
            raise SchemaError("start", f"{start} is not a multiple of the block size {size}",
                              f"start at a multiple of {size}")
        projectors = [MasterPatternProjector(m, device=device) for m in self.master_arrays()]
        for first in range(int(start), self.n, size):
            last = min(self.n, first + size)
            det = self.detector_shape_of_block(first // size)
            take = slice(first, last)
            # One sample and camera tilt per block (a session's geometry); the projection centre per pattern.
            dirs = detector_directions(det, self.pc[take], float(self.sample_tilt[first]),
                                       float(self.camera_tilt[first]), device=device)
            R = quaternion_to_matrix(torch.as_tensor(self.rotation[take], dtype=torch.float32, device=device))
            clean = torch.empty((last - first, *det), dtype=torch.float32, device=device)
            materials = self.material[take]
            for m in np.unique(materials):
                pick = torch.as_tensor(np.flatnonzero(materials == m), device=device)
                clean[pick] = projectors[int(m)].project(R[pick], dirs[pick], det)
            frames = self._image_model(clean, first, det, device)
            yield PatternBlock(first, frames, materials.copy(), self.rotation[take].copy(), self.pc[take].copy(),
                               self.dose[take].copy(), det)

    def _image_model(self, clean: Any, first: int, det: tuple[int, int], device: str) -> np.ndarray:
        import torch
        from torch.nn import functional

        n = len(clean)
        take = slice(first, first + n)

        def column(values: np.ndarray) -> Any:
            return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)[:, None, None]

        shape_draws = self.shape_draws[take]
        k = clean[:, None]
        sigma = self.blur_px[take] * (det[0] / self.out_shape[0])  # blur is given in output pixels
        if (sigma > 0.05).any():
            # One depthwise convolution blurs every frame with its own kernel (width 0 is the identity).
            radius = max(1, int(math.ceil(3 * float(sigma.max()))))
            x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)[None]
            s = torch.as_tensor(np.maximum(sigma, 1e-3), dtype=torch.float32, device=device)[:, None]
            g = torch.exp(-0.5 * (x / s) ** 2)
            g = (g / g.sum(dim=1, keepdim=True))[:, None, None, :]
            k = functional.pad(k.transpose(0, 1), (radius, radius, radius, radius), mode="replicate")
            k = functional.conv2d(k, g, groups=n)
            k = functional.conv2d(k, g.transpose(-1, -2), groups=n).transpose(0, 1)
        k = k[:, 0].clamp_min(0) ** column(self.gamma[take])
        ys = torch.arange(det[0], dtype=torch.float32, device=device)[None, :, None] / det[0]
        xs = torch.arange(det[1], dtype=torch.float32, device=device)[None, None, :] / det[1]
        # Background: a broad Gaussian below the projection centre, of random width and offset.
        cy = column(self.pc[take, 1] + shape_draws[:, 0])
        cx = column(self.pc[take, 0] + shape_draws[:, 1])
        sy, sx = column(shape_draws[:, 2]), column(shape_draws[:, 3])
        background = torch.exp(-0.5 * (((ys - cy) / sy) ** 2 + ((xs - cx) / sx) ** 2))
        image = k + column(self.background[take]) * background
        fy, fx = column(shape_draws[:, 4]), column(shape_draws[:, 5])
        py, px = column(shape_draws[:, 6]), column(shape_draws[:, 7])
        wave = torch.sin(2 * math.pi * fy * ys + py) * torch.sin(2 * math.pi * fx * xs + px)
        image = image * (1 - column(self.gain[take]) * 0.5 * (1 + wave))
        mean = image.reshape(n, -1).mean(dim=1).clamp_min(1e-12)
        lam = image * (torch.as_tensor(self.dose[take], dtype=torch.float32, device=device) / mean)[:, None, None]
        generator = torch.Generator(device=device).manual_seed(
            int(stream_rng(self.seed, _STREAM_NOISE, first // self.block_size).integers(2**62)))
        counts = torch.poisson(lam, generator=generator)
        noise = torch.randn(lam.shape, generator=generator, device=device, dtype=torch.float32)
        counts = counts + noise * column(self.read_noise[take])
        if tuple(det) != tuple(self.out_shape):
            counts = functional.interpolate(counts[:, None], size=self.out_shape, mode="bilinear", antialias=True,
                                            align_corners=False)[:, 0]
        flat = counts.reshape(n, -1)
        low = flat.amin(dim=1)[:, None, None]
        span = (flat.amax(dim=1)[:, None, None] - low).clamp_min(1e-6)
        return ((counts - low) / span * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def plan_patterns(materials: Sequence[str], n: int, *, out_shape: tuple[int, int] = (60, 60),
                  variety: Variety = SPACE_GROUP_VARIETY, seed: int = 0, weights: Sequence[float] | None = None,
                  master_pattern: str = "kinematical", block_size: int = 256) -> PatternPlan:
    """Draw the materials, orientations and geometries of ``n`` training patterns.

    Parameters
    ----------
    materials
        Phase names (library, reference structures or CIF paths); pattern ``i``
        is of ``materials[material[i]]``.
    n
        Number of patterns.
    out_shape
        Frame shape every pattern is resized to.
    variety
        The ranges of everything else (:class:`Variety`).
    seed
        Seeds every draw.
    weights
        Probability of each material (default equal); e.g. equal per class,
        split between the class's materials.
    master_pattern
        ``kinematical`` for every material, or ``auto`` (the shipped dynamical
        Ni pattern for ``ni`` at 20 kV, see
        :func:`~diffraflow.operators.simulate.master_patterns.resolve_kind`).
    block_size
        Patterns per block: each block has one detector size.

    Raises
    ------
    SchemaError
        An unknown material, an empty plan or a bad range.

    Examples
    --------
    >>> plan = plan_patterns(["ni", "si"], 5, seed=3)
    >>> plan.rotation.shape, plan.pc.shape, plan.materials
    ((5, 4), (5, 3), ('ni', 'si'))
    """
    from diffraflow.operators.crystallography.phases import get_phase
    from diffraflow.operators.simulate.master_patterns import resolve_kind

    if not materials:
        raise SchemaError("materials", "no material given", "name at least one phase, e.g. ['ni', 'fe']")
    if int(n) < 1:
        raise SchemaError("n", f"need at least one pattern, got {n}", "e.g. n=10000")
    if len(out_shape) != 2 or min(out_shape) < 8:
        raise SchemaError("out_shape", f"need (det_y, det_x) of at least 8 px, got {out_shape!r}", "e.g. (60, 60)")
    variety.check()
    names = tuple(str(m) for m in materials)
    for name in names:
        get_phase(name)
    kinds = tuple(resolve_kind(name, variety.energy_kv, master_pattern) for name in names)
    n = int(n)
    p = np.ones(len(names)) if weights is None else np.asarray(weights, dtype=np.float64)
    if p.shape != (len(names),) or (p < 0).any() or p.sum() <= 0:
        raise SchemaError("weights", f"need one non-negative weight per material, got {weights!r}",
                          "give as many weights as materials")
    material = stream_rng(seed, _STREAM_MATERIAL).choice(len(names), size=n, p=p / p.sum()).astype(np.int32)
    rotation = random_quaternions(n, stream_rng(seed, _STREAM_ROTATION))
    g = stream_rng(seed, _STREAM_GEOMETRY)
    v = variety
    pc = np.stack([_uniform(g, v.pc_x, n), _uniform(g, v.pc_y, n), _uniform(g, v.pc_z, n)], axis=1)
    image = stream_rng(seed, _STREAM_IMAGE)
    # Per pattern: background centre offset (down, across) and widths, gain frequencies and phases.
    shape_draws = np.column_stack([image.uniform(0.0, 0.4, n), image.uniform(-0.15, 0.15, n),
                                   image.uniform(0.35, 0.9, n), image.uniform(0.35, 0.9, n),
                                   image.uniform(0.5, 2.0, n), image.uniform(0.5, 2.0, n),
                                   image.uniform(0, 2 * math.pi, n), image.uniform(0, 2 * math.pi, n)])
    blocks = np.arange(n) // int(block_size)
    tilts = _uniform(g, v.sample_tilt, int(blocks[-1]) + 1), _uniform(g, v.camera_tilt, int(blocks[-1]) + 1)
    draws = dict(sample_tilt=tilts[0][blocks], camera_tilt=tilts[1][blocks],
                 dose=_uniform(g, v.dose, n, log=True), background=_uniform(g, v.background, n),
                 read_noise=_uniform(g, v.read_noise, n), blur_px=_uniform(g, v.blur_px, n),
                 gamma=_uniform(g, v.gamma, n, log=True), gain=_uniform(g, v.gain, n), shape_draws=shape_draws)
    parameters = {"materials": list(names), "master_pattern_kinds": list(kinds), "n": n,
                  "out_shape": [int(s) for s in out_shape], "variety": v.record(), "seed": int(seed),
                  "weights": None if weights is None else [float(w) for w in weights], "block_size": int(block_size),
                  "generator": "diffraflow.operators.learning.training_data"}
    return PatternPlan(materials=names, master_pattern_kinds=kinds, out_shape=(int(out_shape[0]), int(out_shape[1])),
                       variety=v, seed=int(seed), material=material, rotation=rotation, pc=pc,
                       block_size=int(block_size), parameters=parameters, **draws)
