"""Standing rooted in this node's own dealings (EigenTrust): a ring of fresh keys mints none of it."""

from __future__ import annotations

from hyperion_node.ledger.reputation import ReputationView
from hyperion_node.ledger.trust import TrustGraph
from hyperion_node.scheduler.candidates import TaskRequirements
from hyperion_node.testing.receipts import ReceiptFactory, new_identity
from tests.scheduler.factories import MODEL, RUNTIME, candidate, scheduler

NOW_MS = 1_700_000_100_000


def test_trust_flows_from_this_nodes_dealings_and_not_into_a_ring() -> None:
    graph = TrustGraph("me", min_interval=0.0)
    for requester in ("r1", "r2", "r3"):
        graph.own(requester)
        graph.dealt(requester, "worker")
    for a in range(10):
        for b in range(10):
            if a != b:
                graph.dealt(f"s{a}", f"s{b}", 10.0)
    assert graph.standing("worker", 1.0) > 0.5
    assert all(graph.standing(f"s{i}", 1.0) == 0.0 for i in range(10))
    assert graph.standing("stranger", 1.0) == 0.0
    assert sum(graph.trust(1.0).values()) <= 1.0 + 1e-9


def test_a_fresh_node_trusts_no_one_and_a_liar_is_forgotten() -> None:
    graph = TrustGraph("me", min_interval=0.0)
    graph.dealt("a", "b")
    assert graph.standing("a", 1.0) == graph.standing("b", 1.0) == 0.0  # no dealings of its own: no roots
    graph.own("a")
    assert graph.standing("b", 2.0) > 0.0
    graph.forget("a")  # a was shown to lie: what it vouched for no longer counts
    assert graph.standing("b", 3.0) == 0.0


def test_the_graph_stays_bounded() -> None:
    graph = TrustGraph("me", max_peers=50, max_edges=4, min_interval=0.0)
    for i in range(1000):
        graph.dealt(f"a{i}", f"b{i % 7}")
    assert len(graph) <= 50


def test_a_sybil_ring_ranks_below_an_honest_worker_in_the_scheduler() -> None:
    """The issue's figure: 10 fresh keys trading 1,000 receipts among themselves rank below an honest worker
    with 20 receipts from established requesters, in an honest node's scheduler. What a node learns of others'
    dealings is their signed summaries (ledger/dealings.py): the ring's members vouch for each other with all
    their 1,000 receipts, the established requesters for the honest worker with its 20."""
    me = new_identity()
    view = ReputationView(str(me.peer_id), clock=lambda: 0.0)
    factory = ReceiptFactory(now_ms=NOW_MS - 60_000)
    requesters = [new_identity() for _ in range(3)]
    for requester in requesters:  # established: this node has served each of them 7 times
        for _ in range(7):
            view.observe_own(factory.settled(worker=me, requester=requester), NOW_MS)
    honest = str(new_identity().peer_id)
    for i, requester in enumerate(requesters):
        view.trust.vouched(str(requester.peer_id), [(honest, 7 if i < 2 else 6)])  # 20 receipts in all
    ring_ids = [str(new_identity().peer_id) for _ in range(10)]
    for member in ring_ids:  # 1,000 receipts traded around the ring, 100 vouched per member
        view.trust.vouched(member, [(other, 100 // 9 + 1) for other in ring_ids if other != member])
    assert all(view.get(p).credited == 0.0 for p in ring_ids)  # vouched for, and worth nothing
    assert view.get(honest).credited > 19.0  # its vouchers' word, each as good as this node's dealings with it
    assert view.reliability(honest) > 0.9
    assert all(view.reliability(p) == 0.5 for p in ring_ids)  # the prior: as if never seen
    # The scheduler's score (MCDA, every other criterion equal) puts the honest worker above the whole ring;
    # its adaptive layer still explores unmeasured peers now and then, on purpose (scheduler/adaptive.py).
    candidates = [candidate(p, reliability=view.reliability(p)) for p in [honest, *ring_ids]]
    ranked = scheduler().choose(TaskRequirements(runtime=RUNTIME, item=MODEL), candidates).ranked
    mcda = {c.peer_id: c.mcda for c in ranked}
    assert all(mcda[honest] > mcda[p] for p in ring_ids if p in mcda)


def test_a_counterpart_lends_its_ring_no_more_than_its_own_dealings() -> None:
    """A peer that settled one task with this node and then claims 1,000 receipts with each of ten fresh keys
    lends them one receipt's worth in all: a claim is scaled to what this node itself dealt with the claimant."""
    me = new_identity()
    view = ReputationView(str(me.peer_id), clock=lambda: 0.0)
    factory = ReceiptFactory(now_ms=NOW_MS - 60_000)
    honest, liar = new_identity(), new_identity()
    for _ in range(20):
        view.observe_own(factory.settled(worker=me, requester=honest), NOW_MS)
    view.observe_own(factory.settled(worker=me, requester=liar), NOW_MS)
    ring = [str(new_identity().peer_id) for _ in range(10)]
    view.trust.vouched(str(liar.peer_id), [(p, 1000) for p in ring])
    lent = sum(view.get(p).credited for p in ring)
    assert 0 < lent <= 1.0
