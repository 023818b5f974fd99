"""Orientation from band normals: pair hypotheses, triplet votes, least squares.

For every pair of detected bands :math:`(i, j)` the acute angle between their
normals is looked up in the phase's interplanar-angle table
(:mod:`diffraflow.operators.indexing.reflectors`); every reference pair within
``pair_tol`` yields an orientation hypothesis by TRIAD (the first normal
exact, the second in the plane they span). Each other band :math:`k` then
votes for the hypothesis if, rotated into the crystal frame, it lies within
``match_tol`` of some reflector normal: a hypothesis' score is the number of
bands it explains, i.e. the consistent triplets :math:`(i, j, k)` it belongs
to, in the spirit of Morawiec's triplet voting (J. Appl. Cryst. 53, 2020),
which PyEBSDIndex also follows (Rowenhorst, Callahan & Ånes, 2024).

The winning hypothesis is refined by a least-squares fit over all bands it
explains (Wahba's problem solved by SVD, as in the Kabsch algorithm), re-matched
and refitted once more. The confidence is the margin between the winner and
the best hypothesis that is a *different* orientation (more than 5° apart,
symmetry included), divided by the number of bands that could have voted, in
the manner of EDAX's confidence index.

Rotation convention: hypotheses are matrices ``R`` taking crystal vectors to
the sample frame, ``R h = n``; the orix rotation returned is ``R^T``
(sample to crystal), the convention of kikuchipy's simulations and orix maps.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["build_match_lut", "vote_orientation", "band_fit", "refit", "same_orientation", "matrix_to_quaternion"]


@nb.njit(cache=True, fastmath=True, nogil=True)
def _triad(a, b, out):  # pragma: no cover - numba
    # Rows: a, unit(a x b), a x unit(a x b).
    cx = a[1] * b[2] - a[2] * b[1]
    cy = a[2] * b[0] - a[0] * b[2]
    cz = a[0] * b[1] - a[1] * b[0]
    nrm = np.sqrt(cx * cx + cy * cy + cz * cz)
    cx /= nrm
    cy /= nrm
    cz /= nrm
    out[0, 0] = a[0]
    out[0, 1] = a[1]
    out[0, 2] = a[2]
    out[1, 0] = cx
    out[1, 1] = cy
    out[1, 2] = cz
    out[2, 0] = a[1] * cz - a[2] * cy
    out[2, 1] = a[2] * cx - a[0] * cz
    out[2, 2] = a[0] * cy - a[1] * cx


@nb.njit(cache=True, fastmath=True, nogil=True)
def _score(r, normals, n_bands, ref, cos_tol, match, sign):  # pragma: no cover - numba
    # Bands explained by crystal->sample matrix r; fills match/sign per band.
    cnt = 0
    err = 0.0
    for k in range(n_bands):
        # c = r^T n_k (band normal in the crystal frame)
        c0 = r[0, 0] * normals[k, 0] + r[1, 0] * normals[k, 1] + r[2, 0] * normals[k, 2]
        c1 = r[0, 1] * normals[k, 0] + r[1, 1] * normals[k, 1] + r[2, 1] * normals[k, 2]
        c2 = r[0, 2] * normals[k, 0] + r[1, 2] * normals[k, 1] + r[2, 2] * normals[k, 2]
        best = -1.0
        bi = -1
        bs = 1.0
        for h in range(ref.shape[0]):
            d = c0 * ref[h, 0] + c1 * ref[h, 1] + c2 * ref[h, 2]
            ad = abs(d)
            if ad > best:
                best = ad
                bi = h
                bs = 1.0 if d >= 0 else -1.0
                # Reflector normals are far more than 2 * match_tol apart, so
                # the first normal within tolerance is the only one.
                if ad >= cos_tol:
                    break
        if best >= cos_tol:
            cnt += 1
            err += np.arccos(min(best, 1.0))
            match[k] = bi
            sign[k] = bs
        else:
            match[k] = -1
    return cnt, err


def build_match_lut(ref: np.ndarray, match_tol_deg: float, n: int = 48) -> np.ndarray:
    """Cube-map look-up of the reflector normals near each direction.

    Cell ``(face, i, j)`` lists (``-1`` padded) every sign-free normal within
    ``match_tol`` plus the cell's radius of some point of the cell, so a
    band's possible matches are found with one look-up and one or two dot
    products instead of a scan of all normals. The check itself stays exact.

    Parameters
    ----------
    ref
        ``(m, 3)`` unit normals.
    match_tol_deg
        Match tolerance in degrees.
    n
        Cells per face side.

    Returns
    -------
    numpy.ndarray
        ``(6, n, n, k)`` int32.

    Examples
    --------
    >>> lut = build_match_lut(np.eye(3), 2.5, n=8)
    >>> lut.shape[:3], int(lut[0, 4, 4, 0])
    ((6, 8, 8), 0)
    """
    c = (np.arange(n) + 0.5) / n * 2 - 1
    uu, vv = np.meshgrid(c, c, indexing="ij")
    lists = []
    # Largest angle between a cell centre and a point of its cell, bounded
    # generously by the half-diagonal at the face centre.
    radius = np.degrees(np.arctan(np.sqrt(2) / n)) + 0.05
    cos_lim = np.cos(np.radians(match_tol_deg + radius))
    for face in range(6):
        axis, sgn = face // 2, 1.0 if face % 2 == 0 else -1.0
        d = np.zeros((n, n, 3))
        d[..., axis] = sgn
        d[..., (axis + 1) % 3] = uu
        d[..., (axis + 2) % 3] = vv
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        near = np.abs(d @ ref.T) >= cos_lim
        lists.append(near)
    near = np.stack(lists)
    k = max(1, int(near.sum(axis=-1).max()))
    lut = np.full((6, n, n, k), -1, dtype=np.int32)
    idx = np.argwhere(near)
    fill = np.zeros((6, n, n), dtype=np.int64)
    for f, i, j, h in idx:
        lut[f, i, j, fill[f, i, j]] = h
        fill[f, i, j] += 1
    return lut


@nb.njit(cache=True, fastmath=True, nogil=True)
def _score_lut(r, normals, n_bands, ref, lut, cos_tol, match, sign):  # pragma: no cover - numba
    # As _score, but candidate normals come from the cube-map look-up table.
    n = lut.shape[1]
    k_max = lut.shape[3]
    cnt = 0
    err = 0.0
    for k in range(n_bands):
        c0 = r[0, 0] * normals[k, 0] + r[1, 0] * normals[k, 1] + r[2, 0] * normals[k, 2]
        c1 = r[0, 1] * normals[k, 0] + r[1, 1] * normals[k, 1] + r[2, 1] * normals[k, 2]
        c2 = r[0, 2] * normals[k, 0] + r[1, 2] * normals[k, 1] + r[2, 2] * normals[k, 2]
        a0 = abs(c0)
        a1 = abs(c1)
        a2 = abs(c2)
        if a0 >= a1 and a0 >= a2:
            face = 0 if c0 >= 0 else 1
            u = c1 / a0
            v = c2 / a0
        elif a1 >= a2:
            face = 2 if c1 >= 0 else 3
            u = c2 / a1
            v = c0 / a1
        else:
            face = 4 if c2 >= 0 else 5
            u = c0 / a2
            v = c1 / a2
        i = min(int((u + 1.0) * 0.5 * n), n - 1)
        j = min(int((v + 1.0) * 0.5 * n), n - 1)
        match[k] = -1
        for q in range(k_max):
            h = lut[face, i, j, q]
            if h < 0:
                break
            d = c0 * ref[h, 0] + c1 * ref[h, 1] + c2 * ref[h, 2]
            ad = abs(d)
            if ad >= cos_tol:
                cnt += 1
                err += np.arccos(min(ad, 1.0))
                match[k] = h
                sign[k] = 1.0 if d >= 0 else -1.0
                break
    return cnt, err


@nb.njit(cache=True, fastmath=True, nogil=True)
def _fit(normals, n_bands, ref, match, sign, weights, r_out):  # pragma: no cover - numba
    # Least-squares rotation R (crystal->sample) maximising sum w n_k . R h_k.
    b = np.zeros((3, 3))
    m = 0
    for k in range(n_bands):
        h = match[k]
        if h < 0:
            continue
        m += 1
        w = weights[k] * sign[k]
        for a in range(3):
            for c in range(3):
                b[a, c] += w * normals[k, a] * ref[h, c]
    if m < 2:
        return False
    u, s, vt = np.linalg.svd(b)
    d = np.linalg.det(u) * np.linalg.det(vt)
    for a in range(3):
        u[a, 2] *= d
    r = u @ vt
    for a in range(3):
        for c in range(3):
            r_out[a, c] = r[a, c]
    return True


@nb.njit(cache=True, fastmath=True, nogil=True)
def _same_orientation(r1, r2, sym, cos_half):  # pragma: no cover - numba
    # True if r1^T r2 is within the angle of some proper symmetry operation.
    # trace(M S^T) = 1 + 2 cos(angle); compare against 1 + 2 cos(limit).
    m = r1.T @ r2
    lim = 1.0 + 2.0 * cos_half
    for s in range(sym.shape[0]):
        tr = 0.0
        for a in range(3):
            for c in range(3):
                tr += m[a, c] * sym[s, a, c]
        if tr >= lim:
            return True
    return False


@nb.njit(cache=True, fastmath=True, nogil=True)
def vote_orientation(
    normals,
    n_bands,
    weights,
    pair_angle,
    pair_triad,
    ref,
    sym,
    pair_tol,
    match_tol,
    n_pair_bands,
    lut,
    r_best,
    cand_r,
    cand_score,
):  # pragma: no cover - numba
    """Best orientation for one pattern and one phase.

    Parameters
    ----------
    normals
        ``(>= n_bands, 3)`` unit band normals, sample frame.
    n_bands
        Number of bands detected.
    weights
        ``(>= n_bands,)`` weights of the bands in the least-squares fit.
    pair_angle, pair_triad, ref, sym
        From :class:`~diffraflow.operators.indexing.reflectors.ReflectorTable`.
    pair_tol, match_tol
        Tolerances in radians.
    n_pair_bands
        Hypotheses come from pairs among the first (strongest) this many
        bands; all ``n_bands`` vote.
    lut
        :func:`build_match_lut` of ``ref`` for ``match_tol``.
    r_best
        ``(3, 3)`` output: crystal-to-sample rotation.
    cand_r, cand_score
        Work space ``(cap, 3, 3)`` and ``(cap,)`` for the hypotheses.

    Returns
    -------
    n_matched, fit_deg, confidence, n_cand
        Bands explained, mean angular deviation (degrees) of those bands
        after the least-squares fit, the voting margin in [0, 1], and the
        number of hypotheses stored in ``cand_r``/``cand_score``.
    """
    n_pairs_ref = pair_angle.size
    cos_match = np.cos(match_tol)
    match = np.empty(n_bands, dtype=np.int64)
    sign = np.empty(n_bands, dtype=np.float64)
    ts = np.empty((3, 3))
    r = np.empty((3, 3))
    nj = np.empty(3)
    best_cnt = -1
    best_err = 0.0
    n_cand = 0
    cap = cand_score.size
    cos_same = np.cos(np.radians(2.0))
    n_src = min(n_bands, n_pair_bands)
    for i in range(n_src):
        for j in range(i + 1, n_src):
            d = normals[i, 0] * normals[j, 0] + normals[i, 1] * normals[j, 1] + normals[i, 2] * normals[j, 2]
            sg = 1.0 if d >= 0 else -1.0
            ad = abs(d)
            if ad > 0.9995:
                continue  # (nearly) the same band found twice
            ang = np.arccos(ad)
            for a in range(3):
                nj[a] = sg * normals[j, a]
            _triad(normals[i], nj, ts)
            # First table row with angle >= ang - pair_tol (table is sorted).
            lo = 0
            hi = n_pairs_ref
            target = ang - pair_tol
            while lo < hi:
                mid = (lo + hi) // 2
                if pair_angle[mid] < target:
                    lo = mid + 1
                else:
                    hi = mid
            p = lo
            while p < n_pairs_ref and pair_angle[p] <= ang + pair_tol:
                tc = pair_triad[p]
                # R = Ts^T Tc maps the crystal triad onto the sample triad.
                for a in range(3):
                    for c in range(3):
                        r[a, c] = ts[0, a] * tc[0, c] + ts[1, a] * tc[1, c] + ts[2, a] * tc[2, c]
                # The winning orientation comes back from most band pairs;
                # recognising it costs a few traces, re-scoring it much more.
                if best_cnt >= 3 and _same_orientation(r_best, r, sym, cos_same):
                    if n_cand < cap:
                        cand_r[n_cand] = r
                        cand_score[n_cand] = best_cnt
                        n_cand += 1
                    p += 1
                    continue
                cnt, err = _score_lut(r, normals, n_bands, ref, lut, cos_match, match, sign)
                if cnt > best_cnt or (cnt == best_cnt and err < best_err):
                    best_cnt = cnt
                    best_err = err
                    r_best[:, :] = r
                if n_cand < cap:
                    cand_r[n_cand] = r
                    cand_score[n_cand] = cnt
                    n_cand += 1
                p += 1
    if best_cnt < 2:
        return 0, 180.0, 0.0, n_cand
    # Least-squares refinement, re-match, refit.
    for _ in range(2):
        cnt, err = _score(r_best, normals, n_bands, ref, cos_match, match, sign)
        if _fit(normals, n_bands, ref, match, sign, weights, r):
            r_best[:, :] = r
    cnt, err = _score(r_best, normals, n_bands, ref, cos_match, match, sign)
    fit = np.degrees(err / max(cnt, 1))
    # Runner-up: best score among hypotheses that are another orientation.
    second = 2
    cos_half = np.cos(np.radians(5.0))
    for c in range(n_cand):
        if cand_score[c] > second:
            if not _same_orientation(r_best, cand_r[c], sym, cos_half):
                second = cand_score[c]
    conf = (cnt - second) / max(n_bands - 2, 1)
    conf = min(max(conf, 0.0), 1.0)
    return cnt, fit, conf, n_cand


@nb.njit(cache=True, fastmath=True, nogil=True)
def same_orientation(r1, r2, sym, max_deg):  # pragma: no cover - numba
    """True if two crystal-to-sample matrices are within ``max_deg`` under ``sym``."""
    return _same_orientation(r1, r2, sym, np.cos(np.radians(max_deg)))


@nb.njit(cache=True, fastmath=True, nogil=True)
def refit(r, normals, n_bands, weights, ref, match_tol, r_out):  # pragma: no cover - numba
    """Match bands to ``r``, least-squares fit, re-match, fit again (into ``r_out``)."""
    match = np.empty(n_bands, dtype=np.int64)
    sign = np.empty(n_bands, dtype=np.float64)
    cos_match = np.cos(match_tol)
    cur = r.copy()
    tmp = np.empty((3, 3))
    for _ in range(2):
        _score(cur, normals, n_bands, ref, cos_match, match, sign)
        if _fit(normals, n_bands, ref, match, sign, weights, tmp):
            cur[:, :] = tmp
    r_out[:, :] = cur


@nb.njit(cache=True, fastmath=True, nogil=True)
def band_fit(r, normals, n_bands, ref, match_tol):  # pragma: no cover - numba
    """Bands explained by ``r`` and their mean angular deviation in degrees."""
    match = np.empty(n_bands, dtype=np.int64)
    sign = np.empty(n_bands, dtype=np.float64)
    cnt, err = _score(r, normals, n_bands, ref, np.cos(match_tol), match, sign)
    return cnt, np.degrees(err / max(cnt, 1))


@nb.njit(cache=True, fastmath=True, nogil=True)
def matrix_to_quaternion(m, out):  # pragma: no cover - numba
    """Unit quaternion ``(w, x, y, z)``, ``w >= 0``, of a rotation matrix.

    Uses the orix/Rowenhorst et al. (2015) passive convention, i.e. the same
    as ``orix.quaternion.Rotation.from_matrix``.
    """
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        w = 0.25 * s
        x = (m[2, 1] - m[1, 2]) / s
        y = (m[0, 2] - m[2, 0]) / s
        z = (m[1, 0] - m[0, 1]) / s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        w = (m[2, 1] - m[1, 2]) / s
        x = 0.25 * s
        y = (m[0, 1] + m[1, 0]) / s
        z = (m[0, 2] + m[2, 0]) / s
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        w = (m[0, 2] - m[2, 0]) / s
        x = (m[0, 1] + m[1, 0]) / s
        y = 0.25 * s
        z = (m[1, 2] + m[2, 1]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        w = (m[1, 0] - m[0, 1]) / s
        x = (m[0, 2] + m[2, 0]) / s
        y = (m[1, 2] + m[2, 1]) / s
        z = 0.25 * s
    n = np.sqrt(w * w + x * x + y * y + z * z)
    if w < 0:
        n = -n
    out[0] = w / n
    out[1] = x / n
    out[2] = y / n
    out[3] = z / n
