"""A hostile peer, for the adversarial tests (``tests/adversarial``) and ``scripts/bench_adversarial.py``.

It is a real py-libp2p host, built the way an attacker would build one: any security transport (Noise, or the
plaintext and secio that honest nodes no longer accept), optionally a Kademlia DHT that stores whatever it is
given; and it speaks our protocols frame by frame, as requester or as provider, so that it can say anything in
any order: forged, replayed, oversized, out of turn. Nothing here is a mock of the node: the node
under attack is a real ``hyperion-node`` process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secio import transport as secio
from libp2p.tools.anyio_service import background_trio_service

from hyperion_node.identity import Identity
from hyperion_node.ledger.receipt import SignedReceipt
from hyperion_node.ledger.receipt import countersign as countersign_receipt
from hyperion_node.p2p.messages import encode_frame
from hyperion_node.tasks.messages import (
    MAX_RESPONSE_BYTES,
    Accepted,
    Busy,
    Countersign,
    FinalResult,
    FrameReader,
    MalformedFrame,
    Rejected,
    TaskError,
    TaskRequest,
    WorkerMessage,
    decode_worker,
    encode_countersign,
    encode_request,
)
from hyperion_node.tasks.streams import STREAM_ERRORS_OR_TIMEOUT, read_frame

TASK = TProtocol("/hyperion/task/1")
VERIFY = TProtocol("/hyperion/verify/2")
DIALBACK = TProtocol("/hyperion/dialback/1")
PRESENCE = TProtocol("/hyperion/presence/2")
GOODBYE = TProtocol("/hyperion/goodbye/1")
CASES = TProtocol("/hyperion/cases/1")


def new_identity() -> Identity:
    key_pair = create_new_key_pair()
    return Identity(key_pair=key_pair, peer_id=ID.from_pubkey(key_pair.public_key))


def security(kind: str, key_pair: KeyPair) -> dict[TProtocol, Any]:
    """One security transport, as an attacker would offer it."""
    if kind == "noise":
        return {NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)}
    if kind == "plaintext":
        return {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)}
    if kind == "secio":
        return {TProtocol(secio.ID): secio.Transport(key_pair)}
    raise ValueError(f"unknown security transport {kind!r}")


class AcceptAnything(Validator):
    """The attacker's own DHT stores and sends whatever it is given."""

    def validate(self, key: str, value: bytes) -> None:
        return None

    def select(self, key: str, values: list[bytes]) -> int:
        return 0


@dataclass
class Hostile:
    identity: Identity
    host: Any
    dht: KadDHT | None = None
    heartbeats: dict[str, list[bytes]] = field(default_factory=dict)  # provider -> its heartbeat frames read

    @property
    def peer_id(self) -> str:
        return str(self.identity.peer_id)

    def addr(self) -> str:
        return f"{self.host.get_addrs()[0]}"

    async def connect(self, addr: str) -> str:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        with trio.fail_after(10):
            await self.host.connect(info)
        if self.dht is not None:
            await self.dht.add_peer(info.peer_id)
        return str(info.peer_id)

    async def stream(self, peer: str, protocol: TProtocol) -> INetStream:
        with trio.fail_after(10):
            stream: INetStream = await self.host.new_stream(ID.from_base58(peer), [protocol])
        return stream

    async def answer(self, stream: INetStream, max_bytes: int = MAX_RESPONSE_BYTES) -> bytes | None:
        """The next frame the node sends, or None when it resets or closes the stream instead."""
        try:
            with trio.fail_after(30):
                return await read_frame(stream, FrameReader(max_bytes))
        except STREAM_ERRORS_OR_TIMEOUT:
            return None
        except MalformedFrame:  # a reset mid-frame surfaces as "truncated": the stream is gone
            return None

    async def task(self, peer: str, request: TaskRequest, *, countersign: bool = True,
                   until_final: bool = True) -> tuple[INetStream, list[WorkerMessage]]:
        """Send a task as a requester would; read the answers up to FINAL (or the first, when not
        ``until_final``), and countersign or not. The stream is returned open."""
        stream = await self.stream(peer, TASK)
        await stream.write(encode_request(request))
        answers: list[WorkerMessage] = []
        while True:
            frame = await self.answer(stream)
            if frame is None:
                return stream, answers
            msg = decode_worker(frame)
            answers.append(msg)
            if isinstance(msg, Busy | Rejected | TaskError) or (isinstance(msg, Accepted) and not until_final):
                return stream, answers
            if isinstance(msg, FinalResult):
                if countersign:
                    settled = countersign_receipt(SignedReceipt.decode(msg.receipt), self.identity)
                    await stream.write(encode_countersign(Countersign(settled.countersignature or b"")))
                return stream, answers

    async def subscribe(self, peer: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe to ``peer``'s presence as a requester would, keeping each heartbeat frame it pushes (in
        ``heartbeats[peer]``) until cancelled or the provider drops us."""
        stream = await self.stream(peer, PRESENCE)
        kept = self.heartbeats.setdefault(peer, [])
        task_status.started()
        reader = FrameReader(8 * 1024)
        try:
            while True:
                kept.append(await read_frame(stream, reader))
        except STREAM_ERRORS_OR_TIMEOUT:
            return
        except MalformedFrame:
            return

    def serve_presence(self, frames: Sequence[bytes]) -> None:
        """Act as a provider: whoever subscribes to our presence gets ``frames`` (anything: another peer's
        heartbeats, poisoned ones), then the stream stays open."""

        async def serve(stream: INetStream) -> None:
            for frame in frames:
                await stream.write(encode_frame(frame))
            with trio.move_on_after(30):
                await stream.read(1)

        self.host.set_stream_handler(PRESENCE, serve)

    async def goodbye(self, peer: str, frame: bytes) -> None:
        """One frame on ``/hyperion/goodbye/1``: where a leaving node sends its last heartbeat."""
        stream = await self.stream(peer, GOODBYE)
        await stream.write(encode_frame(frame))
        with trio.move_on_after(5):
            try:
                await stream.read(1)  # the node reads it and resets the stream
            except STREAM_ERRORS_OR_TIMEOUT:
                pass

    async def put_value(self, key: str, value: bytes) -> None:
        assert self.dht is not None, "start the hostile host with dht=True"
        with trio.move_on_after(10):
            await self.dht.put_value(key, value)

    async def store_at(self, peer: str, key: str, value: bytes) -> bool:
        """One PUT_VALUE straight to ``peer`` (no lookup), as fast as a stream opens."""
        assert self.dht is not None, "start the hostile host with dht=True"
        with trio.move_on_after(10):
            return bool(await self.dht.value_store._store_at_peer(ID.from_base58(peer), key.encode(), value))
        return False


@asynccontextmanager
async def hostile_host(*, kind: str = "noise", identity: Identity | None = None, dht: bool = False,
                       announce: Sequence[str] = (), listen_port: int = 0,
                       claim: KeyPair | None = None) -> AsyncIterator[Hostile]:
    """A running hostile host on 127.0.0.1 (``listen_port``, or one the OS picks); ``announce``: the addresses
    it claims instead of its listen address; ``claim``: the key pair its security handshake presents (a
    plaintext handshake sends only the public key, so this may be anyone's public key beside a private key of
    our own: an impersonation)."""
    identity = identity or new_identity()
    listen = [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{listen_port}")]
    host = new_host(key_pair=identity.key_pair, listen_addrs=listen, muxer_preference="YAMUX",
                    sec_opt=security(kind, claim or identity.key_pair),
                    announce_addrs=[multiaddr.Multiaddr(a) for a in announce] or None)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(host.run(listen_addrs=listen))
        # An attacker dials whom it means to; py-libp2p's auto-connector would redial a peer that closed our
        # connection (a ban) within moments, and what a test sees would be its doing.
        swarm: Any = host.get_network()
        swarm.auto_connector._started = False
        hostile = Hostile(identity, host)
        if dht:
            hostile.dht = KadDHT(host, DHTMode.SERVER, validator=NamespacedValidator({"hyperion": AcceptAnything()}),
                                 validator_changed=True)
            await stack.enter_async_context(background_trio_service(hostile.dht))
        try:
            yield hostile
        finally:
            # py-libp2p's host leaves its connections open when it stops: the peer would see a half-open
            # connection, not a peer that went away as a process that exits does. Close them as an exit would.
            with trio.move_on_after(2) as scope:
                scope.shield = True
                for peer in list(host.get_network().connections):
                    try:
                        await host.get_network().close_peer(peer)
                    except Exception:  # already going: nothing left to close
                        continue


def raw_frame(body: Mapping[str, Any] | bytes) -> bytes:
    """A frame of our stream protocols around anything: a CBOR map (not checked) or raw bytes."""
    import cbor2

    return encode_frame(body if isinstance(body, bytes) else bytes(cbor2.dumps(dict(body))))
