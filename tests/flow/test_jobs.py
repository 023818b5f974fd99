"""The job contract, job files, labelled data and checkpoints (issue 8, item 6)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffraflow.flow.jobs import (
    Job,
    JobContext,
    build_job,
    get_job_class,
    list_jobs,
    param,
    register_job,
)
from diffraflow.flow.sources import ArraySource, ZarrCubeSource
from diffraflow.flow.store import create_cube
from diffraflow.flow.training.checkpoint import load_checkpoint, save_checkpoint
from diffraflow.flow.training.config import load_config, parse_config
from diffraflow.flow.training.data import LabelledFrames, holdout_mask
from diffraflow.schemas.errors import (
    DataCorruptionError,
    PipelineError,
    SchemaError,
    UnsafeRecordError,
)

from tests.flow.training_fixtures import toy_arrays, write_job, write_toy_cube

BASE = {"training": 1, "job": "train_pattern_classifier", "data": {"source": "/no/such/cube.zarr"}}


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "(fix: " in text, text
    return text


# -- the contract and the registry -----------------------------------------------------------------

def test_registry_names_the_closest_job():
    assert "train_pattern_classifier" in list_jobs()
    with pytest.raises(PipelineError) as exc:
        get_job_class("train_patern_classifier")
    assert "did you mean 'train_pattern_classifier'?" in one_line(exc)


def test_a_second_job_with_a_taken_name_is_refused():
    with pytest.raises(TypeError, match="already used"):
        @register_job
        @dataclass(eq=False)
        class Other(Job):
            name = "train_pattern_classifier"


@pytest.mark.parametrize(("params", "expected"), [
    ({"lable": "x"}, "unknown parameter 'lable' (fix: did you mean 'label'?)"),
    ({"learning_rate": "fast"}, "learning_rate: expected a finite number, got 'fast'"),
    ({"learning_rate": -1.0}, "learning_rate: must be positive, got -1.0"),
    ({"channels": [8, 0]}, "channels: must be a non-empty list of positive whole numbers"),
    ({"channels": 8}, "channels: expected a list, got 8"),
])
def test_job_parameters_are_checked_in_one_line(params, expected):
    with pytest.raises(PipelineError) as exc:
        build_job("train_pattern_classifier", params)
    assert expected in one_line(exc)


def test_context_checkpoints_each_finished_epoch_and_reseeds_it():
    seen = []
    ctx = JobContext(data=None, seed=5, epochs_total=3, on_epoch_end=lambda e, r: seen.append((e, dict(r))))
    draws = []
    for _ in ctx.epochs():
        draws.append(torch.rand(1).item())
        ctx.log(loss=np.float32(0.5))
    assert [e for e, _ in seen] == [0, 1, 2] and seen[0][1] == {"epoch": 1, "loss": 0.5}
    again = JobContext(data=None, seed=5, epochs_total=3, start_epoch=2)
    for _ in again.epochs():
        assert torch.rand(1).item() == draws[2]  # epoch 2's RNG depends on (seed, 2) only


def test_an_epoch_that_fails_is_not_recorded():
    ctx = JobContext(data=None, seed=0, epochs_total=2, on_epoch_end=lambda e, r: None)
    with pytest.raises(RuntimeError):
        for epoch in ctx.epochs():
            if epoch == 1:
                raise RuntimeError("boom")
    assert ctx.start_epoch == 1 and len(ctx.history) == 1


# -- job files: everything checked before any data is read -----------------------------------------

@pytest.mark.parametrize(("change", "expected"), [
    ({"training": 2}, "job file: training: format version must be 1, got 2 (fix: start the file with 'training: 1')"),
    ({"jobb": "x"}, "unknown key 'jobb' (fix: did you mean 'job'?)"),
    ({"job": "train_pattern_clasifier"}, "unknown job 'train_pattern_clasifier'"),
    ({"epochs": 0}, "job file: epochs: must be a whole number of 1 or more, got 0"),
    ({"epochs": True}, "job file: epochs: must be a whole number of 1 or more, got True"),
    ({"seed": -1}, "job file: seed: must be a whole number of 0 or more"),
    ({"device": "gpu"}, "job file: device: 'gpu' is not one of cpu, cuda"),
    ({"data": {"source": "c.zarr", "holdout": 1.0}}, "job file: data.holdout: must be a number in [0, 1), got 1.0"),
    ({"data": {"source": "c.zarr", "batch_size": 0}}, "job file: data.batch_size: must be a whole number of 1"),
    ({"data": {"holdout": 0.2}}, "job file: data.source: is missing"),
    ({"data": {"source": "c.zarr", "shufle_buffer_mib": 1}}, "did you mean 'shuffle_buffer_mib'?"),
    ({"params": {"label": 3}}, "label: expected a string, got 3"),
    ({"params": []}, "job file: params: must be a mapping"),
])
def test_config_errors_are_one_line_and_come_before_any_data(change, expected):
    # The source does not exist: every error below must be about the file, raised before the data is opened.
    with pytest.raises((SchemaError, PipelineError)) as exc:
        parse_config({**BASE, **change})
    assert expected in one_line(exc)


def test_a_job_file_resolves_its_source_beside_itself(tmp_path):
    folder = tmp_path / "jobs"
    folder.mkdir()
    cfg = load_config(write_job(folder / "job.yaml", "cube.zarr"))
    assert cfg.data.source == str(folder / "cube.zarr") and cfg.path == str(folder / "job.yaml")
    assert cfg.to_record()["params"]["channels"] == [4, 8]


def test_yaml_syntax_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training: 1\njob: [unclosed\n")
    with pytest.raises(SchemaError) as exc:
        load_config(path)
    assert f"{path}:3: not valid YAML" in one_line(exc)


# -- labelled frames ------------------------------------------------------------------------------------

def test_each_training_frame_comes_once_per_epoch_with_its_labels():
    frames, truth = toy_arrays()
    data = LabelledFrames(ArraySource(frames, chunk_frames=7), truth, batch_size=6, holdout=0.3, seed=1)
    flat = frames.reshape(-1, *frames.shape[2:])
    seen = []
    for batch in data.batches("train", epoch=0):
        np.testing.assert_array_equal(batch.frames, flat[batch.index])
        np.testing.assert_array_equal(batch.labels["grain_id"], truth["grain_id"].reshape(-1)[batch.index])
        seen += batch.index.tolist()
    held = [int(i) for b in data.batches("holdout") for i in b.index]
    assert sorted(seen + held) == list(range(frames.shape[0] * frames.shape[1]))
    assert len(seen) == len(set(seen)) == data.counts()["train"]
    assert held == sorted(held)  # the hold-out pass is in scan order
    order = lambda epoch: [int(i) for b in data.batches("train", epoch) for i in b.index]  # noqa: E731
    assert order(0) == seen and order(1) != seen and sorted(order(1)) == sorted(seen)


def test_the_holdout_split_depends_on_the_split_seed_only():
    frames, truth = toy_arrays()

    def held(chunk_frames, batch_size, seed, split_seed=0):
        data = LabelledFrames(ArraySource(frames, chunk_frames=chunk_frames), truth, batch_size=batch_size,
                              holdout=0.3, seed=seed, split_seed=split_seed)
        return sorted(int(i) for b in data.batches("holdout") for i in b.index)

    reference = held(10, 4, 0)
    assert reference == held(3, 11, 7) and reference != held(10, 4, 0, split_seed=1)
    assert abs(np.mean(holdout_mask(np.arange(20_000), 0.3)) - 0.3) < 0.02


def test_a_group_split_holds_out_whole_grains():
    frames, truth = toy_arrays()
    data = LabelledFrames(ArraySource(frames, chunk_frames=5), {"true_phase_id": truth["true_phase_id"]},
                          arrays={"grain_id": truth["grain_id"]}, holdout=0.4, holdout_group="grain_id")
    grains = truth["grain_id"].reshape(-1)
    held = {int(grains[i]) for b in data.batches("holdout") for i in b.index}
    trained = {int(grains[i]) for b in data.batches("train") for i in b.index}
    assert held and trained and not held & trained
    assert data.labels == ("true_phase_id",)  # the group decides the split; it is not handed to the job


class CountingSource(ArraySource):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = 0

    def read(self, region):
        self.reads += 1
        return super().read(region)


def test_batches_stream_region_by_region_within_the_shuffle_buffer():
    frames, truth = toy_arrays((20, 10), det=16)
    source = CountingSource(frames, chunk_frames=10)  # 20 regions of 10 frames (256 B each)
    data = LabelledFrames(source, truth, batch_size=8, shuffle_buffer_mib=30 * 256 / 2**20)
    assert data.buffer_frames == 30
    batches = data.batches("train", epoch=0)
    next(batches)
    assert source.reads == 3  # a 30-frame buffer was filled, not the whole cube
    assert sum(len(b) for b in batches) + 8 == 200 and source.reads == 20


def test_labels_come_from_the_cube_and_frame_sized_ones_stream(tmp_path):
    frames, truth = toy_arrays((4, 6), det=8)
    path = tmp_path / "c.zarr"
    with create_cube(path, scan_shape=(4, 6), det_shape=(8, 8), dtype="uint8", chunk_frames=6,
                     attrs={"modality": "ebsd", "detector": {"shape": [8, 8]}}) as writer:
        writer.patterns.append(frames.reshape(-1, 8, 8))
        clean = writer.add_frame_variable("clean_patterns", "float32")
        clean.append(frames.reshape(-1, 8, 8).astype("float32") / 2)
        writer.write_variable("true_phase_id", truth["true_phase_id"], ("scan_y", "scan_x"), ground_truth=True)
        writer.write_variable("background_shape", np.ones((8, 8), "float32"), ("det_y", "det_x"))
        writer.finalize()
    source = ZarrCubeSource(path)
    data = LabelledFrames(source, ["true_phase_id", "clean_patterns"], batch_size=5)
    assert data.variables["clean_patterns"].frame_sized and not data.variables["true_phase_id"].frame_sized
    for batch in data.batches("all"):
        np.testing.assert_array_equal(batch.labels["clean_patterns"], batch.frames / np.float32(2))
        np.testing.assert_array_equal(batch.labels["true_phase_id"], truth["true_phase_id"].reshape(-1)[batch.index])
    with pytest.raises(SchemaError) as exc:
        LabelledFrames(source, ["true_phase"])
    assert "no such variable in the source (fix: did you mean 'true_phase_id'?)" in one_line(exc)
    with pytest.raises(SchemaError) as exc:
        LabelledFrames(source, ["background_shape"])
    assert "not a per-point variable" in one_line(exc)
    with pytest.raises(SchemaError) as exc:
        data.label_values("clean_patterns")
    assert "is frame-sized" in one_line(exc)


def test_a_toy_cube_trains_from_its_ground_truth_names(tmp_path):
    cube = write_toy_cube(tmp_path / "toy.zarr")
    data = LabelledFrames(ZarrCubeSource(cube), ["true_phase_id"], holdout=0.25, holdout_group="grain_id")
    assert sum(data.counts().values()) == 80 and data.identity()["source"]["path"] == str(cube)


# -- checkpoints ---------------------------------------------------------------------------------------

def test_checkpoints_round_trip_optimiser_state_exactly(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"model": net.state_dict(), "optimizer": opt.state_dict(), "history": [{"epoch": 1}],
                           "array": np.arange(3, dtype="int16"), "scalar": np.float64(2.5)})
    back = load_checkpoint(path)
    twin = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    twin.load_state_dict(back["optimizer"])
    assert twin.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(back["optimizer"]["state"][0][key], value)
    assert back["array"].dtype == np.int16 and back["scalar"] == 2.5 and back["history"] == [{"epoch": 1}]
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed into place


def test_checkpoints_refuse_objects_and_never_unpickle(tmp_path):
    with pytest.raises(PipelineError) as exc:
        save_checkpoint(tmp_path / "c.safetensors", {"net": torch.nn.Linear(1, 1)})
    assert "state.net: holds a Linear" in one_line(exc)
    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(UnsafeRecordError):
        load_checkpoint(path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage-garbage-")
    with pytest.raises(DataCorruptionError):
        load_checkpoint(path)
    assert not marker.exists()


class Evil:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_jobs_of_a_plugin_take_parameters_like_operators():
    @register_job
    @dataclass(eq=False)
    class Needs(Job):
        name = "test_needs_a_value"
        value: int = param(doc="a required number")

    with pytest.raises(PipelineError) as exc:
        build_job("test_needs_a_value", {})
    assert "missing required parameter 'value' (fix: add 'value: ...' (a required number))" in one_line(exc)
    assert build_job("test_needs_a_value", {"value": 3}).params() == {"value": 3}
