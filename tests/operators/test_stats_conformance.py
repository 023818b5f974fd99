"""mean_pattern and max_pattern through the engine's conformance suite."""

from __future__ import annotations

import numpy as np
from diffraflow.flow.testing import OperatorConformance, synthetic_frames
from diffraflow.operators.stats.max_pattern import MaxPattern
from diffraflow.operators.stats.mean_pattern import MeanPattern


class TestMeanPattern(OperatorConformance):
    operator = MeanPattern()
    rtol = 0.0  # integer sums in float64 are exact

    def reference(self, frames):
        return {"mean": frames.astype(np.float64).sum(axis=(0, 1)) / (frames.shape[0] * frames.shape[1])}


class TestMeanPatternFloat(OperatorConformance):
    operator = MeanPattern()
    frames = synthetic_frames((5, 7), (8, 9), "float32", seed=1)
    rtol = 1e-12

    def reference(self, frames):
        return {"mean": frames.astype(np.float64).mean(axis=(0, 1))}


class TestMaxPattern(OperatorConformance):
    operator = MaxPattern()

    def reference(self, frames):
        return {"max": frames.max(axis=(0, 1))}
