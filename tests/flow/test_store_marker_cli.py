"""A store whose ``diffraflow`` marker was edited into nonsense gives one line and exit 2, no traceback."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from diffraflow.flow.cli import main
from diffraflow.flow.store import create_cube


@pytest.mark.parametrize(("marker", "words"), [({"format_version": 1, "kind": "banana", "complete": True},
                                                "diffraflow.kind: Input should be 'scan_cube' or 'result', got 'banana'"),
                                               ({"format_version": 1, "kind": "scan_cube", "complete": True,
                                                 "colour": "red"}, "diffraflow.colour: Extra inputs are not permitted")])
@pytest.mark.parametrize("command", ["info", "validate"])
def test_bad_store_marker_is_one_line(tmp_path, capsys, marker, words, command):
    path = tmp_path / "s.zarr"
    with create_cube(path, scan_shape=(1, 2), det_shape=(3, 3), dtype="uint8",
                     attrs={"modality": "ebsd", "detector": {"shape": [3, 3]}}) as writer:
        writer.patterns.append(np.zeros((2, 3, 3), "uint8"))
        writer.finalize()
    zarr.open_group(str(path), mode="r+").attrs["diffraflow"] = marker
    capsys.readouterr()
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0] and words in lines[0] and "(fix: " in lines[0]
