"""The per-peer reputation view: what counts, what is refused (replays, stale, forged), and the score."""

from __future__ import annotations

import dataclasses

import pytest

from hyperion_node.ledger.epochs import EpochHeader, sign_epoch
from hyperion_node.ledger.exceptions import BadSignature, Malformed, Replayed, Stale
from hyperion_node.ledger.receipt import countersign
from hyperion_node.ledger.reputation import DAY_MS, PeerReputation, ReplayGuard, ReputationView
from hyperion_node.testing.receipts import ReceiptFactory, new_identity

NOW = 1_700_000_100_000  # a little after ReceiptFactory's receipts finished


def test_this_nodes_own_receipts_count_for_the_worker_once(factory: ReceiptFactory) -> None:
    view = ReputationView(str(factory.requester.peer_id))  # this node asked for the work
    receipts = [countersign(factory.signed(), factory.requester) for _ in range(3)]
    for signed in receipts:
        view.observe_own(signed, NOW)
    view.observe_own(receipts[0], NOW + 1000)  # the same receipt again counts once
    worker = view.get(str(factory.worker.peer_id))
    assert (worker.completed, worker.failed, worker.disputed, worker.credited) == (3, 0, 0, 3.0)
    assert worker.volume == sum(s.receipt.total for s in receipts)
    assert view.get(str(factory.requester.peer_id)) == PeerReputation()


def test_what_counterparts_vouch_for_counts_by_their_standing(factory: ReceiptFactory) -> None:
    """A dealings summary credits the peers it names in proportion to its signer's standing here: nothing
    from a stranger, its receipts' worth from a peer this node dealt with."""
    me = str(factory.requester.peer_id)
    view = ReputationView(me, clock=lambda: 0.0)
    friend, worker, stranger = (str(new_identity().peer_id) for _ in range(3))
    view.trust.own(friend)
    view.trust.vouched(friend, [(worker, 10)])
    view.trust.vouched(stranger, [(worker, 1000), (stranger + "x", 1000)])
    credited = view.get(worker).credited
    assert 0 < credited <= 10.0
    assert view.get(stranger + "x").credited == 0.0
    assert view.reliability(worker) > 0.5


def test_old_and_future_receipts_are_refused() -> None:
    guard = ReplayGuard(window_ms=DAY_MS)
    with pytest.raises(Stale):
        guard.check(b"a", NOW - DAY_MS - 1, NOW)
    with pytest.raises(Malformed, match="future"):
        guard.check(b"b", NOW + 3_600_000, NOW)
    guard.check(b"c", NOW, NOW)
    assert len(guard) == 1


def test_the_replay_guard_stays_bounded_and_never_forgets_into_a_replay() -> None:
    guard = ReplayGuard(window_ms=DAY_MS, capacity=100)
    for i in range(1000):
        guard.check(i.to_bytes(4, "big"), NOW - 10_000 + i, NOW)
        assert len(guard) <= 100
    # An evicted id is older than everything remembered: it comes back as stale, never accepted again.
    with pytest.raises(Stale):
        guard.check((0).to_bytes(4, "big"), NOW - 10_000, NOW)
    with pytest.raises(Replayed):
        guard.check((999).to_bytes(4, "big"), NOW - 10_000 + 999, NOW)
    # Once the window has passed, memory is released.
    guard.check(b"late", NOW + 2 * DAY_MS, NOW + 2 * DAY_MS)
    assert len(guard) == 1


def test_disputes_and_failures_lower_reliability_disputes_most(factory: ReceiptFactory) -> None:
    view = ReputationView(str(factory.requester.peer_id))  # this node is the requester: its receipts count
    honest, flaky, cheat = (str(new_identity().peer_id) for _ in range(3))
    assert view.reliability(honest) == 0.5  # never seen: no evidence either way
    for _ in range(5):  # five failures weigh less than two disputes (weight 5 each)
        view.observe_failure(flaky, NOW)
    assert view.observe_confirmed_dispute(cheat, b"\x01" * 32, NOW, NOW)
    assert view.observe_confirmed_dispute(cheat, b"\x02" * 32, NOW, NOW)
    signed = countersign(factory.signed(), factory.requester)
    view.observe_own(signed, NOW)
    good = view.reliability(signed.receipt.worker)
    assert 0.5 < good < 1.0
    assert view.reliability(cheat) < view.reliability(flaky) < 0.5 < good
    assert all(0.0 <= view.reliability(p) <= 1.0 for p in (honest, flaky, cheat))
    # A confirmed dispute of the same receipt counts once, whoever confirmed it.
    assert not view.observe_confirmed_dispute(cheat, b"\x01" * 32, NOW, NOW)
    assert view.get(cheat).disputed == 2


def test_a_false_dispute_costs_its_signer(factory: ReceiptFactory) -> None:
    view = ReputationView(str(factory.requester.peer_id))
    liar = str(new_identity().peer_id)
    view.observe_false_dispute(liar, NOW)
    assert view.get(liar).false_disputes == 1
    assert view.reliability(liar) < 0.5


def test_epoch_roots_replayed_or_equivocating(factory: ReceiptFactory) -> None:
    view = ReputationView()
    header = EpochHeader(number=4, signer=str(factory.worker.peer_id), first_position=1, last_position=2, count=2,
                         root=b"\x01" * 32, chain_head=bytes(32), closed_at_ms=NOW)
    view.observe_epoch(sign_epoch(header, factory.worker), NOW)
    with pytest.raises(Replayed):
        view.observe_epoch(sign_epoch(header, factory.worker), NOW)
    other_history = dataclasses.replace(header, root=b"\x02" * 32)
    with pytest.raises(Malformed, match="two different roots"):
        view.observe_epoch(sign_epoch(other_history, factory.worker), NOW)
    assert view.get(header.signer).disputed == 1
    forged = dataclasses.replace(sign_epoch(dataclasses.replace(header, number=5), factory.worker),
                                 signature=bytes(64))
    with pytest.raises(BadSignature):
        view.observe_epoch(forged, NOW)


def test_the_view_is_bounded_in_peers() -> None:
    view = ReputationView(max_peers=10)
    for i in range(50):
        view.observe_failure(f"peer-{i}", NOW + i)
    assert len(view.snapshot()) == 10
    assert "peer-49" in view.snapshot()
    assert "peer-0" not in view.snapshot()
