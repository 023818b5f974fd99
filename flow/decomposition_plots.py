"""Pictures of ``decomposition`` results: scree plot, factors, loadings, memberships, error, loading scatter.

Each function draws one PNG from bare arrays (matplotlib's object API on the
Agg canvas, written atomically as :mod:`diffraflow.flow.plots` does);
:func:`plot_decomposition_group` draws every picture a decomposition step
of a result store has data for:

==========================  ================================================
``<prefix>_scree.png``      explained-variance ratio per component (log)
``<prefix>_factors.png``    factor patterns above loading maps (or
                            profiles, for line scans), one column each
``<prefix>_memberships.png``  membership maps of fuzzy clustering
``<prefix>_scatter.png``    SVD loadings of every frame, two components
                            against each other, with membership contours
                            (the seed paper's Figs. 3c and 6d)
``<prefix>_error.png``      loss or objective per iteration
==========================  ================================================

Examples
--------
>>> import tempfile, pathlib
>>> rng = np.random.default_rng(0)
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> plot_scree([0.9, 0.08, 0.02], out / "s.png").name
's.png'
>>> plot_components(rng.uniform(size=(2, 8, 8)), rng.uniform(size=(3, 10, 2)), out / "c.png").name
'c.png'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.flow.plots import (
    _as_image,
    _det_axes,
    _draw_map,
    _figure,
    _save,
    detector_scale,
    scan_scale,
)
from diffraflow.schemas.errors import SchemaError

__all__ = ["plot_scree", "plot_components", "plot_memberships", "plot_error", "plot_loading_scatter",
           "membership_grid", "plot_decomposition_group"]

#: Scans with at most this many rows are drawn as profiles (mean over rows) instead of maps.
PROFILE_ROWS = 4


def plot_scree(ratio: Any, path: str | os.PathLike[str], *, title: str = "scree plot", overwrite: bool = True,
               dpi: int = 100) -> Path:
    """Explained-variance ratio per component on a log axis.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> plot_scree([0.5, 0.3], pathlib.Path(tempfile.mkdtemp()) / "s.png").suffix
    '.png'
    """
    values = np.asarray(ratio, np.float64).ravel()
    if values.size == 0:
        raise SchemaError("plot: scree", "no components to draw", "pass the explained variance ratio")
    fig = _figure((4.5, 3.4), dpi)
    ax = fig.add_subplot(1, 1, 1)
    ax.semilogy(np.arange(values.size), np.clip(values, np.finfo(float).tiny, None), "o-")
    ax.set_xlabel("component")
    ax.set_ylabel("explained variance ratio")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path, overwrite)


def _profile_axis(ax: Any, loadings: np.ndarray, j: int, scale: Any, label: str) -> None:
    profile = loadings[..., j].mean(axis=0)
    x = np.arange(profile.size) * scale.x
    ax.plot(x, profile, "-", color="C0")
    ax.set_xlabel(f"x ({scale.label})")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)


def plot_components(factors: Any, loadings: Any, path: str | os.PathLike[str], *, title: str = "decomposition",
                    attrs: Mapping[str, Any] | None = None, label: str = "loading", factor_label: str = "factor",
                    n_show: int = 6, overwrite: bool = True, dpi: int = 100) -> Path:
    """Factor patterns (top row) above their loading maps or profiles (bottom row).

    Signed factors get a diverging map centred on 0 (SVD, ICA); non-negative
    ones (NMF, cluster centres) a sequential map from 0. Scans of at most
    four rows are drawn as profiles along ``scan_x`` (mean over rows), as
    the seed paper draws its line scans.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = np.abs(np.random.default_rng(1).normal(size=(2, 6, 6)))
    >>> plot_components(f, np.ones((20, 30, 2)), pathlib.Path(tempfile.mkdtemp()) / "c.png").name
    'c.png'
    """
    fac = _as_image(factors, "factors", ndim=3)
    load = _as_image(loadings, "loadings", ndim=3)
    if fac.shape[0] != load.shape[2]:
        raise SchemaError("plot: decomposition", f"{fac.shape[0]} factors but {load.shape[2]} loadings",
                          "pass factors (component, det_y, det_x) and loadings (scan_y, scan_x, component)")
    k = min(int(n_show), fac.shape[0])
    fig = _figure((max(6.0, 3.2 * k), 6.4), dpi)
    fig.suptitle(title, fontsize=11)
    grid = fig.add_gridspec(2, k)
    sscale, dscale = scan_scale(attrs), detector_scale(attrs, fac.shape[1:])
    profiles = load.shape[0] <= PROFILE_ROWS
    for j in range(k):
        signed = float(np.nanmin(fac[j])) < 0
        top = float(np.nanmax(np.abs(fac[j]))) or 1.0
        ax = fig.add_subplot(grid[0, j])
        _draw_map(fig, ax, fac[j], dscale, f"{factor_label} {j}", "intensity", "RdBu_r" if signed else "inferno",
                  -top if signed else 0.0, top, False, _det_axes(dscale))
        ax = fig.add_subplot(grid[1, j])
        if profiles:
            _profile_axis(ax, load, j, sscale, label)
            ax.set_title(f"{label} {j}", fontsize=10)
            continue
        signed = float(np.nanmin(load[..., j])) < 0
        top = float(np.nanmax(np.abs(load[..., j]))) or 1.0
        _draw_map(fig, ax, load[..., j], sscale, f"{label} {j}", label, "RdBu_r" if signed else "viridis",
                  -top if signed else 0.0, top, False, ("y", "x"))
    return _save(fig, path, overwrite)


def plot_memberships(memberships: Any, path: str | os.PathLike[str], *, title: str = "memberships",
                     attrs: Mapping[str, Any] | None = None, overwrite: bool = True, dpi: int = 100) -> Path:
    """Membership of every scan point in each cluster, on a fixed 0-1 scale (profiles for line scans).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> u = np.random.default_rng(0).dirichlet([1, 1], size=(4, 5))
    >>> plot_memberships(u, pathlib.Path(tempfile.mkdtemp()) / "m.png").name
    'm.png'
    """
    u = _as_image(memberships, "memberships", ndim=3)
    c = u.shape[2]
    sscale = scan_scale(attrs)
    if u.shape[0] <= PROFILE_ROWS:
        fig = _figure((6.0, 3.6), dpi)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(u.shape[1]) * sscale.x
        for j in range(c):
            ax.plot(x, u[..., j].mean(axis=0), label=f"cluster {j}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"x ({sscale.label})")
        ax.set_ylabel("membership")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.set_title(title, fontsize=10)
        return _save(fig, path, overwrite)
    fig = _figure((max(6.0, 3.4 * c), 3.6), dpi)
    fig.suptitle(title, fontsize=11)
    for j in range(c):
        ax = fig.add_subplot(1, c, j + 1)
        _draw_map(fig, ax, u[..., j], sscale, f"cluster {j}", "membership", "viridis", 0.0, 1.0, False, ("y", "x"))
    return _save(fig, path, overwrite)


def plot_error(error: Any, path: str | os.PathLike[str], *, title: str = "loss per iteration", label: str = "loss",
               overwrite: bool = True, dpi: int = 100) -> Path:
    """The loss or objective of each iteration (NaN entries, after the last iteration, are left out).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> plot_error([3.0, 2.0, 1.5, np.nan], pathlib.Path(tempfile.mkdtemp()) / "e.png").name
    'e.png'
    """
    values = np.asarray(error, np.float64).ravel()
    values = values[np.isfinite(values)]
    fig = _figure((4.5, 3.4), dpi)
    ax = fig.add_subplot(1, 1, 1)
    if values.size and np.all(values > 0):
        ax.semilogy(np.arange(values.size), values, ".-")
    else:
        ax.plot(np.arange(values.size), values, ".-")
    ax.set_xlabel("iteration")
    ax.set_ylabel(label)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path, overwrite)


def membership_grid(centres: Any, norms: Any, axes: tuple[int, int], limits: tuple[float, float, float, float],
                    *, m: float = 2.0, contrast: float = 0.0, through: Any = None, size: int = 160
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Memberships on a grid over the plane of two SVD loadings; the other loadings fixed at ``through``.

    Returns ``(gx, gy, u)`` with ``u`` of shape ``(size, size, clusters)``,
    computed with the same formula as the clustering
    (:func:`diffraflow.operators.decomposition._fuzzy.memberships`).

    Examples
    --------
    >>> gx, gy, u = membership_grid(np.array([[0.0, 0.0], [1.0, 0.0]]), np.repeat(np.eye(2)[None], 2, 0),
    ...                             (0, 1), (-1, 2, -1, 1), size=5)
    >>> u.shape, bool(np.allclose(u.sum(axis=-1), 1))
    ((5, 5, 2), True)
    """
    from diffraflow.operators.decomposition._fuzzy import distances, memberships

    centres = np.asarray(centres, np.float64)
    norms = np.asarray(norms, np.float64)
    d = centres.shape[1]
    base = np.asarray(through if through is not None else centres.mean(axis=0), np.float64)
    xs = np.linspace(limits[0], limits[1], size)
    ys = np.linspace(limits[2], limits[3], size)
    gx, gy = np.meshgrid(xs, ys)
    points = np.repeat(base[None, :], gx.size, axis=0) if d else np.zeros((gx.size, 0))
    points[:, axes[0]] = gx.ravel()
    points[:, axes[1]] = gy.ravel()
    u = memberships(np, distances(np, points, centres, norms), m=m, contrast=contrast)
    return gx, gy, u.reshape(size, size, -1)


def plot_loading_scatter(svd_loadings: Any, path: str | os.PathLike[str], *, memberships: Any = None,
                         centres: Any = None, norms: Any = None, axes: tuple[int, int] | None = None,
                         m: float = 2.0, contrast: float = 0.0, marked: Sequence[int] | None = None,
                         title: str = "SVD loadings", overwrite: bool = True, dpi: int = 100) -> Path:
    """Every frame's SVD loadings in the plane of two components, with membership contours.

    Points are coloured by the cluster they belong to most (when
    ``memberships`` are given); contours of each cluster's membership
    (0.1, 0.5, 0.9) are drawn from ``centres`` and ``norms`` on the plane
    through the data's mean in the other loadings. ``axes`` default to
    loadings 1 and 2 (the first, uncentred, is the mean pattern's), or 0
    and 1 with two loadings. ``marked`` flat indices (VCA endmembers) are
    ringed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> z = np.random.default_rng(0).normal(size=(3, 4, 3))
    >>> plot_loading_scatter(z, pathlib.Path(tempfile.mkdtemp()) / "sc.png").name
    'sc.png'
    """
    z = _as_image(svd_loadings, "svd_loadings", ndim=3).reshape(-1, np.asarray(svd_loadings).shape[-1])
    d = z.shape[1]
    if axes is None:
        axes = (1, 2) if d >= 3 else (0, 1) if d == 2 else (0, 0)
    a, b = axes
    fig = _figure((5.0, 4.4), dpi)
    ax = fig.add_subplot(1, 1, 1)
    colours = None
    if memberships is not None:
        u = np.asarray(memberships, np.float64).reshape(z.shape[0], -1)
        colours = [f"C{j % 10}" for j in np.argmax(u, axis=1)]
    ax.scatter(z[:, a], z[:, b], s=6, c=colours if colours is not None else "C0", alpha=0.7, linewidths=0)
    if centres is not None and norms is not None and d >= 2:
        pad_x = 0.1 * (np.ptp(z[:, a]) or 1.0)
        pad_y = 0.1 * (np.ptp(z[:, b]) or 1.0)
        limits = (float(z[:, a].min() - pad_x), float(z[:, a].max() + pad_x), float(z[:, b].min() - pad_y),
                  float(z[:, b].max() + pad_y))
        gx, gy, u = membership_grid(centres, norms, (a, b), limits, m=m, contrast=contrast, through=z.mean(axis=0))
        n_clusters = int(np.shape(u)[-1])
        # two clusters' memberships are complementary: one set of contours says it all
        for j in range(1 if n_clusters == 2 else n_clusters):
            contour = ax.contour(gx, gy, u[..., j], levels=[0.1, 0.5, 0.9], colors=f"C{j % 10}", linewidths=0.8)
            ax.clabel(contour, fontsize=6)
        cen = np.asarray(centres)
        ax.plot(cen[:, a], cen[:, b], "k+", markersize=10)
    if marked is not None and len(marked):
        idx = np.asarray(marked, int)
        ax.scatter(z[idx, a], z[idx, b], s=80, facecolors="none", edgecolors="k")
    ax.set_xlabel(f"SVD loading {a}")
    ax.set_ylabel(f"SVD loading {b}")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    return _save(fig, path, overwrite)


def plot_decomposition_group(group: Any, record: Mapping[str, Any], prefix: str | os.PathLike[str], *,
                             attrs: Mapping[str, Any] | None = None, overwrite: bool = True) -> list[Path]:
    """Every picture of one decomposition step of a result store (see the module docs).

    Parameters
    ----------
    group
        The step's Zarr group (arrays ``factors``, ``loadings``...).
    record
        The step's entry in the store's ``results`` attribute (``method``...).
    prefix
        Pictures are written as ``<prefix>_<picture>.png``.
    attrs
        The input cube's scan attributes (scale bars).

    Examples
    --------
    >>> # plot_decomposition_group(store["nmf"], results["nmf"], "pictures/run_nmf")
    """
    names = set(group.array_keys())
    method = str(record.get("method", record.get("operator", "decomposition")))
    step = str(record.get("prefix", method))
    written: list[Path] = []

    def read(name: str) -> np.ndarray:
        return np.asarray(group[name][...])

    if "explained_variance_ratio" in names:
        written.append(plot_scree(read("explained_variance_ratio"), f"{prefix}_scree.png",
                                  title=f"{step}: scree plot ({method})", overwrite=overwrite))
    elif "explained_variance" in names:
        ev = read("explained_variance")
        written.append(plot_scree(ev / max(float(ev.sum()), np.finfo(float).tiny), f"{prefix}_scree.png",
                                  title=f"{step}: scree plot ({method})", overwrite=overwrite))
    fuzzy = method == "fuzzy_cmeans"
    label = "membership" if fuzzy else "abundance" if method == "vca" else "loading"
    factor_label = "centre" if fuzzy else "endmember" if method == "vca" else "factor"
    if {"factors", "loadings"} <= names:
        written.append(plot_components(read("factors"), read("loadings"), f"{prefix}_factors.png",
                                       title=f"{step}: {method}", attrs=attrs, label=label,
                                       factor_label=factor_label, overwrite=overwrite))
    if "memberships" in names:
        written.append(plot_memberships(read("memberships"), f"{prefix}_memberships.png",
                                        title=f"{step}: memberships", attrs=attrs, overwrite=overwrite))
    if "svd_loadings" in names:
        kwargs: dict[str, Any] = {}
        if {"centres", "norm_matrices"} <= names:
            kwargs = {"centres": read("centres"), "norms": read("norm_matrices"),
                      "m": float(record.get("m", 2.0)), "contrast": float(record.get("contrast", 0.0))}
        if "memberships" in names:
            kwargs["memberships"] = read("memberships")
        if "endmember_index" in names:
            kwargs["marked"] = read("endmember_index")
        written.append(plot_loading_scatter(read("svd_loadings"), f"{prefix}_scatter.png",
                                            title=f"{step}: SVD loadings", overwrite=overwrite, **kwargs))
    if "error" in names:
        written.append(plot_error(read("error"), f"{prefix}_error.png", title=f"{step}: per iteration",
                                  label="objective" if fuzzy else "loss", overwrite=overwrite))
    return written
