"""Bad input to ``diffraflow convert``: one-line errors, exit 2, and never a complete store.

Every case checks three things: exit status 2, a single stderr line that
names the file and a fix, and that nothing ``open_cube``/``diffraflow info``
would accept is left at (or beside) the output path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from flow.cli import main
from flow.store import open_cube
from schemas.errors import DiffraflowError
from tests.real_data import REAL_DATA as REAL

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="real data folder not present")


def run_convert(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()  # drop output of earlier calls
    code = main(["convert", *map(str, args), "--quiet"])
    err = capsys.readouterr().err
    return code, err


def assert_clean_failure(code: int, err: str, out: Path, mention: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diffraflow convert: error: ")
    assert mention in lines[0] and "(fix: " in lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    with pytest.raises(DiffraflowError):
        open_cube(out)
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]
    assert leftovers == []
    assert main(["info", str(out)]) == 2  # its own one-line error goes to stderr; drained by the next read


REAL_FILES = ["ni_small_kikuchipy_h5ebsd.h5", "ni_small_edax.up1", "ni_small_edax.up2", "ni_small_oxford.ebsp",
              "si_single_in.h5", "cu_hkl_2x2_patterns.npy", "sped_astar_3x2.blo", "merlin_4x2_6bit.mib",
              "ped_subset_2x2.hspy", "cu_hkl_2x2_p1.jpg"]


@needs_real
@pytest.mark.parametrize("name", REAL_FILES)
@pytest.mark.parametrize("fraction", [0.5, 0.97])
def test_truncated_real_files(tmp_path, capsys, name, fraction):
    data = (REAL / name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: int(len(data) * fraction)])
    if name.endswith(".mib"):
        shutil.copy(REAL / "merlin_4x2_6bit.hdr", tmp_path / "merlin_4x2_6bit.hdr")
    out = tmp_path / "out.zarr"
    code, err = run_convert(capsys, cut, out)
    assert_clean_failure(code, err, out, str(cut))


@needs_real
@pytest.mark.parametrize("name", REAL_FILES)
def test_garbled_header(tmp_path, capsys, name):
    data = bytearray((REAL / name).read_bytes())
    for i in range(0, 8):  # flip the signature / version bytes
        data[i] ^= 0xFF
    bad = tmp_path / name
    bad.write_bytes(bytes(data))
    out = tmp_path / "out.zarr"
    code, err = run_convert(capsys, bad, out)
    assert_clean_failure(code, err, out, str(bad))


@needs_real
def test_mib_without_hdr_with_cut_frame(tmp_path, capsys):
    data = (REAL / "merlin_4x2_6bit.mib").read_bytes()
    cut = tmp_path / "m.mib"
    cut.write_bytes(data[:-100])
    code, err = run_convert(capsys, cut, tmp_path / "o.zarr")
    assert_clean_failure(code, err, tmp_path / "o.zarr", "cut frame")


def test_unknown_format(tmp_path, capsys):
    src = tmp_path / "notes.xyz"
    src.write_text("hello world, not patterns")
    code, err = run_convert(capsys, src, tmp_path / "o.zarr")
    assert_clean_failure(code, err, tmp_path / "o.zarr", "unknown format")
    assert ".mib" in err  # the fix lists what can be converted


def test_missing_and_empty_files(tmp_path, capsys):
    code, err = run_convert(capsys, tmp_path / "nope.h5", tmp_path / "o.zarr")
    assert_clean_failure(code, err, tmp_path / "o.zarr", "no such file")
    (tmp_path / "empty.npy").write_bytes(b"")
    code, err = run_convert(capsys, tmp_path / "empty.npy", tmp_path / "o.zarr")
    assert_clean_failure(code, err, tmp_path / "o.zarr", "empty")


def test_hdf5_that_is_neither_h5ebsd_nor_hspy(tmp_path, capsys):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = np.zeros((2, 3, 3))
    code, err = run_convert(capsys, tmp_path / "x.h5", tmp_path / "o.zarr")
    assert_clean_failure(code, err, tmp_path / "o.zarr", "neither h5ebsd")


def test_wrong_scan_shape(tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.zeros((2, 3, 4, 4), "uint8"))
    code, err = run_convert(capsys, tmp_path / "p.npy", tmp_path / "o.zarr", "--scan-shape", 4, 2)
    assert_clean_failure(code, err, tmp_path / "o.zarr", "--scan-shape 4 2 needs 8 frames but the input holds 6")
    assert "--scan-shape 2 3" in err


def test_image_stack_needs_scan_shape(tmp_path, capsys):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((5, 6), i, "uint8")).save(tmp_path / f"f{i}.png")
    code, err = run_convert(capsys, tmp_path / "f*.png", tmp_path / "o.zarr")
    assert_clean_failure(code, err, tmp_path / "o.zarr", "pass --scan-shape")


def test_image_stack_with_odd_image(tmp_path, capsys):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((5, 6 if i != 2 else 7), i, "uint8")).save(tmp_path / f"f{i}.png")
    code, err = run_convert(capsys, tmp_path / "f*.png", tmp_path / "o.zarr", "--scan-shape", 1, 3)
    assert_clean_failure(code, err, tmp_path / "o.zarr", "f2.png")


def test_nan_frames(tmp_path, capsys):
    data = np.ones((2, 2, 3, 3), "float32")
    data[1, 0, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", data)
    code, err = run_convert(capsys, tmp_path / "nan.npy", tmp_path / "o.zarr")
    assert_clean_failure(code, err, tmp_path / "o.zarr", "frame 2 contains NaN")


def test_existing_output_untouched(tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.zeros((1, 2, 3, 3), "uint8"))
    out = tmp_path / "o.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = run_convert(capsys, tmp_path / "p.npy", out)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"
    # --overwrite replaces only a store diffraflow made: a folder of user files is never deleted
    assert main(["convert", str(tmp_path / "p.npy"), str(out), "--overwrite", "--quiet"]) == 2
    assert "not made by diffraflow" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    cube = tmp_path / "c.zarr"
    assert main(["convert", str(tmp_path / "p.npy"), str(cube), "--quiet"]) == 0
    assert main(["convert", str(tmp_path / "p.npy"), str(cube), "--overwrite", "--quiet"]) == 0
    assert open_cube(cube)["patterns"].shape == (1, 2, 3, 3)


def test_read_only_destination(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "p.npy", np.zeros((1, 2, 3, 3), "uint8"))
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access  # root ignores permission bits: emulate through os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    code, err = run_convert(capsys, tmp_path / "p.npy", ro / "o.zarr")
    assert_clean_failure(code, err, ro / "o.zarr", "not writable")


def test_fewer_frames_than_header(tmp_path, capsys):
    import h5py
    import kikuchipy as kp

    s = kp.data.nickel_ebsd_small()
    s.save(tmp_path / "k.h5")
    with h5py.File(tmp_path / "k.h5", "r+") as f:  # header says 3 x 4, data holds 9 frames
        del f["Scan 1/EBSD/Header/n_columns"]
        f["Scan 1/EBSD/Header/n_columns"] = [4]
    code, err = run_convert(capsys, tmp_path / "k.h5", tmp_path / "o.zarr")
    assert_clean_failure(code, err, tmp_path / "o.zarr", "holds 9 frames but the header says 3 x 4 = 12")


def test_read_error_midway_leaves_no_store(tmp_path, monkeypatch):
    """A reader failing after some frames (e.g. a bad HDF5 chunk) aborts cleanly."""
    from flow.convert import convert
    from flow.readers.numpy_file import NpyReader

    np.save(tmp_path / "p.npy", np.zeros((4, 4, 3, 3), "uint8"))

    def broken(self, batch):
        yield np.zeros((4, 3, 3), "uint8")
        raise OSError("Can't read data (inflate() failed)")

    monkeypatch.setattr(NpyReader, "_iter_frames", broken)
    with pytest.raises(DiffraflowError, match="reading failed after 4 of 16 frames"):
        convert(tmp_path / "p.npy", tmp_path / "o.zarr", batch_bytes=36)
    assert not (tmp_path / "o.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(DiffraflowError):
        main(["--debug", "convert", str(tmp_path / "missing.npy"), str(tmp_path / "o.zarr")])


def test_pc_convention_without_pc(tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.zeros((1, 2, 3, 3), "uint8"))
    code, err = run_convert(capsys, tmp_path / "p.npy", tmp_path / "o.zarr", "--pc-convention", "edax")
    assert_clean_failure(code, err, tmp_path / "o.zarr", "--pc-convention")
