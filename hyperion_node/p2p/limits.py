"""Per-peer limits, as pure code (time passed in).

Who pays for a message matters as much as counting it. A signed message may reach a node from someone other
than its signer (a replay of what was collected), so a message is first checked for being new
(``HeartbeatGate``): a replayed or stale one is dropped and counted, and charged to nobody; only what is new
counts toward the signer's rate, and a rate broken by a signer's own signed timestamps is its own fault
however the messages arrive. ``RateLimiter`` bounds what one peer may ask per second, ``PeerSlots`` how many
streams it may hold open, ``Unpaid`` how much work it may leave unpaid, ``PaidPeers`` who has paid (and so may
hold more than one place of an offer).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass
class RateLimiter:
    """A token bucket per key: ``rate`` tokens per second, bursts up to ``burst``.

    Bounded memory: at most ``max_keys`` buckets; the stalest are forgotten first (a forgotten peer starts
    again with a full bucket, which only ever errs on the side of accepting).
    """

    rate: float
    burst: float
    max_keys: int = 10_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, last time)

    def allow(self, key: str, now: float) -> bool:
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)  # re-inserted last: dict order is least recently used first
        if len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


class Freshness(StrEnum):
    NEW = "new"
    STALE = "stale"  # not newer than what we have, or older than max_age: nobody's fault, dropped
    FUTURE = "future"  # dated past our clock by more than max_skew: the signer's fault
    TOO_FREQUENT = "too_frequent"  # the signer's own timestamps are closer than its rate allows


@dataclass
class HeartbeatGate:
    """Which of an origin's signed, sequenced, timestamped messages (heartbeats) are new, per origin.

    * a sequence number not above the last accepted one is stale: a replay, or an older message arriving
      after a newer one; only the newest says anything about the peer;
    * a timestamp older than ``max_age`` (the peer table's dead timeout) is stale: it says nothing about the
      peer now, and a replay of a dead peer's last messages must not revive it;
    * a timestamp more than ``max_skew`` ahead of our clock is the signer's lie (or a broken clock);
    * the rate is a token bucket run on the *signer's* timestamps, ``rate`` per second with bursts of
      ``burst``: a joining node's backlog, spaced as its origin sent it, passes however fast it arrives, while
      an origin that signs more than its share is at fault whoever relays them. It cannot run ahead of our
      clock by more than ``max_skew``, so that bounds what a liar gets through.
    """

    rate: float
    burst: float
    max_age: float
    max_skew: float
    max_keys: int = 10_000
    _last: OrderedDict[str, tuple[int, float, float]] = field(default_factory=OrderedDict)  # seq, time, tokens

    def check(self, origin: str, seq: int, at: float, wall_now: float) -> Freshness:
        last = self._last.get(origin)
        if last is not None and seq <= last[0]:
            return Freshness.STALE
        if at < wall_now - self.max_age:
            return Freshness.STALE
        if at > wall_now + self.max_skew:
            return Freshness.FUTURE
        tokens = self.burst
        if last is not None:
            tokens = min(self.burst, last[2] + max(0.0, at - last[1]) * self.rate)
            if tokens < 1.0:
                return Freshness.TOO_FREQUENT
        self._last.pop(origin, None)
        self._last[origin] = (seq, at, tokens - 1.0)
        if len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return Freshness.NEW

    def __len__(self) -> int:
        return len(self._last)


@dataclass
class PeerSlots:
    """Places held at once (open streams, running checks), at most ``per_peer`` for one peer and ``total``
    for all: what a stream protocol checks when a stream opens, before it reads a byte of it."""

    per_peer: int
    total: int
    _held: dict[str, int] = field(default_factory=dict)

    def take(self, peer: str) -> bool:
        held = self._held.get(peer, 0)
        if held >= self.per_peer or sum(self._held.values()) >= self.total:
            return False
        self._held[peer] = held + 1
        return True

    def give(self, peer: str) -> None:
        held = self._held.get(peer, 0) - 1
        if held > 0:
            self._held[peer] = held
        else:
            self._held.pop(peer, None)

    def held(self, peer: str | None = None) -> int:
        return sum(self._held.values()) if peer is None else self._held.get(peer, 0)


@dataclass
class Unpaid:
    """Results a peer received and never countersigned, per peer, each remembered for ``window`` seconds.

    A worker signs its receipt before the final frame leaves, and the requester's countersignature is what
    makes the work count (and be paid). A requester that takes results and never signs gets work for free;
    past ``limit`` such results within the window it is refused until they age out.
    """

    limit: int
    window: float
    max_peers: int = 4096
    _at: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)

    def add(self, peer: str, now: float) -> int:
        times = [t for t in self._at.pop(peer, []) if now - t < self.window][-self.limit * 2:]
        times.append(now)
        self._at[peer] = times
        if len(self._at) > self.max_peers:
            self._at.popitem(last=False)
        return len(times)

    def count(self, peer: str, now: float) -> int:
        return sum(1 for t in self._at.get(peer, ()) if now - t < self.window)

    def over(self, peer: str, now: float) -> bool:
        return self.count(peer, now) >= self.limit


@dataclass
class PaidPeers:
    """Requesters that countersigned a result of this node's, the most recent ``max_peers`` of them.

    Bounded like every map keyed by peers: a peer pushed out by newer ones is a stranger again until it pays
    once more, which costs it only the larger share of an offer's places for one task.
    """

    max_peers: int = 4096
    _peers: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def add(self, peer: str) -> None:
        self._peers.pop(peer, None)
        self._peers[peer] = None
        if len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def __len__(self) -> int:
        return len(self._peers)
