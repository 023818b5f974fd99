"""Shared pytest configuration: GPU tests are skipped when CUDA is absent."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def cuda_available() -> bool:
    """True when CuPy can see a CUDA device (imported lazily; never required)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA: no CUDA device or CuPy on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
