"""Model artefacts and the classify_patterns operator (issue 8, item 6)."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.pipeline import Pipeline
from diffraflow.flow.sources import ArraySource
from diffraflow.flow.training.runner import run_job
from diffraflow.operators.base import InputSpec, build_operator
from diffraflow.operators.learning.artefact import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    artefact_hash,
    is_artefact,
    load_artefact,
    write_artefact,
)
from diffraflow.operators.learning.classify_patterns import ClassifyPatterns
from diffraflow.schemas.errors import (
    DataCorruptionError,
    InputFileError,
    PipelineError,
    StoreNotFoundError,
    UnsafeRecordError,
)

from tests.flow.training_fixtures import toy_arrays

CONFIG = {"training": 1, "job": "train_pattern_classifier", "epochs": 4, "data": {"batch_size": 8},
          "params": {"channels": [4, 8], "learning_rate": 0.01}}


@pytest.fixture(scope="module")
def toy():
    return toy_arrays()


@pytest.fixture(scope="module")
def models(tmp_path_factory, toy):
    """Two classifiers of the toy data, trained with different seeds."""
    frames, truth = toy
    folder = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (0, 1):
        report = run_job({**CONFIG, "seed": seed}, folder / f"seed{seed}.dfmodel", source=frames, labels=truth,
                         progress=False, threads=1)
        paths.append(report.artefact)
    return paths


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_manifest(folder: Path, name: str) -> None:
    """Re-hash ``name`` into the manifest, as someone hiding a replaced file would."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


# -- the artefact -------------------------------------------------------------------------------------

def test_an_artefact_loads_with_its_weights_config_and_identity(models):
    art = load_artefact(models[0], kind="pattern_classifier")
    assert art.content_hash == artefact_hash(models[0]) and len(art.content_hash) == 64
    assert art.info["format_version"] == 1 and art.info["diffraflow_version"]
    assert art.info["job"] == "train_pattern_classifier" and art.config["epochs"] == 4
    assert set(art.weights) == {"features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
                                "head.weight", "head.bias"}
    assert art.model["classes"] == [0, 1] and art.model["in_shape"] == [12, 12]
    assert sorted(p.name for p in models[0].iterdir()) == ["artefact.json", "config.json", "manifest.json",
                                                            "metrics.jsonl", "weights.safetensors"]


@pytest.mark.parametrize("name", ["weights.safetensors", "config.json", "artefact.json", "metrics.jsonl"])
def test_a_tampered_file_is_refused(models, tmp_path, name):
    folder = copy(models[0], tmp_path / "m")
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(DataCorruptionError) as exc:
        load_artefact(folder)
    text = str(exc.value)
    assert text.startswith(f"{folder / name}: content does not match the manifest") and "\n" not in text
    assert "(fix: re-create it with 'diffraflow train', or restore the artefact from a copy)" in text


def test_missing_extra_and_newer_are_refused(models, tmp_path):
    folder = copy(models[0], tmp_path / "m")
    (folder / "notes.txt").write_text("hi")
    with pytest.raises(DataCorruptionError, match="holds files its manifest does not list: notes.txt"):
        load_artefact(folder)
    (folder / "notes.txt").unlink()
    (folder / "metrics.jsonl").unlink()
    with pytest.raises(DataCorruptionError, match="metrics.jsonl: listed in the manifest but missing"):
        load_artefact(folder)
    newer = copy(models[0], tmp_path / "n")
    manifest = json.loads((newer / MANIFEST_FILE).read_text())
    manifest["diffraflow"]["format_version"] = 2
    (newer / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(InputFileError, match="artefact format 2 is newer than this diffraflow reads .up to 1. "
                                             r"\(fix: upgrade diffraflow"):
        load_artefact(newer)
    with pytest.raises(StoreNotFoundError):
        load_artefact(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputFileError, match="not a diffraflow model artefact"):
        load_artefact(tmp_path / "plain")
    assert not is_artefact(tmp_path / "plain") and is_artefact(models[0])


def test_the_wrong_kind_is_refused(tmp_path):
    write_artefact(tmp_path / "r", kind="restorer", job="some_job", weights={}, model={}, config={}, data={},
                   training={}, metrics=[])
    with pytest.raises(InputFileError, match="is a restorer artefact .job 'some_job'., not a pattern_classifier"):
        load_artefact(tmp_path / "r", kind="pattern_classifier")


class Evil:
    """Unpickling this creates a file: proof that the loader unpickled something."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_in_place_of_the_weights_is_refused_and_runs_nothing(models, tmp_path):
    marker = tmp_path / "code-ran"
    folder = copy(models[0], tmp_path / "m")
    (folder / WEIGHTS_FILE).write_bytes(pickle.dumps({"head.weight": Evil(marker)}))
    rewrite_manifest(folder, WEIGHTS_FILE)  # the hashes agree: only the format check stands in the way
    with pytest.raises(UnsafeRecordError) as exc:
        load_artefact(folder)
    assert "is a Python pickle, not safetensors; pickles can run code when loaded and are never read" in str(exc.value)
    torch.save({"head.weight": Evil(marker)}, folder / WEIGHTS_FILE)  # torch's zip format holds a pickle too
    rewrite_manifest(folder, WEIGHTS_FILE)
    with pytest.raises(UnsafeRecordError, match="is a zip archive"):
        load_artefact(folder)
    with pytest.raises(UnsafeRecordError):
        ClassifyPatterns(model=str(folder)).setup(InputSpec((1, 1), (12, 12), np.dtype("uint8")))
    assert not marker.exists()


# -- the operator -----------------------------------------------------------------------------------------

def test_the_operator_token_follows_the_artefact_content(models, tmp_path):
    path = copy(models[0], tmp_path / "current.dfmodel")
    op = build_operator("classify_patterns", {"model": str(path)})
    before = op.token()
    assert op.file_hashes() == {"model": artefact_hash(path)}
    assert build_operator("classify_patterns", {"model": str(path)}).token() == before
    shutil.rmtree(path)
    copy(models[1], path)  # retrained in place: same path, new content
    assert build_operator("classify_patterns", {"model": str(path)}).token() != before
    shutil.rmtree(path)
    assert ClassifyPatterns(model=str(path)).file_hashes() == {"model": "missing"}


def test_the_operator_checks_the_frame_size_before_any_data(models):
    with pytest.raises(PipelineError) as exc:
        ClassifyPatterns(model=str(models[0])).resolve(InputSpec((2, 2), (20, 20), np.dtype("uint8")))
    text = str(exc.value)
    assert "classify_patterns.model: the model takes 12 x 12 frames, this step sees 20 x 20" in text
    assert "\n" not in text
    with pytest.raises(PipelineError, match="missing required parameter 'model'"):
        build_operator("classify_patterns", {})


@pytest.mark.parametrize("executor", ["inline", "threads", "local"])
def test_the_operator_runs_as_a_pipeline_step_on_every_executor(models, toy, executor):
    frames, truth = toy
    pipeline = Pipeline([ClassifyPatterns(model=str(models[0]), batch_frames=7)])
    report = run_pipeline(pipeline, ArraySource(frames, chunk_frames=13), executor=executor, workers=2)
    reference = run_pipeline(pipeline, ArraySource(frames, chunk_frames=80), executor="inline")
    probabilities = report.results["classify_patterns/probabilities"]
    assert probabilities.shape == (8, 10, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, reference.results["classify_patterns/probabilities"], atol=1e-5)
    class_id = report.results["classify_patterns/class_id"]
    assert (class_id == truth["true_phase_id"]).mean() >= 0.9
    np.testing.assert_allclose(report.results["classify_patterns/confidence"], probabilities.max(axis=-1))
