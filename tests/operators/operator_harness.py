"""A tiny chunk-loop driver that mimics the operator contract, for operator tests.

It follows what the engine does (``flow/executors/base.py``): for each pass,
process every chunk; in every pass but the last, everything ``process``
returns is a partial; in the last pass, ``nav``/``frames`` outputs are stored
per frame and the rest are partials. Partials are merged in a chosen order
(``forward``, ``reverse`` or a pairwise ``tree``) and ``finalize`` gives the
next pass's state, or the ``sig``/``single`` outputs after the last pass.

Every output is checked against what ``resolve`` declared (shape and dtype),
so a driver run is also a schema check.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from diffraflow.operators.base import ChunkContext, InputSpec, Operator

__all__ = ["make_cube", "spec_of", "chunk_bounds", "run_operator", "reference_outputs_equal", "CHUNKINGS",
           "ORDERS"]

#: Awkward chunkings used by the operator tests: single frames, 7 frames, cycles, one chunk.
CHUNKINGS: tuple = (1, 7, (2, 5, 3), None)
#: Merge orders of the partials.
ORDERS: tuple = ("forward", "reverse", "tree")


def make_cube(seed: int = 0, scan: tuple[int, int] = (3, 5), det: tuple[int, int] = (12, 10),
              dtype: str = "uint8") -> np.ndarray:
    """A small seeded cube: a smooth background, a moving bright spot and noise.

    >>> make_cube().shape
    (3, 5, 12, 10)
    """
    rng = np.random.default_rng(seed)
    n = scan[0] * scan[1]
    yy, xx = np.mgrid[: det[0], : det[1]]
    base = 40 + 30 * np.exp(-((yy - det[0] / 2) ** 2 + (xx - det[1] / 2) ** 2) / (2 * (det[1] / 3) ** 2))
    frames = np.empty((n, *det))
    for i in range(n):
        cy, cx = rng.uniform(0, det[0]), rng.uniform(0, det[1])
        spot = rng.uniform(50, 150) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0)
        frames[i] = base * rng.uniform(0.7, 1.3) + spot + rng.normal(0, 5, det)
    frames = np.clip(frames, 0, 255)
    if np.dtype(dtype).kind in "iu":
        frames = np.rint(frames)
    return frames.astype(dtype).reshape(*scan, *det)


def spec_of(cube: np.ndarray, attrs: dict | None = None) -> InputSpec:
    """The InputSpec of a 4-d ``(scan_y, scan_x, det_y, det_x)`` cube."""
    return InputSpec(tuple(cube.shape[:2]), tuple(cube.shape[2:]), cube.dtype, attrs)


def chunk_bounds(n: int, chunk: int | Sequence[int] | None) -> list[tuple[int, int]]:
    """``[(start, stop)]`` covering ``n`` frames; ``chunk`` is a size, a cycle of sizes, or None (one chunk).

    >>> chunk_bounds(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    >>> chunk_bounds(6, [1, 3])
    [(0, 1), (1, 4), (4, 5), (5, 6)]
    """
    if chunk is None:
        return [(0, n)]
    sizes = [chunk] if isinstance(chunk, int) else list(chunk)
    out, start, i = [], 0, 0
    while start < n:
        stop = min(n, start + sizes[i % len(sizes)])
        out.append((start, stop))
        start, i = stop, i + 1
    return out


def _merge_all(op: Operator, parts: list[dict[str, Any]], order: str) -> dict[str, Any]:
    if not parts:
        return {}
    if order == "reverse":
        parts = parts[::-1]
    keys = list(parts[0])
    merged: dict[str, Any] = {}
    for key in keys:
        values = [p[key] for p in parts]
        if order == "tree":
            while len(values) > 1:
                nxt = [op.merge(key, values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]
                if len(values) % 2:
                    nxt.append(values[-1])
                values = nxt
            merged[key] = values[0]
        else:
            acc = values[0]
            for v in values[1:]:
                acc = op.merge(key, acc, v)
            merged[key] = acc
    return merged


def run_operator(op: Operator, cube: np.ndarray, chunk: int | Sequence[int] | None = None,
                 order: str = "forward", pickle_op: bool = True, spec: InputSpec | None = None,
                 process_order: Iterable[int] | None = None) -> dict[str, np.ndarray]:
    """Run ``op`` over ``cube`` chunk by chunk; return every declared output.

    Per-frame outputs come back as ``(scan_y, scan_x, *extra_shape)``. With
    ``pickle_op`` the operator is pickled and unpickled first (as a worker
    would receive it). ``process_order`` permutes the order chunks are
    processed in (partials are still merged in ``order``).
    """
    spec = spec or spec_of(cube)
    if pickle_op:
        op = pickle.loads(pickle.dumps(op))
    outputs = op.resolve(spec)
    constants = op.setup(spec, "numpy")
    frames_all = cube.reshape(spec.n_frames, *cube.shape[2:])
    bounds = chunk_bounds(spec.n_frames, chunk)
    idx = list(range(len(bounds))) if process_order is None else list(process_order)
    passes = int(op.passes)
    state = None
    results: dict[str, np.ndarray] = {}
    for pass_index in range(passes):
        final = pass_index == passes - 1
        per_frame = {name: np.zeros((spec.n_frames, *o.extra_shape), dtype=o.dtype)
                     for name, o in outputs.items() if o.per_frame} if final else {}
        parts: list[dict[str, Any]] = [None] * len(bounds)  # type: ignore[list-item]
        for i in idx:
            start, stop = bounds[i]
            flat = np.arange(start, stop)
            ctx = ChunkContext(spec=spec, constants=constants, pass_index=pass_index, state=state,
                               flat_start=start, scan_index=np.stack(np.unravel_index(flat, spec.scan_shape), 1))
            out = op.process(frames_all[start:stop].copy(), ctx)
            assert isinstance(out, dict), f"process returned {type(out)}"
            if final:
                for name in per_frame:
                    value = np.asarray(out[name])
                    assert value.shape == (stop - start, *outputs[name].extra_shape), (name, value.shape)
                    assert value.dtype == outputs[name].dtype, (name, value.dtype, outputs[name].dtype)
                    per_frame[name][start:stop] = value
                parts[i] = {k: v for k, v in out.items() if k not in per_frame}
            else:
                parts[i] = dict(out)
        merged = _merge_all(op, [p for p in parts if p is not None], order)
        ctx = ChunkContext(spec=spec, constants=constants, pass_index=pass_index, state=state)
        finalized = op.finalize(merged, ctx)
        if final:
            for name, o in outputs.items():
                if o.per_frame:
                    results[name] = per_frame[name].reshape(o.result_shape(spec.scan_shape))
                else:
                    assert name in finalized, f"finalize did not return {name!r}: {sorted(finalized)}"
                    value = np.asarray(finalized[name])
                    assert value.shape == o.result_shape(spec.scan_shape), (name, value.shape)
                    assert value.dtype == o.dtype, (name, value.dtype, o.dtype)
                    results[name] = value
        else:
            state = finalized
    return results


def reference_outputs_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float = 1e-6,
                            atol: float = 1e-9) -> None:
    """Assert two output dicts hold the same names and (nearly) equal arrays."""
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(np.asarray(a[name], np.float64), np.asarray(b[name], np.float64),
                                   rtol=rtol, atol=atol, err_msg=name)
