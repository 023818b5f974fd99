"""CUDA kernel (numba-cuda) for peaks-to-orientations: one thread block per pattern.

The image stages (preparation, Radon transform, butterfly filter) run as CuPy
array code in :mod:`diffraflow.operators.indexing.gpu`; everything after them
runs here, so only per-pattern results (about 60 bytes) leave the GPU.

Design
------
**One thread block of** :data:`TPB` **threads per pattern**, in a persistent
grid: a fixed number of blocks (a few per multiprocessor) loop over the
patterns of a batch, so the per-block scratch in global memory
(``cand_score``, ``cand_q``: :data:`CAND_CAP` hypotheses) is sized by the grid,
not by the batch. Within a block, for pattern ``s``:

1. *Peak search.* The filtered transform of one pattern, ``(n_theta, n_rho)``
   in pattern-major layout, is read with unit stride by consecutive threads.
   Each thread keeps its own sorted top-``n_bands`` list of 3x3 local maxima
   (local memory); ``n_bands`` rounds of a block-wide arg-max (height, then
   scan position) merge them. The result is exactly the CPU kernel's top list:
   same neighbourhood rule (earlier neighbours strictly lower, later ones may
   tie), same tie order.
2. *Sub-bin refinement and band normals:* thread ``k`` handles peak ``k``.
3. *Triplet voting*, per phase: one thread per band pair finds the pair's
   window in the interplanar-angle table; a prefix sum numbers the
   hypotheses; tiles of :data:`TILE` hypotheses are scored in parallel (one
   thread per hypothesis, TRIAD matrix recomputed from its index instead of
   stored). The CPU scores hypotheses one after the other and skips those
   equal to the running best; that order is reproduced exactly with a
   parallel "first better hypothesis not equal to the current best" search,
   repeated once per change of the best (a handful per pattern).
4. *Least-squares fit, runner-up, re-ranking by Radon evidence, guided
   refinement.* Small serial parts (fits over at most 32 bands, 3x3 and 4x4
   algebra) run on thread 0; everything over candidates or reflectors runs
   one item per thread, and sums whose order could matter are accumulated by
   thread 0 in the CPU's order.

Wahba's problem is solved by Horn's quaternion method (largest eigenvector
of a symmetric 4x4 matrix by cyclic Jacobi rotations) instead of the CPU's
3x3 SVD: the same optimum, different rounding (about 1e-15).

Agreement with the CPU kernel (:mod:`diffraflow.operators.indexing.kernel`)
on the same filtered transform: identical peaks, band counts, phases and
confidences, orientations equal to about 1e-12 degrees, except for *near
ties*: two hypotheses whose scores, fit errors or Radon evidence differ only
in the last bits, or an interplanar angle on the edge of its table window,
where the last-bit differences of ``acos`` and the eigen-solver can pick the
other one. Against the CPU path end to end (whose float32 image stages sum in
another order) the same holds for all but such ties; the tests measure it.

Limits: ``n_bands`` and ``n_pair_bands`` at most :data:`MAX_BANDS`, at most
:data:`MAX_PHASES` phases, ``n_select`` at most :data:`MAX_SELECT`, up to 24
symmetry operations per phase (any proper point group).

Testing without a GPU: with ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is
imported) numba runs these kernels in its CUDA simulator, one Python thread
per CUDA thread, so small batches can be compared with the CPU kernel; the
simulator checks behaviour, not numba-cuda typing, which
``bench/cuda_ptx_check.py`` checks by compiling to PTX for sm_90.
``DIFFRAFLOW_CUDA_TPB`` (a power of two from 32 to 1024, read at import)
changes the block size; the simulator tests use 32 to run faster.
``DIFFRAFLOW_CUDA_MIN_BLOCKS`` asks the compiler for that many resident blocks
per multiprocessor (launch bounds, which cap the registers); for sm_90 at 128
threads ptxas reports 224 registers uncapped (two blocks per multiprocessor),
168 at 3 and 128 at 4, with 300 more bytes of stack and no spill in the
kernel body. Which is faster is for a GPU to say (``bench/cuda_tune.py``).
Only the default configuration is cached on disk: numba's cache key knows
neither knob.
"""

from __future__ import annotations

import inspect
import math
import os

import numpy as np
from diffraflow.operators.indexing.kernel import CAND_CAP
from numba import cuda

__all__ = ["vote_kernel", "TPB", "MIN_BLOCKS", "MAX_BANDS", "MAX_PHASES", "MAX_SELECT", "TILE", "CAND_CAP", "scratch_shapes"]

#: Threads per block. 128 (four warps) keeps the per-pattern loops busy
#: (15,660 Radon bins at 60x60, about 200 hypotheses) while leaving room for
#: several blocks per multiprocessor.
TPB = int(os.environ.get("DIFFRAFLOW_CUDA_TPB", "128"))
if TPB < 32 or TPB > 1024 or TPB & (TPB - 1):
    raise ValueError(f"DIFFRAFLOW_CUDA_TPB must be a power of two from 32 to 1024, got {TPB}")
#: Resident blocks per multiprocessor requested from the compiler (0: registers uncapped).
MIN_BLOCKS = int(os.environ.get("DIFFRAFLOW_CUDA_MIN_BLOCKS", "0"))
_JIT: dict[str, object] = {"cache": TPB == 128 and not MIN_BLOCKS}
if MIN_BLOCKS and "launch_bounds" in inspect.signature(cuda.jit).parameters:  # numba-cuda, not the simulator
    _JIT["launch_bounds"] = (TPB, MIN_BLOCKS)
#: Most bands per pattern (and most bands used for pair hypotheses).
MAX_BANDS = 32
MAX_PAIRS = MAX_BANDS * (MAX_BANDS - 1) // 2
_PAIR_STARTS = MAX_PAIRS + 1  # shared-array sizes must be plain constants
#: Most phases per indexer.
MAX_PHASES = 8
#: Most distinct hypotheses re-ranked by Radon evidence.
MAX_SELECT = 32
#: Hypotheses scored per pass (shared memory: 12 bytes each). Ni at 60x60
#: makes 150-270 hypotheses per pattern, so one tile is the rule.
TILE = 512
# Candidate arg-max keys: score * _KEY + (_KEY - 1 - index); _KEY > CAND_CAP.
_KEY = 4096
_BIG = 1 << 30

# Scalars shared by the block (slots of s_i / s_f).
_I_NFOUND, _I_BEST_CNT, _I_NDIST, _I_FAIL, _I_PHASE, _I_USED = 0, 1, 2, 3, 4, 5
_F_BEST_ERR, _F_QUALITY, _F_FIT, _F_CONF = 0, 1, 2, 3


def scratch_shapes(grid: int) -> tuple[tuple[int, int], tuple[int, int, int]]:
    """Shapes of the per-block scratch arrays ``cand_score`` (int32) and ``cand_q`` (float64).

    Examples
    --------
    >>> scratch_shapes(4)
    ((4, 2048), (4, 2048, 4))
    """
    return (grid, CAND_CAP), (grid, CAND_CAP, 4)


# ------------------------------------------------------------------ block-wide
@cuda.jit(device=True)
def _block_min_int(buf, v):  # pragma: no cover - device code
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    stride = TPB // 2
    while stride > 0:
        if tid < stride:
            o = buf[tid + stride]
            if o < buf[tid]:
                buf[tid] = o
        cuda.syncthreads()
        stride //= 2
    res = buf[0]
    cuda.syncthreads()
    return res


@cuda.jit(device=True)
def _block_max_int(buf, v):  # pragma: no cover - device code
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    stride = TPB // 2
    while stride > 0:
        if tid < stride:
            o = buf[tid + stride]
            if o > buf[tid]:
                buf[tid] = o
        cuda.syncthreads()
        stride //= 2
    res = buf[0]
    cuda.syncthreads()
    return res


@cuda.jit(device=True)
def _block_top_peak(bh, bq, bo, h, q):  # pragma: no cover - device code
    # Highest h, then lowest scan position q; returns (h, q, owning thread).
    tid = cuda.threadIdx.x
    bh[tid] = h
    bq[tid] = q
    bo[tid] = tid
    cuda.syncthreads()
    stride = TPB // 2
    while stride > 0:
        if tid < stride:
            oh = bh[tid + stride]
            oq = bq[tid + stride]
            if oh > bh[tid] or (oh == bh[tid] and oq < bq[tid]):
                bh[tid] = oh
                bq[tid] = oq
                bo[tid] = bo[tid + stride]
        cuda.syncthreads()
        stride //= 2
    rh = bh[0]
    rq = bq[0]
    ro = bo[0]
    cuda.syncthreads()
    return rh, rq, ro


# ------------------------------------------------------------- Radon space
@cuda.jit(device=True)
def _val(f, valid, s, t, i):  # pragma: no cover - device code
    # Periodic theta with rho mirrored across the seam, as bands._value.
    n_theta = valid.shape[0]
    n_rho = valid.shape[1]
    if t < 0:
        t += n_theta
        i = n_rho - 1 - i
    elif t >= n_theta:
        t -= n_theta
        i = n_rho - 1 - i
    if i < 0 or i >= n_rho:
        return False, 0.0
    if valid[t, i] == 0:
        return False, 0.0
    return True, float(f[s, t, i])


@cuda.jit(device=True)
def _is_peak(f, valid, s, t, i, v):  # pragma: no cover - device code
    # Earlier neighbours in scan order strictly lower, later ones may tie
    # (bands.find_peaks_block), so a flat top yields one peak.
    n_theta = valid.shape[0]
    n_rho = valid.shape[1]
    for dt in range(-1, 2):
        tt = t + dt
        flip = False
        if tt < 0:
            tt += n_theta
            flip = True
        elif tt >= n_theta:
            tt -= n_theta
            flip = True
        for di in range(-1, 2):
            if dt == 0 and di == 0:
                continue
            ii = i + di
            if flip:
                ii = n_rho - 1 - ii
            if ii < 0 or ii >= n_rho or valid[tt, ii] == 0:
                continue
            w = f[s, tt, ii]
            if dt < 0 or (dt == 0 and di < 0):
                if w >= v:
                    return False
            elif w > v:
                return False
    return True


@cuda.jit(device=True)
def _refine_peak(f, valid, s, t, i):  # pragma: no cover - device code
    # bands.refine_peak: vertex of the 3x3 quadratic, 1-D parabolas as fallback.
    v = cuda.local.array((3, 3), np.float64)
    ok0, c = _val(f, valid, s, t, i)
    all_ok = True
    for dt in range(-1, 2):
        for di in range(-1, 2):
            ok, w = _val(f, valid, s, t + dt, i + di)
            if not ok:
                all_ok = False
                w = c
            v[dt + 1, di + 1] = w
    ft = 0.5 * (v[2, 1] - v[0, 1])
    fr = 0.5 * (v[1, 2] - v[1, 0])
    ftt = v[2, 1] - 2.0 * c + v[0, 1]
    frr = v[1, 2] - 2.0 * c + v[1, 0]
    ftr = 0.25 * (v[2, 2] - v[2, 0] - v[0, 2] + v[0, 0])
    det = ftt * frr - ftr * ftr
    if all_ok and ftt < 0.0 and det > 0.0:
        dt_ = -(frr * ft - ftr * fr) / det
        di_ = -(ftt * fr - ftr * ft) / det
    else:
        dt_ = -ft / ftt if ftt < 0.0 else 0.0
        di_ = -fr / frr if frr < 0.0 else 0.0
    dt_ = min(max(dt_, -0.5), 0.5)
    di_ = min(max(di_, -0.5), 0.5)
    return dt_, di_


@cuda.jit(device=True)
def _sample(f, valid, s, t, i):  # pragma: no cover - device code
    # bands.sample_radon: bilinear, invalid if any of the four bins is.
    t0 = int(math.floor(t))
    i0 = int(math.floor(i))
    ft = t - t0
    fi = i - i0
    acc = 0.0
    for dt in range(2):
        wt = ft if dt == 1 else 1.0 - ft
        for di in range(2):
            wi = fi if di == 1 else 1.0 - fi
            ok, v = _val(f, valid, s, t0 + dt, i0 + di)
            if not ok:
                return False, 0.0
            acc += wt * wi * v
    return True, acc


# ----------------------------------------------------------------- geometry
@cuda.jit(device=True)
def _band_normal(rho, theta, pc0, pc1, pc2, nrows, ncols, m_ds, out, k):  # pragma: no cover - device code
    # geometry.band_normals for one band, into out[k].
    x_off = ncols * (0.5 - pc0)
    y_off = nrows * (pc1 - 0.5)
    z = nrows * pc2
    c = math.cos(theta)
    s = math.sin(theta)
    px = rho * c + x_off
    py = -rho * s + y_off
    dx = -s
    dy = -c
    nx = -z * dy
    ny = z * dx
    nz = px * dy - py * dx
    o0 = m_ds[0, 0] * nx + m_ds[0, 1] * ny + m_ds[0, 2] * nz
    o1 = m_ds[1, 0] * nx + m_ds[1, 1] * ny + m_ds[1, 2] * nz
    o2 = m_ds[2, 0] * nx + m_ds[2, 1] * ny + m_ds[2, 2] * nz
    norm = math.sqrt(o0 * o0 + o1 * o1 + o2 * o2)
    out[k, 0] = o0 / norm
    out[k, 1] = o1 / norm
    out[k, 2] = o2 / norm


@cuda.jit(device=True)
def _normal_to_line(n0, n1, n2, pc0, pc1, pc2, nrows, ncols, m_ds):  # pragma: no cover - device code
    # geometry.normal_to_line: (ok, rho, theta) with theta in [0, pi).
    a = m_ds[0, 0] * n0 + m_ds[1, 0] * n1 + m_ds[2, 0] * n2
    bb = m_ds[0, 1] * n0 + m_ds[1, 1] * n1 + m_ds[2, 1] * n2
    c = m_ds[0, 2] * n0 + m_ds[1, 2] * n1 + m_ds[2, 2] * n2
    k = math.sqrt(a * a + bb * bb)
    if k < 1e-9:
        return False, 0.0, 0.0
    x_off = ncols * (0.5 - pc0)
    y_off = nrows * (pc1 - 0.5)
    z = nrows * pc2
    ct = a / k
    st = -bb / k
    rho = -(a * x_off + bb * y_off + c * z) / k
    if st < 0 or (st == 0 and ct < 0):
        ct = -ct
        st = -st
        rho = -rho
    theta = math.atan2(st, ct)
    if theta >= math.pi:
        theta -= math.pi
        rho = -rho
    return True, rho, theta


# ---------------------------------------------------------------- rotations
@cuda.jit(device=True)
def _decode_pair(q, n_src):  # pragma: no cover - device code
    # q-th pair (i < j) in the CPU's loop order over n_src bands.
    i = 0
    while q >= n_src - 1 - i:
        q -= n_src - 1 - i
        i += 1
    return i, i + 1 + q


@cuda.jit(device=True)
def _hyp_matrix(h, nrm, n_src, pstart, plo, n_pairs, pair_triad, po, r):  # pragma: no cover - device code
    """Crystal-to-sample TRIAD matrix of hypothesis ``h`` (voting._triad, R = Ts^T Tc)."""
    lo = 0
    hi = n_pairs + 1
    while lo < hi:  # last pair whose first hypothesis is <= h
        mid = (lo + hi) // 2
        if pstart[mid] <= h:
            lo = mid + 1
        else:
            hi = mid
    q = lo - 1
    i, j = _decode_pair(q, n_src)
    d = nrm[i, 0] * nrm[j, 0] + nrm[i, 1] * nrm[j, 1] + nrm[i, 2] * nrm[j, 2]
    sg = 1.0 if d >= 0 else -1.0
    a0 = nrm[i, 0]
    a1 = nrm[i, 1]
    a2 = nrm[i, 2]
    b0 = sg * nrm[j, 0]
    b1 = sg * nrm[j, 1]
    b2 = sg * nrm[j, 2]
    cx = a1 * b2 - a2 * b1
    cy = a2 * b0 - a0 * b2
    cz = a0 * b1 - a1 * b0
    nn = math.sqrt(cx * cx + cy * cy + cz * cz)
    cx /= nn
    cy /= nn
    cz /= nn
    dx = a1 * cz - a2 * cy
    dy = a2 * cx - a0 * cz
    dz = a0 * cy - a1 * cx
    p = po + plo[q] + (h - pstart[q])
    for c in range(3):
        r[0, c] = a0 * pair_triad[p, 0, c] + cx * pair_triad[p, 1, c] + dx * pair_triad[p, 2, c]
        r[1, c] = a1 * pair_triad[p, 0, c] + cy * pair_triad[p, 1, c] + dy * pair_triad[p, 2, c]
        r[2, c] = a2 * pair_triad[p, 0, c] + cz * pair_triad[p, 1, c] + dz * pair_triad[p, 2, c]


@cuda.jit(device=True)
def _same(r1, r2, sym, so, nsym, cos_half):  # pragma: no cover - device code
    # voting._same_orientation: trace(r1^T r2 S^T) >= 1 + 2 cos(limit) for some S.
    m = cuda.local.array((3, 3), np.float64)
    for a in range(3):
        for c in range(3):
            m[a, c] = r1[0, a] * r2[0, c] + r1[1, a] * r2[1, c] + r1[2, a] * r2[2, c]
    lim = 1.0 + 2.0 * cos_half
    for k in range(nsym):
        tr = 0.0
        for a in range(3):
            for c in range(3):
                tr += m[a, c] * sym[so + k, a, c]
        if tr >= lim:
            return True
    return False


@cuda.jit(device=True)
def _matrix_to_quaternion(m, transpose, out):  # pragma: no cover - device code
    # voting.matrix_to_quaternion of m (or of m^T), w >= 0.
    m00 = m[0, 0]
    m11 = m[1, 1]
    m22 = m[2, 2]
    if transpose:
        m01 = m[1, 0]
        m02 = m[2, 0]
        m10 = m[0, 1]
        m12 = m[2, 1]
        m20 = m[0, 2]
        m21 = m[1, 2]
    else:
        m01 = m[0, 1]
        m02 = m[0, 2]
        m10 = m[1, 0]
        m12 = m[1, 2]
        m20 = m[2, 0]
        m21 = m[2, 1]
    tr = m00 + m11 + m22
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        w = 0.25 * s
        x = (m21 - m12) / s
        y = (m02 - m20) / s
        z = (m10 - m01) / s
    elif m00 > m11 and m00 > m22:
        s = 2.0 * math.sqrt(1.0 + m00 - m11 - m22)
        w = (m21 - m12) / s
        x = 0.25 * s
        y = (m01 + m10) / s
        z = (m02 + m20) / s
    elif m11 > m22:
        s = 2.0 * math.sqrt(1.0 + m11 - m00 - m22)
        w = (m02 - m20) / s
        x = (m01 + m10) / s
        y = 0.25 * s
        z = (m12 + m21) / s
    else:
        s = 2.0 * math.sqrt(1.0 + m22 - m00 - m11)
        w = (m10 - m01) / s
        x = (m02 + m20) / s
        y = (m12 + m21) / s
        z = 0.25 * s
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if w < 0:
        n = -n
    out[0] = w / n
    out[1] = x / n
    out[2] = y / n
    out[3] = z / n


@cuda.jit(device=True)
def _canonical_quat(r, sym, so, nsym, out):  # pragma: no cover - device code
    # kernel._canonical_quat: quaternion of the r @ S with the largest trace.
    best = -10.0
    bs = 0
    for k in range(nsym):
        tr = 0.0
        for a in range(3):
            for c in range(3):
                tr += r[a, c] * sym[so + k, c, a]
        if tr > best:
            best = tr
            bs = k
    m = cuda.local.array((3, 3), np.float64)
    for a in range(3):
        for c in range(3):
            m[a, c] = r[a, 0] * sym[so + bs, 0, c] + r[a, 1] * sym[so + bs, 1, c] + r[a, 2] * sym[so + bs, 2, c]
    _matrix_to_quaternion(m, False, out)


@cuda.jit(device=True)
def _wahba(b, r_out):  # pragma: no cover - device code
    """Rotation R maximising trace(R^T b) (Horn 1987: top eigenvector of a 4x4 matrix).

    ``b[a, c] = sum w n_a h_c`` with ``n`` sample and ``h`` crystal vectors, as
    in voting._fit; the CPU solves the same problem by SVD.
    """
    a = cuda.local.array((4, 4), np.float64)
    v = cuda.local.array((4, 4), np.float64)
    sxx = b[0, 0]
    sxy = b[1, 0]
    sxz = b[2, 0]
    syx = b[0, 1]
    syy = b[1, 1]
    syz = b[2, 1]
    szx = b[0, 2]
    szy = b[1, 2]
    szz = b[2, 2]
    a[0, 0] = sxx + syy + szz
    a[0, 1] = syz - szy
    a[0, 2] = szx - sxz
    a[0, 3] = sxy - syx
    a[1, 1] = sxx - syy - szz
    a[1, 2] = sxy + syx
    a[1, 3] = szx + sxz
    a[2, 2] = -sxx + syy - szz
    a[2, 3] = syz + szy
    a[3, 3] = -sxx - syy + szz
    fro = 0.0
    for p in range(4):
        for q in range(4):
            if q < p:
                a[p, q] = a[q, p]
            v[p, q] = 1.0 if p == q else 0.0
            fro += a[p, q] * a[p, q]
    # Cyclic Jacobi: each rotation zeroes one off-diagonal pair; quadratic
    # convergence makes 6-8 sweeps enough for float64.
    for _sweep in range(32):
        off = 0.0
        for p in range(3):
            for q in range(p + 1, 4):
                off += a[p, q] * a[p, q]
        if off <= 1e-30 * fro:
            break
        for p in range(3):
            for q in range(p + 1, 4):
                apq = a[p, q]
                if apq == 0.0:
                    continue
                theta = (a[q, q] - a[p, p]) / (2.0 * apq)
                if abs(theta) > 1e100:
                    t = 0.5 / theta
                else:
                    t = 1.0 / (abs(theta) + math.sqrt(theta * theta + 1.0))
                    if theta < 0.0:
                        t = -t
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                for k in range(4):
                    akp = a[k, p]
                    akq = a[k, q]
                    a[k, p] = c * akp - s * akq
                    a[k, q] = s * akp + c * akq
                for k in range(4):
                    apk = a[p, k]
                    aqk = a[q, k]
                    a[p, k] = c * apk - s * aqk
                    a[q, k] = s * apk + c * aqk
                for k in range(4):
                    vkp = v[k, p]
                    vkq = v[k, q]
                    v[k, p] = c * vkp - s * vkq
                    v[k, q] = s * vkp + c * vkq
    top = 0
    for p in range(1, 4):
        if a[p, p] > a[top, top]:
            top = p
    q0 = v[0, top]
    qx = v[1, top]
    qy = v[2, top]
    qz = v[3, top]
    nq = math.sqrt(q0 * q0 + qx * qx + qy * qy + qz * qz)
    q0 /= nq
    qx /= nq
    qy /= nq
    qz /= nq
    r_out[0, 0] = q0 * q0 + qx * qx - qy * qy - qz * qz
    r_out[0, 1] = 2.0 * (qx * qy - q0 * qz)
    r_out[0, 2] = 2.0 * (qx * qz + q0 * qy)
    r_out[1, 0] = 2.0 * (qx * qy + q0 * qz)
    r_out[1, 1] = q0 * q0 - qx * qx + qy * qy - qz * qz
    r_out[1, 2] = 2.0 * (qy * qz - q0 * qx)
    r_out[2, 0] = 2.0 * (qx * qz - q0 * qy)
    r_out[2, 1] = 2.0 * (qy * qz + q0 * qx)
    r_out[2, 2] = q0 * q0 - qx * qx - qy * qy + qz * qz


# ---------------------------------------------------------- scores and fits
@cuda.jit(device=True)
def _score_lut(r, nrm, nb, ref, ro, luts, ph, cos_tol):  # pragma: no cover - device code
    # voting._score_lut: bands explained (cube-map candidates) and summed error.
    n = luts.shape[2]
    k_max = luts.shape[4]
    cnt = 0
    err = 0.0
    for k in range(nb):
        c0 = r[0, 0] * nrm[k, 0] + r[1, 0] * nrm[k, 1] + r[2, 0] * nrm[k, 2]
        c1 = r[0, 1] * nrm[k, 0] + r[1, 1] * nrm[k, 1] + r[2, 1] * nrm[k, 2]
        c2 = r[0, 2] * nrm[k, 0] + r[1, 2] * nrm[k, 1] + r[2, 2] * nrm[k, 2]
        a0 = abs(c0)
        a1 = abs(c1)
        a2 = abs(c2)
        if a0 >= a1 and a0 >= a2:
            face = 0 if c0 >= 0 else 1
            u = c1 / a0
            v = c2 / a0
        elif a1 >= a2:
            face = 2 if c1 >= 0 else 3
            u = c2 / a1
            v = c0 / a1
        else:
            face = 4 if c2 >= 0 else 5
            u = c0 / a2
            v = c1 / a2
        i = min(int((u + 1.0) * 0.5 * n), n - 1)
        j = min(int((v + 1.0) * 0.5 * n), n - 1)
        for q in range(k_max):
            h = luts[ph, face, i, j, q]
            if h < 0:
                break
            d = c0 * ref[ro + h, 0] + c1 * ref[ro + h, 1] + c2 * ref[ro + h, 2]
            ad = abs(d)
            if ad >= cos_tol:
                cnt += 1
                err += math.acos(min(ad, 1.0))
                break
    return cnt, err


@cuda.jit(device=True)
def _score(r, nrm, nb, ref, ro, nref, cos_tol, match, sign):  # pragma: no cover - device code
    # voting._score: brute force over the phase's normals, fills match/sign.
    cnt = 0
    err = 0.0
    for k in range(nb):
        c0 = r[0, 0] * nrm[k, 0] + r[1, 0] * nrm[k, 1] + r[2, 0] * nrm[k, 2]
        c1 = r[0, 1] * nrm[k, 0] + r[1, 1] * nrm[k, 1] + r[2, 1] * nrm[k, 2]
        c2 = r[0, 2] * nrm[k, 0] + r[1, 2] * nrm[k, 1] + r[2, 2] * nrm[k, 2]
        best = -1.0
        bi = -1
        bs = 1.0
        for h in range(nref):
            d = c0 * ref[ro + h, 0] + c1 * ref[ro + h, 1] + c2 * ref[ro + h, 2]
            ad = abs(d)
            if ad > best:
                best = ad
                bi = h
                bs = 1.0 if d >= 0 else -1.0
                if ad >= cos_tol:
                    break
        if best >= cos_tol:
            cnt += 1
            err += math.acos(min(best, 1.0))
            match[k] = bi
            sign[k] = bs
        else:
            match[k] = -1
    return cnt, err


@cuda.jit(device=True)
def _fit(nrm, nb, ref, ro, match, sign, weights, r_out):  # pragma: no cover - device code
    # voting._fit: weighted least squares over the matched bands.
    b = cuda.local.array((3, 3), np.float64)
    for a in range(3):
        for c in range(3):
            b[a, c] = 0.0
    m = 0
    for k in range(nb):
        h = match[k]
        if h < 0:
            continue
        m += 1
        w = weights[k] * sign[k]
        for a in range(3):
            for c in range(3):
                b[a, c] += w * nrm[k, a] * ref[ro + h, c]
    if m < 2:
        return False
    _wahba(b, r_out)
    return True


@cuda.jit(device=True)
def _refit(r_in, nrm, nb, weights, ref, ro, nref, cos_match, r_out):  # pragma: no cover - device code
    # voting.refit: match, fit, match, fit (r_out may not alias r_in).
    match = cuda.local.array(MAX_BANDS, np.int32)
    sign = cuda.local.array(MAX_BANDS, np.float64)
    tmp = cuda.local.array((3, 3), np.float64)
    for a in range(3):
        for c in range(3):
            r_out[a, c] = r_in[a, c]
    for _ in range(2):
        _score(r_out, nrm, nb, ref, ro, nref, cos_match, match, sign)
        if _fit(nrm, nb, ref, ro, match, sign, weights, tmp):
            for a in range(3):
                for c in range(3):
                    r_out[a, c] = tmp[a, c]


@cuda.jit(device=True)
def _band_fit(r, nrm, nb, ref, ro, nref, cos_match):  # pragma: no cover - device code
    # voting.band_fit: (bands explained, mean deviation in degrees).
    match = cuda.local.array(MAX_BANDS, np.int32)
    sign = cuda.local.array(MAX_BANDS, np.float64)
    cnt, err = _score(r, nrm, nb, ref, ro, nref, cos_match, match, sign)
    return cnt, math.degrees(err / max(cnt, 1))


@cuda.jit(device=True)
def _evidence(f, valid, s, r, ref, ref_w, lo, hi, pc0, pc1, pc2, nrows, ncols, m_ds, rho_step):  # pragma: no cover
    # kernel.band_evidence: weighted mean response at every predicted band, summed in the CPU's order.
    n_theta = valid.shape[0]
    n_rho = valid.shape[1]
    theta_step = math.pi / n_theta
    half = (n_rho - 1) / 2.0
    acc = 0.0
    wsum = 0.0
    for h in range(lo, hi):
        n0 = r[0, 0] * ref[h, 0] + r[0, 1] * ref[h, 1] + r[0, 2] * ref[h, 2]
        n1 = r[1, 0] * ref[h, 0] + r[1, 1] * ref[h, 1] + r[1, 2] * ref[h, 2]
        n2 = r[2, 0] * ref[h, 0] + r[2, 1] * ref[h, 1] + r[2, 2] * ref[h, 2]
        ok, rho, theta = _normal_to_line(n0, n1, n2, pc0, pc1, pc2, nrows, ncols, m_ds)
        if not ok:
            continue
        ok, v = _sample(f, valid, s, theta / theta_step, rho / rho_step + half)
        if not ok:
            continue
        acc += ref_w[h] * v
        wsum += ref_w[h]
    if wsum == 0.0:
        return 0.0
    return acc / wsum


@cuda.jit(device=True)
def _guided_band(f, valid, s, cur, ref, ref_w, h, pc0, pc1, pc2, nrows, ncols, m_ds, rho_step, min_height,
                 meas):  # pragma: no cover - device code
    """One reflector of refine.guided_refine: (used, weight), measured normal in ``meas``."""
    n_theta = valid.shape[0]
    n_rho = valid.shape[1]
    theta_step = math.pi / n_theta
    half = (n_rho - 1) / 2.0
    nv0 = cur[0, 0] * ref[h, 0] + cur[0, 1] * ref[h, 1] + cur[0, 2] * ref[h, 2]
    nv1 = cur[1, 0] * ref[h, 0] + cur[1, 1] * ref[h, 1] + cur[1, 2] * ref[h, 2]
    nv2 = cur[2, 0] * ref[h, 0] + cur[2, 1] * ref[h, 1] + cur[2, 2] * ref[h, 2]
    ok, rho, theta = _normal_to_line(nv0, nv1, nv2, pc0, pc1, pc2, nrows, ncols, m_ds)
    if not ok:
        return False, 0.0
    tf = theta / theta_step
    rf = rho / rho_step + half
    t0 = int(math.floor(tf + 0.5))
    i0 = int(math.floor(rf + 0.5))
    best = -1e30
    bt = 0
    bi = 0
    for dt in range(-1, 2):
        for di in range(-1, 2):
            okv, v = _val(f, valid, s, t0 + dt, i0 + di)
            if okv and v > best:
                best = v
                bt = t0 + dt
                bi = i0 + di
    if best < min_height:
        return False, 0.0
    for dt in range(-1, 2):
        for di in range(-1, 2):
            if dt == 0 and di == 0:
                continue
            okv, v = _val(f, valid, s, bt + dt, bi + di)
            if okv and v > best:
                return False, 0.0
    dt_, di_ = _refine_peak(f, valid, s, bt, bi)
    tt = bt + dt_
    ii = bi + di_
    if bt < 0:
        tt += n_theta
        ii = n_rho - 1 - ii
    elif bt >= n_theta:
        tt -= n_theta
        ii = n_rho - 1 - ii
    _band_normal((ii - half) * rho_step, tt * theta_step, pc0, pc1, pc2, nrows, ncols, m_ds, meas, 0)
    d = meas[0, 0] * nv0 + meas[0, 1] * nv1 + meas[0, 2] * nv2
    if abs(d) < math.cos(math.radians(3.0)):
        return False, 0.0
    w = best * ref_w[h] if d > 0 else -best * ref_w[h]
    return True, w


# -------------------------------------------------------------------- voting
@cuda.jit(device=True)
def _vote_phase(ph, f, valid, s, blk, nfound, nrm, wts, pcs3, nrows, ncols, m_ds, pair_angle, pair_triad,
                pair_off, ref, ref_w, ref_off, sym, sym_off, pair_tol, match_tol, n_pair_bands, luts,
                n_select, rho_step, cand_score, cand_q, s_plo, s_pstart, s_tcnt, s_terr, s_red, s_i, s_f,
                s_rbest, s_ph_r, s_ph_cnt, s_ph_fit, s_ph_conf, s_reps, s_rep_q, s_rep_e):  # pragma: no cover
    """kernel._vote_block's work for one phase: vote, fit, runner-up, re-rank by evidence."""
    tid = cuda.threadIdx.x
    r = cuda.local.array((3, 3), np.float64)
    r2 = cuda.local.array((3, 3), np.float64)
    q4 = cuda.local.array(4, np.float64)
    match = cuda.local.array(MAX_BANDS, np.int32)
    sign = cuda.local.array(MAX_BANDS, np.float64)
    po = pair_off[ph]
    n_table = pair_off[ph + 1] - po
    ro = ref_off[ph]
    nref = ref_off[ph + 1] - ro
    so = sym_off[ph]
    nsym = sym_off[ph + 1] - so
    cos_match = math.cos(match_tol)
    cos_same = math.cos(math.radians(2.0))
    n_src = min(nfound, n_pair_bands)
    n_pairs = n_src * (n_src - 1) // 2

    # Each band pair's window of the (sorted) interplanar-angle table.
    for q in range(tid, n_pairs, TPB):
        i, j = _decode_pair(q, n_src)
        d = nrm[i, 0] * nrm[j, 0] + nrm[i, 1] * nrm[j, 1] + nrm[i, 2] * nrm[j, 2]
        ad = abs(d)
        lo = 0
        cnt = 0
        if ad <= 0.9995:  # else the same band found twice
            ang = math.acos(ad)
            target = ang - pair_tol
            a = 0
            b = n_table
            while a < b:
                mid = (a + b) // 2
                if pair_angle[po + mid] < target:
                    a = mid + 1
                else:
                    b = mid
            lo = a
            target = ang + pair_tol
            b = n_table
            while a < b:
                mid = (a + b) // 2
                if pair_angle[po + mid] <= target:
                    a = mid + 1
                else:
                    b = mid
            cnt = a - lo
        s_plo[q] = lo
        s_pstart[q + 1] = cnt
    cuda.syncthreads()
    if tid == 0:
        s_pstart[0] = 0
        for q in range(n_pairs):
            s_pstart[q + 1] += s_pstart[q]
        s_i[_I_BEST_CNT] = -1
        s_f[_F_BEST_ERR] = 0.0
    cuda.syncthreads()
    n_hyp = s_pstart[n_pairs]

    t0 = 0
    while t0 < n_hyp:
        tn = min(TILE, n_hyp - t0)
        for k in range(tid, tn, TPB):
            _hyp_matrix(t0 + k, nrm, n_src, s_pstart, s_plo, n_pairs, pair_triad, po, r)
            c, e = _score_lut(r, nrm, nfound, ref, ro, luts, ph, cos_match)
            s_tcnt[k] = c
            s_terr[k] = e
        cuda.syncthreads()
        # The CPU's sequential rule: a hypothesis equal (2 degrees, symmetry
        # included) to the running best is not scored and is recorded with the
        # best's count; otherwise it replaces the best if it explains more
        # bands, or as many with a lower error. Find the next replacement in
        # parallel, record everything before it, repeat.
        pos = 0
        while pos < tn:
            bc = s_i[_I_BEST_CNT]
            be = s_f[_F_BEST_ERR]
            first = _BIG
            for k in range(pos + tid, tn, TPB):
                c = s_tcnt[k]
                if c > bc or (c == bc and s_terr[k] < be):
                    if bc >= 3:
                        _hyp_matrix(t0 + k, nrm, n_src, s_pstart, s_plo, n_pairs, pair_triad, po, r)
                        if _same(s_rbest, r, sym, so, nsym, cos_same):
                            continue
                    first = k
                    break
            kk = _block_min_int(s_red, first)
            end = kk if kk < tn else tn
            for k in range(pos + tid, end, TPB):
                h = t0 + k
                if h < CAND_CAP:
                    c = s_tcnt[k]
                    if bc >= 3:
                        _hyp_matrix(h, nrm, n_src, s_pstart, s_plo, n_pairs, pair_triad, po, r)
                        if _same(s_rbest, r, sym, so, nsym, cos_same):
                            c = bc
                    cand_score[blk, h] = c
            cuda.syncthreads()  # s_rbest is read above and rewritten below
            if kk < tn and tid == 0:
                h = t0 + kk
                _hyp_matrix(h, nrm, n_src, s_pstart, s_plo, n_pairs, pair_triad, po, r)
                for a in range(3):
                    for c in range(3):
                        s_rbest[a, c] = r[a, c]
                s_i[_I_BEST_CNT] = s_tcnt[kk]
                s_f[_F_BEST_ERR] = s_terr[kk]
                if h < CAND_CAP:
                    cand_score[blk, h] = s_tcnt[kk]
            cuda.syncthreads()
            pos = end + 1
        t0 += tn

    n_cand = min(n_hyp, CAND_CAP)
    if s_i[_I_BEST_CNT] < 2:
        if tid == 0:
            s_ph_cnt[ph] = 0
            s_ph_fit[ph] = 180.0
            s_ph_conf[ph] = 0.0
        cuda.syncthreads()
        return

    # Least squares: match, fit, match, fit, count (thread 0, CPU order).
    if tid == 0:
        for a in range(3):
            for c in range(3):
                r[a, c] = s_rbest[a, c]
        for _ in range(2):
            _score(r, nrm, nfound, ref, ro, nref, cos_match, match, sign)
            if _fit(nrm, nfound, ref, ro, match, sign, wts, r2):
                for a in range(3):
                    for c in range(3):
                        r[a, c] = r2[a, c]
        cnt, err = _score(r, nrm, nfound, ref, ro, nref, cos_match, match, sign)
        for a in range(3):
            for c in range(3):
                s_ph_r[ph, a, c] = r[a, c]
        s_ph_cnt[ph] = cnt
        s_ph_fit[ph] = math.degrees(err / max(cnt, 1))
    cuda.syncthreads()

    # Runner-up: the best count among hypotheses of another orientation.
    cos_five = math.cos(math.radians(5.0))
    second = 2
    for c in range(tid, n_cand, TPB):
        sc = cand_score[blk, c]
        if sc > second:
            _hyp_matrix(c, nrm, n_src, s_pstart, s_plo, n_pairs, pair_triad, po, r)
            if not _same(s_ph_r[ph], r, sym, so, nsym, cos_five):
                second = sc
    second = _block_max_int(s_red, second)
    cnt = s_ph_cnt[ph]
    conf = (cnt - second) / max(nfound - 2, 1)
    conf = min(max(conf, 0.0), 1.0)
    if tid == 0:
        s_ph_conf[ph] = conf

    if cnt >= 3 and n_select > 1:
        # kernel.select_by_evidence: distinct hypotheses in decreasing count
        # (ties: earlier first), each new one the first not within 2.5 degrees
        # of those already chosen, found by a block arg-max per choice.
        cos_half = math.cos(math.radians(2.5))
        for c in range(tid, n_cand, TPB):
            if cand_score[blk, c] >= 3:
                _hyp_matrix(c, nrm, n_src, s_pstart, s_plo, n_pairs, pair_triad, po, r)
                _canonical_quat(r, sym, so, nsym, q4)
                for a in range(4):
                    cand_q[blk, c, a] = q4[a]
        if tid == 0:
            _canonical_quat(s_ph_r[ph], sym, so, nsym, q4)
            for a in range(4):
                s_rep_q[0, a] = q4[a]
        cuda.syncthreads()
        nd = 1
        while nd < n_select:
            key = -1
            for c in range(tid, n_cand, TPB):
                sc = cand_score[blk, c]
                if sc < 3:
                    continue
                dq = (cand_q[blk, c, 0] * s_rep_q[nd - 1, 0] + cand_q[blk, c, 1] * s_rep_q[nd - 1, 1]
                      + cand_q[blk, c, 2] * s_rep_q[nd - 1, 2] + cand_q[blk, c, 3] * s_rep_q[nd - 1, 3])
                if abs(dq) >= cos_half:
                    cand_score[blk, c] = 0  # equal to a chosen one: never chosen
                    continue
                key = max(key, sc * _KEY + (_KEY - 1 - c))
            key = _block_max_int(s_red, key)
            if key < 0:
                break
            if tid == 0:
                c = _KEY - 1 - key % _KEY
                s_reps[nd] = c
                for a in range(4):
                    s_rep_q[nd, a] = cand_q[blk, c, a]
                cand_score[blk, c] = 0
            cuda.syncthreads()
            nd += 1
        if tid < nd:
            if tid == 0:
                for a in range(3):
                    for c in range(3):
                        r[a, c] = s_ph_r[ph, a, c]
            else:
                _hyp_matrix(s_reps[tid], nrm, n_src, s_pstart, s_plo, n_pairs, pair_triad, po, r)
            s_rep_e[tid] = _evidence(f, valid, s, r, ref, ref_w, ro, ro + nref, pcs3[0], pcs3[1], pcs3[2],
                                     nrows, ncols, m_ds, rho_step)
        cuda.syncthreads()
        if tid == 0:
            best_e = s_rep_e[0]
            sel = 0
            for k in range(1, nd):
                if s_rep_e[k] > best_e:
                    best_e = s_rep_e[k]
                    sel = k
            if sel > 0:
                _hyp_matrix(s_reps[sel], nrm, n_src, s_pstart, s_plo, n_pairs, pair_triad, po, r)
                _refit(r, nrm, nfound, wts, ref, ro, nref, cos_match, r2)
                for a in range(3):
                    for c in range(3):
                        s_ph_r[ph, a, c] = r2[a, c]
                cnt2, fit2 = _band_fit(r2, nrm, nfound, ref, ro, nref, cos_match)
                s_ph_cnt[ph] = cnt2
                s_ph_fit[ph] = fit2
    cuda.syncthreads()


@cuda.jit(**_JIT)
def vote_kernel(filt, valid, rho_step, pcs, nrows, ncols, m_ds, n_bands, pair_angle, pair_triad, pair_off,
                ref, ref_w, ref_off, sym, sym_off, pair_tol, match_tol, n_pair_bands, luts, weight_fit,
                n_select, refine_iter, refine_min, rref, rref_w, rref_off, cand_score, cand_q,
                quat, phase_id, fit, conf, quality, nbands_out):  # pragma: no cover - device code
    """Peaks, band normals, voting, phase choice and guided refinement; one block per pattern.

    Arguments after ``rho_step`` up to ``rref_off`` are
    :meth:`~diffraflow.operators.indexing.HoughIndexer._voting_args` as device
    arrays; ``filt`` is ``(n, n_theta, n_rho)`` float32 (pattern-major),
    ``valid`` ``(n_theta, n_rho)`` uint8; ``cand_score``/``cand_q`` are the
    scratch of :func:`scratch_shapes` for ``gridDim.x`` blocks; the outputs are
    those of :meth:`~diffraflow.operators.indexing.HoughIndexer._empty_outputs`
    (phase ids local to the indexer's phase list).
    """
    tid = cuda.threadIdx.x
    blk = cuda.blockIdx.x
    n = filt.shape[0]
    n_theta = filt.shape[1]
    n_rho = filt.shape[2]
    n_phases = pair_off.shape[0] - 1
    theta_step = math.pi / n_theta
    half = (n_rho - 1) / 2.0
    cos_match = math.cos(match_tol)

    s_pk_h = cuda.shared.array(MAX_BANDS, np.float64)
    s_pk_t = cuda.shared.array(MAX_BANDS, np.int32)
    s_pk_r = cuda.shared.array(MAX_BANDS, np.int32)
    s_nrm = cuda.shared.array((MAX_BANDS, 3), np.float64)
    s_wts = cuda.shared.array(MAX_BANDS, np.float64)
    s_plo = cuda.shared.array(MAX_PAIRS, np.int32)
    s_pstart = cuda.shared.array(_PAIR_STARTS, np.int32)
    s_tcnt = cuda.shared.array(TILE, np.int32)
    s_terr = cuda.shared.array(TILE, np.float64)
    s_red = cuda.shared.array(TPB, np.int32)
    s_red_h = cuda.shared.array(TPB, np.float64)
    s_red_q = cuda.shared.array(TPB, np.int32)
    s_red_o = cuda.shared.array(TPB, np.int32)
    s_i = cuda.shared.array(8, np.int32)
    s_f = cuda.shared.array(8, np.float64)
    s_pc = cuda.shared.array(3, np.float64)
    s_rbest = cuda.shared.array((3, 3), np.float64)
    s_rfinal = cuda.shared.array((3, 3), np.float64)
    s_bmat = cuda.shared.array((3, 3), np.float64)
    s_ph_r = cuda.shared.array((MAX_PHASES, 3, 3), np.float64)
    s_ph_cnt = cuda.shared.array(MAX_PHASES, np.int32)
    s_ph_fit = cuda.shared.array(MAX_PHASES, np.float64)
    s_ph_conf = cuda.shared.array(MAX_PHASES, np.float64)
    s_ph_ev = cuda.shared.array(MAX_PHASES, np.float64)
    s_reps = cuda.shared.array(MAX_SELECT, np.int32)
    s_rep_q = cuda.shared.array((MAX_SELECT, 4), np.float64)
    s_rep_e = cuda.shared.array(MAX_SELECT, np.float64)
    s_g_ok = cuda.shared.array(TPB, np.int32)
    s_g_w = cuda.shared.array(TPB, np.float64)
    s_g_m = cuda.shared.array((TPB, 3), np.float64)

    l_h = cuda.local.array(MAX_BANDS, np.float32)
    l_q = cuda.local.array(MAX_BANDS, np.int32)
    r = cuda.local.array((3, 3), np.float64)
    q4 = cuda.local.array(4, np.float64)
    meas = cuda.local.array((1, 3), np.float64)

    for s in range(blk, n, cuda.gridDim.x):
        if tid < 3:
            s_pc[tid] = pcs[s, tid] if pcs.shape[0] > 1 else pcs[0, tid]
        # ---- peak search: per-thread top lists over a strided share of the bins
        n_loc = 0
        for q in range(tid, n_theta * n_rho, TPB):
            t = q // n_rho
            i = q - t * n_rho
            if i < 1 or i >= n_rho - 1 or valid[t, i] == 0:
                continue
            v = filt[s, t, i]
            if not v > 0.0:
                continue
            if n_loc == n_bands and v <= l_h[n_bands - 1]:
                continue
            if not _is_peak(filt, valid, s, t, i, v):
                continue
            pos = n_loc if n_loc < n_bands else n_bands - 1
            while pos > 0 and l_h[pos - 1] < v:
                l_h[pos] = l_h[pos - 1]
                l_q[pos] = l_q[pos - 1]
                pos -= 1
            l_h[pos] = v
            l_q[pos] = q
            if n_loc < n_bands:
                n_loc += 1
        if tid == 0:
            s_i[_I_NFOUND] = 0
        head = 0
        for k in range(n_bands):
            hv = -1.0
            qv = _BIG
            if head < n_loc:
                hv = float(l_h[head])
                qv = l_q[head]
            wh, wq, wo = _block_top_peak(s_red_h, s_red_q, s_red_o, hv, qv)
            if wh < 0.0:
                break
            if tid == 0:
                s_pk_h[k] = wh
                s_pk_t[k] = wq // n_rho
                s_pk_r[k] = wq % n_rho
                s_i[_I_NFOUND] = k + 1
            if tid == wo:
                head += 1
        cuda.syncthreads()
        nfound = s_i[_I_NFOUND]
        pc0 = s_pc[0]
        pc1 = s_pc[1]
        pc2 = s_pc[2]
        # ---- sub-bin refinement and band normals, one band per thread
        for k in range(tid, nfound, TPB):
            dt, di = _refine_peak(filt, valid, s, s_pk_t[k], s_pk_r[k])
            s_wts[k] = s_pk_h[k] if weight_fit else 1.0
            _band_normal((s_pk_r[k] + di - half) * rho_step, (s_pk_t[k] + dt) * theta_step, pc0, pc1, pc2,
                         nrows, ncols, m_ds, s_nrm, k)
        if tid == 0:
            hsum = 0.0
            for k in range(nfound):
                hsum += s_pk_h[k]
            # Rounded to float32 as the CPU kernel, which reads the threshold of the
            # guided refinement back from its float32 output.
            s_f[_F_QUALITY] = np.float32(hsum / nfound) if nfound > 0 else 0.0
            quality[s] = s_f[_F_QUALITY]
            nbands_out[s] = nfound
            s_i[_I_PHASE] = -1
            s_f[_F_FIT] = 180.0
            s_f[_F_CONF] = 0.0
        cuda.syncthreads()

        if nfound >= 3:
            for ph in range(n_phases):
                _vote_phase(ph, filt, valid, s, blk, nfound, s_nrm, s_wts, s_pc, nrows, ncols, m_ds, pair_angle,
                            pair_triad, pair_off, ref, ref_w, ref_off, sym, sym_off, pair_tol, match_tol,
                            n_pair_bands, luts, n_select, rho_step, cand_score, cand_q, s_plo, s_pstart, s_tcnt,
                            s_terr, s_red, s_i, s_f, s_rbest, s_ph_r, s_ph_cnt, s_ph_fit, s_ph_conf, s_reps,
                            s_rep_q, s_rep_e)
            max_cnt = 0
            for ph in range(n_phases):
                max_cnt = max(max_cnt, s_ph_cnt[ph])
            if max_cnt >= 3:
                # Band count decides; phases within one band of the best are told
                # apart by the Radon evidence of every band they predict, then by fit.
                need = max(max_cnt - 1, 3)
                if n_phases > 1 and tid < n_phases:
                    if s_ph_cnt[tid] >= need:
                        s_ph_ev[tid] = _evidence(filt, valid, s, s_ph_r[tid], ref, ref_w, ref_off[tid],
                                                 ref_off[tid + 1], pc0, pc1, pc2, nrows, ncols, m_ds, rho_step)
                cuda.syncthreads()
                if tid == 0:
                    best_phase = -1
                    best_ev = -1e30
                    best_fit = 180.0
                    best_conf = 0.0
                    for ph in range(n_phases):
                        if s_ph_cnt[ph] < need:
                            continue
                        ev = s_ph_ev[ph] if n_phases > 1 else 0.0
                        if best_phase < 0 or ev > best_ev or (ev == best_ev and s_ph_fit[ph] < best_fit):
                            best_ev = ev
                            best_phase = ph
                            best_fit = s_ph_fit[ph]
                            best_conf = s_ph_conf[ph]
                    s_i[_I_PHASE] = best_phase
                    s_f[_F_FIT] = best_fit
                    s_f[_F_CONF] = best_conf
                    if best_phase >= 0:
                        for a in range(3):
                            for c in range(3):
                                s_rfinal[a, c] = s_ph_r[best_phase, a, c]
                    s_i[_I_FAIL] = 0
                cuda.syncthreads()
                bp = s_i[_I_PHASE]
                if bp >= 0 and refine_iter > 0:
                    # ---- refine.guided_refine: every predicted band re-measured, refitted
                    rl = rref_off[bp]
                    m = rref_off[bp + 1] - rl
                    min_height = refine_min * s_f[_F_QUALITY]
                    if tid == 0:
                        for a in range(3):
                            for c in range(3):
                                s_rbest[a, c] = s_rfinal[a, c]
                    cuda.syncthreads()
                    for _it in range(refine_iter):
                        if tid == 0:
                            for a in range(3):
                                for c in range(3):
                                    s_bmat[a, c] = 0.0
                            s_i[_I_USED] = 0
                        for h0 in range(0, m, TPB):
                            h = h0 + tid
                            ok = False
                            w = 0.0
                            if h < m:
                                ok, w = _guided_band(filt, valid, s, s_rbest, rref, rref_w, rl + h, pc0, pc1, pc2,
                                                     nrows, ncols, m_ds, rho_step, min_height, meas)
                            s_g_ok[tid] = 1 if ok else 0
                            s_g_w[tid] = w
                            for a in range(3):
                                s_g_m[tid, a] = meas[0, a]
                            cuda.syncthreads()
                            if tid == 0:
                                for k in range(min(TPB, m - h0)):
                                    if s_g_ok[k] == 0:
                                        continue
                                    for a in range(3):
                                        for c in range(3):
                                            s_bmat[a, c] += s_g_w[k] * s_g_m[k, a] * rref[rl + h0 + k, c]
                                    s_i[_I_USED] += 1
                            cuda.syncthreads()
                        if tid == 0:
                            if s_i[_I_USED] < 3:
                                s_i[_I_FAIL] = 1
                            else:
                                _wahba(s_bmat, r)
                                for a in range(3):
                                    for c in range(3):
                                        s_rbest[a, c] = r[a, c]
                        cuda.syncthreads()
                        if s_i[_I_FAIL] != 0:
                            break
                    if tid == 0 and s_i[_I_FAIL] == 0:
                        lo = ref_off[bp]
                        for a in range(3):
                            for c in range(3):
                                s_rfinal[a, c] = s_rbest[a, c]
                        cnt_, fit_ = _band_fit(s_rfinal, s_nrm, nfound, ref, lo, ref_off[bp + 1] - lo, cos_match)
                        s_f[_F_FIT] = fit_
                    cuda.syncthreads()
        if tid == 0:
            bp = s_i[_I_PHASE]
            if bp >= 0:
                # Sample->crystal is the transpose of the crystal->sample hypothesis.
                _matrix_to_quaternion(s_rfinal, True, q4)
                for a in range(4):
                    quat[s, a] = q4[a]
            else:
                quat[s, 0] = 1.0
                quat[s, 1] = 0.0
                quat[s, 2] = 0.0
                quat[s, 3] = 0.0
            phase_id[s] = bp
            fit[s] = s_f[_F_FIT]
            conf[s] = s_f[_F_CONF]
        cuda.syncthreads()
