"""``HoughIndexer``: Radon-transform band detection and triplet-vote indexing.

The class holds everything that is built once (Radon look-up table, butterfly
kernels, reflector and interplanar-angle tables of every phase, the
detector-to-sample rotation) and exposes two entry points:

* :meth:`HoughIndexer.index_chunk`: a stack of patterns in, plain NumPy arrays
  out; cheap to call repeatedly, it is what the pipeline engine calls per chunk;
* :meth:`HoughIndexer.index`: a whole scan in, an orix ``CrystalMap`` out.

The maths lives in the numba kernels of the sibling modules; the CUDA path
(CuPy image stages, a numba-cuda kernel for everything after them) is in
:mod:`diffraflow.operators.indexing.gpu` and
:mod:`diffraflow.operators.indexing.cuda_kernels`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from diffraflow.operators.indexing.bands import butterfly_kernels
from diffraflow.operators.indexing.geometry import detector_to_sample_matrix, pc_array
from diffraflow.operators.indexing.radon import RadonPlan, make_radon_plan
from diffraflow.operators.indexing.reflectors import ReflectorTable, build_reflector_table
from diffraflow.schemas.errors import BackendUnavailableError, SchemaError

__all__ = ["HoughIndexer", "COMPILE_MESSAGE", "warm_up_kernels"]

_OUTPUTS = ("quaternion", "phase_id", "fit", "confidence", "pattern_quality", "n_bands")
#: Said before the numba kernels are compiled. Measured on 2 shared cores:
#: 38 s for uint8 patterns in a fresh cache, 17 s more for a second dtype;
#: 150 s was reported on a busier machine. Later runs load them from numba's
#: on-disk cache in about 0.1 s.
COMPILE_MESSAGE = "compiling Hough indexing kernels (first run only, about 1 to 3 min)"
#: Pattern dtypes the CPU kernel is compiled for; others are cast to float32.
_KERNEL_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


def _in_numba_cache(dispatcher, args: tuple) -> bool:
    """Whether ``dispatcher(*args)`` would run without compiling: compiled in this process or in numba's disk cache.

    numba keys its on-disk index (``<module>.<function>-<line>.pyXY.nbi``
    beside the source, or under ``NUMBA_CACHE_DIR``) by the argument types,
    the CPU and the function's bytecode, and empties it when the source file
    changes; asking that index is exact and costs no compilation, where
    timing a probe call would itself compile. numba's cache classes are not
    public API: if they change, report "not cached" (the user then reads a
    needless "compiling" line, never waits in silence).
    """
    try:
        sig = tuple(dispatcher.typeof_pyval(a) for a in args)
        if sig in dispatcher.overloads:
            return True
        cache = dispatcher._cache
        key = cache._index_key(sig, dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # private numba API moved: assume the worst, see above
        return False


def _as_phase_list(phase_list):
    from orix.crystal_map import Phase, PhaseList

    if isinstance(phase_list, Phase):
        phase_list = PhaseList(phase_list)
    elif isinstance(phase_list, (list, tuple)):
        if len(phase_list) == 0:
            raise SchemaError("phase_list", "empty phase list", "pass at least one orix Phase")
        phase_list = PhaseList(list(phase_list))
    if not isinstance(phase_list, PhaseList):
        raise SchemaError(
            "phase_list",
            f"expected an orix PhaseList or Phase, got {type(phase_list).__name__}",
            "pass orix.crystal_map.PhaseList([...])",
        )
    ids = [i for i in phase_list.ids if i >= 0]
    if not ids:
        raise SchemaError("phase_list", "empty phase list", "pass at least one orix Phase")
    return phase_list, ids


class HoughIndexer:
    """Index EBSD patterns by Radon-transform band detection and triplet voting.

    Parameters
    ----------
    phase_list
        orix ``PhaseList`` (or one ``Phase``, or a list of them) with space
        groups and structures. With several phases, each pattern gets the phase
        whose best hypothesis explains most bands (ties: lower fit).
    detector
        kikuchipy ``EBSDDetector``: shape, Bruker PC (one, or one per pattern
        with the scan's navigation shape), sample tilt and camera tilt.
    n_bands
        Bands to detect per pattern. The default, 15, measured clearly better
        than 9 at low dose (more true bands among the candidates; the Radon
        evidence sorts out the false ones) and costs little.
    n_theta
        Radon angles over 180 degrees.
    rho_step
        Radon ``rho`` bin width in pixels.
    mask_radius
        Circular mask radius as a fraction of half the shorter detector side,
        ``None`` (default) for the full rectangle, which keeps more signal.
    rho_mask_frac
        Fraction of the largest ``|rho|`` ignored in the peak search.
    norm_power
        Radon bins are divided by line length to this power: 1 gives line
        means, 0.5 (default) noise-normalised sums, which rank long reliable
        lines higher and measured markedly better at low dose.
    sigma_rho, sigma_theta
        Butterfly filter widths in bins; ``sigma_rho=None`` scales with the
        detector (1.2 bins for a 60-pixel detector).
    pair_tol, match_tol
        Angular tolerances (degrees) for interplanar-angle look-up and for a
        band to count as explained.
    weight_fit
        Weight bands by Radon peak height in the least-squares fit.
    n_pair_bands
        Orientation hypotheses come from pairs among this many strongest
        bands; all ``n_bands`` vote on them.
    n_select
        Distinct best-voted hypotheses re-ranked by their Radon evidence (all
        bands they predict, detected or not); 1 keeps the plain vote winner.
    refine_iter
        Rounds of guided refinement (:mod:`diffraflow.operators.indexing.refine`): every
        band the orientation predicts is re-measured near its predicted
        position and all are refitted; 0 switches it off.
    refine_min
        Guided peaks lower than this fraction of the mean detected peak are ignored.
    refine_families
        Reflector families per phase used by the guided refinement (at least
        those used for voting); ``None`` uses the voting families.
    n_reflectors
        Reflector families per phase: ``None`` (automatic, 4 for FCC/BCC), an
        int for all phases, or a sequence with one entry per phase.
    static_background
        ``(rows, cols)`` array to remove from every pattern, or ``None``.
    background_mode
        ``"subtract"`` or ``"divide"`` for ``static_background``.
    dynamic_background
        Remove a least-squares quadratic surface from each pattern.
    backend
        ``"auto"`` (CUDA if CuPy sees a device, else CPU), ``"cpu"`` or ``"cuda"``.
    batch_size
        Patterns handed to :meth:`index_chunk` at once by :meth:`index` on the
        CPU (the CUDA path takes the whole scan and batches it itself).
    gpu_batch_size
        Patterns per GPU batch on the CUDA path; ``None`` (default) sizes
        batches from the free GPU memory
        (:func:`~diffraflow.operators.indexing.gpu.batch_size_for`).
    gpu_radon
        Radon transform on the GPU: ``"auto"``, ``"sparse"`` or ``"dense"``
        (see :func:`~diffraflow.operators.indexing.gpu.build_state`).

    Examples
    --------
    >>> import numpy as np
    >>> from kikuchipy.detectors import EBSDDetector
    >>> from diffraflow.operators.crystallography import get_phase
    >>> det = EBSDDetector((60, 60), pc=(0.42, 0.22, 0.50), sample_tilt=70)
    >>> indexer = HoughIndexer([get_phase("ni")], det)
    >>> out = indexer.index_chunk(np.zeros((2, 60, 60), dtype=np.float32))
    >>> out["quaternion"].shape, out["phase_id"].tolist()
    ((2, 4), [-1, -1])
    """

    def __init__(
        self,
        phase_list,
        detector,
        n_bands: int = 15,
        n_theta: int = 180,
        rho_step: float = 1.0,
        mask_radius: float | None = None,
        rho_mask_frac: float = 0.1,
        norm_power: float = 0.5,
        sigma_rho: float | None = None,
        sigma_theta: float = 1.0,
        pair_tol: float = 2.0,
        match_tol: float = 2.5,
        weight_fit: bool = True,
        n_pair_bands: int = 10,
        n_select: int = 16,
        refine_iter: int = 2,
        refine_min: float = 0.3,
        refine_families: int | None = None,
        n_reflectors: int | None | list = None,
        static_background: np.ndarray | None = None,
        background_mode: str = "subtract",
        dynamic_background: bool = False,
        backend: str = "auto",
        batch_size: int = 4096,
        gpu_batch_size: int | None = None,
        gpu_radon: str = "auto",
    ) -> None:
        self.phase_list, self._phase_ids = _as_phase_list(phase_list)
        if detector is None or not hasattr(detector, "shape"):
            raise SchemaError("detector", "expected a kikuchipy EBSDDetector", "pass kikuchipy.detectors.EBSDDetector(...)")
        self.detector = detector
        self.shape = (int(detector.shape[0]), int(detector.shape[1]))
        if n_bands < 3:
            raise SchemaError("n_bands", f"need at least 3 bands, got {n_bands}", "use 6 to 12")
        if backend not in ("auto", "cpu", "cuda"):
            raise SchemaError("backend", f"unknown backend {backend!r}", "use 'auto', 'cpu' or 'cuda'")
        if background_mode not in ("subtract", "divide"):
            raise SchemaError("background_mode", f"unknown mode {background_mode!r}", "use 'subtract' or 'divide'")
        self.n_bands = int(n_bands)
        self.pair_tol = float(pair_tol)
        self.match_tol = float(match_tol)
        self.weight_fit = bool(weight_fit)
        self.n_pair_bands = int(n_pair_bands)
        self.refine_iter = int(refine_iter)
        self.n_select = int(n_select)
        self.refine_min = float(refine_min)
        self.refine_families = refine_families
        self.batch_size = int(batch_size)
        if gpu_batch_size is not None and int(gpu_batch_size) < 1:
            raise SchemaError("gpu_batch_size", f"must be at least 1, got {gpu_batch_size}",
                              "leave it unset to size batches from the free GPU memory")
        if gpu_radon not in ("auto", "sparse", "dense"):
            raise SchemaError("gpu_radon", f"unknown Radon mode {gpu_radon!r}", "use 'auto', 'sparse' or 'dense'")
        self.gpu_batch_size = None if gpu_batch_size is None else int(gpu_batch_size)
        self.gpu_radon = gpu_radon
        # JSON-friendly record of the settings (stored with results by the CLI).
        self.options: dict[str, Any] = dict(
            n_bands=int(n_bands), n_theta=int(n_theta), rho_step=float(rho_step), mask_radius=mask_radius,
            rho_mask_frac=float(rho_mask_frac), norm_power=float(norm_power), sigma_rho=sigma_rho,
            sigma_theta=float(sigma_theta), pair_tol=float(pair_tol), match_tol=float(match_tol),
            weight_fit=bool(weight_fit), n_pair_bands=int(n_pair_bands), n_select=int(n_select), refine_iter=int(refine_iter),
            refine_min=float(refine_min), refine_families=refine_families,
            n_reflectors=n_reflectors if n_reflectors is None or isinstance(n_reflectors, int) else list(n_reflectors),
            background_mode=background_mode, dynamic_background=bool(dynamic_background), backend=backend,
        )

        # Built once: everything below is reused by every call.
        self.plan: RadonPlan = make_radon_plan(self.shape, n_theta, rho_step, mask_radius, rho_mask_frac, norm_power)
        if sigma_rho is None:
            sigma_rho = max(1.0, 1.2 * min(self.shape) / 60.0 / rho_step)
        self.k_rho, self.k_theta = butterfly_kernels(float(sigma_rho), float(sigma_theta))
        self.valid = (self.plan.inv_count > 0).astype(np.uint8)
        self.m_ds = detector_to_sample_matrix(detector)
        self.pcs = pc_array(detector)
        self._bg, self._bg_mode = self._background(static_background, background_mode)
        self._dyn_basis, self._dyn_pinv = self._dynamic_basis(dynamic_background)

        n_ph = len(self._phase_ids)
        if n_reflectors is None or isinstance(n_reflectors, (int, np.integer)):
            per_phase = [n_reflectors] * n_ph
        else:
            per_phase = list(n_reflectors)
            if len(per_phase) != n_ph:
                raise SchemaError(
                    "n_reflectors", f"{len(per_phase)} entries for {n_ph} phases", "give one entry per phase"
                )
        self.tables: list[ReflectorTable] = [
            build_reflector_table(self.phase_list[i], n_families=k) for i, k in zip(self._phase_ids, per_phase, strict=True)
        ]
        # Guided refinement may use more (weaker) families than voting: they
        # are only looked for where the orientation predicts them.
        self.refine_tables: list[ReflectorTable] = [
            t if refine_families is None or refine_families <= len(t.families)
            else build_reflector_table(self.phase_list[i], n_families=int(refine_families))
            for i, t in zip(self._phase_ids, self.tables, strict=True)
        ]
        self._pack_tables()
        self.backend = self._resolve_backend(backend)
        if self.backend == "cuda":
            try:
                self.check_cuda_limits()
            except SchemaError:
                if backend == "cuda":
                    raise
                self.backend = "cpu"  # "auto": settings beyond the CUDA kernel run on the CPU
        # The device the CUDA path runs on (None: CuPy's current device; the
        # tests put gpu.SimulatorOps here) and its constants, one set per device.
        self._gpu_ops = None
        self._gpu_states: dict = {}

    def __getstate__(self) -> dict:
        # Device constants, streams and pinned buffers stay with their process.
        state = self.__dict__.copy()
        state["_gpu_ops"] = None
        state["_gpu_states"] = {}
        return state

    def check_cuda_limits(self) -> None:
        """Refuse settings the CUDA kernel cannot run (fixed-size shared memory), before any data moves.

        Examples
        --------
        >>> from kikuchipy.detectors import EBSDDetector
        >>> from diffraflow.operators.crystallography import get_phase
        >>> ix = HoughIndexer([get_phase("ni")], EBSDDetector((20, 20)), n_bands=40, backend="cpu")
        >>> ix.check_cuda_limits()
        Traceback (most recent call last):
        ...
        diffraflow.schemas.errors.SchemaError: n_bands: 40 bands exceed the CUDA kernel's 32 (fix: use at most 32 bands, or backend='cpu')
        """
        from diffraflow.operators.indexing.cuda_kernels import MAX_BANDS, MAX_PHASES, MAX_SELECT

        limits = (("n_bands", self.n_bands, MAX_BANDS, "bands"), ("n_select", self.n_select, MAX_SELECT, "hypotheses"),
                  ("phase_list", len(self._phase_ids), MAX_PHASES, "phases"))
        for name, value, most, what in limits:
            if value > most:
                raise SchemaError(name, f"{value} {what} exceed the CUDA kernel's {most}",
                                  f"use at most {most} {what}, or backend='cpu'")
        if max(len(t.symmetry) for t in self.tables) > 24:
            raise SchemaError("phase_list", "a phase has more than 24 proper symmetry operations",
                              "check the phase's point group")

    # ------------------------------------------------------------------ setup
    def _background(self, bg, mode):
        if bg is None:
            return np.zeros(1, dtype=np.float32), 0
        bg = np.asarray(bg, dtype=np.float32)
        if bg.shape != self.shape:
            raise SchemaError(
                "static_background",
                f"shape {bg.shape} differs from the detector shape {self.shape}",
                "pass a background of the detector's shape",
            )
        if mode == "divide":
            bg = np.where(bg > 0, bg, max(float(bg[bg > 0].min()) if np.any(bg > 0) else 1.0, 1e-6))
        return np.ascontiguousarray(bg.ravel()), 1 if mode == "subtract" else 2

    def _dynamic_basis(self, on):
        n_mask = self.plan.mask_index.size
        if not on:
            z = np.zeros((0, n_mask), dtype=np.float32)
            return z, z
        rows, cols = self.shape
        idx = self.plan.mask_index
        v = (idx // cols) / rows - 0.5
        u = (idx % cols) / cols - 0.5
        basis = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v]).astype(np.float64)
        pinv = np.linalg.pinv(basis.T)  # (6, n_mask)
        return np.ascontiguousarray(basis, dtype=np.float32), np.ascontiguousarray(pinv, dtype=np.float32)

    def _pack_tables(self):
        def offsets(parts):
            return np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

        t = self.tables
        self._pair_angle = np.ascontiguousarray(np.concatenate([x.pair_angle for x in t]))
        self._pair_triad = np.ascontiguousarray(np.concatenate([x.pair_triad for x in t]))
        self._pair_off = offsets([x.pair_angle for x in t])
        self._ref = np.ascontiguousarray(np.concatenate([x.normals for x in t]))
        self._ref_off = offsets([x.normals for x in t])
        self._ref_w = np.ascontiguousarray(
            np.concatenate([x.family_intensity[x.normal_family] for x in t]).astype(np.float64)
        )
        self._sym = np.ascontiguousarray(np.concatenate([x.symmetry for x in t]))
        # Per-phase cube-map match tables, padded to a common depth.
        from diffraflow.operators.indexing.voting import build_match_lut

        luts = [build_match_lut(x.normals, self.match_tol) for x in t]
        depth = max(lt.shape[3] for lt in luts)
        self._luts = np.full((len(luts),) + luts[0].shape[:3] + (depth,), -1, dtype=np.int32)
        for i, lt in enumerate(luts):
            self._luts[i, ..., : lt.shape[3]] = lt
        rt = self.refine_tables
        self._rref = np.ascontiguousarray(np.concatenate([x.normals for x in rt]))
        self._rref_off = offsets([x.normals for x in rt])
        self._rref_w = np.ascontiguousarray(
            np.concatenate([x.family_intensity[x.normal_family] for x in rt]).astype(np.float64)
        )
        self._sym_off = offsets([x.symmetry for x in t])

    @staticmethod
    def _resolve_backend(backend: str) -> str:
        if backend == "cpu":
            return "cpu"
        from diffraflow.operators.indexing import gpu

        ok = gpu.cuda_available()
        if backend == "cuda" and not ok:
            raise BackendUnavailableError(
                "backend", "'cuda' was asked for but CuPy with a CUDA device is not available",
                "install cupy-cuda12x on a GPU machine, or use backend='cpu'",
            )
        return "cuda" if ok else "cpu"

    # -------------------------------------------------------------- per chunk
    def _check_patterns(self, patterns) -> np.ndarray:
        if self.backend == "cuda" and type(patterns) is not np.ndarray:
            from diffraflow.operators.indexing import gpu

            ops = self._gpu_ops or gpu.CupyOps()
            if ops.is_device_array(patterns):
                return self._check_device_patterns(patterns, ops)
        pats = np.asarray(patterns)
        if pats.ndim == 2 and pats.shape == self.shape:
            pats = pats[None]
        if pats.ndim < 3 or pats.shape[-2:] != self.shape:
            raise SchemaError(
                "patterns",
                f"shape {pats.shape} does not end in the detector shape {self.shape}",
                "pass (n, rows, cols) or (scan_y, scan_x, rows, cols) patterns matching detector.shape",
            )
        if not np.issubdtype(pats.dtype, np.number) or np.iscomplexobj(pats):
            raise SchemaError("patterns", f"dtype {pats.dtype} is not real", "pass integer or float patterns")
        return pats

    def _check_device_patterns(self, patterns, ops):
        """Device patterns (CuPy, or anything with ``__cuda_array_interface__``) checked in place, not copied."""
        pats = patterns if isinstance(patterns, (np.ndarray, ops.xp.ndarray)) else ops.xp.asarray(patterns)
        dtype = np.dtype(pats.dtype)
        if pats.ndim == 2 and tuple(pats.shape) == self.shape:
            pats = pats.reshape(1, *self.shape)
        if pats.ndim < 3 or tuple(pats.shape[-2:]) != self.shape:
            raise SchemaError(
                "patterns",
                f"shape {tuple(pats.shape)} does not end in the detector shape {self.shape}",
                "pass (n, rows, cols) or (scan_y, scan_x, rows, cols) patterns matching detector.shape",
            )
        if dtype.kind not in "uif":
            raise SchemaError("patterns", f"dtype {dtype} is not real", "pass integer or float patterns")
        return pats

    def _chunk_pcs(self, n: int, pc, nav_indices) -> np.ndarray:
        if pc is not None:
            pcs = np.ascontiguousarray(np.asarray(pc, dtype=np.float64).reshape(-1, 3))
            if pcs.shape[0] not in (1, n):
                raise SchemaError("pc", f"{pcs.shape[0]} PCs for {n} patterns", "give one PC or one per pattern")
            return pcs
        if self.pcs.shape[0] == 1:
            return self.pcs
        if nav_indices is None:
            if self.pcs.shape[0] != n:
                raise SchemaError(
                    "detector.pc",
                    f"{self.pcs.shape[0]} per-pattern PCs but {n} patterns in this chunk",
                    "pass nav_indices (flat scan indices of the chunk) or pc=... to index_chunk",
                )
            return self.pcs
        return np.ascontiguousarray(self.pcs[np.asarray(nav_indices, dtype=np.int64).ravel()])

    def index_chunk(self, patterns, pc=None, nav_indices=None) -> dict[str, np.ndarray]:
        """Index a stack of patterns; plain arrays out.

        Parameters
        ----------
        patterns
            ``(n, rows, cols)`` (or ``(..., rows, cols)``) real array; on the
            CUDA backend also a device array (CuPy), indexed in place.
        pc
            Optional Bruker PC, ``(3,)`` or ``(n, 3)``, overriding the detector's.
        nav_indices
            Flat scan indices of the patterns, to pick their PCs when the
            detector has one PC per scan point.

        Returns
        -------
        dict
            ``quaternion`` (n, 4) float64 orix ``(w, x, y, z)`` sample-to-crystal;
            ``phase_id`` (n,) int32 (the ``PhaseList`` id, -1 not indexed);
            ``fit`` (n,) float32 degrees; ``confidence`` (n,) float32 in [0, 1]
            (the winner's vote margin over the runner-up, in steps of
            ``1 / (n_bands - 2)``; the command line reports points below
            :data:`diffraflow.flow.crystal_map.MIN_CONFIDENCE` as not indexed);
            ``pattern_quality`` (n,) float32; ``n_bands`` (n,) int32.

        Examples
        --------
        >>> import numpy as np
        >>> from kikuchipy.detectors import EBSDDetector
        >>> from diffraflow.operators.crystallography import get_phase
        >>> ix = HoughIndexer([get_phase("ni")], EBSDDetector((40, 50)), backend="cpu")
        >>> sorted(ix.index_chunk(np.ones((1, 40, 50))))
        ['confidence', 'fit', 'n_bands', 'pattern_quality', 'phase_id', 'quaternion']
        """
        pats = self._check_patterns(patterns)
        pats = pats.reshape(-1, self.shape[0] * self.shape[1])
        if isinstance(pats, np.ndarray) and not pats.flags.c_contiguous:
            pats = np.ascontiguousarray(pats)
        n = pats.shape[0]
        pcs = self._chunk_pcs(n, pc, nav_indices)
        if self.backend == "cuda":
            from diffraflow.operators.indexing import gpu

            # Device patterns (frames of a previous GPU step) stay where they are.
            out = gpu.index_chunk_cuda(self, pats, pcs)
        else:
            out = self._index_cpu(pats, pcs)
        ids = np.asarray(self._phase_ids, dtype=np.int32)
        local = out["phase_id"]
        out["phase_id"] = np.where(local >= 0, ids[np.maximum(local, 0)], -1).astype(np.int32)
        return out

    @staticmethod
    def _empty_outputs(n: int) -> dict[str, np.ndarray]:
        """Output buffers the numba kernels fill in place, in their argument order."""
        return dict(
            quaternion=np.zeros((n, 4)), phase_id=np.full(n, -1, dtype=np.int32),
            fit=np.zeros(n, dtype=np.float32), confidence=np.zeros(n, dtype=np.float32),
            pattern_quality=np.zeros(n, dtype=np.float32), n_bands=np.zeros(n, dtype=np.int32),
        )

    def _voting_args(self, pcs: np.ndarray) -> tuple:
        """Arguments of the peaks-to-orientations stage, shared by the CPU and CUDA paths.

        Both numba entry points take these, from ``pcs`` to the refinement
        tables, right before their output buffers; one tuple keeps the two
        paths from drifting apart when a table is added.
        """
        return (
            pcs, self.shape[0], self.shape[1], self.m_ds, self.n_bands,
            self._pair_angle, self._pair_triad, self._pair_off, self._ref, self._ref_w, self._ref_off,
            self._sym, self._sym_off, np.radians(self.pair_tol), np.radians(self.match_tol), self.n_pair_bands,
            self._luts, self.weight_fit, self.n_select, self.refine_iter, self.refine_min,
            self._rref, self._rref_w, self._rref_off,
        )

    def _cpu_args(self, pats: np.ndarray, pcs: np.ndarray, out: dict[str, np.ndarray]) -> tuple:
        """Arguments of :func:`~diffraflow.operators.indexing.kernel.index_patterns_cpu` (also used to ask numba's cache)."""
        return (
            pats, self.plan.mask_index, self._bg, self._bg_mode, self._dyn_basis, self._dyn_pinv,
            self.plan.lut_bin, self.plan.lut_weight, self.plan.inv_count, self.valid,
            self.k_rho, self.k_theta, self.plan.rho_step, *self._voting_args(pcs), *out.values(),
        )

    def _filtered_args(self, filt: np.ndarray, pcs: np.ndarray, out: dict[str, np.ndarray]) -> tuple:
        """Arguments of :func:`~diffraflow.operators.indexing.kernel.index_filtered_cpu` (the CUDA path's CPU stage)."""
        return (filt, self.valid, self.plan.rho_step, *self._voting_args(pcs), *out.values())

    def _index_cpu(self, pats: np.ndarray, pcs: np.ndarray) -> dict[str, np.ndarray]:
        from diffraflow.operators.indexing.kernel import index_patterns_cpu

        if pats.dtype not in _KERNEL_DTYPES:
            pats = pats.astype(np.float32)
        out = self._empty_outputs(pats.shape[0])
        if pats.shape[0]:
            index_patterns_cpu(*self._cpu_args(pats, pcs, out))
        return out

    # ------------------------------------------------------------- compiling
    def kernels_cached(self, dtype: Any = np.uint8) -> bool:
        """Whether indexing patterns of ``dtype`` on this backend needs no numba compilation.

        True when the kernels are compiled in this process already or are in
        numba's on-disk cache (see :func:`_in_numba_cache`); only argument
        types matter, not shapes or phases.

        Examples
        --------
        >>> import numpy as np
        >>> from kikuchipy.detectors import EBSDDetector
        >>> from diffraflow.operators.crystallography import get_phase
        >>> ix = HoughIndexer([get_phase("ni")], EBSDDetector((20, 20)), backend="cpu")
        >>> _ = ix.warm_up("uint8"); ix.kernels_cached("uint8")
        True
        """
        from diffraflow.operators.indexing.kernel import index_patterns_cpu

        dtype = np.dtype(dtype)
        pcs = self._chunk_pcs(1, None, np.zeros(1, dtype=np.int64))
        out = self._empty_outputs(1)
        if self.backend == "cuda":
            from diffraflow.operators.indexing.cuda_kernels import scratch_shapes, vote_kernel

            # Host arrays of the device arrays' types: numba-cuda types both alike.
            score, quat = scratch_shapes(1)
            filt = np.zeros((1, *self.valid.shape), dtype=np.float32)
            args = (filt, self.valid, self.plan.rho_step, *self._voting_args(pcs), np.zeros(score, np.int32),
                    np.zeros(quat), *out.values())
            return _in_numba_cache(vote_kernel, args)
        kernel_dtype = dtype if dtype in [np.dtype(d) for d in _KERNEL_DTYPES] else np.dtype(np.float32)
        pats = np.zeros((1, self.shape[0] * self.shape[1]), dtype=kernel_dtype)
        return _in_numba_cache(index_patterns_cpu, self._cpu_args(pats, pcs, out))

    def warm_up(self, dtype: Any = np.uint8, notify: Callable[[str], None] | None = None) -> float | None:
        """Compile (or load from numba's cache) the kernels for patterns of ``dtype``, on one blank pattern.

        Call it before timing a run: the first call in a process otherwise
        includes numba's compilation (a minute or more, once per machine
        and dtype) or its cache loading (about 0.1 s).

        Parameters
        ----------
        dtype
            dtype of the patterns that will be indexed.
        notify
            Called with :data:`COMPILE_MESSAGE` *before* compiling, only when
            the kernels are not in numba's on-disk cache yet.

        Returns
        -------
        float or None
            Seconds spent compiling, or ``None`` when nothing had to be compiled.

        Examples
        --------
        >>> import numpy as np
        >>> from kikuchipy.detectors import EBSDDetector
        >>> from diffraflow.operators.crystallography import get_phase
        >>> ix = HoughIndexer([get_phase("ni")], EBSDDetector((20, 20)), backend="cpu")
        >>> _ = ix.warm_up("uint8")
        >>> ix.warm_up("uint8", notify=print) is None  # compiled now: nothing said, nothing to do
        True
        """
        cached = self.kernels_cached(dtype)
        if not cached and notify is not None:
            notify(COMPILE_MESSAGE)
        start = time.perf_counter()
        self.index_chunk(np.zeros((1, *self.shape), dtype=np.dtype(dtype)), nav_indices=np.zeros(1, dtype=np.int64))
        return None if cached else time.perf_counter() - start

    # ------------------------------------------------------------ whole scan
    def index(self, patterns, step_sizes: tuple[float, float] = (1.0, 1.0)):
        """Index a scan into an orix ``CrystalMap``.

        Parameters
        ----------
        patterns
            ``(n, rows, cols)`` or ``(scan_y, scan_x, rows, cols)``.
        step_sizes
            ``(dy, dx)`` for the map coordinates.

        Returns
        -------
        orix.crystal_map.CrystalMap
            With properties ``fit``, ``confidence``, ``pattern_quality``, ``n_bands``.

        Examples
        --------
        >>> import numpy as np
        >>> from kikuchipy.detectors import EBSDDetector
        >>> from diffraflow.operators.crystallography import get_phase
        >>> ix = HoughIndexer([get_phase("ni")], EBSDDetector((60, 60)), backend="cpu")
        >>> ix.index(np.zeros((2, 3, 60, 60))).shape
        (2, 3)
        """
        from orix.crystal_map import CrystalMap
        from orix.quaternion import Rotation

        pats = self._check_patterns(patterns)
        nav = pats.shape[:-2]
        flat = pats.reshape((-1,) + self.shape)
        n = flat.shape[0]
        if self.pcs.shape[0] not in (1, n):
            raise SchemaError(
                "detector.pc",
                f"{self.pcs.shape[0]} projection centres for {n} patterns",
                "give one PC, or one per pattern with the scan's navigation shape",
            )
        parts = []
        # The CUDA path batches by free GPU memory and overlaps its batches itself: hand it everything.
        step = max(n, 1) if self.backend == "cuda" else self.batch_size
        for s in range(0, n, step):
            idx = np.arange(s, min(s + step, n))
            parts.append(self.index_chunk(flat[s : idx[-1] + 1], nav_indices=idx if self.pcs.shape[0] > 1 else None))
        out = {k: np.concatenate([p[k] for p in parts]) for k in _OUTPUTS}
        if len(nav) == 2:
            ny, nx = nav
        elif len(nav) == 1:
            ny, nx = 1, nav[0]
        else:
            ny, nx = 1, n
        yy, xx = np.mgrid[0:ny, 0:nx]
        return CrystalMap(
            rotations=Rotation(out["quaternion"]),
            phase_id=out["phase_id"],
            x=xx.ravel() * float(step_sizes[1]),
            y=yy.ravel() * float(step_sizes[0]),
            phase_list=self.phase_list.deepcopy(),
            prop={
                "fit": out["fit"],
                "confidence": out["confidence"],
                "pattern_quality": out["pattern_quality"],
                "n_bands": out["n_bands"],
            },
            scan_unit="um",
        )


def warm_up_kernels(dtype: Any = np.uint8, backend: str = "cpu",
                    notify: Callable[[str], None] | None = None) -> float | None:
    """Compile the indexing kernels for patterns of ``dtype`` on a tiny indexer (20 x 20 detector, Ni).

    Kernels are typed by their arguments only, so a tiny indexer compiles
    what any scan of that dtype and backend runs; see :meth:`HoughIndexer.warm_up`.

    Examples
    --------
    >>> _ = warm_up_kernels("uint8", "cpu")
    >>> warm_up_kernels("uint8", "cpu", notify=print) is None
    True
    """
    from diffraflow.operators.crystallography import get_phase
    from kikuchipy.detectors import EBSDDetector

    indexer = HoughIndexer([get_phase("ni")], EBSDDetector((20, 20), pc=(0.5, 0.5, 0.5)), backend=backend)
    return indexer.warm_up(dtype, notify)
