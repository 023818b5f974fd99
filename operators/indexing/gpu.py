"""CuPy path (placeholder, completed below)."""
from __future__ import annotations


def cuda_available() -> bool:
    try:
        import cupy as cp  # noqa: F401

        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False
