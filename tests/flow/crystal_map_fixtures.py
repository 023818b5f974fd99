"""Hand-built orix crystal maps for the crystal-map store and exporter tests."""

from __future__ import annotations

import numpy as np

from tests.real_data import real_file

REAL_ANG = str(real_file("sdss_ferrite_austenite_orientations.ang"))
REAL_CTF = str(real_file("cu_hkl_2x2.ctf"))


def make_xmap(shape=(5, 7), phases=("ni", "fe"), not_indexed=0.2, seed=0, step=(1.5, 0.5), orix_ids=None,
              with_props=True):
    """A non-square crystal map with random orientations, several phases and not-indexed points.

    Parameters
    ----------
    orix_ids
        orix phase ids of the phases (default 0..n-1); e.g. (1, 2) like .ang files.
    """
    from diffraflow.operators.crystallography import get_phase
    from orix.crystal_map import CrystalMap, PhaseList, create_coordinate_arrays
    from orix.quaternion import Rotation

    rng = np.random.default_rng(seed)
    ny, nx = shape
    n = ny * nx
    ids = list(orix_ids) if orix_ids is not None else list(range(len(phases)))
    phase_list = PhaseList(phases={i: get_phase(name) for i, name in zip(ids, phases, strict=True)})
    phase_id = np.asarray(ids)[rng.integers(0, len(ids), n)]
    phase_id[rng.random(n) < not_indexed] = -1
    quat = rng.normal(size=(n, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    quat[quat[:, 0] < 0] *= -1
    coords, _ = create_coordinate_arrays((ny, nx), step)
    prop = {}
    if with_props:
        prop = {
            "fit": rng.uniform(0.1, 2.0, n).astype(np.float32),
            "confidence": rng.uniform(0.0, 1.0, n).astype(np.float32),
            "pattern_quality": rng.uniform(50, 300, n).astype(np.float32),
            "n_bands": rng.integers(3, 12, n).astype(np.int32),
        }
    return CrystalMap(Rotation(quat), phase_id=phase_id, x=coords["x"], y=coords["y"], phase_list=phase_list,
                      prop=prop, scan_unit="um")


def phase_names(xmap) -> np.ndarray:
    """Phase name per point ('' for not indexed)."""
    names = {int(i): (p.name if i >= 0 else "") for i, p in xmap.phases}
    return np.array([names.get(int(i), "") for i in xmap.phase_id])


def max_misorientation(a, b, indexed) -> float:
    """Largest symmetry-aware misorientation (degrees) between two maps over indexed points of ``a``."""
    from orix.quaternion import Orientation

    worst = 0.0
    for phase_id, phase in a.phases:
        if phase_id < 0:
            continue
        m = (a.phase_id == phase_id) & indexed
        if not m.any():
            continue
        oa = Orientation(a.rotations.data[m], phase.point_group)
        ob = Orientation(b.rotations.data[m], phase.point_group)
        worst = max(worst, float(np.max(oa.angle_with(ob, degrees=True))))
    return worst
