"""From a Radon peak :math:`(\\rho, \\theta)` to a band normal in the sample frame.

Conventions are kikuchipy's ``EBSDDetector`` (Bruker projection centre):
with :math:`N_x` columns, :math:`N_y` rows and PC :math:`(x^*, y^*, z^*)`, the
pixel in row :math:`r`, column :math:`c` sees the direction

.. math::

    \\mathbf{d} = M_{ds}\\,\\big(c + \\tfrac12 - N_x x^*,\\;
    N_y y^* - r - \\tfrac12,\\; N_y z^*\\big)

in the sample frame, where :math:`M_{ds}` is the detector-to-sample rotation
given by the sample tilt and camera tilt (``(~detector.sample_to_detector)``).
A band's line :math:`u\\cos\\theta + v\\sin\\theta = \\rho` (pixel units from
the image centre) together with the projection centre spans the lattice
plane, so the plane normal is the cross product of a point of the line and
its direction, both written as 3-vectors from the projection centre. The map
is linear in pixel coordinates, so per-pattern projection centres cost
nothing extra.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from diffraflow.schemas.errors import SchemaError

__all__ = ["detector_to_sample_matrix", "pc_array", "band_normals", "normal_to_line"]


def detector_to_sample_matrix(detector) -> np.ndarray:
    """Rotation matrix taking detector-frame vectors to the sample frame.

    Parameters
    ----------
    detector
        kikuchipy ``EBSDDetector``.

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` float64.

    Examples
    --------
    >>> from kikuchipy.detectors import EBSDDetector
    >>> m = detector_to_sample_matrix(EBSDDetector((60, 60), sample_tilt=70))
    >>> m.shape
    (3, 3)
    """
    m = (~detector.sample_to_detector).to_matrix()
    return np.ascontiguousarray(np.asarray(m, dtype=np.float64).reshape(3, 3))


def pc_array(detector, n_patterns: int | None = None) -> np.ndarray:
    """The detector's projection centres as an ``(n, 3)`` Bruker-convention array.

    Parameters
    ----------
    detector
        kikuchipy ``EBSDDetector`` with one PC or one per navigation point.
    n_patterns
        If given, the number of PCs must be 1 or this.

    Returns
    -------
    numpy.ndarray
        ``(1, 3)`` or ``(n, 3)`` float64.

    Examples
    --------
    >>> from kikuchipy.detectors import EBSDDetector
    >>> pc_array(EBSDDetector((60, 60), pc=(0.4, 0.2, 0.5))).tolist()
    [[0.4, 0.2, 0.5]]
    """
    pc = np.asarray(detector.pc, dtype=np.float64).reshape(-1, 3)
    if n_patterns is not None and pc.shape[0] not in (1, n_patterns):
        raise SchemaError(
            "detector.pc",
            f"{pc.shape[0]} projection centres for {n_patterns} patterns",
            "give one PC, or one per pattern with the scan's navigation shape",
        )
    if np.any(pc[:, 2] <= 0) or not np.all(np.isfinite(pc)):
        raise SchemaError("detector.pc", "PCz must be positive and finite", "check the projection centre")
    return np.ascontiguousarray(pc)


@nb.njit(cache=True, fastmath=True, nogil=True)
def band_normals(rho, theta, n, pc, nrows, ncols, m_ds, out):  # pragma: no cover - numba
    """Unit sample-frame normals of ``n`` bands given in pixels and radians.

    Parameters
    ----------
    rho, theta
        Band lines (pixels from the image centre, radians).
    n
        Number of bands to convert.
    pc
        ``(3,)`` Bruker PC of this pattern.
    nrows, ncols
        Detector shape.
    m_ds
        ``(3, 3)`` detector-to-sample rotation.
    out
        ``(>= n, 3)`` float64, overwritten.
    """
    x_off = ncols * (0.5 - pc[0])
    y_off = nrows * (pc[1] - 0.5)
    z = nrows * pc[2]
    for k in range(n):
        c = np.cos(theta[k])
        s = np.sin(theta[k])
        # Point of the line closest to the image centre and its direction,
        # both from the projection centre (detector frame: x right, y up).
        px = rho[k] * c + x_off
        py = -rho[k] * s + y_off
        dx = -s
        dy = -c
        nx = -z * dy
        ny = z * dx
        nz = px * dy - py * dx
        for a in range(3):
            out[k, a] = m_ds[a, 0] * nx + m_ds[a, 1] * ny + m_ds[a, 2] * nz
        norm = np.sqrt(out[k, 0] ** 2 + out[k, 1] ** 2 + out[k, 2] ** 2)
        for a in range(3):
            out[k, a] /= norm


@nb.njit(cache=True, fastmath=True, nogil=True)
def normal_to_line(n_sample, pc, nrows, ncols, m_ds):  # pragma: no cover - numba
    """Inverse of :func:`band_normals`: the line ``(rho, theta)`` of a plane.

    Returns ``(ok, rho, theta)`` with ``theta`` in ``[0, pi)``; ``ok`` is
    False when the plane is parallel to the screen.
    """
    # Detector-frame normal: m_ds is orthogonal, so its transpose inverts it.
    a = m_ds[0, 0] * n_sample[0] + m_ds[1, 0] * n_sample[1] + m_ds[2, 0] * n_sample[2]
    bb = m_ds[0, 1] * n_sample[0] + m_ds[1, 1] * n_sample[1] + m_ds[2, 1] * n_sample[2]
    c = m_ds[0, 2] * n_sample[0] + m_ds[1, 2] * n_sample[1] + m_ds[2, 2] * n_sample[2]
    k = np.sqrt(a * a + bb * bb)
    if k < 1e-9:
        return False, 0.0, 0.0
    x_off = ncols * (0.5 - pc[0])
    y_off = nrows * (pc[1] - 0.5)
    z = nrows * pc[2]
    # Plane a*x + b*y + c*z = 0 with x = u + x_off, y = -v + y_off:
    # a*u - b*v = -(a*x_off + b*y_off + c*z).
    ct = a / k
    st = -bb / k
    rho = -(a * x_off + bb * y_off + c * z) / k
    if st < 0 or (st == 0 and ct < 0):
        ct = -ct
        st = -st
        rho = -rho
    theta = np.arctan2(st, ct)
    if theta >= np.pi:
        theta -= np.pi
        rho = -rho
    return True, rho, theta
