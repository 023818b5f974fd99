"""PNG pictures of a crystal map: IPF orientation map, confidence, fit and phase maps.

Not-indexed points are black in every picture, and a legend entry says so
with their share of the map. Given a confidence threshold, points whose
solution is below it count as not indexed in the IPF, fit and phase maps; the
confidence map shows every solution's confidence and marks the threshold on
its colour bar. The confidence and fit colour maps never come near black
(:func:`property_colormap`), so a poor point is never mistaken for a
not-indexed one. The IPF map colours each phase with orix's
:class:`~orix.plot.IPFColorKeyTSL` for its point group and the chosen sample
direction, and draws the colour key (one per Laue group present) beside the
map. Figures are made with matplotlib's object API (no
pyplot state, no display needed) and written under a temporary name, then
renamed.

Examples
--------
>>> import tempfile, pathlib
>>> from orix.crystal_map import CrystalMap, Phase, PhaseList
>>> from orix.quaternion import Rotation
>>> xmap = CrystalMap(Rotation.random(12), x=__import__("numpy").tile(range(4), 3) * 1.0,
...                   y=__import__("numpy").repeat(range(3), 4) * 1.0,
...                   phase_list=PhaseList(Phase("ni", point_group="m-3m")))
>>> paths = write_crystal_map_pngs(xmap, pathlib.Path(tempfile.mkdtemp()) / "map")
>>> [p.name for p in paths]
['map_ipf.png', 'map_confidence.png', 'map_fit.png', 'map_phase.png']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.flow.exporters._common import atomic_write, check_output
from diffraflow.schemas.errors import SchemaError

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from orix.crystal_map import CrystalMap
    from orix.plot import InversePoleFigurePlot
    from orix.quaternion import Symmetry
    from orix.vector import Vector3d

__all__ = ["ipf_rgb", "plot_ipf_map", "plot_property_map", "plot_phase_map", "write_crystal_map_pngs",
           "png_paths", "property_colormap", "IPF_DIRECTIONS", "NOT_INDEXED_COLOR", "PROPERTY_COLORMAPS"]

IPF_DIRECTIONS = ("x", "y", "z")
#: Colour of not-indexed points in every picture (as OIM and AZtec draw them).
NOT_INDEXED_COLOR = (0.0, 0.0, 0.0)
_NOT_INDEXED = NOT_INDEXED_COLOR
#: Colour map of each property picture: ``(matplotlib map, start, reversed)``.
#: The dark start of viridis and plasma is cut off, so that every colour keeps
#: a relative luminance of at least 0.1 (black has 0; uncut, both maps go down
#: to 0.02 and their worst values looked like not-indexed points). Good values
#: are bright: high confidence is yellow-green, low fit yellow.
PROPERTY_COLORMAPS: dict[str, tuple[str, float, bool]] = {
    "confidence": ("viridis", 0.3, False),
    "fit": ("plasma", 0.35, True),
}


def _direction(direction: str) -> Vector3d:
    from orix.vector import Vector3d

    key = str(direction).lower()
    if key not in IPF_DIRECTIONS:
        raise SchemaError("ipf_direction", f"unknown direction {direction!r}", "use x, y or z")
    return {"x": Vector3d.xvector, "y": Vector3d.yvector, "z": Vector3d.zvector}[key]()


def ipf_rgb(xmap: CrystalMap, direction: str = "z") -> np.ndarray:
    """IPF colours ``(ny, nx, 3)`` in [0, 1]; not-indexed points black.

    Examples
    --------
    >>> from orix.crystal_map import CrystalMap, Phase, PhaseList
    >>> from orix.quaternion import Rotation
    >>> rgb = ipf_rgb(CrystalMap(Rotation.identity(2), phase_list=PhaseList(Phase(point_group="m-3m"))))
    >>> rgb.shape, rgb[0, 0].round(2).tolist()
    ((1, 2, 3), [1.0, 0.0, 0.0])
    """
    from diffraflow.flow.crystal_map import crystal_map_grid
    from orix.plot import IPFColorKeyTSL
    from orix.quaternion import Orientation

    grid = crystal_map_grid(xmap)
    ny, nx = grid["phase_id"].shape
    rgb = np.zeros((ny * nx, 3))
    rgb[:] = _NOT_INDEXED
    quat = grid["rotation"].reshape(-1, 4)
    ids = grid["phase_id"].ravel()
    vector = _direction(direction)
    for phase_id, phase in xmap.phases:
        points = ids == phase_id
        if phase_id < 0 or not points.any() or phase.point_group is None:
            continue
        key = IPFColorKeyTSL(phase.point_group, direction=vector)
        rgb[points] = key.orientation2color(Orientation(quat[points], symmetry=phase.point_group))
    return np.clip(rgb, 0, 1).reshape(ny, nx, 3)


def property_colormap(name: str) -> Colormap:
    """The colour map a property picture uses (:data:`PROPERTY_COLORMAPS`; viridis' upper 70 % otherwise).

    Not-indexed (masked) values are drawn in :data:`NOT_INDEXED_COLOR`.

    Examples
    --------
    >>> cmap = property_colormap("fit")
    >>> cmap.name, [round(float(v), 2) for v in cmap(1.0)[:3]]
    ('plasma[0.35:1]_r', [0.63, 0.11, 0.61])
    """
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    base, start, flip = PROPERTY_COLORMAPS.get(name, ("viridis", 0.3, False))
    colors = colormaps[base](np.linspace(start, 1.0, 256))
    cmap = ListedColormap(colors[::-1] if flip else colors, name=f"{base}[{start:g}:1]" + ("_r" if flip else ""))
    return cmap.with_extremes(bad=NOT_INDEXED_COLOR)


def _not_indexed_label(n_not: int, total: int, min_confidence: float | None, what: str = "not indexed") -> str:
    share = f"{what} ({100 * n_not / max(total, 1):.1f}%)"
    return f"{share}: no solution or confidence < {min_confidence:.2f}" if min_confidence else share


def _not_indexed_legend(fig: Figure, label: str, extra_handles: Sequence[Artist] = ()) -> None:
    from matplotlib.patches import Patch

    handles = [*extra_handles, Patch(facecolor=NOT_INDEXED_COLOR, edgecolor="k", label=label)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), frameon=False)


def _figure(shape: tuple[int, int], extra_width: float = 0.0) -> Figure:
    from matplotlib.figure import Figure

    ny, nx = shape
    width = 6.0
    height = float(np.clip(width * ny / nx, 2.0, 9.0)) + 0.8
    fig = Figure(figsize=(width + extra_width, height), dpi=120, layout="constrained")
    return fig


def _extent(xmap: CrystalMap, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    dy = float(xmap.dy or 0) or float(xmap.dx or 1) or 1.0
    dx = float(xmap.dx or 0) or 1.0
    ny, nx = shape
    return (-dx / 2, (nx - 0.5) * dx, (ny - 0.5) * dy, -dy / 2)


def _style_map_axes(ax: Axes, xmap: CrystalMap, title: str) -> None:
    unit = "µm" if xmap.scan_unit == "um" else xmap.scan_unit
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    ax.set_title(title)


def _save(fig: Figure, path: Path, overwrite: bool) -> Path:
    return atomic_write(path, overwrite, lambda temp: fig.savefig(temp, format="png"))


def _draw_color_key(ax: InversePoleFigurePlot, point_group: Symmetry, n: int = 300) -> None:
    """Draw the TSL IPF colour key of ``point_group`` on an orix ``ipf`` axis.

    Same picture as ``InversePoleFigurePlot.plot_ipf_color_key``, coloured
    pixel by pixel instead of by cubic interpolation (which takes seconds).
    """
    from orix.plot.direction_color_keys import DirectionColorKeyTSL
    from orix.projections import InverseStereographicProjection, StereographicProjection

    key = DirectionColorKeyTSL(point_group)
    sector = point_group.laue.fundamental_sector
    x, y = StereographicProjection().vector2xy(sector.edges)
    xs = np.linspace(float(np.min(x)), float(np.max(x)), n)
    ys = np.linspace(float(np.min(y)), float(np.max(y)), n)
    gx, gy = np.meshgrid(xs, ys)
    vectors = InverseStereographicProjection().xy2vector(gx.ravel(), gy.ravel())
    inside = np.asarray(vectors <= sector)
    rgba = np.ones((n * n, 4))
    rgba[:, 3] = 0.0
    rgba[inside, :3] = np.clip(key.direction2color(vectors[inside]), 0, 1)
    rgba[inside, 3] = 1.0
    ax.stereographic_grid(False)
    ax._edge_patch.set_linewidth(1.5)
    ax.imshow(rgba.reshape(n, n, 4), extent=(xs[0], xs[-1], ys[0], ys[-1]), origin="lower", zorder=0)


def plot_ipf_map(xmap: CrystalMap, path: str | os.PathLike[str], direction: str = "z", overwrite: bool = False,
                 min_confidence: float | None = None) -> Path:
    """IPF-coloured orientation map with its colour key(s) beside it and a not-indexed legend.

    Parameters
    ----------
    xmap
        Crystal map.
    path
        Output PNG.
    direction
        Sample direction of the inverse pole figure: ``x``, ``y`` or ``z``.
    overwrite
        Replace an existing file.
    min_confidence
        Points below this confidence are drawn as not indexed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from orix.crystal_map import CrystalMap, Phase, PhaseList
    >>> from orix.quaternion import Rotation
    >>> xmap = CrystalMap(Rotation.random(4), phase_list=PhaseList(Phase("ni", point_group="m-3m")))
    >>> plot_ipf_map(xmap, pathlib.Path(tempfile.mkdtemp()) / "ipf.png").name
    'ipf.png'
    """
    from diffraflow.flow.crystal_map import apply_min_confidence

    xmap = apply_min_confidence(xmap, min_confidence)
    import orix.plot  # noqa: F401  (registers the "ipf" projection)
    from matplotlib.axes import Axes

    rgb = ipf_rgb(xmap, direction)
    shape = rgb.shape[:2]
    laue: dict[str, Any] = {}
    for phase_id, phase in xmap.phases:
        if phase_id >= 0 and phase.point_group is not None and np.any(xmap.phase_id == phase_id):
            laue.setdefault(phase.point_group.laue.name, phase.point_group)
    fig = _figure(shape, extra_width=2.4 if laue else 0.0)
    n_keys = max(1, len(laue))
    grid = fig.add_gridspec(n_keys, 2 if laue else 1, width_ratios=[6.0, 2.2] if laue else None)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(rgb, interpolation="nearest", extent=_extent(xmap, shape))
    _style_map_axes(ax, xmap, f"IPF-{direction.upper()} orientation map")
    vector = _direction(direction)
    for row, point_group in enumerate(laue.values()):
        key_ax = fig.add_subplot(grid[row, 1], projection="ipf", symmetry=point_group, direction=vector)
        _draw_color_key(key_ax, point_group)
        names = "\n".join(p.name for i, p in xmap.phases if i >= 0 and p.point_group is not None
                           and p.point_group.laue.name == point_group.laue.name)
        key_ax.set_title(f"IPF-{direction.upper()} key ({point_group.laue.name})", fontsize=9, pad=22)
        Axes.text(key_ax, 0.5, -0.12, names, transform=key_ax.transAxes, ha="center", va="top", fontsize=8)
    ids = np.asarray(xmap.phase_id)
    _not_indexed_legend(fig, _not_indexed_label(int((ids < 0).sum()), ids.size, min_confidence))
    return _save(fig, Path(path), overwrite)


def plot_property_map(xmap: CrystalMap, name: str, path: str | os.PathLike[str], label: str | None = None, cmap: str | None = None,
                      overwrite: bool = False, min_confidence: float | None = None) -> Path:
    """A scalar property map (``confidence``, ``fit``...) with a colour bar and a not-indexed legend.

    Parameters
    ----------
    xmap
        Crystal map.
    name
        Property name (aliases such as ``ci`` are found, see
        :data:`diffraflow.flow.crystal_map.PROPERTY_ALIASES`).
    path
        Output PNG.
    label
        Colour-bar label.
    cmap
        Matplotlib colour map name; default :func:`property_colormap` (never
        near black, the not-indexed colour).
    overwrite
        Replace an existing file.
    min_confidence
        Confidence threshold. The confidence map still shows every solution
        and marks the threshold on its colour bar; other properties draw the
        points below it as not indexed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from orix.crystal_map import CrystalMap, Phase, PhaseList
    >>> from orix.quaternion import Rotation
    >>> xmap = CrystalMap(Rotation.identity(4), phase_list=PhaseList(Phase("ni", point_group="m-3m")),
    ...                   prop={"confidence": np.array([0.0, 0.3, 0.6, 0.9])})
    >>> plot_property_map(xmap, "confidence", pathlib.Path(tempfile.mkdtemp()) / "ci.png", min_confidence=0.1).name
    'ci.png'
    """
    from diffraflow.flow.crystal_map import apply_min_confidence, crystal_map_grid, find_property
    from matplotlib import colormaps

    is_confidence = name == "confidence" or find_property([name], "confidence") is not None
    grid = crystal_map_grid(xmap if is_confidence else apply_min_confidence(xmap, min_confidence))
    shape = grid["phase_id"].shape
    values = grid.get(name, grid["properties"].get(name))
    if values is None:
        values = np.full(shape, np.nan)
    not_indexed = grid["phase_id"] < 0
    values = np.ma.masked_invalid(np.where(not_indexed, np.nan, values).astype(float))
    colormap = (property_colormap(name) if cmap is None
                else colormaps[cmap].with_extremes(bad=NOT_INDEXED_COLOR))
    fig = _figure(shape, extra_width=1.0)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=colormap, interpolation="nearest", extent=_extent(xmap, shape))
    bar = fig.colorbar(image, ax=ax, label=label or name, shrink=0.8)
    _style_map_axes(ax, xmap, name.replace("_", " "))
    total = int(not_indexed.size)
    if is_confidence:
        handles = []
        if min_confidence:
            from matplotlib.lines import Line2D

            low, high = image.get_clim()
            image.set_clim(min(low, min_confidence), max(high, min_confidence))  # keep the line on the bar
            bar.ax.axhline(min_confidence, color="red", linewidth=2)
            handles.append(Line2D([], [], color="red", linewidth=2,
                                  label=f"threshold {min_confidence:.2f}: below it not indexed in the other maps"))
        _not_indexed_legend(fig, _not_indexed_label(int(not_indexed.sum()), total, None, "no solution"), handles)
    else:
        _not_indexed_legend(fig, _not_indexed_label(int(not_indexed.sum()), total, min_confidence))
    return _save(fig, Path(path), overwrite)


def _distinct_colors(colors: list[str | None]) -> list[tuple[float, float, float]]:
    """RGB per phase: its own colour unless an earlier phase took it (or it is black), then the next free tab10.

    Examples
    --------
    >>> _distinct_colors(["tab:blue", "tab:blue", None])[1] != _distinct_colors(["tab:blue"])[0]
    True
    """
    from matplotlib.colors import to_rgb

    palette = [to_rgb(f"C{i}") for i in range(10)]
    out: list[tuple[float, float, float]] = []
    for color in colors:
        rgb = to_rgb(color) if color else None
        if rgb is None or rgb in out or rgb == _NOT_INDEXED:
            rgb = next((c for c in palette if c not in out), palette[len(out) % 10])
        out.append(rgb)
    return out


def plot_phase_map(xmap: CrystalMap, path: str | os.PathLike[str], overwrite: bool = False,
                   min_confidence: float | None = None) -> Path:
    """Phase map with a legend (name and area fraction per phase, not indexed in black).

    Parameters
    ----------
    xmap
        Crystal map.
    path
        Output PNG.
    overwrite
        Replace an existing file.
    min_confidence
        Points below this confidence are drawn as not indexed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from orix.crystal_map import CrystalMap, Phase, PhaseList
    >>> from orix.quaternion import Rotation
    >>> xmap = CrystalMap(Rotation.identity(2), phase_list=PhaseList(Phase("ni", point_group="m-3m")))
    >>> plot_phase_map(xmap, pathlib.Path(tempfile.mkdtemp()) / "phase.png").name
    'phase.png'
    """
    from diffraflow.flow.crystal_map import apply_min_confidence, crystal_map_grid
    from matplotlib.patches import Patch

    xmap = apply_min_confidence(xmap, min_confidence)
    grid = crystal_map_grid(xmap)
    ids = grid["phase_id"]
    rgb = np.zeros(ids.shape + (3,))
    rgb[:] = _NOT_INDEXED
    handles = []
    total = ids.size
    colors = _distinct_colors([phase.color for phase_id, phase in xmap.phases if phase_id >= 0])
    for (phase_id, phase), color in zip([(i, p) for i, p in xmap.phases if i >= 0], colors, strict=True):
        points = ids == phase_id
        rgb[points] = color
        handles.append(Patch(facecolor=color, edgecolor="k",
                             label=f"{phase.name or f'phase {phase_id}'} ({100 * points.sum() / total:.1f}%)"))
    n_not = int((ids < 0).sum())
    handles.append(Patch(facecolor=_NOT_INDEXED, edgecolor="k", label=_not_indexed_label(n_not, total, min_confidence)))
    fig = _figure(ids.shape)
    ax = fig.add_subplot()
    ax.imshow(rgb, interpolation="nearest", extent=_extent(xmap, ids.shape))
    _style_map_axes(ax, xmap, "phase map")
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), frameon=False)
    return _save(fig, Path(path), overwrite)


def png_paths(base: str | os.PathLike[str]) -> dict[str, Path]:
    """The pictures written for output ``base`` (``OUT.png`` or ``OUT``).

    Examples
    --------
    >>> sorted(p.name for p in png_paths("res/map.png").values())
    ['map_confidence.png', 'map_fit.png', 'map_ipf.png', 'map_phase.png']
    """
    base = Path(base)
    stem = base.with_suffix("") if base.suffix.lower() == ".png" else base
    return {kind: stem.parent / f"{stem.name}_{kind}.png" for kind in ("ipf", "confidence", "fit", "phase")}


def write_crystal_map_pngs(xmap: CrystalMap, base: str | os.PathLike[str], ipf_direction: str = "z",
                           overwrite: bool = False, min_confidence: float | None = None) -> list[Path]:
    """Write ``BASE_ipf.png``, ``BASE_confidence.png``, ``BASE_fit.png`` and ``BASE_phase.png``.

    Parameters
    ----------
    xmap
        Crystal map.
    base
        ``OUT.png`` or ``OUT``; the pictures go beside it.
    ipf_direction
        ``x``, ``y`` or ``z``.
    overwrite
        Replace existing pictures; without it, any existing picture stops the
        export before anything is written.
    min_confidence
        Points below this confidence are drawn as not indexed (the
        confidence map marks the threshold instead); ``None`` for none.

    Returns
    -------
    list of pathlib.Path
        The written files.
    """
    paths = png_paths(base)
    _direction(ipf_direction)
    for path in paths.values():
        check_output(path, overwrite)
    return [
        plot_ipf_map(xmap, paths["ipf"], ipf_direction, overwrite, min_confidence),
        plot_property_map(xmap, "confidence", paths["confidence"], "confidence index", None, overwrite,
                          min_confidence),
        plot_property_map(xmap, "fit", paths["fit"], "mean angular deviation (°)", None, overwrite, min_confidence),
        plot_phase_map(xmap, paths["phase"], overwrite, min_confidence),
    ]
