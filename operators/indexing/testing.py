"""Seeded synthetic EBSD data for the indexer's tests and benchmark.

Patterns are projected with kikuchipy from a master pattern (the dynamical Ni
one that ships with kikuchipy, or the simulator's kinematical one for any phase),
then degraded: a smooth detector background multiplies the signal, the result
is scaled to a mean dose (counts per pixel) and Poisson noise is drawn.
Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ni_master_pattern",
    "kinematical_master_pattern",
    "simulate_patterns",
    "disorientation_deg",
]


def ni_master_pattern():
    """kikuchipy's small dynamical Ni master pattern (Lambert, both hemispheres).

    Examples
    --------
    >>> ni_master_pattern().phase.name
    'ni'
    """
    import kikuchipy as kp

    return kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")


def kinematical_master_pattern(phase, half_size: int = 200, min_dspacing: float = 0.06, energy_kv: float = 20.0):
    """Kinematical Lambert master pattern of any phase (offline, about a second per phase).

    The simulator's computation
    (:func:`diffraflow.operators.simulate.master_patterns.kinematical_master_pattern_arrays`)
    with this module's reflector selection: one code path, lattice handed to
    diffsims in Ångström, band kernel on one numba thread so the pattern is
    reproducible. No disk cache.

    Parameters
    ----------
    phase
        orix ``Phase`` with structure (lattice in nm).
    half_size
        Half the side of the square Lambert projection.
    min_dspacing
        Smallest d-spacing (nm) of the reflectors simulated.
    energy_kv
        Beam energy.

    Returns
    -------
    kikuchipy.signals.EBSDMasterPattern
        Both hemispheres, float32 in ``[0, 1]``, carrying ``phase``.

    Examples
    --------
    >>> from diffraflow.operators.crystallography import get_phase
    >>> mp = kinematical_master_pattern(get_phase("fe"), half_size=10)
    >>> mp.data.shape, mp.phase.name
    ((2, 21, 21), 'fe')
    """
    from diffraflow.operators.simulate.master_patterns import (
        kinematical_master_pattern_arrays,
        master_pattern_from_arrays,
    )

    # |F| above 5 % of the strongest: the families the indexer's tables know.
    data = kinematical_master_pattern_arrays(phase, energy_kv=energy_kv, half_size=half_size,
                                             min_dspacing=min_dspacing, min_relative_f=0.05)
    return master_pattern_from_arrays(data, phase)


def simulate_patterns(
    master_pattern,
    rotations,
    detector,
    dose: float | None = None,
    seed: int = 0,
    background: float = 0.5,
    energy: float = 20,
) -> np.ndarray:
    """Project patterns and add a smooth background and Poisson noise.

    Parameters
    ----------
    master_pattern
        kikuchipy master pattern in the Lambert projection.
    rotations
        orix ``Rotation`` (n,).
    detector
        kikuchipy ``EBSDDetector``.
    dose
        Mean counts per pixel; ``None`` for noise-free float patterns.
    seed
        Seed of the Poisson draw.
    background
        Weight of the smooth background against the Kikuchi signal.
    energy
        Beam energy in kV (must exist in the master pattern).

    Returns
    -------
    numpy.ndarray
        ``(n, rows, cols)`` float32 (counts when ``dose`` is given).
    """
    sim = master_pattern.get_patterns(rotations, detector, energy=energy, compute=True, show_progressbar=False)
    clean = np.asarray(sim.data, dtype=np.float64).reshape((-1,) + tuple(detector.shape))
    lo = clean.min(axis=(1, 2), keepdims=True)
    hi = clean.max(axis=(1, 2), keepdims=True)
    clean = (clean - lo) / np.maximum(hi - lo, 1e-12)
    rows, cols = detector.shape
    v, u = np.mgrid[0:rows, 0:cols]
    # A broad off-centre hump, as the backscatter yield peaks towards the
    # top of a tilted-sample detector.
    bg = np.exp(-(((u - 0.45 * cols) / (0.7 * cols)) ** 2 + ((v - 0.3 * rows) / (0.8 * rows)) ** 2))
    img = (background * bg + (1.0 - background) * clean * (0.4 + 0.6 * bg))[None] if clean.ndim == 2 else (
        background * bg + (1.0 - background) * clean * (0.4 + 0.6 * bg)
    )
    if dose is None:
        return img.astype(np.float32)
    rng = np.random.default_rng(seed)
    lam = img * (dose / img.mean(axis=(1, 2), keepdims=True))
    return rng.poisson(lam).astype(np.float32)


def disorientation_deg(q_est, q_true, symmetry) -> np.ndarray:
    """Disorientation angles (degrees) between two rotation sets under a symmetry.

    Parameters
    ----------
    q_est, q_true
        orix ``Rotation`` or ``(n, 4)`` quaternion arrays.
    symmetry
        orix ``Symmetry`` (e.g. ``phase.point_group``).

    Examples
    --------
    >>> from orix.quaternion import Rotation, symmetry
    >>> r = Rotation.random(3)
    >>> bool(np.all(disorientation_deg(r, r, symmetry.Oh) < 1e-3))
    True
    """
    from orix.quaternion import Misorientation, Rotation

    a = q_est if isinstance(q_est, Rotation) else Rotation(np.asarray(q_est))
    b = q_true if isinstance(q_true, Rotation) else Rotation(np.asarray(q_true))
    m = Misorientation(a * ~b, symmetry=(symmetry, symmetry))
    return np.degrees(m.reduce().angle)
