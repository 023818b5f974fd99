"""``diffraflow convert`` on the real files in ../shared/data/real, against kikuchipy / RosettaSciIO / HyperSpy.

Each file is converted through the command line; its ``patterns`` must equal
exactly what the reference loader returns (reshaped to the stored scan) and
the key metadata must be carried.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from diffraflow.flow.cli import main
from diffraflow.flow.store import open_cube

from tests.real_data import REAL_DATA as REAL
from tests.real_data import needs_real_data

pytestmark = needs_real_data()


def _kikuchipy(path):
    import kikuchipy as kp

    return kp.load(path).data


def _blockfile(path):
    from rsciio.blockfile import file_reader

    return file_reader(str(path))[0]["data"]


def _merlin(path):
    from rsciio.quantumdetector import file_reader

    return file_reader(str(path))[0]["data"]


def _hyperspy(path):
    import hyperspy.api as hs

    return hs.load(str(path)).data


def _npy(path):
    return np.load(path)


# file, reference loader, expected scan shape, modality, source_format
CASES = [
    ("ni_small_kikuchipy_h5ebsd.h5", _kikuchipy, (3, 3), "ebsd", "h5ebsd:kikuchipy"),
    ("ni_small_edax.up1", _kikuchipy, (1, 9), "ebsd", "edax_binary"),
    ("ni_small_edax.up2", _kikuchipy, (1, 10), "ebsd", "edax_binary"),
    ("ni_small_oxford.ebsp", _kikuchipy, (3, 3), "ebsd", "oxford_binary"),
    ("si_single_in.h5", _kikuchipy, (1, 1), "ebsd", "h5ebsd:kikuchipy"),
    ("si_single_out5mm.h5", _kikuchipy, (1, 1), "ebsd", "h5ebsd:kikuchipy"),
    ("si_single_out10mm.h5", _kikuchipy, (1, 1), "ebsd", "h5ebsd:kikuchipy"),
    ("cu_hkl_2x2_patterns.npy", _npy, (2, 2), "ebsd", "npy"),
    ("sped_astar_3x2.blo", _blockfile, (3, 2), "sped", "blockfile"),
    ("merlin_4x2_6bit.mib", _merlin, (2, 4), "4dstem", "merlin"),
    ("ped_subset_2x2.hspy", _hyperspy, (2, 2), "4dstem", "hspy"),
]


def _convert(tmp_path, inputs, *options) -> tuple[int, Path]:
    out = tmp_path / "out.zarr"
    code = main(["convert", *map(str, inputs), str(out), *map(str, options), "--quiet"])
    return code, out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each real file converted once for the whole module."""
    stores = {}
    for name, *_ in CASES:
        if not (REAL / name).is_file():
            continue
        out = tmp_path_factory.mktemp("real") / f"{name}.zarr"
        assert main(["convert", str(REAL / name), str(out), "--quiet"]) == 0
        stores[name] = out
    return stores


@pytest.mark.parametrize(("name", "loader", "scan", "modality", "fmt"), CASES, ids=[c[0] for c in CASES])
def test_patterns_equal_reference_loader(converted, name, loader, scan, modality, fmt):
    if name not in converted:
        pytest.skip(f"{name} not present")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(loader(REAL / name))
    ds = open_cube(converted[name])
    got = ds["patterns"].values
    assert got.shape[:2] == scan
    assert got.dtype == expected.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, expected.reshape(got.shape))
    scan_attrs = ds.attrs["scan"]
    assert scan_attrs["modality"] == modality
    assert scan_attrs["provenance"]["source_format"] == fmt
    assert scan_attrs["provenance"]["source_file"].endswith(name)
    assert scan_attrs["provenance"]["command"].startswith("diffraflow convert")


def test_kikuchipy_h5ebsd_metadata(converted):
    import kikuchipy as kp

    s = kp.load(REAL / "ni_small_kikuchipy_h5ebsd.h5")
    ds = open_cube(converted["ni_small_kikuchipy_h5ebsd.h5"])
    scan = ds.attrs["scan"]
    det = scan["detector"]
    assert det["pc_convention"] == "bruker"
    np.testing.assert_allclose(ds["pc"].values, s.detector.pc)  # per-point PC, Bruker convention
    np.testing.assert_allclose(det["pc"], s.detector.pc.reshape(-1, 3).mean(axis=0))
    assert det["sample_tilt"] == 70 and det["binning"] == 8
    assert scan["beam_energy_kv"] == 20
    assert scan["step_size"] == {"y": 1.5, "x": 1.5, "unit": "um"}
    np.testing.assert_array_equal(ds["static_background"].values, s.static_background)
    np.testing.assert_allclose(ds["rotation"].values.reshape(-1, 4), s.xmap.rotations.data)
    np.testing.assert_array_equal(ds["phase_id"].values.ravel(), s.xmap.phase_id)
    np.testing.assert_allclose(ds["scores"].values.ravel(), s.xmap.prop["scores"])
    assert set(scan["original_metadata"]["crystal_map_variables"]) == {"rotation", "phase_id", "scores"}
    assert [(p["id"], p["name"], p["space_group"]) for p in scan["phases"]] == [(0, "ni", 225)]


def test_single_si_pattern_metadata(converted):
    ds = open_cube(converted["si_single_in.h5"])
    scan = ds.attrs["scan"]
    assert scan["exposure_s"] == pytest.approx(0.0999)
    assert scan["beam_energy_kv"] == 20
    assert scan["detector"]["pc"] is None  # the file stores -1 placeholders: unknown, not 0.5
    assert ds["static_background"].shape == (480, 480)


def test_binary_ebsd_metadata(converted):
    up2 = open_cube(converted["ni_small_edax.up2"]).attrs["scan"]
    assert up2["detector"]["pc_convention"] == "edax"
    assert up2["original_metadata"]["hexagonal_grid"] is True
    assert up2["step_size"]["x"] == pytest.approx(np.pi)
    ebsp = open_cube(converted["ni_small_oxford.ebsp"]).attrs["scan"]
    assert ebsp["step_size"]["x"] == pytest.approx(1.5)
    assert ebsp["detector"]["pc_convention"] == "oxford"


def test_sped_and_4dstem_metadata(converted):
    blo = open_cube(converted["sped_astar_3x2.blo"]).attrs["scan"]
    assert blo["beam_energy_kv"] == 200
    assert blo["step_size"] == {"y": 12.8, "x": 12.8, "unit": "nm"}
    assert blo["detector"]["calibration"]["scale"] == pytest.approx(0.016061676839061997)
    mib = open_cube(converted["merlin_4x2_6bit.mib"]).attrs["scan"]
    assert mib["exposure_s"] == pytest.approx(0.1)
    assert mib["original_metadata"]["hdr_file"]["Counter Depth (number)"] == "6"
    hspy = open_cube(converted["ped_subset_2x2.hspy"]).attrs["scan"]
    assert hspy["detector"]["calibration"]["scale"] == pytest.approx(0.01261)
    assert hspy["detector"]["calibration"]["units"] == "1/A"
    assert hspy["step_size"] == {"y": 2.0, "x": 2.0, "unit": "nm"}


def test_npy_picks_up_sidecar_ctf(converted):
    from orix import io as orix_io

    ds = open_cube(converted["cu_hkl_2x2_patterns.npy"])
    scan = ds.attrs["scan"]
    xmap = orix_io.load(REAL / "cu_hkl_2x2.ctf")
    np.testing.assert_allclose(ds["rotation"].values.reshape(-1, 4), xmap.rotations.data)
    assert scan["phases"][0]["name"] == "Copper" and scan["phases"][0]["space_group"] == 225
    assert scan["beam_energy_kv"] == 20 and scan["detector"]["sample_tilt"] == 70
    assert scan["step_size"]["x"] == pytest.approx(0.8)


@pytest.mark.parametrize("how", ["glob", "list", "directory"])
def test_jpeg_stack_equals_npy(tmp_path, how):
    import shutil

    files = [REAL / f"cu_hkl_2x2_p{i}.jpg" for i in range(1, 5)]
    if how == "glob":
        args = [str(REAL / "cu_hkl_2x2_p*.jpg")]
    elif how == "list":
        args = [str(f) for f in files]
    else:
        folder = tmp_path / "stack"
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
        args = [str(folder)]
    code, out = _convert(tmp_path, args, "--scan-shape", 2, 2)
    assert code == 0
    ds = open_cube(out)
    np.testing.assert_array_equal(ds["patterns"].values, np.load(REAL / "cu_hkl_2x2_patterns.npy"))
    if how != "directory":  # the .ctf beside the images is the crystal map
        assert ds.attrs["scan"]["modality"] == "ebsd" and "rotation" in ds


def test_up1_reshaped_by_scan_shape(tmp_path):
    import kikuchipy as kp

    code, out = _convert(tmp_path, [REAL / "ni_small_edax.up1"], "--scan-shape", 3, 3)
    assert code == 0
    np.testing.assert_array_equal(open_cube(out)["patterns"].values,
                                  kp.load(REAL / "ni_small_kikuchipy_h5ebsd.h5").data)


def test_info_shows_converted_metadata(converted, capsys):
    assert main(["info", str(converted["ni_small_kikuchipy_h5ebsd.h5"])]) == 0
    text = capsys.readouterr().out
    assert "complete" in text and "(bruker)" in text and "20.0 kV" in text and "rotation" in text
