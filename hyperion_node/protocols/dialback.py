"""``/hyperion/dialback/1``: a connected peer asks us to open a TCP connection to its own addresses, so that
`doctor` can tell whether they are reachable from outside.

::

    asker (opener)                       dialler (answerer)
    DIALBACK-REQUEST {addrs} ──────────▶  only the asker's observed IP, only ports it announces,
                                          rate-limited per peer
                          ◀──────────── DIALBACK-RESULT {addr, ok}*   open or closed, no error text

Messages travel in signed envelopes (``hyperion_node.p2p.messages``). Unchecked, this was a port scanner: any
peer could make a node connect to any address and learn open or closed (160 ports in 0.29 s, the node's own
loopback-only API port among them).
"""

from __future__ import annotations

from hyperion_node.p2p.messages import MAX_DIALBACK_BYTES, TYPE_DIALBACK_REQUEST, TYPE_DIALBACK_RESULT
from hyperion_node.protocols.machine import Conversation, Protocol, Side

PROTOCOL_ID = "/hyperion/dialback/1"
ASKER, DIALLER = Side.OPENER, Side.ANSWERER
# Dial-backs one peer may ask for: a burst of 2, then one a minute (`doctor` asks once per run).
RATE_PER_S = 1 / 60
BURST = 2.0
MAX_PROBES = 4  # addresses probed per request

DIALBACK = Protocol(
    protocol_id=PROTOCOL_ID,
    start="await_request",
    moves={
        "await_request": {(ASKER, TYPE_DIALBACK_REQUEST): "probing"},
        "probing": {(DIALLER, TYPE_DIALBACK_RESULT): "answered"},
        "answered": {},
    },
    max_frame={ASKER: MAX_DIALBACK_BYTES, DIALLER: MAX_DIALBACK_BYTES},
)


def asker_side() -> Conversation:
    return Conversation(DIALBACK, ASKER)


def dialler_side() -> Conversation:
    return Conversation(DIALBACK, DIALLER)
