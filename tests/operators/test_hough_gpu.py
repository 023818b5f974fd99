# ruff: noqa: F811 - pytest fixtures are imported from hough_fixtures and used as arguments
"""The CUDA path of the Hough indexer, tested without a GPU.

* The CuPy array code (image stages, batch pipeline) runs here with NumPy and
  SciPy through the same functions (``gpu.SimulatorOps``).
* The numba-cuda kernel runs in numba's CUDA simulator, which must be switched
  on before numba is imported: those tests start a fresh interpreter with
  ``NUMBA_ENABLE_CUDASIM=1`` (:func:`_simulate`) and compare what it returns
  with the CPU numba kernel on the same filtered transform. The simulator is a
  Python thread per CUDA thread: inputs stay at a few 40x40 patterns, larger
  ones are marked slow.
* ``@pytest.mark.gpu`` tests run the real thing where CUDA exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from diffraflow.operators.indexing import HoughIndexer, gpu
from diffraflow.schemas.errors import BackendUnavailableError, SchemaError

from tests.operators.hough_fixtures import (  # noqa: F401 - fixtures
    fe_phase,
    kinematical_mps,
    make_detector,
    ni_dynamical_mp,
    ni_phase,
    random_rotations,
)

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ helpers
def _angles_deg(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Rotation angle between two quaternion sets (no symmetry: the two paths must give the same one)."""
    dot = np.clip(np.abs(np.sum(q1 * q2, axis=1)), 0.0, 1.0)
    return np.degrees(2 * np.arccos(dot))


def _reference(ix: HoughIndexer, flat: np.ndarray, pcs: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """The CPU numba voting kernel on the filtered transforms the CUDA path computes, batch by batch.

    Batches matter: a product over one column and over several sum in another
    order, so the transforms (not the voting) differ in the last float32 bit.
    """
    st = gpu.build_state(ix, gpu.SimulatorOps(), radon=ix.gpu_radon)
    parts = []
    for a in range(0, len(flat), batch):
        b = min(a + batch, len(flat))
        parts.append(gpu.index_filtered(ix, gpu.image_stages(flat[a:b], st), pcs if len(pcs) == 1 else pcs[a:b]))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _assert_same_results(got: dict, ref: dict, max_deg: float = 1e-4) -> None:
    for key in ("phase_id", "n_bands", "confidence", "pattern_quality"):
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    np.testing.assert_allclose(got["fit"], ref["fit"], rtol=1e-5, atol=1e-6, err_msg="fit")
    angles = _angles_deg(got["quaternion"], ref["quaternion"])
    assert angles.max() < max_deg, angles


def _simulate(tmp_path: Path, job: dict, arrays: dict[str, np.ndarray], tpb: int = 32, timeout: int = 600) -> dict:
    """Run :func:`_simulator_main` in a fresh interpreter with numba's CUDA simulator on."""
    np.savez(tmp_path / "in.npz", **arrays)
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "DIFFRAFLOW_CUDA_TPB": str(tpb)}
    code = ("import sys; from tests.operators.test_hough_gpu import _simulator_main; "
            "_simulator_main(sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, cwd=str(ROOT), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    with np.load(tmp_path / "out.npz") as out:
        return {k: out[k] for k in out.files}


def _indexer_from_job(job: dict) -> HoughIndexer:
    from diffraflow.operators.crystallography import get_phase

    det = make_detector(tuple(job["shape"]), tuple(job["pc"]))
    if job.get("per_point_pc"):
        det.pc = np.asarray(job["per_point_pc"])
    return HoughIndexer([get_phase(p) for p in job["phases"]], det, backend="cpu", **job.get("options", {}))


def _simulator_main(folder: str) -> None:  # pragma: no cover - runs in the subprocess
    """Index ``in.npz`` with the CUDA path in the simulator; write ``out.npz``."""
    from numba import config

    assert config.ENABLE_CUDASIM, "NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported"
    folder_path = Path(folder)
    job = json.loads((folder_path / "job.json").read_text())
    with np.load(folder_path / "in.npz") as data:
        arrays = {k: data[k] for k in data.files}
    # A small grid, so that one block loops over several patterns (persistent grid).
    gpu.BLOCKS_PER_SM = job.get("blocks_per_sm", 1)
    out: dict[str, np.ndarray] = {}
    if "patterns" in arrays:
        ix = _indexer_from_job(job)
        ix._gpu_ops = gpu.SimulatorOps(sm_count=1)
        flat = arrays["patterns"].reshape(len(arrays["patterns"]), -1)
        pcs = ix._chunk_pcs(len(flat), None, np.arange(len(flat)))
        res = gpu.index_chunk_cuda(ix, flat, pcs, batch_size=job["batch"])
        out.update({f"host_{k}": v for k, v in res.items()})
        n_dev = job.get("device_input", 0)
        if n_dev:
            frames = ix._gpu_ops.device_array(arrays["patterns"][:n_dev])
            res = ix.index_chunk(frames) if job.get("via_index_chunk") else gpu.index_chunk_cuda(
                ix, frames.reshape(n_dev, -1), pcs[:n_dev] if len(pcs) > 1 else pcs, batch_size=job["batch"])
            out.update({f"device_{k}": v for k, v in res.items()})
    if "wahba" in arrays:
        out["wahba"] = _wahba_in_simulator(arrays["wahba"])
    np.savez(folder_path / "out.npz", **out)


def _wahba_each_block(b_all, r_all):  # pragma: no cover - a CUDA kernel body, jitted in the subprocess
    # ``cuda`` is looked up in this module's globals, where the simulator swaps in its own.
    k = cuda.blockIdx.x
    if cuda.threadIdx.x == 0:
        cuda_kernels._wahba(b_all[k], r_all[k])


def _wahba_in_simulator(bs: np.ndarray) -> np.ndarray:  # pragma: no cover - runs in the subprocess
    global cuda, cuda_kernels
    from diffraflow.operators.indexing import cuda_kernels
    from numba import cuda

    rs = np.zeros_like(bs)
    cuda.jit(_wahba_each_block)[len(bs), 1](bs, rs)
    return rs


# ---------------------------------------------------------- NumPy xp code
@pytest.fixture(scope="module")
def ni40(ni_phase, ni_dynamical_mp):
    """Five 40x40 Ni patterns (dose 20) and a blank one (no band: not indexed)."""
    from diffraflow.operators.indexing.testing import simulate_patterns

    det = make_detector((40, 40))
    pats = simulate_patterns(ni_dynamical_mp, random_rotations(5, seed=31), det, dose=20, seed=4)
    return det, np.concatenate([pats, np.zeros((1, 40, 40), np.float32)]).astype(np.uint16)


def test_image_stages_equal_cpu_blocks_in_pattern_major_layout(ni_phase, ni40):
    """NumPy through the xp code = the numba CPU kernel's prepare/Radon/butterfly blocks, transposed."""
    from diffraflow.operators.indexing.bands import butterfly_block
    from diffraflow.operators.indexing.kernel import prepare_block
    from diffraflow.operators.indexing.radon import radon_block

    det, pats = ni40
    ix = HoughIndexer([ni_phase], det, backend="cpu", dynamic_background=True)
    flat = pats.reshape(len(pats), -1)
    n, (T, R) = len(flat), ix.valid.shape
    x = np.empty((ix.plan.mask_index.size, n), np.float32)
    prepare_block(flat, 0, n, ix.plan.mask_index, ix._bg, ix._bg_mode, ix._dyn_basis, ix._dyn_pinv, x)
    rad, tmp, filt = (np.empty((T, R, n), np.float32) for _ in range(3))
    radon_block(x, ix.plan.lut_bin, ix.plan.lut_weight, ix.plan.inv_count, rad)
    butterfly_block(rad, ix.k_rho, ix.k_theta, tmp, filt)
    for mode in ("sparse", "dense"):
        st = gpu.build_state(ix, gpu.SimulatorOps(), radon=mode)
        got = gpu.image_stages(flat, st)
        assert got.shape == (n, T, R) and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, np.moveaxis(filt, -1, 0), atol=2e-5, rtol=1e-4, err_msg=mode)


def test_batch_size_follows_free_memory():
    sizes = [gpu.batch_size_for(free, 3600, 3600, 180, 87) for free in (0, 2**26, 2**30, 2**34, 2**40)]
    assert sizes[0] == 1 and sizes == sorted(sizes) and sizes[-1] == gpu.BATCH_LIMIT
    # Three batches in flight use at most half the memory.
    per = 2 * 3600 + 16 * 3600 + 28 * 180 * 87 + 64
    assert 3 * sizes[2] * per <= 2**29
    # Bigger patterns, smaller batches.
    assert gpu.batch_size_for(2**30, 14400, 14400, 180, 171) < sizes[2]


def test_cuda_limits_refused_before_data(ni_phase):
    det = make_detector((20, 20))
    ix = HoughIndexer([ni_phase], det, n_bands=33, backend="cpu")
    with pytest.raises(SchemaError, match="33 bands exceed the CUDA kernel's 32"):
        ix.check_cuda_limits()
    with pytest.raises(SchemaError, match="n_select: 40 hypotheses"):
        HoughIndexer([ni_phase], det, n_select=40, backend="cpu").check_cuda_limits()
    HoughIndexer([ni_phase], det, backend="cpu").check_cuda_limits()  # the defaults fit
    with pytest.raises(SchemaError, match="gpu_radon"):
        HoughIndexer([ni_phase], det, gpu_radon="csr")
    with pytest.raises(SchemaError, match="gpu_batch_size"):
        HoughIndexer([ni_phase], det, gpu_batch_size=0)
    # The pipeline step says so before the run, not on its first chunk.
    from diffraflow.operators.base import InputSpec, build_operator
    from diffraflow.schemas.errors import PipelineError

    op = build_operator("hough_index", {"phases": ["ni"], "pc": [0.4, 0.2, 0.5], "n_bands": 40})
    with pytest.raises(PipelineError, match="hough_index.n_bands: 40 bands exceed the CUDA kernel's 32"):
        op.warm_up(InputSpec((1, 1), (20, 20), np.dtype("uint8")), "cupy", print)


def test_batch_pipeline_with_cpu_voting_equals_reference(ni_phase, ni40):
    """Slots, pinned buffers, copies and batch bookkeeping (NumPy device), host and device input alike."""
    det, pats = ni40
    ix = HoughIndexer([ni_phase], det, backend="cpu", gpu_radon="sparse")
    ops = gpu.SimulatorOps(sm_count=1)
    flat = pats.reshape(len(pats), -1)
    ref = _reference(ix, flat, ix.pcs, batch=2)
    got = gpu.index_chunk_cuda(ix, flat, ix.pcs, ops=ops, batch_size=2, vote="cpu")
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert got["phase_id"][-1] == -1 and got["n_bands"][-1] == 0  # the blank pattern
    on_device = gpu.index_chunk_cuda(ix, ops.device_array(flat), ix.pcs, ops=ops, batch_size=2, vote="cpu")
    for key in ref:
        np.testing.assert_array_equal(on_device[key], ref[key], err_msg=key)
    # Automatic batch size from the pretended free memory: 8 MiB hold four 40x40 patterns per batch.
    scratch = gpu.N_SLOTS * gpu.BLOCKS_PER_SM * 36 * 2048
    assert gpu.batch_size_for(2**23, 2 * 1600, ix.plan.mask_index.size, *ix.valid.shape) == 4
    auto = gpu.index_chunk_cuda(ix, flat, ix.pcs, ops=gpu.SimulatorOps(free_bytes=2**23 + scratch, sm_count=1),
                                vote="cpu")
    ref4 = _reference(ix, flat, ix.pcs, batch=4)
    for key in ref:
        np.testing.assert_array_equal(auto[key], ref4[key], err_msg=key)
    with pytest.raises(SchemaError, match="voting device"):
        gpu.index_chunk_cuda(ix, flat, ix.pcs, ops=ops, vote="tpu")


def test_simulator_ops_refuse_to_launch_without_the_simulator():
    from numba import config

    if config.ENABLE_CUDASIM:
        pytest.skip("this interpreter runs numba's CUDA simulator")
    with pytest.raises(BackendUnavailableError, match="NUMBA_ENABLE_CUDASIM=1"):
        gpu.SimulatorOps().launch(None, 1, 32, None, ())


def test_hough_index_hands_device_frames_to_the_gpu_path_untouched(monkeypatch):
    """``backend: cupy`` and CuPy frames from a previous GPU step: no host round trip."""
    from diffraflow.operators.base import ChunkContext, InputSpec, build_operator

    spec = InputSpec((1, 3), (40, 40), np.dtype("uint16"), {"modality": "ebsd", "detector": {"shape": [40, 40]}})
    op = build_operator("hough_index", {"phases": ["ni"], "pc": [0.42, 0.22, 0.5]})
    constants = op.setup(spec, "numpy")
    indexer = constants["indexer"]
    ops = gpu.SimulatorOps(sm_count=1)
    indexer.backend, indexer._gpu_ops = "cuda", ops  # what setup(spec, "cupy") gives on a GPU machine
    seen = []
    real = gpu.index_chunk_cuda

    def fake(ix, pats, pcs, ops=None, batch_size=None, vote="gpu"):
        seen.append(ix._gpu_ops.is_device_array(pats))
        return real(ix, pats, pcs, ops=ops, vote="cpu")  # the kernel itself needs the simulator

    monkeypatch.setattr(gpu, "index_chunk_cuda", fake)
    frames = ops.device_array(np.zeros((3, 40, 40), np.uint16))
    ctx = ChunkContext(spec=spec, constants=constants, backend="cupy")
    out = op.process(frames, ctx)
    assert seen == [True] and out["phase_id"].tolist() == [-1, -1, -1]


def test_indexer_pickles_without_device_state(ni_phase):
    import pickle

    ix = HoughIndexer([ni_phase], make_detector((20, 20)), backend="cpu")
    ix._gpu_ops = gpu.SimulatorOps()
    gpu.state_for(ix)
    assert ix._gpu_states
    back = pickle.loads(pickle.dumps(ix))
    assert back._gpu_states == {} and back._gpu_ops is None and back.backend == "cpu"


# ------------------------------------------------------- kernel, simulated
def test_wahba_solver_equals_svd_in_simulator(tmp_path):
    """Horn's quaternion solution of Wahba's problem = the CPU's SVD one, degenerate inputs included."""
    rng = np.random.default_rng(5)
    bs = rng.normal(size=(6, 3, 3))
    bs[4] = np.outer([1.0, 0, 0], [0, 1.0, 0]) + np.outer([0, 1.0, 0], [0, 0, 1.0])  # rank 2: two bands
    bs[5] = np.diag([3.0, 2.0, -1.0])  # det < 0: the best rotation is not the polar factor
    got = _simulate(tmp_path, {}, {"wahba": bs})["wahba"]
    for b, r in zip(bs, got, strict=True):
        u, _, vt = np.linalg.svd(b)
        u[:, 2] *= np.linalg.det(u) * np.linalg.det(vt)
        np.testing.assert_allclose(r, u @ vt, atol=1e-12)


def test_cuda_kernel_equals_cpu_kernel_in_simulator(tmp_path, ni40):
    """Peaks, bands, votes, fit, re-ranking and refinement of the CUDA kernel = the CPU kernel's.

    Five Ni patterns and a blank one in batches of two (three slots rotate),
    one thread block looping over each batch, host input and device input.
    """
    det, pats = ni40
    job = {"shape": [40, 40], "pc": [0.42, 0.22, 0.5], "phases": ["ni"], "batch": 2, "device_input": 2,
           "options": {"gpu_radon": "sparse"}}
    got = _simulate(tmp_path, job, {"patterns": pats})
    ix = _indexer_from_job(job)
    flat = pats.reshape(len(pats), -1)
    ref = _reference(ix, flat, ix.pcs, batch=2)
    _assert_same_results({k[5:]: v for k, v in got.items() if k.startswith("host_")}, ref)
    assert (ref["phase_id"][:5] == 0).all() and ref["phase_id"][5] == -1
    # Device frames are indexed in place, to the same result.
    for key in ref:
        np.testing.assert_array_equal(got[f"device_{key}"], got[f"host_{key}"][:2], err_msg=key)


@pytest.mark.slow  # about a minute in the simulator
def test_cuda_kernel_two_phases_per_point_pc_production_block_size(tmp_path, kinematical_mps, fe_phase):
    """Ni and Fe patterns, one PC per pattern, 128 threads per block, through ``index_chunk`` on device input."""
    from diffraflow.operators.indexing.testing import simulate_patterns

    pcs = np.array([[0.42, 0.22, 0.50], [0.44, 0.20, 0.52], [0.40, 0.24, 0.48], [0.43, 0.21, 0.51]])
    pats = []
    for k, name in enumerate(("ni", "fe", "ni", "fe")):
        det = make_detector((40, 40), tuple(pcs[k]))
        pats.append(simulate_patterns(kinematical_mps[name], random_rotations(1, seed=50 + k), det, dose=40, seed=k))
    pats = np.concatenate(pats)
    job = {"shape": [40, 40], "pc": [0.42, 0.22, 0.5], "phases": ["ni", "fe"], "batch": 3, "device_input": 4,
           "via_index_chunk": True, "per_point_pc": pcs.tolist(), "blocks_per_sm": 2,
           "options": {"gpu_radon": "sparse"}}
    got = _simulate(tmp_path, job, {"patterns": pats}, tpb=128, timeout=1200)
    ix = _indexer_from_job(job)
    ref = _reference(ix, pats.reshape(len(pats), -1), pcs, batch=3)
    _assert_same_results({k[5:]: v for k, v in got.items() if k.startswith("host_")}, ref)
    assert ref["phase_id"].tolist() == [0, 1, 0, 1]
    # index_chunk (device frames, the indexer's own phase ids) and batches of 3: 3 + 1 patterns.
    ids = np.asarray(ix._phase_ids)[got["host_phase_id"]]
    np.testing.assert_array_equal(got["device_phase_id"], ids)


@pytest.mark.slow  # several minutes in the simulator
def test_cuda_path_agrees_with_cpu_path_statistics(tmp_path, ni_phase, ni_dynamical_mp):
    """Against the whole CPU path (its own float32 image stages): the agreement statistics of the issue."""
    from diffraflow.operators.indexing.testing import simulate_patterns

    det = make_detector((60, 60))
    pats = simulate_patterns(ni_dynamical_mp, random_rotations(12, seed=77), det, dose=20, seed=9)
    job = {"shape": [60, 60], "pc": [0.42, 0.22, 0.5], "phases": ["ni"], "batch": 12, "blocks_per_sm": 4}
    got = _simulate(tmp_path, job, {"patterns": pats}, timeout=1800)
    cpu = HoughIndexer([ni_phase], det, backend="cpu").index_chunk(pats)
    angles = _angles_deg(got["host_quaternion"], cpu["quaternion"])
    same_phase = got["host_phase_id"] == cpu["phase_id"]
    # Near-ties (a last-bit difference in the image stages choosing another peak or hypothesis) are allowed
    # to differ; on 12 patterns none is expected.
    assert np.mean(angles < 0.01) >= 11 / 12 and same_phase.all(), (angles, got["host_phase_id"], cpu["phase_id"])


# ----------------------------------------------------------------- real GPU
@pytest.mark.gpu
def test_gpu_path_agrees_with_cpu_path(ni_phase, ni_dynamical_mp):
    from diffraflow.operators.indexing.testing import simulate_patterns

    det = make_detector((60, 60))
    pats = simulate_patterns(ni_dynamical_mp, random_rotations(500, seed=3), det, dose=20, seed=2).astype(np.uint8)
    cpu = HoughIndexer([ni_phase], det, backend="cpu").index_chunk(pats)
    cuda_ix = HoughIndexer([ni_phase], det, backend="cuda", gpu_batch_size=128)
    got = cuda_ix.index_chunk(pats)
    angles = _angles_deg(got["quaternion"], cpu["quaternion"])
    assert np.mean(angles < 0.01) >= 0.99 and np.mean(got["phase_id"] == cpu["phase_id"]) >= 0.99
    import cupy

    on_device = cuda_ix.index_chunk(cupy.asarray(pats))
    np.testing.assert_array_equal(on_device["phase_id"], got["phase_id"])
    assert _angles_deg(on_device["quaternion"], got["quaternion"]).max() < 0.01


@pytest.mark.gpu
def test_gpu_image_stages_cupy_equal_numpy(ni_phase, ni40):
    import cupy

    det, pats = ni40
    ix = HoughIndexer([ni_phase], det, backend="cuda")
    flat = pats.reshape(len(pats), -1)
    for mode in ("sparse", "dense"):
        ref = gpu.image_stages(flat, gpu.build_state(ix, gpu.SimulatorOps(), radon=mode))
        got = gpu.image_stages(cupy.asarray(flat), gpu.build_state(ix, gpu.CupyOps(), radon=mode))
        np.testing.assert_allclose(cupy.asnumpy(got), ref, atol=2e-5, rtol=1e-4, err_msg=mode)


@pytest.mark.gpu
@pytest.mark.parametrize("scheduler", ["inline", "threads", "local"])
def test_gpu_pipeline_cupy_frames_into_hough_index(tmp_path, scheduler):
    """A GPU preprocessing step hands CuPy frames to ``hough_index`` on CUDA; same map as the CPU pipeline.

    ``local`` starts dask-cuda's LocalCUDACluster (one worker per GPU, GPU steps placed by the ``GPU``
    resource), each worker building its own indexer constants on its own device.
    """
    if scheduler == "local":
        pytest.importorskip("dask_cuda")
    import zarr
    from diffraflow.flow.cli import main

    scan = tmp_path / "scan.zarr"
    assert main(["simulate", "ebsd", str(scan), "--scan-shape", "6", "8", "--seed", "5"]) == 0
    results = {}
    for backend in ("numpy", "cupy"):
        pipeline = tmp_path / f"{backend}.yaml"
        pipeline.write_text("pipeline: 1\nsteps:\n"
                            f"  - op: normalize\n    name: norm\n    backend: {backend}\n"
                            f"  - op: hough_index\n    name: xmap\n    backend: {backend}\n")
        out = tmp_path / f"{backend}.zarr"
        assert main(["run", str(pipeline), "--input", str(scan), "--output", str(out), "--scheduler", scheduler,
                     "--quiet"]) == 0
        results[backend] = zarr.open_group(str(out), mode="r")["xmap"]
    np.testing.assert_array_equal(results["cupy"]["phase_id"][...], results["numpy"]["phase_id"][...])
    q = [results[b]["rotation"][...].reshape(-1, 4) for b in ("cupy", "numpy")]
    assert np.mean(_angles_deg(*q) < 0.01) >= 0.97
