"""Decomposition operators (product ``decomposition``: factors, loadings, explained variance, memberships, error).

* ``incremental_pca``: out-of-core PCA in three passes (mean, mergeable
  covariance sketch, loadings); kernels in :mod:`diffraflow.operators.decomposition._pca`.
* ``svd``: truncated SVD or PCA (Gram matrix or randomised subspace
  iteration), optional Poisson weighting: the scree plot.
* ``ica``: FastICA on the SVD loadings.
* ``nmf``: NMF from an NNDSVD start, Frobenius (exact alternating
  non-negative least squares) or Kullback-Leibler loss, optional sum-to-one
  loadings; one pass per iteration, no per-frame state.
* ``fuzzy_cmeans``: fuzzy c-means on the SVD loadings, Gustafson-Kessel
  and high-contrast variants, weighted-average centre patterns.
* ``vca``: vertex component analysis (purest frames as endmembers).

The SVD passes every method but ``incremental_pca`` starts with are in
:mod:`diffraflow.operators.decomposition._stages`; kernels written once for
NumPy and CuPy in ``_linalg``, ``_nmf``, ``_fuzzy`` and ``_vca``.
"""
