"""The networks of pattern restoration: a lean conditional U-Net and a pattern autoencoder (plain torch).

:class:`ConditionalUNet` is one backbone for every restorer:

* the **diffusion** denoiser sees ``[x_t, condition]`` (the noisy sample of
  the diffusion chain and the short-exposure pattern, concatenated as
  channels) and the diffusion time ``t`` through a sinusoidal embedding that
  adds a learned bias inside every residual block;
* the **supervised** baseline is the same network without ``x_t`` and
  without time: it maps the short-exposure pattern to the clean one (MSE);
* the **latent** denoiser is the same network on the autoencoder's latent
  grid, conditioned on the short-exposure pattern folded into channels
  (space-to-depth, so no information is lost to a learned encoder).

Layout: a stem convolution, then per level one residual block (GroupNorm,
SiLU, 3x3 convolutions) and a stride-2 convolution; a middle of two residual
blocks around an optional self-attention over the coarsest grid (a Kikuchi
band crosses the whole pattern, so the coarsest features must see all of it);
the decoder mirrors the encoder with skip connections. Frames of any size are
reflect-padded to a multiple of the total stride and cropped back.

:class:`PatternAutoencoder` compresses a pattern ``2**depth`` times per side
into a few latent channels (strided convolutions with residual blocks, a
mirror decoder); trained on clean patterns by
``train_pattern_autoencoder``, it is the latent space of the latent restorer.

The builders register with :func:`diffraflow.operators.learning._models.register_architecture`,
so a job and the operator rebuild the same network from the artefact's model record.

Examples
--------
>>> import torch
>>> net = ConditionalUNet(in_channels=2, channels=(8, 16), time_embedding=True)
>>> net(torch.zeros(3, 2, 30, 22), torch.full((3,), 10.0)).shape
torch.Size([3, 1, 30, 22])
>>> ae = PatternAutoencoder(channels=(8, 16), latent_channels=4)
>>> ae.encode(torch.zeros(2, 1, 60, 60)).shape, ae.decode(ae.encode(torch.zeros(2, 1, 60, 60))).shape
(torch.Size([2, 4, 15, 15]), torch.Size([2, 1, 60, 60]))
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffraflow.operators.learning._models import register_architecture
from torch import nn
from torch.nn import functional

__all__ = ["ConditionalUNet", "PatternAutoencoder", "RadonBranch", "radon_matrices", "timestep_embedding",
           "pad_to_multiple", "space_to_depth", "count_parameters"]


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 when they divide the channels (4 channels a group or more), else fewer."""
    for g in (8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(n, dim)`` of diffusion times ``t`` ``(n,)`` (any real values).

    Examples
    --------
    >>> timestep_embedding(torch.tensor([0.0, 5.0]), 6).shape
    torch.Size([2, 6])
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = functional.pad(emb, (0, 1))
    return emb


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the last two axes up to a multiple of ``multiple``; returns the padded tensor and the old size.

    Reflection (not zeros) keeps the border statistics of a pattern, so the
    network sees no artificial edge.

    Examples
    --------
    >>> y, size = pad_to_multiple(torch.zeros(1, 1, 60, 61), 8)
    >>> tuple(y.shape), size
    ((1, 1, 64, 64), (60, 61))
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = functional.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Fold ``factor x factor`` pixel blocks into channels: ``(n, c, h, w) -> (n, c f^2, h/f, w/f)``.

    Examples
    --------
    >>> space_to_depth(torch.arange(16.0).reshape(1, 1, 4, 4), 2)[0, :, 0, 0].tolist()
    [0.0, 1.0, 4.0, 5.0]
    """
    return functional.pixel_unshuffle(x, factor)


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters of a network.

    Examples
    --------
    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def radon_matrices(shape: tuple[int, int], n_angles: int,
                   device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Sparse line-mean Radon transform of ``shape`` frames and its back-projection, as matrices.

    Each pixel at ``(u, v)`` from the frame centre lies on the line
    :math:`\\rho = u\\cos\\theta + v\\sin\\theta` of every angle; its value is
    split linearly between the two nearest unit ``rho`` bins, and each bin is
    divided by the share of pixels it received (a mean along the line, so
    long and short lines compare). The back-projection spreads each bin back
    over its pixels, averaged over the angles.

    Returns
    -------
    forward : torch.Tensor
        Sparse CSR ``(n_angles * n_rho, h * w)``.
    backward : torch.Tensor
        Sparse CSR ``(h * w, n_angles * n_rho)``.
    grid : tuple
        ``(n_angles, n_rho)``.

    Examples
    --------
    >>> fwd, bwd, grid = radon_matrices((6, 8), 4)
    >>> grid, tuple(fwd.shape), tuple(bwd.shape)
    ((4, 11), (44, 48), (48, 44))
    >>> line = (fwd @ torch.ones(48, 1)).reshape(grid)
    >>> bool(torch.allclose(line[line > 0], torch.ones(1)))
    True
    """
    import numpy as np

    h, w = int(shape[0]), int(shape[1])
    half = math.hypot(h, w) / 2
    n_rho = 2 * int(math.ceil(half)) + 1
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = (u - (w - 1) / 2).ravel(), (v - (h - 1) / 2).ravel()
    theta = np.arange(int(n_angles)) * math.pi / int(n_angles)
    rho = u[None] * np.cos(theta)[:, None] + v[None] * np.sin(theta)[:, None] + n_rho // 2
    low = np.floor(rho).astype(np.int64)
    frac = rho - low
    angle = np.repeat(np.arange(int(n_angles)), h * w)
    pixel = np.tile(np.arange(h * w), int(n_angles))
    rows = np.concatenate([angle * n_rho + low.ravel(), angle * n_rho + low.ravel() + 1])
    cols = np.concatenate([pixel, pixel])
    vals = np.concatenate([(1 - frac).ravel(), frac.ravel()])
    counts = np.bincount(rows, weights=vals, minlength=int(n_angles) * n_rho)
    # Bins that received less than half a pixel are corners of corners: left out, not divided by ~0.
    keep = counts[rows] >= 0.5
    size = (int(n_angles) * n_rho, h * w)

    def csr(r: np.ndarray, c: np.ndarray, x: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
        coo = torch.sparse_coo_tensor(torch.from_numpy(np.stack([r, c])), torch.from_numpy(x.astype(np.float32)),
                                      shape, check_invariants=False)
        return coo.coalesce().to_sparse_csr().to(device)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta": the product is all we use
        fwd = csr(rows[keep], cols[keep], vals[keep] / counts[rows[keep]], size)
        bwd = csr(cols[keep], rows[keep], vals[keep] / int(n_angles), (size[1], size[0]))
    return fwd, bwd, (int(n_angles), n_rho)


class _SparseProduct(torch.autograd.Function):
    """``matrix @ x`` with a fixed sparse matrix and its transpose given, so the backward pass is a product too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, matrix: torch.Tensor, transpose: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose
        return matrix @ x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return ctx.transpose @ grad.contiguous(), None, None


class RadonBranch(nn.Module):
    """Band evidence maps of a pattern: Radon transform, a small CNN over (angle, rho), back-projection.

    A Kikuchi band is a straight line on the detector; the Radon transform
    integrates along every line, so at low dose a band that no local filter
    can see is a clear ridge in (angle, rho). A few convolutions there
    (periodic in angle: the line at angle + 180 degrees is the same line with
    rho reversed) turn the transform into ``out_channels`` maps of where
    bands are, which the back-projection paints back onto the detector. The
    U-Net receives them as extra input channels: the restorer starts from the
    evidence the Hough transform itself uses.

    Parameters
    ----------
    n_angles
        Angles of the transform over 180 degrees.
    channels
        Width of the convolutions over (angle, rho).
    out_channels
        Maps handed to the U-Net.

    Examples
    --------
    >>> branch = RadonBranch(n_angles=12, channels=4, out_channels=2)
    >>> branch(torch.zeros(3, 1, 16, 20)).shape
    torch.Size([3, 2, 16, 20])
    """

    def __init__(self, n_angles: int = 48, channels: int = 12, out_channels: int = 4) -> None:
        super().__init__()
        self.n_angles = int(n_angles)
        # A wide first kernel spans a band's width in rho; the rest sharpen and combine.
        self.kernels = (5, 3, 3)
        self.convs = nn.ModuleList([nn.Conv2d(1, channels, 5), nn.Conv2d(channels, channels, 3),
                                    nn.Conv2d(channels, out_channels, 3)])
        self.norms = nn.ModuleList([nn.GroupNorm(_groups(channels), channels),
                                    nn.GroupNorm(_groups(channels), channels)])
        self.out_channels = int(out_channels)
        self._cache: dict[tuple[int, int, str], tuple[Any, ...]] = {}

    def _matrices(self, shape: tuple[int, int], device: torch.device) -> tuple[Any, ...]:
        key = (shape[0], shape[1], str(device))
        if key not in self._cache:
            fwd, bwd, grid = radon_matrices(shape, self.n_angles, "cpu")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                fwd_t = fwd.to_sparse_coo().t().coalesce().to_sparse_csr()
                bwd_t = bwd.to_sparse_coo().t().coalesce().to_sparse_csr()
            self._cache[key] = (fwd.to(device), fwd_t.to(device), bwd.to(device), bwd_t.to(device), grid)
        return self._cache[key]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}  # rebuilt where the module lands: sparse tensors are not worth shipping
        return state

    @staticmethod
    def _wrap(s: torch.Tensor, pad: int) -> torch.Tensor:
        """Pad the angle axis periodically (rho reversed across 180 degrees) and rho with zeros."""
        top = torch.flip(s[:, :, -pad:], dims=[3])
        bottom = torch.flip(s[:, :, :pad], dims=[3])
        return functional.pad(torch.cat([top, s, bottom], dim=2), (pad, pad, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        fwd, fwd_t, bwd, bwd_t, grid = self._matrices((int(h), int(w)), x.device)
        flat = x.reshape(n, h * w).t().contiguous()
        s = _SparseProduct.apply(flat, fwd, fwd_t).t().reshape(n, 1, *grid)
        for i, conv in enumerate(self.convs):
            s = conv(self._wrap(s, self.kernels[i] // 2))
            if i < len(self.norms):
                s = functional.silu(self.norms[i](s))
        y = _SparseProduct.apply(s.reshape(n * self.out_channels, -1).t().contiguous(), bwd, bwd_t).t()
        return y.reshape(n, self.out_channels, h, w)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, a time bias between them, and a residual path."""

    def __init__(self, c_in: int, c_out: int, t_dim: int | None) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out) if t_dim else None
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(functional.silu(self.norm1(x)))
        if self.time is not None and temb is not None:
            h = h + self.time(temb)[:, :, None, None]
        h = self.conv2(functional.silu(self.norm2(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Single-head self-attention over the pixels of the coarsest grid, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(c), dim=-1)
        y = torch.einsum("nqk,nck->ncq", attn, v).reshape(n, c, h, w)
        return x + self.out(y)


class ConditionalUNet(nn.Module):
    """A lean U-Net mapping ``in_channels`` planes (and optionally a diffusion time) to ``out_channels``.

    Parameters
    ----------
    in_channels
        Input planes: 2 for the pixel diffusion denoiser (``x_t`` and the
        condition), 1 for the supervised restorer, latent plus folded
        condition channels for the latent denoiser.
    out_channels
        Output planes (1 for a pattern, the latent channels in latent space).
    channels
        Width of each level; the frame is halved between levels.
    time_embedding
        Take a diffusion time ``t`` (the diffusion models) or not (supervised).
    attention
        Self-attention in the middle, over the coarsest grid.
    patch
        Fold ``patch x patch`` pixel blocks into channels before the first
        level and unfold the output after the last (lossless, like a
        stride-``patch`` stem): the full-resolution level, the costliest by
        far on a CPU, is skipped while every pixel still reaches the network.
    radon
        Band evidence maps of the condition (:class:`RadonBranch`) added as
        input channels (0: none). The condition is the last input plane.

    Examples
    --------
    >>> net = ConditionalUNet(1, channels=(8, 16, 16), time_embedding=False, attention=False)
    >>> net(torch.zeros(2, 1, 60, 60)).shape, net.stride
    (torch.Size([2, 1, 60, 60]), 4)
    >>> ConditionalUNet(2, channels=(8, 16), patch=2)(torch.zeros(1, 2, 61, 60), torch.zeros(1)).shape
    torch.Size([1, 1, 61, 60])
    """

    def __init__(self, in_channels: int, out_channels: int = 1, channels: Sequence[int] = (16, 32, 64),
                 time_embedding: bool = True, attention: bool = True, patch: int = 1, radon: int = 0) -> None:
        super().__init__()
        widths = [int(c) for c in channels]
        if not widths or min(widths) < 2:
            raise ValueError(f"channels {list(channels)} must be a non-empty list of widths of 2 or more")
        if int(patch) < 1:
            raise ValueError(f"patch must be 1 or more, got {patch}")
        self.patch = int(patch)
        self.stride = 2 ** (len(widths) - 1) * self.patch
        self.radon = RadonBranch(out_channels=int(radon)) if int(radon) > 0 else None
        in_channels = (int(in_channels) + int(radon)) * self.patch ** 2
        out_channels = int(out_channels)
        self.out_planes = out_channels
        out_channels *= self.patch ** 2
        self.t_dim = 4 * widths[0] if time_embedding else None
        if self.t_dim:
            self.time_mlp = nn.Sequential(nn.Linear(widths[0], self.t_dim), nn.SiLU(),
                                          nn.Linear(self.t_dim, self.t_dim))
        self.stem = nn.Conv2d(int(in_channels), widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = widths[0]
        for i, width in enumerate(widths):
            self.down.append(_ResBlock(previous, width, self.t_dim))
            previous = width
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.mid1 = _ResBlock(previous, previous, self.t_dim)
        self.attn = _Attention(previous) if attention else None
        self.mid2 = _ResBlock(previous, previous, self.t_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(widths))):
            self.up.append(_ResBlock(previous + widths[i], widths[i], self.t_dim))
            previous = widths[i]
            if i > 0:
                self.upsample.append(nn.Conv2d(widths[i], widths[i - 1], 3, padding=1))
                previous = widths[i - 1]
        self.out_norm = nn.GroupNorm(_groups(previous), previous)
        self.out = nn.Conv2d(previous, int(out_channels), 3, padding=1)
        self.widths = widths

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.stride)
        temb = None
        if self.t_dim:
            if t is None:
                raise ValueError("this network is a diffusion denoiser: give the diffusion time t")
            temb = self.time_mlp(timestep_embedding(t, self.widths[0]))
        if self.radon is not None:
            x = torch.cat([x, self.radon(x[:, -1:])], dim=1)
        if self.patch > 1:
            x = space_to_depth(x, self.patch)
        y = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            y = block(y, temb)
            skips.append(y)
            if i < len(self.downsample):
                y = self.downsample[i](y)
        y = self.mid1(y, temb)
        if self.attn is not None:
            y = self.attn(y)
        y = self.mid2(y, temb)
        for i, block in enumerate(self.up):
            y = block(torch.cat([y, skips.pop()], dim=1), temb)
            if i < len(self.upsample):
                y = self.upsample[i](functional.interpolate(y, scale_factor=2.0, mode="nearest"))
        y = self.out(functional.silu(self.out_norm(y)))
        if self.patch > 1:
            y = functional.pixel_shuffle(y, self.patch)
        return y[..., :h, :w]


class PatternAutoencoder(nn.Module):
    """Convolutional autoencoder of patterns: ``2**len(channels)`` times smaller per side, few channels.

    Parameters
    ----------
    channels
        Width of each stride-2 stage (each halves the frame).
    latent_channels
        Channels of the latent grid.

    Examples
    --------
    >>> ae = PatternAutoencoder(channels=(8,), latent_channels=2)
    >>> ae(torch.zeros(1, 1, 10, 10)).shape
    torch.Size([1, 1, 10, 10])
    """

    def __init__(self, channels: Sequence[int] = (32, 64), latent_channels: int = 4) -> None:
        super().__init__()
        widths = [int(c) for c in channels]
        if not widths or min(widths) < 2:
            raise ValueError(f"channels {list(channels)} must be a non-empty list of widths of 2 or more")
        self.factor = 2 ** len(widths)
        self.latent_channels = int(latent_channels)
        enc: list[nn.Module] = [nn.Conv2d(1, widths[0], 3, padding=1)]
        previous = widths[0]
        for width in widths:
            enc += [_Plain(previous, width), nn.Conv2d(width, width, 3, stride=2, padding=1)]
            previous = width
        enc += [_Plain(previous, previous), nn.GroupNorm(_groups(previous), previous), nn.SiLU(),
                nn.Conv2d(previous, self.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(self.latent_channels, previous, 3, padding=1), _Plain(previous, previous)]
        for width in reversed(widths):
            dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(previous, width, 3, padding=1),
                    _Plain(width, width)]
            previous = width
        dec += [nn.GroupNorm(_groups(previous), previous), nn.SiLU(), nn.Conv2d(previous, 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def latent_shape(self, frame_shape: Sequence[int]) -> tuple[int, int]:
        """The latent grid of a frame (after padding to a multiple of the factor).

        Examples
        --------
        >>> PatternAutoencoder(channels=(4, 4)).latent_shape((60, 62))
        (15, 16)
        """
        return (-(-int(frame_shape[0]) // self.factor), -(-int(frame_shape[1]) // self.factor))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent ``(n, latent_channels, h/f, w/f)`` of standardised patterns ``(n, 1, h, w)`` (padded first)."""
        x, _ = pad_to_multiple(x, self.factor)
        return self.encoder(x)

    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Patterns ``(n, 1, h, w)`` from latents; ``size`` crops the padding away."""
        y = self.decoder(z)
        return y if size is None else y[..., :size[0], :size[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), (int(x.shape[-2]), int(x.shape[-1])))


class _Plain(nn.Module):
    """A residual block without time (the autoencoder's)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.block = _ResBlock(c_in, c_out, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, None)


def _widths(record: Mapping[str, Any], key: str = "channels") -> tuple[int, ...]:
    widths = tuple(int(c) for c in record[key])
    if not widths:
        raise ValueError(f"{key} is empty")
    return widths


@register_architecture("restoration_unet")
def _restoration_unet(record: Mapping[str, Any]) -> nn.Module:
    return ConditionalUNet(int(record["in_channels"]), int(record.get("out_channels", 1)), _widths(record),
                           time_embedding=bool(record["time_embedding"]), attention=bool(record["attention"]),
                           patch=int(record.get("patch", 1)), radon=int(record.get("radon", 0)))


@register_architecture("pattern_autoencoder")
def _pattern_autoencoder(record: Mapping[str, Any]) -> nn.Module:
    return PatternAutoencoder(_widths(record, "autoencoder_channels"), int(record["latent_channels"]))
