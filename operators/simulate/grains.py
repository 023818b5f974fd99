"""Synthetic microstructures: Voronoi grains, random orientations, in-grain spread, phases.

Pure NumPy kernels; quaternions are ``(..., 4)`` arrays, scalar first, in the
orix convention (crystal to sample), so they can be wrapped as
``orix.quaternion.Rotation`` without copying.

Examples
--------
>>> from diffraflow.operators.simulate.noise import stream_rng
>>> gid, seeds = voronoi_grain_map((4, 6), 3, stream_rng(0, 1))
>>> gid.shape, seeds.shape, int(gid.max()) < 3
((4, 6), (3, 2), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from diffraflow.schemas.errors import SchemaError

__all__ = [
    "assign_phases",
    "misorientation_angle_deg",
    "perturb_quaternions",
    "quaternion_multiply",
    "random_quaternions",
    "voronoi_grain_map",
]


def voronoi_grain_map(scan_shape: tuple[int, int], n_grains: int, rng: np.random.Generator,
                      block_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Assign every scan point to its nearest of ``n_grains`` random seed points.

    Parameters
    ----------
    scan_shape
        ``(scan_y, scan_x)``.
    n_grains
        Number of seed points, drawn uniformly over the scan area.
    rng
        Source of the seed positions.
    block_rows
        Rows handled at once, bounding memory to ``block_rows * scan_x * n_grains``.

    Returns
    -------
    grain_id : numpy.ndarray
        int32 ``scan_shape``, values in ``[0, n_grains)``. A seed may own no
        point when the scan is small.
    seeds : numpy.ndarray
        float64 ``(n_grains, 2)`` seed positions ``(y, x)`` in scan pixels.

    Examples
    --------
    >>> import numpy as np
    >>> gid, _ = voronoi_grain_map((3, 3), 1, np.random.default_rng(0))
    >>> gid.tolist()
    [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    """
    sy, sx = int(scan_shape[0]), int(scan_shape[1])
    if n_grains < 1:
        raise SchemaError("n_grains", f"need at least one grain, got {n_grains}", "give --grains 1 or more")
    seeds = np.column_stack([rng.uniform(-0.5, sy - 0.5, n_grains), rng.uniform(-0.5, sx - 0.5, n_grains)])
    grain_id = np.empty((sy, sx), dtype=np.int32)
    xs = np.arange(sx, dtype=np.float64)
    for y0 in range(0, sy, block_rows):
        ys = np.arange(y0, min(sy, y0 + block_rows), dtype=np.float64)
        d2 = ((ys[:, None, None] - seeds[None, None, :, 0]) ** 2
              + (xs[None, :, None] - seeds[None, None, :, 1]) ** 2)
        grain_id[y0:y0 + len(ys)] = np.argmin(d2, axis=-1)
    return grain_id, seeds


def random_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` orientations uniformly distributed over SO(3), scalar first, ``w >= 0``.

    Notes
    -----
    A normalised 4D standard-normal vector is uniform on the 3-sphere, hence
    Haar-uniform as a rotation; this is what ``orix.quaternion.Rotation.random``
    does, but seeded.

    Examples
    --------
    >>> import numpy as np
    >>> q = random_quaternions(5, np.random.default_rng(0))
    >>> q.shape, bool(np.allclose(np.linalg.norm(q, axis=1), 1)), bool((q[:, 0] >= 0).all())
    ((5, 4), True, True)
    """
    q = rng.standard_normal((int(n), 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    return q


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` of scalar-first quaternion arrays (broadcasting).

    Examples
    --------
    >>> import numpy as np
    >>> i, j = np.array([0.0, 1, 0, 0]), np.array([0.0, 0, 1, 0])
    >>> quaternion_multiply(i, j).tolist()  # i j = k
    [0.0, 0.0, 0.0, 1.0]
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=-1)


def perturb_quaternions(q: np.ndarray, spread_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate each orientation by a small random rotation with RMS angle ``spread_deg``.

    Parameters
    ----------
    q
        ``(..., 4)`` unit quaternions.
    spread_deg
        Root-mean-square misorientation angle from ``q``, degrees; the angle
        is truncated at three times this value so no point strays far.
    rng
        Source of the perturbations.

    Returns
    -------
    numpy.ndarray
        ``q * dq`` (the perturbation acts in the crystal frame), ``w >= 0``.

    Notes
    -----
    The rotation vector :math:`\\omega` of ``dq`` has independent normal
    components of variance :math:`\\sigma^2/3`, so
    :math:`E|\\omega|^2 = \\sigma^2` and the misorientation angle is
    :math:`|\\omega|` (Maxwell distributed).

    Examples
    --------
    >>> import numpy as np
    >>> q = np.tile([1.0, 0, 0, 0], (1000, 1))
    >>> p = perturb_quaternions(q, 2.0, np.random.default_rng(0))
    >>> round(float(np.sqrt(np.mean(misorientation_angle_deg(q, p) ** 2))), 1)
    2.0
    """
    q = np.asarray(q, dtype=np.float64)
    if spread_deg <= 0:
        return q.copy()
    sigma = np.deg2rad(float(spread_deg))
    omega = rng.normal(0.0, sigma / np.sqrt(3.0), size=q.shape[:-1] + (3,))
    angle = np.linalg.norm(omega, axis=-1, keepdims=True)
    # Truncate at 3 sigma, keeping the axis, so a rare outlier cannot cross into a neighbour's orientation.
    clipped = np.minimum(angle, 3.0 * sigma)
    axis = np.divide(omega, angle, out=np.zeros_like(omega), where=angle > 0)
    dq = np.concatenate([np.cos(clipped / 2), axis * np.sin(clipped / 2)], axis=-1)
    out = quaternion_multiply(q, dq)
    out /= np.linalg.norm(out, axis=-1, keepdims=True)
    out[out[..., 0] < 0] *= -1
    return out


def misorientation_angle_deg(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Rotation angle between orientations, degrees, ignoring crystal symmetry.

    Examples
    --------
    >>> import numpy as np
    >>> c = np.cos(np.deg2rad(5)); s = np.sin(np.deg2rad(5))
    >>> float(np.round(misorientation_angle_deg([1.0, 0, 0, 0], [c, s, 0, 0]), 6))
    10.0
    """
    dot = np.abs(np.sum(np.asarray(q1, dtype=np.float64) * np.asarray(q2, dtype=np.float64), axis=-1))
    return np.rad2deg(2.0 * np.arccos(np.clip(dot, 0.0, 1.0)))


def assign_phases(n_grains: int, n_phases: int, rng: np.random.Generator,
                  fractions: Sequence[float] | None = None) -> np.ndarray:
    """A phase index per grain, drawn with probabilities ``fractions``.

    When there are at least as many grains as phases, every phase is given at
    least one grain (taken from the most common phase), so a two-phase
    request always yields two phases.

    Examples
    --------
    >>> import numpy as np
    >>> assign_phases(4, 2, np.random.default_rng(0), [0.99, 0.01]).tolist().count(1) >= 1
    True
    """
    if fractions is None:
        p = np.full(n_phases, 1.0 / n_phases)
    else:
        p = np.asarray(fractions, dtype=np.float64)
        if p.shape != (n_phases,) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise SchemaError("phase_fractions", f"need {n_phases} non-negative fractions, got {list(fractions)}",
                              "give one fraction per phase, e.g. --phase-fractions 0.7 0.3")
        p = p / p.sum()
    phase = rng.choice(n_phases, size=int(n_grains), p=p).astype(np.int32)
    if n_grains >= n_phases:
        for missing in range(n_phases):
            if (phase == missing).any() or p[missing] == 0:
                continue
            common = np.bincount(phase, minlength=n_phases).argmax()
            phase[np.flatnonzero(phase == common)[0]] = missing
    return phase
