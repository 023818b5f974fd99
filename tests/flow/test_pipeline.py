"""Pipelines: composition, YAML files, schema errors, resolution and schedule; conformance of test operators."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest
from diffraflow.flow.pipeline import Pipeline, Step
from diffraflow.flow.schedule import Schedule
from diffraflow.flow.testing import (
    OperatorConformance,
    check_chunking,
    check_executors,
    synthetic_frames,
)
from diffraflow.operators.base import InputSpec
from diffraflow.schemas.errors import PipelineError
from diffraflow.schemas.pipeline import pipeline_json_schema, validate_pipeline_record

from tests.flow.engine_fixtures import Affine, Centered, FrameSum, SigSum, write_yaml

SPEC = InputSpec((5, 7), (8, 9), np.dtype("uint16"))


# -- conformance of the test operators (also exercises the suite itself) ----------
class TestFrameSumConformance(OperatorConformance):
    operator = FrameSum()

    def reference(self, frames):
        return {"total": frames.sum(axis=(2, 3), dtype="float64")}


class TestSigSumConformance(OperatorConformance):
    operator = SigSum()

    def reference(self, frames):
        return {"sum": frames.sum(axis=(0, 1), dtype="float64"), "count": np.int64(frames.shape[0] * frames.shape[1])}


class TestCenteredConformance(OperatorConformance):
    operator = Centered()
    rtol = 1e-9

    def reference(self, frames):
        mean = frames.mean(axis=(0, 1))
        return {"mean": mean, "distance": ((frames - mean) ** 2).sum(axis=(2, 3))}


class TestAffineConformance(OperatorConformance):
    operator = Affine(scale=0.5, offset=3.0, crop=2)
    frames = synthetic_frames((4, 6), (7, 7), "uint8", seed=3)

    def reference(self, frames):
        out = frames[:, :, :5, :5].astype(np.float32) * 0.5 + 3.0
        return {"frames": out, "peak": out.max(axis=(2, 3))}


def test_chained_pipeline_is_chunking_and_executor_independent():
    pipe = Pipeline([Affine(crop=1), Centered(), ("s", SigSum())])
    frames = synthetic_frames((5, 7), (8, 9), seed=1)
    result = check_chunking(pipe, frames, rtol=1e-9)
    assert result["s/sum"].shape == (7, 8)  # later steps see the cropped frames
    expected = (frames[:, :, :7, :8].astype(np.float32) * 2 + 1).astype(np.float64).sum(axis=(0, 1))
    np.testing.assert_allclose(result["s/sum"], expected, rtol=1e-12)
    check_executors(pipe, frames, ("inline", "threads"))


# -- composition ----------------------------------------------------------------------
def test_step_names_default_to_operator_names_and_must_be_unique():
    pipe = Pipeline([FrameSum(), ("second", FrameSum())])
    assert pipe.names == ["test_frame_sum", "second"]
    with pytest.raises(PipelineError, match="used twice"):
        Pipeline([FrameSum(), FrameSum()])
    with pytest.raises(PipelineError, match="not an Operator"):
        Pipeline([lambda f: f])  # type: ignore[list-item]


def test_resolve_chains_frames_outputs_and_schedules_rounds():
    pipe = Pipeline([Centered(), Affine(crop=3), FrameSum(), ("c2", Centered())])
    plan = pipe.resolve(SPEC)
    by_name = {s.name: s for s in plan.steps}
    assert by_name["test_affine"].spec.det_shape == (8, 9)
    assert by_name["test_frame_sum"].spec.det_shape == (5, 6)
    assert by_name["test_frame_sum"].spec.dtype == np.float32
    # Centered has no frames output: nothing waits for it; c2 runs rounds 0-1 on Affine's frames
    assert [s.provider for s in plan.steps] == [None, None, "test_affine", "test_affine"]
    assert plan.n_rounds == 2
    schedule = Schedule(plan)
    first = schedule.next_round()
    assert first.active == ("test_centered", "test_affine", "test_frame_sum", "c2")
    for link in first.chain:
        schedule.interpret(plan.step(link.step), {}, "test")
    schedule.end_round()
    second = schedule.next_round()
    assert [(link.step, link.action) for link in second.chain] == [
        ("test_centered", "compute"), ("test_affine", "provide"), ("c2", "compute")]
    for link in second.chain:
        if link.action == "compute":
            schedule.interpret(plan.step(link.step), {}, "test")
    schedule.end_round()
    assert schedule.next_round() is None


def test_steps_after_a_two_pass_frames_step_wait_for_its_last_pass():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class TwoPassFrames(Affine):
        passes = 2

    plan = Pipeline([TwoPassFrames(), FrameSum()]).resolve(SPEC)
    schedule = Schedule(plan)
    assert schedule.next_round().active == ("TwoPassFrames",) or schedule.status["test_frame_sum"].started is None
    assert plan.n_rounds == 2


def test_save_selects_outputs_and_unknown_save_names_the_closest():
    pipe = Pipeline([Step(Affine(), save=("peak",))])
    assert list(pipe.resolve(SPEC).result_outputs()) == ["test_affine/peak"]
    with pytest.raises(PipelineError, match="did you mean 'peak'"):
        Pipeline([Step(Affine(), save=("peek",))]).resolve(SPEC)


def test_unsupported_backend_is_refused_before_data():
    with pytest.raises(PipelineError, match="backend 'cupy' is not supported"):
        Pipeline([Step(FrameSum(), backend="cupy")]).resolve(SPEC)


# -- files ------------------------------------------------------------------------------
def test_yaml_file_round_trip(tmp_path):
    path = write_yaml(tmp_path / "p.yaml", """
        pipeline: 1
        steps:
          - op: test_affine
            params: {scale: 3.0, crop: 1}
          - op: test_frame_sum
            name: total
            save: [total]
        output: {chunk_frames: 4}
        """)
    pipe = Pipeline.from_file(path)
    assert pipe.names == ["test_affine", "total"]
    assert pipe.steps[0].op == Affine(scale=3.0, crop=1)
    assert pipe.chunk_frames == 4
    again = Pipeline.from_dict(pipe.to_dict())
    assert again.fingerprint() == pipe.fingerprint()


def test_json_schema_is_valid_and_matches_the_loader():
    schema = pipeline_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"pipeline": 1, "steps": [{"op": "x", "params": {"a": 1}, "save": False}]}, schema)


@pytest.mark.parametrize("record, message", [
    ({"pipeline": 1, "steps": [{"op": "test_frame_summ"}]},
     "steps[0]: unknown operator 'test_frame_summ' (fix: did you mean 'test_frame_sum'?)"),
    ({"pipeline": 1, "steps": [{"op": "test_affine", "params": {"scael": 2}}]},
     "unknown parameter 'scael' (fix: did you mean 'scale'?)"),
    ({"pipeline": 1, "steps": [{"op": "test_affine", "parms": {}}]},
     "steps[0]: unknown key 'parms' (fix: did you mean 'params'?)"),
    ({"pipeline": 1, "stpes": []}, "unknown key 'stpes' (fix: did you mean 'steps'?)"),
    ({"pipeline": 1, "steps": [{"name": "a"}]}, "missing required key 'op'"),
    ({"pipeline": 1, "steps": [{"op": "test_affine"}], "output": {"chunk_frames": 0}}, "output.chunk_frames"),
    ({"pipeline": 1, "steps": [{"op": "test_affine", "backend": "gpu"}]}, "'gpu' is not one of"),
])
def test_pipeline_file_errors_are_one_line_and_name_the_fix(record, message):
    with pytest.raises(PipelineError) as info:
        Pipeline.from_dict(record)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", "pipeline: 1\nsteps:\n  - op: [unclosed\n")
    with pytest.raises(PipelineError, match=r"bad.yaml:\d+: not valid YAML"):
        Pipeline.from_file(path)


def test_validate_record_accepts_a_good_record():
    record = {"pipeline": 1, "steps": [{"op": "a"}]}
    assert validate_pipeline_record(record) is record
