"""The scan-cube schema: dimensions, chunking rules and validated attributes.

A scan cube is a Zarr v3 group whose ``patterns`` array has the dimensions
``(scan_y, scan_x, det_y, det_x)``. Its group attributes hold a ``scan``
record described by :class:`ScanAttrs` (modality, detector geometry, beam,
step size, exposure, phases, provenance) and a ``diffraflow`` record
(:class:`StoreMarker`) saying what kind of store it is and whether its writer
finished.

Validation happens on open and on write; a failure is a
:class:`~schemas.errors.SchemaError` naming the field and the fix. The
attributes can be exported as JSON Schema (:func:`scan_attrs_json_schema`) so
that other tools can validate our stores without importing diffraflow.

Examples
--------
>>> attrs = ScanAttrs(modality="ebsd", detector={"shape": [60, 60], "pc": [0.42, 0.22, 0.5]})
>>> attrs.detector.pc_convention
'bruker'
>>> validate_scan_attrs({"modality": "xrd"}, where="scan.zarr")
Traceback (most recent call last):
...
schemas.errors.SchemaError: scan.zarr: modality: Input should be 'ebsd', 'tkd', '4dstem' or 'sped', got 'xrd' (fix: set modality to one of ebsd, tkd, 4dstem, sped)
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.errors import SchemaError

__all__ = [
    "SCAN_DIMS",
    "FORMAT_VERSION",
    "PC_CONVENTIONS",
    "DetectorGeometry",
    "StepSize",
    "PhaseRecord",
    "Provenance",
    "ScanAttrs",
    "StoreMarker",
    "validate_scan_attrs",
    "scan_attrs_json_schema",
    "pydantic_error_to_schema_error",
]

#: Dimension names of the ``patterns`` variable, in storage order.
SCAN_DIMS: tuple[str, str, str, str] = ("scan_y", "scan_x", "det_y", "det_x")
#: Version of the on-disk layout; bump on incompatible changes.
FORMAT_VERSION = 1
#: Projection-centre conventions understood by kikuchipy's ``EBSDDetector``.
PC_CONVENTIONS = ("bruker", "tsl", "edax", "oxford", "emsoft", "emsoft4", "emsoft5", "amatek")

Modality = Literal["ebsd", "tkd", "4dstem", "sped"]

# Which fix to suggest for a failing field, by the field's last path element.
_FIXES: dict[str, str] = {
    "modality": "set modality to one of ebsd, tkd, 4dstem, sped",
    "pc": "give the projection centre as three numbers (x, y, z) in the stated pc_convention",
    "pc_convention": f"use one of {', '.join(PC_CONVENTIONS)}",
    "shape": "give the detector shape as two positive integers [det_y, det_x]",
    "sample_tilt": "give the sample tilt in degrees (about 70 for EBSD)",
    "camera_tilt": "give the camera (detector) tilt in degrees",
    "beam_energy_kv": "give the beam energy in kV (e.g. 20 for SEM, 200 for TEM)",
    "exposure_s": "give the exposure per frame in seconds",
    "y": "give the step size as a positive number",
    "x": "give the step size as a positive number",
    "space_group": "give an International Tables space-group number 1-230",
    "lattice": "give the lattice as [a, b, c, alpha, beta, gamma] in nm and degrees",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DetectorGeometry(_Strict):
    """Detector geometry: shape, binning, projection centre, tilts, pixel size.

    The projection centre ``pc`` is a mean/representative value in the stated
    convention (kikuchipy ``EBSDDetector`` conventions). A per-point projection
    centre, when known, is stored in the cube as the variable ``pc`` with dims
    ``(scan_y, scan_x, pc_component)`` in the same convention.

    Examples
    --------
    >>> DetectorGeometry(shape=(60, 80), pc=(0.5, 0.3, 0.6), pc_convention="edax").shape
    (60, 80)
    """

    shape: tuple[int, int] = Field(description="detector shape (det_y, det_x) in pixels as stored")
    binning: int = Field(1, ge=1, description="on-camera binning factor")
    pc: tuple[float, float, float] | None = Field(None, description="projection centre (x, y, z)")
    pc_convention: str = Field("bruker", description="projection-centre convention")
    sample_tilt: float = Field(70.0, ge=-90, le=90, description="sample tilt about RD, degrees")
    camera_tilt: float = Field(0.0, ge=-90, le=90, description="detector tilt, degrees")
    px_size_um: float | None = Field(None, gt=0, description="unbinned detector pixel size, micrometres")
    azimuthal: float = Field(0.0, description="azimuthal angle of the detector, degrees")
    calibration: dict[str, Any] = Field(default_factory=dict,
                                        description="4D-STEM/SPED reciprocal-space calibration, e.g. {'scale': 0.0126, 'units': '1/A'}")

    @field_validator("shape")
    @classmethod
    def _positive_shape(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError(f"detector shape must be positive, got {list(value)}")
        return value

    @field_validator("pc_convention")
    @classmethod
    def _known_convention(cls, value: str) -> str:
        value = value.lower()
        if value not in PC_CONVENTIONS:
            raise ValueError(f"unknown projection-centre convention {value!r}")
        return value

    @field_validator("pc")
    @classmethod
    def _finite_pc(cls, value):
        if value is not None and not all(math.isfinite(v) for v in value):
            raise ValueError(f"projection centre must be finite, got {list(value)}")
        return value


class StepSize(_Strict):
    """Scan step sizes along ``scan_y`` and ``scan_x``.

    Examples
    --------
    >>> StepSize(y=1.5, x=1.5).unit
    'um'
    """

    y: float = Field(default=1.0, gt=0)
    x: float = Field(default=1.0, gt=0)
    unit: str = Field(default="um", description="length unit of the steps: um or nm")


class PhaseRecord(_Strict):
    """A crystal phase as stored in the metadata (see ``operators.crystallography``).

    Examples
    --------
    >>> PhaseRecord(name="ni", space_group=225, lattice=[0.352, 0.352, 0.352, 90, 90, 90]).id
    0
    """

    id: int = Field(0, ge=-1, description="phase id used in crystal maps")
    name: str
    space_group: int | None = Field(None, ge=1, le=230)
    point_group: str | None = None
    lattice: list[float] | None = None
    atoms: list[dict[str, Any]] = Field(default_factory=list)
    color: str | None = None

    @field_validator("lattice")
    @classmethod
    def _six_parameters(cls, value):
        if value is not None and (len(value) != 6 or min(value[:3]) <= 0):
            raise ValueError(f"lattice needs 6 values with a, b, c > 0, got {value}")
        return value


class Provenance(_Strict):
    """Where a store came from and what made it.

    Examples
    --------
    >>> Provenance(source_format="h5ebsd").software.startswith("diffraflow")
    True
    """

    source_file: str | None = None
    source_format: str | None = None
    reader: str | None = None
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    software: str = "diffraflow 0.1.0"
    command: str | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)


class ScanAttrs(_Strict):
    """Validated attributes of a scan cube.

    Examples
    --------
    >>> a = ScanAttrs(modality="sped", detector={"shape": [144, 144]}, beam_energy_kv=200)
    >>> a.model_dump()["detector"]["shape"]
    (144, 144)
    """

    modality: Modality
    detector: DetectorGeometry
    beam_energy_kv: float | None = Field(None, gt=0, le=1000)
    step_size: StepSize = Field(default_factory=StepSize)
    exposure_s: float | None = Field(None, ge=0)
    phases: list[PhaseRecord] = Field(default_factory=list)
    provenance: Provenance = Field(default_factory=Provenance)
    scan_shape: tuple[int, int] | None = Field(None, description="(scan_y, scan_x), filled in by the store")
    ground_truth: list[str] = Field(default_factory=list, description="names of ground-truth variables in the store")
    original_metadata: dict[str, Any] = Field(default_factory=dict, description="vendor metadata, free-form")

    @model_validator(mode="after")
    def _unique_phase_ids(self):
        ids = [p.id for p in self.phases]
        if len(ids) != len(set(ids)):
            raise ValueError(f"phase ids must be unique, got {ids}")
        return self


class StoreMarker(_Strict):
    """The ``diffraflow`` group attribute: layout version, kind, completion.

    ``complete`` is written last, after all data; a store without it was never
    finished and is refused by ``open_cube`` and ``diffraflow info``.

    Examples
    --------
    >>> StoreMarker(kind="scan_cube").complete
    False
    """

    format_version: int = FORMAT_VERSION
    kind: Literal["scan_cube", "result"]
    complete: bool = False


def pydantic_error_to_schema_error(exc: ValidationError, where: str, prefix: str = "") -> SchemaError:
    """Turn the first error of a pydantic ``ValidationError`` into a one-line SchemaError.

    Examples
    --------
    >>> try:
    ...     StepSize(y=-1)
    ... except ValidationError as exc:
    ...     print(pydantic_error_to_schema_error(exc, "scan.zarr", "step_size"))
    scan.zarr: step_size.y: Input should be greater than 0, got -1 (fix: give the step size as a positive number)
    """
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ())]
    field = ".".join(([prefix] if prefix else []) + loc) or "(root)"
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if "input" in first and first.get("type") not in ("missing",) and not isinstance(first["input"], dict):
        message += f", got {first['input']!r}"
    last = next((part for part in reversed(loc) if not part.isdigit()), "")
    fix = _FIXES.get(last, "correct or remove this field")
    if first.get("type") == "missing":
        fix = f"add the required field {field!r}"
    elif first.get("type") == "extra_forbidden":
        fix = "remove this field or put vendor metadata under original_metadata"
    return SchemaError(f"{where}: {field}", message, fix)


def validate_scan_attrs(attrs: dict[str, Any] | ScanAttrs, where: str = "scan attributes") -> ScanAttrs:
    """Validate a ``scan`` attribute record, raising a one-line SchemaError.

    Parameters
    ----------
    attrs
        A mapping as stored in the Zarr group, or an existing ScanAttrs.
    where
        The store or file name to put in error messages.

    Examples
    --------
    >>> validate_scan_attrs({"modality": "ebsd", "detector": {"shape": [60, 60]}}).modality
    'ebsd'
    """
    if isinstance(attrs, ScanAttrs):
        attrs = attrs.model_dump(mode="json")
    try:
        return ScanAttrs.model_validate(attrs)
    except ValidationError as exc:
        raise pydantic_error_to_schema_error(exc, where) from None


def scan_attrs_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the ``scan`` attribute record.

    Examples
    --------
    >>> schema = scan_attrs_json_schema()
    >>> schema["required"]
    ['modality', 'detector']
    """
    schema = ScanAttrs.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://diffraflow.invalid/schemas/scan-attrs-v1.json"
    schema["title"] = "diffraflow scan-cube attributes"
    return schema
