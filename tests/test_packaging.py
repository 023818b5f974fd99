"""One import name: the three code folders install as diffraflow.flow, .operators and .schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def packages_from_setup() -> list[str]:
    namespace: dict = {}
    import setuptools

    real_setup = setuptools.setup
    setuptools.setup = lambda **kw: namespace.update(kw)
    try:
        exec(compile((ROOT / "setup.py").read_text(), "setup.py", "exec"), {"__name__": "setup"})
    finally:
        setuptools.setup = real_setup
    return namespace["packages"]


def test_every_package_installs_under_diffraflow():
    packages = packages_from_setup()
    assert all(p == "diffraflow" or p.startswith("diffraflow.") for p in packages)
    folders = {str(p.parent.relative_to(ROOT)).replace("/", ".") for top in ("flow", "operators", "schemas")
               for p in (ROOT / top).rglob("__init__.py")}
    assert {f"diffraflow.{f}" for f in folders} <= set(packages)


def test_diffraflow_never_imports_the_bare_names():
    """Other distributions' top-level flow/operators/schemas (PyPI has both of the last two) stay untouched."""
    code = (
        "import sys, types\n"
        "for name in ('schemas', 'operators', 'flow'):\n"
        "    sys.modules[name] = types.ModuleType(name)\n"
        "import numpy as np, diffraflow\n"
        "r = diffraflow.run(diffraflow.Pipeline([diffraflow.operator('incremental_pca', {'n_components': 1})]),"
        " np.random.rand(3, 3, 4, 4))\n"
        "assert r.results['incremental_pca/factors'].shape == (1, 4, 4)\n"
        "assert all(not hasattr(sys.modules[n], '__file__') for n in ('schemas', 'operators', 'flow'))\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_public_api_for_notebooks():
    import diffraflow

    assert {"open_cube", "Pipeline", "run", "open_results", "index"} <= set(diffraflow.__all__)
    assert diffraflow.Pipeline is __import__("diffraflow.flow.pipeline", fromlist=["Pipeline"]).Pipeline


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "diffraflow", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("diffraflow ")


@pytest.mark.slow
def test_wheel_holds_only_diffraflow(tmp_path):
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("diffraflow-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"diffraflow"}
    assert "diffraflow/flow/pipelines/default_ebsd.yaml" in zipfile.ZipFile(wheel).namelist()


def test_public_index_returns_a_crystal_map(tmp_path):
    from diffraflow.flow.cli import main

    import diffraflow

    cube = tmp_path / "scan.zarr"
    assert main(["simulate", "ebsd", str(cube), "--scan-shape", "3", "4", "--seed", "2"]) == 0
    xmap = diffraflow.index(str(cube), phases=["ni"])
    assert xmap.shape == (3, 4) and xmap.phases[0].name == "ni"
