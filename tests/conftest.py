"""Shared pytest configuration: GPU tests are skipped when CUDA is absent."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def cuda_available() -> bool:
    """True when a CUDA backend (CuPy or PyTorch with CUDA) can run here; never imports them at collection."""
    from diffraflow.schemas.backends import backend_available

    return backend_available("cupy") or backend_available("torch-cuda")


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items) or cuda_available():
        return
    for item in items:
        if "gpu" not in item.keywords:
            continue
        # The conformance suite's backend tests say which backend they would have compared.
        backend = getattr(item, "callspec", None) and item.callspec.params.get("conformance_backend")
        what = f"backend {backend!r} needs" if backend else "needs"
        item.add_marker(pytest.mark.skip(reason=f"{what} CUDA: no CUDA device for CuPy or PyTorch on this machine"))
