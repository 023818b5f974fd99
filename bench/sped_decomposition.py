"""The seed paper's bicrystal study (Martineau et al. 2019, Figs. 5-6), reproduced with every decomposition here.

Run from the repository root::

    python bench/sped_decomposition.py --out /tmp/sped_study            # all cases, table + PNG panels
    python bench/sped_decomposition.py --out /tmp/s --cases separate/clean

Models (line scans across an inclined boundary; crystal A's thickness
fraction falls linearly from 1 to 0 across the middle band):

``separate``  ``diffraflow simulate sped``: the two crystals share only the
              direct beam (Fig. 5).
``shared``    ``diffraflow simulate sped --shared-spots``: crystal B also
              carries A's spots along one systematic row.
``subset``    Fig. 6's extreme case, built here from A's pattern: B is A's
              systematic row and direct beam only, so B has no reflection of
              its own.

Conditions: ``clean`` (noise-free), ``poisson`` (counts at ``--dose`` per
pixel), ``poisson+bg`` (plus a diffuse background whose strength varies
along ``scan_y``, as a support film would: a third true component).

Methods, all in one pipeline per case (they share the passes over the
data): ``svd``, ``ica``, ``nmf`` (Frobenius, NNDSVD start), ``nmf_kl``,
``nmf_sum1`` (sum-to-one loadings), ``nmf_vca`` and ``nmf_kl_vca`` (started
from the purest frames found by VCA), ``fcm`` (fuzzy c-means), ``gk``
(Gustafson-Kessel), ``fcm_hc`` (high contrast, 0.5), ``vca``.

Measures (components matched to the truth by loading correlation):

``r_load``    the worst crystal's correlation of loading map and true
              thickness fraction (signed for the non-negative methods;
              for ``svd`` and ``ica``, the absolute value for the
              crystal's best-matching component, which may serve both
              crystals since their fractions sum to one);
``r_fac``     the same for factor and true pattern;
``pure``      mean of the dominant loading over the pure-crystal columns,
              for methods whose loadings are fractions (truth: 1);
``width``     10-90 % width of crystal A's loading profile over the true
              width (< 1: the narrowed boundary of the seed's Fig. 5d);
``dip``       the deepest pseudo-subtractive hole: a factor's value at the
              other crystal's own spots below its own background level,
              % of the factor's peak (the seed's "white spots");
``shared``    relative error of the share of a crystal's intensity that
              lies on the shared spots (0: shared reflections split
              faithfully; the seed's Fig. 6b puts them all in one factor);
``bg_bump``   background component's excess loading inside the boundary
              band over the pure regions (the seed's Fig. 4c spurious peak).

Writes ``table.md``, ``results.json`` and per case ``<case>_panels.png``
(truth, NMF, NMF sum-to-one, NMF from VCA, fuzzy c-means, high contrast,
VCA: factors and loading profiles, dashed: the truth) and ``<case>_scatter.png`` (SVD
loadings with fuzzy-membership contours, Fig. 6d).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import permutations
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffraflow.flow.cli import main as cli  # noqa: E402
from diffraflow.flow.engine import run_pipeline  # noqa: E402
from diffraflow.flow.pipeline import Pipeline, Step  # noqa: E402
from diffraflow.operators.decomposition.fuzzy_cmeans import FuzzyCMeans  # noqa: E402
from diffraflow.operators.decomposition.ica import ICA  # noqa: E402
from diffraflow.operators.decomposition.nmf import NMF  # noqa: E402
from diffraflow.operators.decomposition.svd import SVD  # noqa: E402
from diffraflow.operators.decomposition.vca import VCA  # noqa: E402

MODELS = ("separate", "shared", "subset")
CONDITIONS = ("clean", "poisson", "poisson+bg")
FRACTIONS = ("nmf", "nmf_kl", "nmf_sum1", "nmf_vca", "nmf_kl_vca", "fcm", "gk", "fcm_hc", "vca")  # loadings meant as fractions
SIGNED = ("svd", "ica")


# -- models ----------------------------------------------------------------------------------------
def simulate(model: str, condition: str, args, work: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames ``(sy, sx, h, w)``, true loadings ``(sy, sx, k)``, true factors ``(k, h, w)``."""
    import zarr

    scan, det = [str(v) for v in args.scan], [str(v) for v in args.det]
    cube = work / f"{model}.zarr"
    if not cube.exists():
        argv = ["simulate", "sped", str(cube), "--scan-shape", *scan, "--detector-shape", *det, "--clean",
                "--seed", str(args.seed)]
        if model == "shared":
            argv.append("--shared-spots")
        assert cli(argv) == 0
    group = zarr.open_group(str(cube), mode="r")
    loadings = np.asarray(group["true_loadings"][...], np.float64)
    factors = np.asarray(group["true_factors"][...], np.float64)
    if model == "subset":
        # B keeps only A's systematic row through the beam (within 3 spot widths of the centre row)
        h = factors.shape[1]
        rows = np.abs(np.arange(h) - (h - 1) / 2.0) <= 3 * 1.2
        subset = factors[0] * rows[:, None]
        factors = np.stack([factors[0], subset / subset.mean()])
    rng = np.random.default_rng(args.seed + 1)
    if condition == "poisson+bg":
        h, w = factors.shape[1:]
        yy, xx = np.mgrid[0:h, 0:w]
        r2 = (yy - (h - 1) / 2.0) ** 2 + (xx - (w - 1) / 2.0) ** 2
        halo = np.exp(-r2 / (2 * (h / 3.0) ** 2))
        halo = 0.5 * halo / halo.mean()  # half the mean intensity of a crystal
        film = np.linspace(0.2, 1.0, loadings.shape[0])[:, None, None] * np.ones(loadings.shape[:2] + (1,))
        loadings = np.concatenate([loadings, film], axis=2)
        factors = np.concatenate([factors, halo[None]], axis=0)
    mix = np.einsum("yxk,khw->yxhw", loadings, factors)
    frames = mix.astype(np.float32) if condition == "clean" else rng.poisson(args.dose * mix).astype(np.uint16)
    return frames, loadings, factors


def pipeline(k: int, seed: int) -> Pipeline:
    """Every method of the study as one pipeline, so that they share the passes over the data."""
    # randomized SVDs: nine Gram matrices of 4096 pixels would hold 9 x 128 MiB per partial
    svd = {"solver": "randomized", "seed": seed}
    steps = [
        Step(SVD(n_components=k + 3, **svd), name="svd"),
        Step(ICA(n_components=k, **svd), name="ica"),
        Step(NMF(n_components=k, **svd), name="nmf"),
        Step(NMF(n_components=k, loss="kullback-leibler", **svd), name="nmf_kl"),
        Step(NMF(n_components=k, sum_to_one=True, **svd), name="nmf_sum1"),
        Step(NMF(n_components=k, init="vca", **svd), name="nmf_vca"),
        Step(NMF(n_components=k, loss="kullback-leibler", init="vca", **svd), name="nmf_kl_vca"),
        Step(FuzzyCMeans(n_clusters=k, **svd), name="fcm"),
        Step(FuzzyCMeans(n_clusters=k, variant="gk", **svd), name="gk"),
        Step(FuzzyCMeans(n_clusters=k, contrast=0.5, **svd), name="fcm_hc"),
        Step(VCA(n_components=k, **svd), name="vca"),
    ]
    return Pipeline(steps)


# -- measures --------------------------------------------------------------------------------------
def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays (0 when either is constant)."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0


def match(loadings: np.ndarray, truth: np.ndarray, signed: bool) -> list[int]:
    """For each true component, the recovered component that best matches it (a permutation)."""
    k_true, k = truth.shape[-1], loadings.shape[-1]
    c = np.array([[_corr(loadings[..., i], truth[..., j]) for j in range(k_true)] for i in range(k)])
    score = np.abs(c) if signed else c
    best = max(permutations(range(k), k_true), key=lambda p: sum(score[p[j], j] for j in range(k_true)))
    return list(best)


def _width(profile: np.ndarray) -> float:
    """Columns between the last >= 0.9 and the first <= 0.1 of a falling profile (interpolated)."""
    x = np.arange(profile.size, dtype=np.float64)
    hi = np.interp(0.9, profile[::-1], x[::-1])
    lo = np.interp(0.1, profile[::-1], x[::-1])
    return float(lo - hi)


def measures(name: str, out: dict, truth_l: np.ndarray, truth_f: np.ndarray, model: str) -> dict:
    """The table's measures of one method against the truth (see the module docs)."""
    loadings = np.asarray(out[f"{name}/loadings"], np.float64)
    factors = np.asarray(out[f"{name}/factors"], np.float64)
    signed = name in SIGNED
    if signed:
        # thickness fractions sum to one, so after centring one signed component can follow both crystals
        # (B = 1 - A): ICA then puts the ramp in one source and noise in the other, and a one-to-one match
        # would score that noise. Each crystal takes its best component instead.
        c = np.abs([[_corr(loadings[..., i], truth_l[..., j]) for j in range(truth_l.shape[-1])]
                    for i in range(loadings.shape[-1])])
        order = [int(np.argmax(c[:, j])) for j in range(truth_l.shape[-1])]
    else:
        order = match(loadings, truth_l, signed)
    crystals = (0, 1)
    r_load = [_corr(loadings[..., order[j]], truth_l[..., j]) for j in crystals]
    r_fac = [_corr(factors[order[j]], truth_f[j]) for j in crystals]
    if signed:
        r_load, r_fac = [abs(v) for v in r_load], [abs(v) for v in r_fac]
    row = {"r_load": min(r_load), "r_fac": min(r_fac)}
    pure_a = truth_l[..., 0] == 1.0
    pure_b = truth_l[..., 1] == 1.0
    if name in FRACTIONS:
        la, lb = loadings[..., order[0]], loadings[..., order[1]]
        row["pure"] = float(np.mean(np.r_[la[pure_a], lb[pure_b]]))
        true_w = _width(truth_l[..., 0].mean(axis=0))
        row["width"] = _width(la.mean(axis=0) / max(la[pure_a].mean(), 1e-12)) / true_w if true_w > 0 else np.nan
    # pseudo-subtractive dips: a factor at the other crystal's own spots, below its own background level
    spots = [truth_f[j] > 0.2 * truth_f[j].max() for j in crystals]
    quiet = ~(spots[0] | spots[1])
    dips = []
    for j in crystals:
        own = factors[order[j]]
        other_only = spots[1 - j] & ~spots[j]
        if other_only.any() and name not in SIGNED:
            level = np.median(own[quiet])
            dips.append(100.0 * (level - own[other_only].min()) / max(own.max(), 1e-12))
    row["dip"] = max(dips) if dips else np.nan
    if model != "separate" and not signed:
        shared = spots[0] & spots[1]
        errs = []
        for j in crystals:
            true_share = truth_f[j][shared].sum() / truth_f[j][spots[j]].sum()
            own = np.clip(factors[order[j]], 0, None)
            errs.append(abs(own[shared].sum() / max(own[spots[j]].sum(), 1e-12) - true_share) / true_share)
        row["shared"] = max(errs)
    if truth_l.shape[-1] > 2 and name in FRACTIONS:
        band = (truth_l[..., 0] > 0.05) & (truth_l[..., 0] < 0.95)
        bg = loadings[..., order[2]] / max(loadings[..., order[2]].max(), 1e-12)
        # compare each boundary point with the pure points of its own scan row (the film varies along y)
        excess = [bg[y][band[y]].mean() - bg[y][~band[y]].mean() for y in range(bg.shape[0]) if band[y].any()]
        row["bg_bump"] = float(np.mean(excess))
    return row


# -- pictures --------------------------------------------------------------------------------------
PANEL_METHODS = (("truth", "truth"), ("nmf", "NMF"), ("nmf_sum1", "NMF sum-to-one"), ("nmf_vca", "NMF from VCA"),
                 ("fcm", "fuzzy c-means"), ("fcm_hc", "high-contrast c-means"), ("vca", "VCA"))


def panels(case: str, out: dict, truth_l: np.ndarray, truth_f: np.ndarray, path: Path) -> None:
    """Factors and mean loading profiles of the truth and each pictured method (the seed's Figs. 5-6)."""
    from matplotlib.figure import Figure

    k = truth_f.shape[0]
    fig = Figure(figsize=(2.2 * (k + 1.6), 2.0 * len(PANEL_METHODS)), dpi=90, layout="constrained")
    fig.suptitle(case, fontsize=11)
    grid = fig.add_gridspec(len(PANEL_METHODS), k + 1, width_ratios=[1] * k + [1.8])
    x = np.arange(truth_l.shape[1])
    for row, (name, label) in enumerate(PANEL_METHODS):
        if name == "truth":
            factors, loadings, order = truth_f, truth_l, list(range(k))
        else:
            factors = np.asarray(out[f"{name}/factors"], np.float64)
            loadings = np.asarray(out[f"{name}/loadings"], np.float64)
            order = match(loadings, truth_l, False)
        for j in range(k):
            ax = fig.add_subplot(grid[row, j])
            image = factors[order[j]]
            ax.imshow(image, cmap="inferno", vmin=min(0.0, float(image.min())), vmax=float(image.max()))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(["crystal A", "crystal B", "background"][j], fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
        ax = fig.add_subplot(grid[row, k])
        for j in range(k):
            ax.plot(x, truth_l[..., j].mean(axis=0), "--", color=f"C{j}", lw=0.8)
            ax.plot(x, loadings[..., order[j]].mean(axis=0), "-", color=f"C{j}", lw=1.4)
        ax.set_ylim(-0.05, 1.1 if name != "truth" else 1.05)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    fig.savefig(path)


def scatter(case: str, out: dict, path: Path) -> None:
    """SVD loadings with fuzzy c-means membership contours (the seed's Fig. 6d)."""
    from diffraflow.flow.decomposition_plots import plot_loading_scatter

    plot_loading_scatter(out["fcm/svd_loadings"], path, memberships=out["fcm/memberships"],
                         centres=out["fcm/centres"], norms=out["fcm/norm_matrices"],
                         title=f"{case}: SVD loadings, fuzzy c-means memberships", overwrite=True)


# -- main ------------------------------------------------------------------------------------------
def fmt(value) -> str:
    """A table cell: three decimals, or a dash for a missing value."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    """Run every case, write ``table.md``, ``results.json`` and the PNGs, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for table.md, results.json and PNGs")
    parser.add_argument("--scan", type=int, nargs=2, default=[8, 60], metavar=("ROWS", "COLS"))
    parser.add_argument("--det", type=int, nargs=2, default=[64, 64], metavar=("H", "W"))
    parser.add_argument("--dose", type=float, default=2.0, help="mean counts per pixel of the noisy cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", nargs="*", default=None, help="model/condition pairs (default: all)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "cubes"
    work.mkdir(exist_ok=True)
    cases = args.cases or [f"{m}/{c}" for m in MODELS for c in CONDITIONS]
    results: dict[str, dict] = {}
    lines = ["| case | method | r_load | r_fac | pure | width | dip % | shared | bg_bump |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case in cases:
        model, condition = case.split("/")
        frames, truth_l, truth_f = simulate(model, condition, args, work)
        k = truth_f.shape[0]
        t0 = time.perf_counter()
        out = run_pipeline(pipeline(k, args.seed), frames, chunk_frames=args.scan[1] * 2).results
        seconds = time.perf_counter() - t0
        results[case] = {"seconds": seconds, "k": k, "methods": {}}
        for name in ("svd", "ica", *FRACTIONS):
            if name == "svd":
                sub = {"svd/loadings": out["svd/loadings"][..., :k], "svd/factors": out["svd/factors"][:k]}
                row = measures(name, sub, truth_l, truth_f, model)
                row["scree"] = [float(v) for v in out["svd/explained_variance_ratio"]]
            else:
                row = measures(name, out, truth_l, truth_f, model)
            results[case]["methods"][name] = row
            lines.append(f"| {case} | {name} | " + " | ".join(fmt(row.get(c)) for c in
                         ("r_load", "r_fac", "pure", "width", "dip", "shared", "bg_bump")) + " |")
        slug = case.replace("/", "_").replace("+", "_")
        panels(case, out, truth_l, truth_f, args.out / f"{slug}_panels.png")
        scatter(case, out, args.out / f"{slug}_scatter.png")
        print(f"{case}: {seconds:.1f} s", file=sys.stderr)
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
