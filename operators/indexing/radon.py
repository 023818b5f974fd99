"""Look-up-table Radon transform of batches of EBSD patterns.

The transform integrates pattern intensity along straight lines
:math:`u\\cos\\theta + v\\sin\\theta = \\rho` of the detector image, with
:math:`(u, v)` measured in pixels from the image centre (``u`` to the right,
``v`` down) and :math:`\\theta \\in [0, 180)` degrees. A planar detector maps a
lattice plane's trace onto a straight line, so each Kikuchi band becomes a
peak :math:`(\\rho, \\theta)`.

The look-up table is computed once: for every angle and every pixel inside the
mask, the fractional ``rho`` bin the pixel falls into. The pixel's value is
split linearly between the two neighbouring bins (a "splat"), which keeps the
transform smooth enough for sub-bin peak refinement. Each bin is finally
divided by the (equally splatted) number of mask pixels on its line, so the
transform is a *line mean*: lines of different length are comparable.

Patterns are processed in blocks laid out pixel-major, ``(n_pixels, B)``, so
the innermost loop runs over the ``B`` patterns of the block with unit stride:
the compiler turns it into SIMD adds, and one pass over the table serves ``B``
patterns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

__all__ = ["RadonPlan", "make_radon_plan", "radon_block"]


@dataclass(frozen=True)
class RadonPlan:
    """A Radon look-up table for one detector shape, mask and resolution.

    Attributes
    ----------
    shape
        Detector ``(rows, cols)``.
    mask_index
        ``(n_mask,)`` flat indices of the pixels used.
    theta
        ``(n_theta,)`` angles in radians.
    rho
        ``(n_rho,)`` bin centres in pixels.
    lut_bin
        ``(n_theta, n_mask)`` int32 lower ``rho`` bin of each pixel.
    lut_weight
        ``(n_theta, n_mask)`` float32 share that goes to the upper bin.
    inv_count
        ``(n_theta, n_rho)`` float32 inverse line length, 0 where the bin is
        not used (too short a line or outside ``rho_mask_frac``).
    """

    shape: tuple[int, int]
    mask_index: np.ndarray
    theta: np.ndarray
    rho: np.ndarray
    rho_step: float
    lut_bin: np.ndarray
    lut_weight: np.ndarray
    inv_count: np.ndarray

    @property
    def n_theta(self) -> int:
        return int(self.theta.size)

    @property
    def n_rho(self) -> int:
        return int(self.rho.size)


def make_radon_plan(
    shape: tuple[int, int],
    n_theta: int = 180,
    rho_step: float = 1.0,
    mask_radius: float | None = 1.0,
    rho_mask_frac: float = 0.1,
    norm_power: float = 1.0,
) -> RadonPlan:
    """Build the Radon look-up table for a detector shape.

    Parameters
    ----------
    shape
        Detector ``(rows, cols)``.
    n_theta
        Number of angles over 180 degrees.
    rho_step
        Bin width in pixels.
    mask_radius
        Circular mask radius as a fraction of half the shorter detector side;
        ``None`` uses the whole rectangle.
    rho_mask_frac
        Fraction of the largest ``|rho|`` that is ignored (short, noisy lines).
    norm_power
        Each bin is divided by its line length to this power: 1 gives line
        means, 0.5 gives sums in units of their own noise (white noise), which
        ranks long, reliable lines higher.

    Returns
    -------
    RadonPlan

    Examples
    --------
    >>> plan = make_radon_plan((60, 80))
    >>> plan.n_theta, plan.n_rho, plan.mask_index.size > 2000
    (180, 61, True)
    """
    nrows, ncols = int(shape[0]), int(shape[1])
    v, u = np.mgrid[0:nrows, 0:ncols].astype(np.float64)
    u = u + 0.5 - ncols / 2
    v = v + 0.5 - nrows / 2
    if mask_radius is None:
        inside = np.ones((nrows, ncols), dtype=bool)
        rho_max = 0.5 * np.hypot(nrows, ncols)
    else:
        radius = float(mask_radius) * 0.5 * min(nrows, ncols)
        inside = u**2 + v**2 <= radius**2
        rho_max = radius
    mask_index = np.flatnonzero(inside.ravel()).astype(np.int64)
    uu = u.ravel()[mask_index]
    vv = v.ravel()[mask_index]

    half = int(np.ceil(rho_max / rho_step))
    n_rho = 2 * half + 1
    rho = (np.arange(n_rho) - half) * rho_step
    theta = np.arange(n_theta) * (np.pi / n_theta)

    f = (np.outer(np.cos(theta), uu) + np.outer(np.sin(theta), vv)) / rho_step + half
    f = np.clip(f, 0.0, n_rho - 1.000001)
    lut_bin = np.floor(f).astype(np.int32)
    lut_weight = (f - lut_bin).astype(np.float32)

    count = np.zeros((n_theta, n_rho), dtype=np.float64)
    for t in range(n_theta):
        np.add.at(count[t], lut_bin[t], 1.0 - lut_weight[t])
        np.add.at(count[t], lut_bin[t] + 1, lut_weight[t])
    # A line shorter than a fifth of the mask diameter carries too few pixels.
    min_len = max(3.0, 0.2 * 2 * rho_max)
    ok = (count >= min_len) & (np.abs(rho)[None, :] <= (1.0 - rho_mask_frac) * rho_max)
    inv_count = np.where(ok, np.maximum(count, 1e-12) ** -norm_power, 0.0).astype(np.float32)
    return RadonPlan(
        shape=(nrows, ncols),
        mask_index=mask_index,
        theta=theta,
        rho=rho,
        rho_step=float(rho_step),
        lut_bin=np.ascontiguousarray(lut_bin),
        lut_weight=np.ascontiguousarray(lut_weight),
        inv_count=inv_count,
    )


@nb.njit(cache=True, fastmath=True, nogil=True)
def radon_block(x, lut_bin, lut_weight, inv_count, out):  # pragma: no cover - numba
    """Radon line means of a pixel-major block.

    Parameters
    ----------
    x
        ``(n_mask, B)`` float32 pattern values inside the mask.
    lut_bin, lut_weight, inv_count
        From :class:`RadonPlan`.
    out
        ``(n_theta, n_rho, B)`` float32, overwritten.
    """
    n_theta, n_mask = lut_bin.shape
    n_rho = inv_count.shape[1]
    nb_ = x.shape[1]
    out[:] = 0.0
    for t in range(n_theta):
        acc = out[t]
        for p in range(n_mask):
            i0 = lut_bin[t, p]
            w1 = lut_weight[t, p]
            w0 = 1.0 - w1
            for b in range(nb_):
                xv = x[p, b]
                acc[i0, b] += w0 * xv
                acc[i0 + 1, b] += w1 * xv
        for i in range(n_rho):
            c = inv_count[t, i]
            for b in range(nb_):
                acc[i, b] *= c
