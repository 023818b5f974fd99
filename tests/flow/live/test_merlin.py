"""Merlin TCP data port: real and synthetic streams, raw read-out, faults, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.cli import main
from diffraflow.flow.convert import convert
from diffraflow.flow.live.merlin import MerlinClient, MerlinServer
from diffraflow.flow.live.session import LiveSession
from diffraflow.flow.readers.merlin_format import decode_frame, parse_frame_header
from diffraflow.flow.store import acquisition_progress, open_cube

from tests.flow.live.helpers import (
    MIB,
    ScriptedSender,
    encode_raw,
    frame_msg,
    frames12,
    hdr,
    raw_header,
)


def _receive(port, raw, **kw):
    kw.setdefault("progress", False)
    return LiveSession(MerlinClient("127.0.0.1", port, connect_timeout=5), raw, **kw).run()


@pytest.mark.skipif(not MIB.is_file(), reason="real data folder not present")
def test_real_mib_with_junk_before_the_header_equals_convert(tmp_path):
    convert([MIB], tmp_path / "converted.zarr")
    server = MerlinServer(MIB, port=0, junk=20_000).start()
    try:
        report = _receive(server.port, tmp_path / "raw.zarr", scan_shape=(2, 4))
    finally:
        server.stop()
    expected = open_cube(tmp_path / "converted.zarr")["patterns"].values
    got = open_cube(tmp_path / "raw.zarr")
    assert np.array_equal(got["patterns"].values, expected)  # same orientation as convert
    assert report.exit_status == 0 and report.summary["faults"]["junk_bytes"] == 20_000
    assert got.attrs["scan"]["exposure_s"] == pytest.approx(0.1)
    assert got.attrs["scan"]["original_metadata"]["bit_depth"] == 6


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_12_and_24_bit_frames_and_a_second_acquisition_on_the_same_connection(tmp_path, dtype):
    frames = frames12(12, (8, 10), seed=3).astype(dtype) << (12 if dtype == "uint32" else 0)
    server = MerlinServer(frames, scan_shape=(3, 4), port=0, acquisitions=2).start()
    try:
        report = _receive(server.port, tmp_path / "raw.zarr")
    finally:
        server.stop()
    cube = open_cube(tmp_path / "raw.zarr")
    assert cube["patterns"].shape == (3, 4, 8, 10) and cube["patterns"].dtype == dtype
    assert np.array_equal(cube["patterns"].values.reshape(12, 8, 10), frames)
    assert report.summary["faults"]["new_acquisition_before_end"] == 0 and report.summary["missing"] == 0


@pytest.mark.parametrize("depth", [1, 6, 12])
@pytest.mark.parametrize("layout", ["1x1", "2x2", "2x2G"])
def test_raw_read_out_decodes_to_the_frame(depth, layout):
    side = 256 if layout == "1x1" else 514 if layout.endswith("G") else 512
    rng = np.random.default_rng(depth)
    frame = rng.integers(0, 2 ** depth, (side, side)).astype("uint16" if depth == 12 else "uint8")
    if layout.endswith("G"):
        frame[256:258] = 0
        frame[:, 256:258] = 0
    head = parse_frame_header(raw_header(1, depth, layout))
    data = np.frombuffer(encode_raw(frame, depth, layout), np.uint8)
    assert head.frame_shape == frame.shape and head.data_nbytes == data.size
    assert np.array_equal(decode_frame(data, head), frame)


def test_raw_read_out_streamed(tmp_path):
    frames = np.random.default_rng(1).integers(0, 64, (4, 256, 256)).astype("uint8")
    script = [hdr(4, 2, depth=6)]
    for i, f in enumerate(frames):
        body = raw_header(i + 1, 6) + encode_raw(f, 6)
        script.append(b"MPX,%010d," % (len(body) + 1) + body)
    sender = ScriptedSender([script])
    try:
        report = _receive(sender.port, tmp_path / "raw.zarr")
    finally:
        sender.close()
    got = open_cube(tmp_path / "raw.zarr")["patterns"].values.reshape(4, 256, 256)
    assert report.exit_status == 0 and np.array_equal(got, frames[:, ::-1])  # stored in the .mib orientation


def test_garbage_malformed_truncated_duplicate_and_dropped_connection_are_counted(tmp_path):
    frames = frames12(8, (6, 6), seed=5)
    cut = frame_msg(frames[5], 6)
    first = [hdr(8, 4), frame_msg(frames[0], 1), frame_msg(frames[1], 2), frame_msg(frames[2], 3),
             frame_msg(frames[3], 4).replace(b"U16", b"U99", 1),  # malformed header: skipped by its length
             b"\x00garbage\xff" * 50,  # junk between messages: resynchronised
             frame_msg(frames[4], 5), frame_msg(frames[1], 2),  # a duplicate
             cut[: len(cut) // 2]]  # truncated: the connection drops in mid-frame
    second = [frame_msg(frames[5], 6), frame_msg(frames[6], 7), frame_msg(frames[7], 8)]
    sender = ScriptedSender([first, second])
    try:
        report = _receive(sender.port, tmp_path / "raw.zarr", gap_timeout=1.0)
    finally:
        sender.close()
    s = report.summary
    assert report.exit_status == 1 and s["missing_ranges"] == [[3, 4]]
    f = s["faults"]
    assert f["duplicates"] == 1 and f["truncated"] == 1 and f["malformed"] >= 2 and f["junk_bytes"] == 450
    assert f["disconnects"] == 2 and f["reconnects"] >= 1  # dropped mid-frame; closed with frame 4 outstanding
    cube = open_cube(tmp_path / "raw.zarr")
    received = cube["received"].values.reshape(-1)
    assert received.tolist() == [1, 1, 1, 0, 1, 1, 1, 1]
    got = cube["patterns"].values.reshape(8, 6, 6)
    assert np.array_equal(got[received == 1], frames[received == 1]) and not got[3].any()
    assert acquisition_progress(tmp_path / "raw.zarr")["missing_ranges"] == [[3, 4]]


def test_new_acquisition_before_the_end_is_reported_and_ends_the_scan(tmp_path):
    frames = frames12(6, (4, 4), seed=7)
    script = [hdr(6, 3), *(frame_msg(frames[i], i + 1) for i in range(3)),
              hdr(6, 3, stamp="02/01/2026 00:00:00"), *(frame_msg(frames[i], i + 1) for i in range(6))]
    sender = ScriptedSender([script])
    try:
        report = _receive(sender.port, tmp_path / "raw.zarr", gap_timeout=5.0)
    finally:
        sender.close()
    s = report.summary
    assert s["faults"]["new_acquisition_before_end"] == 1 and s["missing_ranges"] == [[3, 6]]
    assert report.exit_status == 1


def test_silence_ends_the_scan_after_the_gap_timeout(tmp_path):
    frames = frames12(6, (4, 4), seed=8)
    sender = ScriptedSender([[hdr(6, 3), *(frame_msg(frames[i], i + 1) for i in range(4)), b""]], pause=0.0)
    try:
        report = _receive(sender.port, tmp_path / "raw.zarr", gap_timeout=0.5)
    finally:
        sender.close()
    assert report.summary["missing_ranges"] == [[4, 6]] and report.summary["faults"]["gap_timeouts"] >= 1
    assert open_cube(tmp_path / "raw.zarr")["received"].values.sum() == 4


def test_unreachable_detector_is_one_line_and_exit_status_2(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    status = main(["live", "--protocol", "merlin", "--connect", f"127.0.0.1:{port}", "--output",
                   str(tmp_path / "raw.zarr"), "--connect-timeout", "0.5", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"diffraflow live: error: tcp://127.0.0.1:{port}: cannot connect to the Merlin data port")
    assert "(fix: check the address" in err[0] and not (tmp_path / "raw.zarr").exists()


LIBERTEM_PYTHON = __import__("os").environ.get("DIFFRAFLOW_LIBERTEM_PYTHON")


@pytest.mark.skipif(not LIBERTEM_PYTHON or not MIB.is_file(),
                    reason="set DIFFRAFLOW_LIBERTEM_PYTHON to a Python with libertem-live (a third-party simulator)")
@pytest.mark.parametrize("acquisitions", [1, 3])
def test_third_party_simulator_with_garbage_feeds_a_cube_equal_to_convert(tmp_path, acquisitions):
    """LiberTEM-live's own Merlin simulator (garbage before the header, triggered over its control port);
    with 3, three acquisitions armed one after the other arrive on one connection (``--acquisitions 3``)."""
    import socket
    import subprocess
    import threading
    import time

    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    sim = subprocess.Popen([LIBERTEM_PYTHON, "-m", "libertem_live.detectors.merlin.sim", str(MIB.with_suffix(".hdr")),
                            "--host", "127.0.0.1", "--data-port", str(ports[0]), "--control-port", str(ports[1]),
                            "--trigger-port", str(ports[2]), "--nav-shape", "2", "4", "--garbage"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trigger = ("from libertem_live.detectors.merlin.control import MerlinControl\n"
               f"with MerlinControl(host='127.0.0.1', port={ports[1]}) as c:\n"
               "    c.cmd('STARTACQUISITION'); c.cmd('SOFTTRIGGER')\n")

    def arm():
        for _ in range(acquisitions):
            time.sleep(2.0)
            subprocess.run([LIBERTEM_PYTHON, "-c", trigger], timeout=60)

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", ports[1]), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        threading.Thread(target=arm, daemon=True).start()
        if acquisitions > 1:
            status = main(["live", "--protocol", "merlin", "--connect", f"127.0.0.1:{ports[0]}", "--output",
                           str(tmp_path / "raw.zarr"), "--scan-shape", "2", "4", "--gap-timeout", "5",
                           "--acquisitions", str(acquisitions), "--quiet"])
        else:
            report = _receive(ports[0], tmp_path / "raw.zarr", scan_shape=(2, 4), gap_timeout=5)
    finally:
        sim.terminate()
        sim.wait(10)
    convert([MIB], tmp_path / "converted.zarr")
    if acquisitions > 1:
        expected = open_cube(tmp_path / "converted.zarr")["patterns"].values
        assert status == 0
        for k in range(1, acquisitions + 1):
            assert np.array_equal(open_cube(tmp_path / f"raw-{k}.zarr")["patterns"].values, expected)
        return
    assert report.exit_status == 0 and report.summary["faults"]["junk_bytes"] > 0
    assert np.array_equal(open_cube(tmp_path / "raw.zarr")["patterns"].values,
                          open_cube(tmp_path / "converted.zarr")["patterns"].values)


def test_detector_gone_before_the_acquisition_started_is_one_line_not_a_hang(tmp_path, capsys):
    import threading

    sender = ScriptedSender([[b"JUNK" * 100]])  # a connection that only sends junk and closes
    port = sender.port

    def close_after_serving():
        sender.thread.join(30)
        sender.close()  # then nothing listens any more

    threading.Thread(target=close_after_serving, daemon=True).start()
    status = main(["live", "--protocol", "merlin", "--connect", f"127.0.0.1:{port}", "--output",
                   str(tmp_path / "raw.zarr"), "--connect-timeout", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert "the connection dropped before an acquisition started and did not come back within 1 s" in err[0]


def test_a_stream_that_cannot_be_decoded_is_one_line_not_a_wait(tmp_path, capsys):
    """Raw 24-bit read-out (two frames per frame) is not supported: said once, not counted forever."""
    body = raw_header(1, 24) + bytes(256 * 256 * 3)
    frame = b"MPX,%010d," % (len(body) + 1) + body
    sender = ScriptedSender([[hdr(20, 4, depth=24), *([frame] * 20)]])
    try:
        status = main(["live", "--protocol", "merlin", "--connect", f"127.0.0.1:{sender.port}", "--output",
                       str(tmp_path / "raw.zarr"), "--quiet"])
    finally:
        sender.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "16 malformed messages and no acquisition started" in err[0]
    assert "raw (R64) read-out of counter depth 24 is not supported" in err[0]
