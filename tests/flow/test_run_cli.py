"""``diffraflow run`` and ``diffraflow operators`` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from diffraflow.flow.cli import main

import tests.flow.engine_fixtures  # noqa: F401  (registers the test operators in this process)
from tests.flow.engine_fixtures import make_cube, write_yaml

PLUGIN = ["--plugin", "tests.flow.engine_fixtures"]


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    return make_cube(tmp_path_factory.mktemp("cube") / "in.zarr", scan_shape=(6, 9), det_shape=(6, 5),
                     chunk_frames=4, seed=11)


@pytest.fixture
def pipeline_file(tmp_path):
    return write_yaml(tmp_path / "p.yaml", """
        pipeline: 1
        steps:
          - op: test_affine
            params: {crop: 1}
            save: [peak]
          - op: test_frame_sum
            name: total
        output: {chunk_frames: 5}
        """)


def test_run_writes_a_complete_result_store(cube, pipeline_file, tmp_path, capsys):
    path, frames = cube
    out = tmp_path / "out.zarr"
    assert main(["run", str(pipeline_file), "--input", str(path), "--output", str(out), "--quiet", *PLUGIN]) == 0
    stdout = capsys.readouterr().out
    assert "complete; 12 chunks computed, skipped 0 of 12" in stdout
    ds = xr.open_zarr(out, group="total", consolidated=False)
    expected = (frames[:, :, :5, :4].astype(np.float32) * 2 + 1).astype(np.float64).sum(axis=(2, 3))
    np.testing.assert_allclose(ds["total"].values, expected)
    assert "frames" not in xr.open_zarr(out, group="test_affine", consolidated=False)  # not saved
    assert main(["validate", str(out)]) == 0
    # same command again: nothing to do, and it says so
    assert main(["run", str(pipeline_file), "-i", str(path), "-o", str(out), "-q", *PLUGIN]) == 0
    assert "already complete; skipped 12 of 12 chunks" in capsys.readouterr().out


def test_chunk_frames_option_overrides_the_file(cube, pipeline_file, tmp_path, capsys):
    path, _ = cube
    out = tmp_path / "out.zarr"
    assert main(["run", str(pipeline_file), "-i", str(path), "-o", str(out), "-q", "--chunk-frames", "9",
                 "--scheduler", "inline", *PLUGIN]) == 0
    assert "6 chunks computed" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("- op: test_afine", "steps[0]: unknown operator 'test_afine' (fix: did you mean 'test_affine'?)"),
    ("- op: test_affine\n  params: {scal: 2}", "unknown parameter 'scal' (fix: did you mean 'scale'?)"),
    ("- op: test_affine\n  parms: {scale: 2}", "unknown key 'parms' (fix: did you mean 'params'?)"),
])
def test_misspelled_names_exit_2_before_reading_any_data(tmp_path, capsys, text, message):
    pipeline = tmp_path / "bad.yaml"
    pipeline.write_text("pipeline: 1\nsteps:\n" + "\n".join("  " + line for line in text.splitlines()) + "\n")
    out = tmp_path / "out.zarr"
    # the input does not even exist: the pipeline is checked before the input is opened
    code = main(["run", str(pipeline), "--input", str(tmp_path / "missing.zarr"), "--output", str(out), *PLUGIN])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_resolve_errors_exit_2_before_the_output_is_created(cube, tmp_path, capsys):
    path, _ = cube
    pipeline = write_yaml(tmp_path / "p.yaml", """
        pipeline: 1
        steps:
          - op: test_affine
            save: [peek]
        """)
    out = tmp_path / "out.zarr"
    assert main(["run", str(pipeline), "-i", str(path), "-o", str(out), *PLUGIN]) == 2
    assert "did you mean 'peak'?" in capsys.readouterr().err
    assert not out.exists()


def test_failing_chunk_exits_2_naming_it(cube, tmp_path, capsys):
    path, _ = cube
    pipeline = write_yaml(tmp_path / "p.yaml", """
        pipeline: 1
        steps:
          - op: test_flaky
            params: {fail_at: [4]}
        """)
    code = main(["run", str(pipeline), "-i", str(path), "-o", str(tmp_path / "o.zarr"), "-q", "--retries", "0",
                 *PLUGIN])
    err = capsys.readouterr().err
    assert code == 2
    assert "chunk 1 (scan_y 0:1, scan_x 4:8)" in err and "boom at frame 4" in err and "re-run" in err


def test_unknown_plugin_exits_2(tmp_path, pipeline_file, capsys):
    code = main(["run", str(pipeline_file), "-i", "x.zarr", "-o", str(tmp_path / "o.zarr"), "--plugin", "nope_mod"])
    assert code == 2
    assert "--plugin nope_mod: cannot import it" in capsys.readouterr().err


def test_local_scheduler_prints_the_dashboard(cube, pipeline_file, tmp_path, capsys):
    path, _ = cube
    out = tmp_path / "out.zarr"
    assert main(["run", str(pipeline_file), "-i", str(path), "-o", str(out), "-q", "--scheduler", "local",
                 "--workers", "1", *PLUGIN]) == 0
    captured = capsys.readouterr()
    assert "dask dashboard: http://127.0.0.1:" in captured.err
    assert "12 chunks computed" in captured.out


def test_operators_lists_backends_passes_outputs_and_parameters(capsys):
    assert main(["operators", *PLUGIN]) == 0
    text = capsys.readouterr().out
    assert "test_centered  [numpy; passes: 2]" in text
    assert "output frames: frames float32 ['scan_y', 'scan_x', 'det_y', 'det_x']" in text
    assert "param scale (float, default 2.0): multiply every pixel" in text
    assert main(["operators", "test_affine", "--json", *PLUGIN]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["name"] == "test_affine" and record["outputs"]["peak"]["kind"] == "nav"
    assert main(["operators", "test_afine"]) == 2
    assert "did you mean 'test_affine'?" in capsys.readouterr().err


def test_schema_pipeline_prints_the_json_schema(capsys):
    assert main(["schema", "pipeline"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "diffraflow pipeline file"
