"""Live acquisition: detector streams received with backpressure, raw frames persisted first.

One module per protocol, all on one receiver core (:mod:`~diffraflow.flow.live.core`):

========================  ==========================================================
:mod:`.merlin`            Quantum Detectors Merlin TCP data port (``MPX`` framing)
:mod:`.dectris`           DECTRIS SIMPLON stream V2 (CBOR over ZeroMQ PULL)
:mod:`.zmqframes`         a generic ZeroMQ framing (JSON header + raw frame parts)
:mod:`.inprocess`         frames handed over in the same process (tests, notebooks)
========================  ==========================================================

:mod:`.session` runs a whole live acquisition (receive, persist, run a
pipeline on the persisted cube, account for every frame); :mod:`.view` is the
local web page of ``diffraflow live --view``; :mod:`.replay` serves a stored
cube as a detector stream (``diffraflow replay``).
"""
