"""The live view, checked in a real headless browser (Debian's chromium) while a scan runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.request

import numpy as np
import pytest
from diffraflow.flow.live.merlin import MerlinClient, MerlinServer
from diffraflow.flow.live.session import LiveSession
from diffraflow.flow.live.view import LiveView

from tests.flow.live.helpers import frames12

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(url: str, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=2500", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_live_view_fills_in_while_the_scan_runs(tmp_path):
    frames = frames12(80, (16, 16), seed=21)
    server = MerlinServer(frames, scan_shape=(8, 10), port=0, rate=16).start()
    pipeline = {"pipeline": 1, "steps": [{"op": "virtual_image", "params": {"masks": [{"type": "disk",
                                                                                      "radius": 4}]}}]}
    seen: dict[str, object] = {}

    def on_ready(session):
        view = LiveView(session, port=0).start()
        seen["view"] = view

        def look():
            # wait until some results exist but the scan is still going, then ask the browser
            while not session.core.finished.is_set():
                if session.sink is not None and session.sink.done_frames.get(0, 0) >= 10:
                    seen["dom"] = _browser(view.url, "--dump-dom")
                    _browser(view.url, f"--screenshot={tmp_path / 'view.png'}", "--window-size=1000,900")
                    seen["map"] = urllib.request.urlopen(view.url + "map/virtual_image%2Fimages%5B0%5D.png").read()
                    return
                threading.Event().wait(0.1)

        seen["thread"] = threading.Thread(target=look, daemon=True)
        seen["thread"].start()

    try:
        report = LiveSession(MerlinClient("127.0.0.1", server.port), tmp_path / "raw.zarr",
                             results=tmp_path / "out.zarr", pipeline=pipeline, progress=False,
                             on_ready=on_ready).run()
        seen["thread"].join(60)
    finally:
        server.stop()
        if "view" in seen:
            seen["view"].stop()
    assert report.exit_status == 0
    dom = seen["dom"]
    received = int(re.search(r'id="received">(\d+)<', dom).group(1))
    processed = int(re.search(r'id="processed">(\d+)<', dom).group(1))
    assert 0 < processed <= received < 80  # the browser looked while frames were still arriving
    assert 'id="state">receiving<' in dom and 'id="frames_expected">80<' in dom
    assert 'figcaption>virtual_image/images[0]</figcaption>' in dom  # the map was added by the page's script
    assert seen["map"][:4] == b"\x89PNG" and (tmp_path / "view.png").stat().st_size > 1000
    status = json.loads(json.dumps(report.summary))
    assert status["processed"] == 80


def test_view_status_and_pages_over_http(tmp_path):
    frames = frames12(8, (8, 8), seed=22)
    server = MerlinServer(frames, scan_shape=(2, 4), port=0).start()
    try:
        session = LiveSession(MerlinClient("127.0.0.1", server.port), tmp_path / "raw.zarr", progress=False)
        session.run()
    finally:
        server.stop()
    view = LiveView(session, port=0).start()
    try:
        assert view.host == "127.0.0.1"
        page = urllib.request.urlopen(view.url).read().decode()
        status = json.load(urllib.request.urlopen(view.url + "status.json"))
        frame = urllib.request.urlopen(view.url + "frame.png").read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(view.url + "nothing")
    finally:
        view.stop()
    assert "<title>diffraflow live</title>" in page and "http" not in page.split("<script>")[1]
    assert status["persisted"] == 8 and status["missing"] == 0 and frame[:4] == b"\x89PNG"
    assert np.isfinite(status["rate_fps"])
