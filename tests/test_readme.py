"""The README's promises: two Quick-start commands, CI runs the second, the example pipeline runs as-is."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from diffraflow.flow.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def fenced_blocks(language: str | None = None) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)
    return [body for lang, body in blocks if language is None or lang == language]


def test_quick_start_is_two_command_lines_and_ci_runs_the_second():
    first = fenced_blocks()[0].strip().splitlines()
    assert len(first) == 2
    install_run, install_test = first
    assert "pip install torch==2.13.0" in install_run and "diffraflow demo" in install_run
    assert "pytest" in install_test
    extracted = subprocess.run(
        ["awk", r'/^```/{n++; next} n==1 {lines++; if (lines==2) {print; exit}}', str(ROOT / "README.md")],
        capture_output=True, text=True, check=True).stdout.strip()
    assert extracted == install_test
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow  # starts a LocalCluster: 13-16 s; tests/flow/test_products.py runs the example in the quick loop
def test_example_pipeline_identical_across_schedulers_on_awkward_chunks(tmp_path):
    example = fenced_blocks("yaml")[0]
    record = yaml.safe_load(example)
    assert record["pipeline"] == 1
    pipeline = tmp_path / "example.yaml"
    pipeline.write_text(example)
    scan = tmp_path / "scan.zarr"
    assert main(["simulate", "ebsd", str(scan), "--scan-shape", "7", "9", "--seed", "3"]) == 0
    outputs = {}
    # 11 frames per chunk splits rows (9 columns) unevenly: the awkward case.
    for scheduler in ("inline", "threads", "local"):
        out = tmp_path / f"{scheduler}.zarr"
        argv = ["run", str(pipeline), "--input", str(scan), "--output", str(out), "--scheduler", scheduler,
                "--chunk-frames", "11", "--quiet"]
        if scheduler != "inline":
            argv += ["--workers", "2"]
        assert main(argv) == 0
        outputs[scheduler] = out
    import zarr

    reference = zarr.open_group(str(outputs["inline"]), mode="r")
    names = sorted(reference.array_keys()) + [f"{g}/{a}" for g in reference.group_keys()
                                              for a in reference[g].array_keys()]
    names = [n for n in names if not n.startswith("_")]
    assert names, "the example pipeline saved nothing"
    for scheduler in ("threads", "local"):
        other = zarr.open_group(str(outputs[scheduler]), mode="r")
        for name in names:
            np.testing.assert_array_equal(other[name][...], reference[name][...], err_msg=f"{scheduler}: {name}")


@pytest.mark.parametrize("command", sorted(set(re.findall(r"`diffraflow (\w+)", README)) - {"demo"}))
def test_commands_named_in_readme_exist(command):
    assert main([command, "--help"]) == 0
