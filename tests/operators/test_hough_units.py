# ruff: noqa: F811 - pytest fixtures are imported from hough_fixtures and used as arguments
"""Unit tests of the Hough indexer's parts: tables, geometry, Radon, errors, chunking."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.operators.indexing import HoughIndexer
from diffraflow.operators.indexing.radon import make_radon_plan, radon_block
from diffraflow.operators.indexing.reflectors import build_reflector_table
from diffraflow.schemas.errors import BackendUnavailableError, SchemaError

from tests.operators.hough_fixtures import (  # noqa: F401 - fixtures
    make_detector,
    ni_detector,
    ni_dynamical_mp,
    ni_phase,
    random_rotations,
)


# ----------------------------------------------------------------- reflectors
def test_reflector_families_fcc_bcc():
    from diffraflow.operators.crystallography import get_phase

    ni = build_reflector_table(get_phase("ni"))
    fe = build_reflector_table(get_phase("fe"))
    assert [tuple(f) for f in ni.families] == [(1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1)]
    assert [tuple(f) for f in fe.families] == [(1, 1, 0), (2, 0, 0), (2, 1, 1), (3, 1, 0)]
    # 4 + 3 + 6 + 12 sign-free normals; ranked strongest first.
    assert len(ni.normals) == 25 and np.all(np.diff(ni.family_intensity) < 0)
    np.testing.assert_allclose(np.linalg.norm(ni.normals, axis=1), 1.0)


def test_interplanar_angles_fcc():
    from diffraflow.operators.crystallography import get_phase

    t = build_reflector_table(get_phase("ni"))
    deg = np.degrees(t.pair_angle)
    assert np.all(np.diff(t.pair_angle) >= 0)
    # {111}-{111}: 70.53 deg (acute); {111}-{200}: 54.74; {200}-{200}: 90.
    for fam, angle in [((0, 0), 70.53), ((0, 1), 54.74), ((1, 1), 90.0), ((0, 2), 35.26)]:
        rows = np.all(t.pair_family == fam, axis=1)
        assert np.any(np.abs(deg[rows] - angle) < 0.01), (fam, angle)
    # Triads are orthonormal.
    eye = np.einsum("nij,nkj->nik", t.pair_triad, t.pair_triad)
    np.testing.assert_allclose(eye, np.broadcast_to(np.eye(3), eye.shape), atol=1e-12)


def test_ordered_phase_ranks_fundamental_over_superlattice():
    from diffraflow.operators.crystallography import get_phase

    # L1_2 Ni3Al: the [100] direction is ranked by its strong 200, not weak 100.
    t = build_reflector_table(get_phase("ni3al"))
    assert [tuple(f) for f in t.families][:2] == [(1, 1, 1), (2, 0, 0)]


# ------------------------------------------------------------------ geometry
def test_band_normal_is_perpendicular_to_kikuchipy_pixel_directions():
    """A band line's normal is normal to the sample-frame directions kikuchipy
    assigns to the pixels on that line: this pins PC, tilt and axis conventions."""
    from diffraflow.operators.indexing.geometry import (
        band_normals,
        detector_to_sample_matrix,
        normal_to_line,
    )
    from kikuchipy.signals.util._master_pattern import _get_direction_cosines_from_detector

    for shape, pc, tilt in [((60, 80), (0.4, 0.3, 0.55), 0.0), ((50, 40), (0.55, 0.2, 0.7), 8.0)]:
        det = make_detector(shape, pc, tilt=tilt, sample_tilt=68.0)
        dc = _get_direction_cosines_from_detector(det).reshape(shape + (3,))
        m = detector_to_sample_matrix(det)
        nrows, ncols = shape
        # The line through two pixel centres, in the Radon (u, v) frame.
        (r0, c0), (r1, c1) = (5, 7), (nrows - 9, ncols - 4)
        u0, v0 = c0 + 0.5 - ncols / 2, r0 + 0.5 - nrows / 2
        u1, v1 = c1 + 0.5 - ncols / 2, r1 + 0.5 - nrows / 2
        theta = np.arctan2(u1 - u0, -(v1 - v0))  # normal of the direction (du, dv)
        rho = u0 * np.cos(theta) + v0 * np.sin(theta)
        out = np.empty((1, 3))
        band_normals(np.array([rho]), np.array([theta]), 1, np.array(pc, float), nrows, ncols, m, out)
        assert abs(out[0] @ dc[r0, c0]) < 1e-6 and abs(out[0] @ dc[r1, c1]) < 1e-6
        ok, rho2, theta2 = normal_to_line(out[0], np.array(pc, float), nrows, ncols, m)
        assert ok and 0 <= theta2 < np.pi
        # Same line (possibly written with theta + pi and -rho).
        same = np.isclose(np.cos(theta2) * rho2, np.cos(theta) * rho, atol=1e-6) and np.isclose(
            np.sin(theta2) * rho2, np.sin(theta) * rho, atol=1e-6
        )
        assert same


def test_matrix_to_quaternion_matches_orix():
    from diffraflow.operators.indexing.voting import matrix_to_quaternion
    from orix.quaternion import Rotation

    rot = random_rotations(50, seed=4)
    q = np.empty(4)
    for m, ref in zip(rot.to_matrix(), rot.data, strict=True):
        matrix_to_quaternion(np.ascontiguousarray(m), q)
        ref = ref if ref[0] >= 0 else -ref
        np.testing.assert_allclose(q, ref, atol=1e-9)
    assert Rotation(q).size == 1


# --------------------------------------------------------------------- Radon
@pytest.mark.parametrize("shape", [(60, 60), (48, 64)])
def test_radon_peak_of_a_bright_line(shape):
    from diffraflow.operators.indexing.bands import butterfly_block, butterfly_kernels, find_peaks

    plan = make_radon_plan(shape, mask_radius=None)
    nrows, ncols = shape
    v, u = np.mgrid[0:nrows, 0:ncols]
    u = u + 0.5 - ncols / 2
    v = v + 0.5 - nrows / 2
    theta0, rho0 = np.radians(37.3), 6.4
    img = np.exp(-0.5 * ((u * np.cos(theta0) + v * np.sin(theta0) - rho0) / 0.8) ** 2)
    x = np.repeat(img.ravel()[plan.mask_index][:, None], 32, axis=1).astype(np.float32)
    x -= x.mean(axis=0)
    rad = np.empty((plan.n_theta, plan.n_rho, 32), np.float32)
    radon_block(x, plan.lut_bin, plan.lut_weight, plan.inv_count, rad)
    kr, kt = butterfly_kernels(1.2, 1.0)
    tmp, filt = np.empty_like(rad), np.empty_like(rad)
    butterfly_block(rad, kr, kt, tmp, filt)
    t, r, h = np.empty(3), np.empty(3), np.empty(3)
    n = find_peaks(filt, (plan.inv_count > 0).astype(np.uint8), 0, 3, t, r, h)
    assert n >= 1
    assert abs(t[0] * 180 / plan.n_theta - 37.3) < 0.3
    assert abs((r[0] - (plan.n_rho - 1) / 2) * plan.rho_step - rho0) < 0.2


# ---------------------------------------------------------------- validation
def test_errors_are_one_line_schema_errors(ni_phase, ni_detector):
    ix = HoughIndexer([ni_phase], ni_detector, backend="cpu")
    with pytest.raises(SchemaError, match=r"patterns: shape \(3, 60, 61\) does not end in the detector shape \(60, 60\)"):
        ix.index_chunk(np.zeros((3, 60, 61)))
    with pytest.raises(SchemaError, match="empty phase list"):
        HoughIndexer([], ni_detector)
    with pytest.raises(SchemaError, match="backend"):
        HoughIndexer([ni_phase], ni_detector, backend="opencl")
    with pytest.raises(SchemaError, match="static_background"):
        HoughIndexer([ni_phase], ni_detector, static_background=np.ones((10, 10)))
    det = make_detector()
    det.pc = np.tile([0.42, 0.22, 0.5], (2, 3, 1))
    ix = HoughIndexer([ni_phase], det, backend="cpu")
    with pytest.raises(SchemaError, match="6 projection centres for 4 patterns"):
        ix.index(np.zeros((4, 60, 60), np.float32))
    try:
        ix.index_chunk(np.zeros((5, 60, 60)))
    except SchemaError as err:
        assert "\n" not in str(err) and "fix:" in str(err)


def test_cuda_forced_without_cuda_raises(ni_phase, ni_detector):
    from diffraflow.operators.indexing.gpu import cuda_available

    if cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(BackendUnavailableError, match="cuda"):
        HoughIndexer([ni_phase], ni_detector, backend="cuda")
    assert HoughIndexer([ni_phase], ni_detector, backend="auto").backend == "cpu"


# ------------------------------------------------------------------ chunking
def test_chunking_independent_and_tables_built_once(ni_phase, ni_detector, ni_dynamical_mp, monkeypatch):
    from diffraflow.operators.indexing import indexer as indexer_module
    from diffraflow.operators.indexing.testing import simulate_patterns

    rot = random_rotations(45, seed=21)
    pats = simulate_patterns(ni_dynamical_mp, rot, ni_detector, dose=30, seed=3).astype(np.uint16)
    ix = HoughIndexer([ni_phase], ni_detector, backend="cpu")

    def forbidden(*args, **kwargs):
        raise AssertionError("look-up tables rebuilt per call")

    monkeypatch.setattr(indexer_module, "make_radon_plan", forbidden)
    monkeypatch.setattr(indexer_module, "build_reflector_table", forbidden)
    whole = ix.index_chunk(pats)
    parts = [ix.index_chunk(pats[a:b]) for a, b in [(0, 1), (1, 8), (8, 40), (40, 45)]]
    for key, value in whole.items():
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value, err_msg=key)
    assert whole["quaternion"].shape == (45, 4) and whole["phase_id"].dtype == np.int32


def test_gpu_image_stages_with_numpy_match_cpu_kernel(ni_phase, ni_dynamical_mp):
    """The CuPy path's array code, run with NumPy/SciPy, equals the numba path."""
    from diffraflow.operators.indexing import gpu
    from diffraflow.operators.indexing.testing import simulate_patterns

    det = make_detector((60, 80), (0.45, 0.25, 0.55))
    rot = random_rotations(40, seed=8)
    pats = simulate_patterns(ni_dynamical_mp, rot, det, dose=20, seed=1)
    bg = np.full(det.shape, 2.0)
    for kw in (dict(), dict(dynamic_background=True, static_background=bg, background_mode="divide")):
        ix = HoughIndexer([ni_phase], det, backend="cpu", **kw)
        st = gpu.build_state(ix, gpu.SimulatorOps(), radon="sparse")
        filt = gpu.image_stages(pats.reshape(len(pats), -1), st)
        assert filt.shape == (len(pats), ix.plan.n_theta, ix.plan.n_rho)
        a = gpu.index_filtered(ix, filt, ix.pcs)
        b = ix.index_chunk(pats)
        np.testing.assert_array_equal(a["phase_id"], b["phase_id"])
        np.testing.assert_allclose(np.abs(np.sum(a["quaternion"] * b["quaternion"], axis=1)), 1.0, atol=1e-6)


def test_match_lut_finds_what_brute_force_finds():
    """The cube-map look-up used in voting misses no reflector within tolerance."""
    from diffraflow.operators.crystallography import get_phase
    from diffraflow.operators.indexing.voting import _score, _score_lut, build_match_lut

    for name in ("ni", "fe", "cr3si"):
        t = build_reflector_table(get_phase(name))
        lut = build_match_lut(t.normals, 2.5)
        rng = np.random.default_rng(1)
        # Directions near reflectors (within ~3 deg) and uniformly random ones.
        near = t.normals[rng.integers(0, len(t.normals), 400)] + rng.normal(scale=0.03, size=(400, 3))
        dirs = np.concatenate([near, rng.normal(size=(400, 3))])
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        eye = np.eye(3)
        cos_tol = np.cos(np.radians(2.5))
        m1, s1 = np.empty(len(dirs), np.int64), np.empty(len(dirs))
        m2, s2 = np.empty(len(dirs), np.int64), np.empty(len(dirs))
        c1, e1 = _score(eye, dirs, len(dirs), t.normals, cos_tol, m1, s1)
        c2, e2 = _score_lut(eye, dirs, len(dirs), t.normals, lut, cos_tol, m2, s2)
        assert c1 == c2 and c1 > 200 and np.isclose(e1, e2)
        np.testing.assert_array_equal(m1, m2)
