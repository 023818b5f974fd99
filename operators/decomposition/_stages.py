"""The passes every SVD-based decomposition shares: statistics, truncated SVD, gathered scores.

:class:`SVDStages` is the base of ``svd``, ``ica``, ``nmf``, ``fuzzy_cmeans``
and ``vca``. Its state is a dict whose ``"stage"`` says what the next pass
does, so one operator can run a fixed prelude (the SVD) and then its own
iterations, each pass deciding the next:

``stats``
    Column sums and frame count (the mean for centring; pixel totals for
    Poisson weighting). Only when ``centre`` or ``poisson``.
``gram``
    :math:`\\tilde X^T \\tilde X` summed over chunks (exact; ``pixels^2``
    memory), then its top eigenvectors.
``power``
    One step of randomised subspace iteration per pass:
    :math:`Z = \\tilde X^T(\\tilde X Q)` and :math:`M = (\\tilde X Q)^T(\\tilde X Q)`
    summed over chunks give the randomised SVD whose range basis is
    :math:`\\tilde X Q` (:func:`~diffraflow.operators.decomposition._linalg.range_svd`),
    and :math:`Q \\leftarrow \\mathrm{orth}(Z)` the next basis: pass ``q``
    (from 0) is Halko et al.'s algorithm with ``q`` power iterations. Stops
    when the top singular values change by less than ``svd_tol`` (relative,
    on their squares) or after ``1 + power_iter`` passes.
``gather``
    The SVD scores :math:`\\tilde X V^T` of every frame, concatenated in the
    driver (``N x k`` float64: small next to the scan) for methods that work
    on them in memory (FastICA, fuzzy c-means, VCA).

:math:`\\tilde X` is the data as the SVD sees it: optionally Poisson-weighted,
:math:`\\tilde x_{ij} = x_{ij} / \\sqrt{a_i b_j}` with frame totals
:math:`a_i` and pixel totals :math:`b_j` (Keenan & Kotula, 2004), and
optionally centred. Results are mapped back: loadings times
:math:`\\sqrt{a_i}`, factors times :math:`\\sqrt{b_j}`.

Partials whose names start with ``cat_`` are concatenated, ``max_`` and
``min_`` take the element-wise extreme, the rest are summed; the engine
merges in chunk order, and gathered rows carry their flat scan index, so
results do not depend on chunking or completion order.

Examples
--------
>>> import numpy as np
>>> from diffraflow.operators.decomposition.svd import SVD
>>> op = SVD(n_components=2)
>>> op.max_passes() >= 2, op.merge("cat_scores", np.zeros((1, 2)), np.ones((2, 2))).shape
(True, (3, 2))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import ChunkContext, InputSpec, LastPass, NextPass, Operator
from diffraflow.operators.decomposition._linalg import (
    flip_rows,
    host,
    on_device,
    orthonormal,
    range_svd,
)
from diffraflow.operators.decomposition._pca import components_from_gram
from diffraflow.schemas.errors import PipelineError

__all__ = ["SVDStages", "GRAM_MAX_PIXELS", "check_int", "check_number"]

#: ``solver: auto`` uses the Gram matrix up to this many pixels per frame.
GRAM_MAX_PIXELS = 4096


def _sumsq(xp: Any, x: Any) -> Any:
    # a dot product of the flat array: no frame-sized temporary as x * x would make
    flat = xp.ascontiguousarray(x).reshape(-1)
    return xp.dot(flat, flat)


def check_int(where: str, value: Any, low: int, example: str, high: int | None = None) -> None:
    """Refuse a non-integer or out-of-range integer parameter with one line.

    Examples
    --------
    >>> check_int("svd.n_components", 0, 1, "n_components: 5")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: svd.n_components: must be an integer >= 1, got 0 (fix: use e.g. n_components: 5)
    """
    ok = not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= low
    if ok and high is not None and value > high:
        raise PipelineError(where, f"{value} exceeds {high}", f"use at most {high}")
    if not ok:
        raise PipelineError(where, f"must be an integer >= {low}, got {value!r}", f"use e.g. {example}")


def check_number(where: str, value: Any, low: float, example: str, *, strict: bool = False,
                 high: float | None = None) -> None:
    """Refuse a non-finite or out-of-range number with one line.

    Examples
    --------
    >>> check_number("nmf.tol", -1.0, 0.0, "tol: 1e-4")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: nmf.tol: must be a number >= 0.0, got -1.0 (fix: use e.g. tol: 1e-4)
    """
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating) \
        and np.isfinite(value) and (value > low if strict else value >= low) \
        and (high is None or value <= high)
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise PipelineError(where, f"must be a number {bound}, got {value!r}", f"use e.g. {example}")


@dataclass(frozen=True)
class SVDStages(Operator):
    """Base class (not an operator by itself): the SVD prelude of every decomposition here.

    Subclasses declare their parameters as dataclass fields; the base reads
    ``n_components`` (or :meth:`svd_rank`), and where present ``centre``,
    ``poisson``, ``solver``, ``power_iter``, ``oversample``, ``svd_tol`` and
    ``seed``, and implements :meth:`after_svd`, :meth:`process_stage` and
    :meth:`finalize_stage` for its own stages.
    """

    backends = ("numpy", "cupy")

    @property
    def passes(self) -> int:  # type: ignore[override]  # a property where Operator has a class attribute
        """The most passes with these parameters (what ``diffraflow operators`` shows); see :meth:`max_passes`."""
        return int(self.max_passes())

    # -- configuration --------------------------------------------------------------------
    def svd_rank(self) -> int:
        """Number of SVD components the method needs."""
        return int(self._opt("n_components", 1))

    def _opt(self, name: str, default: Any) -> Any:
        return getattr(self, name, default)

    def solver_for(self, spec: InputSpec) -> str:
        """``gram`` or ``randomized`` for this input (``auto``: gram up to 4096 pixels)."""
        chosen = self._opt("solver", "auto")
        if chosen != "auto":
            return str(chosen)
        return "gram" if spec.det_shape[0] * spec.det_shape[1] <= GRAM_MAX_PIXELS else "randomized"

    def _block(self, spec: InputSpec) -> int:
        pixels = int(spec.det_shape[0] * spec.det_shape[1])
        return min(self.svd_rank() + int(self._opt("oversample", 10)), pixels, max(spec.n_frames, 1))

    def svd_passes(self) -> int:
        """Most passes the SVD prelude may take (over both solvers)."""
        stats = 1 if (self._opt("centre", False) or self._opt("poisson", False)) else 0
        return stats + 1 + int(self._opt("power_iter", 0))

    def first_stage(self, spec: InputSpec) -> str:
        if self._opt("centre", False) or self._opt("poisson", False):
            return "stats"
        return self.svd_stage(spec)

    def svd_stage(self, spec: InputSpec) -> str:
        """The stage that runs the chosen solver: ``gram`` or ``power``."""
        return "gram" if self.solver_for(spec) == "gram" else "power"

    def check_svd_params(self, spec: InputSpec) -> None:
        """Range checks of the SVD parameters (for ``resolve``)."""
        where = self.name
        pixels = int(spec.det_shape[0] * spec.det_shape[1])
        limit = min(spec.n_frames, pixels)
        check_int(f"{where}.n_components", self.svd_rank(), 1, "n_components: 3")
        if self.svd_rank() > limit:
            raise PipelineError(f"{where}.n_components", f"{self.svd_rank()} components exceed min(frames, "
                                f"pixels) = {limit}", f"use n_components <= {limit}")
        if spec.n_frames < 2:
            raise PipelineError(where, f"needs at least 2 frames, the scan has {spec.n_frames}", "run on a larger scan")
        solver = self._opt("solver", "auto")
        if solver not in ("auto", "gram", "randomized"):
            raise PipelineError(f"{where}.solver", f"{solver!r} is not auto, gram or randomized",
                                "use solver: auto, gram or randomized")
        check_int(f"{where}.power_iter", self._opt("power_iter", 0), 0, "power_iter: 6")
        check_int(f"{where}.oversample", self._opt("oversample", 10), 0, "oversample: 10")
        check_number(f"{where}.svd_tol", self._opt("svd_tol", 0.0), 0.0, "svd_tol: 1e-10")
        check_int(f"{where}.seed", self._opt("seed", 0), 0, "seed: 0")

    # -- per worker -----------------------------------------------------------------------
    def setup(self, spec: InputSpec, backend: str = "numpy") -> Any:
        """The random start basis of the randomised solver (on the backend's device)."""
        if self.solver_for(spec) != "randomized":
            return None
        from diffraflow.schemas.backends import array_module

        pixels = int(spec.det_shape[0] * spec.det_shape[1])
        rng = np.random.default_rng(int(self._opt("seed", 0)))
        start = np.linalg.qr(rng.standard_normal((pixels, self._block(spec))))[0]
        return {"start": start, "device_start": on_device(array_module(backend), start)}

    # -- helpers for subclasses -----------------------------------------------------------
    @staticmethod
    def flat(frames: Any, xp: Any) -> Any:
        """Frames as an ``(n, pixels)`` float64 array of ``xp``."""
        arr = xp.asarray(frames)
        return arr.reshape(arr.shape[0], -1).astype(xp.float64)

    def transformed(self, x: Any, xp: Any, state: dict[str, Any]) -> tuple[Any, Any]:
        """``x`` as the SVD sees it (Poisson-weighted, centred) and the per-frame :math:`\\sqrt{a_i}` (or None)."""
        root_a = None
        if state.get("root_b") is not None:
            a = xp.sum(x, axis=1)
            root_a = xp.sqrt(xp.maximum(a, 0.0))
            inv_a = xp.where(root_a > 0, 1.0 / xp.where(root_a > 0, root_a, 1.0), 0.0)
            x = x * inv_a[:, None] * on_device(xp, state["inv_root_b"])[None, :]
        if state.get("mean") is not None:
            x = x - on_device(xp, state["mean"])[None, :]
        return x, root_a

    def scores(self, x: Any, xp: Any, state: dict[str, Any]) -> tuple[Any, Any]:
        """SVD scores :math:`\\tilde x V^T` ``(n, k)`` of raw frames ``x`` and :math:`\\sqrt{a_i}`."""
        xt, root_a = self.transformed(x, xp, state)
        return xt @ on_device(xp, state["components"]).T, root_a

    def factors_back(self, rows: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """Map pattern-space rows ``(k, pixels)`` of the weighted data back to counts (times :math:`\\sqrt{b}`)."""
        if state.get("root_b") is None:
            return rows
        return rows * state["root_b"][None, :]

    @staticmethod
    def loadings_back(xp: Any, loadings: Any, root_a: Any) -> Any:
        """Map per-frame loadings of the weighted data back to counts (times :math:`\\sqrt{a_i}`)."""
        return loadings if root_a is None else loadings * root_a[:, None]

    @staticmethod
    def flat_index(ctx: ChunkContext, n: int) -> np.ndarray:
        """Flat scan index of each frame of the chunk (for gathered rows)."""
        if ctx.scan_index is not None:
            idx = np.asarray(ctx.scan_index)
            return (idx[:, 0].astype(np.int64) * int(ctx.spec.scan_shape[1]) + idx[:, 1]).astype(np.int64)
        return np.arange(ctx.flat_start, ctx.flat_start + n, dtype=np.int64)

    # -- the operator contract ------------------------------------------------------------
    def merge(self, name: str, left: Any, right: Any) -> Any:
        if name.startswith("cat_"):
            return np.concatenate([np.asarray(left), np.asarray(right)], axis=0)
        if name.startswith("max_"):
            return np.maximum(left, right)
        if name.startswith("min_"):
            return np.minimum(left, right)
        return left + right

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        state = ctx.state if ctx.state is not None else {"stage": self.first_stage(ctx.spec)}
        stage = state["stage"]
        if ctx.final_pass and stage != "final":
            raise PipelineError(self.name, f"the engine ran the final pass during stage {stage!r}",
                                "raise the operator's max_passes(); this is a bug in the operator")
        xp = ctx.xp
        x = self.flat(frames, xp)
        if stage == "stats":
            out = {"sum": xp.sum(x, axis=0), "count": np.int64(x.shape[0])}
            if self._opt("poisson", False):
                root_a = xp.sqrt(xp.maximum(xp.sum(x, axis=1), 0.0))
                inv_a = xp.where(root_a > 0, 1.0 / xp.where(root_a > 0, root_a, 1.0), 0.0)
                out["sum_weighted"] = xp.sum(x * inv_a[:, None], axis=0)
            return out
        if stage == "gram":
            xt, _ = self.transformed(x, xp, state)
            return {"gram": xt.T @ xt, "sumsq": _sumsq(xp, xt), "count": np.int64(x.shape[0])}
        if stage == "power":
            xt, _ = self.transformed(x, xp, state)
            basis = on_device(xp, state["basis"]) if "basis" in state else ctx.constants["device_start"]
            y = xt @ basis
            return {"z": xt.T @ y, "m": y.T @ y, "sumsq": _sumsq(xp, xt), "count": np.int64(x.shape[0])}
        if stage == "gather":
            z, _ = self.scores(x, xp, state)
            return {"cat_scores": host(z), "cat_index": self.flat_index(ctx, x.shape[0])}
        return self.process_stage(stage, x, xp, state, ctx)

    def finalize(self, partials: dict[str, Any], ctx: ChunkContext) -> Any:
        state: dict[str, Any] = dict(ctx.state) if ctx.state is not None else {"stage": self.first_stage(ctx.spec)}
        stage = state["stage"]
        k = self.svd_rank()
        if stage == "stats":
            count = int(partials["count"])
            total = np.asarray(host(partials["sum"]), np.float64)
            state.update(count=count, stage=self.svd_stage(ctx.spec))
            if self._opt("poisson", False):
                if np.any(total < 0):
                    raise PipelineError(f"{self.name}.poisson", "Poisson weighting needs non-negative counts, "
                                        f"found a pixel total of {float(total.min()):.4g}",
                                        "use poisson: false for background-subtracted data")
                root_b = np.sqrt(total)
                state["root_b"] = root_b
                state["inv_root_b"] = np.where(root_b > 0, 1.0 / np.where(root_b > 0, root_b, 1.0), 0.0)
            if self._opt("centre", False):
                if self._opt("poisson", False):
                    state["mean"] = np.asarray(host(partials["sum_weighted"]), np.float64) * state["inv_root_b"] / count
                else:
                    state["mean"] = total / count
            return NextPass(state)
        if stage == "gram":
            components, values = components_from_gram(host(partials["gram"]), k)
            return self._svd_done(state, components, values, partials)
        if stage == "power":
            z = np.asarray(host(partials["z"]), np.float64)
            values, components = range_svd(host(partials["m"]), z, k)
            components = components * flip_rows(components)[:, None]
            done = int(state.get("power_done", 0)) + 1
            previous = state.get("ritz")
            change = np.inf if previous is None else float(
                np.max(np.abs(values - previous) / np.maximum(np.abs(values), np.finfo(float).tiny)))
            if done >= 1 + int(self._opt("power_iter", 0)) or change <= float(self._opt("svd_tol", 0.0)):
                state.pop("basis", None)
                state["power_passes"] = done
                return self._svd_done(state, components, values, partials)
            state.update(stage="power", power_done=done, ritz=values, basis=host(orthonormal(np, z)))
            return NextPass(state)
        if stage == "gather":
            index = np.asarray(partials["cat_index"])
            order = np.argsort(index, kind="stable")
            scores = np.asarray(partials["cat_scores"], np.float64)[order]
            return self.after_gather(scores, state, ctx)
        return self.finalize_stage(stage, partials, state, ctx)

    def _svd_done(self, state: dict[str, Any], components: np.ndarray, values: np.ndarray,
                  partials: dict[str, Any]) -> Any:
        count = int(partials["count"])
        if "count" in state and int(state["count"]) != count:
            raise PipelineError(self.name, f"the SVD pass saw {count} frames, an earlier pass {state['count']}",
                                "the source changed between passes; re-run")
        sumsq = float(host(partials["sumsq"]))
        state.update(count=count, components=np.asarray(components, np.float64),
                     singular_values=np.sqrt(np.clip(values, 0.0, None)), sumsq=sumsq)
        state.pop("ritz", None)
        state.pop("power_done", None)
        return self.after_svd(state)

    def svd_outputs(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        """Explained variance (:math:`s_j^2/(N-1)`), its share of the total, and singular values."""
        s = np.asarray(state["singular_values"], np.float64)
        dof = max(int(state["count"]) - 1, 1)
        total = float(state["sumsq"])
        return {"explained_variance": s ** 2 / dof,
                "explained_variance_ratio": s ** 2 / total if total > 0 else np.zeros_like(s),
                "singular_values": s}

    # -- hooks ------------------------------------------------------------------------------
    def after_svd(self, state: dict[str, Any]) -> Any:
        """What follows the SVD: a :class:`NextPass`/:class:`LastPass` with the next stage."""
        raise NotImplementedError

    def after_gather(self, scores: np.ndarray, state: dict[str, Any], ctx: ChunkContext) -> Any:
        """Work on the gathered scores ``(N, k)`` (in scan order); returns the next pass."""
        raise NotImplementedError

    def process_stage(self, stage: str, x: Any, xp: Any, state: dict[str, Any], ctx: ChunkContext) -> dict[str, Any]:
        """Per-chunk work of the subclass's own stages."""
        raise NotImplementedError(f"{type(self).__name__} has no stage {stage!r}")

    def finalize_stage(self, stage: str, partials: dict[str, Any], state: dict[str, Any], ctx: ChunkContext) -> Any:
        """End-of-pass work of the subclass's own stages."""
        raise NotImplementedError(f"{type(self).__name__} has no stage {stage!r}")


def last(state: dict[str, Any], stage: str = "final") -> LastPass:
    """A :class:`LastPass` into ``stage``.

    Examples
    --------
    >>> last({"x": 1}).state
    {'x': 1, 'stage': 'final'}
    """
    return LastPass({**state, "stage": stage})


def following(state: dict[str, Any], stage: str) -> NextPass:
    """A :class:`NextPass` into ``stage``.

    Examples
    --------
    >>> following({}, "gather").state
    {'stage': 'gather'}
    """
    return NextPass({**state, "stage": stage})
