"""classify_space_group and predict_orientation as pipeline operators (issue 11, item 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.pipeline import Pipeline, Step
from diffraflow.flow.store import open_group_checked
from diffraflow.flow.testing import OperatorConformance, check_pickle, run_operator
from diffraflow.flow.training.datasets import write_pattern_set
from diffraflow.flow.training.runner import run_job
from diffraflow.operators.base import ChunkContext, InputSpec, build_operator
from diffraflow.operators.learning.classify_space_group import DEFAULT_MODEL, ClassifySpaceGroup
from diffraflow.operators.learning.evaluation import orientation_errors
from diffraflow.operators.learning.predict_orientation import DEFAULT_MODEL as DEFAULT_ORIENTATION
from diffraflow.operators.learning.predict_orientation import PredictOrientation
from diffraflow.operators.learning.training_data import (
    NI_ORIENTATION_VARIETY,
    Variety,
    plan_patterns,
)
from diffraflow.schemas.errors import DataCorruptionError, InputFileError, PipelineError
from diffraflow.schemas.results import validate_result_group

SHAPE = (24, 24)
SMALL = Variety(detector_shapes=((28, 28),))
NI_SMALL = Variety(**{**NI_ORIENTATION_VARIETY.__dict__, "detector_shapes": (SHAPE,)})


def _train(folder: Path, cube: Path, job: str, **params) -> Path:
    config = {"training": 1, "job": job, "epochs": 1, "data": {"batch_size": 16},
              "params": {"architecture": "small_cnn", "width": 4, **params}}
    config["data"]["source"] = str(cube)
    return run_job(config, folder / f"{job}.dfmodel", progress=False, threads=1).artefact


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sg")
    plan = plan_patterns(["ni", "fe", "si"], 48, out_shape=SHAPE, variety=SMALL, seed=0, block_size=16)
    return _train(folder, write_pattern_set(plan, folder / "sg.zarr", progress=False), "train_space_group")


@pytest.fixture(scope="module")
def ni_cube(tmp_path_factory) -> Path:
    plan = plan_patterns(["ni"], 35, out_shape=SHAPE, variety=NI_SMALL, seed=0, master_pattern="auto",
                         block_size=35)
    return write_pattern_set(plan, tmp_path_factory.mktemp("ni") / "ni.zarr", progress=False)


@pytest.fixture(scope="module")
def regressor(tmp_path_factory, ni_cube) -> Path:
    return _train(tmp_path_factory.mktemp("ori"), ni_cube, "train_orientation", pc_variable="pc", n_hypotheses=2)


def frames(scan=(5, 7), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(30, (*scan, *SHAPE)).astype("uint8")


# -- the operator contract, through the engine -------------------------------------------------------

class TestClassifySpaceGroupConformance(OperatorConformance):
    rtol = 1e-4  # a convolution's sums may be ordered differently for another number of frames
    atol = 1e-5

    @pytest.fixture(autouse=True)
    def _model(self, classifier):
        self.model = classifier

    def make_operator(self):
        # Collection asks for the operator (its backends) before the model fixture has run.
        return ClassifySpaceGroup(model=str(getattr(self, "model", "")), batch_frames=4)

    def make_frames(self):
        return frames()


class TestPredictOrientationConformance(OperatorConformance):
    rtol = 1e-4
    atol = 1e-4

    @pytest.fixture(autouse=True)
    def _model(self, regressor):
        self.model = regressor

    def make_operator(self):
        # Refinement's own chunk independence is a function-level test; here the network and the score.
        return PredictOrientation(model=str(getattr(self, "model", "")), refine=0, batch_frames=4)

    def make_frames(self):
        return frames((3, 5))


def test_class_probabilities_and_a_phase_map_reach_a_valid_result_store(tmp_path, classifier):
    data = frames((3, 4))
    op = ClassifySpaceGroup(model=str(classifier), min_probability=0.5)
    store = tmp_path / "r.zarr"
    results = run_pipeline(Pipeline([op]), data, store).results
    validate_result_group(open_group_checked(store, kind="result"), str(store))
    probabilities = np.asarray(results["classify_space_group/probabilities"])
    assert probabilities.shape == (3, 4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    phase = np.asarray(results["classify_space_group/phase_id"])
    best = probabilities.argmax(axis=-1)
    np.testing.assert_array_equal(phase, np.where(probabilities.max(axis=-1) >= 0.5, best, -1))
    groups = np.asarray(results["classify_space_group/space_group"])
    np.testing.assert_array_equal(groups, np.array([225, 227, 229])[best])


def test_the_classifier_runs_after_background_correction_on_any_detector(classifier):
    pipeline = Pipeline([build_operator("remove_dynamic_background", {"scale_to_dtype": "uint8"}),
                         Step(ClassifySpaceGroup(model=str(classifier)), backend="torch-cpu")])
    big = np.random.default_rng(1).poisson(30, (2, 3, 40, 52)).astype("uint16")
    out = run_operator(pipeline, big)
    assert out["classify_space_group/probabilities"].shape == (2, 3, 3)


def test_the_model_is_loaded_once_per_worker_and_its_hash_is_in_the_token(tmp_path, classifier, monkeypatch):
    import shutil

    calls = []
    original = ClassifySpaceGroup.setup

    def counting(self, spec, backend="torch-cpu"):
        calls.append(backend)
        return original(self, spec, backend)

    monkeypatch.setattr(ClassifySpaceGroup, "setup", counting)
    run_operator(ClassifySpaceGroup(model=str(classifier)), frames((4, 6)), chunk_frames=5)
    assert calls == ["torch-cpu"]  # five chunks, one load

    op = ClassifySpaceGroup(model=str(classifier))
    copy = tmp_path / "copy.dfmodel"
    shutil.copytree(classifier, copy)
    before = ClassifySpaceGroup(model=str(copy)).token()
    assert ClassifySpaceGroup(model=str(copy)).file_hashes() == op.file_hashes()  # same content, same identity
    record = (copy / "artefact.json").read_text().replace('"dropout": 0.1', '"dropout": 0.2')
    (copy / "artefact.json").write_text(record)
    with pytest.raises(DataCorruptionError):  # a changed file fails its manifest check...
        ClassifySpaceGroup(model=str(copy)).setup(InputSpec((1, 1), SHAPE, np.dtype("uint8")))
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")
    assert ClassifySpaceGroup(model=str(copy)).token() != before  # ...and is never taken for the old one
    check_pickle(op)


def test_wrong_models_and_parameters_are_refused_before_any_data(classifier, regressor):
    spec = InputSpec((1, 2), SHAPE, np.dtype("uint8"))
    with pytest.raises(InputFileError, match="orientation_regressor"):
        ClassifySpaceGroup(model=str(regressor)).resolve(spec)
    with pytest.raises(PipelineError, match="min_probability"):
        ClassifySpaceGroup(model=str(classifier), min_probability=2.0).resolve(spec)
    with pytest.raises(PipelineError, match="refine"):
        PredictOrientation(model=str(regressor), refine=-1).resolve(spec)
    with pytest.raises(PipelineError, match="sped"):
        PredictOrientation(model=str(regressor)).resolve(InputSpec((1, 1), SHAPE, np.dtype("uint8"),
                                                                   {"modality": "sped", "detector": {"shape": [24, 24]}}))


# -- orientations ---------------------------------------------------------------------------------------

def test_a_crystal_map_like_hough_with_a_confidence_per_pattern(tmp_path, regressor, ni_cube):
    store = tmp_path / "o.zarr"
    results = run_pipeline(Pipeline([PredictOrientation(model=str(regressor), refine=2)]), str(ni_cube), store).results
    validate_result_group(open_group_checked(store, kind="result"), str(store))
    q = np.asarray(results["predict_orientation/rotation"])
    assert q.shape == (1, 35, 4) and np.allclose(np.linalg.norm(q, axis=-1), 1)
    confidence = np.asarray(results["predict_orientation/confidence"])
    assert ((0 <= confidence) & (confidence <= 1)).all()
    assert np.asarray(results["predict_orientation/fit"]).min() >= 0
    from diffraflow.flow.crystal_map import read_crystal_map

    xmap = read_crystal_map(store)
    assert xmap.phases[0].name == "ni" and xmap.size == 35


class _RoughNetwork(torch.nn.Module):
    """Stands in for a network that answers a few degrees off: hypothesis 0 is 40 deg off, 1 is 3 deg off."""

    def __init__(self, truth: np.ndarray) -> None:
        super().__init__()
        from diffraflow.operators.learning.rotations import (
            axis_angle_to_matrix,
            quaternion_to_matrix,
        )

        R = quaternion_to_matrix(torch.as_tensor(truth, dtype=torch.float32))
        self.near = axis_angle_to_matrix(torch.full((len(R), 3), np.radians(3.0) / np.sqrt(3))) @ R
        self.far = axis_angle_to_matrix(torch.full((len(R), 3), np.radians(40.0) / np.sqrt(3))) @ R
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = 0

    def forward(self, frames, pc=None):
        from diffraflow.operators.learning.rotations import matrix_to_rotation_6d

        part = slice(self.seen, self.seen + len(frames))
        self.seen += len(frames)
        rot6d = torch.stack([matrix_to_rotation_6d(self.far[part]), matrix_to_rotation_6d(self.near[part])], dim=1)
        return rot6d, torch.tensor([[1.0, 0.0]]).expand(len(frames), 2)  # the score prefers the wrong one


def test_the_pattern_match_picks_the_right_hypothesis_and_refinement_polishes_it(tmp_path, regressor):
    from diffraflow.flow.store import open_cube

    plan = plan_patterns(["ni"], 12, variety=NI_ORIENTATION_VARIETY, seed=3, master_pattern="auto", block_size=12)
    ds = open_cube(write_pattern_set(plan, tmp_path / "ni60.zarr", progress=False))
    truth = ds["true_rotation"].values.reshape(-1, 4)
    op = PredictOrientation(model=str(regressor), refine=6).bind({"pc": ds["pc"]})
    spec = InputSpec((1, 12), (60, 60), np.dtype("uint8"), ds.attrs["scan"])
    constants = op.setup(spec, "torch-cpu")
    constants["net"] = _RoughNetwork(truth)
    constants["record"] = {**constants["record"], "use_pc": False}
    out = op.process(ds["patterns"].values.reshape(12, 60, 60), ChunkContext(spec, constants=constants))
    errors = orientation_errors(out["rotation"].numpy(), truth)
    assert np.median(errors) < 0.5 and errors.max() < 2.0
    fit = out["fit"].numpy()
    assert np.median(fit) > 1.5  # the refinement moved the 3-degree answer by about that much
    assert (out["confidence"].numpy() > 0.2).all()
    unrefined = PredictOrientation(model=str(regressor), refine=0).bind({"pc": ds["pc"]})
    constants["net"] = _RoughNetwork(truth)
    rough = unrefined.process(ds["patterns"].values.reshape(12, 60, 60), ChunkContext(spec, constants=constants))
    assert np.median(orientation_errors(rough["rotation"].numpy(), truth)) == pytest.approx(3.0, abs=0.05)
    assert (rough["fit"].numpy() == 0).all()


def test_projection_centres_come_from_the_parameter_the_cube_or_the_model(regressor, ni_cube):
    from diffraflow.flow.store import open_cube

    ds = open_cube(ni_cube)
    scan = ds.attrs["scan"]
    spec = InputSpec((1, 35), SHAPE, np.dtype("uint8"), scan)
    bound = PredictOrientation(model=str(regressor)).bind({"pc": ds["pc"]})
    assert bound.result_attrs(spec)["projection_centre"]["per_point"] is True
    given = PredictOrientation(model=str(regressor), pc=(0.5, 0.3, 0.6)).bind({"pc": ds["pc"]})
    attrs = given.result_attrs(spec)
    assert attrs["projection_centre"]["value"] == [0.5, 0.3, 0.6] and attrs["pc_within_training_range"] is False
    bare = PredictOrientation(model=str(regressor)).result_attrs(InputSpec((1, 1), SHAPE, np.dtype("uint8")))
    assert bare["projection_centre"]["source"].startswith("the model's training centre")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_and_cpu_agree(classifier, regressor, ni_cube):
    data = frames((2, 8))
    for op, tolerance in ((ClassifySpaceGroup(model=str(classifier)), 1e-4),
                          (PredictOrientation(model=str(regressor), refine=2), 1e-3)):
        cpu = run_operator(op, data, backend="torch-cpu")
        gpu = run_operator(op, data, backend="torch-cuda")
        for name, value in cpu.items():
            if name == "rotation":
                assert orientation_errors(gpu[name], value).max() < 0.05
            else:
                np.testing.assert_allclose(gpu[name], value, atol=tolerance, rtol=tolerance)


# -- the shipped models ---------------------------------------------------------------------------------

def test_the_shipped_classifier_classifies_a_simulated_scan(tmp_path):
    if not Path(DEFAULT_MODEL).exists():
        pytest.fail(f"the shipped classifier is missing at {DEFAULT_MODEL}")
    from diffraflow.flow.cli import main

    cube = tmp_path / "ni_fe.zarr"
    assert main(["simulate", "ebsd", str(cube), "--scan-shape", "4", "5", "--phase", "ni", "fe", "si",
                 "--grains", "6", "--seed", "2"]) == 0
    out = run_operator(Pipeline([ClassifySpaceGroup()]), str(cube))
    groups = out["classify_space_group/space_group"]
    assert groups.shape == (4, 5) and set(np.unique(groups).tolist()) <= {221, 223, 225, 227, 229, 230}
    weights = Path(DEFAULT_MODEL) / "weights.safetensors"
    assert weights.stat().st_size < 5 * 2**20


def test_the_shipped_regressor_loads():
    spec = InputSpec((1, 1), (60, 60), np.dtype("uint8"), {"modality": "ebsd", "detector": {
        "shape": [60, 60], "pc": [0.421, 0.221, 0.505], "pc_convention": "bruker"}})
    op = PredictOrientation()
    out = op.process(np.random.default_rng(0).poisson(20, (2, 60, 60)).astype("uint8"),
                     ChunkContext(spec, constants=op.setup(spec, "torch-cpu")))
    assert tuple(out["rotation"].shape) == (2, 4)
    assert (Path(DEFAULT_ORIENTATION) / "weights.safetensors").stat().st_size < 5 * 2**20


@pytest.mark.slow  # simulates a scan and runs the shipped classifier through diffraflow run
def test_the_readme_examples_of_learned_operators_run(tmp_path):
    import re

    import yaml
    from diffraflow.flow.cli import main
    from diffraflow.flow.training.config import parse_config

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b for b in re.findall(r"^```yaml\n(.*?)^```", readme, flags=re.S | re.M)
              if "classify_space_group" in b or "train_space_group" in b]
    pipeline, job = blocks
    (tmp_path / "p.yaml").write_text(pipeline)
    cube = tmp_path / "scan.zarr"
    assert main(["simulate", "ebsd", str(cube), "--scan-shape", "3", "4", "--seed", "1"]) == 0
    assert main(["run", str(tmp_path / "p.yaml"), "--input", str(cube), "--output", str(tmp_path / "r.zarr"),
                 "--quiet"]) == 0
    config = parse_config(yaml.safe_load(job), need_source=False)
    assert config.job.name == "train_space_group" and config.job.schedule == "cosine"
