"""incremental_pca (three passes) through the engine against scikit-learn's PCA, over awkward chunkings."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.testing import input_spec, run_operator, spot_frames
from diffraflow.operators.decomposition.incremental_pca import IncrementalPCA
from diffraflow.schemas.errors import PipelineError
from diffraflow.schemas.results import PRODUCTS
from sklearn.decomposition import PCA

# Single frames, runs splitting the 6-frame rows, uneven runs, one chunk.
CHUNKINGS = (1, 4, (2, 5, 3), None)


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    return spot_frames((4, 6), (6, 5), "uint8", seed=11)


def _low_rank_cube(seed=0, scan=(5, 8), det=(8, 8), rank=3, noise=0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, p = scan[0] * scan[1], det[0] * det[1]
    x = rng.normal(size=(n, rank)) * np.array([10.0, 5.0, 2.0])[:rank] @ rng.normal(size=(rank, p))
    x += noise * rng.normal(size=(n, p)) + 3.0
    return x.reshape(*scan, *det)


def _sklearn(cube: np.ndarray, k: int):
    x = cube.reshape(cube.shape[0] * cube.shape[1], -1).astype(np.float64)
    pca = PCA(n_components=k, svd_solver="full").fit(x)
    return pca, pca.transform(x)


def _check(out, cube, k, rtol=1e-6, atol=1e-6):
    pca, scores = _sklearn(cube, k)
    det = cube.shape[2:]
    factors = out["factors"].reshape(k, -1)
    # sign-aligned comparison (our convention is sklearn's; align anyway so the check is about subspaces)
    signs = np.sign(np.sum(factors * pca.components_, axis=1))
    np.testing.assert_allclose(out["explained_variance"], pca.explained_variance_, rtol=rtol)
    np.testing.assert_allclose(out["explained_variance_ratio"], pca.explained_variance_ratio_, rtol=rtol)
    np.testing.assert_allclose(factors * signs[:, None], pca.components_, atol=atol)
    loadings = out["loadings"].reshape(-1, k)
    np.testing.assert_allclose(loadings * signs, scores, atol=atol * max(1.0, np.abs(scores).max()))
    np.testing.assert_allclose(out["mean"], pca.mean_.reshape(det), rtol=1e-12)
    return signs


@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize("method", ["gram", "svd"])
def test_pca_matches_sklearn(cube, chunk, method):
    k = 4
    out = run_operator(IncrementalPCA(n_components=k, method=method, sketch_rank=30), cube, chunk_frames=chunk)
    assert out["factors"].shape == (k, 6, 5) and out["factors"].dtype == np.float32
    assert out["loadings"].shape == (4, 6, k) and out["loadings"].dtype == np.float32
    signs = _check(out, cube, k, atol=2e-5)
    assert np.all(signs == 1)  # same sign convention as sklearn's svd_flip


@pytest.mark.parametrize("order", ["scan", "reverse", "shuffled"])
def test_pca_merge_order_and_chunking_independent(cube, order):
    ref = run_operator(IncrementalPCA(n_components=3, method="svd", sketch_rank=30), cube)
    for chunk in (1, 4, (2, 5, 3)):
        got = run_operator(IncrementalPCA(n_components=3, method="svd", sketch_rank=30), cube, chunk_frames=chunk,
                           order=order)
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_truncated_sketch_recovers_low_rank_components():
    cube = _low_rank_cube()
    # sketch_rank 8 < 40 frames and < 64 pixels: truncated merges, still accurate for the top components
    out = run_operator(IncrementalPCA(n_components=3, method="svd", sketch_rank=8), cube, chunk_frames=3,
                       order="shuffled")
    _check(out, cube, 3, rtol=1e-3, atol=1e-3)


def test_auto_method_and_float_input():
    cube = _low_rank_cube(1, det=(70, 60), scan=(3, 4)).astype(np.float32)  # 4200 px > 4096: svd sketch
    op = IncrementalPCA(n_components=2)
    assert op._method(input_spec(cube)) == "svd"
    out = run_operator(op, cube, chunk_frames=3)
    _check(out, cube.astype(np.float64), 2, rtol=1e-4, atol=1e-4)


def test_outputs_follow_decomposition_product(cube):
    outs = IncrementalPCA(n_components=2).resolve(input_spec(cube))
    variables = PRODUCTS["decomposition"].variables
    assert all(name in outs for name, var in variables.items() if var.required)
    # the optional variables a PCA has (memberships, per-iteration error... belong to other methods)
    for name in ("factors", "loadings", "explained_variance", "explained_variance_ratio"):
        var = variables[name]
        assert outs[name].product == "decomposition"
        assert outs[name].result_dims() == var.dims
        assert outs[name].dtype.kind in var.kind
    assert IncrementalPCA().passes == 3


@pytest.mark.parametrize("params, match", [
    ({"n_components": 0}, "must be a positive integer"),
    ({"n_components": 25}, "25 components exceed min(frames, pixels) = 24 (fix: use n_components <= 24)"),
    ({"n_components": 3, "sketch_rank": 2}, "must be an integer >= n_components = 3"),
])
def test_pca_errors(cube, params, match):
    with pytest.raises(PipelineError) as info:
        IncrementalPCA(**params).resolve(input_spec(cube))
    assert match in str(info.value)


def test_pca_needs_two_frames():
    with pytest.raises(PipelineError, match="at least 2 frames"):
        IncrementalPCA(n_components=1).resolve(input_spec(np.zeros((1, 1, 3, 3))))
