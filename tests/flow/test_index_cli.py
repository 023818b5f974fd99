"""``diffraflow index``: stream a simulated EBSD cube through the HoughIndexer into a crystal-map store."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.cli import main
from diffraflow.flow.crystal_map import read_crystal_map, read_crystal_map_record

SCAN = (6, 7)


def _make_cube(path, pc=True, per_point=False, modality="ebsd"):
    from diffraflow.flow.store import create_cube
    from diffraflow.operators.crystallography.phases import get_phase, phase_to_record
    from diffraflow.operators.simulate.ebsd import simulate_ebsd

    sim = simulate_ebsd(SCAN, det_shape=(60, 60), n_grains=3, dose=300, seed=4)
    det = {"shape": [60, 60], "sample_tilt": sim.sample_tilt, "camera_tilt": sim.camera_tilt}
    if pc:
        det["pc"] = list(sim.pc)
    attrs = {"modality": modality, "detector": det, "beam_energy_kv": 20, "step_size": {"y": 2.0, "x": 1.0},
             "phases": [dict(phase_to_record(get_phase("ni")), id=0)]}
    patterns, _ = sim.all_patterns()
    with create_cube(path, scan_shape=SCAN, det_shape=(60, 60), dtype=patterns.dtype, attrs=attrs,
                     chunk_frames=SCAN[1]) as writer:
        writer.patterns.append(patterns.reshape(-1, 60, 60))
        writer.write_variable("true_rotation", sim.true_rotation, ("scan_y", "scan_x", "quat"), ground_truth=True)
        if per_point:
            pcs = np.broadcast_to(np.asarray(sim.pc, dtype=float), (*SCAN, 3)).copy()
            writer.write_variable("pc", pcs, ("scan_y", "scan_x", "pc_component"),
                                  attributes={"convention": "bruker"})
        writer.finalize()
    return sim


@pytest.fixture(scope="module")
def cubes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cubes")
    sim = _make_cube(root / "scan.zarr")
    _make_cube(root / "scan_pp.zarr", pc=False, per_point=True)
    _make_cube(root / "scan_nopc.zarr", pc=False)
    return root, sim


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffraflow index: error: ") and "\n" not in err, err
    return err


def test_index_streams_blocks_and_matches_truth(cubes, tmp_path, monkeypatch, capsys):
    from orix.quaternion import Orientation

    root, sim = cubes
    out = tmp_path / "cm.zarr"
    assert main(["index", str(root / "scan.zarr"), str(out), "--phase", "ni", "--backend", "cpu",
                 "--chunk-frames", str(2 * SCAN[1])]) == 0  # three chunks of two rows
    assert "indexed" in capsys.readouterr().out
    xmap = read_crystal_map(out)
    assert xmap.shape == SCAN and (xmap.dy, xmap.dx) == (2.0, 1.0)
    _, _, record = read_crystal_map_record(out)
    assert record["operator"] == "hough_index"
    assert record["projection_centre"]["source"] == "cube detector.pc"
    assert record["scan"]["beam_energy_kv"] == 20 and record["phases"][0]["name"] == "ni"
    symmetry = xmap.phases[0].point_group
    angles = Orientation(xmap.rotations.data, symmetry).angle_with(
        Orientation(sim.true_rotation.reshape(-1, 4), symmetry), degrees=True)
    assert np.mean(angles < 2.0) > 0.8, np.median(angles)
    # Same answer as the indexer on the whole scan at once: streaming changes nothing
    from diffraflow.operators.crystallography import get_phase
    from diffraflow.operators.indexing import HoughIndexer
    from kikuchipy.detectors import EBSDDetector

    patterns, _ = sim.all_patterns()
    detector = EBSDDetector((60, 60), pc=sim.pc, sample_tilt=sim.sample_tilt, tilt=sim.camera_tilt)
    whole = HoughIndexer([get_phase("ni")], detector, backend="cpu").index(patterns.reshape(*SCAN, 60, 60))
    np.testing.assert_array_equal(xmap.phase_id, whole.phase_id)
    same = Orientation(xmap.rotations.data, symmetry).angle_with(
        Orientation(whole.rotations.data, symmetry), degrees=True)
    assert same.max() < 1e-3


def test_index_per_point_pc_and_phases_from_metadata(cubes, tmp_path):
    from orix.quaternion import Orientation

    root, _ = cubes
    assert main(["index", str(root / "scan.zarr"), str(tmp_path / "a.zarr"), "--backend", "cpu"]) == 0
    assert main(["index", str(root / "scan_pp.zarr"), str(tmp_path / "b.zarr"), "--backend", "cpu"]) == 0
    _, _, record = read_crystal_map_record(tmp_path / "b.zarr")
    assert record["projection_centre"]["per_point"] is True
    a, b = read_crystal_map(tmp_path / "a.zarr"), read_crystal_map(tmp_path / "b.zarr")
    symmetry = a.phases[0].point_group
    assert Orientation(a.rotations.data, symmetry).angle_with(
        Orientation(b.rotations.data, symmetry), degrees=True).max() < 1e-3


def test_index_missing_pc(cubes, tmp_path, capsys):
    root, sim = cubes
    out = tmp_path / "cm.zarr"
    assert main(["index", str(root / "scan_nopc.zarr"), str(out), "--phase", "ni"]) == 2
    assert "projection centre is unknown" in (err := _err(capsys)) and "--pc X Y Z" in err
    assert not out.exists()
    pc = [str(v) for v in sim.pc]
    assert main(["index", str(root / "scan_nopc.zarr"), str(out), "--phase", "ni", "--pc", *pc,
                 "--pc-convention", "bruker", "--backend", "cpu"]) == 0
    _, _, record = read_crystal_map_record(out)
    assert record["projection_centre"]["source"] == "pc parameter"


def test_index_png_and_overwrite(cubes, tmp_path, capsys):
    root, _ = cubes
    out = tmp_path / "cm.zarr"
    args = ["index", str(root / "scan.zarr"), str(out), "--phase", "ni", "--backend", "cpu", "--png"]
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["cm_confidence.png", "cm_fit.png", "cm_ipf.png",
                                                              "cm_phase.png"]
    capsys.readouterr()
    assert main(args) == 2
    assert "output already exists" in _err(capsys)
    assert main([*args[:-1], "--overwrite"]) == 0


def test_index_errors(cubes, tmp_path, capsys):
    root, _ = cubes
    assert main(["index", str(root / "scan.zarr"), str(tmp_path / "x.zarr"), "--phase", "nickle"]) == 2
    assert "did you mean 'nickel'" in _err(capsys)
    assert main(["index", str(tmp_path / "none.zarr"), str(tmp_path / "x.zarr"), "--phase", "ni"]) == 2
    assert "no such store" in _err(capsys)
    _make_cube(tmp_path / "tem.zarr", modality="tkd")  # TKD is indexable too
    assert main(["index", str(tmp_path / "tem.zarr"), str(tmp_path / "t.zarr"), "--backend", "cpu"]) == 0


def test_summary_counts_only_confident_points(cubes, tmp_path, capsys):
    """A far-off PC gives a solution everywhere but few confident ones: the summary says so (issue 7.3)."""
    root, sim = cubes
    good = tmp_path / "good.zarr"
    assert main(["index", str(root / "scan.zarr"), str(good), "--backend", "cpu"]) == 0
    out = capsys.readouterr().out
    n = SCAN[0] * SCAN[1]
    assert f"indexed {n} of {n} patterns (100.0%) with confidence ≥ 0.10 against ni" in out, out
    _, _, record = read_crystal_map_record(good)
    assert record["min_confidence"] == 0.10
    bad = tmp_path / "bad.zarr"
    wrong_pc = ["0.2", str(sim.pc[1]), str(sim.pc[2])]
    assert main(["index", str(root / "scan.zarr"), str(bad), "--backend", "cpu", "--pc", *wrong_pc]) == 0
    captured = capsys.readouterr()
    xmap = read_crystal_map(bad)
    confident = int(np.sum((xmap.phase_id >= 0) & (xmap.prop["confidence"] >= 0.10)))
    below = int(np.sum((xmap.phase_id >= 0) & (xmap.prop["confidence"] < 0.10)))
    assert below > confident and (xmap.phase_id >= 0).all()  # the store keeps every raw solution
    assert (f"indexed {confident} of {n} patterns ({100 * confident / n:.1f}%) with confidence ≥ 0.10 "
            f"({below} more below it)") in captured.out, captured.out
    assert "check the projection centre" in captured.err
    # --min-confidence 0 counts every solution, as before the threshold existed
    assert main(["index", str(root / "scan.zarr"), str(bad), "--backend", "cpu", "--pc", *wrong_pc,
                 "--min-confidence", "0", "--overwrite"]) == 0
    assert f"indexed {n} of {n} patterns (100.0%) with confidence ≥ 0.00" in capsys.readouterr().out
    assert main(["index", str(root / "scan.zarr"), str(tmp_path / "x.zarr"), "--min-confidence", "-1"]) == 2
    assert "--min-confidence: must be between 0 and 1, got -1" in _err(capsys)


def test_export_applies_the_threshold_index_used(cubes, tmp_path):
    import orix.io

    root, sim = cubes
    store = tmp_path / "bad.zarr"
    assert main(["index", str(root / "scan.zarr"), str(store), "--backend", "cpu", "--min-confidence", "0.3",
                 "--pc", "0.2", str(sim.pc[1]), str(sim.pc[2])]) == 0
    assert main(["export", str(store), str(tmp_path / "m.ang")]) == 0
    raw = read_crystal_map(store)
    back = orix.io.load(tmp_path / "m.ang")
    np.testing.assert_array_equal(back.phase_id >= 0, raw.prop["confidence"] >= 0.3)


def test_compile_message_before_compiling_and_rate_without_it(cubes, tmp_path, monkeypatch, capsys):
    """Uncached kernels: one line first, then compile outside the timed run (issue 7.13)."""
    import time

    from diffraflow.operators.indexing.indexer import COMPILE_MESSAGE, HoughIndexer

    events = []
    original = HoughIndexer.index_chunk

    def slow_index_chunk(self, patterns, pc=None, nav_indices=None):
        if not events or events[-1] != "index":
            events.append("index")
        if len(patterns) == 1:  # the warm-up's one blank pattern: pretend numba compiles for a while
            time.sleep(1.5)
        return original(self, patterns, pc=pc, nav_indices=nav_indices)

    monkeypatch.setattr(HoughIndexer, "kernels_cached", lambda self, dtype=None: False)
    monkeypatch.setattr(HoughIndexer, "index_chunk", slow_index_chunk)
    from diffraflow.flow.notices import set_receiver

    previous = set_receiver(events.append)
    try:
        assert main(["index", str(cubes[0] / "scan.zarr"), str(tmp_path / "cm.zarr"), "--backend", "cpu"]) == 0
    finally:
        set_receiver(previous)
    assert events[:2] == [COMPILE_MESSAGE, "index"], events  # said before the first kernel call
    captured = capsys.readouterr()
    assert "compiled the kernels in" in captured.err
    seconds = float(captured.out.split(" in ")[-1].split(" s ")[0])
    assert seconds < 1.5, captured.out  # the warm-up's time is not in the rate


def test_no_compile_message_when_cached(cubes, tmp_path, capsys):
    root, _ = cubes
    assert main(["index", str(root / "scan.zarr"), str(tmp_path / "cm.zarr"), "--backend", "cpu"]) == 0
    assert "compiling" not in capsys.readouterr().err


SLOW_INDEX = """
import sys, time
from diffraflow.operators.indexing.indexer import HoughIndexer
from diffraflow.flow.cli import main
original = HoughIndexer.index_chunk
def slow(self, *args, **kwargs):
    time.sleep(0.1)
    return original(self, *args, **kwargs)
HoughIndexer.index_chunk = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_index_resumes_after_sigkill(cubes, tmp_path):
    """A killed ``diffraflow index`` re-run with the same command skips what was done and ends identical."""
    import signal
    import subprocess
    import sys
    import time

    root, _ = cubes
    args = ["index", str(root / "scan.zarr"), str(tmp_path / "cm.zarr"), "--phase", "ni", "--backend", "cpu",
            "--scheduler", "inline", "--chunk-frames", "1", "-q"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_INDEX, *args], stderr=subprocess.PIPE, text=True)
    progress = tmp_path / "cm.zarr" / "_progress" / "round0"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if progress.exists() and len(list(progress.glob("*.done"))) >= 8:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(progress.glob("*.done")))
    assert 8 <= done_before < SCAN[0] * SCAN[1]
    rerun = subprocess.run([sys.executable, "-m", "diffraflow", *args], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    full = tmp_path / "full.zarr"
    assert main(["index", str(root / "scan.zarr"), str(full), "--phase", "ni", "--backend", "cpu", "-q"]) == 0
    resumed, uninterrupted = read_crystal_map(tmp_path / "cm.zarr"), read_crystal_map(full)
    np.testing.assert_array_equal(resumed.rotations.data, uninterrupted.rotations.data)
    np.testing.assert_array_equal(resumed.phase_id, uninterrupted.phase_id)


@pytest.mark.parametrize("argv, words", [
    (["--phase", "nii"], "unknown phase"),
    (["--backend", "cuda"], "needs"),
    (["--n-bands", "2"], "at least 3 bands"),
    (["--pc", "5", "0.2", "0.5"], "--pc"),
])
def test_index_refuses_bad_input_before_reading_data(cubes, tmp_path, capsys, monkeypatch, argv, words):
    from diffraflow.schemas.backends import backend_available

    if argv[:2] == ["--backend", "cuda"] and backend_available("cupy"):
        pytest.skip("a CUDA device is present here, so 'cuda' is a valid backend")
    from diffraflow.flow.sources import ZarrCubeSource

    def no_reads(self, region):
        raise AssertionError("a frame was read")

    monkeypatch.setattr(ZarrCubeSource, "read", no_reads)
    out = tmp_path / "cm.zarr"
    assert main(["index", str(cubes[0] / "scan.zarr"), str(out), *argv]) == 2
    assert words in _err(capsys)
    assert not out.exists()


def test_index_without_any_phase_fails_first(tmp_path, capsys):
    from diffraflow.flow.store import create_cube

    cube = tmp_path / "nophase.zarr"
    with create_cube(cube, scan_shape=(1, 2), det_shape=(60, 60), dtype="uint8",
                     attrs={"modality": "ebsd", "detector": {"shape": [60, 60], "pc": [0.4, 0.2, 0.5]}}) as w:
        w.patterns.append(np.zeros((2, 60, 60), "uint8"))
        w.finalize()
    assert main(["index", str(cube), str(tmp_path / "cm.zarr")]) == 2
    assert "no phases given" in _err(capsys)
