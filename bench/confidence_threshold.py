"""Measure the Hough indexer's confidence for right and wrong solutions: the basis of ``MIN_CONFIDENCE``.

Simulates small Ni scans (dynamical master pattern, 60 x 60 detector) at
several doses, indexes each with the right projection centre and with wrong
ones, and compares every solution with the ground truth: *right* is within
5 degrees, *wrong* more than 15 degrees off. It prints the confidence
quantiles of both and, per threshold, the share of right solutions kept and
of wrong ones rejected. ``diffraflow.flow.crystal_map.MIN_CONFIDENCE`` quotes its output
(seeds 1 and 2, 20 x 20 scans, 12 grains)::

    python bench/confidence_threshold.py            # about a minute on 2 cores

Usage: ``python bench/confidence_threshold.py [--scan 20 20] [--seeds 1 2]``.
"""

from __future__ import annotations

import argparse

import numpy as np

DOSES = (3, 5, 10, 20, 50, 200)
#: Offsets added to the true Bruker PC (None: index with (0.5, 0.5, 0.5)).
PC_ERRORS = {"exact": (0, 0, 0), "dx+0.01": (0.01, 0, 0), "dx+0.03": (0.03, 0, 0), "dz+0.05": (0, 0, 0.05),
             "dx-0.12": (-0.121, 0, 0), "dy+0.2": (0, 0.2, 0), "pc 0.5": None}
THRESHOLDS = (0.05, 0.10, 0.20)


def measure(scan: tuple[int, int], seeds: tuple[int, ...]) -> dict[str, np.ndarray]:
    from diffraflow.operators.crystallography import get_phase
    from diffraflow.operators.indexing import HoughIndexer
    from diffraflow.operators.indexing.testing import disorientation_deg
    from diffraflow.operators.simulate.ebsd import simulate_ebsd
    from kikuchipy.detectors import EBSDDetector

    ni = get_phase("ni")
    columns: dict[str, list] = {"dose": [], "pc": [], "error": [], "confidence": []}
    for dose in DOSES:
        for seed in seeds:
            sim = simulate_ebsd(scan, det_shape=(60, 60), n_grains=12, dose=dose, seed=seed)
            patterns = sim.all_patterns()[0].reshape(-1, 60, 60)
            truth = np.asarray(sim.true_rotation).reshape(-1, 4)
            for name, offset in PC_ERRORS.items():
                pc = (0.5, 0.5, 0.5) if offset is None else np.add(sim.pc, offset)
                detector = EBSDDetector((60, 60), pc=pc, sample_tilt=sim.sample_tilt, tilt=sim.camera_tilt)
                out = HoughIndexer([ni], detector, backend="cpu").index_chunk(patterns)
                error = disorientation_deg(out["quaternion"], truth, ni.point_group)
                error[out["phase_id"] < 0] = 180.0
                columns["dose"] += [dose] * len(error)
                columns["pc"] += [name] * len(error)
                columns["error"] += list(error)
                columns["confidence"] += list(out["confidence"])
    return {k: np.asarray(v) for k, v in columns.items()}


def report(m: dict[str, np.ndarray]) -> None:
    right, wrong, conf = m["error"] < 5, m["error"] > 15, m["confidence"]
    print(f"{right.sum()} right (< 5 deg), {wrong.sum()} wrong (> 15 deg) solutions")
    for dose in DOSES:
        d = m["dose"] == dose
        print(f"dose {dose:4d}: right confidence q05/q50 {np.quantile(conf[d & right], [0.05, 0.5]).round(3)}, "
              f"wrong q50/q95 {np.quantile(conf[d & wrong], [0.5, 0.95]).round(3)}")
    for t in THRESHOLDS:
        print(f"threshold {t:.2f}: right kept {np.mean(conf[right] >= t):.3f}, "
              f"wrong rejected {np.mean(conf[wrong] < t):.3f}")
        for dose in DOSES:
            d = m["dose"] == dose
            exact = d & (m["pc"] == "exact")
            print(f"    dose {dose:4d}: right PC kept {np.mean(conf[exact] >= t):.3f}, "
                  f"wrong rejected {np.mean(conf[d & wrong] < t):.3f}")
        for name in ("dx-0.12", "pc 0.5"):
            print(f"    PC {name}: reported indexed {np.mean(conf[m['pc'] == name] >= t):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", nargs=2, type=int, default=(20, 20))
    parser.add_argument("--seeds", nargs="+", type=int, default=(1, 2))
    args = parser.parse_args()
    report(measure(tuple(args.scan), tuple(args.seeds)))


if __name__ == "__main__":
    main()
