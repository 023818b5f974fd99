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
from diffraflow.flow.cli import main
from diffraflow.flow.store import open_cube
from diffraflow.schemas.errors import DiffraflowError

from tests.real_data import REAL_DATA as REAL
from tests.real_data import needs_real_data

needs_real = needs_real_data()


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
    from diffraflow.flow.convert import convert
    from diffraflow.flow.readers.numpy_file import NpyReader

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


# -- raw files sized by the user or a side file must hold exactly that many patterns (issue 7) --------------

KP_NORDIF = Path(__import__("kikuchipy").__file__).parent / "data" / "nordif"
FRAME = 60 * 60  # bytes of one pattern in kikuchipy's NORDIF sample (3 x 3 scan)


def nordif_copy(folder: Path, n_bytes: int, setting: bool = True) -> Path:
    """kikuchipy's Pattern.dat cut or padded (with repeated patterns) to ``n_bytes``."""
    data = (KP_NORDIF / "Pattern.dat").read_bytes()
    data = (data * (n_bytes // len(data) + 1))[:n_bytes]
    dat = folder / "Pattern.dat"
    dat.write_bytes(data)
    if setting:
        shutil.copy(KP_NORDIF / "Setting.txt", folder / "Setting.txt")
    return dat


def test_nordif_longer_than_its_setting_file(tmp_path, capsys):
    dat = nordif_copy(tmp_path, 12 * FRAME)  # Setting.txt says 3 x 3: three patterns too many
    out = tmp_path / "o.zarr"
    code, err = run_convert(capsys, dat, out)
    assert_clean_failure(code, err, out, str(dat))
    assert "file holds 12 patterns of 60 x 60 px (43200 bytes) but the scan 3 x 3 from Setting.txt needs 9 " \
           "(32400 bytes): 10800 bytes would be left out" in err
    assert "--scan-shape 4 3" in err  # the shape keeping Setting.txt's row length comes first
    assert main(["convert", str(dat), str(out), "--scan-shape", "4", "3", "--quiet"]) == 0
    got = open_cube(out)["patterns"].values
    np.testing.assert_array_equal(got.reshape(-1), np.frombuffer(dat.read_bytes(), "uint8"))


def test_raw_file_larger_than_scan_shape_times_det_shape(tmp_path, capsys):
    """The issue's case: --scan-shape x --det-shape covers a fraction of the file, and exit was 0."""
    dat = nordif_copy(tmp_path, 9 * FRAME, setting=False)
    out = tmp_path / "o.zarr"
    code, err = run_convert(capsys, dat, out, "--scan-shape", 1, 2, "--det-shape", 60, 60)
    assert_clean_failure(code, err, out, str(dat))
    assert "holds 9 patterns of 60 x 60 px" in err and "from --scan-shape and --det-shape needs 2" in err
    assert "25200 bytes would be left out" in err and "--scan-shape 3 3 or 1 9" in err


def test_raw_file_shorter_than_its_sizes(tmp_path, capsys):
    dat = nordif_copy(tmp_path, 8 * FRAME)
    out = tmp_path / "o.zarr"
    code, err = run_convert(capsys, dat, out)
    assert_clean_failure(code, err, out, str(dat))
    assert "holds 8 patterns" in err and "needs 9" in err and "the file is truncated" in err
    assert "--scan-shape 2 4 or 1 8" in err


def test_raw_file_not_a_whole_number_of_patterns(tmp_path, capsys):
    dat = nordif_copy(tmp_path, 9 * FRAME + 100)
    out = tmp_path / "o.zarr"
    code, err = run_convert(capsys, dat, out)
    assert_clean_failure(code, err, out, str(dat))
    assert "32500 data bytes are not a whole number of 60 x 60 px patterns" in err
    assert "--det-shape H W, or correct Setting.txt" in err


@pytest.mark.parametrize("option", [("--det-shape", 0, 60), ("--scan-shape", -3, 3)])
def test_raw_sizes_must_be_positive(tmp_path, capsys, option):
    dat = nordif_copy(tmp_path, 9 * FRAME, setting=False)
    extra = () if option[0] == "--scan-shape" else ("--scan-shape", 3, 3)
    code, err = run_convert(capsys, dat, tmp_path / "o.zarr", *option, *extra)
    assert_clean_failure(code, err, tmp_path / "o.zarr", f"{option[0]} {option[1]} {option[2]} must be two "
                         "positive integers")


def test_nordif_setting_file_with_empty_scan(tmp_path, capsys):
    dat = nordif_copy(tmp_path, 9 * FRAME)
    setting = tmp_path / "Setting.txt"
    setting.write_text(setting.read_text(encoding="latin-1").replace("3x3", "0x3"), encoding="latin-1")
    code, err = run_convert(capsys, dat, tmp_path / "o.zarr")
    assert_clean_failure(code, err, tmp_path / "o.zarr", "Setting.txt gives Number of samples 0x3")


def test_det_shape_that_disagrees_with_the_file(tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.zeros((2, 3, 4, 4), "uint8"))
    code, err = run_convert(capsys, tmp_path / "p.npy", tmp_path / "o.zarr", "--det-shape", 5, 5)
    assert_clean_failure(code, err, tmp_path / "o.zarr", "--det-shape 5 5 but the file's patterns are 4 x 4 px")
    assert "--det-shape 4 4" in err


@needs_real
def test_mib_with_more_frames_than_its_hdr(tmp_path, capsys):
    mib = tmp_path / "m.mib"
    shutil.copy(REAL / "merlin_4x2_6bit.mib", mib)
    hdr = (REAL / "merlin_4x2_6bit.hdr").read_text(encoding="latin-1")
    (tmp_path / "m.hdr").write_text(hdr.replace("Frames in Acquisition (Number):\t8",
                                                "Frames in Acquisition (Number):\t6"), encoding="latin-1")
    out = tmp_path / "o.zarr"
    code, err = run_convert(capsys, mib, out)
    assert_clean_failure(code, err, out, "the file holds 8 frames but m.hdr says 6 (Frames in Acquisition): 2 "
                         "frames would be left out")
    assert "--scan-shape ROWS COLS with ROWS x COLS = 8" in err
    assert main(["convert", str(mib), str(out), "--scan-shape", "2", "4", "--quiet"]) == 0
    assert open_cube(out)["patterns"].shape[:2] == (2, 4)


# -- metadata checked where it is parsed (issue 7, item 11) ---------------------------------------------------

@pytest.mark.parametrize(("pc", "words"), [((5.0, 0.2, 0.5), "projection-centre x = 5.0 is outside [-1, 2]"),
                                           ((0.4, 0.2, 0.0), "projection-centre z = 0.0 is outside (0, 3]")])
def test_pc_out_of_bounds(tmp_path, capsys, pc, words):
    np.save(tmp_path / "p.npy", np.zeros((1, 2, 3, 3), "uint8"))
    code, err = run_convert(capsys, tmp_path / "p.npy", tmp_path / "o.zarr", "--pc", *pc)
    assert_clean_failure(code, err, tmp_path / "o.zarr", f"detector.pc: {words} in the bruker convention")


def test_emsoft_pc_in_pixels_is_accepted(tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.zeros((1, 2, 3, 3), "uint8"))
    code, _ = run_convert(capsys, tmp_path / "p.npy", tmp_path / "o.zarr", "--pc", 1.5, -2, 15000,
                          "--pc-convention", "emsoft")
    assert code == 0
    assert open_cube(tmp_path / "o.zarr").attrs["scan"]["detector"]["pc"] == [1.5, -2.0, 15000.0]


def test_step_unit_furlong_through_the_python_api(tmp_path):
    from diffraflow.flow.convert import convert
    from diffraflow.schemas.errors import SchemaError

    np.save(tmp_path / "p.npy", np.zeros((1, 2, 3, 3), "uint8"))
    with pytest.raises(SchemaError, match=r"step_size.unit: step unit must be a length unit \(nm, um or mm\), "
                                          r"got 'furlong' \(fix: give the step unit as nm, um or mm\)"):
        convert(tmp_path / "p.npy", tmp_path / "o.zarr", step=(1.0, 1.0), step_unit="furlong")
    assert not (tmp_path / "o.zarr").exists()
    report = convert(tmp_path / "p.npy", tmp_path / "o.zarr", step=(1.0, 2.0), step_unit="µm")
    assert open_cube(report.output).attrs["scan"]["step_size"] == {"y": 1.0, "x": 2.0, "unit": "um"}
