"""Readers on synthesised files of every format, round-tripped against the reference loaders.

Files with no real sample in ../shared/data/real (NORDIF .dat, Bruker, EDAX
and Oxford h5ebsd, multi-page TIFF, PNG stacks...) are written here with
kikuchipy/HyperSpy writers, kikuchipy's own dummy-file makers, or a minimal
writer, then converted and compared exactly.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from diffraflow.flow.convert import convert
from diffraflow.flow.readers import detect_format, open_reader
from diffraflow.flow.store import open_cube
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

KP_DATA = Path(__import__("kikuchipy").__file__).parent / "data"


def kp_load(path, **kwargs):
    import kikuchipy as kp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kp.load(path, **kwargs)


def stored(out: Path):
    ds = open_cube(out)
    return ds, ds["patterns"].values, ds.attrs["scan"]


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.asarray(expected).dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, np.asarray(expected).reshape(got.shape))


# -- NORDIF ---------------------------------------------------------------------------------------------

def test_nordif_with_setting_file(tmp_path):
    for name in ("Pattern.dat", "Setting.txt"):
        shutil.copy(KP_DATA / "nordif" / name, tmp_path / name)
    s = kp_load(tmp_path / "Pattern.dat")
    assert detect_format([tmp_path / "Pattern.dat"]).format_name == "nordif"
    report = convert(tmp_path / "Pattern.dat", tmp_path / "o.zarr")
    ds, got, scan = stored(report.output)
    assert got.shape == (3, 3, 60, 60)
    assert_same(got, s.data)
    assert scan["beam_energy_kv"] == 20 and scan["detector"]["sample_tilt"] == 70
    assert scan["exposure_s"] == pytest.approx(3.5e-3)
    assert scan["step_size"] == {"y": 1.5, "x": 1.5, "unit": "um"}
    assert "nordif_settings" in scan["original_metadata"]


def test_nordif_written_by_kikuchipy_without_settings(tmp_path):
    import kikuchipy as kp
    from PIL import Image

    s = kp.data.nickel_ebsd_small()
    s.save(tmp_path / "scan.dat")
    Image.fromarray(s.static_background).save(tmp_path / "Background acquisition pattern.bmp")
    with pytest.raises(Exception, match="--scan-shape"):
        convert(tmp_path / "scan.dat", tmp_path / "o.zarr")
    report = convert(tmp_path / "scan.dat", tmp_path / "o.zarr", scan_shape=(3, 3))
    ds, got, scan = stored(report.output)
    assert_same(got, s.data)
    np.testing.assert_array_equal(ds["static_background"].values, s.static_background)
    assert any("inferred" in n for n in report.notes)


# -- h5ebsd flavours -------------------------------------------------------------------------------------

def test_bruker_h5ebsd(tmp_path):
    from kikuchipy.data._dummy_files.bruker_h5ebsd import create_dummy_bruker_h5ebsd_file

    path = tmp_path / "bruker.h5"
    create_dummy_bruker_h5ebsd_file(path)
    s = kp_load(path)
    report = convert(path, tmp_path / "o.zarr")
    ds, got, scan = stored(report.output)
    assert_same(got, s.data)
    assert scan["provenance"]["source_format"] == "h5ebsd:bruker"
    assert scan["detector"]["pc_convention"] == "bruker"
    np.testing.assert_allclose(scan["detector"]["pc"], s.detector.pc.reshape(-1, 3)[0])
    assert scan["detector"]["sample_tilt"] == 70  # read from SampleTilt (kikuchipy misses it)
    assert scan["beam_energy_kv"] == 20
    assert scan["phases"][0]["space_group"] == 225 and scan["phases"][0]["lattice"][0] == pytest.approx(0.356)
    assert scan["phases"][0]["atoms"][0]["element"] == "Ni"
    assert {"rotation", "phase_id", "mad"} <= set(scan["original_metadata"]["crystal_map_variables"])
    np.testing.assert_array_equal(ds["static_background"].values, s.static_background)


def test_bruker_h5ebsd_region_of_interest(tmp_path):
    from kikuchipy.data._dummy_files.bruker_h5ebsd import create_dummy_bruker_h5ebsd_roi_file

    path = tmp_path / "roi.h5"
    create_dummy_bruker_h5ebsd_roi_file(path)
    s = kp_load(path)
    _, got, _ = stored(convert(path, tmp_path / "o.zarr").output)
    assert_same(got, s.data)


@pytest.mark.parametrize("version", ["6.0", "7.0"])
@pytest.mark.parametrize("processed", [False, True])
def test_oxford_h5oina(tmp_path, version, processed):
    from kikuchipy.data._dummy_files.oxford_h5ebsd import create_dummy_oxford_h5ebsd_file

    path = tmp_path / "ox.h5oina"
    create_dummy_oxford_h5ebsd_file(path, version=version)
    s = kp_load(path, processed=processed)
    report = convert(path, tmp_path / "o.zarr", reader_options={"processed": processed})
    ds, got, scan = stored(report.output)
    assert_same(got, s.data)
    det = scan["detector"]
    assert det["pc_convention"] == "oxford" and det["binning"] == s.detector.binning
    assert det["sample_tilt"] == pytest.approx(69.9, abs=1e-4)
    assert det["camera_tilt"] == pytest.approx(s.detector.tilt, abs=1e-4)
    assert "rotation" in ds and scan["beam_energy_kv"] == 20


def test_edax_h5ebsd(tmp_path):
    path = KP_DATA / "edax_h5ebsd" / "patterns.h5"
    s = kp_load(path)
    ds, got, scan = stored(convert(path, tmp_path / "o.zarr").output)
    assert_same(got, s.data)
    assert scan["provenance"]["source_format"] == "h5ebsd:edax"
    assert scan["detector"]["pc_convention"] == "edax"
    assert scan["detector"]["pc"] is None  # OIM wrote zeros: not calibrated
    assert scan["detector"]["sample_tilt"] == pytest.approx(75.7, abs=1e-4)
    assert scan["phases"][0]["name"] == "Nickel" and scan["phases"][0]["point_group"] == "m-3m"
    np.testing.assert_array_equal(ds["phase_id"].values, 1)
    np.testing.assert_allclose(ds["ci"].values.ravel(), np.arange(9))


def test_kikuchipy_h5ebsd_round_trip_with_uniform_pc_and_second_scan(tmp_path):
    import kikuchipy as kp

    s = kp.data.nickel_ebsd_small()
    s.detector.pc = (0.41, 0.22, 0.55)
    s.save(tmp_path / "k.h5")
    s2 = s.deepcopy()
    s2.data = 255 - s2.data
    s2.save(tmp_path / "k.h5", add_scan=True, scan_number=2)
    ds, got, scan = stored(convert(tmp_path / "k.h5", tmp_path / "a.zarr").output)
    assert_same(got, s.data)
    assert scan["detector"]["pc"] == pytest.approx([0.41, 0.22, 0.55]) and "pc" not in ds
    _, got2, _ = stored(convert(tmp_path / "k.h5", tmp_path / "b.zarr",
                                reader_options={"scan_group": "Scan 2"}).output)
    assert_same(got2, s2.data)


# -- EDAX / Oxford binaries ------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["up1", "up2"])
def test_edax_binary_square_grid_written_here(tmp_path, ext):
    rng = np.random.default_rng(3)
    dtype = "uint8" if ext == "up1" else "uint16"
    data = rng.integers(0, 200, (4, 5, 7, 6)).astype(dtype)
    path = tmp_path / f"scan.{ext}"
    with open(path, "wb") as fh:  # version 3: 42-byte header, square grid
        np.array([3, 6, 7, 42], "<u4").tofile(fh)
        np.array([0], "u1").tofile(fh)
        np.array([5, 4], "<u4").tofile(fh)
        np.array([0], "u1").tofile(fh)
        np.array([0.5, 0.25], "<f8").tofile(fh)
        data.astype(f"<{np.dtype(dtype).str[1:]}").tofile(fh)
    s = kp_load(path)
    ds, got, scan = stored(convert(path, tmp_path / "o.zarr").output)
    assert got.shape == (4, 5, 7, 6)
    assert_same(got, s.data)
    np.testing.assert_array_equal(got, data)
    assert scan["step_size"] == {"y": 0.25, "x": 0.5, "unit": "um"}


def test_oxford_binary_from_kikuchipy_data(tmp_path):
    path = KP_DATA / "oxford_binary" / "patterns.ebsp"
    s = kp_load(path)
    _, got, _ = stored(convert(path, tmp_path / "o.zarr").output)
    assert_same(got, s.data)


# -- SPED / 4D-STEM ----------------------------------------------------------------------------------------

def test_blockfile_written_by_hyperspy(tmp_path):
    import hyperspy.api as hs
    from rsciio.blockfile import file_reader

    data = np.random.default_rng(1).integers(0, 255, (3, 4, 16, 16)).astype("uint8")
    sig = hs.signals.Signal2D(data)
    for ax, unit in zip(sig.axes_manager._axes, ["nm", "nm", "cm", "cm"], strict=True):
        ax.units = unit
        ax.scale = 2.5 if unit == "nm" else 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sig.save(tmp_path / "s.blo")
    ds, got, scan = stored(convert(tmp_path / "s.blo", tmp_path / "o.zarr").output)
    np.testing.assert_array_equal(got, file_reader(str(tmp_path / "s.blo"))[0]["data"])
    np.testing.assert_array_equal(got, data)
    assert scan["modality"] == "sped" and scan["step_size"]["unit"] == "nm"


def _write_mib(path: Path, frames: np.ndarray, row_len: int) -> None:
    """Minimal single-chip Merlin writer: 384-byte ASCII headers, big-endian U16 pixels."""
    n, h, w = frames.shape
    with open(path, "wb") as fh:
        for i, frame in enumerate(frames):
            # Frames in a row are 1 ms apart; a row change takes 10 ms (the flyback).
            t = np.datetime64("2024-01-01T00:00:00", "ns") + np.timedelta64(i * 1_000_000 + (i // row_len) * 10_000_000, "ns")
            fields = ["MQ1", f"{i + 1:06d}", "00384", "01", f"{w:04d}", f"{h:04d}", "U16", "   1x1", "01",
                      "2024-01-01 00:00:00.000000", "0.001000", "0", "0", "0", "1.0E+1", "5.1E+2",
                      "3RX", f"{str(t)}Z", "1000000ns", "12", ""]
            head = ",".join(fields).encode("ascii")
            fh.write(head + b"\x00" * (384 - len(head)))
            fh.write(frame.astype(">u2").tobytes())


def test_merlin_written_here_matches_rsciio(tmp_path):
    from rsciio.quantumdetector import file_reader

    frames = np.random.default_rng(2).integers(0, 4095, (12, 8, 10)).astype("uint16")
    _write_mib(tmp_path / "m.mib", frames, row_len=4)
    (tmp_path / "m.hdr").write_text("HDR,\nFrames in Acquisition (Number):\t12\nFrames per Trigger (Number):\t1\nEnd\t")
    ds, got, scan = stored(convert(tmp_path / "m.mib", tmp_path / "o.zarr").output)
    expected = file_reader(str(tmp_path / "m.mib"))[0]["data"]
    assert got.shape == (3, 4, 8, 10) == expected.shape
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got.reshape(12, 8, 10), frames[:, ::-1, :])  # flipped as rsciio does
    assert scan["exposure_s"] == pytest.approx(1e-3) and scan["modality"] == "4dstem"


@pytest.mark.parametrize("nav", [(), (5,), (2, 3), (2, 2, 2)])
def test_hspy_navigation_shapes(tmp_path, nav):
    import hyperspy.api as hs

    data = np.arange(int(np.prod(nav or (1,))) * 6 * 7, dtype="int16").reshape(*nav, 6, 7)
    sig = hs.signals.Signal2D(data)
    sig.set_signal_type("EBSD") if nav == (2, 3) else None
    sig.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 300)
    sig.save(tmp_path / "d.hspy")
    scan_shape = (2, 4) if len(nav) == 3 else None
    ds, got, scan = stored(convert(tmp_path / "d.hspy", tmp_path / "o.zarr", scan_shape=scan_shape).output)
    np.testing.assert_array_equal(got.reshape(-1, 6, 7), data.reshape(-1, 6, 7))
    assert got.shape[:2] == {(): (1, 1), (5,): (1, 5), (2, 3): (2, 3), (2, 2, 2): (2, 4)}[nav]
    assert scan["beam_energy_kv"] == 300
    assert scan["modality"] == ("ebsd" if nav == (2, 3) else "4dstem")


# -- image stacks -----------------------------------------------------------------------------------------

def test_multipage_tiff_needs_scan_shape_and_round_trips(tmp_path):
    import tifffile

    data = np.random.default_rng(4).integers(0, 65535, (6, 9, 11)).astype("uint16")
    for i, frame in enumerate(data):  # pages appended one by one, as acquisition software does
        tifffile.imwrite(tmp_path / "stack.tif", frame, append=i > 0)
    with pytest.raises(Exception, match="--scan-shape"):
        convert(tmp_path / "stack.tif", tmp_path / "o.zarr")
    _, got, scan = stored(convert(tmp_path / "stack.tif", tmp_path / "o.zarr", scan_shape=(2, 3),
                                  modality="ebsd").output)
    np.testing.assert_array_equal(got.reshape(6, 9, 11), data)
    assert scan["modality"] == "ebsd"


def test_tiff_with_4d_shape_keeps_scan_shape(tmp_path):
    import tifffile

    data = np.arange(2 * 3 * 4 * 5, dtype="float32").reshape(2, 3, 4, 5)
    tifffile.imwrite(tmp_path / "cube.tif", data)
    _, got, _ = stored(convert(tmp_path / "cube.tif", tmp_path / "o.zarr").output)
    np.testing.assert_array_equal(got, data)


def test_png_stack_16bit_natural_order(tmp_path):
    from PIL import Image

    data = np.random.default_rng(5).integers(0, 65535, (12, 5, 8)).astype("uint16")
    for i, frame in enumerate(data):
        Image.fromarray(frame).save(tmp_path / f"frame{i}.png")
    _, got, _ = stored(convert(tmp_path, tmp_path.parent / f"{tmp_path.name}.zarr", scan_shape=(3, 4)).output)
    np.testing.assert_array_equal(got.reshape(12, 5, 8), data)  # frame10 after frame9, not after frame1


def test_png_stack_with_xy_names_gives_scan_shape(tmp_path):
    from PIL import Image

    data = np.random.default_rng(6).integers(0, 255, (2, 3, 4, 4)).astype("uint8")
    folder = tmp_path / "pats"
    folder.mkdir()
    for y in range(2):
        for x in range(3):
            Image.fromarray(data[y, x]).save(folder / f"pattern_x{x}y{y}.png")
    _, got, _ = stored(convert(folder, tmp_path / "o.zarr").output)
    np.testing.assert_array_equal(got, data)
    import kikuchipy as kp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = kp.load(str(folder / "*.png"))
    np.testing.assert_array_equal(got, ref.data)


def test_rgb_jpeg_of_grey_pattern_is_exact(tmp_path):
    from PIL import Image

    grey = np.random.default_rng(7).integers(0, 255, (6, 6)).astype("uint8")
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "p.png")
    _, got, _ = stored(convert(tmp_path / "p.png", tmp_path / "o.zarr").output)
    np.testing.assert_array_equal(got[0, 0], grey)


# -- property tests ----------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), dtype=st.sampled_from(["uint8", "uint16", "int16", "uint32", "float32", "float64", ">u2"]),
       nav=st.sampled_from([(), (3,), (1, 1), (2, 3), (3, 1)]), det=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       fortran=st.booleans(), batch=st.integers(1, 7))
def test_npy_round_trip(tmp_path_factory, data, dtype, nav, det, fortran, batch):
    elements = hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False)
    arr = data.draw(hnp.arrays(dtype, (*nav, *det), elements=elements))
    if fortran:
        arr = np.asfortranarray(arr)
    d = tmp_path_factory.mktemp("npy")
    np.save(d / "a.npy", arr)
    frame_bytes = int(np.prod(det)) * np.dtype(dtype).itemsize
    report = convert(d / "a.npy", d / "a.zarr", batch_bytes=batch * frame_bytes)
    _, got, _ = stored(report.output)
    np.testing.assert_array_equal(got.reshape(-1, *det), arr.reshape(-1, *det))
    assert got.dtype == np.dtype(dtype).newbyteorder("=")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), dtype=st.sampled_from(["uint8", "uint16", "float32"]), n=st.integers(1, 6),
       det=st.tuples(st.integers(1, 9), st.integers(1, 9)))
def test_tiff_pages_round_trip(tmp_path_factory, data, dtype, n, det):
    import tifffile

    elements = hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False)
    arr = data.draw(hnp.arrays(dtype, (n, *det), elements=elements))
    d = tmp_path_factory.mktemp("tif")
    for i, frame in enumerate(arr):
        tifffile.imwrite(d / "s.tif", frame, append=i > 0)
    with open_reader(d / "s.tif", scan_shape=(1, n)) as reader:
        assert reader.probe().n_frames == n
        got = np.concatenate(list(reader.iter_frames(batch=2)))
    np.testing.assert_array_equal(got, arr)


# -- sizes from side files, metadata as the file says it (issue 7) ---------------------------------------------

def test_merlin_with_fewer_frames_in_hdr_than_in_file(tmp_path):
    from diffraflow.schemas.errors import InputFileError

    frames = np.random.default_rng(9).integers(0, 4095, (12, 8, 10)).astype("uint16")
    _write_mib(tmp_path / "m.mib", frames, row_len=4)
    (tmp_path / "m.hdr").write_text("HDR,\nFrames in Acquisition (Number):\t8\nFrames per Trigger (Number):\t1\nEnd\t")
    with pytest.raises(InputFileError, match="the file holds 12 frames but m.hdr says 8 .* 4 frames would be left out"):
        convert(tmp_path / "m.mib", tmp_path / "o.zarr")
    with pytest.raises(InputFileError, match="m.hdr says 8"):  # a scan of the .hdr's size still leaves 4 out
        convert(tmp_path / "m.mib", tmp_path / "o.zarr", scan_shape=(2, 4))
    report = convert(tmp_path / "m.mib", tmp_path / "o.zarr", scan_shape=(3, 4))
    _, got, _ = stored(report.output)
    np.testing.assert_array_equal(got.reshape(12, 8, 10), frames[:, ::-1, :])
    assert any("takes all 12" in n for n in report.notes)


def test_nordif_setting_file_gives_only_what_it_says(tmp_path):
    for name in ("Pattern.dat", "Setting.txt"):
        shutil.copy(KP_DATA / "nordif" / name, tmp_path / name)
    _, _, scan = stored(convert(tmp_path / "Pattern.dat", tmp_path / "o.zarr").output)
    det = scan["detector"]
    assert det["binning"] is None and det["pc"] is None and det["px_size_um"] is None  # not in Setting.txt
    assert det["camera_tilt"] is not None and det["azimuthal"] is not None  # "Detector angles" are


def test_h5ebsd_projection_centre_out_of_bounds_is_dropped_with_a_note(tmp_path):
    import kikuchipy as kp

    s = kp.data.nickel_ebsd_small()
    s.detector.pc = (5.0, 0.22, 0.5)  # x five detector widths off: a botched calibration
    s.save(tmp_path / "k.h5")
    report = convert(tmp_path / "k.h5", tmp_path / "o.zarr")
    ds, got, scan = stored(report.output)
    assert_same(got, s.data)  # the patterns still convert
    assert scan["detector"]["pc"] is None and "pc" not in ds
    assert any("projection centre [5.0, 0.22, 0.5] in the file ignored (projection-centre x = 5.0 is outside"
               in n for n in report.notes)
    assert scan["detector"]["binning"] == s.detector.binning


@pytest.mark.parametrize(("units", "stored_unit"), [("µm", "um"), ("mm", "mm"), ("px", None)])
def test_hspy_navigation_units(tmp_path, units, stored_unit):
    import hyperspy.api as hs

    sig = hs.signals.Signal2D(np.zeros((2, 3, 4, 4), "uint8"))
    for ax in sig.axes_manager.navigation_axes:
        ax.units, ax.scale = units, 0.5
    sig.save(tmp_path / "d.hspy")
    _, _, scan = stored(convert(tmp_path / "d.hspy", tmp_path / "o.zarr").output)
    expected = None if stored_unit is None else {"y": 0.5, "x": 0.5, "unit": stored_unit}
    assert scan["step_size"] == expected  # a pixel "step" is no length: unknown
