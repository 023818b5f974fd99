"""Truncated SVD (or PCA) of a whole scan, out of core: the scree plot's numbers and the basis of the other methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import ChunkContext, InputSpec, OutputSpec, param, register_operator
from diffraflow.operators.decomposition._linalg import host
from diffraflow.operators.decomposition._stages import SVDStages, last

__all__ = ["SVD"]


@register_operator
@dataclass(frozen=True)
class SVD(SVDStages):
    """Truncated singular value decomposition of all frames, in a few passes over the scan.

    Parameters
    ----------
    n_components
        Number of components ``k``.
    centre
        Subtract the mean frame first (PCA). Off by default: the SVD of the
        data as they are, as HyperSpy's ``decomposition()`` does.
    poisson
        Weight counts by :math:`1/\\sqrt{a_i b_j}` (frame and pixel totals)
        before the SVD, so that shot noise is the same everywhere
        (HyperSpy's ``normalize_poissonian_noise``).
    solver
        ``gram``: sum :math:`\\tilde X^T\\tilde X` over the scan and take its
        top eigenvectors (exact; ``pixels^2`` float64 in memory; 2 passes);
        ``randomized``: subspace iteration from a seeded Gaussian start of
        ``k + oversample`` columns, one pass per step (memory
        ``pixels x (k + oversample)``); ``auto``: gram up to 4096 pixels.
    power_iter
        Most subspace-iteration steps after the first pass (randomized).
        Two are plenty for the few strong components of a diffraction scan;
        the tail of a long scree plot needs more (or ``gram``).
    oversample
        Extra columns of the randomised basis.
    svd_tol
        Stop iterating when the top ``k`` squared singular values change by
        less than this (relative) from one pass to the next.
    seed
        Seed of the randomised start.

    Outputs
    -------
    factors : single ``(component, det_y, det_x)``
        float32 right singular vectors (unit norm; times :math:`\\sqrt{b_j}`
        with ``poisson``), largest-magnitude entry positive.
    loadings : nav ``(component,)``
        float32 scores :math:`\\tilde x_i \\cdot v_j` (times :math:`\\sqrt{a_i}` with ``poisson``).
    explained_variance : single ``(component,)``
        :math:`s_j^2 / (N - 1)` (the scree plot).
    explained_variance_ratio : single ``(component,)``
        :math:`s_j^2 / \\lVert \\tilde X \\rVert_F^2`.
    singular_values : single ``(component,)``
    mean : sig, only with ``centre``
        The mean (weighted) frame that was subtracted.

    Notes
    -----
    Passes: ``stats`` (with ``centre`` or ``poisson``), then ``gram`` or up
    to ``1 + power_iter`` ``power`` passes, then one pass for the loadings;
    see :mod:`diffraflow.operators.decomposition._stages`. Pass ``q`` of the
    randomised solver is the randomised SVD with ``q`` power iterations;
    its error falls as :math:`(\\sigma_{l+1}/\\sigma_j)^{2q+1}` (Halko,
    Martinsson & Tropp, 2011), so with a noise floor below a few strong
    components one or two steps already match the exact SVD; ``svd_tol``
    stops as soon as they do. With ``gram`` the results equal
    scikit-learn's PCA (``centre``) or an exact SVD to floating-point
    error. CuPy runs every per-chunk product on the GPU; the small
    eigenproblems stay on the host.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.flow.testing import run_operator
    >>> rng = np.random.default_rng(0)
    >>> cube = rng.poisson(5.0, size=(4, 5, 6, 6)).astype("uint16")
    >>> out = run_operator(SVD(n_components=3), cube, chunk_frames=7)
    >>> out["factors"].shape, out["loadings"].shape, bool(out["explained_variance_ratio"][0] > 0.5)
    ((3, 6, 6), (4, 5, 3), True)
    """

    name = "svd"

    n_components: int = param(10, doc="number of components (a scree plot wants a few more than you expect)")
    centre: bool = param(False, doc="subtract the mean frame first (PCA); off: SVD of the data as they are")
    poisson: bool = param(False, doc="weight counts by 1/sqrt(frame total x pixel total) first (shot noise)")
    solver: str = param("auto", doc="gram (exact, pixels^2 memory), randomized (subspace iteration), or auto",
                        choices=("auto", "gram", "randomized"))
    power_iter: int = param(2, doc="most subspace-iteration passes after the first (randomized)")
    oversample: int = param(10, doc="extra columns of the randomized basis")
    svd_tol: float = param(1e-8, doc="stop iterating when the top singular values change by less than this")
    seed: int = param(0, doc="seed of the randomized start")

    def max_passes(self) -> int:
        """SVD prelude plus the loadings pass.

        Examples
        --------
        >>> SVD(power_iter=2).max_passes()
        4
        """
        return self.svd_passes() + 1

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        self.check_svd_params(spec)
        k = int(self.n_components)
        det = tuple(spec.det_shape)
        out = {
            "factors": OutputSpec("single", "float32", (k, *det), ("component", "det_y", "det_x"),
                                  "right singular vectors", "decomposition"),
            "loadings": OutputSpec("nav", "float32", (k,), ("component",), "scores of each frame", "decomposition"),
            "explained_variance": OutputSpec("single", "float64", (k,), ("component",),
                                             "s^2 / (N - 1) per component", "decomposition"),
            "explained_variance_ratio": OutputSpec("single", "float64", (k,), ("component",),
                                                   "share of the total sum of squares", "decomposition"),
            "singular_values": OutputSpec("single", "float64", (k,), ("component",), "singular values"),
        }
        if self.centre:
            out["mean"] = OutputSpec("sig", "float64", det, ("det_y", "det_x"), "mean frame subtracted")
        return out

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """The ``decomposition`` product's attributes.

        Examples
        --------
        >>> SVD(n_components=2).result_attrs(InputSpec((4, 4), (8, 8), np.dtype("u1")))["method"]
        'svd'
        """
        return {"method": "pca" if self.centre else "svd", "solver": self.solver_for(spec),
                "n_components": int(self.n_components), "centred": bool(self.centre),
                "poisson": bool(self.poisson)}

    def after_svd(self, state: dict[str, Any]) -> Any:
        return last(state)

    def process_stage(self, stage: str, x: Any, xp: Any, state: dict[str, Any], ctx: ChunkContext) -> dict[str, Any]:
        z, root_a = self.scores(x, xp, state)
        loadings = self.loadings_back(xp, z, root_a)
        return {"loadings": loadings.astype(xp.float32), "count": np.int64(x.shape[0])}

    def finalize_stage(self, stage: str, partials: dict[str, Any], state: dict[str, Any], ctx: ChunkContext) -> Any:
        det = tuple(ctx.spec.det_shape)
        k = int(self.n_components)
        out: dict[str, Any] = {
            "factors": self.factors_back(state["components"], state).reshape(k, *det).astype(np.float32),
            **self.svd_outputs(state),
        }
        if self.centre:
            out["mean"] = np.asarray(host(state["mean"]), np.float64).reshape(det)
        return out
