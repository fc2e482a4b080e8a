"""A per-peer reputation view built from what this node can check: its own settled receipts, what the peers it
dealt with vouch for in their signed dealings summaries (each credited in proportion to the voucher's standing),
confirmed disputes, epoch roots, and the failures this node saw itself. Pure: no I/O, time passed in. The
scheduler reads :meth:`ReputationView.reliability` as its reliability criterion.

Reliability is the expected value of a Beta reputation (Jøsang & Ismail, "The Beta Reputation System",
2002): with ``r`` good outcomes and ``s`` bad ones, ``(r + 1) / (r + s + 2)``. A peer never seen scores 0.5,
one good task moves it only a little, and the score needs many outcomes to approach 0 or 1. Good outcomes
are settled receipts: this node's own, and those its counterparts vouch for, weighted by the voucher's standing
(``ledger/trust.py``: EigenTrust rooted in this node's own dealings), so that keys vouching for each other
earn nothing; bad ones are failures
(weight 1), confirmed disputes (weight ``DISPUTE_WEIGHT``: evidence of a wrong result, not of bad luck) and
disputes a peer signed that this node's own check showed wrong (the same weight, against the signer).

Replays: a receipt id is accepted once. Ids are remembered for ``window_ms`` after the work finished; a
receipt older than that is refused as stale rather than risk taking a replay, so memory is bounded by the
rate of this node's own settled receipts times the window, and by ``capacity`` in any case (evicting early
raises the stale floor, so an evicted id still cannot come back).
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from hyperion_node.ledger.epochs import SignedEpoch, verify_epoch
from hyperion_node.ledger.exceptions import Malformed, Replayed, Stale
from hyperion_node.ledger.receipt import SignedReceipt
from hyperion_node.ledger.signing import PeerKeys
from hyperion_node.ledger.trust import TrustGraph

DISPUTE_WEIGHT = 5.0
DAY_MS = 86_400_000
# Receipts a counterpart's dealings summary may lend others in all, per receipt it settled with this node.
VOUCH_PER_RECEIPT = 1.0
# Clocks of honest peers drift by seconds (NTP); five minutes is generous and still refuses receipts
# post-dated to outlive the replay window.
MAX_CLOCK_SKEW_MS = 5 * 60_000


@dataclass(frozen=True)
class PeerReputation:
    completed: int = 0  # settled receipts seen for its work, whoever signed them
    failed: int = 0
    disputed: int = 0  # confirmed disputes of its work
    volume: int = 0  # atto-credits of settled work done
    last_seen_ms: int = 0
    false_disputes: int = 0  # disputes it signed that this node's own check showed wrong
    credited: float = 0.0  # completed, each weighted by its requester's standing here (set by the view)

    @property
    def reliability(self) -> float:
        good = self.credited
        bad = self.failed + DISPUTE_WEIGHT * (self.disputed + self.false_disputes)
        return (good + 1.0) / (good + bad + 2.0)


class ReplayGuard:
    """Ids seen within the window; refuses duplicates and anything too old to tell apart from a replay."""

    def __init__(self, *, window_ms: int = DAY_MS, capacity: int = 200_000) -> None:
        self._window_ms = window_ms
        self._capacity = capacity
        self._seen: set[bytes] = set()
        self._by_time: list[tuple[int, bytes]] = []
        self._floor_ms = 0  # raised when ids are evicted for capacity before their window ran out

    def check(self, key: bytes, at_ms: int, now_ms: int) -> None:
        """Remember ``key`` (of a record made at ``at_ms``) or raise Replayed / Stale / Malformed."""
        self._expire(now_ms)
        if key in self._seen:
            raise Replayed(f"{key.hex()} was already seen")
        if at_ms > now_ms + MAX_CLOCK_SKEW_MS:
            raise Malformed(f"{key.hex()} is dated {at_ms - now_ms} ms in the future")
        if at_ms <= max(self._floor_ms, now_ms - self._window_ms):
            raise Stale(f"{key.hex()} is older than the replay window")
        self._seen.add(key)
        heapq.heappush(self._by_time, (at_ms, key))
        while len(self._seen) > self._capacity:
            at, old = heapq.heappop(self._by_time)
            self._seen.discard(old)
            self._floor_ms = max(self._floor_ms, at)

    def _expire(self, now_ms: int) -> None:
        while self._by_time and self._by_time[0][0] <= now_ms - self._window_ms:
            self._seen.discard(heapq.heappop(self._by_time)[1])

    def __len__(self) -> int:
        return len(self._seen)


class ReputationView:
    """Reputation per peer ID, from this node's own dealings, its counterparts' signed summaries and epoch
    roots, and local observations. Bounded to ``max_peers``,
    the least recently seen forgotten first. ``me`` is this node: its own receipts root the trust graph."""

    def __init__(self, me: str = "", *, keys: PeerKeys | None = None, window_ms: int = DAY_MS,
                 capacity: int = 200_000, max_peers: int = 10_000, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._keys = keys or PeerKeys()
        self._receipts = ReplayGuard(window_ms=window_ms, capacity=capacity)
        self._disputes = ReplayGuard(window_ms=window_ms, capacity=capacity)
        self._epochs: OrderedDict[tuple[str, int], bytes] = OrderedDict()  # (signer, number) -> root
        self._max_peers = max_peers
        self._peers: OrderedDict[str, PeerReputation] = OrderedDict()
        self._clock = clock
        self.trust = TrustGraph(me or "-", max_peers=max_peers)
        self._own: OrderedDict[str, int] = OrderedDict()  # worker -> receipts of its work this node settled

    def _update(self, peer_id: str, now_ms: int, *, completed: int = 0, failed: int = 0, disputed: int = 0,
                volume: int = 0, false_disputes: int = 0) -> None:
        old = self._peers.pop(peer_id, PeerReputation())
        self._peers[peer_id] = PeerReputation(old.completed + completed, old.failed + failed,
                                              old.disputed + disputed, old.volume + volume, now_ms,
                                              old.false_disputes + false_disputes)
        while len(self._peers) > self._max_peers:
            gone, _ = self._peers.popitem(last=False)
            self._own.pop(gone, None)

    def observe_own(self, signed: SignedReceipt, now_ms: int) -> None:
        """A receipt this node settled itself, as requester or worker: real dealings, the roots of trust.
        Each receipt counts once (its ID is remembered)."""
        receipt = signed.receipt
        try:
            self._receipts.check(signed.id, receipt.finished_at_ms, now_ms)
        except (Replayed, Stale):
            return
        self.trust.dealt(receipt.requester, receipt.worker)
        if receipt.worker != self.trust.me:
            self._own[receipt.worker] = self._own.pop(receipt.worker, 0) + 1
            while len(self._own) > self._max_peers:
                self._own.popitem(last=False)
            self._update(receipt.worker, now_ms, completed=1, volume=receipt.total)

    def observe_confirmed_dispute(self, worker: str, receipt_id: bytes, now_ms: int, at_ms: int) -> bool:
        """A dispute of ``receipt_id`` this node confirmed (its own check, or two verifiers with standing):
        counted once per receipt against the worker. False if it was already counted."""
        try:
            self._disputes.check(receipt_id, at_ms, now_ms)
        except (Replayed, Stale):
            return False
        self._update(worker, now_ms, disputed=1)
        return True

    def observe_false_dispute(self, signer: str, now_ms: int) -> None:
        """``signer`` signed a dispute this node's own check showed wrong: it loses standing here, and what it
        said of others stops counting in the trust graph."""
        self._update(signer, now_ms, false_disputes=1)
        self.trust.forget(signer)

    def observe_failure(self, peer_id: str, now_ms: int) -> None:
        """A task this node dispatched to ``peer_id`` failed or timed out (the orchestrator reports it)."""
        self._update(peer_id, now_ms, failed=1)

    def observe_epoch(self, epoch: SignedEpoch, now_ms: int) -> None:
        """A counterpart's epoch root, read from the DHT. The same epoch twice is a replay; the same number
        with another root is a peer signing two histories, counted as a dispute against it."""
        verify_epoch(epoch, self._keys)
        key = (epoch.header.signer, epoch.header.number)
        known = self._epochs.get(key)
        if known == epoch.header.root:
            raise Replayed(f"epoch {epoch.header.number} of {epoch.header.signer} was already seen")
        if known is not None:
            self._update(epoch.header.signer, now_ms, disputed=1)
            raise Malformed(f"{epoch.header.signer} signed two different roots for epoch {epoch.header.number}",
                            peer_id=epoch.header.signer)
        self._epochs[key] = epoch.header.root
        while len(self._epochs) > self._max_peers * 4:
            self._epochs.popitem(last=False)
        self._update(epoch.header.signer, now_ms)

    def standing(self, peer_id: str) -> float:
        """0..1: how far this node's own dealings vouch for ``peer_id`` (``TrustGraph.standing``)."""
        return self.trust.standing(peer_id, self._clock())

    def get(self, peer_id: str) -> PeerReputation:
        found = self._peers.get(peer_id)
        if found is None:
            if not self.trust.vouchers(peer_id):
                return PeerReputation()
            found = PeerReputation()
        vouched = self.trust.vouchers(peer_id)
        credited = self._own.get(peer_id, 0) + sum(self._vouched_credit(v, n) for v, n in vouched.items()
                                                   if v != self.trust.me)
        return PeerReputation(found.completed, found.failed, found.disputed, found.volume, found.last_seen_ms,
                              found.false_disputes, round(credited, 3))

    def _vouched_credit(self, voucher: str, receipts: float) -> float:
        """What ``voucher``'s claim of ``receipts`` with a peer is worth here: its standing, times the claim,
        with everything it claims scaled down to at most the receipts this node itself holds with it
        (``VOUCH_PER_RECEIPT`` each). A summary is a claim anyone can inflate; this way a peer that settled
        one task with this node can lend its ring of fresh keys one receipt's worth in all, however many it
        claims, and an honest counterpart's word counts as far as this node's own dealings with it."""
        claimed = self.trust.claimed(voucher)
        if claimed <= 0:
            return 0.0
        budget = VOUCH_PER_RECEIPT * self.trust.dealt_with(voucher)
        return self.standing(voucher) * receipts * min(1.0, budget / claimed)

    def reliability(self, peer_id: str) -> float:
        return self.get(peer_id).reliability

    def snapshot(self) -> dict[str, PeerReputation]:
        return {peer: self.get(peer) for peer in self._peers}
