"""``diffraflow evaluate MODEL CUBE``: judge a learned model against a cube's ground truth.

The model is run the way users run it, as a one-step pipeline
(``classify_space_group`` or ``predict_orientation``, chosen by the
artefact's kind), on a simulated cube with ground truth; the predictions are
then compared with the truth:

space-group classifiers
    confusion matrix, precision, recall and F1 per class, accuracy overall,
    per material (``true_phase_id``) and per dose bin (a ``dose`` variable),
    the B2-vs-BCC and other confusions, and Grad-CAM heat maps over patterns
    of each class (PNG);
orientation regressors
    disorientation statistics (mean, median, 90th percentile, within 2 and
    5 degrees) overall and per dose bin, an error map (PNG), and with
    ``--hough`` the same figures for ``hough_index`` on the same patterns.

Everything goes to ``--report DIR`` (``report.json`` and PNGs); a summary is printed.

Examples
--------
>>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.schemas.errors import SchemaError

__all__ = ["register", "run", "evaluate_classifier", "evaluate_orientation", "DOSE_BINS"]

#: Dose bins (counts per pixel) of the per-dose figures.
DOSE_BINS = (0.0, 10.0, 20.0, 50.0, 100.0, float("inf"))


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser(
        "evaluate", help="judge a learned model (space group or orientation) against a cube's ground truth",
        description="Run a model artefact as its operator over a simulated cube with ground truth and report "
                    "accuracy, confusion matrix, precision/recall and Grad-CAM (space-group classifiers) or "
                    "orientation errors, optionally against hough_index on the same patterns (orientation "
                    "regressors).")
    parser.add_argument("model", help="model artefact directory (diffraflow train), or 'default' for the shipped "
                                      "space-group classifier")
    parser.add_argument("cube", help="scan cube with ground truth (true_phase_id or space_group; true_rotation)")
    parser.add_argument("--report", default=None, metavar="DIR", help="write report.json and PNGs here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device (default cpu)")
    parser.add_argument("--hough", action="store_true", help="orientation: also run hough_index on the same patterns")
    parser.add_argument("--refine", type=int, default=None, metavar="N",
                        help="orientation: refinement iterations (default: the operator's)")
    parser.add_argument("--gradcam", type=int, default=12, metavar="N",
                        help="classifier: Grad-CAM heat maps of N patterns (default 12; 0 none)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _run_step(op: Any, cube: str, device: str, progress: bool) -> tuple[dict[str, np.ndarray], float]:
    from diffraflow.flow.engine import run_pipeline
    from diffraflow.flow.pipeline import Pipeline, Step

    backend = "torch-cuda" if device == "cuda" else "torch-cpu"
    if "numpy" in op.backends and device == "cpu":
        backend = "numpy"
    start = time.perf_counter()
    report = run_pipeline(Pipeline([Step(op, backend=backend)]), cube, None, progress=progress)
    seconds = time.perf_counter() - start
    return {k.split("/", 1)[1]: v for k, v in report.results.items()}, seconds


def _truth(cube: str) -> tuple[Any, dict[str, Any]]:
    from diffraflow.flow.store import open_cube

    ds = open_cube(cube)
    return ds, dict(ds.attrs.get("scan") or {})


def _dose_bins(ds: Any) -> np.ndarray | None:
    if "dose" not in ds:
        return None
    dose = np.asarray(ds["dose"].values, dtype=np.float64).ravel()
    labels = np.array([f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">{lo:g}" for lo, hi in zip(DOSE_BINS[:-1],
                                                                                             DOSE_BINS[1:], strict=True)])
    return labels[np.clip(np.digitize(dose, DOSE_BINS[1:-1]), 0, len(labels) - 1)]


def evaluate_classifier(model: str, cube: str, *, device: str = "cpu", report: str | Path | None = None,
                        gradcam: int = 12, progress: bool = False) -> dict[str, Any]:
    """Accuracy, confusion matrix and precision/recall of a space-group classifier on a cube with truth.

    Returns
    -------
    dict
        ``accuracy``, ``per_class`` (precision, recall, F1, support by class
        name), ``confusion`` (counts, rows = true class), ``classes``,
        ``per_material``, ``per_dose`` (when the cube has a ``dose``
        variable), ``patterns_per_second`` of the operator, ``pngs``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from diffraflow.flow.training.datasets import write_pattern_set
    >>> from diffraflow.flow.training.runner import run_job
    >>> from diffraflow.operators.learning.training_data import Variety, plan_patterns
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> plan = plan_patterns(["ni", "fe"], 32, out_shape=(16, 16), variety=Variety(detector_shapes=((20, 20),)))
    >>> cube = write_pattern_set(plan, folder / "c.zarr", progress=False)
    >>> model = run_job({"training": 1, "job": "train_space_group", "epochs": 1, "data": {"source": str(cube)},
    ...                  "params": {"width": 4}}, folder / "m.dfmodel", progress=False).artefact
    >>> report = evaluate_classifier(str(model), str(cube), report=folder / "report", gradcam=2)
    >>> report["classes"], sorted(report["per_material"]), len(report["pngs"])
    ([225, 229], ['fe', 'ni'], 2)
    """
    from diffraflow.operators.learning.classify_space_group import ClassifySpaceGroup
    from diffraflow.operators.learning.evaluation import (
        confusion_matrix,
        grouped_accuracy,
        precision_recall,
        save_confusion_png,
    )

    op = ClassifySpaceGroup(model=model)
    ds, scan = _truth(cube)
    record = op._record()
    classes = [int(c) for c in record["classes"]]
    names = list(record["class_names"])
    phases = {int(p["id"]): p for p in scan.get("phases") or []}
    if "space_group" in ds:
        truth_groups = np.asarray(ds["space_group"].values).ravel()
    elif "true_phase_id" in ds and phases:
        ids = np.asarray(ds["true_phase_id"].values).ravel()
        truth_groups = np.array([phases[int(i)].get("space_group") or -1 for i in ids])
    else:
        raise SchemaError(f"{cube}", "has no space_group or true_phase_id ground truth",
                          "evaluate on a simulated cube (diffraflow simulate ebsd, or a training set)")
    outside = sorted(set(truth_groups.tolist()) - set(classes))
    if outside:
        raise SchemaError(f"{cube}: space groups", f"{outside} are not classes of the model ({classes})",
                          "evaluate on patterns of the model's space groups")
    results, seconds = _run_step(op, cube, device, progress)
    predicted = np.asarray(results["space_group"]).ravel()
    t_index = np.searchsorted(classes, truth_groups)
    p_index = np.searchsorted(classes, predicted)
    matrix = confusion_matrix(t_index, p_index, len(classes))
    scores = precision_recall(matrix)
    correct = predicted == truth_groups
    out: dict[str, Any] = {
        "model": str(op.model), "cube": str(cube), "n": int(len(predicted)), "accuracy": scores["accuracy"],
        "classes": classes, "class_names": names, "confusion": matrix.tolist(),
        "per_class": {names[i]: {"precision": scores["precision"][i], "recall": scores["recall"][i],
                                 "f1": scores["f1"][i], "support": scores["support"][i]} for i in range(len(names))},
        "seconds": seconds, "patterns_per_second": len(predicted) / max(seconds, 1e-9),
        "mean_confidence": float(np.mean(results["confidence"])),
    }
    if "true_phase_id" in ds and phases:
        ids = np.asarray(ds["true_phase_id"].values).ravel()
        material = np.array([phases[int(i)]["name"] for i in ids])
        out["per_material"] = grouped_accuracy(correct, material)
        out["predicted_by_material"] = {m: {str(g): int(((material == m) & (predicted == g)).sum()) for g in classes
                                            if ((material == m) & (predicted == g)).any()}
                                        for m in sorted(set(material.tolist()))}
    bins = _dose_bins(ds)
    if bins is not None:
        out["per_dose"] = grouped_accuracy(correct, bins)
    if report is not None:
        folder = Path(report)
        folder.mkdir(parents=True, exist_ok=True)
        pngs = [str(save_confusion_png(matrix, names, folder / "confusion.png",
                                       f"accuracy {scores['accuracy']:.1%} on {len(predicted)} patterns"))]
        if gradcam > 0:
            pngs.append(str(_grad_cam(op, ds, t_index, classes, names, int(gradcam), folder / "gradcam.png",
                                      device)))
        out["pngs"] = pngs
        (folder / "report.json").write_text(json.dumps(out, indent=1, sort_keys=True))
    return out


def _grad_cam(op: Any, ds: Any, t_index: np.ndarray, classes: list[int], names: list[str], n: int, path: Path,
              device: str) -> Path:
    from diffraflow.operators.learning.classify_space_group import SPACE_GROUP_KIND, load_network
    from diffraflow.operators.learning.evaluation import grad_cam, save_grad_cam_png

    _, net = load_network(op.model, SPACE_GROUP_KIND, "torch-cuda" if device == "cuda" else "torch-cpu")
    frames = np.asarray(ds["patterns"].values)
    flat = frames.reshape(-1, *frames.shape[-2:])
    # The same number of patterns from each class, the first ones of each in scan order.
    per_class = max(1, n // len(classes))
    pick = np.concatenate([np.flatnonzero(t_index == k)[:per_class] for k in range(len(classes))])[:n]
    heat, predicted = grad_cam(net, flat[pick])
    titles = [f"true {names[t_index[i]]}\npred {names[p]}" for i, p in zip(pick, predicted, strict=True)]
    return save_grad_cam_png(flat[pick], heat, titles, path, columns=per_class if per_class > 1 else 6)


def evaluate_orientation(model: str, cube: str, *, device: str = "cpu", report: str | Path | None = None,
                         hough: bool = False, refine: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Orientation errors of a regressor (and of ``hough_index`` with ``hough``) on a cube with ``true_rotation``.

    Returns
    -------
    dict
        ``network`` (and ``hough``): error summaries overall and ``per_dose``,
        ``patterns_per_second``; ``pngs``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from diffraflow.flow.training.datasets import write_pattern_set
    >>> from diffraflow.flow.training.runner import run_job
    >>> from diffraflow.operators.learning.training_data import NI_ORIENTATION_VARIETY, plan_patterns
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> plan = plan_patterns(["ni"], 16, variety=NI_ORIENTATION_VARIETY, master_pattern="auto", block_size=16)
    >>> cube = write_pattern_set(plan, folder / "ni.zarr", progress=False)
    >>> model = run_job({"training": 1, "job": "train_orientation", "epochs": 1, "data": {"source": str(cube)},
    ...                  "params": {"width": 4, "pc_variable": "pc"}}, folder / "m.dfmodel", progress=False).artefact
    >>> report = evaluate_orientation(str(model), str(cube), refine=0)
    >>> sorted(report["network"])[:3], 0 <= report["network"]["mean_deg"] <= 63
    (['mean_confidence', 'mean_deg', 'median_deg'], True)
    """
    from diffraflow.operators.learning.evaluation import (
        error_summary,
        orientation_errors,
        save_error_map_png,
    )
    from diffraflow.operators.learning.predict_orientation import PredictOrientation

    ds, scan = _truth(cube)
    if "true_rotation" not in ds:
        raise SchemaError(f"{cube}", "has no true_rotation ground truth", "evaluate on a simulated cube")
    truth = np.asarray(ds["true_rotation"].values)
    op = PredictOrientation(model=model) if refine is None else PredictOrientation(model=model, refine=int(refine))
    point_group = op._record().get("point_group") or "m-3m"
    bins = _dose_bins(ds)
    out: dict[str, Any] = {"model": str(op.model), "cube": str(cube), "refine": int(op.refine)}
    runs: list[tuple[str, Any]] = [("network", op)]
    if hough:
        from diffraflow.operators.indexing.hough_index import HoughIndex

        runs.append(("hough", HoughIndex(min_confidence=0.0)))
    pngs = []
    for label, step in runs:
        results, seconds = _run_step(step, cube, device if label == "network" else "cpu", progress)
        errors = orientation_errors(np.asarray(results["rotation"]), truth, point_group)
        summary: dict[str, Any] = dict(error_summary(errors))
        summary["patterns_per_second"] = errors.size / max(seconds, 1e-9)
        summary["mean_confidence"] = float(np.mean(results["confidence"]))
        if bins is not None:
            summary["per_dose"] = {b: error_summary(errors.ravel()[bins == b]) for b in sorted(set(bins.tolist()))}
        out[label] = summary
        if report is not None:
            Path(report).mkdir(parents=True, exist_ok=True)
            pngs.append(str(save_error_map_png(errors, Path(report) / f"errors_{label}.png",
                                               f"{label}: mean {summary['mean_deg']:.2f} deg, median "
                                               f"{summary['median_deg']:.2f} deg")))
    if report is not None:
        out["pngs"] = pngs
        (Path(report) / "report.json").write_text(json.dumps(out, indent=1, sort_keys=True))
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``diffraflow evaluate`` (the parsed arguments of :func:`register`'s parser); returns the exit status.

    Examples
    --------
    >>> import argparse
    >>> run(argparse.Namespace(model="/no/such.dfmodel"))
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.StoreNotFoundError: /no/such.dfmodel: no such model artefact (fix: check the path, or train one with 'diffraflow train CONFIG')
    """
    from diffraflow.operators.learning.artefact import load_artefact
    from diffraflow.operators.learning.classify_space_group import DEFAULT_MODEL

    model = DEFAULT_MODEL if args.model == "default" else args.model
    kind = load_artefact(model, weights=False).kind
    progress = not args.quiet
    if kind == "space_group_classifier":
        out = evaluate_classifier(model, args.cube, device=args.device, report=args.report, gradcam=args.gradcam,
                                  progress=progress)
        print(f"accuracy {out['accuracy']:.1%} on {out['n']} patterns ({out['patterns_per_second']:.0f} patterns/s)")
        for name, scores in out["per_class"].items():
            print(f"  {name:12s} precision {scores['precision']:.3f}  recall {scores['recall']:.3f}  "
                  f"n {scores['support']}")
        for material, accuracy in (out.get("per_material") or {}).items():
            print(f"  {material:12s} accuracy {accuracy:.1%}")
    elif kind == "orientation_regressor":
        out = evaluate_orientation(model, args.cube, device=args.device, report=args.report, hough=args.hough,
                                   refine=args.refine, progress=progress)
        for label in ("network", "hough"):
            if label in out:
                s = out[label]
                print(f"{label:8s} mean {s['mean_deg']:.2f} deg, median {s['median_deg']:.2f} deg, within 2 deg "
                      f"{s['within_2deg']:.1%} ({s['patterns_per_second']:.0f} patterns/s)")
    else:
        raise SchemaError(f"{model}", f"is a {kind!r} artefact; evaluate knows space_group_classifier and "
                          "orientation_regressor", "pass a model trained with train_space_group or train_orientation")
    if args.report:
        print(f"report: {Path(args.report) / 'report.json'}", file=sys.stderr)
    return 0
