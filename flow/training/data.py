"""Frames with their ground-truth labels, in batches, for training jobs.

:class:`LabelledFrames` reads a source (:class:`~diffraflow.flow.sources.ZarrCubeSource`
or an in-memory :class:`~diffraflow.flow.sources.ArraySource`) region by
region and pairs each frame with the values of named per-point variables at
its scan position (``true_phase_id``, ``true_rotation``, ``grain_id``, or
frame-sized targets such as ``clean_patterns``).

Memory stays bounded on cubes larger than RAM: frames are read one region
(stored chunk) at a time; a training epoch visits the regions in an order
drawn from ``(seed, epoch)`` and shuffles frames inside a buffer of about
``shuffle_buffer_mib``, emitting full batches and carrying the remainder
over. Per-point labels (a value or a short vector per scan point, as small
as a map) are read whole once; frame-sized labels stream with the frames.

The **hold-out split** is a function of each frame's scan index (or of its
group, e.g. its grain) and ``split_seed`` only: it does not depend on
chunking, batch size or the training seed, so two trainings with different
seeds are judged on the same frames.

Examples
--------
>>> import numpy as np
>>> from diffraflow.flow.sources import ArraySource
>>> frames = np.arange(6 * 4 * 2 * 2, dtype="uint8").reshape(6, 4, 2, 2)
>>> labels = {"cls": np.arange(24).reshape(6, 4) % 3}
>>> data = LabelledFrames(ArraySource(frames, chunk_frames=4), labels, batch_size=5, holdout=0.25)
>>> data.counts()
{'train': 19, 'holdout': 5}
>>> batch = next(iter(data.batches("train", epoch=0)))
>>> batch.frames.shape, batch.labels["cls"].shape, bool((batch.labels["cls"] == batch.index % 3).all())
((5, 2, 2), (5,), True)
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diffraflow.flow.jobs import STREAM_SHUFFLE
from diffraflow.flow.sources import Region
from diffraflow.schemas.cube import SCAN_DIMS
from diffraflow.schemas.errors import SchemaError

__all__ = ["Batch", "VariableInfo", "LabelledFrames", "holdout_mask", "SPLITS"]

#: What :meth:`LabelledFrames.batches` can iterate over.
SPLITS = ("train", "holdout", "all")
_BIG_HASH_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Batch:
    """Frames and their labels.

    Attributes
    ----------
    frames
        ``(n, det_y, det_x)`` in the source's dtype.
    labels
        Variable name -> ``(n, ...)`` values at the frames' scan positions.
    index
        ``(n,)`` flat scan indices (``y * scan_x + x``) of the frames.
    """

    frames: np.ndarray
    labels: dict[str, np.ndarray]
    index: np.ndarray

    def __len__(self) -> int:
        return int(len(self.index))


@dataclass(frozen=True)
class VariableInfo:
    """Metadata of a per-point variable used as a label.

    Examples
    --------
    >>> VariableInfo("true_phase_id", ("scan_y", "scan_x"), (3, 4), np.dtype("int32")).per_frame_shape
    ()
    """

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def per_frame_shape(self) -> tuple[int, ...]:
        """Shape of the value at one scan point."""
        return tuple(self.shape[2:])

    @property
    def frame_sized(self) -> bool:
        """True for frame-shaped variables (``scan_y, scan_x, det_y, det_x``): streamed, never read whole."""
        return self.dims == SCAN_DIMS


def _unit_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per key, from a SplitMix64 mix of the key and ``seed``."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) ^ np.uint64(int(seed) * 0x9E3779B97F4A7C15 % 2**64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def holdout_mask(keys: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """True for keys (scan indices, or group ids) in the hold-out split: a fixed function of key and seed.

    Examples
    --------
    >>> mask = holdout_mask(np.arange(10_000), 0.2)
    >>> round(float(mask.mean()), 2), bool((mask == holdout_mask(np.arange(10_000), 0.2)).all())
    (0.2, True)
    """
    keys = np.asarray(keys)
    if fraction <= 0:
        return np.zeros(keys.shape, bool)
    return _unit_hash(keys.astype(np.int64).view(np.uint64), seed) < float(fraction)


class LabelledFrames:
    """Batches of frames with their labels from a source, streamed region by region.

    Parameters
    ----------
    source
        A :class:`~diffraflow.flow.sources.ChunkSource`.
    labels
        Names of the per-point variables handed out with the frames, or a
        mapping name -> array (shorthand for ``labels=names, arrays=mapping``).
    arrays
        In-memory variables by name, arrays of leading shape ``(scan_y, scan_x)``,
        used instead of ``source.variables()`` (the cube's, read lazily).
    batch_size
        Frames per batch (the last batch of a pass may be smaller).
    holdout
        Fraction of frames (or groups) held out of training, in [0, 1).
    holdout_group
        A per-point integer variable (e.g. ``grain_id``): whole groups are held
        out together, so held-out frames are unlike any trained on.
    split_seed
        Seed of the hold-out split (independent of the training seed).
    seed
        Training seed: the shuffle of epoch ``e`` depends on ``(seed, e)`` only.
    shuffle_buffer_mib
        Frames shuffled together (bounded memory; at least one batch).
    where
        Name used in error messages.

    Raises
    ------
    SchemaError
        A label is missing, not per-point, or of another scan shape (checked from metadata, before any read).
    """

    def __init__(self, source: Any, labels: Sequence[str] | Mapping[str, Any] = (), *,
                 arrays: Mapping[str, Any] | None = None, batch_size: int = 32,
                 holdout: float = 0.0, holdout_group: str | None = None, split_seed: int = 0, seed: int = 0,
                 shuffle_buffer_mib: float = 256.0, where: str = "data") -> None:
        self.source = source
        self.spec = source.spec
        self.where = where
        self.batch_size = int(batch_size)
        self.holdout = float(holdout)
        self.holdout_group = holdout_group
        self.split_seed = int(split_seed)
        self.seed = int(seed)
        self.shuffle_buffer_mib = float(shuffle_buffer_mib)
        if self.batch_size < 1:
            raise SchemaError(f"{where}.batch_size", f"must be 1 or more, got {batch_size}", "e.g. batch_size: 32")
        if not 0.0 <= self.holdout < 1.0:
            raise SchemaError(f"{where}.holdout", f"must lie in [0, 1), got {holdout}", "e.g. holdout: 0.2")
        label_names = list(labels)
        self._arrays: dict[str, Any] = {**(arrays or {}), **(labels if isinstance(labels, Mapping) else {})}
        needed = [*label_names, *([holdout_group] if holdout_group else [])]
        self.variables: dict[str, VariableInfo] = {name: self._describe(name) for name in dict.fromkeys(needed)}
        self.labels = tuple(label_names)
        if holdout_group:
            info = self.variables[holdout_group]
            if info.per_frame_shape or info.dtype.kind not in "iub":
                raise SchemaError(f"{where}.holdout_group", f"{holdout_group!r} is {info.dtype} of shape "
                                  f"{list(info.per_frame_shape)} per point, not one whole number per point",
                                  "name an integer per-point variable such as grain_id")
        self._maps: dict[str, np.ndarray] = {}
        self._mask: np.ndarray | None = None

    # -- metadata -------------------------------------------------------------------
    def _lazy_variables(self) -> Mapping[str, Any]:
        if self._arrays or not hasattr(self.source, "variables"):
            return self._arrays
        if not hasattr(self, "_source_variables"):
            self._source_variables: Mapping[str, Any] = self.source.variables()
        return self._source_variables

    def _describe(self, name: str) -> VariableInfo:
        available = self._lazy_variables()
        scan_shape = tuple(self.spec.scan_shape)
        if name not in available:
            per_point = [n for n, a in available.items() if tuple(a.shape[:2]) == scan_shape]
            close = difflib.get_close_matches(name, per_point, n=1)
            if close:
                fix = f"did you mean {close[0]!r}?"
            elif per_point:
                fix = f"per-point variables of this source: {', '.join(sorted(per_point))}"
            elif not hasattr(self.source, "variables"):
                fix = "an in-memory source has no variables: pass labels as {name: array}"
            else:
                fix = "simulate the cube with its ground truth, or add the variable"
            raise SchemaError(f"{self.where}: {name}", "no such variable in the source", fix)
        arr = available[name]
        metadata = getattr(arr, "metadata", None)
        dims = tuple(getattr(metadata, "dimension_names", None) or ())
        shape = tuple(int(s) for s in arr.shape)
        if not dims:  # an in-memory array: its leading axes are the scan by contract
            dims = (*SCAN_DIMS[:2], *(f"dim_{i}" for i in range(len(shape) - 2)))
            if len(shape) == 4 and shape[2:] == tuple(self.spec.det_shape):
                dims = SCAN_DIMS
        if len(shape) < 2 or dims[:2] != SCAN_DIMS[:2] or shape[:2] != scan_shape:
            raise SchemaError(f"{self.where}: {name}", f"not a per-point variable: dims {list(dims)}, shape "
                              f"{list(shape)}, the scan is {list(scan_shape)}",
                              "use a variable whose leading dimensions are scan_y, scan_x")
        attrs = dict(getattr(arr, "attrs", {}) or {})
        return VariableInfo(name, dims, shape, np.dtype(str(arr.dtype)), attrs)

    @property
    def n_frames(self) -> int:
        """Frames in the source."""
        return int(self.spec.n_frames)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame plus its frame-sized labels."""
        det = int(np.prod(self.spec.det_shape))
        extra = sum(int(np.prod(v.per_frame_shape)) * int(v.dtype.itemsize) for v in self.variables.values()
                    if v.frame_sized)
        return det * int(self.spec.dtype.itemsize) + extra

    @property
    def buffer_frames(self) -> int:
        """Frames shuffled together in a training pass (at least one batch)."""
        return max(self.batch_size, int(self.shuffle_buffer_mib * 2**20 // max(1, self.frame_bytes)))

    # -- labels ---------------------------------------------------------------------------
    def label_values(self, name: str) -> np.ndarray:
        """The whole per-point variable ``name`` as ``(scan_y, scan_x, ...)`` (read once, then cached).

        Frame-sized variables are refused: they stream with the frames.
        """
        if name not in self.variables:
            raise SchemaError(f"{self.where}: {name}", "not one of the job's variables",
                              f"use one of {', '.join(self.variables)}")
        if self.variables[name].frame_sized:
            raise SchemaError(f"{self.where}: {name}", "is frame-sized; it is read with the frames, never whole",
                              "use batches() to read it")
        if name not in self._maps:
            self._maps[name] = np.asarray(self._lazy_variables()[name][...])
        return self._maps[name]

    def _mask_all(self) -> np.ndarray:
        if self._mask is None:
            if self.holdout <= 0:
                self._mask = np.zeros(self.n_frames, bool)
            elif self.holdout_group:
                groups = self.label_values(self.holdout_group).reshape(-1)
                self._mask = holdout_mask(groups, self.holdout, self.split_seed)
            else:
                self._mask = holdout_mask(np.arange(self.n_frames), self.holdout, self.split_seed)
        return self._mask

    def counts(self) -> dict[str, int]:
        """Frames in the training and hold-out splits.

        Examples
        --------
        >>> from diffraflow.flow.sources import ArraySource
        >>> LabelledFrames(ArraySource(np.zeros((2, 3, 2, 2)))).counts()
        {'train': 6, 'holdout': 0}
        """
        held = int(self._mask_all().sum())
        return {"train": self.n_frames - held, "holdout": held}

    def _selection(self, split: str, flat: np.ndarray) -> np.ndarray:
        if split == "all":
            return np.ones(len(flat), bool)
        held: np.ndarray = self._mask_all()[flat]
        return held if split == "holdout" else ~held

    def _read_labels(self, region: Region, flat: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
        from diffraflow.flow.sources import read_checked

        out = {}
        for name in self.labels:
            info = self.variables[name]
            if not info.frame_sized:
                values = self.label_values(name)
                out[name] = values.reshape(self.n_frames, *info.per_frame_shape)[flat[keep]]
            elif name in self._arrays:
                block = np.asarray(self._arrays[name][region.y[0]:region.y[1], region.x[0]:region.x[1]])
                out[name] = block.reshape(region.n, *info.per_frame_shape)[keep]
            else:  # a frame variable of the cube: checked like the frames (no silent fill values)
                block = read_checked(self.source.path, name, region, info.per_frame_shape)
                out[name] = block[keep]
        return out

    # -- iteration ----------------------------------------------------------------------------
    def batches(self, split: str = "train", epoch: int = 0, shuffle: bool | None = None,
                drop_last: bool = False) -> Iterator[Batch]:
        """Batches of one pass over ``split`` (``train``, ``holdout`` or ``all``).

        Parameters
        ----------
        split
            Which frames.
        epoch
            The training epoch: it seeds the region order and the shuffle.
        shuffle
            Shuffle (default: only the ``train`` split).
        drop_last
            Leave out a final batch smaller than ``batch_size``.

        Notes
        -----
        With shuffling, regions are read in a random order and frames are
        permuted inside a buffer of :attr:`buffer_frames`: a frame can only
        meet frames of the regions read near it. Larger buffers shuffle
        better; memory is about twice the buffer (the parts being gathered
        and the buffer being emitted) plus one region, whatever the cube's size.
        """
        if split not in SPLITS:
            raise SchemaError(f"{self.where}: split", f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
        shuffle = split == "train" if shuffle is None else bool(shuffle)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, STREAM_SHUFFLE, int(epoch)]))
        regions = list(self.source.regions())
        if shuffle:
            regions = [regions[i] for i in rng.permutation(len(regions))]
        limit = self.buffer_frames if shuffle else self.batch_size
        pending: list[Batch] = []
        count = 0
        scan_x = self.spec.scan_shape[1]
        for region in regions:
            positions = region.scan_index()
            flat = positions[:, 0] * scan_x + positions[:, 1]
            keep = self._selection(split, flat)
            if not keep.any():
                continue  # no frame of this region is in the split: not even read
            frames = np.asarray(self.source.read(region))[keep]
            pending.append(Batch(frames, self._read_labels(region, flat, keep), flat[keep]))
            count += int(keep.sum())
            if count >= limit:
                pending, count = yield from self._emit(pending, rng if shuffle else None, final=False)
        yield from self._emit(pending, rng if shuffle else None, final=True, drop_last=drop_last)

    def _emit(self, pending: list[Batch], rng: np.random.Generator | None, final: bool,
              drop_last: bool = False) -> Generator[Batch, None, tuple[list[Batch], int]]:
        if not pending:
            return [], 0
        frames = np.concatenate([b.frames for b in pending])
        index = np.concatenate([b.index for b in pending])
        labels = {k: np.concatenate([b.labels[k] for b in pending]) for k in self.labels}
        pending.clear()  # the caller's list too: the parts go as soon as they are copied into one buffer
        order = rng.permutation(len(index)) if rng is not None else np.arange(len(index))
        size = self.batch_size
        full = len(index) // size * size
        # Fancy indexing copies: a batch (and the carried-over rest) never keeps the whole buffer alive.
        for start in range(0, full, size):
            pick = order[start:start + size]
            yield Batch(frames[pick], {k: v[pick] for k, v in labels.items()}, index[pick])
        pick = order[full:]
        rest = Batch(frames[pick], {k: v[pick] for k, v in labels.items()}, index[pick])
        if final:
            if len(rest) and not drop_last:
                yield rest
            return [], 0
        return ([rest], len(rest)) if len(rest) else ([], 0)

    # -- identity -------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """A JSON record of the training data: source identity, variables, split and counts.

        Examples
        --------
        >>> from diffraflow.flow.sources import ArraySource
        >>> sorted(LabelledFrames(ArraySource(np.zeros((2, 3, 2, 2)))).identity())
        ['counts', 'holdout', 'holdout_group', 'labels', 'source', 'split_seed']
        """
        labels = {}
        for name in self.labels:
            info = self.variables[name]
            record: dict[str, Any] = {"dims": list(info.dims), "shape": list(info.shape), "dtype": info.dtype.str,
                                      "attrs": info.attrs}
            if name in self._arrays:  # in-memory labels: their content is part of the identity
                array = np.ascontiguousarray(np.asarray(self._arrays[name]))
                data = array.view(np.uint8).ravel()
                record["sha256"] = hashlib.sha256(data[:_BIG_HASH_BYTES].tobytes()).hexdigest()
            labels[name] = record
        return {"source": self.source.identity(), "labels": labels, "holdout": self.holdout,
                "holdout_group": self.holdout_group, "split_seed": self.split_seed, "counts": self.counts()}
