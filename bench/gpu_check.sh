#!/usr/bin/env bash
# The GPU check of the Hough indexer's CUDA path (issue 13), in ONE device call of at most 10 minutes.
#
# In a session that has the device tool, from the checkout:
#   ../shared/tools/device-wheels.sh                  # the wheels the GPU image lacks, into .whl/ (once)
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Everything comes back in $OUT (at most 8 files):
#   summary.json      what ran, exit codes, seconds, and the figures of hough_gpu.json and tune.json
#   hough_gpu.md      the RESULTS.md section: paste it into bench/RESULTS.md in place of the "unmeasured" note
#   hough_gpu.json    every figure of bench/hough.py --backend cuda
#   tune.json         the voting kernel alone under other block sizes / register caps (bench/cuda_tune.py)
#   warmup.log, tests.log, bench.log, nvidia-smi.txt
# Steps, by priority, each under its own time limit inside a global deadline: install, warm-up (numba CPU
# and CUDA kernels compiled in one process, as GPU.md asks), the bench, the GPU tests, kernel tuning.
set -u
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_SECONDS:-570}))
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
export NUMBA_CACHE_DIR=/tmp/numba_cache BENCH_TMP=/tmp PYTHONUNBUFFERED=1
declare -A RC SECS

left() { echo $((DEADLINE - $(date +%s))); }
step() {  # step NAME LIMIT_S LOG COMMAND...
    local name=$1 limit=$2 log=$3; shift 3
    local budget; budget=$(left)
    if [ "$budget" -lt 20 ]; then RC[$name]=skipped; SECS[$name]=0; echo "skip $name: ${budget}s left" >>"$OUT/$log"; return; fi
    [ "$limit" -gt "$budget" ] && limit=$budget
    local t0; t0=$(date +%s)
    timeout --signal=INT --kill-after=10 "$limit" "$@" >>"$OUT/$log" 2>&1
    RC[$name]=$?
    SECS[$name]=$(( $(date +%s) - t0 ))
    echo "== $name: rc ${RC[$name]} in ${SECS[$name]} s (limit $limit s)" | tee -a "$OUT/$log"
}

# 1. The project's missing packages (GPU.md), and the machine.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >"$OUT/warmup.log" 2>&1 || echo "pip install failed" >>"$OUT/warmup.log"
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python3 -c "import numba, cupy; from importlib.metadata import version; print('numba', numba.__version__, 'numba-cuda', version('numba-cuda'), 'cupy', cupy.__version__)" >>"$OUT/warmup.log" 2>&1

# 2. Compile everything once, in one process: CPU kernels (uint8; float32 for the former path's voting) and the
#    CUDA kernel, with its registers, shared and local memory per thread as compiled for this GPU.
step warmup 240 warmup.log python3 - <<'EOF'
import time
t0 = time.perf_counter()
from diffraflow.operators.indexing.indexer import warm_up_kernels
print("cpu uint8 compile s", warm_up_kernels("uint8", "cpu"), flush=True)
print("cuda uint8 compile s", warm_up_kernels("uint8", "cuda"), flush=True)
import numpy as np
from kikuchipy.detectors import EBSDDetector
from diffraflow.operators.crystallography import get_phase
from diffraflow.operators.indexing import HoughIndexer, gpu
ix = HoughIndexer([get_phase("ni")], EBSDDetector((20, 20), pc=(0.5, 0.5, 0.5)), backend="cuda")
gpu.index_chunk_cuda(ix, np.zeros((2, 400), np.uint8), ix.pcs, vote="cpu")  # compiles index_filtered_cpu
from diffraflow.operators.indexing.cuda_kernels import TPB, vote_kernel
for name in ("get_regs_per_thread", "get_shared_mem_per_block", "get_local_mem_per_thread"):
    try:
        print(name, getattr(vote_kernel, name)(), flush=True)
    except Exception as exc:
        print(name, "n/a", exc)
print("TPB", TPB, "grid", gpu.state_for(ix).grid, "warm-up total s", round(time.perf_counter() - t0, 1))
EOF

# 3. The bench: 60x60 first (the target), then 120x120, then 80x80 while time lasts; end to end last.
# BENCH_ARGS replaces the sizes (a dry run of this script on a machine without GPU uses small ones).
# shellcheck disable=SC2086
step bench 300 bench.log python3 bench/hough.py --backend cuda \
    ${BENCH_ARGS:---shapes 60 120 80 --n 20000 --repeats 2 --budget 150 --throughput 100000 --end-to-end 100000} \
    --json "$OUT/hough_gpu.json" --markdown "$OUT/hough_gpu.md"

# 4. The GPU tests of the indexer (CUDA vs CPU agreement, CuPy frames into hough_index, image stages) and the
#    operator's conformance suite, which compares the cupy backend with numpy.
step tests 150 tests.log bash -c 'python3 -m pytest -q -p no:cacheprovider -m gpu tests/operators/test_hough_gpu.py \
    tests/operators/test_hough_accuracy.py; \
    a=$?; python3 -m pytest -q -p no:cacheprovider -m "not slow" tests/operators/test_hough_index_operator.py; \
    b=$?; exit $((a > b ? a : b))'

# 5. While time lasts: the voting kernel alone with its registers capped (more blocks per multiprocessor) and
#    with smaller blocks, each compiled in its own interpreter (bench/cuda_tune.py).
step tune 150 bench.log python3 bench/cuda_tune.py --json "$OUT/tune.json"

python3 - "$OUT" "${RC[warmup]:-}" "${RC[bench]:-}" "${RC[tests]:-}" "${RC[tune]:-}" "${SECS[warmup]:-}" \
    "${SECS[bench]:-}" "${SECS[tests]:-}" "${SECS[tune]:-}" "$(( $(date +%s) - START ))" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
names = ("warmup", "bench", "tests", "tune")
summary = {"rc": dict(zip(names, sys.argv[2:6])), "seconds": dict(zip(names, sys.argv[6:10])),
           "total_seconds": int(sys.argv[10])}
for name in ("hough_gpu", "tune"):
    path = out / f"{name}.json"
    if path.exists():
        summary[name] = json.loads(path.read_text())
tests = out / "tests.log"
if tests.exists():
    summary["tests_tail"] = tests.read_text()[-1500:]
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({k: v for k, v in summary.items() if k != "bench"}, indent=1))
EOF
