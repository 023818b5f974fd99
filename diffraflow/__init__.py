"""diffraflow: a streaming dataflow engine over chunked arrays for electron-diffraction scans.

The code lives in three packages, installed under this one name so that they
never collide with other distributions: :mod:`diffraflow.schemas` (what data
looks like), :mod:`diffraflow.flow` (how work runs) and
:mod:`diffraflow.operators` (what is computed). For notebooks, this module
offers the few calls most sessions need; each is imported on first use, so
``import diffraflow`` stays cheap.

Examples
--------
>>> import numpy as np, diffraflow
>>> pipe = diffraflow.Pipeline([diffraflow.operator("mean_pattern")])
>>> report = diffraflow.run(pipe, np.ones((2, 3, 4, 4), "uint8"))
>>> report.results["mean_pattern/mean"].shape
(4, 4)
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orix.crystal_map import CrystalMap

# In a source checkout the three packages sit beside this folder (flow/, operators/, schemas/ at the
# repository root); let them be found as diffraflow.flow and so on. Installed wheels hold them inside.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "flow" / "__init__.py").is_file():
    __path__.append(str(_checkout))

__all__ = ["open_cube", "create_cube", "Pipeline", "Step", "load_pipeline", "run", "open_results", "index",
           "operator", "list_operators", "__version__"]

_LAZY = {
    "open_cube": ("diffraflow.flow.store", "open_cube"),
    "create_cube": ("diffraflow.flow.store", "create_cube"),
    "Pipeline": ("diffraflow.flow.pipeline", "Pipeline"),
    "Step": ("diffraflow.flow.pipeline", "Step"),
    "load_pipeline": ("diffraflow.flow.pipeline", "load_pipeline"),
    "run": ("diffraflow.flow.engine", "run_pipeline"),
    "open_results": ("diffraflow.flow.results", "open_results"),
    "operator": ("diffraflow.operators.base", "build_operator"),
    "list_operators": ("diffraflow.operators.base", "list_operators"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(import_module(module), attribute)
        globals()[name] = value
        return value
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("diffraflow")
        except PackageNotFoundError:
            return "unknown"
    raise AttributeError(f"module 'diffraflow' has no attribute {name!r}")


def index(cube: str, output: str | None = None, **params: Any) -> CrystalMap:
    """Hough-index an EBSD cube into a crystal map (an orix ``CrystalMap``), through the ``hough_index`` pipeline.

    Parameters
    ----------
    cube
        A scan cube (``.zarr``).
    output
        A result store to keep (resumable); ``None`` indexes in memory.
    **params
        Parameters of the ``hough_index`` operator (``phases``, ``pc``, ``n_bands``...).

    Examples
    --------
    >>> # xmap = diffraflow.index("scan.zarr", phases=["ni"]); xmap.plot()
    """
    from diffraflow.flow.crystal_map import crystal_map_from_results

    return crystal_map_from_results(cube, output, params)
