"""Reading our frames from a libp2p stream, and the errors a stream may raise when its peer goes away."""

from __future__ import annotations

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError

from hyperion_node.tasks.messages import FrameReader, MalformedFrame

# What reading or writing a stream raises when the other side closed, reset or died: py-libp2p's own errors
# (StreamEOF, StreamReset, muxer and connection errors all derive from BaseLibp2pError), plus what the
# socket and trio raise underneath.
STREAM_ERRORS: tuple[type[BaseException], ...] = (BaseLibp2pError, OSError, trio.BrokenResourceError,
                                                  trio.ClosedResourceError, EOFError)
STREAM_ERRORS_OR_TIMEOUT: tuple[type[BaseException], ...] = (*STREAM_ERRORS, trio.TooSlowError)


async def read_frame(stream: INetStream, reader: FrameReader) -> bytes:
    """The next whole frame; ``MalformedFrame`` if the peer sends an oversized or broken one, a stream error
    (see ``STREAM_ERRORS``) if it goes away first."""
    while True:
        frame = reader.next_frame()
        if frame is not None:
            return frame
        chunk = await stream.read(reader.wanted())
        if not chunk:
            raise MalformedFrame("truncated", "stream closed inside a frame")
        reader.feed(chunk)


async def reset_quietly(stream: INetStream) -> None:
    """Reset a stream we are done with; a stream that is already gone needs nothing more."""
    with trio.move_on_after(1.0):
        try:
            await stream.reset()
        except STREAM_ERRORS:
            return
