"""Out-of-core PCA in three passes over the scan: mean, covariance sketch, loadings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import (
    ChunkContext,
    InputSpec,
    Operator,
    OutputSpec,
    param,
    register_operator,
)
from diffraflow.operators.decomposition._pca import (
    components_from_gram,
    components_from_sketch,
    merge_sketches,
    svd_sketch,
)
from diffraflow.schemas.errors import PipelineError

__all__ = ["IncrementalPCA"]

#: ``method: auto`` uses the Gram matrix up to this many pixels per frame (a
#: 4096-pixel Gram matrix is 128 MiB of float64 per partial).
GRAM_MAX_PIXELS = 4096


@register_operator
@dataclass(frozen=True)
class IncrementalPCA(Operator):
    """Principal component analysis of all frames, out of core and chunk-independent.

    Parameters
    ----------
    n_components
        Number of components ``k`` (at most ``min(frames, pixels)``).
    method
        ``gram`` (sum of :math:`X_c^T X_c`, exact; memory ``pixels^2``),
        ``svd`` (merged thin-SVD sketches of ``sketch_rank`` rows; memory
        ``sketch_rank x pixels``), or ``auto``: ``gram`` up to 4096 pixels.
    sketch_rank
        Rows kept by the ``svd`` sketch; default ``max(10 k, 100)``. Exact when
        at least the rank of the centred data, else the leading components are
        approximated (the smallest directions of each merge are dropped).

    Outputs
    -------
    factors : single ``(component, det_y, det_x)``
        float32 unit-norm components (product ``decomposition``).
    loadings : nav ``(component,)``
        float32 scores :math:`(x - \\bar x) \\cdot v_j` of each frame (product
        ``decomposition``).
    explained_variance : single ``(component,)``
        float64 variance along each component, :math:`s_j^2 / (N - 1)` (product
        ``decomposition``).
    explained_variance_ratio : single ``(component,)``
        float64 share of the total variance.
    mean : sig
        float64 mean frame that was subtracted.

    Notes
    -----
    Pass 0 reduces the mean frame as float64 ``(sum, count)``. Pass 1 reduces
    a mergeable summary of the centred frames :math:`X_c = X - \\bar x` (Gram
    matrix or SVD sketch, see :mod:`diffraflow.operators.decomposition._pca`) and the
    total sum of squares; its ``finalize`` takes the top ``k`` right singular
    vectors. Pass 2 projects each frame on them (``loadings``) and its
    ``finalize`` returns the scan-wide outputs. Components follow
    scikit-learn's sign convention (largest-magnitude entry positive), so the
    results match ``sklearn.decomposition.PCA`` within floating-point error.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.base import ChunkContext, InputSpec
    >>> x = np.random.default_rng(0).normal(size=(6, 2, 2))
    >>> spec = InputSpec((2, 3), (2, 2), x.dtype)
    >>> op, state = IncrementalPCA(n_components=2), None
    >>> for p in range(op.passes):
    ...     ctx = ChunkContext(spec, pass_index=p, state=state)
    ...     out = op.process(x, ctx)
    ...     partials = {k: v for k, v in out.items() if k != "loadings"}
    ...     state = op.finalize(partials, ctx)
    >>> out["loadings"].shape, state["factors"].shape
    ((6, 2), (2, 2, 2))
    """

    name = "incremental_pca"
    backends = ("numpy",)
    passes = 3

    n_components: int = param(5, doc="number of principal components")
    method: str = param("auto", doc="gram (exact, pixels^2 memory), svd (sketch), or auto (gram up to 4096 px)",
                        choices=("auto", "gram", "svd"))
    sketch_rank: int | None = param(None, doc="rows kept by the svd sketch (default max(10 k, 100))")

    # -- configuration ----------------------------------------------------------
    def _method(self, spec: InputSpec) -> str:
        if self.method != "auto":
            return self.method
        return "gram" if spec.det_shape[0] * spec.det_shape[1] <= GRAM_MAX_PIXELS else "svd"

    def _rank(self) -> int:
        return int(self.sketch_rank) if self.sketch_rank is not None else max(10 * int(self.n_components), 100)

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        where = self.name
        k = self.n_components
        p = int(spec.det_shape[0] * spec.det_shape[1])
        limit = min(spec.n_frames, p)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise PipelineError(f"{where}.n_components", f"must be a positive integer, got {k!r}",
                                "use e.g. n_components: 5")
        if k > limit:
            raise PipelineError(f"{where}.n_components", f"{k} components exceed min(frames, pixels) = {limit}",
                                f"use n_components <= {limit}")
        if spec.n_frames < 2:
            raise PipelineError(where, f"PCA needs at least 2 frames, the scan has {spec.n_frames}",
                                "run on a larger scan")
        if self.method not in ("auto", "gram", "svd"):
            raise PipelineError(f"{where}.method", f"{self.method!r} is not auto, gram or svd",
                                "use method: auto, gram or svd")
        if self.sketch_rank is not None and (not isinstance(self.sketch_rank, int | np.integer)
                                             or self.sketch_rank < k):
            raise PipelineError(f"{where}.sketch_rank", f"must be an integer >= n_components = {k}, "
                                f"got {self.sketch_rank!r}", f"use sketch_rank: {max(10 * k, 100)}")
        det = tuple(spec.det_shape)
        return {
            "factors": OutputSpec("single", "float32", (k, *det), ("component", "det_y", "det_x"),
                                  "principal components (unit norm)", "decomposition"),
            "loadings": OutputSpec("nav", "float32", (k,), ("component",),
                                   "projection of each centred frame on each component", "decomposition"),
            "explained_variance": OutputSpec("single", "float64", (k,), ("component",),
                                             "variance along each component", "decomposition"),
            "explained_variance_ratio": OutputSpec("single", "float64", (k,), ("component",),
                                                   "share of the total variance along each component",
                                                   "decomposition"),
            "mean": OutputSpec("sig", "float64", det, ("det_y", "det_x"), "mean frame subtracted before PCA"),
        }

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """The ``decomposition`` product's attributes: method, solver and component count.

        Examples
        --------
        >>> IncrementalPCA(n_components=2).result_attrs(InputSpec((4, 4), (8, 8), np.dtype("u1")))["method"]
        'pca'
        """
        return {"method": "pca", "solver": self._method(spec), "n_components": int(self.n_components),
                "centred": True}

    # -- kernel -------------------------------------------------------------------
    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        frames = np.asarray(frames)
        n = frames.shape[0]
        x = frames.reshape(n, -1).astype(np.float64)
        if ctx.pass_index == 0:
            return {"sum": x.sum(axis=0), "count": np.int64(n)}
        xc = x - ctx.state["mean"]
        if ctx.pass_index == 1:
            out: dict[str, Any] = {"sumsq": np.float64(np.einsum("ij,ij->", xc, xc))}
            if self._method(ctx.spec) == "gram":
                out["gram"] = xc.T @ xc
            else:
                out["sketch"] = svd_sketch(xc, self._rank())
            return out
        loadings = xc @ ctx.state["components"].T
        return {"loadings": loadings.astype(np.float32), "count": np.int64(n)}

    def merge(self, name: str, left: Any, right: Any) -> Any:
        if name == "sketch":
            return merge_sketches(left, right, self._rank())
        return left + right

    def finalize(self, partials: dict[str, Any], ctx: ChunkContext) -> dict[str, Any]:
        k = int(self.n_components)
        det = tuple(ctx.spec.det_shape)
        if ctx.pass_index == 0:
            count = int(partials["count"])
            if count < 2:
                raise PipelineError(self.name, f"PCA needs at least 2 frames, got {count}", "run on a larger scan")
            return {"mean": np.asarray(partials["sum"], np.float64) / count, "count": count}
        state = ctx.state
        if ctx.pass_index == 1:
            dof = state["count"] - 1
            if "gram" in partials:
                components, sq = components_from_gram(partials["gram"], k)
            else:
                components, sq = components_from_sketch(partials["sketch"], k)
            total = float(partials["sumsq"]) / dof
            variance = sq / dof
            ratio = variance / total if total > 0 else np.zeros_like(variance)
            return {**state, "components": components, "explained_variance": variance,
                    "explained_variance_ratio": ratio}
        if "count" in partials and int(partials["count"]) != state["count"]:
            raise PipelineError(self.name, f"pass 2 saw {int(partials['count'])} frames, pass 0 saw "
                                f"{state['count']}", "the source changed between passes; re-run")
        return {
            "factors": state["components"].reshape(k, *det).astype(np.float32),
            "explained_variance": np.asarray(state["explained_variance"], np.float64),
            "explained_variance_ratio": np.asarray(state["explained_variance_ratio"], np.float64),
            "mean": np.asarray(state["mean"], np.float64).reshape(det),
        }
