"""Candidates, heartbeats, capability records and clocks for the scheduler tests."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from hyperion_node.p2p.messages import CapabilityRecord, Heartbeat, OfferAd
from hyperion_node.p2p.peer_table import PeerState
from hyperion_node.scheduler.candidates import Candidate
from hyperion_node.scheduler.scheduler import Scheduler
from hyperion_node.scheduler.settings import SchedulerSettings

RUNTIME = "inference"
MODEL = "gemma-3-270m"
GIB = 1 << 30


def candidate(peer_id: str, *, item: str = MODEL, **fields: Any) -> Candidate:
    """A healthy, idle, alive candidate unless ``fields`` say otherwise."""
    defaults: dict[str, Any] = {
        "state": PeerState.ALIVE, "price_per_unit": 1e-6, "capacity": 2, "throughput": 50.0,
        "free_memory_bytes": 8 * GIB, "active_tasks": 0, "queue_depth": 0, "rtt_ms": 20.0, "reliability": 0.5,
    }
    defaults.update(fields)
    return Candidate(peer_id=peer_id, runtime=RUNTIME, item=item, **defaults)


def offer(item: str = MODEL, *, price: float = 1e-6, capacity: int = 2, throughput: float | None = 50.0) -> OfferAd:
    return OfferAd(runtime=RUNTIME, item=item, unit="token", price_per_unit=price, capacity=capacity,
                   throughput=throughput)


def record(peer_id: str, *offers: OfferAd, seq: int = 1, load: float = 0.0,
           hardware: Mapping[str, Any] | None = None) -> CapabilityRecord:
    return CapabilityRecord(
        peer_id=peer_id, seq=seq, expires_at=2_000_000_000.0, name=f"node-{peer_id}", addrs=("/ip4/127.0.0.1/tcp/1",),
        hardware=hardware if hardware is not None else {"cpu": "x", "cores": 8, "ram_bytes": 32 * GIB, "gpus": []},
        offers=offers, load=load,
    )


def heartbeat(peer_id: str, seq: int, *, health: str = "ok", active: int = 0, queue: int = 0,
              ram_free: int = 16 * GIB, gpus: tuple[Mapping[str, float | None], ...] = (),
              every_s: float = 0.0, time: float | None = None) -> Heartbeat:
    return Heartbeat(peer_id=peer_id, seq=seq, time=1_700_000_000.0 + seq if time is None else time,
                     name=f"node-{peer_id}",
                     addrs=("/ip4/127.0.0.1/tcp/1",), health=health, queue_depth=queue, active_tasks=active,
                     ram_available_bytes=ram_free, gpus=gpus, every_s=every_s)


class ManualClock:
    """A clock for the tests that are not about time (scoring, filtering, learning); those that are use trio's
    MockClock."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scheduler(seed: int = 0, clock: ManualClock | None = None, settings: SchedulerSettings | None = None) -> Scheduler:
    return Scheduler(settings, rng=random.Random(seed), clock=clock or ManualClock())
