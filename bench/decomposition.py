"""Decompositions side by side: diffraflow vs scikit-learn (in memory) vs HyperSpy (lazy), and memory vs scan size.

Run from the repository root::

    python bench/decomposition.py speed --workdir /tmp/dbench                  # (i) all tools, one run
    python bench/decomposition.py memory --workdir /tmp/dmem --base-frames 10240 --sizes 1 8 \
        --max-iter 3 --mem-limit-gib 2 --clean                               # (ii) 8x > the 2 GiB cap

(i) writes one SPED cube (the study's bicrystal with a varying background
and Poisson counts: three true components) and runs, each in its own
subprocess so that peak memory is that tool's alone:

* SVD: ``svd`` (randomized; ``svd_q0``: without power iterations, the
  passes HyperSpy's default takes) / scikit-learn ``TruncatedSVD`` on the frames
  read into memory / HyperSpy ``decomposition(algorithm="SVD")`` on a lazy
  signal over the same Zarr store (``dask.array.linalg.svd_compressed``);
* PCA: ``svd centre: true`` / scikit-learn ``PCA``;
* ICA: ``ica`` / scikit-learn ``FastICA`` (whitening by PCA);
* NMF: ``nmf`` (NNDSVD, Frobenius) / scikit-learn ``NMF(init="nndsvd")``
  (coordinate descent) / HyperSpy lazy ``NMF`` (scikit-learn's
  ``MiniBatchNMF`` through ``partial_fit``, one pass) and ``ORNMF``.

Each reports wall time (reading the data included: scikit-learn's time
is split into load and fit), the relative reconstruction error
:math:`\\lVert X - W H\\rVert_F / \\lVert X\\rVert_F` computed here from its
factors and loadings, and peak RSS (``getrusage``).

(ii) runs ``diffraflow run`` with an SVD and an NMF step in a subprocess on
cubes of 1x and 8x ``--base-frames`` (frames drawn from a pool of simulated
SPED frames) and polls the RSS of the process tree, as ``bench/engine.py``
does. ``--mem-limit-gib`` caps the run's address space (``prlimit --as``):
a scan larger than the cap then shows that nothing holds it in memory,
without writing a scan larger than the machine's RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

K = 3  # true components of the bench cube: two crystals and a background


# -- cubes -------------------------------------------------------------------------------------------
def sped_frames(scan: tuple[int, int], det: tuple[int, int], dose: float, seed: int = 0) -> np.ndarray:
    """Frames of the study's ``separate/poisson+bg`` model at any size (uint16 counts)."""
    from diffraflow.operators.simulate.sped import simulate_sped

    sim = simulate_sped((scan[0], scan[1]), det_shape=det, dose=None, seed=seed)
    h, w = det
    yy, xx = np.mgrid[0:h, 0:w]
    halo = np.exp(-((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * (h / 3.0) ** 2))
    halo = 0.5 * halo / halo.mean()
    film = np.linspace(0.2, 1.0, scan[0])[:, None, None] * np.ones((1, scan[1], 1))
    loadings = np.concatenate([sim.loadings.astype(np.float64), film], axis=2)
    factors = np.concatenate([sim.factors.astype(np.float64), halo[None]], axis=0)
    rng = np.random.default_rng(seed + 1)
    out = np.empty((*scan, *det), np.uint16)
    for row in range(scan[0]):  # row by row: a large scan never holds its float64 model at once
        out[row] = rng.poisson(dose * np.einsum("xk,khw->xhw", loadings[row], factors))
    return out


def write_cube(path: Path, frames: np.ndarray) -> Path:
    """Store ``frames`` ``(sy, sx, h, w)`` as a diffraflow SPED cube at ``path``, row by row."""
    from diffraflow.flow.store import create_cube

    sy, sx, h, w = frames.shape
    attrs = {"modality": "sped", "detector": {"shape": [h, w]}}
    with create_cube(path, scan_shape=(sy, sx), det_shape=(h, w), dtype="uint16", attrs=attrs,
                     chunk_frames=max(sx, 512 // sx * sx)) as writer:
        for row in range(sy):
            writer.patterns.append(frames[row])
        writer.finalize()
    return path


def read_matrix(cube: Path) -> np.ndarray:
    """The whole cube as a ``(frames, pixels)`` float64 matrix (what scikit-learn needs in memory)."""
    import zarr

    patterns = zarr.open_group(str(cube), mode="r")["patterns"]
    sy, sx, h, w = patterns.shape
    return np.asarray(patterns[...]).reshape(sy * sx, h * w).astype(np.float64)


def relative_error(cube: Path, w: np.ndarray, h: np.ndarray, mean: np.ndarray | str | None = None) -> float:
    """:math:`\\lVert X - W H (+ mean)\\rVert_F / \\lVert X\\rVert_F`, streaming the cube row by row."""
    import zarr

    patterns = zarr.open_group(str(cube), mode="r")["patterns"]
    sy, sx = patterns.shape[:2]
    if isinstance(mean, str):  # "data mean": the mean frame, computed here (after the peak was measured)
        mean = sum(np.asarray(patterns[row], np.float64).reshape(sx, -1).sum(axis=0) for row in range(sy)) / (sy * sx)
    num = den = 0.0
    for row in range(sy):
        x = np.asarray(patterns[row]).reshape(sx, -1).astype(np.float64)
        model = w[row * sx:(row + 1) * sx] @ h
        if mean is not None:
            model = model + mean
        num += float(np.sum((x - model) ** 2))
        den += float(np.sum(x * x))
    return float(np.sqrt(num / den))


# -- one measurement (runs in its own process) --------------------------------------------------------
def _ours(cube: Path, method: str, workers: int, backend: str = "numpy"
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | str | None, dict]:
    """Run one diffraflow decomposition; loadings, factors, the mean to add back and pass counts."""
    from diffraflow.flow.engine import run_pipeline
    from diffraflow.flow.pipeline import Pipeline, Step
    from diffraflow.operators.decomposition.ica import ICA
    from diffraflow.operators.decomposition.nmf import NMF
    from diffraflow.operators.decomposition.svd import SVD

    op = {"svd": SVD(n_components=K, solver="randomized"),
          "svd_q0": SVD(n_components=K, solver="randomized", power_iter=0),
          "pca": SVD(n_components=K, centre=True, solver="randomized"),
          "ica": ICA(n_components=K, solver="randomized"), "nmf": NMF(n_components=K, solver="randomized")}[method]
    report = run_pipeline(Pipeline([Step(op, backend=backend)]), str(cube), executor="threads", workers=workers)
    res = {k.split("/", 1)[1]: v for k, v in report.results.items()}
    w = res["loadings"].reshape(-1, K).astype(np.float64)
    h = res["factors"].reshape(K, -1).astype(np.float64)
    mean = res["mean"].ravel() if "mean" in res else None
    if method == "ica":
        # ICA sources have zero mean over the scan: the model is the mean frame plus sources @ patterns
        return w, h, "data mean", {"passes": report.n_rounds}
    extra = {"passes": report.n_rounds}
    if "n_iter" in res:
        extra["n_iter"] = int(res["n_iter"][0])
    return w, h, mean, extra


def _sklearn(cube: Path, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """Run scikit-learn's estimator on the frames read into memory (load time reported apart)."""
    from sklearn.decomposition import NMF, PCA, FastICA, TruncatedSVD

    t0 = time.perf_counter()
    x = read_matrix(cube)
    load = time.perf_counter() - t0
    if method == "svd":
        est = TruncatedSVD(n_components=K, algorithm="randomized", n_iter=7, random_state=0)
        w = est.fit_transform(x)
        return w, est.components_, None, {"load_s": load}
    if method == "pca":
        est = PCA(n_components=K, random_state=0)
        w = est.fit_transform(x)
        return w, est.components_, est.mean_, {"load_s": load}
    if method == "ica":
        est = FastICA(n_components=K, whiten="unit-variance", random_state=0, max_iter=1000, tol=1e-6)
        w = est.fit_transform(x)
        return w, est.mixing_.T, est.mean_, {"load_s": load}
    est = NMF(n_components=K, init="nndsvd", solver="cd", tol=1e-4, max_iter=200)
    w = est.fit_transform(x)
    return w, est.components_, None, {"load_s": load, "n_iter": int(est.n_iter_)}


def _hyperspy(cube: Path, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """Run HyperSpy's lazy ``decomposition`` on a dask array over the same Zarr store."""
    import dask.array as da
    import hyperspy.api as hs
    import zarr

    patterns = zarr.open_group(str(cube), mode="r")["patterns"]
    sy, sx, h, w = patterns.shape
    lazy = hs.signals.Signal2D(da.from_zarr(patterns).astype("float64")).as_lazy()
    algorithm = {"svd": "SVD", "nmf": "NMF", "ornmf": "ORNMF"}[method]
    lazy.decomposition(algorithm=algorithm, output_dimension=K, print_info=False)
    lr = lazy.learning_results
    loadings = np.asarray(da.asarray(lr.loadings).compute() if hasattr(lr.loadings, "compute") else lr.loadings)
    factors = np.asarray(da.asarray(lr.factors).compute() if hasattr(lr.factors, "compute") else lr.factors)
    return loadings[:, :K], factors[:, :K].T, None, {}


def one(args) -> int:
    """One tool and method in this process: print wall time, relative error and peak RSS as JSON."""
    cube = Path(args.cube)
    t0 = time.perf_counter()
    if args.tool == "diffraflow":
        w, h, mean, extra = _ours(cube, args.method, args.workers, args.backend)
    elif args.tool == "sklearn":
        w, h, mean, extra = _sklearn(cube, args.method)
    else:
        w, h, mean, extra = _hyperspy(cube, args.method)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    error = relative_error(cube, w, h, mean)
    print(json.dumps({"tool": args.tool, "method": args.method, "seconds": seconds, "error": error,
                      "peak_rss_mib": peak, **extra}))
    return 0


# -- (i) speed ----------------------------------------------------------------------------------------
RUNS = [("svd", "diffraflow"), ("svd_q0", "diffraflow"), ("svd", "sklearn"), ("svd", "hyperspy"),
        ("pca", "diffraflow"), ("pca", "sklearn"),
        ("ica", "diffraflow"), ("ica", "sklearn"),
        ("nmf", "diffraflow"), ("nmf", "sklearn"), ("nmf", "hyperspy"), ("ornmf", "hyperspy")]


def speed(args) -> int:
    """(i): every tool and method on one cube, each in its own subprocess; print the table."""
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cube = workdir / f"sped_{args.scan[0]}x{args.scan[1]}_{args.det[0]}.zarr"
    if not cube.exists():
        write_cube(cube, sped_frames(tuple(args.scan), tuple(args.det), args.dose))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(args.workers)}
    rows = []
    for method, tool in RUNS:
        if args.methods and method not in args.methods:
            continue
        cmd = [sys.executable, __file__, "one", "--cube", str(cube), "--tool", tool, "--method", method,
               "--workers", str(args.workers), "--backend", args.backend]
        try:
            done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            row = {"tool": tool, "method": method, "failed": f"stopped after {args.timeout:.0f} s (--timeout)"}
        else:
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(line[-1]) if line else {"tool": tool, "method": method,
                                                       "failed": (done.stderr.strip().splitlines() or ["?"])[-1]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    gib = np.prod(args.scan) * np.prod(args.det) * 2 / 2**30
    summary = {"cube": str(cube), "frames": int(np.prod(args.scan)), "det": list(args.det), "gib_uint16": gib,
               "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(table(summary))
    return 0


def table(summary: dict) -> str:
    """Markdown table of the speed rows, with time and error ratios against diffraflow's method."""
    by = {(r["method"], r["tool"]): r for r in summary["rows"]}
    lines = ["| method | tool | wall s | peer s / ours s | rel. error | peer error / ours | peak RSS MiB | notes |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in summary["rows"]:
        if "failed" in r:
            lines.append(f"| {r['method']} | {r['tool']} | – | – | – | – | – | failed: {r['failed'][:60]} |")
            continue
        base = {"ornmf": "nmf", "svd_q0": "svd"}.get(r["method"], r["method"])
        ours = by.get((base, "diffraflow"))
        # ratios > 1: the peer is slower / less accurate than diffraflow's default method
        compare = ours is not None and "seconds" in ours and r["tool"] != "diffraflow"
        ratio = f"{r['seconds'] / ours['seconds']:.2f}x" if compare else ""
        err_ratio = f"{r['error'] / ours['error']:.4f}" if compare else ""
        notes = []
        if "load_s" in r:
            notes.append(f"load {r['load_s']:.1f} s")
        if "n_iter" in r:
            notes.append(f"{r['n_iter']} iterations")
        if "passes" in r:
            notes.append(f"{r['passes']} passes")
        lines.append(f"| {r['method']} | {r['tool']} | {r['seconds']:.1f} | {ratio} | {r['error']:.5f} | {err_ratio} | "
                     f"{r['peak_rss_mib']:.0f} | {', '.join(notes)} |")
    return "\n".join(lines)


# -- (ii) memory --------------------------------------------------------------------------------------
PIPELINE = """pipeline: 1
steps:
  - op: svd
    params: {n_components: 8, solver: randomized, power_iter: 1}
  - op: nmf
    params: {n_components: 3, solver: randomized, power_iter: 1, max_iter: %d, tol: 0.0}
"""


def make_large_cube(path: Path, frames: int, det: tuple[int, int], dose: float) -> Path:
    """``frames`` frames drawn from a pool of 2048 simulated SPED frames, written shard by shard."""
    from diffraflow.flow.store import create_cube

    if path.exists():
        return path
    sx = 256
    sy = frames // sx
    pool = sped_frames((8, 256), det, dose).reshape(-1, *det)
    attrs = {"modality": "sped", "detector": {"shape": list(det)}}
    with create_cube(path, scan_shape=(sy, sx), det_shape=det, dtype="uint16", attrs=attrs,
                     chunk_frames=1024) as writer:
        for row in range(sy):
            idx = (np.arange(sx) + 37 * row) % len(pool)
            writer.patterns.append(pool[idx])
        writer.finalize()
    return path


def memory(args) -> int:
    """(ii): ``diffraflow run`` on cubes of each size; print peak RSS and the largest/smallest ratio."""
    from bench.engine import _peak_rss_of

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = workdir / "decomposition.yaml"
    pipeline.write_text(PIPELINE % args.max_iter)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = []
    for size in args.sizes:
        n = args.base_frames * size
        cube = workdir / f"cube_{n}.zarr"
        t0 = time.perf_counter()
        made_here = not cube.exists()  # --clean removes only what this run made
        make_large_cube(cube, n, tuple(args.det), args.dose)
        made = time.perf_counter() - t0
        out = workdir / f"out_{size}.zarr"
        cmd = [sys.executable, "-m", "diffraflow.flow.cli", "run", str(pipeline), "--input", str(cube), "--output",
               str(out), "--overwrite", "--quiet", "--scheduler", "threads", "--workers", str(args.workers)]
        if args.mem_limit_gib:
            # a cap on the address space: the run fails (MemoryError) rather than swap or take the page cache,
            # so a scan larger than the cap shows that nothing holds the scan in memory
            cmd = ["prlimit", f"--as={int(args.mem_limit_gib * 2**30)}", "--", *cmd]
        seconds, peak, rc, last = _peak_rss_of(cmd, env)
        gib = n * args.det[0] * args.det[1] * 2 / 2**30
        disk = sum(f.stat().st_size for f in cube.rglob("*") if f.is_file()) / 2**30
        row = {"size": f"{size}x", "frames": n, "gib": gib, "disk_gib": disk, "peak_rss_mib": peak,
               "seconds": seconds, "rc": rc, "make_cube_s": made, "mem_limit_gib": args.mem_limit_gib,
               "summary": last}
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(out, ignore_errors=True)
        if args.clean and made_here:
            shutil.rmtree(cube, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if len(rows) >= 2:
        print(f"peak at {rows[-1]['size']} / peak at {rows[0]['size']} = {rows[-1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: ``speed``, ``memory`` or ``one``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed", help="(i) diffraflow vs scikit-learn vs HyperSpy on one cube")
    p.add_argument("--workdir", required=True)
    p.add_argument("--scan", type=int, nargs=2, default=[64, 64])
    p.add_argument("--det", type=int, nargs=2, default=[128, 128])
    p.add_argument("--dose", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--backend", default="numpy", help="diffraflow's backend: numpy or cupy (GPU)")
    p.add_argument("--timeout", type=float, default=900, help="seconds each measurement may take")
    p.add_argument("--json", default=None)
    p.set_defaults(func=speed)
    p = sub.add_parser("memory", help="(ii) peak memory of diffraflow run vs scan size")
    p.add_argument("--workdir", required=True)
    p.add_argument("--base-frames", type=int, default=16384)
    p.add_argument("--sizes", type=int, nargs="*", default=[1, 8])
    p.add_argument("--det", type=int, nargs=2, default=[128, 128])
    p.add_argument("--dose", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-iter", type=int, default=5)
    p.add_argument("--mem-limit-gib", type=float, default=None,
                   help="cap the run's address space (prlimit --as) at this many GiB")
    p.add_argument("--clean", action="store_true", help="delete each cube after its run")
    p.add_argument("--json", default=None)
    p.set_defaults(func=memory)
    p = sub.add_parser("one", help="one measurement (used by 'speed')")
    p.add_argument("--cube", required=True)
    p.add_argument("--tool", choices=("diffraflow", "sklearn", "hyperspy"), required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backend", default="numpy")
    p.set_defaults(func=one)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
