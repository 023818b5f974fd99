"""``hough_index`` as a pipeline operator: conformance, accuracy, agreement with ``diffraflow index``."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from diffraflow.flow.cli import main
from diffraflow.flow.testing import check_operator
from diffraflow.operators.base import build_operator
from diffraflow.operators.crystallography import get_phase
from diffraflow.operators.indexing.testing import disorientation_deg
from diffraflow.operators.simulate.ebsd import simulate_ebsd
from diffraflow.schemas.errors import PipelineError, SchemaError

PC = (0.421, 0.221, 0.505)


@pytest.fixture(scope="module")
def simulation():
    sim = simulate_ebsd((5, 7), det_shape=(60, 60), n_grains=3, pc=PC, dose=60, seed=11)
    return sim, sim.all_patterns()[0]


def test_conformance_and_accuracy(simulation):
    sim, frames = simulation
    op = build_operator("hough_index", {"phases": ["ni"], "pc": list(PC)})
    results = check_operator(op, frames, chunkings=(1, 3, 17, None), executors=("inline", "threads"))
    assert (results["phase_id"] == 0).all()
    symmetry = get_phase("ni").point_group
    angles = disorientation_deg(results["rotation"].reshape(-1, 4), np.asarray(sim.true_rotation).reshape(-1, 4),
                                symmetry)
    assert np.mean(angles < 2.0) == 1.0 and np.median(angles) < 0.5


def test_pipeline_equals_index_command_and_exports(tmp_path):
    scan = tmp_path / "scan.zarr"
    assert main(["simulate", "ebsd", str(scan), "--scan-shape", "6", "8", "--seed", "5"]) == 0
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("pipeline: 1\nsteps:\n  - op: hough_index\n    name: xmap\n")
    out = tmp_path / "run.zarr"
    assert main(["run", str(pipeline), "--input", str(scan), "--output", str(out), "--chunk-frames", "13",
                 "--quiet"]) == 0
    assert main(["index", str(scan), str(tmp_path / "index.zarr")]) == 0
    ran = zarr.open_group(str(out), mode="r")["xmap"]
    indexed = zarr.open_group(str(tmp_path / "index.zarr"), mode="r")["crystal_map"]  # one route: same store
    for name in ("rotation", "phase_id", "fit", "confidence", "pattern_quality", "n_bands"):
        np.testing.assert_array_equal(ran[name][...], indexed[name][...], err_msg=name)
    assert main(["validate", str(out)]) == 0
    assert main(["export", str(out), str(tmp_path / "run.ang")]) == 0
    from orix import io

    assert io.load(str(tmp_path / "run.ang")).shape == (6, 8)
    # Both paths write the PC and beam energy into the vendor headers (issue 7.14)
    assert main(["export", str(tmp_path / "index.zarr"), str(tmp_path / "index.ang")]) == 0
    ran_header = _header(tmp_path / "run.ang", "# x-star", "# y-star", "# z-star")
    assert ran_header == _header(tmp_path / "index.ang", "# x-star", "# y-star", "# z-star")
    assert float(ran_header[0].split()[-1]) == pytest.approx(0.421)
    for name in ("run", "index"):
        assert main(["export", str(tmp_path / f"{name}.zarr"), str(tmp_path / f"{name}.ctf")]) == 0
        assert "\tKV\t20\t" in (tmp_path / f"{name}.ctf").read_text()


def _header(path, *keys):
    return [line for line in path.read_text().splitlines() if line.startswith(keys)]


def test_run_png_draws_crystal_maps(tmp_path, capsys):
    """``run --png`` draws a hough_index step as crystal-map pictures, not as generic images (issue 7.14)."""
    scan = tmp_path / "scan.zarr"
    assert main(["simulate", "ebsd", str(scan), "--scan-shape", "4", "5", "--seed", "5"]) == 0
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("pipeline: 1\nsteps:\n  - op: hough_index\n    name: xmap\n")
    out = tmp_path / "run.zarr"
    assert main(["run", str(pipeline), "--input", str(scan), "--output", str(out), "--quiet",
                 "--png", str(tmp_path / "pic")]) == 0
    assert sorted(p.name for p in tmp_path.glob("pic*.png")) == [
        "pic_xmap_confidence.png", "pic_xmap_fit.png", "pic_xmap_ipf.png", "pic_xmap_phase.png"]


def test_result_attrs_carry_scan_and_mean_pc():
    from diffraflow.operators.base import InputSpec

    attrs = {"modality": "ebsd", "beam_energy_kv": 15, "detector": {"shape": [60, 60], "pc": None,
                                                                      "pc_convention": "bruker"}}
    pcs = np.stack([np.full((2, 3), 0.40), np.full((2, 3), 0.20), np.linspace(0.5, 0.6, 6).reshape(2, 3)], -1)
    op = build_operator("hough_index", {"phases": ["ni"]}).bind({"pc": pcs})
    record = op.result_attrs(InputSpec((2, 3), (60, 60), np.dtype("uint8"), attrs))
    assert record["scan"]["beam_energy_kv"] == 15
    assert record["projection_centre"]["value"] == pytest.approx([0.4, 0.2, 0.55])
    assert record["projection_centre"]["per_point"] is True
    fixed = build_operator("hough_index", {"phases": ["ni"], "pc": list(PC), "pc_convention": "bruker"})
    assert fixed.result_attrs(InputSpec((2, 3), (60, 60), np.dtype("uint8"), attrs))["projection_centre"][
        "value"] == list(PC)


@pytest.mark.parametrize("cached", [True, False])
def test_warm_up_says_so_only_when_compiling(monkeypatch, cached):
    """``notify`` hears the compile message first, and only when numba's cache lacks the kernels (issue 7.13)."""
    from diffraflow.operators.base import InputSpec
    from diffraflow.operators.indexing.indexer import COMPILE_MESSAGE, HoughIndexer

    events = []
    original = HoughIndexer.index_chunk

    def index_chunk(self, *args, **kwargs):
        events.append("compile")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HoughIndexer, "kernels_cached", lambda self, dtype=None: cached)
    monkeypatch.setattr(HoughIndexer, "index_chunk", index_chunk)
    op = build_operator("hough_index", {"phases": ["ni"], "pc": list(PC)})
    op.warm_up(InputSpec((2, 3), (60, 60), np.dtype("uint8"), None), "numpy", events.append)
    assert events == (["compile"] if cached else [COMPILE_MESSAGE, "compile"])


@pytest.mark.slow  # two fresh interpreters importing kikuchipy and numba: 15-20 s
def test_kernels_cached_reads_numba_cache(tmp_path):
    """The cache test is real: an empty NUMBA_CACHE_DIR says no, the warm on-disk cache says yes, no compiling."""
    import os
    import subprocess
    import sys

    from diffraflow.operators.indexing.indexer import warm_up_kernels

    warm_up_kernels("uint8", "cpu")  # fills the on-disk cache if this is the first run
    probe = ("import time; from diffraflow.operators.indexing.indexer import HoughIndexer; "
             "from kikuchipy.detectors import EBSDDetector; from diffraflow.operators.crystallography import get_phase; "
             "ix = HoughIndexer([get_phase('ni')], EBSDDetector((20, 20)), backend='cpu'); t = time.time(); "
             "print(ix.kernels_cached('uint8'), ix.kernels_cached('int16') == ix.kernels_cached('float32'), "
             "round(time.time() - t))")

    def ask(**env):
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                              env={**os.environ, **env}, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
        return done.stdout.split()

    assert ask() == ["True", "True", "0"]  # int16 patterns go in as float32: the float32 kernel
    assert ask(NUMBA_CACHE_DIR=str(tmp_path)) == ["False", "True", "0"]


def test_bad_parameters_fail_before_data():
    with pytest.raises(PipelineError, match="did you mean 'n_bands'"):
        build_operator("hough_index", {"nbands": 9})
    op = build_operator("hough_index", {"n_bands": 2, "phases": ["ni"], "pc": list(PC)})
    from diffraflow.operators.base import InputSpec

    with pytest.raises(PipelineError, match="at least 3 bands"):
        op.resolve(InputSpec((1, 1), (60, 60), np.dtype("uint8"), None))
    with pytest.raises(PipelineError, match="projection centre is unknown"):
        build_operator("hough_index", {"phases": ["ni"]}).resolve(
            InputSpec((1, 1), (60, 60), np.dtype("uint8"), {"modality": "ebsd", "detector": {"shape": [60, 60]}}))


NI_CIF = """data_nickel
_symmetry_space_group_name_H-M   'F m -3 m'
_symmetry_Int_Tables_number      225
_cell_length_a                   3.5236
_cell_length_b                   3.5236
_cell_length_c                   3.5236
_cell_angle_alpha                90
_cell_angle_beta                 90
_cell_angle_gamma                90
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Ni1 Ni 0.0 0.0 0.0 1.0
"""


def test_phase_from_cif_file(tmp_path):
    cif = tmp_path / "nickel.cif"
    cif.write_text(NI_CIF)
    phase = get_phase(str(cif))
    assert phase.point_group.name == "m-3m" and phase.space_group.number == 225
    assert abs(phase.structure.lattice.a - 0.35236) < 1e-6  # Angstrom in the file, nm in orix
    assert len(phase.expand_asymmetric_unit().structure) == 4
    from diffraflow.operators.base import InputSpec

    op = build_operator("hough_index", {"phases": [str(cif)], "pc": list(PC)})
    assert "rotation" in op.resolve(InputSpec((1, 1), (60, 60), np.dtype("uint8"), None))
    (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a oops\n")
    with pytest.raises(SchemaError):
        get_phase(str(tmp_path / "broken.cif"))


def test_phase_without_space_group_fails_at_resolve():
    """A deterministic error is refused before any data is read, not retried on every chunk (issue 8)."""
    from diffraflow.operators.base import InputSpec
    from diffraflow.schemas.errors import PipelineError

    attrs = {"modality": "ebsd", "detector": {"shape": [60, 60], "pc": list(PC)},
             "phases": [{"id": 0, "name": "mystery", "lattice": [0.3, 0.3, 0.3, 90, 90, 90],
                         "atoms": [{"element": "Ni", "xyz": [0, 0, 0]}]}]}
    with pytest.raises(PipelineError, match="has no space group"):
        build_operator("hough_index", {}).resolve(InputSpec((2, 3), (60, 60), np.dtype("uint8"), attrs))
