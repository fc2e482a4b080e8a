"""`hyperion-node top`: the web dashboard's view in the terminal, against a running daemon.

On a terminal it redraws the screen in place (alternate screen, cursor home, each line followed by
clear-to-end-of-line, then clear-below; one write per frame, so nothing flickers); otherwise it prints one
plain line per refresh and each new event once, which is what a log file or a pipe wants.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, TextIO

import typer

from hyperion_node.cli import top_view
from hyperion_node.cli.common import cli_errors
from hyperion_node.cli.events import line as event_text
from hyperion_node.cli.tasks import ConfigOpt, DataDirOpt, client
from hyperion_node.errors import UserError

KEEP_POINTS = 600  # what the node's ring holds: ten minutes at one point a second
KEEP_EVENTS = 50  # more than any terminal shows
BACKLOG_EVENTS = 20  # events shown at start, before any new one arrives
_ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, hide the cursor
_LEAVE = "\x1b[?25h\x1b[?1049l"
_HOME, _CLEAR_EOL, _CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


class Feed:
    """The dashboard's state on the client side: the view, time-series points and events seen so far,
    each asked for incrementally (``since``), so a refresh costs what changed, not the whole history."""

    def __init__(self, get: Callable[..., Any]) -> None:
        self._get = get
        self.view: dict[str, Any] = {}
        self.points: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._event_cursor: int | None = None

    def refresh(self) -> list[dict[str, Any]]:
        """Ask the node for what is new; returns the events that arrived with this refresh."""
        since = self.points[-1]["t"] if self.points else 0.0
        self.view = self._get("/api/dashboard", since=since)
        self.points = (self.points + self.view["series"])[-KEEP_POINTS:]
        if self._event_cursor is None:
            self._event_cursor = max(int(self.view["last_event_id"]) - BACKLOG_EVENTS, 0)
        new: list[dict[str, Any]] = self._get("/api/events", since=self._event_cursor, limit=1000)
        if new:
            self._event_cursor = new[-1]["id"]
        self.events = (self.events + new)[-KEEP_EVENTS:]
        return new


def frame(lines: list[str]) -> str:
    return _HOME + "".join(line + _CLEAR_EOL + "\n" for line in lines[:-1]) + \
        (lines[-1] + _CLEAR_EOL if lines else "") + _CLEAR_BELOW


def _run(feed: Feed, out: TextIO, *, terminal: bool, interval: float, iterations: int) -> None:
    done = 0
    while True:
        new = feed.refresh()
        if terminal:
            size = shutil.get_terminal_size((80, 24))
            out.write(frame(top_view.render(feed.view, feed.points, feed.events,
                                            width=size.columns, height=size.lines)))
        else:
            for event in new:
                out.write(top_view.printable(event_text(event)) + "\n")
            out.write(top_view.plain_line(feed.view, feed.points) + "\n")
        out.flush()
        done += 1
        if iterations and done >= iterations:
            return
        time.sleep(interval)


def top(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    interval: Annotated[float, typer.Option("--interval", "-n", help="Seconds between refreshes.")] = 0.5,
    iterations: Annotated[int, typer.Option("--iterations", help="Stop after N refreshes (0: until Ctrl-C).")] = 0,
    once: Annotated[bool, typer.Option("--once", help="One refresh, then exit (same as --iterations 1).")] = False,
) -> None:
    """Live view of the node and its network: nodes with GPU telemetry and queues, task throughput and
    latency, where tasks went, rewards and the latest events. Plain lines when stdout is not a terminal."""
    if not 0.1 <= interval <= 3600:
        raise UserError(f"--interval {interval} is not between 0.1 and 3600 seconds")
    if iterations < 0:
        raise UserError("--iterations must be 0 (no limit) or more")
    api = client(config, data_dir)
    out = sys.stdout
    terminal = out.isatty()
    if terminal:
        out.write(_ENTER)
    try:
        _run(Feed(api.get), out, terminal=terminal, interval=interval, iterations=1 if once else iterations)
    except KeyboardInterrupt:
        return  # Ctrl-C is how one leaves top
    finally:
        if terminal:
            out.write(_LEAVE)
            out.flush()


top_command = cli_errors(top)
