"""Vertex component analysis of a scan: the purest frames as endmembers, and each frame's abundances."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import ChunkContext, InputSpec, OutputSpec, param, register_operator
from diffraflow.operators.decomposition._linalg import on_device, solve_nonneg
from diffraflow.operators.decomposition._stages import SVDStages, following, last
from diffraflow.operators.decomposition._vca import pick_frames, vca_indices
from diffraflow.schemas.errors import PipelineError

__all__ = ["VCA"]


@register_operator
@dataclass(frozen=True)
class VCA(SVDStages):
    """Vertex component analysis: ``k`` measured frames as endmember patterns, abundances for every frame.

    Parameters
    ----------
    n_components
        Number of endmembers ``k``.
    abundance
        ``fcls``: non-negative abundances summing to one (fully constrained
        least squares); ``nnls``: non-negative only.
    projective
        Normalise each frame's loadings onto the hyperplane through the
        mean first (VCA's projective projection: removes thickness scaling).
    solver, power_iter, oversample, svd_tol
        Of the (uncentred) SVD whose loadings VCA works in.
    seed
        Seed of the SVD start and of VCA's random directions.

    Outputs
    -------
    factors : single ``(component, det_y, det_x)``
        float32 the measured frames found as endmembers.
    loadings : nav ``(component,)``
        float32 abundances, in the space of the SVD loadings.
    endmember_index : single ``(component,)``
        Flat scan index of each endmember frame.
    svd_loadings : nav ``(svd_component,)``
        float32 the SVD loadings VCA worked on (for the scatter plot).

    Notes
    -----
    Passes: the SVD (see :mod:`~diffraflow.operators.decomposition._stages`),
    one pass gathering the ``N x k`` loadings (VCA itself runs on them in
    memory: :func:`~diffraflow.operators.decomposition._vca.vca_indices`),
    and one pass that writes the abundances and picks the endmember frames
    out of the scan. VCA assumes that every endmember occurs pure
    somewhere in the scan; noise pushes it towards the noisiest extreme
    frames, so use it on scans with enough counts (or with few components).

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.flow.testing import run_operator
    >>> a, b = np.zeros((4, 4)), np.zeros((4, 4)); a[0, 0] = b[3, 3] = 10.0
    >>> frac = np.linspace(0, 1, 12)[:, None, None]
    >>> cube = (frac * a + (1 - frac) * b + 1.0).reshape(2, 6, 4, 4)
    >>> out = run_operator(VCA(n_components=2), cube, chunk_frames=5)
    >>> sorted(out["endmember_index"].tolist()), float(out["loadings"].sum(axis=-1).round(5).min())
    ([0, 11], 1.0)
    """

    name = "vca"

    n_components: int = param(3, doc="number of endmembers")
    abundance: str = param("fcls", doc="fcls (non-negative, sum to one) or nnls (non-negative)",
                           choices=("fcls", "nnls"))
    projective: bool = param(True, doc="normalise loadings onto the mean hyperplane first (removes thickness)")
    solver: str = param("auto", doc="SVD solver: gram, randomized or auto", choices=("auto", "gram", "randomized"))
    power_iter: int = param(2, doc="most subspace-iteration passes after the first (randomized SVD)")
    oversample: int = param(10, doc="extra columns of the randomized SVD basis")
    svd_tol: float = param(1e-8, doc="SVD stops when its top singular values change by less than this")
    seed: int = param(0, doc="seed of the SVD start and of the random directions")

    def max_passes(self) -> int:
        """SVD, gather, final.

        Examples
        --------
        >>> VCA(solver="gram", power_iter=0).max_passes()
        3
        """
        return self.svd_passes() + 2

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        self.check_svd_params(spec)
        if self.abundance not in ("fcls", "nnls"):
            raise PipelineError(f"{self.name}.abundance", f"{self.abundance!r} is not fcls or nnls",
                                "use abundance: fcls")
        k = int(self.n_components)
        det = tuple(spec.det_shape)
        return {
            "factors": OutputSpec("single", "float32", (k, *det), ("component", "det_y", "det_x"),
                                  "endmember frames", "decomposition"),
            "loadings": OutputSpec("nav", "float32", (k,), ("component",), "abundances", "decomposition"),
            "endmember_index": OutputSpec("single", "int64", (k,), ("component",),
                                          "flat scan index of each endmember frame"),
            "svd_loadings": OutputSpec("nav", "float32", (k,), ("svd_component",), "SVD loadings",
                                       "decomposition"),
        }

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """The ``decomposition`` product's attributes.

        Examples
        --------
        >>> VCA().result_attrs(InputSpec((4, 4), (8, 8), np.dtype("u1")))["method"]
        'vca'
        """
        return {"method": "vca", "abundance": self.abundance, "projective": bool(self.projective),
                "n_components": int(self.n_components)}

    def after_svd(self, state: dict[str, Any]) -> Any:
        return following(state, "gather")

    def after_gather(self, scores: np.ndarray, state: dict[str, Any], ctx: ChunkContext) -> Any:
        k = int(self.n_components)
        index = vca_indices(scores, k, seed=int(self.seed), projective=bool(self.projective))
        return last({**state, "endmember_index": index, "endmembers": scores[index, :k]})

    def process_stage(self, stage: str, x: Any, xp: Any, state: dict[str, Any], ctx: ChunkContext) -> dict[str, Any]:
        z, _ = self.scores(x, xp, state)
        ends = on_device(xp, state["endmembers"])
        abundances = solve_nonneg(xp, ends @ ends.T, z @ ends.T, sum_to_one=self.abundance == "fcls")
        picked = pick_frames(x, self.flat_index(ctx, x.shape[0]), np.asarray(state["endmember_index"]))
        return {"loadings": abundances.astype(xp.float32), "svd_loadings": z.astype(xp.float32),
                "picked": picked, "count": np.int64(x.shape[0])}

    def finalize_stage(self, stage: str, partials: dict[str, Any], state: dict[str, Any], ctx: ChunkContext) -> Any:
        k = int(self.n_components)
        return {"factors": np.asarray(partials["picked"]).reshape(k, *ctx.spec.det_shape).astype(np.float32),
                "endmember_index": np.asarray(state["endmember_index"], np.int64)}
