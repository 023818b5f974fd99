"""Kernels of the out-of-core NMF: NNDSVD start, per-chunk loadings, factor updates, losses.

The factorisation is :math:`X \\approx W H` with ``X`` ``(frames, pixels)``,
loadings ``W`` ``(frames, k)`` and factors ``H`` ``(k, pixels)``, all
non-negative. Only ``H`` is carried from pass to pass: each chunk solves its
own rows of ``W`` from ``H`` (:func:`loadings_frobenius`, :func:`loadings_kl`),
so no per-frame state exists between passes and memory does not grow with
the scan.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> h = rng.uniform(size=(2, 6)); w = rng.uniform(size=(5, 2)); x = w @ h
>>> np.allclose(loadings_frobenius(np, x, h), w)
True
>>> factors_frobenius(w.T @ w, w.T @ x).round(8).tolist() == h.round(8).tolist()
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
from diffraflow.operators.decomposition._linalg import solve_nonneg

__all__ = ["nndsvd_factors", "loadings_frobenius", "loadings_kl", "factors_frobenius", "factors_kl_update",
           "frobenius_sq_chunk", "kl_chunk", "EPS"]

#: Floor of denominators and of the model in the Kullback-Leibler terms.
EPS = 1e-12


def nndsvd_factors(components: np.ndarray, singular_values: np.ndarray, pos_sq: np.ndarray, neg_sq: np.ndarray,
                   fill: float | None = None) -> np.ndarray:
    """Factors ``H`` ``(k, pixels)`` of the NNDSVD start (Boutsidis & Gallopoulos, 2008).

    Parameters
    ----------
    components
        Right singular vectors ``(k, pixels)`` of the (uncentred) data.
    singular_values
        ``(k,)``.
    pos_sq, neg_sq
        Per component, :math:`\\sum_i \\max(u_{ij}, 0)^2` and
        :math:`\\sum_i \\min(u_{ij}, 0)^2` of the *scores*
        :math:`u_{ij} s_j = x_i \\cdot v_j` (one pass over the data).
    fill
        ``None``: zeros stay (``nndsvd``); a number: zeros become it
        (``nndsvda`` uses the mean of the data).

    Notes
    -----
    Component 0 takes :math:`\\sqrt{s_0}\\,|v_0|` (the leading singular
    vectors of non-negative data have one sign). Each further component
    keeps the positive or the negative parts of :math:`(u_j, v_j)`, whichever
    pair has the larger product of norms :math:`\\mu`, and scales that part of
    :math:`v_j` to :math:`\\sqrt{s_j \\mu}`. The loadings half of the start is
    not needed: the first pass solves ``W`` from ``H``.

    Examples
    --------
    >>> v = np.array([[0.6, 0.8, 0.0], [0.8, -0.6, 0.0]])
    >>> nndsvd_factors(v, np.array([4.0, 1.0]), np.array([9.0, 4.0]), np.array([0.0, 1.0])).round(3).tolist()
    [[1.2, 1.6, 0.0], [1.265, 0.0, 0.0]]
    """
    v = np.asarray(components, np.float64)
    s = np.asarray(singular_values, np.float64)
    k = v.shape[0]
    h = np.zeros_like(v)
    h[0] = np.sqrt(s[0]) * np.abs(v[0])
    for j in range(1, k):
        if s[j] <= 0:
            continue
        vp, vn = np.maximum(v[j], 0.0), np.maximum(-v[j], 0.0)
        # Norms of the positive and negative parts of the unit left vector u_j = scores_j / s_j.
        up, un = np.sqrt(pos_sq[j]) / s[j], np.sqrt(neg_sq[j]) / s[j]
        mp, mn = up * np.linalg.norm(vp), un * np.linalg.norm(vn)
        part, mu = (vp, mp) if mp > mn else (vn, mn)
        norm = np.linalg.norm(part)
        if norm > 0 and mu > 0:
            h[j] = np.sqrt(s[j] * mu) * part / norm
    h[h < 1e-12 * max(float(h.max(initial=0.0)), 1.0)] = 0.0
    if fill is not None:
        h[h == 0] = float(fill)
    return h


def loadings_frobenius(xp: Any, x: Any, h: Any, *, sum_to_one: bool = False) -> Any:
    """Exact :math:`\\arg\\min_{w \\ge 0} \\lVert x - w H \\rVert^2` for every row of ``x`` (``sum_to_one``: also :math:`\\sum w = 1`).

    Examples
    --------
    >>> loadings_frobenius(np, np.array([[2.0, 0.0]]), np.eye(2)).tolist()
    [[2.0, 0.0]]
    """
    return solve_nonneg(xp, h @ h.T, x @ h.T, sum_to_one=sum_to_one)


def loadings_kl(xp: Any, x: Any, h: Any, *, inner_iter: int) -> Any:
    """Loadings that lower :math:`D_{KL}(x \\Vert w H)` for each row: multiplicative updates from the least-squares loadings.

    The problem is convex in ``w``; ``inner_iter`` multiplicative updates
    (Lee & Seung, 2001) start from the Frobenius solution, lifted off zero
    (a multiplicative update never moves a zero).

    Examples
    --------
    >>> h = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    >>> loadings_kl(np, np.array([[3.0, 1.0, 4.0]]), h, inner_iter=200).round(3).tolist()
    [[3.0, 1.0]]
    """
    w = loadings_frobenius(xp, x, h)
    floor = 1e-6 * xp.maximum(xp.max(w, axis=1, keepdims=True), EPS)
    w = xp.maximum(w, floor)
    row_sums = xp.maximum(xp.sum(h, axis=1), EPS)
    for _ in range(int(inner_iter)):
        ratio = x / xp.maximum(w @ h, EPS)
        w = w * (ratio @ h.T) / row_sums[None, :]
    return w


def factors_frobenius(wtw: np.ndarray, wtx: np.ndarray, *, xp: Any = np) -> np.ndarray:
    """Exact :math:`\\arg\\min_{H \\ge 0} \\lVert X - W H \\rVert_F^2` from the sums :math:`W^T W` and :math:`W^T X`.

    Examples
    --------
    >>> factors_frobenius(np.eye(2), np.array([[1.0, -1.0], [2.0, 3.0]])).tolist()
    [[1.0, 0.0], [2.0, 3.0]]
    """
    return solve_nonneg(xp, wtw, np.asarray(wtx).T).T


def factors_kl_update(h: np.ndarray, numerator: np.ndarray, w_sums: np.ndarray) -> np.ndarray:
    """One multiplicative update of ``H`` for the KL loss from :math:`W^T (X / WH)` and the column sums of ``W``.

    Examples
    --------
    >>> factors_kl_update(np.ones((1, 2)), np.array([[2.0, 4.0]]), np.array([2.0])).tolist()
    [[1.0, 2.0]]
    """
    return h * numerator / np.maximum(np.asarray(w_sums, np.float64), EPS)[:, None]


def frobenius_sq_chunk(xp: Any, x: Any, w: Any, h: Any) -> Any:
    """:math:`\\lVert X - W H \\rVert_F^2` of one chunk, from ``x``, ``w`` and ``h`` without forming ``X - WH``.

    Examples
    --------
    >>> float(frobenius_sq_chunk(np, np.array([[1.0, 2.0]]), np.array([[1.0]]), np.array([[1.0, 1.0]])))
    1.0
    """
    return xp.sum(x * x) - 2.0 * xp.sum(w * (x @ h.T)) + xp.sum((w @ (h @ h.T)) * w)


def kl_chunk(xp: Any, x: Any, model: Any) -> Any:
    """Generalised Kullback-Leibler divergence :math:`\\sum x \\log(x / m) - x + m` of one chunk (0 log 0 = 0).

    Examples
    --------
    >>> float(kl_chunk(np, np.array([[1.0, 0.0]]), np.array([[1.0, 2.0]])))
    2.0
    """
    model = xp.maximum(model, EPS)
    positive = x > 0
    logs = xp.where(positive, x * xp.log(xp.where(positive, x, 1.0) / model), 0.0)
    return xp.sum(logs - x + model)
