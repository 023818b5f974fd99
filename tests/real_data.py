"""Where the real datasets live: ``../shared/data/real`` beside the repository.

``DIFFRAFLOW_REAL_DATA`` overrides the location (for a checkout elsewhere).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("DIFFRAFLOW_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))


def real_file(name: str) -> Path:
    """Path of one real dataset file (see ../shared/docs/DATA.md)."""
    return REAL_DATA / name
