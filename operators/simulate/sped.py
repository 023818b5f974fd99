"""Synthetic SPED line scans across an inclined bicrystal boundary (seed paper 003, Figs. 5-6).

The model of Martineau et al. (2019, *Adv. Struct. Chem. Imag.*), built "to
highlight features of two-dimensional diffraction-like signals rather than to
reflect the physics of diffraction":

* each crystal's pattern is a 2D array of Gaussian spots on its own
  reciprocal lattice (crystal B's lattice is rotated in-plane and scaled
  against A's), with intensities falling off with :math:`|g|`, and the same
  direct beam in both;
* the signal is proportional to the thickness of each crystal along the beam,
  and across an inclined boundary the fraction of crystal A falls linearly
  from 1 to 0 over a band of columns, so every frame is
  :math:`x = f_A F_A + (1 - f_A) F_B` (Fig. 5);
* with ``shared_spots`` crystal B also carries A's spots along one
  systematic row, as coherently matched planes across a twin would (Fig. 6):
  the case in which NMF puts the shared reflections into one factor.

Truth: ``loadings`` ``(scan_y, scan_x, 2)`` (the thickness fractions) and
``factors`` ``(2, det_y, det_x)`` (the pure-crystal patterns), scaled so that
every frame has mean 1 before the dose is applied. Counts are Poisson with
mean ``dose * loadings @ factors``; ``dose=None`` gives that product itself
(float32, noise-free), exactly.

Examples
--------
>>> sim = simulate_sped((2, 10), det_shape=(32, 32), dose=None, seed=0)
>>> frames = next(sim.batches()).patterns
>>> bool(np.allclose(frames, np.einsum("nk,kyx->nyx", sim.loadings.reshape(-1, 2), sim.factors), atol=1e-5))
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from diffraflow.operators.simulate.noise import (
    STREAM_NOISE,
    STREAM_SPOTS,
    add_counting_noise,
    choose_count_dtype,
    stream_rng,
)
from diffraflow.schemas.errors import SchemaError

__all__ = [
    "SPEDBatch",
    "SPEDSimulation",
    "bicrystal_loadings",
    "lattice_spots",
    "render_spots",
    "simulate_sped",
]


@dataclass(frozen=True)
class SPEDBatch:
    """Frames of whole scan rows ``rows[0]:rows[1]``, flat scan index ``start`` onwards."""

    start: int
    rows: tuple[int, int]
    patterns: np.ndarray


def lattice_spots(spacing_px: float, rotation_deg: float, radius_px: float, angle_deg: float = 90.0) -> np.ndarray:
    """Positions ``(n, 2)`` as ``(dy, dx)`` of a 2D lattice within ``radius_px``, origin excluded.

    Parameters
    ----------
    spacing_px
        Length of both basis vectors, pixels.
    rotation_deg
        In-plane rotation of the lattice.
    radius_px
        Keep spots no farther than this from the origin.
    angle_deg
        Angle between the basis vectors: 90 for a square net (a cubic
        [001] zone), 60 for a hexagonal one (a cubic [111] zone).

    Examples
    --------
    >>> lattice_spots(10.0, 0.0, 10.5).round(6).tolist()
    [[-10.0, 0.0], [0.0, -10.0], [0.0, 10.0], [10.0, 0.0]]
    >>> len(lattice_spots(10.0, 0.0, 10.5, angle_deg=60))
    6
    """
    gamma = np.deg2rad(angle_deg)
    n = int(math.ceil(radius_px / (spacing_px * np.sin(gamma)))) + 1
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    hk = np.column_stack([h.ravel(), k.ravel()]).astype(np.float64)
    hk = hk[(hk != 0).any(axis=1)]
    # Basis (dy, dx): a1 along det_x, a2 at angle gamma from it.
    basis = spacing_px * np.array([[0.0, 1.0], [np.sin(gamma), np.cos(gamma)]])
    t = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    pos = hk @ basis @ rot.T
    # Round away float dust (1e-15 rather than 0) so symmetric spots compare equal; + 0.0 turns -0.0 into 0.0.
    pos = np.round(pos[np.hypot(pos[:, 0], pos[:, 1]) <= radius_px], 9) + 0.0
    return pos[np.lexsort((pos[:, 1], pos[:, 0]))]


def render_spots(det_shape: tuple[int, int], centre: tuple[float, float], positions: np.ndarray,
                 intensities: np.ndarray, sigma_px: float) -> np.ndarray:
    """Sum of isotropic Gaussian spots (peak = intensity) sampled at pixel centres.

    Parameters
    ----------
    det_shape
        ``(det_y, det_x)``.
    centre
        ``(y, x)`` of the origin (direct beam) in pixels.
    positions
        ``(n, 2)`` spot offsets ``(dy, dx)`` from ``centre``, pixels.
    intensities
        ``(n,)`` peak heights.
    sigma_px
        Gaussian standard deviation, pixels.

    Returns
    -------
    numpy.ndarray
        float64 ``det_shape``.

    Notes
    -----
    A Gaussian is separable, so the image is
    :math:`\\sum_s I_s\\, g_y^{(s)} \\otimes g_x^{(s)}`: one matrix product,
    not one full-frame evaluation per spot.

    Examples
    --------
    >>> import numpy as np
    >>> img = render_spots((5, 5), (2, 2), np.zeros((1, 2)), np.array([3.0]), 1.0)
    >>> float(img[2, 2]), img.shape
    (3.0, (5, 5))
    """
    h, w = int(det_shape[0]), int(det_shape[1])
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    y = np.arange(h)[None, :] - (centre[0] + positions[:, :1])
    x = np.arange(w)[None, :] - (centre[1] + positions[:, 1:])
    gy = np.exp(-0.5 * (y / sigma_px) ** 2) * np.asarray(intensities, dtype=np.float64)[:, None]
    gx = np.exp(-0.5 * (x / sigma_px) ** 2)
    return gy.T @ gx


def bicrystal_loadings(scan_shape: tuple[int, int], boundary: tuple[float, float]) -> np.ndarray:
    """Thickness fractions ``(scan_y, scan_x, 2)`` of crystals A and B across an inclined boundary.

    Parameters
    ----------
    scan_shape
        ``(scan_y, scan_x)``; the boundary runs along ``scan_y``.
    boundary
        ``(start, stop)`` as fractions of the scan width: crystal A's fraction
        is 1 up to column ``start * (scan_x - 1)``, falls linearly, and is 0
        from column ``stop * (scan_x - 1)`` on. ``start == stop`` is an
        upright (sharp) boundary.

    Examples
    --------
    >>> bicrystal_loadings((1, 5), (0.25, 0.75))[0, :, 0].tolist()
    [1.0, 1.0, 0.5, 0.0, 0.0]
    """
    sy, sx = int(scan_shape[0]), int(scan_shape[1])
    c0, c1 = (boundary[0] * (sx - 1), boundary[1] * (sx - 1))
    cols = np.arange(sx, dtype=np.float64)
    if c1 > c0:
        frac_a = np.clip((c1 - cols) / (c1 - c0), 0.0, 1.0)
    else:
        frac_a = (cols < c0).astype(np.float64) + 0.5 * (cols == c0)
    loadings = np.empty((sy, sx, 2), dtype=np.float32)
    loadings[..., 0] = frac_a[None, :]
    loadings[..., 1] = 1.0 - frac_a[None, :]
    return loadings


@dataclass(frozen=True, eq=False)
class SPEDSimulation:
    """A planned SPED bicrystal scan: truth and a frame generator (see :func:`simulate_sped`).

    ``factors`` float32 ``(2, det_y, det_x)``, each with mean 1;
    ``loadings`` float32 ``(scan_y, scan_x, 2)``, rows summing to 1;
    ``calibration`` the reciprocal-space pixel size and pattern centre.
    """

    scan_shape: tuple[int, int]
    det_shape: tuple[int, int]
    factors: np.ndarray
    loadings: np.ndarray
    dose: float | None
    seed: int
    dtype: np.dtype
    calibration: dict
    shared_spots: bool
    parameters: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Number of scan points."""
        return self.scan_shape[0] * self.scan_shape[1]

    def batches(self, batch_frames: int = 2048) -> Iterator[SPEDBatch]:
        """Yield frames in scan order, whole rows at a time (noise drawn per row).

        Examples
        --------
        >>> sim = simulate_sped((3, 4), det_shape=(16, 16), seed=0)
        >>> [b.rows for b in sim.batches(batch_frames=8)]
        [(0, 2), (2, 3)]
        """
        sy, sx = self.scan_shape
        rows_per_batch = max(1, int(batch_frames) // sx)
        flat_factors = self.factors.reshape(2, -1).astype(np.float64)
        for y0 in range(0, sy, rows_per_batch):
            y1 = min(sy, y0 + rows_per_batch)
            mix = (self.loadings[y0:y1].reshape(-1, 2).astype(np.float64) @ flat_factors)
            mix = mix.reshape(-1, *self.det_shape)
            if self.dose is None:
                frames = mix.astype(np.float32)
            else:
                lam = np.maximum(mix * self.dose, 0.0)  # rounding can leave -1e-17 far from spots
                frames = np.empty(lam.shape, dtype=self.dtype)
                for row in range(y0, y1):
                    block = slice((row - y0) * sx, (row - y0 + 1) * sx)
                    frames[block] = add_counting_noise(lam[block], stream_rng(self.seed, STREAM_NOISE, row),
                                                       0.0, self.dtype)
            yield SPEDBatch(start=y0 * sx, rows=(y0, y1), patterns=frames)

    def all_patterns(self) -> np.ndarray:
        """Every frame at once, ``(scan_y, scan_x, det_y, det_x)``; for small scans and tests."""
        return np.concatenate([b.patterns for b in self.batches()]).reshape(*self.scan_shape, *self.det_shape)


def simulate_sped(
    scan_shape: tuple[int, int] = (10, 40),
    det_shape: tuple[int, int] = (64, 64),
    dose: float | None = 2.0,
    shared_spots: bool = False,
    seed: int = 0,
    boundary: tuple[float, float] = (0.35, 0.65),
    spacing_a_px: float = 10.0,
    spacing_b_px: float = 11.0,
    rotation_b_deg: float = 15.0,
    angle_b_deg: float = 60.0,
    spot_sigma_px: float = 1.2,
    falloff_px: float | None = None,
    direct_beam: float = 3.0,
    scale_inv_angstrom: float = 0.025,
) -> SPEDSimulation:
    """Plan a SPED scan across an inclined bicrystal boundary with known factors and loadings.

    Parameters
    ----------
    scan_shape
        ``(scan_y, scan_x)``; crystal A on the left, B on the right.
    det_shape
        ``(det_y, det_x)``; the direct beam sits at its centre.
    dose
        Mean counts per pixel of every frame; ``None`` for noise-free float32.
    shared_spots
        Give crystal B A's spots along A's first systematic row too (Fig. 6).
    seed
        Non-negative integer; sets the spot-intensity modulation and the noise.
    boundary
        Start and stop of the inclined-boundary band, fractions of the width
        (see :func:`bicrystal_loadings`).
    spacing_a_px, spacing_b_px, rotation_b_deg, angle_b_deg
        Reciprocal-lattice spacings (pixels), B's in-plane rotation against
        A, and the angle of B's net (A is square, like a cubic [001] zone;
        B by default hexagonal, like a [111] zone).
    spot_sigma_px
        Spot width (standard deviation), pixels.
    falloff_px
        :math:`|g|` scale of the intensity fall-off
        :math:`\\exp(-|g|^2 / 2 g_0^2)`; default a third of the detector.
    direct_beam
        Direct-beam peak relative to the strongest diffracted spot.
    scale_inv_angstrom
        Reciprocal-space size of a pixel, recorded as the calibration.

    Returns
    -------
    SPEDSimulation

    Raises
    ------
    SchemaError
        A parameter is out of range.

    Notes
    -----
    Spots of B that would overlap A's (closer than four spot widths) are
    dropped unless ``shared_spots``, so in the default case the two factors
    share only the direct beam, as in Fig. 5. B's diffracted intensity is
    scaled to equal A's, so both factors have the same mean and the same
    direct beam: the total signal is independent of the mixing fraction.

    Examples
    --------
    >>> sim = simulate_sped((4, 20), det_shape=(48, 40), shared_spots=True, seed=1)
    >>> sim.factors.shape, sim.loadings.shape, round(float(sim.factors[0].mean()), 6)
    ((2, 48, 40), (4, 20, 2), 1.0)
    """
    try:
        sy, sx = (int(v) for v in scan_shape)
        ok = sy >= 1 and sx >= 1 and all(float(v).is_integer() for v in scan_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SchemaError("scan_shape", f"need two positive integers, got {scan_shape!r}", "e.g. --scan-shape 10 40")
    try:
        h, w = (int(v) for v in det_shape)
        ok = h >= 8 and w >= 8 and all(float(v).is_integer() for v in det_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SchemaError("det_shape", f"need two integers >= 8, got {det_shape!r}", "e.g. --detector-shape 64 64")
    if dose is not None and not (math.isfinite(dose) and dose > 0):
        raise SchemaError("dose", f"dose must be a positive number of counts per pixel, got {dose}",
                          "e.g. --dose 2, or --clean")
    if not (int(seed) == seed and seed >= 0):
        raise SchemaError("seed", f"need a non-negative integer, got {seed}", "e.g. --seed 0")
    if not (0.0 <= boundary[0] <= boundary[1] <= 1.0):
        raise SchemaError("boundary", f"need 0 <= start <= stop <= 1, got {list(boundary)}",
                          "give the boundary band as fractions of the scan width, e.g. 0.35 0.65")
    for name, value in (("spacing_a_px", spacing_a_px), ("spacing_b_px", spacing_b_px),
                        ("spot_sigma_px", spot_sigma_px), ("scale_inv_angstrom", scale_inv_angstrom)):
        if not (math.isfinite(value) and value > 0):
            raise SchemaError(name, f"must be positive, got {value}", "use the default")

    centre = ((h - 1) / 2.0, (w - 1) / 2.0)
    radius = min(h, w) / 2.0 - 2.0 * spot_sigma_px  # keep whole spots on the detector
    g0 = min(h, w) / 3.0 if falloff_px is None else float(falloff_px)
    rng = stream_rng(seed, STREAM_SPOTS)

    pos_a = lattice_spots(spacing_a_px, 0.0, radius)
    pos_b = lattice_spots(spacing_b_px, rotation_b_deg, radius, angle_b_deg)
    min_sep = 4.0 * spot_sigma_px
    if len(pos_a) and len(pos_b):
        sep = np.hypot(*(pos_b[:, None, :] - pos_a[None, :, :]).transpose(2, 0, 1)).min(axis=1)
        pos_b = pos_b[sep >= min_sep]

    def intensities(pos: np.ndarray) -> np.ndarray:
        # Fall-off with |g| times a seeded "structure factor" modulation, Friedel-symmetric (I(g) = I(-g)).
        key = {tuple(np.round(p, 6)): i for i, p in enumerate(pos)}
        mod = rng.uniform(0.4, 1.0, len(pos))
        for i, p in enumerate(pos):
            j = key.get(tuple(np.round(-p, 6)))
            if j is not None and j < i:
                mod[i] = mod[j]
        return mod * np.exp(-0.5 * (np.hypot(pos[:, 0], pos[:, 1]) / g0) ** 2)

    int_a = intensities(pos_a)
    int_b = intensities(pos_b)
    diff_a = render_spots((h, w), centre, pos_a, int_a, spot_sigma_px)
    diff_b = render_spots((h, w), centre, pos_b, int_b, spot_sigma_px)
    if shared_spots:
        row = np.abs(pos_a[:, 0]) < 1e-9  # A's systematic row through the origin along det_x
        diff_b = diff_b + render_spots((h, w), centre, pos_a[row], int_a[row], spot_sigma_px)
    # Equal diffracted totals: the frame mean is then the same whatever the mixing fraction.
    total_a, total_b = diff_a.sum(), diff_b.sum()
    if total_b > 0:
        diff_b *= total_a / total_b
    beam = render_spots((h, w), centre, np.zeros((1, 2)), np.array([direct_beam * max(int_a.max(initial=0), 1e-3)]),
                        spot_sigma_px)
    factors = np.stack([diff_a + beam, diff_b + beam])
    factors /= factors.reshape(2, -1).mean(axis=1)[:, None, None]
    factors = factors.astype(np.float32)
    loadings = bicrystal_loadings((sy, sx), (float(boundary[0]), float(boundary[1])))

    dtype = np.dtype("float32") if dose is None else choose_count_dtype(float(dose) * float(factors.max()))
    calibration = {"scale": float(scale_inv_angstrom), "units": "1/A", "center": [float(centre[0]), float(centre[1])]}
    parameters = {
        "model": "inclined-boundary bicrystal, Gaussian spot arrays (Martineau et al. 2019, Figs. 5-6)",
        "scan_shape": [sy, sx], "det_shape": [h, w], "dose": None if dose is None else float(dose),
        "shared_spots": bool(shared_spots), "seed": int(seed), "boundary": [float(b) for b in boundary],
        "spacing_a_px": float(spacing_a_px), "spacing_b_px": float(spacing_b_px),
        "rotation_b_deg": float(rotation_b_deg), "angle_b_deg": float(angle_b_deg), "spot_sigma_px": float(spot_sigma_px), "falloff_px": g0,
        "direct_beam": float(direct_beam), "n_spots": [int(len(pos_a)), int(len(pos_b))],
    }
    return SPEDSimulation(scan_shape=(sy, sx), det_shape=(h, w), factors=factors, loadings=loadings,
                          dose=None if dose is None else float(dose), seed=int(seed), dtype=dtype,
                          calibration=calibration, shared_spots=bool(shared_spots), parameters=parameters)
