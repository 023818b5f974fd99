"""EBSD Hough/Radon indexing: band detection in Radon space and triplet voting.

Modules: :mod:`~diffraflow.operators.indexing.radon` (look-up-table Radon transform),
:mod:`~diffraflow.operators.indexing.bands` (butterfly filter, peaks),
:mod:`~diffraflow.operators.indexing.geometry` (band to plane normal),
:mod:`~diffraflow.operators.indexing.reflectors` (families, interplanar angles),
:mod:`~diffraflow.operators.indexing.voting` (hypotheses, votes, least squares),
:mod:`~diffraflow.operators.indexing.refine` (guided re-measurement of every predicted band),
:mod:`~diffraflow.operators.indexing.kernel` (fused CPU kernel),
:mod:`~diffraflow.operators.indexing.gpu` (CUDA path: CuPy image stages, pinned buffers, streams; CuPy imported lazily),
:mod:`~diffraflow.operators.indexing.cuda_kernels` (numba-cuda kernel: peaks to orientations, one block per pattern),
:mod:`~diffraflow.operators.indexing.indexer` (:class:`HoughIndexer`),
:mod:`~diffraflow.operators.indexing.testing` (seeded simulated patterns for tests and benchmarks).

Numba caches compiled kernels next to the sources (``cache=True``); numba
only checks the timestamp of the file defining each cached function, so after
editing a kernel module, delete ``operators/indexing/__pycache__/*.nb[ci]``
to be sure no stale inlined copy survives.
"""

from diffraflow.operators.indexing.indexer import HoughIndexer

__all__ = ["HoughIndexer"]
