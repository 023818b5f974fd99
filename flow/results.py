"""Result sinks: where a run's outputs go, chunk by chunk, resumably.

:class:`ZarrResultStore` writes a Zarr v3 result store::

    OUT.zarr/                       diffraflow: {kind: result, complete}, results: {...}, run: {...}
      <step>/<output>               one array per saved output, dimension_names set
      _progress/round<r>/<i>.done   chunk i of round r is written (created after its data)
      _progress/round<r>/partials.npz  merged reduction partials of chunks 0..n-1 (atomic replace)
      _progress/round<r>/state.npz  states after the round; then the empty file 'complete'

Progress records are :mod:`diffraflow.flow.records` archives (JSON plus plain arrays),
never pickles: a store is data, and opening one must not run code.

Per-frame result arrays are chunked exactly like the run's regions and not
sharded, so each region is one write of whole chunks, and the driver process
is the only writer: no two writers ever touch one chunk or shard. Reduction
partials are merged in chunk order and checkpointed with the number of chunks
they cover, so a resumed run neither recomputes them nor merges one twice, and
its results are bit-identical to an uninterrupted run. ``_progress`` is
removed when the store is complete.

:class:`MemorySink` keeps results in NumPy arrays (tests, notebooks).

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> from diffraflow.flow.pipeline import Pipeline
>>> from diffraflow.flow.sources import ArraySource
>>> from diffraflow.operators.base import Operator, OutputSpec
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Mean(Operator):
...     name = "mean_example"
...     def resolve(self, spec):
...         return {"mean": OutputSpec("nav", "float32")}
...     def process(self, frames, ctx):
...         return {"mean": frames.reshape(len(frames), -1).mean(axis=1)}
>>> out = pathlib.Path(tempfile.mkdtemp()) / "r.zarr"
>>> from diffraflow.flow.engine import run_pipeline
>>> _ = run_pipeline(Pipeline([Mean()]), np.ones((2, 2, 3, 3), "uint8"), out)
>>> import xarray as xr
>>> xr.open_zarr(out, group="mean_example", consolidated=False)["mean"].dims
('scan_y', 'scan_x')
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from diffraflow.flow.records import load_record, save_record
from diffraflow.flow.store import ARRAY_CONFIG
from diffraflow.schemas.cube import StoreMarker, validate_store_marker
from diffraflow.schemas.errors import OutputExistsError, SchemaError

if TYPE_CHECKING:
    import xarray as xr
    import zarr
    from diffraflow.flow.locks import StoreLock
    from diffraflow.flow.pipeline import ResolvedPipeline, ResolvedStep
    from diffraflow.flow.sources import ChunkSource, Region
    from diffraflow.operators.base import OutputSpec
    from zarr.core.metadata import ArrayV3Metadata

# Progress records live in OUT.zarr/_progress (no zarr.json) only while a run
# is incomplete; zarr warns about them when listing members. That is expected.
warnings.filterwarnings("ignore", message="Object at _(progress|acquisition) is not recognized", category=UserWarning)

__all__ = ["ResultSink", "MemorySink", "ZarrResultStore", "open_results", "write_result_region", "read_result_region",
           "MATERIALIZED"]


def _fill(dtype: np.dtype[Any]) -> Any:
    return np.nan if dtype.kind in "fc" else (False if dtype.kind == "b" else 0)


def _dims(name: str, out: OutputSpec) -> list[str]:
    # Generic 'dim_i' names of two outputs may have different sizes, which
    # xarray refuses within one group: make them specific to the output.
    return [f"{name}_{d}" if d.startswith("dim_") else d for d in out.result_dims()]


class ResultSink:
    """Where results go; the engine calls these in order. Default: keep nothing, resume nothing."""

    path: str | None = None

    def open(self, plan: ResolvedPipeline, source: ChunkSource) -> None:
        """Create the outputs (or check a store being resumed)."""

    def round_complete(self, round_: int) -> dict[str, Any] | None:
        """The record of ``round_`` (``{"states": ..., "schedule": ...}``) if it finished in an earlier run."""
        return None

    def worker_plan(self) -> tuple[str | None, frozenset[str], dict[str, str]]:
        """``(store path, keys written by workers, materialised frames by step)``; default: nothing on workers."""
        return None, frozenset(), {}

    def done_chunks(self, round_: int) -> set[int]:
        """Chunk indices of ``round_`` whose per-frame outputs are written."""
        return set()

    def load_partials(self, round_: int) -> tuple[dict[str, dict[str, Any]], int]:
        """Merged partials of ``round_`` and how many leading chunks they cover."""
        return {}, 0

    def write_chunk(self, round_: int, region: Region, per_frame: dict[str, np.ndarray]) -> None:
        """Store the per-frame outputs of one region."""

    def mark_done(self, round_: int, region: Region) -> None:
        """Record that ``region``'s outputs are written (after :meth:`write_chunk`)."""

    def save_partials(self, round_: int, merged: dict[str, dict[str, Any]], n_merged: int, final: bool) -> None:
        """Checkpoint merged partials covering chunks ``0..n_merged-1``."""

    def finish_round(self, round_: int, record: dict[str, Any], finals: dict[str, np.ndarray]) -> None:
        """Store the final sig/single outputs of steps ending this round and the round record (states, schedule)."""

    def complete(self) -> None:
        """Mark the results complete."""

    def close(self) -> None:
        """Release whatever the sink holds (locks); called once at the end of every run."""

    def results(self) -> dict[str, np.ndarray]:
        """Results by ``<step>/<output>`` (read back from a store if needed)."""
        return {}


class MemorySink(ResultSink):
    """Results in NumPy arrays, allocated when the run starts.

    Examples
    --------
    >>> MemorySink().results()
    {}
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._plan: ResolvedPipeline | None = None

    def open(self, plan: ResolvedPipeline, source: ChunkSource) -> None:
        self._plan = plan
        for key, (_step, _name, out) in plan.result_outputs().items():
            if out.per_frame:
                shape = out.result_shape(plan.input.scan_shape)
                self._arrays[key] = np.full(shape, _fill(out.dtype), dtype=out.dtype)

    def write_chunk(self, round_: int, region: Region, per_frame: dict[str, np.ndarray]) -> None:
        for key, value in per_frame.items():
            arr = self._arrays[key]
            arr[region.y[0]:region.y[1], region.x[0]:region.x[1]] = value.reshape(*region.shape, *arr.shape[2:])

    def finish_round(self, round_: int, record: dict[str, Any], finals: dict[str, np.ndarray]) -> None:
        self._arrays.update(finals)

    def results(self) -> dict[str, np.ndarray]:
        return dict(self._arrays)


class ZarrResultStore(ResultSink):
    """A resumable Zarr v3 result store at ``path``.

    Parameters
    ----------
    path
        The output ``.zarr`` directory.
    overwrite
        Delete an existing store first; otherwise an existing store made by
        the same pipeline on the same input is resumed, and any other store
        is refused.
    """

    path: str
    #: The writer lock, held from :meth:`open` to :meth:`close`.
    _lock: StoreLock | None

    def __init__(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.path = str(Path(path).expanduser().absolute())
        self.overwrite = overwrite
        self.group: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array[ArrayV3Metadata]] = {}
        self.resumed = False
        #: Step name -> key of its materialised final frames (set by the engine before open()).
        self.materialize: dict[str, str] = {}
        self._worker_keys: frozenset[str] = frozenset()

    # -- opening -------------------------------------------------------------
    def _run_record(self, plan: ResolvedPipeline, source: ChunkSource) -> dict[str, Any]:
        return {"pipeline": plan.pipeline.to_dict(), "fingerprint": plan.pipeline.fingerprint(),
                "input": source.identity(), "grid": list(source.grid), "n_rounds": plan.n_rounds,
                "scan_shape": list(plan.input.scan_shape)}

    def open(self, plan: ResolvedPipeline, source: ChunkSource) -> None:
        import zarr
        from diffraflow.flow.locks import StoreLock
        from diffraflow.flow.notices import notify
        from diffraflow.flow.store import (
            check_manifest,
            check_not_an_input,
            check_replaceable,
            prepare_output_path,
            stored_array,
        )

        record = self._run_record(plan, source)
        final = Path(self.path)
        source_path = record["input"].get("path")
        check_not_an_input(final, [source_path] if source_path else [])
        self._lock = StoreLock(final).acquire()  # one writer per store, held until close()
        if final.exists() and self.overwrite:
            check_replaceable(final, "result")
            shutil.rmtree(final)  # an earlier diffraflow result store, not the input (checked above)
            notify(f"replaced the earlier result store at {final}")
        if final.exists() and _half_made(final, plan):
            # Created by a run stopped before its arrays existed: it holds no result, and it is ours.
            shutil.rmtree(final)
            notify(f"re-creating {final}: an earlier run stopped while creating it, before any result")
        if final.exists():
            self._check_resumable(final, record)
            self.group = zarr.open_group(self.path, mode="r+", zarr_format=3)
            self.resumed = True
            if self.is_complete():
                check_manifest(final)
        else:
            prepare_output_path(final, overwrite=False)  # parent exists and is writable
            self.group = zarr.open_group(self.path, mode="w", zarr_format=3)
            self.group.attrs.update({"diffraflow": StoreMarker(kind="result").model_dump(),
                                     "results": _results_record(plan)})
            self._create_arrays(plan, source)
            # Written last: a store with a run record has every array, so only such a store is resumed.
            self.group.attrs.update({"run": record})
        for key in plan.result_outputs():
            self._arrays[key] = stored_array(self.group, key).with_config(ARRAY_CONFIG)  # config is not stored on disk
        frame_keys = {k for k, (_s, _n, out) in plan.result_outputs().items() if out.kind == "frames"}
        self._worker_keys = frozenset(frame_keys | set(self.materialize.values()))
        self._progress = final / "_progress"
        self._progress.mkdir(exist_ok=True)
        legacy = sorted(p.relative_to(final).as_posix() for p in self._progress.rglob("*.pkl"))
        if legacy:
            from diffraflow.schemas.errors import UnsafeRecordError

            raise UnsafeRecordError(f"{final}: {legacy[0]}", "progress record in the old pickle format; pickles "
                                    "read from a store are never loaded",
                                    "pass --overwrite to start the run afresh")

    def close(self) -> None:
        """Release the writer lock (the engine calls this when the run ends, however it ends)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def _check_resumable(self, final: Path, record: dict[str, Any]) -> None:
        import zarr

        fix = "pass --overwrite to replace it, or choose another --output"
        try:
            group = zarr.open_group(str(final), mode="r", zarr_format=3)
            marker = validate_store_marker(dict(cast(Mapping[str, Any], group.attrs.get("diffraflow", {}))),
                                           str(final))
            old = dict(cast(Mapping[str, Any], group.attrs.get("run", {})))
        except Exception:
            raise OutputExistsError(str(final), "exists and is not a diffraflow result store (diffraflow never "
                                    "replaces it)", "choose another --output") from None
        if marker.kind != "result":
            raise OutputExistsError(str(final), f"exists and is a {marker.kind} store, not a result store",
                                    "choose another --output")
        differs = []
        if old.get("fingerprint") != record["fingerprint"]:
            differs.append("pipeline")
        old_in, new_in = old.get("input", {}), record["input"]
        if any(old_in.get(k) != new_in.get(k) for k in ("shape", "dtype", "created", "sha256_1MiB")):
            differs.append("input")
        if old.get("grid") != record["grid"]:
            differs.append(f"chunking (grid {old.get('grid')} vs {record['grid']})")
        if differs:
            raise OutputExistsError(str(final), f"holds results of a different {' and '.join(differs)}; "
                                    "cannot resume into it", fix)

    def _create_arrays(self, plan: ResolvedPipeline, source: ChunkSource) -> None:
        assert self.group is not None  # opened by open()
        for step in plan.steps:
            saved = {k: v for k, v in step.outputs.items() if step.saved(k)}
            if not saved:
                continue
            sub = self.group.create_group(step.name)
            sub.attrs.update(_step_attrs(step))
            for name, out in saved.items():
                _create_output(sub, name, out, step, plan.input.scan_shape, source.grid)
        for step_name, key in self.materialize.items():
            if key.startswith(MATERIALIZED + "/"):
                step = plan.step(step_name)
                assert step.frames_output is not None  # only steps with a frames output are materialised
                holder = self.group.require_group(MATERIALIZED)
                _create_output(holder, step_name, step.outputs[step.frames_output], step, plan.input.scan_shape,
                               source.grid)

    def worker_plan(self) -> tuple[str | None, frozenset[str], dict[str, str]]:
        return self.path, self._worker_keys, dict(self.materialize)

    # -- progress ------------------------------------------------------------
    def _round_dir(self, round_: int) -> Path:
        path = self._progress / f"round{round_}"
        path.mkdir(exist_ok=True)
        return path

    def round_complete(self, round_: int) -> dict[str, Any] | None:
        folder = self._progress / f"round{round_}"
        if (folder / "complete").exists():
            return cast(dict[str, Any], load_record(folder / "state.npz"))
        return None

    def done_chunks(self, round_: int) -> set[int]:
        folder = self._progress / f"round{round_}"
        if not folder.exists():
            return set()
        return {int(p.name.split(".")[0]) for p in folder.glob("*.done")}

    def load_partials(self, round_: int) -> tuple[dict[str, dict[str, Any]], int]:
        path = self._progress / f"round{round_}" / "partials.npz"
        if not path.exists():
            return {}, 0
        record = load_record(path)
        return record["merged"], int(record["n_merged"])

    def write_chunk(self, round_: int, region: Region, per_frame: dict[str, np.ndarray]) -> None:
        for key, value in per_frame.items():
            arr = self._arrays[key]
            arr[region.y[0]:region.y[1], region.x[0]:region.x[1]] = value.reshape(*region.shape, *arr.shape[2:])

    def mark_done(self, round_: int, region: Region) -> None:
        (self._round_dir(round_) / f"{region.index}.done").touch()

    def save_partials(self, round_: int, merged: dict[str, dict[str, Any]], n_merged: int, final: bool) -> None:
        save_record(self._round_dir(round_) / "partials.npz", {"merged": merged, "n_merged": n_merged},
                    where=f"{self.path}: partials of round {round_}")

    def finish_round(self, round_: int, record: dict[str, Any], finals: dict[str, np.ndarray]) -> None:
        for key, value in finals.items():
            self._arrays[key][...] = value
        folder = self._round_dir(round_)
        save_record(folder / "state.npz", record, where=f"{self.path}: state after round {round_}")
        (folder / "complete").touch()

    def complete(self) -> None:
        from diffraflow.flow.store import store_manifest

        marker = StoreMarker(kind="result", complete=True).model_dump()
        assert self.group is not None  # opened by open()
        if MATERIALIZED in self.group:  # frames kept only for later passes, not asked to be saved
            shutil.rmtree(Path(self.path) / MATERIALIZED, ignore_errors=True)
        self.group.attrs.update({"manifest": store_manifest(self.path), "diffraflow": marker})
        shutil.rmtree(self._progress, ignore_errors=True)

    def results(self) -> dict[str, np.ndarray]:
        return {key: np.asarray(arr[...]) for key, arr in self._arrays.items()}

    def marked_complete(self) -> bool:
        """True when a store already at ``path`` says it is complete (read before :meth:`open`; no checks)."""
        from diffraflow.flow.store import diffraflow_kind

        path = Path(self.path)
        if diffraflow_kind(path) != "result":
            return False
        try:
            marker = json.loads((path / "zarr.json").read_text())["attributes"]["diffraflow"]
            return bool(marker.get("complete"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def is_complete(self) -> bool:
        """True when an earlier run finished this store."""
        marker: dict[str, Any] = (
            dict(cast(Mapping[str, Any], self.group.attrs.get("diffraflow", {}))) if self.group is not None else {})
        return bool(marker.get("complete"))


#: Group of frames kept for later passes but not saved (removed when the store is complete).
MATERIALIZED = "_materialized"


def _create_output(group: zarr.Group, name: str, out: OutputSpec, step: ResolvedStep, scan_shape: tuple[int, int],
                   grid: tuple[int, int]) -> None:
    """One result array. Per-frame outputs have one chunk (or, for frames, one shard) per region, so each
    region is written whole by a single writer: the driver, or for frames the worker that computed them."""
    from diffraflow.flow.store import checksum_codecs, frame_compressors

    gy, gx = grid
    shape = out.result_shape(scan_shape)
    attributes: dict[str, Any] = {"kind": out.kind, "description": out.description, "operator": step.op.name}
    if out.kind == "frames":
        group.create_array(name, shape=shape, shards=(gy, gx, *out.extra_shape), chunks=(1, gx, *out.extra_shape),
                           dtype=out.dtype, fill_value=_fill(out.dtype),
                           compressors=[*frame_compressors(), *checksum_codecs()], config=ARRAY_CONFIG,
                           dimension_names=_dims(name, out), attributes=attributes)
        return
    chunks = (gy, gx, *out.extra_shape) if out.per_frame else tuple(max(1, s) for s in shape)
    group.create_array(name, shape=shape, chunks=chunks, dtype=out.dtype, fill_value=_fill(out.dtype),
                       compressors=_compressors(), config=ARRAY_CONFIG, dimension_names=_dims(name, out),
                       attributes=attributes)


# Arrays opened by this worker process for writing or reading regions (metadata read once).
_OPEN_ARRAYS: dict[tuple[str, str], zarr.Array[ArrayV3Metadata]] = {}


def _result_array(store: str, key: str) -> zarr.Array[ArrayV3Metadata]:
    import zarr

    found = _OPEN_ARRAYS.get((store, key))
    if found is None:
        opened = zarr.open_array(str(Path(store) / key), mode="r+", zarr_format=3)
        found = cast("zarr.Array[ArrayV3Metadata]", opened).with_config(ARRAY_CONFIG)  # a v3 array (zarr_format=3)
        _OPEN_ARRAYS[(store, key)] = found
    return found


def write_result_region(store: str | None, key: str, region: Region, value: np.ndarray) -> None:
    """Write one region's frame-sized output into the result store, from the worker that computed it.

    Each region is exactly one shard of the array, so no two writers ever touch one shard.

    Examples
    --------
    >>> write_result_region(None, "x/frames", None, np.zeros(1))
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: x/frames: a worker-written output needs a result store (fix: run with an output store)
    """
    from diffraflow.schemas.errors import PipelineError

    if store is None:
        raise PipelineError(key, "a worker-written output needs a result store", "run with an output store")
    arr = _result_array(store, key)
    arr[region.y[0]:region.y[1], region.x[0]:region.x[1]] = value.reshape(*region.shape, *arr.shape[2:])


def read_result_region(store: str | None, key: str, region: Region) -> np.ndarray:
    """Frames of one region from a materialised frames array, as ``(n, det_y, det_x)``; missing data is an error.

    Examples
    --------
    >>> read_result_region(None, "x/frames", None)
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: x/frames: materialised frames need a result store (fix: run with an output store)
    """
    from diffraflow.flow.store import check_region_present
    from diffraflow.schemas.errors import PipelineError

    if store is None:
        raise PipelineError(key, "materialised frames need a result store", "run with an output store")
    arr = _result_array(store, key)
    check_region_present(Path(store) / key, arr.metadata.to_dict(), region.y, region.x)
    block = np.asarray(arr[region.y[0]:region.y[1], region.x[0]:region.x[1]])
    return block.reshape(region.n, *arr.shape[2:])


def _half_made(path: Path, plan: ResolvedPipeline) -> bool:
    """True for a result store whose creation was interrupted: no run record, or declared arrays missing,
    and no chunk done (so nothing in it is a result anyone could lose)."""
    import json

    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    marker = attrs.get("diffraflow")
    if not isinstance(marker, dict) or marker.get("kind") != "result" or marker.get("complete"):
        return False
    progress = path / "_progress"
    if progress.exists() and (any(progress.rglob("*.done")) or any(progress.rglob("*.npz"))):
        return False
    if "run" not in attrs:
        return True
    return any(not (path / key / "zarr.json").is_file() for key in plan.result_outputs())


def _compressors() -> list[Any]:
    from diffraflow.flow.store import checksum_codecs
    from zarr.codecs import ZstdCodec

    return [ZstdCodec(level=0), *checksum_codecs()]


def _step_attrs(step: ResolvedStep) -> dict[str, Any]:
    extra = dict(step.op.result_attrs(step.spec) or {})
    attrs: dict[str, Any] = json.loads(json.dumps({
        "operator": step.op.name, "params": step.op.params(), "backend": step.step.backend,
        "outputs": {k: {"kind": v.kind, "description": v.description, "product": v.product}
                    for k, v in step.outputs.items() if step.saved(k)},
        **extra,
    }, default=str))
    return attrs


def _results_record(plan: ResolvedPipeline) -> dict[str, Any]:
    """The ``results`` group attribute (see :mod:`diffraflow.schemas.results`): one entry per step with saved outputs."""
    record: dict[str, Any] = {}
    for step in plan.steps:
        saved = [k for k in step.outputs if step.saved(k)]
        if not saved:
            continue
        products = sorted(_complete_products(step, saved))
        extra = dict(step.op.result_attrs(step.spec) or {})
        record[step.name] = json.loads(json.dumps({
            **extra, "operator": step.op.name, "product": products[0] if len(products) == 1 else None,
            "prefix": step.name, "variables": saved}, default=str))
    return record


def _complete_products(step: ResolvedStep, saved: list[str]) -> set[str]:
    # A product is recorded only when every variable its schema requires was saved:
    # 'save: [loadings]' keeps loadings as a free-form output, not half a decomposition.
    from diffraflow.schemas.results import PRODUCTS

    declared = {step.outputs[k].product for k in saved if step.outputs[k].product}
    return {p for p in declared if p in PRODUCTS and all(
        name in saved for name, var in PRODUCTS[p].variables.items() if var.required)}


def open_results(path: str | os.PathLike[str]) -> xr.DataTree:
    """Open a complete result store as an ``xarray.DataTree`` (one group per step).

    Examples
    --------
    >>> # tree = open_results("out.zarr"); tree["vbf"]["image"]
    """
    import xarray as xr
    from diffraflow.flow.store import open_group_checked

    group = open_group_checked(path, kind="result")
    if not cast(Mapping[str, Any], group.attrs.get("diffraflow", {})).get("complete"):
        raise SchemaError(str(path), "result store is incomplete", "re-run 'diffraflow run' to resume it")
    return xr.open_datatree(str(path), engine="zarr", consolidated=False)
