"""Standing: how much this node trusts a peer, by transitive trust rooted in its own dealings (EigenTrust).

Anyone can mint keys, and two keys one operator holds can trade receipts without limit: a receipt proves that
its two signers agree, not that either is worth anything. So a settled receipt counts for a worker only in
proportion to the standing of the requester that signed it, and that standing comes, step by step, from the
peers this node has itself served or paid -- the only dealings it knows to be real.

The model is EigenTrust (Kamvar, Schlosser and Garcia-Molina, "The EigenTrust Algorithm for Reputation
Management in P2P Networks", WWW 2003), computed by this node alone over what it has seen:

* local trust ``c[i][j]``: settled receipts between ``i`` and ``j`` (either way: a requester that countersigned
  was satisfied with the work, a worker that got the countersignature was paid), normalised so that each
  peer's outgoing trust sums to 1 -- a ring can only pass around the trust that flows into it;
* pre-trust ``p``: this node's own counterparts, by the number of receipts it holds with each;
* global trust ``t = (1 - a) Cᵀ t + a p`` by power iteration (``a`` = ``RESTART``, the paper's 0.1-0.2);
  a peer with no outgoing trust gives its share back to ``p`` (the paper's handling of inactive peers).

A ring of fresh keys trading among themselves receives no trust from ``p``'s peers, so its members stay at 0
however many receipts they trade. ``standing(peer)`` is ``t`` relative to the typical pre-trusted peer, in
[0, 1]: 1 for a peer trusted like this node's own counterparts, 0 for a stranger.

Bounded: at most ``max_peers`` peers and ``max_edges`` counterparts per peer are kept (least recently seen
forgotten), and the iteration runs only when something changed and at most every ``min_interval`` seconds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

RESTART = 0.15
ITERATIONS = 30  # the paper converges in under 10 at 1,000 peers; 30 keeps a margin at bounded cost
MIN_INTERVAL_S = 5.0


@dataclass
class TrustGraph:
    me: str
    max_peers: int = 4096
    max_edges: int = 64
    restart: float = RESTART
    min_interval: float = MIN_INTERVAL_S
    # peer -> {counterpart: receipts}, what each peer vouches for; least recently touched first
    _edges: OrderedDict[str, OrderedDict[str, float]] = field(default_factory=OrderedDict)
    # counterpart -> {voucher: receipts}: the same edges read backwards, to credit a worker quickly
    _incoming: dict[str, dict[str, float]] = field(default_factory=dict)
    _own: dict[str, float] = field(default_factory=dict)  # this node's counterparts: the pre-trust
    _trust: dict[str, float] = field(default_factory=dict)
    _reference: float = 0.0
    _dirty: bool = False
    _computed_at: float = float("-inf")

    def own(self, counterpart: str, weight: float = 1.0) -> None:
        """This node served or paid ``counterpart`` (a receipt in its own ledger)."""
        if counterpart == self.me:
            return
        self._own[counterpart] = self._own.get(counterpart, 0.0) + weight
        if len(self._own) > self.max_peers:
            del self._own[min(self._own, key=self._own.__getitem__)]
        self._dirty = True

    def dealt(self, requester: str, worker: str, weight: float = 1.0) -> None:
        """A settled receipt between two peers: an edge each way (this node's own, for now: what others
        say of their dealings arrives as their summaries, ``vouched``)."""
        if requester == worker:
            return
        if self.me in (requester, worker):
            self.own(worker if requester == self.me else requester, weight)
            return
        self._edge(requester, worker, weight)
        self._edge(worker, requester, weight)
        self._dirty = True

    def _edge(self, a: str, b: str, weight: float) -> None:
        out = self._edges.pop(a, None) or OrderedDict()
        out[b] = out.pop(b, 0.0) + weight
        self._set_row(a, out)

    def _set_row(self, peer: str, row: OrderedDict[str, float]) -> None:
        self._drop_row(peer)
        while len(row) > self.max_edges:
            row.popitem(last=False)
        self._edges[peer] = row
        for other, weight in row.items():
            self._incoming.setdefault(other, {})[peer] = weight
        while len(self._edges) > self.max_peers:
            self._drop_row(next(iter(self._edges)))

    def _drop_row(self, peer: str) -> None:
        for other in self._edges.pop(peer, {}):
            incoming = self._incoming.get(other)
            if incoming is not None:
                incoming.pop(peer, None)
                if not incoming:
                    del self._incoming[other]

    def vouchers(self, peer: str) -> dict[str, float]:
        """Who vouches for ``peer`` (in a dealings summary, or a receipt it settled with it), and for how many
        receipts."""
        return dict(self._incoming.get(peer, {}))

    def claimed(self, peer: str) -> float:
        """How many receipts ``peer`` vouches for in all (its whole row)."""
        return sum(self._edges.get(peer, {}).values())

    def dealt_with(self, peer: str) -> float:
        """Receipts this node itself holds with ``peer``."""
        return self._own.get(peer, 0.0)

    def vouched(self, peer: str, counts: Iterable[tuple[str, int]]) -> None:
        """What ``peer`` says of its own dealings (its signed summary, ledger/dealings.py): its outgoing row,
        replacing what it said before."""
        if peer == self.me:
            return
        row: OrderedDict[str, float] = OrderedDict()
        for other, n in list(counts)[: self.max_edges]:
            if other not in (peer, self.me) and n > 0:
                row[other] = float(n)
        self._set_row(peer, row)
        self._dirty = True

    def forget(self, peer: str) -> None:
        """Drop what ``peer`` said of others (its receipts are no evidence any more: it lied)."""
        if peer in self._edges:
            self._drop_row(peer)
            self._dirty = True

    def trust(self, now: float) -> dict[str, float]:
        """Global trust per peer (summing to at most 1), recomputed when stale."""
        if self._dirty and now - self._computed_at >= self.min_interval:
            self._compute()
            self._computed_at = now
            self._dirty = False
        return self._trust

    def standing(self, peer: str, now: float) -> float:
        """0..1: this peer's trust relative to the mean of this node's own counterparts."""
        if peer == self.me:
            return 1.0
        trust = self.trust(now)
        if self._reference <= 0.0:
            return 0.0
        return min(1.0, trust.get(peer, 0.0) / self._reference)

    def _compute(self) -> None:
        total = sum(self._own.values())
        if total <= 0:
            self._trust, self._reference = {}, 0.0
            return
        pre = {peer: w / total for peer, w in self._own.items()}
        rows = {peer: (sum(out.values()), out) for peer, out in self._edges.items()}
        t = dict(pre)
        for _ in range(ITERATIONS):
            nxt: dict[str, float] = {peer: self.restart * w for peer, w in pre.items()}
            lost = 0.0  # trust held by peers with no outgoing edges: back to the pre-trusted
            for peer, value in t.items():
                row = rows.get(peer)
                if row is None or row[0] <= 0:
                    lost += value
                    continue
                share = (1.0 - self.restart) * value / row[0]
                for other, w in row[1].items():
                    if other != self.me:
                        nxt[other] = nxt.get(other, 0.0) + share * w
            for peer, w in pre.items():
                nxt[peer] = nxt.get(peer, 0.0) + (1.0 - self.restart) * lost * w
            t = nxt
        self._trust = t
        self._reference = sum(t.get(peer, 0.0) for peer in pre) / len(pre)

    def __len__(self) -> int:
        return len(self._edges)
