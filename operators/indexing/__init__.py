"""EBSD Hough/Radon indexing: band detection in Radon space and triplet voting.

Modules: :mod:`~operators.indexing.radon` (look-up-table Radon transform),
:mod:`~operators.indexing.bands` (butterfly filter, peaks),
:mod:`~operators.indexing.geometry` (band to plane normal),
:mod:`~operators.indexing.reflectors` (families, interplanar angles),
:mod:`~operators.indexing.voting` (hypotheses, votes, least squares),
:mod:`~operators.indexing.kernel` (fused CPU kernel),
:mod:`~operators.indexing.gpu` (CuPy path, imported lazily),
:mod:`~operators.indexing.indexer` (:class:`HoughIndexer`).
"""

from operators.indexing.indexer import HoughIndexer

__all__ = ["HoughIndexer"]
