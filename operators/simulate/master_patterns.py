"""EBSD master patterns for the simulator: the shipped dynamical Ni one, or kinematical ones.

A master pattern is the Kikuchi intensity on the whole sphere of scattering
directions, stored in the square Lambert (equal-area) projection, one square
per hemisphere. Detector patterns are projected from it for any orientation
and detector geometry (:func:`project_patterns`).

Two kinds exist here:

``dynamical``
    The EMsoft dynamical Ni master pattern (20 kV, 401 x 401 per hemisphere)
    that ships inside the kikuchipy wheel
    (``kikuchipy.data.nickel_ebsd_master_pattern_small``). No download.
``kinematical``
    Computed offline for any library phase (or CIF) from its structure
    factors: every reflector :math:`\\{hkl\\}` with :math:`d_{hkl} \\ge d_{min}`
    whose structure factor is not negligible becomes a band of half-width
    :math:`\\theta_B(hkl)` (the Bragg angle at the beam energy) and intensity
    :math:`|F_{hkl}|^2`, via diffsims ``ReciprocalLatticeVector`` and
    kikuchipy ``KikuchiPatternSimulator``.

Kinematical master patterns are cached on disk as ``.npz`` under
``$DIFFRAFLOW_CACHE/master_patterns`` (default
``~/.cache/diffraflow/master_patterns``), named
``<phase>_<kv>kv_<half>_v<version>.npz`` with :data:`MASTER_PATTERN_VERSION`;
each file also stores a fingerprint of the structure, the simulation
parameters, that version and the diffsims/kikuchipy versions, and a stale or
unreadable file is silently recomputed. Files written before version 3 (whose
bands were wrong, see :func:`kinematical_master_pattern_arrays`) are never
read. All master patterns are returned with float32 intensities scaled to
``[0, 1]``, so the simulator's dose model does not depend on where a pattern
came from.

Heavy libraries (kikuchipy, diffsims, orix) are imported inside functions so
that importing this module stays cheap.

Examples
--------
>>> mp = get_master_pattern("ni")                      # dynamical, shipped
>>> mp.data.shape, str(mp.data.dtype), float(mp.data.max())
((2, 401, 401), 'float32', 1.0)
>>> resolve_kind("fe", 20), resolve_kind("ni", 20), resolve_kind("ni", 15)
('kinematical', 'dynamical', 'kinematical')
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.schemas.errors import SchemaError

__all__ = [
    "DEFAULT_HALF_SIZE",
    "DEFAULT_MIN_DSPACING_NM",
    "DEFAULT_MIN_RELATIVE_F",
    "MASTER_PATTERN_KINDS",
    "MASTER_PATTERN_VERSION",
    "cache_dir",
    "cache_path",
    "get_master_pattern",
    "kinematical_master_pattern_arrays",
    "master_pattern_from_arrays",
    "project_patterns",
    "resolve_kind",
]

#: Half size of computed master patterns: (2 * 200 + 1)^2 px per hemisphere,
#: the size of the shipped Ni pattern; about 1 s per phase on 2 cores.
DEFAULT_HALF_SIZE = 200
#: Smallest interplanar spacing (nm) whose reflectors become bands. 0.05 nm
#: keeps the bands visible on a 60 x 60 detector without slowing simulation.
DEFAULT_MIN_DSPACING_NM = 0.05
#: Reflectors with |F| below this fraction of the strongest are dropped: they
#: are invisible under |F|^2 scaling and only cost time.
DEFAULT_MIN_RELATIVE_F = 0.02
#: Beam energy of the shipped dynamical Ni master pattern, kV.
DYNAMICAL_NI_KV = 20.0
MASTER_PATTERN_KINDS = ("auto", "dynamical", "kinematical")
#: Version of the kinematical computation; bump it whenever the result
#: changes. It is in the cache file name and fingerprint, and in every
#: simulated scan's parameters, so patterns from older code are never reused.
#: 2: one numba thread (no race); 3: lattice handed to diffsims in Ångström
#: (bands had 6-10x their Bragg width before).
MASTER_PATTERN_VERSION = 3

_memo: dict[tuple, Any] = {}
_memo_lock = threading.Lock()


def cache_dir() -> Path:
    """Directory of cached master patterns (``$DIFFRAFLOW_CACHE/master_patterns``).

    Examples
    --------
    >>> cache_dir().name
    'master_patterns'
    """
    root = os.environ.get("DIFFRAFLOW_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "diffraflow"
    return base / "master_patterns"


def _kv_text(energy_kv: float) -> str:
    return f"{float(energy_kv):g}".replace(".", "p")


def cache_path(phase_name: str, energy_kv: float, half_size: int) -> Path:
    """Where the kinematical master pattern of a phase is cached.

    Examples
    --------
    >>> cache_path("fe", 20, 200).name
    'fe_20kv_200_v3.npz'
    """
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(phase_name).lower())
    return cache_dir() / f"{safe}_{_kv_text(energy_kv)}kv_{int(half_size)}_v{MASTER_PATTERN_VERSION}.npz"


def resolve_kind(phase_name: str, energy_kv: float, kind: str = "auto") -> str:
    """Which kind of master pattern ``get_master_pattern`` will use.

    ``auto`` picks the shipped dynamical pattern for Ni at 20 kV (the only
    energy it was simulated at) and a kinematical one otherwise.

    Raises
    ------
    SchemaError
        Unknown ``kind``, or ``dynamical`` asked for a phase/energy that has
        no shipped dynamical pattern.

    Examples
    --------
    >>> resolve_kind("Ni", 20.0, "kinematical")
    'kinematical'
    """
    if kind not in MASTER_PATTERN_KINDS:
        raise SchemaError("master_pattern", f"unknown kind {kind!r}", f"use one of {', '.join(MASTER_PATTERN_KINDS)}")
    from diffraflow.operators.crystallography.phases import PHASE_ALIASES

    name = str(phase_name).lower()
    name = PHASE_ALIASES.get(name, name)
    has_dynamical = name == "ni" and abs(float(energy_kv) - DYNAMICAL_NI_KV) < 1e-6
    if kind == "dynamical" and not has_dynamical:
        raise SchemaError("master_pattern", f"no dynamical master pattern ships for {phase_name!r} at "
                          f"{energy_kv:g} kV (only Ni at 20 kV)",
                          "use --master-pattern kinematical (or auto), or phase ni at --energy 20")
    if kind == "auto":
        return "dynamical" if has_dynamical else "kinematical"
    return kind


def _quiet():
    """Silence the tqdm bars kikuchipy prints unconditionally while computing."""
    return contextlib.redirect_stderr(io.StringIO())


@contextlib.contextmanager
def _single_numba_thread():
    """Run kikuchipy's band kernel on one thread.

    ``kikuchipy.simulations.kikuchi_pattern_simulator.get_pattern`` (0.13) is a
    ``prange`` over reflectors in which every thread adds into the same pixels:
    a data race that occasionally loses a band's contribution, so a pattern is
    neither reproducible nor symmetric. One thread costs about a second per
    phase at the default size. ``set_num_threads`` is thread-local in numba.
    """
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _structure_fingerprint(phase, energy_kv: float, half_size: int, min_dspacing: float,
                           min_relative_f: float) -> str:
    from importlib.metadata import version

    from diffraflow.operators.crystallography.phases import phase_to_record

    record = phase_to_record(phase)
    record.pop("color", None)
    # The libraries' versions too: their units or kernels may change under us.
    payload = {"phase": record, "kv": float(energy_kv), "half": int(half_size), "dmin": float(min_dspacing),
               "fmin": float(min_relative_f), "version": MASTER_PATTERN_VERSION,
               "diffsims": version("diffsims"), "kikuchipy": version("kikuchipy")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def kinematical_master_pattern_arrays(phase, energy_kv: float = 20.0, half_size: int = DEFAULT_HALF_SIZE,
                                      min_dspacing: float = DEFAULT_MIN_DSPACING_NM,
                                      min_relative_f: float = DEFAULT_MIN_RELATIVE_F) -> np.ndarray:
    """Compute a kinematical Lambert master pattern, both hemispheres, scaled to [0, 1].

    Parameters
    ----------
    phase
        orix ``Phase`` with space group and structure (lattice in nm, or Å).
    energy_kv
        Beam energy; sets the Bragg angles, hence the band widths.
    half_size
        Output is ``(2, 2 * half_size + 1, 2 * half_size + 1)``.
    min_dspacing
        Smallest interplanar spacing of a reflector, nm.
    min_relative_f
        Drop reflectors with ``|F| < min_relative_f * max |F|`` (space-group
        and structure extinctions give ``|F| ~ 0``).

    Returns
    -------
    numpy.ndarray
        float32 ``(hemisphere, y, x)``: index 0 upper, 1 lower.

    Notes
    -----
    Band intensity is :math:`|F_{hkl}|^2` (``scaling="square"``), the
    kinematical two-beam intensity; structure factors use the atomic
    scattering factors tabulated in diffsims. diffsims assumes Ångström, so
    the phase is converted with
    :func:`diffraflow.operators.crystallography.phases.phase_in_angstrom` first (a
    phase already in Ångström gives the same pattern). The stereographic
    pattern that kikuchipy computes is resampled to the Lambert projection by
    ``EBSDMasterPattern.as_lambert``.

    Examples
    --------
    >>> from diffraflow.operators.crystallography.phases import get_phase
    >>> arr = kinematical_master_pattern_arrays(get_phase("fe"), half_size=20)
    >>> arr.shape, float(arr.max())
    ((2, 41, 41), 1.0)
    """
    from diffraflow.operators.crystallography.phases import phase_in_angstrom
    from diffsims.crystallography import ReciprocalLatticeVector
    from kikuchipy.simulations import KikuchiPatternSimulator

    with _quiet(), np.errstate(all="ignore"), _single_numba_thread():
        # diffsims wants Ångström. Cache versions 1-2 passed the nanometre
        # lattice: bands 6-10 times too wide and scattering factors taken at
        # ten times sin(theta)/lambda (most families damped away), so the
        # simulated scans did not index back to their truth.
        ref = ReciprocalLatticeVector.from_min_dspacing(phase_in_angstrom(phase), 10.0 * float(min_dspacing))
        ref.sanitise_phase()  # expand the asymmetric unit to the full cell
        ref = ref.unique(use_symmetry=True)  # one reflector per family: F is computed once
        ref.calculate_structure_factor()
        strength = np.abs(ref.structure_factor)
        if not np.isfinite(strength).all() or strength.max() <= 0:
            raise SchemaError(f"phase {phase.name}", "all structure factors vanish",
                              "check the phase's atoms and space group")
        ref = ref[strength >= min_relative_f * strength.max()]
        ref = ref.symmetrise()
        ref.calculate_theta(float(energy_kv) * 1e3)
        simulator = KikuchiPatternSimulator(ref)
        stereo = simulator.calculate_master_pattern(half_size=int(half_size), hemisphere="both", scaling="square")
        lambert = stereo.as_lambert(show_progressbar=False)
    data = np.asarray(lambert.data, dtype=np.float64)
    return _unit_range(data)


def _unit_range(data: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(data)), float(np.max(data))
    scale = hi - lo if hi > lo else 1.0
    return ((data - lo) / scale).astype(np.float32)


def master_pattern_from_arrays(data: np.ndarray, phase):
    """Wrap ``(2, n, n)`` Lambert arrays (upper, lower) as a kikuchipy ``EBSDMasterPattern``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.crystallography.phases import get_phase
    >>> mp = master_pattern_from_arrays(np.zeros((2, 5, 5), "float32"), get_phase("al"))
    >>> mp.projection, mp.hemisphere
    ('lambert', 'both')
    """
    from kikuchipy.signals import EBSDMasterPattern

    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3 or data.shape[0] != 2 or data.shape[1] != data.shape[2] or data.shape[1] % 2 == 0:
        raise SchemaError("master pattern", f"expected (2, n, n) arrays with odd n, got {data.shape}",
                          "delete the cached file so it is recomputed")
    size = data.shape[1]
    axes = [{"size": 2, "name": "hemisphere"}]
    axes += [{"size": size, "name": name, "offset": -(size // 2), "units": "px"} for name in ("height", "width")]
    return EBSDMasterPattern(data, axes=axes, phase=phase, hemisphere="both", projection="lambert")


def _load_dynamical_ni():
    import kikuchipy as kp

    with _quiet():
        mp = kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")
    from diffraflow.operators.crystallography.phases import get_phase

    # The library Ni phase (same lattice) so phase records agree with the cube metadata.
    return master_pattern_from_arrays(_unit_range(np.asarray(mp.data, dtype=np.float64)), get_phase("ni"))


def _load_or_compute_kinematical(phase, energy_kv: float, half_size: int, min_dspacing: float,
                                 min_relative_f: float, use_cache: bool):
    fingerprint = _structure_fingerprint(phase, energy_kv, half_size, min_dspacing, min_relative_f)
    path = cache_path(phase.name, energy_kv, half_size)
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["fingerprint"]) == fingerprint:
                    return master_pattern_from_arrays(stored["data"], phase)
        except Exception:  # a truncated or foreign file is just recomputed
            pass
    data = kinematical_master_pattern_arrays(phase, energy_kv, half_size, min_dspacing, min_relative_f)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write under a private name, then rename: concurrent runs never read half a file.
            temp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.npz")
            np.savez(temp, data=data, fingerprint=np.array(fingerprint))
            os.replace(temp, path)
        except OSError:
            pass  # an unwritable cache only costs time
    return master_pattern_from_arrays(data, phase)


def get_master_pattern(phase_name: str = "ni", energy_kv: float = 20.0, kind: str = "auto",
                       half_size: int | None = None, use_cache: bool = True,
                       min_dspacing: float = DEFAULT_MIN_DSPACING_NM,
                       min_relative_f: float = DEFAULT_MIN_RELATIVE_F):
    """An EBSD master pattern (Lambert, both hemispheres, float32 in [0, 1]) for a phase.

    Parameters
    ----------
    phase_name
        Library name (``ni``, ``fe``, ``ni3al``...) or the path of a CIF file.
    energy_kv
        Beam energy in kV.
    kind
        ``"auto"`` (dynamical for Ni at 20 kV, else kinematical),
        ``"dynamical"`` or ``"kinematical"``; see :func:`resolve_kind`.
    half_size
        Kinematical only: pattern side is ``2 * half_size + 1``
        (default :data:`DEFAULT_HALF_SIZE`).
    use_cache
        Read and write the on-disk cache (kinematical only).
    min_dspacing, min_relative_f
        Kinematical only: reflector selection, see
        :func:`kinematical_master_pattern_arrays`.

    Returns
    -------
    kikuchipy.signals.EBSDMasterPattern
        Shared per process for equal arguments: do not modify it in place.

    Raises
    ------
    SchemaError
        Unknown phase or kind, or an impossible request.

    Examples
    --------
    >>> mp = get_master_pattern("al", half_size=25)
    >>> mp.data.shape, mp.phase.point_group.name
    ((2, 51, 51), 'm-3m')
    """
    from diffraflow.operators.crystallography.phases import get_phase

    if not (np.isfinite(energy_kv) and 1.0 <= float(energy_kv) <= 1000.0):
        raise SchemaError("energy_kv", f"beam energy must lie in [1, 1000] kV, got {energy_kv}",
                          "give the accelerating voltage in kV, e.g. 20")
    resolved = resolve_kind(phase_name, energy_kv, kind)
    half = DEFAULT_HALF_SIZE if half_size is None else int(half_size)
    if half < 5:
        raise SchemaError("half_size", f"master-pattern half size must be >= 5, got {half}",
                          f"use the default {DEFAULT_HALF_SIZE}")
    key = (str(phase_name).lower(), float(energy_kv), resolved, half if resolved == "kinematical" else None,
           float(min_dspacing), float(min_relative_f), str(cache_dir()) if use_cache else None)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    if resolved == "dynamical":
        mp = _load_dynamical_ni()
    else:
        phase = get_phase(phase_name)
        mp = _load_or_compute_kinematical(phase, float(energy_kv), half, float(min_dspacing),
                                          float(min_relative_f), use_cache)
    with _memo_lock:
        _memo.setdefault(key, mp)
        return _memo[key]


def project_patterns(master_pattern, quaternions: np.ndarray, detector, energy_kv: float | None = None) -> np.ndarray:
    """Project detector patterns from a master pattern, one per orientation.

    Parameters
    ----------
    master_pattern
        A Lambert ``EBSDMasterPattern`` with float32 data (as returned by
        :func:`get_master_pattern`), so values are interpolated, not rescaled.
    quaternions
        ``(n, 4)`` unit quaternions, scalar first (orix convention: crystal to
        sample, Bunge).
    detector
        kikuchipy ``EBSDDetector`` with a single projection centre.
    energy_kv
        Passed to kikuchipy; ignored for single-energy master patterns.

    Returns
    -------
    numpy.ndarray
        float32 ``(n, det_y, det_x)``.

    Examples
    --------
    >>> import numpy as np, kikuchipy as kp
    >>> det = kp.detectors.EBSDDetector(shape=(12, 16), pc=(0.5, 0.3, 0.6))
    >>> project_patterns(get_master_pattern("ni"), np.array([[1.0, 0, 0, 0]]), det).shape
    (1, 12, 16)
    """
    from orix.quaternion import Rotation

    q = np.asarray(quaternions, dtype=np.float64).reshape(-1, 4)
    if len(q) == 0:
        return np.empty((0, *detector.shape), dtype=np.float32)
    signal = master_pattern.get_patterns(Rotation(q), detector, energy=energy_kv, dtype_out="float32",
                                         compute=True, show_progressbar=False)
    return np.asarray(signal.data, dtype=np.float32).reshape(len(q), *detector.shape)
