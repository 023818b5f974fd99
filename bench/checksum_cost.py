"""Cost of the CRC-32C chunk checksums on writing and reading scan cubes, paired in one run.

Writes the same frames through :func:`diffraflow.flow.store.create_cube` with the
checksum codec (today's stores) and with it removed, alternately, and reads
each store back in full, so both sides see the same machine state. Prints a
Markdown table with medians and the ratio checksummed / plain.

Usage::

    python bench/checksum_cost.py --frames 20000 --det 60 60 --dtype uint8 --repeats 5
    python bench/checksum_cost.py --frames 2000 --det 256 256 --dtype uint16 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import diffraflow.flow.store as store
import numpy as np


def write(path: Path, frames: np.ndarray, scan: tuple[int, int], checksum: bool) -> float:
    """Seconds to write ``frames`` as a new cube at ``path``."""
    codecs = store.checksum_codecs if checksum else (lambda: [])
    with mock.patch.object(store, "checksum_codecs", codecs):
        t0 = time.perf_counter()
        with store.create_cube(path, scan_shape=scan, det_shape=frames.shape[1:], dtype=frames.dtype,
                               attrs={"modality": "ebsd", "detector": {"shape": list(frames.shape[1:])}}) as w:
            w.patterns.append(frames)
            w.finalize()
        return time.perf_counter() - t0


def read(path: Path) -> float:
    """Seconds to read the whole ``patterns`` array back."""
    import zarr

    t0 = time.perf_counter()
    np.asarray(zarr.open_group(str(path), mode="r")["patterns"][...])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--det", type=int, nargs=2, default=(60, 60))
    parser.add_argument("--dtype", default="uint8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    cols = 100
    rows = args.frames // cols
    dtype = np.dtype(args.dtype)
    # Poisson counts around a smooth pattern: compresses like real detector frames.
    base = rng.uniform(5, 40, size=args.det)
    frames = rng.poisson(base, size=(rows * cols, *args.det)).clip(0, np.iinfo(dtype).max).astype(dtype)
    mb = frames.nbytes / 2**20
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dfcrc"))
    times: dict[str, list[float]] = {"write_crc": [], "write_plain": [], "read_crc": [], "read_plain": []}
    try:
        for i in range(args.repeats):
            for label, checksum in (("crc", True), ("plain", False)):
                path = work / f"{label}{i}.zarr"
                times[f"write_{label}"].append(write(path, frames, (rows, cols), checksum))
                times[f"read_{label}"].append(read(path))
                shutil.rmtree(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{rows * cols} frames {args.det[0]}x{args.det[1]} {dtype} ({mb:.0f} MiB), {args.repeats} repeats, "
          f"{os.cpu_count()} CPUs")
    print("| pass | plain MB/s | with CRC-32C MB/s | time ratio crc/plain |")
    print("|---|---:|---:|---:|")
    for what in ("write", "read"):
        plain, crc = med[f"{what}_plain"], med[f"{what}_crc"]
        print(f"| {what} | {mb / plain:.0f} | {mb / crc:.0f} | {crc / plain:.3f} |")


if __name__ == "__main__":
    main()
