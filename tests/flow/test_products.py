"""Result products are complete by construction: checked at resolve time, valid on disk, exportable."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import yaml
from diffraflow.flow.cli import main
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.pipeline import Pipeline
from diffraflow.flow.store import open_group_checked
from diffraflow.operators.base import InputSpec, Operator, OutputSpec
from diffraflow.operators.decomposition.incremental_pca import IncrementalPCA
from diffraflow.schemas.errors import PipelineError
from diffraflow.schemas.results import validate_result_group

from tests.test_readme import fenced_blocks

SPEC = InputSpec((4, 5), (6, 6), np.dtype("uint8"))


@dataclass(frozen=True)
class ForgetfulDecomposition(Operator):
    """Declares a decomposition but gives none of its attributes."""

    name = "forgetful_decomposition_test"

    def resolve(self, spec):
        return {"factors": OutputSpec("single", "float32", (2, *spec.det_shape), ("component", "det_y", "det_x"),
                                      product="decomposition"),
                "loadings": OutputSpec("nav", "float32", (2,), ("component",), product="decomposition")}

    def process(self, frames, ctx):
        return {}


def test_product_without_its_attributes_fails_at_resolve():
    with pytest.raises(PipelineError, match="result_attrs\\(\\) lacks \\['method'\\]"):
        Pipeline([ForgetfulDecomposition()]).resolve(SPEC)


def test_pca_declares_a_complete_decomposition():
    plan = Pipeline([IncrementalPCA(n_components=2)]).resolve(SPEC)
    assert plan.steps[0].op.result_attrs(SPEC)["method"] == "pca"


def test_partial_save_is_recorded_as_free_form_output(tmp_path):
    frames = np.random.default_rng(0).integers(0, 200, (4, 5, 6, 6)).astype("uint8")
    out = tmp_path / "r.zarr"
    pipe = Pipeline.from_dict({"pipeline": 1, "steps": [
        {"op": "incremental_pca", "name": "pca", "params": {"n_components": 2}, "save": ["loadings"]}]})
    run_pipeline(pipe, frames, out)
    group = open_group_checked(out, kind="result")
    assert group.attrs["results"]["pca"]["product"] is None
    validate_result_group(group, str(out))


def test_readme_pipeline_store_validates_and_exports_everywhere(tmp_path, capsys):
    pipeline = tmp_path / "example.yaml"
    pipeline.write_text(yaml.safe_dump(yaml.safe_load(fenced_blocks("yaml")[0])))
    scan, results = tmp_path / "scan.zarr", tmp_path / "results.zarr"
    assert main(["simulate", "ebsd", str(scan), "--scan-shape", "6", "7", "--seed", "3"]) == 0
    assert main(["run", str(pipeline), "-i", str(scan), "-o", str(results), "-q"]) == 0
    assert main(["validate", str(results)]) == 0
    for suffix in ("ang", "ctf", "h5", "png"):
        assert main(["export", str(results), str(tmp_path / f"map.{suffix}")]) == 0, suffix
    assert (tmp_path / "map.ang").stat().st_size > 0
