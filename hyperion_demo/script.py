"""The demo's scripted events, at fixed shares of ``--duration``: a node degrades (hotter GPU, more faults)
until the other nodes' schedulers drain it on its health trend; a node dies without a word (its tasks fail
over); a new node joins. Each event goes to the summary, to the first node's event log (the dashboard's
EVENTS pane) and, off a terminal, straight to the output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from hyperion_demo.runner import Demo

DEGRADE_AT, DEGRADE_OVER = 0.15, 0.25  # shares of the duration: start, and how long to reach full degradation
KILL_AT = 0.45
JOIN_AT = 0.6
DEGRADE_STEPS = 20


class Script:
    def __init__(self, demo: Demo, nursery: trio.Nursery) -> None:
        self.demo = demo
        self._nursery = nursery  # the nodes' nursery: a node that joins lives as long as the others
        self.lines: list[str] = []
        self._start = 0.0

    async def note(self, kind: str, text: str, **data: Any) -> None:
        line = f"t+{trio.current_time() - self._start:5.1f}s {text}"
        self.lines.append(line)
        if not self.demo.terminal:
            self.demo.out.write(f"demo: {line}\n")
            self.demo.out.flush()
        first = self.demo.nodes[0].node
        await first.store.run(first.store.append_event, kind, {"text": text[:60], **data})

    async def run(self) -> None:
        self._start = trio.current_time()
        nodes, duration = self.demo.nodes, self.demo.options.duration
        async with trio.open_nursery() as nursery:
            if len(nodes) < 3:
                await self.note("demo.script", "fewer than 3 nodes: no degrade or kill (node 0 is the dashboard)")
            else:
                nursery.start_soon(self._degrade, nodes[2], duration)
                nursery.start_soon(self._kill, nodes[1], duration)
            nursery.start_soon(self._join, duration)

    async def _join(self, duration: float) -> None:
        nodes = self.demo.nodes
        await trio.sleep_until(self._start + JOIN_AT * duration)
        joined = await self.demo.add_node(self._nursery, len(nodes))
        await self.note("demo.joined", f"{joined.name} ({joined.machine.profile.name}) joined",
                        peer_id=joined.peer_id)

    async def _kill(self, victim: Any, duration: float) -> None:
        await trio.sleep_until(self._start + KILL_AT * duration)
        running = sum(1 for o in self.demo.tracker.outcomes if o.state == "running" and o.assigned
                      and o.assigned[-1] == victim.peer_id)
        victim.kill()
        await self.note("demo.killed", f"{victim.name} died (no goodbye) with {running} tasks on it",
                        peer_id=victim.peer_id)

    async def _degrade(self, node: Any, duration: float) -> None:
        await trio.sleep_until(self._start + DEGRADE_AT * duration)
        await self.note("demo.degrading", f"{node.name} starts to overheat and fault", peer_id=node.peer_id)
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_drain, node, began)
            for step in range(1, DEGRADE_STEPS + 1):
                await trio.sleep_until(began + DEGRADE_OVER * duration * step / DEGRADE_STEPS)
                node.machine.set_degrade(step / DEGRADE_STEPS)

    async def _watch_drain(self, degraded: Any, began: float) -> None:
        """Until the others' schedulers drain the degrading node (their health trend says it will fail)."""
        while True:
            others = [n.node.orchestrator for n in self.demo.live() if n is not degraded]
            drained = [o for o in others if o is not None and o.scheduler.health.is_drained(degraded.peer_id)]
            if drained:
                temp = degraded.machine.temperature()
                # Which signal drained it: a loaded event loop delays heartbeats, and jitter drains a node too.
                worst = drained[0].scheduler.health.health(degraded.peer_id, trio.current_time()).worst
                await self.note("demo.drained", f"{degraded.name} drained by {len(drained)}/{len(others)} nodes "
                                f"{trio.current_time() - began:.1f}s after it began to degrade (GPU {temp}C, "
                                f"worst signal {worst})", peer_id=degraded.peer_id)
                return
            await trio.sleep(0.25)
