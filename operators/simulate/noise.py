"""Detector models for the simulators: smooth background, dose scaling, shot and read noise.

Pure NumPy kernels. Random numbers come from :func:`stream_rng`, which keys a
generator by ``(seed, stream, index)``: every random draw of a simulation
belongs to a named stream (grains, orientations, noise of scan row ``i``...),
so changing one parameter or the batch size does not reshuffle the others.

Examples
--------
>>> import numpy as np
>>> lam = expected_counts(np.ones((2, 3, 3)), dose=10.0)
>>> float(lam.mean())
10.0
>>> counts = add_counting_noise(lam, stream_rng(0, STREAM_NOISE, 0), read_noise=0.0, dtype="uint8")
>>> counts.dtype.name
'uint8'
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "STREAM_GRAINS",
    "STREAM_NOISE",
    "STREAM_ORIENTATIONS",
    "STREAM_PHASES",
    "STREAM_SPOTS",
    "STREAM_SPREAD",
    "add_counting_noise",
    "choose_count_dtype",
    "expected_counts",
    "smooth_background",
    "stream_rng",
]

# Stream numbers: part of the seeding contract, never renumber.
STREAM_GRAINS = 1
STREAM_ORIENTATIONS = 2
STREAM_SPREAD = 3
STREAM_PHASES = 4
STREAM_NOISE = 5
STREAM_SPOTS = 6


def stream_rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """A NumPy generator for one named random stream of a seeded simulation.

    Examples
    --------
    >>> a = stream_rng(7, STREAM_NOISE, 3).random(); b = stream_rng(7, STREAM_NOISE, 3).random()
    >>> a == b, a == stream_rng(7, STREAM_NOISE, 4).random()
    (True, False)
    """
    return np.random.default_rng([int(seed), int(stream), int(index)])


def smooth_background(det_shape: tuple[int, int], centre: tuple[float, float] | None = None,
                      sigma: tuple[float, float] | None = None) -> np.ndarray:
    """A broad 2D Gaussian, peak 1, standing in for the diffuse EBSD background.

    Parameters
    ----------
    det_shape
        ``(det_y, det_x)``.
    centre
        ``(y, x)`` of the peak in pixels; default the detector centre.
    sigma
        ``(sigma_y, sigma_x)`` in pixels; default 0.6 of each side, so the
        corners fall to about half the peak as on a real phosphor screen.

    Returns
    -------
    numpy.ndarray
        float32 ``det_shape``, maximum 1 at ``centre`` (if on the detector).

    Examples
    --------
    >>> b = smooth_background((5, 7))
    >>> b.shape, float(b[2, 3])
    ((5, 7), 1.0)
    """
    h, w = int(det_shape[0]), int(det_shape[1])
    cy, cx = ((h - 1) / 2, (w - 1) / 2) if centre is None else centre
    sy, sx = (0.6 * h, 0.6 * w) if sigma is None else sigma
    y = (np.arange(h) - cy) / sy
    x = (np.arange(w) - cx) / sx
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)


def expected_counts(ideal: np.ndarray, dose: float) -> np.ndarray:
    """Scale noise-free frames so each has mean ``dose`` counts per pixel.

    Parameters
    ----------
    ideal
        ``(n, det_y, det_x)`` non-negative noise-free intensities.
    dose
        Mean counts per pixel of every frame.

    Returns
    -------
    numpy.ndarray
        float64 Poisson means, same shape.

    Notes
    -----
    Each frame is normalised by its own mean, :math:`\\lambda = D\\,I/\\bar I`,
    as an exposure-controlled camera would, so ``dose`` is exactly the
    expected mean count of every frame whatever its orientation.

    Examples
    --------
    >>> import numpy as np
    >>> expected_counts(np.array([[[1.0, 3.0]]]), 4.0).tolist()
    [[[2.0, 6.0]]]
    """
    ideal = np.asarray(ideal)
    mean = ideal.reshape(len(ideal), -1).mean(axis=1, dtype=np.float64)
    mean = np.where(mean > 0, mean, 1.0)  # an all-dark frame stays dark instead of NaN
    # float64 out: rng.poisson wants float64 means and would otherwise copy.
    return np.multiply(ideal, (float(dose) / mean)[:, None, None], dtype=np.float64)


def add_counting_noise(lam: np.ndarray, rng: np.random.Generator, read_noise: float = 0.0,
                       dtype: str | np.dtype = "uint16") -> np.ndarray:
    """Poisson shot noise on ``lam``, plus Gaussian read noise, rounded and clipped to ``dtype``.

    Values above the dtype's maximum saturate, as a real camera does.

    Examples
    --------
    >>> import numpy as np
    >>> x = add_counting_noise(np.full((1, 100, 100), 9.0), stream_rng(1, STREAM_NOISE), 0.0)
    >>> round(float(x.mean())), round(float(x.var()))
    (9, 9)
    """
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype)
    counts = rng.poisson(lam)
    if read_noise > 0:
        # float32 and the ziggurat standard normal: the noise pass costs a fraction of the Poisson draw.
        noisy = rng.standard_normal(counts.shape, dtype=np.float32)
        noisy *= np.float32(read_noise)
        noisy += counts
        np.rint(noisy, out=noisy)
        np.clip(noisy, info.min, info.max, out=noisy)
        return noisy.astype(dtype)
    np.clip(counts, info.min, info.max, out=counts)
    return counts.astype(dtype)


def choose_count_dtype(max_expected: float, read_noise: float = 0.0) -> np.dtype:
    """``uint8`` when counts almost surely stay below 256, else ``uint16``.

    The margin is six standard deviations of the shot and read noise above
    the largest expected count.

    Examples
    --------
    >>> choose_count_dtype(100.0).name, choose_count_dtype(400.0).name
    ('uint8', 'uint16')
    """
    peak = float(max_expected)
    if not np.isfinite(peak):
        return np.dtype("uint16")
    top = peak + 6.0 * np.sqrt(max(peak, 0.0)) + 6.0 * float(read_noise)
    return np.dtype("uint8") if top <= 255 else np.dtype("uint16")
