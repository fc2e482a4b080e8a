"""The dashboard as a daemon component: samples the node's counters every second into a bounded ring and
answers the view that ``GET /api/dashboard`` returns.

Each sample costs a copy of in-memory counters, a read of the events appended since the last sample (the
event log's primary key, so proportional to new events only) and, when the ledger moved, one pass over the
receipts index for the reward totals, at most every ``REWARDS_EVERY_S``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from hyperion_node import __version__
from hyperion_node.dashboard.series import SeriesRing, counters_from
from hyperion_node.dashboard.view import TaskDistribution, build_view, local_row
from hyperion_node.errors import InternalError
from hyperion_node.ledger.money import atto_to_credits
from hyperion_node.p2p.messages import OfferAd
from hyperion_node.p2p.network import P2PNetwork
from hyperion_node.store import Event, Store
from hyperion_node.tasks.service import Orchestrator
from hyperion_node.trio_types import TaskStatus

if TYPE_CHECKING:
    from hyperion_node.api.routing import Routing
    from hyperion_node.control import Controls

log = structlog.get_logger(__name__)

SAMPLE_INTERVAL_S = 1.0  # the web page polls every second and `top` redraws twice a second
# A pass over the receipts index is linear in the ledger; a reward chart that moves every 5 s reads the same.
REWARDS_EVERY_S = 5.0
EVENT_PAGE = 1000
OPERATOR_EVENTS = 10  # the operator's latest controls, on the web page


class NodeParts(Protocol):
    """The parts of the running node the dashboard reads (``hyperion_node.daemon.Node``)."""

    @property
    def store(self) -> Store: ...
    @property
    def p2p(self) -> P2PNetwork: ...
    @property
    def orchestrator(self) -> Orchestrator | None: ...
    @property
    def name(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    def hardware_ad(self) -> dict[str, Any]: ...
    def telemetry_ad(self) -> dict[str, Any]: ...
    def load(self) -> tuple[int, int]: ...
    def offer_ads(self) -> list[OfferAd]: ...
    @property
    def controls(self) -> Controls: ...
    @property
    def routing(self) -> Routing: ...


def reward_totals(rows: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """(role, status, total in atto-credits as text) receipt rows to credits earned (settled), pending and
    disputed as a worker, and spent (settled) as a requester -- the figures of ``hyperion-node rewards``."""
    atto = dict.fromkeys(("earned", "pending", "disputed", "spent"), 0)
    for role, status, total in rows:
        if role == "worker":
            atto[{"settled": "earned"}.get(status, status)] += int(total)
        elif role == "requester" and status == "settled":
            atto["spent"] += int(total)
    return {k: atto_to_credits(v) for k, v in atto.items()}


class Dashboard:
    def __init__(self, node: NodeParts, *, peer_id: str, interval_s: float = SAMPLE_INTERVAL_S,
                 ring: SeriesRing | None = None) -> None:
        if not interval_s > 0:
            raise InternalError(f"dashboard interval must be positive, got {interval_s!r}")
        self._node = node
        self._peer_id = peer_id
        self.interval_s = interval_s
        self.ring = ring or SeriesRing()
        self.distribution = TaskDistribution()
        self._event_cursor = 0
        self._ledger_head = -1
        self._rewards: dict[str, float] = reward_totals([])
        self._rewards_at = -float("inf")
        self.operator_events: deque[dict[str, Any]] = deque(maxlen=OPERATOR_EVENTS)  # the latest controls

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._node.store.run(self._node.store.transaction, self._seed)
        await self._sample()
        task_status.started()
        next_at = trio.current_time()
        while True:
            # A fixed schedule, so the sampling cost does not stretch the period; after a stall (a slow
            # store), start again from now rather than catching up with a burst of samples.
            next_at = max(next_at + self.interval_s, trio.current_time())
            await trio.sleep_until(next_at)
            await self._sample()

    def _seed(self, conn: sqlite3.Connection) -> None:
        """Tasks routed before this start, and the event ID from which to count on: one transaction, so that
        no task is counted twice or missed between the two reads."""
        self._event_cursor = int(conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
        for when, kind, data in reversed(conn.execute(
                "SELECT time, kind, data FROM events WHERE kind LIKE 'operator.%' ORDER BY id DESC LIMIT ?",
                (OPERATOR_EVENTS,)).fetchall()):
            self._operator(float(when), kind, json.loads(data))
        self.distribution.seed(conn.execute(
            "SELECT worker, runtime, state, count(*) FROM tasks WHERE role = 'requester'"
            " AND state IN ('completed', 'failed') GROUP BY worker, runtime, state").fetchall())

    def _read_store(self, now: float) -> tuple[list[Event], dict[str, float] | None]:
        """Runs in the store's thread and only reads: the events since the cursor, and the reward totals
        when due and changed. The trio side applies them, so ``view()`` never sees a half-updated tally."""
        store = self._node.store
        events: list[Event] = []
        cursor = self._event_cursor
        while True:
            page = store.events(since_id=cursor, limit=EVENT_PAGE)
            events += page
            cursor = page[-1].id if page else cursor
            if len(page) < EVENT_PAGE:
                break
        if now - self._rewards_at < REWARDS_EVERY_S:
            return events, None
        self._rewards_at = now
        head = int(store.execute("SELECT coalesce(max(position), 0) FROM ledger_entries")[0][0])
        if head == self._ledger_head:  # every status change is a new entry, so an unchanged head is no change
            return events, None
        self._ledger_head = head
        return events, reward_totals(store.execute("SELECT role, status, total FROM ledger_receipts"))

    async def _sample(self) -> None:
        events, rewards = await self._node.store.run(self._read_store, trio.current_time())
        for event in events:
            self.distribution.observe(event.kind, event.data)
            if event.kind.startswith("operator."):
                self._operator(event.time, event.kind, event.data)
            self._event_cursor = event.id
        if rewards is not None:
            self._rewards = rewards
        latest = self.ring.latest
        # Wall time for the charts' axis, kept increasing if the clock steps back (NTP).
        t = time.time() if latest is None else max(time.time(), latest.t + 1e-3)
        orchestrator = self._node.orchestrator
        self.ring.add(counters_from(
            orchestrator.metrics if orchestrator is not None else None, t=t, rewards=self._rewards,
            peers_alive=sum(e.state.value == "alive" for e in self._node.p2p.table.peers.values()),
            load=self._node.load()))

    def _operator(self, when: float, kind: str, data: dict[str, Any]) -> None:
        self.operator_events.append({"time": round(when, 3), "action": kind.removeprefix("operator."),
                                     "who": data.get("who"), "why": data.get("why"),
                                     **{k: data[k] for k in ("peer_id", "runtime", "price_per_unit") if k in data}})

    def view(self, since: float = 0.0) -> dict[str, Any]:
        node = self._node
        local = local_row(peer_id=self._peer_id, name=node.name, hardware_ad=node.hardware_ad(),
                          telemetry_ad=node.telemetry_ad(), load=node.load(),
                          offers=[(o.runtime, o.item) for o in node.offer_ads()])
        return build_view(
            node={"peer_id": self._peer_id, "name": node.name, "version": __version__,
                  "uptime_s": round(time.time() - node.started_at, 1)},
            local=local, peers=node.p2p.table.to_json(trio.current_time()), distribution=self.distribution,
            ring=self.ring, now=time.time(), since=since, interval_s=self.interval_s,
            last_event_id=self._event_cursor, network=node.p2p.census.to_json(),
            operator={**node.controls.state(), "events": list(reversed(self.operator_events))},
            routing=node.routing.stats.to_json())

