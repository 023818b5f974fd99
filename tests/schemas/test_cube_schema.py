"""Scan-cube attribute schema: validation, error messages, JSON Schema export."""

from __future__ import annotations

import json

import jsonschema
import pytest

from schemas.cube import ScanAttrs, scan_attrs_json_schema, validate_scan_attrs
from schemas.errors import DiffraflowError, SchemaError

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
