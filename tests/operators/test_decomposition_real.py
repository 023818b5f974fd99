"""Every decomposition on the real SPED (ASTAR .blo) and PED (.hspy) scans: runs, and gives diffraction-like factors."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.cli import main
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.pipeline import Pipeline, Step
from diffraflow.operators.decomposition.fuzzy_cmeans import FuzzyCMeans
from diffraflow.operators.decomposition.ica import ICA
from diffraflow.operators.decomposition.nmf import NMF
from diffraflow.operators.decomposition.svd import SVD
from diffraflow.operators.decomposition.vca import VCA

from tests.real_data import needs_real_data, real_file

FILES = ("sped_astar_3x2.blo", "ped_subset_2x2.hspy")
pytestmark = needs_real_data(*FILES)


@pytest.mark.parametrize("name", FILES)
def test_real_scans_decompose_with_plausible_factors(name, tmp_path):
    import zarr

    cube = tmp_path / "cube.zarr"
    assert main(["convert", str(real_file(name)), str(cube), "--quiet"]) == 0
    frames = np.asarray(zarr.open_group(str(cube), mode="r")["patterns"][...], np.float64)
    n = frames.shape[0] * frames.shape[1]
    mean = frames.reshape(n, -1).mean(axis=0)
    ops = [SVD(n_components=3), SVD(n_components=3, centre=True, poisson=True), NMF(n_components=2, max_iter=60),
           NMF(n_components=2, loss="kullback-leibler", max_iter=60), ICA(n_components=2), FuzzyCMeans(n_clusters=2),
           FuzzyCMeans(n_clusters=2, variant="gk", contrast=0.5), VCA(n_components=2)]
    steps = [Step(op, name=f"{op.name}_{i}") for i, op in enumerate(ops)]
    out = run_pipeline(Pipeline(steps), str(cube), tmp_path / "out.zarr", chunk_frames=2).results
    for key, value in out.items():
        assert np.all(np.isfinite(value) | key.endswith("/error")), key  # error: NaN after the last iteration
    # the first uncentred SVD factor is the mean pattern (up to scale): most of the signal
    assert abs(np.corrcoef(out["svd_0/factors"][0].ravel(), mean)[0, 1]) > 0.99
    assert out["svd_0/explained_variance_ratio"][0] > 0.9
    x = frames.reshape(n, -1)
    for step in ("nmf_2", "nmf_3"):
        factors = out[f"{step}/factors"].reshape(2, -1).astype(np.float64)
        loadings = out[f"{step}/loadings"].reshape(n, 2).astype(np.float64)
        assert factors.min() >= 0 and loadings.min() >= 0, step
        # the strongest factor is diffraction-like (the measured patterns' beam and spots), and the pair
        # reconstructs the frames; the weaker one holds their differences, as NMF factors of similar frames do
        strongest = factors[np.argmax(factors.sum(axis=1))]
        assert np.corrcoef(strongest, mean)[0, 1] > 0.95, step
        assert np.linalg.norm(x - loadings @ factors) < 0.1 * np.linalg.norm(x), step
    for step in ("fuzzy_cmeans_5", "fuzzy_cmeans_6", "vca_7"):
        # weighted means of frames, or frames: each is a measured-looking pattern
        factors = out[f"{step}/factors"].reshape(2, -1).astype(np.float64)
        assert factors.min() >= 0 and all(np.corrcoef(f, mean)[0, 1] > 0.9 for f in factors), step
    for step in ("fuzzy_cmeans_5", "fuzzy_cmeans_6", "vca_7"):
        np.testing.assert_allclose(out[f"{step}/loadings"].sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["nmf_2/loadings"].max(axis=(0, 1)), 1.0, rtol=1e-5)
