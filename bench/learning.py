"""Benchmarks of the learned operators (issue 11): accuracy, orientation error against Hough, speed.

Sections (``--sections``, default all):

``classify``
    the shipped space-group classifier (or ``--classifier``) on simulated
    patterns of the **held-out** materials (never trained on) and of fresh
    patterns of the training materials: accuracy, confusion matrix,
    precision/recall per class, accuracy per material and per dose, the
    B2-vs-BCC confusion, Grad-CAM PNGs; via ``diffraflow evaluate``'s functions.
``orientation``
    the Ni orientation regressor (or ``--regressor``) on noisy 60 x 60 Ni
    scans simulated by ``diffraflow simulate ebsd`` (the shipped dynamical
    master pattern, kikuchipy's Ni geometry) at several doses: network alone,
    network with refinement, and ``hough_index`` on the same patterns.
``architectures``
    parameters, training patterns/s and inference patterns/s of every
    architecture (small CNN, Xception, DenseNet, Swin-tiny) at 60 x 60.
``real``
    the shipped models on the real patterns of ``../shared/data/real``
    (Ni, Cu, Si): predicted space groups; Ni orientations against the
    dictionary-indexing map that ships with them.

Usage::

    python bench/learning.py --work /tmp/df-learning --json /tmp/df-learning/learning.json

Everything is seeded; timings depend on the machine's load (the 2-CPU VM is shared).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOSES = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)


def _print(title: str, value: Any) -> None:
    print(f"\n== {title}\n{json.dumps(value, indent=1, sort_keys=True, default=float)}", flush=True)


def classify(work: Path, model: str, n: int, device: str) -> dict[str, Any]:
    from diffraflow.flow.commands.evaluate import evaluate_classifier
    from diffraflow.flow.store import diffraflow_kind
    from diffraflow.flow.training.datasets import write_pattern_set
    from diffraflow.operators.learning.materials import (
        HELD_OUT_MATERIALS,
        SPACE_GROUPS,
        TRAIN_MATERIALS,
        class_weights,
    )
    from diffraflow.operators.learning.training_data import plan_patterns

    out: dict[str, Any] = {}
    for label, table, seed in (("held_out_materials", HELD_OUT_MATERIALS, 2), ("training_materials", TRAIN_MATERIALS,
                                                                               3)):
        materials = [m for g in SPACE_GROUPS for m in table[g]]
        cube = work / f"sg_{label}_{n}.zarr"
        if not (cube.exists() and diffraflow_kind(cube) == "scan_cube"):
            plan = plan_patterns(materials, n, seed=seed, weights=class_weights(materials))
            write_pattern_set(plan, cube, overwrite=True, description=f"bench/learning.py {label}")
        report = evaluate_classifier(model, str(cube), device=device, report=work / f"report_{label}",
                                     gradcam=12, progress=False)
        names = report["class_names"]
        groups = report["classes"]
        matrix = np.asarray(report["confusion"])
        b2, bcc = groups.index(221), groups.index(229)
        by_material = report.get("predicted_by_material", {})
        report["b2_vs_bcc"] = {
            "feal_as_229": by_material.get("feal", {}).get("229", 0),
            "feal_total": sum(by_material.get("feal", {}).values()),
            "221_predicted_as_229": int(matrix[b2, bcc]), "229_predicted_as_221": int(matrix[bcc, b2]),
        }
        report["class_names"] = names
        out[label] = report
        _print(f"space groups, {label}", {k: report[k] for k in ("accuracy", "per_class", "per_material",
                                                                   "per_dose", "b2_vs_bcc", "patterns_per_second",
                                                                   "pngs") if k in report})
    return out


def orientation(work: Path, model: str, scan: int, refine: int, device: str) -> dict[str, Any]:
    from diffraflow.flow.commands.evaluate import evaluate_orientation
    from diffraflow.flow.commands.simulate import write_ebsd
    from diffraflow.flow.store import diffraflow_kind
    from diffraflow.operators.simulate.ebsd import simulate_ebsd

    out: dict[str, Any] = {}
    for dose in DOSES:
        cube = work / f"ni_{scan}x{scan}_dose{dose:g}.zarr"
        if not (cube.exists() and diffraflow_kind(cube) == "scan_cube"):
            # Many grains, so that many orientations are judged; the default Ni geometry and 60 x 60 detector.
            sim = simulate_ebsd((scan, scan), det_shape=(60, 60), phases=("ni",), n_grains=scan * scan // 4,
                                dose=dose, seed=100 + int(dose * 10))
            write_ebsd(sim, cube, overwrite=True, progress=False)
        plain = evaluate_orientation(model, str(cube), device=device, hough=True, refine=0,
                                     report=work / f"orientation_dose{dose:g}")
        refined = evaluate_orientation(model, str(cube), device=device, refine=refine)
        row = {"network": plain["network"], "network_refined": refined["network"], "hough": plain["hough"]}
        out[f"{dose:g}"] = row
        _print(f"Ni orientation, dose {dose:g}", {k: {m: v[m] for m in ("mean_deg", "median_deg", "within_2deg",
                                                                        "patterns_per_second")}
                                                    for k, v in row.items()})
    return out


def architectures(batch: int = 64) -> dict[str, Any]:
    import torch
    from diffraflow.operators.learning._models import build_model
    from diffraflow.operators.learning._networks import count_parameters

    configs = {
        "small_cnn w8": {"architecture": "small_cnn", "width": 8},
        "small_cnn w16": {"architecture": "small_cnn", "width": 16},
        "xception w8": {"architecture": "xception", "width": 8, "middle_blocks": 2},
        "densenet k8": {"architecture": "densenet", "width": 8, "block_layers": [3, 4, 6]},
        "swin_tiny w24": {"architecture": "swin_tiny", "width": 24, "depths": [2, 2, 2], "heads": [2, 4, 8],
                          "window": 4},
    }
    out = {}
    x = torch.randint(0, 255, (batch, 60, 60), dtype=torch.uint8)
    y = torch.randint(0, 6, (batch,))
    for name, config in configs.items():
        net = build_model({**config, "in_shape": [60, 60], "task": "classify", "n_classes": 6})
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        times = []
        for _ in range(4):
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
        net.eval()
        with torch.inference_mode():
            net(x)
            start = time.perf_counter()
            for _ in range(3):
                net(torch.randint(0, 255, (256, 60, 60), dtype=torch.uint8))
            infer = 3 * 256 / (time.perf_counter() - start)
        out[name] = {"parameters": count_parameters(net), "weights_mib": count_parameters(net) * 4 / 2**20,
                     "train_patterns_per_s": batch / min(times[1:]), "inference_patterns_per_s": infer}
    _print("architectures (60 x 60, CPU)", out)
    return out


def real(classifier: str, regressor: str | None, refine: int) -> dict[str, Any]:
    from diffraflow.flow.testing import run_operator
    from diffraflow.operators.learning.classify_space_group import ClassifySpaceGroup
    from diffraflow.operators.learning.evaluation import orientation_errors
    from diffraflow.operators.learning.predict_orientation import PredictOrientation

    folder = ROOT.parent / "shared" / "data" / "real"
    out: dict[str, Any] = {}
    if not folder.is_dir():
        return {"skipped": f"{folder} is absent"}
    import kikuchipy as kp

    ni = kp.load(str(folder / "ni_small_kikuchipy_h5ebsd.h5"))
    # The Ni scan ships with its static background: the raw frames, and the frames with it subtracted.
    ni_corrected = np.asarray(ni.data, dtype=np.float32) - np.asarray(ni.static_background, dtype=np.float32)
    ni_corrected -= ni_corrected.min()
    datasets = {"ni (225)": np.asarray(ni.data), "ni, static background removed (225)": ni_corrected,
                "cu (225)": np.load(folder / "cu_hkl_2x2_patterns.npy")}
    si = kp.load(str(folder / "si_single_in.h5"))
    datasets["si (227)"] = np.asarray(si.data).reshape(1, 1, *si.data.shape[-2:])
    for name, data in datasets.items():
        res = run_operator(ClassifySpaceGroup(model=classifier), data)
        out[name] = {"predicted": np.asarray(res["space_group"]).ravel().tolist(),
                     "confidence": np.round(np.asarray(res["confidence"]).ravel(), 3).tolist()}
    if regressor:
        pc = np.asarray(ni.detector.pc, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        attrs = {"modality": "ebsd", "beam_energy_kv": 20.0,
                 "detector": {"shape": [60, 60], "pc": pc.tolist(), "pc_convention": "bruker",
                              "sample_tilt": 70.0, "camera_tilt": 0.0}}
        truth = np.asarray(ni.xmap.rotations.data).reshape(3, 3, 4)
        corrected = ni_corrected
        for label, r in (("network", 0), ("network_refined", refine)):
            res = run_operator(PredictOrientation(model=regressor, refine=r), corrected, attrs=attrs)
            errors = orientation_errors(np.asarray(res["rotation"]), truth)
            out[f"ni orientation, {label}"] = {"errors_deg": np.round(errors.ravel(), 2).tolist(),
                                               "mean_deg": float(errors.mean())}
    _print("real patterns", out)
    return out


def main(argv: list[str] | None = None) -> int:
    from diffraflow.operators.learning.classify_space_group import DEFAULT_MODEL
    from diffraflow.operators.learning.predict_orientation import DEFAULT_MODEL as DEFAULT_REGRESSOR

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/df-learning", help="folder for simulated cubes and reports")
    parser.add_argument("--sections", default="classify,orientation,architectures,real")
    parser.add_argument("--classifier", default=DEFAULT_MODEL)
    parser.add_argument("--regressor", default=DEFAULT_REGRESSOR)
    parser.add_argument("--patterns", type=int, default=6144, help="patterns per classification set")
    parser.add_argument("--scan", type=int, default=40, help="side of the Ni scans (scan x scan patterns)")
    parser.add_argument("--refine", type=int, default=6, help="refinement iterations of the refined runs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sections = set(args.sections.split(","))
    results: dict[str, Any] = {"torch_threads": args.threads, "device": args.device}
    regressor = args.regressor if Path(args.regressor).exists() else None
    if "architectures" in sections:
        results["architectures"] = architectures()
    if "classify" in sections:
        results["classify"] = classify(work, args.classifier, args.patterns, args.device)
    if "orientation" in sections and regressor:
        results["orientation"] = orientation(work, regressor, args.scan, args.refine, args.device)
    if "real" in sections:
        results["real"] = real(args.classifier, regressor, args.refine)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, sort_keys=True, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
