"""EBSD Hough/Radon indexing: band detection in Radon space and triplet voting.

Modules: :mod:`~operators.indexing.radon` (look-up-table Radon transform),
:mod:`~operators.indexing.bands` (butterfly filter, peaks),
:mod:`~operators.indexing.geometry` (band to plane normal),
:mod:`~operators.indexing.reflectors` (families, interplanar angles),
:mod:`~operators.indexing.voting` (hypotheses, votes, least squares),
:mod:`~operators.indexing.refine` (guided re-measurement of every predicted band),
:mod:`~operators.indexing.kernel` (fused CPU kernel),
:mod:`~operators.indexing.gpu` (CuPy path, imported lazily),
:mod:`~operators.indexing.indexer` (:class:`HoughIndexer`),
:mod:`~operators.indexing.testing` (seeded simulated patterns for tests and benchmarks).

Numba caches compiled kernels next to the sources (``cache=True``); numba
only checks the timestamp of the file defining each cached function, so after
editing a kernel module, delete ``operators/indexing/__pycache__/*.nb[ci]``
to be sure no stale inlined copy survives.
"""

from operators.indexing.indexer import HoughIndexer

__all__ = ["HoughIndexer"]
