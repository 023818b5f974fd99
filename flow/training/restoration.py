"""The restoration jobs: conditional diffusion, supervised and latent restorers of short-exposure patterns.

``train_restoration``
    a conditional U-Net (:class:`~diffraflow.operators.restoration._unet.ConditionalUNet`)
    trained as a **diffusion** denoiser (DDPM training: a random time
    :math:`t`, the clean pattern noised to :math:`x_t`, the short exposure
    concatenated as a channel, MSE on the predicted ``v``/``eps``/``x0``;
    linear or cosine schedule) or, with ``restorer: supervised``, as a plain
    **supervised** denoiser (same backbone, MSE on the clean pattern);
``train_pattern_autoencoder``
    a domain **autoencoder** of clean patterns (the latent space);
``train_latent_restoration``
    a conditional diffusion U-Net on that autoencoder's latent grid; its
    artefact carries the autoencoder, so it restores on its own.

Data. Every job reads a frame-sized ``target`` variable of clean patterns
(``clean_patterns`` of ``diffraflow simulate ebsd --clean-patterns`` or of
:func:`~diffraflow.flow.training.restoration_data.write_restoration_set`,
which varies orientation, projection centre and tilt per pattern). With
``input: synthesise`` (default) the short exposures are drawn afresh from the
clean patterns at every step (:class:`~diffraflow.operators.restoration.degradation.Degradation`:
a dose ladder, backgrounds, gain, contrast, read noise), so a training set of
clean patterns gives unlimited pairs. With ``input: frames`` the cube's own
frames are the short exposures and ``target`` names their long exposures:
**fine-tuning on paired real exposures** (a cube of short exposures with a
variable holding the long exposure of each point), usually from a simulated
model given as ``init``.

Training: AdamW, a linear warm-up then cosine decay of the learning rate,
an exponential moving average (EMA) of the weights that is evaluated and
shipped. An **epoch** is ``steps_per_epoch`` optimiser steps (default: one
pass over the training frames): long trainings checkpoint often. Each epoch
logs ``train_loss`` and, with a hold-out split, the PSNR of the EMA model's
one-step restoration of hold-out patterns at fixed doses
(``holdout_psnr_dose1`` ...), the same patterns and noise every epoch.

Examples
--------
>>> job = build_job("train_restoration", {"channels": [8, 16], "schedule": "cosine"})
>>> job.variables(), job.produces
(('clean_patterns',), 'pattern_restorer')
>>> build_job("train_restoration", {"restorer": "gan"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
diffraflow.schemas.errors.PipelineError: job: train_restoration.restorer: 'gan' is not one of ['diffusion', 'supervised'] (fix: ...)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.flow.jobs import ArtefactContent, Job, JobContext, build_job, param, register_job
from diffraflow.operators.restoration.models import loadable_weights
from diffraflow.schemas.errors import PipelineError, SchemaError

if TYPE_CHECKING:  # torch stays unimported until a job runs
    from diffraflow.operators.restoration._diffusion import NoiseSchedule
    from diffraflow.operators.restoration._unet import PatternAutoencoder

__all__ = ["TrainRestoration", "TrainPatternAutoencoder", "TrainLatentRestoration", "learning_rate", "loadable_weights",
           "AUTOENCODER_KIND", "build_job"]

#: Kind of the autoencoder artefact (what ``train_latent_restoration`` loads).
AUTOENCODER_KIND = "pattern_autoencoder"
_STREAM_DEGRADE = 11  # the job's own RNG stream for synthesised short exposures
_HOLDOUT_SEED = 20_261_201  # fixed: the hold-out noise is the same every epoch and every run
_INPUTS = ("synthesise", "frames")


def learning_rate(step: int, total: int, base: float, warmup: int, schedule: str) -> float:
    """The learning rate at optimiser ``step`` of ``total``: linear warm-up, then cosine to 1 % or constant.

    Examples
    --------
    >>> [round(learning_rate(s, 100, 1.0, 10, "cosine"), 3) for s in (0, 10, 55, 100)]
    [0.1, 1.0, 0.505, 0.01]
    """
    rate = base
    if schedule == "cosine":
        span = max(1, total - warmup)
        progress = min(1.0, max(0.0, (step - warmup) / span))
        rate = base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
    if warmup > 0 and step < warmup:
        rate *= (step + 1) / warmup
    return float(rate)


def _positive(value: Any, where: str, example: str, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value)) and (
        float(value) >= 0 if allow_zero else float(value) > 0)
    if not ok:
        raise PipelineError(where, f"must be {'0 or more' if allow_zero else 'positive'}, got {value!r}",
                            f"e.g. {example}")


def _whole(value: Any, where: str, minimum: int, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PipelineError(where, f"must be a whole number of {minimum} or more, got {value!r}", f"e.g. {example}")


def _widths(value: Any, where: str, example: str) -> None:
    if not isinstance(value, list | tuple) or not value or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 2 for c in value):
        raise PipelineError(where, f"must be a non-empty list of whole numbers of 2 or more, got {value!r}",
                            f"e.g. {example}")


@dataclass(eq=False)
class _PatternJob(Job):
    """What every restoration job shares: data, optimiser, EMA, epochs of a fixed number of steps."""

    produces = "pattern_restorer"

    target: str = param("clean_patterns", doc="frame-sized variable of clean (long-exposure) patterns: the targets")
    input: str = param("synthesise", choices=_INPUTS,
                       doc="synthesise: draw short exposures from the targets at every step; frames: the cube's "
                           "frames are the short exposures (paired real exposures)")
    degradation: dict[str, Any] = param({}, doc="ranges of the synthesised short exposures, [low, high] each: dose (counts/px, "
                                      "log-uniform), background, gain, gamma, read_noise (defaults: "
                                      "operators/restoration/degradation.py)")
    learning_rate: float = param(2e-3, doc="AdamW peak learning rate")
    weight_decay: float = param(0.01, doc="AdamW decoupled weight decay")
    lr_schedule: str = param("cosine", choices=("cosine", "constant"),
                             doc="learning rate after the warm-up: cosine decay to 1 %, or constant")
    warmup_steps: int = param(100, doc="optimiser steps of linear learning-rate warm-up")
    ema_decay: float = param(0.995, doc="decay of the exponential moving average of the weights (0: none); the "
                                        "EMA weights are evaluated and shipped")
    steps_per_epoch: int | None = param(None, doc="optimiser steps per epoch (checkpoint interval); default one "
                                                  "pass over the training frames")
    holdout_doses: list[float] = param([1.0, 2.0, 4.0], doc="doses (counts/px) of the hold-out evaluation")
    holdout_frames: int = param(128, doc="hold-out patterns evaluated after each epoch (at most)")

    def validate(self, where: str) -> None:
        from diffraflow.operators.restoration.degradation import Degradation

        Degradation.from_record(self.degradation, f"{where}.degradation")
        _positive(self.learning_rate, f"{where}.learning_rate", "learning_rate: 0.002")
        _positive(self.weight_decay, f"{where}.weight_decay", "weight_decay: 0.01", allow_zero=True)
        _whole(self.warmup_steps, f"{where}.warmup_steps", 0, "warmup_steps: 100")
        if not (isinstance(self.ema_decay, int | float) and not isinstance(self.ema_decay, bool)
                and 0 <= float(self.ema_decay) < 1):
            raise PipelineError(f"{where}.ema_decay", f"must lie in [0, 1), got {self.ema_decay!r}",
                                "e.g. ema_decay: 0.995 (0 switches the average off)")
        if self.steps_per_epoch is not None:
            _whole(self.steps_per_epoch, f"{where}.steps_per_epoch", 1, "steps_per_epoch: 500")
        if not isinstance(self.holdout_doses, list | tuple) or not self.holdout_doses:
            raise PipelineError(f"{where}.holdout_doses", f"must be a non-empty list, got {self.holdout_doses!r}",
                                "e.g. holdout_doses: [1, 2, 4]")
        for dose in self.holdout_doses:
            _positive(dose, f"{where}.holdout_doses", "holdout_doses: [1, 2, 4]")
        _whole(self.holdout_frames, f"{where}.holdout_frames", 1, "holdout_frames: 128")

    def variables(self) -> tuple[str, ...]:
        return (self.target,)

    def check(self, data: Any) -> None:
        info = data.variables[self.target]
        if not info.frame_sized or tuple(info.per_frame_shape) != tuple(data.spec.det_shape):
            raise SchemaError(f"{data.where}: {self.target}", f"has shape {list(info.per_frame_shape)} per point; "
                              f"targets must be frames of {list(data.spec.det_shape)}",
                              "simulate the training cube with --clean-patterns (or name the long-exposure "
                              "variable as target)")
        if min(data.spec.det_shape) < 8:
            raise SchemaError(f"{data.where}: patterns", f"frames of {list(data.spec.det_shape)} px are too small "
                              "to restore", "train on patterns of 8 px or more")

    # -- shared machinery --------------------------------------------------------------------------
    def _start(self, ctx: JobContext, nets: dict[str, Any]) -> None:
        """Optimiser over ``nets['net']``, an EMA copy, the step counter, the degradation model."""
        import torch
        from diffraflow.operators.restoration.degradation import Degradation

        self.device = torch.device(ctx.device)
        self.net = nets["net"].to(self.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False) if self.ema_decay > 0 else None
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=float(self.learning_rate),
                                           weight_decay=float(self.weight_decay))
        self.step = 0
        self.degrader = Degradation.from_record(self.degradation, "degradation")
        counts = ctx.data.counts()
        per_pass = max(1, math.ceil(counts["train"] / ctx.data.batch_size))
        self.epoch_steps = int(self.steps_per_epoch or per_pass)
        self.total_steps = self.epoch_steps * int(ctx.epochs_total)
        self.frame_shape = [int(v) for v in ctx.data.spec.det_shape]

    def _batches(self, ctx: JobContext, epoch: int) -> Any:
        """The epoch's training batches: passes over the split keyed by ``(epoch, pass)``, ``epoch_steps`` in all."""
        done = 0
        for repeat in range(10 ** 6):
            key = epoch if self.steps_per_epoch is None else epoch * 100_003 + repeat
            for batch in ctx.data.batches("train", key):
                yield batch
                done += 1
                if done >= self.epoch_steps:
                    return
            if self.steps_per_epoch is None:
                return

    def _pair(self, batch: Any, rng: np.random.Generator) -> tuple[Any, Any]:
        """(condition, clean target) of a batch as standardised ``(n, 1, h, w)`` tensors."""
        import torch
        from diffraflow.operators.learning._models import standardise

        clean = np.asarray(batch.labels[self.target], dtype=np.float32)
        if self.input == "synthesise":
            noisy, _ = self.degrader.apply(clean, rng)
        else:
            noisy = np.asarray(batch.frames, dtype=np.float32)
        cond = standardise(torch.from_numpy(noisy).to(self.device))[:, None]
        x0 = standardise(torch.from_numpy(clean).to(self.device))[:, None]
        return cond, x0

    def _optimise(self, loss: Any) -> None:
        rate = learning_rate(self.step, self.total_steps, float(self.learning_rate), int(self.warmup_steps),
                             self.lr_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        if self.ema is not None:
            import torch

            # The average starts short and lengthens, so early epochs are not frozen at the random start.
            decay = min(float(self.ema_decay), (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                for e, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                    e.mul_(decay).add_(p.detach(), alpha=1 - decay)
                for e, b in zip(self.ema.buffers(), self.net.buffers(), strict=True):
                    e.copy_(b)

    @property
    def shipped(self) -> Any:
        """The network that is evaluated and shipped: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.net

    def run_epoch(self, ctx: JobContext, epoch: int) -> dict[str, Any]:
        self.net.train()
        rng = ctx.rng(epoch, _STREAM_DEGRADE)
        total, loss_sum = 0, 0.0
        for batch in self._batches(ctx, epoch):
            cond, x0 = self._pair(batch, rng)
            loss = self._loss(cond, x0)
            self._optimise(loss)
            total += len(batch)
            loss_sum += float(loss.detach()) * len(batch)
            ctx.advance(len(batch))
        metrics: dict[str, Any] = {"train_loss": loss_sum / max(total, 1), "steps": self.step}
        if ctx.data.counts()["holdout"]:
            metrics.update(self.evaluate(ctx))
        return metrics

    def _holdout_arrays(self, ctx: JobContext) -> tuple[np.ndarray, np.ndarray]:
        """The first ``holdout_frames`` hold-out frames and their targets (always the same ones)."""
        frames, clean = [], []
        held = 0
        for batch in ctx.data.batches("holdout"):
            frames.append(np.asarray(batch.frames, dtype=np.float32))
            clean.append(np.asarray(batch.labels[self.target], dtype=np.float32))
            held += len(batch)
            if held >= self.holdout_frames:
                break
        return np.concatenate(frames)[: self.holdout_frames], np.concatenate(clean)[: self.holdout_frames]

    def _holdout_pairs(self, ctx: JobContext) -> list[tuple[str, Any, Any]]:
        """(label, condition, target) of the hold-out evaluation: fixed patterns, fixed noise."""
        import torch
        from diffraflow.operators.learning._models import standardise
        from diffraflow.operators.restoration.degradation import Degradation

        frames, target = self._holdout_arrays(ctx)
        x0 = standardise(torch.from_numpy(target).to(self.device))[:, None]
        if self.input == "frames":
            return [("", standardise(torch.from_numpy(frames).to(self.device))[:, None], x0)]
        pairs = []
        middle = {k: [0.5 * (lo + hi)] * 2 for k, (lo, hi) in self.degrader.record().items() if k != "dose"}
        for dose in self.holdout_doses:
            fixed = Degradation.from_record({**middle, "dose": [float(dose), float(dose)]}, "holdout")
            noisy, _ = fixed.apply(target, np.random.default_rng([_HOLDOUT_SEED, int(round(1000 * dose))]))
            pairs.append((f"_dose{dose:g}", standardise(torch.from_numpy(noisy).to(self.device))[:, None], x0))
        return pairs

    def evaluate(self, ctx: JobContext) -> dict[str, float]:
        """Hold-out PSNR (dB) of the shipped network's one-step restoration, per hold-out dose."""
        import torch
        from diffraflow.operators.restoration.metrics import psnr

        out: dict[str, float] = {}
        net = self.shipped
        net.eval()
        with torch.no_grad():
            for label, cond, x0 in self._holdout_pairs(ctx):
                restored = torch.cat([self._predict(net, cond[i:i + 64]) for i in range(0, len(cond), 64)])
                value = psnr(restored[:, 0].cpu().numpy(), x0[:, 0].cpu().numpy())
                out[f"holdout_psnr{label}"] = float(np.mean(value))
        self.net.train()
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: Any) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def _weights(self, prefix: str, net: Any) -> dict[str, np.ndarray]:
        return {f"{prefix}{k}": v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}

    # -- per job ------------------------------------------------------------------------------------
    def _loss(self, cond: Any, x0: Any) -> Any:
        raise NotImplementedError

    def _predict(self, net: Any, cond: Any) -> Any:
        raise NotImplementedError


@dataclass(eq=False)
class _DiffusionParams(_PatternJob):
    schedule: str = param("linear", choices=("linear", "cosine"), doc="noise schedule of the diffusion")
    timesteps: int = param(1000, doc="diffusion steps T")
    prediction: str = param("v", choices=("v", "eps", "x0"),
                            doc="what the network predicts: v (default; well posed at every t), eps (the seed's "
                                "noise prediction; no one-step sampler) or x0")
    direct_fraction: float = param(0.25, doc="share of training samples drawn at the last time T, where the "
                                             "network must restore from the condition alone (the one-step sampler)")
    default_sampler: str = param("direct", choices=("direct", "ddim", "ddpm"),
                                 doc="the sampler restore_patterns uses with sampler: auto")

    def _check_diffusion(self, where: str) -> None:
        _whole(self.timesteps, f"{where}.timesteps", 2, "timesteps: 1000")
        if not (isinstance(self.direct_fraction, int | float) and 0 <= float(self.direct_fraction) <= 1):
            raise PipelineError(f"{where}.direct_fraction", f"must lie in [0, 1], got {self.direct_fraction!r}",
                                "e.g. direct_fraction: 0.25")
        if self.prediction == "eps" and self.default_sampler == "direct":
            raise PipelineError(f"{where}.default_sampler", "an eps-predicting model has no one-step sampler",
                                "use default_sampler: ddim, or prediction: v")

    def _use_schedule(self, schedule: NoiseSchedule, prediction: str) -> None:
        """The diffusion this job trains (its own, or an ``init`` model's)."""
        self.noise_schedule = schedule
        self.prediction = prediction

    def _diffusion_loss(self, net: Any, x0: Any, cond: Any) -> Any:
        import torch
        from torch.nn import functional

        n = x0.shape[0]
        t = torch.randint(0, int(self.timesteps), (n,), device=self.device)
        last = torch.rand(n, device=self.device) < float(self.direct_fraction)
        t = torch.where(last, torch.full_like(t, int(self.timesteps) - 1), t)
        noise = torch.randn_like(x0)
        x_t = self.noise_schedule.q_sample(x0, t, noise)
        out = net(torch.cat([x_t, cond], dim=1), t.to(torch.float32))
        return functional.mse_loss(out, self.noise_schedule.target(x0, noise, t, self.prediction))

    def _diffusion_direct(self, net: Any, cond: Any, latent_shape: tuple[int, ...]) -> Any:
        """One-step estimate of x0 from pure noise (``eps`` models: 10 DDIM steps), fixed noise."""
        from diffraflow.operators.restoration._diffusion import FrameNoise, sample

        def model(x_t: Any, t: Any) -> Any:
            import torch

            return net(torch.cat([x_t, cond], dim=1), t)

        noise = FrameNoise(_HOLDOUT_SEED, range(cond.shape[0]), latent_shape, self.device)
        sampler = "ddim" if self.prediction == "eps" else "direct"
        return sample(model, self.noise_schedule, self.prediction, noise, sampler, 10)


@register_job
@dataclass(eq=False)
class TrainRestoration(_DiffusionParams):
    """Train a conditional diffusion U-Net (or, ``restorer: supervised``, a plain U-Net) to restore patterns.

    Parameters
    ----------
    restorer
        ``diffusion`` or ``supervised``.
    channels, attention, patch, radon
        The U-Net: widths per level, self-attention on the coarsest grid,
        pixels folded into channels at the input, band evidence maps of a
        Radon-domain branch (:class:`~diffraflow.operators.restoration._unet.RadonBranch`).
    init
        A restoration artefact to start from (fine-tuning); its network
        (restorer, channels, attention, patch, radon, schedule, prediction) is used.
    schedule, timesteps, prediction, direct_fraction, default_sampler
        The diffusion (ignored by a supervised restorer).

    Notes
    -----
    Diffusion training (Ho et al. 2020) with the short exposure concatenated
    as a channel (Saharia et al. 2022): each sample draws :math:`t`
    uniformly (or, with probability ``direct_fraction``, the last time, so
    the one-step sampler is trained as much as it is used), noises the clean
    pattern to :math:`x_t` and regresses the network's output on its target
    (:meth:`~diffraflow.operators.restoration._diffusion.NoiseSchedule.target`).
    """

    name = "train_restoration"

    restorer: str = param("diffusion", choices=("diffusion", "supervised"),
                          doc="diffusion: conditional diffusion U-Net; supervised: the same U-Net trained with MSE "
                              "on the clean pattern")
    channels: list[int] = param([32, 64, 64], doc="U-Net widths per level (the frame halves between levels)")
    attention: bool = param(True, doc="self-attention over the coarsest grid")
    patch: int = param(2, doc="pixels folded into channels at the input (1: none; 2 quarters the cost)")
    radon: int = param(4, doc="band evidence maps from a Radon-domain branch added to the input (0: none)")
    init: str | None = param(None, doc="restoration artefact to fine-tune (its network is used)")

    def validate(self, where: str) -> None:
        super().validate(where)
        _widths(self.channels, f"{where}.channels", "channels: [32, 64, 64]")
        _whole(self.patch, f"{where}.patch", 1, "patch: 2")
        _whole(self.radon, f"{where}.radon", 0, "radon: 4")
        if self.restorer == "diffusion":
            self._check_diffusion(where)

    def setup(self, ctx: JobContext) -> None:
        from diffraflow.operators.learning._models import build_model
        from diffraflow.operators.restoration._diffusion import NoiseSchedule
        from diffraflow.operators.restoration._restorer import unet_record

        record: dict[str, Any] = {
            "architecture": "pattern_restorer", "restorer": self.restorer,
            "channels": [int(c) for c in self.channels], "attention": bool(self.attention), "patch": int(self.patch),
            "radon": int(self.radon), "frame_shape": [int(v) for v in ctx.data.spec.det_shape],
            "input": "short exposure, standardised per frame", "output": "clean pattern, standardised per frame",
            "training_input": self.input,
        }
        if self.restorer == "diffusion":
            record.update(schedule=NoiseSchedule(self.schedule, self.timesteps).record(),
                          prediction=self.prediction, default_sampler=self.default_sampler)
        init_weights = None
        if self.init:
            init_weights, record = self._from_init(record)
        if self.input == "synthesise":
            from diffraflow.operators.restoration.degradation import Degradation

            record["degradation"] = Degradation.from_record(self.degradation, "degradation").record()
        self.record = record
        if record["restorer"] == "diffusion":
            self._use_schedule(NoiseSchedule.from_record(record["schedule"]), str(record["prediction"]))
        net = build_model(unet_record(record), where=ctx.where)
        if init_weights is not None:
            net.load_state_dict(init_weights)
        self._start(ctx, {"net": net})

    def _from_init(self, record: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        import torch
        from diffraflow.operators.learning.artefact import load_artefact
        from diffraflow.operators.restoration.restore_patterns import RESTORER_KIND

        art = load_artefact(self.init, kind=RESTORER_KIND)  # type: ignore[arg-type]
        old = art.model
        if old.get("restorer") != self.restorer:
            raise PipelineError(f"{self.name}.init", f"{self.init} is a {old.get('restorer')} model, this job "
                                f"trains a {self.restorer} one", f"set restorer: {old.get('restorer')}")
        keep = ("channels", "attention", "patch", "radon", "schedule", "prediction", "default_sampler")
        record = {**record, **{k: old[k] for k in keep if k in old},
                  "init": {"path": str(art.path), "sha256": art.content_hash}}
        weights = {k[4:]: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in art.weights.items()
                   if k.startswith("net.")}
        return weights, record

    def _loss(self, cond: Any, x0: Any) -> Any:
        from torch.nn import functional

        if self.record["restorer"] == "supervised":
            return functional.mse_loss(self.net(cond), x0)
        return self._diffusion_loss(self.net, x0, cond)

    def _predict(self, net: Any, cond: Any) -> Any:
        if self.record["restorer"] == "supervised":
            return net(cond)
        return self._diffusion_direct(net, cond, tuple(cond.shape[1:]))

    def artefact(self) -> ArtefactContent:
        from diffraflow.operators.restoration._unet import count_parameters

        model = {**self.record, "parameters": count_parameters(self.net)}
        return ArtefactContent(weights=loadable_weights(self._weights("net.", self.shipped)), model=model)


@register_job
@dataclass(eq=False)
class TrainPatternAutoencoder(_PatternJob):
    """Train a convolutional autoencoder of clean patterns: the latent space of ``train_latent_restoration``.

    Parameters
    ----------
    channels
        Widths of the stride-2 stages (each halves the frame: 2 stages, 4 times smaller per side).
    latent_channels
        Channels of the latent grid.

    Notes
    -----
    The loss is the MSE of the reconstructed standardised pattern. The
    artefact records the standard deviation of the latents over the last
    epoch's batches (``latent_std``): the latent diffusion works on latents
    scaled to unit variance.
    """

    name = "train_pattern_autoencoder"
    produces = AUTOENCODER_KIND

    channels: list[int] = param([32, 64], doc="widths of the stride-2 stages (each halves the frame)")
    latent_channels: int = param(4, doc="channels of the latent grid")

    def validate(self, where: str) -> None:
        super().validate(where)
        _widths(self.channels, f"{where}.channels", "channels: [32, 64]")
        _whole(self.latent_channels, f"{where}.latent_channels", 1, "latent_channels: 4")

    def setup(self, ctx: JobContext) -> None:
        from diffraflow.operators.learning._models import build_model
        from diffraflow.operators.restoration import _unet  # noqa: F401  (registers the autoencoder)

        self.record = {"architecture": "pattern_autoencoder", "autoencoder_channels": [int(c) for c in self.channels],
                       "latent_channels": int(self.latent_channels),
                       "frame_shape": [int(v) for v in ctx.data.spec.det_shape],
                       "input": "clean pattern, standardised per frame"}
        self._start(ctx, {"net": build_model(self.record, where=ctx.where)})
        self._latent_moments = [0.0, 0.0, 0]

    def _pair(self, batch: Any, rng: np.random.Generator) -> tuple[Any, Any]:
        import torch
        from diffraflow.operators.learning._models import standardise

        clean = np.asarray(batch.labels[self.target], dtype=np.float32)
        x0 = standardise(torch.from_numpy(clean).to(self.device))[:, None]
        return x0, x0

    def run_epoch(self, ctx: JobContext, epoch: int) -> dict[str, Any]:
        self._latent_moments = [0.0, 0.0, 0]
        return super().run_epoch(ctx, epoch)

    def _loss(self, cond: Any, x0: Any) -> Any:
        from torch.nn import functional

        z = self.net.encode(x0)
        with_grad = self.net.decode(z, (int(x0.shape[-2]), int(x0.shape[-1])))
        detached = z.detach().double()
        self._latent_moments[0] += float(detached.sum())
        self._latent_moments[1] += float((detached ** 2).sum())
        self._latent_moments[2] += int(detached.numel())
        return functional.mse_loss(with_grad, x0)

    def _holdout_pairs(self, ctx: JobContext) -> list[tuple[str, Any, Any]]:
        import torch
        from diffraflow.operators.learning._models import standardise

        x0 = standardise(torch.from_numpy(self._holdout_arrays(ctx)[1]).to(self.device))[:, None]
        return [("", x0, x0)]

    def _predict(self, net: Any, cond: Any) -> Any:
        return net(cond)

    def latent_std(self) -> float:
        """Standard deviation of the latents seen in the last epoch (1 before any)."""
        s, s2, n = self._latent_moments
        if n == 0:
            return 1.0
        return float(math.sqrt(max(s2 / n - (s / n) ** 2, 1e-12)))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "latent_moments": [float(v) for v in self._latent_moments]}

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        moments = state.get("latent_moments", [0.0, 0.0, 0])
        self._latent_moments = [float(moments[0]), float(moments[1]), int(moments[2])]

    def artefact(self) -> ArtefactContent:
        # The spread of the training encoder's latents over the last epoch: close to the shipped (EMA)
        # encoder's, and deterministic.
        record = {**self.record, "latent_std": self.latent_std()}
        return ArtefactContent(weights=loadable_weights(self._weights("net.", self.shipped)), model=record)


@register_job
@dataclass(eq=False)
class TrainLatentRestoration(_DiffusionParams):
    """Train a conditional diffusion U-Net in the latent space of a pattern autoencoder.

    Parameters
    ----------
    autoencoder
        The ``train_pattern_autoencoder`` artefact (its weights go into this artefact).
    channels, attention
        The latent U-Net.

    Notes
    -----
    Latents :math:`z_0 = E(x_0)/\\sigma_z` of the clean patterns are noised
    as in pixel space; the condition is the short exposure folded into
    channels at the latent resolution (space-to-depth: lossless, unlike an
    encoder trained on clean patterns). Restoration samples :math:`z_0` and
    decodes :math:`D(\\sigma_z z_0)`.
    """

    name = "train_latent_restoration"

    autoencoder: str = param(doc="pattern autoencoder artefact (train_pattern_autoencoder)", kw_only=True)
    channels: list[int] = param([64, 64], doc="latent U-Net widths per level")
    attention: bool = param(True, doc="self-attention over the coarsest latent grid")

    def validate(self, where: str) -> None:
        super().validate(where)
        _widths(self.channels, f"{where}.channels", "channels: [64, 64]")
        self._check_diffusion(where)
        if not isinstance(self.autoencoder, str) or not self.autoencoder:
            raise PipelineError(f"{where}.autoencoder", f"must be an artefact path, got {self.autoencoder!r}",
                                "train one with job train_pattern_autoencoder")

    def setup(self, ctx: JobContext) -> None:
        import torch
        from diffraflow.operators.learning._models import build_model
        from diffraflow.operators.learning.artefact import load_artefact
        from diffraflow.operators.restoration._diffusion import NoiseSchedule
        from diffraflow.operators.restoration._restorer import unet_record

        art = load_artefact(self.autoencoder, kind=AUTOENCODER_KIND)
        ae_record = {k: v for k, v in art.model.items() if k != "architecture"}
        from diffraflow.operators.restoration._unet import PatternAutoencoder

        ae = build_model(art.model, where=str(art.path))
        if not isinstance(ae, PatternAutoencoder):
            raise PipelineError(f"{self.name}.autoencoder", f"{art.path} does not hold a pattern autoencoder",
                                "train one with job train_pattern_autoencoder")
        self.ae: PatternAutoencoder = ae
        own = {k[len("net."):]: np.array(v, dtype=np.float32) for k, v in art.weights.items() if k.startswith("net.")}
        self.ae.load_state_dict({k: torch.from_numpy(v) for k, v in own.items()})
        self.ae.eval().requires_grad_(False).to(torch.device(ctx.device))
        self.ae_weights = {f"autoencoder.{k}": v for k, v in own.items()}
        self._use_schedule(NoiseSchedule(self.schedule, self.timesteps), self.prediction)
        self.record = {
            "architecture": "pattern_restorer", "restorer": "latent_diffusion",
            "channels": [int(c) for c in self.channels], "attention": bool(self.attention), "patch": 1,
            "schedule": self.noise_schedule.record(), "prediction": self.prediction,
            "default_sampler": self.default_sampler, "frame_shape": [int(v) for v in ctx.data.spec.det_shape],
            "autoencoder": {**ae_record, "sha256": art.content_hash},
            "input": "short exposure, standardised per frame", "output": "clean pattern, standardised per frame",
            "training_input": self.input,
        }
        if self.input == "synthesise":
            from diffraflow.operators.restoration.degradation import Degradation

            self.record["degradation"] = Degradation.from_record(self.degradation, "degradation").record()
        self._start(ctx, {"net": build_model(unet_record(self.record), where=ctx.where)})
        self.scale = float(ae_record.get("latent_std", 1.0))

    def _fold(self, cond: Any) -> Any:
        from diffraflow.operators.restoration._unet import pad_to_multiple, space_to_depth

        padded, _ = pad_to_multiple(cond, self.ae.factor)
        return space_to_depth(padded, self.ae.factor)

    def _loss(self, cond: Any, x0: Any) -> Any:
        import torch

        with torch.no_grad():
            z0 = self.ae.encode(x0) / self.scale
        return self._diffusion_loss(self.net, z0, self._fold(cond))

    def _predict(self, net: Any, cond: Any) -> Any:
        folded = self._fold(cond)
        size = (int(cond.shape[-2]), int(cond.shape[-1]))
        shape = (self.ae.latent_channels, *self.ae.latent_shape(size))
        z0 = self._diffusion_direct(net, folded, shape)
        return self.ae.decode(z0 * self.scale, size)

    def artefact(self) -> ArtefactContent:
        from diffraflow.operators.restoration._unet import count_parameters

        model = {**self.record, "parameters": count_parameters(self.net) + count_parameters(self.ae)}
        return ArtefactContent(weights=loadable_weights({**self._weights("net.", self.shipped), **self.ae_weights}),
                               model=model)
