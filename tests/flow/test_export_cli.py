"""``diffraflow export``: formats by extension, one-line errors with exit status 2."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.cli import main
from diffraflow.flow.crystal_map import MIN_CONFIDENCE, write_crystal_map_store

from tests.flow.crystal_map_fixtures import make_xmap, phase_names


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    scan = {"modality": "ebsd", "detector": {"shape": [60, 60], "pc": [0.42, 0.22, 0.5]}, "beam_energy_kv": 15,
            "step_size": {"y": 1.5, "x": 0.5}}
    return write_crystal_map_store(make_xmap((5, 7)), tmp_path_factory.mktemp("s") / "cm.zarr", scan_attrs=scan)


def _one_line_error(capsys, fragment: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffraflow export: error: ") and "\n" not in err, err
    assert fragment in err, err


@pytest.mark.parametrize("ext", ["ang", "ctf", "h5"])
def test_export_formats(tmp_path, store, capsys, ext):
    import orix.io

    out = tmp_path / f"map.{ext}"
    assert main(["export", str(store), str(out), "--min-confidence", "0"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    back = orix.io.load(out, **({"autogen_names": False} if ext == "ang" else {}))
    np.testing.assert_array_equal(phase_names(back), phase_names(make_xmap((5, 7))))


@pytest.mark.parametrize("ext", ["ang", "ctf", "h5"])
@pytest.mark.parametrize("option", [[], ["--min-confidence", "0.4"]])
def test_export_marks_low_confidence_not_indexed(tmp_path, store, ext, option):
    """Points below the threshold (default 0.10) are exported as each format's not indexed."""
    import orix.io

    out = tmp_path / f"map.{ext}"
    assert main(["export", str(store), str(out), *option]) == 0
    back = orix.io.load(out, **({"autogen_names": False} if ext == "ang" else {}))
    xmap = make_xmap((5, 7))
    threshold = float(option[1]) if option else MIN_CONFIDENCE
    low = xmap.prop["confidence"] < threshold
    assert low.any() and (xmap.phase_id[low] >= 0).any()  # the fixture has solutions below it
    expected = np.where(low, "", phase_names(xmap))
    np.testing.assert_array_equal(phase_names(back), expected)
    assert (back.phase_id[low] == -1).all()  # orix's not-indexed id (the .ang/.ctf reader maps phase 0 to it)
    if ext == "ang":
        assert (back.prop["ci"][low] == -1).all() and (back.prop["fit"][low] == 180).all()
    if ext == "ctf":
        assert (back.prop["error"][low] == 3).all()
    if ext == "h5":  # the raw confidence survives where the format has room for it
        np.testing.assert_allclose(back.prop["confidence"], xmap.prop["confidence"])


def test_export_min_confidence_out_of_range(tmp_path, store, capsys):
    assert main(["export", str(store), str(tmp_path / "m.ang"), "--min-confidence", "5"]) == 2
    _one_line_error(capsys, "--min-confidence: must be between 0 and 1, got 5")
    assert not (tmp_path / "m.ang").exists()


def test_export_metadata_reaches_headers(tmp_path, store):
    assert main(["export", str(store), str(tmp_path / "m.ctf")]) == 0
    assert "KV\t15" in (tmp_path / "m.ctf").read_text()
    assert main(["export", str(store), str(tmp_path / "m.ang")]) == 0
    assert "# x-star                0.420000" in (tmp_path / "m.ang").read_text()


def test_export_png_set(tmp_path, store, capsys):
    assert main(["export", str(store), str(tmp_path / "m.png"), "--ipf-direction", "y"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_confidence.png", "m_fit.png", "m_ipf.png",
                                                         "m_phase.png"]
    assert main(["export", str(store), str(tmp_path / "m.png")]) == 2
    _one_line_error(capsys, "output already exists")


def test_export_errors(tmp_path, store, capsys):
    assert main(["export", str(store), str(tmp_path / "m.txt")]) == 2
    _one_line_error(capsys, "unknown export format '.txt'")
    assert main(["export", str(tmp_path / "missing.zarr"), str(tmp_path / "m.ang")]) == 2
    _one_line_error(capsys, "no such store")
    out = tmp_path / "m.ang"
    out.write_text("old")
    assert main(["export", str(store), str(out)]) == 2
    _one_line_error(capsys, "pass --overwrite")
    assert out.read_text() == "old"
    assert main(["export", str(store), str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("# TEM_PIXperUM")


def test_export_refuses_a_scan_cube(tmp_path, capsys):
    from diffraflow.flow.store import create_cube

    cube = tmp_path / "scan.zarr"
    with create_cube(cube, scan_shape=(1, 2), det_shape=(3, 3), dtype="uint8",
                     attrs={"modality": "ebsd", "detector": {"shape": [3, 3]}}) as w:
        w.patterns.append(np.zeros((2, 3, 3), "uint8"))
        w.finalize()
    assert main(["export", str(cube), str(tmp_path / "m.ang")]) == 2
    _one_line_error(capsys, "not a crystal map")
    assert not (tmp_path / "m.ang").exists()
