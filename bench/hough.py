"""Hough indexing, side by side: diffraflow's HoughIndexer vs PyEBSDIndex (CPU).

Both index the *same* simulated Ni patterns (kikuchipy's dynamical master
pattern, a smooth background and Poisson noise at several doses), in one run,
at 60x60 and 120x120. Reported per detector and dose: patterns/s of each and
their ratio, fraction within 1 and 2 degrees of the truth, median
disorientation (m-3m).

PyEBSDIndex runs its CPU path (no pyopencl here) through its own
``EBSDIndexer`` with ``vendor="KIKUCHIPY"``: the PC goes in as Bruker
(kikuchipy) coordinates and orientations come back in kikuchipy's sample frame,
exactly as ``kikuchipy.signals.EBSD.hough_indexing`` drives it. That choice was
verified by its accuracy (100 % within 1 degree on clean patterns); the EDAX
TSL route would need our own PC conversion (x*, 1 - y*, z*) *and* a
sample-frame change of the output, for no gain.

Timing: each indexer is warmed up first (numba compilation excluded), then
each is timed ``--repeats`` times, alternately, and the best time is kept: the
machine is shared, so best-of is the least noisy estimate of both.

``--backend cuda`` measures the CUDA path instead (on a GPU machine), against
the CPU path of the same machine in the same run: patterns/s per detector
size and GPU batch size (host patterns through pinned buffers, and patterns
already on the device), the stage breakdown (each stage alone, synchronised),
the former GPU path (image stages on the GPU, voting on the CPU), accuracy of
both paths against the truth, their agreement, and end to end through
``diffraflow index`` on a cube on disk (reading and writing included). It
writes a JSON (``--json``) and a Markdown section (``--markdown``) instead of
touching RESULTS.md, since it runs on a machine whose files do not come back.

Usage::

    python bench/hough.py            # full run, appends to bench/RESULTS.md
    python bench/hough.py --quick    # small smoke run, prints only
    python bench/hough.py --backend cuda --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffraflow.operators.crystallography import get_phase  # noqa: E402
from diffraflow.operators.indexing import HoughIndexer  # noqa: E402
from diffraflow.operators.indexing.testing import (  # noqa: E402
    disorientation_deg,
    ni_master_pattern,
    simulate_patterns,
)

PC = (0.42, 0.22, 0.50)


def _detector(shape):
    from kikuchipy.detectors import EBSDDetector

    return EBSDDetector(shape=shape, pc=PC, sample_tilt=70.0, tilt=0.0, convention="bruker")


def _pyebsdindex(shape):
    from pyebsdindex.ebsd_index import EBSDIndexer

    return EBSDIndexer(
        phaselist=["FCC"], vendor="KIKUCHIPY", PC=np.array(PC), sampleTilt=70.0, camElev=0.0,
        patDim=np.array(shape, dtype=np.int32),
    )


def _run_pei(indexer, pats):
    data = indexer.index_pats(pats, verbose=0)[0]
    return np.asarray(data[-1]["quat"], dtype=np.float64)


def _stats(q, truth, sym):
    d = disorientation_deg(q, truth, sym)
    return float(np.mean(d < 1)), float(np.mean(d < 2)), float(np.median(d))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (no RESULTS.md)")
    ap.add_argument("--n", type=int, default=None, help="patterns per configuration")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-append", action="store_true", help="do not write bench/RESULTS.md")
    ap.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                    help="cpu: ours vs PyEBSDIndex (default); cuda: the CUDA path vs the CPU path")
    ap.add_argument("--shapes", type=int, nargs="+", default=None, help="cuda: square detector sides (60 80 120)")
    ap.add_argument("--throughput", type=int, default=None,
                    help="cuda: patterns per timed GPU run (the unique patterns tiled; default 100000)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="cuda: GPU batch sizes to time (0: from free memory; default 0 4096 16384)")
    ap.add_argument("--dose", type=float, default=20.0, help="cuda: mean counts per pixel")
    ap.add_argument("--end-to-end", type=int, default=None, metavar="N",
                    help="cuda: patterns in the on-disk cube for 'diffraflow index' (0 skips; default 100000)")
    ap.add_argument("--budget", type=float, default=None, metavar="S",
                    help="cuda: skip remaining detector sizes once this many seconds have passed")
    ap.add_argument("--json", default=None, help="cuda: write every figure here")
    ap.add_argument("--markdown", default=None, help="cuda: write the RESULTS.md section here")
    args = ap.parse_args(argv)
    if args.backend == "cuda":
        return run_cuda(args)

    n = args.n or (200 if args.quick else 2000)
    shapes = [(60, 60)] if args.quick else [(60, 60), (120, 120)]
    doses = [None, 20, 4] if args.quick else [None, 100, 20, 8, 4, 2]
    phase = get_phase("ni")
    mp = ni_master_pattern()
    from orix.quaternion import Rotation

    truth = Rotation(np.random.default_rng(2024).normal(size=(n, 4)))

    rows = []
    for shape in shapes:
        det = _detector(shape)
        ours = HoughIndexer([phase], det, backend="cpu")
        pei = _pyebsdindex(shape)
        warm = simulate_patterns(mp, truth[:64], det, dose=20, seed=0)
        ours.index_chunk(warm)
        _run_pei(pei, warm.copy())
        for dose in doses:
            pats = simulate_patterns(mp, truth, det, dose=dose, seed=7)
            t_ours, t_pei = np.inf, np.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = ours.index_chunk(pats)
                t_ours = min(t_ours, time.perf_counter() - t0)
                t0 = time.perf_counter()
                q_pei = _run_pei(pei, pats.copy())
                t_pei = min(t_pei, time.perf_counter() - t0)
            s_ours = _stats(out["quaternion"], truth, phase.point_group)
            s_pei = _stats(q_pei, truth, phase.point_group)
            row = dict(
                shape=f"{shape[0]}x{shape[1]}", dose="clean" if dose is None else f"{dose}",
                ours_pps=n / t_ours, pei_pps=n / t_pei, ours=s_ours, pei=s_pei,
            )
            rows.append(row)
            print(_format_row(row), flush=True)

    table = _table(rows)
    print()
    print(table)
    if not args.quick and not args.no_append:
        cmd = "python bench/hough.py" + ("" if argv is None else " " + " ".join(argv))
        _append(table, cmd, n, args.repeats)
    return 0


# ------------------------------------------------------------------------ CUDA
def _machine() -> dict:
    info = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        info.update(gpu=name.decode() if isinstance(name, bytes) else str(name),
                    gpu_memory_gib=round(props["totalGlobalMem"] / 2**30, 1),
                    multiprocessors=int(props["multiProcessorCount"]), cupy=cupy.__version__,
                    cuda_runtime=int(cupy.cuda.runtime.runtimeGetVersion()))
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        info["gpu"] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        import numba

        info["numba"] = numba.__version__
        from importlib.metadata import version

        info["numba_cuda"] = version("numba-cuda")
    except Exception:  # noqa: BLE001
        pass
    return info


def _best_time(fn, repeats: int) -> tuple[float, object]:
    best, value = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def _agreement(a: dict, b: dict) -> dict:
    dot = np.clip(np.abs(np.sum(a["quaternion"] * b["quaternion"], axis=1)), 0, 1)
    ang = np.degrees(2 * np.arccos(dot))
    return {"within_0.01deg": float(np.mean(ang < 0.01)), "max_deg": float(ang.max()),
            "same_phase": float(np.mean(a["phase_id"] == b["phase_id"])),
            "same_n_bands": float(np.mean(a["n_bands"] == b["n_bands"]))}


def _cuda_shape(side: int, args, phase, mp, rows: list, log) -> dict:
    from diffraflow.operators.indexing import gpu
    from orix.quaternion import Rotation

    shape = (side, side)
    n = args.n or 20000
    det = _detector(shape)
    truth = Rotation(np.random.default_rng(2024 + side).normal(size=(n, 4)))
    t0 = time.perf_counter()
    pats = np.clip(simulate_patterns(mp, truth, det, dose=args.dose, seed=7), 0, 255).astype(np.uint8)
    log(f"{side}x{side}: simulated {n} patterns in {time.perf_counter() - t0:.1f} s")
    rec: dict = {"shape": f"{side}x{side}", "unique_patterns": n, "dose": args.dose}

    cpu = HoughIndexer([phase], det, backend="cpu")
    cpu.index_chunk(pats[:64])
    t_cpu, out_cpu = _best_time(lambda: cpu.index_chunk(pats), args.repeats)
    rec["cpu"] = {"pps": n / t_cpu, "accuracy": _accuracy(out_cpu, truth, phase)}
    log(f"  cpu: {n / t_cpu:.0f}/s")

    cuda = HoughIndexer([phase], det, backend="cuda")
    t0 = time.perf_counter()
    cuda.index_chunk(pats[:256])
    rec["cuda_first_call_s"] = time.perf_counter() - t0
    st = gpu.state_for(cuda)
    rec["radon_mode"], rec["grid"] = st.radon_mode, st.grid
    out_gpu = cuda.index_chunk(pats)
    rec["cuda_accuracy"] = _accuracy(out_gpu, truth, phase)
    rec["agreement_cuda_vs_cpu"] = _agreement(out_gpu, out_cpu)
    log(f"  agreement: {rec['agreement_cuda_vs_cpu']}")

    # Each timed run lasts about two seconds whatever the speed turns out to be (the machine is lent briefly).
    t_one, _ = _best_time(lambda: cuda.index_chunk(pats), 1)
    total = max(n, min(args.throughput or 100000, int(2.0 * n / t_one)))
    rec["throughput_patterns"] = total
    tiled = np.ascontiguousarray(np.resize(pats, (total, *shape)))
    rec["throughput"] = []
    for bs in args.batch_sizes or (0, 4096, 16384):
        cuda.gpu_batch_size = bs or None
        used = bs or gpu.batch_size_for(
            st.ops.free_bytes() - gpu.N_SLOTS * st.grid * 36 * 2048, side * side, st.n_mask, st.n_theta, st.n_rho)
        cuda.index_chunk(tiled[: min(total, 2 * used)])  # buffers of this batch size allocated before the clock
        t_host, _ = _best_time(lambda: cuda.index_chunk(tiled), args.repeats)
        t_dev = _time_on_device(cuda, tiled, args.repeats)
        rec["throughput"].append({"batch": int(min(used, total)), "auto": not bs, "host_pps": total / t_host,
                                  "device_pps": total / t_dev})
        log(f"  batch {min(used, total)}{' (auto)' if not bs else ''}: host {total / t_host:.0f}/s, "
            f"device {total / t_dev:.0f}/s")
    cuda.gpu_batch_size = None

    prof_n = min(n, 16384)
    rec["stages"] = {}
    for mode in ("sparse", "dense") if side <= 80 else ("sparse",):
        ix = HoughIndexer([phase], det, backend="cuda", gpu_radon=mode)
        ix.index_chunk(pats[:64])
        rec["stages"][mode] = gpu.profile_stages(ix, pats[:prof_n], repeats=args.repeats)
        log(f"  stages ({mode}): " + ", ".join(f"{k} {v:.0f}/s" for k, v in rec["stages"][mode].items()))
    t_old, _ = _best_time(lambda: gpu.index_chunk_cuda(cuda, pats, cuda.pcs, vote="cpu"), args.repeats)
    rec["former_gpu_path_pps"] = n / t_old
    log(f"  former path (GPU image stages, CPU voting): {n / t_old:.0f}/s")
    best = max(r["host_pps"] for r in rec["throughput"])
    rows.append({"shape": rec["shape"], "cpu_pps": rec["cpu"]["pps"], "cuda_pps": best,
                 "cuda_device_pps": max(r["device_pps"] for r in rec["throughput"]),
                 "former_pps": rec["former_gpu_path_pps"], "cpu_acc": rec["cpu"]["accuracy"],
                 "cuda_acc": rec["cuda_accuracy"], "agree": rec["agreement_cuda_vs_cpu"]})
    return rec


def _time_on_device(indexer, pats: np.ndarray, repeats: int) -> float:
    """Best time to index patterns already in GPU memory (then freed)."""
    import cupy

    dev = [cupy.asarray(pats)]
    cupy.cuda.Device().synchronize()
    best, _ = _best_time(lambda: indexer.index_chunk(dev[0]), repeats)
    dev.clear()
    cupy.get_default_memory_pool().free_all_blocks()
    return best


def _accuracy(out: dict, truth, phase) -> dict:
    d = disorientation_deg(out["quaternion"], truth, phase.point_group)
    return {"within_1deg": float(np.mean(d < 1)), "within_2deg": float(np.mean(d < 2)),
            "median_deg": float(np.median(d)), "indexed": float(np.mean(out["phase_id"] >= 0))}


def _end_to_end(n_total: int, phase, mp, log) -> dict:
    """``diffraflow index`` on a 60x60 uint8 cube on disk, CPU and CUDA, as a user runs it."""
    import re
    import subprocess
    import tempfile

    from diffraflow.flow.store import create_cube
    from orix.quaternion import Rotation

    shape = (60, 60)
    det = _detector(shape)
    unique = np.clip(simulate_patterns(mp, Rotation(np.random.default_rng(9).normal(size=(4096, 4))), det,
                                       dose=20, seed=3), 0, 255).astype(np.uint8)
    nx = 500
    ny = max(1, n_total // nx)
    rec: dict = {"patterns": ny * nx, "detector": "60x60", "dtype": "uint8"}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        cube = Path(tmp) / "scan.zarr"
        attrs = {"modality": "ebsd", "detector": {"shape": list(shape), "pc": list(PC), "pc_convention": "bruker",
                                                   "sample_tilt": 70.0, "camera_tilt": 0.0}}
        t0 = time.perf_counter()
        with create_cube(cube, scan_shape=(ny, nx), det_shape=shape, dtype="uint8", attrs=attrs) as writer:
            for row in range(ny):
                start = (row * nx) % len(unique)
                writer.patterns.append(np.resize(np.roll(unique, -start, axis=0), (nx, *shape)))
            writer.finalize()
        rec["write_s"] = time.perf_counter() - t0
        for backend in ("cpu", "cuda"):
            out = Path(tmp) / f"{backend}.zarr"
            cmd = [sys.executable, "-m", "diffraflow", "index", str(cube), str(out), "--phase", "ni", "--pc",
                   *map(str, PC), "--backend", backend, "--overwrite", "--quiet", "--chunk-frames", "32768"]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            match = re.search(r"in ([0-9.]+) s \(([0-9]+) patterns/s\)", done.stdout + done.stderr)
            rec[backend] = {"returncode": done.returncode, "wall_s": wall, "command": " ".join(cmd[1:]),
                            "reported_pps": float(match.group(2)) if match else None,
                            "tail": (done.stdout + done.stderr)[-600:]}
            log(f"end to end {backend}: {rec[backend]['reported_pps']} patterns/s reported, {wall:.1f} s wall")
    return rec


def run_cuda(args) -> int:
    """The CUDA bench (see the module docstring); returns 0 when everything ran."""

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", flush=True)

    report: dict = {"machine": _machine(), "command": "python bench/hough.py " + " ".join(sys.argv[1:]),
                    "date": _dt.date.today().isoformat(), "shapes": [], "errors": []}
    log(f"machine: {report['machine']}")
    phase = get_phase("ni")
    mp = ni_master_pattern()
    rows: list = []
    for side in args.shapes or (60, 80, 120):
        if args.budget and time.perf_counter() - started > args.budget:
            report["errors"].append(f"{side}x{side} skipped: budget of {args.budget} s spent")
            continue
        try:
            report["shapes"].append(_cuda_shape(side, args, phase, mp, rows, log))
        except Exception as exc:  # noqa: BLE001 - keep the figures measured so far
            import traceback

            report["errors"].append(f"{side}x{side}: {traceback.format_exc()[-2000:]}")
            log(f"{side}x{side} failed: {exc}")
        _write_report(report, rows, args)
    n_e2e = 100000 if args.end_to_end is None else args.end_to_end
    if n_e2e:
        try:
            report["end_to_end"] = _end_to_end(n_e2e, phase, mp, log)
        except Exception:  # noqa: BLE001
            import traceback

            report["errors"].append(f"end to end: {traceback.format_exc()[-2000:]}")
    _write_report(report, rows, args)
    print(_cuda_table(report, rows))
    return 1 if report["errors"] else 0


def _write_report(report: dict, rows: list, args) -> None:
    import json

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    if args.markdown:
        Path(args.markdown).write_text(_cuda_table(report, rows) + "\n")


def _cuda_table(report: dict, rows: list) -> str:
    m = report["machine"]
    lines = [
        "## Hough indexing on the GPU",
        "",
        f"{m.get('gpu')} ({m.get('gpu_memory_gib')} GiB, {m.get('multiprocessors')} SMs), {m.get('cpus')} CPU cores; "
        f"CuPy {m.get('cupy')}, numba {m.get('numba')}, numba-cuda {m.get('numba_cuda')}. Simulated Ni patterns "
        "(dynamical master pattern, PC (0.42, 0.22, 0.50), 70 deg tilt, uint8), CPU path (numba, all cores) and "
        "CUDA path in the same run; GPU rates over the unique patterns tiled to the throughput size, best of the "
        "repeats after a warm-up. 'device' = patterns already in GPU memory (a previous GPU step's frames).",
        "",
        f"Command: `{report['command']}` ({report['date']})",
        "",
        "| detector | CPU pat/s | CUDA pat/s (host) | CUDA pat/s (device) | former GPU path pat/s | CPU <2° | CUDA <2° "
        "| CPU median ° | CUDA median ° | within 0.01° of CPU | same phase |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['cpu_pps']:.0f} | **{r['cuda_pps']:.0f}** | {r['cuda_device_pps']:.0f} | "
            f"{r['former_pps']:.0f} | {r['cpu_acc']['within_2deg']:.3f} | {r['cuda_acc']['within_2deg']:.3f} | "
            f"{r['cpu_acc']['median_deg']:.3f} | {r['cuda_acc']['median_deg']:.3f} | "
            f"{r['agree']['within_0.01deg']:.4f} | {r['agree']['same_phase']:.4f} |")
    for rec in report["shapes"]:
        lines += ["", f"Stages at {rec['shape']} (patterns/s if each were alone; Radon {rec['radon_mode']} by "
                  f"default, grid {rec['grid']} blocks):", ""]
        for mode, stages in rec["stages"].items():
            lines.append(f"- {mode} Radon: " + ", ".join(f"{k} {v:,.0f}" for k, v in stages.items()))
        lines.append("- batch sizes: " + ", ".join(
            f"{t['batch']}{' (auto)' if t['auto'] else ''}: {t['host_pps']:,.0f} host / {t['device_pps']:,.0f} device"
            for t in rec["throughput"]))
    e2e = report.get("end_to_end")
    if e2e:
        lines += ["", f"End to end, `diffraflow index` on a {e2e['patterns']}-pattern 60x60 uint8 cube on disk "
                  "(reading, indexing, writing the result store; the rate the command reports, compilation "
                  "excluded): " + ", ".join(f"{b} {e2e[b]['reported_pps']} pat/s ({e2e[b]['wall_s']:.1f} s wall "
                                            "with start-up)" for b in ("cpu", "cuda") if b in e2e)]
    if report["errors"]:
        lines += ["", "Errors: " + "; ".join(e.splitlines()[-1] for e in report["errors"])]
    return "\n".join(lines)


def _format_row(r):
    o, p = r["ours"], r["pei"]
    return (
        f"{r['shape']:>7} dose {r['dose']:>5}: ours {r['ours_pps']:7.0f}/s  pei {r['pei_pps']:6.0f}/s  "
        f"x{r['ours_pps'] / r['pei_pps']:4.1f} | <1 {o[0]:.3f}/{p[0]:.3f}  <2 {o[1]:.3f}/{p[1]:.3f}  "
        f"median {o[2]:.3f}/{p[2]:.3f}"
    )


def _table(rows):
    lines = [
        "| detector | dose (counts/px) | ours pat/s | PyEBSDIndex pat/s | speed-up | ours <1° | PEI <1° | ours <2° | PEI <2° | ours median ° | PEI median ° |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        o, p = r["ours"], r["pei"]
        lines.append(
            f"| {r['shape']} | {r['dose']} | {r['ours_pps']:.0f} | {r['pei_pps']:.0f} | "
            f"**{r['ours_pps'] / r['pei_pps']:.1f}x** | {o[0]:.3f} | {p[0]:.3f} | {o[1]:.3f} | {p[1]:.3f} | "
            f"{o[2]:.3f} | {p[2]:.3f} |"
        )
    return "\n".join(lines)


def _append(table: str, cmd: str, n: int, repeats: int) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    stamp = _dt.date.today().isoformat()
    section = (
        "## Hough indexing\n\n"
        f"diffraflow `HoughIndexer` (CPU, numba) vs PyEBSDIndex {_pei_version()} CPU path "
        "(`EBSDIndexer(phaselist=['FCC'], vendor='KIKUCHIPY')`, no OpenCL), on the same "
        f"{n} simulated Ni patterns per row (kikuchipy's dynamical Ni master pattern, PC (0.42, 0.22, 0.50) "
        "Bruker, 70° tilt, smooth background, Poisson noise at the given mean counts per pixel). "
        f"Machine: {platform.machine()} with {os.cpu_count()} CPUs, shared with other jobs; best of {repeats} "
        "alternating timings after a warm-up (compilation excluded). Disorientations under m-3m.\n\n"
        f"Command: `{cmd}` ({stamp})\n\n" + table + "\n"
    )
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find("\n## Hough indexing\n")  # not "## Hough indexing on the GPU"
    if start >= 0:  # replace only our own section
        end = text.find("\n## ", start + 1)
        text = text[:start] + "\n" + section + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def _pei_version() -> str:
    try:
        import pyebsdindex

        return str(pyebsdindex.__version__)
    except Exception:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
