# ruff: noqa: F811 - pytest fixtures are imported from hough_fixtures and used as arguments
"""End-to-end accuracy of the Hough indexer on simulated and real Ni, and FCC+BCC."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.operators.indexing import HoughIndexer
from diffraflow.operators.indexing.testing import disorientation_deg, simulate_patterns

from tests.operators.hough_fixtures import (  # noqa: F401 - fixtures
    fe_phase,
    kinematical_mps,
    make_detector,
    ni_detector,
    ni_dynamical_mp,
    ni_phase,
    random_rotations,
)
from tests.real_data import needs_real_data, real_file

REAL_NI = real_file("ni_small_kikuchipy_h5ebsd.h5")


@pytest.mark.parametrize(
    ("shape", "pc", "seed"),
    [((60, 60), (0.42, 0.22, 0.50), 1), ((60, 80), (0.50, 0.30, 0.60), 2)],
)
def test_simulated_ni_moderate_noise(ni_phase, ni_dynamical_mp, shape, pc, seed):
    det = make_detector(shape, pc)
    rot = random_rotations(300, seed=seed)
    pats = simulate_patterns(ni_dynamical_mp, rot, det, dose=20, seed=seed)
    out = HoughIndexer([ni_phase], det, backend="cpu").index_chunk(pats)
    d = disorientation_deg(out["quaternion"], rot, ni_phase.point_group)
    assert np.mean(d < 2) >= 0.99
    assert np.median(d) <= 0.3
    good = d < 2
    # Outputs are sane where indexing succeeded.
    assert np.all(out["phase_id"][good] == 0) and np.all(out["n_bands"] == 15)
    assert np.median(out["fit"][good]) < 1.0 and np.all((out["confidence"] >= 0) & (out["confidence"] <= 1))
    assert np.median(out["confidence"][good]) > 0.3 and np.all(out["pattern_quality"] > 0)


def test_per_pattern_pc_and_crystal_map(ni_phase, ni_dynamical_mp):
    """Each pattern simulated with its own PC is indexed with that PC (a 4x5 map)."""
    from orix.crystal_map import CrystalMap

    rng = np.random.default_rng(5)
    pcs = np.column_stack([rng.uniform(0.4, 0.55, 20), rng.uniform(0.2, 0.3, 20), rng.uniform(0.45, 0.6, 20)])
    rot = random_rotations(20, seed=6)
    pats = np.stack(
        [simulate_patterns(ni_dynamical_mp, rot[i], make_detector(pc=tuple(pcs[i])), dose=50, seed=i)[0] for i in range(20)]
    )
    det = make_detector()
    det.pc = pcs.reshape(4, 5, 3)
    ix = HoughIndexer([ni_phase], det, backend="cpu")
    xmap = ix.index(pats.reshape(4, 5, 60, 60), step_sizes=(1.5, 1.5))
    assert isinstance(xmap, CrystalMap) and xmap.shape == (4, 5)
    assert set(xmap.prop) >= {"fit", "confidence", "pattern_quality", "n_bands"}
    d = disorientation_deg(xmap.rotations, rot, ni_phase.point_group)
    assert np.all(d < 1.0)
    # A single wrong PC for all is visibly worse: the per-pattern PCs were used.
    wrong = HoughIndexer([ni_phase], make_detector(pc=(0.42, 0.22, 0.5)), backend="cpu").index_chunk(pats)
    assert np.median(disorientation_deg(wrong["quaternion"], rot, ni_phase.point_group)) > np.median(d)


def test_high_noise_degrades_gracefully(ni_phase, ni_dynamical_mp, ni_detector):
    rot = random_rotations(200, seed=9)
    pats = simulate_patterns(ni_dynamical_mp, rot, ni_detector, dose=4, seed=9)
    out = HoughIndexer([ni_phase], ni_detector, backend="cpu").index_chunk(pats)
    d = disorientation_deg(out["quaternion"], rot, ni_phase.point_group)
    # PyEBSDIndex gets ~45 % within 2 deg on these (bench/hough.py); we need at least that.
    assert np.mean(d < 2) >= 0.7
    # Confidence separates right from wrong solutions.
    assert np.median(out["confidence"][d < 2]) > np.median(out["confidence"][d > 5])


def test_two_phase_fcc_bcc(ni_phase, fe_phase, kinematical_mps):
    from orix.crystal_map import PhaseList

    det = make_detector((60, 60), (0.45, 0.25, 0.55))
    pl = PhaseList([ni_phase, fe_phase])
    ix = HoughIndexer(pl, det, backend="cpu")
    right = []
    for name, pid, seed in (("ni", pl.ids[0], 11), ("fe", pl.ids[1], 12)):
        rot = random_rotations(150, seed=seed)
        pats = simulate_patterns(kinematical_mps[name], rot, det, dose=20, seed=seed)
        out = ix.index_chunk(pats)
        right.append(out["phase_id"] == pid)
        d = disorientation_deg(out["quaternion"], rot, ni_phase.point_group)
        assert np.mean(d[out["phase_id"] == pid] < 2) >= 0.98
    assert np.mean(np.concatenate(right)) >= 0.95


@needs_real_data(REAL_NI.name)
def test_real_ni_agrees_with_dictionary_indexing():
    import kikuchipy as kp

    s = kp.load(REAL_NI)
    ix = HoughIndexer(s.xmap.phases, s.detector, static_background=s.static_background, backend="cpu")
    xmap = ix.index(s.data)
    d = disorientation_deg(xmap.rotations, s.xmap.rotations, s.xmap.phases[0].point_group)
    assert xmap.shape == (3, 3)
    assert np.all(d < 2.0), np.round(d, 2)


@pytest.mark.gpu
def test_cuda_matches_cpu(ni_phase, ni_dynamical_mp):
    from diffraflow.operators.indexing.gpu import cuda_available

    if not cuda_available():
        pytest.skip("needs CUDA (CuPy with a device)")
    det = make_detector((60, 80), (0.45, 0.25, 0.55))
    rot = random_rotations(200, seed=13)
    pats = simulate_patterns(ni_dynamical_mp, rot, det, dose=20, seed=13)
    cpu = HoughIndexer([ni_phase], det, backend="cpu").index_chunk(pats)
    gpu = HoughIndexer([ni_phase], det, backend="cuda").index_chunk(pats)
    d = disorientation_deg(cpu["quaternion"], gpu["quaternion"], ni_phase.point_group)
    # Tolerance stated in operators/indexing/cuda_kernels.py: the same except near ties.
    assert np.mean(d < 0.01) >= 0.97
    dc = disorientation_deg(cpu["quaternion"], rot, ni_phase.point_group)
    dg = disorientation_deg(gpu["quaternion"], rot, ni_phase.point_group)
    assert abs(np.mean(dc < 2) - np.mean(dg < 2)) <= 0.005
