"""Convert between orix ``CrystalMap`` and diffraflow crystal-map result stores.

A crystal-map result store is a Zarr v3 group with the marker
``diffraflow = {"kind": "result", "complete": true}`` and a ``results``
record naming the product::

    results:
      crystal_map:
        product: crystal_map
        operator: hough_index          # what made it ("import" for converted maps)
        variables: [rotation, phase_id, fit, confidence, pattern_quality, n_bands]
        phases: [{id: 0, name: ni, space_group: 225, lattice: [nm...], ...}, ...]
        step_size: {y: 1.5, x: 1.5, unit: um}
        scan: {...}                    # the source cube's ScanAttrs, or null
        properties: [detector_signal]  # extra per-point maps under properties/

Variables are those of :data:`diffraflow.schemas.results.PRODUCTS` ``["crystal_map"]``
with explicit ``dimension_names``: ``rotation (scan_y, scan_x, quat)`` orix
scalar-first unit quaternions, ``phase_id (scan_y, scan_x)`` int32 equal to a
phase record's ``id`` (ids are renumbered ``0..n-1`` in phase-list order, so the
id is also the position in ``phases``; ``-1`` = not indexed), ``fit``,
``confidence``, ``pattern_quality`` float32 and ``n_bands`` int32. Missing
properties are stored as NaN (0 for ``n_bands``).

Every crystal map is written by the engine's result store: ``diffraflow
index`` runs a one-step ``hough_index`` pipeline, and
:func:`write_crystal_map_store` writes an orix ``CrystalMap`` through the
``crystal_map_import`` operator, so both are resumable, locked and
checksummed alike.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> from orix.crystal_map import CrystalMap, Phase, PhaseList
>>> from orix.quaternion import Rotation
>>> xmap = CrystalMap(Rotation.identity(6), phase_id=np.array([0, 0, 0, -1, 0, 0]),
...                   x=np.tile(np.arange(3.0), 2), y=np.repeat(np.arange(2.0), 3),
...                   phase_list=PhaseList(Phase("ni", point_group="m-3m")))
>>> out = write_crystal_map_store(xmap, pathlib.Path(tempfile.mkdtemp()) / "cm.zarr")
>>> back = read_crystal_map(out)
>>> back.shape, back.phase_id.tolist()
((2, 3), [0, 0, 0, -1, 0, 0])
>>> MIN_CONFIDENCE
0.1
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from diffraflow.operators.indexing.confidence import MIN_CONFIDENCE
from diffraflow.schemas.cube import ScanAttrs, validate_scan_attrs, validate_store_marker
from diffraflow.schemas.errors import SchemaError
from diffraflow.schemas.results import PRODUCTS, validate_result_group

if TYPE_CHECKING:
    import zarr
    from numpy.typing import ArrayLike
    from orix.crystal_map import CrystalMap, PhaseList

__all__ = [
    "CRYSTAL_MAP_VARIABLES",
    "PROPERTY_ALIASES",
    "MIN_CONFIDENCE",
    "apply_min_confidence",
    "count_indexed",
    "header_metadata",
    "crystal_map_grid",
    "phase_records_from_phase_list",
    "write_crystal_map_store",
    "read_crystal_map",
    "read_crystal_map_record",
    "crystal_map_from_results",
]

#: Variable names of the crystal-map product, in storage order.
CRYSTAL_MAP_VARIABLES: tuple[str, ...] = tuple(PRODUCTS["crystal_map"].variables)
#: Per-point property variables and the CrystalMap property names accepted for them
#: (lower case, underscores removed), in order of preference.
PROPERTY_ALIASES: dict[str, tuple[str, ...]] = {
    "fit": ("fit", "patternfit", "mad"),
    "confidence": ("confidence", "ci", "confidenceindex", "scores", "correlation", "dp"),
    "pattern_quality": ("patternquality", "iq", "imagequality", "bc"),
    "n_bands": ("nbands", "bands"),
}
_RESERVED = ("product", "operator", "variables", "phases", "step_size", "scan", "properties", "prefix")
#: Points per chunk of the 2-D variables (the rotation chunk is then 8 MiB).
_CHUNK_POINTS = 1 << 18



def _normalise_name(name: str) -> str:
    return name.lower().replace("_", "").replace(" ", "")


def find_property(prop_names: Iterable[str], variable: str) -> str | None:
    """The CrystalMap property that holds ``variable`` (see :data:`PROPERTY_ALIASES`), or None.

    Examples
    --------
    >>> find_property(["iq", "ci", "fit"], "confidence")
    'ci'
    >>> find_property(["iq"], "n_bands") is None
    True
    """
    lookup = {_normalise_name(n): n for n in prop_names}
    for alias in PROPERTY_ALIASES[variable]:
        if alias in lookup:
            return lookup[alias]
    return None


def _lattice_nm(lattice: list[float] | None) -> list[float] | None:
    """Lattice in nm: orix phases read from .ang/.ctf files carry Angstrom."""
    if lattice is None:
        return None
    a, b, c, *angles = (float(v) for v in lattice)
    if max(a, b, c) > 1.5:  # same rule as operators.crystallography for CIF files
        a, b, c = a / 10, b / 10, c / 10
    return [a, b, c, *angles]


def phase_records_from_phase_list(phase_list: PhaseList) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Phase records (ids ``0..n-1``) for an orix ``PhaseList`` and the id renumbering.

    The not-indexed phase (id -1) is left out. Lattices in Angstrom (any edge
    over 1.5) are converted to nm.

    Returns
    -------
    records
        One :class:`~diffraflow.schemas.cube.PhaseRecord` dump per phase.
    mapping
        ``{orix phase id: stored phase id}``.

    Examples
    --------
    >>> from orix.crystal_map import Phase, PhaseList
    >>> recs, mapping = phase_records_from_phase_list(PhaseList(names=["a", "b"], point_groups=["432", "432"], ids=[1, 2]))
    >>> [r["name"] for r in recs], mapping
    (['a', 'b'], {1: 0, 2: 1})
    """
    from diffraflow.operators.crystallography.phases import phase_to_record
    from diffraflow.schemas.cube import PhaseRecord

    records: list[dict[str, Any]] = []
    mapping: dict[int, int] = {}
    for orix_id, phase in phase_list:
        if int(orix_id) < 0:
            continue
        record = phase_to_record(phase)
        record["lattice"] = _lattice_nm(record.get("lattice"))
        record["name"] = record["name"] or f"phase{len(records)}"
        record["id"] = len(records)
        mapping[int(orix_id)] = len(records)
        records.append(PhaseRecord.model_validate(record).model_dump(mode="json"))
    return records, mapping


def crystal_map_grid(xmap: CrystalMap) -> dict[str, Any]:
    """Regular-grid arrays ``(ny, nx)`` of an orix ``CrystalMap``.

    Points not in the map's data (after masking/slicing) become not indexed.
    Only the best rotation per point is kept.

    Returns
    -------
    dict
        ``rotation`` (ny, nx, 4), ``phase_id`` (ny, nx) in *orix* ids,
        ``fit``/``confidence``/``pattern_quality``/``n_bands`` when present,
        ``properties`` (other scalar props), ``step`` ``(dy, dx)``, ``unit``.

    Examples
    --------
    >>> from orix.crystal_map import CrystalMap
    >>> from orix.quaternion import Rotation
    >>> crystal_map_grid(CrystalMap(Rotation.identity(4)))["rotation"].shape
    (1, 4, 4)
    """
    shape = tuple(int(s) for s in xmap.shape)
    ny, nx = (1, shape[0]) if len(shape) == 1 else shape[-2:]
    if len(shape) > 2:
        raise SchemaError("crystal map", f"{len(shape)}-d map of shape {shape}",
                          "pass a 1-D or 2-D CrystalMap (one slice of a 3-D map)")
    rows = np.zeros(xmap.size, dtype=np.int64) if len(shape) == 1 else np.asarray(xmap.row, dtype=np.int64)
    cols = np.asarray(xmap.col, dtype=np.int64)
    quat = np.asarray(xmap.rotations.data, dtype=np.float64).reshape(xmap.size, -1, 4)[:, 0]
    rotation = np.zeros((ny, nx, 4))
    rotation[..., 0] = 1.0
    rotation[rows, cols] = quat
    phase_id = np.full((ny, nx), -1, dtype=np.int32)
    phase_id[rows, cols] = np.asarray(xmap.phase_id, dtype=np.int32)
    out: dict[str, Any] = {"rotation": rotation, "phase_id": phase_id, "properties": {}}
    used = set()
    for variable in ("fit", "confidence", "pattern_quality", "n_bands"):
        name = find_property(xmap.prop.keys(), variable)
        if name is None:
            continue
        used.add(name)
        out[variable] = _prop_grid(xmap, name, rows, cols, (ny, nx), variable == "n_bands")
    for name in xmap.prop.keys():
        if name not in used:
            values = np.asarray(xmap.prop[name])
            if values.ndim == 1 and values.dtype.kind in "iufb":
                out["properties"][name] = _prop_grid(xmap, name, rows, cols, (ny, nx), values.dtype.kind in "iub")
    dy, dx = float(xmap.dy or 0), float(xmap.dx or 0)
    dx = dx if dx > 0 else 1.0
    dy = dy if dy > 0 else dx
    out["step"] = (dy, dx)
    out["unit"] = xmap.scan_unit if xmap.scan_unit in ("um", "nm") else "um"
    return out


def _prop_grid(xmap: CrystalMap, name: str, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
               integer: bool) -> np.ndarray:
    values = np.asarray(xmap.prop[name])
    if values.ndim > 1:
        values = values.reshape(len(values), -1)[:, 0]
    grid = np.zeros(shape, dtype=np.int32) if integer else np.full(shape, np.nan, dtype=np.float32)
    grid[rows, cols] = values
    return grid


def _output_name(prop: str, taken: set[str]) -> str:
    """A result-output name for a crystal-map property (letters, digits, underscores; unique)."""
    import re

    base = re.sub(r"[^A-Za-z0-9_]", "_", prop).strip("_") or "property"
    if base[0].isdigit():
        base = f"p_{base}"
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def write_crystal_map_store(xmap: CrystalMap, path: str | os.PathLike[str], scan_attrs: ScanAttrs | Mapping[str, Any] | None = None,
                            overwrite: bool = False, extra_attrs: Mapping[str, Any] | None = None,
                            operator: str | None = "import") -> Path:
    """Write an orix ``CrystalMap`` as a diffraflow crystal-map result store.

    The map goes through the engine like every result (one step,
    ``crystal_map_import``, named ``crystal_map``), so it is written, checked
    and locked by the same result store as the maps ``hough_index`` computes.

    Parameters
    ----------
    xmap
        1-D or 2-D orix ``CrystalMap``. Properties named like ``fit``,
        ``confidence`` (or ``ci``), ``pattern_quality`` (or ``iq``), ``n_bands``
        (see :data:`PROPERTY_ALIASES`) fill those variables; other scalar
        properties are kept as extra per-point maps.
    path
        Output ``.zarr`` path.
    scan_attrs
        Scan metadata of the source cube, kept in the product record (its step
        size wins over the map's).
    overwrite
        Replace an earlier diffraflow result store at ``path``.
    extra_attrs
        More entries of the product record.
    operator
        What produced the map (recorded as ``made_by``).

    Returns
    -------
    pathlib.Path
        The store path.

    Examples
    --------
    >>> # write_crystal_map_store(orix.io.load("map.ang"), "map.zarr")
    """
    from diffraflow.flow.engine import run_pipeline
    from diffraflow.flow.pipeline import Pipeline, Step
    from diffraflow.flow.sources import ArraySource
    from diffraflow.flow.store import prepare_output_path
    from diffraflow.operators.indexing.crystal_map_import import CrystalMapImport

    where = str(path)
    # A map in memory is written whole: an existing store is never "resumed" with other data.
    prepare_output_path(path, overwrite, kind="result")
    grid = crystal_map_grid(xmap)
    records, mapping = phase_records_from_phase_list(xmap.phases)
    phase_id = grid["phase_id"]
    stored_id = np.full(phase_id.shape, -1, dtype=np.int32)
    for orix_id, new_id in mapping.items():
        stored_id[phase_id == orix_id] = new_id
    arrays: dict[str, Any] = {"rotation": grid["rotation"], "phase_id": stored_id}
    for name in ("fit", "confidence", "pattern_quality", "n_bands"):
        if name in grid:
            arrays[name] = grid[name]
    taken = set(CRYSTAL_MAP_VARIABLES)
    properties = {prop: _output_name(prop, taken) for prop in grid["properties"]}
    arrays.update(grid["properties"])
    step = {"y": float(grid["step"][0]), "x": float(grid["step"][1]), "unit": grid["unit"]}
    scan: dict[str, Any] | None = None
    if scan_attrs is not None:
        validated = validate_scan_attrs(scan_attrs if isinstance(scan_attrs, ScanAttrs) else dict(scan_attrs),
                                        where=f"{where}: scan")
        scan = validated.model_dump(mode="json")
        if validated.step_size is not None:  # a scan without a known step keeps the map's
            step = {"y": validated.step_size.y, "x": validated.step_size.x, "unit": validated.step_size.unit}
    extra = dict(extra_attrs or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise SchemaError(f"{where}: extra_attrs", f"reserved keys {clash}",
                          "rename these entries; they are written by the crystal-map writer")
    op = CrystalMapImport(phases=tuple(records), step_size=step, scan=scan, properties=properties,
                          made_by=operator or "import", extra=extra, arrays=arrays)
    ny, nx = stored_id.shape
    source = ArraySource(np.zeros((ny, nx, 1, 1), np.uint8), chunk_frames=min(ny * nx, _CHUNK_POINTS))
    run_pipeline(Pipeline([Step(op, name="crystal_map")]), source, path, overwrite=overwrite, collect=False)
    return Path(path).expanduser().absolute()


def read_crystal_map_record(path: str | os.PathLike[str],
                            key: str | None = None) -> tuple[zarr.Group, str, dict[str, Any]]:
    """Open a crystal-map result store; return ``(group, key, record)``.

    Parameters
    ----------
    path
        The result store.
    key
        Which entry of ``results`` (needed only when a store holds several
        crystal maps).

    Raises
    ------
    SchemaError
        The store is not a result store or holds no crystal map.

    Examples
    --------
    >>> read_crystal_map_record("/nonexistent.zarr")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.StoreNotFoundError: /nonexistent.zarr: no such store (fix: check the path; create a store with 'diffraflow convert' or 'diffraflow simulate')
    """
    from diffraflow.flow.store import open_group_checked

    group = open_group_checked(path)
    marker = validate_store_marker(dict(cast(Mapping[str, Any], group.attrs["diffraflow"])), str(path))
    if marker.kind != "result":
        raise SchemaError(str(path), f"is a {marker.kind} store, not a crystal map",
                          "pass a result store made by 'diffraflow index' or 'diffraflow run'")
    results = dict(cast(Mapping[str, Mapping[str, Any]], group.attrs.get("results", {})))
    maps = {k: dict(v) for k, v in results.items() if dict(v).get("product", k) == "crystal_map"}
    if not maps:
        raise SchemaError(str(path), f"result store holds no crystal map (products: {', '.join(results) or 'none'})",
                          "pass a store written by 'diffraflow index' or by a pipeline with an indexing step")
    if key is None:
        if len(maps) > 1:
            raise SchemaError(str(path), f"result store holds several crystal maps: {', '.join(maps)}",
                              "name the one to read")
        key = next(iter(maps))
    elif key not in maps:
        raise SchemaError(str(path), f"no crystal map {key!r} (has {', '.join(maps)})", "pick one of those")
    record = maps[key]
    validate_result_group(group, where=str(path))
    return group, key, record


def read_crystal_map(path: str | os.PathLike[str], key: str | None = None) -> CrystalMap:
    """Read a crystal-map result store as an orix ``CrystalMap``.

    Parameters
    ----------
    path
        The result store.
    key
        Which crystal map, when the store holds several.

    Returns
    -------
    orix.crystal_map.CrystalMap
        2-D map with phase ids as stored (``-1`` not indexed; the not-indexed
        phase is added to the phase list by orix), properties ``fit``,
        ``confidence``, ``pattern_quality``, ``n_bands`` and any extra
        properties; coordinates from the stored step size.

    Examples
    --------
    >>> # xmap = read_crystal_map("result.zarr"); xmap.plot()
    """
    from diffraflow.flow.store import stored_array
    from diffraflow.operators.crystallography.phases import phase_from_record
    from orix.crystal_map import CrystalMap, PhaseList, create_coordinate_arrays
    from orix.quaternion import Rotation

    group, _, record = read_crystal_map_record(path, key)
    # the prefix names the step's group (checked against the results schema by read_crystal_map_record)
    target = cast("zarr.Group", group[record["prefix"]]) if record.get("prefix") else group
    rotation = np.asarray(stored_array(target, "rotation")[...], dtype=np.float64)
    ny, nx = rotation.shape[:2]
    unset = ~(np.linalg.norm(rotation, axis=-1) > 0)  # never written (or NaN): identity
    rotation[unset] = (1.0, 0.0, 0.0, 0.0)
    phase_id = np.asarray(stored_array(target, "phase_id")[...], dtype=np.int32).ravel()
    phases = {int(p["id"]): phase_from_record(p) for p in record.get("phases", [])}
    unknown = sorted(set(np.unique(phase_id).tolist()) - set(phases) - {-1})
    if unknown:
        raise SchemaError(f"{path}: phase_id", f"ids {unknown} have no phase record",
                          "re-create the store; every phase id needs an entry in 'phases'")
    phase_list = PhaseList(phases=phases) if phases else None
    prop: dict[str, np.ndarray] = {}
    for name in ("fit", "confidence", "pattern_quality", "n_bands"):
        if name in target:
            prop[name] = np.asarray(stored_array(target, name)[...]).ravel()
    stored = record.get("properties") or {}
    if isinstance(stored, dict):  # property name -> output of the step group
        for name, output in stored.items():
            prop[name] = np.asarray(stored_array(target, output)[...]).ravel()
    else:  # stores written before maps went through the engine kept them under properties/
        for name in stored:
            prop[name] = np.asarray(stored_array(cast("zarr.Group", target["properties"]), name)[...]).ravel()
    step = record.get("step_size") or {"y": 1.0, "x": 1.0, "unit": "um"}
    coords, _ = create_coordinate_arrays((ny, nx), (float(step["y"]), float(step["x"])))
    # orix adds a "not_indexed" phase when -1 occurs.
    xmap = CrystalMap(
        rotations=Rotation(rotation.reshape(-1, 4)),
        phase_id=phase_id,
        x=coords["x"],
        y=coords["y"],
        phase_list=phase_list,
        prop=prop,
        scan_unit=step.get("unit", "um"),
    )
    _restore_unused_phases(xmap, phases)
    return xmap


def _restore_unused_phases(xmap: CrystalMap, phases: dict[int, Any]) -> None:
    """Put back phases that occur nowhere in the map (orix's constructor drops them).

    Exports then list every phase the map was indexed against, under its id.
    """
    from orix.crystal_map import PhaseList

    missing = set(phases) - {int(i) for i in xmap.phases.ids}
    if not missing or not hasattr(xmap, "_phases"):
        return
    full = {int(i): p for i, p in xmap.phases}
    full.update({i: phases[i] for i in missing})
    xmap._phases = PhaseList(phases=dict(sorted(full.items())))


def apply_min_confidence(xmap: CrystalMap, min_confidence: float | None) -> CrystalMap:
    """The crystal map with points below ``min_confidence`` marked not indexed (phase id -1).

    Points without a confidence (NaN, or a map with no confidence property)
    are left as they are; rotations and properties are kept, so the raw
    solution stays available to anyone who reads the properties. The input
    map is not changed.

    Parameters
    ----------
    xmap
        orix ``CrystalMap``.
    min_confidence
        Threshold (see :data:`MIN_CONFIDENCE`); ``None`` or 0 returns ``xmap`` itself.

    Returns
    -------
    orix.crystal_map.CrystalMap

    Examples
    --------
    >>> from orix.crystal_map import CrystalMap, Phase, PhaseList
    >>> from orix.quaternion import Rotation
    >>> xmap = CrystalMap(Rotation.identity(3), phase_list=PhaseList(Phase("ni", point_group="m-3m")),
    ...                   prop={"confidence": np.array([0.5, 0.05, np.nan])})
    >>> apply_min_confidence(xmap, 0.1).phase_id.tolist(), xmap.phase_id.tolist()
    ([0, -1, 0], [0, 0, 0])
    """
    if not min_confidence:
        return xmap
    name = find_property(xmap.prop.keys(), "confidence")
    if name is None:
        return xmap
    confidence = np.asarray(xmap.prop[name], dtype=np.float64)
    if confidence.ndim > 1:
        confidence = confidence.reshape(len(confidence), -1)[:, 0]
    low = (confidence < float(min_confidence)) & (np.asarray(xmap.phase_id) >= 0)
    if not low.any():
        return xmap
    out = xmap.deepcopy()
    # orix's phase_id setter takes one value for every point in the data; the
    # per-point array behind it is the only way to relabel some of them.
    out._phase_id[np.flatnonzero(out.is_in_data)[low]] = -1
    if -1 not in out.phases.ids:
        out.phases.add_not_indexed()
    return out


def count_indexed(phase_id: ArrayLike, confidence: ArrayLike, min_confidence: float | None) -> tuple[int, int]:
    """``(indexed, below)``: points with a solution at or above ``min_confidence``, and with one below it.

    NaN confidence counts as indexed (nothing to compare).

    Examples
    --------
    >>> count_indexed(np.array([0, 0, 0, -1]), np.array([0.5, 0.05, 0.1, 0.0]), 0.1)
    (2, 1)
    """
    solved = np.asarray(phase_id) >= 0
    if not min_confidence:
        return int(solved.sum()), 0
    below = solved & (np.asarray(confidence, dtype=np.float64) < float(min_confidence))
    return int(solved.sum() - below.sum()), int(below.sum())


def header_metadata(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """Scan metadata for vendor-file headers from a crystal-map record.

    The record's ``scan`` (the source cube's attributes) with its detector PC
    replaced by the projection centre the indexing used (``projection_centre``:
    the ``--pc`` override, or the mean of a per-point PC), so a header carries
    the PC the orientations were computed with.

    Examples
    --------
    >>> rec = {"scan": {"beam_energy_kv": 20, "detector": {"shape": [60, 60], "pc": None}},
    ...        "projection_centre": {"value": [0.4, 0.2, 0.5], "convention": "bruker"}}
    >>> header_metadata(rec)["detector"]["pc"]
    [0.4, 0.2, 0.5]
    >>> header_metadata({"scan": None}) is None
    True
    """
    scan = record.get("scan")
    if not scan:
        return None
    meta = dict(scan)
    used = record.get("projection_centre") or {}
    if used.get("value") is not None:
        meta["detector"] = {**dict(meta.get("detector") or {}), "pc": list(used["value"]),
                            "pc_convention": used.get("convention", "bruker")}
    return meta


def crystal_map_from_results(cube: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                             params: Mapping[str, Any] | None = None, **run_options: Any) -> CrystalMap:
    """Hough-index ``cube`` through the one-step ``hough_index`` pipeline and return an orix ``CrystalMap``.

    The same route as ``diffraflow index`` (resumable when ``output`` is a
    store path); without ``output`` the map is computed in a temporary store
    that is removed afterwards. ``diffraflow.index`` calls this.

    Parameters
    ----------
    cube
        The EBSD scan cube.
    output
        A result store to keep, or None.
    params
        Parameters of ``hough_index`` (``phases``, ``pc``, ``n_bands``...).
    **run_options
        Passed to :func:`diffraflow.flow.engine.run_pipeline` (``executor``, ``workers``...).

    Examples
    --------
    >>> # xmap = crystal_map_from_results("scan.zarr", params={"phases": ["ni"]})
    """
    import tempfile

    from diffraflow.flow.engine import run_pipeline
    from diffraflow.flow.pipeline import Pipeline, Step
    from diffraflow.operators.base import build_operator

    step = Step(build_operator("hough_index", dict(params or {}), where="diffraflow.index"), name="crystal_map")
    if output is not None:
        run_pipeline(Pipeline([step]), cube, output, collect=False, **run_options)
        return read_crystal_map(output, "crystal_map")
    with tempfile.TemporaryDirectory(prefix="diffraflow-index-") as folder:
        store = Path(folder) / "crystal_map.zarr"
        run_pipeline(Pipeline([step]), cube, store, collect=False, **run_options)
        return read_crystal_map(store, "crystal_map")
