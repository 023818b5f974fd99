"""Executors: identical results inline / threads / LocalCluster; failures, retries, constants, window."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.executors import InlineExecutor, ThreadExecutor, get_executor
from diffraflow.flow.executors.base import Executor, clear_constants
from diffraflow.flow.pipeline import Pipeline
from diffraflow.schemas.errors import ChunkFailedError, PipelineError

from tests.flow.engine_fixtures import Affine, Centered, Flaky, FrameSum, SigSum, make_cube

PIPE = Pipeline([Affine(crop=1), Centered(), ("s", SigSum()), ("t", FrameSum())])


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    # 7 x 11 scan, stored in 5-frame chunks (rows split): awkward on purpose
    path, frames = make_cube(tmp_path_factory.mktemp("cube") / "in.zarr", scan_shape=(7, 11), det_shape=(6, 5),
                             chunk_frames=5, seed=4)
    return path, frames


@pytest.fixture(scope="module")
def local_cluster():
    from diffraflow.flow.executors.distributed import DistributedExecutor

    ex = DistributedExecutor(n_workers=2, threads_per_worker=1, processes=True)
    ex.start()
    yield ex
    ex.close()


def _equal(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("chunk_frames", [1, 3, 13, None])
def test_inline_and_threads_agree_exactly(cube, chunk_frames):
    path, frames = cube
    inline = run_pipeline(PIPE, path, executor="inline", chunk_frames=chunk_frames).results
    threads = run_pipeline(PIPE, path, executor="threads", workers=3, chunk_frames=chunk_frames).results
    _equal(inline, threads)
    np.testing.assert_allclose(inline["t/total"], (frames[:, :, :5, :4].astype(np.float64) * 2 + 1).sum(axis=(2, 3)))


def test_local_cluster_agrees_exactly_and_writes_a_store(cube, local_cluster, tmp_path):
    path, _ = cube
    reference = run_pipeline(PIPE, path, executor="inline", chunk_frames=3).results
    report = run_pipeline(PIPE, path, tmp_path / "out.zarr", executor=local_cluster, chunk_frames=3)
    _equal(report.results, reference)
    assert local_cluster.dashboard_link.startswith("http://127.0.0.1:")


def test_local_cluster_retries_a_transient_failure(cube, local_cluster, tmp_path):
    path, frames = cube
    op = Flaky(fail_at=(3, 9), times=2, counter_dir=str(tmp_path))
    report = run_pipeline(Pipeline([op]), path, executor=local_cluster, chunk_frames=3, retries=2)
    assert report.retried == 4
    np.testing.assert_array_equal(report.results["test_flaky/total"], frames.sum(axis=(2, 3), dtype=np.float64))


def test_transient_failures_are_retried_on_threads(cube, tmp_path):
    path, frames = cube
    op = Flaky(fail_at=(0, 6), times=1, counter_dir=str(tmp_path))
    report = run_pipeline(Pipeline([op]), path, executor="threads", chunk_frames=3, retries=1)
    assert report.retried == 2
    np.testing.assert_array_equal(report.results["test_flaky/total"], frames.sum(axis=(2, 3), dtype=np.float64))


@pytest.mark.parametrize("executor", ["inline", "threads"])
def test_a_chunk_that_keeps_failing_is_named_and_other_results_are_kept(cube, tmp_path, executor):
    path, frames = cube
    out = tmp_path / "out.zarr"
    with pytest.raises(ChunkFailedError) as info:
        run_pipeline(Pipeline([Flaky(fail_at=(6,))]), path, out, executor=executor, chunk_frames=3, retries=1)
    text = str(info.value)
    assert "chunk 2 (scan_y 0:1, scan_x 6:9)" in text and "ValueError: boom at frame 6" in text
    assert "after 2 attempts" in text and "\n" not in text
    import zarr

    total = zarr.open_group(str(out), mode="r")["test_flaky/total"][...]
    expected = frames.sum(axis=(2, 3), dtype=np.float64)
    assert np.isnan(total[0, 6:9]).all()
    mask = np.ones(total.shape, bool)
    mask[0, 6:9] = False
    np.testing.assert_array_equal(total[mask], expected[mask])


def test_contract_violations_stop_at_once(cube):
    from dataclasses import dataclass

    from diffraflow.operators.base import OutputSpec

    @dataclass(frozen=True)
    class Wrong(FrameSum):
        def resolve(self, spec):
            return {"total": OutputSpec("nav", "float64", (2,))}

    with pytest.raises(PipelineError, match=r"returned shape \(3,\) for 3 frames, resolve\(\) declared \(3, 2\)"):
        run_pipeline(Pipeline([Wrong()]), cube[0], chunk_frames=3)


class _CountingSetup(FrameSum):
    calls = 0
    lock = threading.Lock()

    def setup(self, spec, backend="numpy"):
        with _CountingSetup.lock:
            _CountingSetup.calls += 1
        return np.float64(2.0)

    def process(self, frames, ctx):
        return {"total": frames.reshape(len(frames), -1).sum(axis=1, dtype=np.float64) * ctx.constants}


def test_constants_are_built_once_per_process(cube):
    from dataclasses import dataclass

    op = dataclass(frozen=True)(type("Counting", (_CountingSetup,), {"__module__": __name__}))()
    clear_constants()
    report = run_pipeline(Pipeline([op]), cube[0], executor="threads", workers=4, chunk_frames=1)
    assert _CountingSetup.calls == 1
    assert report.computed == 77


class _Recording(Executor):
    """Threads, recording the largest number of tasks in flight."""

    def __init__(self):
        self.inner = ThreadExecutor(2)
        self.in_flight = 0
        self.peak = 0

    @property
    def workers(self):
        return 2

    def submit(self, key, fn, *args, gpu=False):
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.inner.submit(key, fn, *args)

    def next_done(self, timeout=None):
        out = self.inner.next_done(timeout)
        if out is not None:
            self.in_flight -= 1
        return out

    def close(self):
        self.inner.close()


def test_in_flight_work_is_bounded_by_the_window(cube):
    ex = _Recording()
    with ex:
        report = run_pipeline(PIPE, cube[0], executor=ex, chunk_frames=1, window=3)
    assert report.computed == 77 * 2 and ex.peak == 3


def test_get_executor():
    assert isinstance(get_executor("inline"), InlineExecutor)
    assert get_executor("threads", 3).workers == 3
    with pytest.raises(PipelineError, match="unknown scheduler 'fast'"):
        get_executor("fast")
