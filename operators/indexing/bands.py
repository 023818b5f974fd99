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

__all__ = ["butterfly_kernels", "butterfly_block", "find_peaks", "sample_radon"]


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
    # Sub-bin refinement: vertex of the parabola through three samples.
    for k in range(found):
        t = ti[k]
        i = ri[k]
        c = out_h[k]
        ok_lo, lo = _value(f, valid, t, i - 1, b, n_theta, n_rho)
        ok_hi, hi = _value(f, valid, t, i + 1, b, n_theta, n_rho)
        di = 0.0
        if ok_lo and ok_hi:
            den = lo - 2.0 * c + hi
            if den < 0.0:
                di = 0.5 * (lo - hi) / den
                di = min(max(di, -0.5), 0.5)
        ok_lo, lo = _value(f, valid, t - 1, i, b, n_theta, n_rho)
        ok_hi, hi = _value(f, valid, t + 1, i, b, n_theta, n_rho)
        dt = 0.0
        if ok_lo and ok_hi:
            den = lo - 2.0 * c + hi
            if den < 0.0:
                dt = 0.5 * (lo - hi) / den
                dt = min(max(dt, -0.5), 0.5)
        out_t[k] = t + dt
        out_r[k] = i + di
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
