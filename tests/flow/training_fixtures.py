"""Test-only jobs and data for the training tests.

Importing this module registers ``test_slow_pattern_classifier``, so a
``diffraflow train`` subprocess finds it with ``--plugin tests.flow.training_fixtures``.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from diffraflow.flow.jobs import param, register_job
from diffraflow.flow.store import create_cube
from diffraflow.flow.training.classifier import TrainPatternClassifier

__all__ = ["SlowClassifier", "toy_arrays", "write_toy_cube", "write_job", "two_phase_cube", "artefact_bytes"]


@register_job
@dataclass(eq=False)
class SlowClassifier(TrainPatternClassifier):
    """The pattern classifier, sleeping after each epoch so that a test can kill it mid-training."""

    name = "test_slow_pattern_classifier"

    sleep_s: float = param(0.0, doc="seconds to sleep after each epoch")

    def run_epoch(self, ctx, epoch):
        metrics = super().run_epoch(ctx, epoch)
        time.sleep(float(self.sleep_s))
        return metrics


def toy_arrays(scan_shape: tuple[int, int] = (8, 10), det: int = 12, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Poisson frames whose class (0 or 1, in vertical bands of grains) brightens the left or right half."""
    rng = np.random.default_rng(seed)
    sy, sx = scan_shape
    grain = (np.arange(sx)[None, :] // 2 + 100 * (np.arange(sy)[:, None] // 4)).astype("int32")
    phase = (grain % 2).astype("int32")
    frames = rng.poisson(6, size=(sy, sx, det, det)).astype("uint8")
    half = det // 2
    frames[phase == 0, :, :half] += 12
    frames[phase == 1, :, half:] += 12
    return frames, {"true_phase_id": phase, "grain_id": grain}


def write_toy_cube(path: Path, **kwargs: Any) -> Path:
    """:func:`toy_arrays` as a scan cube with ``true_phase_id`` and ``grain_id`` ground truth; 2 rows per chunk."""
    frames, truth = toy_arrays(**kwargs)
    sy, sx, dy, dx = frames.shape
    attrs = {"modality": "ebsd", "detector": {"shape": [dy, dx]},
             "phases": [{"id": 0, "name": "ni", "space_group": 225}, {"id": 1, "name": "fe", "space_group": 229}]}
    with create_cube(path, scan_shape=(sy, sx), det_shape=(dy, dx), dtype="uint8", attrs=attrs,
                     chunk_frames=2 * sx) as writer:
        writer.patterns.append(frames.reshape(-1, dy, dx))
        writer.write_variable("true_phase_id", truth["true_phase_id"], ("scan_y", "scan_x"), ground_truth=True)
        writer.write_variable("grain_id", truth["grain_id"], ("scan_y", "scan_x"), ground_truth=True)
        return writer.finalize()


def write_job(path: Path, source: str | Path, **overrides: Any) -> Path:
    """A job file training the classifier on ``source`` (small, seconds on one CPU thread)."""
    record: dict[str, Any] = {"training": 1, "job": "train_pattern_classifier", "seed": 0, "epochs": 3,
                              "data": {"source": str(source), "batch_size": 16, "holdout": 0.25},
                              "params": {"channels": [4, 8], "learning_rate": 0.01}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(record.get(key), dict):
            record[key] = {**record[key], **value}
        else:
            record[key] = value
    path.write_text(yaml.safe_dump(record))
    return path


@functools.cache
def two_phase_cube() -> Path:
    """A tiny two-phase kinematical EBSD simulation (Ni and Fe), made once per test process."""
    from diffraflow.flow.commands.simulate import write_ebsd
    from diffraflow.operators.simulate.ebsd import simulate_ebsd

    folder = Path(tempfile.mkdtemp(prefix="diffraflow-train-"))
    atexit.register(shutil.rmtree, folder, True)
    out = folder / "two_phase.zarr"
    sim = simulate_ebsd((12, 12), det_shape=(20, 20), phases=("ni", "fe"), n_grains=6, seed=3,
                        master_pattern="kinematical")
    return write_ebsd(sim, out, progress=False)


def artefact_bytes(path: Path) -> dict[str, bytes]:
    """Every file of an artefact directory by name."""
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir())}
