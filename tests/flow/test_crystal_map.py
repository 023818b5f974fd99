"""Crystal-map result stores: orix CrystalMap <-> Zarr v3, schema, atomic writes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from diffraflow.flow.crystal_map import (
    crystal_map_grid,
    read_crystal_map,
    read_crystal_map_record,
    write_crystal_map_store,
)
from diffraflow.flow.inspect_store import validate_store
from diffraflow.schemas.errors import DiffraflowError, OutputExistsError, SchemaError

from tests.flow.crystal_map_fixtures import REAL_ANG, make_xmap, max_misorientation, phase_names
from tests.real_data import needs_real_data


def test_round_trip_two_phase_non_square_with_not_indexed(tmp_path):
    xmap = make_xmap((5, 7), ("ni", "fe"), orix_ids=(1, 2))
    out = write_crystal_map_store(xmap, tmp_path / "cm.zarr")
    back = read_crystal_map(out)
    assert back.shape == (5, 7)
    assert (back.dy, back.dx) == (1.5, 0.5)
    np.testing.assert_allclose(back.rotations.data, xmap.rotations.data, atol=1e-15)
    np.testing.assert_array_equal(phase_names(back), phase_names(xmap))
    assert set(np.unique(back.phase_id)) == {-1, 0, 1}  # renumbered 0..n-1
    np.testing.assert_array_equal(back.phase_id == -1, xmap.phase_id == -1)
    for name in ("fit", "confidence", "pattern_quality", "n_bands"):
        np.testing.assert_array_equal(back.prop[name], xmap.prop[name])
    assert back.phases[0].point_group.name == "m-3m" and back.phases[1].space_group.number == 229


def test_store_layout_marker_and_schema(tmp_path):
    out = write_crystal_map_store(make_xmap(), tmp_path / "cm.zarr", extra_attrs={"note": "hand made"})
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["diffraflow"] == {"format_version": 1, "kind": "result", "complete": True}
    record = group.attrs["results"]["crystal_map"]
    assert record["product"] == "crystal_map" and record["made_by"] == "import"
    assert record["operator"] == "crystal_map_import" and record["prefix"] == "crystal_map"
    assert [p["id"] for p in record["phases"]] == [0, 1]
    assert record["phases"][0]["lattice"][0] == pytest.approx(0.35236)  # nm
    assert record["step_size"] == {"y": 1.5, "x": 0.5, "unit": "um"}
    assert record["note"] == "hand made"
    assert tuple(group["crystal_map/rotation"].metadata.dimension_names) == ("scan_y", "scan_x", "quat")
    assert tuple(group["crystal_map/phase_id"].metadata.dimension_names) == ("scan_y", "scan_x")
    assert validate_store(out)["products"] == ["crystal_map"]
    assert not list(tmp_path.glob(".*partial*"))


def test_scan_attrs_kept_and_their_step_wins(tmp_path):
    scan = {"modality": "ebsd", "detector": {"shape": [60, 60], "pc": [0.4, 0.2, 0.5]},
            "step_size": {"y": 2.0, "x": 3.0}, "beam_energy_kv": 20}
    out = write_crystal_map_store(make_xmap(), tmp_path / "cm.zarr", scan_attrs=scan)
    _, _, record = read_crystal_map_record(out)
    assert record["scan"]["detector"]["pc"] == [0.4, 0.2, 0.5]
    back = read_crystal_map(out)
    assert (back.dy, back.dx) == (2.0, 3.0)


@needs_real_data(REAL_ANG)
def test_real_ang_through_store(tmp_path):
    import orix.io

    xmap = orix.io.load(REAL_ANG, autogen_names=False)
    back = read_crystal_map(write_crystal_map_store(xmap, tmp_path / "sdss.zarr"))
    assert back.shape == xmap.shape == (100, 117)
    np.testing.assert_array_equal(phase_names(back), phase_names(xmap))
    assert max_misorientation(xmap, back, xmap.phase_id >= 0) < 1e-6
    # .ang scores land in the schema's variables: IQ -> pattern_quality, CI (dot product) -> confidence
    np.testing.assert_allclose(back.prop["pattern_quality"], xmap.prop["iq"], rtol=1e-6)
    np.testing.assert_allclose(back.prop["confidence"], xmap.prop["dp"], rtol=1e-6)
    assert np.isnan(back.prop["fit"]).all()
    # Angstrom lattices from the .ang header become nm
    assert back.phases[0].structure.lattice.a == pytest.approx(0.3595)


def test_extra_properties_sliced_and_1d_maps(tmp_path):
    from orix.crystal_map import CrystalMap
    from orix.quaternion import Rotation

    xmap = make_xmap((4, 6), ("ni",), not_indexed=0.0)
    xmap.prop["detector_signal"] = np.arange(24, dtype=np.float32)
    keep = xmap.prop["detector_signal"] % 3 != 1  # a third of the points leave the data
    back = read_crystal_map(write_crystal_map_store(xmap[keep], tmp_path / "s.zarr"))
    assert back.shape == (4, 6)
    assert (back.phase_id == -1).sum() == 8
    np.testing.assert_array_equal(back.prop["detector_signal"][back.phase_id >= 0], np.arange(24)[keep])
    line = CrystalMap(Rotation.identity(5))
    stored = write_crystal_map_store(line, tmp_path / "l.zarr")
    assert zarr.open_group(str(stored), mode="r")["crystal_map/phase_id"].shape == (1, 5)
    assert read_crystal_map(stored).size == 5
    assert crystal_map_grid(line)["step"] == (1.0, 1.0)


def test_a_write_that_fails_leaves_a_store_never_read_as_complete(tmp_path, monkeypatch):
    from diffraflow.operators.indexing.crystal_map_import import CrystalMapImport
    from diffraflow.schemas.errors import ChunkFailedError, IncompleteStoreError

    original = CrystalMapImport.process

    def fail_late(self, frames, ctx):
        if ctx.flat_start > 0:
            raise OSError("disk went away")
        return original(self, frames, ctx)

    monkeypatch.setattr(CrystalMapImport, "process", fail_late)
    monkeypatch.setattr("diffraflow.flow.crystal_map._CHUNK_POINTS", 7)
    out = tmp_path / "w.zarr"
    with pytest.raises(ChunkFailedError):
        write_crystal_map_store(make_xmap((5, 7)), out)
    with pytest.raises(IncompleteStoreError):
        read_crystal_map(out)
    monkeypatch.setattr(CrystalMapImport, "process", original)
    write_crystal_map_store(make_xmap((5, 7)), out, overwrite=True)
    assert read_crystal_map(out).shape == (5, 7)


def test_overwrite_rules(tmp_path):
    out = write_crystal_map_store(make_xmap(seed=1), tmp_path / "cm.zarr")
    with pytest.raises(OutputExistsError, match="output already exists.*--overwrite"):
        write_crystal_map_store(make_xmap(seed=2), out)
    write_crystal_map_store(make_xmap(seed=2), out, overwrite=True)
    np.testing.assert_allclose(read_crystal_map(out).rotations.data, make_xmap(seed=2).rotations.data, atol=1e-15)


def test_errors_are_one_line(tmp_path):
    from diffraflow.flow.store import create_cube

    cube = tmp_path / "scan.zarr"
    with create_cube(cube, scan_shape=(1, 2), det_shape=(3, 3), dtype="uint8",
                     attrs={"modality": "ebsd", "detector": {"shape": [3, 3]}}) as w:
        w.patterns.append(np.zeros((2, 3, 3), "uint8"))
        w.finalize()
    with pytest.raises(SchemaError, match="is a scan_cube store, not a crystal map"):
        read_crystal_map(cube)
    with pytest.raises(SchemaError, match="reserved keys"):
        write_crystal_map_store(make_xmap(), tmp_path / "x.zarr", extra_attrs={"phases": []})
    empty = zarr.open_group(str(tmp_path / "r.zarr"), mode="w", zarr_format=3)
    empty.attrs.update({"diffraflow": {"format_version": 1, "kind": "result", "complete": True}, "results": {}})
    with pytest.raises(SchemaError, match="holds no crystal map") as info:
        read_crystal_map(tmp_path / "r.zarr")
    assert "\n" not in str(info.value) and isinstance(info.value, DiffraflowError)
