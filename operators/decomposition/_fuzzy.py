"""Fuzzy c-means in a low-dimensional space (SVD loadings): Bezdek's, Gustafson-Kessel's, and high contrast.

Points ``z`` ``(n, d)``, ``c`` clusters with centres ``v`` ``(c, d)``:

* **fuzzy c-means** (Bezdek, Ehrlich & Full, 1984) minimises
  :math:`\\sum_{i,c} u_{ic}^m D_{ic}` with squared Euclidean distances
  :math:`D_{ic} = \\lVert z_i - v_c\\rVert^2`, giving
  :math:`u_{ic} = 1 / \\sum_{c'} (D_{ic}/D_{ic'})^{1/(m-1)}`;
* **Gustafson-Kessel** (1978) gives each cluster its own norm
  :math:`D_{ic} = (z_i - v_c)^T A_c (z_i - v_c)` with
  :math:`A_c = \\det(F_c)^{1/d} F_c^{-1}` from the fuzzy covariance
  :math:`F_c`, so clusters may be ellipsoids of equal volume;
* **high contrast** (Rousseeuw, Trauwaert & Kaufman, 1995) replaces
  :math:`u^m` by :math:`f(u) = \\alpha u^2 + (1 - \\alpha) u` with
  :math:`\\alpha = 1 - \\text{contrast}`: ``contrast = 0`` is fuzzy c-means
  with ``m = 2``, ``contrast -> 1`` hard c-means. Points near a centre then
  get membership exactly 1 and only points between clusters are shared,
  which is what a bicrystal's pure regions need (plain fuzzy c-means gives
  every point some membership of every cluster).

Examples
--------
>>> import numpy as np
>>> z = np.array([[0.0, 0.0], [0.1, 0.0], [1.0, 1.0], [0.9, 1.0]])
>>> fit = fit_fuzzy(z, 2, seed=0)
>>> np.round(fit.memberships.sum(axis=1), 12).tolist()
[1.0, 1.0, 1.0, 1.0]
>>> bool(fit.memberships[0].argmax() != fit.memberships[2].argmax())
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FuzzyFit", "fit_fuzzy", "memberships", "distances", "weights", "norm_matrices", "CONDITION_MAX"]

#: Gustafson-Kessel covariances are kept at most this ill-conditioned
#: (eigenvalues floored at the largest / CONDITION_MAX; Babuska, van der
#: Veen & Kaymak, 2002): points on a line would make them singular.
CONDITION_MAX = 1e3


@dataclass
class FuzzyFit:
    """The result of :func:`fit_fuzzy`."""

    centres: np.ndarray
    norms: np.ndarray
    memberships: np.ndarray
    objective: list[float]
    n_iter: int


def distances(xp: Any, z: Any, centres: Any, norms: Any) -> Any:
    """Squared distances ``(n, c)`` of points to centres under each cluster's norm matrix ``(c, d, d)``.

    Examples
    --------
    >>> distances(np, np.array([[1.0, 0.0]]), np.zeros((1, 2)), np.eye(2)[None] * 2).tolist()
    [[2.0]]
    """
    diff = z[:, None, :] - centres[None, :, :]
    return xp.maximum(xp.einsum("ncd,cde,nce->nc", diff, norms, diff), 0.0)


def memberships(xp: Any, d2: Any, *, m: float = 2.0, contrast: float = 0.0) -> Any:
    """Memberships ``(n, c)`` that minimise the objective for fixed squared distances ``d2``.

    Parameters
    ----------
    m
        Fuzzifier of fuzzy c-means (``> 1``); ignored when ``contrast > 0``.
    contrast
        ``0``: fuzzy c-means; ``(0, 1)``: Rousseeuw et al.'s high contrast.

    Notes
    -----
    With :math:`f(u) = \\alpha u^2 + (1-\\alpha) u` the per-point problem
    :math:`\\min \\sum_c f(u_c) D_c`, :math:`u \\ge 0`, :math:`\\sum u_c = 1`
    has the solution :math:`u_c = (\\lambda / D_c - (1 - \\alpha)) / (2\\alpha)`
    on the clusters with :math:`D_c < \\lambda/(1-\\alpha)` and 0 elsewhere,
    :math:`\\lambda = (2\\alpha + r(1-\\alpha)) / \\sum_{c \\le r} D_c^{-1}`
    over the ``r`` nearest clusters (the largest ``r`` that stays
    consistent). A point on a centre belongs to it alone.

    Examples
    --------
    >>> memberships(np, np.array([[1.0, 4.0]])).round(3).tolist()
    [[0.8, 0.2]]
    >>> memberships(np, np.array([[1.0, 4.0]]), contrast=0.5).round(3).tolist()
    [[1.0, 0.0]]
    """
    d2 = xp.asarray(d2, dtype=xp.float64)
    n, c = d2.shape
    zero = d2 <= 1e-300
    on_centre = xp.any(zero, axis=1)
    safe = xp.where(zero, 1.0, d2)
    if contrast <= 0:
        power = 1.0 / (float(m) - 1.0)
        # u_ic = 1 / sum_c' (D_ic / D_ic')^p, computed from the nearest distance to avoid overflow
        scaled = (xp.min(safe, axis=1, keepdims=True) / safe) ** power
        u = scaled / xp.sum(scaled, axis=1, keepdims=True)
    else:
        alpha = 1.0 - float(contrast)
        order = xp.argsort(safe, axis=1)
        sorted_d = xp.take_along_axis(safe, order, axis=1)
        inv_cum = xp.cumsum(1.0 / sorted_d, axis=1)
        r = xp.arange(1, c + 1, dtype=xp.float64)[None, :]
        lam = (2.0 * alpha + r * (1.0 - alpha)) / inv_cum
        active = lam / sorted_d > (1.0 - alpha)
        # the active set is a prefix of the sorted clusters: its size is the last consistent r
        size = c - xp.argmax(active[:, ::-1], axis=1)
        lam_r = xp.take_along_axis(lam, (size - 1)[:, None], axis=1)
        u_sorted = xp.maximum(lam_r / sorted_d - (1.0 - alpha), 0.0) / (2.0 * alpha)
        u_sorted = xp.where(r <= size[:, None], u_sorted, 0.0)
        u = xp.take_along_axis(u_sorted, xp.argsort(order, axis=1), axis=1)
        u = u / xp.sum(u, axis=1, keepdims=True)
    share = zero / xp.maximum(xp.sum(zero, axis=1, keepdims=True), 1)
    return xp.where(on_centre[:, None], share, u)


def weights(xp: Any, u: Any, *, m: float = 2.0, contrast: float = 0.0) -> Any:
    """The weight of each point in each centre: :math:`u^m`, or :math:`f(u)` with high contrast.

    Examples
    --------
    >>> weights(np, np.array([[0.5, 0.5]]), contrast=0.5).tolist()
    [[0.375, 0.375]]
    """
    if contrast <= 0:
        return u ** float(m)
    alpha = 1.0 - float(contrast)
    return alpha * u * u + (1.0 - alpha) * u


def norm_matrices(z: np.ndarray, centres: np.ndarray, w: np.ndarray, variant: str) -> np.ndarray:
    """Per-cluster norm matrices ``(c, d, d)``: identity (``fcm``) or Gustafson-Kessel's volume-one inverse covariance.

    Examples
    --------
    >>> norm_matrices(np.zeros((3, 2)), np.zeros((2, 2)), np.ones((3, 2)), "fcm").shape
    (2, 2, 2)
    """
    c, d = centres.shape
    if variant != "gk":
        return np.repeat(np.eye(d)[None], c, axis=0)
    out = np.empty((c, d, d))
    for j in range(c):
        diff = z - centres[j]
        cov = (w[:, j, None] * diff).T @ diff / max(float(w[:, j].sum()), np.finfo(float).tiny)
        values, vectors = np.linalg.eigh(0.5 * (cov + cov.T))
        top = max(float(values.max()), np.finfo(float).tiny)
        values = np.maximum(values, top / CONDITION_MAX)
        det_root = float(np.exp(np.mean(np.log(values))))
        out[j] = (vectors / values) @ vectors.T * det_root
    return out


def _objective(u: np.ndarray, d2: np.ndarray, m: float, contrast: float) -> float:
    return float(np.sum(weights(np, u, m=m, contrast=contrast) * d2))


def fit_fuzzy(z: np.ndarray, n_clusters: int, *, m: float = 2.0, variant: str = "fcm", contrast: float = 0.0,
              max_iter: int = 300, tol: float = 1e-6, seed: int = 0) -> FuzzyFit:
    """Fuzzy c-means (``variant``: ``fcm`` or ``gk``; ``contrast > 0``: high contrast) on points ``z``.

    Starts from seeded random memberships (each row a Dirichlet draw), then
    alternates centres (weighted means), norm matrices (``gk``) and
    memberships until no membership changes by more than ``tol``.

    Parameters
    ----------
    z
        ``(n, d)`` points (SVD loadings).
    n_clusters
        ``c``.
    m, contrast
        See :func:`memberships`.
    variant
        ``fcm`` (Euclidean) or ``gk`` (Gustafson-Kessel).
    max_iter, tol
        Iteration limit and stopping threshold on memberships.
    seed
        Seed of the start.

    Returns
    -------
    FuzzyFit
        Centres ``(c, d)``, norm matrices ``(c, d, d)``, memberships
        ``(n, c)``, the objective after each iteration, and iterations made.
        Clusters are ordered by their centre's first coordinate, then second.

    Examples
    --------
    >>> z = np.r_[np.zeros((5, 1)), np.ones((5, 1))]
    >>> fit_fuzzy(z, 2).centres.round(6).ravel().tolist()
    [0.0, 1.0]
    """
    z = np.asarray(z, np.float64)
    n, d = z.shape
    rng = np.random.default_rng(int(seed))
    u = rng.dirichlet(np.ones(int(n_clusters)), size=n)
    objective: list[float] = []
    centres = np.zeros((int(n_clusters), d))
    norms = norm_matrices(z, centres, u, "fcm")
    n_iter = 0
    while n_iter < int(max_iter):
        n_iter += 1
        w = weights(np, u, m=m, contrast=contrast)
        centres = (w.T @ z) / np.maximum(w.sum(axis=0), np.finfo(float).tiny)[:, None]
        norms = norm_matrices(z, centres, w, variant)
        d2 = distances(np, z, centres, norms)
        new = memberships(np, d2, m=m, contrast=contrast)
        objective.append(_objective(new, d2, m, contrast))
        change = float(np.max(np.abs(new - u))) if n else 0.0
        u = new
        if change <= tol:
            break
    order = np.lexsort(tuple(centres[:, j] for j in range(min(d, 2) - 1, -1, -1)))
    return FuzzyFit(centres[order], norms[order], u[:, order], objective, n_iter)
