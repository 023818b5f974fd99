"""mean_pattern and max_pattern through the engine: chunk- and merge-order-independent reductions."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.testing import input_spec, run_operator, spot_frames
from diffraflow.operators.base import ChunkContext
from diffraflow.operators.stats.max_pattern import MaxPattern
from diffraflow.operators.stats.mean_pattern import MeanPattern
from diffraflow.schemas.errors import PipelineError

# Single frames, runs splitting the 3-frame rows, uneven runs, one chunk.
CHUNKINGS = (1, 2, (2, 5, 3), None)
# The engine merges partials in the order it gets the regions.
ORDERS = ("scan", "reverse", "shuffled")


@pytest.fixture(scope="module", params=["uint8", "uint16", "float32"])
def cube(request) -> np.ndarray:
    return spot_frames((4, 3), (6, 5), request.param, seed=7)


@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize("order", ORDERS)
def test_mean_pattern(cube, chunk, order):
    out = run_operator(MeanPattern(), cube, chunk_frames=chunk, order=order)["mean"]
    want = cube.astype(np.float64).mean(axis=(0, 1))
    assert out.dtype == np.float64 and out.shape == cube.shape[2:]
    if cube.dtype.kind == "u":
        ref = run_operator(MeanPattern(), cube)["mean"]
        np.testing.assert_array_equal(out, ref)  # exact: integer sums in float64
    np.testing.assert_allclose(out, want, rtol=1e-12)


@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize("order", ORDERS)
def test_max_pattern(cube, chunk, order):
    out = run_operator(MaxPattern(), cube, chunk_frames=chunk, order=order)["max"]
    assert out.dtype == cube.dtype
    np.testing.assert_array_equal(out, cube.max(axis=(0, 1)))


def test_chunks_merged_out_of_scan_order(cube):
    order = [3, 0, 2, 1]  # 12 frames in 4 one-row regions, merged out of scan order
    mean = run_operator(MeanPattern(), cube, chunk_frames=3, order=order)["mean"]
    np.testing.assert_allclose(mean, cube.astype(np.float64).mean(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_array_equal(run_operator(MaxPattern(), cube, chunk_frames=3, order=order)["max"],
                                  cube.max(axis=(0, 1)))


def test_max_pattern_empty_chunk_is_merge_identity():
    cube = spot_frames((1, 3), (4, 4), "uint8", seed=2)
    op, ctx = MaxPattern(), ChunkContext(input_spec(cube))
    empty = op.process(np.zeros((0, 4, 4), "uint8"), ctx)["max"]
    full = op.process(cube[0], ctx)["max"]
    np.testing.assert_array_equal(op.merge("max", empty, full), cube[0].max(axis=0))


def test_max_pattern_ignores_nan_unless_all_nan():
    cube = np.ones((1, 2, 2, 2), "float32")
    cube[0, 0, 0, 0] = np.nan
    cube[0, :, 1, 1] = np.nan
    cube[0, 1, 0, 1] = 5
    out = run_operator(MaxPattern(), cube, chunk_frames=1)["max"]
    assert out[0, 0] == 1 and out[0, 1] == 5 and np.isnan(out[1, 1])


def test_mean_pattern_refuses_no_frames():
    cube = spot_frames((1, 3), (4, 4), seed=2)
    op, ctx = MeanPattern(), ChunkContext(input_spec(cube))
    with pytest.raises(PipelineError, match="no frames"):
        op.finalize({"sum": np.zeros((4, 4)), "count": np.int64(0)}, ctx)
