"""Pure kernels of the out-of-core PCA: mergeable sketches of centred data.

Two exact, mergeable summaries of the centred data :math:`X_c` (``N x p``):

* the **Gram matrix** :math:`G = X_c^T X_c` (``p x p``): a plain sum over
  chunks, exact in float64; best when the frames have few pixels;
* an **SVD sketch** :math:`B` (``r x p``) with :math:`B^T B \\approx X_c^T X_c`:
  each chunk gives :math:`S V^T` of its thin SVD; two sketches merge by
  stacking and re-taking :math:`S V^T` (a tall-skinny SVD tree reduction).
  Keeping every row is exact; keeping the top ``r`` rows drops only the
  smallest directions of each merge (as in frequent-directions sketches), so
  the leading components stay accurate when ``r`` is well above the number of
  components.

Components are the top right singular vectors, signs fixed as scikit-learn's
``svd_flip(u_based_decision=False)`` does: the entry of largest magnitude of
each component is positive.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(20, 6)); xc = x - x.mean(0)
>>> b = merge_sketches(svd_sketch(xc[:7], 6), svd_sketch(xc[7:], 6), 6)
>>> np.allclose(b.T @ b, xc.T @ xc)
True
>>> v1, s1 = components_from_gram(xc.T @ xc, 2)
>>> v2, s2 = components_from_sketch(b, 2)
>>> np.allclose(v1, v2), np.allclose(s1, s2)
(True, True)
"""

from __future__ import annotations

import numpy as np

__all__ = ["svd_sketch", "merge_sketches", "components_from_gram", "components_from_sketch", "flip_signs"]


def svd_sketch(xc: np.ndarray, rank: int) -> np.ndarray:
    """``S V^T`` of the thin SVD of ``xc`` (``n x p``), keeping at most ``rank`` rows.

    Examples
    --------
    >>> svd_sketch(np.ones((3, 4)), 10).shape
    (3, 4)
    """
    xc = np.asarray(xc, dtype=np.float64)
    if xc.shape[0] == 0:
        return np.zeros((0, xc.shape[1]))
    if xc.shape[0] == 1:
        return xc.copy()
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    keep = min(rank, s.size)
    return s[:keep, None] * vt[:keep]


def merge_sketches(left: np.ndarray, right: np.ndarray, rank: int) -> np.ndarray:
    """Merge two sketches: stack their rows and re-sketch (exact when nothing is cut)."""
    stacked = np.concatenate([np.asarray(left, np.float64), np.asarray(right, np.float64)], axis=0)
    if stacked.shape[0] <= rank:
        return stacked
    return svd_sketch(stacked, rank)


def flip_signs(components: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each row positive (scikit-learn's convention).

    Examples
    --------
    >>> flip_signs(np.array([[0.1, -0.9], [0.5, 0.2]])).tolist()
    [[-0.1, 0.9], [0.5, 0.2]]
    """
    if components.size == 0:
        return components
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def components_from_gram(gram: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` eigenvectors (rows, sign-fixed) and eigenvalues of a Gram matrix."""
    gram = np.asarray(gram, dtype=np.float64)
    p = gram.shape[0]
    if p > 256 and k < p // 8:
        from scipy.sparse.linalg import eigsh

        # Only the top k eigenpairs are needed: Lanczos iteration costs O(p^2) per step
        # instead of the O(p^3) of a full decomposition (0.1 s against 23 s for a
        # 3600-pixel Gram matrix, k = 4). A fixed start vector keeps it deterministic.
        evals, evecs = eigsh(gram, k=k, which="LA", v0=np.ones(p), tol=0.0)
    else:
        evals, evecs = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1][:k]
    return flip_signs(evecs[:, order].T), np.clip(evals[order], 0.0, None)


def components_from_sketch(sketch: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` right singular vectors (rows, sign-fixed) and squared singular values of a sketch."""
    sketch = np.asarray(sketch, dtype=np.float64)
    p = sketch.shape[1]
    _, s, vt = np.linalg.svd(sketch, full_matrices=False)
    if vt.shape[0] < k:  # fewer rows than components: pad (zero variance, orthogonal completion)
        q, _ = np.linalg.qr(np.concatenate([vt.T, np.eye(p)[:, : k]], axis=1))
        vt = q[:, :k].T
        s = np.concatenate([s, np.zeros(k - s.size)])
    return flip_signs(vt[:k]), s[:k] ** 2
