"""Band detection in Radon space: butterfly filtering, peaks, sub-bin refinement.

A Kikuchi band is a bright stripe a few pixels wide, flanked by darker edges,
so in Radon space it is a peak narrow in :math:`\\rho` and a little wider in
:math:`\\theta` (the "butterfly" of Krieger Lassen, 1994). The filter here is
separable: along :math:`\\rho` the negative second derivative of a Gaussian
(zero-sum, so smooth backgrounds and linear trends vanish and the dark band
edges are rewarded), along :math:`\\theta` a Gaussian. The :math:`\\theta`
axis is periodic with a twist: :math:`(\\rho, \\theta + \\pi) \\equiv
(-\\rho, \\theta)`, which both the filter and the peak search honour.

Peaks are local maxima over a 3x3 neighbourhood of the filtered transform;
the ``n_bands`` highest are refined to sub-bin precision with a three-point
parabola along each axis.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["butterfly_kernels", "butterfly_block", "find_peaks", "find_peaks_block", "refine_peak", "sample_radon"]


def butterfly_kernels(sigma_rho: float, sigma_theta: float) -> tuple[np.ndarray, np.ndarray]:
    """The two 1-D kernels of the separable butterfly filter.

    Parameters
    ----------
    sigma_rho
        Width of the band profile in ``rho`` bins.
    sigma_theta
        Smoothing along ``theta`` in bins.

    Returns
    -------
    k_rho, k_theta
        float32 kernels of odd length; ``k_rho`` sums to zero, ``k_theta`` to one.

    Examples
    --------
    >>> kr, kt = butterfly_kernels(1.0, 1.0)
    >>> abs(float(kr.sum())) < 1e-6, round(float(kt.sum()), 6)
    (True, 1.0)
    """
    hr = max(2, int(np.ceil(3.0 * sigma_rho)))
    x = np.arange(-hr, hr + 1, dtype=np.float64)
    kr = (1.0 - x**2 / sigma_rho**2) * np.exp(-0.5 * x**2 / sigma_rho**2)
    kr -= kr.mean()
    kr /= np.abs(kr).sum()
    ht = max(1, int(np.ceil(2.5 * sigma_theta)))
    y = np.arange(-ht, ht + 1, dtype=np.float64)
    kt = np.exp(-0.5 * y**2 / max(sigma_theta, 1e-3) ** 2)
    kt /= kt.sum()
    return kr.astype(np.float32), kt.astype(np.float32)


@nb.njit(cache=True, fastmath=True, nogil=True)
def butterfly_block(radon, k_rho, k_theta, tmp, out):  # pragma: no cover - numba
    """Separable butterfly filter of a ``(n_theta, n_rho, B)`` block.

    ``tmp`` and ``out`` have the same shape as ``radon`` and are overwritten.
    Bins outside the valid region must be zero in ``radon``.
    """
    n_theta, n_rho, nb_ = radon.shape
    hr = k_rho.size // 2
    ht = k_theta.size // 2
    tmp[:] = 0.0
    for t in range(n_theta):
        for i in range(n_rho):
            for k in range(k_rho.size):
                j = i + k - hr
                if j < 0 or j >= n_rho:
                    continue
                w = k_rho[k]
                for b in range(nb_):
                    tmp[t, i, b] += w * radon[t, j, b]
    out[:] = 0.0
    for t in range(n_theta):
        for k in range(k_theta.size):
            s = t + k - ht
            flip = False
            if s < 0:
                s += n_theta
                flip = True
            elif s >= n_theta:
                s -= n_theta
                flip = True
            w = k_theta[k]
            for i in range(n_rho):
                src = n_rho - 1 - i if flip else i
                for b in range(nb_):
                    out[t, i, b] += w * tmp[s, src, b]


@nb.njit(cache=True, fastmath=True, nogil=True)
def _value(f, valid, t, i, b, n_theta, n_rho):  # pragma: no cover - numba
    # Periodic theta with rho mirrored across the seam. Returns (ok, value);
    # no inf sentinel because fastmath assumes finite numbers.
    if t < 0:
        t += n_theta
        i = n_rho - 1 - i
    elif t >= n_theta:
        t -= n_theta
        i = n_rho - 1 - i
    if i < 0 or i >= n_rho:
        return False, 0.0
    if valid[t, i] == 0:
        return False, 0.0
    return True, f[t, i, b]


@nb.njit(cache=True, fastmath=True, nogil=True)
def refine_peak(f, valid, b, t, i):  # pragma: no cover - numba
    """Sub-bin offset ``(dt, di)`` of the peak at integer bin ``(t, i)``.

    Vertex of the quadratic surface through the 3x3 neighbourhood, cross term
    included: a band's Radon peak is a ridge tilted in :math:`(\\theta, \\rho)`
    whenever its chord's midpoint is not the foot of the perpendicular from
    the centre (any non-circular mask), and separate 1-D parabolas are then
    biased. Falls back to 1-D parabolas when the surface is not concave or a
    neighbour is invalid; offsets are clipped to half a bin.
    """
    n_theta, n_rho = valid.shape
    ok0, c = _value(f, valid, t, i, b, n_theta, n_rho)
    v = np.empty((3, 3))
    all_ok = True
    for dt in range(-1, 2):
        for di in range(-1, 2):
            ok, w = _value(f, valid, t + dt, i + di, b, n_theta, n_rho)
            if not ok:
                all_ok = False
                w = c
            v[dt + 1, di + 1] = w
    ft = 0.5 * (v[2, 1] - v[0, 1])
    fr = 0.5 * (v[1, 2] - v[1, 0])
    ftt = v[2, 1] - 2.0 * c + v[0, 1]
    frr = v[1, 2] - 2.0 * c + v[1, 0]
    ftr = 0.25 * (v[2, 2] - v[2, 0] - v[0, 2] + v[0, 0])
    det = ftt * frr - ftr * ftr
    if all_ok and ftt < 0.0 and det > 0.0:
        dt = -(frr * ft - ftr * fr) / det
        di = -(ftt * fr - ftr * ft) / det
    else:
        dt = -0.5 * ft / ftt if ftt < 0.0 else 0.0
        di = -0.5 * fr / frr if frr < 0.0 else 0.0
        dt = 2.0 * dt  # -ft/ftt: vertex of the 1-D parabola
        di = 2.0 * di
    dt = min(max(dt, -0.5), 0.5)
    di = min(max(di, -0.5), 0.5)
    return dt, di


@nb.njit(cache=True, fastmath=True, nogil=True)
def find_peaks(f, valid, b, n_bands, out_t, out_r, out_h):  # pragma: no cover - numba
    """The ``n_bands`` highest 3x3 local maxima of pattern ``b`` of a block.

    Parameters
    ----------
    f
        ``(n_theta, n_rho, B)`` filtered transform.
    valid
        ``(n_theta, n_rho)`` uint8, 1 where a bin may hold a peak.
    b
        Pattern index within the block.
    n_bands
        Number of peaks wanted.
    out_t, out_r, out_h
        float64 arrays of length ``n_bands``: refined theta bin, refined rho
        bin and peak height, sorted by decreasing height.

    Returns
    -------
    int
        Number of peaks found (``<= n_bands``).
    """
    n_theta, n_rho = valid.shape
    found = 0
    ti = np.empty(n_bands, dtype=np.int64)
    ri = np.empty(n_bands, dtype=np.int64)
    for t in range(n_theta):
        for i in range(1, n_rho - 1):
            if valid[t, i] == 0:
                continue
            v = f[t, i, b]
            if v <= 0.0:
                continue
            if found == n_bands and v <= out_h[found - 1]:
                continue
            is_max = True
            for dt in range(-1, 2):
                for di in range(-1, 2):
                    if dt == 0 and di == 0:
                        continue
                    ok, w = _value(f, valid, t + dt, i + di, b, n_theta, n_rho)
                    # Ties broken by position so a flat top yields one peak.
                    if ok and (w > v or (w == v and (dt < 0 or (dt == 0 and di < 0)))):
                        is_max = False
                        break
                if not is_max:
                    break
            if not is_max:
                continue
            # Insert into the sorted top list.
            pos = found if found < n_bands else n_bands - 1
            while pos > 0 and out_h[pos - 1] < v:
                if pos < n_bands:
                    out_h[pos] = out_h[pos - 1]
                    ti[pos] = ti[pos - 1]
                    ri[pos] = ri[pos - 1]
                pos -= 1
            out_h[pos] = v
            ti[pos] = t
            ri[pos] = i
            if found < n_bands:
                found += 1
    for k in range(found):
        dt, di = refine_peak(f, valid, b, ti[k], ri[k])
        out_t[k] = ti[k] + dt
        out_r[k] = ri[k] + di
    return found


@nb.njit(cache=True, fastmath=True, nogil=True)
def sample_radon(f, valid, b, t, i):  # pragma: no cover - numba
    """Bilinear value of pattern ``b``'s filtered transform at fractional bins.

    Returns ``(ok, value)``; ``ok`` is False if any of the four bins is invalid.
    """
    n_theta, n_rho = valid.shape
    t0 = int(np.floor(t))
    i0 = int(np.floor(i))
    ft = t - t0
    fi = i - i0
    acc = 0.0
    for dt in range(2):
        wt = ft if dt == 1 else 1.0 - ft
        for di in range(2):
            wi = fi if di == 1 else 1.0 - fi
            ok, v = _value(f, valid, t0 + dt, i0 + di, b, n_theta, n_rho)
            if not ok:
                return False, 0.0
            acc += wt * wi * v
    return True, acc


@nb.njit(cache=True, fastmath=True, nogil=True)
def find_peaks_block(f, valid, n_active, n_bands, out_t, out_r, out_h, found):  # pragma: no cover - numba
    """:func:`find_peaks` for the first ``n_active`` patterns of a block at once.

    Same result as calling :func:`find_peaks` per pattern, but each bin's
    neighbourhood is read once for all patterns (unit stride over ``b``), so
    the comparisons vectorise and the block is streamed through the cache
    once instead of once per pattern.

    Parameters
    ----------
    f
        ``(n_theta, n_rho, B)`` filtered transform.
    valid
        ``(n_theta, n_rho)`` uint8.
    n_active
        Patterns of the block in use.
    n_bands
        Peaks wanted per pattern.
    out_t, out_r, out_h
        ``(B, n_bands)`` float64 outputs (refined bins and heights, by height).
    found
        ``(B,)`` int64 output: peaks found per pattern.
    """
    n_theta, n_rho = valid.shape
    fc = np.ascontiguousarray(f)  # no copy for the CPU block; the CuPy path's view is copied
    nb_ = fc.shape[2]
    ff = fc.ravel()
    ti = np.empty((nb_, n_bands), dtype=np.int64)
    ri = np.empty((nb_, n_bands), dtype=np.int64)
    prev = np.empty(nb_, dtype=fc.dtype)
    nxt = np.empty(nb_, dtype=fc.dtype)
    floor_ = np.zeros(nb_, dtype=fc.dtype)
    cand = np.zeros(nb_, dtype=np.bool_)
    for b in range(n_active):
        found[b] = 0
    for t in range(n_theta):
        for i in range(1, n_rho - 1):
            if valid[t, i] == 0:
                continue
            c0 = (t * n_rho + i) * nb_
            # Cheap first test on all patterns at once: most bins are below
            # zero or below the current n_bands-th peak of their pattern.
            any_cand = False
            for b in range(n_active):
                v = ff[c0 + b]
                ok = v > 0.0 and v > floor_[b]
                cand[b] = ok
                any_cand |= ok
            if not any_cand:
                continue
            for b in range(n_active):
                prev[b] = -3.0e38
                nxt[b] = -3.0e38
            # Neighbours earlier in scan order must be strictly lower, later
            # ones may tie: a flat top yields exactly one peak.
            for dt in range(-1, 2):
                tt = t + dt
                flip = False
                if tt < 0:
                    tt += n_theta
                    flip = True
                elif tt >= n_theta:
                    tt -= n_theta
                    flip = True
                for di in range(-1, 2):
                    if dt == 0 and di == 0:
                        continue
                    ii = i + di
                    if flip:
                        ii = n_rho - 1 - ii
                    if ii < 0 or ii >= n_rho or valid[tt, ii] == 0:
                        continue
                    base = (tt * n_rho + ii) * nb_
                    if dt < 0 or (dt == 0 and di < 0):
                        for b in range(n_active):
                            prev[b] = max(prev[b], ff[base + b])
                    else:
                        for b in range(n_active):
                            nxt[b] = max(nxt[b], ff[base + b])
            for b in range(n_active):
                if not cand[b]:
                    continue
                v = ff[c0 + b]
                if v <= prev[b] or v < nxt[b]:
                    continue
                k = found[b]
                pos = k if k < n_bands else n_bands - 1
                while pos > 0 and out_h[b, pos - 1] < v:
                    if pos < n_bands:
                        out_h[b, pos] = out_h[b, pos - 1]
                        ti[b, pos] = ti[b, pos - 1]
                        ri[b, pos] = ri[b, pos - 1]
                    pos -= 1
                out_h[b, pos] = v
                ti[b, pos] = t
                ri[b, pos] = i
                if k < n_bands:
                    found[b] = k + 1
                if found[b] == n_bands:
                    floor_[b] = out_h[b, n_bands - 1]
    for b in range(n_active):
        for k in range(found[b]):
            dt, di = refine_peak(fc, valid, b, ti[b, k], ri[b, k])
            out_t[b, k] = ti[b, k] + dt
            out_r[b, k] = ri[b, k] + di
