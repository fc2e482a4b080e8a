"""Whether this node believes a dispute case (``ledger.dispute.DisputeCase``): pure rules, no I/O.

A dispute lowers a worker's standing in a node only when that node can check it. ``check_case`` has already
shown what needs no judgement (the receipt settled and signed by both, each dispute signed by a distinct
verifier that is neither the worker nor the requester, the evidence the receipt's own work). What is left:

1. **This node's own check**, where it can make one: it serves the item, the case carries the evidence, and
   the node is not the accused worker (a worker re-checking itself proves nothing). Its verdict decides: a
   failed check confirms the case; a passing one shows it wrong, and every verifier that signed it loses
   standing here. Re-checks cost a prefill, so a node makes them only for cases that someone with standing
   here signed or asked for (a stranger's case is not worth its compute) and within the verify budget.
2. Otherwise, **agreement of two independent verifiers with standing** here (``TrustGraph.standing`` at or
   above ``floor``): two peers this node's own dealings vouch for, neither the worker nor the requester (a
   requester's own dispute may travel in its case, as the accusation, but never confirms it). The requester
   picks them by the protocol's order (``rendezvous``), not by choice.
3. Otherwise the case is **unconfirmed** and has no effect: a dispute signed by throwaway keys, or by one
   verifier alone, changes nothing anywhere.

A signer of this node's own (a dispute this node signed as a verifier) counts as its own check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from enum import StrEnum

from hyperion_node.ledger.dispute import CheckedCase

CONFIRMING_VERIFIERS = 2


class Judgement(StrEnum):
    CONFIRMED = "confirmed"  # this node counts the dispute against the worker
    UNCONFIRMED = "unconfirmed"  # no effect
    RECHECK = "recheck"  # this node can and will check the work itself; its verdict decides


def judge(case: CheckedCase, *, me: str, standing: Callable[[str], float], floor: float,
          can_recheck: bool) -> Judgement:
    """What this node does with a checked case before (or instead of) checking the work itself."""
    if me in case.verifiers:
        return Judgement.CONFIRMED  # this node judged the work itself and signed it
    if case.bound and can_recheck and me != case.worker:
        vouched = any(standing(v) >= floor for v in (*case.verifiers, case.requester))
        if vouched:
            return Judgement.RECHECK
    if me == case.worker or not (case.bound and can_recheck):
        backed = [v for v in case.independent if standing(v) >= floor]
        if len(backed) >= CONFIRMING_VERIFIERS:
            return Judgement.CONFIRMED
    return Judgement.UNCONFIRMED


def after_recheck(failed: bool) -> Judgement:
    """This node's own check of the case's work: a failure confirms it, a pass leaves it unconfirmed (and the
    case's signers are at fault: ``false_signers``)."""
    return Judgement.CONFIRMED if failed else Judgement.UNCONFIRMED


def false_signers(case: CheckedCase) -> tuple[str, ...]:
    """Who signed a case that this node's own check showed wrong."""
    return case.verifiers


def rendezvous(receipt_id: bytes, peers: Iterable[str]) -> list[str]:
    """The protocol's order of verifiers for one receipt (highest random weight, Thaler & Ravishankar 1998):
    each peer ranked by SHA-256(receipt id || peer ID). Every node computes the same order from the same
    candidates, the requester cannot pick friendly verifiers without grinding receipt IDs (each try a signed
    task a worker must run), and a verifier cannot volunteer."""
    return sorted(peers, key=lambda peer: hashlib.sha256(receipt_id + peer.encode()).digest())
