"""Non-negative matrix factorisation of a whole scan, one pass over the data per iteration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import ChunkContext, InputSpec, OutputSpec, param, register_operator
from diffraflow.operators.decomposition._linalg import host, on_device, solve_nonneg
from diffraflow.operators.decomposition._nmf import (
    EPS,
    factors_frobenius,
    factors_kl_update,
    kl_chunk,
    loadings_kl,
    nndsvd_factors,
)
from diffraflow.operators.decomposition._stages import (
    SVDStages,
    check_int,
    check_number,
    following,
    last,
)
from diffraflow.operators.decomposition._vca import pick_frames, vca_indices
from diffraflow.schemas.errors import PipelineError

__all__ = ["NMF"]

LOSSES = ("frobenius", "kullback-leibler")


@register_operator
@dataclass(frozen=True)
class NMF(SVDStages):
    """Non-negative matrix factorisation :math:`X \\approx W H` with an NNDSVD start, out of core.

    Parameters
    ----------
    n_components
        Number of components ``k``.
    loss
        ``frobenius`` (least squares) or ``kullback-leibler`` (generalised
        KL divergence: the maximum-likelihood fit of Poisson counts).
    init
        ``nndsvd`` (Boutsidis & Gallopoulos, 2008), ``nndsvda`` (its zeros
        replaced by the mean of the data), ``vca`` (the purest frames, found
        by vertex component analysis of the SVD loadings: one more pass), or
        ``auto``: ``nndsvd`` for the Frobenius loss, ``nndsvda`` for KL,
        whose multiplicative updates never move a zero. When the data admit
        several exact factorisations (a crystal with no reflection of its
        own), the iterations stay near their start: ``vca`` starts from
        measured pure patterns, NNDSVD from the SVD's positive and negative
        parts, which put shared reflections in one factor. With ``sum_to_one`` each start factor is scaled
        to the mean frame total, the scale of a pure pattern (unscaled, the
        constrained iterations can settle with one factor doing all the work).
    sum_to_one
        Constrain each frame's loadings to sum to one (fully constrained
        least squares; ``frobenius`` only). The seed paper's suggested
        remedy for shared reflections: a frame that is a mixture of two
        crystals cannot be explained by one factor holding the shared spots
        plus a factor of the rest.
    scale_loadings
        Scale each component so that its loadings peak at 1 (the factors
        take the inverse scale), as in the seed paper. Ignored with
        ``sum_to_one``, whose loadings already lie in [0, 1].
    max_iter
        Most factor updates (each one pass over the data).
    tol
        Stop when the loss falls by less than this fraction in one
        iteration; 0 runs exactly ``max_iter`` iterations.
    kl_inner_iter
        Multiplicative updates of each chunk's loadings per pass (``kullback-leibler``).
    solver, power_iter, oversample, svd_tol, seed
        Of the SVD that seeds NNDSVD (see :class:`~diffraflow.operators.decomposition.svd.SVD`).

    Outputs
    -------
    factors : single ``(component, det_y, det_x)``
        float32 non-negative component patterns ``H``.
    loadings : nav ``(component,)``
        float32 non-negative loadings ``W`` (peak 1 with ``scale_loadings``).
    error : single ``(iteration,)``
        The loss at each iteration's factors, then at the output; NaN after
        the last. Frobenius: :math:`\\lVert X - WH\\rVert_F`; KL: :math:`D(X\\Vert WH)`.
    n_iter : single ``(1,)``
        Factor updates made.

    Notes
    -----
    **No per-frame state between passes.** Only ``H`` (``k x pixels``) is
    carried; each chunk solves its own loadings from it in every pass:

    * Frobenius: exact non-negative least squares per frame
      (:func:`~diffraflow.operators.decomposition._linalg.solve_nonneg`, all
      frames of a chunk at once), then ``H`` is the exact non-negative
      least-squares solution for those loadings, from :math:`W^T W` and
      :math:`W^T X` summed over chunks. This is alternating non-negative
      least squares (ANLS): the loss never rises, and each pass is one
      exact block update, so it needs far fewer passes than multiplicative
      or single coordinate-descent sweeps. It converges to the same
      stationary points as scikit-learn's coordinate-descent solver.
    * Kullback-Leibler: each chunk's loadings by ``kl_inner_iter``
      multiplicative updates from the least-squares loadings, then one
      multiplicative update of ``H`` (Lee & Seung, 2001) from
      :math:`W^T(X / WH)` and the column sums of ``W``.

    Passes: the SVD (see :mod:`~diffraflow.operators.decomposition._stages`),
    one pass for the signs of NNDSVD, up to ``max_iter`` iterations, one
    pass that finds each component's peak loading (``scale_loadings``), and
    the pass that writes the loadings. Memory is ``k x pixels`` float64 per
    partial, whatever the scan size. CuPy runs the per-chunk solves and
    products on the GPU.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.flow.testing import run_operator
    >>> rng = np.random.default_rng(0)
    >>> w = rng.uniform(size=(20, 2)); h = rng.uniform(size=(2, 16))
    >>> cube = (w @ h).reshape(4, 5, 4, 4)
    >>> out = run_operator(NMF(n_components=2, tol=1e-9), cube, chunk_frames=6)
    >>> out["loadings"].max(axis=(0, 1)).round(4).tolist(), bool(out["error"][int(out["n_iter"][0])] < 1e-3)
    ([1.0, 1.0], True)
    """

    name = "nmf"

    n_components: int = param(3, doc="number of components")
    loss: str = param("frobenius", doc="frobenius (least squares) or kullback-leibler (Poisson counts)",
                      choices=LOSSES)
    init: str = param("auto", doc="nndsvd, nndsvda (zeros filled with the data mean), vca (purest frames), or "
                      "auto: nndsvd for frobenius, nndsvda for kullback-leibler",
                      choices=("auto", "nndsvd", "nndsvda", "vca"))
    sum_to_one: bool = param(False, doc="each frame's loadings sum to one (frobenius only)")
    scale_loadings: bool = param(True, doc="scale each component's loadings to peak at 1 (factors inversely)")
    max_iter: int = param(200, doc="most factor updates (one pass over the data each)")
    tol: float = param(1e-4, doc="stop when the loss falls by less than this fraction in one iteration")
    kl_inner_iter: int = param(10, doc="multiplicative updates of each chunk's loadings per pass (KL loss)")
    solver: str = param("auto", doc="SVD for the start: gram, randomized or auto", choices=("auto", "gram", "randomized"))
    # 1, not svd's 2: NNDSVD needs only a rough top subspace, which the updates then refine (bench cube of
    # bench/decomposition.py: the same final error to 9 digits with 1 as with 2, one pass fewer)
    power_iter: int = param(1, doc="most subspace-iteration passes of the SVD after its first (randomized)")
    oversample: int = param(10, doc="extra columns of the randomized SVD basis")
    svd_tol: float = param(1e-8, doc="SVD stops when its top singular values change by less than this")
    seed: int = param(0, doc="seed of the randomized SVD start")

    def _init(self) -> str:
        if self.init != "auto":
            return str(self.init)
        return "nndsvd" if self.loss == "frobenius" else "nndsvda"

    def _scales(self) -> bool:
        return bool(self.scale_loadings) and not self.sum_to_one

    def max_passes(self) -> int:
        """SVD, the start (NNDSVD signs; VCA: gather and pick), ``max_iter`` updates, scale and loadings passes.

        Examples
        --------
        >>> NMF(max_iter=10, solver="gram").max_passes() >= 14
        True
        """
        return self.svd_passes() + 2 + int(self.max_iter) + 2

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        self.check_svd_params(spec)
        where = self.name
        if self.loss not in LOSSES:
            raise PipelineError(f"{where}.loss", f"{self.loss!r} is not one of {list(LOSSES)}",
                                "use loss: frobenius or kullback-leibler")
        if self.init not in ("auto", "nndsvd", "nndsvda", "vca"):
            raise PipelineError(f"{where}.init", f"{self.init!r} is not nndsvd, nndsvda or vca", "use init: nndsvd")
        if self.sum_to_one and self.loss != "frobenius":
            raise PipelineError(f"{where}.sum_to_one", "the sum-to-one constraint is implemented for the "
                                "frobenius loss only", "use loss: frobenius with sum_to_one: true")
        check_int(f"{where}.max_iter", self.max_iter, 1, "max_iter: 200")
        check_number(f"{where}.tol", self.tol, 0.0, "tol: 1e-4")
        check_int(f"{where}.kl_inner_iter", self.kl_inner_iter, 1, "kl_inner_iter: 10")
        k = int(self.n_components)
        det = tuple(spec.det_shape)
        return {
            "factors": OutputSpec("single", "float32", (k, *det), ("component", "det_y", "det_x"),
                                  "non-negative component patterns", "decomposition"),
            "loadings": OutputSpec("nav", "float32", (k,), ("component",), "non-negative loadings",
                                   "decomposition"),
            "error": OutputSpec("single", "float64", (int(self.max_iter) + 1,), ("iteration",),
                                "loss at each iteration's factors, then at the output (NaN after)",
                                "decomposition"),
            "n_iter": OutputSpec("single", "int64", (1,), ("one",), "factor updates made"),
        }

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """The ``decomposition`` product's attributes.

        Examples
        --------
        >>> NMF().result_attrs(InputSpec((4, 4), (8, 8), np.dtype("u1")))["method"]
        'nmf'
        """
        return {"method": "nmf", "loss": self.loss, "init": self._init(), "sum_to_one": bool(self.sum_to_one),
                "loadings_peak_one": self._scales(), "n_components": int(self.n_components),
                "solver": "anls" if self.loss == "frobenius" else "multiplicative"}

    # -- stages ------------------------------------------------------------------------------
    def after_svd(self, state: dict[str, Any]) -> Any:
        return following(state, "gather" if self._init() == "vca" else "nndsvd")

    def after_gather(self, scores: np.ndarray, state: dict[str, Any], ctx: ChunkContext) -> Any:
        index = vca_indices(scores, int(self.n_components), seed=int(self.seed))
        return following({**state, "start_index": index}, "pick")

    def process_stage(self, stage: str, x: Any, xp: Any, state: dict[str, Any], ctx: ChunkContext) -> dict[str, Any]:
        n = np.int64(x.shape[0])
        if stage == "pick":
            return {"picked": pick_frames(x, self.flat_index(ctx, x.shape[0]), np.asarray(state["start_index"])),
                    "min_x": xp.min(x) if x.size else xp.asarray(np.inf), "total": xp.sum(x), "count": n}
        if stage == "nndsvd":
            z = x @ on_device(xp, state["components"]).T
            return {"pos_sq": xp.sum(xp.maximum(z, 0.0) ** 2, axis=0), "neg_sq": xp.sum(xp.minimum(z, 0.0) ** 2, axis=0),
                    "total": xp.sum(x), "min_x": xp.min(x) if x.size else xp.asarray(np.inf), "count": n}
        h = on_device(xp, state["h"])
        if self.loss == "frobenius":
            gram, b = h @ h.T, x @ h.T
            w = solve_nonneg(xp, gram, b, sum_to_one=bool(self.sum_to_one))
            # ||x - wH||^2 = ||x||^2 - 2 w.b + w G w^T: no frame-sized residual is formed
            loss = xp.sum(x * x) - 2.0 * xp.sum(w * b) + xp.sum((w @ gram) * w)
        else:
            w = loadings_kl(xp, x, h, inner_iter=int(self.kl_inner_iter))
            model = xp.maximum(w @ h, EPS)
            loss = kl_chunk(xp, x, model)
        if stage == "final":
            return {"loadings": w.astype(xp.float32), "loss": loss, "count": n}
        if stage == "scale":
            return {"max_w": xp.max(w, axis=0), "loss": loss, "count": n}
        # stage "iterate": this chunk's part of the factor update
        if self.loss == "frobenius":
            return {"wtw": w.T @ w, "wtx": w.T @ x, "loss": loss, "count": n}
        return {"numerator": w.T @ (x / model), "w_sums": xp.sum(w, axis=0), "loss": loss,
                "count": n}

    def _loss_value(self, partials: dict[str, Any]) -> float:
        value = float(host(partials["loss"]))
        return float(np.sqrt(max(value, 0.0))) if self.loss == "frobenius" else max(value, 0.0)

    def finalize_stage(self, stage: str, partials: dict[str, Any], state: dict[str, Any], ctx: ChunkContext) -> Any:
        if stage in ("nndsvd", "pick"):
            low = float(host(partials["min_x"]))
            if low < 0:
                raise PipelineError(self.name, f"NMF needs non-negative data, the scan has values down to {low:.4g}",
                                    "factorise counts, not background-subtracted frames (or clip them at 0 first)")
            count = int(partials["count"])
            pixels = int(np.prod(ctx.spec.det_shape))
            total = float(host(partials["total"]))
            if stage == "pick":
                h = np.asarray(partials["picked"], np.float64)
                if self.loss != "frobenius":  # multiplicative updates never move a zero count
                    h[h == 0] = total / (count * pixels)
            else:
                fill = total / (count * pixels) if self._init() == "nndsvda" else None
                h = nndsvd_factors(state["components"], state["singular_values"], host(partials["pos_sq"]),
                                   host(partials["neg_sq"]), fill)
            if self.sum_to_one:
                sums = h.sum(axis=1)
                h = h * np.where(sums > 0, (total / count) / np.where(sums > 0, sums, 1.0), 1.0)[:, None]
            keep = {k: v for k, v in state.items() if k in ("count", "sumsq", "power_passes")}
            return following({**keep, "h": h, "errors": [], "n_iter": 0}, "iterate")
        errors = [*state["errors"], self._loss_value(partials)]
        h = np.asarray(state["h"], np.float64)
        if stage == "iterate":
            if self.loss == "frobenius":
                h = factors_frobenius(host(partials["wtw"]), host(partials["wtx"]))
            else:
                h = factors_kl_update(h, host(partials["numerator"]), host(partials["w_sums"]))
            n_iter = int(state["n_iter"]) + 1
            # tol 0 runs exactly max_iter updates (a comparison at round-off level could stop one chunking early)
            converged = float(self.tol) > 0 and len(errors) >= 2 and \
                (errors[-2] - errors[-1]) <= float(self.tol) * max(errors[-2], EPS)
            done = converged or n_iter >= int(self.max_iter)
            new = {**state, "h": h, "errors": errors, "n_iter": n_iter}
            if not done:
                return following(new, "iterate")
            return following(new, "scale") if self._scales() else last(new)
        if stage == "scale":
            peak = np.asarray(host(partials["max_w"]), np.float64)
            peak = np.where(peak > 0, peak, 1.0)
            return last({**state, "h": h * peak[:, None]})
        # stage "final": the loadings were written by the chunks; the loss is that of the output
        k = int(self.n_components)
        error = np.full(int(self.max_iter) + 1, np.nan)
        values = [*state["errors"][: int(self.max_iter)], self._loss_value(partials)]
        error[: len(values)] = values
        return {"factors": h.reshape(k, *ctx.spec.det_shape).astype(np.float32), "error": error,
                "n_iter": np.array([int(state["n_iter"])], np.int64)}
