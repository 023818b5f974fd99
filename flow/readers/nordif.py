"""NORDIF raw pattern files ``Pattern.dat`` with their ``Setting.txt``.

A ``.dat`` file is headerless: uint8 patterns back to back in scan order.
Scan and pattern shapes, beam energy, tilts, exposure and step size come
from ``Setting.txt`` in the same folder (tab-separated ``key value unit``
lines in ``[Section]`` blocks); without it ``--scan-shape`` is needed and a
square detector is assumed (or ``--det-shape``). Whichever gives the
sizes, the file must hold exactly that many patterns: a longer file is
refused like a shorter one, with the scan shapes that would fit. Values
``Setting.txt`` does not give stay unknown. A
``Background acquisition pattern.bmp`` beside the file becomes the static
background.

Examples
--------
>>> parse_settings("[Area]\\nStep size\\t1.500\\tum\\nNumber of samples\\t3x3\\t#")["Area"]["Number of samples"]
('3x3', '#')
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
from diffraflow.flow.readers.base import Probe, Reader, Variable, batched, check_frames_fill_file
from diffraflow.flow.readers.rawio import read_records
from diffraflow.schemas.cube import normalise_length_unit

__all__ = ["NordifReader", "parse_settings"]


def parse_settings(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """``{section: {key: (value, unit)}}`` from a NORDIF ``Setting.txt``.

    Examples
    --------
    >>> parse_settings("[Microscope]\\nAccelerating voltage\\t20\\tkV")["Microscope"]["Accelerating voltage"]
    ('20', 'kV')
    """
    out: dict[str, dict[str, tuple[str, str]]] = {}
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        match = re.fullmatch(r"\[(.+)\]", stripped)
        if match:
            section = match.group(1)
            out.setdefault(section, {})
            continue
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].strip():
            out.setdefault(section, {})[parts[0].strip()] = (parts[1].strip(), parts[2].strip() if len(parts) > 2 else "")
    return out


def _num(settings: dict[str, dict[str, tuple[str, str]]], section: str, key: str) -> float | None:
    try:
        value = float(settings[section][key][0].split()[0])
    except (KeyError, ValueError, IndexError):
        return None
    return value if math.isfinite(value) else None


def _pair(settings: dict[str, dict[str, tuple[str, str]]], section: str, key: str) -> tuple[int, int] | None:
    try:
        a, b = settings[section][key][0].lower().split("x")
        return int(a), int(b)
    except (KeyError, ValueError):
        return None


class NordifReader(Reader):
    """Reader of NORDIF ``.dat`` pattern files.

    Parameters
    ----------
    setting_file
        ``Setting.txt`` to use (default: the one beside the ``.dat`` file).

    Examples
    --------
    >>> # NordifReader("Pattern.dat").probe().attrs["beam_energy_kv"]
    """

    format_name = "nordif"
    extensions = ("dat",)
    modality = "ebsd"

    def __init__(self, path: str | os.PathLike[str], *, setting_file: str | Path | None = None,
                 **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.setting_file = Path(setting_file) if setting_file else self.path.parent / "Setting.txt"

    def _probe(self) -> Probe:
        size = self.path.stat().st_size
        attrs: dict[str, Any] = {"modality": "ebsd", "detector": {}, "original_metadata": {}}
        notes: list[str] = []
        scan: tuple[int, int] | None = None
        det: tuple[int, int] | None = None
        if self.setting_file.is_file():
            settings = parse_settings(self.setting_file.read_text(encoding="latin-1"))
            attrs["original_metadata"]["nordif_settings"] = {s: {k: list(v) for k, v in d.items()}
                                                             for s, d in settings.items()}
            attrs["original_metadata"]["setting_file"] = str(self.setting_file)
            scan = _pair(settings, "Area", "Number of samples")  # rows x columns
            res = _pair(settings, "Acquisition settings", "Resolution")  # width x height
            det = (res[1], res[0]) if res else None
            checks = (("Number of samples", scan, self.scan_shape_hint, "--scan-shape ROWS COLS"),
                      ("Resolution", res, self.det_shape_hint, "--det-shape H W"))
            for key, pair, hint, option in checks:
                if pair is not None and min(pair) < 1 and not hint:
                    raise self.error(f"{self.setting_file.name} gives {key} {pair[0]}x{pair[1]}, "
                                     "not a positive size", f"correct {self.setting_file.name} or pass {option}")
            energy = _num(settings, "Microscope", "Accelerating voltage")
            if energy and energy > 0:
                attrs["beam_energy_kv"] = energy
            tilt = _num(settings, "Microscope", "Tilt angle")
            if tilt is not None:
                attrs["detector"]["sample_tilt"] = tilt
            elevation = _num(settings, "Detector angles", "Elevation")
            if elevation is not None:
                attrs["detector"]["camera_tilt"] = -elevation + 0.0  # kikuchipy's sign convention
            azimuthal = _num(settings, "Detector angles", "Azimuthal")
            if azimuthal is not None:
                attrs["detector"]["azimuthal"] = azimuthal
            exposure = _num(settings, "Acquisition settings", "Exposure time")
            if exposure is not None and exposure >= 0:
                attrs["exposure_s"] = exposure * 1e-6  # written in microseconds
            step = _num(settings, "Area", "Step size")
            if step and step > 0:
                unit = settings["Area"]["Step size"][1]
                attrs["step_size"] = {"y": step, "x": step, "unit": normalise_length_unit(unit) or "um"}
        else:
            notes.append(f"no {self.setting_file.name} beside the file: metadata is unknown")
        scan_from = det_from = self.setting_file.name
        if self.scan_shape_hint:
            scan, scan_from = self.checked_hint("--scan-shape", self.scan_shape_hint), "--scan-shape"
        if self.det_shape_hint:
            det, det_from = self.checked_hint("--det-shape", self.det_shape_hint), "--det-shape"
        if scan is None:
            raise self.error(f"no {self.setting_file.name} to give the scan shape",
                             "put Setting.txt beside the .dat file, or pass --scan-shape ROWS COLS")
        n = scan[0] * scan[1]
        if det is None:
            side = math.isqrt(size // max(1, n))
            if side * side * n != size:
                raise self.error(f"cannot infer the pattern shape: {size} bytes / {n} frames is not a square "
                                 "number of pixels", "put Setting.txt beside the file or pass --det-shape H W")
            det = (side, side)
            notes.append(f"pattern shape {side} x {side} inferred from the file size")
        attrs["detector"]["shape"] = list(det)
        sized_by = scan_from if scan_from == det_from else f"{scan_from} and {det_from}"
        check_frames_fill_file(self.path, n_frames=n, frame_bytes=det[0] * det[1], scan_shape=scan,
                               det_shape=det, sized_by=sized_by)
        variables: dict[str, Variable] = {}
        bg_file = self.path.parent / "Background acquisition pattern.bmp"
        if bg_file.is_file():
            from PIL import Image

            with Image.open(bg_file) as im:
                bg = np.asarray(im.convert("L") if im.mode not in ("L", "I;16") else im)
            if bg.shape == tuple(det):
                variables["static_background"] = Variable(bg, ("det_y", "det_x"), {"source": bg_file.name})
        return Probe(n_frames=n, scan_shape=cast("tuple[int, int]", tuple(scan)),
                     det_shape=cast("tuple[int, int]", tuple(det)), dtype=np.dtype("uint8"),
                     attrs=attrs, variables=variables, notes=notes)

    def _iter_frames(self, batch: int) -> Iterator[np.ndarray]:
        probe = self.probe()
        record = np.dtype(("u1", probe.det_shape))
        for lo, hi in batched(probe.n_frames, batch):
            yield read_records(self.path, lo * record.itemsize, hi - lo, record)
