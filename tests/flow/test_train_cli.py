"""``diffraflow train`` end to end: simulate, train, classify with the artefact as a pipeline step."""

from __future__ import annotations

import numpy as np
import yaml
from diffraflow.flow.cli import main
from diffraflow.flow.results import open_results
from diffraflow.operators.learning.artefact import artefact_hash, load_artefact

from tests.flow.training_fixtures import two_phase_cube, write_job


def test_train_then_classify_a_two_phase_simulation(tmp_path, capsys):
    cube = two_phase_cube()
    job = write_job(tmp_path / "phase.yaml", cube, epochs=6, data={"holdout": 0.2, "batch_size": 16},
                    params={"channels": [8, 16], "learning_rate": 0.01})
    model = tmp_path / "phase.dfmodel"
    assert main(["train", str(job), "--output", str(model), "--threads", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{model}: trained train_pattern_classifier for 6 epochs") and artefact_hash(model)[:12] in out
    art = load_artefact(model, kind="pattern_classifier")
    assert art.model["class_names"] == ["ni", "fe"] and art.metrics[-1]["holdout_accuracy"] >= 0.8

    # The same command again: nothing to do.
    assert main(["train", str(job), "--output", str(model), "--threads", "1", "--quiet"]) == 0
    assert "already complete" in capsys.readouterr().out

    pipeline = tmp_path / "classify.yaml"
    pipeline.write_text(yaml.safe_dump({"pipeline": 1, "steps": [{"op": "classify_patterns",
                                                                  "params": {"model": str(model)}}]}))
    result = tmp_path / "classes.zarr"
    assert main(["run", str(pipeline), "--input", str(cube), "--output", str(result), "--quiet",
                 "--scheduler", "inline"]) == 0
    ds = open_results(result)
    truth = __import__("zarr").open_group(str(cube), mode="r")["true_phase_id"][...]
    predicted = np.asarray(ds["classify_patterns/class_id"])
    assert (predicted == truth).mean() >= 0.9
    assert ds["classify_patterns/probabilities"].dims == ("scan_y", "scan_x", "class")


def test_train_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    cube = two_phase_cube()
    bad = write_job(tmp_path / "bad.yaml", cube, data={"holdout": 2})
    assert main(["train", str(bad), "--output", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"diffraflow train: error: {bad}: data.holdout: must be a number in [0, 1), got 2 "
                   "(fix: e.g. holdout: 0.2)")
    label = write_job(tmp_path / "label.yaml", cube, params={"label": "true_phase"})
    assert main(["train", str(label), "--output", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{cube}: true_phase: no such variable in the source (fix: did you mean 'true_phase_id'?)" in err
    assert len(err.splitlines()) == 1
    folder = tmp_path / "mine"
    folder.mkdir()
    good = write_job(tmp_path / "good.yaml", cube, epochs=1)
    assert main(["train", str(good), "--output", str(folder), "--overwrite", "--quiet"]) == 2
    assert "--overwrite replaces only a model artefact" in capsys.readouterr().err
    assert main(["train", "--list"]) == 0
    assert "train_pattern_classifier  (produces pattern_classifier)" in capsys.readouterr().out
