"""Compute backends: the one list that operators, pipeline files and executors share.

A backend names where a kernel runs and with which array library:

=============  ==========  =======  ====
name           library     device   GPU
=============  ==========  =======  ====
``numpy``      NumPy        CPU      no
``cupy``       CuPy         CUDA     yes
``torch-cpu``  PyTorch      CPU      no
``torch-cuda`` PyTorch      CUDA     yes
=============  ==========  =======  ====

Operators declare the backends their kernel supports (``backends = ("numpy",
"cupy")``), a pipeline step picks one (``backend: cupy``), and the engine
places steps on a ``GPU`` backend on workers with a GPU. CuPy and torch are
imported only by :func:`backend_available` and :func:`array_module`, never at
import time, so the CPU paths need neither.

Examples
--------
>>> get_backend("torch-cpu").gpu
False
>>> [b.name for b in BACKENDS.values() if b.gpu]
['cupy', 'torch-cuda']
>>> get_backend("torch")
Traceback (most recent call last):
...
diffraflow.schemas.errors.BackendUnavailableError: backend: 'torch' is not a backend (fix: use torch-cpu or torch-cuda: the device is part of the backend's name)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from diffraflow.schemas.errors import BackendUnavailableError

__all__ = ["Backend", "BACKENDS", "BACKEND_NAMES", "get_backend", "backend_available", "require_backend",
           "array_module"]


@dataclass(frozen=True)
class Backend:
    """One compute backend.

    Attributes
    ----------
    name
        The name used in pipeline files and operator declarations.
    library
        ``numpy``, ``cupy`` or ``torch``: what the kernel receives its frames as.
    device
        ``cpu`` or ``cuda``.
    """

    name: str
    library: str
    device: str

    @property
    def gpu(self) -> bool:
        """True when the backend needs a CUDA device (and a worker with the ``GPU`` resource)."""
        return self.device == "cuda"


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("numpy", "numpy", "cpu"),
    Backend("cupy", "cupy", "cuda"),
    Backend("torch-cpu", "torch", "cpu"),
    Backend("torch-cuda", "torch", "cuda"),
)}
#: Backend names in order (the pipeline schema's enum).
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)


def get_backend(name: str, where: str = "backend") -> Backend:
    """The backend called ``name``; a one-line error naming the valid ones otherwise.

    Examples
    --------
    >>> get_backend("cupy").library
    'cupy'
    """
    backend = BACKENDS.get(str(name))
    if backend is not None:
        return backend
    if name == "torch":
        raise BackendUnavailableError(where, "'torch' is not a backend",
                                      "use torch-cpu or torch-cuda: the device is part of the backend's name")
    raise BackendUnavailableError(where, f"unknown backend {name!r}", f"use one of {', '.join(BACKEND_NAMES)}")


@functools.cache
def backend_available(name: str) -> bool:
    """True when ``name`` can run on this machine (its library imports and, for CUDA, a device exists).

    Examples
    --------
    >>> backend_available("numpy")
    True
    """
    backend = get_backend(name)
    try:
        if backend.library == "cupy":
            import cupy

            return bool(cupy.cuda.runtime.getDeviceCount() > 0)
        if backend.library == "torch":
            import torch

            return backend.device == "cpu" or bool(torch.cuda.is_available())
    except Exception:
        return False
    return True


def require_backend(name: str, where: str) -> Backend:
    """The backend, or BackendUnavailableError when this machine cannot run it.

    Examples
    --------
    >>> require_backend("numpy", "step 'a'").name
    'numpy'
    """
    backend = get_backend(name, where)
    if not backend_available(name):
        need = "CUDA and CuPy" if backend.library == "cupy" else ("PyTorch with CUDA" if backend.gpu else "PyTorch")
        raise BackendUnavailableError(where, f"backend {name!r} needs {need}, which is not available here",
                                      "run on a machine that has it, or choose another backend for this step")
    return backend


def array_module(name: str) -> Any:
    """The array library a kernel on backend ``name`` works with (numpy, cupy or torch).

    Examples
    --------
    >>> array_module("numpy").__name__
    'numpy'
    """
    library = get_backend(name).library
    if library == "cupy":
        import cupy

        return cupy
    if library == "torch":
        import torch

        return torch
    import numpy

    return numpy
