"""Restoration of short-exposure patterns, side by side: raw, NLPAR, supervised U-Net, diffusion (direct, DDIM, DDPM), latent DDIM.

Every method sees the *same* simulated Ni scan, in one run, at doses of 10,
4, 2 and 1 counts per pixel, on a 60 x 60 detector and a larger one
(120 x 120); its patterns are then indexed by diffraflow's Hough indexer
(the same indexer, settings and PC for every method) and compared with the
truth.

The scan: orientations of a Voronoi grain map (``simulate_ebsd``: grains of
a few points across, 0.5 degree spread inside each) at PC (0.42, 0.22, 0.50)
Bruker, 70 degree tilt. Patterns: kikuchipy's dynamical Ni master pattern
with the image model of ``bench/hough.py`` (a broad background that both adds
to and multiplies the signal, Poisson noise at the dose), where raw Hough
indexing at 2 counts/px, 60 x 60, finds 57 % within 2 degrees. ``--image
scan`` uses the scan simulator's model instead (additive background, read
noise).

Methods:

``raw``
    the short exposures as they are.
``nlpar``
    PyEBSDIndex's NLPAR, as its documentation runs it: the scan written as an
    EDAX UP2 file, ``NLPAR(file, searchradius=3)``, ``opt_lambda()``,
    ``calcnlpar()``; the averaged patterns read back.
``supervised``
    the supervised U-Net (same backbone, MSE), one network call.
``direct``
    the shipped diffusion model's one-step sampler (the production sampler).
``ddim``
    the same model, DDIM with ``--ddim-steps`` steps.
``ddpm``
    the same model, ancestral DDPM sampling with ``--ddpm-steps`` steps, on the
    first ``--ddpm-frames`` points only (it is the slowest by far).
``latent``
    the latent diffusion model (domain autoencoder), DDIM with ``--ddim-steps`` steps.
``nlpar_direct``
    NLPAR first, then the one-step restorer on the averaged patterns.

Reported per detector, dose and method: fraction of points within 2 degrees
of the truth and median disorientation (m-3m), mean Hough confidence, the
**confidently wrong** rate (points more than 5 degrees off whose confidence
reaches the indexer's threshold, 0.10: wrong orientations a map would show as
indexed), SSIM and PSNR of the (restored) pattern against the clean pattern
(both standardised), and throughput (patterns/s of the restoration alone, on
this machine's CPU, with the batch size).

Models: ``--model NAME=PATH`` for ``default`` (the diffusion model; default:
the shipped one), ``supervised`` and ``latent`` (default: the artefacts
``bench/train_restoration_models.py`` writes into ``/tmp/df-restoration``);
methods whose model is missing are skipped and said so.

Usage::

    python bench/restoration.py                 # full run, replaces its section of bench/RESULTS.md
    python bench/restoration.py --quick         # small smoke run, prints only
    python bench/restoration.py --figures docs  # also the README pictures (PNG)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PC = (0.42, 0.22, 0.50)
WORK = Path("/tmp/df-restoration")
METHODS = ("raw", "nlpar", "supervised", "direct", "ddim", "ddpm", "latent", "nlpar_direct")
CONFIDENT = 0.10  # the indexer's default threshold (operators/indexing/confidence.py)
WRONG_DEG = 5.0
_NLPAR_SCALE = 100.0


def _detector(side: int):
    from kikuchipy.detectors import EBSDDetector

    return EBSDDetector(shape=(side, side), pc=PC, sample_tilt=70.0, tilt=0.0, convention="bruker")


def scan_truth(scan: int, grains: int, seed: int) -> np.ndarray:
    """Orientations ``(scan, scan, 4)`` of a Voronoi grain map (the scan simulator's plan, no patterns)."""
    from diffraflow.operators.simulate.ebsd import simulate_ebsd

    return simulate_ebsd((scan, scan), det_shape=(8, 8), n_grains=grains, seed=seed).true_rotation


def render(truth: np.ndarray, side: int, dose: float, image: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Short exposures and clean patterns ``(n, side, side)`` of the orientations."""
    from diffraflow.operators.indexing.testing import ni_master_pattern, simulate_patterns
    from diffraflow.operators.simulate.master_patterns import get_master_pattern, project_patterns
    from diffraflow.operators.simulate.noise import (
        add_counting_noise,
        expected_counts,
        smooth_background,
        stream_rng,
    )
    from orix.quaternion import Rotation

    q = truth.reshape(-1, 4)
    det = _detector(side)
    clean = project_patterns(get_master_pattern("ni", 20.0), q, det, 20.0)
    if image == "hough":
        frames = simulate_patterns(ni_master_pattern(), Rotation(q), det, dose=dose, seed=seed)
    else:
        background = smooth_background((side, side), centre=((PC[1] + 0.5) / 2 * side, PC[0] * side))
        lam = expected_counts(clean + 0.5 * background, dose)
        frames = add_counting_noise(lam, stream_rng(seed, 5), 1.0, "uint16").astype(np.float32)
    return frames.astype(np.float32), clean


def run_nlpar(frames: np.ndarray, scan: int) -> tuple[np.ndarray, float]:
    """PyEBSDIndex NLPAR on the scan (through a UP2 file, as its documentation runs it); patterns and seconds."""
    import contextlib
    import io

    from pyebsdindex import ebsd_pattern
    from pyebsdindex.nlpar import NLPAR

    side = frames.shape[-1]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "scan.up2")
        with open(path, "wb") as fh:  # EDAX UP2 version 3: header, then uint16 patterns in scan order
            np.array([3, side, frames.shape[-2], 42], np.uint32).tofile(fh)
            np.array([0], np.uint8).tofile(fh)
            np.array([scan, scan], np.uint32).tofile(fh)
            np.array([0], np.uint8).tofile(fh)
            np.array([1.0, 1.0], np.float64).tofile(fh)
            # Counts times 100: NLPAR writes its averages back as integers, and at 1-2 counts/px rounding
            # them would throw most of its gain away (its weights do not depend on the scale).
            np.clip(np.rint(frames * _NLPAR_SCALE), 0, 65535).astype(np.uint16).tofile(fh)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            nlpar = NLPAR(path, searchradius=3)
            nlpar.opt_lambda(verbose=0)
            out = nlpar.calcnlpar(verbose=0)
        seconds = time.perf_counter() - start
        data = ebsd_pattern.get_pattern_file_obj(out).read_data(returnArrayOnly=True, convertToFloat=True)
        data = data[0] if isinstance(data, tuple) else data
    return np.asarray(data, dtype=np.float32).reshape(frames.shape) / _NLPAR_SCALE, seconds


def score(indexer, patterns: np.ndarray, truth: np.ndarray, clean: np.ndarray, sym) -> dict:
    """Indexing accuracy, confidence, confidently wrong rate and image quality of patterns."""
    from diffraflow.operators.indexing.testing import disorientation_deg
    from diffraflow.operators.restoration.metrics import psnr, ssim

    out = indexer.index_chunk(np.ascontiguousarray(patterns, dtype=np.float32))
    error = disorientation_deg(out["quaternion"], truth, sym)
    conf = out["confidence"]
    return {"within2": float(np.mean(error < 2)), "median_deg": float(np.median(error)),
            "confidence": float(np.mean(conf)),
            "confidently_wrong": float(np.mean((error > WRONG_DEG) & (conf >= CONFIDENT))),
            "ssim": float(np.mean(ssim(patterns, clean))), "psnr": float(np.mean(psnr(patterns, clean))),
            "n": int(len(patterns)), "quaternion": out["quaternion"]}


class Trial:
    """One detector and dose: scores every method's patterns against the same truth."""

    def __init__(self, indexer, truth: np.ndarray, clean: np.ndarray, symmetry, label: str) -> None:
        self.indexer, self.truth, self.clean, self.symmetry, self.label = indexer, truth, clean, symmetry, label
        self.results: dict[str, dict] = {}
        self.examples: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def record(self, method: str, patterns: np.ndarray, seconds: float | None, note: str = "",
               subset: slice = slice(None)) -> None:
        r = score(self.indexer, patterns, self.truth[subset], self.clean[subset], self.symmetry)
        r["patterns_per_s"] = None if seconds is None else len(patterns) / max(seconds, 1e-9)
        r["note"] = note
        self.examples[method] = (patterns[:4], r.pop("quaternion"))
        self.results[method] = r
        print(f"{self.label} {method:>10}: <2° {r['within2']:.3f}  median {r['median_deg']:.2f}°  conf "
              f"{r['confidence']:.3f}  wrong+conf {r['confidently_wrong']:.3f}  SSIM {r['ssim']:.3f}  PSNR "
              f"{r['psnr']:.1f}" + (f"  {r['patterns_per_s']:.1f} pat/s" if seconds else "")
              + (f"  ({note})" if note else ""), flush=True)


def load_models(specs: list[str]) -> dict:
    from diffraflow.operators.restoration.models import load_restorer
    from diffraflow.operators.restoration.restore_patterns import default_model_path

    paths = {"default": default_model_path(), "supervised": str(WORK / "supervised" / "model.dfmodel"),
             "latent": str(WORK / "latent" / "model.dfmodel")}
    for spec in specs:
        name, _, path = spec.partition("=")
        paths[name] = path
    models = {}
    for name, path in paths.items():
        if Path(path).exists():
            models[name] = (load_restorer(path), path)
        else:
            print(f"model {name}: {path} not found; its methods are skipped", flush=True)
    return models


_THREADS = [1]


def restore(model, frames: np.ndarray, sampler: str, steps: int | None, batch: int) -> tuple[np.ndarray, float]:
    import torch

    # Set again before every timing: the Hough indexer's numba OpenMP pool resets torch's thread count.
    torch.set_num_threads(_THREADS[0])
    start = time.perf_counter()
    out = model.restore(frames, sampler, steps, seed=0, batch=batch).numpy()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (no RESULTS.md)")
    ap.add_argument("--scan", type=int, default=24, help="scan side (points); default 24 (576 patterns)")
    ap.add_argument("--grains", type=int, default=30, help="Voronoi grains of the scan")
    ap.add_argument("--doses", type=float, nargs="+", default=[10, 4, 2, 1])
    ap.add_argument("--detectors", type=int, nargs="+", default=[60, 120])
    ap.add_argument("--image", choices=("hough", "scan"), default="hough", help="image model (see above)")
    ap.add_argument("--ddim-steps", type=int, default=10)
    ap.add_argument("--ddpm-steps", type=int, default=100)
    ap.add_argument("--ddpm-frames", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256, help="frames per network call")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--sampler-doses", type=float, nargs="+", default=None,
                    help="run the multi-step samplers (ddim, ddpm, latent) only at these doses (default: every dose)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                    help="default, supervised or latent model artefact")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--figures", type=Path, default=None, help="write the README pictures (PNG) here")
    ap.add_argument("--no-append", action="store_true", help="do not write bench/RESULTS.md")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch CPU threads (default: every CPU; 1 while other jobs share the machine)")
    args = ap.parse_args(argv)
    if args.quick:
        args.scan, args.grains, args.doses, args.detectors = 8, 6, [2], [60]
        args.ddpm_frames, args.ddpm_steps = 8, 10

    import torch
    from diffraflow.operators.crystallography import get_phase
    from diffraflow.operators.indexing import HoughIndexer

    _THREADS[0] = max(1, args.threads)
    torch.set_num_threads(_THREADS[0])
    phase = get_phase("ni")
    models = load_models(args.model)
    truth = scan_truth(args.scan, args.grains, args.seed)
    q_truth = truth.reshape(-1, 4)
    rows, examples = [], {}
    for side in args.detectors:
        indexer = HoughIndexer([phase], _detector(side), backend="cpu")
        for dose in args.doses:
            frames, clean = render(truth, side, dose, args.image, args.seed)
            indexer.index_chunk(frames[:8])  # compile and warm up outside the timings
            trial = Trial(indexer, q_truth, clean, phase.point_group, f"{side}x{side} dose {dose:g}")
            record = trial.record
            for method in args.methods:
                if method in ("ddim", "ddpm", "latent") and args.sampler_doses and dose not in args.sampler_doses:
                    continue
                if method == "raw":
                    record("raw", frames, None)
                elif method == "nlpar":
                    out, seconds = run_nlpar(frames, args.scan)
                    record("nlpar", out, seconds, "PyEBSDIndex NLPAR, search radius 3, auto lambda")
                elif method == "nlpar_direct" and "default" in models:
                    averaged, nlpar_seconds = run_nlpar(frames, args.scan)
                    out, seconds = restore(models["default"][0], averaged, "direct", None, args.batch)
                    record(method, out, nlpar_seconds + seconds, "NLPAR, then the one-step restorer")
                elif method == "supervised" and "supervised" in models:
                    record(method, *restore(models["supervised"][0], frames, "direct", None, args.batch))
                elif method == "direct" and "default" in models:
                    record(method, *restore(models["default"][0], frames, "direct", None, args.batch))
                elif method == "ddim" and "default" in models:
                    record(method, *restore(models["default"][0], frames, "ddim", args.ddim_steps, args.batch),
                           f"{args.ddim_steps} steps")
                elif method == "ddpm" and "default" in models:
                    k = min(args.ddpm_frames, len(frames))
                    out, seconds = restore(models["default"][0], frames[:k], "ddpm", args.ddpm_steps, args.batch)
                    record(method, out, seconds, f"{args.ddpm_steps} steps, first {k} points", subset=slice(0, k))
                elif method == "latent" and "latent" in models:
                    record(method, *restore(models["latent"][0], frames, "ddim", args.ddim_steps, args.batch),
                           f"DDIM {args.ddim_steps} steps")
            rows.append({"detector": f"{side}x{side}", "dose": dose, "results": trial.results})
            examples.update({(side, dose, m): v for m, v in trial.examples.items()})
            if args.figures is not None and side == min(args.detectors) and dose == 2:
                write_figures(args.figures, frames, clean, examples, side, dose, truth)
    meta = {"date": _dt.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "torch": torch.__version__.split("+")[0], "scan": args.scan, "grains": args.grains,
            "image": args.image, "batch": args.batch, "threads": _THREADS[0],
            "models": {k: {"path": v[1], "sha256": load_hash(v[1]), "parameters": v[0].record.get("parameters")}
                       for k, v in models.items()}}
    table = markdown(rows, meta, args)
    print()
    print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if not args.quick and not args.no_append:
        cmd = " ".join(["python bench/restoration.py", *(sys.argv[1:] if argv is None else argv)])
        append(table, cmd, meta)
    return 0


def load_hash(path: str) -> str:
    from diffraflow.operators.learning.artefact import artefact_hash

    return artefact_hash(path)[:12]


def markdown(rows: list[dict], meta: dict, args) -> str:
    lines = ["| detector | dose | method | <2° | median ° | confidence | confidently wrong | SSIM | PSNR dB | "
             "restore pat/s |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        for method, r in row["results"].items():
            speed = "" if r["patterns_per_s"] is None else f"{r['patterns_per_s']:.1f}"
            name = method + (f" ({r['note']})" if r["note"] and method in ("ddim", "ddpm", "latent") else "")
            lines.append(f"| {row['detector']} | {row['dose']:g} | {name} | {r['within2']:.3f} | "
                         f"{r['median_deg']:.2f} | {r['confidence']:.3f} | {r['confidently_wrong']:.3f} | "
                         f"{r['ssim']:.3f} | {r['psnr']:.1f} | {speed} |")
    return "\n".join(lines)


SECTION = "## Restoration (issue 12)"


def append(table: str, cmd: str, meta: dict) -> None:
    """Replace (or add) this benchmark's own section of bench/RESULTS.md; other sections are left alone."""
    path = ROOT / "bench" / "RESULTS.md"
    models = "; ".join(f"{k}: `{Path(v['path']).name}` sha256 {v['sha256']}, {v['parameters']} parameters"
                       for k, v in meta["models"].items())
    section = (f"{SECTION}\n\n"
               f"See `bench/restoration.py` for the scan ({meta['scan']} x {meta['scan']} points, "
               f"{meta['grains']} grains), the image model (`{meta['image']}`) and each method. Throughput is the "
               f"restoration alone on {meta['machine']} (torch {meta['torch']} CPU, {meta['threads']} threads, "
               f"batch {meta['batch']}); NLPAR's includes its lambda optimisation. GPU throughput: unmeasured "
               f"(no GPU lent). Models: {models}.\n\n"
               f"Command: `{cmd}` ({meta['date']})\n\n" + table + "\n")
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    marker = f"\n{SECTION}\n"
    start = text.find(marker)
    if start >= 0:  # replace only our own section
        end = text.find("\n## ", start + 1)
        text = text[:start] + "\n" + section + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def write_figures(folder: Path, frames: np.ndarray, clean: np.ndarray, examples: dict, side: int, dose: float,
                  truth: np.ndarray) -> None:
    """Before/after pictures: example patterns (short exposure, NLPAR, restored, clean) and IPF maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from diffraflow.operators.crystallography import get_phase
    from orix.plot import IPFColorKeyTSL
    from orix.quaternion import Orientation

    folder.mkdir(parents=True, exist_ok=True)
    shown = [m for m in ("raw", "nlpar", "direct", "ddim") if (side, dose, m) in examples]
    fig, axes = plt.subplots(len(shown) + 1, 4, figsize=(6, 1.6 * (len(shown) + 1)))
    labels = {"raw": f"{dose:g} counts/px", "nlpar": "NLPAR", "direct": "restored (1 step)",
              "ddim": "restored (DDIM)"}
    for r, method in enumerate([*shown, "clean"]):
        for c in range(4):
            image = clean[c] if method == "clean" else examples[(side, dose, method)][0][c]
            axes[r, c].imshow(image, cmap="gray")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(labels.get(method, method), fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "restoration_patterns.png", dpi=80)
    plt.close(fig)
    sym = get_phase("ni").point_group
    key = IPFColorKeyTSL(sym)
    maps = [("truth", truth.reshape(-1, 4))] + [(labels.get(m, m), examples[(side, dose, m)][1]) for m in shown]
    fig, axes = plt.subplots(1, len(maps), figsize=(1.8 * len(maps), 2.0))
    n = truth.shape[0]
    for ax, (title, q) in zip(axes, maps, strict=True):
        rgb = key.orientation2color(Orientation(q, symmetry=sym)).reshape(n, n, 3)
        ax.imshow(np.clip(rgb, 0, 1))
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(folder / "restoration_ipf.png", dpi=80)
    plt.close(fig)
    print(f"pictures: {folder / 'restoration_patterns.png'}, {folder / 'restoration_ipf.png'}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
