"""Networks for diffraction patterns in plain torch: a small CNN, Xception-, DenseNet- and Swin-tiny-style backbones.

Every network here is a :class:`PatternNet`: a fixed **preprocessing** of the
frames (resize to the model's frame size, subtract a wide Gaussian blur,
which removes the smooth EBSD background as a dynamic background correction
would, and standardise each frame), a **backbone** turning ``(n, 1, h, w)``
into a feature map, and a **head**:

``classify``
    global average pooling, dropout, one logit per class (space groups).
``orientation``
    the flattened feature map (position on the detector is what fixes an
    orientation, so it is not pooled away), optionally joined by the
    projection centre, through a two-layer MLP to ``n_hypotheses`` 6-D
    rotations (:func:`~diffraflow.operators.learning.rotations.rotation_6d_to_matrix`)
    and as many scores.

Backbones (``architecture`` in the model record), each scaled by ``width``:

``small_cnn``
    four stages of two 3x3 convolutions (batch norm, ReLU), the second with stride 2.
``xception``
    Chollet's Xception (CVPR 2017) in miniature: a strided stem, entry-flow
    blocks of depthwise-separable convolutions with max-pool and a 1x1
    strided shortcut, ``middle_blocks`` residual blocks of three separable
    convolutions, and an exit separable convolution.
``densenet``
    Huang et al.'s DenseNet-BC (CVPR 2017): dense blocks in which each layer
    (BN-ReLU-1x1 conv to ``4k`` channels, BN-ReLU-3x3 conv to ``k``) sees the
    concatenation of all earlier ones, and transitions halving channels and size.
``swin_tiny``
    Liu et al.'s Swin Transformer (ICCV 2021) in its tiny layout, scaled
    down: 4x4 patch embedding, stages of windowed multi-head self-attention
    with a learned relative-position bias, every second block's windows
    shifted by half a window (with the attention mask that keeps shifted
    regions apart), and patch merging between stages.

Nothing is downloaded and nothing is pretrained: the weights come from
``diffraflow train``. The last convolutional (or token) feature map is kept
in :attr:`PatternNet.cam_features` when asked for, for Grad-CAM.

Examples
--------
>>> import torch
>>> from diffraflow.operators.learning._models import build_model
>>> net = build_model({"architecture": "small_cnn", "in_shape": [32, 32], "width": 4, "task": "classify",
...                    "n_classes": 6})
>>> net(torch.rand(2, 40, 48)).shape       # any frame size: resized to the model's inside
torch.Size([2, 6])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch
from diffraflow.operators.learning._models import register_architecture
from torch import nn
from torch.nn import functional

__all__ = ["PatternNet", "Preprocess", "SmallCNN", "Xception", "DenseNet", "SwinTiny", "BACKBONES", "TASKS",
           "count_parameters"]

TASKS = ("classify", "orientation")


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters.

    Examples
    --------
    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


class Preprocess(nn.Module):
    """Resize frames to ``in_shape``, remove the smooth background, standardise each frame.

    Parameters
    ----------
    in_shape
        ``(h, w)`` the backbone sees; other frame sizes are resized
        (bilinear with antialiasing), so one model serves every detector.
    highpass_sigma
        Width of the Gaussian blur subtracted from each frame, as a fraction
        of its height (``0``: none). The blur is the smooth background; what
        is left is the bands, whatever the camera's background looked like.

    Examples
    --------
    >>> out = Preprocess((8, 8))(torch.rand(3, 16, 16) * 100)
    >>> tuple(out.shape), abs(round(float(out[0].mean()), 4)), round(float(out[0].std(unbiased=False)), 3)
    ((3, 1, 8, 8), 0.0, 1.0)
    """

    def __init__(self, in_shape: tuple[int, int], highpass_sigma: float = 0.1) -> None:
        super().__init__()
        self.in_shape = (int(in_shape[0]), int(in_shape[1]))
        self.highpass_sigma = float(highpass_sigma)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(torch.float32)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if tuple(x.shape[-2:]) != self.in_shape:
            x = functional.interpolate(x, size=self.in_shape, mode="bilinear", antialias=True, align_corners=False)
        if self.highpass_sigma > 0:
            from diffraflow.operators.learning._filters import gaussian_blur

            x = x - gaussian_blur(x, self.highpass_sigma * self.in_shape[0])
        flat = x.reshape(len(x), -1)
        mean = flat.mean(dim=1)
        std = flat.std(dim=1, unbiased=False)
        return (x - mean[:, None, None, None]) / (std[:, None, None, None] + 1e-6)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A strided stem and three stages of (3x3 conv, 3x3 conv stride 2), channels ``width * (1, 2, 4, 8)``.

    The stem (a 3x3 convolution with stride 2, then one at half size) never
    runs a convolution at the full frame size: on the CPU that halves the
    cost of a step and loses nothing a 3x3 filter at stride 2 does not see.

    Examples
    --------
    >>> SmallCNN(4)(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 32, 2, 2])
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        chans = [width, 2 * width, 4 * width, 8 * width]
        stem = nn.Sequential(_conv_bn(1, width, stride=2), _conv_bn(width, width))
        self.stages = nn.Sequential(stem, *[nn.Sequential(_conv_bn(chans[i], chans[i + 1]),
                                                          _conv_bn(chans[i + 1], chans[i + 1], stride=2))
                                            for i in range(3)])
        self.out_channels = chans[-1]
        self.reduction = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


class SeparableConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1 convolution, then batch norm (Xception's building block).

    Examples
    --------
    >>> SeparableConv(4, 8)(torch.zeros(1, 4, 6, 6)).shape
    torch.Size([1, 8, 6, 6])
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(x)))


class _EntryBlock(nn.Module):
    def __init__(self, cin: int, cout: int, first_relu: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(inplace=False) if first_relu else nn.Identity(), SeparableConv(cin, cout),
                                  nn.ReLU(inplace=True), SeparableConv(cout, cout), nn.MaxPool2d(3, 2, 1))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class _MiddleBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*[m for _ in range(3) for m in (nn.ReLU(inplace=False), SeparableConv(channels, channels))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Xception(nn.Module):
    """Xception in miniature: stem, entry flow (3 strided blocks), middle flow, exit separable conv.

    Examples
    --------
    >>> Xception(8, middle_blocks=1)(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 64, 2, 2])
    """

    def __init__(self, width: int = 16, middle_blocks: int = 2) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                                  nn.Conv2d(w, 2 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True))
        self.entry = nn.Sequential(_EntryBlock(2 * w, 4 * w, first_relu=False), _EntryBlock(4 * w, 6 * w),
                                   _EntryBlock(6 * w, 8 * w))
        self.middle = nn.Sequential(*[_MiddleBlock(8 * w) for _ in range(int(middle_blocks))])
        self.exit = nn.Sequential(nn.ReLU(inplace=False), SeparableConv(8 * w, 8 * w), nn.ReLU(inplace=True))
        self.out_channels = 8 * w
        self.reduction = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exit(self.middle(self.entry(self.stem(x))))


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                                  nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True),
                                  nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseNet(nn.Module):
    """DenseNet-BC: strided stem, dense blocks of ``block_layers`` layers (growth ``width``), halving transitions.

    Examples
    --------
    >>> DenseNet(4, block_layers=(2, 2, 2))(torch.zeros(1, 1, 32, 32)).shape[1:]
    torch.Size([16, 4, 4])
    """

    def __init__(self, width: int = 12, block_layers: tuple[int, ...] = (4, 6, 8)) -> None:
        super().__init__()
        growth = int(width)
        channels = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, 2, 1, bias=False)]
        for i, count in enumerate(block_layers):
            for _ in range(int(count)):
                layers.append(_DenseLayer(channels, growth))
                channels += growth
            out = channels // 2 if i < len(block_layers) - 1 else channels
            if i < len(block_layers) - 1:
                layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, out, 1, bias=False),
                           nn.AvgPool2d(2, ceil_mode=True)]
            channels = out
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.out_channels = channels
        self.reduction = 2 ** len(block_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    n, h, w, c = x.shape
    x = x.view(n, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def _window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    n = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(n, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, -1)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows, with a learned relative-position bias.

    Examples
    --------
    >>> WindowAttention(8, window=2, heads=2)(torch.zeros(3, 4, 8)).shape
    torch.Size([3, 4, 8])
    """

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("bias_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        index = cast(torch.Tensor, self.bias_index)
        attn = attn + self.bias_table[index].permute(2, 0, 1)[None]
        if mask is not None:  # (windows, t, t): 0 or -inf, repeated over the batch
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.heads, t, t) + mask[None, :, None]
            attn = attn.view(b, self.heads, t, t)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class SwinBlock(nn.Module):
    """A Swin Transformer block: (shifted-)window attention and an MLP, each with LayerNorm and a residual.

    Examples
    --------
    >>> SwinBlock(8, (4, 4), window=2, heads=2, shift=1)(torch.zeros(1, 16, 8)).shape
    torch.Size([1, 16, 8])
    """

    def __init__(self, dim: int, resolution: tuple[int, int], window: int, heads: int, shift: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = min(window, *resolution)
        self.shift = shift if min(resolution) > self.window else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        if self.shift:
            h, w = resolution
            label = torch.zeros(1, h, w, 1)
            cuts = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
            region = 0
            for ys in cuts:
                for xs in cuts:
                    label[:, ys, xs, :] = region
                    region += 1
            groups = _window_partition(label, self.window).squeeze(-1)
            mask = groups[:, None, :] - groups[:, :, None]
            # Tokens that wrapped round the edge by the cyclic shift must not attend to their new neighbours.
            self.register_buffer("mask", mask.masked_fill(mask != 0, float("-inf")).masked_fill(mask == 0, 0.0),
                                 persistent=False)
        else:
            self.register_buffer("mask", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        n, t, c = x.shape
        y = self.norm1(x).view(n, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = _window_reverse(self.attn(_window_partition(y, self.window), self.mask), self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(n, t, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of tokens and project 4C to 2C: half the resolution, twice the channels.

    Examples
    --------
    >>> PatchMerging(8, (4, 4))(torch.zeros(1, 16, 8)).shape
    torch.Size([1, 4, 16])
    """

    def __init__(self, dim: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        n, _, c = x.shape
        x = x.view(n, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduce(self.norm(x.view(n, -1, 4 * c)))


class SwinTiny(nn.Module):
    """Swin-T's layout, scaled by ``width`` (Swin-T itself: width 96, depths (2, 2, 6, 2), window 7).

    The input is padded to a multiple of ``4 * window * 2**(stages-1)`` so every
    stage tiles into whole windows; the output is the last stage's token map
    as a ``(n, C, h, w)`` feature map.

    Examples
    --------
    >>> SwinTiny(8, depths=(2, 2), heads=(1, 2), window=2, in_shape=(30, 30))(torch.zeros(1, 1, 30, 30)).shape
    torch.Size([1, 16, 4, 4])
    """

    def __init__(self, width: int = 32, depths: tuple[int, ...] = (2, 2, 2), heads: tuple[int, ...] = (2, 4, 8),
                 window: int = 4, in_shape: tuple[int, int] = (64, 64)) -> None:
        super().__init__()
        if len(depths) != len(heads):
            raise ValueError(f"depths {depths} and heads {heads} must have one entry per stage")
        multiple = 4 * window * 2 ** (len(depths) - 1)
        self.padded = tuple(int(math.ceil(s / multiple) * multiple) for s in in_shape)
        self.patch = nn.Conv2d(1, width, 4, 4)
        self.patch_norm = nn.LayerNorm(width)
        res = (self.padded[0] // 4, self.padded[1] // 4)
        dim = width
        stages: list[nn.Module] = []
        for i, (depth, head) in enumerate(zip(depths, heads, strict=True)):
            blocks: list[nn.Module] = [SwinBlock(dim, res, window, int(head), 0 if j % 2 == 0 else window // 2)
                                       for j in range(int(depth))]
            if i < len(depths) - 1:
                blocks.append(PatchMerging(dim, res))
                res, dim = (res[0] // 2, res[1] // 2), 2 * dim
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dim)
        self.out_channels = dim
        self.out_resolution = res
        self.reduction = 4 * 2 ** (len(depths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = self.padded[0] - x.shape[-2], self.padded[1] - x.shape[-1]
        if pad_h or pad_w:
            x = functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        x = self.patch(x)
        n, c, h, w = x.shape
        tokens = self.patch_norm(x.flatten(2).transpose(1, 2))
        tokens = self.norm(self.stages(tokens))
        rh, rw = self.out_resolution
        return tokens.transpose(1, 2).reshape(n, -1, rh, rw)


def _backbone(record: Mapping[str, Any]) -> nn.Module:
    name = record["architecture"]
    width = int(record.get("width", 16))
    if name == "small_cnn":
        return SmallCNN(width)
    if name == "xception":
        return Xception(width, int(record.get("middle_blocks", 2)))
    if name == "densenet":
        return DenseNet(width, tuple(int(v) for v in record.get("block_layers", (4, 6, 8))))
    if name == "swin_tiny":
        return SwinTiny(width, tuple(int(v) for v in record.get("depths", (2, 2, 2))),
                        tuple(int(v) for v in record.get("heads", (2, 4, 8))), int(record.get("window", 4)),
                        tuple(int(v) for v in record["in_shape"]))  # type: ignore[arg-type]
    raise ValueError(f"unknown backbone {name!r}")


BACKBONES = ("small_cnn", "xception", "densenet", "swin_tiny")


class PatternNet(nn.Module):
    """Preprocessing, a backbone and a classification or orientation head (see the module docs).

    Parameters
    ----------
    record
        The model record: ``architecture`` (one of :data:`BACKBONES`),
        ``in_shape``, ``task`` (``classify`` or ``orientation``), ``width``,
        ``n_classes`` (classify), ``n_hypotheses`` and ``use_pc``
        (orientation), ``dropout``, ``highpass_sigma`` and the backbone's own keys.

    Examples
    --------
    >>> net = PatternNet({"architecture": "small_cnn", "in_shape": [32, 32], "width": 4, "task": "orientation",
    ...                   "n_hypotheses": 2, "use_pc": True})
    >>> rot6d, scores = net(torch.rand(3, 32, 32), pc=torch.rand(3, 3))
    >>> tuple(rot6d.shape), tuple(scores.shape)
    ((3, 2, 6), (3, 2))
    """

    def __init__(self, record: Mapping[str, Any]) -> None:
        super().__init__()
        self.task = str(record.get("task", "classify"))
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {TASKS}")
        in_shape = tuple(int(v) for v in record["in_shape"])
        if len(in_shape) != 2 or min(in_shape) < 8:
            raise ValueError(f"in_shape {list(in_shape)} is not a frame shape of at least 8 x 8")
        self.preprocess = Preprocess(in_shape, float(record.get("highpass_sigma", 0.1)))  # type: ignore[arg-type]
        self.backbone = _backbone(record)
        self.cam_features: torch.Tensor | None = None
        self.keep_cam = False
        dropout = float(record.get("dropout", 0.1))
        channels = int(cast(int, self.backbone.out_channels))
        if self.task == "classify":
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, int(record["n_classes"])))
        else:
            with torch.no_grad():
                cells = self.backbone(torch.zeros(1, 1, *in_shape)).shape[-2:]
            self.n_hypotheses = int(record.get("n_hypotheses", 1))
            self.use_pc = bool(record.get("use_pc", False))
            features = channels * int(cells[0]) * int(cells[1]) + (3 if self.use_pc else 0)
            hidden = int(record.get("hidden", 256))
            self.reduce = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True))
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, 7 * self.n_hypotheses))
            pc_centre = record.get("pc_centre", (0.5, 0.25, 0.6))
            pc_scale = record.get("pc_scale", (0.1, 0.1, 0.1))
            self.register_buffer("pc_centre", torch.tensor(pc_centre, dtype=torch.float32), persistent=False)
            self.register_buffer("pc_scale", torch.tensor(pc_scale, dtype=torch.float32), persistent=False)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map ``(n, C, h, w)`` of raw frames."""
        fmap = self.backbone(self.preprocess(frames))
        if self.keep_cam:
            self.cam_features = fmap
        return fmap

    def forward(self, frames: torch.Tensor, pc: torch.Tensor | None = None) -> Any:
        fmap = self.features(frames)
        if self.task == "classify":
            return self.head(fmap.mean(dim=(2, 3)))
        flat = self.reduce(fmap).flatten(1)
        if self.use_pc:
            if pc is None:
                raise ValueError("this orientation model needs the projection centre of each frame")
            centre, scale = cast(torch.Tensor, self.pc_centre), cast(torch.Tensor, self.pc_scale)
            flat = torch.cat([flat, (pc.to(flat.dtype) - centre) / scale], dim=1)
        out = self.head(flat).view(len(flat), self.n_hypotheses, 7)
        return out[..., :6], out[..., 6]


for _name in BACKBONES:
    register_architecture(_name)(PatternNet)
