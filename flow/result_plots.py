"""PNG pictures of every picturable output in a pipeline result store.

The picture follows from an output's dimensions: a scan map
``(scan_y, scan_x)`` becomes an image, a stack of virtual images
``(scan_y, scan_x, mask)`` a panel per mask, a detector-shaped reduction
``(det_y, det_x)`` a pattern, a ``decomposition`` product a scree plot
with factors and loading maps (``incremental_pca``) or, for the other
decompositions, the pictures of :mod:`diffraflow.flow.decomposition_plots`
(scree, factors over loadings, memberships, SVD-loading scatter with
membership contours, error per iteration), and a ``crystal_map`` product the pictures
``diffraflow export X.png`` draws (IPF map with its colour key, confidence,
fit and phase maps; points below the default confidence threshold count as
not indexed). Frame-shaped outputs (corrected patterns) are
not drawn: they are cubes, not pictures.

Examples
--------
>>> # plot_result_store("out.zarr", "pictures/run")  -> [Path("pictures/run_vbse_images.png"), ...]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

__all__ = ["plot_result_store"]


class _HasMaskLabels(Protocol):
    """A virtual-image operator (``mask_labels`` is not part of the base ``Operator``)."""

    def mask_labels(self, spec: Any) -> list[str]: ...


def _labels_for(record: dict[str, Any], spec_attrs: dict[str, Any] | None, det_shape: tuple[int, ...], n: int) -> list[str]:
    """Mask labels of a virtual-image step, rebuilt from its stored parameters."""
    try:
        from diffraflow.operators.base import InputSpec, build_operator

        op = build_operator(record["operator"], record.get("params") or {})
        spec = InputSpec((1, 1), (int(det_shape[0]), int(det_shape[1])), np.dtype("float32"), spec_attrs)
        labels = list(cast(_HasMaskLabels, op).mask_labels(spec))
        if len(labels) == n:
            return labels
    except Exception:  # labels are a nicety: fall back to numbers rather than fail the pictures
        pass
    return [f"mask {i}" for i in range(n)]


def _crystal_map_pictures(results: str | os.PathLike[str], key: str, step: dict[str, Any], base: str, overwrite: bool) -> list[Path]:
    """The four crystal-map pictures of one step, as ``diffraflow export BASE.png`` draws them."""
    from diffraflow.flow.crystal_map import MIN_CONFIDENCE, read_crystal_map
    from diffraflow.flow.plots_crystal import write_crystal_map_pngs

    min_confidence = float(step.get("min_confidence", MIN_CONFIDENCE))
    return write_crystal_map_pngs(read_crystal_map(results, key), base, overwrite=overwrite,
                                  min_confidence=min_confidence)


def plot_result_store(results: str | os.PathLike[str], prefix: str | os.PathLike[str],
                      scan_attrs: dict[str, Any] | None = None, overwrite: bool = True) -> list[Path]:
    """Draw every picturable output of a complete result store.

    Parameters
    ----------
    results
        A result store written by ``diffraflow run``.
    prefix
        Pictures are written as ``<prefix>_<step>_<output>.png``.
    scan_attrs
        The input cube's ``scan`` attributes, for scale bars and calibration.
    overwrite
        Replace existing pictures.

    Returns
    -------
    list of Path
        The PNG files written.

    Examples
    --------
    >>> # [p.name for p in plot_result_store("out.zarr", "run")]
    """
    from diffraflow.flow import plots
    from diffraflow.flow.store import open_group_checked

    # zarr's own types (a JSON union per attribute, Array | Group per member) say nothing a result
    # store's layout does not: its steps are groups of arrays, its record a mapping.
    group: Any = open_group_checked(results, kind="result")
    record: dict[str, Any] = dict(group.attrs.get("results", {}))
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    det_shape = tuple((scan_attrs or {}).get("detector", {}).get("shape", (1, 1)))
    written: list[Path] = []
    for step_name, step in record.items():
        if step_name not in group:
            continue
        sub: Any = group[step_name]
        names = list(step.get("variables", sub.array_keys()))
        if step.get("product") == "crystal_map":
            written.extend(_crystal_map_pictures(results, step_name, step, f"{prefix}_{step_name}", overwrite))
            continue
        if step.get("product") == "decomposition" and step.get("operator") != "incremental_pca":
            from diffraflow.flow.decomposition_plots import plot_decomposition_group

            written.extend(plot_decomposition_group(sub, step, f"{prefix}_{step_name}", attrs=scan_attrs,
                                                    overwrite=overwrite))
            continue
        if step.get("product") == "decomposition" and {"factors", "loadings"} <= set(names):
            written.append(plots.plot_decomposition(
                sub["factors"][...], sub["loadings"][...], f"{prefix}_{step_name}.png",
                explained_variance=sub["explained_variance"][...] if "explained_variance" in names else None,
                title=f"{step_name}: {step.get('method', step['operator'])}", attrs=scan_attrs,
                overwrite=overwrite))
            continue
        for name in names:
            if name not in sub:
                continue
            arr = sub[name]
            dims = tuple(arr.metadata.dimension_names or ())
            path = f"{prefix}_{step_name}_{name}.png"
            title = f"{step_name}: {name}"
            if dims == ("scan_y", "scan_x"):
                written.append(plots.plot_scan_image(arr[...], path, title=title, attrs=scan_attrs,
                                                     overwrite=overwrite))
            elif len(dims) == 3 and dims[:2] == ("scan_y", "scan_x") and arr.shape[2] <= 12:
                labels = _labels_for({**dict(sub.attrs), **step}, scan_attrs, det_shape, arr.shape[2])
                written.append(plots.plot_virtual_images(arr[...], path, labels=labels, title=title,
                                                         attrs=scan_attrs, overwrite=overwrite))
            elif dims == ("det_y", "det_x"):
                written.append(plots.plot_pattern(arr[...], path, title=title, label=name, attrs=scan_attrs,
                                                  overwrite=overwrite))
    return written
