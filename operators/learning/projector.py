"""EBSD patterns projected from a Lambert master pattern in torch: batched, on any device, differentiable.

kikuchipy projects master patterns with numba on the CPU, one detector
geometry per call. Learning needs more: batches of patterns with a different
projection centre each (training data), on the GPU when there is one, and
gradients of a pattern with respect to its orientation (refinement). This
module does the same geometry in torch:

1. each detector pixel's direction from the source point, in the sample
   frame (:func:`detector_directions`): the pixel's gnomonic coordinates
   from the Bruker projection centre, turned into the sample frame by the
   detector's orientation (sample and camera tilt), as kikuchipy's
   ``EBSDDetector`` defines it;
2. the direction rotated into the crystal frame by each orientation
   (``v_c = R v_s``, the quaternion convention of
   :mod:`~diffraflow.operators.learning.rotations`);
3. the crystal direction mapped to the square Lambert projection of its
   hemisphere (Rosca's equal-area map) and the master pattern sampled there
   bilinearly (``grid_sample``, corners aligned with the outer pixels).

A test holds it to kikuchipy's ``get_patterns`` (normalised cross-correlation
above 0.9999 for random orientations and projection centres).

Examples
--------
>>> import torch
>>> import numpy as np, torch
>>> from diffraflow.operators.simulate.master_patterns import get_master_pattern
>>> projector = MasterPatternProjector(get_master_pattern("ni").data)
>>> dirs = detector_directions((60, 60), np.array([[0.42, 0.22, 0.5]]))
>>> patterns = projector.project(torch.eye(3)[None], dirs)
>>> tuple(patterns.shape), patterns.dtype
((1, 60, 60), torch.float32)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.operators.learning.rotations import quaternion_to_matrix

if TYPE_CHECKING:
    import torch

__all__ = ["detector_to_sample_matrix", "detector_directions", "MasterPatternProjector", "lambert_coordinates"]

_SQRT_PI = math.sqrt(math.pi)
_HALF_SIDE = math.sqrt(math.pi / 2)  # half the side of the square Lambert projection of a hemisphere


def detector_to_sample_matrix(sample_tilt: float = 70.0, camera_tilt: float = 0.0, azimuthal: float = 0.0
                              ) -> np.ndarray:
    """The 3x3 matrix taking detector-frame vectors to the sample frame (kikuchipy's definition; degrees).

    Examples
    --------
    >>> detector_to_sample_matrix(70.0, 0.0).shape
    (3, 3)
    """
    from kikuchipy.detectors import EBSDDetector

    detector = EBSDDetector(shape=(2, 2), sample_tilt=float(sample_tilt), tilt=float(camera_tilt),
                            azimuthal=float(azimuthal))
    return np.asarray((~detector.sample_to_detector).to_matrix(), dtype=np.float64).reshape(3, 3)


def detector_directions(shape: tuple[int, int], pc: Any, sample_tilt: float = 70.0, camera_tilt: float = 0.0,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                        azimuthal: float = 0.0) -> torch.Tensor:
    """Unit directions ``(n, det_y * det_x, 3)`` from the source point to each pixel centre, in the sample frame.

    Parameters
    ----------
    shape
        ``(det_y, det_x)``.
    pc
        Projection centres, Bruker convention: ``(3,)`` or ``(n, 3)`` (one geometry per pattern).
    sample_tilt, camera_tilt, azimuthal
        Degrees, as in kikuchipy's ``EBSDDetector`` (``tilt`` is the camera tilt).

    Notes
    -----
    With aspect ratio :math:`r = n_x / n_y`, the detector spans the gnomonic
    coordinates :math:`x \\in [-r\\,x^*/z^*,\\ r(1 - x^*)/z^*]` (left to
    right) and :math:`y \\in [y^*/z^*,\\ -(1 - y^*)/z^*]` (top to bottom);
    pixel centres sit half a pixel inside, and the direction of ``(x, y, 1)``
    in the detector frame is rotated into the sample frame.

    Examples
    --------
    >>> import torch
    >>> d = detector_directions((4, 6), [0.5, 0.5, 0.6])
    >>> tuple(d.shape), bool(torch.allclose(d.norm(dim=-1), torch.ones(1, 24)))
    ((1, 24, 3), True)
    """
    import torch

    ny, nx = int(shape[0]), int(shape[1])
    pcs = torch.as_tensor(np.asarray(pc, dtype=np.float64).reshape(-1, 3), dtype=torch.float64, device=device)
    px, py, pz = pcs[:, 0:1], pcs[:, 1:2], pcs[:, 2:3]
    aspect = nx / ny
    x0, x1 = -aspect * px / pz, aspect * (1 - px) / pz
    y_top, y_bottom = py / pz, -(1 - py) / pz
    cols = (torch.arange(nx, dtype=torch.float64, device=device) + 0.5) / nx
    rows = (torch.arange(ny, dtype=torch.float64, device=device) + 0.5) / ny
    gx = x0 + (x1 - x0) * cols[None]                     # (n, nx)
    gy = y_top + (y_bottom - y_top) * rows[None]         # (n, ny)
    n = len(pcs)
    vec = torch.stack([gx[:, None, :].expand(n, ny, nx), gy[:, :, None].expand(n, ny, nx),
                       torch.ones(n, ny, nx, dtype=torch.float64, device=device)], dim=-1).reshape(n, ny * nx, 3)
    matrix = torch.as_tensor(detector_to_sample_matrix(sample_tilt, camera_tilt, azimuthal), dtype=torch.float64,
                             device=device)
    vec = vec @ matrix.T
    vec = vec / vec.norm(dim=-1, keepdim=True)
    return vec.to(dtype or torch.float32)


def lambert_coordinates(v: torch.Tensor) -> torch.Tensor:
    """Square Lambert coordinates in ``[-1, 1]²`` (x, y) of unit vectors ``(..., 3)``, per hemisphere.

    Rosca's equal-area map: for :math:`|y| \\le |x|`,
    :math:`X = \\mathrm{sgn}(x)\\sqrt{2(1-|z|)}\\,\\sqrt{\\pi}/2`,
    :math:`Y = \\mathrm{sgn}(x)\\sqrt{2(1-|z|)}\\,(2/\\sqrt{\\pi})\\arctan(y/x)`
    (x and y swapped otherwise), divided by the half side :math:`\\sqrt{\\pi/2}`.

    Examples
    --------
    >>> import torch
    >>> lambert_coordinates(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])).tolist()
    [[0.0, 0.0], [1.0, 0.0]]
    """
    import torch

    x, y, z = v.unbind(-1)
    s = (2.0 * (1.0 - z.abs())).clamp_min(1e-12).sqrt()
    ax, ay = x.abs(), y.abs()
    x_major = ay <= ax
    # sgn(x)·atan(y/x) = sgn(y)·atan(|y|/|x|): one arctangent of the smaller over the larger serves both branches.
    angle = torch.atan(torch.minimum(ax, ay) / torch.maximum(ax, ay).clamp_min(1e-12)) * (2 / _SQRT_PI)
    edge = _SQRT_PI / 2
    X = torch.sign(x) * s * torch.where(x_major, torch.full_like(angle, edge), angle)
    Y = torch.sign(y) * s * torch.where(x_major, angle, torch.full_like(angle, edge))
    return torch.stack([X, Y], dim=-1) / _HALF_SIDE


class MasterPatternProjector:
    """Projects detector patterns from a ``(2, n, n)`` Lambert master pattern (upper, lower hemisphere).

    Parameters
    ----------
    master
        float array ``(2, n, n)``: index 0 the upper (``z >= 0``), 1 the lower hemisphere.
    device, dtype
        Where and in what precision patterns are computed.

    Examples
    --------
    >>> import torch
    >>> import numpy as np
    >>> projector = MasterPatternProjector(np.ones((2, 5, 5), "float32"))
    >>> dirs = detector_directions((3, 4), [0.5, 0.5, 0.5])
    >>> projector.project_quaternions(np.array([[1.0, 0, 0, 0]]), dirs, shape=(3, 4)).shape
    torch.Size([1, 3, 4])
    """

    def __init__(self, master: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        import torch

        dtype = dtype or torch.float32
        data = torch.as_tensor(np.asarray(master, dtype=np.float32), device=device).to(dtype)
        if data.ndim != 3 or data.shape[0] != 2 or data.shape[1] != data.shape[2]:
            raise ValueError(f"a master pattern is (2, n, n) Lambert arrays, got {tuple(data.shape)}")
        self.master = data[None]  # (1, 2, n, n): both hemispheres sampled in one call
        self.device = data.device
        self.dtype = dtype

    def to(self, device: torch.device | str) -> MasterPatternProjector:
        """The projector on another device."""
        return MasterPatternProjector(self.master[0].cpu().numpy(), device=device, dtype=self.dtype)

    def sample(self, crystal_directions: torch.Tensor) -> torch.Tensor:
        """Master-pattern intensity along unit crystal-frame directions ``(..., 3)``.

        Examples
        --------
        >>> import torch
        >>> import numpy as np
        >>> mp = np.zeros((2, 5, 5), "float32"); mp[1] = 1.0
        >>> MasterPatternProjector(mp).sample(torch.tensor([[0.0, 0, 1], [0.0, 0, -1]])).tolist()
        [0.0, 1.0]
        """
        import torch
        from torch.nn import functional

        shape = crystal_directions.shape[:-1]
        v = crystal_directions.reshape(1, 1, -1, 3).to(self.dtype)
        grid = lambert_coordinates(v)
        both = functional.grid_sample(self.master, grid, mode="bilinear", padding_mode="border", align_corners=True)
        upper, lower = both[0, 0, 0], both[0, 1, 0]
        return torch.where(v[0, 0, :, 2] >= 0, upper, lower).reshape(shape)

    def project(self, rotations: torch.Tensor, directions: torch.Tensor, shape: tuple[int, int] | None = None
                ) -> torch.Tensor:
        """Patterns ``(n, det_y, det_x)`` for rotation matrices ``(n, 3, 3)`` (differentiable in them).

        Parameters
        ----------
        rotations
            Sample-to-crystal rotation matrices.
        directions
            :func:`detector_directions`: ``(1, p, 3)`` shared, or ``(n, p, 3)`` one per pattern.
        shape
            ``(det_y, det_x)``; default square, ``p = det_y²``.
        """
        import torch

        directions = directions.to(device=self.device, dtype=self.dtype)
        rotations = rotations.to(device=self.device, dtype=self.dtype)
        crystal = torch.einsum("nij,npj->npi", rotations, directions.expand(len(rotations), -1, -1))
        values = self.sample(crystal)
        if shape is None:
            side = int(round(math.sqrt(values.shape[-1])))
            shape = (side, side)
        return values.reshape(len(rotations), int(shape[0]), int(shape[1]))

    def project_quaternions(self, quaternions: Any, directions: torch.Tensor,
                            shape: tuple[int, int] | None = None) -> torch.Tensor:
        """:meth:`project` for unit quaternions ``(n, 4)`` (scalar first, orix convention)."""
        import torch

        q = torch.as_tensor(np.asarray(quaternions, dtype=np.float64), device=self.device).to(self.dtype)
        if shape is None and directions.shape[-2] != round(math.sqrt(directions.shape[-2])) ** 2:
            raise ValueError("give the detector shape of non-square patterns")
        return self.project(quaternion_to_matrix(q.reshape(-1, 4)), directions, shape)
