"""One Blender process running the driver script: spawn, read its events, enforce silence limits, kill.

Blender runs in its own session (``start_new_session``), so it leads a process group: on trio
cancellation, on a timeout, on an error event, or on any exception in the caller's event handler, the
whole group gets SIGKILL (Cycles' threads, and anything a scene might spawn) and the process is reaped
before ``run_driver`` returns. SIGKILL rather than SIGTERM: a render in progress does not react to
SIGTERM until its current tile is done, and there is nothing of a cancelled render worth saving.

Events are read in the calling task, not in a reader task of their own: the handler's work (decoding a
frame, sending it to the requester) is short, and while it runs Blender at most fills the pipe and
waits -- backpressure from a slow requester, which is what we want -- and with no nursery here every
error reaches the caller as itself, not inside an exception group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from hyperion_node.errors import InternalError
from runtimes.render.exceptions import RenderTimeout

MARK = b"@@hyperion-render@@ "  # the driver's event prefix (runtimes/render/driver.py)
TAIL_LINES = 40  # Blender output kept for error messages
# Blender prints one progress line per sample batch; a longer line than this is not one of ours.
MAX_LINE_BYTES = 1 << 20

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class DriverExit:
    returncode: int
    tail: tuple[str, ...]  # Blender's last output lines, progress lines left out

    def describe(self) -> str:
        if self.returncode < 0:
            try:
                how = f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                how = f"killed by signal {-self.returncode}"
        else:
            how = f"exited with status {self.returncode}"
        return how + (": " + " | ".join(self.tail[-6:]) if self.tail else "")


class _Lines:
    """Splits a byte stream into lines; an over-long line is cut, never buffered without bound."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream, self._buffer, self._eof = stream, bytearray(), False

    async def next(self) -> bytes | None:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if self._eof:
                if not self._buffer:
                    return None
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
            if len(self._buffer) > MAX_LINE_BYTES:
                del self._buffer[MAX_LINE_BYTES // 2 :]
            chunk = await self._stream.receive_some(1 << 16)
            if not chunk:
                self._eof = True
            self._buffer += chunk


def kill_group(process: trio.Process) -> None:
    """SIGKILL to the process group Blender leads; nothing to do if it has already exited."""
    if process.returncode is not None:
        return  # reaped: its group id may belong to someone else by now
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # exited between the check and the kill


async def run_driver(
    command: Sequence[str],
    *,
    cwd: str,
    on_event: EventHandler,
    load_timeout_s: float,
    frame_timeout_s: float,
    on_spawn: Callable[[int], None] | None = None,
) -> DriverExit:
    """Run Blender to the end, passing each driver event to ``on_event``; see the module docstring.

    The first event must come within ``load_timeout_s`` of the start (Blender reading the scene), and
    each later one within ``frame_timeout_s`` of the one before (one frame), else ``RenderTimeout``.
    """
    process = await trio.lowlevel.open_process(
        list(command), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    if on_spawn is not None:
        on_spawn(process.pid)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        assert process.stdout is not None
        lines = _Lines(process.stdout)
        limit, stage = load_timeout_s, "loading the scene"
        deadline = trio.current_time() + limit
        while True:
            with trio.CancelScope(deadline=deadline) as scope:
                line = await lines.next()
            if scope.cancelled_caught:
                raise RenderTimeout(f"Blender was silent for {limit:.0f} s while {stage}; killed it",
                                    hint="raise runtimes.render-blender.load_timeout_s / frame_timeout_s, "
                                         "or send fewer samples or a smaller resolution")
            if line is None:
                break
            if not line.startswith(MARK):
                text = line.decode(errors="replace").rstrip()
                if text and not text.startswith("Fra:"):
                    tail.append(text)
                continue
            try:
                event = json.loads(line[len(MARK) :])
            except ValueError as exc:
                raise InternalError(f"the render driver printed a malformed event: {line[:200]!r}") from exc
            await on_event(event)
            # The clock starts after the handler: time spent sending a frame is not Blender's.
            limit, stage = frame_timeout_s, "rendering a frame"
            deadline = trio.current_time() + limit
        returncode = await process.wait()
        return DriverExit(returncode, tuple(tail))
    finally:
        kill_group(process)
        with trio.CancelScope(shield=True):
            await process.wait()  # reaped: no zombie, and its PID is gone when we return
            if process.stdout is not None:
                await process.stdout.aclose()
