"""nmf through the engine: the seed's bicrystal recovered, scikit-learn's solution matched, chunking and resume."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.pipeline import Pipeline
from diffraflow.flow.testing import OperatorConformance, input_spec, run_operator, synthetic_frames
from diffraflow.operators.decomposition._nmf import nndsvd_factors
from diffraflow.operators.decomposition.nmf import NMF
from diffraflow.operators.simulate.sped import simulate_sped
from diffraflow.schemas.errors import PipelineError
from sklearn.decomposition import NMF as SklearnNMF

DET = (48, 48)  # the simulator's default lattices leave both crystals spots of their own here (12 and 6)


def _bicrystal(dose=None, shared=False, seed=0, scan=(3, 30)):
    sim = simulate_sped(scan, det_shape=DET, dose=dose, shared_spots=shared, seed=seed)
    assert min(sim.parameters["n_spots"]) > 0
    return sim, sim.all_patterns()


def _matched(loadings, truth):
    """Recovered components reordered to best match the truth's (two components)."""
    c = np.corrcoef(np.c_[loadings, truth].T)[:2, 2:]
    order = [0, 1] if c[0, 0] + c[1, 1] >= c[0, 1] + c[1, 0] else [1, 0]
    return order, np.array([c[order[j], j] for j in range(2)])


def _normalised(w, h):
    """Scale-free form of a factorisation: each loading column peaks at 1."""
    peak = np.where(w.max(axis=0) > 0, w.max(axis=0), 1.0)
    return w / peak, h * peak[:, None]


@pytest.mark.parametrize("dose", [None, 20.0])
def test_non_overlapping_bicrystal_loadings_correlate_with_the_thickness_profiles(dose):
    sim, cube = _bicrystal(dose=dose)
    out = run_operator(NMF(n_components=2), cube, chunk_frames=7)
    order, corr = _matched(out["loadings"].reshape(-1, 2), sim.loadings.reshape(-1, 2))
    assert np.all(corr >= 0.99), corr
    np.testing.assert_allclose(out["loadings"].max(axis=(0, 1)), 1.0, rtol=1e-6)  # scaled to peak 1 (seed)
    fac = out["factors"].reshape(2, -1)[order]
    assert np.all([np.corrcoef(fac[j], sim.factors.reshape(2, -1)[j])[0, 1] > 0.99 for j in range(2)])


def test_frobenius_equals_sklearn_coordinate_descent_from_nndsvd():
    sim, cube = _bicrystal(dose=50.0, seed=1)
    x = cube.reshape(-1, 48 * 48).astype(np.float64)
    ours = run_operator(NMF(n_components=2, tol=1e-12, max_iter=400, scale_loadings=False), cube, chunk_frames=11)
    sk = SklearnNMF(n_components=2, init="nndsvd", solver="cd", tol=1e-12, max_iter=5000).fit(x)
    w_sk = sk.transform(x)
    w, h = _normalised(ours["loadings"].reshape(-1, 2).astype(np.float64), ours["factors"].reshape(2, -1))
    w_ref, h_ref = _normalised(w_sk, sk.components_)
    order, _ = _matched(w, w_ref)
    np.testing.assert_allclose(w[:, order], w_ref, atol=2e-3)
    np.testing.assert_allclose(h[order], h_ref, rtol=2e-3, atol=2e-3 * h_ref.max())
    n_iter = int(ours["n_iter"][0])
    np.testing.assert_allclose(ours["error"][n_iter], np.linalg.norm(x - w_sk @ sk.components_), rtol=1e-4)


def test_frobenius_error_never_rises_and_is_recorded_per_iteration():
    _, cube = _bicrystal(dose=5.0, seed=2)
    out = run_operator(NMF(n_components=2, max_iter=30, tol=0.0), cube, chunk_frames=9)
    error = out["error"]
    assert int(out["n_iter"][0]) == 30 and np.isfinite(error).sum() == 31
    assert np.all(np.diff(error) <= 1e-9 * error[0])  # alternating exact least squares: monotone


def test_kullback_leibler_matches_sklearn_multiplicative_updates():
    sim, cube = _bicrystal(dose=20.0, seed=3)
    x = cube.reshape(-1, 48 * 48).astype(np.float64)
    ours = run_operator(NMF(n_components=2, loss="kullback-leibler", tol=1e-9, max_iter=300), cube, chunk_frames=13)
    sk = SklearnNMF(n_components=2, init="nndsvda", solver="mu", beta_loss="kullback-leibler", tol=1e-10,
                    max_iter=3000).fit(x)
    w_sk = sk.transform(x)
    w, _ = _normalised(ours["loadings"].reshape(-1, 2).astype(np.float64), ours["factors"].reshape(2, -1))
    w_ref, _ = _normalised(w_sk, sk.components_)
    order, corr = _matched(w, w_ref)
    assert np.all(corr > 0.999), corr
    np.testing.assert_allclose(w[:, order], w_ref, atol=0.02)
    _, truth = _matched(w, sim.loadings.reshape(-1, 2))
    assert np.all(truth > 0.99)


def test_sum_to_one_loadings_sum_to_one_and_recover_shared_spot_crystals():
    sim, cube = _bicrystal(dose=None, shared=True, seed=4)
    out = run_operator(NMF(n_components=2, sum_to_one=True), cube, chunk_frames=8)
    w = out["loadings"].reshape(-1, 2)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
    _, corr = _matched(w, sim.loadings.reshape(-1, 2))
    assert np.all(corr > 0.999)


def _subset_model(dose=None):
    """The seed's Fig. 6 extreme: crystal B is A's systematic row (and beam) only, no reflection of its own."""
    sim, _ = _bicrystal(seed=7)
    a = sim.factors[0].astype(np.float64)
    rows = np.abs(np.arange(DET[0]) - (DET[0] - 1) / 2.0) <= 3.6
    factors = np.stack([a, a * rows[:, None]])
    cube = np.einsum("yxk,khw->yxhw", sim.loadings.astype(np.float64), factors)
    if dose is not None:
        cube = np.random.default_rng(0).poisson(dose * cube).astype("u2")
    return sim.loadings, factors, cube


@pytest.mark.parametrize("dose", [None, 30.0])
def test_vca_start_removes_the_shared_reflection_artefact_that_nndsvd_shows(dose):
    truth_l, truth_f, cube = _subset_model(dose)

    def factor_corr(out):
        order, _ = _matched(out["loadings"].reshape(-1, 2), truth_l.reshape(-1, 2))
        fac = out["factors"].reshape(2, -1)[order]
        return min(np.corrcoef(fac[j], truth_f.reshape(2, -1)[j])[0, 1] for j in range(2))

    nndsvd = run_operator(NMF(n_components=2), cube, chunk_frames=15)
    vca = run_operator(NMF(n_components=2, init="vca"), cube, chunk_frames=15)
    # NNDSVD: one factor ends up with the shared row, the other with A's own spots (the seed's Fig. 6b)
    assert factor_corr(nndsvd) < 0.9
    assert factor_corr(vca) > 0.99


def test_pick_frames_collects_frames_by_flat_index_over_chunks():
    from diffraflow.operators.decomposition._vca import pick_frames

    x = np.arange(20.0).reshape(10, 2)
    wanted = np.array([7, 2])
    total = pick_frames(x[:5], np.arange(5), wanted) + pick_frames(x[5:], np.arange(5, 10), wanted)
    np.testing.assert_array_equal(total, x[[7, 2]])


def test_identical_across_chunkings_and_executors():
    _, cube = _bicrystal(dose=10.0, seed=5)
    op = NMF(n_components=2, max_iter=12, tol=0.0)
    ref = run_operator(op, cube)
    for chunk, executor in ((1, "inline"), ((4, 7, 2), "inline"), (13, "threads")):
        got = run_operator(op, cube, chunk_frames=chunk, executor=executor)
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-7, atol=1e-9, err_msg=f"{chunk} {key}")


def test_resumes_mid_iteration_with_identical_results(tmp_path, monkeypatch):
    _, cube = _bicrystal(dose=10.0, seed=6)
    op = NMF(n_components=2, max_iter=10, tol=0.0)
    full = run_pipeline(Pipeline([op]), cube, tmp_path / "full.zarr", chunk_frames=15).results
    original = NMF.finalize_stage
    calls = {"n": 0}

    def crash_on_fifth_iteration(self, stage, partials, state, ctx):
        if stage == "iterate":
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return original(self, stage, partials, state, ctx)

    monkeypatch.setattr(NMF, "finalize_stage", crash_on_fifth_iteration)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(Pipeline([op]), cube, tmp_path / "r.zarr", chunk_frames=15)
    monkeypatch.setattr(NMF, "finalize_stage", original)
    again = run_pipeline(Pipeline([op]), cube, tmp_path / "r.zarr", chunk_frames=15)
    assert again.resumed and again.skipped >= 6 * 6  # the SVD, NNDSVD and four iterations were not redone
    for key in full:
        np.testing.assert_array_equal(again.results[key], full[key])


def test_negative_data_is_refused_in_one_line():
    cube = synthetic_frames((3, 4), (5, 5), "float32", seed=0) - 0.5
    with pytest.raises(Exception, match="NMF needs non-negative data") as info:
        run_operator(NMF(n_components=2), cube)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("params", "message"), [
    ({"loss": "kullback-leibler", "sum_to_one": True}, "frobenius loss only"),
    ({"loss": "l1"}, "'l1' is not one of"),
    ({"max_iter": 0}, "max_iter: must be an integer >= 1"),
    ({"tol": -1.0}, "tol: must be a number >= 0"),
    ({"init": "random"}, "'random' is not nndsvd, nndsvda or vca"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(PipelineError, match=message):
        NMF(**params).resolve(input_spec(np.zeros((4, 5, 6, 6))))


def test_nndsvd_start_matches_the_definition_on_a_small_matrix():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(30, 12))
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    z = x @ vt[:3].T
    h = nndsvd_factors(vt[:3], s[:3], (np.maximum(z, 0) ** 2).sum(0), (np.minimum(z, 0) ** 2).sum(0))
    # reference written from Boutsidis & Gallopoulos (2008), Table 1, with explicit left vectors
    ref = np.zeros_like(h)
    ref[0] = np.sqrt(s[0]) * np.abs(vt[0])
    for j in (1, 2):
        up, un = np.maximum(u[:, j], 0), np.maximum(-u[:, j], 0)
        vp, vn = np.maximum(vt[j], 0), np.maximum(-vt[j], 0)
        mp, mn = np.linalg.norm(up) * np.linalg.norm(vp), np.linalg.norm(un) * np.linalg.norm(vn)
        v, m = (vp, mp) if mp > mn else (vn, mn)
        ref[j] = np.sqrt(s[j] * m) * v / np.linalg.norm(v)
    np.testing.assert_allclose(h, ref, atol=1e-12)


class TestNMFConformance(OperatorConformance):
    operator = NMF(n_components=2, max_iter=8, tol=0.0)
    frames = synthetic_frames((5, 7), (8, 9), "uint16", seed=1)
    rtol, atol = 1e-6, 1e-8


class TestNMFKLConformance(OperatorConformance):
    operator = NMF(n_components=2, loss="kullback-leibler", max_iter=5, tol=0.0, kl_inner_iter=5)
    frames = synthetic_frames((5, 7), (8, 9), "uint8", seed=3)
    rtol, atol = 1e-6, 1e-8
