"""Vertex component analysis: the purest frames as the vertices of the data simplex (Nascimento & Bioucas-Dias, 2005).

Linear mixtures of ``k`` pure patterns fill a simplex whose vertices are
the pure patterns. VCA projects the data on a ``k``-dimensional subspace
(here the SVD loadings), normalises each point onto the hyperplane through
the data mean (the *projective projection*, which removes intensity
scaling such as thickness), then finds one vertex per step: project every
point on a seeded random direction orthogonal to the vertices found so far
and take the point of largest magnitude. Unlike NMF and clustering it needs
pure frames to exist, and it never averages them with mixed ones.

Examples
--------
>>> import numpy as np
>>> corners = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
>>> mix = np.random.default_rng(0).dirichlet(np.ones(3), size=40)
>>> points = np.r_[mix, corners] @ (np.eye(3) + 0.1)
>>> sorted(vca_indices(points, 3).tolist())
[40, 41, 42]
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["vca_indices", "pick_frames"]


def vca_indices(scores: np.ndarray, k: int, *, seed: int = 0, projective: bool = True) -> np.ndarray:
    """Row indices of the ``k`` frames VCA takes as endmembers (in the order found).

    Parameters
    ----------
    scores
        ``(n, d)`` SVD loadings of the frames, ``d >= k`` (the first ``k`` columns are used).
    k
        Number of endmembers.
    seed
        Seed of the random directions.
    projective
        Scale each point onto the hyperplane :math:`z \\cdot \\bar z = 1`
        first (for data whose overall intensity varies); else use the
        loadings as they are.

    Examples
    --------
    >>> vca_indices(np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]), 2).tolist()
    [2, 0]
    """
    y = np.asarray(scores, np.float64)[:, :k]
    if projective:
        mean = y.mean(axis=0)
        dots = y @ mean
        scale = np.where(np.abs(dots) > 1e-300, dots, 1.0)
        y = y / scale[:, None]
    rng = np.random.default_rng(int(seed))
    found: list[int] = []
    basis = np.zeros((k, 0))
    for _ in range(int(k)):
        direction = rng.standard_normal(k)
        if basis.shape[1]:
            direction = direction - basis @ (np.linalg.pinv(basis) @ direction)
        norm = np.linalg.norm(direction)
        direction = direction / (norm if norm > 0 else 1.0)
        projection = np.abs(y @ direction)
        if found:
            projection[found] = -np.inf  # a vertex is found once
        index = int(np.argmax(projection))
        found.append(index)
        basis = np.c_[basis, y[index]]
    return np.asarray(found, dtype=np.int64)


def pick_frames(x: Any, flat: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (host copies) whose flat scan index is in ``wanted``, in ``wanted``'s order; zeros elsewhere.

    Summed over chunks (each frame lies in exactly one), this collects the
    wanted frames of a whole scan in one pass.

    Examples
    --------
    >>> pick_frames(np.arange(6.0).reshape(3, 2), np.array([4, 5, 6]), np.array([6, 9])).tolist()
    [[4.0, 5.0], [0.0, 0.0]]
    """
    from diffraflow.operators.decomposition._linalg import host

    picked = np.zeros((len(wanted), x.shape[1]))
    for slot, frame in enumerate(np.asarray(wanted)):
        hit = np.nonzero(np.asarray(flat) == frame)[0]
        if hit.size:
            picked[slot] = host(x[int(hit[0])])
    return picked
