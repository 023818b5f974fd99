"""incremental_pca through the engine's conformance suite, with scikit-learn as the reference."""

from __future__ import annotations

import numpy as np
from diffraflow.flow.testing import OperatorConformance, synthetic_frames
from diffraflow.operators.decomposition.incremental_pca import IncrementalPCA
from sklearn.decomposition import PCA


def _sklearn_reference(frames: np.ndarray, k: int) -> dict[str, np.ndarray]:
    x = frames.reshape(frames.shape[0] * frames.shape[1], -1).astype(np.float64)
    pca = PCA(n_components=k, svd_solver="full").fit(x)
    return {
        "factors": pca.components_.reshape(k, *frames.shape[2:]).astype(np.float32),
        "loadings": pca.transform(x).reshape(*frames.shape[:2], k).astype(np.float32),
        "explained_variance": pca.explained_variance_,
        "explained_variance_ratio": pca.explained_variance_ratio_,
        "mean": pca.mean_.reshape(frames.shape[2:]),
    }


class TestIncrementalPCAGram(OperatorConformance):
    operator = IncrementalPCA(n_components=3, method="gram")
    frames = synthetic_frames((5, 7), (8, 9), "uint8", seed=2)
    rtol, atol = 1e-4, 1e-3

    def reference(self, frames):
        return _sklearn_reference(frames, 3)


class TestIncrementalPCASketch(OperatorConformance):
    operator = IncrementalPCA(n_components=3, method="svd", sketch_rank=40)
    frames = synthetic_frames((5, 7), (8, 9), "uint8", seed=2)
    rtol, atol = 1e-4, 1e-3

    def reference(self, frames):
        return _sklearn_reference(frames, 3)
