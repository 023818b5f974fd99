"""Decomposition operators (product ``decomposition``: factors, loadings, explained variance).

* ``incremental_pca``: out-of-core PCA in three passes (mean, mergeable
  covariance sketch, loadings); kernels in :mod:`diffraflow.operators.decomposition._pca`.
"""
