"""Small dense kernels shared by the decomposition operators, written once for NumPy and CuPy.

* :func:`on_device` moves a host array from an operator's state to the
  backend's device once per process and reuses the copy for every chunk;
* :func:`solve_nonneg` solves many small non-negative least-squares problems
  that share one Gram matrix, exactly, optionally with a sum-to-one
  constraint (fully constrained least squares);
* :func:`orthonormal` and :func:`ritz` are the two steps of subspace
  (power) iteration.

Every function takes the array module ``xp`` (``numpy`` or ``cupy``) and
calls nothing else on device arrays, so the code that runs on a GPU is the
code the CPU tests run.

Examples
--------
>>> import numpy as np
>>> g = np.array([[2.0, 0.5], [0.5, 1.0]])
>>> b = np.array([[1.0, 1.0], [-1.0, 2.0]])
>>> solve_nonneg(np, g, b).round(6).tolist()
[[0.285714, 0.857143], [0.0, 2.0]]
>>> solve_nonneg(np, g, b, sum_to_one=True).sum(axis=1).round(12).tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import numpy as np

__all__ = ["on_device", "host", "solve_nonneg", "orthonormal", "ritz", "range_svd", "ENUMERATE_MAX", "flip_rows"]

#: Up to this many components the non-negative problems are solved by
#: enumerating active sets (exact; 2**k small solves); above it by
#: coordinate descent.
ENUMERATE_MAX = 8

_DEVICE_COPIES: dict[tuple[int, str], Any] = {}


def on_device(xp: Any, array: Any) -> Any:
    """``array`` as an array of ``xp``; host arrays are copied to the device once and the copy reused.

    The state an operator's ``finalize`` returns is a host NumPy array that
    every chunk task of the next pass reads; copying it to the GPU per chunk
    would cost one transfer per chunk. The copy is keyed by the host array's
    identity and dropped when the host array is garbage collected, so a new
    state never sees an old copy.

    Examples
    --------
    >>> a = np.arange(3.0)
    >>> on_device(np, a) is a
    True
    """
    if xp is np or array is None:
        return np.asarray(array) if array is not None else None
    if not isinstance(array, np.ndarray):
        return xp.asarray(array)
    key = (id(array), xp.__name__)
    copy = _DEVICE_COPIES.get(key)
    if copy is None:
        copy = xp.asarray(array)
        _DEVICE_COPIES[key] = copy
        weakref.finalize(array, _DEVICE_COPIES.pop, key, None)
    return copy


def host(array: Any) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array.

    Examples
    --------
    >>> host([1, 2]).tolist()
    [1, 2]
    """
    if hasattr(array, "get") and type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)


def flip_rows(rows: np.ndarray) -> np.ndarray:
    """Signs (+1/-1) that make the largest-magnitude entry of each row positive.

    Examples
    --------
    >>> flip_rows(np.array([[0.1, -0.9], [0.5, 0.2]])).tolist()
    [-1.0, 1.0]
    """
    if rows.size == 0:
        return np.ones(rows.shape[0])
    idx = np.argmax(np.abs(rows), axis=1)
    signs = np.sign(rows[np.arange(rows.shape[0]), idx]).astype(np.float64)
    signs[signs == 0] = 1.0
    return signs


def orthonormal(xp: Any, z: Any) -> Any:
    """An orthonormal basis of the columns of ``z`` (thin QR, signs fixed so that ``diag(R) >= 0``).

    Fixing the signs makes the basis a function of the column space and the
    column order only, whatever LAPACK routine the backend calls.

    Examples
    --------
    >>> q = orthonormal(np, np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
    >>> bool(np.allclose(q.T @ q, np.eye(2))), bool(q[0, 0] > 0)
    (True, True)
    """
    q, r = xp.linalg.qr(z)
    d = xp.sign(xp.diagonal(r))
    d = xp.where(d == 0, 1.0, d)
    return q * d[None, :]


def ritz(gram_small: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` eigenpairs of a small symmetric matrix, largest first: ``(values, vectors as columns)``.

    Examples
    --------
    >>> values, vectors = ritz(np.diag([1.0, 3.0, 2.0]), 2)
    >>> values.tolist(), np.abs(vectors[:, 0]).tolist()
    ([3.0, 2.0], [0.0, 1.0, 0.0])
    """
    sym = 0.5 * (np.asarray(gram_small, np.float64) + np.asarray(gram_small, np.float64).T)
    values, vectors = np.linalg.eigh(sym)
    order = np.argsort(values)[::-1][:k]
    return np.clip(values[order], 0.0, None), vectors[:, order]


def range_svd(m: np.ndarray, z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Top ``k`` squared singular values and right singular vectors (rows) of ``X``, from one pass with a basis ``Q``.

    With :math:`Y = XQ` summed over chunks as :math:`M = Y^T Y` and
    :math:`Z = X^T Y`, the orthonormal basis of the range of ``Y`` is
    :math:`U = Y W \Sigma^{-1}` (:math:`M = W \Sigma^2 W^T`), and
    :math:`U^T X = (Z W \Sigma^{-1})^T`; the SVD of that small matrix is
    the randomised SVD of Halko, Martinsson & Tropp (2011) whose range
    basis is ``Y``. Starting from a random ``Q`` it is their basic
    algorithm; from :math:`Q = \mathrm{orth}((X^T X)^q \Omega)` it has
    ``q`` power iterations. Directions that ``Y`` does not span (eigenvalues
    of ``M`` below :math:`10^{-14}` of the largest) are dropped, and
    missing components padded with zero singular values.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(30, 3)) @ rng.normal(size=(3, 12))
    >>> y = x @ rng.normal(size=(12, 5))
    >>> values, vectors = range_svd(y.T @ y, x.T @ y, 2)
    >>> bool(np.allclose(values, np.linalg.svd(x, compute_uv=False)[:2] ** 2))
    True
    """
    sigma2, w = np.linalg.eigh(0.5 * (np.asarray(m, np.float64) + np.asarray(m, np.float64).T))
    order = np.argsort(sigma2)[::-1]
    sigma2, w = sigma2[order], w[:, order]
    keep = sigma2 > max(float(sigma2[0]), 0.0) * 1e-14 if sigma2.size else np.zeros(0, bool)
    w, sigma = w[:, keep], np.sqrt(sigma2[keep])
    pixels = np.asarray(z).shape[0]
    if sigma.size == 0:
        return np.zeros(k), np.eye(pixels)[:k]
    b_t = np.asarray(z, np.float64) @ (w / sigma[None, :])
    v, s, _ = np.linalg.svd(b_t, full_matrices=False)
    values, vectors = s[:k] ** 2, v[:, :k].T
    if vectors.shape[0] < k:  # the data have fewer directions than components: complete orthonormally
        q, _ = np.linalg.qr(np.concatenate([vectors.T, np.eye(pixels)[:, :k]], axis=1))
        vectors = q[:, :k].T
        values = np.concatenate([values, np.zeros(k - values.size)])
    return values, vectors


def _subsets(k: int, sum_to_one: bool) -> list[tuple[int, ...]]:
    sizes = range(1, k + 1) if sum_to_one else range(0, k + 1)
    return [s for size in sizes for s in itertools.combinations(range(k), size)]


def _objective(xp: Any, g: Any, b: Any, w: Any) -> Any:
    return 0.5 * xp.sum((w @ g) * w, axis=1) - xp.sum(w * b, axis=1)


def solve_nonneg(xp: Any, g: Any, b: Any, *, sum_to_one: bool = False, sweeps: int = 500) -> Any:
    """Minimise :math:`\\tfrac12 w^T G w - b^T w` over :math:`w \\ge 0` for every row ``b`` of ``b``.

    This is non-negative least squares :math:`\\min_{w\\ge0} \\lVert x - w H\\rVert^2`
    with :math:`G = H H^T` and :math:`b = x H^T`; with ``sum_to_one`` the
    weights also sum to one (fully constrained least squares, the abundance
    problem of spectral unmixing).

    Parameters
    ----------
    xp
        ``numpy`` or ``cupy``.
    g
        ``(k, k)`` symmetric positive semi-definite matrix.
    b
        ``(n, k)`` right-hand sides.
    sum_to_one
        Add the constraint :math:`\\sum_j w_j = 1`.
    sweeps
        Coordinate-descent sweeps when ``k`` exceeds :data:`ENUMERATE_MAX`.

    Returns
    -------
    ``(n, k)`` solutions, float64.

    Notes
    -----
    For ``k <= ENUMERATE_MAX`` every active set :math:`S` is tried: the
    equality-constrained optimum on :math:`S` (a ``|S| x |S|`` solve shared
    by all rows, pseudo-inverse when singular) is kept where it is feasible,
    and each row takes the feasible candidate of least objective. The
    optimum of a convex problem is one of the candidates, so the result is
    exact, and it depends on each row alone (the same whatever chunk the
    frame is in). Above ``ENUMERATE_MAX``, projected coordinate descent
    (HALS) from the clipped unconstrained solution; sum-to-one is then a
    quadratic penalty of weight :math:`10^3 \\bar G_{jj}`.

    Examples
    --------
    >>> g = np.eye(3); b = np.array([[0.2, -0.5, 0.9]])
    >>> solve_nonneg(np, g, b).tolist()
    [[0.2, 0.0, 0.9]]
    >>> solve_nonneg(np, g, b, sum_to_one=True).round(6).tolist()
    [[0.15, 0.0, 0.85]]
    """
    g = xp.asarray(g, dtype=xp.float64)
    b = xp.asarray(b, dtype=xp.float64)
    n, k = b.shape
    if n == 0:
        return xp.zeros((0, k))
    if k > ENUMERATE_MAX:
        return _coordinate_descent(xp, g, b, sum_to_one, sweeps)
    g_host = host(g)
    best = xp.zeros((n, k))
    best_obj = xp.full((n,), xp.inf)
    scale = float(np.abs(np.diag(g_host)).max(initial=0.0)) or 1.0
    tol = 1e-12 * max(1.0, float(xp.abs(b).max()) / scale)
    for subset in _subsets(k, sum_to_one):
        w = xp.zeros((n, k))
        if subset:
            idx = list(subset)
            gs = g_host[np.ix_(idx, idx)]
            if sum_to_one:
                m = len(idx)
                kkt = np.zeros((m + 1, m + 1))
                kkt[:m, :m], kkt[:m, m], kkt[m, :m] = gs, 1.0, 1.0
                inv = xp.asarray(np.linalg.pinv(kkt))
                rhs = xp.concatenate([b[:, idx], xp.ones((n, 1))], axis=1)
                ws = (rhs @ inv.T)[:, :m]
            else:
                ws = b[:, idx] @ xp.asarray(np.linalg.pinv(gs)).T
            feasible = xp.all(ws >= -tol, axis=1)
            w[:, idx] = xp.maximum(ws, 0.0)
            if sum_to_one:
                total = xp.sum(w, axis=1, keepdims=True)
                w = w / xp.where(total > 0, total, 1.0)
        else:
            feasible = xp.ones((n,), dtype=bool)
        obj = xp.where(feasible, _objective(xp, g, b, w), xp.inf)
        better = obj < best_obj
        best = xp.where(better[:, None], w, best)
        best_obj = xp.where(better, obj, best_obj)
    return best


def _coordinate_descent(xp: Any, g: Any, b: Any, sum_to_one: bool, sweeps: int) -> Any:
    k = g.shape[0]
    if sum_to_one:
        # The equality as a stiff quadratic penalty: rho (sum w - 1)^2 / 2 adds rho to G and to b.
        rho = 1e3 * float(host(xp.mean(xp.diagonal(g)))) or 1.0
        g = g + rho
        b = b + rho
    w = xp.maximum(b @ xp.asarray(np.linalg.pinv(host(g))).T, 0.0)
    diag = xp.diagonal(g)
    safe = xp.where(diag > 0, diag, 1.0)
    for _ in range(int(sweeps)):
        change = 0.0
        for j in range(k):
            step = (b[:, j] - w @ g[:, j]) / safe[j]
            new = xp.maximum(w[:, j] + step, 0.0)
            change = max(change, float(xp.max(xp.abs(new - w[:, j])))) if w.shape[0] else 0.0
            w[:, j] = new
        if change <= 1e-13 * (1.0 + float(xp.max(w))):
            break
    return w
