"""Unknown is unknown: values no file or user gave are stored as ``None`` and shown as "unknown".

A Merlin 4D-STEM file says nothing of sample tilt, step or beam energy:
``diffraflow info`` must not show 70 deg and 1 um as facts. Stores written
by older diffraflow (defaults stored as numbers) still open, and the
consumers that need a number (EBSD indexing, crystal-map writer, .ctf
export, PC conversion) fall back to the conventional value and say so.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr
from diffraflow.flow.cli import main
from diffraflow.flow.convert import convert
from diffraflow.flow.store import create_cube, open_cube
from diffraflow.schemas.cube import AssumedValueWarning

from tests.flow.test_readers_synthetic import _write_mib
from tests.real_data import REAL_DATA as REAL
from tests.real_data import needs_real_data

UNKNOWN_LINES = ("binning unknown, PC unknown", "sample tilt unknown, camera tilt unknown",
                 "beam          unknown", "step          unknown")


def _info(capsys, store) -> str:
    capsys.readouterr()
    assert main(["info", str(store)]) == 0
    return capsys.readouterr().out


def test_merlin_store_stores_and_shows_unknowns(tmp_path, capsys):
    frames = np.random.default_rng(8).integers(0, 4095, (6, 8, 10)).astype("uint16")
    _write_mib(tmp_path / "m.mib", frames, row_len=3)
    (tmp_path / "m.hdr").write_text("HDR,\nFrames in Acquisition (Number):\t6\nFrames per Trigger (Number):\t1\nEnd\t")
    out = convert(tmp_path / "m.mib", tmp_path / "m.zarr").output
    scan = open_cube(out).attrs["scan"]
    det = scan["detector"]
    assert [det[k] for k in ("sample_tilt", "camera_tilt", "azimuthal", "binning", "pc")] == [None] * 5
    assert scan["step_size"] is None and scan["beam_energy_kv"] is None
    assert scan["exposure_s"] == pytest.approx(1e-3)  # what the file does say is kept
    text = _info(capsys, out)
    for line in UNKNOWN_LINES:
        assert line in text, text
    assert "exposure      0.001 s" in text
    assert "70.0" not in text and "1.0 um" not in text


@needs_real_data("merlin_4x2_6bit.mib")
def test_real_merlin_info_shows_no_defaults_as_facts(tmp_path, capsys):
    out = tmp_path / "m.zarr"
    assert main(["convert", str(REAL / "merlin_4x2_6bit.mib"), str(out), "--quiet"]) == 0
    text = _info(capsys, out)
    for line in UNKNOWN_LINES:
        assert line in text, text
    assert "sample tilt 70.0" not in text and "y 1.0 um" not in text


def test_given_values_are_shown(tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.zeros((2, 2, 4, 4), "uint8"))
    out = convert(tmp_path / "p.npy", tmp_path / "p.zarr", modality="ebsd", sample_tilt=0.0, energy=20,
                  step=(1.5, 2.0), step_unit="nm").output
    text = _info(capsys, out)
    assert "sample tilt 0.0 deg, camera tilt unknown" in text  # a tilt of 0 is a value, not "unknown"
    assert "beam          20.0 kV" in text and "step          y 1.5 nm, x 2.0 nm" in text


def test_kikuchipy_nordif_without_settings_knows_nothing_it_was_not_told(tmp_path):
    import kikuchipy as kp

    kp.data.nickel_ebsd_small().save(tmp_path / "scan.dat")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = convert(tmp_path / "scan.dat", tmp_path / "o.zarr", scan_shape=(3, 3))
    scan = open_cube(report.output).attrs["scan"]
    assert scan["detector"]["sample_tilt"] is None and scan["step_size"] is None
    assert scan["beam_energy_kv"] is None and scan["exposure_s"] is None


def _write_old_style_store(path):
    """A cube whose ``scan`` record carries the defaults older diffraflow stored as numbers."""
    with create_cube(path, scan_shape=(1, 2), det_shape=(4, 4), dtype="uint8",
                     attrs={"modality": "4dstem", "detector": {"shape": [4, 4]}}) as writer:
        writer.patterns.append(np.zeros((2, 4, 4), "uint8"))
        writer.finalize()
    group = zarr.open_group(str(path), mode="r+")
    scan = dict(group.attrs["scan"])
    scan["detector"] = {**scan["detector"], "binning": 1, "sample_tilt": 70.0, "camera_tilt": 0.0, "azimuthal": 0.0}
    scan["step_size"] = {"y": 1.0, "x": 1.0, "unit": "um"}
    group.attrs["scan"] = scan


def test_stores_written_with_old_defaults_still_open(tmp_path, capsys):
    path = tmp_path / "old.zarr"
    _write_old_style_store(path)
    ds = open_cube(path)
    assert ds.attrs["scan"]["detector"]["sample_tilt"] == 70.0
    assert main(["validate", str(path)]) == 0
    text = _info(capsys, path)
    assert "sample tilt 70.0 deg" in text and "step          y 1.0 um, x 1.0 um" in text


# -- consumers that need a number --------------------------------------------------------------------------

def test_hough_index_assumes_70_degrees_and_says_so():
    from diffraflow.operators.base import InputSpec, build_operator

    op = build_operator("hough_index", {"phases": ["ni"], "pc": [0.42, 0.22, 0.5]})
    attrs = {"modality": "ebsd", "detector": {"shape": [60, 60], "sample_tilt": None, "camera_tilt": None,
                                              "azimuthal": None, "binning": None}}
    with pytest.warns(AssumedValueWarning, match="sample tilt, camera tilt not known: assuming 70 deg, 0 deg"):
        state = op.setup(InputSpec((1, 1), (60, 60), np.dtype("uint8"), attrs))
    detector = state["indexer"].detector
    assert (detector.sample_tilt, detector.tilt, detector.azimuthal, detector.binning) == (70.0, 0.0, 0.0, 1)
    attrs["detector"].update(sample_tilt=68.0, camera_tilt=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumedValueWarning)
        detector = op.setup(InputSpec((1, 1), (60, 60), np.dtype("uint8"), attrs))["indexer"].detector
    assert (detector.sample_tilt, detector.tilt) == (68.0, 3.0)


def test_crystal_map_writer_with_a_scan_of_unknown_step(tmp_path):
    from diffraflow.flow.crystal_map import read_crystal_map_record, write_crystal_map_store
    from orix.crystal_map import CrystalMap, Phase, PhaseList
    from orix.quaternion import Rotation

    scan = {"modality": "ebsd", "detector": {"shape": [60, 60]}}
    xmap = CrystalMap(Rotation.identity(4), x=np.tile([0.0, 0.5], 2), y=np.repeat([0.0, 0.5], 2),
                      phase_list=PhaseList(Phase("ni", point_group="m-3m")))
    path = write_crystal_map_store(xmap, tmp_path / "a.zarr", scan_attrs=scan)
    _, _, record = read_crystal_map_record(path)
    assert record["step_size"] == {"y": 0.5, "x": 0.5, "unit": "um"}  # the map's step: the scan has none
    assert record["scan"]["step_size"] is None  # and the scan record still says "not known"
    scan["step_size"] = {"y": 2.0, "x": 3.0, "unit": "nm"}
    path = write_crystal_map_store(xmap, tmp_path / "b.zarr", scan_attrs=scan)
    assert read_crystal_map_record(path)[2]["step_size"] == {"y": 2.0, "x": 3.0, "unit": "nm"}


def test_ctf_header_and_pc_conversion_with_unknown_tilts(tmp_path):
    from diffraflow.flow.exporters._common import pc_in_convention
    from diffraflow.flow.exporters.ctf import write_ctf
    from orix.crystal_map import CrystalMap, Phase, PhaseList
    from orix.quaternion import Rotation

    det = {"shape": [60, 60], "pc": [0.4, 0.3, 0.5], "sample_tilt": None, "camera_tilt": None}
    assert pc_in_convention({"detector": det}, "tsl") == (0.4, 0.7, 0.5)
    xmap = CrystalMap(Rotation.identity(4), x=np.tile([0.0, 1.0], 2), y=np.repeat([0.0, 1.0], 2),
                      phase_list=PhaseList(Phase("ni", space_group=225)))
    out = write_ctf(xmap, tmp_path / "m.ctf", metadata={"beam_energy_kv": None, "detector": det})
    header = out.read_text().splitlines()[:15]
    assert any("TiltAngle\t70" in line for line in header)
