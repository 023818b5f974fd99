"""fuzzy_cmeans (FCM, Gustafson-Kessel, high contrast), ica and vca through the engine, against naive references."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.testing import OperatorConformance, input_spec, run_operator, synthetic_frames
from diffraflow.operators.decomposition._fuzzy import (
    distances,
    fit_fuzzy,
    memberships,
    norm_matrices,
)
from diffraflow.operators.decomposition._vca import vca_indices
from diffraflow.operators.decomposition.fuzzy_cmeans import FuzzyCMeans
from diffraflow.operators.decomposition.ica import ICA
from diffraflow.operators.decomposition.svd import SVD
from diffraflow.operators.decomposition.vca import VCA
from diffraflow.operators.simulate.sped import simulate_sped
from diffraflow.schemas.errors import PipelineError


@pytest.fixture(scope="module")
def bicrystal():
    sim = simulate_sped((3, 40), det_shape=(48, 48), dose=None, seed=0)
    return sim, sim.all_patterns()


# -- the clustering kernels against their definitions ------------------------------------------------
def test_fcm_memberships_follow_bezdek_formula():
    rng = np.random.default_rng(0)
    d2 = rng.uniform(0.1, 5.0, size=(20, 3))
    for m in (1.5, 2.0, 3.0):
        naive = np.array([[1.0 / np.sum((row[c] / row) ** (1.0 / (m - 1.0))) for c in range(3)] for row in d2])
        np.testing.assert_allclose(memberships(np, d2, m=m), naive, rtol=1e-12)


def test_high_contrast_memberships_minimise_their_objective():
    rng = np.random.default_rng(1)
    alpha = 0.6
    d2 = rng.uniform(0.05, 3.0, size=(50, 3))
    u = memberships(np, d2, contrast=1.0 - alpha)
    assert np.all(u >= 0) and np.allclose(u.sum(axis=1), 1.0)

    def objective(w, row):
        return np.sum((alpha * w * w + (1 - alpha) * w) * row)

    # no point of the simplex does better (dense random sampling around the solution)
    for row, best in zip(d2, u, strict=True):
        trials = rng.dirichlet(np.ones(3), size=400)
        assert objective(best, row) <= np.min([objective(t, row) for t in trials]) + 1e-12
    # near a centre, membership is exactly one (the point of high contrast)
    assert memberships(np, np.array([[0.01, 4.0, 5.0]]), contrast=0.5).tolist() == [[1.0, 0.0, 0.0]]


def test_gustafson_kessel_norms_have_unit_determinant_and_follow_the_cluster_shape():
    rng = np.random.default_rng(2)
    z = np.r_[rng.normal(size=(200, 2)) * [3.0, 0.3], rng.normal(size=(200, 2)) * [0.3, 3.0] + [10, 0]]
    fit = fit_fuzzy(z, 2, variant="gk", seed=0)
    np.testing.assert_allclose(np.linalg.det(fit.norms), 1.0, rtol=1e-8)
    stretched = [np.argmin(np.diag(a)) for a in fit.norms]  # the long axis costs least
    assert sorted(stretched) == [0, 1]
    hard = np.argmax(fit.memberships, axis=1)
    assert np.all(hard[:200] == hard[0]) and np.all(hard[200:] != hard[0])


def test_fcm_objective_never_rises():
    z = np.random.default_rng(3).normal(size=(300, 3))
    fit = fit_fuzzy(z, 4, seed=1, tol=0.0, max_iter=60)
    assert np.all(np.diff(fit.objective) <= 1e-9 * fit.objective[0])


def test_identity_norms_for_fcm():
    np.testing.assert_array_equal(norm_matrices(np.zeros((4, 3)), np.zeros((2, 3)), np.ones((4, 2)), "fcm"),
                                  np.repeat(np.eye(3)[None], 2, axis=0))


# -- the operator ------------------------------------------------------------------------------------
def test_memberships_and_centre_patterns_equal_a_naive_in_memory_fcm(bicrystal):
    _, cube = bicrystal
    out = run_operator(FuzzyCMeans(n_clusters=2, solver="gram"), cube, chunk_frames=9)
    x = cube.reshape(120, -1).astype(np.float64)
    svd = run_operator(SVD(n_components=2, solver="gram"), cube)
    z = svd["loadings"].reshape(120, 2).astype(np.float64)
    fit = fit_fuzzy(z, 2, seed=0)
    u_final = memberships(np, distances(np, z, fit.centres, fit.norms))
    np.testing.assert_allclose(out["memberships"].reshape(120, 2), u_final, atol=1e-5)
    np.testing.assert_array_equal(out["memberships"], out["loadings"])
    w = u_final ** 2
    centres = (w.T @ x) / w.sum(axis=0)[:, None]
    np.testing.assert_allclose(out["factors"].reshape(2, -1), centres, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["centres"], fit.centres, rtol=1e-5)
    assert int(out["n_iter"][0]) == fit.n_iter and np.isfinite(out["error"]).sum() == fit.n_iter


def test_seed_artefacts_pure_memberships_below_one_and_high_contrast_reaches_one(bicrystal):
    sim, cube = bicrystal
    pure = sim.loadings[..., 0].reshape(-1) == 1.0
    classic = run_operator(FuzzyCMeans(n_clusters=2), cube, chunk_frames=17)["memberships"].reshape(120, 2)
    sharp = run_operator(FuzzyCMeans(n_clusters=2, contrast=0.5), cube, chunk_frames=17)["memberships"].reshape(120, 2)
    assert classic[pure].max() < 0.9999  # the seed's Fig. 5d: weighted centres sit off the pure ends
    assert sharp[pure].max(axis=1).min() == pytest.approx(1.0)


def test_gk_and_contrast_variants_run_and_sum_to_one(bicrystal):
    _, cube = bicrystal
    for op in (FuzzyCMeans(n_clusters=2, variant="gk"), FuzzyCMeans(n_clusters=3, n_components=3, contrast=0.3)):
        u = run_operator(op, cube, chunk_frames=20)["memberships"]
        np.testing.assert_allclose(u.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("params", "message"), [
    ({"n_clusters": 1}, "n_clusters: must be an integer >= 2"),
    ({"m": 1.0}, "m: must be a number > 1.0"),
    ({"contrast": 1.0}, "contrast: must be a number >= 0.0 and <= 0.999"),
    ({"variant": "kmeans"}, "'kmeans' is not fcm or gk"),
])
def test_fuzzy_bad_parameters(params, message):
    with pytest.raises(PipelineError, match=message):
        FuzzyCMeans(**params).resolve(input_spec(np.zeros((4, 5, 6, 6))))


def test_ica_is_sklearn_fastica_on_the_svd_loadings():
    from sklearn.decomposition import FastICA

    rng = np.random.default_rng(4)
    sources = np.c_[rng.laplace(size=400), np.sign(rng.normal(size=400)) * rng.uniform(0.5, 1, 400)]
    patterns = rng.uniform(size=(2, 36))
    cube = (sources @ patterns + 0.01 * rng.normal(size=(400, 36))).reshape(20, 20, 6, 6)
    out = run_operator(ICA(n_components=2, solver="gram"), cube, chunk_frames=37)
    z = run_operator(SVD(n_components=2, solver="gram"), cube)["loadings"].reshape(400, 2).astype(np.float64)
    ref = FastICA(n_components=2, whiten="unit-variance", random_state=0, max_iter=1000, tol=1e-6).fit(z)
    ours = out["loadings"].reshape(400, 2)
    theirs = ref.transform(z)
    corr = np.corrcoef(np.c_[ours, theirs].T)[:2, 2:]
    assert np.allclose(np.abs(corr).max(axis=1), 1.0, atol=1e-5)
    # and it unmixes: each recovered map is one of the true sources
    truth = np.abs(np.corrcoef(np.c_[ours, sources].T)[:2, 2:])
    assert np.all(truth.max(axis=1) > 0.99)


def test_vca_finds_the_pure_frames_and_abundances_sum_to_one(bicrystal):
    sim, cube = bicrystal
    out = run_operator(VCA(n_components=2), cube, chunk_frames=11)
    pure_a = np.nonzero(sim.loadings[..., 0].reshape(-1) == 1.0)[0]
    pure_b = np.nonzero(sim.loadings[..., 1].reshape(-1) == 1.0)[0]
    found = set(out["endmember_index"].tolist())
    assert found & set(pure_a.tolist()) and found & set(pure_b.tolist())
    np.testing.assert_allclose(out["loadings"].sum(axis=-1), 1.0, atol=1e-5)
    x = cube.reshape(120, -1)
    np.testing.assert_array_equal(out["factors"].reshape(2, -1), x[out["endmember_index"]].astype(np.float32))
    corr = np.corrcoef(np.c_[out["loadings"].reshape(120, 2), sim.loadings.reshape(120, 2)].T)[:2, 2:]
    assert np.abs(corr).max(axis=1).min() > 0.999


def test_vca_kernel_on_a_simplex():
    rng = np.random.default_rng(5)
    corners = rng.uniform(size=(4, 4)) + np.eye(4) * 3
    points = np.r_[rng.dirichlet(np.ones(4), size=100) @ corners, corners]
    assert sorted(vca_indices(points, 4, seed=3).tolist()) == [100, 101, 102, 103]


class TestFuzzyConformance(OperatorConformance):
    operator = FuzzyCMeans(n_clusters=2, solver="gram")
    frames = synthetic_frames((5, 7), (8, 9), "uint16", seed=5)
    rtol, atol = 1e-5, 1e-5


class TestGKConformance(OperatorConformance):
    operator = FuzzyCMeans(n_clusters=2, n_components=2, variant="gk", contrast=0.4, solver="randomized",
                           power_iter=3)
    frames = synthetic_frames((5, 7), (8, 9), "uint8", seed=6)
    rtol, atol = 1e-5, 1e-5


class TestICAConformance(OperatorConformance):
    operator = ICA(n_components=2, solver="gram")
    frames = synthetic_frames((5, 7), (8, 9), "uint16", seed=7)
    rtol, atol = 1e-5, 1e-4


class TestVCAConformance(OperatorConformance):
    operator = VCA(n_components=2, solver="gram")
    frames = synthetic_frames((5, 7), (8, 9), "uint16", seed=8)
    rtol, atol = 1e-5, 1e-5
