"""DECTRIS SIMPLON stream V2 (CBOR, bslz4/lz4) and the generic ZeroMQ framing: frames, faults, errors."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq
from diffraflow.flow.cli import main
from diffraflow.flow.live.dectris import (
    DectrisClient,
    DectrisServer,
    encode_image,
    end_message,
    start_message,
)
from diffraflow.flow.live.session import LiveSession
from diffraflow.flow.live.zmqframes import ZmqFrameClient, ZmqFrameServer
from diffraflow.flow.store import open_cube


def _run(client, raw, **kw):
    kw.setdefault("progress", False)
    return LiveSession(client, raw, **kw).run()


@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_dectris_stream_frames_and_metadata(tmp_path, compression, dtype):
    frames = np.random.default_rng(2).poisson(3, (6, 5, 7)).astype(dtype)
    server = DectrisServer(frames, port=0, compression=compression, scan_shape=(2, 3)).start()
    try:
        report = _run(DectrisClient("127.0.0.1", server.port, connect_timeout=5), tmp_path / "raw.zarr")
    finally:
        server.stop()
    cube = open_cube(tmp_path / "raw.zarr")
    assert report.exit_status == 0 and cube["patterns"].shape == (2, 3, 5, 7)
    assert np.array_equal(cube["patterns"].values.reshape(6, 5, 7), frames)
    scan = cube.attrs["scan"]
    assert scan["exposure_s"] == pytest.approx(0.001)
    assert scan["provenance"]["source_format"] == "dectris-stream2"


def _push(port_holder, messages, delay=0.0):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    port_holder.append(sock.bind_to_random_port("tcp://127.0.0.1"))

    def send():
        for m in messages:
            sock.send_multipart(m if isinstance(m, list) else [m])
            time.sleep(delay)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return sock, thread


def test_dectris_malformed_messages_end_and_out_of_order_are_accounted(tmp_path):
    frames = np.arange(5 * 4 * 4, dtype="uint16").reshape(5, 4, 4)
    msgs = [start_message(5, (4, 4), series_unique_id="s1"), b"\xff\x00 not cbor",
            encode_image(1, frames[1], series_unique_id="s1", compression="bslz4"),
            encode_image(0, frames[0], series_unique_id="s1", compression="lz4"),
            encode_image(0, frames[0], series_unique_id="s1"),  # duplicate
            encode_image(2, frames[2], series_unique_id="other"),  # another series: skipped
            encode_image(3, frames[3], series_unique_id="s1"),
            end_message(1, "s1")]  # frames 2 and 4 never come
    port: list[int] = []
    sock, thread = _push(port, msgs)
    try:
        report = _run(DectrisClient("127.0.0.1", port[0], connect_timeout=5), tmp_path / "raw.zarr",
                      gap_timeout=5.0)
    finally:
        thread.join(5)
        sock.close(0)
    s = report.summary
    assert report.exit_status == 1 and s["missing_ranges"] == [[2, 3], [4, 5]]
    assert s["faults"]["malformed"] == 2 and s["faults"]["duplicates"] == 1 and s["faults"]["out_of_order"] == 1
    got = open_cube(tmp_path / "raw.zarr")["patterns"].values.reshape(5, 4, 4)
    assert np.array_equal(got[[0, 1, 3]], frames[[0, 1, 3]])


def test_generic_zmq_framing_any_dtype_and_byte_order(tmp_path):
    frames = np.random.default_rng(4).normal(size=(6, 3, 5)).astype(">f4")
    server = ZmqFrameServer(frames, port=0, scan_shape=(3, 2), attrs={"modality": "ebsd"}).start()
    try:
        report = _run(ZmqFrameClient("127.0.0.1", server.port, connect_timeout=5), tmp_path / "raw.zarr")
    finally:
        server.stop()
    cube = open_cube(tmp_path / "raw.zarr")
    assert report.exit_status == 0 and cube["patterns"].dtype == np.dtype("float32")
    assert np.array_equal(cube["patterns"].values.reshape(6, 3, 5), frames.astype("<f4"))
    assert cube.attrs["scan"]["modality"] == "ebsd"


def test_generic_zmq_framing_rejects_unsafe_and_wrong_parts(tmp_path):
    good = {"type": "start", "n_frames": 2, "shape": [2, 2], "dtype": "u1", "scan_shape": [1, 2], "series": "a"}
    msgs = [[json.dumps(good).encode()],
            [json.dumps({"type": "frame", "index": 0, "series": "a"}).encode(), b"\x01\x02\x03"],  # short
            [b"{not json"],
            [json.dumps({**good, "dtype": "O"}).encode()],  # object arrays are never built
            [json.dumps({"type": "frame", "index": 0, "series": "a"}).encode(), b"\x01" * 4],
            [json.dumps({"type": "frame", "index": 1, "series": "a"}).encode(), b"\x02" * 4]]
    port: list[int] = []
    sock, thread = _push(port, msgs)
    try:
        report = _run(ZmqFrameClient("127.0.0.1", port[0], connect_timeout=5), tmp_path / "raw.zarr")
    finally:
        thread.join(5)
        sock.close(0)
    f = report.summary["faults"]
    assert report.exit_status == 0 and f["truncated"] == 1 and f["malformed"] == 2
    assert open_cube(tmp_path / "raw.zarr")["patterns"].values.reshape(2, 4).tolist() == [[1] * 4, [2] * 4]


@pytest.mark.parametrize("protocol", ["dectris", "zmq"])
def test_unreachable_zmq_senders_are_one_line(tmp_path, capsys, protocol):
    status = main(["live", "--protocol", protocol, "--connect", "127.0.0.1:1", "--output", str(tmp_path / "r.zarr"),
                   "--connect-timeout", "0.5", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "tcp://127.0.0.1:1: no " in err[0] and "(fix: check the address" in err[0]
