"""The engine's second step: growing sources, iterative operators, materialised frames, one contract (issue 8)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from diffraflow.flow.cli import main
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.pipeline import Pipeline, Step
from diffraflow.flow.results import open_results
from diffraflow.flow.sources import ArraySource
from diffraflow.flow.testing import GrowingArraySource
from diffraflow.operators.base import (
    ChunkContext,
    InputSpec,
    LastPass,
    NextPass,
    Operator,
    OutputSpec,
    param,
    register_operator,
)
from diffraflow.operators.decomposition.incremental_pca import IncrementalPCA
from diffraflow.schemas.backends import get_backend
from diffraflow.schemas.errors import BackendUnavailableError, OutputExistsError, PipelineError

from tests.flow.engine_fixtures import FrameSum, SigSum

EXECUTORS = ["inline", "threads", "local"]


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(3).integers(0, 200, (7, 6, 5, 4)).astype("uint16")


# -- toy operators (registered: workers of a local cluster import them from here) -------------------

@register_operator
@dataclass(frozen=True)
class PowerIteration(Operator):
    """Leading right singular vector of the frames by power iteration: one pass over the data per step.

    Iterates until the vector changes by less than ``tol`` (an NMF-like reduction that decides by itself
    when to stop), then one last pass projects every frame on it.
    """

    name = "test_power_iteration"
    max_iter: int = param(50, doc="most passes")
    tol: float = param(1e-10, doc="stop when the vector moves less than this")

    def max_passes(self) -> int:
        return int(self.max_iter)

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        p = spec.det_shape[0] * spec.det_shape[1]
        return {"vector": OutputSpec("single", "float64", (p,)), "score": OutputSpec("nav", "float64"),
                "passes": OutputSpec("single", "int64")}

    def process(self, frames, ctx: ChunkContext):
        x = np.asarray(frames, np.float64).reshape(len(frames), -1)
        v = ctx.state["v"] if ctx.state else np.ones(x.shape[1]) / np.sqrt(x.shape[1])
        if ctx.final_pass:
            return {"score": x @ v}
        return {"xtxv": x.T @ (x @ v)}

    def finalize(self, partials, ctx: ChunkContext):
        if ctx.final_pass:
            return {"vector": ctx.state["v"], "passes": np.int64(ctx.pass_index + 1)}
        w = partials["xtxv"]
        w = w / np.linalg.norm(w)
        old = ctx.state["v"] if ctx.state else None
        if old is not None and np.linalg.norm(w - old) < self.tol:
            return LastPass({"v": w})
        return NextPass({"v": w})


@register_operator
@dataclass(frozen=True)
class CountingFrames(Operator):
    """A frames step that records every chunk it processes (one file per call) in ``counter_dir``."""

    name = "test_counting_frames"
    counter_dir: str = param("", doc="directory counting calls")
    costly: bool = param(False, doc="unused: expensiveness is a class attribute")

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"frames": OutputSpec("frames", "float32", spec.det_shape)}

    def process(self, frames, ctx: ChunkContext):
        Path(self.counter_dir, f"{os.getpid()}-{threading.get_ident()}-{time.perf_counter_ns()}").touch()
        return {"frames": np.asarray(frames, np.float32) * 2 + 1}


@register_operator
@dataclass(frozen=True)
class ExpensiveFrames(CountingFrames):
    """The same, declared expensive: the engine materialises its frames by itself."""

    name = "test_expensive_frames"
    expensive = True


@register_operator
@dataclass(frozen=True)
class TorchFrameSum(Operator):
    """Per-frame sum computed with torch on the CPU (the torch-cpu backend runs in CI)."""

    name = "test_torch_sum"
    backends = ("torch-cpu", "torch-cuda")

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"total": OutputSpec("nav", "float64")}

    def process(self, frames, ctx: ChunkContext):
        import torch

        assert isinstance(frames, torch.Tensor)
        return {"total": frames.to(torch.float64).reshape(len(frames), -1).sum(dim=1)}


@register_operator
@dataclass(frozen=True)
class OneAtATime(Operator):
    """Records how many chunks of this step run at once in this process."""

    name = "test_one_at_a_time"
    max_concurrency = 1
    _state = {"now": 0, "peak": 0, "lock": threading.Lock()}

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"total": OutputSpec("nav", "float64")}

    def process(self, frames, ctx: ChunkContext):
        with self._state["lock"]:
            self._state["now"] += 1
            self._state["peak"] = max(self._state["peak"], self._state["now"])
        time.sleep(0.01)
        with self._state["lock"]:
            self._state["now"] -= 1
        return {"total": np.asarray(frames, np.float64).reshape(len(frames), -1).sum(axis=1)}


@register_operator
@dataclass(frozen=True)
class FinalizeOnWorker(SigSum):
    """A reduction whose finalize runs as a task on a worker (device_state)."""

    name = "test_finalize_on_worker"
    device_state = True

    def finalize(self, partials, ctx: ChunkContext):
        out = dict(super().finalize(partials, ctx))
        out["where"] = np.int64(threading.current_thread() is threading.main_thread())
        return out

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {**super().resolve(spec), "where": OutputSpec("single", "int64")}


@register_operator
@dataclass(frozen=True)
class Weighted(Operator):
    """Scales frames by a number read from a weights file (a file=True parameter)."""

    name = "test_weighted"
    weights: str = param("", doc="text file holding one number", file=True)

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"total": OutputSpec("nav", "float64")}

    def setup(self, spec, backend="numpy"):
        return float(Path(self.weights).read_text())

    def process(self, frames, ctx: ChunkContext):
        return {"total": ctx.constants * np.asarray(frames, np.float64).reshape(len(frames), -1).sum(axis=1)}


# -- 1. sources that grow ----------------------------------------------------------------------------

@pytest.mark.parametrize("executor", EXECUTORS)
def test_growing_source_gives_the_offline_results_on_every_executor(frames, executor):
    pipe = Pipeline([FrameSum(), SigSum(), IncrementalPCA(n_components=2)])
    offline = run_pipeline(pipe, ArraySource(frames, chunk_frames=4), executor="inline").results
    source = GrowingArraySource(frames, chunk_frames=4, interval=0.03)
    live = run_pipeline(pipe, source, executor=executor, workers=2).results
    assert source.polls > 3  # it really waited for the source to grow
    assert live.keys() == offline.keys()
    for key in offline:
        np.testing.assert_array_equal(live[key], offline[key], err_msg=key)


WRITER = """
import sys, time, numpy as np
from diffraflow.flow.store import create_cube
frames = np.load(sys.argv[2])
with create_cube(sys.argv[1], scan_shape=frames.shape[:2], det_shape=frames.shape[2:], dtype=frames.dtype,
                 attrs={"modality": "ebsd", "detector": {"shape": list(frames.shape[2:])}}, chunk_frames=6,
                 shard_bytes=1, in_place=True) as writer:
    print("started", flush=True)
    for row in frames:
        time.sleep(0.15)
        writer.patterns.append(row)
    writer.finalize()
"""


def test_run_follows_a_cube_being_written_by_another_process(frames, tmp_path, capsys):
    np.save(tmp_path / "frames.npy", frames)
    cube = tmp_path / "live.zarr"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(cube), str(tmp_path / "frames.npy")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "started"
        assert main(["info", str(cube)]) == 0
        assert "acquiring:" in capsys.readouterr().out
        pipe = Pipeline([FrameSum(), IncrementalPCA(n_components=2)])
        t0 = time.perf_counter()
        live = run_pipeline(pipe, cube, tmp_path / "live_results.zarr", executor="threads").results
        assert time.perf_counter() - t0 > 0.5  # it waited for rows that did not exist yet
    finally:
        assert writer.wait(timeout=60) == 0
    offline = run_pipeline(pipe, ArraySource(frames, chunk_frames=6)).results
    for key in offline:
        np.testing.assert_array_equal(live[key], offline[key], err_msg=key)
    assert main(["validate", str(cube)]) == 0


def test_an_aborted_acquisition_is_an_error_not_a_short_result(frames, tmp_path):
    from diffraflow.flow.store import create_cube
    from diffraflow.schemas.errors import InputFileError

    cube = tmp_path / "cut.zarr"
    with pytest.raises(RuntimeError), create_cube(
            cube, scan_shape=frames.shape[:2], det_shape=frames.shape[2:], dtype=frames.dtype,
            attrs={"modality": "ebsd", "detector": {"shape": [5, 4]}}, chunk_frames=6, shard_bytes=1,
            in_place=True) as writer:
        writer.patterns.append(frames[:3].reshape(-1, 5, 4))
        raise RuntimeError("detector stopped")
    assert cube.exists()  # acquired frames are never deleted
    with pytest.raises(InputFileError, match="aborted after 18 of 42 frames"):
        run_pipeline(Pipeline([FrameSum()]), cube)


# -- 2. iterative operators --------------------------------------------------------------------------

@pytest.mark.parametrize("executor", ["inline", "threads"])
def test_iterative_operator_runs_until_it_converges(frames, executor, tmp_path):
    out = tmp_path / "r.zarr"
    report = run_pipeline(Pipeline([PowerIteration()]), frames, out, executor=executor, chunk_frames=5)
    x = frames.reshape(42, -1).astype(np.float64)
    v = np.linalg.svd(x, full_matrices=False)[2][0]
    found = report.results["test_power_iteration/vector"]
    passes = int(report.results["test_power_iteration/passes"])
    assert 2 < passes < 50 and report.n_rounds == passes
    assert abs(abs(found @ v) - 1) < 1e-8
    np.testing.assert_allclose(report.results["test_power_iteration/score"].ravel(), x @ found, rtol=1e-10)


def test_iterative_operator_stops_at_its_maximum(frames):
    report = run_pipeline(Pipeline([PowerIteration(max_iter=3, tol=0.0)]), frames, chunk_frames=5)
    assert int(report.results["test_power_iteration/passes"]) == 3 and report.n_rounds == 3


def test_iterative_run_resumes_after_a_crash_with_identical_results(frames, tmp_path):
    out = tmp_path / "r.zarr"
    full = run_pipeline(Pipeline([PowerIteration()]), frames, tmp_path / "full.zarr", chunk_frames=5).results
    original = PowerIteration.finalize
    calls = {"n": 0}

    def crash_on_fourth(self, partials, ctx):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, partials, ctx)

    PowerIteration.finalize = crash_on_fourth
    try:
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(Pipeline([PowerIteration()]), frames, out, chunk_frames=5)
    finally:
        PowerIteration.finalize = original
    again = run_pipeline(Pipeline([PowerIteration()]), frames, out, chunk_frames=5)
    assert again.resumed and again.skipped >= 3 * 9
    for key in full:
        np.testing.assert_array_equal(again.results[key], full[key])


# -- 3. materialised frames --------------------------------------------------------------------------

def calls(folder: Path) -> int:
    return len(list(folder.iterdir()))


@pytest.mark.parametrize("executor", ["inline", "threads", "local"])
def test_materialised_frames_are_computed_once_for_a_three_pass_reduction(frames, tmp_path, executor):
    counter = tmp_path / "count"
    counter.mkdir()
    steps = [Step(CountingFrames(counter_dir=str(counter)), save=(), materialize=True),
             IncrementalPCA(n_components=2)]
    out = tmp_path / "r.zarr"
    report = run_pipeline(Pipeline(steps), frames, out, executor=executor, workers=2, chunk_frames=6)
    assert calls(counter) == report.n_chunks == 7  # once per chunk, not once per pass
    recomputed = tmp_path / "again"
    recomputed.mkdir()
    plain = run_pipeline(Pipeline([Step(CountingFrames(counter_dir=str(recomputed)), save=(), materialize=False),
                                   IncrementalPCA(n_components=2)]), frames, chunk_frames=6)
    assert calls(recomputed) == 3 * 7
    for key in plain.results:
        np.testing.assert_array_equal(report.results[key], plain.results[key], err_msg=key)
    assert not (out / "_materialized").exists()  # frames not asked to be saved are gone at the end
    assert main(["validate", str(out)]) == 0


def test_expensive_frames_are_materialised_automatically(frames, tmp_path):
    counter = tmp_path / "count"
    counter.mkdir()
    report = run_pipeline(Pipeline([ExpensiveFrames(counter_dir=str(counter)), IncrementalPCA(n_components=2)]),
                          frames, tmp_path / "r.zarr", chunk_frames=6)
    assert calls(counter) == 7
    tree = open_results(tmp_path / "r.zarr")
    np.testing.assert_array_equal(tree["test_expensive_frames"]["frames"].values, frames * 2.0 + 1)
    assert report.results["incremental_pca/factors"].shape == (2, 5, 4)


def test_workers_write_whole_shards_of_frames(frames, tmp_path):
    out = tmp_path / "r.zarr"
    report = run_pipeline(Pipeline([Step(CountingFrames(counter_dir=str(tmp_path)), name="twice")]), frames, out,
                          executor="local", workers=2, chunk_frames=6)
    shards = [p for p in (out / "twice" / "frames" / "c").rglob("*") if p.is_file()]
    assert len(shards) == report.n_chunks  # one shard per region: one writer each
    np.testing.assert_array_equal(report.results["twice/frames"], frames * 2.0 + 1)


def test_materialize_needs_a_frames_step():
    with pytest.raises(PipelineError, match="materialize is set but the step has no frames output"):
        Pipeline([Step(FrameSum(), materialize=True)]).resolve(InputSpec((2, 2), (3, 3), np.dtype("u1")))


# -- 5. one contract ---------------------------------------------------------------------------------

def test_one_backend_definition():
    assert [get_backend(n).gpu for n in ("numpy", "cupy", "torch-cpu", "torch-cuda")] == [False, True, False, True]
    with pytest.raises(BackendUnavailableError, match="torch-cpu or torch-cuda"):
        Pipeline([Step(TorchFrameSum(), backend="torch")]).resolve(InputSpec((1, 1), (2, 2), np.dtype("u1")))
    from diffraflow.schemas.pipeline import pipeline_json_schema

    enum = pipeline_json_schema()["properties"]["steps"]["items"]["properties"]["backend"]["enum"]
    assert enum == ["numpy", "cupy", "torch-cpu", "torch-cuda"]


def test_torch_cpu_operators_run_and_are_not_placed_on_gpus(frames):
    plan = Pipeline([Step(TorchFrameSum(), backend="torch-cpu")]).resolve(InputSpec((7, 6), (5, 4), frames.dtype))
    assert not plan.gpu
    out = run_pipeline(Pipeline([Step(TorchFrameSum(), backend="torch-cpu")]), frames, executor="threads")
    np.testing.assert_array_equal(out.results["test_torch_sum/total"], frames.reshape(7, 6, -1).sum(axis=2))


def test_concurrency_limit_per_step(frames):
    OneAtATime._state.update(now=0, peak=0)
    run_pipeline(Pipeline([OneAtATime()]), frames, executor="threads", workers=4, chunk_frames=2)
    assert OneAtATime._state["peak"] == 1


def test_finalize_runs_on_a_worker_for_device_state_steps(frames):
    report = run_pipeline(Pipeline([FinalizeOnWorker()]), frames, executor="threads", workers=2)
    assert int(report.results["test_finalize_on_worker/where"]) == 0  # not the driver's thread
    np.testing.assert_array_equal(report.results["test_finalize_on_worker/sum"], frames.sum(axis=(0, 1)))


def test_changed_weights_file_is_never_silently_reused(frames, tmp_path):
    weights = tmp_path / "w.txt"
    weights.write_text("2")
    out = tmp_path / "r.zarr"
    first = run_pipeline(Pipeline([Weighted(weights=str(weights))]), frames, out)
    token = Weighted(weights=str(weights)).token()
    time.sleep(0.01)
    weights.write_text("3")
    assert Weighted(weights=str(weights)).token() != token
    with pytest.raises(OutputExistsError, match="different pipeline"):
        run_pipeline(Pipeline([Weighted(weights=str(weights))]), frames, out)
    fresh = run_pipeline(Pipeline([Weighted(weights=str(weights))]), frames)
    np.testing.assert_array_equal(fresh.results["test_weighted/total"], 1.5 * first.results["test_weighted/total"])


def test_engine_and_pipeline_do_not_import_each_other():
    import ast

    source = Path(__file__).resolve().parents[2] / "flow" / "pipeline.py"
    imported = {node.module for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(name.endswith("diffraflow.flow.engine") for name in imported), imported


def test_bind_is_part_of_the_contract():
    assert Operator().bind({"anything": 1}) is not None
    assert "bind" in Operator.__dict__


@dataclass(frozen=True)
class LooseFrames(Operator):
    """Declares float32 frames but computes float64: the next step must still see float32."""

    name = "loose_frames_test"

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"frames": OutputSpec("frames", "float32", spec.det_shape)}

    def process(self, frames, ctx: ChunkContext):
        return {"frames": np.asarray(frames, np.float64) / 3}


@dataclass(frozen=True)
class DtypeProbe(Operator):
    """Records the dtype of the frames it receives."""

    name = "dtype_probe_test"

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"kind": OutputSpec("nav", "int64")}

    def process(self, frames, ctx: ChunkContext):
        assert frames.dtype == ctx.spec.dtype == np.float32, (frames.dtype, ctx.spec.dtype)
        return {"kind": np.zeros(len(frames), np.int64)}


def test_frames_reach_the_next_step_in_their_declared_dtype(frames):
    run_pipeline(Pipeline([Step(LooseFrames(), save=()), DtypeProbe()]), frames, chunk_frames=5)


@dataclass(frozen=True)
class TorchWithHostFrames(TorchFrameSum):
    """Asks for host frames on a torch backend (kernels that move data themselves)."""

    name = "torch_host_frames_test"
    host_frames = True

    def process(self, frames, ctx: ChunkContext):
        assert isinstance(frames, np.ndarray)
        return {"total": np.asarray(frames, np.float64).reshape(len(frames), -1).sum(axis=1)}


def test_host_frames_are_not_converted_for_operators_that_move_them_themselves(frames):
    out = run_pipeline(Pipeline([Step(TorchWithHostFrames(), backend="torch-cpu")]), frames)
    np.testing.assert_array_equal(out.results["torch_host_frames_test/total"], frames.reshape(7, 6, -1).sum(axis=2))


def test_gpu_steps_need_a_scheduler_with_gpu_workers():
    from diffraflow.flow.executors.distributed import DistributedExecutor
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        executor = DistributedExecutor(address=cluster.scheduler_address)
        try:
            with pytest.raises(BackendUnavailableError, match="no worker of this scheduler offers a GPU resource"):
                executor.start(gpu=True)
        finally:
            executor.close()


class LateFirstRegion(GrowingArraySource):
    """Delivers every region but the first, then the first: a shard persisted late."""

    def poll(self, timeout):
        regions, ended = super().poll(timeout)
        if not hasattr(self, "_held"):
            self._held = []
        for region in list(regions):
            if region.index == 0:
                self._held.append(region)
                regions.remove(region)
        if ended and self._held:
            regions, self._held = regions + self._held, []
        return regions, ended and not self._held


@pytest.mark.parametrize("executor", ["inline", "threads"])
def test_a_region_arriving_after_later_ones_does_not_stall_reductions(frames, executor):
    pipe = Pipeline([SigSum(), IncrementalPCA(n_components=2)])
    offline = run_pipeline(pipe, ArraySource(frames, chunk_frames=1)).results
    late = run_pipeline(pipe, LateFirstRegion(frames, chunk_frames=1, interval=0.0), executor=executor,
                        window=2).results
    for key in offline:
        np.testing.assert_array_equal(late[key], offline[key], err_msg=key)
