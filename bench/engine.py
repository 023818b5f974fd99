"""Engine benchmarks: overhead vs a hand-written dask.array pass, peak memory vs scan size, threads vs LocalCluster.

Run from the repository root::

    python bench/engine.py all --workdir /tmp/dfbench          # everything (a few minutes)
    python bench/engine.py throughput --frames 40000            # (i)
    python bench/engine.py memory --sizes 1 4 8                 # (ii)
    python bench/engine.py executors                            # (iii)

(i) runs a per-frame sum through ``diffraflow.flow.engine.run_pipeline`` (threads, result
written to a Zarr result store) and ``da.from_zarr(...).sum(axis=(2, 3)).to_zarr(...)``
on the same store, alternately, and reports the best of ``--repeats``.
(ii) runs ``diffraflow run`` in a subprocess on cubes of 1x, 4x, 8x the base
size and polls the RSS of the whole process tree (psutil, every 20 ms).
(iii) runs the same pipeline with ``--scheduler threads`` and ``local``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffraflow.operators.base import (  # noqa: E402
    ChunkContext,
    InputSpec,
    Operator,
    OutputSpec,
    register_operator,
)


@register_operator
@dataclass(frozen=True)
class BenchFrameSum(Operator):
    """Per-frame sum (the trivial operator of the engine benchmark)."""

    name = "bench_frame_sum"

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"total": OutputSpec("nav", "float64")}

    def process(self, frames, ctx: ChunkContext):
        return {"total": frames.sum(axis=(1, 2), dtype=np.float64)}


@register_operator
@dataclass(frozen=True)
class BenchSigSum(Operator):
    """Sum pattern (a reduction), for the memory benchmark."""

    name = "bench_sig_sum"

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"sum": OutputSpec("sig", "float64", spec.det_shape)}

    def process(self, frames, ctx: ChunkContext):
        return {"sum": frames.sum(axis=0, dtype=np.float64)}


DET = (64, 64)


def make_cube(path: Path, n_frames: int, det=DET, chunk_frames: int = 1000) -> Path:
    """A uint16 cube of ``n_frames`` frames: a pool of random frames, rolled, written shard by shard."""
    from diffraflow.flow.store import create_cube

    if path.exists():
        return path
    sx = 200
    sy = n_frames // sx
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 4096, size=(1024, *det), dtype=np.uint16)
    with create_cube(path, scan_shape=(sy, sx), det_shape=det, dtype="uint16",
                     attrs={"modality": "ebsd", "detector": {"shape": list(det)}}, chunk_frames=chunk_frames) as w:
        step = 8000
        for start in range(0, sy * sx, step):
            n = min(step, sy * sx - start)
            idx = (np.arange(start, start + n) * 7) % len(pool)
            w.patterns.append(pool[idx] + np.uint16(start % 13))
        w.finalize()
    return path


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


def throughput(workdir: Path, frames: int, repeats: int, workers: int) -> dict:
    import dask
    import dask.array as da
    import zarr
    from diffraflow.flow.engine import run_pipeline
    from diffraflow.flow.pipeline import Pipeline

    cube = make_cube(workdir / f"cube_{frames}.zarr", frames)
    arr = zarr.open_group(str(cube), mode="r")["patterns"]
    pipe = Pipeline([BenchFrameSum()])

    def engine():
        run_pipeline(pipe, cube, workdir / "engine_out.zarr", executor="threads", workers=workers, overwrite=True,
                     collect=False)

    def dask_pass():
        x = da.from_zarr(arr)  # the store's own chunks
        with dask.config.set(scheduler="threads", num_workers=workers):
            x.sum(axis=(2, 3), dtype=np.float64).to_zarr(str(workdir / "dask_out.zarr"), overwrite=True)

    def dask_compute():
        with dask.config.set(scheduler="threads", num_workers=workers):
            da.from_zarr(arr).sum(axis=(2, 3), dtype=np.float64).compute()

    np.asarray(arr[: arr.shape[0]])  # warm the page cache once for both
    rows = {}
    engine_t, dask_t, compute_t = [], [], []
    for _ in range(repeats):  # alternate, so drift hits both
        engine_t.append(_best(engine, 1)[0])
        dask_t.append(_best(dask_pass, 1)[0])
        compute_t.append(_best(dask_compute, 1)[0])
    nbytes = arr.nbytes
    rows = {"frames": frames, "gib": nbytes / 2**30, "chunks": list(arr.chunks), "workers": workers,
            "engine_s": min(engine_t), "dask_to_zarr_s": min(dask_t), "dask_compute_s": min(compute_t),
            "engine_frames_per_s": frames / min(engine_t), "dask_frames_per_s": frames / min(dask_t),
            "ratio_engine_vs_dask_to_zarr": min(dask_t) / min(engine_t),
            "ratio_engine_vs_dask_compute": min(compute_t) / min(engine_t),
            "all_engine_s": engine_t, "all_dask_s": dask_t, "all_compute_s": compute_t}
    return rows


PIPELINE_YAML = """pipeline: 1
steps:
  - op: bench_frame_sum
  - op: bench_sig_sum
"""


def _peak_rss_of(cmd: list[str], env: dict) -> tuple[float, float, int, str]:
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    ps = psutil.Process(proc.pid)
    done = threading.Event()

    def poll():
        nonlocal peak
        while not done.is_set():
            try:
                procs = [ps, *ps.children(recursive=True)]
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    last = (out.strip() or err.strip() or "(no output)").splitlines()[-1]
    return time.perf_counter() - t0, peak / 2**20, proc.returncode, last


def run_cli(workdir: Path, cube: Path, scheduler: str, workers: int, out_name: str) -> tuple[float, float, int, str]:
    pipeline = workdir / "bench_pipeline.yaml"
    pipeline.write_text(PIPELINE_YAML)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "diffraflow.flow.cli", "run", str(pipeline), "--input", str(cube), "--output",
           str(workdir / out_name), "--overwrite", "--quiet", "--plugin", "bench.engine", "--scheduler", scheduler,
           "--workers", str(workers)]
    return _peak_rss_of(cmd, env)


def memory(workdir: Path, base_frames: int, sizes: list[int], workers: int) -> list[dict]:
    rows = []
    for k in sizes:
        t0 = time.perf_counter()
        cube = make_cube(workdir / f"cube_{base_frames * k}.zarr", base_frames * k)
        made = time.perf_counter() - t0
        seconds, peak, rc, last = run_cli(workdir, cube, "threads", workers, f"mem_{k}.zarr")
        gib = base_frames * k * DET[0] * DET[1] * 2 / 2**30
        rows.append({"size": f"{k}x", "frames": base_frames * k, "gib": gib, "peak_rss_mib": peak,
                     "seconds": seconds, "rc": rc, "make_cube_s": made, "summary": last})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def executors(workdir: Path, frames: int, workers: int) -> list[dict]:
    cube = make_cube(workdir / f"cube_{frames}.zarr", frames)
    rows = []
    for scheduler in ("threads", "local"):
        seconds, peak, rc, last = run_cli(workdir, cube, scheduler, workers, f"exec_{scheduler}.zarr")
        rows.append({"scheduler": scheduler, "workers": workers, "seconds": seconds, "peak_rss_mib": peak,
                     "rc": rc, "summary": last})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["throughput", "memory", "executors", "all"])
    parser.add_argument("--workdir", default="/tmp/diffraflow-bench")
    parser.add_argument("--frames", type=int, default=128_000, help="frames of the 1x cube (64x64 uint16)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write all results to this file")
    parser.add_argument("--clean", action="store_true", help="delete the work directory afterwards")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"cpus": os.cpu_count()}
    if args.which in ("throughput", "all"):
        results["throughput"] = throughput(workdir, args.frames, args.repeats, args.workers)
        print(json.dumps(results["throughput"]), flush=True)
    if args.which in ("executors", "all"):
        results["executors"] = executors(workdir, args.frames, args.workers)
    if args.which in ("memory", "all"):
        results["memory"] = memory(workdir, args.frames, args.sizes, args.workers)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.clean:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
