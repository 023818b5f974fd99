"""Trust: nothing of the user's deleted, no silent zeros, one writer, no code run from a store, one-line errors.

Each test reproduces a problem found on an earlier version (issue 7) and checks the promise now holds.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from diffraflow.flow.cli import main
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.locks import StoreLock, lock_path
from diffraflow.flow.pipeline import Pipeline
from diffraflow.flow.records import load_record, save_record
from diffraflow.flow.store import open_cube, prepare_output_path, store_manifest
from diffraflow.schemas.errors import DataCorruptionError, StoreLockedError, UnsafeRecordError

from tests.flow.engine_fixtures import FrameSum, make_cube, write_yaml

PLUGIN = ["--plugin", "tests.flow.engine_fixtures"]


@pytest.fixture
def cube(tmp_path):
    return make_cube(tmp_path / "in.zarr", scan_shape=(6, 5), det_shape=(4, 4), chunk_frames=5)


@pytest.fixture
def pipeline_file(tmp_path):
    return write_yaml(tmp_path / "p.yaml", """
        pipeline: 1
        steps:
          - op: test_frame_sum
          - op: mean_pattern
    """)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and "Traceback" not in err, err
    assert "error:" in lines[-1] and "fix:" in lines[-1], err
    return lines[-1]


def tree_digest(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# -- 4. --overwrite never deletes what diffraflow did not make, nor the input -----------------------

def test_overwrite_refuses_a_folder_of_user_files(cube, pipeline_file, tmp_path, capsys):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "chapter1.tex").write_text("precious")
    code = main(["run", str(pipeline_file), "-i", str(cube[0]), "-o", str(user), "--overwrite", "-q", *PLUGIN])
    assert code == 2 and "not made by diffraflow" in one_line_error(capsys)
    assert (user / "chapter1.tex").read_text() == "precious"


def test_overwrite_never_touches_the_input(cube, pipeline_file, tmp_path, capsys):
    path = cube[0]
    before = tree_digest(path)
    code = main(["run", str(pipeline_file), "-i", str(path), "-o", str(path), "--overwrite", "-q", *PLUGIN])
    assert code == 2 and "input" in one_line_error(capsys)
    code = main(["index", str(path), str(path), "--phase", "ni", "--overwrite"])
    assert code == 2
    one_line_error(capsys)
    assert tree_digest(path) == before


def test_convert_refuses_its_input_as_output(tmp_path, capsys):
    src = tmp_path / "frames.npy"
    np.save(src, np.arange(4 * 9, dtype="uint8").reshape(4, 3, 3))
    before = src.read_bytes()
    code = main(["convert", str(src), str(src), "--scan-shape", "2", "2", "--overwrite", "-q"])
    assert code == 2 and "input" in one_line_error(capsys)
    assert src.read_bytes() == before


def test_overwrite_replaces_an_earlier_result_store_and_says_so(cube, pipeline_file, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    args = ["run", str(pipeline_file), "-i", str(cube[0]), "-o", str(out), "-q", *PLUGIN]
    assert main(args) == 0
    assert main([*args, "--overwrite"]) == 0
    assert "replaced the earlier result store" in capsys.readouterr().err


def test_results_never_replace_a_scan_cube(cube, pipeline_file, tmp_path, capsys):
    other, _ = make_cube(tmp_path / "other.zarr", scan_shape=(2, 2), det_shape=(3, 3))
    code = main(["run", str(pipeline_file), "-i", str(cube[0]), "-o", str(other), "--overwrite", "-q", *PLUGIN])
    assert code == 2 and "scan_cube" in one_line_error(capsys)
    assert open_cube(other)["patterns"].shape == (2, 2, 3, 3)


# -- 5. missing or damaged chunks are errors, never fill values -------------------------------------

def shard_files(path: Path, name: str = "patterns") -> list[Path]:
    return sorted(p for p in (path / name / "c").rglob("*") if p.is_file())


def test_deleted_shard_is_an_error_everywhere(cube, pipeline_file, tmp_path, capsys):
    path = cube[0]
    assert json.loads((path / "zarr.json").read_text())["attributes"]["manifest"] == store_manifest(path)
    victim = shard_files(path)[0]
    victim.unlink()
    for argv in (["info", str(path)], ["validate", str(path)],
                 ["run", str(pipeline_file), "-i", str(path), "-o", str(tmp_path / "r.zarr"), "-q", *PLUGIN]):
        assert main(argv) == 2, argv
        assert "missing" in one_line_error(capsys), argv
    assert not (tmp_path / "r.zarr").exists()


def test_shard_deleted_after_opening_fails_the_chunk_not_zeros(cube, tmp_path):
    from diffraflow.flow.sources import ZarrCubeSource

    source = ZarrCubeSource(cube[0])
    shard_files(cube[0])[0].unlink()
    with pytest.raises(DataCorruptionError, match="chunk file .* is missing"):
        source.read(next(iter(source.regions())))


def test_flipped_bytes_fail_their_checksum(cube, pipeline_file, tmp_path, capsys):
    path = cube[0]
    victim = shard_files(path)[0]
    data = bytearray(victim.read_bytes())
    data[16:48] = bytes(b ^ 0xFF for b in data[16:48])
    victim.write_bytes(bytes(data))
    assert main(["validate", str(path)]) == 2
    assert "damaged" in one_line_error(capsys)
    out = tmp_path / "r.zarr"
    assert main(["run", str(pipeline_file), "-i", str(path), "-o", str(out), "-q", *PLUGIN]) == 2
    line = one_line_error(capsys)
    assert "checksum" in line and "1 attempt:" in line  # damage is not retried


def test_all_zero_chunks_are_stored_so_the_manifest_holds(tmp_path, capsys):
    path, _ = make_cube(tmp_path / "zeros.zarr", frames=np.zeros((3, 4, 2, 2), "uint8"), chunk_frames=4)
    assert len(shard_files(path)) == store_manifest(path)["arrays"]["patterns"]["chunk_files"]
    assert main(["validate", str(path)]) == 0


def test_result_store_chunks_are_checked_too(cube, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    run_pipeline(Pipeline([FrameSum()]), cube[0], out, chunk_frames=5)
    assert main(["validate", str(out)]) == 0
    capsys.readouterr()
    shard_files(out, "test_frame_sum/total")[0].unlink()
    assert main(["validate", str(out)]) == 2
    assert "missing" in one_line_error(capsys)


# -- 6. one writer per store -----------------------------------------------------------------------

def test_second_writer_is_refused_with_the_owner_named(cube, pipeline_file, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from flow.locks import StoreLock; lock = StoreLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["run", str(pipeline_file), "-i", str(cube[0]), "-o", str(out), "-q", *PLUGIN])
        line = one_line_error(capsys)
        assert code == 2 and f"pid {holder.pid}" in line and "one writer per store" in line
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and taken over
    assert main(["run", str(pipeline_file), "-i", str(cube[0]), "-o", str(out), "-q", *PLUGIN]) == 0
    assert not lock_path(out).exists()


def test_concurrent_runs_leave_one_consistent_store(cube, pipeline_file, tmp_path):
    out = tmp_path / "r.zarr"
    cmd = [sys.executable, "-m", "diffraflow.flow.cli", "run", str(pipeline_file), "-i", str(cube[0]), "-o", str(out),
           "-q", *PLUGIN]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [p.wait(timeout=120) for p in procs]
    errs = [p.stderr.read() for p in procs]
    assert 0 in codes, errs
    for code, err in zip(codes, errs, strict=True):
        assert code == 0 or "another diffraflow process is writing it" in err, err
    results = run_pipeline(Pipeline.from_file(pipeline_file), cube[0], out)
    frames = cube[1]
    assert np.array_equal(results.results["mean_pattern/mean"], frames.reshape(-1, 4, 4).mean(axis=0))


def test_lock_in_process(tmp_path):
    out = tmp_path / "x.zarr"
    with StoreLock(out):
        with pytest.raises(StoreLockedError):
            # a second holder in the same process goes through a separate open file: flock refuses it
            StoreLock(out).acquire()


# -- 9. no code runs from a store ------------------------------------------------------------------

class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_progress_record_is_refused_not_run(cube, tmp_path, capsys):
    import pickle

    out = tmp_path / "r.zarr"
    flaky = write_yaml(tmp_path / "f.yaml", """
        pipeline: 1
        steps:
          - op: mean_pattern
          - op: test_flaky
            params: {fail_at: [10], times: -1}
    """)
    code = main(["run", str(flaky), "-i", str(cube[0]), "-o", str(out), "-q", "--retries", "0",
                 "--scheduler", "inline", *PLUGIN])
    assert code == 2
    capsys.readouterr()
    progress = out / "_progress" / "round0"
    assert (progress / "partials.npz").exists() and not list(progress.glob("*.pkl"))
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    for name in ("partials.npz", "partials.pkl", "state.pkl"):
        (progress / name).write_bytes(pickle.dumps(exploit))
    code = main(["run", str(flaky), "-i", str(cube[0]), "-o", str(out), "-q", *PLUGIN])
    assert code == 2 and "pickle" in one_line_error(capsys)
    assert not marker.exists()


def test_records_round_trip_and_refuse_objects(tmp_path):
    value = {"a": np.arange(5.0), "n": np.int64(3), "t": (1, 2.5, "x", None, True), "k": {0: [np.float32(1)]}}
    save_record(tmp_path / "s.npz", value)
    back = load_record(tmp_path / "s.npz")
    assert back["t"] == (1, 2.5, "x", None, True) and back["k"][0][0] == 1.0
    np.testing.assert_array_equal(back["a"], value["a"])
    np.save(tmp_path / "obj.npy", np.array([object()], dtype=object), allow_pickle=True)
    with open(tmp_path / "o.npz", "wb") as fh:
        np.savez(fh, __tree__=np.frombuffer(b'{"a": "a0"}', np.uint8), a0=np.array([{}], dtype=object))
    with pytest.raises(UnsafeRecordError):
        load_record(tmp_path / "o.npz")


# -- 8. stores that contradict themselves ----------------------------------------------------------

def edit_attrs(path: Path, edit) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    edit(meta["attributes"])
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, field", [
    (lambda a: a["scan"]["detector"].update(shape=[5, 4]), "detector.shape"),
    (lambda a: a["scan"].update(scan_shape=[5, 6]), "scan_shape"),
    (lambda a: a["diffraflow"].update(kind="banana"), "kind"),
])
def test_self_contradicting_store_is_refused(cube, pipeline_file, tmp_path, capsys, edit, field):
    edit_attrs(cube[0], edit)
    code = main(["run", str(pipeline_file), "-i", str(cube[0]), "-o", str(tmp_path / "r.zarr"), "-q", *PLUGIN])
    assert code == 2 and field in one_line_error(capsys)
    assert main(["validate", str(cube[0])]) == 2
    one_line_error(capsys)


# -- 10, 11. one-line errors, ranges checked where parsed ------------------------------------------

@pytest.mark.parametrize("option", [["--chunk-frames", "0"], ["--workers", "0"], ["--workers", "-2"],
                                    ["--window", "0"], ["--retries", "-1"], ["--connect-timeout", "0"]])
def test_run_numbers_are_checked_where_parsed(cube, pipeline_file, tmp_path, capsys, option):
    out = tmp_path / "r.zarr"
    code = main(["run", str(pipeline_file), "-i", str(cube[0]), "-o", str(out), "-q", *option, *PLUGIN])
    assert code == 2 and option[0] in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "eight"])
def test_convert_chunk_size_is_checked(tmp_path, capsys, value):
    np.save(tmp_path / "f.npy", np.zeros((4, 3, 3), "uint8"))
    code = main(["convert", str(tmp_path / "f.npy"), str(tmp_path / "o.zarr"), "--scan-shape", "2", "2",
                 "--chunk-mb", value, "-q"])
    assert code == 2 and "--chunk-mb" in one_line_error(capsys)


def test_parameter_of_the_wrong_type(cube, tmp_path, capsys):
    bad = write_yaml(tmp_path / "b.yaml", """
        pipeline: 1
        steps:
          - op: remove_dynamic_background
            params: {sigma: "eight"}
    """)
    assert main(["run", str(bad), "-i", str(cube[0]), "-o", str(tmp_path / "r.zarr"), "-q"]) == 2
    line = one_line_error(capsys)
    assert "sigma" in line and "'eight'" in line and "a finite number" in line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("address, words", [(f"tcp://127.0.0.1:{free_port()}", "no scheduler answered"),
                                            ("tcp://no-such-host.invalid:8786", "unknown host")])
def test_unreachable_scheduler_is_one_line_within_seconds(cube, pipeline_file, tmp_path, capsys, address, words):
    out = tmp_path / "r.zarr"
    t0 = time.perf_counter()
    code = main(["run", str(pipeline_file), "-i", str(cube[0]), "-o", str(out), "-q", "--scheduler", address,
                 "--connect-timeout", "2", *PLUGIN])
    assert time.perf_counter() - t0 < 15
    assert code == 2 and words in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "convert"])
def test_full_disk_is_one_line(cube, pipeline_file, tmp_path, capsys, monkeypatch, command):
    import zarr.storage

    real = zarr.storage.LocalStore.set

    async def full(self, key, value):
        if "c/" in key or key.startswith("c"):
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(self.root) / key))
        return await real(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
    if command == "run":
        argv = ["run", str(pipeline_file), "-i", str(cube[0]), "-o", str(tmp_path / "r.zarr"), "-q",
                "--scheduler", "inline", *PLUGIN]
    else:
        np.save(tmp_path / "f.npy", np.zeros((4, 3, 3), "uint8"))
        argv = ["convert", str(tmp_path / "f.npy"), str(tmp_path / "o.zarr"), "--scan-shape", "2", "2", "-q"]
    assert main(argv) == 2
    assert "no space left on the device" in one_line_error(capsys)
    if command == "convert":
        assert not any(p.name.startswith(".o.zarr") for p in tmp_path.iterdir())


# -- 12. stale partials of dead writers are cleaned up, and said -----------------------------------

def test_stale_partials_of_dead_writers_are_removed(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from diffraflow.flow.locks import HOST

    final = tmp_path / "o.zarr"
    stale = tmp_path / f".o.zarr.partial-{HOST}-{dead.pid}"
    old_style = tmp_path / f".o.zarr.partial-{dead.pid}"
    live = tmp_path / f".o.zarr.partial-{HOST}-{os.getpid()}-x"  # not our pattern: left alone
    foreign = tmp_path / f".o.zarr.partial-otherhost-{dead.pid}"  # another machine's writer: left alone
    for folder in (stale, old_style, live, foreign):
        folder.mkdir()
        (folder / "zarr.json").write_text(json.dumps({"node_type": "group", "attributes": {
            "diffraflow": {"kind": "scan_cube", "complete": False}}}))
    np.save(tmp_path / "f.npy", np.zeros((4, 3, 3), "uint8"))
    assert main(["convert", str(tmp_path / "f.npy"), str(final), "--scan-shape", "2", "2", "-q"]) == 0
    err = capsys.readouterr().err
    assert "partial output left by a writer that died" in err
    assert not stale.exists() and not old_style.exists() and live.exists() and foreign.exists()


def test_prepare_output_path_leaves_user_folders_named_like_partials(tmp_path):
    lookalike = tmp_path / ".o.zarr.partial-999999999"
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")
    prepare_output_path(tmp_path / "o.zarr")
    assert (lookalike / "notes.txt").exists()
    shutil.rmtree(lookalike)


# -- 15. summaries count scan frames --------------------------------------------------------------

def test_summary_counts_scan_frames_and_passes(cube, tmp_path, capsys):
    three = write_yaml(tmp_path / "pca.yaml", """
        pipeline: 1
        steps:
          - op: incremental_pca
            params: {n_components: 2}
    """)
    assert main(["run", str(three), "-i", str(cube[0]), "-o", str(tmp_path / "r.zarr"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "30 scan frames x 3 passes" in out and "90 scan frames" not in out


# -- 10. the last dask worker dying ----------------------------------------------------------------

@pytest.mark.slow
def test_losing_every_worker_is_one_line(cube, tmp_path):
    """An external scheduler whose only worker is killed mid-run: one line, not a hang or 'NoneType: None'."""
    import threading

    from diffraflow.flow.executors.distributed import DistributedExecutor
    from diffraflow.schemas.errors import WorkersLostError

    from tests.flow.engine_fixtures import Slow

    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file",
                                  str(scheduler_file)], env=env, stderr=subprocess.DEVNULL)
    worker = None
    try:
        for _ in range(100):
            if scheduler_file.exists() and scheduler_file.stat().st_size:
                break
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--no-nanny",
                                   "--nthreads", "1"], env=env, stderr=subprocess.DEVNULL)
        executor = DistributedExecutor(address=address, lost_workers_timeout=3)
        executor.poll_seconds = 0.5
        threading.Timer(4.0, worker.kill).start()
        t0 = time.perf_counter()
        with pytest.raises(WorkersLostError, match="every dask worker died"):
            run_pipeline(Pipeline([Slow(delay=0.4)]), cube[0], tmp_path / "r.zarr", executor=executor,
                         chunk_frames=1)
        assert time.perf_counter() - t0 < 60
        executor.close()
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_a_store_interrupted_while_created_is_made_anew(cube, pipeline_file, tmp_path, capsys):
    """Killed between the group and its arrays: the next run re-creates it (it held no result), in one line."""
    import zarr

    out = tmp_path / "r.zarr"
    group = zarr.open_group(str(out), mode="w", zarr_format=3)
    group.attrs.update({"diffraflow": {"format_version": 1, "kind": "result", "complete": False},
                        "results": {}})
    assert main(["run", str(pipeline_file), "-i", str(cube[0]), "-o", str(out), "-q", *PLUGIN]) == 0
    assert "re-creating" in capsys.readouterr().err
    assert main(["validate", str(out)]) == 0
