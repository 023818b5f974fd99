"""``diffraflow replay`` into ``diffraflow live`` from the command line; ``info`` while a scan is acquired."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from diffraflow.flow.cli import main
from diffraflow.flow.live.inprocess import InProcessStream
from diffraflow.flow.live.session import LiveSession
from diffraflow.flow.store import open_cube

from tests.flow.live.helpers import cube, frames12

ROOT = Path(__file__).resolve().parents[3]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_replay_command_feeds_live_command_with_pictures(tmp_path, capsys):
    frames = frames12(24, (12, 12), seed=31)
    src = cube(tmp_path / "src.zarr", frames, (4, 6), modality="ebsd")
    (tmp_path / "p.json").write_text(json.dumps({"pipeline": 1, "steps": [
        {"op": "virtual_image", "params": {"masks": [{"type": "disk", "radius": 3}]}}]}))
    port = _port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    replay = subprocess.Popen([sys.executable, "-m", "diffraflow", "replay", str(src), "--protocol", "zmq",
                               "--listen", f"127.0.0.1:{port}", "--rate", "200"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        status = main(["live", str(tmp_path / "p.json"), "--protocol", "zmq", "--connect", f"127.0.0.1:{port}",
                       "--output", str(tmp_path / "raw.zarr"), "--results", str(tmp_path / "out.zarr"),
                       "--png", str(tmp_path / "pic"), "--quiet", "--energy", "20"])
    finally:
        out, err = replay.communicate(timeout=60)
    text = capsys.readouterr().out
    assert status == 0, text
    assert "complete: 24 frames received in this session, 24 of 24 persisted, 24 processed" in text
    assert "sent 24 frames" in out and (tmp_path / "pic_virtual_image_images.png").is_file()
    got = open_cube(tmp_path / "raw.zarr")
    assert np.array_equal(got["patterns"].values, frames.reshape(4, 6, 12, 12))
    scan = got.attrs["scan"]
    assert scan["modality"] == "ebsd" and scan["beam_energy_kv"] == 20  # from the stream, then the user
    assert json.loads((tmp_path / "out.zarr.live.json").read_text())["exit_status"] == 0


def test_info_reports_acquiring_while_frames_arrive(tmp_path, capsys):
    stream = InProcessStream()
    stream.announce(n_frames=40, det_shape=(4, 4), dtype="uint8", scan_shape=(4, 10))
    for i in range(20):
        stream.send(i, np.full((4, 4), i, "uint8"))
    session = LiveSession(stream, tmp_path / "raw.zarr", progress=False, gap_timeout=30, timeout=60)
    import threading

    worker = threading.Thread(target=session.run, daemon=True)
    worker.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and session.core.ledger is None or \
            session.core.ledger.summary()["persisted"] < 20:
        time.sleep(0.05)
    assert main(["info", str(tmp_path / "raw.zarr")]) == 0
    assert "acquiring: 20 of 40 frames persisted" in capsys.readouterr().out
    for i in range(20, 40):
        stream.send(i, np.full((4, 4), i, "uint8"))
    worker.join(30)
    assert open_cube(tmp_path / "raw.zarr")["patterns"].values[..., 0, 0].reshape(-1).tolist() == list(range(40))


def test_several_merlin_acquisitions_on_one_connection_each_into_its_own_stores(tmp_path, capsys):
    from diffraflow.flow.live.merlin import MerlinServer

    frames = frames12(12, (8, 10), seed=5)
    (tmp_path / "p.json").write_text(json.dumps({"pipeline": 1, "steps": [
        {"op": "virtual_image", "params": {"masks": [{"type": "disk", "radius": 3}]}}]}))
    server = MerlinServer(frames, scan_shape=(3, 4), port=0, acquisitions=3).start()
    try:
        status = main(["live", str(tmp_path / "p.json"), "--protocol", "merlin",
                       "--connect", f"127.0.0.1:{server.port}", "--output", str(tmp_path / "raw.zarr"),
                       "--results", str(tmp_path / "out.zarr"), "--acquisitions", "3", "--quiet"])
    finally:
        server.stop()
    text = capsys.readouterr().out
    assert status == 0, text
    for k in (1, 2, 3):
        assert f"diffraflow live (acquisition {k}): complete: 12 frames received" in text
        got = open_cube(tmp_path / f"raw-{k}.zarr")
        assert np.array_equal(got["patterns"].values.reshape(12, 8, 10), frames)
        summary = json.loads((tmp_path / f"out-{k}.zarr.live.json").read_text())
        assert summary["exit_status"] == 0 and summary["missing"] == 0
        assert summary["faults"]["reconnects"] == 0 and summary["faults"]["malformed"] == 0
    assert not (tmp_path / "raw.zarr").exists()


def test_several_acquisitions_are_for_merlin_only(tmp_path, capsys):
    status = main(["live", "--protocol", "zmq", "--connect", "127.0.0.1:1", "--output", str(tmp_path / "r.zarr"),
                   "--acquisitions", "2"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--acquisitions" in err[0] and "merlin" in err[0]
