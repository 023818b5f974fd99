"""Exporters: .ang, .ctf, orix .h5 round trips through orix's readers; PNG pictures; dispatch errors."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.crystal_map import read_crystal_map, write_crystal_map_store
from diffraflow.flow.exporters import EXPORTERS, export_crystal_map, exporter_for
from diffraflow.flow.exporters.ang import oim_symmetry_code, write_ang
from diffraflow.flow.exporters.ctf import laue_group_code, write_ctf
from diffraflow.flow.exporters.orix_h5 import write_orix_h5
from diffraflow.schemas.errors import OutputExistsError, UnknownFormatError

from tests.flow.crystal_map_fixtures import (
    REAL_ANG,
    REAL_CTF,
    make_xmap,
    max_misorientation,
    phase_names,
)
from tests.real_data import needs_real_data

TOL_DEG = 1e-4


def _load(path):
    import orix.io

    if str(path).endswith(".ang"):
        return orix.io.load(path, autogen_names=False)
    return orix.io.load(path)


@pytest.mark.parametrize("shape", [(5, 7), (1, 6), (9, 2)])
def test_ang_round_trip_two_phases_not_indexed(tmp_path, shape):
    xmap = make_xmap(shape, ("ni", "fe"), seed=sum(shape))
    back = _load(write_ang(xmap, tmp_path / "m.ang"))
    indexed = xmap.phase_id >= 0
    assert back.size == xmap.size
    np.testing.assert_array_equal(back.phase_id >= 0, indexed)
    np.testing.assert_array_equal(phase_names(back), phase_names(xmap))
    assert max_misorientation(xmap, back, indexed) < TOL_DEG
    np.testing.assert_allclose(back.prop["ci"][indexed], xmap.prop["confidence"][indexed], atol=1e-4)
    np.testing.assert_allclose(back.prop["iq"], xmap.prop["pattern_quality"], atol=1e-3)
    np.testing.assert_allclose(back.prop["fit"][indexed], xmap.prop["fit"][indexed], atol=1e-4)
    assert (back.prop["ci"][~indexed] == -1).all()
    if shape[0] > 1:
        assert back.shape == shape and (back.dy, back.dx) == (1.5, 0.5)


def test_ang_header_layout(tmp_path):
    text = write_ang(make_xmap((3, 4), ("ni", "fe")), tmp_path / "m.ang",
                     metadata={"detector": {"shape": [60, 60], "pc": [0.4, 0.3, 0.5]}}).read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    keys = [line[2:].split()[0] for line in header if len(line) > 2]
    for key in ("TEM_PIXperUM", "x-star", "Phase", "MaterialName", "Formula", "Symmetry", "LatticeConstants",
                "NumberFamilies", "GRID:", "XSTEP:", "YSTEP:", "NCOLS_ODD:", "NCOLS_EVEN:", "NROWS:"):
        assert key in keys
    assert "# y-star                0.700000" in header  # Bruker PCy 0.3 is 0.7 in EDAX/TSL
    assert header.index("# Phase 2") < header.index("# Phase 1")  # OIM lists phases last to first
    assert "# Symmetry              43" in header
    assert "# LatticeConstants      3.5236 3.5236 3.5236  90.000 90.000 90.000" in header
    rows = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert len(rows) == 12 and all(len(r) == 10 for r in rows)


@pytest.mark.parametrize("point_group, code", [("m-3m", "43"), ("432", "43"), ("m-3", "23"), ("6/mmm", "62"),
                                                ("4/mmm", "42"), ("mmm", "22"), ("-3m", "32"), ("-1", "1")])
def test_ang_symmetry_codes_read_back(tmp_path, point_group, code):
    from orix.crystal_map import CrystalMap, Phase, PhaseList
    from orix.quaternion import Rotation

    phase = Phase("p", point_group=point_group)
    assert oim_symmetry_code(phase) == code
    xmap = CrystalMap(Rotation.random(2), phase_list=PhaseList(phase))
    back = _load(write_ang(xmap, tmp_path / "m.ang"))
    assert back.phases[1].point_group.proper_subgroup.name == phase.point_group.proper_subgroup.name


@needs_real_data(REAL_ANG)
def test_real_ang_store_export_reload(tmp_path):
    """Real dual-phase EDAX map: orix load -> our store -> .ang -> orix load: identical."""
    original = _load(REAL_ANG)
    store = write_crystal_map_store(original, tmp_path / "sdss.zarr")
    out = export_crystal_map(read_crystal_map(store), tmp_path / "sdss.ang")[0]
    back = _load(out)
    assert back.shape == original.shape and (back.dx, back.dy) == (original.dx, original.dy)
    np.testing.assert_array_equal(phase_names(back), phase_names(original))
    assert max_misorientation(original, back, original.phase_id >= 0) < TOL_DEG
    np.testing.assert_allclose(back.prop["iq"], original.prop["iq"], atol=1e-4)
    np.testing.assert_allclose(back.prop["ci"], original.prop["dp"], atol=1e-4)
    for (_, a), (_, b) in zip(original.phases, back.phases, strict=True):
        assert a.structure.lattice.a == pytest.approx(b.structure.lattice.a, abs=1e-3)


@needs_real_data(REAL_CTF)
def test_ctf_round_trip_and_header_style(tmp_path):
    xmap = make_xmap((6, 4), ("ni", "fe"), seed=3)
    out = write_ctf(xmap, tmp_path / "m.ctf", metadata={"beam_energy_kv": 20, "detector": {"sample_tilt": 70}})
    back = _load(out)
    indexed = xmap.phase_id >= 0
    np.testing.assert_array_equal(phase_names(back), phase_names(xmap))
    assert max_misorientation(xmap, back, indexed) < TOL_DEG
    np.testing.assert_allclose(back.prop["MAD"][indexed], xmap.prop["fit"][indexed], atol=1e-4)
    np.testing.assert_array_equal(back.prop["bands"][indexed], xmap.prop["n_bands"][indexed])
    assert back.shape == (6, 4) and (back.dy, back.dx) == (1.5, 0.5)
    assert back.phases[2].space_group.number == 229
    # Same header keys, in the same order, as a real HKL Channel 5 file
    ours = [line.split("\t")[0] for line in out.read_text().splitlines()[:13]]
    with open(REAL_CTF) as fh:
        real = [fh.readline().split("\t")[0].rstrip("\n") for _ in range(13)]
    assert ours == real
    assert "KV\t20\tTiltAngle\t70" in out.read_text()


@needs_real_data(REAL_CTF)
def test_ctf_real_file_codes(tmp_path):
    from diffraflow.operators.crystallography import get_phase

    assert laue_group_code(get_phase("ni")) == 11 and laue_group_code(get_phase("cr3si")) == 11
    copper = _load(REAL_CTF)
    back = _load(write_ctf(copper, tmp_path / "cu.ctf"))
    assert max_misorientation(copper, back, copper.phase_id >= 0) < TOL_DEG
    assert back.phases[1].name == "Copper" and back.phases[1].space_group.number == 225


@needs_real_data(REAL_ANG)
def test_real_ang_to_ctf(tmp_path):
    original = _load(REAL_ANG)
    back = _load(write_ctf(original, tmp_path / "sdss.ctf"))
    np.testing.assert_array_equal(phase_names(back), phase_names(original))
    assert max_misorientation(original, back, original.phase_id >= 0) < TOL_DEG


def test_orix_h5_round_trip(tmp_path):
    xmap = make_xmap((4, 5), ("ni", "fe"))
    back = _load(write_orix_h5(xmap, tmp_path / "m.h5"))
    np.testing.assert_allclose(back.rotations.data, xmap.rotations.data, atol=1e-12)
    np.testing.assert_array_equal(back.phase_id, xmap.phase_id)
    np.testing.assert_array_equal(back.prop["confidence"], xmap.prop["confidence"])


def test_pngs(tmp_path):
    from diffraflow.flow.plots_crystal import ipf_rgb
    from PIL import Image

    xmap = make_xmap((6, 9), ("ni", "fe"))
    paths = export_crystal_map(xmap, tmp_path / "m.png", ipf_direction="x")
    assert [p.name for p in paths] == ["m_ipf.png", "m_confidence.png", "m_fit.png", "m_phase.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 200
    rgb = ipf_rgb(xmap, "z")
    assert (rgb.reshape(-1, 3)[xmap.phase_id < 0] == 0).all()
    assert (rgb.reshape(-1, 3)[xmap.phase_id >= 0].max(axis=1) > 0.5).all()


def _luminance(rgb):
    rgb = np.asarray(rgb, dtype=float)[..., :3]
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return linear @ [0.2126, 0.7152, 0.0722]


@pytest.mark.parametrize("name", ["confidence", "fit", "pattern_quality"])
def test_property_colours_never_look_not_indexed(name):
    """Poor confidence or fit is never drawn near black, the not-indexed colour (issue 7.17)."""
    from diffraflow.flow.plots_crystal import NOT_INDEXED_COLOR, property_colormap

    cmap = property_colormap(name)
    colours = cmap(np.linspace(0, 1, 512))
    assert _luminance(colours).min() >= 0.1  # viridis and plasma_r went down to 0.02
    assert np.linalg.norm(colours[:, :3] - NOT_INDEXED_COLOR, axis=1).min() > 0.6
    assert tuple(cmap(np.ma.masked_invalid([np.nan]))[0][:3]) == NOT_INDEXED_COLOR
    if name == "confidence":
        assert _luminance(cmap(1.0)) > _luminance(cmap(0.0))  # good points bright
    if name == "fit":
        assert _luminance(cmap(0.0)) > _luminance(cmap(1.0))


def test_pngs_use_the_threshold(tmp_path, monkeypatch):
    import diffraflow.flow.plots_crystal as plots_crystal
    from diffraflow.flow.crystal_map import apply_min_confidence

    xmap = make_xmap((6, 9), ("ni", "fe"))
    drawn = {}

    def record(function):
        def wrapper(xmap, *args, **kwargs):
            drawn[function.__name__] = kwargs.get("min_confidence", args[-1] if args else None)
            return function(xmap, *args, **kwargs)
        return wrapper

    for name in ("plot_ipf_map", "plot_property_map", "plot_phase_map"):
        monkeypatch.setattr(plots_crystal, name, record(getattr(plots_crystal, name)))
    export_crystal_map(xmap, tmp_path / "m.png", min_confidence=0.3)
    assert drawn == {"plot_ipf_map": 0.3, "plot_property_map": 0.3, "plot_phase_map": 0.3}
    shown = apply_min_confidence(xmap, 0.3)
    low = (xmap.prop["confidence"] < 0.3) & (xmap.phase_id >= 0)
    assert low.any() and (shown.phase_id[low] == -1).all() and (xmap.phase_id[low] >= 0).all()
    rgb = plots_crystal.ipf_rgb(shown).reshape(-1, 3)
    assert (rgb[low] == 0).all()


def test_apply_min_confidence_keeps_raw_values():
    from diffraflow.flow.crystal_map import apply_min_confidence

    xmap = make_xmap((4, 5), ("ni",))
    shown = apply_min_confidence(xmap, 0.5)
    np.testing.assert_array_equal(shown.rotations.data, xmap.rotations.data)
    np.testing.assert_array_equal(shown.prop["confidence"], xmap.prop["confidence"])
    expected = np.where(xmap.prop["confidence"] < 0.5, -1, xmap.phase_id)
    np.testing.assert_array_equal(shown.phase_id, expected)
    assert apply_min_confidence(xmap, None) is xmap and apply_min_confidence(xmap, 0) is xmap
    without = make_xmap((2, 2), ("ni",), not_indexed=0, with_props=False)
    assert apply_min_confidence(without, 0.5) is without  # nothing to compare: every solution stays


def test_dispatch_and_errors(tmp_path):
    assert sorted(EXPORTERS) == [".ang", ".ctf", ".h5", ".hdf5", ".png"]
    assert exporter_for("A.ANG") is write_ang
    with pytest.raises(UnknownFormatError, match="unknown export format '.txt'"):
        exporter_for(tmp_path / "m.txt")
    out = write_ang(make_xmap(), tmp_path / "m.ang")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        write_ang(make_xmap(), out)
    write_ang(make_xmap(), out, overwrite=True)
    assert not list(tmp_path.glob(".*partial*"))
