"""``diffraflow simulate {ebsd,sped} OUT.zarr``: write a synthetic scan cube with its ground truth.

The maths lives in :mod:`diffraflow.operators.simulate`; this module turns arguments into
simulator parameters, streams the frames into a new cube with
:func:`diffraflow.flow.store.create_cube` (bounded memory, written under a temporary name
and renamed when complete) and records metadata and truth.

EBSD truth: ``true_rotation`` (scan_y, scan_x, quat; orix scalar-first
quaternions), ``true_phase_id`` (matching the ``id`` of ``scan.phases``),
``grain_id``, ``background_shape`` and, with ``--clean-patterns``,
``clean_patterns`` (noise-free Kikuchi patterns without background).
SPED truth: ``true_loadings`` (scan_y, scan_x, component) and
``true_factors`` (component, det_y, det_x); frames are Poisson counts with
mean ``dose * loadings @ factors``.

Examples
--------
>>> import tempfile, pathlib
>>> from diffraflow.flow.cli import main
>>> out = pathlib.Path(tempfile.mkdtemp()) / "sped.zarr"
>>> main(["simulate", "sped", str(out), "--scan-shape", "2", "6", "--detector-shape", "16", "16"])  # doctest: +ELLIPSIS
wrote ...sped.zarr: sped 2 x 6 scan, 16 x 16 uint8 frames; ground truth true_loadings, true_factors
0
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from diffraflow.schemas.errors import SchemaError

if TYPE_CHECKING:
    import argparse

    from diffraflow.flow.cli import Subparsers
    from diffraflow.operators.simulate.ebsd import EBSDSimulation
    from diffraflow.operators.simulate.sped import SPEDSimulation
    from tqdm import tqdm

__all__ = ["register", "run_ebsd", "run_sped", "write_ebsd", "write_sped"]

#: Simulator parameter -> command-line option, so errors name what the user typed.
_FLAGS = {
    "scan_shape": "--scan-shape", "det_shape": "--detector-shape", "phases": "--phase", "phase": "--phase",
    "n_grains": "--grains", "orientation_spread_deg": "--spread", "pc": "--pc", "sample_tilt": "--sample-tilt",
    "camera_tilt": "--camera-tilt", "energy_kv": "--energy", "dose": "--dose",
    "background_strength": "--background", "read_noise": "--read-noise", "seed": "--seed",
    "phase_fractions": "--phase-fractions", "master_pattern": "--master-pattern", "boundary": "--boundary",
    "step_size": "--step-size",
}
#: Frame bytes (float32) per batch. The simulators' working set is about ten
#: times this (projection, float64 Poisson means, noise), so 8 MiB keeps a run
#: near 100 MiB above the libraries' own ~400 MiB, whatever the scan size;
#: larger batches are no faster.
_BATCH_BYTES = 8 * 2**20


def register(subparsers: Subparsers) -> None:
    """Add ``simulate ebsd`` and ``simulate sped``.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser(
        "simulate", help="write a synthetic EBSD or SPED scan with ground truth",
        description="Write a synthetic scan cube with its ground truth (for tests, demos and benchmarks).")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True

    ebsd = kinds.add_parser(
        "ebsd", help="EBSD: Voronoi grains, master-pattern projection, background, Poisson and read noise",
        description="Simulate an EBSD scan: Voronoi grains with one orientation each plus a small spread, "
                    "patterns projected from a dynamical (Ni, 20 kV) or kinematical master pattern, a smooth "
                    "background, Poisson noise at a dose and Gaussian read noise.")
    ebsd.add_argument("out", help="output .zarr store")
    ebsd.add_argument("--scan-shape", nargs=2, type=int, default=[20, 20], metavar=("ROWS", "COLS"),
                      help="scan rows and columns (default 20 20)")
    ebsd.add_argument("--detector-shape", nargs=2, type=int, default=[60, 60], metavar=("H", "W"),
                      help="detector height and width in pixels (default 60 60)")
    ebsd.add_argument("--phase", nargs="+", default=["ni"], metavar="NAME",
                      help="phase names from the library (ni, al, cu, austenite, fe, ferrite, ni3al, nial, feal, "
                           "si, cr3si) or .cif paths; ids follow this order (default ni)")
    ebsd.add_argument("--phase-fractions", nargs="+", type=float, default=None, metavar="F",
                      help="probability of each phase per grain (default equal)")
    ebsd.add_argument("--grains", type=int, default=5, help="number of Voronoi grains (default 5)")
    ebsd.add_argument("--spread", type=float, default=0.5, metavar="DEG",
                      help="RMS orientation spread inside a grain, degrees (default 0.5)")
    ebsd.add_argument("--pc", nargs=3, type=float, default=None, metavar=("X", "Y", "Z"),
                      help="projection centre, Bruker convention (default 0.421 0.221 0.505)")
    ebsd.add_argument("--sample-tilt", type=float, default=70.0, help="sample tilt, degrees (default 70)")
    ebsd.add_argument("--camera-tilt", type=float, default=0.0, help="detector tilt, degrees (default 0)")
    ebsd.add_argument("--energy", type=float, default=20.0, metavar="KV", help="beam energy, kV (default 20)")
    dose = ebsd.add_mutually_exclusive_group()
    dose.add_argument("--dose", type=float, default=50.0, metavar="COUNTS",
                      help="mean counts per pixel; lower is noisier (default 50)")
    dose.add_argument("--clean", action="store_true", help="no noise: float32 patterns (Kikuchi + background)")
    ebsd.add_argument("--background", type=float, default=0.5, metavar="STRENGTH",
                      help="smooth background peak relative to the brightest band (default 0.5; 0 for none)")
    ebsd.add_argument("--read-noise", type=float, default=1.0, metavar="COUNTS",
                      help="Gaussian read noise, counts (default 1)")
    ebsd.add_argument("--master-pattern", choices=("auto", "dynamical", "kinematical"), default="auto",
                      help="auto: the shipped dynamical Ni pattern for ni at 20 kV, kinematical otherwise")
    ebsd.add_argument("--step-size", type=float, default=1.0, metavar="UM", help="scan step, um (default 1)")
    ebsd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ebsd.add_argument("--clean-patterns", action="store_true",
                      help="also store noise-free Kikuchi patterns (float32) as ground truth")
    ebsd.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    ebsd.set_defaults(func=run_ebsd)

    sped = kinds.add_parser(
        "sped", help="SPED: two crystals' spot patterns mixed across an inclined boundary",
        description="Simulate a SPED scan across an inclined bicrystal boundary (Gaussian spot arrays mixed "
                    "by thickness fraction, as in Martineau et al. 2019, Figs. 5-6) with Poisson noise.")
    sped.add_argument("out", help="output .zarr store")
    sped.add_argument("--scan-shape", nargs=2, type=int, default=[10, 40], metavar=("ROWS", "COLS"),
                      help="scan rows and columns; the boundary runs along the rows (default 10 40)")
    sped.add_argument("--detector-shape", nargs=2, type=int, default=[64, 64], metavar=("H", "W"),
                      help="detector height and width in pixels (default 64 64)")
    sped_dose = sped.add_mutually_exclusive_group()
    sped_dose.add_argument("--dose", type=float, default=2.0, metavar="COUNTS",
                           help="mean counts per pixel (default 2)")
    sped_dose.add_argument("--clean", action="store_true", help="no noise: float32 patterns")
    sped.add_argument("--shared-spots", action="store_true",
                      help="crystal B shares A's spots along one systematic row (the NMF artefact case, Fig. 6)")
    sped.add_argument("--boundary", nargs=2, type=float, default=[0.35, 0.65], metavar=("START", "STOP"),
                      help="inclined-boundary band as fractions of the scan width (default 0.35 0.65)")
    sped.add_argument("--step-size", type=float, default=2.0, metavar="NM", help="scan step, nm (default 2)")
    sped.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sped.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    sped.set_defaults(func=run_sped)


def _command_line(args: argparse.Namespace) -> str:
    """The command as parsed, every option spelled out: reproduces the store whatever the defaults become."""
    parts = ["diffraflow", "simulate", args.kind, shlex.quote(str(args.out))]
    for name, value in sorted(vars(args).items()):
        if name in ("func", "command", "kind", "out", "debug") or value is None or value is False:
            continue
        if name == "dose" and getattr(args, "clean", False):
            continue  # --dose and --clean exclude each other
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *(shlex.quote(str(v)) for v in value)]
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def _with_flag(exc: SchemaError) -> SchemaError:
    """Rename a simulator field to the command-line option the user typed."""
    flag = _FLAGS.get(exc.where)
    return SchemaError(flag, exc.problem, exc.fix) if flag else exc


def _progress(total: int, desc: str) -> tqdm:
    from tqdm import tqdm

    # Only on a terminal: logs and pipes stay clean.
    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, disable=not sys.stderr.isatty(),
                leave=False)


def _batch_frames(det_shape: tuple[int, int]) -> int:
    return int(min(4096, max(16, _BATCH_BYTES // (4 * det_shape[0] * det_shape[1]))))


def _check_step(step: float) -> None:
    if not step > 0:
        raise SchemaError("--step-size", f"must be positive, got {step}", "e.g. --step-size 1")


def write_ebsd(sim: EBSDSimulation, out: str | os.PathLike[str], *, overwrite: bool = False,
               clean_patterns: bool = False, step_size: float = 1.0, command: str | None = None,
               progress: bool = True) -> Path:
    """Write an :class:`~diffraflow.operators.simulate.ebsd.EBSDSimulation` as a scan cube with its truth.

    Returns
    -------
    pathlib.Path
        The final store path.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from diffraflow.operators.simulate.ebsd import simulate_ebsd
    >>> path = write_ebsd(simulate_ebsd((2, 2), det_shape=(8, 8), seed=0),
    ...                   pathlib.Path(tempfile.mkdtemp()) / "e.zarr", progress=False)
    >>> path.name
    'e.zarr'
    """
    from diffraflow.flow.store import create_cube
    from diffraflow.operators.crystallography.phases import get_phase, phase_to_record

    _check_step(step_size)
    phases = [{**phase_to_record(get_phase(name)), "id": pid} for pid, name in enumerate(sim.phases)]
    attrs: dict[str, Any] = {
        "modality": "ebsd",
        "detector": {"shape": list(sim.det_shape), "pc": list(sim.pc), "pc_convention": "bruker",
                     "sample_tilt": sim.sample_tilt, "camera_tilt": sim.camera_tilt},
        "beam_energy_kv": sim.energy_kv,
        "step_size": {"y": float(step_size), "x": float(step_size), "unit": "um"},
        "phases": phases,
        "provenance": {"source_format": "simulated", "reader": "diffraflow.operators.simulate.ebsd", "command": command},
        "original_metadata": {"simulation": {**sim.parameters, "step_size_um": float(step_size)}},
    }
    with create_cube(out, scan_shape=sim.scan_shape, det_shape=sim.det_shape, dtype=sim.dtype, attrs=attrs,
                     overwrite=overwrite) as writer:
        clean_writer = writer.add_frame_variable("clean_patterns", "float32") if clean_patterns else None
        with _progress(sim.n_frames, "simulate ebsd") if progress else _NullBar() as bar:
            for batch in sim.batches(batch_frames=_batch_frames(sim.det_shape), clean=clean_patterns):
                writer.patterns.append(batch.patterns)
                if clean_writer is not None:
                    assert batch.clean is not None  # batches carry clean frames when asked for them
                    clean_writer.append(batch.clean)
                bar.update(len(batch.patterns))
        writer.write_variable("true_rotation", sim.true_rotation, ("scan_y", "scan_x", "quat"), ground_truth=True,
                              attributes={"description": "unit quaternion (w, x, y, z), orix convention: "
                                                         "crystal to sample, Bunge"})
        writer.write_variable("true_phase_id", sim.true_phase_id, ("scan_y", "scan_x"), ground_truth=True,
                              attributes={"description": "id of scan.phases at each point"})
        writer.write_variable("grain_id", sim.grain_id, ("scan_y", "scan_x"), ground_truth=True,
                              attributes={"description": "Voronoi grain of each point"})
        writer.write_variable("background_shape", sim.background, ("det_y", "det_x"), ground_truth=True,
                              attributes={"description": "shape of the static background (peak 1) before "
                                                         "scaling by background_strength and dose"})
        if clean_writer is not None:
            writer.attrs.ground_truth.append("clean_patterns")
        return writer.finalize()


def write_sped(sim: SPEDSimulation, out: str | os.PathLike[str], *, overwrite: bool = False,
               step_size: float = 2.0, command: str | None = None, progress: bool = True) -> Path:
    """Write a :class:`~diffraflow.operators.simulate.sped.SPEDSimulation` as a scan cube with its truth.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from diffraflow.operators.simulate.sped import simulate_sped
    >>> path = write_sped(simulate_sped((2, 3), det_shape=(16, 16)), pathlib.Path(tempfile.mkdtemp()) / "s.zarr",
    ...                   progress=False)
    >>> path.suffix
    '.zarr'
    """
    from diffraflow.flow.store import create_cube

    _check_step(step_size)
    attrs: dict[str, Any] = {
        "modality": "sped",
        "detector": {"shape": list(sim.det_shape), "sample_tilt": 0.0, "camera_tilt": 0.0,
                     "calibration": sim.calibration},
        "beam_energy_kv": 200.0,
        "step_size": {"y": float(step_size), "x": float(step_size), "unit": "nm"},
        "provenance": {"source_format": "simulated", "reader": "diffraflow.operators.simulate.sped", "command": command},
        "original_metadata": {"simulation": {**sim.parameters, "step_size_nm": float(step_size)}},
    }
    with create_cube(out, scan_shape=sim.scan_shape, det_shape=sim.det_shape, dtype=sim.dtype, attrs=attrs,
                     overwrite=overwrite) as writer:
        with _progress(sim.n_frames, "simulate sped") if progress else _NullBar() as bar:
            for batch in sim.batches(batch_frames=_batch_frames(sim.det_shape)):
                writer.patterns.append(batch.patterns)
                bar.update(len(batch.patterns))
        writer.write_variable("true_loadings", sim.loadings, ("scan_y", "scan_x", "component"), ground_truth=True,
                              attributes={"description": "thickness fraction of crystal A (0) and B (1)"})
        writer.write_variable("true_factors", sim.factors, ("component", "det_y", "det_x"), ground_truth=True,
                              attributes={"description": "pure-crystal patterns; frames ~ Poisson(dose * "
                                                         "loadings @ factors)"})
        return writer.finalize()


class _NullBar:
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        return False

    def update(self, n: int) -> None:
        pass


def _summary(path: Path, sim: EBSDSimulation | SPEDSimulation, modality: str, truth: list[str]) -> str:
    return (f"wrote {path}: {modality} {sim.scan_shape[0]} x {sim.scan_shape[1]} scan, "
            f"{sim.det_shape[0]} x {sim.det_shape[1]} {sim.dtype.name} frames; ground truth {', '.join(truth)}")


def run_ebsd(args: argparse.Namespace) -> int:
    """Run ``diffraflow simulate ebsd``."""
    from diffraflow.flow.store import prepare_output_path
    from diffraflow.operators.simulate.ebsd import DEFAULT_PC, simulate_ebsd

    prepare_output_path(args.out, args.overwrite, kind="scan_cube")  # fail on an existing OUT before any work
    try:
        sim = simulate_ebsd(
            tuple(args.scan_shape), det_shape=tuple(args.detector_shape), phases=tuple(args.phase),
            n_grains=args.grains, orientation_spread_deg=args.spread, pc=tuple(args.pc or DEFAULT_PC),
            sample_tilt=args.sample_tilt, camera_tilt=args.camera_tilt, energy_kv=args.energy,
            dose=None if args.clean else args.dose, background_strength=args.background,
            read_noise=args.read_noise, seed=args.seed, phase_fractions=args.phase_fractions,
            master_pattern=args.master_pattern,
        )
    except SchemaError as exc:
        raise _with_flag(exc) from None
    path = write_ebsd(sim, args.out, overwrite=args.overwrite, clean_patterns=args.clean_patterns,
                      step_size=args.step_size, command=_command_line(args))
    truth = ["true_rotation", "true_phase_id", "grain_id", "background_shape"]
    print(_summary(path, sim, "ebsd", truth + (["clean_patterns"] if args.clean_patterns else [])))
    return 0


def run_sped(args: argparse.Namespace) -> int:
    """Run ``diffraflow simulate sped``."""
    from diffraflow.flow.store import prepare_output_path
    from diffraflow.operators.simulate.sped import simulate_sped

    prepare_output_path(args.out, args.overwrite, kind="scan_cube")
    try:
        sim = simulate_sped(tuple(args.scan_shape), det_shape=tuple(args.detector_shape),
                            dose=None if args.clean else args.dose, shared_spots=args.shared_spots,
                            seed=args.seed, boundary=tuple(args.boundary))
    except SchemaError as exc:
        raise _with_flag(exc) from None
    path = write_sped(sim, args.out, overwrite=args.overwrite, step_size=args.step_size, command=_command_line(args))
    print(_summary(path, sim, "sped", ["true_loadings", "true_factors"]))
    return 0
