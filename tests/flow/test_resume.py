"""Resumable runs: interrupted runs resume, skip finished chunks and give identical results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.pipeline import Pipeline
from diffraflow.flow.results import ZarrResultStore, open_results
from diffraflow.schemas.errors import ChunkFailedError, OutputExistsError

from tests.flow.engine_fixtures import (
    Affine,
    Centered,
    Flaky,
    FrameSum,
    SigSum,
    make_cube,
    write_yaml,
)

REPO = Path(__file__).resolve().parents[2]
PIPE = Pipeline([Affine(crop=1), Centered(), ("s", SigSum())])


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    return make_cube(tmp_path_factory.mktemp("cube") / "in.zarr", scan_shape=(6, 9), det_shape=(6, 5),
                     chunk_frames=4, seed=7)


class _Interrupted(Exception):
    pass


class CrashingStore(ZarrResultStore):
    """A store whose process 'dies' after ``after`` chunks are marked done in round ``round_``."""

    def __init__(self, path, after, round_):
        super().__init__(path)
        self.after, self.round_, self.count = after, round_, 0

    def mark_done(self, round_, region):
        super().mark_done(round_, region)
        if round_ == self.round_:
            self.count += 1
            if self.count == self.after:
                raise _Interrupted


def _read(path):
    group = zarr.open_group(str(path), mode="r")
    out = {}
    for step_name, step in group.groups():
        for name, arr in step.arrays():
            out[f"{step_name}/{name}"] = arr[...]
    return out


def _equal(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("crash_round", [0, 1])
@pytest.mark.parametrize("executor", ["inline", "threads"])
def test_resume_after_a_crash_gives_identical_results(cube, tmp_path, crash_round, executor):
    path, _ = cube
    reference = run_pipeline(PIPE, path, tmp_path / "ref.zarr", chunk_frames=4).results
    out = tmp_path / "out.zarr"
    with pytest.raises(_Interrupted):
        run_pipeline(PIPE, path, CrashingStore(out, after=5, round_=crash_round), chunk_frames=4,
                     executor=executor)
    assert zarr.open_group(str(out)).attrs["diffraflow"]["complete"] is False
    report = run_pipeline(PIPE, path, out, chunk_frames=4, executor=executor)
    assert report.resumed
    n = report.n_chunks  # 14 chunks per round, 2 rounds
    # the 5th chunk died between its marker and its merge: its partial is recomputed; with
    # threads, chunks finish out of order and only the merged prefix is skipped
    assert report.skipped >= (4 if executor == "inline" else 0) + (n if crash_round == 1 else 0)
    assert report.computed + report.skipped == 2 * n
    _equal(report.results, reference)
    _equal(_read(out), reference)
    assert not (out / "_progress").exists()
    again = run_pipeline(PIPE, path, out, chunk_frames=4)
    assert again.already_complete and again.skipped == 2 * n and again.computed == 0


def test_resume_after_a_failed_chunk_recomputes_only_that_chunk(cube, tmp_path):
    path, frames = cube
    out = tmp_path / "out.zarr"
    pipe = Pipeline([Flaky(fail_at=(8,), times=1, counter_dir=str(tmp_path))])
    with pytest.raises(ChunkFailedError, match="chunk 2 "):
        run_pipeline(pipe, path, out, chunk_frames=4, retries=0)
    report = run_pipeline(pipe, path, out, chunk_frames=4, retries=0)
    assert (report.computed, report.skipped) == (1, report.n_chunks - 1)
    np.testing.assert_array_equal(report.results["test_flaky/total"], frames.sum(axis=(2, 3), dtype=np.float64))


def test_refuses_to_resume_a_different_pipeline_or_chunking(cube, tmp_path):
    path, _ = cube
    out = tmp_path / "out.zarr"
    run_pipeline(Pipeline([FrameSum()]), path, out, chunk_frames=4)
    with pytest.raises(OutputExistsError, match="different pipeline; cannot resume into it .fix: pass --overwrite"):
        run_pipeline(Pipeline([Affine()]), path, out, chunk_frames=4)
    with pytest.raises(OutputExistsError, match="different chunking"):
        run_pipeline(Pipeline([FrameSum()]), path, out, chunk_frames=5)
    report = run_pipeline(Pipeline([Affine()]), path, out, chunk_frames=4, overwrite=True)
    assert report.computed == report.n_chunks


def test_refuses_to_resume_on_a_different_input(cube, tmp_path):
    path, _ = cube
    other, _ = make_cube(tmp_path / "other.zarr", scan_shape=(6, 9), det_shape=(6, 4), chunk_frames=4)
    out = tmp_path / "out.zarr"
    run_pipeline(Pipeline([FrameSum()]), path, out, chunk_frames=4)
    with pytest.raises(OutputExistsError, match="different input"):
        run_pipeline(Pipeline([FrameSum()]), other, out, chunk_frames=4)


def test_refuses_to_write_into_a_scan_cube(cube, tmp_path):
    path, _ = cube
    with pytest.raises(OutputExistsError, match="is the command's input|is a scan_cube store, not a result store"):
        run_pipeline(Pipeline([FrameSum()]), path, path)


def test_results_open_with_xarray(cube, tmp_path):
    path, _ = cube
    out = tmp_path / "out.zarr"
    run_pipeline(PIPE, path, out, chunk_frames=4)
    tree = open_results(out)
    assert tree["test_affine"]["frames"].dims == ("scan_y", "scan_x", "det_y", "det_x")
    assert tree["s"]["sum"].dims == ("det_y", "det_x")
    assert tree["test_centered"]["distance"].dims == ("scan_y", "scan_x")
    attrs = zarr.open_group(str(out)).attrs
    assert attrs["diffraflow"] == {"format_version": 1, "kind": "result", "complete": True}
    assert attrs["results"]["s"]["variables"] == ["sum", "count"]
    assert attrs["run"]["fingerprint"] == PIPE.fingerprint()


def _progress_count(out: Path) -> int:
    folder = out / "_progress" / "round0"
    return len(list(folder.glob("*.done"))) if folder.exists() else 0


def test_sigkill_then_rerun_resumes_with_identical_results(tmp_path):
    """Kill ``diffraflow run`` with SIGKILL half-way, run it again: same results, skipped chunks reported."""
    path, frames = make_cube(tmp_path / "in.zarr", scan_shape=(30, 20), det_shape=(8, 8), chunk_frames=10, seed=2)
    pipeline = write_yaml(tmp_path / "slow.yaml", """
        pipeline: 1
        steps:
          - op: test_slow
            params: {delay: 0.06}
        """)
    out = tmp_path / "out.zarr"
    cmd = [sys.executable, "-m", "diffraflow.flow.cli", "run", str(pipeline), "--input", str(path), "--output", str(out),
           "--plugin", "tests.flow.engine_fixtures", "--scheduler", "threads", "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _progress_count(out) < 20 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: make it slower"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _progress_count(out)
    assert 20 <= done_before < 60

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    skipped = int(rerun.stdout.split("skipped ")[1].split()[0])
    assert skipped >= done_before - 2  # chunks done after the last checkpoint may be recomputed
    assert "of 60 already done" in rerun.stdout

    results = _read(out)
    np.testing.assert_array_equal(results["test_slow/total"], frames.sum(axis=(2, 3), dtype=np.float64))
    np.testing.assert_array_equal(results["test_slow/sum"], frames.sum(axis=(0, 1), dtype=np.float64))
    assert zarr.open_group(str(out)).attrs["diffraflow"]["complete"] is True
