"""``diffraflow live`` (receive a detector stream, persist it, run a pipeline on it) and ``diffraflow replay``.

``live`` connects to a detector (Merlin data port, DECTRIS stream V2, or the
generic ZeroMQ framing), writes every frame to the raw cube first (shard by
shard, with backpressure on the detector when the disk falls behind), runs
the pipeline on the persisted frames as they come, and ends on its own once
the announced (or given) number of frames is persisted and processed.
Ctrl-C or ``--timeout`` end it early with the same report; running the same
command again resumes into the same stores.

Exit status: 0 every frame received and processed; 1 the scan ended with
frames missing (listed in the summary; the raw cube's ``received`` map marks
them); 2 an error (one line); 3 stopped by ``--timeout``; 130 Ctrl-C.

``replay`` serves a stored cube (or a Merlin ``.mib`` file, byte for byte) as
a detector stream at a frame rate: the simulated detector of tests, demos
and benchmarks. Listeners bind to 127.0.0.1 unless an address is given.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from diffraflow.flow.cli import non_negative_int, positive_float, positive_int
from diffraflow.schemas.cube import PC_CONVENTIONS

PROTOCOLS = ("merlin", "dectris", "zmq")
DEFAULT_PORTS = {"merlin": 6342, "dectris": 31001, "zmq": 5555}


def register(subparsers: Any) -> None:
    """Add the ``live`` and ``replay`` subcommands.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    import argparse

    parser = subparsers.add_parser(
        "live", help="receive a detector stream: raw frames persisted first, a pipeline run on them live",
        description="Receive a live detector stream into a raw scan cube (every frame persisted, with "
                    "backpressure instead of loss) and run a pipeline on it while the scan runs.",
        epilog="exit status: 0 complete; 1 frames missing (see the summary); 2 error; 3 --timeout; 130 Ctrl-C. "
               "Running the same command again resumes.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?", help="pipeline file (YAML); leave out to receive and persist only")
    parser.add_argument("--protocol", choices=PROTOCOLS, required=True,
                        help="merlin (TCP data port), dectris (SIMPLON stream V2), zmq (generic framing)")
    parser.add_argument("--connect", required=True, metavar="HOST:PORT",
                        help="the detector's data address (merlin 6342, dectris 31001, zmq 5555 by default)")
    parser.add_argument("--output", "-o", required=True, metavar="RAW.zarr", help="raw scan cube to write")
    parser.add_argument("--results", metavar="OUT.zarr", help="result store of the pipeline")
    parser.add_argument("--scan-shape", nargs=2, type=positive_int, metavar=("ROWS", "COLS"),
                        help="scan shape, when the stream does not say it (or to override it)")
    parser.add_argument("--slots", type=positive_int, metavar="N",
                        help="frames the receive pool holds (bounded memory; default: 256 MiB of frames)")
    parser.add_argument("--gap-timeout", type=positive_float, default=10.0, metavar="S",
                        help="seconds before a missing frame is given up, and of silence that ends the scan "
                             "(default 10)")
    parser.add_argument("--connect-timeout", type=positive_float, default=10.0, metavar="S",
                        help="seconds the detector has to answer at first (default 10)")
    parser.add_argument("--timeout", type=positive_float, metavar="S",
                        help="stop after S seconds (the stores stay resumable)")
    parser.add_argument("--acquisitions", type=non_negative_int, default=1, metavar="K",
                        help="merlin: receive K acquisitions on one connection, acquisition k into RAW-k.zarr "
                             "(and OUT-k.zarr); 0: until Ctrl-C (default 1: RAW.zarr)")
    parser.add_argument("--png", metavar="PREFIX", help="at the end, draw every picturable output as PNG")
    parser.add_argument("--view", nargs="?", const=0, type=int, metavar="PORT",
                        help="serve a live view on http://127.0.0.1:PORT (any free port if none is given)")
    parser.add_argument("--view-host", default="127.0.0.1", metavar="HOST",
                        help="address the live view listens on (default 127.0.0.1: this machine only)")
    parser.add_argument("--scheduler", default="threads",
                        help="inline, threads (default), local or a dask scheduler address tcp://host:port")
    parser.add_argument("--workers", type=positive_int, help="threads, or local-cluster workers")
    parser.add_argument("--chunk-frames", type=positive_int, help="frames per pipeline chunk")
    parser.add_argument("--window", type=positive_int, help="chunk tasks in flight at once")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier stores instead of resuming them")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import operator plugins")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    parser.add_argument("--modality", choices=["ebsd", "tkd", "4dstem", "sped"], help="modality of the scan")
    parser.add_argument("--energy", type=float, metavar="KV", help="beam energy in kV")
    parser.add_argument("--step", nargs=2, type=float, metavar=("Y", "X"), help="scan step sizes")
    parser.add_argument("--step-unit", choices=["um", "nm"], help="unit of --step (default um)")
    parser.add_argument("--pc", nargs=3, type=float, metavar=("X", "Y", "Z"), help="projection centre")
    parser.add_argument("--pc-convention", choices=PC_CONVENTIONS, help="convention of --pc (default bruker)")
    parser.add_argument("--sample-tilt", type=float, metavar="DEG", help="sample tilt in degrees")
    parser.set_defaults(func=run_live)

    replay = subparsers.add_parser(
        "replay", help="serve a stored cube (or a .mib file) as a detector stream (a simulated detector)",
        description="Serve a scan cube as a live detector stream at a frame rate: Merlin TCP data port, "
                    "DECTRIS SIMPLON stream V2 (ZeroMQ PUSH, CBOR) or the generic ZeroMQ framing.")
    replay.add_argument("input", metavar="CUBE.zarr", help="scan cube, or a Merlin .mib file (merlin only)")
    replay.add_argument("--protocol", choices=PROTOCOLS, required=True)
    replay.add_argument("--rate", type=float, default=0.0, metavar="FPS",
                        help="frames per second (default 0: as fast as the receiver takes them)")
    replay.add_argument("--listen", metavar="HOST:PORT",
                        help="address to serve on (default 127.0.0.1 and the protocol's port)")
    replay.add_argument("--compression", choices=["bslz4", "lz4", "none"], default="bslz4",
                        help="dectris: frame compression (default bslz4)")
    replay.add_argument("--repeat", type=positive_int, default=1, metavar="K",
                        help="send the acquisition K times (merlin: on one connection, each with its header)")
    replay.add_argument("--junk", type=int, default=0, metavar="BYTES",
                        help="merlin: send this many bytes of garbage before the header")
    replay.add_argument("--on-reconnect", choices=["continue", "restart"], default="continue",
                        help="merlin: a new connection gets the frames still to come, or the scan again")
    replay.add_argument("--quiet", "-q", action="store_true", help="no summary line")
    replay.set_defaults(func=run_replay)


def parse_address(text: str, default_port: int, option: str = "--connect") -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, or ``tcp://HOST:PORT``) as a host and a port.

    Examples
    --------
    >>> parse_address("tcp://10.0.0.2:6342", 1)
    ('10.0.0.2', 6342)
    >>> parse_address("localhost", 6342)
    ('localhost', 6342)
    >>> parse_address("host:x", 6342)
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.SchemaError: --connect: 'host:x' is not HOST:PORT with a port of 1 to 65535 (fix: e.g. --connect 127.0.0.1:6342)
    """
    from diffraflow.schemas.errors import SchemaError

    body = text.split("://", 1)[-1]
    host, _, port = body.rpartition(":") if ":" in body else (body, "", str(default_port))
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise SchemaError(option, f"{text!r} is not HOST:PORT with a port of 1 to 65535",
                          f"e.g. {option} 127.0.0.1:{default_port}")
    return host.strip("[]"), int(port)


def make_client(protocol: str, address: str, connect_timeout: float = 10.0) -> Any:
    """The receiving client of ``protocol`` for ``address``.

    Examples
    --------
    >>> make_client("merlin", "127.0.0.1:6342").where
    'tcp://127.0.0.1:6342'
    """
    host, port = parse_address(address, DEFAULT_PORTS[protocol])
    if protocol == "merlin":
        from diffraflow.flow.live.merlin import MerlinClient

        return MerlinClient(host, port, connect_timeout=connect_timeout)
    if protocol == "dectris":
        from diffraflow.flow.live.dectris import DectrisClient

        return DectrisClient(host, port, connect_timeout=connect_timeout)
    from diffraflow.flow.live.zmqframes import ZmqFrameClient

    return ZmqFrameClient(host, port, connect_timeout=connect_timeout)


def _user_attrs(args: Any) -> dict[str, Any]:
    from diffraflow.flow.convert import apply_overrides

    attrs = apply_overrides({}, modality=args.modality, pc=args.pc, pc_convention=args.pc_convention,
                            sample_tilt=args.sample_tilt, energy=args.energy, step=args.step,
                            step_unit=args.step_unit)
    if not attrs.get("detector"):
        attrs.pop("detector", None)
    return attrs


def numbered(path: str | None, k: int) -> str | None:
    """The store (or picture prefix) of acquisition ``k`` when several are received: ``NAME-k`` + suffix.

    Examples
    --------
    >>> numbered("/data/raw.zarr", 2), numbered("pictures/scan", 1), numbered(None, 3)
    ('/data/raw-2.zarr', 'pictures/scan-1', None)
    """
    if path is None:
        return None
    from pathlib import Path

    p = Path(path)
    return str(p.with_name(f"{p.stem}-{k}{p.suffix}"))


def run_live(args: Any) -> int:
    """Run ``diffraflow live``: one acquisition, or ``--acquisitions K`` of them on one Merlin connection."""
    from diffraflow.flow.commands.run import import_plugins
    from diffraflow.flow.pipeline import Pipeline
    from diffraflow.schemas.errors import SchemaError

    if (args.pipeline is None) != (args.results is None):
        raise SchemaError("live", "a pipeline needs --results, and --results needs a pipeline",
                          "give PIPELINE.yaml and --results OUT.zarr, or neither to receive and persist only")
    if args.acquisitions != 1 and args.protocol != "merlin":
        raise SchemaError("--acquisitions", f"several acquisitions per run are for merlin, not {args.protocol}",
                          "start diffraflow live once per series (a ZeroMQ sender holds the next series until "
                          "a receiver connects)")
    import_plugins(args.plugin)
    pipeline = Pipeline.from_file(args.pipeline) if args.pipeline else None  # checked before connecting
    client = make_client(args.protocol, args.connect, args.connect_timeout)
    if args.acquisitions == 1:
        return _receive_one(args, client, pipeline, args.output, args.results, args.png)
    client.keep_connection = True  # the next acquisition arrives on the same connection
    worst = 0
    try:
        k = 0
        while args.acquisitions == 0 or k < args.acquisitions:
            k += 1
            status = _receive_one(args, client, pipeline, str(numbered(args.output, k)),
                                  numbered(args.results, k), numbered(args.png, k), f" (acquisition {k})")
            worst = max(worst, status)
            if status not in (0, 1):  # an error, --timeout or Ctrl-C ends the series
                return status
    finally:
        client.close()
    return worst


def _receive_one(args: Any, client: Any, pipeline: Any, output: str, results: str | None,
                 png: str | None, label: str = "") -> int:
    from diffraflow.flow.live.session import LiveSession

    view = None

    def on_ready(session: Any) -> None:
        nonlocal view
        if args.view is not None:
            from diffraflow.flow.live.view import LiveView

            view = LiveView(session, host=args.view_host, port=args.view).start()
            print(f"diffraflow live: view on {view.url}", file=sys.stderr, flush=True)

    session = LiveSession(client, output, results=results, pipeline=pipeline,
                          scan_shape=tuple(args.scan_shape) if args.scan_shape else None, slots=args.slots,
                          gap_timeout=args.gap_timeout, timeout=args.timeout, overwrite=args.overwrite,
                          attrs=_user_attrs(args), executor=args.scheduler, workers=args.workers,
                          chunk_frames=args.chunk_frames, window=args.window, progress=not args.quiet,
                          on_ready=on_ready, command=shlex.join(["diffraflow", "live", *sys.argv[2:]]))
    import signal
    import threading

    def terminate(signum: int, frame: Any) -> None:  # a polite kill ends the session like Ctrl-C: same report, resumable
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        report = session.run()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if view is not None:
            view.stop()
    if not args.quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"diffraflow live{label}: {report.message}")
    print(f"diffraflow live{label}: summary in {report.summary_file}")
    if png and results and report.exit_status in (0, 1):
        from diffraflow.flow.result_plots import plot_result_store
        from diffraflow.flow.store import read_scan_attrs

        scan = read_scan_attrs(output).model_dump(mode="json")
        for path in plot_result_store(results, png, scan_attrs=scan):
            print(f"picture: {path}")
    return int(report.exit_status)


def run_replay(args: Any) -> int:
    from diffraflow.flow.live.replay import replay

    host, port = parse_address(args.listen or "127.0.0.1", DEFAULT_PORTS[args.protocol], "--listen")
    stats = replay(args.input, protocol=args.protocol, host=host, port=port, rate=args.rate,
                   compression=args.compression, repeat=args.repeat, junk=args.junk,
                   on_reconnect=args.on_reconnect,
                   on_listen=lambda where: print(f"diffraflow replay: serving on {where}", file=sys.stderr,
                                                 flush=True))
    if not args.quiet:
        print(f"diffraflow replay: sent {stats['sent']} frames in {stats['seconds']:.2f} s "
              f"({stats['rate_fps']:.0f} frames/s); {stats['blocked_s']:.2f} s spent in send calls over 1 ms "
              "(the receiver holding it back, or a busy machine)")
    return 0
