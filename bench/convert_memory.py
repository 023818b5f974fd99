"""Peak memory of ``diffraflow convert`` on multi-GB inputs.

Writes large synthetic inputs *by streaming* (never a whole array in
memory): a ``.npy`` of uint8 patterns and an EDAX ``.up2`` of uint16
patterns. Each is converted in a subprocess (``python -m diffraflow convert``)
whose resident set size is polled with psutil (every 20 ms, children
included) and cross-checked with ``getrusage(RUSAGE_CHILDREN).ru_maxrss``.
Reports file size, peak RSS, wall time and throughput, and the RSS of a
Python that merely imports the converter (the floor).

Usage::

    python bench/convert_memory.py                 # ~2 GB per format
    python bench/convert_memory.py --size-gb 0.5 --formats npy
    python bench/convert_memory.py --append-results   # add a row to bench/RESULTS.md

Examples
--------
>>> plan_scan(2**20, (64, 64), 1)
(16, 16)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def plan_scan(total_bytes: int, det: tuple[int, int], itemsize: int) -> tuple[int, int]:
    """A near-square scan whose patterns fill about ``total_bytes``.

    Examples
    --------
    >>> plan_scan(10 * 4, (2, 2), 1)
    (3, 3)
    """
    frames = max(1, total_bytes // (det[0] * det[1] * itemsize))
    rows = max(1, int(math.sqrt(frames)))
    return rows, max(1, frames // rows)


def _pattern_bank(det: tuple[int, int], dtype: str, n: int = 64, seed: int = 0) -> np.ndarray:
    """A few noisy Kikuchi-like frames to cycle through (as compressible as real data)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:det[0], 0:det[1]].astype("float32")
    base = 0.5 + 0.3 * np.cos(x / 7.0) * np.cos(y / 11.0) + 0.2 * np.exp(-((x - det[1] / 2) ** 2 + (y - det[0] / 2) ** 2)
                                                                       / (0.2 * det[0] * det[1]))
    top = 255 if dtype == "uint8" else 4095
    frames = base[None] * top * 0.8 + rng.normal(0, top * 0.05, (n, *det))
    return np.clip(frames, 0, top).astype(dtype)


def _stream_frames(fh, n_frames: int, bank: np.ndarray, block: int = 256) -> None:
    for start in range(0, n_frames, block):
        count = min(block, n_frames - start)
        idx = (np.arange(start, start + count) * 7) % len(bank)
        fh.write(np.ascontiguousarray(bank[idx]).tobytes())


def write_npy(path: Path, scan: tuple[int, int], det: tuple[int, int]) -> None:
    """A ``(rows, cols, det_y, det_x)`` uint8 ``.npy`` written frame block by frame block."""
    bank = _pattern_bank(det, "uint8")
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_2_0(fh, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (*scan, *det)})
        _stream_frames(fh, scan[0] * scan[1], bank)


def write_up2(path: Path, scan: tuple[int, int], det: tuple[int, int]) -> None:
    """An EDAX ``.up2`` (version 3, square grid) of uint16 patterns, streamed."""
    bank = _pattern_bank(det, "uint16").astype("<u2")
    with open(path, "wb") as fh:
        np.array([3, det[1], det[0], 42], "<u4").tofile(fh)
        np.array([0], "u1").tofile(fh)
        np.array([scan[1], scan[0]], "<u4").tofile(fh)
        np.array([0], "u1").tofile(fh)
        np.array([1.0, 1.0], "<f8").tofile(fh)
        _stream_frames(fh, scan[0] * scan[1], bank)


def measure(cmd: list[str], interval: float = 0.02) -> dict:
    """Run ``cmd``; peak RSS (MB, psutil polling incl. children) and wall time."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(interval)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return {"peak_rss_mb": peak / 2**20, "wall_s": wall, "stdout": out.decode().strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="size of each input file in GB (10**9 bytes)")
    parser.add_argument("--formats", nargs="+", default=["npy", "up2"], choices=["npy", "up2"])
    parser.add_argument("--det", nargs=2, type=int, default=[256, 256], metavar=("H", "W"))
    parser.add_argument("--chunk-mb", type=float, default=None, help="passed to convert --chunk-mb")
    parser.add_argument("--workdir", default=None, help="where to write the big files (deleted afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the big files")
    parser.add_argument("--append-results", action="store_true", help="append a table to bench/RESULTS.md")
    args = parser.parse_args(argv)

    det = tuple(args.det)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="diffraflow-convert-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    floor = measure([sys.executable, "-c", "import flow.cli, flow.convert, flow.readers, zarr, numpy, tqdm"])
    rows = []
    try:
        for fmt in args.formats:
            itemsize = 1 if fmt == "npy" else 2
            scan = plan_scan(int(args.size_gb * 1e9), det, itemsize)
            src = work / f"big.{fmt}"
            t0 = time.perf_counter()
            (write_npy if fmt == "npy" else write_up2)(src, scan, det)
            write_s = time.perf_counter() - t0
            out = work / f"big_{fmt}.zarr"
            cmd = [sys.executable, "-m", "diffraflow.flow.cli", "convert", str(src), str(out), "--quiet"]
            if args.chunk_mb:
                cmd += ["--chunk-mb", str(args.chunk_mb)]
            result = measure(cmd)
            size = src.stat().st_size
            store = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            row = {"format": fmt, "scan": list(scan), "det": list(det), "file_mb": size / 1e6,
                   "store_mb": store / 1e6, "peak_rss_mb": result["peak_rss_mb"], "wall_s": result["wall_s"],
                   "mb_per_s": size / 1e6 / result["wall_s"], "write_input_s": write_s}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not args.keep:
                src.unlink()
                shutil.rmtree(out)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    ru_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(f"import floor {floor['peak_rss_mb']:.0f} MB; max RSS of any child (getrusage) {ru_max:.0f} MB")
    if args.append_results:
        _append(rows, floor["peak_rss_mb"], ru_max, argv if argv is not None else sys.argv[1:])
    return 0


def _append(rows: list[dict], floor_mb: float, ru_max_mb: float, argv: list[str]) -> None:
    import platform

    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = []
    if "## Conversion memory" not in text:
        lines += ["", "## Conversion memory", "",
                  "Peak resident memory of `diffraflow convert` on large synthetic inputs written by streaming "
                  "(`bench/convert_memory.py`); RSS polled every 20 ms with psutil, children included. "
                  "Target: a few hundred MB whatever the file size.", ""]
    lines += [f"Command: `python bench/convert_memory.py {' '.join(argv)}` on {platform.node() or 'host'} "
              f"({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d')}; import floor {floor_mb:.0f} MB, "
              f"getrusage max child RSS {ru_max_mb:.0f} MB.", "",
              "| format | scan | pattern | file MB | store MB | peak RSS MB | wall s | MB/s |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['format']} | {r['scan'][0]}x{r['scan'][1]} | {r['det'][0]}x{r['det'][1]} "
                     f"{'uint8' if r['format'] == 'npy' else 'uint16'} | {r['file_mb']:.0f} | {r['store_mb']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['wall_s']:.1f} | {r['mb_per_s']:.0f} |")
    path.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
