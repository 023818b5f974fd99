"""Time the CUDA voting kernel alone under other compile settings (block size, register cap), on a GPU.

The kernel's block size (``DIFFRAFLOW_CUDA_TPB``) and the resident blocks the
compiler is asked for (``DIFFRAFLOW_CUDA_MIN_BLOCKS``, which caps registers)
are fixed when :mod:`diffraflow.operators.indexing.cuda_kernels` is imported,
so each setting runs in its own interpreter, uncached (numba's cache key knows
neither). The parent simulates the patterns once; each child runs the image
stages once and times the voting kernel (best of ``--repeats``), and checks
that its results equal the default setting's.

Usage (on a GPU machine; ``bench/gpu_check.sh`` runs it last, while time lasts)::

    python bench/cuda_tune.py --json tune.json                 # settings 128x4 and 64x8 (default 128x0 first)
    python bench/cuda_tune.py --settings 128:0 128:3 256:2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PC = (0.42, 0.22, 0.50)


def _child(data: str, repeats: int) -> dict:
    """One setting: compile, run the image stages once, time the kernel, return figures and results."""
    from diffraflow.operators.crystallography import get_phase
    from diffraflow.operators.indexing import HoughIndexer, gpu
    from diffraflow.operators.indexing.cuda_kernels import MIN_BLOCKS, TPB
    from kikuchipy.detectors import EBSDDetector

    pats = np.load(data)
    det = EBSDDetector(pats.shape[1:], pc=PC, sample_tilt=70.0)
    ix = HoughIndexer([get_phase("ni")], det, backend="cuda")
    t0 = time.perf_counter()
    ix.index_chunk(pats[:64])
    compile_s = time.perf_counter() - t0
    rates = gpu.profile_stages(ix, pats, repeats=repeats, stages=("vote_gpu",))
    out = ix.index_chunk(pats)
    return {"tpb": TPB, "min_blocks": MIN_BLOCKS, "compile_s": compile_s, "vote_gpu_pps": rates["vote_gpu"],
            "phase_id": out["phase_id"].tolist(), "quaternion": out["quaternion"].tolist()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["128:0", "128:4", "64:8"],
                    help="TPB:MIN_BLOCKS pairs; the first is the reference for the results check")
    ap.add_argument("--n", type=int, default=16384, help="patterns (60x60, dose 20)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.repeats)))
        return 0

    from diffraflow.operators.indexing.testing import ni_master_pattern, simulate_patterns
    from kikuchipy.detectors import EBSDDetector
    from orix.quaternion import Rotation

    det = EBSDDetector((60, 60), pc=PC, sample_tilt=70.0)
    rot = Rotation(np.random.default_rng(11).normal(size=(args.n, 4)))
    pats = np.clip(simulate_patterns(ni_master_pattern(), rot, det, dose=20, seed=5), 0, 255).astype(np.uint8)
    results, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "patterns.npy"
        np.save(data, pats)
        for setting in args.settings:
            tpb, min_blocks = setting.split(":")
            env = {**os.environ, "DIFFRAFLOW_CUDA_TPB": tpb, "DIFFRAFLOW_CUDA_MIN_BLOCKS": min_blocks}
            done = subprocess.run([sys.executable, __file__, "--child", str(data), "--repeats", str(args.repeats)],
                                  env=env, capture_output=True, text=True)
            if done.returncode:
                results.append({"setting": setting, "error": done.stderr[-1500:]})
                continue
            rec = json.loads(done.stdout.strip().splitlines()[-1])
            q, ph = np.asarray(rec.pop("quaternion")), np.asarray(rec.pop("phase_id"))
            if ref is None:
                ref = (q, ph)
            dot = np.clip(np.abs(np.sum(q * ref[0], axis=1)), 0, 1)
            rec["same_as_first"] = {"phase": float(np.mean(ph == ref[1])),
                                    "within_0.01deg": float(np.mean(np.degrees(2 * np.arccos(dot)) < 0.01))}
            rec["setting"] = setting
            results.append(rec)
            print(json.dumps(rec), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
