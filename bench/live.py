"""Live acquisition benchmarks (issue 9): receive rate against LiberTEM-live, persisting rates, memory, latency.

Every sender is a separate process on 127.0.0.1 (so sender and receiver do
not share a GIL), serving the same frames:

``receive``
    A Merlin stream of ``--frames`` 256 x 256 frames, as fast as the
    receiver takes it, received by (a) diffraflow's Merlin client and
    receiver core with persisting switched off, (b) LiberTEM-live's Rust
    receiver ``libertem_qd_mpx.QdConnection`` (frames taken from its shared
    memory and released, not decoded; needs ``--libertem-python``, a Python
    with ``libertem-live`` and ``libertem-qd-mpx``), (c) a plain Python
    ``recv_into`` loop. Frames per second from the first frame to the last.
``persist``
    ``diffraflow replay`` of a cube at ``--rate`` into ``diffraflow live``
    (raw frames persisted, no pipeline): the replay's achieved rate and the
    time it was held back, frames missing, the persist rate; ``--rate 0``
    finds the highest sustained rate (the receiver sets the pace).
``slow``
    ``diffraflow live`` with a pipeline ``--slowdown`` times slower than the
    stream: peak RSS of the live process (psutil, 20 ms polls) and frames
    missing, for two scan lengths.
``latency``
    ``diffraflow live`` with a virtual-image pipeline at ``--rate``: the
    summary's arrival-to-result latency.

Examples
--------
    python bench/live.py receive --frames 20000 --libertem-python /tmp/ltvenv/bin/python
    python bench/live.py persist --kind ebsd --rate 6000 --frames 60000
    python bench/live.py persist --kind merlin12 --rate 2000 --frames 10000
    python bench/live.py slow --kind ebsd --rate 6000 --frames 30000 60000 --slowdown 10
    python bench/live.py latency --kind merlin12 --rate 2000 --frames 10000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- frames -------------------------------------------------------------------------------------------
def make_frames(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """A pool of ``n`` distinct frames: ``ebsd`` 60x60 uint8 Kikuchi-like, ``merlin12`` 256x256 12-bit
    Poisson diffraction, ``merlin8`` 256x256 uint8."""
    rng = np.random.default_rng(seed)
    if kind == "ebsd":
        yy, xx = np.mgrid[:60, :60]
        base = 90 + 60 * np.exp(-((yy - 30) ** 2 + (xx - 30) ** 2) / 900.0)
        bands = 20 * np.cos((yy[None] * np.cos(rng.uniform(0, np.pi, (n, 1, 1)))
                             + xx[None] * np.sin(rng.uniform(0, np.pi, (n, 1, 1)))) / 3.0)
        return np.clip(rng.poisson(base[None] + bands), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:256, :256]
    disk = np.where((yy - 128) ** 2 + (xx - 128) ** 2 < 30 ** 2, 40.0, 0.5)
    frames = rng.poisson(disk[None], (n, 256, 256))
    if kind == "merlin12":
        return np.minimum(frames, 4095).astype(np.uint16)
    return np.minimum(frames, 255).astype(np.uint8)


def write_cube(path: Path, kind: str, n: int, pool: int = 256) -> Path:
    """A scan cube of ``n`` frames cycling through a pool of distinct ones (square-ish scan)."""
    from diffraflow.flow.store import create_cube

    frames = make_frames(kind, pool)
    cols = 200 if kind == "ebsd" else 100
    rows = n // cols
    det = frames.shape[1:]
    with create_cube(path, scan_shape=(rows, cols), det_shape=det, dtype=frames.dtype, overwrite=True,
                     attrs={"modality": "ebsd" if kind == "ebsd" else "4dstem", "detector": {"shape": list(det)}}) as w:
        for start in range(0, rows * cols, pool):
            w.patterns.append(frames[: min(pool, rows * cols - start)])
        w.finalize()
    return path


# -- the sender process ---------------------------------------------------------------------------------
SERVE = """
import sys, time, json, socket
sys.path.insert(0, {root!r})
import numpy as np
from bench.live import make_frames
from diffraflow.flow.readers.merlin_format import encode_frame, mpx_prefix

# A fast simulated Merlin for receive benchmarks: blocks of 64 whole messages, one send each, only the
# sequence numbers patched per block, so the sender outpaces every receiver measured.
n = {n}
pool = make_frames({kind!r}, 64)
body = [encode_frame(f, 1, counter_depth=8 if pool.dtype.itemsize == 1 else 12) for f in pool]
record = len(mpx_prefix(len(body[0]))) + len(body[0])
block = np.frombuffer(b"".join(mpx_prefix(len(b)) + b for b in body), np.uint8).copy().reshape(64, record)
hdr = ("HDR,\\t\\nFrames in Acquisition (Number):\\t%d\\nFrames per Trigger (Number):\\t%d\\nEnd\\t" % (n, n)).encode()
server = socket.create_server(("127.0.0.1", {port}))
print("ready", flush=True)
conn, _ = server.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
conn.sendall(mpx_prefix(len(hdr)) + hdr)
powers = 10 ** np.arange(5, -1, -1)
t0 = time.perf_counter()
for first in range(0, n, 64):
    k = min(64, n - first)
    seq = np.arange(first + 1, first + k + 1)
    block[:k, 19:25] = (seq[:, None] // powers % 10 + 48).astype(np.uint8)
    conn.sendall(block[:k].tobytes())
t1 = time.perf_counter()
conn.close()
print(json.dumps({{"sent": n, "seconds": t1 - t0}}), flush=True)
"""


def start_sender(kind: str, n: int, port: int) -> subprocess.Popen:
    code = SERVE.format(root=str(ROOT), kind=kind, n=n, port=port)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


# -- receivers ------------------------------------------------------------------------------------------
class _NullArray:
    def write_region(self, *args) -> None:
        pass


class _NullWriter:
    """A raw-cube writer that keeps nothing: receive-only measurements."""

    def __init__(self, layout) -> None:
        self.patterns = type("P", (), {"layout": layout, "array": None})()
        self.patterns.write_region = lambda *a: None
        self.acquisition_extra: dict = {}
        self.final = Path("/dev/null")

    def record_acquisition(self, *a, **k) -> None:
        pass

    def write_variable(self, *a, **k) -> None:
        pass

    def finalize(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def _release(self) -> None:
        pass


def receive_ours(port: int, n: int) -> dict:
    from diffraflow.flow.live.core import ReceiverCore
    from diffraflow.flow.live.merlin import MerlinClient

    core = ReceiverCore(lambda acq, layout: _NullWriter(layout), slots=4096)
    core._check_store = lambda acq: None  # the null writer has no array to check
    stop = threading.Event()
    client = MerlinClient("127.0.0.1", port)
    thread = threading.Thread(target=client.run, args=(core, stop), daemon=True)
    thread.start()
    core.finished.wait(600)
    stop.set()
    thread.join(10)
    led = core.ledger
    return {"frames": int(led.received), "fps": (led.received - 1) / (core.t_last - core.t_first),
            "missing": int(led.summary()["missing"])}


def receive_plain(port: int, n: int) -> dict:
    """A plain Python loop: recv_into a fixed buffer, message by message (length from the MPX prefix)."""
    sock = socket.create_connection(("127.0.0.1", port))
    buf = bytearray(1 << 20)
    view = memoryview(buf)

    def read_exact(nbytes: int) -> None:
        got = 0
        while got < nbytes:
            k = sock.recv_into(view[got:nbytes])
            if not k:
                raise EOFError
            got += k

    read_exact(15)
    read_exact(int(bytes(view[4:14])) - 1)  # the acquisition header
    t0 = t1 = 0.0
    for i in range(n):
        read_exact(15)
        read_exact(int(bytes(view[4:14])) - 1)
        t1 = time.perf_counter()
        if i == 0:
            t0 = t1
    sock.close()
    return {"frames": n, "fps": (n - 1) / (t1 - t0)}


LIBERTEM = """
import json, sys, time, tempfile, os
from libertem_qd_mpx import QdConnection, CamClient
socket_path = os.path.join(tempfile.mkdtemp(), "qd.socket")
conn = QdConnection(data_host="127.0.0.1", data_port={port}, frame_stack_size=16, shm_handle_path=socket_path,
                    num_slots=2000, bytes_per_frame={frame_bytes})
cam = CamClient(handle_path=socket_path)
conn.start_passive()
header = conn.wait_for_arm(60)
n = 0
t0 = t1 = None
while True:
    stack = conn.get_next_stack(16)
    if stack is None:
        break
    n += len(stack)
    t1 = time.perf_counter()
    t0 = t0 or t1
    cam.done(stack)
conn.close()
print(json.dumps({{"frames": n, "fps": (n - 16) / (t1 - t0)}}))
"""


def receive_libertem(python: str, port: int, frame_bytes: int) -> dict:
    code = LIBERTEM.format(port=port, frame_bytes=frame_bytes)
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def cmd_receive(args) -> list[dict]:
    rows = []
    frame_bytes = 256 * 256 * (2 if args.kind == "merlin12" else 1)
    n = args.frames[0]
    for rep in range(args.repeats):
        for name in args.receivers:
            if name == "libertem" and not args.libertem_python:
                continue
            port = _free_port()
            sender = start_sender(args.kind, n, port)
            try:
                if name == "ours":
                    got = receive_ours(port, n)
                elif name == "plain":
                    got = receive_plain(port, n)
                else:
                    got = receive_libertem(args.libertem_python, port, frame_bytes)
            finally:
                out, _ = sender.communicate(timeout=120)
            stats = json.loads(out.strip().splitlines()[-1])
            got.update(receiver=name, repeat=rep, kind=args.kind, frames_sent=n,
                       stream_fps=round(stats["sent"] / stats["seconds"], 1), fps=round(got["fps"], 1))
            rows.append(got)
            print(json.dumps(got), flush=True)
    return rows


# -- diffraflow live in a subprocess ---------------------------------------------------------------------
def _peak_rss(proc: subprocess.Popen, out: dict) -> None:
    import psutil

    peak = 0
    try:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
            except psutil.Error:
                break
            peak = max(peak, rss)
            time.sleep(0.02)
    except psutil.Error:
        pass
    out["peak_rss_mb"] = round(peak / 2**20, 1)


def live_run(cube: Path, work: Path, rate: float, pipeline: str | None = None, extra: list[str] = ()) -> dict:
    port = _free_port()
    replay = subprocess.Popen([sys.executable, "-m", "diffraflow", "replay", str(cube), "--protocol", "merlin",
                               "--rate", str(rate), "--listen", f"127.0.0.1:{port}"], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    raw, res = work / "raw.zarr", work / "out.zarr"
    cmd = [sys.executable, "-m", "diffraflow", "live", "--protocol", "merlin", "--connect", f"127.0.0.1:{port}",
           "--output", str(raw), "--overwrite", "--quiet", *extra]
    if pipeline:
        cmd[4:4] = [pipeline]
        cmd += ["--results", str(res)]
    t0 = time.perf_counter()
    live = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mem: dict = {}
    watcher = threading.Thread(target=_peak_rss, args=(live, mem))
    watcher.start()
    out, err = live.communicate(timeout=1800)
    wall = time.perf_counter() - t0
    watcher.join()
    rout, _ = replay.communicate(timeout=60)
    summary = json.loads(((res if pipeline else raw).with_name((res if pipeline else raw).name + ".live.json"))
                         .read_text())
    sent = [line for line in rout.splitlines() if "sent" in line]
    return {"exit": live.returncode, "wall_s": round(wall, 2), "replay": sent[-1] if sent else rout[-300:],
            "received": summary.get("received"), "missing": summary.get("missing"),
            "persist_rate_fps": summary.get("persist_rate_fps"), "receive_rate_fps": summary.get("receive_rate_fps"),
            "blocked_s": summary["slots"]["seconds_receiver_blocked"], "slots": summary["slots"],
            "latency_s": summary.get("latency_s"), "processed": summary.get("processed"), **mem,
            "stderr": err[-500:] if live.returncode not in (0,) else ""}


def cmd_persist(args) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="dfl-live-", dir=args.workdir))
    cube = write_cube(work / "src.zarr", args.kind, args.frames[0])
    rows = []
    for rate in args.rate:
        got = live_run(cube, work, rate)
        got.update(kind=args.kind, rate=rate, frames=args.frames[0])
        rows.append(got)
        print(json.dumps(got), flush=True)
    return rows


def cmd_slow(args) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="dfl-live-", dir=args.workdir))
    rows = []
    for n in args.frames:
        cube = write_cube(work / f"src{n}.zarr", args.kind, n)
        chunk = 1000
        delay = chunk / (args.rate[0] / args.slowdown)  # seconds per chunk: the pipeline at rate/slowdown
        pipe = work / "slow.json"
        pipe.write_text(json.dumps({"pipeline": 1, "output": {"chunk_frames": chunk},
                                    "steps": [{"op": "test_slow", "params": {"delay": delay}}]}))
        extra = ["--plugin", "tests.flow.engine_fixtures", "--scheduler", "threads", "--workers", "1"]
        if args.slots:
            extra += ["--slots", str(args.slots)]
        got = live_run(cube, work, args.rate[0], str(pipe), extra)
        got.update(kind=args.kind, rate=args.rate[0], frames=n, slowdown=args.slowdown, delay_per_chunk_s=delay,
                   slots_asked=args.slots)
        rows.append(got)
        print(json.dumps(got), flush=True)
    return rows


def cmd_latency(args) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="dfl-live-", dir=args.workdir))
    cube = write_cube(work / "src.zarr", args.kind, args.frames[0])
    pipe = work / "vi.json"
    pipe.write_text(json.dumps({"pipeline": 1, "steps": [
        {"op": "virtual_image", "params": {"masks": [{"type": "disk", "radius": 8},
                                                     {"type": "annulus", "inner": 10, "outer": 25}]}}]}))
    got = live_run(cube, work, args.rate[0], str(pipe))
    got.update(kind=args.kind, rate=args.rate[0], frames=args.frames[0])
    print(json.dumps(got), flush=True)
    return [got]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__.split("Examples")[0]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["receive", "persist", "slow", "latency"])
    parser.add_argument("--kind", choices=["ebsd", "merlin12", "merlin8"], default="merlin8")
    parser.add_argument("--frames", type=int, nargs="+", default=[20000])
    parser.add_argument("--rate", type=float, nargs="+", default=[0.0])
    parser.add_argument("--slowdown", type=float, default=10.0)
    parser.add_argument("--slots", type=int, default=None, help="slow: the receive pool (frames)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--receivers", nargs="+", default=["ours", "libertem", "plain"])
    parser.add_argument("--libertem-python", default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="append the rows to this JSON-lines file")
    args = parser.parse_args(argv)
    rows = {"receive": cmd_receive, "persist": cmd_persist, "slow": cmd_slow, "latency": cmd_latency}[args.what](args)
    if args.json:
        with open(args.json, "a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
