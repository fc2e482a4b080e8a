"""What the dashboards show, as pure code: the node and its peers, where tasks went, and the time series.

This is the body of ``GET /api/dashboard``, which a browser page shows (and a screen share with it), so it is
built from an allow-list of fields: nothing here lets a reader act on the node or learn a secret (no token,
no data-dir path, no addresses, no payloads or outputs). Peers' fields come from their signed heartbeats and capability
records, which say what the peer chose to tell the whole network anyway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hyperion_node.dashboard.series import SeriesRing

VIEW_VERSION = 1
MAX_NODES = 200  # rows a dashboard draws; the rest are counted, not listed (a page of peers, not the network)
_GPU_TELEMETRY = ("util", "vram_free", "temp_c", "power_w")
_TELEMETRY = ("queue_depth", "active_tasks", "ram_available_bytes", "health")


@dataclass
class WorkerTally:
    completed: int = 0
    failed: int = 0
    runtimes: Counter[str] = field(default_factory=Counter)  # completed tasks by runtime


class TaskDistribution:
    """Tasks this node routed (requester side), by the worker that ran them, fed by ``task.*`` events.

    Counting events as they arrive keeps each update proportional to the new events, not to the history;
    ``seed`` starts it from the tasks table once, at start.
    """

    def __init__(self) -> None:
        self.workers: dict[str, WorkerTally] = {}

    def seed(self, rows: Iterable[tuple[str | None, str, str, int]]) -> None:
        """(worker, runtime, state, count) rows of requester-side tasks."""
        for worker, runtime, state, n in rows:
            self._count(worker, runtime, state, int(n))

    def observe(self, kind: str, data: Mapping[str, Any]) -> None:
        """One event from the store's event log; anything but a final requester-side task state is ignored."""
        if data.get("role") != "requester" or kind not in ("task.completed", "task.failed"):
            return
        self._count(data.get("worker"), str(data.get("runtime", "")), kind.removeprefix("task."), 1)

    def _count(self, worker: str | None, runtime: str, state: str, n: int) -> None:
        if not worker:
            return  # failed before any worker was chosen (no provider): nobody to attribute it to
        tally = self.workers.setdefault(worker, WorkerTally())
        if state == "completed":
            tally.completed += n
            tally.runtimes[runtime] += n
        elif state == "failed":
            tally.failed += n

    def to_json(self, names: Mapping[str, str]) -> list[dict[str, Any]]:
        """Workers by tasks completed, most first, with their share of this node's completed tasks."""
        total = sum(t.completed for t in self.workers.values()) or 1
        ranked = sorted(self.workers.items(), key=lambda kv: (-kv[1].completed, kv[0]))[:MAX_NODES]
        return [{"peer_id": peer, "name": names.get(peer, ""), "completed": t.completed, "failed": t.failed,
                 "share": round(t.completed / total, 4), "runtimes": dict(t.runtimes)} for peer, t in ranked]


def _pick(source: Mapping[str, Any] | None, keys: Iterable[str]) -> dict[str, Any]:
    return {k: source[k] for k in keys if source and k in source}


def telemetry(raw: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    gpus = raw.get("gpus") or []
    return {**_pick(raw, _TELEMETRY), "gpus": [_pick(g, _GPU_TELEMETRY) for g in gpus if isinstance(g, Mapping)]}


def hardware(raw: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    gpus = raw.get("gpus") or []
    return {**_pick(raw, ("cpu", "cores", "ram_bytes")),
            "gpus": [_pick(g, ("name", "vram_bytes")) for g in gpus if isinstance(g, Mapping)]}


def peer_row(peer: Mapping[str, Any]) -> dict[str, Any]:
    """A peer-table entry (``PeerEntry.to_json``) reduced to what a dashboard draws."""
    return {
        "peer_id": peer["peer_id"], "name": peer.get("name") or "", "self": False, "state": peer["state"],
        "connected": bool(peer.get("connected")), "rtt_ms": peer.get("rtt_ms"),
        "last_seen_s_ago": peer.get("last_seen_s_ago"), "score": peer.get("score"),
        "telemetry": telemetry(peer.get("telemetry")), "hardware": hardware(peer.get("hardware")),
        "offers": [{"runtime": o["runtime"], "item": o["item"]} for o in peer.get("offers", [])],
    }


def local_row(*, peer_id: str, name: str, hardware_ad: Mapping[str, Any], telemetry_ad: Mapping[str, Any],
              load: tuple[int, int], offers: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """This node, in the same shape as a peer (what its own heartbeats tell the others)."""
    raw = {**telemetry_ad, "queue_depth": load[0], "active_tasks": load[1]}
    return {"peer_id": peer_id, "name": name, "self": True, "state": "alive", "connected": True, "rtt_ms": None,
            "last_seen_s_ago": 0.0, "score": None, "telemetry": telemetry(raw), "hardware": hardware(hardware_ad),
            "offers": [{"runtime": r, "item": i} for r, i in offers]}


_STATE_ORDER = {"alive": 0, "draining": 1, "suspect": 2, "dead": 3, "left": 4}


def build_view(*, node: Mapping[str, Any], local: dict[str, Any], peers: Iterable[Mapping[str, Any]],
               distribution: TaskDistribution, ring: SeriesRing, now: float, since: float = 0.0,
               interval_s: float = 1.0, last_event_id: int = 0,
               network: Mapping[str, Any] | None = None,
               operator: Mapping[str, Any] | None = None,
               routing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the dashboards draw. ``peers``: the peer table, exact for connected peers; ``network``: the census's
    estimate of the whole network (p2p/census.py), or None before its first sample."""
    rows = [peer_row(p) for p in peers]
    rows.sort(key=lambda r: (_STATE_ORDER.get(r["state"], 9), r["name"] or r["peer_id"]))
    names = {r["peer_id"]: r["name"] for r in [local, *rows]}
    routed = {w["peer_id"]: w for w in distribution.to_json(names)}
    nodes = [local, *rows][:MAX_NODES]
    for row in nodes:
        tally = routed.get(row["peer_id"])
        row["routed"] = {"completed": tally["completed"], "failed": tally["failed"]} if tally else \
            {"completed": 0, "failed": 0}
    latest = ring.latest
    totals = {
        "routed_completed": latest.completed.get("requester", 0) if latest else 0,
        "routed_failed": latest.failed.get("requester", 0) if latest else 0,
        "served_completed": latest.completed.get("worker", 0) if latest else 0,
        "served_failed": latest.failed.get("worker", 0) if latest else 0,
        "routed_all_time": sum(w["completed"] for w in routed.values()),
    }
    return {
        "version": VIEW_VERSION,
        "time": round(now, 3),
        "interval_s": interval_s,
        "node": dict(node),
        "nodes": nodes,
        "nodes_total": 1 + len(rows),
        "peers_alive": sum(r["state"] == "alive" for r in rows),
        "connected": sum(bool(r["connected"]) for r in rows),
        "network": dict(network) if network else None,
        "distribution": list(routed.values()),
        "totals": totals,
        "rewards": dict(latest.rewards) if latest else {},
        "series": ring.points(since),
        "last_event_id": last_event_id,  # where a reader of /api/events (with the token) may start
        # The operator's controls in force and the latest ones given (control.py), newest first.
        "operator": dict(operator) if operator else {"draining": False, "switched_off": [], "prices": {},
                                                     "banned": [], "events": []},
        # Requests per alias and arm by outcome, and shadow runs by outcome (api/routing.py).
        "routing": dict(routing or {}),
    }
