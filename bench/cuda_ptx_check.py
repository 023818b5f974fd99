"""Compile the CUDA voting kernel to PTX without a GPU: numba-cuda's typing and NVVM, for real.

numba's CUDA simulator (what the tests use without a GPU) runs the kernels
as Python, so it never types them: a construct numba-cuda cannot compile
would first fail on a GPU machine. This script closes that gap on any
machine with numba-cuda and NVIDIA's NVVM wheels (no driver, no GPU)::

    python -m venv /tmp/ptxenv && /tmp/ptxenv/bin/pip install "numba==$(python -c 'import numba; print(numba.__version__)')" "numba-cuda[cu13]"
    echo "$(python -c 'import site; print(site.getsitepackages()[0])')" > /tmp/ptxenv/lib/python3.*/site-packages/zz_project.pth
    /tmp/ptxenv/bin/python bench/cuda_ptx_check.py          # sm_90 (H100/H200)

It builds a small indexer, assembles the kernel's arguments exactly as the
CUDA path does (:func:`diffraflow.operators.indexing.gpu.vote_args`, with
host arrays of the device arrays' types) and compiles. With ``ptxas`` on the
PATH (``pip install nvidia-cuda-nvcc``) it also prints registers, spills and
shared memory per thread block (``DIFFRAFLOW_CUDA_TPB`` and
``DIFFRAFLOW_CUDA_MIN_BLOCKS`` apply as on the GPU). Exit status 0 means it compiled.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def kernel_types(dtype: str = "uint8"):
    """numba types of the voting kernel's arguments for a 60x60 Ni indexer."""
    import numba
    from diffraflow.operators.crystallography import get_phase
    from diffraflow.operators.indexing import HoughIndexer, gpu
    from diffraflow.operators.indexing.cuda_kernels import scratch_shapes
    from kikuchipy.detectors import EBSDDetector

    ix = HoughIndexer([get_phase("ni")], EBSDDetector((60, 60), pc=(0.42, 0.22, 0.5)), backend="cpu")
    score, quat = scratch_shapes(4)
    slot = gpu._Slot(stream=None, pin_in=None, dev_in=None, pin_pc=None, dev_pc=None,
                     dev_out=ix._empty_outputs(8), pin_out={}, cand_score=np.zeros(score, np.int32),
                     cand_q=np.zeros(quat))
    st = gpu.GPUState(ops=None, radon=None, radon_mode="sparse", mask_index=None, bg=None, bg_mode=0, dyn_basis=None,
                      dyn_pinv=None, k_rho=None, k_theta=None, n_theta=ix.plan.n_theta, n_rho=ix.plan.n_rho,
                      n_mask=ix.plan.mask_index.size, valid=ix.valid, rho_step=float(ix.plan.rho_step),
                      tables=tuple(ix._voting_args(ix.pcs)[1:]), grid=4)
    filt = np.zeros((8, ix.plan.n_theta, ix.plan.n_rho), np.float32)
    args = gpu.vote_args(st, filt, ix.pcs, slot, 8)
    return tuple(numba.typeof(a) for a in args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cc", default="9.0", help="compute capability (default 9.0: H100/H200)")
    args = ap.parse_args(argv)
    from numba import cuda

    if cuda.__name__.startswith("numba.cuda.simulator") or "simulator" in getattr(cuda, "__file__", ""):
        print("numba's CUDA simulator is on: unset NUMBA_ENABLE_CUDASIM", file=sys.stderr)
        return 2
    from diffraflow.operators.indexing.cuda_kernels import _JIT, MIN_BLOCKS, TPB, vote_kernel

    cc = tuple(int(x) for x in args.cc.split("."))
    # Device functions are compiled for "the current device", which needs a
    # driver; without one, name the target instead.
    import types as _types

    from numba.cuda import dispatcher as _dispatcher

    _dispatcher.get_current_device = lambda: _types.SimpleNamespace(compute_capability=cc)
    sig = kernel_types()
    t0 = time.perf_counter()
    bounds = {"launch_bounds": _JIT["launch_bounds"]} if "launch_bounds" in _JIT else {}
    ptx, _ = cuda.compile_ptx(vote_kernel.py_func, sig, cc=cc, **bounds)
    print(f"vote_kernel: PTX for sm_{cc[0]}{cc[1]} in {time.perf_counter() - t0:.1f} s, {len(ptx.splitlines())} lines, "
          f"TPB {TPB}, MIN_BLOCKS {MIN_BLOCKS}")
    ptxas = shutil.which("ptxas")
    if ptxas:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "k.ptx"
            src.write_text(ptx)
            done = subprocess.run([ptxas, "-v", f"-arch=sm_{cc[0]}{cc[1]}", str(src), "-o", str(Path(tmp) / "k.o")],
                                  capture_output=True, text=True)
            print(done.stderr.strip() or done.stdout.strip())
            if done.returncode:
                return done.returncode
    else:
        print("(no ptxas on the PATH: registers and spills not reported)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
