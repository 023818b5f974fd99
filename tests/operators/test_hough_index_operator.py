"""``hough_index`` as a pipeline operator: conformance, accuracy, agreement with ``diffraflow index``."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from flow.cli import main
from operators.base import build_operator
from operators.crystallography import get_phase
from operators.indexing.testing import disorientation_deg
from operators.simulate.ebsd import simulate_ebsd
from schemas.errors import PipelineError, SchemaError
from tests.operators.conformance import check_operator

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
    ran, indexed = zarr.open_group(str(out), mode="r")["xmap"], zarr.open_group(str(tmp_path / "index.zarr"), mode="r")
    for name in ("rotation", "phase_id", "fit", "confidence", "pattern_quality", "n_bands"):
        np.testing.assert_array_equal(ran[name][...], indexed[name][...], err_msg=name)
    assert main(["validate", str(out)]) == 0
    assert main(["export", str(out), str(tmp_path / "run.ang")]) == 0
    from orix import io

    assert io.load(str(tmp_path / "run.ang")).shape == (6, 8)


def test_bad_parameters_fail_before_data():
    with pytest.raises(PipelineError, match="did you mean 'n_bands'"):
        build_operator("hough_index", {"nbands": 9})
    op = build_operator("hough_index", {"n_bands": 2, "phases": ["ni"], "pc": list(PC)})
    from operators.base import InputSpec

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
    from operators.base import InputSpec

    op = build_operator("hough_index", {"phases": [str(cif)], "pc": list(PC)})
    assert "rotation" in op.resolve(InputSpec((1, 1), (60, 60), np.dtype("uint8"), None))
    (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a oops\n")
    with pytest.raises(SchemaError):
        get_phase(str(tmp_path / "broken.cif"))
