"""svd through the engine: equal to an exact SVD / scikit-learn's PCA, over chunkings, solvers and weightings."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.testing import OperatorConformance, input_spec, run_operator, synthetic_frames
from diffraflow.operators.decomposition._linalg import solve_nonneg
from diffraflow.operators.decomposition.svd import SVD
from diffraflow.schemas.errors import PipelineError
from sklearn.decomposition import PCA


def _low_rank(seed=0, scan=(6, 9), det=(7, 8), rank=3, noise=0.05, offset=4.0):
    rng = np.random.default_rng(seed)
    n, p = scan[0] * scan[1], det[0] * det[1]
    x = (rng.normal(size=(n, rank)) * np.array([12.0, 6.0, 3.0])[:rank]) @ rng.normal(size=(rank, p))
    return (x + noise * rng.normal(size=(n, p)) + offset).reshape(*scan, *det)


def _aligned(factors, reference):
    signs = np.sign(np.sum(factors * reference, axis=1))
    return factors * signs[:, None], signs


def _exact_svd(x, k):
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    return s[:k], vt[:k]


@pytest.mark.parametrize("solver", ["gram", "randomized"])
@pytest.mark.parametrize("chunk", [1, 5, (2, 7, 3), None])
def test_uncentred_svd_equals_numpy(solver, chunk):
    cube = _low_rank()
    x = cube.reshape(54, -1)
    out = run_operator(SVD(n_components=3, solver=solver), cube, chunk_frames=chunk)
    s, vt = _exact_svd(x, 3)
    factors, signs = _aligned(out["factors"].reshape(3, -1).astype(np.float64), vt)
    np.testing.assert_allclose(out["singular_values"], s, rtol=1e-9)
    np.testing.assert_allclose(factors, vt, atol=2e-6)
    np.testing.assert_allclose(out["loadings"].reshape(54, 3) * signs, x @ vt.T, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["explained_variance_ratio"], s ** 2 / np.sum(x * x), rtol=1e-9)


@pytest.mark.parametrize("solver", ["gram", "randomized"])
def test_centred_svd_is_sklearn_pca(solver):
    cube = _low_rank(seed=3)
    x = cube.reshape(54, -1)
    pca = PCA(n_components=3, svd_solver="full").fit(x)
    out = run_operator(SVD(n_components=3, centre=True, solver=solver), cube, chunk_frames=4)
    factors, signs = _aligned(out["factors"].reshape(3, -1).astype(np.float64), pca.components_)
    np.testing.assert_allclose(factors, pca.components_, atol=2e-6)
    np.testing.assert_allclose(out["explained_variance"], pca.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(out["explained_variance_ratio"], pca.explained_variance_ratio_, rtol=1e-9)
    np.testing.assert_allclose(out["loadings"].reshape(54, 3) * signs, pca.transform(x), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["mean"], pca.mean_.reshape(7, 8), rtol=1e-12)
    assert np.all(signs == 1)  # scikit-learn's convention: each component's largest entry positive


def test_single_pass_randomized_svd_is_exact_on_low_rank_data():
    # pass 0 alone is the randomised SVD without power iterations: exact when the rank is below the basis size
    cube = _low_rank(noise=0.0)
    x = cube.reshape(54, -1)
    out = run_operator(SVD(n_components=3, solver="randomized", power_iter=0), cube, chunk_frames=4)
    s, vt = _exact_svd(x, 3)
    factors, _ = _aligned(out["factors"].reshape(3, -1).astype(np.float64), vt)
    np.testing.assert_allclose(out["singular_values"], s, rtol=1e-9)
    np.testing.assert_allclose(factors, vt, atol=2e-6)


def test_randomized_stops_early_when_the_singular_values_settle():
    cube = _low_rank(noise=1e-6)
    out = run_operator(SVD(n_components=3, solver="randomized", power_iter=8, svd_tol=1e-10), cube)
    direct = run_operator(SVD(n_components=3, solver="randomized", power_iter=1, svd_tol=0.0), cube)
    np.testing.assert_allclose(out["singular_values"], direct["singular_values"], rtol=1e-9)


def test_poisson_weighting_is_the_svd_of_the_weighted_counts():
    rng = np.random.default_rng(5)
    cube = rng.poisson(rng.uniform(1, 20, size=(5, 6, 1, 1)) * rng.uniform(0.2, 3, size=(1, 1, 6, 7))).astype("u2")
    x = cube.reshape(30, -1).astype(np.float64)
    a, b = x.sum(axis=1), x.sum(axis=0)
    weighted = x / np.sqrt(np.outer(a, b))
    s, vt = _exact_svd(weighted, 2)
    out = run_operator(SVD(n_components=2, poisson=True, solver="gram"), cube, chunk_frames=7)
    # factors and loadings come back in counts: times sqrt(pixel totals) and sqrt(frame totals)
    factors = out["factors"].reshape(2, -1) / np.sqrt(b)
    factors, signs = _aligned(factors.astype(np.float64), vt)
    np.testing.assert_allclose(factors, vt, atol=1e-5)
    np.testing.assert_allclose(out["loadings"].reshape(30, 2) * signs / np.sqrt(a)[:, None], weighted @ vt.T,
                               rtol=1e-4, atol=1e-6)
    recon = (out["loadings"].reshape(30, 2).astype(float) @ out["factors"].reshape(2, -1).astype(float))
    assert np.linalg.norm(recon - x) < np.linalg.norm(x - x.mean())  # the mapping back reconstructs counts


def test_poisson_weighting_refuses_negative_pixel_totals():
    cube = -np.ones((2, 3, 4, 4))
    with pytest.raises(Exception, match="non-negative counts"):
        run_operator(SVD(n_components=1, poisson=True), cube)


@pytest.mark.parametrize(("params", "message"), [
    ({"n_components": 0}, "n_components: must be an integer >= 1"),
    ({"n_components": 80}, "exceed min\\(frames, pixels\\) = 54"),
    ({"solver": "qr"}, "'qr' is not auto, gram or randomized"),
    ({"power_iter": -1}, "power_iter: must be an integer >= 0"),
    ({"svd_tol": float("nan")}, "svd_tol: must be a number >= 0"),
])
def test_bad_parameters_are_refused_before_any_data_is_read(params, message):
    spec = input_spec(np.zeros((6, 9, 7, 8)))
    with pytest.raises(PipelineError, match=message):
        SVD(**params).resolve(spec)


def test_solve_nonneg_enumeration_equals_coordinate_descent():
    # the exact active-set enumeration and the coordinate-descent fallback agree on a random problem
    rng = np.random.default_rng(0)
    h = rng.uniform(size=(5, 30))
    b = rng.normal(size=(40, 30)) @ h.T
    exact = solve_nonneg(np, h @ h.T, b)
    from diffraflow.operators.decomposition._linalg import _coordinate_descent

    approx = _coordinate_descent(np, h @ h.T, b, False, 5000)
    np.testing.assert_allclose(exact, approx, atol=1e-7)
    assert np.all(exact >= 0)
    # KKT: the gradient is zero on the support and non-negative off it
    grad = exact @ (h @ h.T) - b
    assert np.all(np.abs(grad[exact > 1e-12]) < 1e-8) and np.all(grad[exact <= 1e-12] > -1e-8)


class TestSVDGramConformance(OperatorConformance):
    operator = SVD(n_components=3, centre=True, solver="gram")
    frames = synthetic_frames((5, 7), (8, 9), "uint8", seed=2)
    rtol, atol = 1e-4, 1e-3

    def reference(self, frames):
        x = frames.reshape(35, -1).astype(np.float64)
        pca = PCA(n_components=3, svd_solver="full").fit(x)
        return {"factors": pca.components_.reshape(3, 8, 9).astype(np.float32),
                "explained_variance": pca.explained_variance_,
                "explained_variance_ratio": pca.explained_variance_ratio_}


class TestSVDRandomizedConformance(OperatorConformance):
    operator = SVD(n_components=2, solver="randomized", power_iter=3)
    frames = synthetic_frames((5, 7), (8, 9), "uint16", seed=4)
    rtol, atol = 1e-5, 1e-4
