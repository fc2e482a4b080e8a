"""Dial-back (``/hyperion/dialback/1``, protocols/dialback.py): a connected peer asks this node to open a TCP
connection to its own addresses, so that its `doctor` can tell whether they are reachable from outside.

Only the asker's observed IP, only the TCP ports it announces (in its signed heartbeats and capability
record, and what identify told the peerstore over its authenticated connection), a burst of two then one a
minute, and the answer says open or closed with no error text: unchecked, any peer could make a node scan
any address (160 ports in 0.29 s, the node's own loopback-only API port among them).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import structlog
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from hyperion_node.p2p.limits import RateLimiter
from hyperion_node.p2p.local import P2PStats
from hyperion_node.p2p.messages import (
    MAX_DIALBACK_BYTES,
    TYPE_DIALBACK_REQUEST,
    TYPE_DIALBACK_RESULT,
    DialbackRequest,
    DialbackResult,
    MalformedMessage,
    decode_varint,
    encode_frame,
)
from hyperion_node.p2p.peer_table import PeerTable
from hyperion_node.protocols import dialback as dialback_protocol
from hyperion_node.protocols.machine import ProtocolViolation

log = structlog.get_logger(__name__)

DIALBACK_PROTOCOL = TProtocol(dialback_protocol.PROTOCOL_ID)


class Dialback:
    def __init__(self, identity: Any, table: PeerTable, stats: P2PStats, dial_timeout_s: float) -> None:
        self.identity = identity
        self.table = table
        self.stats = stats
        self.dial_timeout_s = dial_timeout_s
        self._limiter = RateLimiter(rate=dialback_protocol.RATE_PER_S, burst=dialback_protocol.BURST)
        self.host: Any = None

    async def handle(self, stream: INetStream) -> None:
        """Dial a peer back, as ``protocols/dialback.py`` bounds it: only the peer's own observed IP, only
        ports it announces, twice and then once a minute, and the answer is open or closed with no error text."""
        remote = str(stream.muxed_conn.peer_id)
        conversation = dialback_protocol.dialler_side()
        try:
            if not self._limiter.allow(remote, trio.current_time()):
                raise MalformedMessage("rate_limited", "too many dial-backs asked")
            with trio.fail_after(self.dial_timeout_s):
                data = await _read_frame(stream, MAX_DIALBACK_BYTES)
            sender, request = DialbackRequest.decode(data)
            if sender != remote:
                raise MalformedMessage("sender_mismatch", f"{sender} over a stream from {remote}")
            conversation.received(TYPE_DIALBACK_REQUEST, peer_id=remote)
        except (MalformedMessage, ProtocolViolation, trio.TooSlowError) as exc:
            reason = "timeout" if isinstance(exc, trio.TooSlowError) else exc.reason
            self.stats.reject("dialback", reason)
            self.table.penalize(remote, reason)
            log.info("stream_rejected", protocol=DIALBACK_PROTOCOL, peer=remote, reason=reason)
            await stream.reset()
            return
        observed = getattr(stream, "get_remote_address", lambda: None)()  # the demo's streams have none
        ports = self._announced_tcp_ports(remote)
        results: list[tuple[str, bool, str]] = []
        refused = 0
        # The asker's own addresses first, then at most MAX_PROBES of them probed: an honest node lists loopback
        # and LAN addresses beside its public one, and those refused must not use up its probes.
        targets = []
        for addr in request.addrs:
            target = dialback_target(addr, observed[0] if observed else "", ports)
            if target is None:
                refused += 1
            else:
                targets.append((addr, target))
        for addr, target in targets[:dialback_protocol.MAX_PROBES]:
            results.append((addr, await self._probe(*target), ""))
        if refused:
            self.stats.reject("dialback", "not_yours")
            # An honest node lists every address it listens on (loopback, LAN, public) and cannot know which one
            # we see; only a request with none of its own is an attempt to aim our dials at someone else.
            if not results:
                self.table.penalize(remote, "dialback_refused")
            log.info("dialback_refused", peer=remote, refused=refused, observed=observed[0] if observed else None)
        conversation.sending(TYPE_DIALBACK_RESULT)
        await stream.write(encode_frame(DialbackResult(tuple(results)).seal(self.identity)))
        await stream.close()

    def _announced_tcp_ports(self, peer_id: str) -> set[int]:
        """TCP ports a peer announces: in its signed heartbeats and capability record, and in what identify
        told the peerstore over its own authenticated connection."""
        addrs: list[str] = []
        entry = self.table.get(peer_id)
        if entry is not None:
            addrs += entry.addrs
            if entry.capability is not None:
                addrs += entry.capability.addrs
        peerstore = getattr(self.host, "get_peerstore", None)  # identify's addresses (the demo's fabric has none)
        if peerstore is not None:
            try:
                addrs += [str(a) for a in peerstore().addrs(ID.from_base58(peer_id))]
            except Exception as exc:  # py-libp2p raises PeerStoreError for a peer it has no addresses of
                log.debug("peerstore_addrs_missing", peer=peer_id, error=type(exc).__name__)
        ports = set()
        for addr in addrs:
            _, _, rest = addr.partition("/tcp/")
            port = rest.split("/", 1)[0]
            if port.isdigit():
                ports.add(int(port))
        return ports

    async def _probe(self, host: str, port: int) -> bool:
        """Can a fresh TCP connection reach ``host:port``? (A plain connect: the peer's host answers the socket.)"""
        with trio.move_on_after(self.dial_timeout_s):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                return False
            await stream.aclose()
            return True
        return False

    async def request(self, peer_id: str, addrs: tuple[str, ...]) -> DialbackResult:
        """Ask a connected peer to dial our addresses (used by `doctor`)."""
        conversation = dialback_protocol.asker_side()
        # The peer probes up to MAX_PROBES addresses, each within its own dial timeout; one more for the stream.
        with trio.fail_after(self.dial_timeout_s * (dialback_protocol.MAX_PROBES + 1)):
            stream = await self.host.new_stream(ID.from_base58(peer_id), [DIALBACK_PROTOCOL])
            conversation.sending(TYPE_DIALBACK_REQUEST)
            await stream.write(encode_frame(DialbackRequest(addrs).seal(self.identity)))
            data = await _read_frame(stream, MAX_DIALBACK_BYTES)
            await stream.close()
        conversation.received(TYPE_DIALBACK_RESULT, peer_id=peer_id)
        sender, result = DialbackResult.decode(data)
        if sender != peer_id:
            raise MalformedMessage("sender_mismatch", f"answer signed by {sender}, asked {peer_id}")
        return result


def dialback_target(addr: str, observed_ip: str, ports: set[int]) -> tuple[str, int] | None:
    """Where a dial-back of ``addr`` may go: ``(host, port)`` when it is ``/ip4|ip6/<observed IP>/tcp/<port>``
    with a port the asker announces, else None (the dial-back was a port scan of someone else, or of us)."""
    parts = addr.split("/")
    if len(parts) != 5 or parts[0] or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp" or not parts[4].isdigit():
        return None
    try:
        if ipaddress.ip_address(parts[2]) != ipaddress.ip_address(observed_ip):
            return None
    except ValueError:
        return None
    port = int(parts[4])
    return (parts[2], port) if port in ports else None


async def _read_frame(stream: INetStream, max_bytes: int) -> bytes:
    """Read one varint-length-prefixed frame, refusing anything over ``max_bytes``."""
    buffer = bytearray()
    while True:
        header = decode_varint(buffer)
        if header is not None:
            length, used = header
            if length > max_bytes:
                raise MalformedMessage("oversized", f"frame of {length} bytes > {max_bytes}")
            if len(buffer) >= used + length:
                return bytes(buffer[used : used + length])
        chunk = await stream.read(max_bytes + 8 - len(buffer))
        if not chunk:
            raise MalformedMessage("truncated", "stream closed inside a frame")
        buffer += chunk
