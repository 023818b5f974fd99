"""Scan-cube attribute schema: validation, error messages, JSON Schema export, unknown values, PC bounds."""

from __future__ import annotations

import json
import warnings

import jsonschema
import pytest
from diffraflow.schemas.cube import (
    AssumedValueWarning,
    DetectorGeometry,
    ScanAttrs,
    StoreMarker,
    check_projection_centre,
    ebsd_geometry,
    normalise_length_unit,
    scan_attrs_json_schema,
    validate_scan_attrs,
    validate_store_marker,
)
from diffraflow.schemas.errors import DiffraflowError, SchemaError

GOOD = {
    "modality": "ebsd",
    "detector": {"shape": [60, 60], "pc": [0.42, 0.22, 0.5], "pc_convention": "bruker", "sample_tilt": 70},
    "beam_energy_kv": 20,
    "step_size": {"y": 1.5, "x": 1.5},
    "phases": [{"id": 0, "name": "ni", "space_group": 225, "lattice": [0.352, 0.352, 0.352, 90, 90, 90]}],
}


def test_good_attrs_round_trip_through_json():
    attrs = validate_scan_attrs(GOOD)
    again = validate_scan_attrs(json.loads(json.dumps(attrs.model_dump(mode="json"))))
    assert again == attrs
    assert attrs.detector.pc == (0.42, 0.22, 0.5)


@pytest.mark.parametrize(
    ("change", "field", "fix_words"),
    [
        ({"modality": "xrd"}, "modality", "ebsd, tkd, 4dstem, sped"),
        ({"detector": {"shape": [0, 60]}}, "detector.shape", "two positive integers"),
        ({"detector": {"shape": [60, 60], "pc_convention": "nonsense"}}, "detector.pc_convention", "bruker"),
        ({"detector": {"shape": [60, 60], "pc": [0.4, float("nan"), 0.5]}}, "detector.pc", "projection centre"),
        ({"beam_energy_kv": -3}, "beam_energy_kv", "kV"),
        ({"step_size": {"y": 0, "x": 1}}, "step_size.y", "positive"),
        ({"phases": [{"name": "x", "space_group": 999}]}, "phases.0.space_group", "1-230"),
        ({"colour": "red"}, "colour", "remove this field"),
    ],
)
def test_errors_name_field_and_fix(change, field, fix_words):
    bad = {**GOOD, **change}
    with pytest.raises(SchemaError) as info:
        validate_scan_attrs(bad, where="scan.zarr")
    message = str(info.value)
    assert message.startswith(f"scan.zarr: {field}:")
    assert fix_words in message
    assert "\n" not in message


def test_missing_required_field_says_add_it():
    with pytest.raises(SchemaError, match="add the required field 'detector'"):
        validate_scan_attrs({"modality": "ebsd"})


def test_duplicate_phase_ids_rejected():
    bad = {**GOOD, "phases": [{"id": 0, "name": "a"}, {"id": 0, "name": "b"}]}
    with pytest.raises(SchemaError, match="phase ids must be unique"):
        validate_scan_attrs(bad)


def test_errors_subclass_builtins_and_pickle():
    import pickle

    err = SchemaError("f", "bad", "fix it")
    assert isinstance(err, ValueError) and isinstance(err, DiffraflowError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == "f: bad (fix: fix it)"


def test_json_schema_validates_our_attrs_and_rejects_bad_ones():
    schema = scan_attrs_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(ScanAttrs.model_validate(GOOD).model_dump(mode="json"))
    assert not validator.is_valid({**GOOD, "modality": "xrd"})
    assert not validator.is_valid({"modality": "ebsd"})


# -- unknown is unknown (issue 7, item 16) -------------------------------------------------------------------

#: A ``scan`` record as older diffraflow wrote it: the defaults stored as numbers.
OLD_STYLE = {
    "modality": "4dstem",
    "detector": {"shape": [256, 256], "binning": 1, "pc": None, "pc_convention": "bruker", "sample_tilt": 70.0,
                 "camera_tilt": 0.0, "px_size_um": None, "azimuthal": 0.0, "calibration": {}},
    "beam_energy_kv": None,
    "step_size": {"y": 1.0, "x": 1.0, "unit": "um"},
    "exposure_s": 0.1,
    "phases": [],
    "provenance": {"source_file": "scan.mib", "source_format": "merlin", "reader": None,
                   "created": "2024-01-01T00:00:00+00:00", "software": "diffraflow 0.1.0", "command": None,
                   "history": []},
    "scan_shape": [2, 4],
    "ground_truth": [],
    "original_metadata": {},
}


def test_values_nobody_gave_are_none_not_defaults():
    attrs = validate_scan_attrs({"modality": "4dstem", "detector": {"shape": [256, 256]}})
    det = attrs.detector
    assert (det.sample_tilt, det.camera_tilt, det.azimuthal, det.binning, det.pc) == (None,) * 5
    assert attrs.step_size is None and attrs.beam_energy_kv is None and attrs.exposure_s is None
    dumped = attrs.model_dump(mode="json")
    assert dumped["detector"]["sample_tilt"] is None and dumped["step_size"] is None
    assert validate_scan_attrs(json.loads(json.dumps(dumped))) == attrs  # None survives the store's JSON


def test_old_records_with_stored_defaults_still_validate():
    attrs = validate_scan_attrs(OLD_STYLE)
    assert attrs.detector.sample_tilt == 70.0 and attrs.step_size.y == 1.0 and attrs.detector.binning == 1


def test_json_schema_accepts_unknown_values():
    validator = jsonschema.Draft202012Validator(scan_attrs_json_schema())
    validator.validate(validate_scan_attrs({"modality": "sped", "detector": {"shape": [8, 8]}}).model_dump(mode="json"))
    assert not validator.is_valid({**GOOD, "step_size": {"y": 1.0}})  # a known step has both components


def test_ebsd_geometry_takes_known_values_and_states_assumptions():
    known = {"shape": [60, 60], "sample_tilt": 0.0, "camera_tilt": -3.5, "azimuthal": 1.0, "binning": 4}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing assumed, nothing said
        assert ebsd_geometry(known) == {"sample_tilt": 0.0, "tilt": -3.5, "azimuthal": 1.0, "binning": 4}
    with pytest.warns(AssumedValueWarning, match="sample tilt not known: assuming 70 deg"):
        got = ebsd_geometry(DetectorGeometry(shape=(60, 60), camera_tilt=10.0))
    assert got == {"sample_tilt": 70.0, "tilt": 10.0, "azimuthal": 0.0, "binning": 1}
    said: list[str] = []
    assert ebsd_geometry(None, note=said.append)["tilt"] == 0.0
    assert said == ["sample tilt, camera tilt not known: assuming 70 deg, 0 deg"]
    said.clear()
    ebsd_geometry({"shape": [60, 60], "sample_tilt": 70, "camera_tilt": 0}, note=said.append)
    assert said == []  # azimuthal and binning fall back to kikuchipy's neutral values quietly


@pytest.mark.parametrize(
    ("change", "field", "fix_words"),
    [
        ({"exposure_s": float("inf")}, "exposure_s", "seconds"),
        ({"step_size": {"y": float("inf"), "x": 1}}, "step_size.y", "positive"),
        ({"detector": {"shape": [60, 60], "sample_tilt": float("nan")}}, "detector.sample_tilt", "-90 and 90"),
        ({"detector": {"shape": [60, 60], "azimuthal": 720}}, "detector.azimuthal", "-360 and 360"),
        ({"detector": {"shape": [60, 60], "binning": 0}}, "detector.binning", "positive integer"),
    ],
)
def test_non_finite_and_out_of_range_numbers_are_refused(change, field, fix_words):
    with pytest.raises(SchemaError) as info:
        validate_scan_attrs({**GOOD, **change}, where="scan.zarr")
    assert str(info.value).startswith(f"scan.zarr: {field}:") and fix_words in str(info.value)


# -- step units (item 11) --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("unit", "stored"), [("um", "um"), ("µm", "um"), ("μm", "um"), ("microns", "um"),
                                              ("NM", "nm"), (" nanometres ", "nm"), ("mm", "mm")])
def test_step_unit_spellings_are_stored_canonically(unit, stored):
    attrs = validate_scan_attrs({**GOOD, "step_size": {"y": 1.5, "x": 1.5, "unit": unit}})
    assert attrs.step_size.unit == stored


@pytest.mark.parametrize("unit", ["furlong", "px", "", "1/A", 3])
def test_step_unit_must_be_a_length(unit):
    with pytest.raises(SchemaError) as info:
        validate_scan_attrs({**GOOD, "step_size": {"y": 1.5, "x": 1.5, "unit": unit}}, where="scan.zarr")
    message = str(info.value)
    assert message.startswith("scan.zarr: step_size.unit: step unit must be a length unit")
    assert repr(unit) in message and "(fix: give the step unit as nm, um or mm)" in message
    assert "\n" not in message


def test_normalise_length_unit():
    assert normalise_length_unit("Micrometre") == "um" and normalise_length_unit("furlong") is None


# -- projection-centre bounds (item 11) ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("pc", "convention", "words"),
    [
        ((5.0, 0.22, 0.5), "bruker", "projection-centre x = 5.0 is outside [-1, 2] in the bruker convention"),
        ((0.42, -1.5, 0.5), "tsl", "projection-centre y = -1.5 is outside [-1, 2] in the tsl convention"),
        ((0.42, 0.22, 0.0), "oxford", "projection-centre z = 0.0 is outside (0, 3]"),
        ((0.42, 0.22, 4.0), "edax", "projection-centre z = 4.0 is outside (0, 3]"),
        ((42, 22, 50), "bruker", "x = 42.0"),  # percentages, or pixels, in a fractional convention
        ((0.42, 0.22, 0.5), "emsoft", "L = 0.5 um is outside [1, 1e+06]"),  # fractions given as EMsoft
        ((0.0, 0.0, -15000), "emsoft4", "L = -15000.0 um"),
    ],
)
def test_projection_centre_bounds_per_convention(pc, convention, words):
    record = {**GOOD, "detector": {"shape": [60, 60], "pc": list(pc), "pc_convention": convention}}
    with pytest.raises(SchemaError) as info:
        validate_scan_attrs(record, where="scan.zarr")
    message = str(info.value)
    assert message.startswith("scan.zarr: detector.pc: ") and words in message and "(fix: " in message
    assert "\n" not in message
    with pytest.raises(SchemaError, match=r"^--pc: "):
        check_projection_centre(pc, convention)


@pytest.mark.parametrize(
    ("pc", "convention"),
    [((0.42, 0.22, 0.5), "bruker"), ((0.5, -0.4, 1.2), "bruker"), ((0.5, 0.5, 0.6), "tsl"),
     ((0.5, 1.2, 0.7), "oxford"), ((12.5, -40.0, 15000.0), "emsoft"), ((-3.0, 2.0, 4000.0), "emsoft5")],
)
def test_sane_projection_centres_pass(pc, convention):
    assert check_projection_centre(pc, convention.upper()) == tuple(float(v) for v in pc)
    validate_scan_attrs({**GOOD, "detector": {"shape": [60, 60], "pc": list(pc), "pc_convention": convention}})


def test_emsoft_pixels_bounded_by_the_detector_when_binning_is_known():
    far = (500.0, 0.0, 15000.0)  # 500 unbinned px from the centre of a 60 px wide screen
    check_projection_centre(far, "emsoft")  # shape or binning not known: no pixel bound
    assert check_projection_centre(far, "emsoft", det_shape=(60, 60), binning=8) == far  # 480 px wide
    with pytest.raises(SchemaError, match="x = 500.0 px is more than 1.5 detector sizes"):
        check_projection_centre(far, "emsoft", det_shape=(60, 60), binning=1)
    with pytest.raises(SchemaError, match="detector.pc: projection-centre x = 500.0 px"):
        validate_scan_attrs({**GOOD, "detector": {"shape": [60, 60], "binning": 1, "pc": list(far),
                                                  "pc_convention": "emsoft"}})


@pytest.mark.parametrize(("pc", "convention", "words"),
                         [((0.4, 0.2), "bruker", "three finite numbers"), (("a", 0.2, 0.5), "bruker", "three numbers"),
                          ((0.4, float("inf"), 0.5), "bruker", "finite"), ((0.4, 0.2, 0.5), "martian", "unknown")])
def test_check_projection_centre_refuses_malformed_input(pc, convention, words):
    with pytest.raises(SchemaError) as info:
        check_projection_centre(pc, convention, where="--pc")
    assert str(info.value).startswith("--pc: ") and words in str(info.value) and "(fix: " in str(info.value)


# -- the store marker (item 11) --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({"format_version": 1, "kind": "banana", "complete": True},
         "s.zarr: diffraflow.kind: Input should be 'scan_cube' or 'result', got 'banana'"),
        ({"format_version": 1, "complete": True}, "s.zarr: diffraflow.kind: Field required"),
        ({"format_version": "one", "kind": "result"}, "s.zarr: diffraflow.format_version:"),
        ({"format_version": 0, "kind": "result"}, "s.zarr: diffraflow.format_version:"),
        ({"format_version": 2, "kind": "result"},
         "s.zarr: diffraflow.format_version: store format 2 is newer than this diffraflow understands"),
        ({"kind": "result", "colour": "red"}, "s.zarr: diffraflow.colour:"),
        ("scan_cube", "s.zarr: diffraflow: the store marker must be a mapping"),
        (None, "s.zarr: diffraflow: the store marker must be a mapping"),
    ],
)
def test_store_marker_errors_are_one_line(record, words):
    with pytest.raises(SchemaError) as info:
        validate_store_marker(record, where="s.zarr")
    message = str(info.value)
    assert message.startswith(words) and "(fix: " in message and "\n" not in message


def test_store_marker_accepts_what_diffraflow_writes():
    for kind in ("scan_cube", "result"):
        for complete in (False, True):
            written = StoreMarker(kind=kind, complete=complete).model_dump()
            assert validate_store_marker(written, where="s.zarr") == StoreMarker(kind=kind, complete=complete)
