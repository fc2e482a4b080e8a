"""What the daemon tells the P2P layer about this node (read at each heartbeat and advert), and the counters
an operator reads of the P2P layer through the API."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hyperion_node.p2p.messages import HEALTH_OK, OfferAd

LATENCY_WINDOW_S = 60.0


@dataclass(frozen=True)
class LocalState:
    offers: Callable[[], Sequence[OfferAd]]
    hardware: Callable[[], dict[str, Any]]
    telemetry: Callable[[], dict[str, Any]]  # ram_available_bytes, gpus: [{util, vram_free, temp_c, power_w}]
    load: Callable[[], tuple[int, int]]  # (queue depth, active tasks)
    health: Callable[[], str] = lambda: HEALTH_OK


@dataclass
class P2PStats:
    """Counters an operator (and the tests) read through the API."""

    received: Counter[str] = field(default_factory=Counter)  # accepted messages, by protocol
    sent: Counter[str] = field(default_factory=Counter)  # messages this node sent, by protocol
    rejected: Counter[str] = field(default_factory=Counter)  # "<where>:<reason>" -> count
    # Provider lookups by what answered them: "walk" (provider_walk.py), "dht" (py-libp2p's own lookup, after a
    # walk that found no valid record), "none" (neither found one).
    lookups: Counter[str] = field(default_factory=Counter)
    # Heartbeat delay from the provider's clock to ours: (local monotonic time, ms), over the last
    # LATENCY_WINDOW_S only, so start-up fades out.
    latencies_ms: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=5000))

    def reject(self, where: str, reason: str) -> None:
        self.rejected[f"{where}:{reason}"] += 1

    def to_json(self) -> dict[str, Any]:
        since = time.monotonic() - LATENCY_WINDOW_S
        lat = sorted(ms for at, ms in self.latencies_ms if at >= since)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

        return {"received": dict(self.received), "sent": dict(self.sent), "rejected": dict(self.rejected),
                "rejected_total": sum(self.rejected.values()), "lookups": dict(self.lookups),
                "heartbeat_latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "n": len(lat),
                                         "window_s": LATENCY_WINDOW_S}}
