"""Export a ``decomposition`` result to HyperSpy's ``.hspy`` so users carry on in HyperSpy.

The file holds one signal shaped like the input scan (navigation
``scan_y, scan_x``; signal ``det_y, det_x``, with the scan step and the
detector calibration) whose ``learning_results`` are the decomposition:
factors ``(pixels, k)`` and loadings ``(frames, k)`` as HyperSpy keeps them,
the explained variance when there is one, and the method. After
``s = hs.load("out.hspy", lazy=True)``, ``s.plot_decomposition_results()``,
``s.get_decomposition_factors()``, ``s.get_decomposition_loadings()`` and
``s.get_decomposition_model()`` work as after HyperSpy's own
``decomposition()``.

The signal's data are the scan itself only with ``with_data=True``
(streamed chunk by chunk from the cube: memory stays flat, the file is as
large as the data). Otherwise the dataset is declared but never written:
HDF5 stores nothing for it and reads it as zeros, so the file is small;
``original_metadata.diffraflow`` names the cube that holds the frames.

The layout written here (HyperSpy file format 3.3: ``/Experiments/<title>``
with ``data``, ``axis-<i>``, ``metadata``, ``original_metadata``,
``learning_results``; ``None`` stored as ``"_None_"``) follows HyperSpy's
documented format; files are checked by reading them back with HyperSpy in
the tests.

Examples
--------
>>> # write_decomposition_hspy("run.zarr", "nmf.hspy", step="nmf")
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
from diffraflow.schemas.errors import SchemaError

__all__ = ["write_decomposition_hspy", "decomposition_steps", "FORMAT_VERSION"]

#: HyperSpy file-format version of the files written.
FORMAT_VERSION = "3.3"
_NONE = "_None_"
#: HyperSpy's names of the decomposition algorithms, where it has one.
_ALGORITHMS = {"svd": "SVD", "pca": "SVD", "nmf": "NMF", "ica": "ICA", "fuzzy_cmeans": "fuzzy_cmeans",
               "vca": "VCA"}


def decomposition_steps(results: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The decomposition steps of a result store: step name -> its ``results`` record.

    Examples
    --------
    >>> decomposition_steps("/no/such/store.zarr")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.StoreNotFoundError: /no/such/store.zarr: no such store (fix: ...)
    """
    from diffraflow.flow.store import open_group_checked

    group = open_group_checked(results, kind="result")
    record: dict[str, Any] = dict(cast(Mapping[str, Any], group.attrs.get("results", {})))
    return {name: dict(entry) for name, entry in record.items() if dict(entry).get("product") == "decomposition"}


def _choose_step(results: str | os.PathLike[str], step: str | None) -> tuple[str, dict[str, Any]]:
    steps = decomposition_steps(results)
    if not steps:
        raise SchemaError(str(results), "holds no decomposition", "run a pipeline with svd, nmf, ica, "
                          "fuzzy_cmeans, vca or incremental_pca first")
    if step is None:
        if len(steps) > 1:
            raise SchemaError(str(results), f"holds {len(steps)} decompositions ({', '.join(steps)})",
                              "choose one with step=... (--step on the command line)")
        step = next(iter(steps))
    if step not in steps:
        raise SchemaError(str(results), f"has no decomposition step {step!r}", f"use one of {', '.join(steps)}")
    return step, steps[step]


def _attr(value: Any) -> Any:
    return _NONE if value is None else value


def _write_tree(group: Any, tree: dict[str, Any]) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            _write_tree(group.require_group(key), value)
        else:
            group.attrs[key] = _attr(value)


def _axes(scan_shape: tuple[int, int], det_shape: tuple[int, int], scan: dict[str, Any] | None) -> list[dict[str, Any]]:
    from diffraflow.flow.plots import detector_scale, scan_scale

    sscale = scan_scale(scan)
    dscale = detector_scale(scan, det_shape)
    units = {"um": "µm", "1/A": "1/Å", "px": _NONE}
    axes = []
    for name, size, step in (("y", scan_shape[0], sscale.y), ("x", scan_shape[1], sscale.x)):
        axes.append({"name": name, "size": int(size), "scale": float(step), "offset": 0.0,
                     "units": units.get(sscale.unit, sscale.unit), "navigate": True})
    for name, size, step, origin in (("ky", det_shape[0], dscale.y, dscale.origin[0]),
                                     ("kx", det_shape[1], dscale.x, dscale.origin[1])):
        axes.append({"name": name, "size": int(size), "scale": float(step), "offset": -float(origin) * float(step),
                     "units": units.get(dscale.unit, dscale.unit), "navigate": False})
    return axes


def write_decomposition_hspy(results: str | os.PathLike[str], path: str | os.PathLike[str], *,
                             step: str | None = None, cube: str | os.PathLike[str] | None = None,
                             with_data: bool = False, overwrite: bool = False) -> Path:
    """Write one decomposition step of a result store as a HyperSpy ``.hspy`` file; returns the path.

    Parameters
    ----------
    results
        A complete result store (``diffraflow run`` output).
    path
        Output ``.hspy`` file.
    step
        Which decomposition step, when the store holds several.
    cube
        The input scan cube (default: the one the run recorded), for the
        axes' calibration and, with ``with_data``, the frames.
    with_data
        Copy the frames into the file (chunk by chunk); else the data are
        declared but not stored (read as zeros).
    overwrite
        Replace an existing file.

    Raises
    ------
    SchemaError
        The store holds no decomposition, or several and ``step`` is not given.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from diffraflow.flow.cli import main
    >>> from diffraflow.flow.engine import run_pipeline
    >>> from diffraflow.flow.pipeline import Pipeline
    >>> from diffraflow.operators.decomposition.nmf import NMF
    >>> work = pathlib.Path(tempfile.mkdtemp())
    >>> main(["simulate", "sped", str(work / "s.zarr"), "--scan-shape", "2", "6", "--detector-shape", "16", "16"])
    ... # doctest: +ELLIPSIS
    wrote ...
    0
    >>> _ = run_pipeline(Pipeline([NMF(n_components=2)]), str(work / "s.zarr"), work / "r.zarr")
    >>> write_decomposition_hspy(work / "r.zarr", work / "nmf.hspy").name
    'nmf.hspy'
    """
    import h5py
    import zarr
    from diffraflow.flow.exporters._common import check_output
    from diffraflow.flow.store import open_group_checked

    step, record = _choose_step(results, step)
    target = Path(path)
    check_output(target, overwrite)
    # A result store's steps are groups of arrays and its run record a mapping; zarr's types say less.
    group: Any = open_group_checked(results, kind="result")
    sub: Any = group[record.get("prefix") or step]
    names = set(sub.array_keys())
    factors = np.asarray(sub["factors"][...], np.float64)
    loadings = np.asarray(sub["loadings"][...], np.float64)
    k, det_y, det_x = factors.shape
    scan_y, scan_x = loadings.shape[:2]
    run = dict(group.attrs.get("run", {}))
    source = Path(cube) if cube is not None else Path(dict(run.get("input", {})).get("path", ""))
    scan_attrs = None
    dtype = np.dtype(dict(run.get("input", {})).get("dtype", "float32"))
    if source.name and source.exists():
        from diffraflow.flow.store import read_scan_attrs

        scan_attrs = read_scan_attrs(source).model_dump(mode="json")
    elif with_data:
        raise SchemaError(str(source) or "cube", "the input cube is not there to copy its frames",
                          "pass cube=... (the scan the decomposition was run on)")
    method = str(record.get("method", record.get("operator", "decomposition")))
    learning: dict[str, Any] = {
        "decomposition_algorithm": _ALGORITHMS.get(method, method), "output_dimension": int(k),
        "poissonian_noise_normalized": bool(record.get("poisson", False)), "centre": _NONE, "mean": _NONE,
        "unfolded": True, "bss_algorithm": _NONE, "unmixing_matrix": _NONE,
    }
    if record.get("centred"):
        learning["centre"] = "navigation"
    arrays: dict[str, np.ndarray] = {
        "factors": factors.reshape(k, det_y * det_x).T,
        "loadings": loadings.reshape(scan_y * scan_x, k),
        "_tuple_original_shape": np.array([scan_y, scan_x, det_y, det_x], np.int64),
    }
    for name in ("explained_variance", "explained_variance_ratio"):
        if name in names:
            arrays[name] = np.asarray(sub[name][...], np.float64)
    if "mean" in names:
        arrays["mean"] = np.asarray(sub["mean"][...], np.float64).ravel()
        learning.pop("mean")
    tmp = target.with_name(target.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as fh:
            fh.attrs["file_format"] = "HyperSpy"
            fh.attrs["file_format_version"] = FORMAT_VERSION
            exp = fh.require_group("Experiments").require_group(step)
            exp.attrs["package"] = "hyperspy"
            exp.attrs["package_version"] = "2.1.0"  # the oldest HyperSpy that the files were read back with
            _write_tree(exp.require_group("attributes"), {"_lazy": False, "ragged": False})
            for i, axis in enumerate(_axes((scan_y, scan_x), (det_y, det_x), scan_attrs)):
                _write_tree(exp.require_group(f"axis-{i}"), {"_type": "UniformDataAxis", "is_binned": False,
                                                             **axis})
            chunks = (1, min(scan_x, max(1, (1 << 22) // max(1, det_y * det_x * dtype.itemsize))), det_y, det_x)
            data = exp.create_dataset("data", shape=(scan_y, scan_x, det_y, det_x), dtype=dtype, chunks=chunks,
                                      fillvalue=0, compression="gzip" if with_data else None)
            if with_data:
                frames: Any = zarr.open_group(str(source), mode="r")["patterns"]
                for row in range(scan_y):  # one scan row at a time: memory stays one row of frames
                    data[row] = np.asarray(frames[row])
            _write_tree(exp.require_group("metadata"), {
                "General": {"title": f"{step}: {method} (diffraflow)"},
                "Signal": {"signal_type": ""},
                "_HyperSpy": {"Folding": {"original_axes_manager": _NONE, "original_shape": _NONE,
                                          "signal_unfolded": False, "unfolded": False}},
            })
            original = exp.require_group("original_metadata").require_group("diffraflow")
            original.attrs["results"] = str(Path(results).resolve())
            original.attrs["step"] = step
            original.attrs["record"] = json.dumps(record, default=str)
            original.attrs["cube"] = str(source)
            original.attrs["data_included"] = bool(with_data)
            lr = exp.require_group("learning_results")
            _write_tree(lr, learning)
            for name, array in arrays.items():
                lr.create_dataset(name, data=array, chunks=True)  # HyperSpy reads lazily only chunked datasets
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m diffraflow.flow.exporters.hspy RESULT.zarr OUT.hspy [--step S] [--with-data] [--overwrite]``.

    Examples
    --------
    >>> main(["--help"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    SystemExit: 0
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m diffraflow.flow.exporters.hspy",
                                     description="Write a decomposition of a result store as a HyperSpy .hspy file.")
    parser.add_argument("results", help="result store (.zarr) holding a decomposition")
    parser.add_argument("output", help="output .hspy file")
    parser.add_argument("--step", default=None, help="which decomposition, when the store holds several")
    parser.add_argument("--cube", default=None, help="the input scan cube (default: the one the run recorded)")
    parser.add_argument("--with-data", action="store_true", help="copy the frames into the file too")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    from diffraflow.schemas.errors import DiffraflowError

    try:
        print(write_decomposition_hspy(args.results, args.output, step=args.step, cube=args.cube,
                                       with_data=args.with_data, overwrite=args.overwrite))
    except DiffraflowError as exc:
        import sys

        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover - the module's command line
    raise SystemExit(main())
