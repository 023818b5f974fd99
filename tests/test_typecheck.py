"""The type check CI enforces: ``.ci/typecheck`` (mypy, strict on diffraflow.flow; see pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # mypy over ~150 modules: a minute from a cold cache
def test_mypy_reports_no_errors():
    result = subprocess.run(["bash", str(ROOT / ".ci" / "typecheck")], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=1800)
    assert result.returncode == 0, f".ci/typecheck failed:\n{result.stdout[-6000:]}{result.stderr[-2000:]}"
