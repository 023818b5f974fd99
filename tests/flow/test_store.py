"""Cube store: round trips (Hypothesis), atomic creation, completion marker, errors."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from diffraflow.flow.inspect_store import describe_store, validate_store
from diffraflow.flow.store import create_cube, open_cube, read_scan_attrs
from diffraflow.schemas.errors import (
    DestinationNotWritableError,
    IncompleteStoreError,
    InputFileError,
    OutputExistsError,
    SchemaError,
    StoreNotFoundError,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def attrs_for(det_shape, modality="ebsd"):
    return {"modality": modality, "detector": {"shape": list(det_shape)}}


def write_cube(path, data, _append_step=3, **kwargs):
    sy, sx, dy, dx = data.shape
    with create_cube(path, scan_shape=(sy, sx), det_shape=(dy, dx), dtype=data.dtype,
                     attrs=attrs_for((dy, dx)), **kwargs) as writer:
        frames = data.reshape(sy * sx, dy, dx)
        for start in range(0, len(frames), _append_step):
            writer.patterns.append(frames[start:start + _append_step])
        return writer.finalize()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    dtype=st.sampled_from(["uint8", "uint16", "int32", "float32", "float64"]),
    scan=st.tuples(st.integers(1, 7), st.integers(1, 9)),
    det=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    chunk_frames=st.integers(1, 70),
    shard_factor=st.integers(1, 5),
    append_step=st.integers(1, 20),
)
def test_round_trip_any_shape_dtype_chunking(tmp_path_factory, data, dtype, scan, det, chunk_frames,
                                             shard_factor, append_step):
    elements = hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False)
    cube = data.draw(hnp.arrays(dtype, (*scan, *det), elements=elements))
    path = tmp_path_factory.mktemp("rt") / "cube.zarr"
    frame_bytes = det[0] * det[1] * np.dtype(dtype).itemsize
    write_cube(path, cube, chunk_frames=chunk_frames, shard_bytes=frame_bytes * chunk_frames * shard_factor,
               _append_step=append_step)
    ds = open_cube(path)
    assert ds["patterns"].dims == ("scan_y", "scan_x", "det_y", "det_x")
    assert ds["patterns"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(ds["patterns"].values, cube)
    # detector axes are never chunked, whatever the requested chunking
    assert ds["patterns"].data.chunksize[2:] == det
    validate_store(path)


def test_metadata_round_trip_and_info(tmp_path):
    path = tmp_path / "m.zarr"
    attrs = {"modality": "ebsd", "detector": {"shape": [4, 5], "pc": [0.4, 0.2, 0.6]}, "beam_energy_kv": 20,
             "phases": [{"id": 0, "name": "ni", "space_group": 225}]}
    with create_cube(path, scan_shape=(2, 2), det_shape=(4, 5), dtype="uint8", attrs=attrs) as w:
        w.patterns.append(np.zeros((4, 4, 5), "uint8"))
        w.write_variable("true_phase_id", np.zeros((2, 2), "int16"), ("scan_y", "scan_x"), ground_truth=True)
        w.finalize()
    scan = read_scan_attrs(path)
    assert scan.scan_shape == (2, 2) and scan.detector.pc == (0.4, 0.2, 0.6)
    assert scan.ground_truth == ["true_phase_id"]
    text = describe_store(path)
    for words in ("(2, 2, 4, 5) uint8", "0:ni (SG 225)", "20.0 kV", "true_phase_id", "bruker"):
        assert words in text
    assert open_cube(path)["true_phase_id"].dims == ("scan_y", "scan_x")


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "f.zarr"
    with pytest.raises(RuntimeError), create_cube(path, scan_shape=(2, 2), det_shape=(2, 2), dtype="uint8",
                                                   attrs=attrs_for((2, 2))) as w:
        w.patterns.append(np.zeros((2, 2, 2), "uint8"))
        raise RuntimeError("reader died")
    assert os.listdir(tmp_path) == []


def test_too_few_frames_is_truncation(tmp_path):
    path = tmp_path / "t.zarr"
    with pytest.raises(InputFileError, match="only 3 of 4 frames"), \
            create_cube(path, scan_shape=(2, 2), det_shape=(2, 2), dtype="uint8", attrs=attrs_for((2, 2))) as w:
        w.patterns.append(np.zeros((3, 2, 2), "uint8"))
        w.finalize()
    assert not path.exists() and os.listdir(tmp_path) == []


def test_too_many_frames_and_nan_frames(tmp_path):
    with create_cube(tmp_path / "a.zarr", scan_shape=(1, 2), det_shape=(2, 2), dtype="uint8",
                     attrs=attrs_for((2, 2))) as w, pytest.raises(InputFileError, match="--scan-shape"):
        w.patterns.append(np.zeros((3, 2, 2), "uint8"))
    frames = np.zeros((2, 2, 2), "float32")
    frames[1, 0, 0] = np.nan
    with create_cube(tmp_path / "b.zarr", scan_shape=(1, 2), det_shape=(2, 2), dtype="float32",
                     attrs=attrs_for((2, 2))) as w, pytest.raises(InputFileError, match="frame 1 contains NaN"):
        w.patterns.append(frames)


def test_incomplete_store_is_refused(tmp_path):
    path = tmp_path / "i.zarr"
    w = create_cube(path, scan_shape=(1, 1), det_shape=(2, 2), dtype="uint8", attrs=attrs_for((2, 2)))
    w.patterns.append(np.zeros((1, 2, 2), "uint8"))
    # simulate a writer killed before finalize: the partial directory stays under its hidden name
    assert not path.exists()
    with pytest.raises(IncompleteStoreError):
        open_cube(w.temp)
    with pytest.raises(IncompleteStoreError):
        describe_store(w.temp)
    w.abort()


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    path = tmp_path / "e.zarr"
    write_cube(path, np.ones((1, 1, 2, 2), "uint8"))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        create_cube(path, scan_shape=(1, 1), det_shape=(2, 2), dtype="uint8", attrs=attrs_for((2, 2)))
    write_cube(path, np.full((1, 1, 2, 2), 7, "uint8"), overwrite=True)
    assert int(open_cube(path)["patterns"].values.max()) == 7
    assert sorted(os.listdir(tmp_path)) == ["e.zarr"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_destination(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(DestinationNotWritableError):
        create_cube(ro / "x.zarr", scan_shape=(1, 1), det_shape=(2, 2), dtype="uint8", attrs=attrs_for((2, 2)))


def test_missing_parent_directory(tmp_path):
    with pytest.raises(DestinationNotWritableError, match="does not exist"):
        create_cube(tmp_path / "no" / "x.zarr", scan_shape=(1, 1), det_shape=(2, 2), dtype="uint8",
                    attrs=attrs_for((2, 2)))


def test_detector_shape_must_match_metadata(tmp_path):
    with pytest.raises(SchemaError, match="detector.shape"):
        create_cube(tmp_path / "x.zarr", scan_shape=(1, 1), det_shape=(2, 3), dtype="uint8",
                    attrs=attrs_for((2, 2)))


def test_not_a_store(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreNotFoundError):
        open_cube(tmp_path / "plain")
    with pytest.raises(StoreNotFoundError, match="no such store"):
        open_cube(tmp_path / "nothing.zarr")


def test_unwritable_destination_reported_even_as_root(tmp_path, monkeypatch):
    # Root ignores permission bits, so emulate a read-only directory through os.access.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    with pytest.raises(DestinationNotWritableError, match="not writable"):
        create_cube(tmp_path / "x.zarr", scan_shape=(1, 1), det_shape=(2, 2), dtype="uint8",
                    attrs=attrs_for((2, 2)))


def test_write_regions_out_of_order(tmp_path):
    rng = np.random.default_rng(1)
    cube = rng.integers(0, 255, (7, 5, 3, 3), dtype="uint8")
    path = tmp_path / "r.zarr"
    with create_cube(path, scan_shape=(7, 5), det_shape=(3, 3), dtype="uint8", attrs=attrs_for((3, 3)),
                     chunk_frames=10, shard_bytes=9 * 10 * 2) as w:
        ry = w.layout.shards[0]
        starts = list(range(0, 7, ry))[::-1]  # last shard first
        for y0 in starts:
            w.patterns.write_region(y0, 0, cube[y0:y0 + ry])
        with pytest.raises(SchemaError, match="whole shards"):
            w.patterns.write_region(1, 0, cube[1:2])
        w.finalize()
    np.testing.assert_array_equal(open_cube(path)["patterns"].values, cube)
