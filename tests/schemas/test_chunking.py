"""Chunking rules: detector axes never chunked, scan order, shards of whole chunks."""

from __future__ import annotations

import pytest
from diffraflow.schemas.chunking import CubeLayout, choose_layout, validate_layout
from diffraflow.schemas.errors import SchemaError
from hypothesis import given
from hypothesis import strategies as st


@given(
    sy=st.integers(1, 300), sx=st.integers(1, 300), dy=st.integers(1, 300), dx=st.integers(1, 300),
    itemsize=st.sampled_from([1, 2, 4]), chunk_kb=st.integers(1, 4096), shard_factor=st.integers(1, 16),
)
def test_chosen_layout_obeys_rules(sy, sx, dy, dx, itemsize, chunk_kb, shard_factor):
    layout = choose_layout((sy, sx), (dy, dx), itemsize, chunk_bytes=chunk_kb * 1024,
                           shard_bytes=chunk_kb * 1024 * shard_factor)
    validate_layout(layout)
    cy, cx = layout.chunks[:2]
    assert 1 <= cy <= sy and 1 <= cx <= sx
    assert layout.chunks[2:] == (dy, dx)


def test_rejects_chunked_detector_and_bad_shards():
    with pytest.raises(SchemaError, match="detector axes must not be chunked"):
        validate_layout(CubeLayout((4, 4, 8, 8), (1, 4, 8, 4), (1, 4, 8, 8)))
    with pytest.raises(SchemaError, match="whole multiples"):
        validate_layout(CubeLayout((4, 4, 8, 8), (2, 4, 8, 8), (3, 4, 8, 8)))
    with pytest.raises(SchemaError, match="one row high"):
        validate_layout(CubeLayout((4, 4, 8, 8), (2, 2, 8, 8), (2, 4, 8, 8)))


def test_forced_chunk_frames():
    assert choose_layout((10, 10), (5, 5), 1, chunk_frames=30).chunks[:2] == (3, 10)
    assert choose_layout((10, 10), (5, 5), 1, chunk_frames=4).chunks[:2] == (1, 4)
