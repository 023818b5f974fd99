"""Gaussian diffusion for conditional restoration: noise schedules, training targets and samplers.

The forward process noises a clean pattern :math:`x_0` to

.. math::

    x_t = \\sqrt{\\bar\\alpha_t}\\, x_0 + \\sqrt{1 - \\bar\\alpha_t}\\, \\epsilon,
    \\qquad \\bar\\alpha_t = \\prod_{s \\le t} (1 - \\beta_s),

with a **linear** :math:`\\beta` schedule (Ho et al. 2020, the seed's
choice) or a **cosine** one (Nichol & Dhariwal 2021,
:math:`\\bar\\alpha_t \\propto \\cos^2(\\tfrac{t/T + s}{1 + s}\\tfrac{\\pi}{2})`).
The network, given :math:`x_t`, the condition and :math:`t`, predicts one of

* ``eps``: the noise :math:`\\epsilon` (the seed's parameterisation);
* ``x0``: the clean pattern itself;
* ``v``: :math:`v = \\sqrt{\\bar\\alpha_t}\\,\\epsilon - \\sqrt{1-\\bar\\alpha_t}\\,x_0`
  (Salimans & Ho 2022), well posed at every :math:`t`, including the last,
  where :math:`x_t` is pure noise and ``eps`` says nothing about :math:`x_0`.

Samplers (all take ``steps``; fewer steps visit an evenly spaced subset of
the training times):

``ddpm``
    ancestral sampling (Ho et al. 2020, eq. 4 of the seed), stochastic,
    with the posterior variance of the respaced chain.
``ddim``
    the deterministic implicit sampler (Song et al. 2021, eq. 5 of the seed),
    ``eta > 0`` adds DDPM-like noise.
``direct``
    one network call at the last time :math:`T`: the model's estimate of
    :math:`x_0` from the condition alone (its conditional mean), the
    one-step production sampler.

Noise is drawn per frame from a generator seeded by ``(seed, frame index)``
(:class:`FrameNoise`), so a frame's restoration never depends on the batch
or chunk it was processed in.

Examples
--------
>>> import torch
>>> s = NoiseSchedule("cosine", 100)
>>> round(float(s.alphas_cumprod[0]), 4), float(s.alphas_cumprod[-1]) < 1e-3
(0.9994, True)
>>> x0, eps, t = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.tensor([0, 99])
>>> v = s.target(x0, eps, t, "v")
>>> torch.allclose(s.split(v, s.q_sample(x0, t, eps), t, "v")[0], x0, atol=1e-5)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["NoiseSchedule", "FrameNoise", "sample", "SCHEDULES", "PREDICTIONS", "SAMPLERS", "sampling_times"]

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("v", "eps", "x0")
SAMPLERS = ("direct", "ddim", "ddpm")


class NoiseSchedule:
    """The :math:`\\beta_t` and :math:`\\bar\\alpha_t` of a diffusion of ``timesteps`` steps.

    Parameters
    ----------
    kind
        ``linear`` (:math:`\\beta` from ``beta_start`` to ``beta_end``) or ``cosine``.
    timesteps
        :math:`T`.
    beta_start, beta_end
        Ends of the linear schedule (the seed's: 1e-4 and 0.02 over 1000 steps).

    Examples
    --------
    >>> s = NoiseSchedule("linear", 1000)
    >>> round(float(s.betas[0]), 6), round(float(s.betas[-1]), 6)
    (0.0001, 0.02)
    """

    def __init__(self, kind: str = "linear", timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"schedule {kind!r} is not one of {', '.join(SCHEDULES)}")
        self.kind, self.timesteps = kind, int(timesteps)
        if kind == "linear":
            # Scaled with T so that a shorter chain ends as close to pure noise as the seed's 1000 steps.
            scale = 1000.0 / self.timesteps
            betas = np.linspace(beta_start * scale, min(beta_end * scale, 0.999), self.timesteps, dtype=np.float64)
        else:
            s = 0.008
            steps = np.arange(self.timesteps + 1, dtype=np.float64) / self.timesteps
            f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            betas = np.clip(1 - f[1:] / f[:-1], 0.0, 0.999)
        self.betas = betas
        self.alphas_cumprod = np.cumprod(1.0 - betas)

    def record(self) -> dict[str, Any]:
        """What a loader needs to rebuild the schedule.

        Examples
        --------
        >>> NoiseSchedule("cosine", 50).record()
        {'kind': 'cosine', 'timesteps': 50}
        """
        return {"kind": self.kind, "timesteps": self.timesteps}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> NoiseSchedule:
        """Rebuild from :meth:`record`.

        Examples
        --------
        >>> NoiseSchedule.from_record({"kind": "linear", "timesteps": 10}).timesteps
        10
        """
        return cls(str(record["kind"]), int(record["timesteps"]))

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        table = torch.as_tensor(self.alphas_cumprod, dtype=torch.float32, device=like.device)
        return table[t.to(like.device).long()].reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """:math:`x_t` from :math:`x_0`, the times ``t`` (``(n,)`` whole numbers) and the noise."""
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """What the network learns to output for ``prediction`` (``v``, ``eps`` or ``x0``)."""
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        a = self._abar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def split(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The estimates :math:`(\\hat x_0, \\hat\\epsilon)` implied by a network output at ``x_t``."""
        a = self._abar(t, x_t)
        sa, s1 = a.sqrt(), (1 - a).sqrt()
        if prediction == "eps":
            x0 = (x_t - s1 * out) / sa.clamp_min(1e-4)
            return x0, out
        if prediction == "x0":
            return out, (x_t - sa * out) / s1.clamp_min(1e-4)
        return sa * x_t - s1 * out, s1 * x_t + sa * out


def sampling_times(timesteps: int, steps: int) -> list[int]:
    """The training times a sampler of ``steps`` steps visits, from the last (``T - 1``) down.

    Examples
    --------
    >>> sampling_times(1000, 4)
    [999, 666, 333, 0]
    >>> sampling_times(10, 1)
    [9]
    """
    steps = max(1, min(int(steps), int(timesteps)))
    if steps == 1:
        return [timesteps - 1]
    return [int(round(v)) for v in np.linspace(timesteps - 1, 0, steps)]


class FrameNoise:
    """Standard normal noise drawn per frame from ``(seed, frame index)``: independent of batching.

    Examples
    --------
    >>> a = FrameNoise(0, [5, 6], (1, 2, 2))
    >>> b = FrameNoise(0, [6], (1, 2, 2))
    >>> torch.equal(a.draw()[1], b.draw()[0])
    True
    """

    def __init__(self, seed: int, indices: Sequence[int], shape: tuple[int, ...],
                 device: Any = "cpu") -> None:
        self.generators = [np.random.default_rng([int(seed), int(i)]) for i in indices]
        self.shape = tuple(int(s) for s in shape)
        self.device = device

    def draw(self) -> torch.Tensor:
        """The next ``(n, *shape)`` draw (each frame's generator advances by one frame)."""
        if not self.generators:
            return torch.zeros((0, *self.shape), device=self.device)
        noise = np.stack([g.standard_normal(self.shape, dtype=np.float32) for g in self.generators])
        return torch.from_numpy(noise).to(self.device)


def sample(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: NoiseSchedule,
           prediction: str, noise: FrameNoise, sampler: str = "direct", steps: int | None = None,
           eta: float = 0.0, clip: float | None = None) -> torch.Tensor:
    """Run a sampler from pure noise to an estimate of :math:`x_0`.

    Parameters
    ----------
    model
        ``model(x_t, t) -> output`` with the condition bound in (``t``: ``(n,)`` float times).
    schedule, prediction
        The diffusion the model was trained on.
    noise
        Where every random draw comes from (:class:`FrameNoise`).
    sampler
        ``direct`` (one step), ``ddim`` or ``ddpm``.
    steps
        Network calls (default: 1 for direct, 10 for ddim, ``T`` for ddpm).
    eta
        DDIM's stochasticity (0: deterministic).
    clip
        Clamp each :math:`\\hat x_0` to ``[-clip, clip]`` (None: no clamp).

    Examples
    --------
    >>> s = NoiseSchedule("cosine", 20)
    >>> target = torch.full((2, 1, 3, 3), 0.5)
    >>> oracle = lambda x, t: s.target(target, (x - s._abar(t, x).sqrt() * target) / (1 - s._abar(t, x)).sqrt(), t, "v")
    >>> out = sample(oracle, s, "v", FrameNoise(0, [0, 1], (1, 3, 3)), "ddim", steps=5)
    >>> torch.allclose(out, target, atol=1e-3)
    True
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if sampler == "direct":
        steps = 1
    elif steps is None:
        steps = 10 if sampler == "ddim" else schedule.timesteps
    times = sampling_times(schedule.timesteps, int(steps))
    abar = schedule.alphas_cumprod
    x = noise.draw()
    n = x.shape[0]
    x0 = x
    for i, t in enumerate(times):
        t_vec = torch.full((n,), float(t), device=x.device)
        x0, eps = schedule.split(model(x, t_vec), x, t_vec, prediction)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        if i == len(times) - 1:
            break
        t_prev = times[i + 1]
        a_t, a_prev = float(abar[t]), float(abar[t_prev])
        if sampler == "ddim":
            sigma = eta * math.sqrt(max(0.0, (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)))
            # Recompute the noise direction from the (possibly clipped) x0 so both stay consistent.
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(max(1 - a_t, 1e-12))
            x = math.sqrt(a_prev) * x0 + math.sqrt(max(0.0, 1 - a_prev - sigma ** 2)) * eps
            if sigma > 0:
                x = x + sigma * noise.draw()
        else:
            beta = 1 - a_t / a_prev  # the respaced chain's beta between the two visited times
            mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x
            var = beta * (1 - a_prev) / (1 - a_t)
            x = mean + math.sqrt(max(var, 0.0)) * noise.draw()
    return x0
