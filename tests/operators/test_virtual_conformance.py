"""Virtual-image operators through the engine's conformance suite."""

from __future__ import annotations

import numpy as np
from diffraflow.flow.testing import OperatorConformance, synthetic_frames
from diffraflow.operators.virtual.annular_dark_field import AnnularDarkField
from diffraflow.operators.virtual.bright_field import BrightField
from diffraflow.operators.virtual.virtual_image import VirtualImage

FRAMES = synthetic_frames((5, 7), (8, 9), "uint16", seed=4)
YY, XX = np.mgrid[:8, :9]
R2 = (YY - 3.5) ** 2 + (XX - 4) ** 2


class TestVirtualImage(OperatorConformance):
    operator = VirtualImage(masks=[{"type": "disk", "radius": 2}, {"type": "annulus", "inner": 2, "outer": 4},
                                   {"type": "rectangle", "bounds": [0, 3, 0, 9]}])
    frames = FRAMES

    def reference(self, frames):
        rect = np.zeros((8, 9), bool)
        rect[:3] = True
        masks = np.stack([R2 <= 4, (R2 > 4) & (R2 <= 16), rect]).astype(np.float64)
        return {"images": np.einsum("yxij,mij->yxm", frames.astype(np.float64), masks)}


class TestBrightField(OperatorConformance):
    operator = BrightField(radius=2.5)
    frames = FRAMES

    def reference(self, frames):
        return {"image": (frames.astype(np.float64) * (R2 <= 6.25)).sum(axis=(2, 3))}


class TestAnnularDarkField(OperatorConformance):
    operator = AnnularDarkField(reduce="mean")
    frames = FRAMES

    def reference(self, frames):
        ring = (R2 > 4) & (R2 <= 16)  # defaults: inner 8/4, outer 8/2
        return {"image": frames.astype(np.float64)[..., ring].mean(axis=-1)}
