"""The conformance suite itself (diffraflow.flow.testing): it catches what it claims to, and needs no tests/ code."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from diffraflow.flow.testing import (
    OperatorConformance,
    UnevenArraySource,
    check_backends,
    check_chunking,
    check_merge_order,
    run_operator,
    synthetic_frames,
)
from diffraflow.operators.base import ChunkContext, InputSpec, Operator, OutputSpec
from diffraflow.schemas.backends import backend_available
from hypothesis import given, settings
from hypothesis import strategies as st


@dataclass(frozen=True)
class FrameEnergy(Operator):
    """Per-frame energy and the scan's summed frame, written once for numpy and torch (``ctx.xp``)."""

    name = "test_frame_energy"
    backends = ("numpy", "torch-cpu")

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"energy": OutputSpec("nav", "float64"), "total": OutputSpec("sig", "float64", spec.det_shape)}

    def process(self, frames, ctx: ChunkContext):
        x = ctx.xp.asarray(frames, dtype=ctx.xp.float64)
        return {"energy": (x * x).sum(axis=(1, 2)), "total": x.sum(axis=0)}


@dataclass(frozen=True)
class WrongOnTorch(FrameEnergy):
    """A kernel whose torch path drifts from its numpy path: check_backends must notice."""

    name = "test_wrong_on_torch"

    def process(self, frames, ctx: ChunkContext):
        out = super().process(frames, ctx)
        if ctx.backend != "numpy":
            out["energy"] = out["energy"] * 1.001
        return out


@dataclass(frozen=True)
class GpuDeclared(FrameEnergy):
    """Declares every backend, so the mixin makes one test per backend (CUDA ones marked gpu)."""

    name = "test_gpu_declared"
    backends = ("numpy", "cupy", "torch-cpu", "torch-cuda")


@dataclass(frozen=True)
class KeepsFirst(Operator):
    """A merge that keeps its left side: right only when partials arrive in scan order."""

    name = "test_keeps_first"

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"first": OutputSpec("sig", "float64", spec.det_shape)}

    def process(self, frames, ctx: ChunkContext):
        return {"first": frames[0].astype(np.float64)}

    def merge(self, name, left, right):
        return left


@dataclass(frozen=True)
class FloatSum(Operator):
    """Sums float32 frames in float32: chunking changes the rounding a little, never much."""

    name = "test_float_sum"

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"sum": OutputSpec("sig", "float32", spec.det_shape)}

    def process(self, frames, ctx: ChunkContext):
        return {"sum": frames.sum(axis=0, dtype=np.float32)}


class TestFrameEnergyConformance(OperatorConformance):
    """A numpy + torch-cpu operator: its backend test runs on every machine with PyTorch."""

    operator = FrameEnergy()
    rtol = 1e-12

    def reference(self, frames):
        f = frames.astype(np.float64)
        return {"energy": (f * f).sum(axis=(2, 3)), "total": f.sum(axis=(0, 1))}


def test_backend_check_runs_torch_cpu_and_catches_a_drifting_kernel():
    frames = synthetic_frames((3, 4), (5, 6), "uint16", seed=1)
    assert check_backends(FrameEnergy(), frames) == ["torch-cpu"]
    with pytest.raises(AssertionError, match="backend torch-cpu vs numpy: energy"):
        check_backends(WrongOnTorch(), frames, rtol=1e-6)
    assert check_backends(WrongOnTorch(), frames, rtol=2e-3) == ["torch-cpu"]  # within a stated tolerance


def test_mixin_gives_each_backend_a_test_and_marks_cuda_ones_gpu():
    calls = []
    metafunc = SimpleNamespace(fixturenames=["self", "conformance_backend"],
                               config=SimpleNamespace(getini=lambda name: ["gpu: needs CUDA", "slow: long"]),
                               parametrize=lambda name, params: calls.append((name, params)))

    class TestDeclared(OperatorConformance):
        operator = GpuDeclared()

    TestDeclared().pytest_generate_tests(metafunc)
    [(name, params)] = calls
    assert name == "conformance_backend"
    assert [p.values[0] for p in params] == ["cupy", "torch-cpu", "torch-cuda"]
    assert [[m.name for m in p.marks] for p in params] == [["gpu"], [], ["gpu"]]
    calls.clear()
    metafunc.config = SimpleNamespace(getini=lambda name: [])  # a project without a gpu marker: no mark
    TestDeclared().pytest_generate_tests(metafunc)
    assert all(not p.marks for p in calls[0][1])


@pytest.mark.skipif(backend_available("cupy"), reason="CuPy can run here: nothing is skipped")
def test_unavailable_backend_is_skipped_naming_it():
    class TestDeclared(OperatorConformance):
        operator = GpuDeclared()

    with pytest.raises(pytest.skip.Exception, match="backend 'cupy' is not available on this machine"):
        TestDeclared().test_conformance_backend("cupy")


def test_numpy_only_operator_skips_the_backend_test():
    class TestNumpyOnly(OperatorConformance):
        operator = KeepsFirst()

    with pytest.raises(pytest.skip.Exception, match="declares only the numpy backend"):
        TestNumpyOnly().test_conformance_backend(None)


def test_merge_order_check_catches_an_order_dependent_merge():
    frames = synthetic_frames((3, 4), (2, 3), seed=2)
    first = run_operator(KeepsFirst(), frames, chunk_frames=2)["first"]
    np.testing.assert_array_equal(first, frames[0, 0])  # scan order: looks right
    with pytest.raises(AssertionError, match="regions in reverse order vs scan order"):
        check_merge_order(KeepsFirst(), frames)


def test_chunking_check_holds_within_tolerance_and_fails_outside_it():
    frames = synthetic_frames((6, 7), (3, 3), "float32", seed=3) * np.float32(1e4) + np.float32(1e-3)
    check_chunking(FloatSum(), frames, (1, (2, 5, 3), None), rtol=1e-5)
    with pytest.raises(AssertionError, match="chunk_frames="):
        check_chunking(FloatSum(), frames, (1, (2, 5, 3), None), rtol=0.0)


@settings(max_examples=60, deadline=None)
@given(scan=st.tuples(st.integers(1, 6), st.integers(1, 7)),
       runs=st.lists(st.integers(1, 15), min_size=1, max_size=4),
       order=st.sampled_from(["scan", "reverse", "shuffled"]))
def test_uneven_regions_cover_every_frame_once(scan, runs, order):
    src = UnevenArraySource(np.zeros((*scan, 1, 1), "uint8"), chunks=tuple(runs), order=order)
    cover = np.zeros(scan, int)
    regions = list(src.regions())
    assert [r.index for r in regions] == list(range(len(regions)))
    for r in regions:
        assert r.n > 0 and (r.y[1] - r.y[0] == 1 or r.x == (0, scan[1]))  # one row's run, or whole rows
        cover[r.y[0]:r.y[1], r.x[0]:r.x[1]] += 1
    assert (cover == 1).all()


def test_uneven_chunks_need_in_memory_results(tmp_path):
    with pytest.raises(ValueError, match="in-memory results"):
        run_operator(FrameEnergy(), synthetic_frames((2, 3), (2, 2)), chunk_frames=(2, 1), output=tmp_path / "r.zarr")
    with pytest.raises(ValueError, match="not a permutation"):
        UnevenArraySource(np.zeros((2, 2, 1, 1)), chunks=1, order=[0, 1, 1, 2])


def test_suite_imports_neither_pytest_nor_tests():
    code = ("import sys, diffraflow.flow.testing; "
            "bad = sorted(m for m in sys.modules if m == 'pytest' or m == 'tests' or m.startswith('tests.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stdout + done.stderr
