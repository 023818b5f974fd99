"""Fuzzy c-means clustering of a scan in the space of its SVD loadings, with weighted-average centre patterns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import ChunkContext, InputSpec, OutputSpec, param, register_operator
from diffraflow.operators.decomposition._fuzzy import distances, fit_fuzzy, memberships, weights
from diffraflow.operators.decomposition._linalg import host, on_device
from diffraflow.operators.decomposition._stages import SVDStages, check_int, check_number, last
from diffraflow.schemas.errors import PipelineError

__all__ = ["FuzzyCMeans"]


@register_operator
@dataclass(frozen=True)
class FuzzyCMeans(SVDStages):
    """Fuzzy clustering of the frames' SVD loadings; memberships per scan point and cluster-centre patterns.

    Parameters
    ----------
    n_clusters
        Number of clusters ``c``.
    n_components
        SVD loadings clustered (``d``); default ``c``. Clustering in more
        than about ten dimensions is unreliable (the seed paper, after
        Aggarwal et al.): keep it small.
    variant
        ``fcm`` (Euclidean distance; Bezdek et al., 1984) or ``gk``
        (Gustafson & Kessel, 1978: each cluster an ellipsoid of its own
        orientation and shape, equal volumes).
    m
        Fuzzifier (``> 1``; 2 is usual). Ignored with ``contrast``.
    contrast
        ``0``: classic fuzzy memberships; ``0 < contrast < 1``: high contrast
        (Rousseeuw, Trauwaert & Kaufman, 1995), the seed paper's suggested
        remedy for memberships below 1 in pure regions.
    max_iter, tol
        Clustering iterations and the stopping threshold on memberships.
    centre, poisson, solver, power_iter, oversample, svd_tol
        Of the SVD (see :class:`~diffraflow.operators.decomposition.svd.SVD`).
    seed
        Seed of the SVD start and of the random start memberships.

    Outputs
    -------
    factors : single ``(component, det_y, det_x)``
        float32 cluster-centre patterns: the weighted means
        :math:`\\sum_i w_{ic} x_i / \\sum_i w_{ic}` of the measured frames,
        :math:`w = u^m` (or :math:`f(u)` with contrast).
    loadings, memberships : nav ``(component,)``
        float32 membership of each frame in each cluster (rows sum to 1).
    svd_loadings : nav ``(svd_component,)``
        float32 the points that were clustered (for the scatter plot).
    centres : single ``(component, svd_component)``
        Cluster centres in SVD-loading space.
    norm_matrices : single ``(component, svd_component, svd_component)``
        Each cluster's distance matrix (identity for ``fcm``).
    error : single ``(iteration,)``
        Clustering objective after each iteration, NaN after the last.
    n_iter : single ``(1,)``

    Notes
    -----
    Passes: the SVD (see :mod:`~diffraflow.operators.decomposition._stages`),
    one pass gathering the ``N x d`` loadings (small: clustering runs on
    them in memory, every iteration, without rereading frames), and one
    pass that writes the memberships and sums the weighted frames for the
    centre patterns. Memberships there are computed from the final centres
    by the same formula the iterations use. Clusters are ordered by centre
    (first SVD loading, then second).

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.flow.testing import run_operator
    >>> a, b = np.zeros((4, 4)), np.zeros((4, 4)); a[0, 0] = b[3, 3] = 10.0
    >>> frac = np.linspace(0, 1, 12)[:, None, None]
    >>> cube = (frac * a + (1 - frac) * b + 1.0).reshape(2, 6, 4, 4)
    >>> out = run_operator(FuzzyCMeans(n_clusters=2), cube, chunk_frames=5)
    >>> float(out["memberships"].sum(axis=-1).round(5).min()), out["factors"].shape
    (1.0, (2, 4, 4))
    """

    name = "fuzzy_cmeans"

    n_clusters: int = param(3, doc="number of clusters")
    n_components: int | None = param(None, doc="SVD loadings clustered (default: n_clusters)")
    variant: str = param("fcm", doc="fcm (Euclidean) or gk (Gustafson-Kessel ellipsoids)", choices=("fcm", "gk"))
    m: float = param(2.0, doc="fuzzifier, > 1 (ignored with contrast)")
    contrast: float = param(0.0, doc="0: classic memberships; 0..1: high contrast (Rousseeuw et al.)")
    max_iter: int = param(300, doc="most clustering iterations (in memory, on the loadings)")
    tol: float = param(1e-6, doc="stop when no membership changes by more than this")
    centre: bool = param(False, doc="centre the data before the SVD")
    poisson: bool = param(False, doc="Poisson-weight the data before the SVD")
    solver: str = param("auto", doc="SVD solver: gram, randomized or auto", choices=("auto", "gram", "randomized"))
    power_iter: int = param(2, doc="most subspace-iteration passes after the first (randomized SVD)")
    oversample: int = param(10, doc="extra columns of the randomized SVD basis")
    svd_tol: float = param(1e-8, doc="SVD stops when its top singular values change by less than this")
    seed: int = param(0, doc="seed of the SVD start and of the start memberships")

    def svd_rank(self) -> int:
        return int(self.n_components if self.n_components is not None else self.n_clusters)

    def max_passes(self) -> int:
        """SVD, gather, final.

        Examples
        --------
        >>> FuzzyCMeans(solver="gram", power_iter=0).max_passes()
        3
        """
        return self.svd_passes() + 2

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        where = self.name
        check_int(f"{where}.n_clusters", self.n_clusters, 2, "n_clusters: 3", high=max(spec.n_frames, 2))
        if self.n_components is not None:
            check_int(f"{where}.n_components", self.n_components, 1, "n_components: 3")
        self.check_svd_params(spec)
        if self.variant not in ("fcm", "gk"):
            raise PipelineError(f"{where}.variant", f"{self.variant!r} is not fcm or gk", "use variant: fcm or gk")
        check_number(f"{where}.m", self.m, 1.0, "m: 2", strict=True)
        check_number(f"{where}.contrast", self.contrast, 0.0, "contrast: 0.5", high=0.999)
        check_int(f"{where}.max_iter", self.max_iter, 1, "max_iter: 300")
        check_number(f"{where}.tol", self.tol, 0.0, "tol: 1e-6")
        c, d = int(self.n_clusters), self.svd_rank()
        det = tuple(spec.det_shape)
        return {
            "factors": OutputSpec("single", "float32", (c, *det), ("component", "det_y", "det_x"),
                                  "cluster-centre patterns (weighted means of the frames)", "decomposition"),
            "loadings": OutputSpec("nav", "float32", (c,), ("component",), "memberships", "decomposition"),
            "memberships": OutputSpec("nav", "float32", (c,), ("component",), "membership in each cluster",
                                      "decomposition"),
            "svd_loadings": OutputSpec("nav", "float32", (d,), ("svd_component",), "SVD loadings clustered",
                                       "decomposition"),
            "centres": OutputSpec("single", "float64", (c, d), ("component", "svd_component"),
                                  "cluster centres in SVD-loading space", "decomposition"),
            "norm_matrices": OutputSpec("single", "float64", (c, d, d), ("component", "svd_component", "svd_dual"),
                                        "distance matrix of each cluster"),
            "error": OutputSpec("single", "float64", (int(self.max_iter),), ("iteration",),
                                "clustering objective per iteration (NaN after the last)", "decomposition"),
            "n_iter": OutputSpec("single", "int64", (1,), ("one",), "clustering iterations made"),
        }

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """The ``decomposition`` product's attributes.

        Examples
        --------
        >>> FuzzyCMeans(variant="gk").result_attrs(InputSpec((4, 4), (8, 8), np.dtype("u1")))["variant"]
        'gk'
        """
        return {"method": "fuzzy_cmeans", "variant": self.variant, "m": float(self.m),
                "contrast": float(self.contrast), "n_clusters": int(self.n_clusters),
                "n_components": int(self.n_clusters), "svd_components": self.svd_rank(),
                "loadings_are": "memberships"}

    def after_svd(self, state: dict[str, Any]) -> Any:
        from diffraflow.operators.decomposition._stages import following

        return following(state, "gather")

    def after_gather(self, scores: np.ndarray, state: dict[str, Any], ctx: ChunkContext) -> Any:
        fit = fit_fuzzy(scores, int(self.n_clusters), m=float(self.m), variant=self.variant,
                        contrast=float(self.contrast), max_iter=int(self.max_iter), tol=float(self.tol),
                        seed=int(self.seed))
        return last({**state, "centres": fit.centres, "norms": fit.norms, "objective": fit.objective,
                     "n_iter": fit.n_iter})

    def process_stage(self, stage: str, x: Any, xp: Any, state: dict[str, Any], ctx: ChunkContext) -> dict[str, Any]:
        z, _ = self.scores(x, xp, state)
        d2 = distances(xp, z, on_device(xp, state["centres"]), on_device(xp, state["norms"]))
        u = memberships(xp, d2, m=float(self.m), contrast=float(self.contrast))
        w = weights(xp, u, m=float(self.m), contrast=float(self.contrast))
        u32 = u.astype(xp.float32)
        return {"loadings": u32, "memberships": u32, "svd_loadings": z.astype(xp.float32),
                "weighted_frames": w.T @ x, "weight_sums": xp.sum(w, axis=0), "count": np.int64(x.shape[0])}

    def finalize_stage(self, stage: str, partials: dict[str, Any], state: dict[str, Any], ctx: ChunkContext) -> Any:
        c = int(self.n_clusters)
        sums = np.asarray(host(partials["weight_sums"]), np.float64)
        patterns = np.asarray(host(partials["weighted_frames"]), np.float64) / np.maximum(sums, 1e-300)[:, None]
        error = np.full(int(self.max_iter), np.nan)
        objective = np.asarray(state["objective"], np.float64)
        error[: objective.size] = objective
        return {"factors": patterns.reshape(c, *ctx.spec.det_shape).astype(np.float32),
                "centres": np.asarray(state["centres"], np.float64),
                "norm_matrices": np.asarray(state["norms"], np.float64),
                "error": error, "n_iter": np.array([int(state["n_iter"])], np.int64)}
