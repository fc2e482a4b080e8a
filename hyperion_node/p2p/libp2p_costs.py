"""Costs of py-libp2p 0.8.1, per message and per idle minute, that the node takes out, without changing
what goes on the wire in meaning. Installed once, on import of ``hyperion_node.p2p.network``
(``install()``); every host in the process (the daemon's one, or a demo's many) gets them. Measured by
``scripts/bench_gossip.py``, six hosts in one process, each setting side by side with py-libp2p's own
behaviour (README, *Performance*).

1. Yamux receive credit. After a read, ``YamuxStream._auto_tune_and_send_window_update`` returns credit
   with a WINDOW_UPDATE frame whenever the unreturned credit is above zero and below half the window (its
   "partial slack" branch), so about every other read of a small message costs a frame written (Noise-
   encrypted) by the reader and handled by the sender: at gossip rates that was 4,195 window updates
   against 6,198 data frames in a profile. Here credit goes back as go-yamux does it: once the unreturned
   credit reaches half the window, in one update (and the window grows by py-libp2p's own auto-tuning then).
   A sender can always have half a window in flight, so throughput of large transfers is kept (tested
   with a multi-megabyte stream in ``tests/integration/test_libp2p_costs.py``).

2. The signed peer record every pubsub RPC carries. py-libp2p builds it for each RPC sent
   (``env_to_send_in_RPC``: the host's addresses rebuilt as multiaddrs and compared with the cached
   record's, ~1.5 ms under cProfile), and each receiver verifies its Ed25519 signature and rewrites the
   sender's address book with it (``maybe_consume_signed_record``), for every RPC. Here a host's record
   is reused for ``RECORD_REFRESH_S``, and a record byte-identical to the one last accepted from the same
   peer within that time is accepted again without another signature check (the bytes, signature
   included, are the ones already checked). A changed record, or one older than that, goes through
   py-libp2p's own checks as before.

3. On-demand DHT refreshes. py-libp2p's auto-connector asks the DHT for a refresh (a random walk of several
   lookups, each a new stream to every peer it queries) on every check while the node has fewer connections
   than ``min_connections`` -- every 10 s, for ever, in any network smaller than that floor (16 with our
   default ``p2p.max_connections`` of 64). An idle node in a 10-node network ran 114 lookups and 7,208 DHT
   queries in 100 s (cProfile), and answered 4,079. ``throttle_on_demand_refresh`` lets one such refresh
   through per ``ON_DEMAND_REFRESH_MIN_S``; the refresh at start and the periodic one are untouched.
"""

from __future__ import annotations

import math
import time
import weakref
from typing import Any

import libp2p.pubsub.gossipsub as gossipsub_module
import libp2p.pubsub.pubsub as pubsub_module
import trio
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.utils import maybe_consume_signed_record
from libp2p.stream_muxer.yamux.yamux import YamuxStream

RECORD_REFRESH_S = 30.0
ON_DEMAND_REFRESH_MIN_S = 60.0
MAX_REMEMBERED_PEERS = 4096  # per host, before records older than RECORD_REFRESH_S are dropped

_installed = False
_original_window_update = YamuxStream._auto_tune_and_send_window_update
_original_env = env_to_send_in_RPC
_original_consume = maybe_consume_signed_record
# host -> (envelope bytes, when built); host -> peer -> (accepted envelope bytes, when accepted)
_sent: weakref.WeakKeyDictionary[Any, tuple[bytes, float]] = weakref.WeakKeyDictionary()
_accepted: weakref.WeakKeyDictionary[Any, dict[ID, tuple[bytes, float]]] = weakref.WeakKeyDictionary()


async def _window_update_at_half(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """go-yamux's ``sendWindowUpdate``: return credit once half the window is unreturned, not before."""
    total = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        unreturned = self.target_recv_window - (self.recv_window + buffered)
        if unreturned > 0 and unreturned >= self._grow_threshold():
            total = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
    if total > 0:
        await self.send_window_update(total, skip_lock=True)


def _cached_sender_record(host: Any) -> tuple[bytes, bool]:
    now = time.monotonic()
    cached = _sent.get(host)
    if cached is not None and now - cached[1] < RECORD_REFRESH_S:
        return cached[0], False
    envelope, fresh = _original_env(host)
    _sent[host] = (envelope, now)
    return envelope, fresh


def _consume_once(msg: Any, host: Any, peer_id: ID) -> bool:
    if not msg.HasField("senderRecord"):
        return True
    record = bytes(msg.senderRecord)
    now = time.monotonic()
    peers = _accepted.setdefault(host, {})
    known = peers.get(peer_id)
    if known is not None and known[0] == record and now - known[1] < RECORD_REFRESH_S:
        return True
    accepted = bool(_original_consume(msg, host, peer_id))
    if accepted:
        if len(peers) >= MAX_REMEMBERED_PEERS:  # a long-lived node meets many peers: forget the stale ones
            for stale in [p for p, (_, at) in peers.items() if now - at >= RECORD_REFRESH_S]:
                del peers[stale]
        peers[peer_id] = (record, now)
    else:
        peers.pop(peer_id, None)
    return accepted


def throttle_on_demand_refresh(dht: KadDHT, min_interval_s: float = ON_DEMAND_REFRESH_MIN_S) -> None:
    """At most one on-demand routing-table refresh per ``min_interval_s`` for this DHT (item 3 above).
    Call before the DHT runs: ``KadDHT.run`` hands ``trigger_refresh`` to the auto-connector then."""
    manager = dht.rt_refresh_manager
    if manager is None:  # random walk off: nothing triggers refreshes
        return
    trigger = manager.trigger_refresh
    last = -math.inf

    async def throttled() -> None:
        nonlocal last
        now = trio.current_time()
        if now - last < min_interval_s:
            return
        last = now
        await trigger()

    manager.trigger_refresh = throttled  # type: ignore[method-assign]


def install() -> None:
    """Apply changes 1 and 2 to py-libp2p's classes and modules; idempotent. Change 3 is per DHT
    (``throttle_on_demand_refresh``), applied by ``P2PNetwork`` while these are installed."""
    global _installed
    if _installed:
        return
    _installed = True
    YamuxStream._auto_tune_and_send_window_update = _window_update_at_half  # type: ignore[method-assign]
    for module in (pubsub_module, gossipsub_module):
        module.env_to_send_in_RPC = _cached_sender_record  # type: ignore[attr-defined]
        module.maybe_consume_signed_record = _consume_once  # type: ignore[attr-defined]


def uninstall() -> None:
    """py-libp2p's own behaviour again (``scripts/bench_gossip.py`` compares the two side by side)."""
    global _installed
    _installed = False
    YamuxStream._auto_tune_and_send_window_update = _original_window_update  # type: ignore[method-assign]
    for module in (pubsub_module, gossipsub_module):
        module.env_to_send_in_RPC = _original_env  # type: ignore[attr-defined]
        module.maybe_consume_signed_record = _original_consume  # type: ignore[attr-defined]
    _sent.clear()
    _accepted.clear()


def installed() -> bool:
    return _installed

