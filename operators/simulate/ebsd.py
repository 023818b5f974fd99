"""Synthetic EBSD scans with known truth: Voronoi grains, master-pattern projection, dose.

:func:`simulate_ebsd` decides everything cheap up front (grain map, one
orientation per grain plus a small in-grain spread, a phase per grain, the
detector and the output dtype) and returns an :class:`EBSDSimulation`. Its
:meth:`~EBSDSimulation.batches` generator then projects, adds background and
noise and yields frames in scan order, a few scan rows at a time, so a large
scan never sits in memory.

Image model, per frame with clean Kikuchi pattern :math:`K` (projected from a
master pattern scaled to ``[0, 1]``) and static background :math:`B` (broad
Gaussian, peak 1):

.. math::

    I = K + s\\,B, \\qquad \\lambda = D\\, I / \\bar I, \\qquad
    \\text{counts} = \\mathrm{round}(\\mathrm{Poisson}(\\lambda) + \\mathcal N(0, r^2))

with background strength :math:`s`, dose :math:`D` (mean counts per pixel)
and read noise :math:`r`, clipped to ``uint8`` or ``uint16``. With
``dose=None`` the frames are :math:`I` itself (float32, noise-free).

Randomness is keyed by seed and named stream (see
:func:`diffraflow.operators.simulate.noise.stream_rng`); noise is drawn per scan row, so
frames do not depend on the batch size.

Examples
--------
>>> sim = simulate_ebsd((3, 4), det_shape=(20, 30), n_grains=2, dose=20, seed=1)
>>> batch = next(sim.batches(batch_frames=8))
>>> batch.start, batch.patterns.shape, batch.patterns.dtype.name
(0, (8, 20, 30), 'uint8')
>>> sim.true_rotation.shape, sim.grain_id.shape
((3, 4, 4), (3, 4))
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from diffraflow.operators.simulate.grains import (
    assign_phases,
    perturb_quaternions,
    random_quaternions,
    voronoi_grain_map,
)
from diffraflow.operators.simulate.master_patterns import (
    MASTER_PATTERN_VERSION,
    get_master_pattern,
    project_patterns,
    resolve_kind,
)
from diffraflow.operators.simulate.noise import (
    STREAM_GRAINS,
    STREAM_NOISE,
    STREAM_ORIENTATIONS,
    STREAM_PHASES,
    STREAM_SPREAD,
    add_counting_noise,
    choose_count_dtype,
    expected_counts,
    smooth_background,
    stream_rng,
)
from diffraflow.schemas.errors import SchemaError

__all__ = ["DEFAULT_PC", "EBSDBatch", "EBSDSimulation", "simulate_ebsd"]

#: Projection centre (Bruker convention) close to kikuchipy's Ni test scan.
DEFAULT_PC = (0.421, 0.221, 0.505)


@dataclass(frozen=True)
class EBSDBatch:
    """Frames of whole scan rows ``rows[0]:rows[1]``, flat scan index ``start`` onwards.

    ``clean`` holds the noise-free Kikuchi patterns (float32, no background)
    when asked for, else ``None``.
    """

    start: int
    rows: tuple[int, int]
    patterns: np.ndarray
    clean: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class EBSDSimulation:
    """A planned EBSD scan: geometry, truth maps, and a frame generator.

    Build it with :func:`simulate_ebsd`. Truth arrays:

    ``true_rotation``
        float64 ``(scan_y, scan_x, 4)`` unit quaternions, scalar first, orix
        convention (crystal to sample, as in ``CrystalMap.rotations``).
    ``true_phase_id``
        int32 ``(scan_y, scan_x)`` index into :attr:`phases`.
    ``grain_id``
        int32 ``(scan_y, scan_x)`` Voronoi grain of each point.
    ``grain_rotation``, ``grain_phase``, ``grain_seeds``
        The orientation (before spread), phase and Voronoi seed ``(y, x)``
        (scan pixels) of each grain.
    ``background``
        float32 ``(det_y, det_x)`` shape of the static background, peak 1.
    """

    scan_shape: tuple[int, int]
    det_shape: tuple[int, int]
    phases: tuple[str, ...]
    master_pattern_kinds: tuple[str, ...]
    pc: tuple[float, float, float]
    sample_tilt: float
    camera_tilt: float
    energy_kv: float
    dose: float | None
    background_strength: float
    read_noise: float
    orientation_spread_deg: float
    seed: int
    grain_id: np.ndarray
    true_phase_id: np.ndarray
    true_rotation: np.ndarray
    grain_rotation: np.ndarray
    grain_phase: np.ndarray
    grain_seeds: np.ndarray
    background: np.ndarray
    dtype: np.dtype
    half_size: int | None = None
    parameters: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Number of scan points."""
        return self.scan_shape[0] * self.scan_shape[1]

    def detector(self):
        """The kikuchipy ``EBSDDetector`` of this scan (Bruker projection centre).

        Examples
        --------
        >>> simulate_ebsd((1, 1), det_shape=(10, 12), seed=0).detector().shape
        (10, 12)
        """
        from kikuchipy.detectors import EBSDDetector

        return EBSDDetector(shape=self.det_shape, pc=self.pc, convention="bruker", tilt=self.camera_tilt,
                            sample_tilt=self.sample_tilt)

    def master_patterns(self) -> list:
        """One master pattern per phase, in phase-id order (cached per process)."""
        return [get_master_pattern(name, self.energy_kv, kind=kind, half_size=self.half_size)
                for name, kind in zip(self.phases, self.master_pattern_kinds, strict=True)]

    def clean_patterns_for(self, quaternions: np.ndarray, phase_ids: np.ndarray) -> np.ndarray:
        """Noise-free Kikuchi patterns (float32, no background) for given orientations and phases.

        Examples
        --------
        >>> import numpy as np
        >>> sim = simulate_ebsd((1, 2), det_shape=(8, 8), seed=0)
        >>> sim.clean_patterns_for(np.array([[1.0, 0, 0, 0]]), np.array([0])).shape
        (1, 8, 8)
        """
        q = np.asarray(quaternions, dtype=np.float64).reshape(-1, 4)
        ids = np.asarray(phase_ids).ravel()
        out = np.empty((len(q), *self.det_shape), dtype=np.float32)
        detector = self.detector()
        for pid, mp in enumerate(self.master_patterns()):
            take = ids == pid
            if take.any():
                out[take] = project_patterns(mp, q[take], detector, self.energy_kv)
        return out

    def batches(self, batch_frames: int = 2048, clean: bool = False) -> Iterator[EBSDBatch]:
        """Yield the scan's frames in scan order, whole rows at a time.

        Parameters
        ----------
        batch_frames
            Target frames per batch (rounded down to whole rows, at least one row).
        clean
            Also yield the noise-free Kikuchi patterns of each batch.

        Examples
        --------
        >>> sim = simulate_ebsd((4, 2), det_shape=(6, 6), seed=3)
        >>> [b.rows for b in sim.batches(batch_frames=4)]
        [(0, 2), (2, 4)]
        """
        sy, sx = self.scan_shape
        rows_per_batch = max(1, int(batch_frames) // sx)
        strength = self.background_strength
        for y0 in range(0, sy, rows_per_batch):
            y1 = min(sy, y0 + rows_per_batch)
            kikuchi = self.clean_patterns_for(self.true_rotation[y0:y1], self.true_phase_id[y0:y1])
            ideal = kikuchi + strength * self.background if strength > 0 else kikuchi.copy()
            if self.dose is None:
                frames = ideal.astype(np.float32, copy=False)
            else:
                lam = expected_counts(ideal, self.dose)
                frames = np.empty(lam.shape, dtype=self.dtype)
                for row in range(y0, y1):
                    # One generator per scan row: frames do not depend on the batch size.
                    block = slice((row - y0) * sx, (row - y0 + 1) * sx)
                    frames[block] = add_counting_noise(lam[block], stream_rng(self.seed, STREAM_NOISE, row),
                                                       self.read_noise, self.dtype)
            yield EBSDBatch(start=y0 * sx, rows=(y0, y1), patterns=frames, clean=kikuchi if clean else None)

    def all_patterns(self, clean: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Every frame at once, ``(scan_y, scan_x, det_y, det_x)``; for small scans and tests.

        Examples
        --------
        >>> p, c = simulate_ebsd((2, 2), det_shape=(5, 5), seed=0).all_patterns(clean=True)
        >>> p.shape, c.shape
        ((2, 2, 5, 5), (2, 2, 5, 5))
        """
        parts = list(self.batches(clean=clean))
        shape = (*self.scan_shape, *self.det_shape)
        patterns = np.concatenate([b.patterns for b in parts]).reshape(shape)
        cleans = np.concatenate([b.clean for b in parts]).reshape(shape) if clean else None
        return patterns, cleans


def _check(condition: bool, field_name: str, problem: str, fix: str) -> None:
    if not condition:
        raise SchemaError(field_name, problem, fix)


def _int_pair(value, name: str, minimum: int, fix: str) -> tuple[int, int]:
    """Two integers >= minimum, or a one-line SchemaError naming the field."""
    try:
        pair = tuple(value)
        ok = len(pair) == 2 and all(float(v).is_integer() and v >= minimum for v in pair)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SchemaError(name, f"need two integers >= {minimum}, got {value!r}", fix)
    return int(pair[0]), int(pair[1])


def _validate(scan_shape, det_shape, phases, n_grains, orientation_spread_deg, pc, sample_tilt, camera_tilt,
              energy_kv, dose, background_strength, read_noise, seed) -> None:
    _check(len(phases) >= 1, "phases", "no phase given", "give at least one --phase, e.g. ni")
    _check(len(set(p.lower() for p in phases)) == len(phases), "phases", f"repeated phase in {list(phases)}",
           "name each phase once")
    _check(int(n_grains) == n_grains and n_grains >= 1, "n_grains", f"need a positive integer, got {n_grains}",
           "e.g. --grains 5")
    _check(math.isfinite(orientation_spread_deg) and 0 <= orientation_spread_deg <= 30, "orientation_spread_deg",
           f"in-grain spread must lie in [0, 30] degrees, got {orientation_spread_deg}", "e.g. --spread 0.5")
    _check(len(pc) == 3 and all(math.isfinite(v) for v in pc), "pc", f"need three finite numbers, got {list(pc)}",
           "e.g. --pc 0.42 0.22 0.50 (Bruker convention)")
    _check(0 <= pc[0] <= 1 and 0 <= pc[1] <= 1 and 0.05 <= pc[2] <= 5, "pc",
           f"Bruker PC needs x, y in [0, 1] and z in [0.05, 5], got {list(pc)}",
           "give the projection centre as fractions of the detector width/height and distance/height")
    _check(math.isfinite(sample_tilt) and -90 <= sample_tilt <= 90, "sample_tilt",
           f"must lie in [-90, 90] degrees, got {sample_tilt}", "e.g. --sample-tilt 70")
    _check(math.isfinite(camera_tilt) and -90 <= camera_tilt <= 90, "camera_tilt",
           f"must lie in [-90, 90] degrees, got {camera_tilt}", "e.g. --camera-tilt 0")
    _check(math.isfinite(energy_kv) and 1 <= energy_kv <= 1000, "energy_kv",
           f"beam energy must lie in [1, 1000] kV, got {energy_kv}", "e.g. --energy 20")
    _check(dose is None or (math.isfinite(dose) and dose > 0), "dose",
           f"dose must be a positive number of counts per pixel, got {dose}", "e.g. --dose 30, or --clean")
    _check(math.isfinite(background_strength) and background_strength >= 0, "background_strength",
           f"must be >= 0, got {background_strength}", "e.g. --background 1.0 (0 for none)")
    _check(math.isfinite(read_noise) and read_noise >= 0, "read_noise", f"must be >= 0, got {read_noise}",
           "e.g. --read-noise 1.0")
    _check(int(seed) == seed and seed >= 0, "seed", f"need a non-negative integer, got {seed}", "e.g. --seed 0")


def simulate_ebsd(
    scan_shape: tuple[int, int],
    det_shape: tuple[int, int] = (60, 60),
    phases: Sequence[str] = ("ni",),
    n_grains: int = 5,
    orientation_spread_deg: float = 0.5,
    pc: tuple[float, float, float] = DEFAULT_PC,
    sample_tilt: float = 70.0,
    camera_tilt: float = 0.0,
    energy_kv: float = 20.0,
    dose: float | None = 50.0,
    background_strength: float = 0.5,
    read_noise: float = 1.0,
    seed: int = 0,
    phase_fractions: Sequence[float] | None = None,
    master_pattern: str = "auto",
    half_size: int | None = None,
) -> EBSDSimulation:
    """Plan a synthetic EBSD scan with Voronoi grains; frames come from ``.batches()``.

    Parameters
    ----------
    scan_shape
        ``(scan_y, scan_x)``.
    det_shape
        ``(det_y, det_x)``; need not be square.
    phases
        Library phase names (or CIF paths); phase ``i`` gets id ``i``.
    n_grains
        Number of Voronoi seeds (grains), each with one random orientation.
    orientation_spread_deg
        RMS misorientation of points from their grain's orientation.
    pc
        Projection centre ``(x, y, z)``, Bruker convention.
    sample_tilt, camera_tilt
        Degrees.
    energy_kv
        Beam energy, kV.
    dose
        Mean counts per pixel of every frame; ``None`` for noise-free float32.
    background_strength
        Peak of the smooth background relative to the brightest Kikuchi
        intensity (``0``: none).
    read_noise
        Standard deviation of the Gaussian read noise, counts.
    seed
        Non-negative integer; equal seeds give identical scans.
    phase_fractions
        Probability of each phase per grain (default equal).
    master_pattern
        ``"auto"``, ``"dynamical"`` or ``"kinematical"`` (see
        :func:`diffraflow.operators.simulate.master_patterns.resolve_kind`).
    half_size
        Kinematical master-pattern half size (default 200).

    Returns
    -------
    EBSDSimulation
        The plan and truth. Only the master patterns are loaded (and one
        frame per grain projected, to choose ``uint8`` or ``uint16``); frames
        come from :meth:`EBSDSimulation.batches`.

    Raises
    ------
    SchemaError
        A parameter is out of range; the message names it and the fix.

    Examples
    --------
    >>> sim = simulate_ebsd((2, 3), det_shape=(10, 14), phases=("ni", "fe"), n_grains=4, seed=2)
    >>> sorted(set(sim.grain_phase.tolist())), sim.dtype.name
    ([0, 1], 'uint8')
    """
    scan_shape = _int_pair(scan_shape, "scan_shape", 1, "e.g. --scan-shape 20 20")
    det_shape = _int_pair(det_shape, "det_shape", 2, "e.g. --detector-shape 60 60")
    phases = tuple(str(p) for p in phases)
    pc = (float(pc[0]), float(pc[1]), float(pc[2])) if len(pc) == 3 else tuple(pc)  # type: ignore[assignment]
    _validate(scan_shape, det_shape, phases, n_grains, float(orientation_spread_deg), pc, float(sample_tilt),
              float(camera_tilt), float(energy_kv), None if dose is None else float(dose),
              float(background_strength), float(read_noise), seed)
    from diffraflow.operators.crystallography.phases import get_phase

    for name in phases:
        get_phase(name)  # unknown names fail here, before any work
    kinds = tuple(resolve_kind(name, energy_kv, master_pattern) for name in phases)

    n_grains = int(n_grains)
    grain_id, grain_seeds = voronoi_grain_map(scan_shape, n_grains, stream_rng(seed, STREAM_GRAINS))
    grain_rotation = random_quaternions(n_grains, stream_rng(seed, STREAM_ORIENTATIONS))
    grain_phase = assign_phases(n_grains, len(phases), stream_rng(seed, STREAM_PHASES), phase_fractions)
    true_rotation = perturb_quaternions(grain_rotation[grain_id], float(orientation_spread_deg),
                                        stream_rng(seed, STREAM_SPREAD))
    true_phase_id = grain_phase[grain_id].astype(np.int32)

    h, w = det_shape
    # The diffuse backscatter peaks below the projection centre on a 70-degree-tilted sample.
    background = smooth_background(det_shape, centre=((pc[1] + 0.5) / 2 * h, pc[0] * w))
    strength = float(background_strength)
    plan = dict(
        scan_shape=scan_shape, det_shape=det_shape, phases=phases, master_pattern_kinds=kinds, pc=pc,
        sample_tilt=float(sample_tilt), camera_tilt=float(camera_tilt), energy_kv=float(energy_kv),
        dose=None if dose is None else float(dose), background_strength=strength, read_noise=float(read_noise),
        orientation_spread_deg=float(orientation_spread_deg), seed=int(seed), grain_id=grain_id,
        true_phase_id=true_phase_id, true_rotation=true_rotation, grain_rotation=grain_rotation,
        grain_phase=grain_phase, grain_seeds=grain_seeds, background=background, dtype=np.dtype("float32"),
        half_size=half_size,
    )
    if dose is not None:
        plan["dtype"] = _count_dtype(EBSDSimulation(**plan), float(dose), float(read_noise))
    parameters = {
        "scan_shape": list(scan_shape), "det_shape": list(det_shape), "phases": list(phases),
        "n_grains": n_grains, "orientation_spread_deg": float(orientation_spread_deg), "pc": list(pc),
        "pc_convention": "bruker", "sample_tilt": float(sample_tilt), "camera_tilt": float(camera_tilt),
        "energy_kv": float(energy_kv), "dose": None if dose is None else float(dose),
        "background_strength": strength, "read_noise": float(read_noise), "seed": int(seed),
        "phase_fractions": None if phase_fractions is None else [float(f) for f in phase_fractions],
        "master_pattern_kinds": list(kinds), "half_size": half_size,
        # Scans made before version 3 carry no version: their kinematical patterns were wrong.
        "master_pattern_version": MASTER_PATTERN_VERSION,
    }
    plan["parameters"] = parameters
    return EBSDSimulation(**plan)


def _count_dtype(sim: EBSDSimulation, dose: float, read_noise: float, n_pilot: int = 64) -> np.dtype:
    """uint8 when the brightest pixel of a pilot set of frames, scaled to the dose, leaves room for noise.

    The pilot is one frame per grain (at most ``n_pilot`` grains); the peak-to-mean
    ratio of a frame varies little within a grain, and a 25 % margin covers
    that. A rare brighter pixel saturates at 255, as on a real camera.
    """
    grains = np.unique(sim.grain_id)
    if len(grains) > n_pilot:
        grains = stream_rng(sim.seed, STREAM_GRAINS, 1).choice(grains, n_pilot, replace=False)
    kikuchi = sim.clean_patterns_for(sim.grain_rotation[grains], sim.grain_phase[grains])
    ideal = kikuchi + sim.background_strength * sim.background
    ratio = ideal.reshape(len(ideal), -1).max(axis=1) / np.maximum(ideal.reshape(len(ideal), -1).mean(axis=1), 1e-12)
    return choose_count_dtype(1.25 * dose * float(ratio.max()), read_noise)
