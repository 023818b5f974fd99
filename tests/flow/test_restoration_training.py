"""Restoration training jobs (issue 12): diffusion, supervised, autoencoder, latent; resume, fine-tuning, data sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffraflow.flow.cli import main
from diffraflow.flow.jobs import build_job, list_jobs
from diffraflow.flow.store import create_cube, open_cube
from diffraflow.flow.training.restoration import TrainRestoration, learning_rate
from diffraflow.flow.training.restoration_data import write_restoration_set
from diffraflow.flow.training.runner import run_job
from diffraflow.operators.learning.artefact import artefact_hash, load_artefact
from diffraflow.operators.restoration.models import load_restorer
from diffraflow.schemas.errors import PipelineError, SchemaError


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The test networks are tiny: one thread is fastest, and spare threads spin-wait on a busy CI runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = {"channels": [4, 8], "patch": 1, "radon": 2, "timesteps": 40, "holdout_frames": 8, "warmup_steps": 2}


@pytest.fixture(scope="module")
def training_set(tmp_path_factory) -> Path:
    return write_restoration_set(tmp_path_factory.mktemp("set") / "set.zarr", 96, det_shape=(20, 20), row=24,
                                 seed=3, progress=False)


def config(job: str = "train_restoration", epochs: int = 2, params: dict | None = None, **data) -> dict:
    base = TINY if job == "train_restoration" else {k: TINY[k] for k in ("holdout_frames", "warmup_steps")}
    return {"training": 1, "job": job, "epochs": epochs, "seed": 0,
            "data": {"batch_size": 8, "holdout": 0.2, **data}, "params": {**base, **(params or {})}}


def train(cfg: dict, out: Path, cube: Path):
    cfg = json.loads(json.dumps(cfg))
    cfg["data"]["source"] = str(cube)
    return run_job(cfg, out, progress=False, threads=1)


def test_the_training_set_varies_geometry_per_row_and_is_reproducible(training_set, tmp_path):
    ds = open_cube(training_set)
    assert ds["patterns"].shape == (4, 24, 20, 20) and ds["clean_patterns"].dtype == np.float32
    pc = np.asarray(ds["pc"])
    assert np.allclose(pc[:, 0], pc[:, 5]) and len(np.unique(pc[:, 0, 0])) == 4
    assert np.asarray(ds["dose"])[:, 0].tolist() == [1.0, 2.0, 4.0, 10.0]
    q = np.asarray(ds["true_rotation"]).reshape(-1, 4)
    assert np.allclose(np.linalg.norm(q, axis=1), 1) and len(np.unique(q[:, 0])) == 96
    frames = np.asarray(ds["patterns"]).reshape(4, -1)
    # Read noise clipped at zero lifts the lowest dose a little, as on a camera.
    assert frames[0].mean() == pytest.approx(1.0, rel=0.25) and frames[3].mean() == pytest.approx(10.0, rel=0.05)
    again = write_restoration_set(tmp_path / "again.zarr", 96, det_shape=(20, 20), row=24, seed=3, progress=False)
    assert np.array_equal(np.asarray(open_cube(again)["patterns"]), np.asarray(ds["patterns"]))
    with pytest.raises(SchemaError, match="patterns per row .25. must divide n .96."):
        write_restoration_set(tmp_path / "bad.zarr", 96, row=25, progress=False)


def test_the_jobs_are_registered_and_their_parameters_checked():
    jobs = list_jobs()
    assert {"train_restoration", "train_pattern_autoencoder", "train_latent_restoration"} <= set(jobs)
    job = build_job("train_restoration", {"schedule": "cosine", "prediction": "eps", "default_sampler": "ddim"})
    assert isinstance(job, TrainRestoration) and job.variables() == ("clean_patterns",)
    cases = [
        ({"prediction": "eps"}, "train_restoration.default_sampler: an eps-predicting model has no one-step sampler"),
        ({"ema_decay": 1.0}, "train_restoration.ema_decay: must lie in [0, 1), got 1.0"),
        ({"channels": []}, "train_restoration.channels: must be a non-empty list of whole numbers of 2 or more"),
        ({"degradation": {"dose": [3, 1]}}, "train_restoration.degradation.dose: range [3.0, 1.0] is reversed"),
        ({"direct_fraction": 2}, "train_restoration.direct_fraction: must lie in [0, 1], got 2"),
        ({"schedule": "quadratic"}, "train_restoration.schedule: 'quadratic' is not one of ['linear', 'cosine']"),
    ]
    for params, message in cases:
        with pytest.raises(PipelineError) as exc:
            build_job("train_restoration", params)
        assert message in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(PipelineError, match="missing required parameter 'autoencoder'"):
        build_job("train_latent_restoration", {})


def test_learning_rate_warms_up_then_decays():
    rates = [learning_rate(s, 1000, 1e-3, 100, "cosine") for s in (0, 50, 99, 100, 550, 1000)]
    assert rates[0] < rates[1] < rates[2] == pytest.approx(1e-3)
    assert rates[3] == pytest.approx(1e-3) and rates[4] == pytest.approx(0.505e-3) and rates[5] == pytest.approx(1e-5)
    assert learning_rate(500, 1000, 1e-3, 0, "constant") == 1e-3


@pytest.mark.parametrize("params", [
    {"restorer": "diffusion", "schedule": "linear", "prediction": "v"},
    {"restorer": "diffusion", "schedule": "cosine", "prediction": "eps", "default_sampler": "ddim"},
    {"restorer": "diffusion", "schedule": "cosine", "prediction": "x0"},
    {"restorer": "supervised"},
])
def test_each_restorer_trains_into_an_artefact_the_operator_loads(training_set, tmp_path, params):
    report = train(config(params={**params, "steps_per_epoch": 3}), tmp_path / "m.dfmodel", training_set)
    art = load_artefact(report.artefact, kind="pattern_restorer")
    assert art.model["restorer"] == params["restorer"] and art.model["radon"] == 2
    assert [m["steps"] for m in art.metrics] == [3, 6]
    assert {"train_loss", "holdout_psnr_dose1", "holdout_psnr_dose2", "holdout_psnr_dose4"} <= set(art.metrics[-1])
    assert all(k.startswith("net.") or k == "header_pad" for k in art.weights)
    restorer = load_restorer(str(report.artefact))
    frames = np.asarray(open_cube(training_set)["patterns"])[0, :3]
    for sampler in {"supervised": ["direct"]}.get(params["restorer"], ["ddim", "ddpm"]):
        out = restorer.restore(frames, sampler, steps=2)
        assert out.shape == (3, 20, 20) and torch.isfinite(out).all()


def test_a_killed_training_resumes_to_the_same_bytes(training_set, tmp_path):
    cfg = config(epochs=3, params={"steps_per_epoch": 2})
    whole = train(cfg, tmp_path / "whole.dfmodel", training_set)
    original = TrainRestoration.run_epoch

    def crash_in_the_third_epoch(self, ctx, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, ctx, epoch)

    TrainRestoration.run_epoch = crash_in_the_third_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "cut.dfmodel", training_set)
    finally:
        TrainRestoration.run_epoch = original
    resumed = train(cfg, tmp_path / "cut.dfmodel", training_set)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 1
    assert artefact_hash(resumed.artefact) == artefact_hash(whole.artefact)


def test_training_improves_the_restoration(training_set, tmp_path):
    cfg = config(epochs=4, params={"restorer": "supervised", "channels": [8, 16], "steps_per_epoch": 12,
                                   "learning_rate": 0.005, "degradation": {"dose": [2, 8]}})
    report = train(cfg, tmp_path / "m.dfmodel", training_set)
    history = load_artefact(report.artefact).metrics
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["holdout_psnr_dose4"] > history[0]["holdout_psnr_dose4"]


def test_fine_tuning_on_paired_exposures_starts_from_the_given_model(training_set, tmp_path):
    base = train(config(params={"steps_per_epoch": 2}), tmp_path / "base.dfmodel", training_set)
    paired = paired_cube(tmp_path / "paired.zarr")
    cfg = config(params={"input": "frames", "target": "long_exposure", "init": str(base.artefact),
                         "channels": [99], "learning_rate": 1e-4, "steps_per_epoch": 2})
    tuned = train(cfg, tmp_path / "tuned.dfmodel", paired)
    art = load_artefact(tuned.artefact)
    assert art.model["init"] == {"path": str(base.artefact), "sha256": artefact_hash(base.artefact)}
    assert art.model["channels"] == [4, 8] and art.model["training_input"] == "frames"
    assert "degradation" not in art.model
    assert set(art.metrics[-1]) >= {"holdout_psnr", "train_loss"}
    supervised = train(config(params={"restorer": "supervised", "steps_per_epoch": 1}), tmp_path / "s.dfmodel",
                       training_set)
    with pytest.raises(PipelineError, match=r"\.init: .* is a supervised model, this job trains a diffusion one"):
        train(config(params={"init": str(supervised.artefact), "steps_per_epoch": 1}), tmp_path / "x.dfmodel",
              training_set)


def paired_cube(path: Path) -> Path:
    """Short and long exposures of the same points (what a user records to fine-tune on real data)."""
    from diffraflow.operators.simulate.ebsd import simulate_ebsd

    short = simulate_ebsd((4, 6), det_shape=(20, 20), n_grains=24, dose=2.0, seed=9)
    long = simulate_ebsd((4, 6), det_shape=(20, 20), n_grains=24, dose=200.0, seed=9)
    with create_cube(path, scan_shape=(4, 6), det_shape=(20, 20), dtype=short.dtype,
                     attrs={"modality": "ebsd", "detector": {"shape": [20, 20]}}) as writer:
        writer.patterns.append(short.all_patterns()[0].reshape(-1, 20, 20))
        writer.add_frame_variable("long_exposure", "uint16").append(
            long.all_patterns()[0].reshape(-1, 20, 20).astype("uint16"))
        return writer.finalize()


def test_the_target_must_be_frames_of_the_cube(training_set, tmp_path):
    with pytest.raises(SchemaError, match="true_rotation: has shape .4. per point; targets must be frames of .20, 20."):
        train(config(params={"target": "true_rotation"}), tmp_path / "m.dfmodel", training_set)


def test_latent_restoration_carries_its_autoencoder(training_set, tmp_path):
    ae = train(config("train_pattern_autoencoder", params={"channels": [4, 8], "latent_channels": 2,
                                                           "steps_per_epoch": 2}),
               tmp_path / "ae.dfmodel", training_set)
    ae_art = load_artefact(ae.artefact, kind="pattern_autoencoder")
    assert ae_art.model["latent_std"] > 0 and "holdout_psnr" in ae_art.metrics[-1]
    latent = train(config("train_latent_restoration", params={"autoencoder": str(ae.artefact), "channels": [8, 8],
                                                              "steps_per_epoch": 2, "timesteps": 40}),
                   tmp_path / "latent.dfmodel", training_set)
    art = load_artefact(latent.artefact, kind="pattern_restorer")
    assert art.model["restorer"] == "latent_diffusion" and art.model["autoencoder"]["sha256"] == ae_art.content_hash
    assert {f"net.{k[len('autoencoder.'):]}" for k in art.weights if k.startswith("autoencoder.")} == \
        {k for k in ae_art.weights if k.startswith("net.")}
    restorer = load_restorer(str(latent.artefact))
    assert restorer.restore(np.ones((2, 20, 20)), "direct").shape == (2, 20, 20)


def test_diffraflow_train_runs_a_restoration_job_file(training_set, tmp_path, capsys):
    job = tmp_path / "restore.yaml"
    cfg = config(epochs=1, params={"steps_per_epoch": 2})
    cfg["data"]["source"] = str(training_set)
    job.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "r.dfmodel"
    assert main(["train", str(job), "--output", str(out), "--threads", "1", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: trained train_restoration for 1 epochs")
    bad = tmp_path / "bad.yaml"
    cfg["params"]["samplr"] = "ddim"
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(bad), "--output", str(tmp_path / "b.dfmodel")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown parameter 'samplr'" in err and len(err.splitlines()) == 1
