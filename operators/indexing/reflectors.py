"""Reflector families and the interplanar-angle look-up table of one phase.

A Kikuchi band is the trace of a lattice plane, so what the indexer can see is
a set of plane *normals* (directions, sign-free). This module turns an orix
``Phase`` into:

* the strongest reflector families, ranked by kinematical intensity
  :math:`|F_{hkl}|^2` computed with diffsims (one family per set of
  symmetry-equivalent normal directions, higher orders of the same direction
  merged into the first allowed order);
* every member normal of those families (one of each ``±`` pair);
* a table of crystal-frame reference pairs ``(h_a, h_b)`` with their acute
  interplanar angle, reduced by the proper Laue group so that no two rows give
  symmetry-equivalent orientations. Each row carries the orthonormal triad
  used by the TRIAD orientation estimate of :mod:`diffraflow.operators.indexing.voting`.

Everything here runs once per phase in the indexer's constructor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from diffraflow.operators.crystallography.phases import phase_in_angstrom
from diffraflow.schemas.errors import SchemaError

__all__ = ["ReflectorTable", "build_reflector_table"]


@dataclass(frozen=True)
class ReflectorTable:
    """Reflector families and interplanar-angle pairs of one phase.

    Attributes
    ----------
    name
        Phase name.
    families
        ``(n_families, 3)`` integer Miller indices of each family's representative.
    family_intensity
        ``(n_families,)`` kinematical :math:`|F|^2`, normalised to the strongest.
    normals
        ``(n_normals, 3)`` float64 unit plane normals (crystal Cartesian frame),
        one per ``±`` pair, all families concatenated.
    normal_family
        ``(n_normals,)`` family index of each normal.
    pair_angle
        ``(n_pairs,)`` acute angle (radians) between the two normals of each
        reference pair, sorted ascending.
    pair_family
        ``(n_pairs, 2)`` family indices of each reference pair.
    pair_triad
        ``(n_pairs, 3, 3)`` orthonormal crystal triad of each pair (rows:
        ``h_a``, ``unit(h_a x h_b)``, ``h_a x unit(h_a x h_b)``).
    symmetry
        ``(n_sym, 3, 3)`` proper rotations of the Laue group (crystal frame).
    """

    name: str
    families: np.ndarray
    family_intensity: np.ndarray
    normals: np.ndarray
    normal_family: np.ndarray
    pair_angle: np.ndarray
    pair_family: np.ndarray
    pair_triad: np.ndarray
    symmetry: np.ndarray


def _direction_key(v: np.ndarray) -> tuple[int, int, int]:
    # Sign-free key for a unit vector: the sign is fixed by the first clearly
    # non-zero component, then rounded for hashing.
    w = np.asarray(v, dtype=float)
    for x in w:
        if abs(x) > 1e-6:
            if x < 0:
                w = -w
            break
    return tuple(int(round(x * 1e5)) for x in w)  # type: ignore[return-value]


def _kinematical_intensity(phase, hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|F|^2 and unit Cartesian normals of ``hkl`` rows (diffsims, X-ray tables)."""
    from diffsims.crystallography import ReciprocalLatticeVector

    rlv = ReciprocalLatticeVector(phase_in_angstrom(phase), hkl=hkl)
    rlv.sanitise_phase()  # expands the asymmetric unit so F sums the whole cell
    rlv.calculate_structure_factor()
    f2 = np.abs(np.asarray(rlv.structure_factor)) ** 2
    xyz = np.asarray(rlv.data, dtype=float)
    xyz = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    return f2, xyz


def build_reflector_table(
    phase,
    n_families: int | None = None,
    max_index: int = 4,
    min_normals: int = 24,
    families: np.ndarray | None = None,
) -> ReflectorTable:
    """Build the reflector families and interplanar-angle table of a phase.

    Parameters
    ----------
    phase
        orix ``Phase`` with a space group and a diffpy structure.
    n_families
        Number of families to keep. ``None`` keeps the strongest families until
        at least ``min_normals`` distinct plane normals are covered (at least
        3, at most 10 families), which gives 4 families for FCC and BCC.
    max_index
        Largest Miller index searched.
    min_normals
        See ``n_families``.
    families
        Explicit family representatives ``(k, 3)``; overrides the ranking.

    Returns
    -------
    ReflectorTable

    Examples
    --------
    >>> from diffraflow.operators.crystallography import get_phase
    >>> table = build_reflector_table(get_phase("ni"))
    >>> [tuple(int(i) for i in f) for f in table.families]
    [(1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1)]
    """
    if phase is None or getattr(phase, "space_group", None) is None:
        raise SchemaError(
            "phase_list",
            f"phase {getattr(phase, 'name', phase)!r} has no space group",
            "give each phase a space group (e.g. operators.crystallography.get_phase('ni'))",
        )
    sym = np.asarray(phase.point_group.laue_proper_subgroup.to_matrix(), dtype=float)

    rng = np.arange(-max_index, max_index + 1)
    hkl = np.array(np.meshgrid(rng, rng, rng, indexing="ij")).reshape(3, -1).T
    hkl = hkl[np.any(hkl != 0, axis=1)]
    f2, xyz = _kinematical_intensity(phase, hkl)
    f2max = f2.max() if f2.size else 0.0
    if not f2max > 0:
        raise SchemaError(
            f"phase_list[{phase.name}]",
            "all structure factors are zero",
            "check the phase's atoms and space group",
        )
    allowed = f2 > 1e-6 * f2max

    # One entry per sign-free direction, from its strongest order: a band's
    # position is that of its plane normal and every order adds to the same
    # band (superlattice orders of ordered phases are weak, so e.g. L1_2's
    # [100] direction is ranked by 200, not by 100).
    best: dict[tuple[int, int, int], tuple[float, int, np.ndarray, np.ndarray]] = {}
    for ai in np.flatnonzero(allowed):
        key = _direction_key(xyz[ai])
        order = int(np.abs(hkl[ai]).sum())
        prev = best.get(key)
        if prev is None or f2[ai] > prev[0] * (1 + 1e-9) or (abs(f2[ai] - prev[0]) <= 1e-9 * prev[0] and order < prev[1]):
            best[key] = (float(f2[ai]), order, hkl[ai], xyz[ai])

    # Group directions into families: orbit under the proper Laue group (± free).
    fam_of: dict[tuple[int, int, int], int] = {}
    fam_members: list[list[np.ndarray]] = []
    fam_rep: list[np.ndarray] = []
    fam_int: list[float] = []
    for key in sorted(best, key=lambda k: (-best[k][0], best[k][1], k)):
        if key in fam_of:
            continue
        inten, _, h, v = best[key]
        members: dict[tuple[int, int, int], np.ndarray] = {}
        for s in sym:
            w = s @ v
            k2 = _direction_key(w)
            if k2 not in members:
                members[k2] = w if w[np.argmax(np.abs(w) > 1e-6)] > 0 else -w
        idx = len(fam_rep)
        for k2 in members:
            fam_of[k2] = idx
        fam_members.append(list(members.values()))
        # Representative with non-negative, descending indices when possible.
        hrep = np.sort(np.abs(h))[::-1] if _is_cubic(phase) else h
        fam_rep.append(np.asarray(hrep, dtype=int))
        fam_int.append(inten)

    if families is not None:
        want = {_direction_key(_kinematical_intensity(phase, np.atleast_2d(f))[1][0]) for f in families}
        keep = sorted({fam_of[k] for k in want if k in fam_of})
        if len(keep) < len(np.atleast_2d(families)):
            raise SchemaError(
                "reflectors",
                f"some of {np.atleast_2d(families).tolist()} are forbidden or above max_index={max_index}",
                "choose allowed reflections of the phase",
            )
    elif n_families is not None:
        if n_families < 2:
            raise SchemaError("n_reflectors", f"need at least 2 families, got {n_families}", "use 3 or more")
        keep = list(range(min(n_families, len(fam_rep))))
    else:
        keep, total = [], 0
        for i in range(len(fam_rep)):
            keep.append(i)
            total += len(fam_members[i])
            if (total >= min_normals and len(keep) >= 3) or len(keep) >= 10:
                break

    normals, normal_family = [], []
    for new_i, i in enumerate(keep):
        for m in fam_members[i]:
            normals.append(m / np.linalg.norm(m))
            normal_family.append(new_i)
    normals_a = np.array(normals, dtype=float)
    normal_family_a = np.array(normal_family, dtype=np.int64)

    angles, pfam, triads = _pair_table(normals_a, normal_family_a, sym)
    fi = np.array([fam_int[i] for i in keep])
    return ReflectorTable(
        name=str(phase.name),
        families=np.array([fam_rep[i] for i in keep], dtype=int),
        family_intensity=fi / fi.max(),
        normals=normals_a,
        normal_family=normal_family_a,
        pair_angle=angles,
        pair_family=pfam,
        pair_triad=triads,
        symmetry=sym,
    )


def _is_cubic(phase) -> bool:
    return phase.point_group.laue.name in ("m-3m", "m-3")


def _triad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    c = np.cross(a, b)
    c /= np.linalg.norm(c)
    return np.array([a, c, np.cross(a, c)])


def _pair_table(normals: np.ndarray, fam: np.ndarray, sym: np.ndarray):
    """Reference pairs (h_a, h_b), acute angle, one row per symmetry class.

    Two pairs that a proper symmetry maps onto each other (with the same
    families in the same order) give equivalent orientations, so only one is
    kept. Both ``h_a`` and ``-h_a`` are tried as first vector because ``-h`` is
    not always a proper-symmetry image of ``h`` (e.g. low-symmetry families).
    """
    seen: set = set()
    angles, pfam, triads = [], [], []
    n = len(normals)
    for i in range(n):
        for sa in (1.0, -1.0):
            a = sa * normals[i]
            for j in range(n):
                if j == i:
                    continue
                b = normals[j]
                d = float(a @ b)
                if abs(d) > 0.9998:  # parallel: no orientation from this pair
                    continue
                if d < 0:
                    b = -b
                    d = -d
                # Canonical key of the pair's orbit under the proper Laue group.
                keys = []
                for s in sym:
                    keys.append(
                        tuple(np.round(np.concatenate([s @ a, s @ b]) * 1e4).astype(int).tolist())
                    )
                key = (int(fam[i]), int(fam[j]), min(keys))
                if key in seen:
                    continue
                seen.add(key)
                angles.append(np.arccos(min(d, 1.0)))
                pfam.append((fam[i], fam[j]))
                triads.append(_triad(a, b))
    order = np.argsort(angles, kind="stable")
    return (
        np.asarray(angles, dtype=np.float64)[order],
        np.asarray(pfam, dtype=np.int64).reshape(-1, 2)[order],
        np.asarray(triads, dtype=np.float64).reshape(-1, 3, 3)[order],
    )
