"""Test-only operators and cube helpers for the engine tests.

Importing this module registers the operators, so a ``diffraflow run``
subprocess finds them with ``--plugin tests.flow.engine_fixtures``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from diffraflow.flow.store import create_cube
from diffraflow.flow.testing import synthetic_frames
from diffraflow.operators.base import (
    ChunkContext,
    InputSpec,
    Operator,
    OutputSpec,
    param,
    register_operator,
)

__all__ = ["FrameSum", "Affine", "SigSum", "Centered", "Slow", "Flaky", "make_cube", "write_yaml"]


@register_operator
@dataclass(frozen=True)
class FrameSum(Operator):
    """Per-frame sum (nav)."""

    name = "test_frame_sum"

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"total": OutputSpec("nav", "float64", description="sum of each frame")}

    def process(self, frames, ctx: ChunkContext):
        return {"total": frames.reshape(len(frames), -1).sum(axis=1, dtype=np.float64)}


@register_operator
@dataclass(frozen=True)
class Affine(Operator):
    """Frames transform: ``frames * scale + offset`` as float32, cropped by ``crop`` pixels."""

    name = "test_affine"
    scale: float = param(2.0, doc="multiply every pixel")
    offset: float = param(1.0, doc="then add this")
    crop: int = param(0, doc="pixels cropped from the bottom/right edges")

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        dy, dx = spec.det_shape
        return {"frames": OutputSpec("frames", "float32", (dy - self.crop, dx - self.crop)),
                "peak": OutputSpec("nav", "float32")}

    def process(self, frames, ctx: ChunkContext):
        dy, dx = ctx.spec.det_shape
        out = frames[:, : dy - self.crop, : dx - self.crop].astype(np.float32) * self.scale + self.offset
        return {"frames": out, "peak": out.reshape(len(out), -1).max(axis=1)}


@register_operator
@dataclass(frozen=True)
class SigSum(Operator):
    """Sum pattern over the scan (sig) and frame count (single)."""

    name = "test_sig_sum"

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"sum": OutputSpec("sig", "float64", spec.det_shape), "count": OutputSpec("single", "int64")}

    def process(self, frames, ctx: ChunkContext):
        return {"sum": frames.sum(axis=0, dtype=np.float64), "count": np.int64(len(frames))}


@register_operator
@dataclass(frozen=True)
class Centered(Operator):
    """Two passes: the mean pattern, then each frame's squared distance to it."""

    name = "test_centered"
    passes = 2

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"distance": OutputSpec("nav", "float64"), "mean": OutputSpec("sig", "float64", spec.det_shape)}

    def process(self, frames, ctx: ChunkContext):
        if ctx.pass_index == 0:
            return {"sum": frames.sum(axis=0, dtype=np.float64), "n": np.int64(len(frames))}
        diff = frames.astype(np.float64) - ctx.state["mean"]
        return {"distance": (diff ** 2).reshape(len(frames), -1).sum(axis=1), "mean_out": ctx.state["mean"]}

    def merge(self, name, left, right):
        return left if name == "mean_out" else left + right

    def finalize(self, partials, ctx: ChunkContext):
        if ctx.pass_index == 0:
            return {"mean": partials["sum"] / int(partials["n"])}
        return {"mean": partials["mean_out"]}


@register_operator
@dataclass(frozen=True)
class Slow(Operator):
    """Per-frame sum that sleeps ``delay`` seconds per chunk (kill tests)."""

    name = "test_slow"
    delay: float = param(0.05, doc="seconds to sleep per chunk")

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"total": OutputSpec("nav", "float64"), "sum": OutputSpec("sig", "float64", spec.det_shape)}

    def process(self, frames, ctx: ChunkContext):
        time.sleep(self.delay)
        return {"total": frames.reshape(len(frames), -1).sum(axis=1, dtype=np.float64),
                "sum": frames.sum(axis=0, dtype=np.float64)}


@register_operator
@dataclass(frozen=True)
class Flaky(Operator):
    """Per-frame sum that fails on chunks starting at ``fail_at`` flat indices.

    ``times`` failures per chunk, counted in files under ``counter_dir`` so the
    count survives process boundaries (workers, retries); ``times=-1`` fails always.
    """

    name = "test_flaky"
    fail_at: tuple = param((), doc="flat start indices of chunks that fail")
    times: int = param(-1, doc="failures per chunk before succeeding; -1 = always")
    counter_dir: str = param("", doc="directory counting failures")

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"total": OutputSpec("nav", "float64")}

    def process(self, frames, ctx: ChunkContext):
        if ctx.flat_start in tuple(self.fail_at):
            if self.times < 0:
                raise ValueError(f"boom at frame {ctx.flat_start}")
            marker = Path(self.counter_dir) / f"{ctx.flat_start}"
            count = len(marker.read_text()) if marker.exists() else 0
            if count < self.times:
                marker.write_text("x" * (count + 1))
                raise OSError(f"transient failure {count + 1} at frame {ctx.flat_start}")
        return {"total": frames.reshape(len(frames), -1).sum(axis=1, dtype=np.float64)}


def make_cube(path: str | os.PathLike, scan_shape=(5, 7), det_shape=(8, 9), dtype="uint16", chunk_frames=None,
              seed: int = 0, frames: np.ndarray | None = None) -> tuple[Path, np.ndarray]:
    """Write a seeded synthetic cube; returns ``(path, frames)``."""
    if frames is None:
        frames = synthetic_frames(scan_shape, det_shape, dtype, seed)
    scan_shape, det_shape = frames.shape[:2], frames.shape[2:]
    with create_cube(path, scan_shape=scan_shape, det_shape=det_shape, dtype=frames.dtype,
                     attrs={"modality": "ebsd", "detector": {"shape": list(det_shape)}},
                     chunk_frames=chunk_frames) as writer:
        writer.patterns.append(frames.reshape(-1, *det_shape))
        out = writer.finalize()
    return out, frames


def write_yaml(path: str | os.PathLike, text: str) -> Path:
    """Write a pipeline file (dedented)."""
    import textwrap

    path = Path(path)
    path.write_text(textwrap.dedent(text).lstrip())
    return path
