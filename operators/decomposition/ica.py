"""Independent component analysis (FastICA) of a scan's SVD loadings, mapped back to patterns and maps."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import ChunkContext, InputSpec, OutputSpec, param, register_operator
from diffraflow.operators.decomposition._linalg import flip_rows, on_device
from diffraflow.operators.decomposition._stages import (
    SVDStages,
    check_int,
    check_number,
    following,
    last,
)
from diffraflow.schemas.errors import PipelineError

__all__ = ["ICA"]


@register_operator
@dataclass(frozen=True)
class ICA(SVDStages):
    """FastICA on the first ``n_components`` SVD loadings: statistically independent maps and their patterns.

    Parameters
    ----------
    n_components
        Number of independent components (and of SVD components used).
    fun
        FastICA's contrast function: ``logcosh``, ``exp`` or ``cube``.
    max_iter, tol
        FastICA's iteration limit and tolerance.
    centre, poisson, solver, power_iter, oversample, svd_tol
        Of the SVD (see :class:`~diffraflow.operators.decomposition.svd.SVD`).
    seed
        Seed of the SVD start and of FastICA.

    Outputs
    -------
    factors : single ``(component, det_y, det_x)``
        float32 independent component patterns :math:`(V^T A)^T` (SVD
        factors times the mixing matrix; times :math:`\\sqrt{b_j}` with ``poisson``).
    loadings : nav ``(component,)``
        float32 independent sources of each frame (unit variance over the scan).
    mixing, unmixing : single ``(component, component)``
        The mixing matrix ``A`` in SVD-loading space and its inverse.

    Notes
    -----
    Passes: the SVD (see :mod:`~diffraflow.operators.decomposition._stages`),
    one pass gathering the ``N x k`` SVD loadings, on which scikit-learn's
    ``FastICA`` (Hyvarinen, 1999; ``whiten="unit-variance"``) runs in
    memory, and one pass that writes each frame's sources
    :math:`s_i = W(z_i - \\bar z)`. Each component is signed so that its
    pattern's largest-magnitude pixel is positive.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.flow.testing import run_operator
    >>> rng = np.random.default_rng(0)
    >>> maps = np.c_[rng.laplace(size=30), rng.uniform(-1, 1, size=30)]
    >>> cube = (maps @ rng.normal(size=(2, 25))).reshape(5, 6, 5, 5)
    >>> out = run_operator(ICA(n_components=2), cube, chunk_frames=8)
    >>> out["loadings"].reshape(-1, 2).std(axis=0).round(2).tolist()
    [1.0, 1.0]
    """

    name = "ica"

    n_components: int = param(3, doc="number of independent components")
    fun: str = param("logcosh", doc="FastICA contrast function", choices=("logcosh", "exp", "cube"))
    max_iter: int = param(1000, doc="FastICA iterations")
    tol: float = param(1e-6, doc="FastICA tolerance")
    centre: bool = param(False, doc="centre the data before the SVD")
    poisson: bool = param(False, doc="Poisson-weight the data before the SVD")
    solver: str = param("auto", doc="SVD solver: gram, randomized or auto", choices=("auto", "gram", "randomized"))
    power_iter: int = param(2, doc="most subspace-iteration passes after the first (randomized SVD)")
    oversample: int = param(10, doc="extra columns of the randomized SVD basis")
    svd_tol: float = param(1e-8, doc="SVD stops when its top singular values change by less than this")
    seed: int = param(0, doc="seed of the SVD start and of FastICA")

    def max_passes(self) -> int:
        """SVD, gather, final.

        Examples
        --------
        >>> ICA(power_iter=0, solver="gram").max_passes()
        3
        """
        return self.svd_passes() + 2

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        self.check_svd_params(spec)
        where = self.name
        if self.fun not in ("logcosh", "exp", "cube"):
            raise PipelineError(f"{where}.fun", f"{self.fun!r} is not logcosh, exp or cube", "use fun: logcosh")
        check_int(f"{where}.max_iter", self.max_iter, 1, "max_iter: 1000")
        check_number(f"{where}.tol", self.tol, 0.0, "tol: 1e-6", strict=True)
        k = int(self.n_components)
        det = tuple(spec.det_shape)
        return {
            "factors": OutputSpec("single", "float32", (k, *det), ("component", "det_y", "det_x"),
                                  "independent component patterns", "decomposition"),
            "loadings": OutputSpec("nav", "float32", (k,), ("component",), "independent sources",
                                   "decomposition"),
            "mixing": OutputSpec("single", "float64", (k, k), ("svd_component", "component"),
                                 "mixing matrix in SVD-loading space"),
            "unmixing": OutputSpec("single", "float64", (k, k), ("component", "svd_component"),
                                   "unmixing matrix in SVD-loading space"),
        }

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """The ``decomposition`` product's attributes.

        Examples
        --------
        >>> ICA().result_attrs(InputSpec((4, 4), (8, 8), np.dtype("u1")))["method"]
        'ica'
        """
        return {"method": "ica", "fun": self.fun, "n_components": int(self.n_components),
                "on": "svd_loadings", "centred": bool(self.centre), "poisson": bool(self.poisson)}

    def after_svd(self, state: dict[str, Any]) -> Any:
        return following(state, "gather")

    def after_gather(self, scores: np.ndarray, state: dict[str, Any], ctx: ChunkContext) -> Any:
        from sklearn.decomposition import FastICA

        ica = FastICA(n_components=int(self.n_components), whiten="unit-variance", fun=self.fun,
                      max_iter=int(self.max_iter), tol=float(self.tol), random_state=int(self.seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a non-converged FastICA is reported through the result attributes
            ica.fit(scores)
        unmixing = np.asarray(ica.components_, np.float64)
        mixing = np.asarray(ica.mixing_, np.float64)
        patterns = mixing.T @ state["components"]
        signs = flip_rows(self.factors_back(patterns, state))
        return last({**state, "unmixing": unmixing * signs[:, None], "mixing": mixing * signs[None, :],
                     "score_mean": np.asarray(ica.mean_, np.float64), "ica_iter": int(ica.n_iter_)})

    def process_stage(self, stage: str, x: Any, xp: Any, state: dict[str, Any], ctx: ChunkContext) -> dict[str, Any]:
        z, root_a = self.scores(x, xp, state)
        sources = (z - on_device(xp, state["score_mean"])[None, :]) @ on_device(xp, state["unmixing"]).T
        return {"loadings": self.loadings_back(xp, sources, root_a).astype(xp.float32),
                "count": np.int64(x.shape[0])}

    def finalize_stage(self, stage: str, partials: dict[str, Any], state: dict[str, Any], ctx: ChunkContext) -> Any:
        k = int(self.n_components)
        patterns = self.factors_back(state["mixing"].T @ state["components"], state)
        return {"factors": patterns.reshape(k, *ctx.spec.det_shape).astype(np.float32),
                "mixing": state["mixing"], "unmixing": state["unmixing"]}
