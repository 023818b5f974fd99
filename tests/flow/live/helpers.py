"""Simulated senders and small cubes for the live tests (seeded, tiny, on 127.0.0.1)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
from diffraflow.flow.readers.merlin_format import encode_frame, mpx_prefix
from diffraflow.flow.store import create_cube

REAL = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "real"
MIB = REAL / "merlin_4x2_6bit.mib"


def frames12(n: int, shape=(16, 16), seed: int = 0) -> np.ndarray:
    """Seeded 12-bit frames as uint16."""
    return np.random.default_rng(seed).integers(0, 4096, (n, *shape), dtype=np.uint16)


def hdr(n: int, per_trigger: int, stamp: str = "01/01/2026 00:00:00", depth: int = 12, scan=None) -> bytes:
    text = (f"HDR,\t\nTime and Date Stamp (day, mnth, yr, hr, min, s):\t{stamp}\nCounter Depth (number):\t{depth}\n"
            f"Frames in Acquisition (Number):\t{n}\nFrames per Trigger (Number):\t{per_trigger}\n")
    if scan:
        text += f"ScanY:\t{scan[0]}\nScanX:\t{scan[1]}\n"
    body = (text + "End\t").encode("latin-1")
    return mpx_prefix(len(body)) + body


def frame_msg(frame: np.ndarray, sequence: int, depth: int | None = None) -> bytes:
    body = encode_frame(frame, sequence, counter_depth=depth)
    return mpx_prefix(len(body)) + body


class ScriptedSender:
    """A TCP listener that plays one scripted byte sequence per connection (then closes it)."""

    def __init__(self, scripts: list[list[bytes]], pause: float = 0.0) -> None:
        self.scripts = scripts
        self.pause = pause
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for script in self.scripts:
            while not self.stop.is_set():
                try:
                    conn, _ = self.sock.accept()
                    break
                except TimeoutError:
                    continue
            else:
                return
            try:
                for chunk in script:
                    conn.sendall(chunk)
                    if self.pause:
                        time.sleep(self.pause)
            except OSError:
                pass
            finally:
                time.sleep(0.05)
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def cube(path: Path, frames: np.ndarray, scan_shape, modality: str = "4dstem") -> Path:
    with create_cube(path, scan_shape=scan_shape, det_shape=frames.shape[1:], dtype=frames.dtype,
                     attrs={"modality": modality, "detector": {"shape": list(frames.shape[1:])}}) as w:
        w.patterns.append(frames)
        return w.finalize()


def encode_raw(frame: np.ndarray, depth: int, layout: str = "1x1") -> bytes:
    """A frame as Merlin raw (R64) read-out, written independently of the decoder (test oracle)."""
    frame = np.asarray(frame)
    if layout == "1x1":
        rows = [frame[r] for r in range(256)]
    else:
        gap = 2 if layout.endswith("G") else 0
        rows = []
        for r in range(256):
            bottom = frame[frame.shape[0] - 1 - r]
            q1, q2 = frame[r, :256], frame[r, 256 + gap:]
            q3, q4 = bottom[:256][::-1], bottom[256 + gap:][::-1]
            rows += [q4, q3, q2, q1]
    out = bytearray()
    for row in rows:
        for start in range(0, 256, {1: 64, 6: 8, 12: 4}[depth]):
            group = [int(v) for v in row[start:start + {1: 64, 6: 8, 12: 4}[depth]]]
            if depth == 1:
                word = sum((v & 1) << k for k, v in enumerate(group))
            elif depth == 6:
                word = sum((v & 0xFF) << (8 * k) for k, v in enumerate(group))
            else:
                word = sum((v & 0xFFFF) << (16 * k) for k, v in enumerate(group))
            out += word.to_bytes(8, "big")
    return bytes(out)


def raw_header(sequence: int, depth: int, layout: str = "1x1") -> bytes:
    chips, size = (1, 384) if layout == "1x1" else (4, 768)
    head = (f"MQ1,{sequence:06d},{size:05d},{chips:02d},0256,0256,R64,{layout:>6},0F,2026-01-01 00:00:00.0,0.001,"
            f"0,0,0,MQ1A,2026-01-01T00:00:00.0Z,1000000ns,{depth},").encode()
    return head.ljust(size, b"\x00")
