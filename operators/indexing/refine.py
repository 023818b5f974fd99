"""Guided refinement: re-measure every band the orientation predicts, refit.

Voting uses only the ``n_bands`` strongest peaks. Once an orientation is
known, every reflector normal of the phase predicts a line in Radon space;
the filtered transform is searched in a small window around each prediction
(so weak bands, too weak to stand out on their own, are found where they
must be), the local peak is refined to sub-bin precision and converted back
to a normal. A weighted least-squares fit (Wahba/SVD, as in
:mod:`diffraflow.operators.indexing.voting`) over all those bands gives the final
orientation. More bands average more noise away: this is what brings the
median error at moderate dose down (measured ~25 % lower).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from diffraflow.operators.indexing.bands import _value, refine_peak
from diffraflow.operators.indexing.geometry import band_normals, normal_to_line

__all__ = ["guided_refine"]


@nb.njit(cache=True, fastmath=True, nogil=True)
def guided_refine(
    filt, valid, b, r, ref, ref_w, pc, nrows, ncols, m_ds, rho_step, min_height, n_iter, r_out
):  # pragma: no cover - numba
    """Refine crystal-to-sample ``r`` against all bands the phase predicts.

    Parameters
    ----------
    filt, valid, b
        Filtered Radon block, valid bins and the pattern's index in the block.
    r
        ``(3, 3)`` starting crystal-to-sample rotation.
    ref, ref_w
        Reflector normals (crystal frame) and their family weights.
    pc, nrows, ncols, m_ds
        Geometry (see :mod:`diffraflow.operators.indexing.geometry`).
    rho_step
        Radon bin width in pixels.
    min_height
        Peaks lower than this are ignored.
    n_iter
        Re-measure / refit rounds.
    r_out
        ``(3, 3)`` output.

    Returns
    -------
    int
        Number of bands used in the last fit (0: ``r_out`` is ``r``).
    """
    n_theta, n_rho = valid.shape
    theta_step = np.pi / n_theta
    half = (n_rho - 1) / 2.0
    m = ref.shape[0]
    cur = r.copy()
    r_out[:, :] = r
    nvec = np.empty(3)
    one_rho = np.empty(1)
    one_theta = np.empty(1)
    meas = np.empty((1, 3))
    used = 0
    for _ in range(n_iter):
        bmat = np.zeros((3, 3))
        used = 0
        for h in range(m):
            for a in range(3):
                nvec[a] = cur[a, 0] * ref[h, 0] + cur[a, 1] * ref[h, 1] + cur[a, 2] * ref[h, 2]
            ok, rho, theta = normal_to_line(nvec, pc, nrows, ncols, m_ds)
            if not ok:
                continue
            tf = theta / theta_step
            rf = rho / rho_step + half
            t0 = int(np.floor(tf + 0.5))
            i0 = int(np.floor(rf + 0.5))
            # Highest valid bin within one bin of the prediction.
            best = -1e30
            bt = 0
            bi = 0
            for dt in range(-1, 2):
                for di in range(-1, 2):
                    okv, v = _value(filt, valid, t0 + dt, i0 + di, b, n_theta, n_rho)
                    if okv and v > best:
                        best = v
                        bt = t0 + dt
                        bi = i0 + di
            if best < min_height:
                continue
            # It must be a true local maximum, not the flank of a neighbour.
            is_max = True
            for dt in range(-1, 2):
                for di in range(-1, 2):
                    if dt == 0 and di == 0:
                        continue
                    okv, v = _value(filt, valid, bt + dt, bi + di, b, n_theta, n_rho)
                    if okv and v > best:
                        is_max = False
            if not is_max:
                continue
            dt_, di_ = refine_peak(filt, valid, b, bt, bi)
            # bt may sit outside [0, n_theta) by one: the line formula is
            # periodic in theta only with rho mirrored, so map it back.
            tt = bt + dt_
            ii = bi + di_
            if bt < 0:
                tt += n_theta
                ii = n_rho - 1 - ii
            elif bt >= n_theta:
                tt -= n_theta
                ii = n_rho - 1 - ii
            one_theta[0] = tt * theta_step
            one_rho[0] = (ii - half) * rho_step
            band_normals(one_rho, one_theta, 1, pc, nrows, ncols, m_ds, meas)
            d = meas[0, 0] * nvec[0] + meas[0, 1] * nvec[1] + meas[0, 2] * nvec[2]
            if abs(d) < np.cos(np.radians(3.0)):
                continue
            w = best * ref_w[h] if d > 0 else -best * ref_w[h]
            for a in range(3):
                for c in range(3):
                    bmat[a, c] += w * meas[0, a] * ref[h, c]
            used += 1
        if used < 3:
            return 0
        u, s, vt = np.linalg.svd(bmat)
        det = np.linalg.det(u) * np.linalg.det(vt)
        for a in range(3):
            u[a, 2] *= det
        cur = u @ vt
    r_out[:, :] = cur
    return used
