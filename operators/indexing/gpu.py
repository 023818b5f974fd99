"""CUDA path of :class:`~diffraflow.operators.indexing.HoughIndexer`: every stage on the GPU.

Per batch of patterns, on one CUDA stream:

1. copy-in from a pinned host buffer (skipped when the patterns already are
   device arrays, e.g. CuPy frames from a previous GPU step);
2. the image stages as CuPy array code (:func:`image_stages`): preparation
   (static/dynamic background, standardisation), the Radon transform as one
   product with the CPU's look-up table written as a matrix (sparse, or dense
   where it fits), the separable butterfly filter with the periodic,
   ``rho``-mirrored ``theta`` axis; the result is pattern-major
   ``(n, n_theta, n_rho)``;
3. peaks, band normals, voting, fit, re-ranking and guided refinement in one
   numba-cuda kernel, one thread block per pattern
   (:mod:`diffraflow.operators.indexing.cuda_kernels`);
4. copy-out of the per-pattern results only (about 60 bytes a pattern) into
   pinned host buffers.

Three slots (stream, pinned buffers, device buffers, kernel scratch) rotate
over the batches, so the copy-in of one batch, the compute of another and
the copy-out of a third overlap, and the host fills the next pinned buffer
meanwhile. The batch size follows from the free GPU memory
(:func:`batch_size_for`) unless given.

The device is reached through a small interface (:class:`CupyOps` for CUDA;
:class:`SimulatorOps` for tests: NumPy arrays and numba's CUDA simulator,
where streams and pinned memory are plain no-ops and copies), so the batch
pipeline, the image stages (with NumPy/SciPy in place of CuPy) and the kernel
run in CI without a GPU. CuPy and numba-cuda are imported only by the
functions that use them.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diffraflow.schemas.errors import BackendUnavailableError, SchemaError

__all__ = [
    "cuda_available", "DeviceOps", "CupyOps", "SimulatorOps", "GPUState", "build_state", "radon_matrix_host",
    "image_stages", "index_chunk_cuda", "index_filtered", "batch_size_for", "profile_stages", "state_for", "vote_args",
]

#: Batches in flight at once (copy-in, compute, copy-out).
N_SLOTS = 3
#: Upper bound of the automatic batch size: beyond it launches are already
#: amortised and larger batches only delay the first results.
BATCH_LIMIT = 16384
#: Resident thread blocks per multiprocessor for the voting kernel's
#: persistent grid (a starting point to tune on the GPU).
BLOCKS_PER_SM = 8
#: Dense Radon matrices up to this size (bytes) are used by ``radon="auto"``.
DENSE_RADON_MAX = 256 * 2**20


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


# ------------------------------------------------------------------ devices
class DeviceOps:
    """What the batch pipeline needs from a device; see :class:`CupyOps` and :class:`SimulatorOps`."""

    name = "device"
    xp: Any = np
    ndimage: Any = None
    sparse: Any = None

    def is_device_array(self, a: Any) -> bool:
        raise NotImplementedError

    def device_id(self) -> int:
        return 0

    def stream(self) -> Any:
        return None

    def on(self, stream: Any) -> Any:
        """Context in which array operations run on ``stream``."""
        return contextlib.nullcontext()

    def after_current(self, streams: list) -> None:
        """Order ``streams`` after the work already queued on the caller's current stream."""

    def pinned(self, shape: tuple, dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    def empty(self, shape: tuple, dtype: Any) -> Any:
        return self.xp.empty(shape, dtype)

    def to_device(self, host: np.ndarray) -> Any:
        return self.xp.asarray(host)

    def h2d(self, host: np.ndarray, dev: Any, stream: Any) -> None:
        raise NotImplementedError

    def d2h(self, dev: Any, host: np.ndarray, stream: Any) -> None:
        raise NotImplementedError

    def to_host(self, dev: Any) -> np.ndarray:
        return np.asarray(dev)

    def synchronize(self, stream: Any) -> None:
        """Wait for ``stream`` (all work when ``None``)."""

    def free_bytes(self) -> int:
        raise NotImplementedError

    def sm_count(self) -> int:
        raise NotImplementedError

    def kernel_array(self, a: Any) -> Any:
        """``a`` as the voting kernel takes it."""
        return a

    def launch(self, kernel: Any, grid: int, block: int, stream: Any, args: tuple) -> None:
        raise NotImplementedError


class CupyOps(DeviceOps):
    """The current CUDA device through CuPy; kernels through numba-cuda on CuPy's streams.

    Examples
    --------
    >>> CupyOps.name
    'cupy'
    """

    name = "cupy"

    def __init__(self) -> None:
        import cupy  # noqa: PLC0415 - lazy on purpose
        import cupyx.scipy.ndimage  # noqa: PLC0415
        import cupyx.scipy.sparse  # noqa: PLC0415

        self.cp = cupy
        self.xp, self.ndimage, self.sparse = cupy, cupyx.scipy.ndimage, cupyx.scipy.sparse

    def is_device_array(self, a: Any) -> bool:
        return isinstance(a, self.cp.ndarray) or (
            hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray))

    def device_id(self) -> int:
        return int(self.cp.cuda.Device().id)

    def stream(self) -> Any:
        return self.cp.cuda.Stream(non_blocking=True)

    def on(self, stream: Any) -> Any:
        return stream

    def after_current(self, streams: list) -> None:
        event = self.cp.cuda.get_current_stream().record()
        for s in streams:
            s.wait_event(event)

    def pinned(self, shape: tuple, dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        mem = self.cp.cuda.alloc_pinned_memory(max(count * dtype.itemsize, 1))
        return np.frombuffer(mem, dtype, count).reshape(shape)

    def h2d(self, host: np.ndarray, dev: Any, stream: Any) -> None:
        dev.set(host, stream=stream)

    def d2h(self, dev: Any, host: np.ndarray, stream: Any) -> None:
        try:
            # CuPy waits for the copy unless told not to; the slot's stream is synchronised before its
            # buffers are read (gpu._finish), which is what lets copy-out overlap the next batch.
            dev.get(stream=stream, out=host, blocking=False)
        except TypeError:  # CuPy < 13: no 'blocking', copies into pinned memory are asynchronous already
            dev.get(stream=stream, out=host)

    def to_host(self, dev: Any) -> np.ndarray:
        return self.cp.asnumpy(dev)

    def synchronize(self, stream: Any) -> None:
        if stream is None:
            self.cp.cuda.Device().synchronize()
        else:
            stream.synchronize()

    def free_bytes(self) -> int:
        free, _total = self.cp.cuda.runtime.memGetInfo()
        return int(free) + int(self.cp.get_default_memory_pool().free_bytes())

    def sm_count(self) -> int:
        return int(self.cp.cuda.Device().attributes["MultiProcessorCount"])

    def kernel_array(self, a: Any) -> Any:
        from numba import cuda  # noqa: PLC0415

        # No implicit synchronisation on the exporting stream: ordering comes
        # from launching on the same stream as the CuPy work.
        return cuda.as_cuda_array(a, sync=False) if isinstance(a, self.cp.ndarray) else a

    def launch(self, kernel: Any, grid: int, block: int, stream: Any, args: tuple) -> None:
        from numba import cuda  # noqa: PLC0415

        kernel[grid, block, cuda.external_stream(stream.ptr)](*(self.kernel_array(a) for a in args))


class _SimDeviceArray(np.ndarray):
    """A NumPy array that :class:`SimulatorOps` treats as already on its device."""


class SimulatorOps(DeviceOps):
    """NumPy arrays as device memory and numba's CUDA simulator as device, for tests without a GPU.

    Streams and pinned memory are no-ops here (copies are plain NumPy
    copies), so only the logic of the pipeline is exercised, not its overlap.
    The kernels run only when ``NUMBA_ENABLE_CUDASIM=1`` was set before numba
    was imported.

    Parameters
    ----------
    free_bytes, sm_count
        What the pretended device reports (they drive batch sizes and the grid).

    Examples
    --------
    >>> ops = SimulatorOps(free_bytes=2**20)
    >>> ops.free_bytes(), ops.is_device_array(ops.device_array(np.zeros(3))), ops.is_device_array(np.zeros(3))
    (1048576, True, False)
    """

    name = "simulator"

    def __init__(self, free_bytes: int = 2**30, sm_count: int = 2) -> None:
        import scipy.ndimage  # noqa: PLC0415

        self.xp, self.ndimage, self.sparse = np, scipy.ndimage, None
        self._free = int(free_bytes)
        self._sms = int(sm_count)

    def device_array(self, host: np.ndarray) -> np.ndarray:
        """``host`` copied into "device memory" (frames a previous GPU step would hand over)."""
        return np.array(host).view(_SimDeviceArray)

    def is_device_array(self, a: Any) -> bool:
        return isinstance(a, _SimDeviceArray)

    def h2d(self, host: np.ndarray, dev: Any, stream: Any) -> None:
        np.copyto(dev, host)

    def d2h(self, dev: Any, host: np.ndarray, stream: Any) -> None:
        np.copyto(host, dev)

    def free_bytes(self) -> int:
        return self._free

    def sm_count(self) -> int:
        return self._sms

    def kernel_array(self, a: Any) -> Any:
        return a.view(np.ndarray) if isinstance(a, np.ndarray) else a

    def launch(self, kernel: Any, grid: int, block: int, stream: Any, args: tuple) -> None:
        from numba import config  # noqa: PLC0415

        if not getattr(config, "ENABLE_CUDASIM", 0):
            raise BackendUnavailableError("backend", "SimulatorOps runs kernels in numba's CUDA simulator, "
                                          "which is off", "set NUMBA_ENABLE_CUDASIM=1 before importing numba")
        kernel[grid, block](*(self.kernel_array(a) for a in args))


# -------------------------------------------------------------------- state
@dataclass
class _Slot:
    """One batch in flight: its stream and every buffer it uses."""

    stream: Any
    pin_in: Any  # None when the patterns are already on the device
    dev_in: Any
    pin_pc: np.ndarray
    dev_pc: Any
    dev_out: dict[str, Any]
    pin_out: dict[str, np.ndarray]
    cand_score: Any
    cand_q: Any
    pending: tuple[int, int] | None = None


@dataclass
class GPUState:
    """An indexer's constants resident on one device, built once per indexer and device."""

    ops: DeviceOps
    radon: Any  # sparse (n_theta * n_rho, n_mask), or dense (n_mask, n_theta * n_rho)
    radon_mode: str
    mask_index: Any
    bg: Any
    bg_mode: int
    dyn_basis: Any
    dyn_pinv: Any
    k_rho: Any
    k_theta: Any
    n_theta: int
    n_rho: int
    n_mask: int
    valid: Any = None
    rho_step: float = 1.0
    tables: tuple = ()
    grid: int = 1
    slots: dict = field(default_factory=dict)
    pc_cache: dict = field(default_factory=dict)

    @property
    def xp(self) -> Any:
        return self.ops.xp

    @property
    def ndimage(self) -> Any:
        return self.ops.ndimage


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


def build_state(indexer, ops: DeviceOps | None = None, radon: str = "auto", grid: int | None = None) -> GPUState:
    """Move an indexer's constants (image stages and voting tables) to a device, once.

    Parameters
    ----------
    indexer
        :class:`~diffraflow.operators.indexing.HoughIndexer`.
    ops
        The device; default :class:`CupyOps` (the current CUDA device).
    radon
        ``"sparse"``, ``"dense"`` or ``"auto"`` (dense when the matrix takes at
        most :data:`DENSE_RADON_MAX` bytes). Dense trades memory for a plain
        GEMM; which is faster on a given GPU is for the bench to say.
    grid
        Thread blocks of the voting kernel (default: :data:`BLOCKS_PER_SM` per
        multiprocessor).

    Returns
    -------
    GPUState

    Examples
    --------
    >>> from kikuchipy.detectors import EBSDDetector
    >>> from diffraflow.operators.crystallography import get_phase
    >>> from diffraflow.operators.indexing import HoughIndexer
    >>> ix = HoughIndexer([get_phase("ni")], EBSDDetector((20, 20)), backend="cpu")
    >>> st = build_state(ix, SimulatorOps(), radon="dense")
    >>> st.radon.shape == (st.n_mask, st.n_theta * st.n_rho), st.grid
    (True, 16)
    """
    ops = ops if ops is not None else CupyOps()
    if radon not in ("auto", "sparse", "dense"):
        raise SchemaError("radon", f"unknown Radon mode {radon!r}", "use 'auto', 'sparse' or 'dense'")
    xp = ops.xp
    host = radon_matrix_host(indexer.plan)
    n_rows, n_mask = host.shape
    if radon == "auto":
        radon = "dense" if n_rows * n_mask * 4 <= DENSE_RADON_MAX else "sparse"
    if radon == "dense":
        matrix = xp.asarray(np.ascontiguousarray(host.T.toarray()))
    elif ops.sparse is None:
        matrix = host
    else:
        matrix = ops.sparse.csr_matrix(host)
    st = GPUState(
        ops=ops, radon=matrix, radon_mode=radon,
        mask_index=xp.asarray(indexer.plan.mask_index), bg=xp.asarray(indexer._bg), bg_mode=int(indexer._bg_mode),
        dyn_basis=xp.asarray(indexer._dyn_basis), dyn_pinv=xp.asarray(indexer._dyn_pinv),
        k_rho=xp.asarray(indexer.k_rho), k_theta=xp.asarray(indexer.k_theta),
        n_theta=indexer.plan.n_theta, n_rho=indexer.plan.n_rho, n_mask=int(n_mask),
        valid=xp.asarray(indexer.valid), rho_step=float(indexer.plan.rho_step),
        # Voting tables after the PCs: arrays moved once, scalars as they are.
        tables=tuple(xp.asarray(a) if isinstance(a, np.ndarray) else a for a in indexer._voting_args(indexer.pcs)[1:]),
        grid=int(grid) if grid else max(1, ops.sm_count() * BLOCKS_PER_SM),
    )
    return st


def state_for(indexer, ops: DeviceOps | None = None) -> GPUState:
    """The indexer's :class:`GPUState` on the current device (built on first use).

    One per device id, so a process that indexes on several GPUs keeps the
    constants of each on its own device.
    """
    states = indexer.__dict__.setdefault("_gpu_states", {})
    ops = ops if ops is not None else (indexer._gpu_ops or CupyOps())
    key = (ops.name, ops.device_id())
    st = states.get(key)
    if st is None:
        st = states[key] = build_state(indexer, ops, radon=indexer.gpu_radon)
    return st


# ------------------------------------------------------------- image stages
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
        ``(n, n_theta, n_rho)`` float32, pattern-major: one pattern's transform
        is contiguous, as the voting kernel's thread block reads it.

    Examples
    --------
    >>> from kikuchipy.detectors import EBSDDetector
    >>> from diffraflow.operators.crystallography import get_phase
    >>> from diffraflow.operators.indexing import HoughIndexer
    >>> ix = HoughIndexer([get_phase("ni")], EBSDDetector((20, 20)), backend="cpu")
    >>> st = build_state(ix, SimulatorOps())
    >>> image_stages(np.ones((2, 400), np.uint8), st).shape == (2, st.n_theta, st.n_rho)
    True
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
    if st.radon_mode == "dense":
        rad = x @ st.radon  # (n, M) @ (M, T*R): already pattern-major
    else:
        # Sparse (T*R, M) @ dense (M, n): one product for the whole batch.
        rad = xp.ascontiguousarray((st.radon @ xp.ascontiguousarray(x.T)).T)
    rad = xp.asarray(rad, dtype=xp.float32).reshape(n, st.n_theta, st.n_rho)
    tmp = ndi.correlate1d(rad, st.k_rho, axis=2, mode="constant", cval=0.0)
    ht = int(st.k_theta.size // 2)
    # theta is periodic with rho mirrored: (rho, theta + pi) == (-rho, theta).
    padded = xp.concatenate([tmp[:, -ht:, ::-1], tmp, tmp[:, :ht, ::-1]], axis=1)
    filt = ndi.correlate1d(padded, st.k_theta, axis=1, mode="constant", cval=0.0)[:, ht : ht + st.n_theta]
    return xp.ascontiguousarray(filt.astype(xp.float32))


def index_filtered(indexer, filt_host: np.ndarray, pcs: np.ndarray) -> dict[str, np.ndarray]:
    """Peaks to orientations with the CPU numba kernel, from a host ``(n, n_theta, n_rho)`` transform.

    The reference the CUDA kernel is compared with, and the voting stage of
    the former GPU path (image stages on the GPU, voting on the CPU).
    """
    from diffraflow.operators.indexing.kernel import index_filtered_cpu

    out = indexer._empty_outputs(filt_host.shape[0])
    if filt_host.shape[0]:
        filt = np.ascontiguousarray(np.moveaxis(np.asarray(filt_host, dtype=np.float32), 0, -1))
        index_filtered_cpu(*indexer._filtered_args(filt, pcs, out))
    return out


# ------------------------------------------------------------------ batches
def batch_size_for(free_bytes: int, pattern_bytes: int, n_mask: int, n_theta: int, n_rho: int,
                   n_slots: int = N_SLOTS, fraction: float = 0.5, limit: int = BATCH_LIMIT) -> int:
    """Patterns per batch so that ``n_slots`` batches in flight use ``fraction`` of the free memory.

    Per pattern: its bytes twice (pinned and device copy), four float32
    copies of the masked pixels, seven of the Radon transform (the image
    stages' temporaries, measured from the code: product, transpose, rho
    filter, padding, theta filter, slice, contiguous copy) and the outputs.

    Examples
    --------
    >>> batch_size_for(2**30, 3600, 3600, 180, 87)
    355
    >>> batch_size_for(10**12, 3600, 3600, 180, 87)
    16384
    """
    per_pattern = 2 * pattern_bytes + 4 * 4 * n_mask + 7 * 4 * n_theta * n_rho + 64
    return int(max(1, min(limit, fraction * free_bytes // (n_slots * per_pattern))))


def _outputs_like(indexer, n: int, alloc) -> dict[str, Any]:
    return {k: alloc(v.shape, v.dtype) for k, v in indexer._empty_outputs(n).items()}


def _slots(st: GPUState, indexer, batch: int, dtype: np.dtype, n_pix: int, host_input: bool) -> list[_Slot]:
    key = (batch, np.dtype(dtype).str, n_pix, host_input)
    slots = st.slots.get(key)
    if slots is not None:
        return slots
    from diffraflow.operators.indexing.cuda_kernels import scratch_shapes

    ops = st.ops
    st.slots.clear()  # one batch geometry at a time: free the buffers of another
    score_shape, quat_shape = scratch_shapes(st.grid)
    slots = []
    for _ in range(N_SLOTS):
        slots.append(_Slot(
            stream=ops.stream(),
            pin_in=ops.pinned((batch, n_pix), dtype) if host_input else None,
            dev_in=ops.empty((batch, n_pix), dtype) if host_input else None,
            pin_pc=ops.pinned((batch, 3), np.float64), dev_pc=ops.empty((batch, 3), np.float64),
            dev_out=_outputs_like(indexer, batch, ops.empty), pin_out=_outputs_like(indexer, batch, ops.pinned),
            cand_score=ops.empty(score_shape, np.int32), cand_q=ops.empty(quat_shape, np.float64),
        ))
    st.slots[key] = slots
    return slots


def _finish(st: GPUState, slot: _Slot, out: dict[str, np.ndarray]) -> None:
    if slot.pending is None:
        return
    a, b = slot.pending
    st.ops.synchronize(slot.stream)
    for k, v in out.items():
        v[a:b] = slot.pin_out[k][: b - a]
    slot.pending = None


def _pc_device(st: GPUState, pcs: np.ndarray) -> Any:
    key = pcs.tobytes()
    dev = st.pc_cache.get(key)
    if dev is None:
        if len(st.pc_cache) > 16:
            st.pc_cache.clear()
        dev = st.pc_cache[key] = st.ops.to_device(np.ascontiguousarray(pcs, dtype=np.float64))
    return dev


def vote_args(st: GPUState, filt, pcs, slot: _Slot, m: int) -> tuple:
    """Arguments of :func:`~diffraflow.operators.indexing.cuda_kernels.vote_kernel` for ``m`` patterns of a slot."""
    outs = tuple(v[:m] for v in slot.dev_out.values())
    return (filt, st.valid, st.rho_step, pcs, *st.tables, slot.cand_score, slot.cand_q, *outs)


def index_chunk_cuda(indexer, pats, pcs: np.ndarray, ops: DeviceOps | None = None, batch_size: int | None = None,
                     vote: str = "gpu") -> dict[str, np.ndarray]:
    """Index a chunk with every stage on the GPU; only per-pattern results come back.

    Parameters
    ----------
    indexer
        :class:`~diffraflow.operators.indexing.HoughIndexer`.
    pats
        ``(n, rows * cols)`` patterns: a host array (copied in through pinned
        buffers, overlapped with compute) or a device array (used in place).
    pcs
        ``(1, 3)`` or ``(n, 3)`` Bruker PCs (host).
    ops
        The device (default: the indexer's, normally :class:`CupyOps`).
    batch_size
        Patterns per batch (default: the indexer's ``gpu_batch_size``, else
        :func:`batch_size_for` the free memory).
    vote
        ``"gpu"`` (the CUDA kernel) or ``"cpu"``: the former path, the
        filtered transform copied back and voted on by the numba CPU kernel
        (kept for comparison in the bench).

    Returns
    -------
    dict
        As :meth:`HoughIndexer.index_chunk` (phase ids local to the phase list).
    """
    st = state_for(indexer, ops)
    ops = st.ops
    n = int(pats.shape[0])
    out = indexer._empty_outputs(n)
    if n == 0:
        return out
    if vote not in ("gpu", "cpu"):
        raise SchemaError("vote", f"unknown voting device {vote!r}", "use 'gpu' or 'cpu'")
    from diffraflow.operators.indexing.cuda_kernels import TPB, vote_kernel

    on_device = ops.is_device_array(pats)
    n_pix = int(pats.shape[1])
    itemsize = np.dtype(pats.dtype).itemsize
    if batch_size is None:
        batch_size = indexer.gpu_batch_size or batch_size_for(
            ops.free_bytes() - N_SLOTS * st.grid * 36 * 2048, n_pix * itemsize, st.n_mask, st.n_theta, st.n_rho)
    bs = max(1, min(int(batch_size), n))
    slots = _slots(st, indexer, bs, pats.dtype, n_pix, host_input=not on_device)
    per_point = pcs.shape[0] > 1
    pc_all = None if per_point else _pc_device(st, pcs)
    if on_device:
        ops.after_current([s.stream for s in slots])
    try:
        for k, a in enumerate(range(0, n, bs)):
            slot = slots[k % len(slots)]
            _finish(st, slot, out)  # frees the slot: its batch three steps back is done
            b = min(a + bs, n)
            m = b - a
            with ops.on(slot.stream):
                if on_device:
                    src = pats[a:b]
                else:
                    np.copyto(slot.pin_in[:m], pats[a:b], casting="no")
                    ops.h2d(slot.pin_in[:m], slot.dev_in[:m], slot.stream)
                    src = slot.dev_in[:m]
                if per_point:
                    slot.pin_pc[:m] = pcs[a:b]
                    ops.h2d(slot.pin_pc[:m], slot.dev_pc[:m], slot.stream)
                    pc = slot.dev_pc[:m]
                else:
                    pc = pc_all
                filt = image_stages(src, st)
                if vote == "gpu":
                    ops.launch(vote_kernel, min(st.grid, m), TPB, slot.stream, vote_args(st, filt, pc, slot, m))
                    for key, dev in slot.dev_out.items():
                        ops.d2h(dev[:m], slot.pin_out[key][:m], slot.stream)
                else:
                    res = index_filtered(indexer, ops.to_host(filt), pcs[a:b] if per_point else pcs)
                    for key, v in res.items():
                        slot.pin_out[key][:m] = v
            slot.pending = (a, b)
        for slot in slots:
            _finish(st, slot, out)
    except BaseException:
        for slot in slots:  # never leave copies in flight into buffers that may be reused
            slot.pending = None
            ops.synchronize(slot.stream)
        raise
    return out


# -------------------------------------------------------------------- bench
STAGES = ("h2d_pageable", "h2d_pinned", "image", "vote_gpu", "d2h_results", "d2h_transform", "vote_cpu")


def profile_stages(indexer, pats: np.ndarray, ops: DeviceOps | None = None, repeats: int = 3,
                   stages: tuple[str, ...] = STAGES) -> dict[str, float]:
    """Patterns/s of each stage of the CUDA path alone, every stage synchronised (best of ``repeats``).

    Stages (:data:`STAGES`): ``h2d_pageable`` and ``h2d_pinned`` (copy-in),
    ``image`` (image stages), ``vote_gpu`` (the CUDA kernel), ``d2h_results``
    (per-pattern results back), and for comparison the former path's
    ``d2h_transform`` (the whole filtered transform back) and ``vote_cpu``
    (numba CPU voting on it). The image stages always run (the later stages
    need their output); they are reported only when asked for.

    Examples
    --------
    >>> from kikuchipy.detectors import EBSDDetector
    >>> from diffraflow.operators.crystallography import get_phase
    >>> from diffraflow.operators.indexing import HoughIndexer
    >>> ix = HoughIndexer([get_phase("ni")], EBSDDetector((20, 20)), backend="cpu")
    >>> rates = profile_stages(ix, np.zeros((4, 20, 20), np.uint8), SimulatorOps(), 1, ("h2d_pinned", "image"))
    >>> sorted(rates)
    ['h2d_pinned', 'image']
    """
    from diffraflow.operators.indexing.cuda_kernels import TPB, vote_kernel

    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SchemaError("stages", f"unknown stages {sorted(unknown)}", f"choose from {', '.join(STAGES)}")
    st = state_for(indexer, ops)
    ops = st.ops
    flat = np.ascontiguousarray(pats.reshape(len(pats), -1))
    n = flat.shape[0]
    slot = _slots(st, indexer, n, flat.dtype, flat.shape[1], host_input=True)[0]
    pcs = indexer._chunk_pcs(n, None, np.arange(n))
    pc = _pc_device(st, pcs) if pcs.shape[0] == 1 else ops.to_device(pcs)
    timings: dict[str, float] = {}

    def timed(name, fn):
        best = np.inf
        for _ in range(repeats if name in stages else 1):
            ops.synchronize(None)
            t0 = time.perf_counter()
            value = fn()
            ops.synchronize(None)
            best = min(best, time.perf_counter() - t0)
        if name in stages:
            timings[name] = n / best
        return value

    slot.pin_in[:n] = flat
    if "h2d_pageable" in stages:
        timed("h2d_pageable", lambda: ops.to_device(flat))
    timed("h2d_pinned", lambda: ops.h2d(slot.pin_in[:n], slot.dev_in[:n], slot.stream))
    with ops.on(slot.stream):
        filt = timed("image", lambda: image_stages(slot.dev_in[:n], st))
    if "vote_gpu" in stages or "d2h_results" in stages:
        timed("vote_gpu", lambda: ops.launch(vote_kernel, min(st.grid, n), TPB, slot.stream,
                                             vote_args(st, filt, pc, slot, n)))
    def results_back() -> None:
        for k, v in slot.dev_out.items():
            ops.d2h(v[:n], slot.pin_out[k][:n], slot.stream)

    if "d2h_results" in stages:
        timed("d2h_results", results_back)
    if "d2h_transform" in stages or "vote_cpu" in stages:
        host_filt = timed("d2h_transform", lambda: ops.to_host(filt))
        if "vote_cpu" in stages:
            timed("vote_cpu", lambda: index_filtered(indexer, host_filt, pcs))
    return timings
