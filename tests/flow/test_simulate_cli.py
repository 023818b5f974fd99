"""``diffraflow simulate``: valid stores with metadata and ground truth; bad arguments exit 2 in one line."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.cli import main
from diffraflow.flow.inspect_store import validate_store
from diffraflow.flow.store import open_cube, read_scan_attrs

EBSD_SMALL = ["--scan-shape", "3", "4", "--detector-shape", "16", "22", "--grains", "3", "--seed", "7"]
SPED_SMALL = ["--scan-shape", "2", "8", "--detector-shape", "24", "32", "--seed", "3"]


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFRAFLOW_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def test_ebsd_store_is_valid_and_matches_the_simulator(tmp_path, capsys):
    from diffraflow.operators.simulate.ebsd import simulate_ebsd

    out = tmp_path / "ebsd.zarr"
    assert main(["simulate", "ebsd", str(out), *EBSD_SMALL, "--clean-patterns"]) == 0
    assert "wrote" in capsys.readouterr().out
    report = validate_store(out)
    assert report["frames"] == 12 and report["modality"] == "ebsd"
    ds = open_cube(out)
    assert ds["patterns"].dims == ("scan_y", "scan_x", "det_y", "det_x")
    assert ds["patterns"].shape == (3, 4, 16, 22)
    scan = read_scan_attrs(out)
    assert scan.modality == "ebsd" and scan.beam_energy_kv == 20.0
    assert scan.detector.pc_convention == "bruker" and scan.detector.sample_tilt == 70.0
    assert scan.detector.pc == pytest.approx((0.421, 0.221, 0.505))
    assert [(p.id, p.name, p.space_group) for p in scan.phases] == [(0, "ni", 225)]
    assert set(scan.ground_truth) == {"true_rotation", "true_phase_id", "grain_id", "background_shape",
                                      "clean_patterns"}
    assert "simulate ebsd" in scan.provenance.command and "--seed 7" in scan.provenance.command
    assert scan.original_metadata["simulation"]["master_pattern_kinds"] == ["dynamical"]
    assert ds["true_rotation"].dims == ("scan_y", "scan_x", "quat")
    assert ds["clean_patterns"].dtype == np.float32

    sim = simulate_ebsd((3, 4), det_shape=(16, 22), n_grains=3, seed=7, dose=50, background_strength=0.5,
                        read_noise=1.0)
    patterns, clean = sim.all_patterns(clean=True)
    np.testing.assert_array_equal(ds["patterns"].values, patterns)
    np.testing.assert_array_equal(ds["clean_patterns"].values, clean)
    np.testing.assert_array_equal(ds["true_rotation"].values, sim.true_rotation)
    np.testing.assert_array_equal(ds["grain_id"].values, sim.grain_id)


def test_ebsd_two_phases_ids_match_the_phase_records(tmp_path):
    out = tmp_path / "two.zarr"
    assert main(["simulate", "ebsd", str(out), *EBSD_SMALL, "--phase", "ni", "fe", "--grains", "4",
                 "--master-pattern", "kinematical", "--clean"]) == 0
    scan = read_scan_attrs(out)
    assert [(p.id, p.name) for p in scan.phases] == [(0, "ni"), (1, "fe")]
    ds = open_cube(out)
    assert set(np.unique(ds["true_phase_id"].values)) == {0, 1}
    assert ds["patterns"].dtype == np.float32  # --clean: noise-free
    assert scan.original_metadata["simulation"]["master_pattern_kinds"] == ["kinematical", "kinematical"]


def test_sped_store_has_loadings_and_factors(tmp_path):
    out = tmp_path / "sped.zarr"
    assert main(["simulate", "sped", str(out), *SPED_SMALL, "--shared-spots", "--clean"]) == 0
    validate_store(out)
    scan = read_scan_attrs(out)
    assert scan.modality == "sped" and scan.beam_energy_kv == 200.0
    assert scan.detector.calibration["units"] == "1/A" and scan.step_size.unit == "nm"
    assert set(scan.ground_truth) == {"true_loadings", "true_factors"}
    ds = open_cube(out)
    assert ds["true_loadings"].dims == ("scan_y", "scan_x", "component")
    assert ds["true_factors"].dims == ("component", "det_y", "det_x")
    mixed = np.einsum("yxk,kij->yxij", ds["true_loadings"].values, ds["true_factors"].values)
    np.testing.assert_allclose(ds["patterns"].values, mixed, rtol=1e-5, atol=1e-5)
    assert scan.original_metadata["simulation"]["shared_spots"] is True


def test_sped_counts_by_default(tmp_path):
    out = tmp_path / "counts.zarr"
    assert main(["simulate", "sped", str(out), *SPED_SMALL, "--dose", "4"]) == 0
    patterns = open_cube(out)["patterns"].values
    assert patterns.dtype.kind == "u" and abs(patterns.mean() / 4 - 1) < 0.1


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "again.zarr"
    assert main(["simulate", "sped", str(out), *SPED_SMALL]) == 0
    capsys.readouterr()
    assert main(["simulate", "sped", str(out), *SPED_SMALL]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert main(["simulate", "sped", str(out), *SPED_SMALL, "--seed", "4", "--overwrite"]) == 0
    assert read_scan_attrs(out).original_metadata["simulation"]["seed"] == 4


@pytest.mark.parametrize(("argv", "flag"), [
    (["ebsd", "--dose", "-1"], "--dose"),
    (["ebsd", "--phase", "mithril"], "phase"),
    (["ebsd", "--scan-shape", "0", "5"], "--scan-shape"),
    (["ebsd", "--pc", "2", "0.2", "0.5"], "--pc"),
    (["ebsd", "--grains", "0"], "--grains"),
    (["ebsd", "--spread", "-2"], "--spread"),
    (["ebsd", "--energy", "15", "--master-pattern", "dynamical"], "--master-pattern"),
    (["ebsd", "--phase", "ni", "fe", "--phase-fractions", "1"], "--phase-fractions"),
    (["ebsd", "--step-size", "0"], "--step-size"),
    (["sped", "--detector-shape", "4", "4"], "--detector-shape"),
    (["sped", "--boundary", "0.9", "0.1"], "--boundary"),
    (["sped", "--dose", "0"], "--dose"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, flag):
    out = tmp_path / "bad.zarr"
    assert main(["simulate", argv[0], str(out), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("diffraflow simulate: error:")
    assert flag in err and "fix:" in err
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("argv", [
    ["simulate", "ebsd", "x.zarr", "--dose", "lots"],
    ["simulate", "ebsd", "x.zarr", "--dose", "5", "--clean"],
    ["simulate", "tkd", "x.zarr"],
    ["simulate"],
])
def test_unparsable_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
