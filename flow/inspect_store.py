"""Human summaries and full validation of diffraflow stores (``info``, ``validate``).

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> from diffraflow.flow.store import create_cube
>>> out = pathlib.Path(tempfile.mkdtemp()) / "s.zarr"
>>> with create_cube(out, scan_shape=(1, 2), det_shape=(3, 3), dtype="uint8",
...                  attrs={"modality": "ebsd", "detector": {"shape": [3, 3]}}) as w:
...     w.patterns.append(np.zeros((2, 3, 3), "uint8")); _ = w.finalize()
>>> validate_store(out)["frames"]
2
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from diffraflow.schemas.chunking import CubeLayout, validate_layout
from diffraflow.schemas.cube import SCAN_DIMS, validate_scan_attrs, validate_store_marker
from diffraflow.schemas.errors import SchemaError

__all__ = ["describe_store", "validate_store"]


#: How ``info`` shows a value that no file or user gave (never a default standing in for a fact).
_UNKNOWN = "unknown"


def _known(value: object, unit: str = "") -> str:
    """``value`` with its unit, or "unknown" when the store does not know it.

    Examples
    --------
    >>> _known(70.0, " deg"), _known(None, " deg")
    ('70.0 deg', 'unknown')
    """
    return _UNKNOWN if value is None else f"{value}{unit}"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _disk_usage(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def validate_store(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Fully validate a store; return a small report or raise a one-line error.

    Checks the completion marker, the attribute schema, the ``patterns``
    dimension names, the chunking rules and that shapes agree with metadata.

    Examples
    --------
    >>> validate_store("/nonexistent.zarr")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.StoreNotFoundError: /nonexistent.zarr: no such store (fix: check the path; create a store with 'diffraflow convert' or 'diffraflow simulate')
    """
    from diffraflow.flow.store import dimension_names, open_group_checked, stored_array

    group = open_group_checked(path)
    marker = validate_store_marker(group.attrs.get("diffraflow"), where=str(path))
    report: dict[str, Any] = {"path": str(path), "kind": marker.kind}
    if marker.kind == "result":
        from diffraflow.schemas.results import validate_result_group

        report.update(validate_result_group(group, where=str(path)))
        return report
    scan = validate_scan_attrs(dict(cast(Mapping[str, Any], group.attrs.get("scan", {}))), where=str(path))
    if "patterns" not in group:
        raise SchemaError(f"{path}: patterns", "missing", "re-create the store")
    arr = stored_array(group, "patterns")
    dims = dimension_names(arr)
    if dims != SCAN_DIMS:
        raise SchemaError(f"{path}: patterns.dimension_names", f"{list(dims)} is not {list(SCAN_DIMS)}",
                          "re-create the store with diffraflow")
    shards = arr.shards or arr.chunks
    # 4-d: one dimension name per axis, checked above
    layout = CubeLayout(cast("tuple[int, int, int, int]", tuple(arr.shape)),
                        cast("tuple[int, int, int, int]", tuple(arr.chunks)),
                        cast("tuple[int, int, int, int]", tuple(shards)))
    validate_layout(layout, where=f"{path}: patterns")
    if tuple(arr.shape[2:]) != tuple(scan.detector.shape):
        raise SchemaError(f"{path}: detector.shape", f"metadata {list(scan.detector.shape)} vs patterns "
                          f"{list(arr.shape[2:])}", "re-create the store")
    if scan.scan_shape is not None and tuple(arr.shape[:2]) != tuple(scan.scan_shape):
        raise SchemaError(f"{path}: scan_shape", f"metadata {list(scan.scan_shape)} vs patterns "
                          f"{list(arr.shape[:2])}", "re-create the store")
    for name in scan.ground_truth:
        if name not in group:
            raise SchemaError(f"{path}: ground_truth", f"variable {name!r} is listed but missing",
                              "re-create the store")
    report.update({"frames": int(arr.shape[0] * arr.shape[1]), "shape": tuple(arr.shape),
                   "modality": scan.modality})
    return report


def describe_store(path: str | os.PathLike[str]) -> str:
    """A human summary of a store: shape, chunks, dtype, metadata, variables, results.

    Values the store does not know (no file or user gave them) read
    "unknown", never a typical value.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from diffraflow.flow.store import create_cube
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "m.zarr"
    >>> with create_cube(out, scan_shape=(1, 2), det_shape=(4, 4), dtype="uint16",
    ...                  attrs={"modality": "4dstem", "detector": {"shape": [4, 4]}}) as w:
    ...     w.patterns.append(np.zeros((2, 4, 4), "uint16")); _ = w.finalize()
    >>> text = describe_store(out)
    >>> "sample tilt unknown, camera tilt unknown" in text, "step          unknown" in text
    (True, True)
    """
    from diffraflow.flow.store import (
        acquisition_progress,
        dimension_names,
        open_group_checked,
        stored_array,
    )

    path = Path(path)
    progress = acquisition_progress(path)
    acquiring = progress is not None and progress.get("state") == "acquiring"
    group = open_group_checked(path, require_complete=not acquiring)
    marker = validate_store_marker(group.attrs.get("diffraflow"), where=str(path))
    status = "complete" if marker.complete else "incomplete"
    lines = [f"{path}  ({marker.kind}, format v{marker.format_version}, {status})",
             f"  size on disk  {_human_bytes(_disk_usage(path))}"]
    if progress is not None:
        done, total = int(progress.get("frames_persisted", 0)), int(progress.get("frames_expected", 0))
        state = progress.get("state")
        if state == "acquiring":
            lines.append(f"  acquiring: {done} of {total} frames persisted (updated {progress.get('updated')})")
        elif state == "aborted":
            lines.append(f"  acquisition aborted after {done} of {total} frames")
    if marker.kind == "scan_cube":
        scan = validate_scan_attrs(dict(cast(Mapping[str, Any], group.attrs.get("scan", {}))), where=str(path))
        arr = stored_array(group, "patterns")
        n = arr.shape[0] * arr.shape[1]
        lines += [
            f"  patterns      {tuple(arr.shape)} {arr.dtype}  dims {list(dimension_names(arr))}",
            f"                {n} frames, {_human_bytes(n * arr.shape[2] * arr.shape[3] * arr.dtype.itemsize)} raw",
            f"  chunks        {tuple(arr.chunks)}   shards {tuple(arr.shards or arr.chunks)}",
            f"  modality      {scan.modality}",
        ]
        det = scan.detector
        pc = f"{tuple(round(v, 4) for v in det.pc)} ({det.pc_convention})" if det.pc else _UNKNOWN
        lines += [
            f"  detector      {det.shape[0]} x {det.shape[1]} px, binning {_known(det.binning)}, PC {pc}",
            f"                sample tilt {_known(det.sample_tilt, ' deg')}, camera tilt "
            f"{_known(det.camera_tilt, ' deg')}"
            + (f", azimuthal {det.azimuthal} deg" if det.azimuthal is not None else "")
            + (f", pixel {det.px_size_um} um" if det.px_size_um else ""),
        ]
        if det.calibration:
            lines.append(f"                calibration {det.calibration}")
        lines.append(f"  beam          {_known(scan.beam_energy_kv, ' kV')}")
        step = scan.step_size
        lines.append(f"  step          y {step.y} {step.unit}, x {step.x} {step.unit}" if step is not None
                     else f"  step          {_UNKNOWN}")
        lines.append(f"  exposure      {_known(scan.exposure_s, ' s')}")
        if scan.phases:
            phases = ", ".join(f"{p.id}:{p.name}" + (f" (SG {p.space_group})" if p.space_group else "")
                               for p in scan.phases)
            lines.append(f"  phases        {phases}")
        prov = scan.provenance
        src = f"{prov.source_file} [{prov.source_format}]" if prov.source_file else (prov.source_format or "-")
        lines.append(f"  provenance    {src}, created {prov.created} by {prov.software}")
        if scan.ground_truth:
            lines.append(f"  ground truth  {', '.join(scan.ground_truth)}")
    else:
        results = dict(cast(Mapping[str, Any], group.attrs.get("results", {})))
        lines.append(f"  results       {', '.join(results) if results else '(none listed)'}")
    others = [name for name in sorted(group.array_keys()) if name != "patterns"]
    for name in others:
        arr = stored_array(group, name)
        dims = list(dimension_names(arr))
        lines.append(f"  variable      {name}: {tuple(arr.shape)} {arr.dtype} {dims}")
    for name in sorted(group.group_keys()):
        lines.append(f"  group         {name}/")
    return "\n".join(lines)
