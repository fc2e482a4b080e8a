"""A blob's data lane: chunks over a direct TCP connection beside libp2p, for fetchers that can reach it.

py-libp2p's own stream moves 84-210 MiB/s on this machine where one TCP connection moves 1-1.5 GiB/s
(docs/performance.md): the time goes to yamux's per-frame reads in Python, not to the cipher. So a provider
hands a fetcher a lane. Over the Noise-authenticated ``/hyperion/blob/1`` stream the fetcher asks LANE
{blob}; the provider answers {port, token, key}, a grant for that one blob, that one peer and one
connection, valid for ``GRANT_S``. The fetcher connects to the provider's address (the IP of their libp2p
connection) at that port, sends the token, and asks for runs of chunks, each answered sealed with
AES-256-GCM under the grant's key. The key travelled over Noise, so the lane is as private and as authentic as
the stream it was granted on, and every chunk is still checked against the manifest before it is written. A
fetcher that cannot reach the lane (a firewall, a NAT) fetches over the stream, as before.

Wire, after the fetcher's 32-byte token::

    fetcher ──▶ RUN   index:u32 count:u32                (count from 1 to MAX_RUN)
    provider ◀── count × (index:u32, sealed chunk)        AES-GCM, nonce: the chunk's number on this connection

The provider closes the connection when it does not have a chunk, when the fetcher is silent for ``IDLE_S``,
or when a request breaks these rules. What a stranger at the port can cost: a connection that sends no
valid token within ``HANDSHAKE_S``, at most ``MAX_HANDSHAKES_PER_IP`` such from one address and
``MAX_HANDSHAKES`` in all (more are closed at once, counted). Strangers who fill them cost honest fetchers the
lane, not the blob: those fetch over the stream.
"""

from __future__ import annotations

import secrets
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hyperion_node.blobs.manifest import BadManifest, Manifest
from hyperion_node.blobs.store import BlobStore, Partial
from hyperion_node.protocols.blob import LANE_SECRET_BYTES, MAX_RUN

log = structlog.get_logger(__name__)

TOKEN_BYTES = KEY_BYTES = LANE_SECRET_BYTES
TAG_BYTES = 16  # AES-GCM's tag, added to every sealed chunk
GRANT_S = 10.0  # a grant not used within this long is void
HANDSHAKE_S = 2.0  # for a new connection to send its token
IDLE_S = 10.0  # between a fetcher's requests
CONNECT_S = 3.0  # for a fetcher to reach a provider's lane before it uses the stream
POLL_S = 0.25  # a fetcher's thread checks for cancellation this often while it waits for bytes
MAX_HANDSHAKES = 16  # connections at once that have not shown a token yet
MAX_HANDSHAKES_PER_IP = 4
MAX_GRANTS_PER_PEER = 8
MAX_GRANTS = 256
_RUN = struct.Struct(">II")
_INDEX = struct.Struct(">I")


def nonce(number: int) -> bytes:
    return number.to_bytes(12, "big")


@dataclass(frozen=True)
class Grant:
    """One lane connection a provider has promised a peer, for one blob."""

    token: bytes
    key: bytes
    peer: str
    address: str
    expires: float


class LaneBroken(OSError):
    """The lane closed, stalled, or carried bytes not sealed with its key (changed on the way): the fetch
    goes on over the stream. A chunk sealed by the provider that fails its hash raises ``BadManifest``, as over
    the stream: the provider sent it."""


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes | None:
    """``n`` bytes from ``stream``, or None when it closes first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        read = await stream.socket.recv_into(view[got:])
        if not read:
            return None
        got += read
    return bytes(buf)


class LaneServer:
    """The provider's side: a TCP listener beside the libp2p host that serves granted connections.

    ``take_place`` and ``give_place`` are the blob service's per-peer stream places (a lane connection holds
    one while it serves), ``pace`` its upload rate, ``refuse`` counts a refusal by reason, ``penalize`` scores a
    granted peer down for breaking the lane's rules.
    """

    def __init__(self, store: BlobStore, *, host: str, port: int, take_place: Callable[[str], bool],
                 give_place: Callable[[str], None], pace: Callable[[int], Any], refuse: Callable[[str], None],
                 penalize: Callable[[str, str], None], stats: Any) -> None:
        self.store = store
        self.host, self.port = host, port
        self._take_place, self._give_place = take_place, give_place
        self._pace, self._refuse, self._penalize = pace, refuse, penalize
        self.stats = stats
        self._grants: dict[bytes, Grant] = {}
        self._handshaking: Counter[str] = Counter()  # connections that have not shown a token yet, by IP

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("blob_lane_listening", host=self.host, port=self.port)
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    def grant(self, peer: str, address: str) -> Grant | None:
        """A one-time grant for ``peer`` to fetch ``address`` over the lane; None when it holds enough."""
        now = trio.current_time()
        for token in [t for t, g in self._grants.items() if g.expires <= now]:
            del self._grants[token]
        if len(self._grants) >= MAX_GRANTS or sum(g.peer == peer for g in self._grants.values()) >= MAX_GRANTS_PER_PEER:
            return None
        grant = Grant(secrets.token_bytes(TOKEN_BYTES), AESGCM.generate_key(bit_length=8 * KEY_BYTES), peer, address,
                      now + GRANT_S)
        self._grants[grant.token] = grant
        return grant

    async def _serve(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve_connection(stream)
        except Exception:  # a bug must cost one connection, never the listener (trio.serve_listeners re-raises)
            log.exception("blob_lane_handler_failed")

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                ip = str(stream.socket.getpeername()[0])
            except OSError:
                return  # gone already
            if sum(self._handshaking.values()) >= MAX_HANDSHAKES or self._handshaking[ip] >= MAX_HANDSHAKES_PER_IP:
                self._refuse("lane_busy")
                return
            self._handshaking[ip] += 1
            token: bytes | None = None
            try:
                with trio.move_on_after(HANDSHAKE_S):
                    token = await receive_exactly(stream, TOKEN_BYTES)
            except (OSError, trio.BrokenResourceError):
                token = None
            finally:
                self._handshaking[ip] -= 1
                if not self._handshaking[ip]:
                    del self._handshaking[ip]
            grant = self._grants.pop(token, None) if token else None
            if grant is None or grant.expires <= trio.current_time():
                self._refuse("lane_bad_token")
                return
            if not self._take_place(grant.peer):
                self._refuse("lane_busy")
                return
            try:
                await self._send_runs(stream, grant)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("blob_lane_closed", peer=grant.peer, error=type(exc).__name__)
            finally:
                self._give_place(grant.peer)

    async def _send_runs(self, stream: trio.SocketStream, grant: Grant) -> None:
        """Answer the fetcher's runs until it is done: requests are read here, chunks read, sealed and sent by
        a worker thread on a plain socket over the same connection, a run at a time, after the upload rate has
        let the run's bytes through."""
        aead = AESGCM(grant.key)
        sender = socket.fromfd(stream.socket.fileno(), stream.socket.family, stream.socket.type)
        number = 0
        try:
            while True:
                head = None
                with trio.move_on_after(IDLE_S):
                    head = await receive_exactly(stream, _RUN.size)
                if head is None:
                    return  # the fetcher is done (or silent)
                index, count = _RUN.unpack(head)
                shared = self.store.shared.get(grant.address)
                if not 1 <= count <= MAX_RUN:
                    self._refuse("lane_bad_request")
                    self._penalize(grant.peer, "lane_bad_request")
                    return
                if shared is None or index + count > shared.manifest.count:
                    return  # it does not serve those chunks (now): the fetcher asks over the stream
                await self._pace(sum(shared.manifest.chunk_length(i) for i in range(index, index + count)))
                sent, sent_bytes = await trio.to_thread.run_sync(self._send_run, sender, aead, grant.address,
                                                                 index, count, number)
                number += sent
                self.stats["lane_served_bytes"] += sent_bytes
                if sent < count:
                    return
        finally:
            sender.close()

    def _send_run(self, sender: socket.socket, aead: AESGCM, address: str, index: int, count: int,
                  number: int) -> tuple[int, int]:
        """Chunks ``index`` .. ``index + count - 1``, sealed, in a worker thread: how many went, and their bytes."""
        sent = sent_bytes = 0
        for i in range(index, index + count):
            chunk = self.store.read_chunk(address, i)
            if chunk is None:
                break
            head = _INDEX.pack(i)
            send_all(sender, head + aead.encrypt(nonce(number + sent), chunk, head), IDLE_S)
            sent += 1
            sent_bytes += len(chunk)
        return sent, sent_bytes


class Lane:
    """The fetcher's side: one lane connection to one provider, for one blob.

    It is read in a worker thread on a plain socket, a run of chunks at a time: received, opened, checked
    and written there, off the event loop (a trip through trio for every chunk cost about a fifth of the
    lane's rate here). The thread polls trio's cancellation while it waits for bytes.
    """

    def __init__(self, sock: socket.socket, key: bytes, manifest: Manifest) -> None:
        self._sock = sock
        self._aead = AESGCM(key)
        self._manifest = manifest
        self._number = 0

    @classmethod
    async def open(cls, host: str, port: int, token: bytes, key: bytes, manifest: Manifest) -> Lane:
        def connect() -> socket.socket:
            sock = socket.create_connection((host, port), timeout=CONNECT_S)
            try:
                sock.sendall(token)
            except OSError:
                sock.close()
                raise
            return sock

        try:
            sock = await trio.to_thread.run_sync(connect)
        except OSError as exc:
            raise LaneBroken(f"cannot reach {host}:{port} ({type(exc).__name__})") from exc
        return cls(sock, key, manifest)

    async def fetch(self, partial: Partial, run: list[int], took: Callable[[int], Any], *,
                    wait_s: float) -> None:
        """Ask for ``run`` (consecutive chunks) and write each as it comes, checked; ``took(index)`` for each
        one written. Raises ``LaneBroken``, or ``BadManifest`` for a chunk that does not match its hash."""
        got: list[int] = []
        try:
            await trio.to_thread.run_sync(self._fetch, partial, run, got, wait_s)
        finally:
            for index in got:
                await took(index)

    def _fetch(self, partial: Partial, run: list[int], got: list[int], wait_s: float) -> None:
        try:
            self._sock.sendall(_RUN.pack(run[0], len(run)))
            for index in run:
                sealed = self._receive(_INDEX.size + self._manifest.chunk_length(index) + TAG_BYTES, wait_s)
                if sealed is None:
                    raise LaneBroken(f"the provider closed the lane before chunk {index}")
                number = self._number
                self._number += 1
                _open_check_write(self._aead, partial, index, number, sealed)
                got.append(index)
        except LaneBroken:
            raise
        except OSError as exc:
            raise LaneBroken(type(exc).__name__) from exc

    def _receive(self, n: int, wait_s: float) -> bytearray | None:
        """``n`` bytes, or None when the provider closes first; LaneBroken after ``wait_s`` without a byte."""
        buf = bytearray(n)
        view = memoryview(buf)
        got, stalled = 0, 0.0
        self._sock.settimeout(POLL_S)
        while got < n:
            try:
                read = self._sock.recv_into(view[got:])
            except TimeoutError:
                stalled = _waited(stalled, wait_s)
                continue
            if not read:
                return None
            got += read
            stalled = 0.0
        return buf

    async def aclose(self) -> None:
        self._sock.close()


def send_all(sock: socket.socket, data: bytes, wait_s: float) -> None:
    """``data`` on a plain socket from a trio worker thread, polling trio's cancellation; OSError when the
    other side takes no byte for ``wait_s``."""
    view = memoryview(data)
    sent, stalled = 0, 0.0
    sock.settimeout(POLL_S)
    while sent < len(data):
        try:
            sent += sock.send(view[sent:])
            stalled = 0.0
        except TimeoutError:
            stalled = _waited(stalled, wait_s)


def _waited(stalled: float, wait_s: float) -> float:
    """One more POLL_S without progress: raises trio.Cancelled when the task was cancelled, LaneBroken (an
    OSError to the provider's side too) after ``wait_s``."""
    trio.from_thread.check_cancelled()
    stalled += POLL_S
    if stalled >= wait_s:
        raise LaneBroken(f"no progress for {wait_s:g} s")
    return stalled


def _open_check_write(aead: AESGCM, partial: Partial, index: int, number: int, sealed: bytearray) -> None:
    """Open a sealed chunk (its index is authenticated with it), check it against the manifest, write it."""
    head = bytes(sealed[:_INDEX.size])
    try:
        data = aead.decrypt(nonce(number), memoryview(sealed)[_INDEX.size:], head)
    except InvalidTag as exc:  # not sealed by the key holder: changed on the way, nobody to blame for sure
        raise LaneBroken(f"chunk {index} was not sealed with the lane's key") from exc
    if _INDEX.unpack(head)[0] != index:
        raise BadManifest("bad_chunk", f"the lane sent chunk {_INDEX.unpack(head)[0]} for {index}")
    if not partial.manifest.chunk_ok(index, data):
        raise BadManifest("bad_chunk", f"chunk {index} does not match its hash")
    partial.write(index, data)
