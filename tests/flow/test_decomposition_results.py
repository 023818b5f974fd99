"""Decomposition results as users meet them: xarray, pictures, HyperSpy .hspy export, resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from diffraflow.flow.cli import main
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.exporters import export_decomposition
from diffraflow.flow.exporters.hspy import write_decomposition_hspy
from diffraflow.flow.pipeline import Pipeline
from diffraflow.flow.result_plots import plot_result_store
from diffraflow.operators.decomposition.fuzzy_cmeans import FuzzyCMeans
from diffraflow.operators.decomposition.nmf import NMF
from diffraflow.operators.decomposition.svd import SVD
from diffraflow.operators.decomposition.vca import VCA
from diffraflow.schemas.errors import SchemaError, UnknownFormatError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("decomposition")
    cube = work / "bicrystal.zarr"
    assert main(["simulate", "sped", str(cube), "--scan-shape", "6", "20", "--detector-shape", "48", "48",
                 "--dose", "20", "--seed", "2"]) == 0
    pipeline = Pipeline([SVD(n_components=5), NMF(n_components=2), FuzzyCMeans(n_clusters=2), VCA(n_components=2)])
    out = work / "run.zarr"
    run_pipeline(pipeline, str(cube), out, chunk_frames=40)
    return cube, out


def test_results_open_with_xarray_with_named_dims(run):
    from diffraflow.flow.results import open_results

    _, out = run
    tree = open_results(out)
    nmf, fuzzy = tree["nmf"].to_dataset(), tree["fuzzy_cmeans"].to_dataset()
    assert nmf["loadings"].dims == ("scan_y", "scan_x", "component")
    assert nmf["factors"].dims == ("component", "det_y", "det_x")
    assert nmf["error"].dims == ("iteration",) and np.isfinite(nmf["error"].values).any()
    assert fuzzy["memberships"].dims == ("scan_y", "scan_x", "component")
    np.testing.assert_allclose(fuzzy["memberships"].sum("component").values, 1.0, atol=1e-5)
    assert tree["svd"].to_dataset()["explained_variance_ratio"].dims == ("component",)


def test_pictures_of_every_decomposition(run, tmp_path):
    cube, out = run
    from diffraflow.flow.store import read_scan_attrs

    written = {p.name for p in plot_result_store(out, tmp_path / "pic",
                                                 scan_attrs=read_scan_attrs(cube).model_dump(mode="json"))}
    expected = {"pic_svd_scree.png", "pic_svd_factors.png", "pic_nmf_factors.png", "pic_nmf_error.png",
                "pic_fuzzy_cmeans_factors.png", "pic_fuzzy_cmeans_memberships.png", "pic_fuzzy_cmeans_scatter.png",
                "pic_fuzzy_cmeans_error.png", "pic_vca_factors.png", "pic_vca_scatter.png"}
    assert expected <= written
    for name in expected:
        assert (tmp_path / name).stat().st_size > 5000


def test_hspy_export_reads_back_in_hyperspy(run, tmp_path):
    import hyperspy.api as hs  # a dev dependency: required, never skipped
    import zarr

    cube, out = run
    path = write_decomposition_hspy(out, tmp_path / "nmf.hspy", step="nmf")
    s = hs.load(path, lazy=True)
    assert s.axes_manager.navigation_shape == (20, 6) and s.axes_manager.signal_shape == (48, 48)
    assert s.axes_manager.signal_axes[0].units == "1/Å"
    group = zarr.open_group(str(out), mode="r")["nmf"]
    lr = s.learning_results
    np.testing.assert_allclose(np.asarray(lr.loadings), group["loadings"][...].reshape(120, 2), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(lr.factors).T.reshape(2, 48, 48), group["factors"][...], rtol=1e-6)
    assert lr.decomposition_algorithm == "NMF"
    factors = s.get_decomposition_factors()
    assert factors.axes_manager.navigation_shape == (2,)
    # HyperSpy carries on: the decomposition model is the product of the exported factors and loadings
    model = s.get_decomposition_model().data.compute()
    np.testing.assert_allclose(model.reshape(120, -1), group["loadings"][...].reshape(120, 2).astype(float)
                               @ group["factors"][...].reshape(2, -1), rtol=1e-5, atol=1e-4)


def test_hspy_export_with_the_frames(run, tmp_path):
    import hyperspy.api as hs  # a dev dependency: required, never skipped
    import zarr

    cube, out = run
    path = export_decomposition(out, tmp_path / "svd.hspy", step="svd", with_data=True)[0]
    s = hs.load(path)
    np.testing.assert_array_equal(s.data, zarr.open_group(str(cube), mode="r")["patterns"][...])
    np.testing.assert_allclose(s.learning_results.explained_variance,
                               zarr.open_group(str(out), mode="r")["svd/explained_variance"][...])


def test_hspy_export_errors_are_one_line(run, tmp_path):
    _, out = run
    with pytest.raises(SchemaError, match="holds 4 decompositions"):
        write_decomposition_hspy(out, tmp_path / "x.hspy")
    with pytest.raises(SchemaError, match="no decomposition step 'pca'"):
        write_decomposition_hspy(out, tmp_path / "x.hspy", step="pca")
    with pytest.raises(UnknownFormatError, match="unknown decomposition export format '.mat'"):
        export_decomposition(out, tmp_path / "x.mat")
    write_decomposition_hspy(out, tmp_path / "x.hspy", step="vca")
    with pytest.raises(Exception, match="exists"):
        write_decomposition_hspy(out, tmp_path / "x.hspy", step="vca")


@pytest.mark.slow  # a subprocess run killed half-way and run again: ~20 s
def test_nmf_killed_mid_iteration_resumes_with_identical_results(tmp_path):
    cube = tmp_path / "s.zarr"
    assert main(["simulate", "sped", str(cube), "--scan-shape", "12", "30", "--detector-shape", "48", "48",
                 "--seed", "5"]) == 0
    pipeline = tmp_path / "nmf.yaml"
    pipeline.write_text("pipeline: 1\nsteps:\n  - op: nmf\n    params: {n_components: 2, max_iter: 30, tol: 0.0}\n")
    reference = tmp_path / "reference.zarr"
    assert main(["run", str(pipeline), "-i", str(cube), "-o", str(reference), "--quiet", "--chunk-frames", "40",
                 "--scheduler", "inline"]) == 0
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "diffraflow", "run", str(pipeline), "-i", str(cube), "-o", str(out), "--quiet",
           "--chunk-frames", "40", "--scheduler", "inline"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = out / "_progress"
    deadline = time.monotonic() + 120
    # wait until a few NMF iterations have been checkpointed, then kill without warning
    while time.monotonic() < deadline and len(list(progress.glob("round*/complete"))) < 8 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: make it slower"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(progress.glob("round*/complete"))) < 33, "killed after the last round: nothing to resume"
    assert main(["run", str(pipeline), "-i", str(cube), "-o", str(out), "--quiet", "--chunk-frames", "40",
                 "--scheduler", "inline"]) == 0
    import zarr

    a, b = zarr.open_group(str(reference), mode="r"), zarr.open_group(str(out), mode="r")
    for name in ("nmf/factors", "nmf/loadings", "nmf/error", "nmf/n_iter"):
        np.testing.assert_array_equal(a[name][...], b[name][...], err_msg=name)
