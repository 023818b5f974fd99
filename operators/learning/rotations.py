"""Rotations in torch for learned orientation models: 6-D representation, crystal symmetry, disorientation.

Conventions are those of orix and kikuchipy: a unit quaternion
``(w, x, y, z)``, scalar first, acts on a vector given in the sample frame
and returns it in the crystal frame (``v_c = R(q) v_s``, the rotation
kikuchipy applies when it projects a master pattern, and the ``true_rotation``
of simulated scans). Crystal symmetry acts on the crystal side: ``R`` and
``S R`` describe the same orientation for every proper rotation ``S`` of the
point group.

A network cannot regress quaternions or Euler angles well: both are
discontinuous somewhere on SO(3). The **6-D representation** of Zhou et al.
(CVPR 2019) is continuous: the network outputs two 3-vectors and
Gram-Schmidt orthogonalisation turns them into the first two columns of a
rotation matrix, the cross product gives the third.

Examples
--------
>>> import torch
>>> q = torch.tensor([[0.9238795, 0.0, 0.0, 0.3826834]])          # 45 deg about z
>>> R = quaternion_to_matrix(q)
>>> torch.allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(R)), R, atol=1e-6)
True
>>> S = proper_point_group_matrices("m-3m")
>>> len(S), float(disorientation_deg(R, S[5] @ R, S).max()) < 1e-3
(24, True)
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "rotation_6d_to_matrix",
    "matrix_to_rotation_6d",
    "axis_angle_to_matrix",
    "proper_point_group_matrices",
    "symmetric_traces",
    "disorientation_deg",
    "rotation_angle_deg",
    "symmetry_aware_loss",
    "reduce_to_fundamental",
]


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` of unit quaternions ``(..., 4)`` (scalar first; normalised here).

    The matrix acts on column vectors as the quaternion does (``R v = q v q*``).

    Examples
    --------
    >>> import torch
    >>> quaternion_to_matrix(torch.tensor([1.0, 0, 0, 0])).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    import torch

    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, b, c, d = q.unbind(-1)
    rows = [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c),
            2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b),
            2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` with ``w >= 0`` of rotation matrices ``(..., 3, 3)``.

    Each quaternion is computed from the largest of ``1 + tr``, ``1 + 2 R_ii - tr``
    (Shepperd's method), so it is accurate for every angle.

    Examples
    --------
    >>> import torch
    >>> q = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 1.0, 0.0]])
    >>> torch.allclose(matrix_to_quaternion(quaternion_to_matrix(q)).abs(), q.abs(), atol=1e-6)
    True
    """
    import torch

    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = torch.stack([
        torch.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0],
                     m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22,
                     m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m00 - m11 + m22], -1),
    ], dim=-2)
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(dim=-1, keepdim=True)
    q = torch.take_along_dim(candidates, best[..., None], dim=-2).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(q[..., :1] < 0, -q, q)


def rotation_6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from 6-D vectors ``(..., 6)`` by Gram-Schmidt (Zhou et al. 2019).

    The first three numbers give the direction of the first column, the next
    three (made orthogonal to it) the second; the third column is their cross
    product. Any 6-vector with two independent halves maps to a rotation, and
    the map is smooth, which is what a network's last linear layer needs.

    Examples
    --------
    >>> import torch
    >>> rotation_6d_to_matrix(torch.tensor([2.0, 0, 0, 1, 3, 0])).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    import torch

    a1, a2 = x[..., :3], x[..., 3:6]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    a2 = a2 - (b1 * a2).sum(dim=-1, keepdim=True) * b1
    b2 = a2 / a2.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(R: torch.Tensor) -> torch.Tensor:
    """The 6-D representation (first two columns, concatenated) of rotation matrices.

    Examples
    --------
    >>> import torch
    >>> matrix_to_rotation_6d(torch.eye(3)).tolist()
    [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    """
    import torch

    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def axis_angle_to_matrix(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of rotation vectors ``(..., 3)`` (axis times angle in radians), by Rodrigues' formula.

    Smooth at zero (a Taylor series below 1e-4 rad), so it can be optimised through.

    Examples
    --------
    >>> import math
    >>> import torch
    >>> R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2]))
    >>> [round(v) for v in (R @ torch.tensor([1.0, 0, 0])).tolist()]
    [0, 1, 0]
    """
    import torch

    theta2 = (omega * omega).sum(dim=-1, keepdim=True)[..., None]
    theta = theta2.clamp_min(1e-24).sqrt()
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    x, y, z = omega.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*omega.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(K)
    return eye + a * K + b * (K @ K)


@cache
def _point_group_numpy(name: str) -> np.ndarray:
    from orix.quaternion import symmetry

    groups = {g.name: g for g in symmetry._groups}
    if name not in groups:
        from diffraflow.schemas.errors import SchemaError

        raise SchemaError("point_group", f"unknown point group {name!r}",
                          f"use one of orix's names, e.g. {', '.join(sorted(groups)[:6])}...")
    proper = groups[name].laue_proper_subgroup if not groups[name].is_proper else groups[name]
    # The Laue group's proper part: the rotations that leave a (centrosymmetric) Kikuchi pattern unchanged.
    matrices = np.asarray(proper.to_matrix(), dtype=np.float64).reshape(-1, 3, 3)
    return np.round(matrices, 12)


def proper_point_group_matrices(name: str, device: torch.device | str | None = None,
                                dtype: torch.dtype | None = None) -> torch.Tensor:
    """The proper rotations ``(k, 3, 3)`` of a point group's Laue class (24 for any cubic ``m-3m`` phase).

    EBSD patterns are centrosymmetric (Friedel's law), so two orientations are
    indistinguishable when they differ by a rotation of the Laue group; only
    its proper part is a rotation. ``name`` is an orix point-group name.

    Examples
    --------
    >>> len(proper_point_group_matrices("m-3m")), len(proper_point_group_matrices("6/mmm"))
    (24, 12)
    """
    import torch

    return torch.as_tensor(_point_group_numpy(str(name)), dtype=dtype or torch.float32, device=device)


def symmetric_traces(R_pred: torch.Tensor, R_true: torch.Tensor, symmetry: torch.Tensor) -> torch.Tensor:
    """``tr(S R_pred R_trueᵀ)`` for every symmetry rotation ``S``: ``(..., k)``; the largest is the nearest.

    Examples
    --------
    >>> import torch
    >>> S = proper_point_group_matrices("m-3m")
    >>> float(symmetric_traces(torch.eye(3), torch.eye(3), S).max())
    3.0
    """
    import torch

    M = R_pred @ R_true.transpose(-1, -2)
    return torch.einsum("sij,...ji->...s", symmetry.to(M.dtype), M)


def disorientation_deg(R_pred: torch.Tensor, R_true: torch.Tensor, symmetry: torch.Tensor) -> torch.Tensor:
    """The smallest rotation angle (degrees) between two orientations under a crystal symmetry.

    Parameters
    ----------
    R_pred, R_true
        Rotation matrices ``(..., 3, 3)`` (sample to crystal).
    symmetry
        ``(k, 3, 3)`` proper rotations of the crystal (:func:`proper_point_group_matrices`).

    Notes
    -----
    :math:`\\theta = \\min_S \\arccos\\big((\\mathrm{tr}(S R_p R_t^T) - 1) / 2\\big)`.
    Both orientations belong to one phase, so applying ``S`` on one side suffices.

    Examples
    --------
    >>> import math
    >>> import torch
    >>> S = proper_point_group_matrices("m-3m")
    >>> R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.radians(50)]))
    >>> round(float(disorientation_deg(R, torch.eye(3), S)), 3)   # 50 deg about [001] = 40 deg by symmetry
    40.0
    """
    import torch

    traces = symmetric_traces(R_pred, R_true, symmetry).amax(dim=-1)
    cosine = ((traces - 1) / 2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosine))


def rotation_angle_deg(R: torch.Tensor) -> torch.Tensor:
    """Rotation angles (degrees) of matrices ``(..., 3, 3)``, accurate near zero.

    ``arccos((tr R - 1) / 2)`` loses everything below about 0.03 degrees in
    float32 (the cosine rounds to 1); the angle of the quaternion,
    ``2 atan2(|v|, |w|)``, keeps it.

    Examples
    --------
    >>> import math
    >>> import torch
    >>> R = axis_angle_to_matrix(torch.tensor([0.0, 1e-5, 0.0]))
    >>> round(float(rotation_angle_deg(R)) / math.degrees(1e-5), 3)
    1.0
    """
    import torch

    q = matrix_to_quaternion(R)
    return torch.rad2deg(2 * torch.atan2(q[..., 1:].norm(dim=-1), q[..., 0].abs()))


def symmetry_aware_loss(R_pred: torch.Tensor, R_true: torch.Tensor, symmetry: torch.Tensor) -> torch.Tensor:
    """Per-sample loss: the chordal distance ``min_S ||S R_pred - R_true||_F`` (about ``√2 θ`` for small θ).

    The Frobenius distance between rotation matrices is
    :math:`\\sqrt{4 - 4\\cos\\theta} = 2\\sqrt{2}\\sin(\\theta/2)`, so its minimum over
    the symmetry rotations is a monotonic function of the disorientation
    angle; unlike ``arccos`` of the trace it has a bounded gradient at every
    angle but zero, and unlike its square it keeps pulling on small errors
    (an L1-like loss on the angle).

    Examples
    --------
    >>> import math
    >>> import torch
    >>> S = proper_point_group_matrices("m-3m")
    >>> R = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, 0.1]]))
    >>> round(float(symmetry_aware_loss(R, torch.eye(3)[None], S)[0]), 4), round(2 * math.sqrt(2) * math.sin(0.05), 4)
    (0.1414, 0.1414)
    """
    traces = symmetric_traces(R_pred, R_true, symmetry).amax(dim=-1)
    return (2.0 * (3.0 - traces)).clamp_min(1e-10).sqrt()


def reduce_to_fundamental(R: torch.Tensor, symmetry: torch.Tensor, reference: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """The symmetry-equivalent of each rotation closest to ``reference`` (default: the identity).

    With the identity as reference this picks one representative per
    orientation (the one with the smallest rotation angle), so equivalent
    predictions compare and average well.

    Examples
    --------
    >>> import math
    >>> import torch
    >>> S = proper_point_group_matrices("m-3m")
    >>> R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.radians(80)]))
    >>> round(math.degrees(math.acos((float(torch.trace(reduce_to_fundamental(R, S))) - 1) / 2)), 3)
    10.0
    """
    import torch

    ref = torch.eye(3, dtype=R.dtype, device=R.device) if reference is None else reference
    best = symmetric_traces(R, ref.expand_as(R), symmetry).argmax(dim=-1)
    return symmetry.to(R.dtype)[best] @ R
