"""``predict_orientation``: a crystal map from a trained orientation network, optionally refined against the master pattern.

The network is an ``orientation_regressor`` artefact (``diffraflow train``
with ``train_orientation``) for one phase; by default the Ni regressor that
ships with diffraflow (:data:`DEFAULT_MODEL`, 60 x 60 patterns near
kikuchipy's Ni scan geometry). Each pattern goes through the network once
(with its projection centre when the model takes it); the phase's master
pattern then scores the answer, and with ``refine > 0`` polishes it by a few
Gauss-Newton steps on the normalised cross-correlation
(:mod:`~diffraflow.operators.learning.refine`).

The outputs form a ``crystal_map`` laid out as ``hough_index``'s (``rotation``
in the same quaternion convention, ``phase_id``, ``fit``, ``confidence``,
``pattern_quality``, ``n_bands``), so ``diffraflow export`` and the map
pictures read it unchanged. Their meaning here:

``confidence``
    normalised cross-correlation (clipped to ``[0, 1]``) between the pattern
    and the pattern simulated at the answer, both with the background
    removed (the network's own score when no master pattern is available);
``fit``
    degrees the refinement moved the network's answer (0 without refinement);
``pattern_quality``
    band contrast: standard deviation of the background-removed frame over its mean;
``n_bands``
    0: no bands are detected.

The projection centre is the parameter ``pc``, else the cube's per-point
``pc`` variable, else ``detector.pc``; frames of other sizes than the
model's are resized inside the network, and refinement works on the frames
binned to at most ``refine_max_px`` per side with their own geometry.

Examples
--------
>>> import numpy as np
>>> from diffraflow.operators.base import InputSpec
>>> attrs = {"modality": "ebsd", "beam_energy_kv": 20.0, "detector": {"shape": [60, 60], "pc": [0.421, 0.221, 0.505],
...          "pc_convention": "bruker", "sample_tilt": 70.0, "camera_tilt": 0.0}}
>>> outputs = PredictOrientation().resolve(InputSpec((2, 3), (60, 60), np.dtype("uint8"), attrs))
>>> outputs["rotation"].result_shape((2, 3)), outputs["confidence"].product
((2, 3, 4), 'crystal_map')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
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
from diffraflow.operators.learning.artefact import load_artefact
from diffraflow.operators.learning.classify_space_group import frames_to_tensor, load_network
from diffraflow.schemas.errors import PipelineError

__all__ = ["PredictOrientation", "DEFAULT_MODEL", "ORIENTATION_KIND"]

#: The artefact kind this operator applies (what ``train_orientation`` produces).
ORIENTATION_KIND = "orientation_regressor"
#: The Ni orientation regressor shipped with diffraflow.
DEFAULT_MODEL = str(Path(__file__).resolve().parent / "models" / "ni_orientation_small_cnn.dfmodel")
#: Blur (fraction of the frame height) of the pattern match that scores an answer: 0.7 px of a 60 px frame.
MATCH_BLUR = 0.012
_PC_CONVENTIONS = ("bruker", "tsl", "edax", "oxford", "emsoft", "emsoft4", "emsoft5", "amatek")


def _bruker_pc(pc: Any, convention: str, shape: tuple[int, int]) -> np.ndarray:
    """Projection centres ``(n, 3)`` in the Bruker convention (kikuchipy converts)."""
    pc = np.asarray(pc, dtype=np.float64).reshape(-1, 3)
    if convention == "bruker":
        return pc
    from kikuchipy.detectors import EBSDDetector

    return np.asarray(EBSDDetector(shape=tuple(shape), pc=pc, convention=convention).pc, dtype=np.float64).reshape(-1, 3)


@register_operator
@dataclass(frozen=True)
class PredictOrientation(Operator):
    """Orientations of every pattern from a trained network into a crystal map (see the module docs).

    Examples
    --------
    >>> PredictOrientation(refine=4).params()["refine"]
    4
    """

    name = "predict_orientation"
    backends = ("torch-cpu", "torch-cuda")
    max_concurrency = 1  # torch spreads one forward pass over every core already

    model: str = param(DEFAULT_MODEL, doc="orientation_regressor artefact (default: the shipped Ni regressor)",
                       file=True)
    refine: int = param(0, doc="Gauss-Newton refinement iterations against the master pattern (0: the network's "
                               "answer, scored only)")
    pc: tuple[float, float, float] | None = param(None, doc="projection centre (x, y, z) overriding the cube's")
    pc_convention: str = param("bruker", doc="convention of 'pc'", choices=_PC_CONVENTIONS)
    min_confidence: float = param(0.0, doc="points below this confidence get phase_id -1 (kept in the store)")
    batch_frames: int = param(256, doc="frames per forward pass")
    refine_max_px: int = param(120, doc="refinement and scoring bin frames to at most this many pixels per side")
    per_point_pc: Any = internal_field()

    def __post_init__(self) -> None:
        if isinstance(self.model, str) and self.model:
            object.__setattr__(self, "model", os.path.abspath(os.path.expanduser(self.model)))
        if self.pc is not None:
            object.__setattr__(self, "pc", tuple(float(v) for v in self.pc))

    def bind(self, variables: Mapping[str, Any]) -> PredictOrientation:
        """Take the cube's per-point ``pc`` variable (read once per worker in ``setup``)."""
        if self.pc is None and "pc" in variables:
            return dataclasses.replace(self, per_point_pc=variables["pc"])
        return self

    def _record(self) -> dict[str, Any]:
        return dict(load_artefact(self.model, kind=ORIENTATION_KIND, weights=False).model)

    def _geometry(self, spec: InputSpec) -> dict[str, Any]:
        """Projection centre (Bruker, mean when per point), tilts and beam energy of the frames."""
        from diffraflow.schemas.cube import ebsd_geometry

        attrs = spec.attrs or {}
        detector = attrs.get("detector") or {}
        record = self._record()
        pc: Any
        if self.pc is not None:
            pc, convention, source = self.pc, self.pc_convention, "pc parameter"
        elif self.per_point_pc is not None:
            convention = dict(getattr(self.per_point_pc, "attrs", {}) or {}).get(
                "convention", detector.get("pc_convention", "bruker"))
            pc = detector.get("pc") or record.get("pc_centre")
            source = "cube variable pc (per point)"
        elif detector.get("pc") is not None:
            pc, convention, source = detector["pc"], detector.get("pc_convention", "bruker"), "cube detector.pc"
        else:
            pc, convention, source = record.get("pc_centre"), "bruker", "the model's training centre (cube has none)"
        geometry = ebsd_geometry(detector, note=lambda _: None)
        energy = attrs.get("beam_energy_kv") or (record.get("geometry") or {}).get("beam_energy_kv") or 20.0
        return {"pc": _bruker_pc(pc, convention, spec.det_shape)[0], "convention": convention, "source": source,
                "sample_tilt": float(geometry["sample_tilt"]), "camera_tilt": float(geometry["tilt"]),
                "azimuthal": float(geometry["azimuthal"]), "energy_kv": float(energy)}

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        attrs = spec.attrs or {}
        if attrs.get("modality", "ebsd") not in ("ebsd", "tkd"):
            raise PipelineError(self.name, f"cannot predict EBSD orientations of a {attrs.get('modality')} scan",
                                "apply it to EBSD or TKD cubes")
        for name, value, low in (("batch_frames", self.batch_frames, 1), ("refine_max_px", self.refine_max_px, 16)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PipelineError(f"{self.name}.{name}", f"must be a whole number of {low} or more, got {value!r}",
                                    f"e.g. {name}: {256 if name == 'batch_frames' else 120}")
        if isinstance(self.refine, bool) or not isinstance(self.refine, int) or not 0 <= self.refine <= 50:
            raise PipelineError(f"{self.name}.refine", f"must be a whole number from 0 to 50, got {self.refine!r}",
                                "e.g. refine: 6 (0 for the network's answer)")
        if not 0 <= self.min_confidence <= 1:
            raise PipelineError(f"{self.name}.min_confidence", f"must lie in [0, 1], got {self.min_confidence}",
                                "e.g. min_confidence: 0.1 (0 keeps every point)")
        if len(spec.det_shape) != 2 or min(spec.det_shape) < 8:
            raise PipelineError(self.name, f"frames must be 2-D and at least 8 x 8 px, got {spec.det_shape}",
                                "apply it to detector frames")
        self._geometry(spec)
        product = "crystal_map"
        return {
            "rotation": OutputSpec("nav", "float64", (4,), ("quat",), "orientation quaternion (w, x, y, z)", product),
            "phase_id": OutputSpec("nav", "int32", (), (), "phase id, -1 below min_confidence", product),
            "fit": OutputSpec("nav", "float32", (), (), "degrees the refinement moved the network's answer",
                              product),
            "confidence": OutputSpec("nav", "float32", (), (), "pattern match (NCC) at the answer, [0, 1]", product),
            "pattern_quality": OutputSpec("nav", "float32", (), (), "band contrast of the frame", product),
            "n_bands": OutputSpec("nav", "int32", (), (), "0: no bands are detected", product),
        }

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """The crystal map's ``phases`` (the model's phase, id 0), scan, projection centre and model identity.

        Examples
        --------
        >>> attrs = {"modality": "ebsd", "detector": {"shape": [60, 60], "pc": [0.42, 0.22, 0.5]}}
        >>> rec = PredictOrientation().result_attrs(InputSpec((2, 3), (60, 60), np.dtype("uint8"), attrs))
        >>> rec["phases"][0]["name"], rec["projection_centre"]["value"]
        ('ni', [0.42, 0.22, 0.5])
        """
        art = load_artefact(self.model, kind=ORIENTATION_KIND, weights=False)
        geometry = self._geometry(spec)
        phase = {**dict(art.model.get("phase") or {}), "id": 0}
        low, high = (np.asarray(v) for v in art.model.get("pc_range", [[0, 0, 0], [1, 1, 1]]))
        pc = np.asarray(geometry["pc"])
        if self.per_point_pc is not None:
            pc = _bruker_pc(np.asarray(self.per_point_pc[...]).reshape(-1, 3), geometry["convention"],
                            spec.det_shape).mean(axis=0)
        margin = 0.01
        step = (spec.attrs or {}).get("step_size")
        return {
            "phases": [phase],
            "scan": dict(spec.attrs) if spec.attrs else None,
            "step_size": dict(step) if step else None,
            "min_confidence": float(self.min_confidence),
            "projection_centre": {"value": [round(float(v), 6) for v in pc], "convention": "bruker",
                                  "source": geometry["source"], "per_point": self.per_point_pc is not None},
            "pc_within_training_range": bool(((pc >= low - margin) & (pc <= high + margin)).all()),
            "refine": int(self.refine), "model": str(self.model), "model_sha256": art.content_hash,
        }

    # -- per worker ------------------------------------------------------------------------
    def setup(self, spec: InputSpec, backend: str = "torch-cpu") -> dict[str, Any]:
        from diffraflow.operators.learning.rotations import proper_point_group_matrices

        art, net = load_network(self.model, ORIENTATION_KIND, backend)
        device = next(net.parameters()).device
        geometry = self._geometry(spec)
        record = art.model
        per_point = None
        if self.per_point_pc is not None:
            per_point = _bruker_pc(np.asarray(self.per_point_pc[...], dtype=np.float64).reshape(-1, 3),
                                   geometry["convention"], spec.det_shape)
        scale = min(1.0, float(self.refine_max_px) / max(spec.det_shape))
        match_shape = (max(8, round(spec.det_shape[0] * scale)), max(8, round(spec.det_shape[1] * scale)))
        constants = {"net": net, "device": device, "record": record, "geometry": geometry, "per_point": per_point,
                     "symmetry": proper_point_group_matrices(record.get("point_group") or "m-3m", device=device),
                     "match_shape": match_shape, "projector": self._projector(record, geometry, device)}
        if constants["projector"] is not None and per_point is None:
            constants["directions"] = self._directions(match_shape, geometry["pc"][None], geometry, device)
        return constants

    @staticmethod
    def _projector(record: Mapping[str, Any], geometry: Mapping[str, Any], device: Any) -> Any:
        """The phase's master pattern as a projector, or None when it cannot be made offline."""
        from diffraflow.operators.learning.projector import MasterPatternProjector
        from diffraflow.operators.simulate.master_patterns import get_master_pattern
        from diffraflow.schemas.errors import SchemaError

        name = (record.get("phase") or {}).get("name")
        if not name:
            return None
        kinds = (record.get("geometry") or {}).get("master_pattern_kinds") or ["auto"]
        try:
            try:
                mp = get_master_pattern(str(name), geometry["energy_kv"], kind=str(kinds[0]))
            except SchemaError:  # e.g. the dynamical pattern at another beam energy: the kinematical one
                mp = get_master_pattern(str(name), geometry["energy_kv"], kind="auto")
        except SchemaError:
            return None
        return MasterPatternProjector(mp.data, device=device)

    @staticmethod
    def _directions(shape: tuple[int, int], pc: np.ndarray, geometry: Mapping[str, Any], device: Any) -> Any:
        from diffraflow.operators.learning.projector import detector_directions

        return detector_directions(shape, pc, geometry["sample_tilt"], geometry["camera_tilt"], device=device,
                                   azimuthal=geometry["azimuthal"])

    # -- per chunk ----------------------------------------------------------------------------
    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        import torch
        from diffraflow.operators.learning.refine import flatten_patterns, refine_orientations
        from diffraflow.operators.learning.rotations import (
            matrix_to_quaternion,
            reduce_to_fundamental,
            rotation_6d_to_matrix,
            rotation_angle_deg,
        )
        from torch.nn import functional

        c = ctx.constants
        net, device, geometry, record = c["net"], c["device"], c["geometry"], c["record"]
        x = frames_to_tensor(frames, device)
        n = len(x)
        if c["per_point"] is not None:
            nav = ctx.flat_start + np.arange(n)
            if ctx.scan_index is not None:
                nav = ctx.scan_index[:, 0] * ctx.spec.scan_shape[1] + ctx.scan_index[:, 1]
            pcs = c["per_point"][nav]
        else:
            pcs = np.broadcast_to(geometry["pc"], (n, 3))
        pc_tensor = torch.as_tensor(np.asarray(pcs, dtype=np.float32), device=device)
        projector = c["projector"]
        match: Any = None
        if projector is not None:
            match = functional.interpolate(x.to(torch.float32)[:, None], size=c["match_shape"], mode="bilinear",
                                           antialias=True, align_corners=False)[:, 0] \
                if tuple(x.shape[-2:]) != tuple(c["match_shape"]) else x.to(torch.float32)
        rotations, confidence, fit = [], [], []
        step = int(self.batch_frames)
        with torch.inference_mode():
            for start in range(0, n, step):
                part = slice(start, min(n, start + step))
                rot6d, scores = net(x[part], pc=pc_tensor[part] if record.get("use_pc") else None)
                candidates = rotation_6d_to_matrix(rot6d.float())                   # (b, h, 3, 3)
                b, h = candidates.shape[:2]
                if projector is None:
                    best = scores.argmax(dim=1)
                    R = candidates[torch.arange(b), best]
                    rotations.append(R)
                    confidence.append(torch.softmax(scores.float(), dim=1).amax(dim=1))
                    fit.append(torch.zeros(b, device=device))
                    continue
                dirs = c.get("directions")
                if dirs is None:
                    dirs = self._directions(c["match_shape"], np.asarray(pcs[part]), geometry, device)
                observed = flatten_patterns(match[part], lowpass_px=MATCH_BLUR * c["match_shape"][0])
                if h > 1:  # keep the hypothesis whose pattern matches best
                    flat = candidates.reshape(b * h, 3, 3)
                    d = dirs if dirs.shape[0] == 1 else dirs.repeat_interleave(h, dim=0)
                    sim = flatten_patterns(projector.project(flat, d, c["match_shape"]),
                                           lowpass_px=MATCH_BLUR * c["match_shape"][0])
                    ncc = (sim.view(b, h, -1) * observed[:, None]).sum(dim=-1)
                    R0 = candidates[torch.arange(b), ncc.argmax(dim=1)]
                else:
                    R0 = candidates[:, 0]
                R, ncc = refine_orientations(projector, match[part], R0, dirs, c["match_shape"],
                                             iterations=int(self.refine), fine=MATCH_BLUR)
                rotations.append(R)
                confidence.append(ncc.clamp(0.0, 1.0))
                fit.append(rotation_angle_deg(R0.transpose(1, 2) @ R))  # the move itself, not up to symmetry
        R = torch.cat(rotations) if rotations else torch.zeros((0, 3, 3), device=device)
        R = reduce_to_fundamental(R, c["symmetry"])
        quaternion = matrix_to_quaternion(R).to(torch.float64)
        conf = (torch.cat(confidence) if confidence else torch.zeros(0, device=device)).to(torch.float32)
        with torch.inference_mode():
            xf = x.to(torch.float32)
            # Band contrast: what is left after removing the smooth background, relative to the mean intensity.
            quality = (xf - _smooth(xf)).reshape(n, -1).std(dim=1) / xf.reshape(n, -1).mean(dim=1).clamp_min(1e-6)
        phase = torch.where(conf >= float(self.min_confidence), torch.zeros(n, dtype=torch.int32, device=device),
                            torch.full((n,), -1, dtype=torch.int32, device=device))
        return {"rotation": quaternion, "phase_id": phase,
                "fit": (torch.cat(fit) if fit else torch.zeros(0, device=device)).to(torch.float32),
                "confidence": conf, "pattern_quality": quality.to(torch.float32),
                "n_bands": torch.zeros(n, dtype=torch.int32, device=device)}


def _smooth(x: Any) -> Any:
    from diffraflow.operators.learning._filters import gaussian_blur

    return gaussian_blur(x, 0.1 * x.shape[-2])
