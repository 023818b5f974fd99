"""``hough_index``: Hough/Radon EBSD indexing as a pipeline operator.

The operator wraps :class:`diffraflow.operators.indexing.HoughIndexer`: the indexer (its
Radon look-up table, butterfly kernels and reflector tables) is built once
per worker in :meth:`HoughIndex.setup`, and each chunk of frames is indexed by
:meth:`~diffraflow.operators.indexing.HoughIndexer.index_chunk`. The outputs form a
``crystal_map`` product (see :mod:`diffraflow.schemas.results`), which
``diffraflow export RESULT.zarr OUT.ang`` and the PNG pictures read.

The projection centre comes from the cube's metadata (the per-point ``pc``
variable when present, else ``detector.pc``) unless given as a parameter; the
cube's ``static_background`` variable is subtracted when present.

On the GPU (step ``backend: cupy``, ``diffraflow index --backend cuda``) every
stage runs on the device (:mod:`diffraflow.operators.indexing.gpu`) and only
per-pattern results come back; frames that arrive as CuPy arrays (a previous
GPU step's output) are indexed where they are. Several GPUs: one worker per
GPU, each building its own indexer constants on its own device in
:meth:`HoughIndex.setup` (constants are never shipped) -- dask-cuda's
``LocalCUDACluster`` for ``--scheduler local`` when a step is on a GPU, or for
a scheduler address workers started as ``dask cuda worker ADDRESS --resources
GPU=1``; GPU tasks then ask for one ``GPU`` each. One chunk at a time per
worker (``max_concurrency``): the indexer overlaps copies and compute inside a
chunk, so chunks of tens of thousands of frames (``--chunk-frames``) keep a GPU
busy.

Examples
--------
>>> from diffraflow.operators.base import InputSpec
>>> import numpy as np
>>> attrs = {"modality": "ebsd", "detector": {"shape": [60, 60], "pc": [0.42, 0.22, 0.5],
...          "pc_convention": "bruker", "sample_tilt": 70, "camera_tilt": 0},
...          "phases": [{"id": 0, "name": "ni", "space_group": 225,
...                      "lattice": [0.352, 0.352, 0.352, 90, 90, 90],
...                      "atoms": [{"element": "Ni", "xyz": [0, 0, 0]}]}]}
>>> outputs = HoughIndex().resolve(InputSpec((2, 3), (60, 60), np.dtype("uint8"), attrs))
>>> outputs["rotation"].result_shape((2, 3)), outputs["phase_id"].product
((2, 3, 4), 'crystal_map')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import (
    ChunkContext,
    InputSpec,
    Operator,
    OutputSpec,
    internal_field,
    param,
    register_operator,
)
from diffraflow.operators.indexing.confidence import MIN_CONFIDENCE
from diffraflow.schemas.errors import PipelineError

__all__ = ["HoughIndex"]

_PC_CONVENTIONS = ("bruker", "tsl", "edax", "oxford", "emsoft", "emsoft4", "emsoft5", "amatek")


@register_operator
@dataclass(frozen=True)
class HoughIndex(Operator):
    """Index EBSD patterns by Radon band detection and triplet voting into a crystal map.

    Examples
    --------
    >>> HoughIndex(phases=("ni", "fe")).params()["phases"]
    ['ni', 'fe']
    """

    name = "hough_index"
    #: numpy: the numba CPU kernels; cupy: the CUDA path (every stage on the GPU, CuPy frames indexed in
    #: place). The step's backend decides, nothing else.
    backends = ("numpy", "cupy")
    # The indexer's numba kernels already run in parallel over all cores; two of them called at once
    # from the threads executor fight over the cores (measured: 333 against 2,238 frames/s on 2 cores).
    # One kernel at a time per process keeps reads and writes overlapping with compute.
    max_concurrency = 1
    # The CUDA indexer copies host patterns to the GPU itself, through pinned buffers on streams that
    # overlap the copies with compute; frames already on the GPU (an earlier GPU step) are used in place.
    host_frames = True

    phases: tuple[str, ...] = param((), doc="phase names from the built-in library or CIF paths; "
                                           "default: the phases listed in the cube's metadata")
    pc: tuple[float, float, float] | None = param(None, doc="projection centre (x, y, z) overriding the cube's")
    pc_convention: str = param("bruker", doc="convention of 'pc'", choices=_PC_CONVENTIONS)
    n_bands: int | None = param(None, doc="bands detected per pattern (default: the indexer's, 15)")
    use_static_background: bool = param(True, doc="subtract the cube's static_background variable when present")
    dynamic_background: bool = param(False, doc="also remove a fitted quadratic surface from each pattern")
    min_confidence: float = param(MIN_CONFIDENCE, doc="solutions below this confidence are reported and exported "
                                  "as not indexed (the store keeps them all); 0 keeps every solution")
    static_background: Any = internal_field()
    per_point_pc: Any = internal_field()

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(str(p) for p in (self.phases or ())))
        if self.pc is not None:
            object.__setattr__(self, "pc", tuple(float(v) for v in self.pc))

    # -- binding and resolution ----------------------------------------------------
    def bind(self, variables: Mapping[str, Any]) -> HoughIndex:
        """Take the cube's ``static_background`` and per-point ``pc`` variables (lazily).

        Examples
        --------
        >>> HoughIndex().bind({}).per_point_pc is None
        True
        """
        updates: dict[str, Any] = {}
        if self.use_static_background and "static_background" in variables:
            updates["static_background"] = np.asarray(variables["static_background"][...], dtype=np.float32)
        if self.pc is None and "pc" in variables:
            updates["per_point_pc"] = variables["pc"]  # a lazy Zarr array: read once per worker in setup
        return dataclasses.replace(self, **updates) if updates else self

    def _phase_list(self, spec: InputSpec):
        from diffraflow.operators.crystallography.phases import get_phase, phase_from_record
        from orix.crystal_map import PhaseList

        if self.phases:
            phases = [get_phase(name) for name in self.phases]
        else:
            records = (spec.attrs or {}).get("phases") or []
            if not records:
                raise PipelineError(f"{self.name}.phases", "no phases given and the cube metadata lists none",
                                    "set phases: [ni] (library names or CIF paths)")
            phases = [phase_from_record(dict(r)) for r in records]
        for phase in phases:  # the same for every chunk: refuse it before any data is read
            if phase.space_group is None:
                raise PipelineError(f"{self.name}.phases", f"phase {phase.name!r} has no space group",
                                    "give the phase's space group (a library name or a CIF with one)")
        return PhaseList(phases={i: phase for i, phase in enumerate(phases)})

    def _pc_and_convention(self, spec: InputSpec) -> tuple[tuple[float, float, float], str]:
        detector = (spec.attrs or {}).get("detector", {})
        if self.pc is not None:
            return self.pc, self.pc_convention
        if self.per_point_pc is not None:
            convention = dict(getattr(self.per_point_pc, "attrs", {}) or {}).get(
                "convention", detector.get("pc_convention", "bruker"))
            return tuple(detector.get("pc") or (0.5, 0.5, 0.5)), convention
        if detector.get("pc") is None:
            raise PipelineError(f"{self.name}.pc", "the projection centre is unknown (the cube has no "
                                "detector.pc or pc variable)", "pass --pc X Y Z (or set pc: [x, y, z] and pc_convention in "
                                "the pipeline step)")
        return tuple(detector["pc"]), detector.get("pc_convention", "bruker")

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        attrs = spec.attrs or {}
        modality = attrs.get("modality", "ebsd")
        if modality not in ("ebsd", "tkd"):
            raise PipelineError(self.name, f"cannot Hough-index a {modality} scan", "index EBSD or TKD cubes only")
        if len(spec.det_shape) != 2:
            raise PipelineError(self.name, f"frames must be 2-D, got {spec.det_shape}", "index detector frames")
        if not 0 <= self.min_confidence <= 1:
            raise PipelineError(f"{self.name}.min_confidence", f"must lie in [0, 1], got {self.min_confidence}",
                                f"use e.g. {MIN_CONFIDENCE} (the default), or 0 to keep every solution")
        if self.n_bands is not None and self.n_bands < 3:
            raise PipelineError(f"{self.name}.n_bands", f"need at least 3 bands, got {self.n_bands}", "use 6 to 12")
        self._phase_list(spec)
        self._pc_and_convention(spec)
        product = "crystal_map"
        return {
            "rotation": OutputSpec("nav", "float64", (4,), ("quat",), "orientation quaternion (w, x, y, z)", product),
            "phase_id": OutputSpec("nav", "int32", (), (), "phase id, -1 not indexed", product),
            "fit": OutputSpec("nav", "float32", (), (), "mean angular deviation, degrees", product),
            "confidence": OutputSpec("nav", "float32", (), (), "voting confidence index", product),
            "pattern_quality": OutputSpec("nav", "float32", (), (), "Radon peak contrast", product),
            "n_bands": OutputSpec("nav", "int32", (), (), "bands detected", product),
        }

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """The crystal map's ``phases`` (ids as in ``phase_id``), source ``scan`` and ``projection_centre``.

        The same record entries as ``diffraflow index`` writes, so exported
        ``.ang``/``.ctf`` headers carry the beam energy, tilt and the PC used
        (the mean PC when it varies per point).

        Examples
        --------
        >>> attrs = {"modality": "ebsd", "beam_energy_kv": 20, "detector": {"shape": [60, 60],
        ...          "pc": [0.42, 0.22, 0.5], "pc_convention": "bruker"}}
        >>> rec = HoughIndex(phases=("ni",)).result_attrs(InputSpec((2, 3), (60, 60), np.dtype("uint8"), attrs))
        >>> rec["phases"][0]["name"], rec["scan"]["beam_energy_kv"], rec["projection_centre"]["value"]
        ('ni', 20, [0.42, 0.22, 0.5])
        """
        from diffraflow.operators.crystallography.phases import phase_to_record

        phase_list = self._phase_list(spec)
        pc, convention = self._pc_and_convention(spec)
        source = "pc parameter" if self.pc is not None else "cube detector.pc"
        if self.pc is None and self.per_point_pc is not None:
            pc = tuple(np.asarray(self.per_point_pc[...], dtype=np.float64).reshape(-1, 3).mean(axis=0))
            source = "cube variable pc (per point)"
        step = (spec.attrs or {}).get("step_size")
        return {
            "phases": [{**phase_to_record(phase), "id": int(i)} for i, phase in phase_list],
            "scan": dict(spec.attrs) if spec.attrs else None,
            "step_size": dict(step) if step else None,
            "min_confidence": float(self.min_confidence),
            "projection_centre": {"value": [round(float(v), 6) for v in pc], "convention": convention,
                                  "source": source, "per_point": self.pc is None and self.per_point_pc is not None},
        }

    def warm_up(self, spec: InputSpec, backend: str, notify: Callable[[str], None]) -> None:
        """Compile the numba kernels on a tiny indexer before the run is timed.

        ``notify`` hears :data:`~diffraflow.operators.indexing.indexer.COMPILE_MESSAGE`
        first, and only when numba's on-disk cache lacks the kernels for
        frames of ``spec.dtype`` on this backend (see
        :meth:`~diffraflow.operators.indexing.HoughIndexer.kernels_cached`).

        Examples
        --------
        >>> from diffraflow.operators.indexing.indexer import COMPILE_MESSAGE
        >>> heard = []
        >>> HoughIndex().warm_up(InputSpec((1, 1), (60, 60), np.dtype("uint8")), "numpy", heard.append)
        >>> heard in ([], [COMPILE_MESSAGE])  # the message only when the kernels were not cached yet
        True
        """
        from diffraflow.operators.indexing.indexer import warm_up_kernels

        if _indexer_backend(backend) == "cuda" and self.n_bands is not None:
            from diffraflow.operators.indexing.cuda_kernels import MAX_BANDS

            if self.n_bands > MAX_BANDS:  # before any data is read, not on the first chunk
                raise PipelineError(f"{self.name}.n_bands", f"{self.n_bands} bands exceed the CUDA kernel's "
                                    f"{MAX_BANDS}", f"use at most {MAX_BANDS} bands, or the numpy backend")
        warm_up_kernels(spec.dtype, _indexer_backend(backend), notify)

    # -- per worker and per chunk --------------------------------------------------
    def setup(self, spec: InputSpec, backend: str = "numpy") -> dict[str, Any]:
        from diffraflow.operators.indexing.indexer import HoughIndexer
        from diffraflow.schemas.cube import ebsd_geometry
        from kikuchipy.detectors import EBSDDetector

        detector_attrs = (spec.attrs or {}).get("detector", {})
        pc, convention = self._pc_and_convention(spec)
        per_point = None
        if self.per_point_pc is not None:
            per_point = np.asarray(self.per_point_pc[...], dtype=np.float64).reshape(-1, 3)
        detector = EBSDDetector(
            shape=tuple(spec.det_shape), pc=per_point if per_point is not None else pc, convention=convention,
            **ebsd_geometry(detector_attrs),  # tilts the scan does not know: 70/0 deg, with a warning
        )
        background = self.static_background
        if background is not None and tuple(np.shape(background)) != tuple(spec.det_shape):
            background = None  # frames were binned or cropped by an earlier step
        options: dict[str, Any] = {} if self.n_bands is None else {"n_bands": int(self.n_bands)}
        indexer = HoughIndexer(
            self._phase_list(spec), detector, **options, static_background=background,
            dynamic_background=self.dynamic_background,
            backend=_indexer_backend(backend),
        )
        return {"indexer": indexer, "per_point": per_point is not None}

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        indexer = ctx.constants["indexer"]
        nav = None
        if ctx.constants["per_point"]:
            nav = ctx.flat_start + np.arange(len(frames))
            if ctx.scan_index is not None:
                nav = ctx.scan_index[:, 0] * ctx.spec.scan_shape[1] + ctx.scan_index[:, 1]
        if indexer.backend != "cuda" and not isinstance(frames, np.ndarray):
            frames = _to_host(frames)
        # On CUDA, device frames (a previous GPU step's) are indexed where they are: no host round trip.
        result = indexer.index_chunk(frames, nav_indices=nav)
        return {
            "rotation": result["quaternion"],
            "phase_id": result["phase_id"].astype(np.int32),
            "fit": result["fit"].astype(np.float32),
            "confidence": result["confidence"].astype(np.float32),
            "pattern_quality": result["pattern_quality"].astype(np.float32),
            "n_bands": result["n_bands"].astype(np.int32),
        }


def _to_host(frames: Any) -> np.ndarray:
    """Host frames for the CPU kernels (CuPy arrays copied back, anything else through ``np.asarray``)."""
    if type(frames).__module__.startswith("cupy"):
        return frames.get()
    return np.asarray(frames)


def _indexer_backend(step_backend: str) -> str:
    """The indexer's device for a step backend: CUDA for ``cupy``, the numba CPU kernels otherwise."""
    return "cuda" if step_backend == "cupy" else "cpu"
