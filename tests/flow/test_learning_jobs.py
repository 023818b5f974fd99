"""``diffraflow train`` for the learned operators: space groups and orientations (issue 11, items 2-3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from diffraflow.flow.jobs import build_job, get_job_class
from diffraflow.flow.training.datasets import write_pattern_set
from diffraflow.flow.training.learned import learning_rate_at
from diffraflow.flow.training.runner import CHECKPOINT_FILE, run_job, work_dir
from diffraflow.operators.learning.artefact import load_artefact
from diffraflow.operators.learning.training_data import (
    NI_ORIENTATION_VARIETY,
    Variety,
    plan_patterns,
)
from diffraflow.schemas.errors import PipelineError, SchemaError

ROOT = Path(__file__).resolve().parents[2]
SMALL = Variety(detector_shapes=((28, 28), (24, 32)))


@pytest.fixture(scope="module")
def sg_cube(tmp_path_factory) -> Path:
    plan = plan_patterns(["ni", "fe", "si"], 96, out_shape=(24, 24), variety=SMALL, seed=0, block_size=32)
    return write_pattern_set(plan, tmp_path_factory.mktemp("sg") / "sg.zarr", progress=False)


@pytest.fixture(scope="module")
def ni_cube(tmp_path_factory) -> Path:
    variety = Variety(**{**NI_ORIENTATION_VARIETY.__dict__, "detector_shapes": ((24, 24),)})
    plan = plan_patterns(["ni"], 64, out_shape=(24, 24), variety=variety, seed=0, master_pattern="auto",
                         block_size=32)
    return write_pattern_set(plan, tmp_path_factory.mktemp("ni") / "ni.zarr", progress=False)


def job_file(path: Path, cube: Path, job: str = "train_space_group", epochs: int = 2, **params) -> Path:
    record = {"training": 1, "job": job, "seed": 0, "epochs": epochs,
              "data": {"source": str(cube), "batch_size": 16, "holdout": 0.25},
              "params": {"architecture": "small_cnn", "width": 4, **params}}
    path.write_text(yaml.safe_dump(record))
    return path


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- space groups ----------------------------------------------------------------------------------

@pytest.mark.slow  # a subprocess that imports torch: 10-35 s on a shared 2-CPU machine
def test_the_command_trains_a_space_group_classifier(tmp_path, sg_cube):
    job = job_file(tmp_path / "job.yaml", sg_cube, epochs=2)
    out = tmp_path / "sg.dfmodel"
    proc = subprocess.run([sys.executable, "-m", "diffraflow", "train", str(job), "--output", str(out), "--threads",
                           "1"], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2/2: train_loss" in proc.stderr and "holdout_accuracy" in proc.stderr
    art = load_artefact(out, kind="space_group_classifier")
    record = art.model
    assert record["classes"] == [225, 227, 229] and record["class_names"][0] == "Fm-3m (225)"
    assert record["task"] == "classify" and record["in_shape"] == [24, 24]
    assert record["trained_materials"] == {"225": "ni", "227": "si", "229": "fe"}
    assert len(art.metrics) == 2 and {"train_loss", "holdout_loss", "learning_rate"} <= set(art.metrics[-1])
    assert all(k.endswith(".weight") or k.endswith(".bias") or "running" in k or "num_batches" in k
               for k in art.weights)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path, sg_cube):
    job = job_file(tmp_path / "job.yaml", sg_cube, epochs=1)
    a = run_job(job, tmp_path / "a.dfmodel", progress=False, threads=1)
    b = run_job(job, tmp_path / "b.dfmodel", progress=False, threads=1)
    assert a.content_hash == b.content_hash
    record = yaml.safe_load(job.read_text())
    record["seed"] = 1
    job.write_text(yaml.safe_dump(record))
    assert run_job(job, tmp_path / "c.dfmodel", progress=False, threads=1).content_hash != a.content_hash


@pytest.mark.slow  # trains twice (30 epochs), once in a subprocess
def test_a_killed_training_resumes_to_the_same_artefact(tmp_path, sg_cube):
    epochs = 30
    job = job_file(tmp_path / "job.yaml", sg_cube, epochs=epochs, width=8)
    reference = run_job(job, tmp_path / "reference.dfmodel", progress=False, threads=1)
    out = tmp_path / "killed.dfmodel"
    checkpoint = work_dir(out) / CHECKPOINT_FILE
    proc = subprocess.Popen([sys.executable, "-m", "diffraflow", "train", str(job), "--output", str(out),
                             "--threads", "1", "--quiet"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert checkpoint.exists() and not out.exists()
    resumed = run_job(job, out, progress=False, threads=1)
    assert 1 <= resumed.resumed_from < epochs
    assert files(out) == files(reference.artefact)


def test_early_stopping_keeps_the_best_epoch_and_skips_the_rest(tmp_path, sg_cube, monkeypatch):
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.95])
    seen = []

    def evaluate(self, net, ctx):
        seen.append(1)
        return {"holdout_loss": next(losses), "holdout_accuracy": 0.5}

    # The registered class: a doctest run may have imported the module a second time under another name.
    monkeypatch.setattr(get_job_class("train_space_group"), "_evaluate", evaluate)
    job = job_file(tmp_path / "job.yaml", sg_cube, epochs=6, early_stopping=2)
    report = run_job(job, tmp_path / "m.dfmodel", progress=False, threads=1)
    art = load_artefact(report.artefact)
    assert art.model["best_epoch"] == 2
    assert len(seen) == 4  # epochs 5 and 6 were not trained or judged
    assert [m.get("stopped") for m in art.metrics] == [None, None, None, 1, 1, 1]
    assert art.metrics[-1]["best_epoch"] == 2


def test_the_moving_average_is_what_ships(tmp_path, sg_cube):
    with_ema = run_job(job_file(tmp_path / "a.yaml", sg_cube, epochs=1, ema_decay=0.9), tmp_path / "a.dfmodel",
                       progress=False, threads=1)
    without = run_job(job_file(tmp_path / "b.yaml", sg_cube, epochs=1, ema_decay=0.0), tmp_path / "b.dfmodel",
                      progress=False, threads=1)
    a, b = load_artefact(with_ema.artefact).weights, load_artefact(without.artefact).weights
    assert set(a) == set(b)
    assert any(not np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("architecture, options", [
    ("small_cnn", {}),
    ("xception", {"middle_blocks": 1}),
    ("densenet", {"block_layers": [2, 2]}),
    ("swin_tiny", {"depths": [2, 2], "heads": [1, 2], "window": 2}),
])
def test_every_architecture_trains_both_tasks(tmp_path, sg_cube, ni_cube, architecture, options):
    params = {"architecture": architecture, "width": 8 if architecture == "swin_tiny" else 4,
              "model_options": options}
    sg = run_job(job_file(tmp_path / "sg.yaml", sg_cube, epochs=1, **params), tmp_path / "sg.dfmodel",
                 progress=False, threads=1)
    assert np.isfinite(sg.metrics["train_loss"])
    ori = run_job(job_file(tmp_path / "o.yaml", ni_cube, job="train_orientation", epochs=1, pc_variable="pc",
                           **params), tmp_path / "o.dfmodel", progress=False, threads=1)
    assert np.isfinite(ori.metrics["train_loss"]) and 0 <= ori.metrics["holdout_mean_deg"] <= 63


def test_schedules_decay_as_documented():
    assert learning_rate_at(0, 1e-3, "cosine", 10) == pytest.approx(1e-3)
    assert learning_rate_at(10, 1e-3, "cosine", 10) == pytest.approx(1e-5)
    assert learning_rate_at(3, 1.0, "exponential", 10, decay_rate=0.5) == pytest.approx(0.125)
    assert learning_rate_at(0.25, 1.0, "constant", 10, warmup_epochs=0.5) == pytest.approx(0.5)
    rates = [learning_rate_at(e / 10, 1.0, "cosine", 5) for e in range(51)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


@pytest.mark.parametrize("params, field", [
    ({"early_stopping": -1}, "early_stopping"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"model_options": {"depth": 3}}, "model_options"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"decay_rate": 1.5}, "decay_rate"),
    ({"width": 0}, "width"),
    ({"in_shape": [4, 4]}, "in_shape"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"classes": [225]}, "classes"),
])
def test_bad_parameters_are_one_line_errors(params, field):
    with pytest.raises(PipelineError) as info:
        build_job("train_space_group", params)
    assert info.value.where.endswith(field) and "\n" not in str(info.value) and "fix:" in str(info.value)


# -- orientations ------------------------------------------------------------------------------------

def test_an_orientation_regressor_records_its_phase_and_geometry(tmp_path, ni_cube):
    report = run_job(job_file(tmp_path / "o.yaml", ni_cube, job="train_orientation", epochs=2, pc_variable="pc",
                              n_hypotheses=2), tmp_path / "o.dfmodel", progress=False, threads=1)
    art = load_artefact(report.artefact, kind="orientation_regressor")
    record = art.model
    assert record["phase"]["name"] == "ni" and record["point_group"] == "m-3m"
    assert record["n_hypotheses"] == 2 and record["use_pc"] is True
    low, high = np.asarray(record["pc_range"])
    assert (low <= high).all() and low[0] >= NI_ORIENTATION_VARIETY.pc_x[0] - 1e-9
    assert record["geometry"]["master_pattern_kinds"] == ["dynamical"]
    assert {"holdout_mean_deg", "holdout_median_deg", "train_mean_deg"} <= set(art.metrics[-1])


def test_an_orientation_model_is_for_one_phase(tmp_path, sg_cube):
    with pytest.raises(SchemaError) as info:
        run_job(job_file(tmp_path / "o.yaml", sg_cube, job="train_orientation", epochs=1, use_pc=False),
                tmp_path / "o.dfmodel", progress=False, threads=1)
    assert "3 phases" in str(info.value) and "phase_id" in info.value.fix
    with pytest.raises(SchemaError, match="holds phases"):
        run_job(job_file(tmp_path / "o.yaml", sg_cube, job="train_orientation", epochs=1, use_pc=False,
                         phase_id=0), tmp_path / "o.dfmodel", progress=False, threads=1)


def test_the_job_list_shows_the_learned_jobs():
    proc = subprocess.run([sys.executable, "-m", "diffraflow", "train", "--list"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "train_space_group  (produces space_group_classifier)" in proc.stdout
    assert "train_orientation  (produces orientation_regressor)" in proc.stdout
    assert json.dumps("ema_decay")[1:-1] in proc.stdout


def test_early_stopping_without_a_hold_out_is_refused_before_training(tmp_path, sg_cube):
    record = yaml.safe_load(job_file(tmp_path / "job.yaml", sg_cube, early_stopping=3).read_text())
    record["data"]["holdout"] = 0.0
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(record))
    with pytest.raises(SchemaError) as info:
        run_job(tmp_path / "job.yaml", tmp_path / "m.dfmodel", progress=False)
    assert info.value.where == "data.holdout" and not (tmp_path / "m.dfmodel").exists()
