"""Orientation refinement against a master pattern, and the pattern match that scores an orientation.

A network's orientation is a good first guess; matching the pattern it
implies against the observed one makes it precise and says how much to trust
it. Both patterns are put on the same footing (:func:`flatten_patterns`: the
smooth background removed by subtracting a wide Gaussian blur, then zero mean
and unit norm), so their dot product is the normalised cross-correlation
(NCC), in ``[-1, 1]``.

:func:`refine_orientations` maximises the NCC over a small rotation
``ω`` (``R = exp([ω]ₓ) R₀``, a rotation of the crystal frame) by damped
Gauss-Newton steps on the residual between the two normalised patterns
(``‖ŝ − ô‖² = 2 − 2·NCC``), with the Jacobian from finite differences: each
iteration costs four projections per pattern, batched. A step that lowers
the NCC of a pattern is not taken (its damping grows instead), so the
result is never worse than the start.

Examples
--------
>>> import torch
>>> import numpy as np, torch
>>> from diffraflow.operators.simulate.master_patterns import get_master_pattern
>>> from diffraflow.operators.learning.projector import MasterPatternProjector, detector_directions
>>> from diffraflow.operators.learning.rotations import axis_angle_to_matrix, disorientation_deg, proper_point_group_matrices
>>> projector = MasterPatternProjector(get_master_pattern("ni").data)
>>> dirs = detector_directions((60, 60), [0.421, 0.221, 0.505])
>>> truth = axis_angle_to_matrix(torch.tensor([[0.3, -0.2, 0.5]]))
>>> observed = projector.project(truth, dirs)
>>> start = axis_angle_to_matrix(torch.tensor([[0.0, 0.05, -0.03]])) @ truth        # about 3.3 deg off
>>> refined, ncc = refine_orientations(projector, observed, start, dirs)
>>> S = proper_point_group_matrices("m-3m")
>>> float(disorientation_deg(refined, truth, S)[0]) < 0.1, float(ncc[0]) > 0.99
(True, True)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from diffraflow.operators.learning.rotations import axis_angle_to_matrix

if TYPE_CHECKING:
    import torch

__all__ = ["flatten_patterns", "pattern_ncc", "refine_orientations"]


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from diffraflow.operators.learning._filters import gaussian_blur

    return gaussian_blur(x, sigma)


def flatten_patterns(patterns: torch.Tensor, highpass_sigma: float = 0.1, lowpass_px: float = 0.0) -> torch.Tensor:
    """Patterns ``(n, h, w)`` with the smooth background removed, as zero-mean unit-norm vectors ``(n, h*w)``.

    Parameters
    ----------
    highpass_sigma
        Width of the Gaussian blur subtracted (the background), a fraction of the height; 0 for none.
    lowpass_px
        Width (pixels) of a Gaussian blur applied first (smooths noise and fine
        lines, widening the range over which two patterns still correlate); 0 for none.

    Examples
    --------
    >>> import torch
    >>> v = flatten_patterns(torch.rand(2, 8, 8), lowpass_px=1.0)
    >>> tuple(v.shape), [round(float(x), 4) for x in v.norm(dim=1)]
    ((2, 64), [1.0, 1.0])
    """
    import torch

    x = patterns.to(torch.float32)[:, None]
    if lowpass_px > 0.05:
        x = _blur(x, lowpass_px)
    if highpass_sigma > 0:
        x = x - _blur(x, highpass_sigma * x.shape[-2])
    v = x.reshape(len(x), -1)
    v = v - v.mean(dim=1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pattern_ncc(observed: torch.Tensor, simulated: torch.Tensor, highpass_sigma: float = 0.1,
                lowpass_px: float = 0.0) -> torch.Tensor:
    """Normalised cross-correlation ``(n,)`` of observed and simulated patterns after background removal.

    Examples
    --------
    >>> import torch
    >>> p = torch.rand(3, 10, 10)
    >>> [round(float(v), 4) for v in pattern_ncc(p, 2 * p + 1)]
    [1.0, 1.0, 1.0]
    """
    return (flatten_patterns(observed, highpass_sigma, lowpass_px) *
            flatten_patterns(simulated, highpass_sigma, lowpass_px)).sum(dim=1)


def refine_orientations(projector: Any, observed: torch.Tensor, start: torch.Tensor, directions: torch.Tensor,
                        shape: tuple[int, int] | None = None, iterations: int = 6, step_deg: float = 0.2,
                        highpass_sigma: float = 0.1, max_step_deg: float = 3.0, coarse: float = 0.1,
                        fine: float = 0.012) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine sample-to-crystal rotations ``(n, 3, 3)`` by maximising the NCC with the observed patterns.

    Parameters
    ----------
    projector
        A :class:`~diffraflow.operators.learning.projector.MasterPatternProjector`.
    observed
        ``(n, h, w)`` patterns (any intensity scale; background is removed here).
    start
        ``(n, 3, 3)`` first guesses.
    directions
        :func:`~diffraflow.operators.learning.projector.detector_directions` of the observed patterns.
    shape
        ``(h, w)``; default that of ``observed``.
    iterations
        Gauss-Newton iterations (0: only score ``start``).
    step_deg
        Finite-difference step of the Jacobian, degrees.
    max_step_deg
        Largest rotation one iteration may make (a trust region).
    coarse, fine
        Coarse to fine: the patterns are blurred by ``coarse`` times their
        height (6 pixels of a 60-pixel frame) in the first iteration, which
        widens the basin of convergence to about 5 degrees, and by ``0.6``
        times less in each next one, down to ``fine`` (0.7 pixels of 60);
        the NCC returned is at ``fine``.

    Returns
    -------
    rotations, ncc
        The refined rotations and their NCC ``(n,)``.
    """
    import torch

    size = (int(observed.shape[-2]), int(observed.shape[-1])) if shape is None else (int(shape[0]), int(shape[1]))
    device = projector.device
    observed = observed.to(device)
    R = start.to(device=device, dtype=torch.float32)
    n = len(R)
    damping = torch.full((n,), 1e-3, device=device)
    h = math.radians(step_deg)
    basis = torch.eye(3, device=device) * h
    eye = torch.eye(3, device=device)
    limit = math.radians(max_step_deg)
    height = float(size[0])
    fine_px = float(fine) * height
    for i in range(int(iterations)):
        blur = max(fine_px, float(coarse) * height * 0.6 ** i)
        o = flatten_patterns(observed, highpass_sigma, blur)

        def simulate(rotations: torch.Tensor, blur: float = blur) -> torch.Tensor:
            return flatten_patterns(projector.project(rotations, directions, size), highpass_sigma, blur)

        s = simulate(R)
        ncc = (s * o).sum(dim=1)
        # Jacobian of the normalised simulated pattern with respect to a small crystal-frame rotation.
        J = torch.stack([(simulate(axis_angle_to_matrix(basis[k].expand(n, 3)) @ R) - s) / h for k in range(3)],
                        dim=2)                                             # (n, p, 3)
        JtJ = J.transpose(1, 2) @ J
        g = (J.transpose(1, 2) @ (s - o)[:, :, None])[..., 0]
        scale = torch.diagonal(JtJ, dim1=1, dim2=2).mean(dim=1)[:, None, None] + 1e-9
        omega = -torch.linalg.solve(JtJ + damping[:, None, None] * scale * eye, g[..., None])[..., 0]
        length = omega.norm(dim=1, keepdim=True)
        omega = torch.where(length > limit, omega * (limit / length.clamp_min(1e-12)), omega)
        R_new = axis_angle_to_matrix(omega) @ R
        # A step must gain clearly: a gain within float rounding would make the result depend on how many
        # patterns share the batch (the matrix products round differently).
        better = (simulate(R_new) * o).sum(dim=1) > ncc + 1e-5
        R = torch.where(better[:, None, None], R_new, R)
        damping = torch.where(better, damping * 0.3, damping * 10.0).clamp(1e-6, 1e6)
    o = flatten_patterns(observed, highpass_sigma, fine_px)
    ncc = (flatten_patterns(projector.project(R, directions, size), highpass_sigma, fine_px) * o).sum(dim=1)
    return R, ncc
