"""Where the real datasets live: ``../shared/data/real`` beside the repository.

``DIFFRAFLOW_REAL_DATA`` overrides the location (for a checkout elsewhere).
A clone without that folder skips the tests that need it: mark them with
:func:`needs_real_data`, or call :func:`skip_without_real_data` where a test
only finds out at run time (a fixture, a parameter).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("DIFFRAFLOW_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))


def real_file(name: str) -> Path:
    """Path of one real dataset file (see ../shared/docs/DATA.md)."""
    return REAL_DATA / name


def missing_reason(*names: str) -> str | None:
    """Why real-data tests cannot run here (naming the folder or files), or None when they can.

    ``names`` are file names in the folder (or their full paths, as :func:`real_file` gives).
    """
    if not REAL_DATA.is_dir():
        return f"real data folder {REAL_DATA} is absent (set DIFFRAFLOW_REAL_DATA to where it is)"
    missing = [Path(n).name for n in names if not (REAL_DATA / n).exists()]
    if missing:
        return f"real data file{'s' if len(missing) > 1 else ''} {', '.join(missing)} not in {REAL_DATA}"
    return None


def needs_real_data(*names: str) -> pytest.MarkDecorator:
    """Skip mark for a test that reads the real data folder (and, if named, these files in it)."""
    reason = missing_reason(*names)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def skip_without_real_data(*names: str) -> None:
    """Skip the running test when the real data folder (or one of the named files) is absent."""
    reason = missing_reason(*names)
    if reason is not None:
        pytest.skip(reason)
