"""The job runner: reproducible artefacts, kill-and-resume, locks, overwrite rules (issue 8, item 6)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from diffraflow.flow.locks import StoreLock
from diffraflow.flow.training.runner import CHECKPOINT_FILE, LOG_FILE, run_job, work_dir
from diffraflow.operators.learning.artefact import artefact_hash, load_artefact
from diffraflow.schemas.errors import (
    IncompleteStoreError,
    OutputExistsError,
    SchemaError,
    StoreLockedError,
)

from tests.flow.training_fixtures import artefact_bytes, toy_arrays, write_job, write_toy_cube

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cube(tmp_path):
    return write_toy_cube(tmp_path / "toy.zarr")


def train(job, out, **kwargs):
    return run_job(job, out, progress=False, threads=1, **kwargs)


def test_the_same_seed_gives_a_bit_identical_artefact(tmp_path, cube):
    job = write_job(tmp_path / "job.yaml", cube)
    first = train(job, tmp_path / "a.dfmodel")
    second = train(job, tmp_path / "b.dfmodel")
    assert artefact_bytes(first.artefact) == artefact_bytes(second.artefact)
    assert first.content_hash == second.content_hash == artefact_hash(first.artefact)
    other = train(write_job(tmp_path / "seed1.yaml", cube, seed=1), tmp_path / "c.dfmodel")
    assert other.content_hash != first.content_hash
    art = load_artefact(first.artefact, kind="pattern_classifier")
    assert art.info["data"]["source"]["path"] == str(cube) and art.info["data"]["labels"].keys() == {"true_phase_id"}
    assert art.info["model"]["class_names"] == ["ni", "fe"] and art.config["seed"] == 0
    assert [m["epoch"] for m in art.metrics] == [1, 2, 3] and art.metrics[-1]["holdout_accuracy"] >= 0.9
    assert (first.artefact / "weights.safetensors").stat().st_size < 5 * 2**20
    assert not work_dir(first.artefact).exists()  # the checkpoint folder goes once the artefact is published


def test_in_memory_data_trains_through_the_same_runner(tmp_path):
    frames, truth = toy_arrays()
    config = {"training": 1, "job": "train_pattern_classifier", "epochs": 2, "data": {"batch_size": 8}}
    report = train(config, tmp_path / "m.dfmodel", source=frames, labels=truth)
    assert report.epochs_run == 2 and "sha256_1MiB" in load_artefact(report.artefact).info["data"]["source"]


SLOW_EPOCHS = 6


def test_a_killed_run_resumes_to_the_identical_artefact(tmp_path, cube):
    """SIGKILL after the first checkpoint, run again: it resumes and ends with the uninterrupted bytes."""
    job = write_job(tmp_path / "job.yaml", cube, job="test_slow_pattern_classifier", epochs=SLOW_EPOCHS,
                    params={"sleep_s": 0.4})
    reference = train(job, tmp_path / "reference.dfmodel")

    out = tmp_path / "killed.dfmodel"
    checkpoint = work_dir(out) / CHECKPOINT_FILE
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "diffraflow", "train", str(job), "--output", str(out),
                             "--threads", "1", "--quiet", "--plugin", "tests.flow.training_fixtures"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()  # reaped: its lock is free and its pid is gone
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert checkpoint.exists() and not out.exists()

    resumed = train(job, out)
    assert 1 <= resumed.resumed_from < SLOW_EPOCHS
    assert resumed.epochs_run == SLOW_EPOCHS - resumed.resumed_from
    assert artefact_bytes(out) == artefact_bytes(reference.artefact)


def test_the_metrics_log_keeps_one_line_per_checkpointed_epoch(tmp_path, cube, monkeypatch):
    """A failure after epoch 2 leaves a checkpoint and a log of 2 epochs; the rerun completes both."""
    from tests.flow.training_fixtures import SlowClassifier

    job = write_job(tmp_path / "job.yaml", cube, job="test_slow_pattern_classifier", epochs=4)
    out = tmp_path / "m.dfmodel"
    original = SlowClassifier.run_epoch

    def failing(self, ctx, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, ctx, epoch)

    monkeypatch.setattr(SlowClassifier, "run_epoch", failing)
    with pytest.raises(KeyboardInterrupt):
        train(job, out)
    log = [json.loads(line) for line in (work_dir(out) / LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all("seconds" in r for r in log)
    monkeypatch.setattr(SlowClassifier, "run_epoch", original)
    report = train(job, out)
    assert report.resumed_from == 2 and [m["epoch"] for m in load_artefact(out).metrics] == [1, 2, 3, 4]


def test_resuming_another_config_is_refused_until_no_resume(tmp_path, cube, monkeypatch):
    from tests.flow.training_fixtures import SlowClassifier

    out = tmp_path / "m.dfmodel"
    original = SlowClassifier.run_epoch

    def failing(self, ctx, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, ctx, epoch)

    monkeypatch.setattr(SlowClassifier, "run_epoch", failing)
    with pytest.raises(KeyboardInterrupt):
        train(write_job(tmp_path / "a.yaml", cube, job="test_slow_pattern_classifier"), out)
    monkeypatch.setattr(SlowClassifier, "run_epoch", original)
    other = write_job(tmp_path / "b.yaml", cube, job="test_slow_pattern_classifier", seed=7)
    with pytest.raises(IncompleteStoreError) as exc:
        train(other, out)
    assert "holds an interrupted training of another config or data (fix: re-run with --no-resume" in str(exc.value)
    report = train(other, out, resume=False)
    assert report.resumed_from == 0 and report.epochs_run == 3


def test_a_finished_artefact_is_reported_and_replaced_only_with_overwrite(tmp_path, cube):
    job = write_job(tmp_path / "job.yaml", cube)
    out = tmp_path / "m.dfmodel"
    first = train(job, out)
    again = train(job, out)
    assert again.already_complete and again.content_hash == first.content_hash and again.epochs_run == 0
    other = write_job(tmp_path / "other.yaml", cube, seed=3)
    with pytest.raises(OutputExistsError) as exc:
        train(other, out)
    assert "trained from another config or data (fix: choose another output path, or pass --overwrite" in str(exc.value)
    replaced = train(other, out, overwrite=True)
    assert replaced.content_hash != first.content_hash and artefact_hash(out) == replaced.content_hash


def test_overwrite_never_replaces_what_diffraflow_did_not_make(tmp_path, cube):
    job = write_job(tmp_path / "job.yaml", cube)
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError):
            train(job, mine, overwrite=overwrite)
    with pytest.raises(OutputExistsError) as exc:
        train(job, cube, overwrite=True)
    assert "the output is the command's input" in str(exc.value)
    assert (mine / "chapter1.tex").read_text() == "precious"


def test_two_runs_never_write_one_artefact(tmp_path, cube):
    job = write_job(tmp_path / "job.yaml", cube)
    out = tmp_path / "m.dfmodel"
    with StoreLock(out):
        with pytest.raises(StoreLockedError):
            train(job, out)
    assert not out.exists()


def test_an_output_is_required_and_threads_are_checked(tmp_path, cube):
    job = write_job(tmp_path / "job.yaml", cube)
    with pytest.raises(SchemaError, match="no output given"):
        run_job(job, None, progress=False)
    with pytest.raises(SchemaError, match="--threads: must be a whole number"):
        run_job(job, tmp_path / "m", progress=False, threads=0)


def test_cuda_is_refused_in_one_line_where_there_is_none(tmp_path, cube):
    from diffraflow.schemas.backends import backend_available
    from diffraflow.schemas.errors import BackendUnavailableError

    if backend_available("torch-cuda"):
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailableError) as exc:
        train(write_job(tmp_path / "job.yaml", cube), tmp_path / "m", device="cuda")
    assert "backend 'torch-cuda' needs PyTorch with CUDA, which is not available here" in str(exc.value)
    assert not (tmp_path / "m").exists() and not work_dir(tmp_path / "m").exists()


def test_a_run_killed_after_publishing_leaves_nothing_behind_on_the_next(tmp_path, cube):
    job = write_job(tmp_path / "job.yaml", cube)
    out = tmp_path / "m.dfmodel"
    train(job, out)
    work = work_dir(out)
    shutil.copytree(out, work)  # stands in for the work folder a kill left after the rename
    (work / "job.json").write_text(json.dumps({"diffraflow": {"kind": "training_work"},
                                               "fingerprint": load_artefact(out).info["training"]["fingerprint"]}))
    assert train(job, out).already_complete and not work.exists()
