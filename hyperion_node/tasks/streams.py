"""Reading our frames from a libp2p stream, opening one with its first frame, and the errors a stream may raise
when its peer goes away."""

from __future__ import annotations

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.protocol_muxer.multiselect_client import MULTISELECT_PROTOCOL_ID
from libp2p.utils import encode_delim, read_delim

from hyperion_node.tasks.messages import FrameReader, MalformedFrame

# What reading or writing a stream raises when the other side closed, reset or died: py-libp2p's own errors
# (StreamEOF, StreamReset, muxer and connection errors all derive from BaseLibp2pError), plus what the
# socket and trio raise underneath.
STREAM_ERRORS: tuple[type[BaseException], ...] = (BaseLibp2pError, OSError, trio.BrokenResourceError,
                                                  trio.ClosedResourceError, EOFError)
STREAM_ERRORS_OR_TIMEOUT: tuple[type[BaseException], ...] = (*STREAM_ERRORS, trio.TooSlowError)


# A frame above this size is buffered only while holding one of a protocol's few big-frame places
# (``BigFrames``): a task's zkey or scene is tens of MiB, and many streams each sending one slowly would
# otherwise hold that much memory each before any check could refuse them.
BIG_FRAME_BYTES = 1024 * 1024


class Overloaded(Exception):
    """Every big-frame place is taken: the stream is answered BUSY and closed, and nobody is at fault."""


class BigFrames:
    """At most ``places`` big frames (over ``BIG_FRAME_BYTES``) being read at once, for one protocol."""

    def __init__(self, places: int) -> None:
        self.limiter = trio.CapacityLimiter(places)


async def read_frame(stream: INetStream, reader: FrameReader, big: BigFrames | None = None) -> bytes:
    """The next whole frame; ``MalformedFrame`` if the peer sends an oversized or broken one, a stream error
    (see ``STREAM_ERRORS``) if it goes away first, ``Overloaded`` when ``big`` is given, the frame is big and
    all of its places are taken."""
    holding = False
    try:
        while True:
            frame = reader.next_frame()
            if frame is not None:
                return frame
            if big is not None and not holding and (reader.declared() or 0) > BIG_FRAME_BYTES:
                try:
                    big.limiter.acquire_nowait()
                except trio.WouldBlock:
                    raise Overloaded from None
                holding = True
            chunk = await stream.read(reader.wanted())
            if not chunk:
                raise MalformedFrame("truncated", "stream closed inside a frame")
            reader.feed(chunk)
    finally:
        if holding:
            big.limiter.release()  # type: ignore[union-attr]


async def reset_quietly(stream: INetStream) -> None:
    """Reset a stream we are done with; a stream that is already gone needs nothing more."""
    with trio.move_on_after(1.0):
        try:
            await stream.reset()
        except STREAM_ERRORS:
            return


async def open_with_first_frame(host: IHost, peer_id: ID, protocol: TProtocol, first: bytes) -> INetStream:
    """A new stream to ``peer_id`` speaking ``protocol``, with ``first`` (our opening frame) already sent.

    multistream-select's header, the protocol's name and the frame leave in one write, and the peer's two
    confirmations are read after: the pipelined ("lazy") form of the negotiation, which the spec allows
    (https://github.com/multiformats/multistream-select, rust-libp2p's ``Version::V1Lazy``); the listener
    reads its messages one at a time, so the frame waits in the stream for our handler. py-libp2p's
    ``new_stream`` waits for the header's echo, then for the protocol's, and only then can the frame go:
    three round trips between two busy processes before the worker even sees the task, ~12 ms of a remote
    task's first token on the reference machine, against one here. A peer that does not speak the protocol
    answers ``na`` and the stream is reset (``MultiselectClientError``).

    py-libp2p's QUIC connections limit how many streams negotiate at once; there its own path is kept. A host
    whose streams open on their protocol without negotiating (``negotiates_protocols = False``: the demo's
    in-memory fabric) gets the frame after the stream opens.
    """
    if not getattr(host, "negotiates_protocols", True):
        memory_stream = await host.new_stream(peer_id, [protocol])
        await memory_stream.write(first)
        return memory_stream
    stream = await host.get_network().new_stream(peer_id)
    if getattr(stream.muxed_conn, "_negotiation_semaphore", None) is not None:
        await reset_quietly(stream)
        stream = await host.new_stream(peer_id, [protocol])
        await stream.write(first)
        return stream
    negotiated = False
    try:
        await stream.write(encode_delim(MULTISELECT_PROTOCOL_ID.encode()) + encode_delim(protocol.encode()) + first)
        for expected in (MULTISELECT_PROTOCOL_ID, protocol):
            answer = (await read_delim(stream)).decode("utf-8", "replace")
            if answer != expected:
                raise MultiselectClientError(f"the peer answered {answer[:100]!r} to {expected!r}")
        negotiated = True
    finally:
        if not negotiated:
            with trio.CancelScope(shield=True):
                await reset_quietly(stream)
    stream.set_protocol(protocol)
    return stream
