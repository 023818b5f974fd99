"""CuPy path for the image stages of :class:`~diffraflow.operators.indexing.HoughIndexer`.

What runs on the GPU: pattern preparation (static/dynamic background,
standardisation), the Radon transform as one sparse-matrix product with the
*same* look-up table as the CPU (each pixel splatted linearly into two ``rho``
bins and divided by the line length to ``norm_power``), and the separable
butterfly filter (two ``correlate1d`` passes, the periodic ``theta`` axis
padded with ``rho``-mirrored rows exactly as the CPU kernel wraps it).

What stays on the CPU: peak search, sub-bin refinement, band normals, voting
and phase choice (:func:`diffraflow.operators.indexing.kernel.index_filtered_cpu`), fed
with the filtered transform copied back in the CPU kernel's own
``(n_theta, n_rho, n)`` layout. Those stages are branchy, small and already
fast in numba; sharing their code keeps the two paths identical by
construction apart from floating-point summation order.

The image stages are written once against an array module ``xp`` (NumPy or
CuPy) and its ``ndimage``/``sparse`` companions, so the tests run exactly this
code with NumPy/SciPy on machines without a GPU and compare it with the numba
kernel. **Intended tolerance vs CPU**: filtered transform equal to float32
rounding (relative 1e-5); band positions identical except for near-ties
between peaks; orientations within 0.01 degrees for all but such ties, so
fraction-within-2-degrees statistics agree to 0.5 %. This path has not been
run on a GPU in development (none was available).

CuPy is imported only inside functions, so importing this module never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["cuda_available", "GPUState", "build_state", "image_stages", "index_chunk_cuda"]


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device.

    Examples
    --------
    >>> isinstance(cuda_available(), bool)
    True
    """
    try:
        import cupy as cp

        return int(cp.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


@dataclass
class GPUState:
    """Constants of the image stages, resident on one array backend."""

    xp: Any
    ndimage: Any
    radon: Any  # sparse (n_theta * n_rho, n_mask) matrix
    mask_index: Any
    bg: Any
    bg_mode: int
    dyn_basis: Any
    dyn_pinv: Any
    k_rho: Any
    k_theta: Any
    n_theta: int
    n_rho: int


def radon_matrix_host(plan):
    """The Radon look-up table as a SciPy CSR matrix (host), normalisation included.

    Row ``t * n_rho + i`` holds the weights of the mask pixels on line
    ``(rho_i, theta_t)``, already multiplied by the plan's ``inv_count``.

    Examples
    --------
    >>> from diffraflow.operators.indexing.radon import make_radon_plan
    >>> m = radon_matrix_host(make_radon_plan((20, 20)))
    >>> m.shape[1] == make_radon_plan((20, 20)).mask_index.size
    True
    """
    import scipy.sparse as sp

    n_theta, n_mask = plan.lut_bin.shape
    n_rho = plan.n_rho
    t = np.repeat(np.arange(n_theta, dtype=np.int64), n_mask)
    col = np.tile(np.arange(n_mask, dtype=np.int64), n_theta)
    lo = plan.lut_bin.ravel().astype(np.int64)
    w1 = plan.lut_weight.ravel().astype(np.float64)
    rows = np.concatenate([t * n_rho + lo, t * n_rho + lo + 1])
    cols = np.concatenate([col, col])
    w = np.concatenate([1.0 - w1, w1]) * plan.inv_count.ravel()[rows]
    m = sp.csr_matrix((w.astype(np.float32), (rows, cols)), shape=(n_theta * n_rho, n_mask))
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def build_state(indexer, xp=None, ndimage=None, sparse=None) -> GPUState:
    """Move an indexer's image-stage constants to an array backend (once).

    Parameters
    ----------
    indexer
        :class:`~diffraflow.operators.indexing.HoughIndexer`.
    xp, ndimage, sparse
        Array module and its ndimage / sparse modules; default CuPy's.

    Returns
    -------
    GPUState
    """
    if xp is None:
        import cupy as _cupy  # noqa: PLC0415 - lazy on purpose
        import cupyx.scipy.ndimage as _cupy_ndimage  # noqa: PLC0415
        import cupyx.scipy.sparse as _cupy_sparse  # noqa: PLC0415

        xp, ndimage, sparse = _cupy, _cupy_ndimage, _cupy_sparse
    host = radon_matrix_host(indexer.plan)
    radon = host if sparse is None or xp is np else sparse.csr_matrix(host)
    return GPUState(
        xp=xp,
        ndimage=ndimage,
        radon=radon,
        mask_index=xp.asarray(indexer.plan.mask_index),
        bg=xp.asarray(indexer._bg),
        bg_mode=int(indexer._bg_mode),
        dyn_basis=xp.asarray(indexer._dyn_basis),
        dyn_pinv=xp.asarray(indexer._dyn_pinv),
        k_rho=xp.asarray(indexer.k_rho),
        k_theta=xp.asarray(indexer.k_theta),
        n_theta=indexer.plan.n_theta,
        n_rho=indexer.plan.n_rho,
    )


def image_stages(pats, st: GPUState):
    """Prepared, Radon-transformed and butterfly-filtered patterns.

    Parameters
    ----------
    pats
        ``(n, rows * cols)`` array on ``st.xp``'s device.
    st
        From :func:`build_state`.

    Returns
    -------
    array
        ``(n_theta, n_rho, n)`` float32, the layout of the CPU kernel's block.
    """
    xp, ndi = st.xp, st.ndimage
    x = pats[:, st.mask_index].astype(xp.float32)
    if st.bg_mode == 1:
        x = x - st.bg[st.mask_index][None, :]
    elif st.bg_mode == 2:
        x = x / st.bg[st.mask_index][None, :]
    if st.dyn_basis.shape[0] > 0:
        coef = x @ st.dyn_pinv.T
        x = x - coef @ st.dyn_basis
    mean = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    inv = xp.where(sd > 0, 1.0 / xp.where(sd > 0, sd, 1.0), 0.0).astype(xp.float32)
    x = (x - mean) * inv
    n = x.shape[0]
    # Sparse (T*R, M) @ dense (M, n): one product for the whole batch.
    rad = st.radon @ xp.ascontiguousarray(x.T)
    rad = xp.asarray(rad, dtype=xp.float32).reshape(st.n_theta, st.n_rho, n)
    tmp = ndi.correlate1d(rad, st.k_rho, axis=1, mode="constant", cval=0.0)
    ht = int(st.k_theta.size // 2)
    # theta is periodic with rho mirrored: (rho, theta + pi) == (-rho, theta).
    padded = xp.concatenate([tmp[-ht:, ::-1], tmp, tmp[:ht, ::-1]], axis=0)
    filt = ndi.correlate1d(padded, st.k_theta, axis=0, mode="constant", cval=0.0)[ht : ht + st.n_theta]
    return xp.ascontiguousarray(filt.astype(xp.float32))


def index_filtered(indexer, filt_host: np.ndarray, pcs: np.ndarray) -> dict[str, np.ndarray]:
    """Peaks to orientations (numba, CPU) from a host ``(n_theta, n_rho, n)`` transform."""
    from diffraflow.operators.indexing.kernel import index_filtered_cpu

    out = indexer._empty_outputs(filt_host.shape[2])
    if filt_host.shape[2]:
        index_filtered_cpu(*indexer._filtered_args(filt_host, pcs, out))
    return out


def index_chunk_cuda(indexer, pats: np.ndarray, pcs: np.ndarray) -> dict[str, np.ndarray]:
    """Index a host chunk with the image stages on the GPU.

    Parameters
    ----------
    indexer
        :class:`~diffraflow.operators.indexing.HoughIndexer` with ``backend="cuda"``.
    pats
        ``(n, rows * cols)`` host array.
    pcs
        ``(1, 3)`` or ``(n, 3)`` Bruker PCs.

    Returns
    -------
    dict
        As :meth:`HoughIndexer.index_chunk` (local phase indices).
    """
    import cupy as cp

    if indexer._gpu_state is None:  # built once per indexer (per worker)
        indexer._gpu_state = build_state(indexer)
    st = indexer._gpu_state
    filt = image_stages(cp.asarray(pats), st)
    return index_filtered(indexer, cp.asnumpy(filt), pcs)
