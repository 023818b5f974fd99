"""Image quality of restored patterns against the clean ones: PSNR and SSIM, per frame.

Restored and clean patterns live on different scales (counts, standardised
network outputs, intensities in [0, 1]), so both are standardised per frame
(zero mean, unit variance) before they are compared; the data range of PSNR
and SSIM is that of the standardised clean pattern. SSIM is the usual one
(Wang et al. 2004): Gaussian window of sigma 1.5 px, :math:`K_1 = 0.01`,
:math:`K_2 = 0.03`, averaged over the frame less a border of the window's
half width (as scikit-image does, so figures compare with it).

Pure NumPy/SciPy.

Examples
--------
>>> import numpy as np
>>> clean = np.random.default_rng(0).random((2, 16, 16))
>>> psnr(clean, clean).tolist(), [round(v, 6) for v in ssim(clean, clean).tolist()]
([inf, inf], [1.0, 1.0])
>>> bool((psnr(clean + 0.3 * np.random.default_rng(1).random((2, 16, 16)), clean) < 40).all())
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["standardised", "psnr", "ssim"]


def standardised(frames: np.ndarray) -> np.ndarray:
    """Frames ``(n, h, w)`` as float64 with zero mean and unit variance each (constant frames: zeros).

    Examples
    --------
    >>> standardised(np.array([[[1.0, 3.0]]])).tolist()
    [[[-1.0, 1.0]]]
    """
    x = np.asarray(frames, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    mean = flat.mean(axis=1)[:, None, None]
    std = flat.std(axis=1)[:, None, None]
    return (x - mean) / np.where(std > 0, std, 1.0)


def psnr(restored: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio (dB) of each restored frame against its clean frame, both standardised.

    Examples
    --------
    >>> a = np.zeros((1, 2, 2)); a[0, 0, 0] = 1
    >>> round(float(psnr(a * 0.5, a)[0]), 2)
    inf
    """
    r, c = standardised(restored), standardised(clean)
    mse = ((r - c) ** 2).reshape(len(c), -1).mean(axis=1)
    peak = np.ptp(c.reshape(len(c), -1), axis=1)
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, 10 * np.log10(peak ** 2 / np.maximum(mse, 1e-300)), np.inf)


def ssim(restored: np.ndarray, clean: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Mean structural similarity of each restored frame with its clean frame, both standardised.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> c = rng.random((3, 20, 20)); r = c + 0.5 * rng.random((3, 20, 20))
    >>> bool((ssim(r, c) < 1).all() and (ssim(r, c) > 0).all())
    True
    """
    from scipy.ndimage import gaussian_filter

    x, y = standardised(restored), standardised(clean)
    span = np.ptp(y.reshape(len(y), -1), axis=1)[:, None, None]
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=(0, sigma, sigma), mode="reflect", truncate=3.5)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    border = int(3.5 * sigma + 0.5)
    if min(s.shape[1:]) > 2 * border:
        s = s[:, border:-border, border:-border]
    return s.reshape(len(s), -1).mean(axis=1)
