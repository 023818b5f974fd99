"""The scan-cube schema: dimensions, chunking rules and validated attributes.

A scan cube is a Zarr v3 group whose ``patterns`` array has the dimensions
``(scan_y, scan_x, det_y, det_x)``. Its group attributes hold a ``scan``
record described by :class:`ScanAttrs` (modality, detector geometry, beam,
step size, exposure, phases, provenance) and a ``diffraflow`` record
(:class:`StoreMarker`) saying what kind of store it is and whether its writer
finished.

A value that neither the file nor the user gave is ``None`` ("not known"),
never a typical value standing in for a fact: a 4D-STEM scan has no sample
tilt, and a raw stack has no step size. Consumers that need a number (EBSD
indexing, crystal-map exports) ask :func:`ebsd_geometry`, which fills the
conventional assumption and says so.

Validation happens on open and on write; a failure is a
:class:`~diffraflow.schemas.errors.SchemaError` naming the field and the fix. The
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
diffraflow.schemas.errors.SchemaError: scan.zarr: modality: Input should be 'ebsd', 'tkd', '4dstem' or 'sped', got 'xrd' (fix: set modality to one of ebsd, tkd, 4dstem, sped)
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from diffraflow.schemas.errors import DiffraflowError, SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "SCAN_DIMS",
    "FORMAT_VERSION",
    "PC_CONVENTIONS",
    "PC_FRACTION_CONVENTIONS",
    "PC_EMSOFT_CONVENTIONS",
    "LENGTH_UNITS",
    "EBSD_ASSUMED_GEOMETRY",
    "AssumedValueWarning",
    "DetectorGeometry",
    "StepSize",
    "PhaseRecord",
    "Provenance",
    "ScanAttrs",
    "StoreMarker",
    "check_projection_centre",
    "normalise_length_unit",
    "ebsd_geometry",
    "validate_scan_attrs",
    "validate_store_marker",
    "scan_attrs_json_schema",
    "pydantic_error_to_schema_error",
]

#: Dimension names of the ``patterns`` variable, in storage order.
SCAN_DIMS: tuple[str, str, str, str] = ("scan_y", "scan_x", "det_y", "det_x")
#: Version of the on-disk layout; bump on incompatible changes.
FORMAT_VERSION = 1
#: Projection-centre conventions understood by kikuchipy's ``EBSDDetector``.
PC_CONVENTIONS = ("bruker", "tsl", "edax", "oxford", "emsoft", "emsoft4", "emsoft5", "amatek")
#: Conventions whose components are fractions of the detector (see :func:`check_projection_centre`).
PC_FRACTION_CONVENTIONS = ("bruker", "tsl", "edax", "oxford", "amatek")
#: Conventions in unbinned pixels from the detector centre (x, y) and micrometres (z = L).
PC_EMSOFT_CONVENTIONS = ("emsoft", "emsoft4", "emsoft5")
#: Bounds of fractional PC components: x, y may lie off the screen (TKD) by up to one screen size.
_PC_XY_FRACTION = (-1.0, 2.0)
#: Upper bound of a fractional PC z (detector distance over screen size); EBSD/TKD sit near 0.3-1.5.
_PC_Z_FRACTION_MAX = 3.0
#: Bounds of the EMsoft detector distance L in micrometres: below 1 um it is a fraction given by mistake.
_PC_EMSOFT_L = (1.0, 1e6)
#: Canonical step units and the spellings accepted for them.
LENGTH_UNITS: dict[str, tuple[str, ...]] = {
    "nm": ("nm", "nanometer", "nanometers", "nanometre", "nanometres"),
    "um": ("um", "µm", "μm", "micron", "microns", "micrometer", "micrometers", "micrometre", "micrometres"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
}
_UNIT_ALIASES = {alias: unit for unit, aliases in LENGTH_UNITS.items() for alias in aliases}
#: What EBSD consumers assume for geometry no file or user gave (kikuchipy's EBSDDetector names).
EBSD_ASSUMED_GEOMETRY: dict[str, float | int] = {"sample_tilt": 70.0, "camera_tilt": 0.0, "azimuthal": 0.0,
                                                 "binning": 1}

Modality = Literal["ebsd", "tkd", "4dstem", "sped"]

# Which fix to suggest for a failing field, by the field's last path element.
_FIXES: dict[str, str] = {
    "modality": "set modality to one of ebsd, tkd, 4dstem, sped",
    "pc": "give the projection centre as three numbers (x, y, z) in the stated pc_convention",
    "pc_convention": f"use one of {', '.join(PC_CONVENTIONS)}",
    "shape": "give the detector shape as two positive integers [det_y, det_x]",
    "binning": "give the on-camera binning as a positive integer, or leave it out when not known",
    "sample_tilt": "give the sample tilt in degrees between -90 and 90 (about 70 for EBSD), or leave it out",
    "camera_tilt": "give the camera (detector) tilt in degrees between -90 and 90, or leave it out",
    "azimuthal": "give the detector azimuthal angle in degrees between -360 and 360, or leave it out",
    "px_size_um": "give the unbinned detector pixel size in micrometres, or leave it out",
    "beam_energy_kv": "give the beam energy in kV (e.g. 20 for SEM, 200 for TEM)",
    "exposure_s": "give the exposure per frame in seconds",
    "y": "give the step size as a positive number",
    "x": "give the step size as a positive number",
    "unit": "give the step unit as nm, um or mm",
    "kind": "this is not a store diffraflow can read: re-create it with 'diffraflow convert' or 'diffraflow run'",
    "format_version": "re-create the store with diffraflow",
    "complete": "re-create the store with diffraflow",
    "space_group": "give an International Tables space-group number 1-230",
    "lattice": "give the lattice as [a, b, c, alpha, beta, gamma] in nm and degrees",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DetectorGeometry(_Strict):
    """Detector geometry: shape, binning, projection centre, tilts, pixel size.

    The projection centre ``pc`` is a mean/representative value in the stated
    convention (kikuchipy ``EBSDDetector`` conventions), checked against the
    bounds of :func:`check_projection_centre`. A per-point projection
    centre, when known, is stored in the cube as the variable ``pc`` with dims
    ``(scan_y, scan_x, pc_component)`` in the same convention.

    Every value but ``shape`` may be ``None``: not known (no file or user
    gave it). Consumers needing one use :func:`ebsd_geometry`.

    Examples
    --------
    >>> DetectorGeometry(shape=(60, 80), pc=(0.5, 0.3, 0.6), pc_convention="edax").shape
    (60, 80)
    >>> DetectorGeometry(shape=(256, 256)).sample_tilt is None
    True
    """

    shape: tuple[int, int] = Field(description="detector shape (det_y, det_x) in pixels as stored")
    binning: int | None = Field(default=None, ge=1, description="on-camera binning factor; None when not known")
    pc: tuple[float, float, float] | None = Field(None, description="projection centre (x, y, z)")
    pc_convention: str = Field("bruker", description="projection-centre convention of pc")
    sample_tilt: float | None = Field(default=None, ge=-90, le=90, allow_inf_nan=False,
                                      description="sample tilt about RD, degrees; None when not known")
    camera_tilt: float | None = Field(default=None, ge=-90, le=90, allow_inf_nan=False,
                                      description="detector tilt, degrees; None when not known")
    px_size_um: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                     description="unbinned detector pixel size, micrometres")
    azimuthal: float | None = Field(default=None, ge=-360, le=360, allow_inf_nan=False,
                                    description="azimuthal angle of the detector, degrees; None when not known")
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

    @model_validator(mode="after")
    def _pc_in_bounds(self):
        # The bounds depend on the convention (and, for EMsoft pixels, on shape and binning),
        # so they are checked once the whole record is parsed.
        if self.pc is not None:
            check_projection_centre(self.pc, self.pc_convention, "pc", det_shape=self.shape, binning=self.binning)
        return self


class StepSize(_Strict):
    """Scan step sizes along ``scan_y`` and ``scan_x``, in a length unit.

    Both steps are required: a scan whose step is not known has no
    ``step_size`` at all (``ScanAttrs.step_size`` is ``None``). The unit
    defaults to micrometres and accepts the spellings in :data:`LENGTH_UNITS`
    (``µm``, ``micron``...), stored as ``nm``, ``um`` or ``mm``.

    Examples
    --------
    >>> StepSize(y=1.5, x=1.5).unit
    'um'
    >>> StepSize(y=12.8, x=12.8, unit="nanometres").unit
    'nm'
    """

    y: float = Field(gt=0, allow_inf_nan=False)
    x: float = Field(gt=0, allow_inf_nan=False)
    unit: str = Field(default="um", description="length unit of the steps: nm, um or mm")

    @field_validator("unit", mode="before")
    @classmethod
    def _length_unit(cls, value: Any) -> str:
        unit = normalise_length_unit(value) if isinstance(value, str) else None
        if unit is None:
            raise ValueError("step unit must be a length unit (nm, um or mm)")
        return unit


class PhaseRecord(_Strict):
    """A crystal phase as stored in the metadata (see ``diffraflow.operators.crystallography``).

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

    Values no file or user gave stay ``None`` (beam energy, step size,
    exposure, and the detector's tilts, binning and projection centre).

    Examples
    --------
    >>> a = ScanAttrs(modality="sped", detector={"shape": [144, 144]}, beam_energy_kv=200)
    >>> a.model_dump()["detector"]["shape"]
    (144, 144)
    >>> a.step_size is None
    True
    """

    modality: Modality
    detector: DetectorGeometry
    beam_energy_kv: float | None = Field(default=None, gt=0, le=1000, allow_inf_nan=False)
    step_size: StepSize | None = Field(default=None, description="scan steps; None when not known")
    exposure_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
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

    format_version: int = Field(default=FORMAT_VERSION, ge=1)
    kind: Literal["scan_cube", "result"]
    complete: bool = False


class AssumedValueWarning(UserWarning):
    """A consumer used a conventional value because the scan does not know the real one."""


def normalise_length_unit(text: str) -> str | None:
    """The canonical length unit (``nm``, ``um``, ``mm``) for a spelling, or None if it is not one.

    Parameters
    ----------
    text
        A unit as written by a file or a user: ``"µm"``, ``"microns"``, ``"NM"``...

    Examples
    --------
    >>> normalise_length_unit("µm"), normalise_length_unit(" Nanometres "), normalise_length_unit("furlong")
    ('um', 'nm', None)
    """
    return _UNIT_ALIASES.get(str(text).strip().lower())


def check_projection_centre(pc: Sequence[float], convention: str = "bruker", where: str = "--pc", *,
                            det_shape: Sequence[int] | None = None,
                            binning: int | None = None) -> tuple[float, float, float]:
    """Check a projection centre against the bounds of its convention; return it as three floats.

    For command-line parsers of ``--pc`` and for the schema (a stored
    ``detector.pc`` goes through the same check).

    Parameters
    ----------
    pc
        ``(x, y, z)`` in ``convention``.
    convention
        One of :data:`PC_CONVENTIONS` (any case).
    where
        The option or field named in the error (``"--pc"``, ``"detector.pc"``).
    det_shape, binning
        ``(det_y, det_x)`` as stored and the on-camera binning; with both
        known, EMsoft pixel coordinates are bounded by the detector size too.

    Returns
    -------
    tuple of float

    Raises
    ------
    SchemaError
        Not three finite numbers, an unknown convention, or a component
        out of bounds (see Notes).

    Notes
    -----
    Fractional conventions (``bruker``, ``tsl``/``edax``/``amatek``,
    ``oxford``) give x and y as fractions of the detector width/height
    (typically 0.3-0.7) and z as the detector distance over the screen
    size (typically 0.4-1.0). We accept x, y in [-1, 2] (the centre may lie
    off the screen, as in off-axis TKD, but not by more than a screen) and
    z in (0, 3]. EMsoft conventions give x, y in unbinned pixels from the
    screen centre and z = L in micrometres: we require L in [1, 1e6] um (a
    sub-micrometre L is a fraction given in the wrong convention) and, when
    shape and binning are known, |x|, |y| within 1.5 screen sizes (the same
    reach as [-1, 2] above).

    Examples
    --------
    >>> check_projection_centre([0.42, 0.22, 0.5])
    (0.42, 0.22, 0.5)
    >>> check_projection_centre([5.0, 0.22, 0.5], "tsl")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.SchemaError: --pc: projection-centre x = 5.0 is outside [-1, 2] in the tsl convention (fractions of the detector) (fix: give x and y as fractions of the detector width and height (typically 0.3-0.7) and z as detector distance over screen size (typically 0.4-1.0); pixel and micrometre values need --pc-convention emsoft)
    >>> check_projection_centre([12.5, -40.0, 15000.0], "emsoft", det_shape=(60, 60), binning=8)
    (12.5, -40.0, 15000.0)
    """
    name = str(convention).lower()
    if name not in PC_CONVENTIONS:
        raise SchemaError(where, f"unknown projection-centre convention {convention!r}", _FIXES["pc_convention"])
    try:
        values = tuple(float(v) for v in pc)
    except (TypeError, ValueError):
        raise SchemaError(where, f"projection centre must be three numbers, got {pc!r}", _FIXES["pc"]) from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise SchemaError(where, f"projection centre must be three finite numbers, got {list(values)}", _FIXES["pc"])
    x, y, z = values
    if name in PC_FRACTION_CONVENTIONS:
        fix = ("give x and y as fractions of the detector width and height (typically 0.3-0.7) and z as "
               "detector distance over screen size (typically 0.4-1.0); pixel and micrometre values need "
               "--pc-convention emsoft")
        lo, hi = _PC_XY_FRACTION
        for label, value in (("x", x), ("y", y)):
            if not lo <= value <= hi:
                raise SchemaError(where, f"projection-centre {label} = {value} is outside [{lo:g}, {hi:g}] in the "
                                  f"{name} convention (fractions of the detector)", fix)
        if not 0 < z <= _PC_Z_FRACTION_MAX:
            raise SchemaError(where, f"projection-centre z = {z} is outside (0, {_PC_Z_FRACTION_MAX:g}] in the "
                              f"{name} convention (detector distance over screen size)", fix)
        return values
    fix = ("give x and y in unbinned pixels from the detector centre and z as the detector distance L in "
           "micrometres (typically 5000-30000); fractions need --pc-convention bruker")
    lo, hi = _PC_EMSOFT_L
    if not lo <= z <= hi:
        raise SchemaError(where, f"projection-centre L = {z} um is outside [{lo:g}, {hi:g}] in the {name} "
                          "convention (micrometres)", fix)
    if det_shape is not None and binning is not None:
        for label, value, size in (("x", x, det_shape[1]), ("y", y, det_shape[0])):
            reach = 1.5 * int(size) * int(binning)
            if abs(value) > reach:
                raise SchemaError(where, f"projection-centre {label} = {value} px is more than 1.5 detector sizes "
                                  f"({reach:g} unbinned px) from the centre in the {name} convention", fix)
    return values


def ebsd_geometry(detector: DetectorGeometry | Mapping[str, Any] | None,
                  note: Callable[[str], None] | None = None) -> dict[str, float | int]:
    """Sample tilt, camera tilt, azimuthal angle and binning for kikuchipy's ``EBSDDetector``.

    Known values are taken as stored; unknown ones (``None`` or absent)
    take :data:`EBSD_ASSUMED_GEOMETRY` (70 deg sample tilt, untilted camera,
    no azimuthal rotation, no binning). An assumed tilt is reported, to
    ``note`` if given, else as an :class:`AssumedValueWarning`; the azimuthal
    angle and binning fall back silently, as their assumptions are the
    neutral values kikuchipy itself defaults to.

    Parameters
    ----------
    detector
        A ``DetectorGeometry``, or its dict form (``scan["detector"]``).
    note
        Called with one line naming the assumed values.

    Returns
    -------
    dict
        ``{"sample_tilt", "tilt", "azimuthal", "binning"}``, the keyword
        names of ``EBSDDetector``.

    Examples
    --------
    >>> ebsd_geometry({"shape": [60, 60], "sample_tilt": 69.5, "camera_tilt": 2.0, "azimuthal": 0.0, "binning": 8})
    {'sample_tilt': 69.5, 'tilt': 2.0, 'azimuthal': 0.0, 'binning': 8}
    >>> ebsd_geometry({"shape": [60, 60], "sample_tilt": None}, note=print)
    sample tilt, camera tilt not known: assuming 70 deg, 0 deg
    {'sample_tilt': 70.0, 'tilt': 0.0, 'azimuthal': 0.0, 'binning': 1}
    """
    if isinstance(detector, DetectorGeometry):
        record: Mapping[str, Any] = detector.model_dump()
    else:
        record = detector or {}
    out: dict[str, float | int] = {}
    assumed: list[tuple[str, str]] = []
    for field, keyword in (("sample_tilt", "sample_tilt"), ("camera_tilt", "tilt"), ("azimuthal", "azimuthal"),
                           ("binning", "binning")):
        value = record.get(field)
        if value is None:
            value = EBSD_ASSUMED_GEOMETRY[field]
            if field in ("sample_tilt", "camera_tilt"):
                assumed.append((field.replace("_", " "), f"{value:g} deg"))
        out[keyword] = int(value) if field == "binning" else float(value)
    if assumed:
        text = (", ".join(label for label, _ in assumed) + " not known: assuming "
                + ", ".join(shown for _, shown in assumed))
        if note is not None:
            note(text)
        else:
            warnings.warn(text, AssumedValueWarning, stacklevel=2)
    return out


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
    raised = (first.get("ctx") or {}).get("error")
    if isinstance(raised, DiffraflowError):
        # A validator that already wrote a where/problem/fix (check_projection_centre): keep its words.
        field = ".".join([part for part in (field if loc or prefix else "", raised.where) if part])
        return SchemaError(f"{where}: {field}", raised.problem, raised.fix)
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


def validate_store_marker(record: Any, where: str = "store") -> StoreMarker:
    """Validate a store's ``diffraflow`` marker, raising a one-line SchemaError.

    Parameters
    ----------
    record
        The ``diffraflow`` group attribute as read (normally a dict).
    where
        The store path, for the message.

    Raises
    ------
    SchemaError
        Not a mapping, an unknown ``kind``, a malformed field, or a
        ``format_version`` newer than this diffraflow reads.

    Examples
    --------
    >>> validate_store_marker({"format_version": 1, "kind": "scan_cube", "complete": True}).complete
    True
    >>> validate_store_marker({"kind": "banana"}, where="s.zarr")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.SchemaError: s.zarr: diffraflow.kind: Input should be 'scan_cube' or 'result', got 'banana' (fix: this is not a store diffraflow can read: re-create it with 'diffraflow convert' or 'diffraflow run')
    """
    if not isinstance(record, Mapping):
        raise SchemaError(f"{where}: diffraflow", f"the store marker must be a mapping, got {record!r}",
                          "pass a store written by diffraflow")
    try:
        marker = StoreMarker.model_validate(dict(record))
    except ValidationError as exc:
        raise pydantic_error_to_schema_error(exc, where, "diffraflow") from None
    if marker.format_version > FORMAT_VERSION:
        raise SchemaError(f"{where}: diffraflow.format_version", f"store format {marker.format_version} is newer "
                          f"than this diffraflow understands ({FORMAT_VERSION})", "upgrade diffraflow")
    return marker


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
