"""The live view of ``diffraflow live --view``: a small local web page that fills in as the scan runs.

:class:`LiveView` serves, on 127.0.0.1 unless told otherwise:

* ``/`` — the page: frames received / persisted / processed / missing, the
  frame rate, the slot pool, the fault counts, the latest frame, and every
  map of the result store (virtual images, per-frame scalars, the IPF
  orientation map of a crystal map), refreshed twice a second;
* ``/status.json`` — the counts (the same as the progress line);
* ``/frame.png`` — the latest frame received;
* ``/map/<name>.png`` — one result map as it stands (points not yet
  processed are dark).

The page loads nothing from elsewhere (no scripts, fonts or styles from
the network) and the server only reads: the stores, the receiver's counts.

Examples
--------
>>> import json, urllib.request
>>> from diffraflow.flow.live.inprocess import InProcessStream
>>> from diffraflow.flow.live.session import LiveSession
>>> view = LiveView(LiveSession(InProcessStream(), "/tmp/never.zarr", progress=False), port=0).start()
>>> json.load(urllib.request.urlopen(view.url + "status.json"))["state"]
'waiting for the detector'
>>> view.stop()
"""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import numpy as np

__all__ = ["LiveView", "to_png"]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>diffraflow live</title>
<style>
body{font-family:sans-serif;margin:1em;background:#fafafa;color:#222}
table{border-collapse:collapse}td{padding:2px 10px}td.n{text-align:right;font-variant-numeric:tabular-nums}
.maps{display:flex;flex-wrap:wrap;gap:12px}.maps figure{margin:0}
img{image-rendering:pixelated;border:1px solid #ccc;background:#000;width:256px}
figcaption{font-size:80%}
</style></head>
<body>
<h1>diffraflow live</h1>
<p id="state">connecting...</p>
<table id="counts">
<tr><td>received</td><td class="n" id="received">-</td></tr>
<tr><td>persisted</td><td class="n" id="persisted">-</td></tr>
<tr><td>processed</td><td class="n" id="processed">-</td></tr>
<tr><td>missing</td><td class="n" id="missing">-</td></tr>
<tr><td>frames expected</td><td class="n" id="frames_expected">-</td></tr>
<tr><td>frame rate (frames/s)</td><td class="n" id="rate_fps">-</td></tr>
<tr><td>slots in use</td><td class="n" id="slots">-</td></tr>
<tr><td>faults</td><td id="faults">-</td></tr>
</table>
<h2>latest frame</h2>
<img id="frame" alt="latest frame" src="frame.png">
<h2>results</h2>
<div class="maps" id="maps"></div>
<script>
async function refresh(){
  try{
    const s = await (await fetch('status.json',{cache:'no-store'})).json();
    document.getElementById('state').textContent = s.state;
    for (const k of ['received','persisted','processed','missing','frames_expected']){
      document.getElementById(k).textContent = (s[k] ?? '-');
    }
    document.getElementById('rate_fps').textContent = (s.rate_fps ?? 0).toFixed(0);
    document.getElementById('slots').textContent = s.slots_in_use + ' / ' + s.slots;
    const f = s.faults || {};
    document.getElementById('faults').textContent =
      Object.entries(f).filter(([k,v]) => v).map(([k,v]) => k + ' ' + v).join(', ') || 'none';
    const t = Date.now();
    document.getElementById('frame').src = 'frame.png?t=' + t;
    const maps = document.getElementById('maps');
    for (const name of (s.maps || [])){
      let img = document.getElementById('map:' + name);
      if (!img){
        const fig = document.createElement('figure');
        img = document.createElement('img'); img.id = 'map:' + name; img.alt = name;
        const cap = document.createElement('figcaption'); cap.textContent = name;
        fig.appendChild(img); fig.appendChild(cap); maps.appendChild(fig);
      }
      img.src = 'map/' + encodeURIComponent(name) + '.png?t=' + t;
    }
    document.body.dataset.updated = String(t);
  }catch(e){ document.getElementById('state').textContent = 'no answer from diffraflow live'; }
}
refresh(); setInterval(refresh, 500);
</script>
</body></html>
"""


def to_png(image: np.ndarray) -> bytes:
    """A 2-d map (grey, scaled to its 1st-99th percentile; NaN black) or an RGB ``(y, x, 3)`` in [0, 1] as PNG.

    Examples
    --------
    >>> to_png(np.arange(6.0).reshape(2, 3))[:4]
    b'\\x89PNG'
    """
    from PIL import Image

    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        data = (np.clip(np.nan_to_num(image), 0, 1) * 255).astype(np.uint8)
        pic = Image.fromarray(data, "RGB")
    else:
        finite = image[np.isfinite(image)]
        lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
        scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
        data = (np.clip(np.nan_to_num(scaled, nan=0.0), 0, 1) * 255).astype(np.uint8)
        pic = Image.fromarray(data, "L")
    out = io.BytesIO()
    pic.save(out, format="PNG")
    return out.getvalue()


class LiveView:
    """Serve the live page of a :class:`~diffraflow.flow.live.session.LiveSession`.

    Parameters
    ----------
    session
        The session to show.
    host
        Listening address (127.0.0.1: this machine only).
    port
        Port (0: any free one; see :attr:`url`).
    """

    def __init__(self, session: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.session = session
        view = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                view._handle(self)

            def log_message(self, *args: Any) -> None:  # requests are not logged to the terminal
                pass

        self._server = ThreadingHTTPServer((host, int(port)), Handler)
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self.url = f"http://{host}:{self.port}/"
        self._thread: threading.Thread | None = None
        self._maps: dict[str, tuple[float, bytes]] = {}

    def start(self) -> LiveView:
        self._thread = threading.Thread(target=self._server.serve_forever, name="diffraflow-live-view",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- pages ----------------------------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        path = unquote(request.path.split("?", 1)[0])
        try:
            if path in ("/", "/index.html"):
                body, kind = PAGE.encode(), "text/html; charset=utf-8"
            elif path == "/status.json":
                status = self.session.status()
                status["maps"] = sorted(self._map_sources())
                body, kind = json.dumps(status).encode(), "application/json"
            elif path == "/frame.png":
                body, kind = to_png(self._latest_frame()), "image/png"
            elif path.startswith("/map/") and path.endswith(".png"):
                body, kind = self._map_png(path[5:-4]), "image/png"
            else:
                request.send_error(404, "not found")
                return
        except Exception as exc:  # a view never takes the session down: it answers 500 and goes on
            request.send_error(500, f"{type(exc).__name__}")
            return
        request.send_response(200)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Cache-Control", "no-store")
        request.end_headers()
        request.wfile.write(body)

    def _latest_frame(self) -> np.ndarray:
        core = self.session.core
        acq, latest = core.acquisition, core.latest
        if acq is None or latest is None:
            return np.zeros((8, 8))
        frame: np.ndarray = latest[1].view(acq.wire_dtype or acq.dtype).reshape(acq.det_shape)
        return frame[::-1] if acq.flip_rows else frame

    def _map_sources(self) -> dict[str, tuple[str, int | None]]:
        """Result maps to show: name -> (array key, index along the last dim or None); crystal maps: ("ipf", ...)."""
        results = self.session.results
        if results is None or not (results / "zarr.json").is_file():
            return {}
        try:
            record = json.loads((results / "zarr.json").read_text())["attributes"].get("results", {})
        except (OSError, ValueError, KeyError):
            return {}
        found: dict[str, tuple[str, int | None]] = {}
        for step, entry in record.items():
            if entry.get("product") == "crystal_map":
                found[f"{step} orientation (IPF-Z)"] = (f"ipf:{step}", None)
            for var in entry.get("variables", []):
                key = f"{step}/{var}"
                try:
                    meta = json.loads((results / step / var / "zarr.json").read_text())
                except (OSError, ValueError):
                    continue
                dims = meta.get("dimension_names") or []
                shape = meta.get("shape", [])
                if dims[:2] != ["scan_y", "scan_x"]:
                    continue
                if len(shape) == 2:
                    found[key] = (key, None)
                elif len(shape) == 3 and shape[2] <= 8:
                    found.update({f"{key}[{k}]": (key, k) for k in range(shape[2])})
        return found

    def _map_png(self, name: str) -> bytes:
        now = time.monotonic()
        cached = self._maps.get(name)
        if cached is not None and now - cached[0] < 0.5:
            return cached[1]
        source = self._map_sources().get(name)
        if source is None:
            raise KeyError(name)
        key, index = source
        if key.startswith("ipf:"):
            from diffraflow.flow.crystal_map import read_crystal_map
            from diffraflow.flow.plots_crystal import ipf_rgb

            image = ipf_rgb(read_crystal_map(self.session.results, key[4:]))
        else:
            import zarr

            arr = zarr.open_array(str(self.session.results / key), mode="r", zarr_format=3)
            image = np.asarray(arr[...] if index is None else arr[..., index], dtype=np.float64)
        body = to_png(image)
        self._maps[name] = (now, body)
        return body
