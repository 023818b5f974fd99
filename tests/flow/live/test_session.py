"""Pipelines on the stream, slow consumers, backpressure, and resuming after a kill or a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.live.core import ReceiverCore
from diffraflow.flow.live.inprocess import InProcessStream
from diffraflow.flow.live.merlin import MerlinClient, MerlinServer
from diffraflow.flow.live.session import LiveSession
from diffraflow.flow.results import open_results
from diffraflow.flow.store import acquisition_progress, open_cube

import tests.flow.engine_fixtures  # noqa: F401  (registers test_slow)
from tests.flow.live.helpers import frames12

ROOT = Path(__file__).resolve().parents[3]
PIPELINE = {"pipeline": 1, "steps": [
    {"op": "virtual_image", "params": {"masks": [{"type": "disk", "radius": 3}, {"type": "annulus", "inner": 3,
                                                                                  "outer": 6}]}},
    {"op": "mean_pattern"},
    {"op": "incremental_pca", "params": {"n_components": 2}}]}


def _same_results(a, b) -> None:
    ra, rb = open_results(a), open_results(b)
    for name in ("virtual_image", "mean_pattern", "incremental_pca"):
        for var in ra[name].data_vars:
            np.testing.assert_array_equal(ra[name][var].values, rb[name][var].values)


def test_pipeline_follows_the_stream_and_equals_the_offline_run(tmp_path):
    frames = frames12(96, (16, 16), seed=11)
    stream = InProcessStream(maxsize=4)
    holder: list[LiveSession] = []
    seen_mid_scan: list[int] = []

    def detector():
        stream.announce(n_frames=96, det_shape=(16, 16), dtype="uint16", scan_shape=(8, 12))
        for i in range(48):
            stream.send(i, frames[i])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # half the scan sent: results must come before the rest is
            sink = holder[0].sink if holder else None
            if sink is not None and sink.done_frames.get(0, 0):
                seen_mid_scan.append(sink.done_frames[0])
                break
            time.sleep(0.02)
        for i in range(48, 96):
            stream.send(i, frames[i])

    threading.Thread(target=detector, daemon=True).start()
    session = LiveSession(stream, tmp_path / "raw.zarr", results=tmp_path / "live.zarr", pipeline=PIPELINE,
                          slots=64, progress=False)
    holder.append(session)
    report = session.run()
    assert report.exit_status == 0 and report.summary["processed"] == 96 and seen_mid_scan
    run_pipeline(PIPELINE, str(tmp_path / "raw.zarr"), tmp_path / "offline.zarr")
    _same_results(tmp_path / "live.zarr", tmp_path / "offline.zarr")
    assert report.summary["latency_s"]["frames"] == 96
    summary = json.loads((tmp_path / "live.zarr.live.json").read_text())
    assert summary["state"] == "complete" and summary["exit_status"] == 0


def test_slow_pipeline_loses_no_frame_and_keeps_memory_bounded(tmp_path):
    """The pipeline is far slower than the stream: results lag, the raw cube keeps every frame."""
    stream = InProcessStream(maxsize=4)
    frames = frames12(240, (8, 8), seed=12)
    slow = {"pipeline": 1, "steps": [{"op": "test_slow", "params": {"delay": 0.03}}], "output": {"chunk_frames": 8}}

    def detector():
        stream.announce(n_frames=240, det_shape=(8, 8), dtype="uint16", scan_shape=(12, 20))
        for i, f in enumerate(frames):
            stream.send(i, f)

    threading.Thread(target=detector, daemon=True).start()
    session = LiveSession(stream, tmp_path / "raw.zarr", results=tmp_path / "out.zarr", pipeline=slow, slots=80,
                          progress=False, window=2)
    report = session.run()
    s = report.summary
    assert report.exit_status == 0 and s["missing"] == 0 and s["processed"] == 240
    assert s["slots"]["peak_in_use"] <= s["slots"]["frames"] <= 80  # the pool never grew
    # every frame was persisted before most results existed: persisting did not wait for compute
    arrival = session.core.ledger.arrival
    done = max(t for _r, t in session.sink.done_at.values())
    assert session.core.t_finished < done and np.isfinite(arrival).all()
    total = open_results(tmp_path / "out.zarr")["test_slow"]["total"].values.reshape(-1)
    assert np.array_equal(total, frames.reshape(240, -1).sum(axis=1))


def test_slow_disk_holds_the_sender_back_and_nothing_is_dropped(tmp_path, monkeypatch):
    """Persisting slower than the stream: the pool fills, the receiver stops reading, TCP pushes back."""
    original = ReceiverCore._write_block

    def slow_write(self, s, buf):
        time.sleep(0.05)
        original(self, s, buf)

    monkeypatch.setattr(ReceiverCore, "_write_block", slow_write)
    frames = frames12(200, (32, 32), seed=13)
    server = MerlinServer(frames, scan_shape=(10, 20), port=0).start()  # unpaced: as fast as it is let
    try:
        report = LiveSession(MerlinClient("127.0.0.1", server.port), tmp_path / "raw.zarr", slots=40,
                             progress=False).run()
    finally:
        server.stop()
    s = report.summary
    assert report.exit_status == 0 and s["missing"] == 0 and s["faults"]["backpressure_waits"] > 0
    assert s["slots"]["seconds_receiver_blocked"] > 0.2 and s["slots"]["peak_in_use"] <= 40
    assert np.array_equal(open_cube(tmp_path / "raw.zarr")["patterns"].values.reshape(200, 32, 32), frames)


def _live_cmd(port, tmp_path, *extra):
    return [sys.executable, "-m", "diffraflow", "live", str(tmp_path / "p.json"), "--protocol", "merlin",
            "--connect", f"127.0.0.1:{port}", "--output", str(tmp_path / "raw.zarr"), "--results",
            str(tmp_path / "out.zarr"), "--gap-timeout", "1", "--quiet", "--scheduler", "inline", *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.slow
def test_killed_receiver_resumes_into_the_same_stores_and_reports_the_lost_indices(tmp_path):
    frames = frames12(600, (16, 16), seed=14)
    (tmp_path / "p.json").write_text(json.dumps(PIPELINE))
    server = MerlinServer(frames, scan_shape=(20, 30), port=0, rate=300, on_reconnect="continue").start()
    try:
        first = subprocess.Popen(_live_cmd(server.port, tmp_path, "--slots", "64"), env=_env(), cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # kill once some shards are persisted
            progress = acquisition_progress(tmp_path / "raw.zarr") or {}
            if progress.get("frames_persisted", 0) >= 100:
                break
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        time.sleep(0.5)  # frames sent meanwhile are lost
        second = subprocess.run(_live_cmd(server.port, tmp_path, "--slots", "64"), env=_env(), cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
    finally:
        server.stop()
    assert second.returncode == 1 and (tmp_path / "out.zarr.live.json").is_file(), second.stderr
    summary = json.loads((tmp_path / "out.zarr.live.json").read_text())
    cube = open_cube(tmp_path / "raw.zarr")
    received = cube["received"].values.reshape(-1).astype(bool)
    lost = np.zeros(600, bool)
    for a, b in summary["lost_while_down"]:
        lost[a:b] = True
    assert lost.any() and np.array_equal(lost, ~received)  # exactly the indices not in the cube
    assert summary["missing"] == int((~received).sum()) and summary["persisted_before_resume"] >= 100
    got = cube["patterns"].values.reshape(600, 16, 16)
    assert np.array_equal(got[received], frames[received]) and not got[~received].any()
    assert "lost while no receiver ran" in second.stdout
    run_pipeline(PIPELINE, str(tmp_path / "raw.zarr"), tmp_path / "offline.zarr")
    _same_results(tmp_path / "out.zarr", tmp_path / "offline.zarr")


@pytest.mark.slow
def test_timeout_stops_early_and_the_same_command_resumes(tmp_path):
    frames = frames12(160, (8, 8), seed=15)
    (tmp_path / "p.json").write_text(json.dumps(PIPELINE))
    server = MerlinServer(frames, scan_shape=(8, 20), port=0, rate=80).start()
    try:
        first = subprocess.run(_live_cmd(server.port, tmp_path, "--timeout", "0.8"), env=_env(), cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)
        early = json.loads((tmp_path / "out.zarr.live.json").read_text())
        second = subprocess.run(_live_cmd(server.port, tmp_path), env=_env(), cwd=tmp_path, capture_output=True,
                                text=True, timeout=60)
    finally:
        server.stop()
    assert first.returncode == 3, first.stderr
    assert early["state"].startswith("stopped early") and early["received"] < 160
    summary = json.loads((tmp_path / "out.zarr.live.json").read_text())
    assert second.returncode in (0, 1), second.stderr
    received = open_cube(tmp_path / "raw.zarr")["received"].values.reshape(-1).astype(bool)
    assert summary["missing"] == int((~received).sum())
    assert summary["processed"] == 160


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_terminate_stops_with_the_report_and_a_later_start_resumes(tmp_path, sig):
    frames = frames12(120, (8, 8), seed=16)
    (tmp_path / "p.json").write_text(json.dumps(PIPELINE))
    server = MerlinServer(frames, scan_shape=(6, 20), port=0, rate=60).start()
    try:
        first = subprocess.Popen(_live_cmd(server.port, tmp_path), env=_env(), cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        # Once results are being written (an interrupt while the result store is being created leaves a
        # store that cannot be resumed: reported to the engine's owners).
        while time.monotonic() < deadline and not list((tmp_path / "out.zarr" / "_progress").glob("round0/*.done")):
            time.sleep(0.05)
        first.send_signal(sig)
        out, err = first.communicate(timeout=60)
        early = json.loads((tmp_path / "out.zarr.live.json").read_text())
        second = subprocess.run(_live_cmd(server.port, tmp_path), env=_env(), cwd=tmp_path, capture_output=True,
                                text=True, timeout=60)
    finally:
        server.stop()
    assert first.returncode == 130, err
    assert early["state"] == "stopped early (interrupted; resumable)" and "stopped early" in out
    assert acquisition_progress(tmp_path / "raw.zarr")["state"] == "complete", second.stdout + second.stderr
    assert second.returncode in (0, 1), second.stderr
    assert json.loads((tmp_path / "out.zarr.live.json").read_text())["processed"] == 120


def test_a_result_store_cut_short_while_being_created_is_made_anew(tmp_path):
    """A receiver killed while the result store's arrays were being created leaves no result: start afresh."""
    import gc
    import shutil

    from diffraflow.flow.live.session import LiveResultStore

    frames = frames12(16, (8, 8), seed=17).reshape(4, 4, 8, 8)
    run_pipeline(PIPELINE, frames, tmp_path / "r.zarr")
    record = json.loads((tmp_path / "r.zarr" / "zarr.json").read_text())
    record["attributes"]["diffraflow"]["complete"] = False
    (tmp_path / "r.zarr" / "zarr.json").write_text(json.dumps(record))
    shutil.rmtree(tmp_path / "r.zarr" / "mean_pattern" / "mean")  # as if killed before this array existed
    gc.collect()
    report = run_pipeline(PIPELINE, frames, LiveResultStore(tmp_path / "r.zarr"))
    assert report.computed > 0 and "mean_pattern/mean" in report.results
