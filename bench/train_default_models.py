"""Reproduce the models that ship with diffraflow: the space-group classifier and the Ni orientation regressor.

Each model is made in three steps, all timed: simulate its training set as a
scan cube (:func:`diffraflow.flow.training.datasets.write_pattern_set`),
write the job file, and run ``diffraflow train`` on it (the same command a
user runs; resumable: run the script again after a kill and it continues).
``--install`` then copies the artefact into
``operators/learning/models/`` where the operators find it.

Usage::

    python bench/train_default_models.py space-group --work /tmp/df-models [--install]
    python bench/train_default_models.py orientation --work /tmp/df-models [--install]

The training sets (about 150-400 MB each) stay in ``--work``; the timings go
to ``WORK/<model>/timing.json``. Seeds are fixed, so a rerun on the same
machine and thread count gives the same artefact bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "operators" / "learning" / "models"

#: The shipped space-group classifier: a small CNN, six classes, 28 training materials.
SPACE_GROUP = {
    "name": "space_group_small_cnn",
    "patterns": 40_960,
    "seed": 1,
    "job": {
        "training": 1, "job": "train_space_group", "seed": 0, "epochs": 8, "device": "cpu",
        "data": {"source": "train.zarr", "batch_size": 128, "holdout": 0.05},
        "params": {"architecture": "small_cnn", "width": 8, "learning_rate": 0.003, "weight_decay": 0.05,
                   "schedule": "cosine", "warmup_epochs": 0.3, "ema_decay": 0.998, "label_smoothing": 0.05,
                   "classes": [221, 223, 225, 227, 229, 230]},
    },
}
#: The shipped Ni orientation regressor: 60 x 60 noisy Ni patterns near kikuchipy's Ni scan geometry.
ORIENTATION = {
    "name": "ni_orientation_small_cnn",
    "patterns": 81_920,
    "seed": 11,
    "job": {
        "training": 1, "job": "train_orientation", "seed": 0, "epochs": 6, "device": "cpu",
        "data": {"source": "train.zarr", "batch_size": 128, "holdout": 0.03},
        "params": {"architecture": "small_cnn", "width": 8, "learning_rate": 0.002, "weight_decay": 0.01,
                   "schedule": "cosine", "warmup_epochs": 0.2, "ema_decay": 0.998, "pc_variable": "pc",
                   "use_pc": True, "n_hypotheses": 4, "dropout": 0.0, "model_options": {"hidden": 256}},
    },
}


def simulate(spec: dict, folder: Path) -> tuple[Path, float]:
    """Write the training set of a model spec (skipped when it is already there); returns its path and seconds."""
    from diffraflow.flow.store import diffraflow_kind
    from diffraflow.flow.training.datasets import write_pattern_set
    from diffraflow.operators.learning.materials import SPACE_GROUPS, TRAIN_MATERIALS, class_weights
    from diffraflow.operators.learning.training_data import NI_ORIENTATION_VARIETY, plan_patterns

    path = folder / "train.zarr"
    if path.exists() and diffraflow_kind(path) == "scan_cube":
        return path, 0.0
    start = time.perf_counter()
    if spec is SPACE_GROUP:
        materials = [m for g in SPACE_GROUPS for m in TRAIN_MATERIALS[g]]
        plan = plan_patterns(materials, spec["patterns"], seed=spec["seed"], weights=class_weights(materials))
    else:
        plan = plan_patterns(["ni"], spec["patterns"], variety=NI_ORIENTATION_VARIETY, seed=spec["seed"],
                             master_pattern="auto")
    write_pattern_set(plan, path, overwrite=True, description=f"bench/train_default_models.py {spec['name']}")
    return path, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=("space-group", "orientation"))
    parser.add_argument("--work", default="/tmp/diffraflow-models", help="folder for training sets and artefacts")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--install", action="store_true", help="copy the artefact into operators/learning/models")
    args = parser.parse_args(argv)

    spec = SPACE_GROUP if args.model == "space-group" else ORIENTATION
    folder = Path(args.work).expanduser().absolute() / spec["name"]
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data, simulate_s = simulate(spec, folder)
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(spec["job"], sort_keys=False))
    out = folder / f"{spec['name']}.dfmodel"
    previous = folder / "timing.json"
    if out.exists() and previous.exists():  # trained already: keep the timings of the run that trained it
        print(previous.read_text())
        if args.install:
            install(out)
        return 0
    command = [sys.executable, "-m", "diffraflow", "train", str(job), "--output", str(out), "--threads",
               str(args.threads)]
    t1 = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    train_s = time.perf_counter() - t1
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timing = {"model": spec["name"], "patterns": spec["patterns"], "simulate_s": round(simulate_s, 1),
              "train_s": round(train_s, 1), "total_s": round(time.perf_counter() - t0, 1),
              "epochs": len(metrics), "weights_bytes": (out / "weights.safetensors").stat().st_size,
              "command": " ".join(["python", "bench/train_default_models.py", args.model, "--work", str(args.work),
                                   "--threads", str(args.threads)]),
              "last_epoch": metrics[-1] if metrics else {}}
    (folder / "timing.json").write_text(json.dumps(timing, indent=1))
    print(json.dumps(timing, indent=1))
    if args.install:
        install(out)
    return 0


def install(artefact: Path) -> None:
    """Copy an artefact into ``operators/learning/models`` (replacing an older one)."""
    target = MODELS / artefact.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(artefact, target)
    print(f"installed {target}")


if __name__ == "__main__":
    raise SystemExit(main())
