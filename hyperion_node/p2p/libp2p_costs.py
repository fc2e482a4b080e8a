"""Costs of py-libp2p 0.8.1, per message and per idle minute, that the node takes out, without changing
what goes on the wire in meaning. Installed once, on import of ``hyperion_node.p2p.network``
(``install()``); every host in the process (the daemon's one, or a demo's many) gets them. Measured by
side-by-side runs with py-libp2p's own behaviour (``HYPERION_LIBP2P_AS_SHIPPED=1``; docs/performance.md).

1. Yamux receive credit. After a read, ``YamuxStream._auto_tune_and_send_window_update`` returns credit
   with a WINDOW_UPDATE frame whenever the unreturned credit is above zero and below half the window (its
   "partial slack" branch), so about every other read of a small message costs a frame written (Noise-
   encrypted) by the reader and handled by the sender: at the gossip rates of the node's first version that
   was 4,195 window updates against 6,198 data frames in a profile, and every stream of small frames
   (presence, task tokens) pays the same. Here credit goes back as go-yamux does it: once the unreturned
   credit reaches half the window, in one update (and the window grows by py-libp2p's own auto-tuning then).
   A sender can always have half a window in flight, so throughput of large transfers is kept (tested
   with a multi-megabyte stream in ``tests/integration/test_libp2p_costs.py``).

(2. was the signed peer record py-libp2p's pubsub builds and checks for every RPC: gone with gossipsub,
which the node no longer runs, issue #22.)

(3. was py-libp2p's auto-connector asking the DHT for refreshes whose lookups connected to every node they
met: the connector no longer runs at all, ``libp2p_stack`` keeps connections itself.)
"""

from __future__ import annotations

from libp2p.stream_muxer.yamux.yamux import YamuxStream

_installed = False
_original_window_update = YamuxStream._auto_tune_and_send_window_update


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


def install() -> None:
    """Apply change 1 to py-libp2p's yamux streams; idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    YamuxStream._auto_tune_and_send_window_update = _window_update_at_half  # type: ignore[method-assign]


def uninstall() -> None:
    """py-libp2p's own behaviour again."""
    global _installed
    _installed = False
    YamuxStream._auto_tune_and_send_window_update = _original_window_update  # type: ignore[method-assign]


def installed() -> bool:
    return _installed

