"""The demo's live view: ``hyperion-node top``'s screen (``top_view.render``), fed in-process from the first
virtual node's dashboard and event log instead of over its control API, under one line of demo-wide counts.
Off a terminal, one plain line a second (``top_view.plain_line`` plus the same counts).
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any, TextIO

import trio

from hyperion_node.cli import top_view
from hyperion_node.cli.top import _ENTER, _LEAVE, KEEP_EVENTS, KEEP_POINTS, frame

if TYPE_CHECKING:
    from hyperion_demo.runner import Demo

TERMINAL_INTERVAL_S = 0.5  # `top`'s default: twice a second
PLAIN_INTERVAL_S = 1.0  # the dashboard samples once a second; more lines would repeat themselves


class LiveView:
    def __init__(self, demo: Demo, out: TextIO, *, terminal: bool) -> None:
        self.demo, self.out, self.terminal = demo, out, terminal
        self.points: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._cursor = 0
        self._entered = False
        api = demo.nodes[0].node.api
        self.web_url = api.dashboard_url if api is not None else ""  # the token rides after the #

    def counts(self) -> str:
        c = self.demo.tracker.counts()
        live = self.demo.live()
        return (f"demo seed={self.demo.options.seed} nodes={len(live)}/{len(self.demo.nodes)} "
                f"submitted={len(self.demo.tracker.outcomes)} completed={c['completed']} failed={c['failed']} "
                f"in_flight={c['running']}" + (f" web={self.web_url}" if self.web_url else ""))

    async def refresh(self) -> None:
        node = self.demo.nodes[0].node
        since = self.points[-1]["t"] if self.points else 0.0
        view = node.dashboard_view(since)
        self.points = (self.points + view["series"])[-KEEP_POINTS:]
        new = await node.events(self._cursor, 1000)
        if new:
            self._cursor = int(new[-1]["id"])
        # Every task's steps are events too; at demo rates they would push the scripted ones off the screen.
        shown = [e for e in new if not e["kind"].startswith("task.") or e["kind"] == "task.failed"]
        self.events = (self.events + shown)[-KEEP_EVENTS:]
        if self.terminal:
            size = shutil.get_terminal_size((100, 30))
            lines = [top_view.fit(self.counts(), size.columns).rstrip(),
                     *top_view.render(view, self.points, self.events, width=size.columns, height=size.lines - 1)]
            self.out.write(frame(lines))
        else:
            self.out.write(f"{top_view.plain_line(view, self.points)} | {self.counts()}\n")
        self.out.flush()

    async def run(self) -> None:
        if self.terminal:
            self.out.write(_ENTER)
            self._entered = True
        interval = TERMINAL_INTERVAL_S if self.terminal else PLAIN_INTERVAL_S
        while True:
            await self.refresh()
            await trio.sleep(interval)

    def close(self) -> None:
        if self._entered:
            self.out.write(_LEAVE)
            self.out.flush()
            self._entered = False
